"""A tiny IMAP proxy in front of Dovecot that behaves like 163.com: SELECT and EXAMINE are
refused ("Unsafe Login") until the client has sent the ID command (RFC 2971). It can also
cut every connection at once, like a server that goes away in the middle of IDLE.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.servers.dovecot import Dovecot
from tests.servers.smtp import HOST

_COMMAND = re.compile(rb"^(\S+) (ID|SELECT|EXAMINE)\b", re.I)


class IdProxy:
    def __init__(self, upstream_port: int, require_id: bool = True, hide_id: bool = False) -> None:
        self.upstream_port, self.require_id, self.hide_id = upstream_port, require_id, hide_id
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        self.ids_seen = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((HOST, self.upstream_port))
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data.replace(b" ID ", b" ") if self.hide_id else data)
        except OSError:
            pass
        self._close(client, upstream)

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        seen_id = False
        try:
            reader = client.makefile("rb")
            while line := reader.readline():
                match = _COMMAND.match(line)
                if match and match.group(2).upper() == b"ID":
                    seen_id = True
                    with self._lock:
                        self.ids_seen += 1
                elif match and self.require_id and not seen_id:
                    with self._lock:
                        self.refused += 1
                    client.sendall(match.group(1) + b" NO SELECT Unsafe Login. Please contact "
                                   b"kefu@188.com for help\r\n")
                    continue
                upstream.sendall(line)
            reader.close()
        except OSError:
            pass
        self._close(client, upstream)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> int:
        """Drop every open connection (the server "went away"); how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            self._close(client, upstream)
        return len(pairs)

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def id_proxy(dovecot: Dovecot) -> Iterator[IdProxy]:
    """A 163-style server: SELECT is refused until the client sends ID."""
    proxy = IdProxy(dovecot.imap)
    yield proxy
    proxy.close()
