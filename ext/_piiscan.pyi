"""Type stub of the compiled PII prefilter (same API as ext/piiscan.py)."""

CARD: int
EMAIL: int
IBAN: int
IP: int
PHONE: int
SECRET: int
SECRET_LITERALS: tuple[str, ...]
SHAPES: int
SSN: int

def candidate_starts(text: str, start: int, shapes: int) -> list[int]: ...
