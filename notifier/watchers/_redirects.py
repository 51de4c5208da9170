"""Follow a request's redirects the way browsers (and requests) do, hop by hop.

Each hop goes through `_http.send`, so it uses the kept-alive connections and stays under
the fetch's deadline. A 303 (and a 301/302 after a POST) turns into a GET without a body; 307 and 308
repeat the request as it was. Credentials the watcher sends (Authorization, Cookie) never
follow a redirect to another host. Cookies a site sets while redirecting are sent back
within the same chain, so "set a cookie and reload" pages work; none are kept afterwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urljoin

from notifier.watchers._http import Request, send
from notifier.watchers._wire import REDIRECTS, Response

_PRIVATE = frozenset({"authorization", "cookie", "proxy-authorization"})
_BODY_HEADERS = frozenset({"content-length", "content-type", "transfer-encoding"})
_SAFE = "!#$%&'()*+,/:;=?@[]~"  # left as they are when a Location is percent-encoded


class TooManyRedirects(Exception):
    """More redirects than the watcher allows (probably a loop)."""


class BadRedirect(Exception):
    """A redirect to somewhere notifier cannot follow (another scheme, a broken address)."""


async def follow(request: Request, connect_timeout: float | None, max_bytes: int,
                 max_redirects: int) -> Response:
    """Send `request`, following up to `max_redirects` redirects; the final response."""
    cookies: _Cookies | None = None
    for hop in range(max_redirects + 1):
        response = await send(request, connect_timeout, max_bytes)
        location = response.headers.get("Location") if response.status in REDIRECTS else None
        if not location:
            return response
        if "Set-Cookie" in response.headers:
            cookies = cookies or _Cookies()
            cookies.remember(request.url, response)
        if hop == max_redirects:
            break
        request = _next(request, response.status, location)
        if cookies is not None:
            request = cookies.add(request)
    raise TooManyRedirects(max_redirects)


def _next(request: Request, status: int, location: str) -> Request:
    """The request a redirect asks for."""
    with contextlib.suppress(UnicodeError):  # servers send UTF-8 that http.client read as Latin-1
        location = location.encode("latin-1").decode("utf-8")
    url = quote(urljoin(request.url, location.strip()), safe=_SAFE)
    headers = dict(request.headers)
    method, body = request.method, request.body
    if status not in (307, 308):
        if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
            method = "GET"
        body = None
        headers = {k: v for k, v in headers.items() if k.lower() not in _BODY_HEADERS}
    try:
        new = Request.to(url, method=method, headers=headers, body=body, proxy=request.proxy,
                         verify=request.verify, ca_file=request.ca_file)
    except ValueError as exc:
        raise BadRedirect(f"redirected to {url}, which notifier cannot follow ({exc})") from None
    if new.site != request.site and not _upgrade(request, new):
        kept = {k: v for k, v in new.headers.items() if k.lower() not in _PRIVATE}
        new = replace(new, headers=kept)
    return new


def _upgrade(old: Request, new: Request) -> bool:
    """http://host/ → https://host/ on the default ports: the same site, now encrypted."""
    return old.site == ("http", new.site[1], 80) and new.site == ("https", old.site[1], 443)


class _Cookies:
    """The cookies set within one redirect chain (http.cookiejar's rules for domains/paths)."""

    def __init__(self) -> None:
        from http.cookiejar import CookieJar  # noqa: PLC0415 - only redirects that set cookies

        self.jar = CookieJar()

    def remember(self, url: str, response: Response) -> None:
        from urllib.request import Request as UrlRequest  # noqa: PLC0415 - see __init__

        self.jar.extract_cookies(_Reply(response), UrlRequest(url))  # type: ignore[arg-type]  # noqa: S310 - http(s) only

    def add(self, request: Request) -> Request:
        from urllib.request import Request as UrlRequest  # noqa: PLC0415 - see __init__

        probe = UrlRequest(request.url)  # noqa: S310 - never opened, and http(s) only
        self.jar.add_cookie_header(probe)
        found = probe.get_header("Cookie")
        if not found:
            return request
        headers = {k: v for k, v in request.headers.items() if k.lower() != "cookie"}
        own = next((v for k, v in request.headers.items() if k.lower() == "cookie"), None)
        headers["Cookie"] = f"{own}; {found}" if own else found
        return replace(request, headers=headers)


class _Reply:
    """What http.cookiejar reads from a response: `info().get_all(name, default)`."""

    def __init__(self, response: Response) -> None:
        self._headers = response.headers

    def info(self) -> _Reply:
        return self

    def get_all(self, name: str, default: Any = None) -> Any:
        return self._headers.getlist(name) or default
