"""What came back from sent mail: bounces of notifier's messages, and delivery verifications.

Like notifier.ledger, the functions here work on a connection inside notifier.store's
transactions and open nothing themselves. A bounce is kept once per (Message-ID, recipient),
so a mailbox scanned twice (the daemon and `notifier bounces`, or a scan repeated after a
crash) neither counts nor alerts twice; the send log entry of the bounced message is rewritten
in the same transaction: each bounced recipient's outcome becomes `bounced` with the reason,
and the entry `partial` (some recipients still got it) or `dead` (none did). The send log's
own status column keeps its four values, so older notifiers can still read the database.

Delivery checks (`verify_every`, `watch_bounces`) keep only their latest result per account and
job: when, the verdict, the latency, and a sentence for `notifier status`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from notifier.sqldb import Db

BOUNCED = "bounced"  # a recipient's outcome in the send log once a bounce names it


class BounceRow(NamedTuple):
    """One recipient of one of notifier's messages that bounced."""

    message_id: str
    recipient: str
    watcher: str | None
    account: str | None
    kind: str
    subject: str
    status: str | None  # the DSN status, like 5.1.1, when the report gave one
    reason: str
    found: float


class MailCheck(NamedTuple):
    """The latest run of a delivery check of one SMTP account."""

    account: str
    job: str  # "verify" or "bounces"
    at: float
    verdict: str  # verify: inbox, junk, not found, bounced, error; bounces: ok, error
    latency: float | None
    detail: str


class Sent(NamedTuple):
    """What a bounce is matched against: the send log entry of the original message."""

    message_id: str
    watcher: str | None
    account: str | None
    kind: str
    subject: str
    recipients: tuple[str, ...]


def sent(db: Db, message_ids: Sequence[str]) -> Sent | None:
    """The send log entry of the first of `message_ids` notifier sent, if any."""
    for message_id in message_ids:
        row = db.execute("SELECT message_id, watcher, account, kind, subject, recipients FROM send_log "
                         "WHERE message_id = ?", (message_id,)).fetchone()
        if row is not None:
            return Sent(row[0], row[1], row[2], row[3], row[4],
                        tuple(str(r[0]) for r in json.loads(row[5])))
    return None


def record_bounce(db: Db, original: Sent, recipients: Sequence[str], status: str | None,
                  reason: str, at: float) -> list[str]:
    """Keep the bounce of `recipients` of `original` and mark them in its send log entry;
    returns the recipients not known to have bounced before (none: nothing was changed).

    Notices that name no recipient (QQ's, 163's) are about the recipients of the original that
    their text mentions, or else about all of them: the usual alert has one."""
    if not recipients:
        recipients = [r for r in original.recipients if r.lower() in reason.lower()] or original.recipients
    new = [r for r in recipients if db.execute(
        "INSERT INTO bounce (message_id, recipient, watcher, account, kind, subject, status, reason, "
        "found) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id, recipient) DO NOTHING",
        (original.message_id, r, original.watcher, original.account, original.kind, original.subject,
         status, reason, at)).rowcount]
    if new:
        _mark(db, original.message_id, {r.lower() for r in new}, reason, at)
    return new


def _mark(db: Db, message_id: str, bounced: set[str], reason: str, at: float) -> None:
    (raw,) = db.execute("SELECT recipients FROM send_log WHERE message_id = ?", (message_id,)).fetchone()
    results = [[addr, BOUNCED, reason, at] if addr.lower() in bounced else [addr, outcome, reply, when]
               for addr, outcome, reply, when in json.loads(raw)]
    reached = sum(1 for r in results if r[1] == "sent")
    status = "sent" if reached == len(results) else "partial" if reached else "dead"
    db.execute("UPDATE send_log SET recipients = ?, status = ? WHERE message_id = ?",
               (json.dumps(results), status, message_id))


def bounces(db: Db, since: float, limit: int) -> list[BounceRow]:
    """The newest bounces found since `since`, newest first."""
    rows = db.execute("SELECT message_id, recipient, watcher, account, kind, subject, status, reason, "
                      "found FROM bounce WHERE found >= ? ORDER BY found DESC, id DESC LIMIT ?",
                      (since, limit))
    return [BounceRow(*r) for r in rows]


def bounce_counts(db: Db, since: float) -> dict[str, int]:
    """Bounced messages per watcher found since `since`: a message counts once, however many of
    its recipients bounced."""
    return dict(db.execute("SELECT watcher, COUNT(DISTINCT message_id) FROM bounce WHERE found >= ? "
                           "AND watcher IS NOT NULL GROUP BY watcher", (since,)).fetchall())


def record_check(db: Db, check: MailCheck) -> None:
    db.execute("INSERT INTO mail_check (account, job, at, verdict, latency, detail) VALUES "
               "(?, ?, ?, ?, ?, ?) ON CONFLICT (account, job) DO UPDATE SET at = excluded.at, "
               "verdict = excluded.verdict, latency = excluded.latency, detail = excluded.detail",
               tuple(check))


def checks(db: Db) -> list[MailCheck]:
    return [MailCheck(*r) for r in db.execute(
        "SELECT account, job, at, verdict, latency, detail FROM mail_check ORDER BY account, job")]


def prune(db: Db, before: float, limit: int) -> int:
    """Delete up to `limit` bounces found before `before` (log_retention, like the send log)."""
    return int(db.execute("DELETE FROM bounce WHERE id IN (SELECT id FROM bounce WHERE found < ? "
                          "ORDER BY found LIMIT ?)", (before, limit)).rowcount)
