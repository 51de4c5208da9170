"""Several `notifier run` processes on one real PostgreSQL (notifier.fleet, notifier.pgstore): each
due check runs once per due time, a killed daemon's watchers are taken over within a lease, a
database restart pauses checks and loses none, differing configs warn; plus the store's config
keys, the exit codes of a database that cannot be used, and `notifier migrate`.

Intervals are 2 s and the lease 3 s; every wait is a poll with a deadline. Each request the
daemons make is timed by the test's HTTP server, and mapped to the due time (grid point) it
served: two requests for one due time are a duplicate, a due time without one is a miss.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from notifier import config as configmod
from notifier.config import WatcherConfig
from notifier.daemon import OUTBOX_EVERY
from notifier.errors import EXIT_BUSY, EXIT_CONFIG, ConfigError, StateError
from notifier.fleet import Fleet as FleetMember
from notifier.fleet import store_url
from notifier.outbox import Sender
from notifier.pgstore import LeaseLost, PgStore
from notifier.secrets import Secret, SecretRef
from notifier.store import Queued, Store
from tests.messages import parse, plain_text
from tests.servers.http import Handler, LocalHTTPServer
from tests.servers.postgres import PASSWORD, Postgres
from tests.servers.smtp import PASSWORD as SMTP_PASSWORD
from tests.servers.smtp import SmtpServer, smtp_yaml
from tests.servers.tcp_proxy import TcpProxy
from tests.test_daemon import Daemon, poll

EVERY = 2.0
LEASE = 3.0
WATCHERS = 6
FILE_WATCHER = "  - {{name: {name}, kind: file, path: /etc/hostname}}\n"


class Clocked:
    """A page that notes when each request for it arrived."""

    def __init__(self, body: bytes = b"<p>v1</p>", delay: float = 0.0) -> None:
        self.body, self.delay = body, delay
        self.times: list[float] = []
        self._lock = threading.Lock()

    def serve(self, handler: Handler, path: str) -> None:
        with self._lock:
            self.times.append(time.time())
        time.sleep(self.delay)  # a slow site: the daemons are mid-check when one is killed
        handler.reply(200, {"Content-Type": "text/html; charset=utf-8"}, self.body)


def fleet_config(path: Path, http: LocalHTTPServer, smtp: SmtpServer, names: list[str],
                 extra: str = "") -> Path:
    watchers = "".join(f"  - {{name: {n}, kind: url, url: '{http.url('/' + n)}'}}\n" for n in names)
    path.write_text(f"""\
{smtp_yaml(smtp)}mail: {{to: [me@example.com]}}
store_url_env: NOTIFIER_STORE
fleet_lease: {LEASE:.0f}s
defaults: {{every: {EVERY:.0f}s}}
{extra}
watchers:
{watchers}""")
    return path


class Fleet:
    """Daemons started on one config (each with its own state directory and log)."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.daemons: list[Daemon] = []

    def start(self, config: Path, url: str | None = None) -> Daemon:
        """`url`: this daemon's way to the database, when not the fleet's (through a proxy)."""
        home = self.tmp / f"d{len(self.daemons)}"
        home.mkdir()
        shutil.copy(config, home / "watchers.yaml")
        daemon = Daemon(home / "watchers.yaml", {"NOTIFIER_STORE": url or self.url,
                                                 "STATE_DIRECTORY": str(home / "state")}).start()
        self.daemons.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    """Start `notifier run` processes with `fleet.start(config)`; all are killed after the test."""
    started = Fleet(tmp_path, pg_url)
    yield started
    started.close()


def watcher(config: Path, name: str) -> WatcherConfig:
    wc = configmod.load(config, environ={"NOTIFIER_STORE": "x"}).watcher(name)
    assert wc is not None
    return wc


def slots(wc: WatcherConfig, times: list[float]) -> list[float]:
    """The due time each request served: the latest grid point at or before it."""
    out = []
    for t in times:
        fire = wc.schedule.at_or_after(wc.name, t - wc.schedule.every)
        assert fire is not None
        out.append(fire)
    return out


