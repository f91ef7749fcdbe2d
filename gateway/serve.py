"""Running the gateway under granian (RSGI interface, uvloop, one process per worker)."""
from __future__ import annotations

import os
import sys

from core.config import Config


def serve(config: Config, config_path: str, host: str, port: int, workers: int) -> int:
    """Serve until stopped. Returns the process exit code."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    if workers < 1:
        print("tollway: --workers must be at least 1", file=sys.stderr)
        return 2
    warning = shared_state_warning(config, workers)
    if warning:
        print(f"tollway: {warning}", file=sys.stderr)
    os.environ["TOLLWAY_CONFIG"] = config_path
    server = Granian(
        "gateway.app:create_app",
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        workers=workers,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        backlog=2048,
    )
    server.serve()
    return 0


def shared_state_warning(config: Config, workers: int) -> str | None:
    """What the operator must know when limits live in memory but several workers serve."""
    has_limits = any(k.limits for k in config.keys) or any(m.limits for m in config.models) or any(t.limits for t in config.teams)
    if workers > 1 and has_limits and config.rate_limits.backend == "memory":
        return (f"rate_limits.backend is 'memory' with {workers} workers: each worker enforces every limit on its own, "
                f"so together they admit up to {workers}x each limit. Use backend: redis to share limits.")
    return None
