"""The upstream client against real local servers that send exact HTTP bytes.

Every scenario runs on both event loops the gateway may see (asyncio and uvloop): each test is
a coroutine handed to the `run` fixture, which runs it on a fresh loop of each kind.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from tollway.gateway.upstream.client import (
    Timeouts,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from tollway.gateway.upstream.errors import UpstreamMalformedHead

SECRET = "sk-upstream-secret-123"
FAST = Timeouts(connect=2, first_byte=2, idle=2)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request, monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                 "no_proxy", "ALL_PROXY", "all_proxy", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def run_on_loop(coro: Awaitable[None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(coro, 20))

    return run_on_loop


# -- tiny servers ------------------------------------------------------------------------------


class Server:
    """A local TCP server running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, path: str = "/v1/chat/completions", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._tasks.add(asyncio.current_task())
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: that is what several tests do on purpose
        except asyncio.CancelledError:
            pass  # __aexit__ stops handlers that wait forever (stalling upstreams)
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """One request: (head text, body), body framed by Content-Length."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    length = 0
    for line in head.split("\r\n")[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return head, await reader.readexactly(length)


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive server answering each request with its own request line."""
    while True:
        head, body = await read_request(reader)
        writer.write(ok(head.split("\r\n", 1)[0].encode() + b"|" + body))
        await writer.drain()


# -- keep-alive, framing, streaming ------------------------------------------------------------


def test_keep_alive_reuses_one_connection_and_sends_host_and_length(run):
    seen: list[str] = []

    async def handler(reader, writer):
        while True:
            head, body = await read_request(reader)
            seen.append(head)
            writer.write(ok(b"got " + body, "Content-Type: application/json\r\n"))
            await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            for i in range(3):
                resp = await client.request("POST", server.url("/v1/x?a=1"), [("X-Trace", str(i))],
                                            b'{"n":%d}' % i, FAST)
                assert resp.status == 200
                assert resp.header("content-type") == "application/json"
                assert await resp.read() == b'got {"n":%d}' % i
                resp.close()
            await client.aclose()
            assert server.connections == 1
        first = seen[0].split("\r\n")
        assert first[0] == "POST /v1/x?a=1 HTTP/1.1"
        assert f"Host: 127.0.0.1:{server.port}" in first
        assert "Content-Length: 7" in first and "X-Trace: 0" in first

    run(scenario())


def test_caller_framing_headers_are_replaced_not_duplicated(run):
    heads: list[str] = []

    async def handler(reader, writer):
        head, _ = await read_request(reader)
        heads.append(head)
        writer.write(ok(b"x"))

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            headers = [("Host", "evil"), ("Content-Length", "999"), ("Transfer-Encoding", "chunked")]
            resp = await client.request("POST", server.url(), headers, b"abc", FAST)
            assert await resp.read() == b"x"
            await client.aclose()
        lower = heads[0].lower()
        lines = lower.split("\r\n")
        assert "evil" not in lower and "content-length: 999" not in lines and "transfer-encoding" not in lower
        assert lines.count("content-length: 3") == 1  # (not "999" anywhere: the server's port may hold it)

    run(scenario())


def test_requests_started_in_one_loop_turn_each_get_their_own_answer(run):
    # Only the first write of a loop turn goes out at once; the others wait for the turn's end
    # (tollway.gateway.upstream.client._WriteBatch). Each must still reach its own connection whole and in order,
    # large bodies (head and body written separately) included.
    async def scenario():
        async with Server(echo_forever) as server:
            client = UpstreamClient()

            async def call(i: int, size: int) -> None:
                body = bytes([65 + i % 26]) * size
                resp = await client.request("POST", server.url(f"/r{i}"), [], body, FAST)
                assert await resp.read() == f"POST /r{i} HTTP/1.1|".encode() + body

            await asyncio.gather(*(call(i, 10) for i in range(8)))  # open and pool 8 connections
            sizes = [10, 70_000, 3, 200_000, 0, 65_536, 1, 100]
            await asyncio.gather(*(call(i, size) for i, size in enumerate(sizes)))
            await client.aclose()
            assert server.connections == 8

    run(scenario())


