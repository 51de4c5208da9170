"""The url watcher against real local servers: content, 304s, charsets, limits, errors,
total deadlines against drip-feeding servers, binary bodies and Retry-After."""

from __future__ import annotations

import gzip
import hashlib
import socket
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from typing import Any

import pytest

from notifier.binary import describe_change
from notifier.errors import WatchError
from notifier.watchers import _http
from notifier.watchers.url import Url
from tests.servers.http import (
    CHINESE_PROSE,
    GBK_TEXT,
    LocalHTTPServer,
    Stream,
    Tarpit,
    png,
    server_context,
)
from tests.servers.smtp import LocalCA
from tests.watchers._build import url_watcher
from tests.watchers._timing import timed

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


pytestmark = pytest.mark.usefixtures("hermetic_http")


watcher = url_watcher


def test_watchers_written_alike_share_settings_that_go_with_the_last_of_them() -> None:
    first, second = (watcher(url=f"http://127.0.0.1/{n}", headers={"Cookie": "day=1"}) for n in (1, 2))
    other = watcher(url="http://127.0.0.1/3", headers={"Cookie": "day=2"})
    assert first.settings is second.settings is not other.settings
    kept = weakref.ref(first.settings)
    del first, second  # a reload that changed the cookie: no watcher holds them any more
    assert kept() is None


def test_changing_content_is_fetched_each_time(http_server: LocalHTTPServer) -> None:
    http_server.set("/page", "<p>one</p>")
    w = watcher(url=http_server.url("/page"))
    assert w.fetch({}).text == "<p>one</p>"
    http_server.set("/page", "<p>two</p>")
    assert w.fetch({}).text == "<p>two</p>"
    assert (w.source(), w.link()) == (http_server.url("/page"), http_server.url("/page"))


def test_etag_and_last_modified_round_trip_through_304(http_server: LocalHTTPServer) -> None:
    http_server.set("/page", "v1", etag='"v1"', last_modified=LAST_MODIFIED)
    w = watcher(url=http_server.url("/page"))
    first = w.fetch({})
    assert first.meta == {"etag": '"v1"', "last_modified": LAST_MODIFIED}
    assert not first.unchanged

    second = w.fetch(first.meta)
    assert second.unchanged
    assert second.text == ""
    assert second.meta == first.meta
    sent = http_server.requests("/page")[-1].headers
    assert sent["if-none-match"] == '"v1"'
    assert sent["if-modified-since"] == LAST_MODIFIED

    http_server.set("/page", "v2", etag='"v2"')
    third = w.fetch(second.meta)
    assert (third.text, third.unchanged, third.meta) == ("v2", False, {"etag": '"v2"'})


def test_last_modified_alone_is_used_for_a_conditional_get(http_server: LocalHTTPServer) -> None:
    http_server.set("/page", "v1", last_modified=LAST_MODIFIED)
    w = watcher(url=http_server.url("/page"))
    assert w.fetch(w.fetch({}).meta).unchanged
    sent = http_server.requests("/page")[-1].headers
    assert "if-none-match" not in sent
    assert sent["if-modified-since"] == LAST_MODIFIED


def test_no_conditional_headers_when_the_server_gave_no_validators(
        http_server: LocalHTTPServer) -> None:
    w = watcher(url=http_server.url("/"))
    first = w.fetch({})
    assert first.meta == {}
    w.fetch(first.meta)
    assert http_server.count("/") == 2
    for seen in http_server.requests("/"):
        assert "if-none-match" not in seen.headers
        assert "if-modified-since" not in seen.headers


@pytest.mark.parametrize("path", ["/gbk", "/gbk-meta", "/gb2312-equiv"])
def test_chinese_pages_decode_by_header_or_meta(http_server: LocalHTTPServer, path: str) -> None:
    assert GBK_TEXT in watcher(url=http_server.url(path)).fetch({}).text


@pytest.mark.parametrize("text", [CHINESE_PROSE, "价格 128 元", "中文"])
def test_undeclared_gbk_is_detected(http_server: LocalHTTPServer, text: str) -> None:
    http_server.set("/page", text.encode("gbk"), headers={"Content-Type": "text/html"})
    assert watcher(url=http_server.url("/page")).fetch({}).text == text


