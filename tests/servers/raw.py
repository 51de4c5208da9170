"""A loopback TCP server (127.0.0.1, or ::1) answering each HTTP request with the bytes given.

For the parts of a response no well-behaved server sends: bodies cut at odd places, broken
status lines, folded headers, chunk extensions. Each request (read up to its blank line; the
tests send no bodies) takes the next `Reply` in order, the last one repeating; a reply's bytes
are written in pieces at its split points (with TCP_NODELAY, so the pieces tend to arrive
apart), and the connection is closed after it when `close` says so. `HANGUP` closes the
connection instead of answering, as a server that gave up a kept-alive connection just as a
request came. `connections` counts the connections accepted; `close_connections()` closes the
open ones, as a server that times out its idle connections.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    """The bytes of one answer, the offsets to cut them at, and whether to close after."""

    data: bytes
    splits: Sequence[int] = ()
    close: bool = False
    hold: bool = False  # send the bytes, then neither answer nor close until the server stops

    def pieces(self) -> Iterator[bytes]:
        start = 0
        for cut in sorted({c for c in self.splits if 0 < c < len(self.data)}):
            yield self.data[start:cut]
            start = cut
        yield self.data[start:]


HANGUP = Reply(b"", close=True)


class RawServer:
    """Answer requests on 127.0.0.1 with given bytes; see the module's docstring."""

    def __init__(self, *replies: Reply, host: str = HOST) -> None:
        self.replies: list[Reply] = list(replies) or [Reply(b"HTTP/1.1 204 No Content\r\n\r\n")]
        self.requests: list[bytes] = []  # each request's head, as received
        self.connections = 0
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, 0), family=family)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._answered = 0
        self._accepter = threading.Thread(target=self._accept, name="raw-accept", daemon=True)
        self._accepter.start()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def url(self, path: str = "/") -> str:
        authority = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{authority}:{self.port}{path}"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def serve(self, *replies: Reply) -> None:
        """Answer the requests from now on with `replies` (in order, the last repeating)."""
        with self._lock:
            self.replies = list(replies)
            self._answered = 0

    def close_connections(self) -> None:
        """Close every open connection (idle kept-alive ones included)."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Close the listener and every connection, and join every thread."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.close_connections()
        self._accepter.join(5)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(conn,), name="raw-conn", daemon=True)
            with self._lock:
                self.connections += 1
                self._open.add(conn)
                self._threads.append(thread)
            thread.start()

    def _next(self, head: bytes) -> Reply:
        with self._lock:
            self.requests.append(head)
            reply = self.replies[min(self._answered, len(self.replies) - 1)]
            self._answered += 1
            return reply

    def _serve(self, conn: socket.socket) -> None:
        buffered = b""
        try:
            while not self._stopped.is_set():
                while b"\r\n\r\n" not in buffered:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                reply = self._next(head)
                for piece in reply.pieces():
                    if piece:
                        conn.sendall(piece)
                if reply.hold:
                    self._stopped.wait()
                if reply.close:
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

