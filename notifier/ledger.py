"""What notifier keeps for looking back: the send log and each watcher's checks per day.

The functions here work on a connection inside notifier.store's transactions, so an entry is
written together with the change it records: a send log entry with the removal (or dead-letter
state) of its outbox row, a day's check counts with the check's result. Nothing here opens a
transaction or a database of its own.

The send log has one entry per message, keyed by Message-ID: a dead letter retried later and
then delivered updates its entry rather than adding a second one. Checks are counted per watcher
and local day, with their durations in fixed buckets (`DURATION_BUCKETS`), so a year of checks
every minute is a few hundred rows, not half a million.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NamedTuple

from notifier.sqldb import Db, Row

# Upper bounds (seconds) of the buckets check durations are counted in, per watcher and day:
# median and p95 come from these counts, to within the width of a bucket.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, float("inf"))
STATUSES = ("sent", "partial", "dead", "expired")
_CODE = re.compile(r"^([2-5]\d\d)\b")


@dataclass(frozen=True)
class Attempt:
    """How one delivery attempt of a queued message ended, as the sender saw it: what its row
    remembers, and what the send log keeps once the message leaves the outbox."""

    at: float  # when it ended
    reply: str = ""  # the server's last word ("250 2.0.0 Ok: queued"), or what went wrong
    accepted: Mapping[str, str] = field(default_factory=dict)  # recipients taken now: their reply
    refused: Mapping[str, str] = field(default_factory=dict)  # recipients refused: their reply
    deferral: str | None = None  # why it waits ("451", "rate limit 550", "connection"), if it does
    keep_body: bool = False  # keep the message bytes in the send log (`keep_sent: true`)


class RecipientResult(NamedTuple):
    """What became of one recipient of a logged message."""

    address: str
    status: str  # sent | dead | expired
    reply: str
    at: float


class LogEntry(NamedTuple):
    """One message that left the outbox: delivered (`sent`), to some recipients only
    (`partial`), refused for good (`dead`) or given up after failing too long (`expired`).
    A tuple rather than a dataclass: `notifier log` reads tens of thousands of them."""

    message_id: str
    status: str
    watcher: str | None
    kind: str
    account: str | None
    sender: str
    recipients: tuple[RecipientResult, ...]
    subject: str
    size: int
    attempts: int
    reply_code: int | None
    reply: str
    deferrals: Mapping[str, int]
    created: float  # queued, by the check that found the change
    finished: float  # accepted, or given up on
    latency: float | None  # created → accepted by the server, when anything was delivered
    body: bytes | None = None  # the message as sent, with `keep_sent: true`


class Deliveries(NamedTuple):
    """What statistics need of the send log, summed by SQLite."""

    by_status: list[tuple[str | None, str, int]]  # (account, status, entries)
    alerts: dict[str, int]  # watcher: entries that reached somebody (sent or partial)
    latencies: dict[str | None, list[float]]  # account: latencies, sorted
    deferrals: list[tuple[str | None, str, int]]  # (account, class, deferrals)


class CheckDay(NamedTuple):
    """A watcher's checks on one local day (`day` is a date ordinal)."""

    watcher: str
    day: int
    checks: int
    changes: int
    failures: int
    durations: tuple[int, ...]  # counts per DURATION_BUCKETS bucket


def day_of(ts: float) -> int:
    """The local calendar day of `ts`, as a date ordinal."""
    return date.fromtimestamp(ts).toordinal()


def bucket_of(seconds: float) -> int:
    return next(i for i, bound in enumerate(DURATION_BUCKETS) if seconds <= bound)


# -- writing, inside the caller's transaction --------------------------------------------------

