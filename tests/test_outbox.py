"""notifier.outbox: batches over one connection, failure types, and nothing lost or doubled."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest

from notifier import config
from notifier.alerts import Alerter
from notifier.cli import main
from notifier.config import Config
from notifier.diff import compute
from notifier.outbox import Sender, waiting_reason
from notifier.store import Queued, Store, WatcherState
from tests.servers.smtp import DROP, GARBAGE, PASSWORD, USERNAME, SmtpServer


def smtp_config(tmp_path: Path, server: SmtpServer, to: str = "[a@example.com]",
                head: str = "", watchers: str = "[]") -> Config:
    """A config whose only account is `server`, trusting the test CA, password from env."""
    path = tmp_path / "watchers.yaml"
    path.write_text(f"""\
{head}smtp:
  test:
    host: {server.host}
    port: {server.port}
    security: {server.security}
    username: {USERNAME}
    password_env: TEST_SMTP_PASSWORD
    ca_file: {server.ca_file}
    timeout: 5s
mail: {{to: {to}, from: {USERNAME}}}
watchers: {watchers}
""")
    return config.load(path, {"TEST_SMTP_PASSWORD": PASSWORD})


class Clock:
    """A clock the test moves forward, so retries become due without waiting."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Outbox(NamedTuple):
    """What the `outbox` fixture gives."""

    cfg: Config
    store: Store
    sender: Sender
    clock: Clock


@pytest.fixture
def outbox(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Outbox]:
    """(config, store, sender, clock) wired to the implicit-TLS test server."""
    cfg = smtp_config(tmp_path, smtp_server)
    store = Store(tmp_path / "state.db")
    clock = Clock()
    yield Outbox(cfg, store, Sender(cfg, store, clock=clock), clock)
    store.close()


def enqueue(cfg: Config, store: Store, n: int) -> list[str]:
    alerts = [Alerter(cfg).test(0.0) for _ in range(n)]
    store.enqueue(alerts)
    return [a.message_id for a in alerts]


def ids(server: SmtpServer) -> list[str]:
    return [email.message_from_bytes(r.content, policy=email.policy.default)["Message-ID"]
            for r in server.received]


def test_batch_goes_over_one_connection(outbox: Outbox, smtp_server: SmtpServer) -> None:
    cfg, store, sender, _ = outbox
    sent = enqueue(cfg, store, 3)
    report = sender.deliver()
    assert report.sent == 3
    assert ids(smtp_server) == sent
    assert len(smtp_server.logins) == 1
    assert store.outbox() == []


def test_transient_failure_retries_with_the_same_message_id(outbox: Outbox, smtp_server: SmtpServer) -> None:
    cfg, store, sender, clock = outbox
    (sent,) = enqueue(cfg, store, 1)
    smtp_server.fail("DATA", "451 4.3.0 Try again later")
    assert sender.deliver().retry == 1
    (row,) = store.outbox()
    assert row.state == "pending"
    assert row.attempts == 1
    assert "451" in (row.last_error or "")
    assert row.not_before >= clock.now + 15
    assert sender.deliver().sent == 0  # not due yet
    clock.now = row.not_before
    assert sender.deliver().sent == 1
    assert ids(smtp_server) == [sent]


def test_auth_failure_is_held_until_retry(outbox: Outbox, smtp_server: SmtpServer) -> None:
    cfg, store, sender, clock = outbox
    enqueue(cfg, store, 2)
    smtp_server.fail("AUTH", "535 5.7.8 Authentication credentials invalid", times=1)
    report = sender.deliver()
    assert report.held == 2
    assert store.outbox_counts() == {"pending": 0, "held": 2, "dead": 0}
    assert PASSWORD not in " ".join(report.errors)
    clock.now += 10 * 3600
    assert sender.deliver().sent == 0  # held means no hammering, however long we wait
    assert store.release(("held",), now=clock.now) == 2
    assert sender.deliver().sent == 2


def test_permanent_rejection_becomes_a_dead_letter(outbox: Outbox, smtp_server: SmtpServer) -> None:
    cfg, store, sender, _ = outbox
    enqueue(cfg, store, 1)
    smtp_server.fail("DATA", "554 5.7.1 DT:SPM content rejected")
    assert sender.deliver().dead == 1
    (row,) = store.outbox()
    assert row.state == "dead"
    assert "554" in (row.last_error or "")