def assert_once_per_due_time(wc: WatcherConfig, page: Clocked, since: float, until: float,
                             gap: tuple[float, float] | None = None) -> None:
    """No due time served twice; none between `since` and `until` missed (outside `gap`)."""
    served = slots(wc, page.times)
    assert len(served) == len(set(served)), f"{wc.name}: a due time was checked twice: {served}"
    grid = [s for s in slots(wc, [since + k * EVERY for k in range(int((until - since) / EVERY))])
            if since <= s <= until - EVERY]
    missed = [s for s in grid if s not in served and not (gap and gap[0] <= s <= gap[1])]
    assert not missed, f"{wc.name}: due times never checked: {missed} (served {served})"


def checks_recorded(url: str) -> dict[str, int]:
    with psycopg.connect(url) as db:
        return dict(db.execute("SELECT watcher, SUM(checks)::int FROM check_day GROUP BY watcher").fetchall())


def _pages(http: LocalHTTPServer, names: list[str], delay: float = 0.0) -> dict[str, Clocked]:
    pages = {n: Clocked(delay=delay) for n in names}
    for n, page in pages.items():
        http.routes["/" + n] = page
    return pages


# -- three daemons -------------------------------------------------------------------------------

def test_three_daemons_check_each_due_time_once_and_take_over_a_killed_one(
        tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer, fleet: Fleet,
        pg_url: str) -> None:
    names = [f"w{i}" for i in range(WATCHERS)]
    pages = _pages(http_server, names, delay=0.3)
    # Two claims at most per daemon, so the first to start cannot take every due check alone.
    config = fleet_config(tmp_path / "watchers.yaml", http_server, smtp_server, names, "workers: 2")
    daemons = [fleet.start(config) for _ in range(3)]
    for d in daemons:
        d.wait_log("started: ")
    poll(lambda: all(len(p.times) >= 1 for p in pages.values()), "a first check of every watcher")
    since = time.time() + EVERY
    poll(lambda: time.time() > since + 4 * EVERY, "four periods", timeout=30)
    assert sum(d.count(r"outcome=") for d in daemons[:3]) >= WATCHERS  # the work is shared...
    assert sum(1 for d in daemons if d.count("outcome=")) >= 2  # ...by more than one daemon

    status = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(daemons[0].config), "status"],
                            capture_output=True, text=True, env=daemons[0].env, check=False)
    assert "fleet: 3 daemon(s)" in status.stdout, status.stdout + status.stderr
    assert status.stdout.count("alive, version") == 3
    assert PASSWORD not in status.stdout + status.stderr

    pages["w0"].body = b"<p>v2</p>"  # one change: exactly one alert, whoever checks it
    killed_at = time.time()
    daemons[1].stop(signal.SIGKILL)  # mid-check, most likely: every request takes 0.3 s
    until = killed_at + LEASE + 5 * EVERY
    poll(lambda: time.time() > until, "the lease and five periods after the kill", timeout=40)
    for name in names:
        assert_once_per_due_time(watcher(config, name), pages[name], since, time.time(),
                                 gap=(killed_at - EVERY, killed_at + LEASE + EVERY))
    poll(lambda: len(smtp_server.received) >= 1, "the change alert")
    time.sleep(0)  # (the alert is counted again below, after more periods)
    poll(lambda: time.time() > until + 2 * EVERY, "two more periods", timeout=20)
    changed = [r for r in smtp_server.received if b"w0" in r.content and b"changed" in r.content]
    assert len(changed) == 1, [r.content[:200] for r in smtp_server.received]

    for d in (daemons[0], daemons[2]):
        assert d.stop() == 0
    recorded = checks_recorded(pg_url)
    for name in names:  # the history counts what the server saw (a killed check is not recorded)
        assert abs(recorded[name] - len(pages[name].times)) <= 1, (name, recorded, len(pages[name].times))


