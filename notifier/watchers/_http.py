"""HTTP for the url kind: urllib3 pools shared by every url watcher, a total deadline on each
fetch, and a limit on the fetches in flight to one host.

urllib3 is used directly. requests prepared every request from scratch (merging session
settings, reading the environment, cookie jars, hooks), which cost more CPU than the request
itself on a pass over thousands of pages; here everything that does not change between
fetches is worked out once: the TLS context per (verify, CA bundle), the proxy and .netrc
login per site, the pool per host (kept between passes, so the daemon reuses connections).

Deadlines: urllib3 only knows per-operation timeouts, and a server that drips one byte a
second (in the body, in endless headers, or in the TLS handshake) never trips them. So every
fetch runs inside a `Deadline`, and the connections urllib3 opens or reuses for it report
their sockets to it. When the deadline passes, the watchdog thread shuts those sockets down,
which wakes the blocked read at once; the fetch then sees `fired` and reports a timeout.
Connecting is bounded as well: each connect gets at most the time left. A connection that
goes back to the pool leaves its fetch's deadline first, so one fetch's deadline can never
cut a connection another fetch is using.

Redirects are followed here (see `notifier.watchers._redirects`), hop by hop through the
same pools, so each hop is under the same deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ClosedPoolError, LocationParseError
from urllib3.poolmanager import PoolManager, ProxyManager
from urllib3.response import BaseHTTPResponse
from urllib3.util import make_headers, parse_url
from urllib3.util.ssl_ import create_urllib3_context

from notifier.watchers._watchdog import watchdog

USER_AGENT = "notifier/0.1 (change monitor)"
# Sent with every request unless the watcher's own headers name them (in any letter case).
DEFAULT_HEADERS: Mapping[str, str] = {
    "User-Agent": USER_AGENT,
    "Accept-Encoding": make_headers(accept_encoding=True)["accept-encoding"],  # what urllib3 decodes
    "Accept": "*/*",
}
PER_HOST = 8  # fetches in flight to one host (scheme, host, port), unless configured
MAX_POOLS = 128  # hosts whose idle connections are kept; the least recently used go first
PROXY_POOL_SIZE = 128  # connections kept to one proxy, which carries every site behind it
DRAIN_MAX = 64 * 1024  # a body left unread up to this size is read so its connection is reused

Site = tuple[str, str, int]  # scheme, host, port: what a connection pool and the host limit serve

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


class HostLimit:
    """At most `per_host` fetches in flight to each site; the others wait their turn, in order.

    One lock for all sites, one condition per site with waiters, and no entry at all for an
    idle site, so 20,000 hosts cost nothing once their fetches are done.
    """

    def __init__(self, per_host: int = PER_HOST) -> None:
        self.per_host = per_host
        self._lock = threading.Lock()
        self._busy: dict[Site, int] = {}
        self._queues: dict[Site, tuple[threading.Condition, list[int]]] = {}  # (turns, [waiting])

    @contextlib.contextmanager
    def slot(self, site: Site) -> Iterator[None]:
        """Hold one of the site's slots for the duration of the `with` block."""
        self.acquire(site)
        try:
            yield
        finally:
            self.release(site)

    def acquire(self, site: Site) -> None:
        with self._lock:
            if self._busy.get(site, 0) >= self.per_host:
                turns, waiting = self._queues.get(site) or self._queues.setdefault(
                    site, (threading.Condition(self._lock), [0]))
                waiting[0] += 1
                while self._busy.get(site, 0) >= self.per_host:
                    turns.wait()
                waiting[0] -= 1
                if not waiting[0]:
                    del self._queues[site]
            self._busy[site] = self._busy.get(site, 0) + 1

    def release(self, site: Site) -> None:
        with self._lock:
            busy = self._busy.pop(site) - 1
            if busy:
                self._busy[site] = busy
            queue = self._queues.get(site)
            if queue is not None:
                queue[0].notify()

    def in_flight(self, site: Site) -> int:
        with self._lock:
            return self._busy.get(site, 0)


limits = HostLimit()


def configure(per_host: int) -> None:
    """Set the per-host limit (the config's `per_host`); pools made from now on keep as many
    idle connections per host."""
    if per_host != limits.per_host:
        limits.per_host = per_host
        close_pools()


