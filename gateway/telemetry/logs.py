"""Diagnostics as JSON lines on stderr: the gateway's own, granian's, and any library's.

stdout belongs to the access log (one JSON line per request, tollway.gateway.telemetry.accesslog);
everything else a log shipper should see goes to stderr, one JSON object a line, so neither
stream needs a second parser. granian configures logging in its main process with
`log_dictconfig` (granian/log.py), before it forks the workers, which inherit it; `LOGGING` is
that config. `start_record` is the one line that says, at start, what the process loaded.

Nothing here may carry a secret: the start line names providers, models and the store's
backend, counts keys, and never holds a key, a key hash, a credential or a URL's userinfo.
"""
from __future__ import annotations

import copy
import json
import logging
import logging.config
import time
from typing import Any

from tollway.core.config import Config
from tollway.core.security.urls import url_address

# granian's Python and Rust sides log as `_granian` and `_granian.<module>` (granian/log.py);
# shown under granian's own name.
_GRANIAN = "_granian"


class JSONFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message"}`, plus a record's `fields` and its exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name[1:] if record.name.startswith(_GRANIAN) else record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


_STDERR = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}

# For granian's `log_dictconfig`, which replaces its defaults section by section (granian
# then sets `_granian`'s level from `log_level`). granian's access log is off (`log_access`):
# the gateway writes its own.
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": JSONFormatter}},
    "handlers": {"stderr": _STDERR, "drop": {"class": "logging.NullHandler"}},
    "loggers": {
        "_granian": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "granian.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "tollway": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        # botocore logs a failed credential refresh with its traceback, which quotes a
        # credential_process's stderr (it can hold keys), and again on every request while
        # the refresh keeps failing: dropped. The gateway says it once per incident, by the
        # failure's kind (gateway/upstream/credentials.py).
        "botocore": {"handlers": ["drop"], "propagate": False},
    },
    # Libraries' warnings (asyncio's "Task exception was never retrieved", ...) too.
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}


def setup_logging() -> None:
    """Apply `LOGGING` unless this process already has it (a worker forked from `tollway
    serve` inherits it; the gateway built in process by tests or an embedder does not)."""
    if not logging.getLogger("tollway").handlers:
        logging.config.dictConfig(copy.deepcopy(LOGGING))


def refuse(message: str) -> None:
    """Say why the gateway will not start: one JSON line on stderr, like every diagnostic
    (`"event": "refused"`), so a log pipeline sees it as it sees the rest."""
    setup_logging()
    logging.getLogger("tollway").error(message, extra={"fields": {"event": "refused"}})


def ledger_summary(config: Config) -> dict[str, Any]:
    """Where usage records go: the backend and a place, never a password."""
    store = config.store
    if store is None or not config.ledger.enabled:
        return {"enabled": False}
    if store.backend == "sqlite":
        return {"enabled": True, "backend": "sqlite", "path": store.path}
    return {"enabled": True, "backend": "postgres",
            "address": url_address(store.url or "", 5432)}


def start_record(config: Config, config_path: str, workers: int, kernels: dict[str, str]) -> dict[str, Any]:
    """What this process loaded, for the start line: names and counts, never a secret."""
    limits = config.rate_limits
    store: dict[str, Any] = {"backend": limits.backend}
    if limits.backend == "redis":  # host and port only: the URL's userinfo may hold a password
        store["address"] = url_address(limits.redis_url, 6379).split("/", 1)[0]
    return {
        "event": "start",
        "config": config_path,
        "workers": workers,
        "providers": [{"name": p.name, "schema": p.schema} for p in config.providers],
        "models": [m.name for m in config.models],
        "keys": len(config.keys),
        "store": store,
        "ledger": ledger_summary(config),
        # which compiled kernels are active ("compiled"), and which fell back to their twins ("pure")
        "extensions": {"accelerated": all(k == "compiled" for k in kernels.values()), "kernels": dict(kernels)},
    }
