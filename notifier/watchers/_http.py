"""HTTP for the url kind: where each request goes, on which connection, and how many at once.

Every url fetch in the process runs on one asyncio event loop (`_loop`), so a pass keeps a
hundred requests in flight without a hundred threads; one exchange on a connection is
`_wire`'s. What does not change between fetches is worked out once: the TLS context per
(verify, CA bundle), the proxy and .netrc login per site; a `Request` is made at each fetch
from the watcher's address and its shared settings. Idle connections are kept per route (the
site, or the proxy and the site) for the next fetch, in this pass or the daemon's next one, up
to `MAX_IDLE` in all.

The caller holds the deadline: one asyncio.timeout around the whole fetch (connect, TLS,
proxy hand-shake, headers, body, every redirect hop), which cancels whatever is waiting when
it passes, however slowly the server drips. A connection cut that way is closed, never
reused. `connect_timeout` bounds each connection's opening on its own.

Proxies: http:// and https:// proxies get http URLs in absolute form and https URLs through
a CONNECT tunnel; socks4/4a/5/5h proxies are spoken to directly (the "a" and "h" variants let
the proxy resolve the name). The environment's HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and
NO_PROXY apply when a watcher names no proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import re
import socket
import ssl
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import notifier
from notifier.watchers import _loop
from notifier.watchers._wire import BrokenResponse, FetchError, Hangup, NotHttp, Response, exchange, read_head

USER_AGENT = f"notifier/{'.'.join(notifier.__version__.split('.')[:2])} (change monitor)"  # major.minor
# Sent with every request unless the watcher's own headers name them (in any letter case).
DEFAULT_HEADERS: Mapping[str, str] = {
    "User-Agent": USER_AGENT,
    "Accept-Encoding": "gzip, deflate",  # what notifier.watchers._wire decodes
    "Accept": "*/*",
}
PER_HOST = 8  # fetches in flight to one host (scheme, host, port), unless configured
MAX_IDLE = 512  # idle connections kept in all; the least recently used route's go first
PROXY_IDLE = 128  # idle connections kept to one forwarding proxy, which carries every site
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_SOCKS5_REPLIES = {1: "general failure", 2: "not allowed by its rules", 3: "network unreachable",
                   4: "host unreachable", 5: "connection refused", 6: "TTL expired",
                   7: "command not supported", 8: "address type not supported"}

Site = tuple[str, str, int]  # scheme, host, port: what the host limit and a direct route serve
# How a connection is made: (proxy or None, the site or None for a forwarding proxy, verify, CA).
Route = tuple[str | None, Site | None, bool, str | None]
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ConnectFailed(FetchError):
    """No connection could be made (refused, unreachable, the name does not resolve)."""


class ConnectTimedOut(FetchError):
    """Opening the connection (TCP, proxy, TLS) took longer than `connect_timeout`."""


class TLSFailed(FetchError):
    """The TLS handshake failed, usually the certificate check."""


class ProxyFailed(FetchError):
    """The proxy could not be reached or would not carry the request."""


class HostLimit:
    """At most `per_host` fetches in flight to each site; the others wait their turn, in order.

    Used on the event loop only. No entry at all for an idle site, so 20,000 hosts cost
    nothing once their fetches are done.
    """

    def __init__(self, per_host: int = PER_HOST) -> None:
        self.per_host = per_host
        self._busy: dict[Site, int] = {}
        self._waiting: dict[Site, deque[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, site: Site) -> AsyncIterator[None]:
        """Hold one of the site's slots for the duration of the `async with` block."""
        await self.acquire(site)
        try:
            yield
        finally:
            self.release(site)

    async def acquire(self, site: Site) -> None:
        busy = self._busy.get(site, 0)
        if busy < self.per_host and site not in self._waiting:
            self._busy[site] = busy + 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(site, deque()).append(turn)
        try:
            await turn  # `release` hands its slot over: the count stays as it is
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(site)  # the slot came just as this fetch was cancelled: pass it on
            else:
                self._forget(site, turn)
            raise

    def release(self, site: Site) -> None:
        queue = self._waiting.get(site)
        while queue:
            turn = queue.popleft()
            if not queue:
                del self._waiting[site]
            if not turn.done():
                turn.set_result(None)
                return
        busy = self._busy.pop(site) - 1
        if busy:
            self._busy[site] = busy

    def _forget(self, site: Site, turn: asyncio.Future[None]) -> None:
        queue = self._waiting.get(site)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(turn)
            if not queue:
                del self._waiting[site]

    def in_flight(self, site: Site) -> int:
        return self._busy.get(site, 0)


