"""notifier.health, as users meet it: a real `notifier run` whose state directory fills up, whose
database is deleted or replaced under it, whose files others must not read, and which is stopped
in the middle of a send. Real tmpfs, real SMTP, real sockets; every wait polls with a deadline.
"""

from __future__ import annotations

import email
import email.policy
import errno
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from notifier import config as configmod
from notifier.config import Config
from notifier.errors import StateError
from notifier.health import Health
from notifier.outbox import Sender
from notifier.statedir import StateDir
from notifier.store import Store
from tests.servers.smtp import PASSWORD, SmtpServer
from tests.test_daemon import DEADLINE, Doc, file_watcher, poll, write_config
from tests.test_statedir import StartRun, notifier, run_daemons


@pytest.fixture
def runs() -> Iterator[StartRun]:
    """Start daemons with `runs(config, *args, env=..., umask=...)`; killed after the test."""
    yield from run_daemons()


@pytest.fixture
def doc(tmp_path: Path, smtp_server: SmtpServer) -> Doc:
    """(config, watched file): one file watcher "doc" checked every second, mail to the server."""
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    return write_config(tmp_path / "watchers.yaml", smtp_server, file_watcher("doc", watched)), watched


class Notifications:
    """The sd_notify socket a daemon reports to, as systemd would hold it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.statuses: list[str] = []

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def _drain(self) -> None:
        while True:
            try:
                message = self.sock.recv(65536).decode()
            except BlockingIOError:
                return
            self.statuses += [f[7:] for f in message.split("\n") if f.startswith("STATUS=")]

    def wait_status(self, pattern: str, count: int = 1, since: int = 0) -> int:
        """Wait until `count` STATUS= lines from the `since`-th on matched `pattern`; return
        how many lines have come so far."""
        def seen() -> bool:
            self._drain()
            return sum(bool(re.search(pattern, s)) for s in self.statuses[since:]) >= count
        poll(seen, f"{count} STATUS= line(s) matching {pattern!r}; got {self.statuses[-3:]}")
        return len(self.statuses)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    """A bound sd_notify socket; pass `notifications.env()` to the daemon."""
    sock = Notifications(tmp_path / "notify.sock")
    yield sock
    sock.close()


def tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size`. Mounting needs root, as CI has; elsewhere the test is skipped."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
    mount = tmp_path / f"fs-{size}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB file system to fill up."""
    yield from tmpfs(tmp_path, "3m")


@pytest.fixture
def one_mb(tmp_path: Path) -> Iterator[Path]:
    """A file system with 1 MB free."""
    yield from tmpfs(tmp_path, "1m")


