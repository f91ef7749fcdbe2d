"""Type stub of the compiled canonical-JSON kernel (same API as ext/canonjson.py)."""

__all__ = ["canonical_object"]

def canonical_object(body: bytes, excluded: frozenset[str]) -> tuple[bytes, bool, bool] | None: ...