def test_chunked_body_and_reuse_after_it(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await echo_forever(reader, writer)

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            resp = await client.request("GET", server.url("/a"), [], b"", FAST)
            assert await resp.read() == b"hello world"
            resp = await client.request("GET", server.url("/b"), [], b"", FAST)
            assert await resp.read() == b"GET /b HTTP/1.1|"
            await client.aclose()
            assert server.connections == 1

    run(scenario())


def test_streamed_chunks_arrive_before_the_body_ends(run):
    async def scenario():
        release_second = asyncio.Event()

        async def handler(reader, writer):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            writer.write(b"d\r\ndata: first\n\n\r\n")
            await writer.drain()
            await release_second.wait()  # the second chunk exists only after the client saw one
            writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
            await writer.drain()

        async with Server(handler) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url(), [], b"{}", FAST)
            received = []
            async for chunk in resp:
                received.append(chunk)
                release_second.set()
            assert received == [b"data: first\n\n", b"data: second\n\n"]
            resp.close()
            await client.aclose()

    run(scenario())


def test_close_delimited_body_ends_at_eof_and_is_not_pooled(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            for _ in range(2):
                resp = await client.request("GET", server.url(), [], b"", FAST)
                assert await resp.read() == b"until the end"
            await client.aclose()
            assert server.connections == 2

    run(scenario())


def test_interim_100_continue_is_skipped(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            resp = await client.request("POST", server.url(), [], b"x", FAST)
            assert (resp.status, await resp.read()) == (200, b"final")
            await client.aclose()

    run(scenario())


def test_head_response_has_no_body_despite_its_length(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            resp = await client.request("HEAD", server.url(), [], b"", FAST)
            assert (resp.header("content-length"), await resp.read()) == ("1000", b"")
            await client.aclose()

    run(scenario())


def test_unread_body_drops_the_connection_instead_of_pooling_it(run):
    async def scenario():
        async with Server(echo_forever) as server:
            client = UpstreamClient()
            resp = await client.request("GET", server.url("/a"), [], b"", FAST)
            resp.close()
            resp.close()  # idempotent
            resp = await client.request("GET", server.url("/b"), [], b"", FAST)
            assert await resp.read() == b"GET /b HTTP/1.1|"
            await client.aclose()
            assert server.connections == 2

    run(scenario())


# -- stale keep-alive retry --------------------------------------------------------------------


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(ok(b"one"))
        await writer.drain()
        await read_request(reader)  # the upstream gave up on this connection as we reused it
        writer.transport.abort()

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            assert await (await client.request("POST", server.url(), [], b"1", FAST)).read() == b"one"
            assert await (await client.request("POST", server.url(), [], b"2", FAST)).read() == b"one"
            await client.aclose()
            assert server.connections == 2

    run(scenario())


def test_fresh_connection_closed_without_response_is_not_retried(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.transport.abort()

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            with pytest.raises(UpstreamConnectError, match="without responding") as err:
                await client.request("POST", server.url(), [("Authorization", SECRET)], b"x", FAST)
            # the request was sent: the upstream may have acted on it, so it is not "unreachable"
            assert not isinstance(err.value, UpstreamUnreachable)
            await client.aclose()
            assert server.connections == 1

    run(scenario())


def test_stale_retry_happens_only_once(run):
    async def handler(reader, writer):
        if server.connections == 1:
            await read_request(reader)
            writer.write(ok(b"one"))
            await writer.drain()
        await read_request(reader)
        writer.transport.abort()

    server = Server(handler)

    async def scenario():
        async with server:
            client = UpstreamClient()
            await (await client.request("GET", server.url(), [], b"", FAST)).read()
            with pytest.raises(UpstreamConnectError):
                await client.request("GET", server.url(), [], b"", FAST)
            await client.aclose()
            assert server.connections == 2

    run(scenario())


def test_reset_mid_body_is_a_disconnect(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            resp = await client.request("GET", server.url(), [], b"", FAST)
            with pytest.raises(UpstreamDisconnected):
                await resp.read()
            await client.aclose()

    run(scenario())


# -- timeouts and connection failures ----------------------------------------------------------


async def stall(reader, writer):
    await asyncio.sleep(30)


def test_first_byte_timeout(run):
    async def scenario():
        async with Server(stall) as server:
            client = UpstreamClient()
            with pytest.raises(UpstreamTimeout) as err:
                await client.request("POST", server.url(), [("Authorization", SECRET)], b"{}",
                                     Timeouts(first_byte=0.2))
            assert err.value.phase == "first_byte"
            assert SECRET not in str(err.value) and str(server.port) in str(err.value)
            await client.aclose()

    run(scenario())


def test_idle_timeout_between_chunks(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            resp = await client.request("GET", server.url(), [], b"", Timeouts(idle=0.2))
            chunks = aiter(resp)
            assert await anext(chunks) == b"abc"
            with pytest.raises(UpstreamTimeout) as err:
                await anext(chunks)
            assert err.value.phase == "idle"
            await client.aclose()

    run(scenario())


def test_connect_timeout_covers_the_tls_handshake(run, tmp_path):
    async def scenario():
        async with Server(stall) as server:  # accepts TCP, never answers the ClientHello
            client = UpstreamClient()
            with pytest.raises(UpstreamTimeout) as err:
                await client.request("GET", server.url(scheme="https"), [], b"", Timeouts(connect=0.2))
            assert err.value.phase == "connect"
            await client.aclose()

    run(scenario())


def test_connection_refused(run):
    with socket.socket() as sock:  # a port that was just free and now has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario():
        client = UpstreamClient()
        with pytest.raises(UpstreamUnreachable, match=f"127.0.0.1:{port}"):  # nothing was sent
            await client.request("GET", f"http://127.0.0.1:{port}/", [], b"", FAST)
        await client.aclose()

    run(scenario())


def test_oversized_response_headers_are_refused(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"y" * 100))
            await writer.drain()
        await asyncio.sleep(30)

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            with pytest.raises(UpstreamMalformedHead, match="too large"):
                await client.request("GET", server.url(), [], b"", FAST)
            await client.aclose()

    run(scenario())


def test_malformed_status_line_and_header_injection(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")

    async def scenario():
        async with Server(handler) as server:
            client = UpstreamClient()
            with pytest.raises(UpstreamMalformedHead, match="malformed"):
                await client.request("GET", server.url(), [], b"", FAST)
            with pytest.raises(ValueError) as err:
                await client.request("GET", server.url(), [("X-A", SECRET + "\r\nX-B: 1")], b"", FAST)
            assert SECRET not in str(err.value)
            await client.aclose()

    run(scenario())


# -- flow control ------------------------------------------------------------------------------


def test_slow_consumer_pauses_the_upstream(run):
    total = 32 * 1024 * 1024
    piece = b"z" * 65536

    async def scenario():
        sent = 0

        async def handler(reader, writer):
            nonlocal sent
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            while sent < total:
                writer.write(piece)
                sent += len(piece)
                await writer.drain()

        async with Server(handler) as server:
            client = UpstreamClient()
            resp = await client.request("GET", server.url(), [], b"", FAST)
            received = len(await anext(aiter(resp)))
            await asyncio.sleep(0.5)  # a consumer that stopped reading
            # The kernel buffers a few MB on loopback; everything else must wait upstream.
            assert sent < total - 8 * 1024 * 1024
            assert resp._conn.buffered <= 512 * 1024
            async for chunk in resp:
                received += len(chunk)
            assert received == total
            await client.aclose()

    run(scenario())


# -- TLS and proxies ---------------------------------------------------------------------------


def make_certs(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `names` (DNS names and 127.0.0.1) signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollway test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def certs(tmp_path):
    pytest.importorskip("cryptography")
    return make_certs(tmp_path, ["api.example.test"])


def server_tls(certs: tuple[Path, Path, Path], seen_sni: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs[1], certs[2])
    context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)
    return context


def test_tls_with_a_private_ca_bundle(run, certs):
    sni: list[str] = []

    async def scenario():
        async with Server(echo_forever, tls=server_tls(certs, sni)) as server:
            client = UpstreamClient(ca_bundle=str(certs[0]))
            for path in ("/a", "/b"):
                resp = await client.request("GET", server.url(path, "https"), [], b"", FAST)
                assert await resp.read() == f"GET {path} HTTP/1.1|".encode()
            await client.aclose()
            assert server.connections == 1

    run(scenario())


def test_tls_honours_ssl_cert_file_and_fails_without_it(run, certs, monkeypatch):
    async def scenario(expect_ok: bool):
        async with Server(echo_forever, tls=server_tls(certs, [])) as server:
            client = UpstreamClient()
            if expect_ok:
                assert (await client.request("GET", server.url(scheme="https"), [], b"", FAST)).status == 200
            else:
                with pytest.raises(UpstreamUnreachable, match="(?i)certificate"):
                    await client.request("GET", server.url(scheme="https"), [], b"", FAST)
            await client.aclose()

    run(scenario(expect_ok=False))
    monkeypatch.setenv("SSL_CERT_FILE", str(certs[0]))
    run(scenario(expect_ok=True))


class ConnectProxy:
    """A forward proxy for CONNECT that sends every tunnel to `target_port` and records heads."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.heads: list[str] = []
        self.server = Server(self._handle)

    async def _handle(self, reader, writer):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        self.heads.append(head)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def test_https_through_a_connect_proxy_with_sni_and_credentials(run, certs, monkeypatch):
    sni: list[str] = []

    async def scenario():
        async with Server(echo_forever, tls=server_tls(certs, sni)) as origin:
            proxy = ConnectProxy(origin.port)
            async with proxy.server:
                monkeypatch.setenv("https_proxy", f"http://user:p%40ss@127.0.0.1:{proxy.server.port}")
                client = UpstreamClient(ca_bundle=str(certs[0]))
                for _ in range(2):
                    resp = await client.request("POST", "https://api.example.test/v1/chat/completions",
                                                [], b"{}", FAST)
                    assert await resp.read() == b"POST /v1/chat/completions HTTP/1.1|{}"
                await client.aclose()
        assert len(proxy.heads) == 1  # the tunnelled connection was pooled and reused
        lines = proxy.heads[0].split("\r\n")
        assert lines[0] == "CONNECT api.example.test:443 HTTP/1.1"
        assert "Proxy-Authorization: Basic dXNlcjpwQHNz" in lines  # base64("user:p@ss")
        assert sni == ["api.example.test"]

    run(scenario())


def test_http_proxy_gets_absolute_urls_and_no_proxy_bypasses_it(run, monkeypatch):
    async def scenario():
        async with Server(echo_forever) as proxy, Server(echo_forever) as origin:
            monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{proxy.port}")
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            client = UpstreamClient()
            resp = await client.request("GET", "http://upstream.example.test:8080/v1/models", [], b"", FAST)
            assert await resp.read() == b"GET http://upstream.example.test:8080/v1/models HTTP/1.1|"
            resp = await client.request("GET", origin.url("/direct"), [], b"", FAST)
            assert await resp.read() == b"GET /direct HTTP/1.1|"
            await client.aclose()
            assert (proxy.connections, origin.connections) == (1, 1)

    run(scenario())


def test_proxy_refusing_connect_is_a_connect_error_without_credentials(run, monkeypatch):
    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async def scenario():
        async with Server(handler) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", f"http://user:{SECRET}@127.0.0.1:{proxy.port}")
            client = UpstreamClient()
            with pytest.raises(UpstreamUnreachable, match="407") as err:
                await client.request("GET", "https://api.example.test/", [], b"", FAST)
            assert SECRET not in str(err.value) and SECRET not in repr(err.value.__cause__)
            await client.aclose()

    run(scenario())


def test_connections_set_tcp_nodelay(run):
    async def scenario():
        async with Server(echo_forever) as server:
            client = UpstreamClient()
            await (await client.request("GET", server.url(), [], b"", FAST)).read()
            (pooled,) = client._idle[("http", "127.0.0.1", server.port)]
            sock = pooled.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            await client.aclose()

    run(scenario())


async def test_a_lost_connection_is_freed_without_the_cycle_collector():
    """Its parser called back into it (a cycle): the worker's heap is frozen (lifecycle.heap), so a
    connection pooled at the freeze and lost later must be freed by reference counting alone."""
    import gc
    import weakref

    from tollway.gateway.upstream.connection import _Connection
    from tollway.gateway.upstream.per_loop import _WaitClock, _WriteBatch

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    gc.disable()
    try:
        refs = []
        for _ in range(5):
            _, proto = await loop.create_connection(
                lambda: _Connection(loop, "t", _WriteBatch(loop), _WaitClock(loop)), "127.0.0.1", port)
            refs.append(weakref.ref(proto))
            del proto
        for _ in range(100):
            await asyncio.sleep(0.01)
            if all(ref() is None for ref in refs):
                break
        assert all(ref() is None for ref in refs), "a lost connection waits for the cycle collector"
    finally:
        gc.enable()
        server.close()
