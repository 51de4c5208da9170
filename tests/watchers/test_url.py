"""The url watcher against a real local HTTP server: content, 304s, charsets, limits, errors."""

from __future__ import annotations

import gzip
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from notifier.errors import WatchError
from notifier.options import parse_options
from notifier.watchers import url as url_module
from notifier.watchers.url import Url, close_sessions
from tests.servers.http import CHINESE_PROSE, GBK_TEXT, LocalHTTPServer, Stream

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.fixture(autouse=True)
def _hermetic_sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep a developer's proxy away from the local server, and close the shared sessions
    (which outlive a test) so no socket is garbage-collected open."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield
    close_sessions()


def watcher(**raw: Any) -> Url:
    """Build a watcher the way the config loader does: parse, fill defaults, construct."""
    values, problems = parse_options(raw, Url.options, "watchers.yaml", "watchers.w")
    assert not problems, problems
    return Url("w", values)


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
    with pytest.raises(WatchError, match=r"sent nothing for 0\.2 seconds"):
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
])
def test_unusable_options_are_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        watcher(**raw)


def test_concurrent_fetches_share_one_session(http_server: LocalHTTPServer) -> None:
    http_server.generate("/gen/", size=512)
    watchers = [watcher(url=http_server.url(f"/gen/{i}")) for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda w: w.fetch({}).text, watchers))
    assert all(f"/gen/{i} version 0" in text for i, text in enumerate(texts))
    assert len(url_module._sessions) == 1