def fill(directory: Path) -> Path:
    """Write a file until the file system has no byte left; return it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for chunk in (65536, 4096, 512, 1):
            with pytest.raises(OSError, match="No space left") as full:
                _write_forever(out, b"\0" * chunk)
            assert full.value.errno == errno.ENOSPC
    return filler


def _write_forever(out: BinaryIO, data: bytes) -> None:
    while True:
        out.write(data)


def subjects(smtp: SmtpServer) -> list[str]:
    return [str(email.message_from_bytes(r.content, policy=email.policy.default)["Subject"])
            for r in smtp.received]


def test_a_full_disk_makes_the_daemon_unhealthy_until_space_returns(
        tmp_path: Path, small_fs: Path, smtp_server: SmtpServer, notifications: Notifications,
        runs: StartRun) -> None:
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    config = write_config(tmp_path / "watchers.yaml", smtp_server, file_watcher("doc", watched),
                          extra=f"state_dir: {small_fs / 'state'}")
    daemon = runs(config, env=notifications.env())
    daemon.wait_log(r"watcher=doc .*outcome=baseline")
    filler = fill(small_fs)
    # A change far bigger than what is left: recording it needs new pages.
    watched.write_text("".join(f"line {i} {os.urandom(16).hex()}\n" for i in range(4_000)))

    daemon.wait_log(r"ERROR notifier\.health: unhealthy: watcher=doc could not record its result: "
                    r"The file system holding .*state\.db is full \(database or disk is full\); free "
                    r"some space there and notifier carries on by itself\.")
    smtp_server.wait_for(1, timeout=DEADLINE)  # through the outbox or past it: whatever works
    assert subjects(smtp_server)[0].startswith("[notifier] notifier is failing: The file system holding")
    status = notifier(config, "status", env=daemon.env)
    assert re.search(r"^health: UNHEALTHY since [\d-]+ [\d:]+: The file system holding .* is full",
                     status.stdout, re.MULTILINE), status.stdout
    seen = notifications.wait_status(r"^UNHEALTHY: The file system holding .* is full")
    seen = notifications.wait_status(r"^UNHEALTHY", count=3, since=seen)  # 3 s on, still one line:
    log = daemon.log()
    assert log.count("unhealthy:") == 1  # one line, however often the checks fail
    assert "Traceback" not in log
    assert "Move it aside" not in log

    filler.unlink()
    daemon.wait_log(r"WARNING notifier\.health: recovered: the state database records results again")
    poll(lambda: any("doc changed" in s for s in subjects(smtp_server))
         and any("notifier is back to normal" in s for s in subjects(smtp_server)),
         f"the change and the recovery alert; got {subjects(smtp_server)}")
    notifications.wait_status(r"^1 watchers, ", since=seen)
    assert "health: ok" in notifier(config, "status", env=daemon.env).stdout
    assert daemon.stop() == 0


def test_removing_a_watcher_whose_writes_fail_ends_the_unhealthy_episode(
        tmp_path: Path, smtp_server: SmtpServer, runs: StartRun) -> None:
    """A watcher whose results the database refuses makes the daemon unhealthy until it writes
    again; removed from the config it never writes again, so its episode ends with the reload
    (it used to last until a restart, `status` saying UNHEALTHY all along)."""
    state = tmp_path / "state"
    doomed, fine = tmp_path / "doomed.txt", tmp_path / "fine.txt"
    doomed.write_text("v1\n")
    fine.write_text("v1\n")
    both = file_watcher("doomed", doomed) + file_watcher("fine", fine)
    config = write_config(tmp_path / "watchers.yaml", smtp_server, both, extra=f"state_dir: {state}")
    daemon = runs(config)
    daemon.wait_log(r"watcher=doomed .*outcome=baseline")
    with sqlite3.connect(state / "state.db") as db:  # every later write of "doomed" is refused
        db.execute("CREATE TRIGGER refuse_doomed BEFORE UPDATE ON watcher WHEN NEW.name = 'doomed' "
                   "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    daemon.wait_log(r"ERROR notifier\.health: unhealthy: watcher=doomed could not record its result")
    assert "health: UNHEALTHY" in notifier(config, "status", env=daemon.env).stdout

    write_config(config, smtp_server, file_watcher("fine", fine), extra=f"state_dir: {state}")
    daemon.wait_log(r"reloaded .*1 watcher\(s\), 0 added or changed, 1 removed")
    daemon.wait_log(r"WARNING notifier\.health: recovered: the state database records results again")
    assert "health: ok" in notifier(config, "status", env=daemon.env).stdout
    assert "Traceback" not in daemon.log()
    assert daemon.stop() == 0


def test_the_daemon_runs_with_1_mb_free(
        tmp_path: Path, one_mb: Path, smtp_server: SmtpServer, runs: StartRun) -> None:
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    config = write_config(tmp_path / "watchers.yaml", smtp_server, file_watcher("doc", watched),
                          extra=f"state_dir: {one_mb / 'state'}")
    daemon = runs(config)
    daemon.wait_log(r"watcher=doc .*outcome=baseline")
    for i in range(12):  # enough writes to go round the WAL more than once
        watched.write_text(f"v{i}\n" + "x" * 20_000 + "\n")
        daemon.wait_log(r"watcher=doc .*outcome=changed", i + 1)
    smtp_server.wait_for(12, timeout=DEADLINE)
    assert "unhealthy" not in daemon.log()
    assert "health: ok" in notifier(config, "status", env=daemon.env).stdout
    assert daemon.stop() == 0


def test_a_deleted_database_pauses_checks_and_a_restart_needs_a_decision(
        doc: Doc, smtp_server: SmtpServer, notifications: Notifications, runs: StartRun) -> None:
    config, watched = doc
    state = config.parent / "state"
    daemon = runs(config, env=notifications.env())
    daemon.wait_log(r"watcher=doc .*outcome=baseline")
    (state / "state.db").unlink()

    daemon.wait_log(r"ERROR notifier\.health: checks paused: The state database .*state\.db was deleted "
                    r"while notifier had it open; nothing more is written to the old file\. What it held "
                    r"is copied to .*state\.db\.rescued-")
    smtp_server.wait_for(1, timeout=DEADLINE)
    assert subjects(smtp_server)[0].startswith("[notifier] notifier is failing: The state database")
    assert not (state / "state.db-wal").exists()  # never to be replayed into a new database
    (rescued,) = state.glob("state.db.rescued-*")
    checks = daemon.count(r"watcher=doc ")
    watched.write_text("v2\n")
    seen = notifications.wait_status(r"^CHECKS PAUSED: The state database .* was deleted")
    notifications.wait_status(r"^CHECKS PAUSED", count=3, since=seen)
    assert daemon.count(r"watcher=doc ") == checks  # no check ran for 3 s
    assert "health: CHECKS PAUSED" in notifier(config, "status", env=daemon.env).stdout
    assert daemon.stop() == 0
    assert not (state / "state.db").exists()

    refused = notifier(config, "run", env=daemon.env)
    assert refused.returncode == 78
    assert "state.db is missing" in refused.stderr
    assert "notifier run --reinit" in refused.stderr
    assert not (state / "state.db").exists()  # nothing was re-baselined quietly

    os.replace(rescued, state / "state.db")  # the copy is the same database: accepted
    restored = runs(config)
    restored.wait_log(r"watcher=doc .*outcome=changed")
    poll(lambda: any("doc changed" in s for s in subjects(smtp_server)), "the change alert")
    assert restored.stop() == 0


def test_a_replaced_database_is_refused_until_reinit(doc: Doc, runs: StartRun) -> None:
    config, _ = doc
    state = config.parent / "state"
    first = runs(config)
    first.wait_log(r"watcher=doc .*outcome=baseline")
    assert first.stop() == 0
    other = sqlite3.connect(config.parent / "other.db")
    other.execute("CREATE TABLE x (y)")
    other.close()
    os.replace(config.parent / "other.db", state / "state.db")
    refused = notifier(config, "run", env=first.env)
    assert refused.returncode == 78
    assert "is not the database this directory held" in refused.stderr
    assert notifier(config, "check", "--send", env=first.env).returncode == 78  # the same rule
    fresh = runs(config, "--reinit")
    fresh.wait_log(r"watcher=doc .*outcome=baseline", 2)
    assert fresh.stop() == 0
    assert notifier(config, "check", env=first.env).returncode == 0


def test_state_files_are_private_under_umask_022(tmp_path: Path, runs: StartRun) -> None:
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    config = tmp_path / "watchers.yaml"  # no smtp account: alerts go to the Maildir
    config.write_text(f"defaults: {{every: 1s}}\nwatchers:\n{file_watcher('doc', watched)}")
    daemon = runs(config, umask=0o022)
    daemon.wait_log(r"watcher=doc .*outcome=baseline")
    watched.write_text("v2\n")
    state = tmp_path / "state"
    new = state / "maildir" / "new"
    poll(lambda: new.exists() and any(new.iterdir()), "a mail in the Maildir")
    entries = [state, *state.rglob("*")]
    dirs = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in entries if p.is_dir()}
    files = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in entries if not p.is_dir()}
    assert daemon.stop() == 0
    assert {"state", "state/maildir", "state/maildir/new"} <= dirs.keys()
    assert dirs == dict.fromkeys(dirs, 0o700)
    for name in ("state/state.db", "state/state.db-wal", "state/state.db-shm", "state/notifier.lock",
                 "state/state.id"):
        assert name in files
    assert files == dict.fromkeys(files, 0o600)
    watched.write_text("v3\n")  # and a one-shot `check --send` delivering into the Maildir
    assert "outbox: 1 sent" in notifier(config, "check", "--send", umask=0o022).stdout
    assert {p.stat().st_mode & 0o777 for p in new.iterdir()} == {0o600}


def test_sigterm_counts_a_send_in_flight_as_a_send(tmp_path: Path, runs: StartRun) -> None:
    """A check and a send are both running when SIGTERM comes; the log says which is which."""
    server = socket.create_server(("127.0.0.1", 0))  # accepts, and never says a word
    connections: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connections.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    config = tmp_path / "watchers.yaml"
    config.write_text(f"""\
