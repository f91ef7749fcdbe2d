"""The processes a benchmark run starts: pinned to a CPU, waited for, and stopped by PID.

Everything is a direct child of the benchmark process (orphans here become zombies: PID 1 does
not reap), and `ServiceSet.__exit__` stops every one of them, even after Ctrl-C.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Return once 127.0.0.1:port accepts connections; raises RuntimeError if `proc` died
    or the deadline passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f}s")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MB (granian forks its workers)."""
    return _tree_kb(pid, "status", "VmRSS:") / 1024


def tree_pss_mb(pid: int) -> float:
    """Proportional memory (PSS) of `pid` and its descendants, in MB: each page shared by n
    processes counts 1/n in each. A forked worker shares its parent's pages, which the sum of
    RSS counts twice; PSS is what the tree really holds."""
    return _tree_kb(pid, "smaps_rollup", "Pss:") / 1024


def _tree_kb(pid: int, proc_file: str, field: str) -> int:
    """The sum over `pid` and its descendants of `field` (a kB figure) in /proc/<pid>/<proc_file>."""
    total_kb = 0
    for member in _descendants(pid) | {pid}:
        try:
            for line in Path(f"/proc/{member}/{proc_file}").read_text().splitlines():
                if line.startswith(field):
                    total_kb += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited between listing and reading
    return total_kb


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time so far of these processes, every thread included."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def thread_cpu(pids: list[int]) -> dict[str, float]:
    """User + system CPU so far of these processes, by thread kind: `loop` (each process's main
    thread: a granian worker's event loop), `ledger` (the SQLite store's threads, named by
    tollway.gateway.lifecycle.threads), `other` (granian's own threads, tiktoken's, ...)."""
    out = {"loop": 0.0, "ledger": 0.0, "other": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                comm = (task / "comm").read_text().strip()
            except (FileNotFoundError, ProcessLookupError):
                continue  # (the thread ended meanwhile)
            kind = "loop" if task.name == str(pid) else "ledger" if comm.startswith("tollway-sql") else "other"
            out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return out


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


class ServiceSet:
    """Starts commands pinned with taskset; stops them all (by PID) on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._procs: list[subprocess.Popen] = []

    def start(self, name: str, cpu: str, argv: list[str], port: int, **popen) -> subprocess.Popen:
        """Run argv pinned to `cpu`, output to <logdir>/<name>.log; returns once `port` listens."""
        log = open(self.logdir / f"{name}.log", "wb")
        proc = subprocess.Popen(["taskset", "-c", cpu, *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, **popen)
        log.close()
        self._procs.append(proc)
        wait_for_port(port, proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM, then SIGKILL after 5 s; reaps the process."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc in self._procs:
            self._procs.remove(proc)

    def __enter__(self) -> ServiceSet:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def cpu_list(pid: int) -> str:
    """The CPUs `pid` may run on, as taskset prints them (proof of the pinning in the report)."""
    return ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(pid)))