limits = HostLimit()


def configure(per_host: int) -> None:
    """Set the per-host limit (the config's `per_host`), which is also how many idle
    connections are kept per site."""
    if per_host != limits.per_host:
        limits.per_host = per_host
        close_pools()


@lru_cache(maxsize=16)
def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """One verifying TLS context per CA bundle, shared by every connection that uses it
    (loading a bundle costs milliseconds).

    Without ca_file the bundle is $REQUESTS_CA_BUNDLE or $CURL_CA_BUNDLE (requests' variables,
    still honoured), else certifi's, as requests used, else the system's. Raises OSError
    (ssl.SSLError included) when the bundle cannot be read or parsed.
    """
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_file is None:
        ca_file = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
    if ca_file is None:
        with contextlib.suppress(ImportError):  # requests brings certifi; a bare install may not
            import certifi  # noqa: PLC0415 - read once per context

            ca_file = certifi.where()
    return ssl.create_default_context(cafile=ca_file)  # the system's certificates when None


@dataclass(frozen=True, slots=True)
class Request:
    """One request as it goes on the wire: made at each fetch from the watcher's address and
    its shared settings (and again for each redirect hop)."""

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
            if port <= 65535 and not _bad_name(host):
                return cls(method, url, _site(scheme, host.lower(), port),
                           (path or "/") + (query or ""), headers, **fields)
        from urllib3.util import parse_url  # noqa: PLC0415 - only for URLs the pattern cannot take apart

        try:
            parts = parse_url(url)
        except ValueError:  # urllib3's LocationParseError
            raise ValueError(f"url {url!r} {_unparsable(url)}") from None
        if parts.scheme not in ("http", "https") or not parts.host:
            raise ValueError(f"url {url!r} must be a full http:// or https:// address")
        if _bad_name(parts.host):
            raise ValueError(f"url {url!r} has an invalid host name (an empty part between dots, "
                             f"or a part over 63 characters)")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.auth and not _named(headers, "Authorization"):  # http://user:password@host/
            headers = {**headers, "Authorization": basic(unquote(parts.auth))}
        host = parts.host[1:-1] if parts.host.startswith("[") else parts.host  # [::1] is ::1
        return cls(method, url, _site(parts.scheme, host, port), parts.request_uri, headers,
                   **fields)


# An http(s) URL with a plain host name or IPv4 address, and a path and query made only of
# characters that need no percent-encoding: most watchers' URLs, taken apart without urllib3.
_PLAIN_URL = re.compile(r"(?i)(https?)://([a-z0-9][a-z0-9.-]*)(?::([0-9]{1,5}))?"
                        r"(/[a-z0-9._~!$&'()*+,;=:@/-]*)?(\?[a-z0-9._~!$&'()*+,;=:@/?-]*)?")


def _bad_name(host: str) -> bool:
    """Whether a host name has an empty label or one over 63 characters, or is over 253 in
    all: the resolver refuses those with UnicodeError (not OSError) before asking DNS, and
    SOCKS cannot carry them."""
    if host.startswith("["):  # an IPv6 literal
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) > 253 or any(not 0 < len(label) <= 63 for label in labels)


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




def basic(login: str) -> str:
    """An Authorization (or Proxy-Authorization) value for "user:password"."""
    return "Basic " + base64.b64encode(login.encode()).decode("ascii")