def test_encoding_option_overrides_a_wrong_header(http_server: LocalHTTPServer) -> None:
    http_server.set("/page", GBK_TEXT.encode("gbk"))  # served as charset=utf-8
    assert watcher(url=http_server.url("/page"), encoding="gbk").fetch({}).text == GBK_TEXT


def test_invalid_utf8_becomes_replacement_characters(http_server: LocalHTTPServer) -> None:
    text = watcher(url=http_server.url("/invalid-utf8")).fetch({}).text
    assert text.startswith("ok ")
    assert text.endswith(" end")
    assert "\ufffd" in text


def test_hung_server_times_out_quickly(http_server: LocalHTTPServer) -> None:
    w = watcher(url=http_server.url("/hang"), timeout="0.2s")
    started = time.monotonic()
    with pytest.raises(WatchError, match=r"did not finish within 0\.2 seconds"):
        w.fetch({})
    assert time.monotonic() - started < 5


def test_endless_body_is_cut_at_max_bytes(http_server: LocalHTTPServer) -> None:
    w = watcher(url=http_server.url("/endless"), max_bytes=100_000)
    with pytest.raises(WatchError, match=r"more than 100,000 bytes"):
        w.fetch({})


def test_huge_declared_length_is_refused_before_reading(http_server: LocalHTTPServer) -> None:
    http_server.routes["/big"] = Stream(declared_length=10**9)
    with pytest.raises(WatchError, match=r"more than 10,485,760 bytes"):
        watcher(url=http_server.url("/big")).fetch({})


def test_gzip_bomb_is_capped_after_decompression(http_server: LocalHTTPServer) -> None:
    http_server.set("/bomb", gzip.compress(b"\0" * 1_000_000),
                    headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    with pytest.raises(WatchError, match=r"more than 100,000 bytes"):
        watcher(url=http_server.url("/bomb"), max_bytes=100_000).fetch({})


@pytest.mark.parametrize(("status", "words"), [
    (500, r"HTTP 500 Internal Server Error; the site may be down"),
    (404, r"HTTP 404 Not Found; the page is gone"),
    (403, r"HTTP 403 Forbidden; the site refused access"),
])
def test_http_errors_name_the_status(http_server: LocalHTTPServer, status: int, words: str) -> None:
    http_server.set("/page", "no", status=status)
    with pytest.raises(WatchError, match=words):
        watcher(url=http_server.url("/page")).fetch({})


def test_builtin_error_route(http_server: LocalHTTPServer) -> None:
    with pytest.raises(WatchError, match="500"):
        watcher(url=http_server.url("/error")).fetch({})


def test_redirects_are_followed_and_loops_fail(http_server: LocalHTTPServer) -> None:
    http_server.set("/old", status=301, headers={"Location": "/"})
    assert watcher(url=http_server.url("/old")).fetch({}).text == "hello"
    with pytest.raises(WatchError, match=r"redirected more than 3 times"):
        watcher(url=http_server.url("/loop"), max_redirects=3).fetch({})
    assert http_server.count("/loop") == 4


def test_post_sends_body_and_headers(http_server: LocalHTTPServer) -> None:
    w = watcher(url=http_server.url("/"), method="POST", data="q=价格",
                headers={"Content-Type": "application/x-www-form-urlencoded", "X-Token": "t"})
    assert w.fetch({"etag": '"ignored for POST"'}).text == "hello"
    seen = http_server.requests("/")[-1]
    assert (seen.method, seen.body) == ("POST", "q=价格".encode())
    assert seen.headers["x-token"] == "t"
    assert "if-none-match" not in seen.headers
    assert w.source() == f"POST {http_server.url('/')}"


def test_proxy_from_option_and_from_environment(
        http_server: LocalHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    http_server.set("/page", "via proxy")
    w = watcher(url="http://site.invalid/page", proxy=http_server.url("/"))
    assert w.fetch({}).text == "via proxy"
    monkeypatch.setenv("HTTP_PROXY", http_server.url("/"))
    assert watcher(url="http://other.invalid/page").fetch({}).text == "via proxy"
    assert [seen.headers["host"] for seen in http_server.requests("/page")] == [
        "site.invalid", "other.invalid"]


def test_unasked_304_is_an_error(http_server: LocalHTTPServer) -> None:
    http_server.set("/page", status=304)
    with pytest.raises(WatchError, match=r"304 Not Modified to a request that was not conditional"):
        watcher(url=http_server.url("/page")).fetch({})


def test_connection_refused_is_a_watch_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WatchError, match=r"Connection refused; check the url"):
        watcher(url=f"http://127.0.0.1:{port}/").fetch({})


@pytest.mark.parametrize(("raw", "message"), [
    ({"url": "ftp://example.com/"}, "must be a full http:// or https:// address"),
    ({"url": "http://example.com:99999/"}, "invalid port"),
    ({"url": "https://example.com/", "verify": False, "ca_file": "/ca.pem"}, "contradict"),
    ({"url": "https://example.com/", "encoding": "klingon"}, "encoding 'klingon' is unknown"),
    ({"url": "https://example.com/", "headers": {"Cookie": "name=张三"}}, "one line of ASCII"),
    ({"url": "https://example.com/", "proxy": "proxy:3128"}, "must be a URL like http://proxy:3128"),
    ({"url": "https://example.com/", "proxy": "http://u:secret@proxy:99999"}, r"^proxy has an invalid port"),
    ({"url": "http://exa mple.com/"}, "is not a valid address"),
])
def test_unusable_options_are_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        watcher(**raw)


def test_concurrent_fetches_share_one_pool(http_server: LocalHTTPServer) -> None:
    http_server.generate("/gen/", size=512)
    watchers = [watcher(url=http_server.url(f"/gen/{i}")) for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda w: w.fetch({}).text, watchers))
    assert all(f"/gen/{i} version 0" in text for i, text in enumerate(texts))
    assert http_server.peak_connections <= _http.PER_HOST
    assert _http._idle.count <= _http.PER_HOST