def test_a_database_restart_pauses_checks_and_loses_none(
        tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer, fleet: Fleet,
        postgres: Postgres, pg_url: str) -> None:
    names = [f"r{i}" for i in range(3)]
    pages = _pages(http_server, names)
    config = fleet_config(tmp_path / "watchers.yaml", http_server, smtp_server, names)
    daemons = [fleet.start(config) for _ in range(2)]
    poll(lambda: all(len(p.times) >= 2 for p in pages.values()), "two checks of every watcher")
    postgres.stop()
    down = time.time()
    poll(lambda: any(d.count("cannot be reached") for d in daemons), "the log line saying why")
    poll(lambda: any("cannot be reached" in plain_text(parse(r.content)) for r in smtp_server.received),
         "the error alert, straight through SMTP while the outbox cannot be written")
    before = {n: len(p.times) for n, p in pages.items()}
    poll(lambda: time.time() > down + 2 * EVERY, "two periods without the database")
    pages["r0"].body = b"<p>v2</p>"
    postgres.start()
    up = time.time()
    poll(lambda: all(len(p.times) >= before[n] + 2 for n, p in pages.items()),
         "checks again after the restart", timeout=30)
    poll(lambda: any(b"r0" in r.content and b"changed" in r.content for r in smtp_server.received),
         "the change seen after the restart")
    poll(lambda: time.time() > up + 3 * EVERY, "three periods after the restart")
    for name in names:
        assert_once_per_due_time(watcher(config, name), pages[name], up + EVERY, time.time())
    for d in daemons:
        poll(lambda d=d: "recovered: the state database records results again" in d.log(),  # type: ignore[misc]
             "every daemon healthy again")
        assert d.proc is not None
        assert d.proc.poll() is None, d.log()[-2000:]  # paused, not exited


def test_daemons_with_different_configs_warn_and_strict_ones_refuse(
        tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer, fleet: Fleet) -> None:
    _pages(http_server, ["a", "b"])
    one = fleet.start(fleet_config(tmp_path / "one.yaml", http_server, smtp_server, ["a"],
                                   extra="strict_fleet: true"))
    two = fleet.start(fleet_config(tmp_path / "two.yaml", http_server, smtp_server, ["a", "b"]))
    for d in (one, two):
        d.wait_log("run\\(s\\) a different config")
    assert "this daemon runs no checks until they match (strict_fleet)" in one.log()
    marker = len(one.log())
    poll(lambda: two.count("watcher=a ") >= 2, "the other daemon checking a")
    assert "watcher=a " not in one.log()[marker:]


def test_reload_on_one_host_reaches_the_others(
        tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer, fleet: Fleet) -> None:
    _pages(http_server, ["a"])
    config = fleet_config(tmp_path / "watchers.yaml", http_server, smtp_server, ["a"])
    first, second = fleet.start(config), fleet.start(config)
    for d in (first, second):
        d.wait_log("started: ")
    poll(lambda: second.count("outcome=") + first.count("outcome=") >= 1, "a check")
    done = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(first.config), "reload"],
                          capture_output=True, text=True, env=first.env, check=False)
    assert done.returncode == 0, done.stderr
    assert "asked the 2 daemon(s)" in done.stdout
    for d in (first, second):
        d.wait_log("fleet: reload requested by")


def test_a_paused_daemon_cannot_record_a_check_another_took_over(
        tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer, fleet: Fleet,
        pg_url: str) -> None:
    """SIGSTOP mid-check stands for a partition: the stopped daemon renews nothing, the other
    takes the check over after the lease, and the late result is refused when it resumes."""
    page, (first, second), holder = _one_mid_check(tmp_path, http_server, smtp_server, fleet, pg_url,
                                                   "slow", delay=1.0)
    assert holder.proc is not None
    holder.proc.send_signal(signal.SIGSTOP)
    try:
        taken = len(page.times)
        poll(lambda: len(page.times) > taken, "the other daemon checking it", timeout=LEASE + 10)
    finally:
        holder.proc.send_signal(signal.SIGCONT)
    holder.wait_log("claim expired before the result was recorded")
    for d in (first, second):
        assert d.stop() == 0  # running checks finish and are recorded first
    with psycopg.connect(pg_url) as db:
        row = db.execute("SELECT SUM(checks)::int FROM check_day WHERE watcher = 'slow'").fetchone()
    recorded = row[0] if row else 0
    assert recorded == len(page.times) - 1  # every request but the refused one is in the history