@pytest.mark.parametrize("reply", ["550 5.7.1 Too many messages, rate limit exceeded",
                                   "451 4.7.1 Too many messages, slow down",
                                   "450 4.7.1 You send too frequently",
                                   "452 4.5.3 Rate limit exceeded for this account"])
def test_rate_limit_retries_slowly(outbox: Outbox, smtp_server: SmtpServer, reply: str) -> None:
    """A rate limit, in a 5xx or a 4xx reply, waits at least 15 minutes: not a 15-45 s backoff."""
    cfg, store, sender, clock = outbox
    enqueue(cfg, store, 1)
    smtp_server.fail("MAIL", reply)
    assert sender.deliver().retry == 1
    (row,) = store.outbox()
    assert row.state == "pending"
    assert row.not_before >= clock.now + 900


def test_partial_refusal_keeps_only_the_refused_recipient(tmp_path: Path, smtp_server: SmtpServer) -> None:
    cfg = smtp_config(tmp_path, smtp_server, to="[a@example.com, gone@example.com]")
    store = Store(tmp_path / "state.db")
    try:
        smtp_server.refuse_recipient("gone@example.com")
        enqueue(cfg, store, 1)
        Sender(cfg, store).deliver()
        assert smtp_server.received[0].rcpt_tos == ("a@example.com",)
        (row,) = store.outbox()
        assert (row.state, row.recipients) == ("dead", ("gone@example.com",))
    finally:
        store.close()


@pytest.mark.parametrize("reply", [GARBAGE, DROP])
def test_error_on_quit_after_acceptance_is_not_a_failure(outbox: Outbox, smtp_server: SmtpServer,
                                                          reply: str) -> None:
    cfg, store, sender, _ = outbox
    enqueue(cfg, store, 1)
    smtp_server.fail("QUIT", reply)
    assert sender.deliver().sent == 1
    assert store.outbox() == []


def test_dropped_connection_mid_data_is_retried(outbox: Outbox, smtp_server: SmtpServer) -> None:
    cfg, store, sender, clock = outbox
    sent = enqueue(cfg, store, 2)
    smtp_server.fail("DATA", DROP)
    report = sender.deliver()
    assert (report.sent, report.retry) == (1, 1)
    clock.now += 3600 * 2
    assert sender.deliver().sent == 1
    assert sorted(ids(smtp_server)) == sorted(sent)


