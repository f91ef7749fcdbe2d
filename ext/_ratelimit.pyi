"""Type stub of the compiled rate-limit headers (same API as ext/ratelimit.py)."""
from collections.abc import Sequence

from tollway.ext.ratelimit import HeaderSpec

def ratelimit_headers(specs: Sequence[HeaderSpec], levels: Sequence[float]) -> list[tuple[str, str]]: ...
def go_duration(seconds: float) -> str: ...
