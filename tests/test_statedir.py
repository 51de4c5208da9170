"""notifier.statedir: one notifier per state directory, a database that keeps its identity,
and signals that reach only the process that really holds the directory.

The lock tests use real flocks and the kernel's /proc/locks; the process tests run `notifier
run`, `notifier reload` and `notifier check --send` as users do.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from notifier.statedir import (
    LOCK_SIZE,
    NoDaemon,
    StateDir,
    StateDirBusy,
    StateDirRefused,
)
from notifier.store import Queued, Store
from tests.servers.smtp import SmtpServer, smtp_yaml
from tests.test_daemon import DEADLINE, Daemon, Doc, file_watcher, poll, write_config


class Run(Daemon):
    """`notifier run` with extra arguments (like --reinit) and a chosen umask."""

    def __init__(self, config: Path, *args: str, umask: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(config, env)
        self.args = args
        self.umask = umask

    def start(self) -> Run:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "notifier.cli", "-c", str(self.config), "--log-level", "info",
                 "run", *self.args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                umask=-1 if self.umask is None else self.umask)
        return self

    def exit_code(self) -> int:
        """Wait for a daemon that is expected to stop by itself."""
        assert self.proc is not None
        code = self.proc.wait(timeout=DEADLINE)
        self.proc = None
        return code


class StartRun(Protocol):
    """A `runs` fixture: start `notifier run *args` on `config`."""

    def __call__(self, config: Path, *args: str, umask: int | None = None,
                 env: dict[str, str] | None = None) -> Run: ...


def run_daemons() -> Iterator[StartRun]:
    """The body of a `runs` fixture (test_health has one too)."""
    started: list[Run] = []

    def start(config: Path, *args: str, umask: int | None = None,
              env: dict[str, str] | None = None) -> Run:
        run = Run(config, *args, umask=umask, env=env).start()
        started.append(run)
        return run

    yield start
    for run in started:
        run.close()


@pytest.fixture
def runs() -> Iterator[StartRun]:
    """Start daemons with `runs(config, *args)`; any still running are killed after the test."""
    yield from run_daemons()


def notifier(config: Path, *args: str, env: dict[str, str] | None = None,
             umask: int = -1) -> subprocess.CompletedProcess[str]:
    """Run one `notifier` command to completion."""
    return subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})}, umask=umask)


# -- the lock, in one process -------------------------------------------------------------------


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    assert state.holder() is None
    lock = state.acquire("run")
    try:
        holder = state.holder()
        assert holder is not None
        assert (holder.pid, holder.role, holder.ready) == (os.getpid(), "run", True)
        with pytest.raises(StateDirBusy, match=rf"already running on .* \(pid {os.getpid()}\)") as busy:
            state.acquire("run")
        assert busy.value.exit_code == 75
        assert state.lock_path.stat().st_size == LOCK_SIZE  # allocated once, rewritten in place
    finally:
        lock.release()
    assert state.holder() is None


def test_a_forged_pid_in_a_held_lock_file_is_not_believed(tmp_path: Path) -> None:
    """The file says an unrelated process holds the lock; the kernel says otherwise."""
    state = StateDir(tmp_path / "state")
    lock = state.acquire("run")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        state.lock_path.write_bytes(f"{sleeper.pid} run\n{{}}\n".encode().ljust(LOCK_SIZE))
        holder = state.holder()
        assert holder is not None
        assert (holder.pid, holder.role) == (os.getpid(), "?")
        with pytest.raises(NoDaemon, match="not `notifier run`"):
            state.signal_daemon(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            sleeper.wait(timeout=0.2)
    finally:
        sleeper.kill()
        sleeper.wait()
        lock.release()


# -- the database's identity ------------------------------------------------------------------


def test_a_new_state_dir_is_private_and_remembers_its_database(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        state = StateDir(tmp_path / "a" / "state")
        store = state.open_store()
        store.record_success("w", 1.0, {}, "v1", history=3)
        state_id = store.state_id()
        lock = state.acquire("run")
    finally:
        os.umask(old)
    try:
        assert state_id
        assert state.marker.read_text().strip() == state_id
        assert state.path.stat().st_mode & 0o777 == 0o700
        for name in ("state.db", "state.db-wal", "state.db-shm", "notifier.lock", "state.id"):
            assert (state.path / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        lock.release()
        store.close()


def test_a_deleted_database_is_refused_until_reinit(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    store = state.open_store()
    first = store.state_id()
    store.close()
    state.db.unlink()
    with pytest.raises(StateDirRefused, match=r"state.db is missing.*notifier run --reinit") as refused:
        state.open_store()
    assert refused.value.exit_code == 78
    assert not state.db.exists()  # refusing creates nothing
    store = state.open_store(reinit=True, locked=True)
    try:
        assert store.state_id() not in (None, first)
        assert state.marker.read_text().strip() == store.state_id()
    finally:
        store.close()
    state.open_store().close()  # accepted from now on


def test_a_replaced_database_is_refused_until_reinit(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.open_store().close()
    other = Store(tmp_path / "other.db")
    other.state_id(create=True)
    other.close()
    os.replace(tmp_path / "other.db", state.db)
    with pytest.raises(StateDirRefused, match=r"not the database this directory held.*replaced"):
        state.open_store()
    state.open_store(reinit=True).close()
    state.open_store().close()


def test_a_database_from_before_state_ids_is_adopted(tmp_path: Path) -> None:
    """Upgrading: a state.db written by an older notifier has no id and no state.id."""
    path = tmp_path / "state" / "state.db"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE watcher (name TEXT PRIMARY KEY)")
    db.execute("PRAGMA user_version = 2")
    db.close()
    state = StateDir(path.parent)
    store = state.open_store()
    try:
        assert state.marker.read_text().strip() == store.state_id()
    finally:
        store.close()


def test_a_write_ahead_log_without_its_database_is_never_applied(tmp_path: Path) -> None:
    """A -wal left by a deleted database would be replayed into a new one and corrupt it."""
    state = StateDir(tmp_path / "state")
    state.path.mkdir()
    (state.path / "state.db-wal").write_bytes(b"old frames")
    wal = state.path / "state.db-wal"
    with pytest.raises(StateDirRefused, match=r"state\.db-wal is still there"):
        state.open_store()
    store = state.open_store(locked=True)  # the daemon holds the lock: nobody else can use it
    store.close()
    assert not wal.exists() or wal.read_bytes() != b"old frames"


# -- real processes -----------------------------------------------------------------------------


@pytest.fixture
def doc(tmp_path: Path, smtp_server: SmtpServer) -> Doc:
    """(config, watched file): one file watcher "doc" checked every second, mail to the server."""
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    return write_config(tmp_path / "watchers.yaml", smtp_server, file_watcher("doc", watched)), watched


def test_a_second_daemon_on_the_same_state_dir_exits_at_once(doc: Doc, runs: StartRun) -> None:
    config, _ = doc
    first = runs(config)
    first.wait_log(r"watcher=doc .*outcome=baseline")
    assert first.proc is not None
    second = notifier(config, "run")
    assert second.returncode == 75
    assert second.stderr.strip() == (
        f"notifier: notifier is already running on {config.parent / 'state'} (pid {first.proc.pid}); "
        f"one daemon per state directory. Stop it first, or use `notifier reload`.")
    assert first.proc.poll() is None
    assert first.stop() == 0


def test_reload_never_signals_a_process_named_by_a_stale_lock_file(doc: Doc, runs: StartRun) -> None:
    config, _ = doc
    daemon = runs(config)
    daemon.wait_log(r"watcher=doc .*outcome=baseline")
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    lock = config.parent / "state" / "notifier.lock"
    sleeper = subprocess.Popen(["sleep", "60"])  # an unrelated live process, named by the file
    try:
        lock.write_bytes(f"{sleeper.pid} run\n{{}}\n".encode().ljust(LOCK_SIZE))
        result = notifier(config, "reload")
        assert result.returncode == 2
        assert "no running notifier found" in result.stderr
        with pytest.raises(subprocess.TimeoutExpired):
            sleeper.wait(timeout=0.2)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_check_send_beside_a_daemon_queues_and_the_daemon_sends(
        tmp_path: Path, smtp_server: SmtpServer, runs: StartRun) -> None:
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    # Checked once at start, then hourly: only `check --send` sees the edit.
    config = write_config(tmp_path / "watchers.yaml", smtp_server,
                          f"  - {{name: doc, kind: file, path: {watched}, every: 1h}}\n")
    daemon = runs(config)
    daemon.wait_log(r"watcher=doc .*outcome=baseline")
    watched.write_text("v2\n")
    result = notifier(config, "check", "--send", "doc", env=daemon.env)
    assert result.returncode == 1, result.stderr
    assert daemon.proc is not None
    assert f"the running notifier (pid {daemon.proc.pid}) sends them" in result.stdout
    assert "sent" not in result.stdout.replace("sends them", "")
    smtp_server.wait_for(1, timeout=DEADLINE)
    daemon.wait_log(r"outcome=sent")
    assert len(smtp_server.received) == 1
    assert daemon.stop() == 0


def test_check_send_without_a_daemon_sends_itself(doc: Doc, smtp_server: SmtpServer) -> None:
    config, watched = doc
    env = {"PW": Daemon(config).env["PW"]}
    assert notifier(config, "check", "--send", env=env).returncode == 0
    watched.write_text("v2\n")
    result = notifier(config, "check", "--send", env=env)
    assert "outbox: 1 sent" in result.stdout
    assert len(smtp_server.received) == 1
    assert StateDir(config.parent / "state").holder() is None  # released after delivering


N = 100  # messages the two senders share
SENDER = """
import sys
from pathlib import Path
from notifier import config as configmod
from notifier.outbox import Sender
from notifier.store import Store

