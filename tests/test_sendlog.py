"""The send log and the check counts (notifier.ledger), written by the store and the outbox.

Real SQLite files and the real SMTP test server; time moves by the outbox's clock, never by
sleeping. What `notifier log` and `notifier stats` print of them is in tests/test_lookback.py.
"""

from __future__ import annotations

import email
import email.policy
import sqlite3
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from notifier.alerts import Alerter
from notifier.ledger import DURATION_BUCKETS, Attempt, day_of, subject_of
from notifier.outbox import GIVE_UP_AFTER, Sender
from notifier.store import PRUNE_BATCH, Queued, Store, WatcherState
from tests.servers.smtp import SmtpServer
from tests.test_outbox import Clock, smtp_config

OK = "250 2.0.0 Ok: queued"


def queue(store: Store, alerter: Alerter, n: int = 1) -> list[Queued]:
    messages = [alerter.test(0.0) for _ in range(n)]
    store.enqueue(messages)
    return messages


def test_failing_twice_then_delivered_is_one_entry_with_three_attempts(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    cfg = smtp_config(tmp_path, smtp_server)
    store = Store(tmp_path / "state.db")
    clock = Clock()
    sender = Sender(cfg, store, clock=clock)
    try:
        (message,) = queue(store, Alerter(cfg))
        smtp_server.fail("DATA", "451 4.3.0 Try again later", times=2)
        for _ in range(2):
            assert sender.deliver().retry == 1
            assert store.log_entries() == []  # still in the outbox: nothing to log yet
            (row,) = store.outbox()
            clock.now = row.not_before
        assert sender.deliver().sent == 1
        (entry,) = store.log_entries()
    finally:
        store.close()
    assert (entry.message_id, entry.status, entry.kind, entry.account) == (
        message.message_id, "sent", "test", "test")
    assert (entry.attempts, entry.reply, entry.reply_code) == (3, OK, 250)
    assert entry.deferrals == {"451": 2}
    assert [(r.address, r.status, r.reply) for r in entry.recipients] == [("a@example.com", "sent", OK)]
    assert entry.size == len(message.body)
    sent = email.message_from_bytes(smtp_server.received[0].content, policy=email.policy.default)
    assert entry.subject == str(sent["Subject"])
    assert entry.finished == clock.now
    assert entry.latency == pytest.approx(clock.now - entry.created)
    assert entry.body is None  # not kept unless keep_sent


def test_keep_sent_keeps_the_bytes_the_server_received(tmp_path: Path, smtp_server: SmtpServer) -> None:
    cfg = smtp_config(tmp_path, smtp_server, head="keep_sent: true\n")
    store = Store(tmp_path / "state.db")
    try:
        (message,) = queue(store, Alerter(cfg))
        Sender(cfg, store).deliver()
        entry = store.log_entry(message.message_id.strip("<>"))  # brackets optional
    finally:
        store.close()
    assert entry is not None
    assert entry.body == message.body
    assert smtp_server.received[0].content.replace(b"\r\n", b"\n").rstrip() == \
        entry.body.replace(b"\r\n", b"\n").rstrip()


def test_a_partial_refusal_logs_each_recipient_and_a_retry_updates_the_same_entry(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    cfg = smtp_config(tmp_path, smtp_server, to="[a@example.com, gone@example.com]")
    store = Store(tmp_path / "state.db")
    try:
        smtp_server.refuse_recipient("gone@example.com")
        (message,) = queue(store, Alerter(cfg))
        Sender(cfg, store).deliver()
        (entry,) = store.log_entries()
        assert (entry.status, entry.attempts, entry.reply) == ("partial", 1, OK)
        assert [(r.address, r.status, r.reply) for r in entry.recipients] == [
            ("a@example.com", "sent", OK), ("gone@example.com", "dead", "550 5.1.1 Mailbox unavailable")]
        assert store.outbox()[0].state == "dead"  # still listed for `notifier outbox retry`

        del smtp_server.refused["gone@example.com"]  # the mailbox came back
        assert store.release(("dead",)) == 1
        assert Sender(cfg, store).deliver().sent == 1
        (entry,) = store.log_entries()  # the same entry, now complete
    finally:
        store.close()
    assert (entry.message_id, entry.status, entry.attempts) == (message.message_id, "sent", 2)
    assert [(r.address, r.status) for r in entry.recipients] == [
        ("a@example.com", "sent"), ("gone@example.com", "sent")]
    assert [r.rcpt_tos for r in smtp_server.received] == [("a@example.com",), ("gone@example.com",)]


def test_a_dead_letter_is_logged_and_a_held_message_is_not(tmp_path: Path, smtp_server: SmtpServer) -> None:
    cfg = smtp_config(tmp_path, smtp_server)
    store = Store(tmp_path / "state.db")
    try:
        alerter = Alerter(cfg)
        (dead,) = queue(store, alerter)
        smtp_server.fail("DATA", "554 5.7.1 DT:SPM content rejected")
        assert Sender(cfg, store).deliver().dead == 1
        (held,) = queue(store, alerter)
        smtp_server.fail("AUTH", "535 5.7.8 Authentication failed")
        assert Sender(cfg, store).deliver().held == 1
        entries = store.log_entries()
    finally:
        store.close()
    assert [(e.message_id, e.status, e.reply_code, e.reply) for e in entries] == [
        (dead.message_id, "dead", 554, "554 5.7.1 DT:SPM content rejected")]
    assert entries[0].latency is None  # nothing was delivered
    assert held.message_id not in {e.message_id for e in entries}


def test_a_message_failing_past_the_queue_lifetime_is_given_up(tmp_path: Path,
                                                               smtp_server: SmtpServer) -> None:
    cfg = smtp_config(tmp_path, smtp_server)
    store = Store(tmp_path / "state.db")
    clock = Clock()
    try:
        (message,) = queue(store, Alerter(cfg))
        (row,) = store.outbox()
        smtp_server.fail("MAIL", "421 4.4.2 Connection timed out", times=None)
        clock.now = row.created + GIVE_UP_AFTER / 2
        assert Sender(cfg, store, clock=clock).deliver().retry == 1
        clock.now = row.created + GIVE_UP_AFTER
        assert Sender(cfg, store, clock=clock).deliver().dead == 1
        (entry,) = store.log_entries()
        (row,) = store.outbox()
    finally:
        store.close()
    assert (entry.message_id, entry.status, entry.attempts) == (message.message_id, "expired", 2)
    assert entry.deferrals == {"421": 1}
    assert [r.status for r in entry.recipients] == ["expired"]
    assert row.state == "dead"
    assert (row.last_error or "").startswith("given up after 2 attempts over 5 days")


def test_checks_changes_and_failures_are_counted_per_day(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    day = 1_764_000_000.0
    try:
        store.record_success("w", day, {}, "v1", history=5, seconds=0.004)  # the baseline: no change
        store.record_success("w", day + 60, {}, None, history=5, seconds=0.04)
        store.record_success("w", day + 120, {}, "v2", history=5, seconds=0.04)
        store.record_failure("w", day + 180, "boom", seconds=0.4)
        store.record_success("w", day + 240, {}, "v3", history=5, seconds=400.0)
        store.record_failure("w", day + 240, "the template failed")  # same check: one more failure
        store.record_success("w", day + 86400, {}, None, history=5)
        days = {d.day: d for d in store.check_days(day)}
    finally:
        store.close()
    first = days[day_of(day)]
    assert (first.checks, first.changes, first.failures) == (5, 2, 2)
    assert (days[day_of(day + 86400)].checks, len(days)) == (1, 2)
    assert sum(first.durations) == 5
    assert first.durations[0] == 1
    assert first.durations[DURATION_BUCKETS.index(0.05)] == 2
    assert first.durations[-1] == 1  # over five minutes: the last, open bucket


def test_rename_moves_everything_in_one_transaction(tmp_path: Path, smtp_server: SmtpServer) -> None:
    cfg = smtp_config(tmp_path, smtp_server)
    store = Store(tmp_path / "state.db")
    try:
        store.record_success("old", 1.0, {}, "a\n", history=5)
        store.record_success("old", 2.0, {}, "b\n", history=5)
        message = Queued(message_id="<m@x>", kind="change", watcher="old", account="test",
                         sender="robot@example.com", recipients=("a@example.com",),
                         body=b"Subject: x\r\n\r\nx\r\n")
        store.enqueue([message])
        Sender(cfg, store).deliver()
        store.record_success("taken", 1.0, {}, "t\n", history=5)
        with pytest.raises(Exception, match="already has state"):
            store.rename("old", "taken")
        store.rename("old", "new")
        assert [v.text for v in store.versions("new")] == ["b\n", "a\n"]
        assert store.versions("old") == []
        assert [e.watcher for e in store.log_entries()] == ["new"]
        assert {d.watcher for d in store.check_days(0)} == {"new", "taken"}
    finally:
        store.close()


def test_pruning_goes_in_batches_and_keeps_what_is_recent(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        store.enqueue([Queued(message_id=f"<{n}@x>", kind="test", watcher=None, account=None,
                              sender="a@x", recipients=("b@x",), body=b"Subject: s\r\n\r\nx")
                       for n in range(PRUNE_BATCH + 10)])
        for row in store.claim("me", now=2e9, limit=10_000):
            store.delivered(row.id, Attempt(1000.0 if row.id <= PRUNE_BATCH + 5 else 3e9, OK))
        store.record_success("w", 1000.0, {}, "x", history=1)
        assert store.prune(before=1e6) == PRUNE_BATCH + 1  # a batch, and the old day's counts
        assert store.prune(before=1e6) == 5  # the rest
        assert store.prune(before=1e6) == 0
        assert len(store.log_entries()) == 5
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM check_day").fetchone()[0] == 0
    finally:
        db.close()


def test_a_reminder_is_logged_as_a_reminder(tmp_path: Path, smtp_server: SmtpServer) -> None:
    cfg = smtp_config(tmp_path, smtp_server, watchers=f"[{{name: doc, kind: file, path: {tmp_path / 'd'}, "
                                                      f"remind_every: 1h}}]")
    (wc,) = cfg.watchers
    alerter = Alerter(cfg)
    now = 1_764_000_000.0
    first, _ = alerter.error(wc, "boom", WatcherState("doc", failures=2), now)
    again, _ = alerter.error(wc, "boom", WatcherState("doc", failures=9, error_alerted_at=now - 3600), now)
    store = Store(tmp_path / "state.db")
    try:
        store.enqueue([*first, *again])
        assert Sender(cfg, store).deliver().sent == 2
        assert [e.kind for e in store.log_entries()] == ["error", "reminder"]
    finally:
        store.close()
    subjects = [str(email.message_from_bytes(r.content, policy=email.policy.default)["Subject"])
                for r in smtp_server.received]
    assert [s.split(" (")[0] for s in subjects] == ["[notifier] doc is failing"] * 2  # the same mail


@pytest.mark.parametrize("head", [
    b"Subject: hi  there\r\n", b"From: a\r\nsubject:  folded\r\n  more\r\n\tend\r\nX: y\r\n",
    b"To: x\r\nSUBJECT: a\r\nSubject: b\r\n", b"X-Subject: no\r\nSubject: yes\r\n", b"Subject:\r\n",
    b"Subject: =?utf-8?b?5aSH5Lu9?=\r\n", "Subject: 备份 ✓\r\n".encode(), b"From: x\r\n",
    b"Garbage line\r\nSubject: x\r\n", b"From: a\r\nnot a header\r\nSubject: x\r\n",
    b" leading\r\nSubject: x\r\n", b"Subject : x\r\n", b"From x Mon\r\nSubject: x\r\n",
])
def test_the_logged_subject_is_the_one_the_email_parser_reads(head: bytes) -> None:
    """The shortcut for plain subjects must agree with the parser on every kind of header."""
    parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(head + b"\r\n")
    expected = " ".join(str(parsed.get("Subject", "")).split())
    assert subject_of(head + b"\r\nSubject: in the body\r\n") == expected
