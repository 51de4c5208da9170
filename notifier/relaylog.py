"""What the mail relay (notifier.relay) keeps: its verdicts, its quarantine, and its figures.

Like notifier.ledger, the functions here work on a connection inside notifier.store's
transactions and open nothing themselves. Accepting a relayed message is one transaction: the
client's rate is counted, the message goes into the outbox and its `relay_event` is written —
and only after that commits does the client get its 250. A refusal is an event too (with the
rule's name), so statistics count both. Delivery figures per client come from the send log and
the outbox, joined to the events by Message-ID: nothing is counted twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from notifier.sqldb import Db

KIND = "relay"  # the outbox and send log `kind` of relayed messages
ACCEPTED = "accepted"  # the rule column of an accepted message's event
DUPLICATE = "message_id"  # the rule that refuses a second, different message with one Message-ID
MINUTE, HOUR = 60.0, 3600.0


class Relayed(NamedTuple):
    """A message a client handed to the relay, rewritten and ready for the outbox."""

    client: str
    message_id: str
    account: str | None
    sender: str
    recipients: tuple[str, ...]
    body: bytes


class Quarantined(NamedTuple):
    """A refused message kept for a person to look at (`notifier relay quarantine`)."""

    id: int
    client: str
    rule: str
    reason: str
    message: Relayed
    created: float


class ClientFigures(NamedTuple):
    """What one client did in a period, for `notifier stats`."""

    client: str
    accepted: int
    rejected: dict[str, int]  # rule: messages it refused
    delivered: int
    deferred: int  # waiting in the outbox for a retry now
    dead: int
    latencies: list[float]  # accepted → delivered, sorted


def accept(db: Db, message: Relayed, now: float,
           rates: Sequence[tuple[str, float, int]]) -> str | None:
    """Queue `message` unless a rate limit (rule, window, most) says no; returns the rule that
    refused it, after recording the refusal, or None once it is in the outbox. A message whose
    Message-ID is queued already is the client trying again after a lost 250 when the bytes are
    the same (accepted once), and refused when they differ (the first must not be replaced)."""
    for rule, window, most in rates:
        (sent,) = db.execute("SELECT COUNT(*) FROM relay_event WHERE client = ? AND at >= ? AND "
                             "rule = ?", (message.client, now - window, ACCEPTED)).fetchone()
        if sent >= most:
            refuse(db, message.client, rule, now)
            return rule
    inserted = db.execute(
        "INSERT INTO outbox (message_id, watcher, kind, account, sender, recipients, body, "
        "not_before, created) VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
        (message.message_id, KIND, message.account, message.sender, json.dumps(list(message.recipients)),
         message.body, now, now)).rowcount
    if not inserted:
        row = db.execute("SELECT body FROM outbox WHERE message_id = ?", (message.message_id,)).fetchone()
        if row is not None and bytes(row[0]) != message.body:
            refuse(db, message.client, DUPLICATE, now)
            return DUPLICATE
        return None
    db.execute("INSERT INTO relay_event (client, at, rule, message_id) VALUES (?, ?, ?, ?)",
               (message.client, now, ACCEPTED, message.message_id))
    return None


def refuse(db: Db, client: str, rule: str, now: float,
           kept: Quarantined | None = None) -> None:
    """Count a refusal by `rule`; with `kept`, keep the message in the quarantine too."""
    db.execute("INSERT INTO relay_event (client, at, rule, message_id) VALUES (?, ?, ?, NULL)",
               (client, now, rule))
    if kept is not None:
        keep(db, kept, now)


def keep(db: Db, kept: Quarantined, now: float) -> None:
    """Put a refused message in the quarantine (its refusal is counted by the caller)."""
    m = kept.message
    db.execute("INSERT INTO quarantine (client, rule, reason, message_id, account, sender, "
               "recipients, body, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (kept.client, kept.rule, kept.reason, m.message_id, m.account, m.sender,
                json.dumps(list(m.recipients)), m.body, now))


_QUARANTINE = ("SELECT id, client, rule, reason, message_id, account, sender, recipients, body, "
               "created FROM quarantine")


def quarantined(db: Db, ids: Sequence[int] = ()) -> list[Quarantined]:
    """The quarantine, oldest first; only `ids` when given."""
    where = f" WHERE id IN ({','.join('?' * len(ids))})" if ids else ""
    rows = db.execute(f"{_QUARANTINE}{where} ORDER BY id", tuple(ids)).fetchall()
    return [Quarantined(r[0], r[1], r[2], r[3], Relayed(r[1], r[4], r[5], r[6],
                                                          tuple(json.loads(r[7])), bytes(r[8])), r[9])
            for r in rows]


def release(db: Db, ids: Sequence[int], now: float) -> list[int]:
    """Move quarantined messages into the outbox (no rule is asked again: a person decided);
    returns the ids that were there."""
    moved = []
    for item in quarantined(db, ids):
        accept(db, item.message, now, ())
        db.execute("DELETE FROM quarantine WHERE id = ?", (item.id,))
        moved.append(item.id)
    return moved


def delete(db: Db, ids: Sequence[int]) -> int:
    return sum(db.execute("DELETE FROM quarantine WHERE id = ?", (i,)).rowcount for i in ids)


def figures(db: Db, since: float) -> list[ClientFigures]:
    """Per client: accepted and refused (by rule) since `since`; of the accepted ones, how many
    were delivered or died, how many wait for a retry, and the delivery latencies."""
    events: dict[str, dict[str, int]] = {}
    for client, rule, count in db.execute("SELECT client, rule, COUNT(*) FROM relay_event WHERE "
                                          "at >= ? GROUP BY client, rule", (since,)):
        events.setdefault(client, {})[rule] = count
    outcomes: dict[tuple[str, str], int] = {}
    latencies: dict[str, list[float]] = {}
    for client, status, latency in db.execute(
            "SELECT e.client, s.status, s.latency FROM relay_event e JOIN send_log s ON "
            "s.message_id = e.message_id WHERE e.at >= ? AND e.rule = ?", (since, ACCEPTED)):
        outcomes[client, status] = outcomes.get((client, status), 0) + 1
        if latency is not None:
            latencies.setdefault(client, []).append(latency)
    deferred = dict(db.execute(
        "SELECT e.client, COUNT(*) FROM relay_event e JOIN outbox o ON o.message_id = e.message_id "
        "WHERE e.at >= ? AND e.rule = ? AND o.state = 'pending' AND o.attempts > 0 GROUP BY e.client",
        (since, ACCEPTED)).fetchall())
    return [ClientFigures(
        client, counts.pop(ACCEPTED, 0), counts,
        outcomes.get((client, "sent"), 0) + outcomes.get((client, "partial"), 0),
        deferred.get(client, 0), outcomes.get((client, "dead"), 0) + outcomes.get((client, "expired"), 0),
        sorted(latencies.get(client, []))) for client, counts in sorted(events.items())]


def prune(db: Db, before: float, limit: int) -> int:
    """Delete up to `limit` events older than `before` (the quarantine waits for a person)."""
    return db.execute("DELETE FROM relay_event WHERE id IN (SELECT id FROM relay_event WHERE at < ? "
                      "ORDER BY at LIMIT ?)", (before, limit)).rowcount
