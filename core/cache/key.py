"""The cache key of a request, and whether its answer may be stored at all.

The key is the SHA-256 of canonical JSON (keys sorted, no whitespace) of:

    {"api": the client API, "config": the route's answer-relevant config version,
     "scope": the partition (key id, team, or shared:<ns>), "request": the body as sent upstream}

"as sent upstream" means the client body after the request hooks and masking guardrails
(they replace the body before the lookup runs), minus the fields that cannot change the
answer (`EXCLUDED`). The provider's translation of that body is a function of the body, the
client API and the route's targets, which the config version covers: keying the body with
them is keying the translated call, without translating it (and it does not depend on which
of a route's targets happens to be asked first).

Everything else in the body is in the key, known to the gateway or not: a field a newer
API adds is answer-changing until someone shows it is not. That errs towards misses.
"""
from __future__ import annotations

import hashlib

import msgspec

from tollway.core.kernels import canonical_object
from tollway.core.providers.base import ClientAPI

# Top-level request fields that change how the answer is delivered or attributed, never
# what it says. (Anthropic's `metadata` holds its user_id; OpenAI's `safety_identifier` is
# the newer `user`.)
EXCLUDED = frozenset(("stream", "stream_options", "user", "metadata", "request_id", "safety_identifier"))
# ... except where the answer echoes them: a Responses answer carries the request's `user`,
# `metadata` and `safety_identifier`, so an entry filled by one request would hand its
# attribution (user ids, a tenant's metadata) to every other request in the partition.
_ECHOED = {ClientAPI.RESPONSES: frozenset(("user", "metadata", "safety_identifier"))}
_EXCLUDED_OF = {api: EXCLUDED - echoed for api, echoed in _ECHOED.items()}  # (other APIs: EXCLUDED)

CACHED_APIS = frozenset((ClientAPI.CHAT, ClientAPI.COMPLETIONS, ClientAPI.EMBEDDINGS, ClientAPI.RESPONSES,
                         ClientAPI.MESSAGES))

_encode_sorted = msgspec.json.Encoder(order="sorted").encode


class Request(msgspec.Struct, frozen=True):
    """A request as the cache reads it: its key material, and whether its answer is sampled."""

    canonical: bytes  # the body without EXCLUDED fields, as canonical JSON (keys sorted, no whitespace)
    sampled: bool  # temperature > 0 (or the provider's default) without a seed


def read(api: str, body: bytes, seed_counts: bool = False) -> Request | None:
    """The request's cache view, or None if the body is not a JSON object (the upstream call
    will refuse it; nothing to cache). `seed_counts`: every provider the request may reach
    draws by its `seed` (CacheRules.honours_seed), so a seed makes the answer repeatable.

    The canonical JSON is what msgspec's sorted encoder writes for the decoded body (the key's
    material since the cache began), written by a kernel that scans the body once without
    building its dict (tollway.ext.canonjson)."""
    view = canonical_object(body, _EXCLUDED_OF.get(api, EXCLUDED))
    if view is None:
        return None
    canonical, temperature_zero, seeded = view
    return Request(canonical, _sampled(api, temperature_zero, seed_counts and seeded))


def _sampled(api: str, temperature_zero: bool, seeded: bool) -> bool:
    """Whether the answer is drawn at random: embeddings never are; a generation is unless its
    temperature is 0 or it names a seed its providers use (Anthropic and Bedrock have none: the
    translation drops it, and each call draws anew). An absent temperature is the provider's
    default (1.0 for OpenAI and Anthropic): sampled."""
    return api != ClientAPI.EMBEDDINGS and not seeded and not temperature_zero


# The stored entries' format, in every key: a replica of another version sharing the Redis cache
# (a rolling upgrade) never reads an entry it would misread. 2: a stream's entry is its SSE
# text until first read (core/cache/entry.py), which a version-1 decoder would take for an answer.
ENTRY_FORMAT = 2


def cache_key(api: str, partition: str, config_version: str, request: Request) -> str:
    """The entry's name: 64 hex digits."""
    material = _encode_sorted({"api": api, "config": config_version, "scope": partition,
                               "request": msgspec.Raw(request.canonical), "format": ENTRY_FORMAT})
    return hashlib.sha256(material).hexdigest()


def with_headers(version: str, headers: tuple[tuple[str, str], ...]) -> str:
    """`version` with the client headers the gateway passes to the provider (anthropic-beta):
    they change what it answers, so requests that differ only in them must not share an entry."""
    return config_version((version, sorted(headers))) if headers else version


def config_version(parts: object) -> str:
    """A short digest of the config that shapes a route's answers (its targets, the guardrails
    and plugins that apply): a change there starts new entries instead of serving old ones."""
    return hashlib.sha256(msgspec.json.encode(parts, order="sorted")).hexdigest()[:16]
