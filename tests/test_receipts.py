"""notifier.receipts through the store, on both backends: a bounce is kept once per message and
recipient and rewrites the send log entry with its alert in one transaction; each account keeps
its latest delivery check; old bounces go with the send log."""

from __future__ import annotations

from dataclasses import replace

from notifier.receipts import MailCheck, Sent
from notifier.store import Alert, Store
from tests.test_store import queued, store  # noqa: F401 - store is the both-backends fixture

ID = "<m1@x>"


def _delivered(s: Store, recipients: tuple[str, ...] = ("b@x.org", "c@x.org")) -> None:
    s.enqueue([replace(queued(1), recipients=recipients)])
    (row,) = s.outbox()
    s.delivered(row.id)


def _alert(original: Sent, new: list[str]) -> list[Alert]:
    return [replace(queued(2), kind="bounce", recipients=tuple(new))]


def test_a_bounce_marks_its_recipient_once_and_queues_its_alert_with_it(store: Store) -> None:  # noqa: F811
    _delivered(store)
    original = store.record_bounce(["<other@x>", ID], ["b@x.org"], "5.1.1", "550 no such user", 100.0, _alert)
    assert original is not None
    assert (original.message_id, original.watcher, original.recipients) == (ID, "w", ("b@x.org", "c@x.org"))
    (entry,) = store.log_entries()
    assert entry.status == "partial"
    assert [(r.address, r.status, r.reply) for r in entry.recipients] == [
        ("b@x.org", "bounced", "550 no such user"), ("c@x.org", "sent", "")]
    assert [(r.message_id, r.kind) for r in store.outbox()] == [("<m2@x>", "bounce")]
    # The same report scanned again changes nothing and queues nothing.
    assert store.record_bounce([ID], ["b@x.org"], "5.1.1", "550 no such user", 200.0, _alert) is None
    assert len(store.outbox()) == 1
    assert store.bounce_counts(0) == {"w": 1}
    (row,) = store.bounces(0)
    assert (row.recipient, row.kind, row.status, row.found) == ("b@x.org", "change", "5.1.1", 100.0)


def test_a_notice_naming_no_recipient_is_about_the_ones_it_mentions_else_all(store: Store) -> None:  # noqa: F811
    _delivered(store)
    store.record_bounce([ID], [], None, "退信: c@x.org 不存在", 100.0, lambda o, n: [])
    assert [r.status for r in store.log_entries()[0].recipients] == ["sent", "bounced"]
    store.record_bounce([ID], [], None, "Mailbox not found", 101.0, lambda o, n: [])
    assert store.log_entries()[0].status == "dead"
    assert len(store.bounces(0)) == 2


def test_a_bounce_of_mail_notifier_did_not_send_is_not_recorded(store: Store) -> None:  # noqa: F811
    assert store.record_bounce(["<stranger@x>"], [], None, "x", 1.0, _alert) is None
    assert store.bounces(0) == []
    assert store.outbox() == []


def test_each_account_keeps_its_latest_check(store: Store) -> None:  # noqa: F811
    store.record_mail_check(MailCheck("out", "verify", 1.0, "junk", 0.5, "in junk"), [queued(3)])
    store.record_mail_check(MailCheck("out", "verify", 2.0, "inbox", 0.4, "fine"))
    store.record_mail_check(MailCheck("out", "bounces", 3.0, "error", None, "login refused"))
    assert store.mail_checks() == [MailCheck("out", "bounces", 3.0, "error", None, "login refused"),
                                   MailCheck("out", "verify", 2.0, "inbox", 0.4, "fine")]
    assert [r.message_id for r in store.outbox()] == ["<m3@x>"]


def test_old_bounces_are_pruned_with_the_send_log(store: Store) -> None:  # noqa: F811
    _delivered(store)
    store.record_bounce([ID], ["b@x.org"], "5.1.1", "gone", 100.0, lambda o, n: [])
    store.prune(before=1e9)  # 2001: after the bounce, before the delivery
    assert store.bounces(0) == []
