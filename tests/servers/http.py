"""A real HTTP(S) server on 127.0.0.1 for tests and benchmarks, driven by a mutable route table.

Watchers are tested against real sockets rather than mocked requests, so connection pooling,
timeouts, streaming caps and charset handling are exercised the way they run in production.
Routes can be changed while the server runs; every request is recorded per path. Drip routes
and the `Tarpit` (TLS handshakes that never complete) are for total-deadline tests.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import pytest
import trustme

# Fullwidth punctuation (RUF001) is what Chinese pages really contain, so it is kept.
GBK_TEXT = "价格：人民币 128 元，库存充足；镕"  # noqa: RUF001 - 镕 is in GBK, not in GB2312
# Long enough for charset detection, which needs more than a few characters to be sure.
CHINESE_PROSE = "今天的天气很好，我们去公园散步吧。价格：人民币一百二十八元，库存充足。"  # noqa: RUF001
Body = bytes | Callable[[str], bytes]  # a callable gets the path: many generated pages, one route


class Route(Protocol):
    def serve(self, handler: Handler, path: str) -> None: ...


@dataclass
class Page:
    """A static (or generated) response; answers 304 to a matching conditional GET."""

    body: Body = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None  # an HTTP date, like "Wed, 21 Oct 2015 07:28:00 GMT"

    def serve(self, handler: Handler, path: str) -> None:
        validators = {"ETag": self.etag, "Last-Modified": self.last_modified}
        if self._not_modified(handler):
            handler.reply(304, {k: v for k, v in validators.items() if v}, b"")
            return
        body = self.body(path) if callable(self.body) else self.body
        headers = {"Content-Type": "text/html; charset=utf-8", **self.headers}
        headers.update({k: v for k, v in validators.items() if v})
        handler.reply(self.status, headers, body)

    def _not_modified(self, handler: Handler) -> bool:
        if self.etag and handler.headers.get("If-None-Match") == self.etag:
            return True
        since = handler.headers.get("If-Modified-Since")
        if not (self.last_modified and since):
            return False
        try:
            return parsedate_to_datetime(self.last_modified) <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False


@dataclass
class Hang:
    """Send nothing until the server is stopped or `release()`d, so client timeouts fire."""

    def serve(self, handler: Handler, path: str) -> None:
        handler.server.released.wait()
        handler.close_connection = True


@dataclass
class Stream:
    """Send chunks until the client hangs up; `declared_length` fakes a Content-Length."""

    chunk: bytes = b"x" * 65536
    declared_length: int | None = None

    def serve(self, handler: Handler, path: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain; charset=utf-8")
        if self.declared_length is not None:
            handler.send_header("Content-Length", str(self.declared_length))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        try:
            while not handler.server.released.is_set():
                handler.wfile.write(self.chunk)
        except OSError:
            return  # the client went away, as it should once it has seen enough


@dataclass
class Drip:
    """Send one byte every `interval` until the client hangs up or the server is released.

    ``part="body"``: complete headers, then a close-delimited body that never ends.
    ``part="headers"``: a status line, then one header line that never ends. Either way each
    read gets data long before a per-read timeout, so only a total deadline stops the client.
    """

    part: Literal["body", "headers"] = "body"
    interval: float = 0.1

    def serve(self, handler: Handler, path: str) -> None:
        handler.close_connection = True
        start = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                 if self.part == "body" else b"HTTP/1.1 200 OK\r\nX-Drip: ")
        try:
            handler.wfile.write(start)
            while not handler.server.released.wait(self.interval):
                handler.wfile.write(b"x")
        except OSError:
            return  # the client gave up, as it should at its deadline


@dataclass
class Seen:
    """One request as the server received it; header names are lower-cased."""

    method: str
    headers: dict[str, str]
    body: bytes


def default_routes() -> dict[str, Route]:
    """The routes every test server starts with; tests add or replace routes freely."""
    meta = f'<html><head><meta charset="gbk"></head><body>{GBK_TEXT}</body></html>'
    equiv = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=gb2312">'
             f"</head><body>{GBK_TEXT}</body></html>")
    return {
        "/": Page(b"hello"),
        "/gbk": Page(GBK_TEXT.encode("gbk"), headers={"Content-Type": "text/plain; charset=GBK"}),
        "/gbk-meta": Page(meta.encode("gbk"), headers={"Content-Type": "text/html"}),
        "/gb2312-equiv": Page(equiv.encode("gbk"), headers={"Content-Type": "text/html"}),
        "/invalid-utf8": Page(b"ok \xff\xfe\xc3 end"),
        "/error": Page(b"boom", status=500),
        "/loop": Page(status=302, headers={"Location": "/loop"}),
        "/hang": Hang(),
        "/endless": Stream(),
        "/drip-body": Drip("body"),
        "/drip-headers": Drip("headers"),
    }


class LocalHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer on 127.0.0.1 with a free port; use as a context manager or start/stop.

    `routes` maps exact paths to routes; `prefixes` maps path prefixes to routes (longest wins)
    for generated pages. `latency` delays every response, to model real sites in benchmarks.
    `peak_connections` is the most connections that were open at once (kept-alive ones
    included): what a per-host limit promises the site.
    """

    daemon_threads = False  # so server_close() joins every handler: nothing outlives a test
    block_on_close = True
    request_queue_size = 256  # the default backlog of 5 drops SYNs (1 s retries) under 32 threads

    def __init__(self, latency: float = 0.0, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.latency = latency
        self.tls = tls
        self.version = 0  # part of every generated page: bump it to change them all
        self.routes: dict[str, Route] = default_routes()
        self.prefixes: dict[str, Route] = {}
        self.released = threading.Event()
        self.seen: dict[str, list[Seen]] = {}
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.peak_connections = 0
        # A short poll interval makes stop() (which waits for the loop to notice) take ~20 ms.
        self._thread = threading.Thread(target=self.serve_forever, args=(0.02,), name="test-http",
                                        daemon=True)

    def __enter__(self) -> LocalHTTPServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Unblock hung handlers, drop idle keep-alive connections, and join every thread."""
        self.release()
        if self._thread.is_alive():
            self.shutdown()  # only returns once serve_forever has noticed
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    continue  # already closed by the handler
        self.server_close()
        if self._thread.ident is not None:
            self._thread.join()

    def url(self, path: str = "/") -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}{path}"

    def get_request(self) -> tuple[socket.socket, Any]:
        """With `tls`, hand handlers TLS sockets; the handshake runs in the handler's thread."""
        conn, address = super().get_request()
        if self.tls:
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def set(self, path: str, body: Body | str = b"", **page: Any) -> Page:
        """Serve a Page at `path` (str bodies are UTF-8); keyword args are Page fields."""
        route = Page(body.encode() if isinstance(body, str) else body, **page)
        self.routes[path] = route
        return route

    def generate(self, prefix: str = "/gen/", size: int = 2048) -> Page:
        """Serve a distinct page of about `size` bytes at every path under `prefix`."""

        def body(path: str) -> bytes:
            line = f"<p>{path} version {self.version}</p>\n".encode()
            return line * max(1, size // len(line))

        self.prefixes[prefix] = page = Page(body)
        return page

    def release(self) -> None:
        """Let hung requests finish and endless streams stop (for good: routes then don't hang)."""
        self.released.set()

    def requests(self, path: str) -> list[Seen]:
        with self._lock:
            return list(self.seen.get(path, ()))

    def count(self, path: str) -> int:
        return len(self.requests(path))

    def route_for(self, path: str) -> Route | None:
        if path in self.routes:
            return self.routes[path]
        matches = [prefix for prefix in self.prefixes if path.startswith(prefix)]
        return self.prefixes[max(matches, key=len)] if matches else None

    def record(self, path: str, seen: Seen) -> None:
        with self._lock:
            self.seen.setdefault(path, []).append(seen)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._connections.add(request)
            self.peak_connections = max(self.peak_connections, len(self._connections))
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)


class Handler(BaseHTTPRequestHandler):
    """Looks the path up in the server's route table; HTTP/1.1 so connections are kept alive."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms ACK stalls
    server: LocalHTTPServer
    timeout = 10  # a client that stalls cannot keep a handler (and teardown) waiting forever

    def do_any(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.record(path, Seen(self.command, {k.lower(): v for k, v in self.headers.items()},
                                      body))
        if self.server.latency:
            self.server.released.wait(self.server.latency)
        route = self.server.route_for(path)
        if route is None:
            self.reply(404, {"Content-Type": "text/plain"}, b"no such route")
        else:
            route.serve(self, path)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_any

    def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean; requests are in `server.seen` instead."""


class Tarpit:
    """A TCP port where TLS handshakes never complete, for https timeouts.

    `drip=False` accepts and stays silent. `drip=True` answers the ClientHello with the header
    of a 16 KB handshake record, then sends its bytes one every `interval`: the client's
    per-read timeout never fires. Use as a context manager; `url()` is an https:// address.
    """

    def __init__(self, drip: bool = False, interval: float = 0.1) -> None:
        self.drip = drip
        self.interval = interval
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.02)  # how quickly the accept loop notices close()
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="test-tarpit", daemon=True)

    def __enter__(self) -> Tarpit:
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._accepting.join()
        for thread in self._threads:
            thread.join()
        self._listener.close()

    def url(self, path: str = "/") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._hold, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _hold(self, conn: socket.socket) -> None:
        with conn:
            if not self.drip:
                self._stop.wait()
                return
            try:
                conn.recv(65536)  # the ClientHello
                conn.sendall(b"\x16\x03\x03\x40\x00")  # handshake record, TLS 1.2, 16384 bytes
                while not self._stop.wait(self.interval):
                    conn.sendall(b"\x00")
            except OSError:
                return  # the client gave up


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server TLS context with a certificate for 127.0.0.1 and localhost, signed by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def png(width: int = 4, height: int = 4, rgb: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    """A valid PNG image of one colour (8-bit RGB), as image viewers and browsers read it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServer]:
    """A running LocalHTTPServer with the default routes, stopped after the test."""
    with LocalHTTPServer() as server:
        yield server


@pytest.fixture
def hermetic_http(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The url kind's shared state kept out of a test's way: no developer proxy from the
    environment (it is read once per site), no pooled connection or per-host limit left over
    from another test before, and none left open or changed after."""
    from notifier.watchers._http import PER_HOST, close_pools, configure  # noqa: PLC0415

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    close_pools()
    yield
    configure(PER_HOST)
    close_pools()
