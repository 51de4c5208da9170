"""The url kind's HTTP/1.1 reader against a raw socket server: whatever the framing, coding and
packet boundaries, the fetched text is the body; whatever is malformed is a WatchError that
says what the server did, never a traceback; kept-alive connections a server gave up are
replaced without the watcher noticing."""

from __future__ import annotations

import gzip
import re
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.errors import WatchError
from notifier.watchers import _http
from notifier.watchers.url import Url
from tests.servers.raw import HANGUP, RawServer, Reply
from tests.watchers._build import url_watcher

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"


pytestmark = pytest.mark.usefixtures("hermetic_http")


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    """A RawServer answering 204 until a test says otherwise; stopped after the test."""
    with RawServer() as server:
        yield server


def watcher(url: str, **raw: Any) -> Url:
    return url_watcher(url, **{"timeout": "5s", **raw})


def encode(data: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "raw-deflate":  # what some servers send as "deflate": no zlib header
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()
    return data


@st.composite
def responses(draw: st.DrawFn) -> tuple[str, Reply]:
    """A body and a response that carries it, framed, coded and cut up at random."""
    text = draw(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0\ufeff"),
                        max_size=300))
    coding = draw(st.sampled_from(["identity", "gzip", "deflate", "raw-deflate"]))
    framing = draw(st.sampled_from(["length", "chunked", "close-1.0", "close-1.1"]))
    payload = encode(text.encode(), coding)
    head = b"HTTP/1.0 200 OK\r\n" if framing == "close-1.0" else b"HTTP/1.1 200 OK\r\n"
    if draw(st.booleans()):  # obsolete line folding, in the field the charset comes from
        head += b"Content-Type: text/plain;\r\n \t charset=utf-8\r\n"
    else:
        head += b"Content-Type: text/plain; charset=utf-8\r\n"
    if draw(st.booleans()):
        head += b"X-Folded: one\r\n two\r\n\tthree\r\n"
    if coding != "identity":
        head += f"Content-Encoding: {coding.removeprefix('raw-')}\r\n".encode()
    if framing == "length":
        head += b"Content-Length: %d\r\n\r\n" % len(payload)
        body = payload
    elif framing == "chunked":
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        body = b""
        rest = payload
        while rest:
            size = draw(st.integers(1, max(1, len(rest))))
            extension = draw(st.sampled_from([b"", b";name=value", b' ; q="x;y"']))
            body += b"%x%s\r\n%s\r\n" % (size, extension, rest[:size])
            rest = rest[size:]
        body += b"0\r\n"
        if draw(st.booleans()):
            body += b"Expires: never\r\nX-Trailer: yes\r\n"
        body += b"\r\n"
    else:
        if framing == "close-1.1":
            head += b"Connection: close\r\n"
        head += b"\r\n"
        body = payload
    if draw(st.booleans()):
        head = b"HTTP/1.1 100 Continue\r\n\r\n" + head
    data = head + body
    splits = draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))
    return text, Reply(data, splits, close=framing.startswith("close"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=responses())
def test_any_framing_coding_and_packet_boundaries_give_the_body(
        raw_server: RawServer, case: tuple[str, Reply]) -> None:
    text, reply = case
    raw_server.serve(reply)
    assert watcher(raw_server.url("/page")).fetch({}).text == text


def test_raw_deflate_whose_first_byte_comes_alone_is_decoded(raw_server: RawServer) -> None:
    """zlib judges the header on two bytes: a 1-byte first chunk of raw deflate is not lost
    when the decoder switches to raw deflate on the second."""
    payload = encode(b"hello, raw deflate", "raw-deflate")
    chunks = b"1\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (payload[:1], len(payload) - 1, payload[1:])
    raw_server.serve(Reply(OK_HEAD + b"Content-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"
                           + chunks))
    assert watcher(raw_server.url()).fetch({}).text == "hello, raw deflate"


def failure(server: RawServer, data: bytes, *, close: bool = True, hold: bool = False) -> str:
    """The message of the WatchError a fetch ends with when the server sends `data`."""
    server.serve(Reply(data, close=close, hold=hold))
    started = time.monotonic()
    with pytest.raises(WatchError) as caught:
        watcher(server.url("/page")).fetch({})
    assert time.monotonic() - started < 4, "the error waited for the deadline"
    message = str(caught.value)
    assert message.startswith(f"GET {server.url('/page')} failed: the ")
    assert message.endswith("; check the url and the network.")
    assert "Traceback" not in message
    return message


@pytest.mark.parametrize(("data", "reason"), [
    (b"HTTP/1.1 2OO OK\r\n\r\n", r"did not answer in HTTP/1\.x \(it sent 'HTTP/1\.1 2OO OK'\)"),
    (b"HTTP/1.1 2\xb20 OK\r\n\r\n", r"did not answer in HTTP/1\.x"),  # a Latin-1 digit
    (b"<html>hello</html>", r"did not answer in HTTP/1\.x \(it sent '<html>hello</html>'\)"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", r"malformed header line \('no colon here'\)"),
    (b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", r"malformed header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nfive", r"invalid Content-Length \('five'\)"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", r"invalid Content-Length \('-1'\)"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", r"invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
     r"invalid Content-Length \('5, 6'\)"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
     r"invalid chunk size \(b'zz'\)"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
     r"invalid chunk size \(b'-5'\)"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
     r"invalid chunk size \(b'0x5'\)"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
     r"closed the connection after 9 of 100 bytes"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort",
     r"closed the connection after 5 of 18 bytes"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
     r"broke off a chunked body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n",
     r"a chunk that does not match its declared size"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/pl", r"closed the connection without a complete response"),
    (b"", r"closed the connection without answering"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!",
     r"the body could not be decompressed"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Encoding: deflate\r\n\r\n0\r\n\r\n",
     r"compressed the body more than once \(gzip, deflate\)"),
])
def test_malformed_responses_are_watch_errors_that_say_what_was_wrong(
        raw_server: RawServer, data: bytes, reason: str) -> None:
    assert re.search(reason, failure(raw_server, data))


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_a_transfer_coding_is_undone_and_frames_the_body_as_rfc_9112_says(
        raw_server: RawServer, framing: str) -> None:
    """notifier asks for no transfer-coding, but a server may still send one: gzip with chunked
    last is chunked framing, gzip alone runs to the connection's end; a Content-Length beside
    either is ignored (it would cut the body or misframe the next response)."""
    packed = gzip.compress("Preis: 12,99 \u20ac\n".encode())
    if framing == "chunked":
        te, body = b"gzip, chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed)
    else:
        te, body = b"gzip", packed
    head = OK_HEAD + b"Transfer-Encoding: " + te + b"\r\nContent-Length: 3\r\n\r\n"
    raw_server.serve(Reply(head + body, close=framing == "close"), KEPT)
    w = watcher(raw_server.url())
    assert w.fetch({}).text == "Preis: 12,99 \u20ac\n"
    assert w.fetch({}).text == "hello"
    assert raw_server.connections == (1 if framing == "chunked" else 2)


def test_a_server_that_is_not_http_and_waits_fails_at_once(raw_server: RawServer) -> None:
    """An SMTP server greets and waits for a command: no need to wait for the deadline."""
    message = failure(raw_server, b"220 mail.example.com ESMTP ready\r\n", close=False, hold=True)
    assert "did not answer in HTTP/1.x (it sent '220 mail.example.com ESMTP ready')" in message


def test_more_than_64_kb_of_headers(raw_server: RawServer) -> None:
    fields = b"".join(b"X-Big-%d: %s\r\n" % (i, b"x" * 8000) for i in range(9))
    message = failure(raw_server, b"HTTP/1.1 200 OK\r\n" + fields + b"\r\nbody", close=False, hold=True)
    assert "more than 64 KB of headers" in message
    one_line = b"HTTP/1.1 200 OK\r\nX-Huge: " + b"y" * 70_000 + b"\r\n\r\n"
    assert "more than 64 KB of headers" in failure(raw_server, one_line, close=False, hold=True)


def test_more_than_100_header_fields(raw_server: RawServer) -> None:
    fields = b"".join(b"X-Field-%d: %d\r\n" % (i, i) for i in range(101))
    assert "more than 100 header fields" in failure(raw_server, OK_HEAD + fields + b"\r\n")
    exactly = b"".join(b"X-Field-%d: %d\r\n" % (i, i) for i in range(99))  # and Content-Type
    raw_server.serve(Reply(OK_HEAD + exactly + b"Content-Length: 2\r\n\r\nok"))
    with pytest.raises(WatchError, match="more than 100 header fields"):
        watcher(raw_server.url()).fetch({})
    fewer = exactly[: exactly.index(b"X-Field-98")]
    raw_server.serve(Reply(OK_HEAD + fewer + b"Content-Length: 2\r\n\r\nok"))
    assert watcher(raw_server.url()).fetch({}).text == "ok"


KEPT = Reply(OK_HEAD + b"Content-Length: 5\r\n\r\nhello")


def test_an_idle_connection_the_server_closed_is_replaced(raw_server: RawServer) -> None:
    raw_server.serve(KEPT)
    w = watcher(raw_server.url())
    assert w.fetch({}).text == "hello"
    assert w.fetch({}).text == "hello"
    assert raw_server.connections == 1, "the connection was not kept alive"
    raw_server.close_connections()
    assert w.fetch({}).text == "hello"
    assert raw_server.connections == 2


def test_a_kept_alive_connection_closed_as_the_request_came_is_replaced(
        raw_server: RawServer) -> None:
    """The race no idle check can see: the server gives the connection up on receiving the
    request. A GET goes again on a new connection; a POST, which may not be repeated, fails."""
    raw_server.serve(KEPT, HANGUP, KEPT)
    w = watcher(raw_server.url())
    assert w.fetch({}).text == "hello"
    assert w.fetch({}).text == "hello"
    assert (raw_server.connections, len(raw_server.requests)) == (2, 3)

    raw_server.serve(KEPT, HANGUP, KEPT)
    post = watcher(raw_server.url(), method="POST", data="x")
    assert post.fetch({}).text == "hello"
    with pytest.raises(WatchError, match="closed the connection without answering"):
        post.fetch({})


def test_bytes_left_over_on_a_kept_alive_connection_never_answer_the_next_request(
        raw_server: RawServer) -> None:
    """A server that sends more than its Content-Length: what follows on that connection is
    not taken as the next answer (it would be another watcher's page, or an error that is not
    its own); a GET goes again on a new connection, a POST fails as a broken response."""
    raw_server.serve(Reply(OK_HEAD + b"Content-Length: 5\r\n\r\nhelloEXTRA BYTES"), KEPT)
    w = watcher(raw_server.url())
    assert w.fetch({}).text == "hello"
    assert w.fetch({}).text == "hello"
    assert (raw_server.connections, len(raw_server.requests)) == (2, 3)

    raw_server.serve(Reply(OK_HEAD + b"Content-Length: 5\r\n\r\nhelloEXTRA BYTES"), KEPT)
    post = watcher(raw_server.url(), method="POST", data="x")
    assert post.fetch({}).text == "hello"
    with pytest.raises(WatchError, match=r"did not answer in HTTP/1\.x"):
        post.fetch({})


def test_idle_connections_over_the_limit_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_IDLE, the least recently used site's idle connections are closed, not dropped
    open: its server sees them end."""
    monkeypatch.setattr(_http, "MAX_IDLE", 1)
    with RawServer(KEPT) as first, RawServer(KEPT) as second:
        assert watcher(first.url()).fetch({}).text == "hello"
        assert watcher(second.url()).fetch({}).text == "hello"
        deadline = time.monotonic() + 5
        while first.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.open_connections == 0, "the evicted connection was left open"
        assert second.open_connections == 1


def test_an_ipv6_literal_url_is_fetched() -> None:
    """http://[::1]:port/ connects to ::1 and sends Host: [::1]:port (not [[::1]])."""
    try:
        server = RawServer(KEPT, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        assert watcher(server.url("/v6")).fetch({}).text == "hello"
        assert b"\r\nHost: [::1]:%d\r\n" % server.port in server.requests[0]


@pytest.mark.parametrize("host", ["a..example.com", ".example.com", "x" * 64 + ".example.com",
                                  "a." * 127 + "com"])
def test_a_host_name_the_resolver_would_refuse_is_a_config_error(host: str) -> None:
    """Python's resolver raises UnicodeError (not OSError) for these, which escaped the
    watcher as a traceback at every check; now the config says what is wrong."""
    with pytest.raises(ValueError, match="has an invalid host name"):
        watcher(f"http://{host}/")
    with pytest.raises(ValueError, match="has an invalid host name"):
        watcher(f"https://{host}/a path needing urllib3")


def test_a_redirect_to_a_host_name_the_resolver_would_refuse_is_a_watch_error(
        raw_server: RawServer) -> None:
    raw_server.serve(Reply(b"HTTP/1.1 302 Found\r\nLocation: http://a..example.com/\r\n"
                           b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(WatchError, match=r"redirected to http://a\.\.example\.com/, which notifier "
                                         r"cannot follow \(.*invalid host name"):
        watcher(raw_server.url()).fetch({})


@pytest.mark.parametrize("coding", ["identity", "gzip"])
def test_a_huge_chunk_is_capped_as_it_arrives(raw_server: RawServer, coding: str) -> None:
    """A chunk declaring 1 GiB is refused once max_bytes have arrived (decoded), not
    buffered whole first: the server below never sends the rest, so only a cap applied
    as the bytes arrive ends the fetch before its deadline."""
    payload = encode(b"x" * 300_000, coding)
    header = b"Content-Encoding: gzip\r\n" if coding == "gzip" else b""
    raw_server.serve(Reply(OK_HEAD + header + b"Transfer-Encoding: chunked\r\n\r\n40000000\r\n"
                           + payload, hold=True))
    w = watcher(raw_server.url(), max_bytes=100_000, timeout="3s")
    started = time.monotonic()
    with pytest.raises(WatchError, match=r"sent more than 100,000 bytes, so notifier stopped reading"):
        w.fetch({})
    assert time.monotonic() - started < 2
