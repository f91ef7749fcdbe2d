"""Gateway keys: stored as digests, looked up in O(1), compared in constant time.

Gateway keys are long random tokens, so a fast unsalted digest is the right store: it cannot
be reversed, and the gateway finds a key by its digest in a dict instead of trying every
stored hash. (A slow salted hash such as bcrypt would cost milliseconds per request and buys
nothing for high-entropy keys.) With `server.key_pepper` set, the digest is HMAC-SHA256 under
that server-side secret, so a leaked config alone does not allow offline guessing.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Generic, TypeVar

T = TypeVar("T")
# What every run-time key starts with (tollway.gateway.tenancy.actions.mint_key): it makes a
# key recognisable, to a secret scanner and to `KnownSecrets.mask`.
KEY_PREFIX = "sk-tw-"


def hash_key(key: str, pepper: str | None = None) -> str:
    """The `key_hash` value for `key`: `sha256:<hex>`, or `hmac-sha256:<hex>` with a pepper."""
    raw = key.encode()
    if pepper:
        return "hmac-sha256:" + hmac.new(pepper.encode(), raw, hashlib.sha256).hexdigest()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class KeyTable(Generic[T]):
    """Maps presented keys to their records without ever storing a key in clear."""

    def __init__(self, records: dict[str, T], pepper: str | None = None) -> None:
        # records: key_hash -> record. Both hash forms are accepted, so a pepper can be
        # introduced while old sha256 entries still work.
        self._records = records
        self._pepper = pepper
        self.version = 0  # bumped by every put and drop

    def lookup(self, presented: str) -> T | None:
        """The record for this key, or None. Digest compare is constant-time."""
        plain = hash_key(presented)  # (a tuple, not a list from a method: this runs for every request)
        for digest in (hash_key(presented, self._pepper), plain) if self._pepper else (plain,):
            stored = self._records.get(digest)
            if stored is not None and hmac.compare_digest(digest, self._digest_of(stored, digest)):
                return stored
        return None

    def put(self, digest: str, record: T) -> None:
        """Add or replace the record found by `digest` (a run-time key changed: no rebuild)."""
        self._records[digest] = record
        self.version += 1

    def drop(self, digest: str) -> None:
        self._records.pop(digest, None)
        self.version += 1

    def records(self) -> list[T]:
        """Every record (a key being rotated has two): for indexes kept beside the table, which
        rebuild them when `version` changed."""
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def _digest_of(self, stored: T, fallback: str) -> str:
        # The dict key is the stored digest; records may carry it too.
        return getattr(stored, "key_hash", fallback)


def bearer_matches(authorization: str | None, key_hash: str, pepper: str | None = None) -> bool:
    """True if an `Authorization` header value is `Bearer <key>` for the key whose digest is
    `key_hash` (an operator credential: the admin key, the metrics scrape key). Constant-time
    like every key lookup."""
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and KeyTable({key_hash: True}, pepper=pepper).lookup(token.strip()) is not None