async def send(request: Request, connect_timeout: float | None, max_bytes: int) -> Response:
    """One request, no redirects followed, on a kept-alive connection or a new one.

    Run on the event loop, under the caller's deadline. A kept-alive connection the server
    had just closed is replaced once, for methods that may be repeated.
    """
    proxy = request.proxy if request.proxy is not None else environ_proxy(request.site)
    forward = proxy is not None and request.site[0] == "http" and not _is_socks(proxy)
    route: Route = (proxy, None if forward else request.site, request.verify, request.ca_file)
    head = _head(request, proxy if forward else None)
    keep = PROXY_IDLE if forward else limits.per_host
    kept = _idle.take(route)
    if kept is not None:
        try:
            return await _exchange(kept, route, keep, head, request, max_bytes)
        except (Hangup, NotHttp, ConnectionError) as exc:  # given up, or the last answer's leftovers
            if request.method not in _IDEMPOTENT:
                raise _broken(exc) from exc
    conn = await _open(route, request.site, connect_timeout)
    try:
        return await _exchange(conn, route, keep, head, request, max_bytes)
    except (Hangup, ConnectionError) as exc:
        raise _broken(exc) from exc


async def _exchange(conn: _Conn, route: Route, keep: int, head: bytes, request: Request,
                    max_bytes: int) -> Response:
    """One exchange on `conn`, which goes back to the idle ones if it may carry another."""
    reader, writer = conn
    try:
        response = await exchange(reader, writer, head, request.body, request.method, max_bytes)
    except ssl.SSLError as exc:  # the TLS layer broke mid-response (a bad record, a cut stream)
        writer.transport.abort()
        raise FetchError(f"the TLS connection broke off ({exc.reason or exc})") from None
    except BaseException:  # the deadline, a broken or oversize response: never reused
        writer.transport.abort()
        raise
    if response.reusable:
        _idle.put(route, conn, keep)
    else:
        writer.transport.abort()
    return response


def _broken(exc: Hangup | NotHttp | ConnectionError) -> FetchError:
    return exc if isinstance(exc, FetchError) else FetchError(_why(exc))


def _head(request: Request, forward_to: str | None) -> bytes:
    """The request line and header fields, as sent."""
    scheme, host, port = request.site
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if scheme == "https" else 80):
        authority = f"{authority}:{port}"
    target = f"{scheme}://{authority}{request.path}" if forward_to else request.path
    lines = [f"{request.method} {target} HTTP/1.1"]
    named = {key.lower() for key in request.headers}
    if "host" not in named:
        lines.append(f"Host: {authority}")
    lines.extend(f"{key}: {value}" for key, value in request.headers.items())
    if (login := netrc_login(host)) and "authorization" not in named:
        lines.append(f"Authorization: {login}")
    if request.body is not None and "content-length" not in named:
        lines.append(f"Content-Length: {len(request.body)}")
    if forward_to and (auth := _proxy_login(urlsplit(forward_to))):
        lines.append(f"Proxy-Authorization: {auth}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


class _Idle:
    """Idle connections by route, least recently used route first; at most `MAX_IDLE` in all."""

    def __init__(self) -> None:
        self._by_route: OrderedDict[Route, list[_Conn]] = OrderedDict()
        self.count = 0

    def take(self, route: Route) -> _Conn | None:
        conns = self._by_route.get(route)
        while conns:
            conn = conns.pop()
            self.count -= 1
            if not conns:
                del self._by_route[route]
            if not conn[0].at_eof() and not conn[1].is_closing():
                return conn
            conn[1].transport.abort()  # the server closed it while it was idle
        return None

    def put(self, route: Route, conn: _Conn, per_route: int) -> None:
        conns = self._by_route.get(route)
        if conns is None:
            conns = self._by_route[route] = []
        else:
            self._by_route.move_to_end(route)
        if len(conns) >= per_route:
            conn[1].transport.abort()
            return
        conns.append(conn)
        self.count += 1
        while self.count > MAX_IDLE:  # every connection of the least recently used route goes
            _, gone = self._by_route.popitem(last=False)
            for _, writer in gone:
                writer.transport.abort()
            self.count -= len(gone)

    def close(self) -> None:
        for conns in self._by_route.values():
            for _, writer in conns:
                writer.transport.abort()
        self._by_route.clear()
        self.count = 0


_idle = _Idle()


async def _open(route: Route, site: Site, connect_timeout: float | None) -> _Conn:
    """A new connection along `route`, ready for requests to `site` (TLS and tunnel done)."""
    try:
        async with asyncio.timeout(connect_timeout):  # None: only the fetch's own deadline
            return await _open_now(route, site)
    except TimeoutError:
        raise ConnectTimedOut("connecting took too long") from None


async def _open_now(route: Route, site: Site) -> _Conn:
    proxy, tunnel_to, verify, ca_file = route
    scheme, host, port = site
    if proxy is None:
        return await _connect(host, port, tls_context(verify, ca_file) if scheme == "https" else None)
    parts = urlsplit(proxy)
    reader, writer = await _reach_proxy(parts, verify, ca_file)
    try:
        await _through_proxy(reader, writer, parts, host, port, tunnel=tunnel_to is not None)
        if tunnel_to is not None and scheme == "https":
            await _start_tls(writer, tls_context(verify, ca_file), host)
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


async def _reach_proxy(proxy: SplitResult, verify: bool, ca_file: str | None) -> _Conn:
    via = proxy.scheme  # urlsplit lower-cases it
    default_port = {"http": 80, "https": 443}.get(via, 1080)
    context = tls_context(verify, ca_file) if via == "https" else None
    try:
        port = proxy.port or default_port
    except ValueError:  # out of range, or not a number: HTTP_PROXY is read as it is
        raise ProxyFailed(f"the URL of the proxy {proxy.hostname} has an invalid port number; fix "
                          f"the watcher's `proxy` or the environment's HTTP_PROXY/HTTPS_PROXY") from None
    try:
        return await _connect(proxy.hostname or "", port, context)
    except ConnectFailed as exc:
        raise ProxyFailed(f"the proxy {proxy.hostname} could not be reached: {exc}") from None


async def _through_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         proxy: SplitResult, host: str, port: int, tunnel: bool) -> None:
    """The proxy's hand-shake for host:port (SOCKS, or an HTTP tunnel); a forwarding HTTP
    proxy needs none. What goes wrong on the way is the proxy's failure."""
    try:
        if _is_socks(proxy.scheme):
            await _socks(reader, writer, proxy, host, port)
        elif tunnel:
            await _tunnel(reader, writer, proxy, host, port)
    except BrokenResponse as exc:  # "the proxy example.net closed the connection without answering"
        raise ProxyFailed(str(exc)) from None
    except ConnectionError as exc:
        raise ProxyFailed(f"the proxy {proxy.hostname} broke off the connection: {_why(exc)}") from None