def test_a_stopping_daemon_keeps_the_claims_of_the_checks_it_lets_finish(
        tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer, fleet: Fleet,
        pg_url: str) -> None:
    """SIGTERM lets running checks finish, for longer than a short lease: their claims are
    renewed meanwhile, or another daemon would check them again and refuse these results."""
    page, _, holder = _one_mid_check(tmp_path, http_server, smtp_server, fleet, pg_url, "long",
                                     delay=2 * LEASE)
    running = len(page.times)
    assert holder.stop() == 0
    assert "claim expired" not in holder.log()
    assert checks_recorded(pg_url)["long"] == running  # the check it finished is in the history


def _one_mid_check(tmp_path: Path, http: LocalHTTPServer, smtp: SmtpServer, fleet: Fleet, url: str,
                   name: str, delay: float) -> tuple[Clocked, list[Daemon], Daemon]:
    """Two daemons on one slow watcher, the second started once the first checks it: the
    page, both daemons, and the one in the middle of a check now."""
    page = _pages(http, [name], delay=delay)[name]
    config = fleet_config(tmp_path / "watchers.yaml", http, smtp, [name])
    first = fleet.start(config)
    poll(lambda: len(page.times) >= 1, "the first check")
    second = fleet.start(config)
    second.wait_log("started: ")
    return page, [first, second], _holder(url, name, [first, second], lambda: len(page.times))


def _holder(url: str, name: str, daemons: list[Daemon], requests: Callable[[], int]) -> Daemon:
    """The daemon whose check of `name` is running now (its request made, its claim held)."""
    pids: dict[int, Daemon] = {d.proc.pid: d for d in daemons if d.proc is not None}
    found: list[Daemon] = []

    def running() -> bool:
        with psycopg.connect(url) as db:
            row = db.execute("SELECT claimed_by FROM fleet_check WHERE name = %s", (name,)).fetchone()
        pid = _pid_of(row[0] if row else None)
        if pid in pids and requests() > 0:
            found.append(pids[pid])
        return bool(found)

    poll(running, f"a daemon in the middle of checking {name}")
    return found[0]


def _pid_of(claimed_by: str | None) -> int:
    """The pid in a claim's owner: host:pid (an outbox row) or host:pid:nonce (a check)."""
    return int(claimed_by.split(":")[1]) if claimed_by else 0


def _sending(url: str, daemons: list[Daemon]) -> tuple[str, Daemon]:
    """The Message-ID of the one message in the outbox, and the daemon whose claim on it holds."""
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT message_id, claimed_by FROM outbox").fetchall()
    assert len(rows) == 1, rows
    pids = {d.proc.pid: d for d in daemons if d.proc is not None}
    return str(rows[0][0]), pids[_pid_of(rows[0][1])]


def _baseline(url: str, name: str, page: Clocked) -> None:
    """Wait until the first check of `name` is recorded: a change after it is alerted."""
    poll(lambda: len(page.times) >= 1, f"a first check of {name}")  # (the schema exists by then)
    poll(lambda: checks_recorded(url).get(name, 0) >= 1, f"the first check of {name} recorded")


def _queued(url: str) -> list[str]:
    """The kinds of the messages in the outbox."""
    with psycopg.connect(url) as db:
        return [str(r[0]) for r in db.execute("SELECT kind FROM outbox").fetchall()]


def _change_alerts(smtp: SmtpServer, name: str) -> list[str]:
    """The Message-IDs of the change alerts about `name` the provider stored, copies included."""
    return [str(parse(r.content)["Message-ID"]) for r in smtp.received
            if name.encode() in r.content and b"changed" in r.content]


