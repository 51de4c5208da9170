"""The `url` kind: watch a web page or HTTP API.

Built for thousands of watchers per pass with a hundred fetches in flight: every fetch runs
on one event loop (`_loop`), connections are kept alive and shared by every url watcher in
the process, at most `per_host` fetches go to one host at a time (see `_http`), bodies are
read under a size cap and a total deadline, and decoded by notifier.charset on the caller's
thread. What stays the same between checks (method, headers, body, TLS and proxy settings)
is parsed when the config is loaded, once for the watchers written alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from functools import partial
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import urlsplit

from notifier.binary import binary_type, summary
from notifier.charset import codec_name, decode_text
from notifier.errors import WatchError
from notifier.kinds import Fetched, Received, Shared, Watcher
from notifier.options import REQUIRED, Bool, Choice, Duration, Int, MapOf, Option, Str
from notifier.watchers import _loop
from notifier.watchers._http import (
    DEFAULT_HEADERS,
    ConnectTimedOut,
    ProxyFailed,
    Request,
    Site,
    TLSFailed,
    close_pools,
    configure,
    limits,
)
from notifier.watchers._redirects import BadRedirect, TooManyRedirects, follow
from notifier.watchers._wire import FetchError, Response, TooBig

MiB = 1024 * 1024
MAX_RETRY_AFTER = 86400.0  # a site asking for a week's pause still gets a look every day

_PROXY_SCHEMES = ("http://", "https://", "socks4://", "socks4a://", "socks5://", "socks5h://")


def _check_proxy(proxy: str) -> None:
    """ValueError unless `proxy` is a proxy URL notifier can use; the message does not repeat
    it, since it may hold a password."""
    if not proxy.lower().startswith(_PROXY_SCHEMES):
        raise ValueError("proxy must be a URL like http://proxy:3128 or socks5://proxy:1080")
    try:
        urlsplit(proxy).port  # noqa: B018 - raises for a port out of range or not a number
    except ValueError:
        raise ValueError("proxy has an invalid port number; use one from 1 to 65535") from None
_DENIED = "the site refused access; check the headers (cookies, tokens) the watcher sends"
_GONE = "the page is gone or has moved; check the url"
_STATUS_HINTS = {401: _DENIED, 403: _DENIED, 404: _GONE, 410: _GONE,
                 429: "the site limits requests; a longer `every` helps",
                 407: "the proxy asks for a login; put user:password in the proxy option's URL "
                      "(http://user:password@proxy:3128)"}
_COME_BACK_HINTS = {
    429: "the site limits requests and asked notifier to come back in {when}; a longer `every` helps",
    503: "the site is unavailable (maintenance or overload) and asked notifier to come back in {when}",
}


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Settings:
    """What a url watcher sends and accepts besides its address; one object for every watcher
    whose settings are equal (`shared`), as most are, and gone with the last watcher that
    holds it: a daemon whose reloads change a Cookie header keeps none of the old ones."""

    method: str
    headers: Mapping[str, str]
    body: bytes | None
    proxy: str | None
    verify: bool
    ca_file: str | None
    timeout: float
    connect_timeout: float
    max_bytes: int
    max_redirects: int
    encoding: str | None

    @classmethod
    def shared(cls, request: Request, timeout: float, connect_timeout: float, max_bytes: int,
               max_redirects: int, encoding: str | None) -> Settings:
        headers = None if request.headers is DEFAULT_HEADERS else tuple(request.headers.items())
        key = (request.method, headers, request.body, request.proxy, request.verify,
               request.ca_file, timeout, connect_timeout, max_bytes, max_redirects, encoding)
        found = _SETTINGS.get(key)
        if found is None:
            found = _SETTINGS[key] = cls(request.method, request.headers, request.body,
                                         request.proxy, request.verify, request.ca_file, timeout,
                                         connect_timeout, max_bytes, max_redirects, encoding)
        return found

    def request(self, url: str, site: Site, path: str) -> Request:
        return Request(self.method, url, site, path, self.headers, self.body, self.proxy,
                       self.verify, self.ca_file)


_SETTINGS: weakref.WeakValueDictionary[tuple[object, ...], Settings] = weakref.WeakValueDictionary()


class Url(Watcher, kind="url"):
    """Fetch a web page or HTTP API and watch its text.

    Sends If-None-Match/If-Modified-Since only when the server gave an ETag/Last-Modified, and
    treats 304 as "unchanged". The charset comes from `encoding`, the Content-Type header, the
    page's <meta charset>, or detection; GBK/GB2312 pages decode as GB18030. Responses above
    `max_bytes` are refused without being read. Cookies are not kept between checks. HTTP
    errors (4xx/5xx), timeouts and redirect loops fail the check; the scheduler retries, and
    a 429/503 with Retry-After says when (`WatchError.retry_after`, at most a day).

    `timeout` bounds the whole request: connecting, the TLS handshake, headers and body
    together, even against a server that drips one byte a second; `connect_timeout` (at
    most `timeout`) bounds each connect. Only the DNS lookup is left to the resolver's own
    limits. A binary body (image/*, PDF, octet-stream..., or bytes that are not text whatever
    the label says) is compared by size and SHA-256, as the file kind does; setting
    `encoding` says the body is text, unless it holds NUL bytes.

    At most `per_host` (a top-level setting) fetches go to one site at a time; the deadline
    starts when a fetch's turn comes. Redirects never carry the watcher's Authorization or
    Cookie to another site.
    """

    # Per watcher only its address (and where it goes); everything else is `Settings`, one
    # object for all the watchers written alike: 20,000 watchers hold 64 bytes each here.
    __slots__ = ("_path", "settings", "site", "url")
    options: ClassVar[tuple[Option, ...]] = (
        Option("url", Str(), REQUIRED, "The http:// or https:// address to fetch."),
        Option("method", Choice("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"),
               "GET", "HTTP method."),
        Option("headers", MapOf(Str()), None, "Extra request headers, like User-Agent or Cookie."),
        Option("data", Str(), None, "Request body, sent as UTF-8; set Content-Type in headers."),
        Option("timeout", Duration(), 30.0,
               "Seconds the whole request may take: connecting, TLS, headers and body."),
        Option("connect_timeout", Duration(), None,
               "Seconds to wait to connect (TCP and TLS); default and most: timeout."),
        Option("proxy", Str(), None, "Proxy URL for http and https, like http://proxy:3128."),
        Option("verify", Bool(), True, "Check the TLS certificate; false only on trusted networks."),
        Option("ca_file", Str(), None, "CA bundle (PEM file) to verify the certificate against."),
        Option("max_redirects", Int(minimum=0), 10, "Redirects to follow before failing."),
        Option("max_bytes", Int(minimum=1), 10 * MiB, "Largest response accepted, in bytes."),
        Option("encoding", Str(), None, "Charset to decode with, overriding what the page says."),
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.url: str = options["url"]
        # Defaults again here, for code that builds a watcher from a partial mapping.
        method: str = options.get("method") or "GET"
        redirects = options.get("max_redirects")
        timeout: float = options.get("timeout") or 30.0
        encoding: str | None = options.get("encoding")
        if encoding and codec_name(encoding) is None:
            raise ValueError(f"encoding {encoding!r} is unknown; use a name like utf-8 or gb18030")
        verify = options.get("verify") is not False
        ca_file = os.path.expanduser(options["ca_file"]) if options.get("ca_file") else None
        if ca_file and not verify:
            raise ValueError("ca_file and verify: false contradict each other; keep one")
        data = options.get("data")
        proxy = options.get("proxy")
        if proxy is not None:
            _check_proxy(proxy)
        request = Request.to(self.url, method=method, headers=_headers(options.get("headers")),
                             body=None if data is None else data.encode(),
                             proxy=proxy, verify=verify, ca_file=ca_file)
        self.site = request.site
        # Most request targets are the URL's tail: then only where it starts is kept (a small int).
        tail = len(self.url) - len(request.path)
        self._path: int | str = tail if self.url.endswith(request.path) else request.path
        self.settings = Settings.shared(
            request, timeout, min(options.get("connect_timeout") or timeout, timeout),
            options.get("max_bytes") or 10 * MiB, 10 if redirects is None else redirects, encoding)

    @property
    def request(self) -> Request:
        """The request as it goes on the wire (made at each fetch: kept, it would cost 160 bytes
        a watcher)."""
        path = self.url[self._path:] if isinstance(self._path, int) else self._path
        return self.settings.request(self.url, self.site, path)

    def _what(self) -> str:
        """The request as messages name it: "GET https://example.com/"."""
        return f"{self.settings.method} {self.url}"

    def source(self) -> str:
        return self.url if self.settings.method == "GET" else self._what()

    def link(self) -> str:
        return self.url

    def queue(self) -> Site:
        return self.site

    @classmethod
    def shut_down(cls) -> None:
        close_pools()

    @classmethod
    def configured(cls, watchers: Sequence[Watcher], shared: Shared) -> None:
        configure(shared.per_host)

    asynchronous: ClassVar[bool] = True

    def fetch(self, previous: Mapping[str, str]) -> Fetched:
        return _loop.run(self.receive(previous)).finish()

    async def receive(self, previous: Mapping[str, str]) -> Received:
        """The network part of `fetch`, on the event loop: request, redirects, body. The rest
        (status, charset, binary detection) is left to `finish`, wherever it is called."""
        request, settings = self.request, self.settings
        conditional = {}
        if settings.method in ("GET", "HEAD"):
            if previous.get("etag"):
                conditional["If-None-Match"] = previous["etag"]
            if previous.get("last_modified"):
                conditional["If-Modified-Since"] = previous["last_modified"]
            if conditional:  # the watcher's own headers win, as they always did
                request = replace(request, headers={**conditional, **request.headers})
        connect = settings.connect_timeout if settings.connect_timeout < settings.timeout else None
        try:
            async with limits.slot(request.site):
                # The deadline starts once a slot is free: waiting for one's turn is not the
                # site's slowness.
                async with asyncio.timeout(settings.timeout):
                    response = await follow(request, connect, settings.max_bytes, settings.max_redirects)
        except TimeoutError:
            raise self._too_slow() from None
        except TooBig:
            raise self._too_big() from None
        except (FetchError, TooManyRedirects, BadRedirect) as exc:
            raise self._explain(exc) from None
        except OSError as exc:  # e.g. an unreadable ca_file
            raise WatchError(f"{self._what()} failed: {exc}; check the watcher's "
                             f"files and settings.") from None
        return Received(partial(self._read, response, previous, bool(conditional)), len(response.body))

    def _read(self, response: Response, previous: Mapping[str, str], conditional: bool) -> Fetched:
        status = response.status
        if status == 304:
            if not conditional:
                raise WatchError(f"{self._what()} returned 304 Not Modified to a request "
                                 f"that was not conditional; remove If-None-Match or "
                                 f"If-Modified-Since from the watcher's headers.")
            return Fetched(text="", unchanged=True, meta={**previous, **_validators(response)})
        if status >= 400:
            raise self._status_error(response)
        return Fetched(text=self._text(response.body, response.headers.get("Content-Type") or ""),
                       meta=_validators(response))

    def _too_big(self) -> WatchError:
        return WatchError(f"{self._what()} sent more than {self.settings.max_bytes:,} bytes, "
                          f"so notifier stopped reading; raise max_bytes if that is expected.")

    def _text(self, body: bytes, content_type: str) -> str:
        """The page's text, or a one-line summary of a binary body: no NUL reaches filters."""
        if not body:
            return ""
        declared_binary = binary_type(content_type) and not self.settings.encoding
        text = None if declared_binary else decode_text(body, content_type, self.settings.encoding)
        if text is not None:
            return text
        mime = content_type.partition(";")[0].strip().lower()
        what = f"binary content ({mime})" if mime else "binary content"
        return summary(what, len(body), hashlib.sha256(body).hexdigest())

    def _status_error(self, response: Response) -> WatchError:
        status = response.status
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = response.reason or "error"
        asked = _retry_after(response.headers.get("Retry-After"), time.time()) \
            if status in _COME_BACK_HINTS else None
        if asked is not None:
            when = _duration(asked)
            if asked > MAX_RETRY_AFTER:
                when += f" (notifier looks again after {_duration(MAX_RETRY_AFTER)} at the latest)"
            hint = _COME_BACK_HINTS[status].format(when=when)
        else:
            hint = _STATUS_HINTS.get(status) or (
                "the site may be down or overloaded; it is usually temporary" if status >= 500
                else "check the watcher's url, method, headers and data")
        return WatchError(f"{self._what()} returned HTTP {status} {reason}; {hint}.",
                          retry_after=None if asked is None else min(asked, MAX_RETRY_AFTER))

    def _too_slow(self) -> WatchError:
        return WatchError(f"{self._what()} did not finish within {_seconds(self.settings.timeout)} "
                          f"(connecting, headers and body together); the site is slow or stalled, "
                          f"raise timeout if it needs longer.")

    def _explain(self, exc: Exception) -> WatchError:
        what = self._what()
        if isinstance(exc, ConnectTimedOut):
            text = (f"{what} could not connect within {_seconds(self.settings.connect_timeout)}; the site "
                    f"may be down or blocked, or connect_timeout too short.")
        elif isinstance(exc, TooManyRedirects):
            text = (f"{what} redirected more than {self.settings.max_redirects} times, probably in a loop; "
                    f"open the url in a browser to check it, or raise max_redirects.")
        elif isinstance(exc, BadRedirect):
            text = f"{what} {exc}; check the url."
        elif isinstance(exc, TLSFailed) and "certificate" in str(exc):
            text = (f"{what} failed the TLS certificate check ({exc}); set ca_file to the "
                    f"CA bundle that signed the site's certificate.")
        elif isinstance(exc, TLSFailed):
            text = f"{what} failed the TLS handshake ({exc}); check that the url's port speaks https."
        elif isinstance(exc, ProxyFailed):
            text = f"{what} could not go through the proxy ({exc}); check the proxy option."
        else:
            text = f"{what} failed: {exc}; check the url and the network."
        return WatchError(text)


def _headers(given: Mapping[str, str] | None) -> Mapping[str, str]:
    """The headers every request of a watcher sends: its own over the defaults (one shared
    mapping for the many watchers that set none)."""
    if not given:
        return DEFAULT_HEADERS
    for key, value in given.items():
        if not (key + value).isascii() or "\n" in key + value or "\r" in key + value:
            raise ValueError(f"header {key!r} must be one line of ASCII; percent-encode "
                             f"other characters")
    own = {key.lower() for key in given}
    return {**{k: v for k, v in DEFAULT_HEADERS.items() if k.lower() not in own}, **given}


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), or None."""
    value = (value or "").strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about local time
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def _seconds(seconds: float) -> str:
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


def _duration(seconds: float) -> str:
    """A wait as people say it: "45 seconds", "10 minutes", "3 hours", "2 days"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size or (unit == "day" and seconds >= size):
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = round(seconds)
    return f"{count} second{'s' if count != 1 else ''}"


def _validators(response: Response) -> dict[str, str]:
    """The ETag and Last-Modified to send back next time, only those the server gave."""
    meta = {}
    if etag := response.headers.get("ETag"):
        meta["etag"] = etag
    if modified := response.headers.get("Last-Modified"):
        meta["last_modified"] = modified
    return meta
