"""Whether `tollway serve` may take its port.

On Linux granian binds one listening socket per worker with SO_REUSEPORT, so a second gateway
started on a port another one already serves binds too, and the kernel quietly splits new
connections between the two (perhaps with different configs). Before starting, the port is
therefore bound once the way a lone server binds it (SO_REUSEADDR only): that bind fails if
anything listens there. `--reuse-port` skips the probe for a deliberate overlap, such as a
zero-downtime hand-over from an old gateway process to a new one.

The probe is released before granian binds, so two servers started in the same instant can
still both pass it; it catches the common case, a port taken by something already running.
"""
from __future__ import annotations

import errno
import socket


def port_problem(host: str, port: int) -> str | None:
    """Why a lone server cannot listen on host:port now, or None if it can."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        return f"cannot listen on {where}: {exc.strerror}"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a socket in TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"{where} is already in use (another `tollway serve`, or another program, listens there). "
                        "Stop it or choose another --port; pass --reuse-port only to share the port with another "
                        "gateway on purpose (the kernel then splits connections between them).")
            return f"cannot listen on {where}: {exc.strerror}"
    return None