@pytest.mark.parametrize("stored", [False, True], ids=["before-the-provider-stores", "at-its-250"])
def test_kill_9_mid_send_leaves_the_alert_to_another_daemon_after_the_lease(
        stored: bool, tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer,
        fleet: Fleet, pg_url: str) -> None:
    """The daemon sending a change alert is killed while the provider holds its DATA. The claim
    on the message runs out a lease later, and another daemon sends it: killed before the
    provider stored it, the alert arrives once; killed at the 250, twice, with one Message-ID
    (a copy no mail queue can avoid, and one that mail clients fold)."""
    page = _pages(http_server, ["sent"])["sent"]
    config = fleet_config(tmp_path / "watchers.yaml", http_server, smtp_server, ["sent"])
    daemons = [fleet.start(config) for _ in range(3)]
    _baseline(pg_url, "sent", page)
    hold = smtp_server.hold(stored, match=b"changed")
    try:
        page.body = b"<p>v2</p>"
        poll(hold.arrived.is_set, "the change alert held in the provider's DATA")
        message_id, sender = _sending(pg_url, daemons)
        assert sender.stop(signal.SIGKILL) == -signal.SIGKILL
        poll(hold.abandoned.is_set, "the provider seeing the killed sender's session end")
    finally:
        hold.release()
    assert _change_alerts(smtp_server, "sent") == ([message_id] if stored else [])
    sent = re.escape(f"message={message_id} ") + ".*outcome=sent"
    others = [d for d in daemons if d is not sender]
    poll(lambda: any(d.count(sent) for d in others), "another daemon sending the alert after the lease",
         timeout=LEASE + OUTBOX_EVERY + 10)
    poll(lambda: not _queued(pg_url), "the outbox empty: nobody can send it again")
    assert _change_alerts(smtp_server, "sent") == [message_id] * (2 if stored else 1)


def test_a_partitioned_daemon_cannot_record_a_check_or_alert_after_its_lease(
        tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer, fleet: Fleet,
        postgres: Postgres, pg_url: str) -> None:
    """One daemon reaches the database through a proxy that freezes its path mid-check: the
    process runs on, its connection stays open, its statements get no answer. The other daemon
    takes the check over a lease later and alerts the change; when the path comes back, the
    cut-off daemon's result of the same change is refused (the fence is checked in the
    transaction that would record it), so it neither enters the history nor alerts again."""
    page = _pages(http_server, ["slow"], delay=2.0)["slow"]
    config = fleet_config(tmp_path / "watchers.yaml", http_server, smtp_server, ["slow"])
    with TcpProxy(postgres.port) as proxy:
        cut = fleet.start(config, url=pg_url.replace(f":{postgres.port}/", f":{proxy.port}/"))
        _baseline(pg_url, "slow", page)
        page.body = b"<p>v2</p>"
        changed = len(page.times)
        holder = _holder(pg_url, "slow", [cut], lambda: len(page.times) - changed)
        proxy.freeze()
        try:
            refused = len(page.times)  # the check running now is the one whose result must not count
            assert checks_recorded(pg_url)["slow"] == refused - 1, "the changed page was checked already"
            other = fleet.start(config)
            poll(lambda: len(page.times) > refused, "the other daemon taking the check over",
                 timeout=LEASE + 15)
            poll(lambda: bool(_change_alerts(smtp_server, "slow")), "the change alert, from the other daemon")
        finally:
            page.delay = 2 * LEASE  # from now on no check of slow is recorded for a while...
            proxy.thaw()
        assert holder is cut
        cut.wait_log("claim expired before the result was recorded")
        # ...so only the database answering again can end this daemon's failure, as it does for
        # "cannot be reached": the check is another daemon's now, and may never come back here.
        poll(lambda: "recovered: the state database records results again" in cut.log(),
             "the cut-off daemon healthy again once its database answers", timeout=LEASE)
        page.delay = 0.0
        for d in (cut, other):
            assert d.stop() == 0
    assert "change" not in _queued(pg_url)  # (the cut-off daemon's recovery alert may wait there)
    assert len(_change_alerts(smtp_server, "slow")) == 1
    recorded = [t for i, t in enumerate(page.times) if i != refused - 1]
    assert checks_recorded(pg_url)["slow"] == len(recorded)  # all but the refused result
    served = slots(watcher(config, "slow"), recorded)
    assert len(served) == len(set(served)), f"a due time was recorded twice: {served}"
    store = PgStore(Secret(pg_url))
    try:
        assert len(store.versions("slow")) == 2  # the baseline and the change, once
    finally:
        store.close()