cfg = configmod.load(Path(sys.argv[1]))
store = Store(cfg.state_dir / "state.db")
sender = Sender(cfg, store)
Path(sys.argv[2]).touch()  # ready
while not Path(sys.argv[3]).exists():  # go
    pass
sent = 0
while True:
    report = sender.deliver(limit=3)
    sent += report.sent
    if not report.sent and not report.retry and store.outbox_counts()["pending"] == 0:
        break
print(sent)
"""


def test_two_processes_delivering_one_outbox_never_send_a_message_twice(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    """The outbox's claims alone (no state-dir lock here) keep two senders apart."""
    config = tmp_path / "watchers.yaml"
    config.write_text(f"{smtp_yaml(smtp_server)}mail: {{to: [me@example.com]}}\nwatchers: []\n")
    store = Store(tmp_path / "state" / "state.db")
    store.enqueue([Queued(message_id=f"<m{i}@example.com>", kind="change", watcher="w", account="test",
                          sender="robot@example.com", recipients=("me@example.com",),
                          body=f"Message-ID: <m{i}@example.com>\r\nSubject: {i}\r\n\r\nbody\r\n".encode())
                   for i in range(N)])
    store.close()
    env = {**os.environ, "PW": Daemon(config).env["PW"]}
    go = tmp_path / "go"
    senders = [subprocess.Popen([sys.executable, "-c", SENDER, str(config), str(tmp_path / f"ready{i}"),
                                 str(go)], stdout=subprocess.PIPE, text=True, env=env) for i in range(2)]
    poll(lambda: all((tmp_path / f"ready{i}").exists() for i in range(2)), "both senders ready")
    go.touch()
    counts = [int(p.communicate(timeout=60)[0]) for p in senders]
    assert sum(counts) == N
    assert all(counts), counts  # both really took part
    ids = [str(email.message_from_bytes(r.content, policy=email.policy.default)["Message-ID"])
           for r in smtp_server.received]
    assert len(ids) == N
    assert len(set(ids)) == N