@lru_cache(maxsize=16)
def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """One verifying TLS context per CA bundle, shared by every pool that uses it (loading
    a bundle costs milliseconds; urllib3 would do it for every new connection).

    Without ca_file the bundle is $REQUESTS_CA_BUNDLE or $CURL_CA_BUNDLE (requests' variables,
    still honoured), else certifi's, as requests used, else the system's. Raises OSError
    (ssl.SSLError included) when the bundle cannot be read or parsed.
    """
    context = create_urllib3_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_file is None:
        ca_file = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
    if ca_file is None:
        try:
            import certifi  # noqa: PLC0415 - optional: requests brings it, a bare install may not

            ca_file = certifi.where()
        except ImportError:
            context.load_default_certs()
            return context
    context.load_verify_locations(cafile=ca_file)
    return context


class _Pools:
    """A PoolManager, and a short way to its pool for a site: urllib3's own lookup (copying
    its settings and normalising a 30-field key) costs a tenth of a fetch."""

    def __init__(self, manager: PoolManager) -> None:
        self.manager = manager
        self._by_site: dict[Site, HTTPConnectionPool] = {}

    def pool(self, site: Site) -> HTTPConnectionPool:
        found = self._by_site.get(site)
        if found is None or found.pool is None:  # new, or closed: the manager's LRU let it go
            if len(self._by_site) >= 2 * MAX_POOLS:
                self._by_site.clear()  # forget closed pools of sites not seen for a while
            found = self._by_site[site] = self.manager.connection_from_host(site[1], site[2], site[0])
        return found


_managers: dict[tuple[str | None, bool, str | None], _Pools] = {}
_managers_lock = threading.Lock()


def manager(proxy: str | None, verify: bool, ca_file: str | None) -> _Pools:
    """The pools for a proxy (None: direct) and TLS settings, made on first use."""
    key = (proxy, verify, ca_file)
    found = _managers.get(key)  # a dict read is atomic; lock only to create
    if found is None:
        with _managers_lock:
            found = _managers.get(key) or _Pools(_new_manager(proxy, verify, ca_file))
            _managers[key] = found
    return found