# -- the config and the database at start ----------------------------------------------------------

def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> configmod.Config:
    path = tmp_path / "watchers.yaml"
    path.write_text(text + "watchers:\n  - {name: a, kind: file, path: /etc/hostname}\n")
    return configmod.load(path, environ=env or {})


def test_a_password_in_the_yaml_url_is_a_warning_and_never_printed(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "store: postgresql://notifier:S3cret-Pw@db.example/notifier\n")
    assert cfg.store is not None
    assert isinstance(cfg.store.url, Secret)
    (warning,) = [w for w in cfg.warnings if w.key == "store"]
    assert "store_url_env or store_url_credential" in str(warning)
    assert "S3cret-Pw" not in str(warning) + repr(cfg.store)
    assert not _load(tmp_path, "store: postgresql://notifier@db.example/notifier\n").warnings


def test_the_store_url_from_the_environment_and_conflicting_sources(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "store_url_env: DB_URL\nfleet_lease: 10s\nstrict_fleet: true\n")
    assert cfg.store is not None
    assert isinstance(cfg.store.url, SecretRef)
    assert (cfg.store.lease, cfg.store.strict_fleet) == (10.0, True)
    with pytest.raises(ConfigError, match="conflicts with store"):
        _load(tmp_path, "store: postgresql://x@y/z\nstore_url_env: DB_URL\n")
    with pytest.raises(ConfigError, match="must be a postgresql://"):
        _load(tmp_path, "store: mysql://x@y/z\n")


def _run(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "watchers.yaml"
    config.write_text(f"store_url_env: NOTIFIER_STORE\nwatchers:\n{FILE_WATCHER.format(name='a')}")
    return subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), "run"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "NOTIFIER_STORE": url,
                               "STATE_DIRECTORY": str(tmp_path / "state")})


def test_run_exits_75_while_the_database_cannot_be_reached(tmp_path: Path) -> None:
    done = _run(tmp_path, f"postgresql://notifier:{PASSWORD}@127.0.0.1:{Postgres.free_port()}/x")
    assert done.returncode == EXIT_BUSY, done.stderr
    assert "cannot be reached" in done.stderr
    assert "Check that PostgreSQL runs" in done.stderr
    assert PASSWORD not in done.stderr


def test_run_exits_78_on_a_wrong_password_or_a_newer_schema(tmp_path: Path, pg_url: str) -> None:
    done = _run(tmp_path, pg_url.replace(PASSWORD, "Wrong-Password-1"))
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "refused notifier's login" in done.stderr
    assert "Wrong-Password-1" not in done.stderr
    PgStore(Secret(pg_url)).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = 999")
    done = _run(tmp_path, pg_url)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "newer than this notifier understands" in done.stderr