async def _start_tls(writer: asyncio.StreamWriter, context: ssl.SSLContext, host: str) -> None:
    """TLS with the site, inside a tunnel the proxy opened."""
    try:
        await writer.start_tls(context, server_hostname=host)
    except ssl.SSLError as exc:
        raise _tls_failed(exc) from None
    except ConnectionError:  # a reset, as a port that is not TLS may do (asyncio's has no errno)
        raise TLSFailed("the site broke off the connection") from None


async def _connect(host: str, port: int, context: ssl.SSLContext | None) -> _Conn:
    try:
        return await asyncio.open_connection(host, port, ssl=context,
                                             server_hostname=host if context else None)
    except ssl.SSLError as exc:
        raise _tls_failed(exc) from None
    except OSError as exc:  # refused, unreachable, a name that does not resolve
        raise ConnectFailed(_why(exc)) from None


def _tls_failed(exc: ssl.SSLError) -> TLSFailed:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSFailed(f"certificate verify failed: {exc.verify_message}")
    return TLSFailed(exc.reason or str(exc))


async def _tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: SplitResult,
                  host: str, port: int) -> None:
    """Ask an HTTP proxy for a tunnel to host:port (CONNECT)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}"]
    if auth := _proxy_login(proxy):
        lines.append(f"Proxy-Authorization: {auth}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    status, reason, _, _ = await read_head(reader, f"the proxy {proxy.hostname}")
    if not 200 <= status < 300:
        raise ProxyFailed(f"the proxy answered {status} {reason} when asked for a tunnel to {authority}")


async def _socks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: SplitResult,
                 host: str, port: int) -> None:
    """Ask a SOCKS proxy to connect to host:port (RFC 1928 and 1929; SOCKS4 and 4a)."""
    via = proxy.scheme  # urlsplit lower-cases it
    remote = via in ("socks5h", "socks4a")  # the proxy resolves the name
    address = host if remote else await _resolve(host, port, socket.AF_INET if via == "socks4" else 0)
    try:
        if via.startswith("socks5"):
            await _socks5(reader, writer, proxy, address, port)
        else:
            user = unquote(proxy.username or "").encode()
            if remote:
                packed, name = b"\0\0\0\x01", host.encode("idna") + b"\0"
            else:
                packed, name = socket.inet_aton(address), b""
            writer.write(b"\x04\x01" + port.to_bytes(2, "big") + packed + user + b"\0" + name)
            if (await reader.readexactly(8))[1] != 0x5A:
                raise ProxyFailed(f"the SOCKS proxy refused the connection to {host}:{port}")
    except asyncio.IncompleteReadError:
        raise ProxyFailed("the SOCKS proxy closed the connection during its hand-shake") from None


async def _socks5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: SplitResult,
                  address: str, port: int) -> None:
    login = proxy.username is not None
    writer.write(b"\x05\x02\x00\x02" if login else b"\x05\x01\x00")
    version, method = await reader.readexactly(2)
    if version != 5 or method not in ((0, 2) if login else (0,)):
        raise ProxyFailed("the SOCKS proxy accepts none of the login methods notifier offers; "
                          "check the user and password in the proxy URL")
    if method == 2:
        user, password = (unquote(v or "").encode() for v in (proxy.username, proxy.password))
        if len(user) > 255 or len(password) > 255:
            raise ProxyFailed("the user or password in the proxy URL is longer than SOCKS5 "
                              "allows (255 bytes)")
        writer.write(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        if (await reader.readexactly(2))[1] != 0:
            raise ProxyFailed("the SOCKS proxy refused the user and password in the proxy URL")
    try:
        ip = ipaddress.ip_address(address)
        target = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    except ValueError:  # a name for the proxy to resolve
        name = address.encode("idna")
        target = b"\x03" + bytes([len(name)]) + name
    writer.write(b"\x05\x01\x00" + target + port.to_bytes(2, "big"))
    _, reply, _, kind = await reader.readexactly(4)
    if reply != 0:
        raise ProxyFailed(f"the SOCKS proxy could not connect to {address}:{port} "
                          f"({_SOCKS5_REPLIES.get(reply, f'error {reply}')})")
    size = {1: 4, 4: 16}.get(kind) or (await reader.readexactly(1))[0]
    await reader.readexactly(size + 2)  # the address the proxy bound: of no use here


async def _resolve(host: str, port: int, family: int) -> str:
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, family=family,
                                                             type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectFailed(_why(exc)) from None
    return str(found[0][4][0])


def _why(exc: OSError) -> str:
    """"Connection refused", not asyncio's "Connect call failed ('127.0.0.1', 80)"."""
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return exc.strerror or str(exc) or type(exc).__name__
    return os.strerror(exc.errno)


def _is_socks(proxy: str) -> bool:
    return proxy[:5].lower() == "socks"


def _proxy_login(proxy: SplitResult) -> str | None:
    if proxy.username is None:
        return None
    return basic(f"{unquote(proxy.username)}:{unquote(proxy.password or '')}")


def close_pools() -> None:
    """Close every idle connection and forget what was read once (proxies, .netrc, CA
    bundles); call at shutdown. Fetches may still run afterwards."""
    if _loop.running():
        _loop.run(_close_idle())
    environ_proxy.cache_clear()
    netrc_login.cache_clear()
    tls_context.cache_clear()


async def _close_idle() -> None:
    _idle.close()


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
    """Whether NO_PROXY exempts a host: `*`, a name or its parent domain, an address, a
    network of addresses (`10.0.0.0/8`, as requests and curl 7.86+ read it), or any of the
    names and addresses with a `:port`."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            if _in_network(host, entry):
                return True
            continue
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".").strip("[]")
        if host == name or host.endswith("." + name):
            return True
    return False


def _in_network(host: str, network: str) -> bool:
    """Whether `host` is an address within `network`; a name, or a malformed entry, is not."""
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(network.strip("[]"), strict=False)
    except ValueError:
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
    return basic(f"{login}:{password or ''}")
