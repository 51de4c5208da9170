"""The `url` kind: watch a web page or HTTP API.

Built for a thousand watchers per pass on 32 threads: connections are pooled in one
requests.Session per host, shared by every url watcher in the process; bodies are streamed
under a size cap and decoded by notifier.charset.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any, ClassVar
from urllib.parse import urlsplit
from urllib.request import Request

import requests
import urllib3
from requests.adapters import HTTPAdapter

from notifier.charset import codec_name, decode
from notifier.errors import WatchError
from notifier.options import REQUIRED, Bool, Choice, Duration, Int, MapOf, Option, Str
from notifier.watchers import Fetched, Watcher

MiB = 1024 * 1024
POOL_SIZE = 64  # above the ~32 threads of a pass, so no thread waits for or discards a connection
CHUNK = 64 * 1024
USER_AGENT = "notifier/0.1 (change monitor)"

_DENIED = "the site refused access; check the headers (cookies, tokens) the watcher sends"
_GONE = "the page is gone or has moved; check the url"
_STATUS_HINTS = {401: _DENIED, 403: _DENIED, 404: _GONE, 410: _GONE,
                 429: "the site limits requests; notifier will try again, a longer `every` helps"}



class _NoCookies(DefaultCookiePolicy):
    """Keep no cookies between checks, as urlwatch does: every check is a first visit.

    Cookies still flow inside one check's redirect chain (requests uses a per-request jar),
    and sessions shared by unrelated watchers cannot leak a login from one to another.
    """

    def set_ok(self, cookie: Cookie, request: Request) -> bool:
        return False


_sessions: dict[tuple[str, str, int, int], requests.Session] = {}
_sessions_lock = threading.Lock()


def _session(key: tuple[str, str, int, int]) -> requests.Session:
    """The shared session for scheme, host, port and redirect limit (a Session-wide setting)."""
    session = _sessions.get(key)  # a dict read is atomic; lock only to create
    if session is None:
        with _sessions_lock:
            session = _sessions.get(key) or _new_session(*key)
            _sessions[key] = session
    return session


def _new_session(scheme: str, host: str, port: int, max_redirects: int) -> requests.Session:
    session = requests.Session()
    # No retries here: the scheduler retries with backoff and counts failures.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = max_redirects
    session.cookies.set_policy(_NoCookies())
    session.headers["User-Agent"] = USER_AGENT
    # Proxy variables, NO_PROXY and ~/.netrc are read once per host here instead of on every
    # request, where they cost a third of a fetch; sessions are per host, so this is exact.
    base = f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"
    session.trust_env = False
    session.proxies.update(requests.utils.get_environ_proxies(base))
    session.auth = requests.utils.get_netrc_auth(base)
    return session


def close_sessions() -> None:
    """Close every pooled connection; call at shutdown (watchers may still fetch afterwards)."""
    with _sessions_lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for session in sessions:
        session.close()


class Url(Watcher, kind="url"):
    """Fetch a web page or HTTP API and watch its text.

    Sends If-None-Match/If-Modified-Since only when the server gave an ETag/Last-Modified, and
    treats 304 as "unchanged". The charset comes from `encoding`, the Content-Type header, the
    page's <meta charset>, or detection; GBK/GB2312 pages decode as GB18030. Responses above
    `max_bytes` are refused without being read. Cookies are not kept between checks. HTTP
    errors (4xx/5xx), timeouts and redirect loops fail the check; the scheduler retries.
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("url", Str(), REQUIRED, "The http:// or https:// address to fetch."),
        Option("method", Choice("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"),
               "GET", "HTTP method."),
        Option("headers", MapOf(Str()), None, "Extra request headers, like User-Agent or Cookie."),
        Option("data", Str(), None, "Request body, sent as UTF-8; set Content-Type in headers."),
        Option("timeout", Duration(), 30.0, "Seconds to wait to connect and for each read."),
        Option("connect_timeout", Duration(), None, "Seconds to wait to connect; default timeout."),
        Option("proxy", Str(), None, "Proxy URL for http and https, like http://proxy:3128."),
        Option("verify", Bool(), True, "Check the TLS certificate; false only on trusted networks."),
        Option("ca_file", Str(), None, "CA bundle (PEM file) to verify the certificate against."),
        Option("max_redirects", Int(minimum=0), 10, "Redirects to follow before failing."),
        Option("max_bytes", Int(minimum=1), 10 * MiB, "Largest response accepted, in bytes."),
        Option("encoding", Str(), None, "Charset to decode with, overriding what the page says."),
    )

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.url: str = options["url"]
        parts = urlsplit(self.url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"url {self.url!r} has an invalid port number") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {self.url!r} must be a full http:// or https:// address")
        self.method: str = options.get("method") or "GET"
        redirects = options.get("max_redirects")
        self.max_redirects: int = 10 if redirects is None else redirects
        self._key = (parts.scheme, parts.hostname, port, self.max_redirects)
        self.headers: dict[str, str] = dict(options.get("headers") or {})
        for key, value in self.headers.items():
            if not (key + value).isascii() or "\n" in key + value or "\r" in key + value:
                raise ValueError(f"header {key!r} must be one line of ASCII; percent-encode "
                                 f"other characters")
        self.data = options["data"].encode() if options.get("data") is not None else None
        read = options.get("timeout") or 30.0
        self.timeout: tuple[float, float] = (options.get("connect_timeout") or read, read)
        proxy = options.get("proxy")
        self.proxies = {"http": proxy, "https": proxy} if proxy else None
        verify = options.get("verify") is not False
        ca_file = os.path.expanduser(options["ca_file"]) if options.get("ca_file") else None
        if ca_file and not verify:
            raise ValueError("ca_file and verify: false contradict each other; keep one")
        env_ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self.verify: bool | str = (ca_file or env_ca or True) if verify else False
        if not verify:  # the user chose this; a warning on every request would only flood logs
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.max_bytes: int = options.get("max_bytes") or 10 * MiB
        self.encoding: str | None = options.get("encoding")
        if self.encoding and codec_name(self.encoding) is None:
            raise ValueError(f"encoding {self.encoding!r} is unknown; use a name like utf-8 or gb18030")

    def source(self) -> str:
        return self.url if self.method == "GET" else f"{self.method} {self.url}"

    def link(self) -> str:
        return self.url

    def fetch(self, previous: Mapping[str, str]) -> Fetched:
        conditional = {}
        if self.method in ("GET", "HEAD"):
            if previous.get("etag"):
                conditional["If-None-Match"] = previous["etag"]
            if previous.get("last_modified"):
                conditional["If-Modified-Since"] = previous["last_modified"]
        headers = {**conditional, **self.headers} if conditional else self.headers
        try:
            with _session(self._key).request(
                self.method, self.url, headers=headers, data=self.data, timeout=self.timeout,
                proxies=self.proxies, verify=self.verify, stream=True,
            ) as response:
                return self._read(response, previous, bool(conditional))
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise self._explain(exc) from exc
        except OSError as exc:  # e.g. an unreadable ca_file
            raise WatchError(f"{self.method} {self.url} failed: {exc}; check the watcher's "
                             f"files and settings.") from exc

    def _read(self, response: requests.Response, previous: Mapping[str, str],
              conditional: bool) -> Fetched:
        status = response.status_code
        if status == 304:
            if not conditional:
                raise WatchError(f"{self.method} {self.url} returned 304 Not Modified to a request "
                                 f"that was not conditional; remove If-None-Match or "
                                 f"If-Modified-Since from the watcher's headers.")
            return Fetched(text="", unchanged=True, meta={**previous, **_validators(response)})
        if status >= 400:
            raise WatchError(self._status_message(response))
        body = self._body(response)
        text = decode(body, response.headers.get("Content-Type", ""), self.encoding)
        return Fetched(text=text, meta=_validators(response))

    def _body(self, response: requests.Response) -> bytes:
        """Read at most max_bytes (after gzip), so a huge or endless body costs no memory."""
        too_big = WatchError(f"{self.method} {self.url} sent more than {self.max_bytes:,} bytes, "
                             f"so notifier stopped reading; raise max_bytes if that is expected.")
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise too_big
        chunks, size = [], 0
        for chunk in response.iter_content(CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _status_message(self, response: requests.Response) -> str:
        status = response.status_code
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = response.reason or "error"
        hint = _STATUS_HINTS.get(status) or (
            "the site may be down, notifier will try again on the next check" if status >= 500
            else "check the watcher's url, method, headers and data")
        return f"{self.method} {self.url} returned HTTP {status} {reason}; {hint}."

    def _explain(self, exc: Exception) -> WatchError:
        what = f"{self.method} {self.url}"
        inner = exc.args[0] if exc.args else None
        if isinstance(exc, requests.ConnectTimeout):
            text = (f"{what} could not connect within {self.timeout[0]:g} seconds; the site may be "
                    f"down or blocked, notifier will try again on the next check.")
        elif isinstance(exc, requests.ReadTimeout) or isinstance(
                inner, urllib3.exceptions.ReadTimeoutError):
            text = (f"{what} sent nothing for {self.timeout[1]:g} seconds; the site may be "
                    f"overloaded, notifier will try again on the next check (or raise timeout).")
        elif isinstance(exc, requests.TooManyRedirects):
            text = (f"{what} redirected more than {self.max_redirects} times, probably in a loop; "
                    f"open the url in a browser to check it, or raise max_redirects.")
        elif isinstance(exc, requests.exceptions.SSLError):
            text = (f"{what} failed the TLS certificate check ({_reason(exc)}); set ca_file to the "
                    f"CA bundle that signed the site's certificate.")
        elif isinstance(exc, requests.exceptions.ProxyError):
            text = f"{what} could not go through the proxy ({_reason(exc)}); check the proxy option."
        elif isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
            text = (f"{what} failed: {_reason(exc)}; check the url and the network, notifier "
                    f"will try again on the next check.")
        else:
            text = f"{what} failed: {_reason(exc)}; check the watcher's url and options."
        return WatchError(text)


def _validators(response: requests.Response) -> dict[str, str]:
    """The ETag and Last-Modified to send back next time, only those the server gave."""
    meta = {}
    if etag := response.headers.get("ETag"):
        meta["etag"] = etag
    if modified := response.headers.get("Last-Modified"):
        meta["last_modified"] = modified
    return meta


def _reason(exc: Exception) -> str:
    """The useful tail of a requests/urllib3 error ("Connection refused"), without the wrapping."""
    text = str(exc)
    found = re.findall(r"\[(?:Errno -?\d+|SSL: \w+)\] ([^'\"()\[]+)", text)
    return found[-1].strip().rstrip(":") if found else (text or type(exc).__name__)