def test_migrate_copies_a_single_machine_state_into_postgresql(tmp_path: Path, pg_url: str) -> None:
    lite = Store(tmp_path / "old" / "state.db")
    for i in range(4):
        lite.record_success("prices", float(i), {"etag": str(i)}, f"price {i}", history=3)
    lite.record_failure("nginx", 5.0, "timed out")
    lite.enqueue([Queued(f"<m{i}@x>", "change", "prices", None, "a@x", ("b@x",), b"Subject: s\r\n\r\nb")
                  for i in range(2)])
    (row, _) = lite.claim("me", time.time(), 10)
    lite.delivered(row.id)
    state_id = lite.state_id(create=True)
    lite.close()
    config = tmp_path / "watchers.yaml"
    config.write_text(f"store_url_env: NOTIFIER_STORE\nwatchers:\n{FILE_WATCHER.format(name='prices')}")
    done = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), "migrate", "--from",
                           f"sqlite://{tmp_path / 'old' / 'state.db'}"], capture_output=True, text=True,
                          check=False, env={"PATH": "/usr/bin:/bin", "NOTIFIER_STORE": pg_url,
                                            "STATE_DIRECTORY": str(tmp_path / "state")})
    assert done.returncode == 0, done.stderr
    assert "1 send_log" in done.stdout
    assert PASSWORD not in done.stdout
    store = PgStore(Secret(pg_url))
    try:
        assert [v.text for v in store.versions("prices")] == ["price 3", "price 2", "price 1"]
        assert [v.number for v in store.versions("prices")] == [4, 3, 2]
        assert store.state("nginx").failures == 1
        assert [r.message_id for r in store.outbox()] == ["<m1@x>"]
        assert [e.message_id for e in store.log_entries()] == ["<m0@x>"]
        assert store.state_id() == state_id
        store.enqueue([Queued("<new@x>", "change", "prices", None, "a@x", ("b@x",), b"x")])  # ids go on
    finally:
        store.close()
    env = {"PATH": "/usr/bin:/bin", "NOTIFIER_STORE": pg_url, "STATE_DIRECTORY": str(tmp_path / "state")}
    looks = (("log", "<m0@x>"), ("outbox", "<m1@x>"), ("history", "3 version(s) of prices kept"))
    for command, shown in looks:
        extra = ["prices"] if command == "history" else []
        looked = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), command, *extra],
                                capture_output=True, text=True, check=False, env=env)
        assert shown in looked.stdout, (command, looked.stdout, looked.stderr)  # the commands read it there
    again = subprocess.run(done.args, capture_output=True, text=True, check=False,
                           env={"PATH": "/usr/bin:/bin", "NOTIFIER_STORE": pg_url,
                                "STATE_DIRECTORY": str(tmp_path / "state")})
    assert again.returncode != 0
    assert "already holds state" in again.stderr


# -- fencing ---------------------------------------------------------------------------------------

def test_a_result_is_recorded_only_while_its_claim_holds(tmp_path: Path, pg_url: str) -> None:
    """A daemon cut off (or paused) past its lease: the check went to another daemon, and the late
    result is refused in the very transaction that would record it."""
    config = tmp_path / "watchers.yaml"
    config.write_text("store_url_env: NOTIFIER_STORE\nfleet_lease: 1s\nwatchers:\n"
                      + FILE_WATCHER.format(name="a"))
    cfg = configmod.load(config, environ={"NOTIFIER_STORE": pg_url})
    stores = [PgStore(Secret(pg_url), lease=1.0) for _ in range(2)]
    try:
        late, other = (FleetMember.join(s, cfg) for s in stores)
        assert late is not None
        assert other is not None
        wc = cfg.watchers[0]
        late.schedule(wc)
        late.renew()  # writes the due row: never checked, so due within a second
        poll(lambda: late.claim(["a"], 10) == ["a"], "the first check to fall due")
        assert other.claim(["a"], 10) == []  # claimed: skipped, not waited for
        with late.running(wc):
            poll(lambda: other.claim(["a"], 10) == ["a"], "the lease to expire and another daemon to claim")
            with pytest.raises(LeaseLost, match="claim expired before the result was recorded"):
                stores[0].record_success("a", time.time(), {}, "late result", history=3)
        with other.running(wc):
            stores[1].record_success("a", time.time(), {}, "on time", history=3)
        assert [v.text for v in stores[1].versions("a")] == ["on time"]
    finally:
        for s in stores:
            s.close()