# The total deadline: `timeout` bounds connect + TLS + headers + body, however the server behaves.

TIMEOUT = 1.0
SLACK = 0.5  # scheduling noise on a loaded machine; a per-read timeout would never fire at all


def fails_at_deadline(w: Url) -> str:
    """Fetch, expecting the total-deadline error within TIMEOUT (+ SLACK); return the message."""
    started = time.monotonic()
    with pytest.raises(WatchError) as caught:
        w.fetch({})
    elapsed = time.monotonic() - started
    assert TIMEOUT - 0.05 <= elapsed < TIMEOUT + SLACK, f"failed after {elapsed:.2f}s"
    return str(caught.value)


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_drip_feed_fails_at_the_total_deadline(http_server: LocalHTTPServer, path: str) -> None:
    message = fails_at_deadline(watcher(url=http_server.url(path), timeout="1s"))
    assert message == (f"GET {http_server.url(path)} did not finish within 1 second (connecting, "
                       f"headers and body together); the site is slow or stalled, raise timeout "
                       f"if it needs longer.")


@pytest.mark.parametrize("drip", [False, True], ids=["silent", "dripping"])
def test_stalled_tls_handshake_fails_at_the_total_deadline(drip: bool) -> None:
    with Tarpit(drip=drip) as tarpit:
        message = fails_at_deadline(watcher(url=tarpit.url("/page"), timeout="1s"))
    assert "did not finish within 1 second" in message
    assert "Traceback" not in message


def test_connect_timeout_bounds_a_stalled_handshake_on_its_own() -> None:
    with Tarpit() as tarpit:
        started = time.monotonic()
        with pytest.raises(WatchError, match=r"could not connect within 0\.3 seconds"):
            watcher(url=tarpit.url(), timeout="5s", connect_timeout="0.3s").fetch({})
    assert time.monotonic() - started < 0.3 + SLACK


@pytest.mark.parametrize("route", ["redirect", "proxy"])
def test_drip_feed_behind_a_redirect_or_proxy(http_server: LocalHTTPServer, route: str) -> None:
    if route == "redirect":
        http_server.set("/moved", status=302, headers={"Location": "/drip-body"})
        w = watcher(url=http_server.url("/moved"), timeout="1s")
    else:
        w = watcher(url="http://site.invalid/drip-headers", proxy=http_server.url("/"), timeout="1s")
    assert "did not finish within 1 second" in fails_at_deadline(w)