def test_sender_restart_loses_and_doubles_nothing(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """A sender that claimed messages and died: the next one sends them after the lease."""
    cfg = smtp_config(tmp_path, smtp_server)
    first = Store(tmp_path / "state.db")
    sent = enqueue(cfg, first, 10)
    Sender(cfg, first).deliver(limit=4)
    first.claim("crashed-sender", now=2e9, limit=100, lease=600)  # claims the other 6, then dies
    first.close()
    second = Store(tmp_path / "state.db")
    try:
        clock = Clock()
        clock.now = 2e9 + 1
        assert Sender(cfg, second, clock=clock).deliver().sent == 0  # still leased
        clock.now = 2e9 + 601
        assert Sender(cfg, second, clock=clock).deliver().sent == 6
        assert sorted(ids(smtp_server)) == sorted(sent)
        assert second.outbox() == []
    finally:
        second.close()


def test_maildir_is_the_default_without_an_account(tmp_path: Path) -> None:
    path = tmp_path / "watchers.yaml"
    path.write_text("mail: {to: [me@example.com]}\nwatchers: []\n")
    cfg = config.load(path, {})
    store = Store(tmp_path / "state.db")
    try:
        enqueue(cfg, store, 1)
        assert Sender(cfg, store).deliver().sent == 1
        (message,) = list((tmp_path / "state" / "maildir" / "new").iterdir())
        parsed = email.message_from_bytes(message.read_bytes(), policy=email.policy.default)
        assert parsed["To"] == "me@example.com"
    finally:
        store.close()


def test_partial_refusal_with_a_rate_limit_retries_slowly(tmp_path: Path, smtp_server: SmtpServer) -> None:
    cfg = smtp_config(tmp_path, smtp_server, to="[a@example.com, busy@example.com]")
    store = Store(tmp_path / "state.db")
    try:
        smtp_server.refuse_recipient("busy@example.com", "450 4.7.1 Recipient rate limit exceeded")
        enqueue(cfg, store, 1)
        clock = Clock()
        Sender(cfg, store, clock=clock).deliver()
        (row,) = store.outbox()
        assert (row.state, row.recipients) == ("pending", ("busy@example.com",))
        assert row.not_before >= clock.now + 900
    finally:
        store.close()


SHANGHAI = ZoneInfo("Asia/Shanghai")
NIGHT = datetime(2026, 11, 24, 23, 30, tzinfo=SHANGHAI).timestamp()


def test_why_each_message_waits(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """Quiet hours, backoff, held and dead, told apart from the row alone."""
    cfg = smtp_config(tmp_path, smtp_server, head="timezone: Asia/Shanghai\n",
                      watchers=f"[{{name: doc, kind: file, path: {tmp_path / 'doc'}, "
                               f"quiet_hours: '23:00-07:00'}}]")
    store = Store(tmp_path / "state.db")
    clock = Clock()
    clock.now = NIGHT
    sender = Sender(cfg, store, clock=clock)
    try:
        alerter = Alerter(cfg)
        (wc,) = cfg.watchers
        quiet, problem = alerter.change(wc, compute("a\n", "b\n"), "a\n", "b\n", WatcherState("doc"), NIGHT)
        assert problem is None
        store.enqueue(quiet)
        (row,) = store.outbox()
        assert waiting_reason(row, NIGHT, cfg.timezone) == "held for quiet hours until 07:00"
        assert waiting_reason(row, NIGHT - 86400, cfg.timezone) == \
            "held for quiet hours until 2026-11-25 07:00"  # not within a day: with the date

        retried, held, dead = (alerter.test(NIGHT) for _ in range(3))
        for message, reply in ((retried, "451 4.3.0 Try again later"),
                               (held, "535 5.7.8 Authentication failed"),
                               (dead, "554 5.7.1 DT:SPM content rejected")):
            store.enqueue([message])
            smtp_server.fail("AUTH" if reply.startswith("535") else "DATA", reply)
            sender.deliver()
        rows = {r.message_id: r for r in store.outbox()}
        backoff = rows[retried.message_id]
        until = datetime.fromtimestamp(backoff.not_before, SHANGHAI).strftime("%H:%M:%S")
        assert waiting_reason(backoff, NIGHT, cfg.timezone) == f"backoff until {until} (attempt 2)"
        assert waiting_reason(backoff, backoff.not_before, cfg.timezone) == "due now (attempt 2)"
        assert waiting_reason(rows[held.message_id], NIGHT).startswith("held: Could not log in")
        assert "535 5.7.8" in waiting_reason(rows[held.message_id], NIGHT)
        assert waiting_reason(rows[dead.message_id], NIGHT).startswith("dead: ")
        assert "554 5.7.1 DT:SPM" in waiting_reason(rows[dead.message_id], NIGHT)
    finally:
        store.close()


def test_outbox_command_and_send_report_say_why(tmp_path: Path, smtp_server: SmtpServer,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", PASSWORD)
    cfg = smtp_config(tmp_path, smtp_server)
    store = Store(cfg.state_dir / "state.db")
    try:
        later = Queued(message_id="<quiet@example.com>", kind="change", watcher="doc",
                       account="test", sender=USERNAME, recipients=("a@example.com",),
                       body=b"Subject: x\r\n\r\nx\r\n", not_before=time.time() + 7200)
        store.enqueue([later, Alerter(cfg).test(0.0)])
        smtp_server.fail("AUTH", "535 5.7.8 Authentication failed")
        assert Sender(cfg, store).deliver().held == 1
    finally:
        store.close()
    assert main(["-c", str(cfg.path), "outbox"]) == 0
    out = capsys.readouterr().out
    assert "held for quiet hours until " in out
    assert "held: Could not log in" in out
    assert "2 message(s) in the outbox." in out

    assert main(["-c", str(cfg.path), "check", "--send"]) == 0
    out = capsys.readouterr().out
    assert "outbox: 0 sent, 0 to retry, 0 held, 0 dead" in out
    assert "1 held and 0 dead message(s) are waiting in the outbox" in out
    assert "`notifier outbox retry`" in out
