"""The usage record: one per proxied request, the ledger's row and `/admin/requests`' item.

Its field names are a contract (issue 12): reports, exports and users' queries rely on them.
It holds counts, names and times, never a prompt, a completion or a credential: every text
field is a configured name, a closed-vocabulary label, an id the gateway made, or a
client-sent value it validated (`request_id`, `tags`, `model` cut to a bounded length).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import msgspec

MAX_MODEL_CHARS = 256  # a client names `model`; a row must not carry an essay


class UsageRecord(msgspec.Struct, frozen=True, gc=False):
    """(Built positionally on the request path: keyword construction of 25 fields costs ~0.7 us,
    positional ~0.1 us. Its containers, `tags` (a tuple of str) and `guardrails` (dicts of str
    and int), can hold no reference cycle: no GC tracking.)"""

    ts: float  # when the request arrived, UNIX seconds (RFC 3339 in JSON answers)
    request_id: str  # the response's x-request-id
    key: str | None  # the key's name
    key_id: str | None
    team: str | None
    model: str | None  # the public name the client asked for
    provider: str | None  # the provider's config name (the last attempt's)
    upstream_model: str | None
    api: str  # chat, completions, embeddings, responses, messages, ...
    status: int  # the HTTP status the client got
    error: str | None  # the closed vocabulary of tollway.core.errors.error_label
    stream: bool
    input_tokens: int = 0  # all of the prompt, cached and cache-write tokens included
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0  # all of the completion, reasoning tokens included
    reasoning_tokens: int = 0
    cost_usd: float | None = None  # None: the model has no price
    latency_ms: float = 0.0
    ttft_ms: float | None = None  # streams: time to the first byte sent
    attempts: int = 0
    cache_hit: bool = False
    tags: tuple[str, ...] = ()
    trace_id: str | None = None
    # Guardrail findings: {guardrail name: {detector: count}}, None when nothing was found.
    # Names and counts only, never a matched value (issue 15).
    guardrails: dict[str, dict[str, int]] | None = None


FIELDS: tuple[str, ...] = UsageRecord.__struct_fields__
NULLABLE: frozenset[str] = frozenset(f.name for f in msgspec.structs.fields(UsageRecord) if type(None) in get_args(f.type))
TAGS_AT = FIELDS.index("tags")
GUARDRAILS_AT = FIELDS.index("guardrails")
TS_AT = FIELDS.index("ts")


def key_id_of(name: str) -> str:
    """The id of a key defined in the config file. Derived from its name, never from its
    digest (a digest prefix would help an offline guess of a weak key)."""
    return "config:" + name


_NEAR_HOUR = 3600.0 - 1e-6  # seconds into an hour past which rounding to the microsecond may reach the next


def to_the_microsecond(records: Sequence[UsageRecord]) -> list[UsageRecord]:
    """The records as PostgreSQL's timestamps (whole microseconds) will hold them, as far as
    their hour goes: a record less than a microsecond before an hour is stored at the hour,
    so its rollups must count it there too, else a report reading rows on one side of the hour
    and rollups on the other loses it or counts it twice. Only those records are rounded (a
    float modulo a record; a struct copy each would cost the writer ~1 us a record)."""
    return [msgspec.structs.replace(r, ts=round(r.ts * 1e6) / 1e6) if r.ts % 3600.0 > _NEAR_HOUR else r
            for r in records]
