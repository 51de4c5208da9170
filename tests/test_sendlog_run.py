"""The send log under `notifier run`: a real daemon process, a real SMTP server, kill -9.

Waits are polls with deadlines (tests.test_daemon); a retry is made due by moving its row's
`not_before` in the database, as a clock jump would, rather than by sleeping out the backoff.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.cli import main
from notifier.statedir import StateDir
from tests.servers.smtp import LocalCA, Received, SmtpServer
from tests.test_daemon import Daemon, file_watcher, write_config

OK = "250 2.0.0 Ok: queued"


class StoppingServer(SmtpServer):
    """The SMTP test server, which can freeze a client (SIGSTOP) the moment it has taken its
    message and before its "250" goes out: the client then dies in the window between the
    server's acceptance and its own record of it."""

    stop_pid: int | None = None

    def _store(self, message: Received) -> None:
        super()._store(message)
        pid, self.stop_pid = self.stop_pid, None
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)


@pytest.fixture
def stopping_server(tls_ca: LocalCA) -> Iterator[StoppingServer]:
    """Implicit TLS with AUTH, like `smtp_server`, that can freeze its client (see the class)."""
    server = StoppingServer("ssl", ca=tls_ca, ca_file=tls_ca.ca_file)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def started() -> Iterator[list[Daemon]]:
    """Daemons a test starts; any still running are killed after it."""
    daemons: list[Daemon] = []
    yield daemons
    for daemon in daemons:
        daemon.close()


def start(daemons: list[Daemon], config: Path) -> Daemon:
    daemon = Daemon(config).start()
    daemons.append(daemon)
    return daemon


def db(config: Path) -> sqlite3.Connection:
    return sqlite3.connect(config.parent / "state" / "state.db", timeout=10, isolation_level=None)


def logged(config: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["-c", str(config), "log", "--json"]) == 0
    entries: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return entries


def message_ids(server: SmtpServer) -> list[str]:
    return [str(email.message_from_bytes(r.content, policy=email.policy.default)["Message-ID"])
            for r in server.received]


def test_a_message_failing_twice_then_delivered_is_logged_once_with_three_attempts(
        tmp_path: Path, smtp_server: SmtpServer, started: list[Daemon],
        capsys: pytest.CaptureFixture[str]) -> None:
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    config = write_config(tmp_path / "watchers.yaml", smtp_server, file_watcher("doc", watched))
    smtp_server.fail("DATA", "451 4.3.0 Try again later", times=2)
    daemon = start(started, config)
    daemon.wait_log(r"watcher=doc .*outcome=baseline")
    watched.write_text("v2\n")
    for attempt in (1, 2):
        daemon.wait_log(r"message=.* outcome=retry attempts=\d+: .*451 4\.3\.0", attempt)
        conn = db(config)
        try:
            conn.execute("UPDATE outbox SET not_before = 0")  # the backoff is over
        finally:
            conn.close()
        assert daemon.proc is not None
        os.kill(daemon.proc.pid, signal.SIGUSR1)  # and the daemon looks now
    smtp_server.wait_for(1, timeout=20)
    daemon.wait_log(r"outcome=sent")
    (entry,) = logged(config, capsys)
    assert daemon.stop() == 0
    assert (entry["message_id"], entry["status"], entry["watcher"], entry["kind"]) == (
        message_ids(smtp_server)[0], "sent", "doc", "change")
    assert (entry["attempts"], entry["reply"], entry["reply_code"]) == (3, OK, 250)
    assert entry["deferrals"] == {"451": 2}
    assert entry["recipients"] == [{"address": "me@example.com", "status": "sent", "reply": OK,
                                    "at": entry["finished"]}]
    capsys.readouterr()
    assert main(["-c", str(config), "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    (doc,) = stats["watchers"]
    assert doc["checks"] >= 2
    assert doc["changes"] == 1
    assert doc["alerts"] == 1
    assert doc["duration_median"] is not None  # the daemon counts how long its checks take
    assert stats["accounts"][0]["deferred_by"] == {"451": 2}


def test_kill_9_between_the_250_and_the_log_write_loses_and_doubles_nothing(
        tmp_path: Path, stopping_server: StoppingServer, started: list[Daemon],
        capsys: pytest.CaptureFixture[str]) -> None:
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    config = write_config(tmp_path / "watchers.yaml", stopping_server, file_watcher("doc", watched))

    # 1: the server takes the message and the daemon dies before it hears the 250.
    first = start(started, config)
    first.wait_log(r"watcher=doc .*outcome=baseline")
    assert first.proc is not None
    stopping_server.stop_pid = first.proc.pid
    watched.write_text("v2\n")
    stopping_server.wait_for(1, timeout=20)
    first.close()  # SIGKILL, frozen as it was
    conn = db(config)
    try:
        assert conn.execute("SELECT COUNT(*) FROM send_log").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1  # not lost
    finally:
        conn.close()

    # 2: the next daemon sends it again (same Message-ID); then a second change, and a kill -9
    # right after that one was committed.
    second = start(started, config)
    stopping_server.wait_for(2, timeout=20)
    second.wait_log(r"outcome=sent")
    watched.write_text("v3\n")
    stopping_server.wait_for(3, timeout=20)
    second.wait_log(r"outcome=sent", 2)
    second.close()

    third = start(started, config)
    third.wait_log("started:", 3)
    third.wait_log(r"watcher=doc .*outcome=unchanged")
    entries = logged(config, capsys)
    assert third.stop() == 0
    received = message_ids(stopping_server)
    assert received[0] == received[1]  # the one copy too many the crash allows: the same message
    assert len(received) == 3
    assert sorted(str(e["message_id"]) for e in entries) == sorted(set(received))
    assert {e["status"] for e in entries} == {"sent"}
    conn = db(config)
    try:
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_housekeeping_prunes_expired_entries_while_checks_go_on(
        tmp_path: Path, smtp_server: SmtpServer, started: list[Daemon]) -> None:
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    config = write_config(tmp_path / "watchers.yaml", smtp_server, file_watcher("doc", watched),
                          extra="log_retention: 30d")
    store = StateDir(tmp_path / "state").open_store()  # made and marked as a daemon would
    store.close()
    conn = db(config)
    old, recent = 2_600, 5  # over five batches of expired entries, and some to keep
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO send_log (message_id, status, watcher, kind, account, sender, recipients, "
            "subject, size, attempts, reply, deferrals, created, finished) VALUES (?, 'sent', 'doc', "
            "'change', 'test', 'a@x', '[]', 's', 1, 1, ?, '{}', ?, ?)",
            [(f"<{n}@x>", OK, when, when) for n, when in
             [(n, 1e9) for n in range(old)] + [(old + n, 2e9) for n in range(recent)]])
        conn.execute("COMMIT")
    finally:
        conn.close()
    daemon = start(started, config)
    daemon.wait_log(r"pruned 2600 send log entries")
    checks = daemon.count(r"watcher=doc ")
    daemon.wait_log(r"watcher=doc ", checks + 2)
    assert daemon.stop() == 0
    conn = db(config)
    try:
        assert conn.execute("SELECT COUNT(*) FROM send_log").fetchone()[0] == recent
    finally:
        conn.close()
