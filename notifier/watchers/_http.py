"""Pooled HTTP sessions whose requests keep a total deadline, however the server behaves.

requests and urllib3 only know per-operation timeouts: a server that drips one byte a second
(in the body, in endless headers, or in the TLS handshake) never trips them. So every fetch
runs inside a `Deadline`, and the connections urllib3 opens or reuses for it report their
sockets to it. When the deadline passes, the watchdog thread shuts those sockets down, which
wakes the blocked read at once; the fetch then sees `fired` and reports a timeout. Connecting
is bounded as well: each connect gets at most the time left.

A connection that goes back to the pool leaves its fetch's deadline first, so one fetch's
deadline can never cut a connection another fetch is using.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from contextvars import ContextVar
from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any
from urllib.request import Request

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

from notifier.watchers._watchdog import watchdog

USER_AGENT = "notifier/0.1 (change monitor)"
POOL_SIZE = 64  # above the ~32 threads of a pass, so no thread waits for or discards a connection

_current: ContextVar[Deadline | None] = ContextVar("notifier_http_deadline", default=None)


class Deadline:
    """The total time one fetch may take, enforced on every socket the fetch uses.

    Use as a context manager around the request and the body reads. Sockets are watched
    through duplicates of their file descriptors: a duplicate stays valid however urllib3
    wraps (TLS) or closes the original, so shutting it down can never hit a reused fd.
    """

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.fired = False
        self._lock = threading.Lock()
        self._watched: dict[HTTPConnection, tuple[socket.socket, socket.socket]] = {}  # (used, dup)
        self._over = False

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.fired or self.remaining() <= 0

    def __enter__(self) -> Deadline:
        self._token = _current.set(self)
        self._alarm = watchdog.arm(self.at, self._fire)
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
        _current.reset(self._token)

    def finish(self) -> bool:
        """Stop watching (the work is over) and say whether the deadline cut it short."""
        self._alarm.cancel()
        with self._lock:
            self._over = True
            for _, dup in self._watched.values():
                dup.close()
            self._watched.clear()
            return self.fired

    def watch(self, conn: HTTPConnection, sock: socket.socket) -> None:
        """Cut `sock` at the deadline. A connection has one socket at a time: a new one (a
        reconnect, or the TLS socket wrapping the raw one) replaces the old."""
        with self._lock:
            if self._over:
                return
            old = self._watched.get(conn)
            if old is not None:
                if old[0] is sock:
                    return
                old[1].close()
            dup = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
            self._watched[conn] = (sock, dup)
            if self.fired:  # the deadline passed while this connection was being opened
                _shut(dup)

    def release(self, conn: HTTPConnection) -> None:
        with self._lock:
            watched = self._watched.pop(conn, None)
            if watched is not None:
                watched[1].close()

    def _fire(self) -> None:
        """On the watchdog thread: wake every blocked read of this fetch with EOF."""
        with self._lock:
            if self._over:
                return
            self.fired = True
            for _, dup in self._watched.values():
                _shut(dup)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected yet, or the peer already closed it
        sock.shutdown(socket.SHUT_RDWR)


class _Connection(HTTPConnection):
    """An urllib3 connection that reports its socket to the current fetch's Deadline."""

    _deadline: Deadline | None = None

    def _new_conn(self) -> socket.socket:
        deadline = _current.get()
        if deadline is not None and isinstance(self.timeout, int | float):
            self.timeout = max(min(self.timeout, deadline.remaining()), 0.001)
        sock = super()._new_conn()
        self._watch_by(deadline, sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:  # a kept-alive connection from the pool
            self._watch_by(_current.get(), self.sock)
        super().request(*args, **kwargs)

    def _watch_by(self, deadline: Deadline | None, sock: socket.socket) -> None:
        if deadline is not self._deadline:
            self.leave_deadline()
        if deadline is not None:
            self._deadline = deadline
            deadline.watch(self, sock)

    def leave_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.release(self)
            self._deadline = None


class _TLSConnection(_Connection, HTTPSConnection):
    """The https variant; its TLS handshake is covered, since the raw socket is watched."""


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection

    def _put_conn(self, conn: Any) -> None:
        if isinstance(conn, _Connection):
            conn.leave_deadline()
        super()._put_conn(conn)


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection

    def _put_conn(self, conn: Any) -> None:
        if isinstance(conn, _Connection):
            conn.leave_deadline()
        super()._put_conn(conn)


_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _Pool, "https": _TLSPool}


class _Adapter(HTTPAdapter):
    """An HTTPAdapter whose pools (direct and through http/https proxies) are deadline-aware.

    SOCKS proxies keep urllib3's own pools: there the deadline is checked between reads only.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager


class _NoCookies(DefaultCookiePolicy):
    """Keep no cookies between checks, as urlwatch does: every check is a first visit.

    Cookies still flow inside one check's redirect chain (requests uses a per-request jar),
    and sessions shared by unrelated watchers cannot leak a login from one to another.
    """

    def set_ok(self, cookie: Cookie, request: Request) -> bool:
        return False


_sessions: dict[tuple[str, str, int, int], requests.Session] = {}
_sessions_lock = threading.Lock()


def session(key: tuple[str, str, int, int]) -> requests.Session:
    """The shared session for scheme, host, port and redirect limit (a Session-wide setting)."""
    found = _sessions.get(key)  # a dict read is atomic; lock only to create
    if found is None:
        with _sessions_lock:
            found = _sessions.get(key) or _new_session(*key)
            _sessions[key] = found
    return found


def _new_session(scheme: str, host: str, port: int, max_redirects: int) -> requests.Session:
    new = requests.Session()
    # No retries here: the scheduler retries with backoff and counts failures.
    adapter = _Adapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
    new.mount("http://", adapter)
    new.mount("https://", adapter)
    new.max_redirects = max_redirects
    new.cookies.set_policy(_NoCookies())
    new.headers["User-Agent"] = USER_AGENT
    # Proxy variables, NO_PROXY and ~/.netrc are read once per host here instead of on every
    # request, where they cost a third of a fetch; sessions are per host, so this is exact.
    base = f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"
    new.trust_env = False
    new.proxies.update(requests.utils.get_environ_proxies(base))
    new.auth = requests.utils.get_netrc_auth(base)
    return new


def close_sessions() -> None:
    """Close every pooled connection; call at shutdown (watchers may still fetch afterwards)."""
    with _sessions_lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for each in sessions:
        each.close()
