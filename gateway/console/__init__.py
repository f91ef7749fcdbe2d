"""The operator console (issue 14): a static web app served at /ui, talking to /admin/*.

The files in `static/` are read once, when the gateway starts, into memory: a request never
touches the disk, and only those names are served (an allow-list, not a join onto a folder,
so `..`, encoded slashes or a NUL can name nothing else: they are a 404 like any unknown
path). Every answer carries a strict Content-Security-Policy (no inline script or style, no
other origin) and the headers that keep the page out of frames, sniffing and referrers.
`server.console: false` turns it off: /ui is then an unknown path. See docs/console.md.
"""
from __future__ import annotations

import re
from importlib import resources

from granian.rsgi import HTTPProtocol, Scope

from tollway.core import errors
from tollway.gateway.exchange import Exchange
from tollway.gateway.serving import Serving
from tollway.gateway.surfaces import Endpoint

PREFIX = "/ui"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_SECURITY = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    # The file names are not versioned: revalidate each time, so an upgrade never runs old code.
    ("cache-control", "no-cache"),
)
_TYPES = {
    ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon", ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # what a served file may be called: no '/', '%', NUL


def load_files() -> dict[str, tuple[str, bytes]]:
    """The console's files by name: (content type, bytes). Read once, at start."""
    files: dict[str, tuple[str, bytes]] = {}
    for entry in resources.files(__package__).joinpath("static").iterdir():
        name = entry.name
        suffix = name[name.rfind("."):] if "." in name else ""
        if entry.is_file() and _NAME.fullmatch(name) and ".." not in name and suffix in _TYPES:
            files[name] = (_TYPES[suffix], entry.read_bytes())
    return files


class Console:
    """GET /ui (index.html) and GET /ui/<file>, while `server.console` is true."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.files = load_files()
        self._index = self._endpoint("index.html")

    def routes(self) -> dict[tuple[str, str], Endpoint]:
        return {("GET", PREFIX): self._index}  # the app's table strips a trailing '/': /ui/ too

    def match(self, method: str, path: str) -> Endpoint | None:
        """The endpoint of /ui/<file>, or None (an unknown path: 404, the app says so)."""
        if method != "GET" or not path.startswith(PREFIX + "/"):
            return None
        name = path[len(PREFIX) + 1:]
        return self._endpoint(name) if name in self.files else None

    def allows(self, path: str) -> bool:
        """Whether `path` names a console file (a POST to it is a 405, not a 404)."""
        return self.enabled() and (path.rstrip("/") == PREFIX or path[len(PREFIX) + 1:] in self.files
                                   and path.startswith(PREFIX + "/"))

    def enabled(self) -> bool:
        return self.serving.runtime.config.server.console

    def _endpoint(self, name: str) -> Endpoint:
        content_type, body = self.files[name]
        headers = [("content-type", content_type), *_SECURITY]

        async def serve(scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
            if not self.enabled():  # (read per request: a reload may turn it off or on)
                raise errors.not_found(scope.path)
            ex.status = 200
            proto.response_bytes(200, [*headers, ("x-request-id", ex.request_id)], body)

        return Endpoint("console", serve)
