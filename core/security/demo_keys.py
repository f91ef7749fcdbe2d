"""Demo credentials: the key digests the shipped examples use, whose keys the docs publish.

`examples/*.yaml` and `deploy/` ship with gateway keys whose plaintext the README and the docs
print (so the quick start works as written). A config copied from them and pointed at a real
provider would serve anyone who has read the README. `demo_credentials` finds such entries so
`tollway serve` can warn at start and `tollway check` can list them; with only `fake` providers
(the demo as meant) nothing is found.

What it reports names the config entry (`keys[0] (name 'demo')`, `admin`, ...) and never the
key or its digest. tests/test_demo_keys.py checks that every `key_hash` in examples/ and
deploy/ is listed here, so a new example with a new demo key cannot slip past.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tollway.core.config import Config

# sha256 digests (`tollway hash-key`, no pepper) of keys printed in the README, docs and examples.
DEMO_KEY_HASHES: frozenset[str] = frozenset({
    # the quick-start gateway key: examples/*.yaml, deploy/k8s/tier1.yaml, README.md, docs/deploy.md
    "sha256:d239d3029ec9c2eed030ecfb85e26fa1614af1ce0f771c55796de2f11b436bed",
    # tier one's key for tier two: examples/tier2.yaml, deploy/k8s/tier2.yaml, deploy/compose, docs/deploy.md
    "sha256:6287069a7a00f0fb5e49faba09c9e791a83c2ea39c54538e7a15cadceca9b81f",
})

_WHAT_IT_OPENS = {
    "keys": "anyone can send requests through this gateway to its providers",
    "admin": "anyone can administer this gateway",
    "admins": "anyone can use this administrator's rights",
    "metrics_auth": "anyone can read /metrics",
}


@dataclasses.dataclass(frozen=True)
class DemoCredential:
    """One config entry whose credential is a published demo key."""

    path: str  # keys[0], admin, admins[1], server.metrics_auth
    name: str | None  # the entry's own name, if it has one
    message: str  # what is wrong and what to do; holds no key and no digest

    @property
    def entry(self) -> str:
        return f"{self.path} (name '{self.name}')" if self.name is not None else self.path


def is_demo_key_hash(key_hash: str) -> bool:
    return key_hash in DEMO_KEY_HASHES


def demo_credentials(config: Config) -> list[DemoCredential]:
    """Every credential in `config` that is a demo key, if any provider is real (not `fake`)."""
    real = next((p for p in config.providers if p.schema != "fake"), None)
    if real is None:
        return []
    entries: list[tuple[str, str | None, str, str]] = [
        (f"keys[{i}]", k.name, k.key_hash, "keys") for i, k in enumerate(config.keys)]
    if config.admin is not None:
        entries.append(("admin", None, config.admin.key_hash, "admin"))
    entries += [(f"admins[{i}]", a.name, a.key_hash, "admins") for i, a in enumerate(config.admins)]
    if config.server.metrics_auth is not None:
        entries.append(("server.metrics_auth", None, config.server.metrics_auth.key_hash, "metrics_auth"))
    found = []
    for path, name, key_hash, kind in entries:
        if not is_demo_key_hash(key_hash):
            continue
        message = (f"key_hash is the digest of a demo key whose plaintext is published in Tollway's docs and "
                   f"examples, and provider '{real.name}' (schema {real.schema}) is real: {_WHAT_IT_OPENS[kind]}. "
                   "Make a fresh random key (e.g. `openssl rand -hex 32`) and put the output of "
                   "`printf %s \"$KEY\" | tollway hash-key` in its key_hash")
        found.append(DemoCredential(path, name, message))
    return found
