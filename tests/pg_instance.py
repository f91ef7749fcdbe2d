"""A PostgreSQL server of a test's own, to stop and start at will (the shared one on 5432 must
stay up for the other tests).

`PgInstance` runs initdb and pg_ctl from the PostgreSQL binaries (`TOLLWAY_PG_BIN`, else the
newest /usr/lib/postgresql/*/bin, else PATH) in a temporary directory, on a free port of
127.0.0.1, with trust authentication for the user `postgres`. PostgreSQL refuses to run as
root: as root the commands run as the `postgres` user (`runuser`), who owns the directory.
fsync is off: the tests do not survive power cuts, and it spares the disk.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile


def pg_bin() -> str | None:
    """The folder of initdb and pg_ctl, or None when PostgreSQL is not installed."""
    candidates = [os.environ.get("TOLLWAY_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    on_path = shutil.which("pg_ctl")
    candidates.append(os.path.dirname(on_path) if on_path else "")
    return next((c for c in candidates if c and os.path.exists(os.path.join(c, "pg_ctl"))), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgInstance:
    def __init__(self, bin_dir: str) -> None:
        self.bin = bin_dir
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="tollway-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "log")
        self._user: str | None = None
        if os.geteuid() == 0:  # postgres will not run as root
            self._user = "postgres"
            account = pwd.getpwnam(self._user)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [os.path.join(self.bin, tool), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
            raise RuntimeError(f"{tool} failed: {done.stderr or done.stdout}\n{log}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; `immediate` is a crash as clients see it (connections cut at once)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    def answers(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def destroy(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            try:
                self.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

