"""The url kind's transport at a pass's concurrency: the per-host limit, failure isolation with
a hundred fetches in flight, pools reused across passes, and redirects hop by hop."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from notifier.errors import WatchError
from notifier.watchers import _http, _loop
from notifier.watchers._http import PER_HOST, close_pools, configure, limits
from notifier.watchers.url import Url
from tests.servers.http import LocalHTTPServer, Stream, server_context
from tests.servers.smtp import LocalCA
from tests.watchers._build import url_watcher
from tests.watchers._timing import timed

TIMEOUT = 1.0
SLACK = 0.5  # scheduling noise on a loaded machine; a per-read timeout would never fire at all


pytestmark = pytest.mark.usefixtures("hermetic_http")


watcher = url_watcher


def test_per_host_limit_is_obeyed_and_other_hosts_go_on(http_server: LocalHTTPServer) -> None:
    """40 slow pages on one host and 8 quick ones on another, 64 threads: the slow host never
    sees more than 8 connections, and the quick host's pages do not wait behind it."""
    http_server.latency = 0.25
    http_server.generate("/gen/", size=512)
    with LocalHTTPServer() as other:
        other.generate("/gen/", size=512)
        slow = [watcher(http_server.url(f"/gen/{i}")) for i in range(40)]
        quick = [watcher(other.url(f"/gen/{i}")) for i in range(8)]
        started = time.monotonic()
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(timed, slow + quick))
        elapsed = time.monotonic() - started
    assert http_server.peak_connections == PER_HOST
    assert http_server.count("/gen/0") == 1
    assert all("version 0" in text for _, _, text in results)
    for w, seconds, _ in results:
        if w in quick:
            assert seconds < 0.2, f"{w.url} waited {seconds:.2f}s behind another host"
    assert elapsed >= 40 / PER_HOST * 0.25 - 0.05, "more than 8 at a time reached the slow host"
    assert limits.in_flight(slow[0].request.site) == 0


def test_per_host_limit_follows_the_config(http_server: LocalHTTPServer) -> None:
    configure(2)
    http_server.latency = 0.1
    http_server.generate("/gen/", size=64)
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(timed, [watcher(http_server.url(f"/gen/{i}")) for i in range(12)]))
    assert http_server.peak_connections == 2


def test_failures_stay_isolated_at_a_hundred_in_flight() -> None:
    """100 troublemakers (hung, drip-fed body and headers, endless and 1 GB bodies) on four
    hosts plus 20 normal pages on a fifth, all at once: each fails its own way at its own
    deadline, the normal pages take no longer than usual, and the pass ends in about one
    timeout, with no alarm left behind."""
    configure(32)
    kinds: dict[str, tuple[str, dict[str, Any]]] = {
        "hang": ("/hang", {"timeout": "1s"}),
        "drip-body": ("/drip-body", {"timeout": "1s"}),
        "drip-headers": ("/drip-headers", {"timeout": "1s"}),
        "endless": ("/endless", {"max_bytes": 100_000}),
        "1 GB": ("/big", {}),
    }
    with ExitStack() as stack:
        hosts = [stack.enter_context(LocalHTTPServer()) for _ in range(4)]
        normal_host = stack.enter_context(LocalHTTPServer())
        normal_host.generate("/gen/", size=4096)
        kind_of: dict[Url, str] = {}
        for host in hosts:
            host.routes["/big"] = Stream(declared_length=10**9)
            for kind, (path, options) in kinds.items():
                for _ in range(5):
                    kind_of[watcher(host.url(path), **options)] = kind
        normal = [watcher(normal_host.url(f"/gen/{i}")) for i in range(20)]
        order = list(kind_of)[::2] + normal[:10] + list(kind_of)[1::2] + normal[10:]
        started = time.monotonic()
        with ThreadPoolExecutor(len(order)) as pool:
            results = list(pool.map(timed, order))
        elapsed = time.monotonic() - started

    for w, seconds, outcome in results:
        kind = kind_of.get(w, "normal")
        if kind == "normal":
            assert "version 0" in outcome
            # Before the first troublemaker's deadline, so never queued behind one; how much
            # sooner depends on the 200 MB the oversize bodies stream meanwhile on a busy box.
            assert seconds < TIMEOUT - 0.05, f"{w.url} took {seconds:.2f}s next to the troublemakers"
        elif kind in ("hang", "drip-body", "drip-headers"):
            assert "did not finish within 1 second" in outcome, (kind, outcome)
            assert TIMEOUT - 0.05 <= seconds < TIMEOUT + SLACK, f"{kind} failed after {seconds:.2f}s"
        else:
            limit = "100,000" if kind == "endless" else "10,485,760"
            assert f"more than {limit} bytes" in outcome, (kind, outcome)
            assert seconds < TIMEOUT, f"{kind} took {seconds:.2f}s"
    assert elapsed < 2 * TIMEOUT, f"the pass took {elapsed:.2f}s"
    assert _loop.pending() == 0


def test_connections_are_reused_across_passes(http_server: LocalHTTPServer) -> None:
    http_server.generate("/gen/", size=512)
    watchers = [watcher(http_server.url(f"/gen/{i}")) for i in range(30)]
    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(timed, watchers))
    assert http_server.peak_connections <= PER_HOST
    assert len(_http._sites) >= 1