def test_https_fetches_and_drip_feeds(tls_ca: LocalCA) -> None:
    with LocalHTTPServer(tls=server_context(tls_ca)) as server:
        w = watcher(url=server.url("/"), ca_file=tls_ca.ca_file)
        assert [w.fetch({}).text for _ in range(3)] == ["hello"] * 3
        drip = watcher(url=server.url("/drip-body"), ca_file=tls_ca.ca_file, timeout="1s")
        assert "did not finish within 1 second" in fails_at_deadline(drip)
        assert w.fetch({}).text == "hello"


def test_a_fetch_after_a_cut_connection_reuses_the_pool_cleanly(http_server: LocalHTTPServer) -> None:
    """A deadline shuts sockets down; the pooled connections other fetches use stay healthy."""
    fails_at_deadline(watcher(url=http_server.url("/drip-headers"), timeout="1s"))
    w = watcher(url=http_server.url("/"))
    assert [w.fetch({}).text for _ in range(3)] == ["hello"] * 3


def test_drip_feed_watchers_do_not_hold_up_a_pass(http_server: LocalHTTPServer) -> None:
    """16 dripping pages on one host and normal pages on another, 16 workers like a pass: the
    drips go 8 at a time (the per-host limit), each failing one timeout after its turn came;
    the normal pages take no longer than usual; the pass ends in about 2 x timeout."""
    drips = [watcher(url=http_server.url(("/drip-body", "/drip-headers")[i % 2]), timeout="1s")
             for i in range(16)]
    with LocalHTTPServer() as other:
        other.generate("/gen/", size=512)
        normal = [watcher(url=other.url(f"/gen/{i}"), timeout="1s") for i in range(4)]
        order = drips[:8] + normal[:2] + drips[8:] + normal[2:]


        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(timed, order))
        elapsed = time.monotonic() - started

    for w, seconds, outcome in results:
        if w in normal:
            assert "version 0" in outcome
            assert seconds < 0.5, f"{w.url} took {seconds:.2f}s next to the drip-feeds"
        else:
            assert "did not finish within 1 second" in outcome
            turns = round(seconds / TIMEOUT)  # 1 for the first eight, 2 for those that waited
            assert turns in (1, 2), f"{w.url} failed after {seconds:.2f}s"
            # Never before its own timeout; the clock of the last items starts only when a pool
            # worker frees up (after a normal page), so a second turn may end a little short of 2 s.
            assert TIMEOUT - 0.05 <= seconds < turns * (TIMEOUT + SLACK), \
                f"{w.url} failed after {seconds:.2f}s"
    assert elapsed < 3 * TIMEOUT, f"the pass took {elapsed:.2f}s"


# Binary bodies are compared by size and SHA-256, never as text.

def test_png_is_summarised_and_its_change_is_noticed(http_server: LocalHTTPServer) -> None:
    red, blue = png(rgb=(255, 0, 0)), png(width=8, rgb=(0, 0, 255))
    http_server.set("/logo.png", red, headers={"Content-Type": "image/png"})
    w = watcher(url=http_server.url("/logo.png"))
    first = w.fetch({}).text
    assert first == (f"binary content (image/png), {len(red)} bytes, "
                     f"sha256 {hashlib.sha256(red).hexdigest()}")
    http_server.set("/logo.png", blue, headers={"Content-Type": "image/png"})
    second = w.fetch({}).text
    assert second.startswith(f"binary content (image/png), {len(blue)} bytes, sha256 ")
    assert describe_change(first, second) == (
        f"binary content (image/png) changed (size {len(red)} → {len(blue)} bytes, sha256 "
        f"{hashlib.sha256(red).hexdigest()[:12]}… → {hashlib.sha256(blue).hexdigest()[:12]}…)")


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "text/html", "text/plain"])
def test_png_mislabelled_as_text_is_still_binary(http_server: LocalHTTPServer, content_type: str) -> None:
    image = png()
    http_server.set("/page", image, headers={"Content-Type": content_type})
    text = watcher(url=http_server.url("/page")).fetch({}).text
    mime = content_type.partition(";")[0]
    digest = hashlib.sha256(image).hexdigest()
    assert text == f"binary content ({mime}), {len(image)} bytes, sha256 {digest}"