def _new_manager(proxy: str | None, verify: bool, ca_file: str | None) -> PoolManager:
    context = tls_context(verify, ca_file)
    tls: dict[str, Any] = {"ssl_context": context, "cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
    if not verify:  # the user chose this; a warning on every request would only flood logs
        tls["assert_hostname"] = False
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    if proxy is None:
        made = PoolManager(num_pools=MAX_POOLS, maxsize=limits.per_host, block=False, retries=False,
                           **tls)
        made.pool_classes_by_scheme = _POOLS
        return made
    login = parse_url(proxy).auth
    headers = make_headers(proxy_basic_auth=unquote(login)) if login else None
    if proxy.lower().startswith("socks"):
        # SOCKS pools are urllib3's own: there the deadline is checked between reads only.
        try:
            from urllib3.contrib.socks import SOCKSProxyManager  # noqa: PLC0415 - needs PySocks
        except ImportError:
            raise OSError("a SOCKS proxy needs PySocks; install it (pip install pysocks) or use an "
                          "http:// proxy") from None

        return SOCKSProxyManager(proxy, num_pools=MAX_POOLS, maxsize=limits.per_host, block=False,
                                 retries=False, **tls)
    made = ProxyManager(proxy, num_pools=MAX_POOLS, maxsize=PROXY_POOL_SIZE, block=False,
                        retries=False, proxy_headers=headers, proxy_ssl_context=context, **tls)
    made.pool_classes_by_scheme = _POOLS
    return made


@dataclass(frozen=True, slots=True)
class Request:
    """One request as it goes on the wire: worked out once per watcher (and per redirect hop)."""

    method: str
    url: str
    site: Site
    path: str  # path and query, percent-encoded
    headers: Mapping[str, str]
    body: bytes | None = None
    proxy: str | None = None  # the watcher's own proxy; None: whatever the environment says
    verify: bool = True
    ca_file: str | None = None

    @classmethod
    def to(cls, url: str, **fields: Any) -> Request:
        """A request for `url`; ValueError when it is not a usable http(s) address."""
        headers: Mapping[str, str] = fields.pop("headers", DEFAULT_HEADERS)
        method = fields.pop("method", "GET")
        plain = _PLAIN_URL.fullmatch(url)
        if plain and "/." not in url:  # nothing to normalise: skip urllib3's parser (5 µs)
            scheme, host, port_text, path, query = plain.groups()
            scheme = scheme.lower()
            port = int(port_text) if port_text else (443 if scheme == "https" else 80)
            if port <= 65535:
                return cls(method, url, _site(scheme, host.lower(), port),
                           (path or "/") + (query or ""), headers, **fields)
        try:
            parts = parse_url(url)
        except LocationParseError:
            raise ValueError(f"url {url!r} {_unparsable(url)}") from None
        if parts.scheme not in ("http", "https") or not parts.host:
            raise ValueError(f"url {url!r} must be a full http:// or https:// address")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.auth and not _named(headers, "Authorization"):  # http://user:password@host/
            headers = {**headers, **make_headers(basic_auth=unquote(parts.auth))}
        return cls(method, url, _site(parts.scheme, parts.host, port), parts.request_uri, headers,
                   **fields)


# An http(s) URL with a plain host name or IPv4 address, and a path and query made only of
# characters that need no percent-encoding: most watchers' URLs, taken apart without urllib3.
_PLAIN_URL = re.compile(r"(?i)(https?)://([a-z0-9][a-z0-9.-]*)(?::([0-9]{1,5}))?"
                        r"(/[a-z0-9._~!$&'()*+,;=:@/-]*)?(\?[a-z0-9._~!$&'()*+,;=:@/?-]*)?")


def _unparsable(url: str) -> str:
    try:
        urlsplit(url).port  # noqa: B018 - raises for a port out of range
    except ValueError:
        return "has an invalid port number"
    return "is not a valid address; check for spaces and stray characters"


def _named(headers: Mapping[str, str], name: str) -> bool:
    name = name.lower()
    return any(key.lower() == name for key in headers)


_sites: dict[Site, Site] = {}


def _site(scheme: str, host: str, port: int) -> Site:
    """One shared tuple per site: 20,000 watchers of 50 sites hold 50 tuples."""
    site = (scheme, host, port)
    return _sites.setdefault(site, site)


def send(request: Request, timeout: urllib3.Timeout) -> BaseHTTPResponse:
    """One request, no redirects followed; the response's body is left to read.

    Read the body or hand the response to `discard`, so its connection goes back to the
    pool (or is closed).
    """
    proxy = request.proxy if request.proxy is not None else environ_proxy(request.site)
    headers = request.headers
    if (login := netrc_login(request.site[1])) and not _named(headers, "Authorization"):
        headers = {**headers, "Authorization": login}
    kwargs: dict[str, Any] = {"headers": headers, "body": request.body, "timeout": timeout,
                              "retries": False, "redirect": False, "preload_content": False}
    pools = manager(proxy, request.verify, request.ca_file)
    if proxy is None:
        for _ in range(2):
            try:
                return pools.pool(request.site).urlopen(request.method, request.path,
                                                        assert_same_host=False, **kwargs)
            except ClosedPoolError:  # another thread's new host pushed this pool out; take a fresh one
                continue
    return pools.manager.urlopen(request.method, request.url, **kwargs)


def discard(response: BaseHTTPResponse) -> None:
    """Done with a response: read a small unread rest so the connection is reused, else close it."""
    left = getattr(response, "length_remaining", None)
    if left is not None and left <= DRAIN_MAX:
        response.drain_conn()  # reading to the end hands the connection back to its pool
    else:
        response.close()
    response.release_conn()


def close_pools() -> None:
    """Close every pooled connection; call at shutdown (watchers may still fetch afterwards)."""
    with _managers_lock:
        managers = list(_managers.values())
        _managers.clear()
    for each in managers:
        each.manager.clear()
    environ_proxy.cache_clear()
    netrc_login.cache_clear()
    tls_context.cache_clear()  # the environment's CA bundle is read again


@lru_cache(maxsize=4096)
def environ_proxy(site: Site) -> str | None:
    """The proxy the environment names for a site (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and
    NO_PROXY, as curl and requests read them), read once per site instead of per request."""
    scheme, host, port = site
    proxies = {key.lower(): value for key, value in os.environ.items()
               if key.lower().endswith("_proxy") and value}
    if not proxies:
        return None
    if "REQUEST_METHOD" in os.environ:  # a CGI environment: HTTP_PROXY may come from a client
        proxies.pop("http_proxy", None)
    if _bypassed(host, port, proxies.get("no_proxy", "")):
        return None
    return proxies.get(f"{scheme}_proxy") or proxies.get("all_proxy")


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether NO_PROXY exempts a host: `*`, a name or its parent domain, an address, or any
    of those with a `:port`."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".").strip("[]")
        if host == name or host.endswith("." + name):
            return True
    return False


@lru_cache(maxsize=4096)
def netrc_login(host: str) -> str | None:
    """A Basic Authorization value from ~/.netrc (or $NETRC) for `host`, read once per host."""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    if not os.path.isfile(path):
        return None
    import netrc  # noqa: PLC0415 - only users with a .netrc pay for it

    try:
        found = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    if not found:
        return None
    login, _, password = found
    return make_headers(basic_auth=f"{login}:{password or ''}")["authorization"]