smtp:
  mute: {{host: 127.0.0.1, port: {server.getsockname()[1]}, security: none, timeout: 30s}}
mail: {{from: robot@example.com, to: [me@example.com]}}
defaults: {{every: 1s}}
watchers:
{file_watcher('doc', watched)}  - {{name: slow, kind: command, command: "sleep 8", timeout: 30s, every: 1h}}
""")
    try:
        daemon = runs(config)
        daemon.wait_log(r"watcher=doc .*outcome=baseline")
        watched.write_text("v2\n")
        poll(lambda: bool(connections), "the daemon connecting to send the alert")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.wait_log(r"stopping: waiting up to 20 s for ")
        stopping = r"stopping: waiting up to 20 s for \d+ checks?, 1 send$"
        assert re.search(stopping, daemon.log(), re.MULTILINE), daemon.log()
        daemon.close()  # rather than wait the 20 s out
    finally:
        server.close()
        for conn in connections:
            conn.close()


class Host:
    """What Health needs of a daemon, made of the real parts (the outbox is only looked at)."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg, self.store, self.sender = cfg, store, Sender(cfg, store)
        self.wakes = 0

    def wake_outbox(self) -> None:
        self.wakes += 1


def test_a_flapping_disk_alerts_once_an_hour_and_recovers_in_step(
        doc: Doc, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = doc
    monkeypatch.setenv("PW", PASSWORD)
    cfg = configmod.load(config)
    state = StateDir(cfg.state_dir)
    lock = state.acquire("run")
    host = Host(cfg, state.open_store(locked=True))
    now = [1_000_000.0]
    health = Health(host, lock, clock=lambda: now[0])
    full = StateError("The file system holding state.db is full")

    def health_line() -> str:
        """What `notifier status` would say about health."""
        holder = state.holder()
        assert holder is not None
        return holder.health_line()

    try:
        health.failed("watcher=a", full)
        health.failed("watcher=b", full)
        assert not health.healthy
        assert health_line().startswith("health: UNHEALTHY")
        health.succeeded("watcher=a")
        assert not health.healthy  # b has not written since
        health.succeeded("watcher=b")
        assert health.healthy
        assert health_line() == "health: ok"
        now[0] += 60  # it flaps: the same reason within the hour alerts nobody again...
        health.failed("watcher=a", full)
        health.succeeded("watcher=a")
        now[0] += 3600  # ...an hour later it does
        health.failed("watcher=a", full)
        kinds = [row.kind for row in host.store.outbox()]
        assert kinds == ["error", "recovery", "error"]
        assert host.wakes == 3
    finally:
        host.store.close()
        lock.release()


class _Recorded:
    """Stands in for the daemon's Health: what the relay's writer reported."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def failed(self, writer: str, exc: Exception) -> None:
        self.calls.append(("failed", writer))

    def succeeded(self, writer: str) -> None:
        self.calls.append(("succeeded", writer))


def test_a_relay_message_the_store_cannot_take_is_the_daemons_health_not_only_a_log_line(
        tmp_path: Path) -> None:
    from notifier.relay import RELAY_WRITER, GroupCommit  # noqa: PLC0415 - aiosmtpd only here
    from notifier.relaylog import Relayed  # noqa: PLC0415

    store = Store(tmp_path / "state.db")
    health = _Recorded()
    commits = GroupCommit(store, health)
    try:
        unstorable = Relayed("local", "<a@host1>", None, "a@host1", (object(),), b"x")  # type: ignore[arg-type]
        with pytest.raises(StateError):
            commits.queue(unstorable, ()).result(timeout=DEADLINE)
        assert health.calls == [("failed", RELAY_WRITER)]
        fine = Relayed("local", "<b@host1>", None, "a@host1", ("ops@corp.example",), b"Subject: b\r\n\r\n")
        assert commits.queue(fine, ()).result(timeout=DEADLINE) is None
        assert health.calls[-1] == ("succeeded", RELAY_WRITER)
    finally:
        commits.close()
        store.close()