@pytest.mark.parametrize(("body", "content_type"), [
    (b"price: 12\0 EUR", "text/plain; charset=utf-8"),  # a NUL in declared text
    (b"\0\1\2\3 undeclared", ""),
    (bytes(range(128, 256)) * 4, "text/html"),  # no NUL, but no charset explains it
    (b"%PDF-1.7 ...", "application/pdf"),
    (b"plain looking bytes", "application/octet-stream"),
])
def test_binary_bodies_never_reach_the_text(http_server: LocalHTTPServer, body: bytes,
                                            content_type: str) -> None:
    http_server.set("/thing", body, headers={"Content-Type": content_type})
    text = watcher(url=http_server.url("/thing")).fetch({}).text
    assert text.startswith("binary content")
    assert text.endswith(f"{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()}")
    assert "\0" not in text


@pytest.mark.parametrize(("body", "content_type"), [
    (b'<svg xmlns="http://www.w3.org/2000/svg"><text>hi</text></svg>', "image/svg+xml"),
    (b'{"price": 12}', "application/json"),
    ("\ufeffUTF-16 page, 价格".encode("utf-16"), "text/html"),  # NUL bytes, but a BOM says text
])
def test_text_formats_stay_text(http_server: LocalHTTPServer, body: bytes, content_type: str) -> None:
    http_server.set("/thing", body, headers={"Content-Type": content_type})
    text = watcher(url=http_server.url("/thing")).fetch({}).text
    assert not text.startswith("binary content")
    assert "\0" not in text


def test_encoding_option_says_an_octet_stream_is_text(http_server: LocalHTTPServer) -> None:
    http_server.set("/prices.txt", GBK_TEXT.encode("gbk"),
                    headers={"Content-Type": "application/octet-stream"})
    assert watcher(url=http_server.url("/prices.txt"), encoding="gbk").fetch({}).text == GBK_TEXT


# Retry-After: a rate-limited or unavailable site says when to come back.

def retry_error(http_server: LocalHTTPServer, status: int, retry_after: str | None) -> WatchError:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    http_server.set("/limited", "slow down", status=status, headers=headers)
    with pytest.raises(WatchError) as caught:
        watcher(url=http_server.url("/limited")).fetch({})
    return caught.value


def test_retry_after_seconds_on_429(http_server: LocalHTTPServer) -> None:
    error = retry_error(http_server, 429, "120")
    assert error.retry_after == 120.0
    assert str(error) == (f"GET {http_server.url('/limited')} returned HTTP 429 Too Many Requests; "
                          f"the site limits requests and asked notifier to come back in 2 minutes; "
                          f"a longer `every` helps.")


def test_retry_after_http_date_on_503(http_server: LocalHTTPServer) -> None:
    error = retry_error(http_server, 503, formatdate(time.time() + 600, usegmt=True))
    assert error.retry_after is not None
    assert 597 <= error.retry_after <= 600  # HTTP dates have whole seconds
    assert "HTTP 503 Service Unavailable; the site is unavailable" in str(error)
    assert "asked notifier to come back in 10 minutes" in str(error)


def test_retry_after_is_capped_at_a_day(http_server: LocalHTTPServer) -> None:
    error = retry_error(http_server, 429, str(10 * 86400))
    assert error.retry_after == 86400.0
    assert "come back in 10 days (notifier looks again after 1 day at the latest)" in str(error)


@pytest.mark.parametrize(("status", "retry_after"), [
    (429, None), (429, "soon"), (503, None), (500, "120"),
])
def test_no_usable_retry_after(http_server: LocalHTTPServer, status: int, retry_after: str | None) -> None:
    error = retry_error(http_server, status, retry_after)
    assert error.retry_after is None
    assert "come back" not in str(error)


def test_a_past_retry_after_date_means_now(http_server: LocalHTTPServer) -> None:
    error = retry_error(http_server, 503, formatdate(time.time() - 3600, usegmt=True))
    assert error.retry_after == 0.0
