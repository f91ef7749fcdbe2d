"""Connection URLs (a database's, Redis's) as messages and logs may show them: never their password.

`urlsplit` cuts the authority at the first `/`, `?` or `#`, so a password holding one of them
unescaped (base64 passwords often do) would not be recognised as a password by it, and a
message built on `urlsplit` would show it. These functions find the userinfo the way drivers
do, up to the authority's last `@`.
"""
from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

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
    db = parse_qs(parts.query).get("db")  # (it wins over the path's)
    return _NO_DB if db and not _DIGITS.fullmatch(db[0]) else ""


def _port_ok(parts: SplitResult) -> bool:
    try:
        return parts.port != 0  # raises ValueError for ":abc" or out of range; None: the default port
    except ValueError:
        return False


_NO_HOST = ("a redis:// URL needs a host, e.g. redis://:password@redis.example:6379/0 (a password "
            "holding /, ?, # or @ must be percent-encoded)")
_NO_DB = "the database must be a number, e.g. redis://redis.example:6379/0"
