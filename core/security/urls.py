"""Connection URLs (a database's, Redis's) as messages and logs may show them: never their password.

`urlsplit` cuts the authority at the first `/`, `?` or `#`, so a password holding one of them
unescaped (base64 passwords often do) would not be recognised as a password by it, and a
message built on `urlsplit` would show it. These functions find the userinfo the way drivers
do, up to the authority's last `@`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from tollway.core.suggest import did_you_mean

# A query parameter whose name says it holds a secret: password=, sslpassword= (the client TLS
# key's passphrase), a token, a secret, a key's. Its value is shown as ***.
_QUERY_SECRET = re.compile(r"(?i)([?&][^=&#]*(?:pass|secret|token|key)[^=&#]*=)([^&#]*)")


def _split(url: str) -> tuple[str, str, str]:
    """(scheme://, userinfo, the rest: host, port, path, query), userinfo "" when none."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", url
    at = rest.rfind("@")
    before = rest[:at]
    if at >= 0 and "?" in before and "=" in before.split("?", 1)[1]:  # that @ is in the query (?user=a@b)
        at = rest.rfind("@", 0, rest.find("?"))
    if at < 0:
        return scheme + sep, "", rest
    return scheme + sep, rest[:at], rest[at + 1:]


def redact_url(url: str) -> str:
    """`url` with the password of its userinfo and the value of any query parameter whose name
    holds pass, secret, token or key (password=, sslpassword=, ...) as ***."""
    head, userinfo, rest = _split(url)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    shown = head + (userinfo + "@" if userinfo else "") + rest
    return _QUERY_SECRET.sub(r"\1***", shown)


def url_passwords(url: str) -> set[str]:
    """The URL's passwords and the values of its secret query parameters (see `redact_url`), as
    written and decoded (to take out of a driver's message)."""
    _, userinfo, rest = _split(url)
    found = {userinfo.split(":", 1)[1]} if ":" in userinfo else set()
    found |= {m.group(2) for m in _QUERY_SECRET.finditer(rest)}
    found.discard("")
    return found | {unquote(p) for p in found}


def url_address(url: str, default_port: int) -> str:
    """`host:port/path` of a URL (no userinfo, no query), for a start line."""
    _, _, rest = _split(url)
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    hostport, slash, path = rest.partition("/")
    if hostport.startswith("["):  # [IPv6]:port
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    port = port if port.isdigit() else str(default_port)
    return f"{host}:{port}" + (slash + path if path else "")


_REDIS_DB = re.compile(r"/?|/[0-9]+")
_DIGITS = re.compile(r"[0-9]+")


def redis_url_problem(url: str) -> str:
    """Why the Redis client could not use `url`, or "". Read as redis-py's `parse_url` reads it,
    so that nothing that passes here fails there (at startup, or in a reload), nor is quietly
    misread there (a database that is no number, a password cut short at an unescaped `/`). The
    problem never quotes the URL: it may hold a password."""
    try:
        parts = urlsplit(url)  # raises ValueError for a broken [IPv6] host
    except ValueError:
        return _NO_HOST
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "expected a redis://, rediss:// or unix:// URL"
    if parts.scheme == "unix":
        if not parts.path:
            return "a unix:// URL needs the socket's path, e.g. unix:///run/redis.sock"
    elif not parts.hostname:
        return _NO_HOST
    elif not _port_ok(parts):
        return "the port must be a number from 1 to 65535"
    elif not _REDIS_DB.fullmatch(unquote(parts.path)):
        return _NO_DB
    return _query_problem(parts)


def _query_problem(parts: SplitResult) -> str:
    """What is wrong with the URL's query parameters, as redis-py reads them: each one becomes
    a keyword of the connection (a name it does not take fails only when the first connection
    is made, a value it cannot convert when the client is built). Never quotes a value."""
    tls = parts.scheme == "rediss"
    for name, values in parse_qs(parts.query).items():  # (redis-py reads each name's first value)
        shown = name[:40]
        if name in _GATEWAY_SETS:
            return f"query parameter '{shown}' is not taken: the gateway sets it"
        check = _QUERY.get(name) or (_QUERY_TLS.get(name) if tls else None)
        if check is None:
            if name in _QUERY_TLS:
                return f"query parameter '{shown}' needs a rediss:// URL (TLS)"
            known = [*_QUERY, *_QUERY_TLS] if tls else list(_QUERY)
            return f"unknown query parameter '{shown}'{did_you_mean(name, known)}"
        problem = check(values[0])
        if problem:
            return _NO_DB if name == "db" else f"query parameter '{shown}': {problem}"
    return ""


def _count(least: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        return "" if _DIGITS.fullmatch(value) and int(value) >= least else f"must be a whole number >= {least}"
    return check


def _seconds(value: str) -> str:
    try:
        ok = math.isfinite(float(value)) and float(value) > 0
    except ValueError:
        ok = False
    return "" if ok else "must be a number of seconds > 0"


_BOOLS = frozenset(("", "0", "1", "f", "t", "false", "true", "n", "y", "no", "yes"))


def _bool(value: str) -> str:
    # redis-py reads any word but 0, f, false, n and no as true: `maybe` would quietly be true
    return "" if value.lower() in _BOOLS else "must be true or false"


def _protocol(value: str) -> str:
    return "" if value in ("2", "3") else "protocol must be 2 or 3"


def _text(value: str) -> str:
    return ""


# ssl.VerifyFlags' members (core imports no ssl)
_VERIFY_FLAGS = frozenset(("VERIFY_DEFAULT", "VERIFY_CRL_CHECK_LEAF", "VERIFY_CRL_CHECK_CHAIN", "VERIFY_X509_STRICT",
                           "VERIFY_X509_TRUSTED_FIRST", "VERIFY_ALLOW_PROXY_CERTS", "VERIFY_X509_PARTIAL_CHAIN"))


def _verify_flags(value: str) -> str:
    flags = value.replace("[", "").replace("]", "").split(",")
    return "" if all(f.strip() in _VERIFY_FLAGS for f in flags) else "expected names such as VERIFY_X509_STRICT"


def _cert_reqs(value: str) -> str:
    return "" if value.lower() in ("none", "optional", "required") else "expected none, optional or required"


# The query parameters a connection takes, with how to check each (tests keep this in step with
# redis-py: tests/test_config.py). Others are refused: a name the connection does not take
# (`timeout`, a typo) would fail at the first connection, in a request, not at start.
_QUERY: dict[str, Callable[[str], str]] = {
    "db": _count(0), "socket_timeout": _seconds, "socket_connect_timeout": _seconds, "socket_read_size": _count(1),
    "socket_keepalive": _bool, "retry_on_timeout": _bool, "max_connections": _count(1),
    "health_check_interval": _count(0), "protocol": _protocol, "legacy_responses": _bool,
    "client_name": _text, "lib_name": _text, "lib_version": _text, "username": _text, "password": _text,
}
_QUERY_TLS: dict[str, Callable[[str], str]] = {
    "ssl_check_hostname": _bool, "ssl_include_verify_flags": _verify_flags, "ssl_exclude_verify_flags": _verify_flags,
    "ssl_min_version": _count(0), "ssl_cert_reqs": _cert_reqs, "ssl_keyfile": _text, "ssl_certfile": _text,
    "ssl_ca_certs": _text, "ssl_ca_path": _text, "ssl_ca_data": _text, "ssl_ciphers": _text, "ssl_password": _text,
}
# What the gateway's code depends on (bytes replies, its own retry policy): a URL may not change it.
_GATEWAY_SETS = frozenset(("decode_responses", "encoding", "encoding_errors", "retry_on_error"))


def _port_ok(parts: SplitResult) -> bool:
    try:
        return parts.port != 0  # raises ValueError for ":abc" or out of range; None: the default port
    except ValueError:
        return False


_NO_HOST = ("a redis:// URL needs a host, e.g. redis://:password@redis.example:6379/0 (a password "
            "holding /, ?, # or @ must be percent-encoded)")
_NO_DB = "the database must be a number, e.g. redis://redis.example:6379/0"
