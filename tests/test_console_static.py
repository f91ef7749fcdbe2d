"""The console's files over plain HTTP (gateway/console): served from memory at /ui with a
strict CSP and the security headers on every answer, the right content types, nothing outside
its folder (`..`, encoded slashes, a NUL: 404), and `server.console: false` turns it off."""
from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ADMIN_KEY, GatewayProcess, key_hash
from tollway.gateway.console import CSP, Console, load_files

STATIC = Path(__file__).resolve().parent.parent / "gateway" / "console" / "static"
EXPECTED_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
                "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _config(console: bool | None = None) -> str:
    server = "" if console is None else f"server: {{console: {str(console).lower()}}}\n"
    return f"""
providers: [{{name: local, schema: fake}}]
models: [{{name: demo, targets: [{{provider: local}}]}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
{server}"""


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    process = GatewayProcess(_config())
    yield process
    process.stop()


def get(gw: GatewayProcess, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """`path` sent exactly as written (no client-side normalisation of '..' or escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_the_csp_is_the_one_asked_for():
    assert CSP == EXPECTED_CSP


@pytest.mark.parametrize(("path", "content_type", "file"), [
    ("/ui", "text/html; charset=utf-8", "index.html"),
    ("/ui/", "text/html; charset=utf-8", "index.html"),
    ("/ui/app.js", "text/javascript; charset=utf-8", "app.js"),
    ("/ui/chart.js", "text/javascript; charset=utf-8", "chart.js"),
    ("/ui/app.css", "text/css; charset=utf-8", "app.css"),
    ("/ui/icon.svg", "image/svg+xml", "icon.svg"),
])
def test_files_are_served_with_their_type_and_the_security_headers(gw: GatewayProcess, path: str, content_type: str,
                                                                  file: str):
    status, headers, body = get(gw, path)
    assert status == 200
    assert body == (STATIC / file).read_bytes()
    assert headers["content-type"] == content_type
    assert headers["content-security-policy"] == EXPECTED_CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-request-id"]


@pytest.mark.parametrize("path", [
    "/ui/../pyproject.toml", "/ui/..", "/ui/../gateway/app.py", "/ui/%2e%2e/pyproject.toml", "/ui/..%2fpyproject.toml",
    "/ui/%2E%2E%2Fpyproject.toml", "/ui/static/app.js", "/ui//app.js", "/ui/app.js%00", "/ui/app.js%00.css",
    "/ui/%2fetc%2fpasswd", "/ui/..%5c..%5cpyproject.toml", "/ui/__init__.py", "/ui/.", "/ui/app.js/", "/ui/APP.JS",
    "/ui/nope.html", "/uifoo", "/ui/index.html/../app.js",
])
def test_nothing_outside_the_folder_nor_unknown_is_served(gw: GatewayProcess, path: str):
    status, headers, body = get(gw, path)
    assert status == 404, (path, body)
    assert b'"unknown_url"' in body
    assert b"[tool." not in body and b"import" not in body


def test_other_methods_are_refused(gw: GatewayProcess):
    status, _, body = get(gw, "/ui/app.js", "POST")
    assert status == 405 and b"method_not_allowed" in body
    status, _, body = get(gw, "/ui", "DELETE")
    assert status == 405


def test_console_files_are_not_counted_as_gateway_traffic(gw: GatewayProcess):
    get(gw, "/ui")
    status, _, metrics = get(gw, "/metrics")
    assert status == 200 and b'operation="console"' not in metrics


def test_off_when_the_config_says_so():
    process = GatewayProcess(_config(console=False))
    try:
        for path in ("/ui", "/ui/", "/ui/app.js", "/ui/index.html"):
            status, headers, body = get(process, path)
            assert status == 404 and b'"unknown_url"' in body, path
            assert "content-security-policy" not in headers
        status, _, _ = get(process, "/ui/app.js", "POST")
        assert status == 404, "off: not even a 405 says it exists"
    finally:
        process.stop()


def test_the_app_has_no_inline_script_or_style_and_no_other_origin():
    index = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", index), "every script is a file"
    assert "<style" not in index and not re.search(r"\sstyle=", index)
    assert not re.search(r"\son[a-z]+=", index), "no inline event handlers"
    for path in STATIC.iterdir():
        text = path.read_text()
        urls = set(re.findall(r"https?://[^\s'\"<>)]+", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
        assert ".innerHTML" not in text and "eval(" not in text and "localStorage" not in text \
            and "sessionStorage" not in text and "document.cookie" not in text, path.name
        assert ".style." not in text and "setAttribute('style'" not in text, path.name


def test_every_file_is_read_once_into_memory():
    files = load_files()
    assert set(files) == {p.name for p in STATIC.iterdir()}
    assert all(isinstance(body, bytes) for _, body in files.values())


class _Runtime:
    class config:  # noqa: N801 - the shape Console reads
        class server:  # noqa: N801
            console = True


class _Serving:
    runtime = _Runtime()


@pytest.mark.parametrize("path", ["/ui/app.js", "/ui/index.html"])
def test_match_finds_a_listed_file(path: str):
    assert Console(_Serving()).match("GET", path) is not None  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/ui/../x", "/ui/a/b", "/ui/", "/ui/app.js\x00", "/ui/%2e%2e", "/admin/keys", "/ui/app.jsx"])
def test_match_refuses_anything_else(path: str):
    assert Console(_Serving()).match("GET", path) is None  # type: ignore[arg-type]
    assert Console(_Serving()).match("POST", "/ui/app.js") is None  # type: ignore[arg-type]


def test_the_files_are_package_data_so_the_wheel_ships_them():
    import fnmatch
    import tomllib

    project = tomllib.loads((STATIC.parent.parent.parent / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["tollway.gateway"]
    for path in STATIC.iterdir():
        assert any(fnmatch.fnmatch(f"console/static/{path.name}", g) for g in globs), path.name