def test_a_daemon_cut_off_inside_a_transaction_does_not_keep_its_check_locked(
        tmp_path: Path, postgres: Postgres, pg_url: str) -> None:
    """Cut off between a statement and its COMMIT, a daemon leaves its transaction open on the
    server with the row locks it took, and the others skip locked rows when they claim: the
    check would wait until the kernel gives up on the dead path (hours). The server ends a
    session idle in a transaction for longer than the lease, so the check is taken over."""
    config = tmp_path / "watchers.yaml"
    config.write_text("store_url_env: NOTIFIER_STORE\nfleet_lease: 1s\nwatchers:\n"
                      + FILE_WATCHER.format(name="a"))
    cfg = configmod.load(config, environ={"NOTIFIER_STORE": pg_url})
    with TcpProxy(postgres.port) as proxy:
        cut_url = pg_url.replace(f":{postgres.port}/", f":{proxy.port}/")
        stores = [PgStore(Secret(cut_url), lease=1.0), PgStore(Secret(pg_url), lease=1.0)]
        try:
            cut, other = (FleetMember.join(s, cfg) for s in stores)
            assert cut is not None
            assert other is not None
            cut.schedule(cfg.watchers[0])
            cut.renew()
            poll(lambda: cut.claim(["a"], 10) == ["a"], "the first check to fall due")

            def renew_then_lose_the_path() -> None:  # as `renew` does, cut off before its COMMIT
                with contextlib.suppress(StateError), stores[0].locked() as conn:
                    conn.execute("UPDATE fleet_check SET claimed_until = claimed_until + 0")
                    proxy.freeze()

            stuck = threading.Thread(target=renew_then_lose_the_path, daemon=True)
            stuck.start()
            poll(lambda: other.claim(["a"], 10) == ["a"], "another daemon claiming the check", timeout=10)
        finally:
            proxy.thaw()
            for s in stores:
                s.close()


def test_a_message_is_sent_only_while_its_claim_holds(tmp_path: Path, pg_url: str,
                                                      smtp_server: SmtpServer) -> None:
    """A sender whose claim lapsed between claiming and sending (paused, or cut off from the
    database) sends nothing; the daemon that claimed the message after it sends it, once."""
    config = tmp_path / "watchers.yaml"
    config.write_text(f"{smtp_yaml(smtp_server)}mail: {{to: [me@example.com]}}\nwatchers:\n"
                      + FILE_WATCHER.format(name="a"))
    cfg = configmod.load(config, environ={"PW": SMTP_PASSWORD})
    store = PgStore(Secret(pg_url), lease=LEASE)
    try:
        store.enqueue([Queued("<fenced@x>", "change", "a", "test", "robot@example.com",
                              ("me@example.com",), b"Subject: fenced\r\n\r\nbody\r\n")])
        ticks = iter([100.0, 100.0 + LEASE + 1, 200.0, 200.0, 200.0, 200.0])  # claim, then too late
        stalled = Sender(cfg, store, clock=lambda: next(ticks) + time.time())
        assert stalled.deliver().sent == 0
        assert smtp_server.received == []
        taker = Sender(cfg, store, clock=lambda: time.time() + 200.0)
        taker.owner = "other-host:1"
        assert taker.deliver().sent == 1
        assert len(smtp_server.received) == 1
        assert store.outbox() == []
    finally:
        store.close()


def test_the_store_url_leaves_the_environment_once_read(tmp_path: Path, pg_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What the daemon starts (command watchers, Chromium) must not inherit the password."""
    monkeypatch.setenv("NOTIFIER_STORE", pg_url)
    config = tmp_path / "watchers.yaml"
    config.write_text("store_url_env: NOTIFIER_STORE\nwatchers:\n" + FILE_WATCHER.format(name="a"))
    cfg = configmod.load(config)
    assert cfg.store is not None
    assert store_url(cfg.store).reveal() == pg_url
    assert "NOTIFIER_STORE" not in os.environ
