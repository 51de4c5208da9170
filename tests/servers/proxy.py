"""Small real proxies on 127.0.0.1 for the url kind's tests: an HTTP proxy that opens CONNECT
tunnels and forwards http:// requests, and a SOCKS server speaking SOCKS5 (RFC 1928, with
user/password login per RFC 1929) and SOCKS4/4a. Each records what it was asked (`Asked`:
the target as the client named it, the login it sent), resolves names only through its own
`hosts` table (so a test can reach a local server by a name no resolver knows, and prove the
client did not resolve it), and relays bytes both ways. With `tls`, the proxy itself is
reached over TLS (an https:// proxy: a site's TLS then runs inside the proxy's). Threaded;
`stop()` (or leaving the `with` block) closes the listener and every connection and joins
every thread.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

HOST = "127.0.0.1"


@dataclass
class Asked:
    """One request a proxy received."""

    target: str  # host:port as the client named it (a name, or an address)
    name_given: bool = False  # the client left the name for the proxy to resolve
    authorization: str | None = None  # HTTP: the Proxy-Authorization value
    user: str | None = None  # SOCKS: the login sent
    password: str | None = None
    methods: bytes = b""  # SOCKS5: the login methods offered


class _Proxy:
    """Accept connections, hand each to `_handle` on a thread of its own, relay, record."""

    def __init__(self, hosts: dict[str, str] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.hosts = {"localhost": HOST, HOST: HOST, **(hosts or {})}
        self.tls = tls
        self.asked: list[Asked] = []
        self.connections = 0
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def __enter__(self) -> _Proxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _record(self, asked: Asked) -> None:
        with self._lock:
            self.asked.append(asked)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            self._track(conn)
            self._spawn(self._run, conn)

    def _run(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:  # the handshake here, on the connection's own thread
                conn = self.tls.wrap_socket(conn, server_side=True)
                self._track(conn)
            upstream = self._handle(conn)
        except (OSError, ValueError):
            upstream = None
        if upstream is None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            return
        self._spawn(self._pump, upstream, conn)
        self._pump(conn, upstream)

    def _handle(self, conn: socket.socket) -> socket.socket | None:
        raise NotImplementedError

    def _open(self, host: str, port: int) -> socket.socket | None:
        """A connection to host:port, the name resolved by `hosts` only; None if it fails."""
        address = self.hosts.get(host.lower(), host)
        try:
            ipaddress.ip_address(address)
            upstream = socket.create_connection((address, port), timeout=5)
        except (OSError, ValueError):
            return None
        upstream.settimeout(None)
        self._track(upstream)
        return upstream

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _read_until(conn: socket.socket, end: bytes) -> bytes:
    data = b""
    while end not in data:
        more = conn.recv(1)  # byte by byte: nothing past the head is taken from the tunnel
        if not more:
            raise ValueError("closed")
        data += more
    return data


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise ValueError("closed")
        data += more
    return data


class HttpProxy(_Proxy):
    """CONNECT tunnels, and http:// requests in absolute form (sent on with Connection:
    close, without Proxy-Authorization; the connection closes after the answer). `login`
    ("user:password") makes the proxy answer 407 to a request without that Basic
    Proxy-Authorization; `hang_up` makes it close instead of answering, `reset` makes it
    reset the connection (RST) instead."""

    def __init__(self, login: str | None = None, *, hang_up: bool = False, reset: bool = False,
                 hosts: dict[str, str] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.login = login
        self.hang_up = hang_up
        self.reset = reset
        super().__init__(hosts, tls)

    def _handle(self, conn: socket.socket) -> socket.socket | None:
        head = _read_until(conn, b"\r\n\r\n").decode("latin-1").split("\r\n")
        method, target, version = head[0].split(" ", 2)
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        authorization = fields.get("proxy-authorization")
        self._record(Asked(target, name_given=True, authorization=authorization))
        if self.reset:  # a zero linger time: close() sends RST, not FIN
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return None
        if self.hang_up:
            return None
        if self.login is not None and authorization != "Basic " + base64.b64encode(
                self.login.encode()).decode():
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
            return None
        if method != "CONNECT":
            return self._forward(conn, method, target, version, head[1:])
        host, _, port = target.rpartition(":")
        upstream = self._open(host.strip("[]"), int(port))
        if upstream is None:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return None
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return upstream


    def _forward(self, conn: socket.socket, method: str, target: str, version: str,
                 lines: list[str]) -> socket.socket | None:
        parts = urlsplit(target)
        upstream = self._open(parts.hostname or "", parts.port or 80) if parts.scheme == "http" else None
        if upstream is None:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return None
        kept = [line for line in lines
                if line and not line.lower().startswith(("proxy-authorization:", "connection:"))]
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = [f"{method} {path} {version}", *kept, "Connection: close", "", ""]
        upstream.sendall("\r\n".join(request).encode("latin-1"))
        return upstream


class SocksProxy(_Proxy):
    """SOCKS5 and SOCKS4/4a on one port (told apart by the first byte). With `login`
    ("user:password"), SOCKS5 clients must log in with it (method 2); a wrong one is refused."""

    def __init__(self, login: str | None = None, *, hosts: dict[str, str] | None = None) -> None:
        self.login = login
        super().__init__(hosts)

    def _handle(self, conn: socket.socket) -> socket.socket | None:
        version = _exactly(conn, 1)[0]
        if version == 5:
            return self._socks5(conn)
        if version == 4:
            return self._socks4(conn)
        return None

    def _socks5(self, conn: socket.socket) -> socket.socket | None:
        methods = _exactly(conn, _exactly(conn, 1)[0])
        wanted = 2 if self.login is not None else 0
        if wanted not in methods:
            self._record(Asked("", methods=methods))
            conn.sendall(b"\x05\xff")
            return None
        conn.sendall(bytes([5, wanted]))
        user = password = None
        if wanted == 2:
            _exactly(conn, 1)  # the sub-negotiation's version, 1
            user = _exactly(conn, _exactly(conn, 1)[0]).decode()
            password = _exactly(conn, _exactly(conn, 1)[0]).decode()
            if f"{user}:{password}" != self.login:
                self._record(Asked("", user=user, password=password, methods=methods))
                conn.sendall(b"\x01\x01")
                return None
            conn.sendall(b"\x01\x00")
        _, command, _, kind = _exactly(conn, 4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(_exactly(conn, 4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(_exactly(conn, 16)))
        else:
            host = _exactly(conn, _exactly(conn, 1)[0]).decode("idna")
        port = int.from_bytes(_exactly(conn, 2), "big")
        self._record(Asked(f"{host}:{port}", name_given=kind == 3, user=user, password=password,
                           methods=methods))
        upstream = self._open(host, port) if command == 1 else None
        reply = 0 if upstream is not None else (7 if command != 1 else 4)
        conn.sendall(bytes([5, reply, 0, 1]) + b"\x7f\x00\x00\x01" + b"\x00\x00")
        return upstream

    def _socks4(self, conn: socket.socket) -> socket.socket | None:
        command = _exactly(conn, 1)[0]
        port = int.from_bytes(_exactly(conn, 2), "big")
        packed = _exactly(conn, 4)
        user = _read_until(conn, b"\0")[:-1].decode()
        name_given = packed[:3] == b"\0\0\0" and packed[3] != 0  # SOCKS4a: the name follows
        host = _read_until(conn, b"\0")[:-1].decode() if name_given else socket.inet_ntoa(packed)
        self._record(Asked(f"{host}:{port}", name_given=name_given, user=user))
        upstream = self._open(host, port) if command == 1 else None
        conn.sendall(b"\x00" + (b"\x5a" if upstream is not None else b"\x5b") + b"\0" * 6)
        return upstream
