"""The `tollway` command: serve, check, hash-key, usage, keys, version."""
from __future__ import annotations

import argparse
import getpass
import os
import sys

from tollway.core import config as config_mod
from tollway.core.security.demo_keys import demo_credentials
from tollway.core.security.keys import hash_key
from tollway.gateway.store import usage_command
from tollway.gateway.tenancy import command as keys_command


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tollway", description="Tollway: an OpenAI-compatible AI gateway.")
    sub = p.add_subparsers(metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", required=True, metavar="FILE", help="the YAML config file (required)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port to listen on (default: %(default)s)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes; more than 1 needs rate_limits.backend: redis when limits are set "
                            "(default: %(default)s)")
    serve.add_argument("--reuse-port", action="store_true",
                       help="start even if another server listens on the port, and share it with that server "
                            "(SO_REUSEPORT: the kernel splits connections between them; for a zero-downtime "
                            "hand-over). Without it a taken port is an error (default: off)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config file, listing every problem")
    check.add_argument("file")
    check.add_argument("--allow-missing-env", action="store_true",
                       help="validate a config whose ${VARS} (secrets) are not set here: list them, and skip the "
                            "checks of the values that use them (default: an unset variable is an error)")
    check.set_defaults(func=cmd_check)

    hk = sub.add_parser("hash-key", help="read a gateway key on stdin, print its key_hash")
    hk.add_argument("--pepper-env", metavar="VAR", help="HMAC pepper from this environment variable (server.key_pepper)")
    hk.set_defaults(func=cmd_hash_key)

    usage_command.add_parser(sub)
    keys_command.add_parser(sub)

    ver = sub.add_parser("version", help="print the version and whether the native kernels are active")
    ver.set_defaults(func=cmd_version)
    return p


def cmd_check(args: argparse.Namespace) -> int:
    """Every problem on its own line (path, problem, line), in file order; exit 1 if any.
    Warnings (models with no price, demo keys beside a real provider) are listed too, but do not fail the check."""
    checked = config_mod.check_file(args.file, allow_missing_env=args.allow_missing_env)
    for unset in _in_file_order(checked.unset_env):
        print(f"{args.file}: note: {unset}; values using it were not checked", file=sys.stderr)
    for error in _in_file_order(checked.errors):
        print(f"{args.file}: {error}", file=sys.stderr)
    cfg = checked.config
    for warning in _in_file_order(checked.warnings) + _demo_credential_warnings(cfg, checked):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    if checked.errors or cfg is None:
        count = len(checked.errors)
        print(f"{args.file}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok ({len(cfg.providers)} providers, {len(cfg.models)} models, {len(cfg.keys)} keys)")
    return 0


def _demo_credential_warnings(cfg: config_mod.Config | None, checked: config_mod.Checked) -> list[config_mod.ConfigError]:
    """Credentials that are the examples' published demo keys while a provider is real (the same
    finding `tollway serve` logs at start; tollway.core.security.demo_keys). Like the other
    warnings, only for a config without errors. They carry no line: the entry names itself."""
    if cfg is None or checked.errors:
        return []
    return [config_mod.ConfigError(demo.entry, demo.message) for demo in demo_credentials(cfg)]


def _in_file_order(errors: list[config_mod.ConfigError]) -> list[config_mod.ConfigError]:
    return sorted(errors, key=lambda e: e.line or 0)  # stable: same-line problems keep the order found


def cmd_hash_key(args: argparse.Namespace) -> int:
    key = getpass.getpass("gateway key: ") if sys.stdin.isatty() else sys.stdin.read()
    key = key.strip()
    if not key:
        print("tollway hash-key: no key on stdin", file=sys.stderr)
        return 1
    pepper = os.environ.get(args.pepper_env) if args.pepper_env else None
    if args.pepper_env and not pepper:
        print(f"tollway hash-key: environment variable {args.pepper_env} is not set", file=sys.stderr)
        return 1
    print(hash_key(key, pepper))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    from tollway.core import kernels

    try:
        v = version("tollway")
    except PackageNotFoundError:
        v = "0.0.0+source"
    mode = "accelerated (compiled kernels active)" if kernels.ACCELERATED else "pure Python (compiled kernels not active)"
    print(f"tollway {v}")
    print(f"kernels: {mode}")
    for name, impl in sorted(kernels.ACTIVE.items()):
        print(f"  {name}: {impl}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.workers > 1:
        problem = _share_metrics_between_workers()
        if problem:
            _refuse(problem)
            return 1
    from tollway.gateway.lifecycle.serve import serve

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        _refuse(f"{args.config}: {exc}")
        return 1
    return serve(cfg, os.path.abspath(args.config), args.host, args.port, args.workers, reuse_port=args.reuse_port)


def _refuse(message: str) -> None:
    """serve's refusals are JSON lines on stderr like its other diagnostics (imported here,
    after the metrics directory is set: the logging module imports nothing of prometheus)."""
    from tollway.gateway.telemetry.logs import refuse
    refuse(f"refusing to start: {message}")


def _share_metrics_between_workers() -> str | None:
    """Point prometheus-client at a fresh directory that every worker writes its counts to.
    Returns what went wrong if there is no writable temporary directory to make it in.

    It must happen before prometheus_client is imported anywhere in this process: the
    workers are forked from it and keep the value store chosen at import.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the metrics directory was set")
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return None
    import tempfile

    try:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tollway-metrics-")
    except OSError as exc:  # e.g. a read-only root filesystem with no volume on /tmp
        return (f"more than one worker keeps its metrics in a temporary directory, and none is writable ({exc}). "
                "Point TMPDIR at a writable directory (on Kubernetes, an emptyDir volume), or serve with --workers 1.")
    return None


if __name__ == "__main__":
    sys.exit(main())
