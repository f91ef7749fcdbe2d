"""Type stub of the compiled rate-limit headers (same API as core/ratelimit.py)."""
from collections.abc import Sequence

from core.ratelimit import HeaderSpec

def ratelimit_headers(specs: Sequence[HeaderSpec], levels: Sequence[float]) -> list[tuple[str, str]]: ...
def go_duration(seconds: float) -> str: ...
