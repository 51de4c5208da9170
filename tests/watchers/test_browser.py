"""The browser kind against real Chromium and the local HTTP server.

These tests never skip: without Chromium they fail and say what to install. One browser
serves the whole module (the `chromium` fixture), as one serves the whole daemon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notifier.attachments import image_size
from notifier.errors import WatchError
from notifier.kinds import Shared
from notifier.watchers import _chromium
from notifier.watchers.browser import CHROMIUM, Browser
from notifier.watchers.url import Url
from tests.servers.http import Handler, LocalHTTPServer, png

DELAYED = """<html><body><div id="price">loading</div>
<script>setTimeout(() => {
  document.getElementById('price').innerHTML = 'price: ' + 64 * 2 + '<i class="ready"></i>'; }, 300)
</script>
</body></html>"""
BANNER = """<html><body><div id="cookies">We use cookies <button id="accept">Accept</button></div>
<p>news</p>
<script>document.getElementById('accept').onclick = () => document.getElementById('cookies').remove()</script>
</body></html>"""


def chromium_pids(root: int | None = None) -> list[int]:
    """Chromium processes descended from `root` (this process by default)."""
    root = root or os.getpid()
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        names[int(entry.name)] = name
    found = []
    for pid, name in names.items():
        if "chrom" not in name:
            continue
        ancestor = parents.get(pid, 0)
        while ancestor > 1 and ancestor != root:
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            found.append(pid)
    return found


@pytest.fixture(scope="module")
def chromium() -> Iterator[None]:
    """The shared browser, checked to exist (a missing one fails every test, with the reason)
    and stopped after the module."""
    if Browser.warnings([Browser({"url": "http://127.0.0.1/"})], Shared()) != []:
        pytest.fail("Chromium is not installed: run `make debs` (Debian package chromium)")
    CHROMIUM.configure(2, None)
    yield
    CHROMIUM.stop()
    assert chromium_pids() == []


def watcher(url: str, **options: Any) -> Browser:
    return Browser({"url": url, "timeout": 10.0, **options})


def test_script_written_content_is_seen_only_by_the_browser(chromium: None,
                                                            http_server: LocalHTTPServer) -> None:
    http_server.set("/delayed", DELAYED)
    url = http_server.url("/delayed")
    assert "price: 128" not in Url({"url": url}).fetch({}).text
    fetched = watcher(url, wait_for="i.ready").fetch({})
    assert '<div id="price">price: 128<i class="ready"></i></div>' in fetched.text
    assert "price: 128" in watcher(url, wait_for="1s").fetch({}).text
    assert fetched.attachments == ()


def test_an_action_removes_the_cookie_banner(chromium: None, http_server: LocalHTTPServer) -> None:
    http_server.set("/banner", BANNER)
    before = watcher(http_server.url("/banner")).fetch({}).text
    after = watcher(http_server.url("/banner"), actions=[{"click": "#accept"}]).fetch({}).text
    assert "We use cookies" in before
    assert "We use cookies" not in after
    assert "<p>news</p>" in after


def test_a_page_that_never_finishes_loading_hits_the_deadline(chromium: None,
                                                               http_server: LocalHTTPServer) -> None:
    http_server.set("/slow", '<html><body>shell<img src="/hang"></body></html>')
    started = time.monotonic()
    with pytest.raises(WatchError, match=r"did not finish within 1\.5 seconds"):
        watcher(http_server.url("/slow"), timeout=1.5).fetch({})
    assert time.monotonic() - started < 5
    http_server.release()


def test_an_infinite_loop_fails_the_check_and_the_next_one_works(chromium: None,
                                                                  http_server: LocalHTTPServer) -> None:
    http_server.set("/loop", "<html><body><script>while (true) {}</script></body></html>")
    with pytest.raises(WatchError, match="did not finish within"):
        watcher(http_server.url("/loop"), timeout=1.5).fetch({})
    http_server.set("/fine", "<p>fine</p>")
    assert "<p>fine</p>" in watcher(http_server.url("/fine")).fetch({}).text


def test_a_crashed_browser_is_started_again(chromium: None, http_server: LocalHTTPServer) -> None:
    http_server.set("/fine", "<p>fine</p>")
    assert "fine" in watcher(http_server.url("/fine")).fetch({}).text
    launches = CHROMIUM.launches
    for pid in chromium_pids():
        with contextlib.suppress(ProcessLookupError):  # gone with its parent already
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while chromium_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "fine" in watcher(http_server.url("/fine")).fetch({}).text
    assert CHROMIUM.launches == launches + 1


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it ended meanwhile
        return b""


def _renderers() -> list[int]:
    return [pid for pid in chromium_pids() if b"--type=renderer" in _cmdline(pid)]


def test_a_crashed_tab_fails_that_check_only(chromium: None, http_server: LocalHTTPServer) -> None:
    """The renderer dies while the page loads (as when a page runs it out of memory)."""
    http_server.set("/stuck", '<html><body>shell<img src="/hang"></body></html>')
    http_server.set("/fine", "<p>fine</p>")
    result: list[BaseException] = []

    def run() -> None:
        try:
            watcher(http_server.url("/stuck")).fetch({})
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 5
    while http_server.count("/hang") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in _renderers():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    thread.join(10)
    assert result
    assert "crashed the browser tab" in str(result[0])
    http_server.release()
    assert "fine" in watcher(http_server.url("/fine")).fetch({}).text


def test_blocked_resource_types_are_never_requested(chromium: None, http_server: LocalHTTPServer) -> None:
    http_server.set("/pic.png", png(), headers={"Content-Type": "image/png"})
    http_server.set("/font.woff2", b"wOF2", headers={"Content-Type": "font/woff2"})
    http_server.set("/tracker.js", "window.t = 1", headers={"Content-Type": "text/javascript"})
    http_server.set("/page", '<html><body><img src="/pic.png"><script src="/tracker.js"></script>'
                             '<p>text</p></body></html>')
    fetched = watcher(http_server.url("/page"), block=["image", "*/tracker.js"]).fetch({})
    assert "<p>text</p>" in fetched.text
    assert http_server.count("/page") == 1
    assert http_server.count("/pic.png") == 0
    assert http_server.count("/tracker.js") == 0
    watcher(http_server.url("/page")).fetch({})
    assert http_server.count("/pic.png") == 1  # unblocked, the same page asks for it


def test_no_cookie_survives_from_one_check_to_the_next(chromium: None, http_server: LocalHTTPServer) -> None:
    http_server.set("/set", "<p>set</p>", headers={"Set-Cookie": "session=abc; Path=/"})
    http_server.set("/read", "<p>read</p>")
    watcher(http_server.url("/set")).fetch({})
    watcher(http_server.url("/read"), cookies={"mine": "1"}, headers={"X-Test": "yes"}).fetch({})
    seen = http_server.requests("/read")[-1].headers
    assert seen.get("cookie") == "mine=1"
    assert seen.get("x-test") == "yes"


def test_javascript_off_and_phone_viewport(chromium: None, http_server: LocalHTTPServer) -> None:
    http_server.set("/w", "<meta name=viewport content='width=device-width'><p id=w></p>"
                          "<script>document.getElementById('w').textContent = innerWidth</script>")
    assert '<p id="w">390</p>' in watcher(http_server.url("/w"), viewport="phone").fetch({}).text
    assert '<p id="w"></p>' in watcher(http_server.url("/w"), javascript=False).fetch({}).text


def test_screenshots_fit_the_cap_and_the_previous_one_comes_back(chromium: None,
                                                                 http_server: LocalHTTPServer) -> None:
    http_server.set("/shot", "<h1 id=t style='height:300px;background:#c00'>Big</h1>" + "<p>line</p>" * 50)
    w = watcher(http_server.url("/shot"), screenshot="page", max_image_bytes=60_000)
    first = w.fetch({})
    (now,) = first.attachments
    assert now.content_type == "image/jpeg"
    assert len(now.data) <= 30_000
    assert image_size(now.data) is not None
    second = w.fetch(first.meta)
    assert [a.filename for a in second.attachments] == ["screenshot.jpg", "screenshot-before.jpg"]
    assert second.attachments[1].data == now.data
    element = watcher(http_server.url("/shot"), screenshot="element", element="#t").fetch({})
    size = image_size(element.attachments[0].data)
    assert size is not None
    assert size[1] == 300


def test_tls_is_verified_against_ca_file_and_errors_fail(chromium: None, tls_ca: Any,
                                                        tmp_path: Path) -> None:
    from tests.servers.http import server_context  # noqa: PLC0415

    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    with LocalHTTPServer(tls=server_context(tls_ca)) as server:
        with pytest.raises(WatchError, match="TLS certificate"):
            watcher(server.url("/")).fetch({})
        assert "hello" in watcher(server.url("/"), ca_file=str(ca_file)).fetch({}).text
        assert "hello" in watcher(server.url("/"), verify=False).fetch({}).text
    with pytest.raises(ValueError, match="contradict"):
        watcher(server.url("/"), ca_file=str(ca_file), verify=False)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        watcher("http://x/", viewport="big")
    with pytest.raises(ValueError, match="action"):
        watcher("http://x/", actions=[{"tap": "#a"}])
    with pytest.raises(ValueError, match="neither a resource type"):
        watcher("http://x/", block=["images"])
    with pytest.raises(ValueError, match="needs `element:`"):
        watcher("http://x/", screenshot="element")


def test_a_missing_browser_fails_the_check_clearly(http_server: LocalHTTPServer) -> None:
    w = watcher(http_server.url("/"))
    assert "Debian package 'chromium'" in Browser.warnings([w], Shared(browser_path="/nonexistent/chrome"))[0]
    spare = type(CHROMIUM)()
    spare.configure(1, "/nonexistent/chrome")
    with pytest.raises(WatchError, match="apt-get install chromium"):
        spare.render(w._visit, {}, 1.0)


def test_validate_warns_and_check_fails_without_a_browser(tmp_path: Path, http_server: LocalHTTPServer,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from notifier.cli import main  # noqa: PLC0415

    path = tmp_path / "watchers.yaml"
    path.write_text(f"browser_path: /nonexistent/chromium\nwatchers:\n"
                    f"  - {{name: page, kind: browser, url: '{http_server.url('/')}'}}\n")
    assert main(["-c", str(path), "validate"]) == 0
    out = capsys.readouterr().out
    assert f"warning: {path}:3: watchers.page: kind: browser needs Chromium" in out
    assert "Debian package 'chromium'" in out
    try:
        assert main(["-c", str(path), "check", "page"]) == 2
    finally:
        CHROMIUM.configure(2, None)  # the shared browser, as the other tests use it
    out = capsys.readouterr().out
    assert "watcher=page kind=browser outcome=failed" in out
    assert "apt-get install chromium" in out
    assert http_server.count("/") == 0


def test_without_jit_memory_chromium_runs_jitless(monkeypatch: pytest.MonkeyPatch,
                                                  http_server: LocalHTTPServer) -> None:
    """Under MemoryDenyWriteExecute=yes (seen as a refused PROT_WRITE|PROT_EXEC mapping) V8 runs
    without its JIT, and pages still run their scripts."""
    monkeypatch.setattr(_chromium, "jit_allowed", lambda: False)
    http_server.set("/js", "<p id=p></p><script>document.getElementById('p').textContent = 6 * 7</script>")
    spare = _chromium.Chromium()
    try:
        html, _ = spare.render(watcher(http_server.url("/js"))._visit, {}, 10.0)
        assert '<p id="p">42</p>' in html
        assert any(b"--js-flags=--jitless" in _cmdline(pid) for pid in chromium_pids())
    finally:
        spare.stop()


class Counting:
    """A route that remembers how many requests it served at the same time, at most. Each
    request is held until `together` were in flight at once (or `hold` seconds passed), then
    answers `linger` seconds later (a slow page): on a loaded machine the pages still overlap
    as far as the limit lets them, and a broken limit lets more in meanwhile."""

    def __init__(self, together: int = 2, hold: float = 5.0, linger: float = 0.3) -> None:
        self.together = together
        self.hold = hold
        self.linger = linger
        self.now = self.most = 0
        self.lock = threading.Lock()
        self.met = threading.Event()

    def serve(self, handler: Handler, path: str) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            if self.now >= self.together:
                self.met.set()
        self.met.wait(self.hold)
        time.sleep(self.linger)
        with self.lock:
            self.now -= 1
        handler.reply(200, {"Content-Type": "text/html"}, b"<p>slow</p>")


def test_at_most_browser_workers_pages_at_once(chromium: None, http_server: LocalHTTPServer) -> None:
    route = Counting()
    http_server.routes["/counted"] = route
    CHROMIUM.configure(2, None)
    threads = [threading.Thread(target=watcher(http_server.url("/counted")).fetch, args=({},))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert http_server.count("/counted") == 5
    assert route.most == 2


def test_a_hung_browser_is_killed_with_its_whole_group(chromium: None, http_server: LocalHTTPServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A browser that stops answering (here: SIGSTOP, so nothing of it can react) is killed,
    every process of it, and the check goes on in a new one."""
    monkeypatch.setattr(_chromium, "CLOSE_GRACE", 1.0)
    http_server.set("/fine", "<p>fine</p>")
    assert "fine" in watcher(http_server.url("/fine")).fetch({}).text
    old = chromium_pids()
    for pid in old:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    assert "fine" in watcher(http_server.url("/fine")).fetch({}).text
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in old) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in old if Path(f"/proc/{pid}").exists()]