def log(db: Db, message: Row, recipients: Sequence[str],
        accepted: Mapping[str, tuple[str, float]], deferrals: Mapping[str, int], attempts: int,
        attempt: Attempt, outcome: str) -> None:
    """Write (or rewrite) the entry of an outbox message that leaves the queue now.

    `message` is its outbox row; `recipients` those still in it, which now end as `outcome`
    (sent, dead or expired); `accepted` those that servers took on earlier attempts.
    """
    results = [RecipientResult(addr, "sent", reply, at) for addr, (reply, at) in accepted.items()]
    for addr in recipients:
        if addr in accepted:
            continue
        if outcome == "sent":
            results.append(RecipientResult(addr, "sent", attempt.reply, attempt.at))
        else:
            results.append(RecipientResult(addr, outcome, attempt.refused.get(addr) or attempt.reply,
                                           attempt.at))
    sent_at = [r.at for r in results if r.status == "sent"]
    status = outcome if not sent_at else "sent" if len(sent_at) == len(results) else "partial"
    body = bytes(message["body"])
    code = _CODE.match(attempt.reply)
    db.execute(
        "INSERT INTO send_log (message_id, status, watcher, kind, account, sender, recipients, "
        "subject, size, attempts, reply_code, reply, deferrals, created, finished, latency, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE "
        "SET status = excluded.status, watcher = excluded.watcher, account = excluded.account, "
        "recipients = excluded.recipients, attempts = excluded.attempts, "
        "reply_code = excluded.reply_code, reply = excluded.reply, deferrals = excluded.deferrals, "
        "finished = excluded.finished, latency = excluded.latency, body = excluded.body",
        (message["message_id"], status, message["watcher"], message["kind"], message["account"],
         message["sender"], json.dumps([list(r) for r in results]), subject_of(body), len(body),
         attempts, int(code.group(1)) if code else None, attempt.reply,
         json.dumps(dict(deferrals)), message["created"], attempt.at,
         min(sent_at) - message["created"] if sent_at else None,
         body if attempt.keep_body else None))


def count_check(db: Db, name: str, at: float, *, check: bool = True, change: bool = False,
                failure: bool = False, seconds: float | None = None) -> None:
    """Count a check of `name` (a change, a failure, and with `seconds` how long it took, in its
    bucket) on the day of `at`: one statement, since it runs in every check's transaction."""
    took = f"d{bucket_of(max(0.0, seconds or 0.0))}"  # without `seconds`, 0 is added to it
    db.execute(f"INSERT INTO check_day (watcher, day, checks, changes, failures, {took}) "  # noqa: S608
               "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (watcher, day) DO UPDATE SET "
               "checks = check_day.checks + excluded.checks, changes = check_day.changes + "
               "excluded.changes, failures = check_day.failures + excluded.failures, "
               f"{took} = check_day.{took} + excluded.{took}",
               (name, day_of(at), int(check), int(change), int(failure), int(seconds is not None)))


def prune(db: Db, before: float, limit: int) -> int:
    """Delete up to `limit` send log entries finished before `before`, and as many day rows
    of days before it; returns how many rows went."""
    gone = db.execute("DELETE FROM send_log WHERE id IN (SELECT id FROM send_log WHERE finished < ? "
                      "ORDER BY finished LIMIT ?)", (before, limit)).rowcount
    gone += db.execute("DELETE FROM check_day WHERE (watcher, day) IN (SELECT watcher, day FROM "
                       "check_day WHERE day < ? LIMIT ?)", (day_of(before), limit)).rowcount
    return gone


# -- reading -----------------------------------------------------------------------------------

_ENTRY = ("message_id, status, watcher, kind, account, sender, recipients, subject, size, attempts, "
          "reply_code, reply, deferrals, created, finished, latency")


def entries(db: Db, since: float | None = None, watcher: str | None = None,
            status: str | None = None) -> list[LogEntry]:
    """Log entries, oldest first, without their message bytes."""
    where, args = _where(since, watcher, status)
    rows = db.execute(f"SELECT {_ENTRY} FROM send_log{where} ORDER BY finished, id", args)  # noqa: S608
    return [_entry(r) for r in rows]


def listing(db: Db, since: float | None, watcher: str | None, status: str | None,
            head: str, tail: str, nobody: str) -> list[tuple[float, float | None, str, str]]:
    """The entries one line each, oldest first, as (finished, latency, head, tail): SQLite's
    printf writes `head` with status, kind, watcher (or "-"), account (or `nobody`) and attempts,
    and `tail` with the first recipient, " +N" for N more, the Message-ID and the subject.
    Written there, not in Python, they cost a third less of `notifier log` at 30,000 entries."""
    where, args = _where(since, watcher, status)
    columns = ("finished, latency, printf(?, status, kind, COALESCE(watcher, '-'), COALESCE(account, ?), "
               "attempts), printf(?, COALESCE(json_extract(recipients, '$[0][0]'), '-'), CASE WHEN "
               "json_array_length(recipients) > 1 THEN ' +' || (json_array_length(recipients) - 1) "
               "ELSE '' END, message_id, subject)")
    return db.execute(f"SELECT {columns} FROM send_log{where} ORDER BY finished",  # noqa: S608
                      [head, nobody, tail, *args]).fetchall()


