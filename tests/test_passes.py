"""notifier.passes: a pass keeps `workers` checks in flight on the event loop, obeys the
per-host limit, sends large bodies and blocking kinds to threads, and stops on a broken store."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from notifier import config
from notifier.config import Config
from notifier.errors import StateError
from notifier.kinds import configure_kinds
from notifier.passes import run_pass
from notifier.pipeline import INLINE_MAX, Outcome
from notifier.store import Store
from notifier.watchers._http import PER_HOST
from tests.servers.http import LocalHTTPServer

pytestmark = pytest.mark.usefixtures("hermetic_http")


def load(tmp_path: Path, watchers: Sequence[str], top: str = "") -> Config:
    (tmp_path / "watchers.yaml").write_text(top + "watchers:\n" + "".join(watchers))
    cfg = config.load(tmp_path / "watchers.yaml", {})
    configure_kinds([w.watcher for w in cfg.watchers], cfg.shared)
    return cfg


def url_watcher(name: str, url: str, filters: str = "[]") -> str:
    return f"  - name: {name}\n    kind: url\n    url: {url}\n    filters: {filters}\n"


def run(cfg: Config, store: Store, dry_run: bool = False) -> list[Outcome]:
    return list(run_pass(cfg.watchers, cfg.workers, cfg.shared.per_host, store, None, dry_run))


def test_a_pass_keeps_many_in_flight_and_each_host_gets_per_host(tmp_path: Path) -> None:
    """96 pages at 0.2 s on four hosts: 8 at a time on each (32 in flight), so about 0.6 s,
    where the 96 one after another would take 19 s."""
    with ExitStack() as stack:
        hosts = [stack.enter_context(LocalHTTPServer(latency=0.2)) for _ in range(4)]
        for host in hosts:
            host.generate("/gen/", size=2048)
        cfg = load(tmp_path, [url_watcher(f"p{i}", hosts[i % 4].url(f"/gen/{i}")) for i in range(96)])
        store = Store(tmp_path / "state.db")
        started = time.monotonic()
        outcomes = run(cfg, store)
        elapsed = time.monotonic() - started
        store.close()
    assert sorted(o.name for o in outcomes) == sorted(f"p{i}" for i in range(96))
    assert {o.status for o in outcomes} == {"baseline"}
    assert [host.peak_connections for host in hosts] == [PER_HOST] * 4
    assert elapsed < 96 / (4 * PER_HOST) * 0.2 + 1.5, f"the pass took {elapsed:.2f}s"


def test_a_hung_sites_checks_take_turns_while_the_others_go_on(
        tmp_path: Path, http_server: LocalHTTPServer) -> None:
    """`workers: 2`, `per_host: 1`: three watchers of a site that never answers come first;
    one of them waits for it at a time, and the five file watchers after them are checked
    meanwhile (the hung ones had taken both checks' room until their timeout)."""
    hung = [f"  - {{name: hung-{i}, kind: url, url: '{http_server.url('/hang')}', timeout: 1s}}\n"
            for i in range(3)]
    (tmp_path / "f.txt").write_text("text\n")
    files = [f"  - {{name: file-{i}, kind: file, path: {tmp_path / 'f.txt'}}}\n" for i in range(5)]
    cfg = load(tmp_path, hung + files, "workers: 2\nper_host: 1\n")
    store = Store(tmp_path / "state.db")
    try:
        outcomes = [o.name for o in run(cfg, store)]
    finally:
        store.close()
    assert outcomes == [f"file-{i}" for i in range(5)] + [f"hung-{i}" for i in range(3)]
    assert http_server.count("/hang") == 3


def test_large_bodies_and_blocking_kinds_are_checked_beside_the_fetches(
        tmp_path: Path, http_server: LocalHTTPServer) -> None:
    """A page over INLINE_MAX (concluded on a thread), three commands that each block for
    0.5 s (fetched on threads, side by side) and small pages: every outcome right, and the
    commands did not run one after another."""
    big = "<p>" + "word " * (INLINE_MAX // 4) + "</p>"
    http_server.set("/big", big)
    http_server.generate("/gen/", size=512)
    watchers = [url_watcher("big", http_server.url("/big"), "[html2text]")]
    watchers += [f"  - name: cmd{i}\n    kind: command\n    command: [sh, -c, 'sleep 0.5; echo {i}']\n"
                 for i in range(3)]
    watchers += [url_watcher(f"p{i}", http_server.url(f"/gen/{i}")) for i in range(20)]
    cfg = load(tmp_path, watchers)
    store = Store(tmp_path / "state.db")
    started = time.monotonic()
    outcomes = run(cfg, store)
    elapsed = time.monotonic() - started
    try:
        assert {o.name: o.status for o in outcomes} == {w.name: "baseline" for w in cfg.watchers}
        assert store.state("big").content == ("word " * (INLINE_MAX // 4)).strip()
        assert store.state("cmd2").content == "2\n"
    finally:
        store.close()
    assert elapsed < 1.4, f"the commands ran one after another ({elapsed:.2f}s)"


def test_a_second_pass_compares_with_the_recorded_state(tmp_path: Path,
                                                        http_server: LocalHTTPServer) -> None:
    http_server.generate("/gen/", size=512)
    cfg = load(tmp_path, [url_watcher(f"p{i}", http_server.url(f"/gen/{i}")) for i in range(30)])
    store = Store(tmp_path / "state.db")
    try:
        assert {o.status for o in run(cfg, store)} == {"baseline"}
        http_server.set("/gen/7", "something else")
        statuses = {o.name: o.status for o in run(cfg, store, dry_run=True)}
        assert statuses.pop("p7") == "changed"
        assert set(statuses.values()) == {"unchanged"}
        assert "version" in (store.state("p7").content or "")  # a preview records nothing
    finally:
        store.close()


def test_failures_are_outcomes_and_the_pass_goes_on(tmp_path: Path,
                                                    http_server: LocalHTTPServer) -> None:
    http_server.set("/gone", status=404)
    watchers = [url_watcher("gone", http_server.url("/gone")),
                url_watcher("refused", "http://127.0.0.1:1/"),
                url_watcher("ok", http_server.url("/"))]
    cfg = load(tmp_path, watchers)
    store = Store(tmp_path / "state.db")
    try:
        outcomes = {o.name: o for o in run(cfg, store)}
    finally:
        store.close()
    assert outcomes["ok"].status == "baseline"
    assert outcomes["gone"].status == outcomes["refused"].status == "failed"
    assert "HTTP 404 Not Found" in (outcomes["gone"].error or "")
    assert "Connection refused" in (outcomes["refused"].error or "")


def test_a_broken_store_stops_the_pass_with_its_error(tmp_path: Path,
                                                      http_server: LocalHTTPServer) -> None:
    http_server.generate("/gen/", size=64)
    cfg = load(tmp_path, [url_watcher(f"p{i}", http_server.url(f"/gen/{i}")) for i in range(50)])
    store = Store(tmp_path / "state.db")
    store.close()
    with pytest.raises(StateError):
        run(cfg, store)
    assert http_server.count("/gen/49") == 0  # no check started after the first failure
