"""A TCP forwarder on 127.0.0.1 whose path can be frozen, for a network partition in a test.

A partition is not a crash: the process runs on, its sockets stay open, nothing is refused or
reset, and what it sends simply gets no answer until the path comes back (then everything held
flows on, late). Stopping the process (SIGSTOP) stops its clocks and threads too; this stops only
the bytes. `freeze()` makes every pump stop reading and writing, so bytes wait in the kernel's
buffers on both sides; `thaw()` lets them through. Connections made while frozen are accepted
and wait the same way.
"""

from __future__ import annotations

import contextlib
import socket
import threading

HOST = "127.0.0.1"


class TcpProxy:
    """Forward connections to `upstream_port` on 127.0.0.1 from `port`, freezable."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.connections = 0  # accepted so far, so a test can wait for a client to have come
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def freeze(self) -> None:
        """Stop forwarding in both directions, every connection open as it is."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again; what waited goes through."""
        self._flowing.set()

    def close(self) -> None:
        """Close the listener and every connection (thawed first, so no pump stays waiting)."""
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection((HOST, self.upstream_port))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), name="proxy-pump",
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy `source` to `sink`, waiting while frozen before each read and each write (a
        read that was already waiting when the path froze keeps its bytes until the thaw)."""
        try:
            while self._flowing.wait() and not self._closed.is_set():
                data = source.recv(65536)
                self._flowing.wait()
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)  # the end came through: pass it on