def test_redirect_to_another_host_drops_credentials(http_server: LocalHTTPServer) -> None:
    with LocalHTTPServer() as other:
        other.set("/landing", "arrived")
        http_server.set("/away", status=302, headers={"Location": other.url("/landing")})
        http_server.set("/here", status=302, headers={"Location": "/"})
        secret = {"Authorization": "Bearer s3cret", "Cookie": "session=1", "X-Kept": "yes"}
        assert watcher(http_server.url("/away"), headers=secret).fetch({}).text == "arrived"
        assert watcher(http_server.url("/here"), headers=secret).fetch({}).text == "hello"
        landed = other.requests("/landing")[-1].headers
        same = http_server.requests("/")[-1].headers
    assert "authorization" not in landed
    assert "cookie" not in landed
    assert landed["x-kept"] == "yes"
    assert (same["authorization"], same["cookie"]) == ("Bearer s3cret", "session=1")


def test_post_redirected_by_303_becomes_a_get_and_307_keeps_it(http_server: LocalHTTPServer) -> None:
    http_server.set("/see-other", status=303, headers={"Location": "/"})
    http_server.set("/temporary", status=307, headers={"Location": "/"})
    for path, method, body in (("/see-other", "GET", b""), ("/temporary", "POST", b"q=1")):
        w = watcher(http_server.url(path), method="POST", data="q=1",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert w.fetch({}).text == "hello"
        seen = http_server.requests("/")[-1]
        assert (seen.method, seen.body) == (method, body)


def test_cookies_set_while_redirecting_come_back_within_the_chain(http_server: LocalHTTPServer) -> None:
    http_server.set("/login", status=302, headers={"Location": "/", "Set-Cookie": "token=abc; Path=/"})
    w = watcher(http_server.url("/login"))
    assert w.fetch({}).text == "hello"
    assert http_server.requests("/")[-1].headers["cookie"] == "token=abc"
    w.fetch({})
    assert http_server.requests("/login")[-1].headers.get("cookie") is None  # none kept afterwards


def test_redirect_to_another_scheme_is_explained(http_server: LocalHTTPServer) -> None:
    http_server.set("/ftp", status=301, headers={"Location": "ftp://example.com/file"})
    with pytest.raises(WatchError, match=r"redirected to ftp://example\.com/file, which notifier "
                                         r"cannot follow"):
        watcher(http_server.url("/ftp")).fetch({})


def test_tls_is_verified_against_ca_file_or_fails_with_a_hint(tls_ca: LocalCA) -> None:
    with LocalHTTPServer(tls=server_context(tls_ca)) as server:
        assert watcher(server.url("/"), ca_file=tls_ca.ca_file).fetch({}).text == "hello"
        with pytest.raises(WatchError, match=r"failed the TLS certificate check \(.*\); set ca_file"):
            watcher(server.url("/")).fetch({})  # the test CA is in no default bundle
        # verify: false is the user's call: it works, and warns nobody on every request
        assert watcher(server.url("/"), verify=False).fetch({}).text == "hello"


def test_an_unreadable_ca_file_is_a_watch_error(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(WatchError, match=r"failed: .*; check the watcher's files and settings"):
        watcher("https://127.0.0.1:1/", ca_file=str(bad)).fetch({})


def test_url_credentials_and_netrc_become_basic_auth(http_server: LocalHTTPServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    port = http_server.server_address[1]
    watcher(f"http://user:p%40ss@127.0.0.1:{port}/").fetch({})
    assert http_server.requests("/")[-1].headers["authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login robot password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    close_pools()  # .netrc is read once per host
    watcher(http_server.url("/")).fetch({})
    assert http_server.requests("/")[-1].headers["authorization"] == "Basic cm9ib3Q6czNjcmV0"
    watcher(http_server.url("/"), headers={"Authorization": "Bearer mine"}).fetch({})
    assert http_server.requests("/")[-1].headers["authorization"] == "Bearer mine"


@pytest.mark.parametrize("url", [
    "http://127.0.0.5:8000/page/123", "https://Example.com", "HTTPS://WWW.Python.org/downloads/",
    "http://h?q=1", "http://h/p?", "https://example.com/x/./y/../z", "https://example.com/a?b=%20",
    "https://例子.中国/价格?q=a b", "http://[::1]:8080/x", "http://user:pw@h/x#top",
])
def test_requests_go_where_urllib3_would_send_them(url: str) -> None:
    """Plain URLs skip urllib3's parser (a tenth of a watcher's load time); the rest use it.
    Either way the site and request line are what urllib3 itself makes of the URL."""
    from urllib3.util import parse_url  # noqa: PLC0415 - the reference, for this test only

    request = _http.Request.to(url)
    parts = parse_url(url)
    host = (parts.host or "").strip("[]")  # as urllib3's pools connect: ::1, not [::1]
    assert request.site == (parts.scheme, host, parts.port or (443 if parts.scheme == "https" else 80))
    assert request.path == parts.request_uri
