"""Time for the ledger: calendar budget periods (UTC), report ranges, and which table answers
which part of a range.

Everything takes `now` and returns values; nothing reads a clock.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal

Period = Literal["day", "week", "month"]
HOUR = 3600.0
DAY = 86400.0


def period_start(now: float, period: Period) -> float:
    """The start of the calendar period holding `now` (UNIX seconds), in UTC. Weeks start on
    Monday (ISO 8601)."""
    t = datetime.fromtimestamp(now, UTC)
    day = datetime(t.year, t.month, t.day, tzinfo=UTC)
    if period == "day":
        return day.timestamp()
    if period == "week":
        return (day - timedelta(days=t.weekday())).timestamp()
    return datetime(t.year, t.month, 1, tzinfo=UTC).timestamp()


def period_end(now: float, period: Period) -> float:
    """When the period holding `now` ends: the next one's start."""
    start = datetime.fromtimestamp(period_start(now, period), UTC)
    if period == "day":
        return (start + timedelta(days=1)).timestamp()
    if period == "week":
        return (start + timedelta(days=7)).timestamp()
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def rfc3339(ts: float) -> str:
    """`ts` as RFC 3339 in UTC, to the millisecond: 2026-11-30T22:40:01.123Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_RELATIVE = re.compile(r"(\d{1,6})([dhm])")
# A time, a space, and an offset: `+05:30` as a URL query carries it unescaped (a shell, a
# browser), its `+` decoded as a space. RFC 3339 has no space there, so it is that `+`.
_PLUS_AS_SPACE = re.compile(r"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})")
_EPOCH, _LAST = 0.0, 253402300799.0  # 1970-01-01 and 9999-12-31T23:59:59Z: the ledger holds nothing outside
_UNIT = {"d": DAY, "h": HOUR, "m": 60.0}


def parse_instant(value: str, now: float) -> float:
    """A report bound: RFC 3339 (`2026-11-01T00:00:00Z`, a bare date is midnight UTC), or
    `Nd`/`Nh`/`Nm` before `now`. Raises ValueError with a message fit for the client."""
    relative = _RELATIVE.fullmatch(value.strip())
    if relative:
        return min(max(now - int(relative.group(1)) * _UNIT[relative.group(2)], _EPOCH), _LAST)
    text = value.strip()
    plus = _PLUS_AS_SPACE.fullmatch(text)
    if plus:
        text = f"{plus.group(1)}+{plus.group(2)}"
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{value[:64]}' is not a time: use RFC 3339 (2026-11-01T00:00:00Z) or a span "
                         "before now such as 7d, 12h or 30m") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return min(max(t.timestamp(), _EPOCH), _LAST)


Table = Literal["raw", "hourly", "daily"]


def segments(since: float, until: float) -> list[tuple[Table, float, float]]:
    """[since, until) cut into the pieces each table answers exactly: whole days from the
    daily rollup, whole hours from the hourly one, and the minutes at either edge from the
    raw rows. A 30-day report reads ~30 daily rows per group instead of millions of records;
    the edges cost at most two partial hours of raw rows."""
    if until <= since:
        return []
    h0, h1 = _ceil(since, HOUR), _floor(until, HOUR)
    if h0 >= h1:  # no whole hour inside
        return [("raw", since, until)]
    d0, d1 = _ceil(h0, DAY), _floor(h1, DAY)
    out: list[tuple[Table, float, float]] = []
    _add(out, "raw", since, h0)
    if d0 < d1:
        _add(out, "hourly", h0, d0)
        _add(out, "daily", d0, d1)
        _add(out, "hourly", d1, h1)
    else:
        _add(out, "hourly", h0, h1)
    _add(out, "raw", h1, until)
    return out


def _add(out: list[tuple[Table, float, float]], table: Table, lo: float, hi: float) -> None:
    if hi > lo:
        out.append((table, lo, hi))


def _floor(t: float, step: float) -> float:
    return (t // step) * step


def _ceil(t: float, step: float) -> float:
    return -((-t) // step) * step
