"""Checks of who may call: credentials are digests, never secrets; a key names models a
route could serve and a team the config defines; administrators are distinct from each
other and from the gateway's keys."""
from __future__ import annotations

import re

from tollway.core.config.check_common import Fail, is_key_hash
from tollway.core.config.root import Config
from tollway.core.suggest import did_you_mean

_HASH_EXPECTED = "expected the output of `tollway hash-key`"
_GATEWAY_KEYS_DIGEST = "this is a gateway key's digest: {} must be its own"


def check_key_hashes(config: Config, fail: Fail) -> None:
    for i, k in enumerate(config.keys):
        if not is_key_hash(k.key_hash):
            fail(["keys", i, "key_hash"], f"{_HASH_EXPECTED} (sha256:<64 hex> or hmac-sha256:<64 hex>)")


def check_references(config: Config, fail: Fail) -> None:
    """A key's `models` and `team` name things the config defines. A model name in `models` may
    also be one a `match:` route serves (it is allowed by exact name at request time); only a
    name no route could ever serve is an error, since no request for it could get through."""
    names = {m.name for m in config.models}
    patterns: list[re.Pattern[str]] = []
    for m in config.models:
        try:
            patterns += [re.compile(m.match)] if m.match is not None else []
        except re.error:
            pass  # reported with the model
    teams = {t.name for t in config.teams}
    for i, k in enumerate(config.keys):
        for j, name in enumerate(k.models):
            if name != "*" and name not in names and not any(p.fullmatch(name) for p in patterns):
                fail(["keys", i, "models", j], f"unknown model '{name}' (no model has this name or a match: for it)"
                                               f"{did_you_mean(name, names)}")
        if k.team is not None and k.team not in teams:
            fail(["keys", i, "team"], f"unknown team '{k.team}' (define it under teams:){did_you_mean(k.team, teams)}")


def check_owner_hashes(config: Config, fail: Fail) -> None:
    """The owner's credential (`admin:`) and the one /metrics asks for are digests too, and
    neither is a gateway key's: that key would open the whole admin API as the owner, or /metrics."""
    keys = {k.key_hash for k in config.keys}
    if config.admin is not None:
        if not is_key_hash(config.admin.key_hash):
            fail(["admin", "key_hash"], _HASH_EXPECTED)
        elif config.admin.key_hash in keys:
            fail(["admin", "key_hash"], _GATEWAY_KEYS_DIGEST.format("an admin credential"))
    metrics = config.server.metrics_auth
    if metrics is not None:
        if not is_key_hash(metrics.key_hash):
            fail(["server", "metrics_auth", "key_hash"], _HASH_EXPECTED)
        elif metrics.key_hash in keys:
            fail(["server", "metrics_auth", "key_hash"], _GATEWAY_KEYS_DIGEST.format("the /metrics credential"))


RESERVED_ADMIN_NAMES = ("admin", "cli")  # tollway.core.tenancy.roles: OWNER, CLI


def check_admins(config: Config, fail: Fail) -> None:
    """Scoped administrators: distinct names and credentials; a team admin names its team."""
    digests = {config.admin.key_hash} if config.admin is not None else set()
    # The audit trail's names for the owner and for `tollway keys`: an administrator of either
    # name would make its entries indistinguishable from theirs.
    seen: set[str] = set(RESERVED_ADMIN_NAMES)
    for i, a in enumerate(config.admins):
        if a.name in seen or not a.name.isprintable() or not a.name:
            fail(["admins", i, "name"], f"'{a.name}' is taken or not printable (the audit trail names the owner "
                                        "'admin' and `tollway keys` 'cli')")
        seen.add(a.name)
        if not is_key_hash(a.key_hash):
            fail(["admins", i, "key_hash"], _HASH_EXPECTED)
        elif a.key_hash in digests:
            fail(["admins", i, "key_hash"], "another administrator has this credential")
        digests.add(a.key_hash)
        if a.role == "team_admin" and not a.team:
            fail(["admins", i, "team"], "a team_admin manages one team: name it")
        if a.role == "viewer" and a.team is not None:
            fail(["admins", i, "team"], "a viewer reads every team; remove team: (or make it a team_admin)")
    keys = {k.key_hash for k in config.keys}
    for i, a in enumerate(config.admins):
        if a.key_hash in keys:
            fail(["admins", i, "key_hash"], _GATEWAY_KEYS_DIGEST.format("an admin credential"))


def check_admin_rate(config: Config, fail: Fail) -> None:
    if config.server.admin_requests_per_minute < 1:
        fail(["server", "admin_requests_per_minute"], "must be at least 1")