def entry(db: Db, message_id: str) -> LogEntry | None:
    """The entry of one Message-ID (angle brackets optional), with the message if kept."""
    wanted = message_id.strip()
    wanted = wanted if wanted.startswith("<") else f"<{wanted}>"
    row = db.execute(f"SELECT {_ENTRY}, body FROM send_log WHERE message_id = ?",  # noqa: S608
                     (wanted,)).fetchone()
    return None if row is None else _entry(row[:-1])._replace(body=row[-1])


_BUCKETS = ", ".join(f"d{i}" for i in range(len(DURATION_BUCKETS)))


def check_days(db: Db, since_day: int) -> list[CheckDay]:
    rows = db.execute(f"SELECT watcher, day, checks, changes, failures, {_BUCKETS} FROM check_day "  # noqa: S608
                      "WHERE day >= ? ORDER BY watcher, day", (since_day,))
    return [CheckDay(r[0], r[1], r[2], r[3], r[4], r[5:]) for r in rows]


def check_totals(db: Db, since_day: int) -> list[CheckDay]:
    """Per watcher, the sums over the days from `since_day` (as one CheckDay of that day)."""
    sums = ", ".join(f"SUM(d{i})" for i in range(len(DURATION_BUCKETS)))
    totals = db.execute(f"SELECT watcher, ?, SUM(checks), SUM(changes), SUM(failures), {sums} "  # noqa: S608
                        "FROM check_day WHERE day >= ? GROUP BY watcher", (since_day, since_day))
    return [CheckDay(r[0], r[1], r[2], r[3], r[4], r[5:]) for r in totals]


def busy_days(db: Db, since_day: int) -> list[tuple[str, int, int, int]]:
    """(watcher, day, changes, failures) of each day from `since_day` with either."""
    return db.execute("SELECT watcher, day, changes, failures FROM check_day WHERE day >= ? "
                      "AND (changes > 0 OR failures > 0)", (since_day,)).fetchall()


def deliveries(db: Db, since: float) -> Deliveries:
    """Sums over the entries finished since `since`, read from the index that covers them."""
    scan = "FROM send_log INDEXED BY send_log_by_time WHERE finished >= ?"
    by_status = db.execute(f"SELECT account, status, COUNT(*) {scan} GROUP BY account, status",
                           (since,)).fetchall()
    alerts = dict(db.execute(f"SELECT watcher, COUNT(*) {scan} AND watcher IS NOT NULL AND status IN "
                             "('sent', 'partial') GROUP BY watcher", (since,)))
    latencies: dict[str | None, list[float]] = {}
    for account, latency in db.execute(f"SELECT account, latency {scan} AND latency IS NOT NULL "
                                       "ORDER BY account, latency", (since,)):
        latencies.setdefault(account, []).append(latency)
    deferrals = db.execute("SELECT s.account, d.key, SUM(CAST(d.value AS INTEGER)) FROM send_log s "
                           "INDEXED BY send_log_by_time, json_each(s.deferrals) d WHERE s.finished >= ? AND "
                           "s.deferrals != '{}' GROUP BY s.account, d.key", (since,)).fetchall()
    return Deliveries(by_status, alerts, latencies, deferrals)


_SUBJECT = re.compile(rb"^subject:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)
_FIELDS = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)*")  # well-formed


def subject_of(message: bytes) -> str:
    """The decoded Subject of a message, for the log; empty when it has none. A plain ASCII
    subject is read straight from the header (the email parser reads every header, and a
    busy relay logs hundreds of messages a second); encoded or 8-bit ones go to the parser,
    imported only then (the email package's header parsing is 0.6 MiB of a daemon)."""
    head = message.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    plain = _SUBJECT.search(head)
    if (plain is not None and plain.group(1).isascii() and b"=?" not in plain.group(1)
            and _FIELDS.fullmatch(head, 0, plain.start())):
        return " ".join(plain.group(1).decode("ascii").split())
    import email.policy  # noqa: PLC0415 - see the docstring
    from email.parser import BytesHeaderParser  # noqa: PLC0415

    try:
        parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        return " ".join(str(parsed.get("Subject", "")).split())
    except (ValueError, TypeError, IndexError):  # a header the parser cannot read: no subject
        return ""


def _where(since: float | None, watcher: str | None, status: str | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    for clause, value in (("finished >= ?", since), ("watcher = ?", watcher), ("status = ?", status)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _entry(r: Sequence[Any]) -> LogEntry:
    recipients = tuple(RecipientResult(*item) for item in json.loads(r[6]))
    deferrals = json.loads(r[12]) if r[12] != "{}" else {}
    return LogEntry(r[0], r[1], r[2], r[3], r[4], r[5], recipients, r[7], r[8], r[9], r[10], r[11],
                    deferrals, r[13], r[14], r[15])


