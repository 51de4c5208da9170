"""The state database: last result and bounded history per watcher, and the outbox.

One SQLite file in WAL mode. Every check is one transaction, and a detected change writes
the new snapshot and the queued alert in that same transaction, so a crash can lose neither
one without the other: either the change is still "new" on the next run, or its alert is
waiting in the outbox. A database that cannot be opened is reported, never reset.

The files are private (0600, the directory 0700) whatever the umask: SQLite gives the -wal and
-shm files the database's own mode, so creating the database 0600 covers all three. The WAL is
folded back often and cut back after, so the daemon keeps working with about 1 MB free. The
database remembers which file it was opened on: once that file is deleted or replaced, every
write is refused (`StateGoneError`) rather than going into a file nobody will ever read.

Looking back is recorded in the same transactions as the rest: every message that leaves the
outbox (delivered, dead-lettered or given up) becomes a send log entry in the transaction that
removes or changes its row, so a crash can neither lose nor double one; and each check bumps
its watcher's counters for the day (`check_day`: one row per watcher and day, not per check).
Versions are stored compressed, older ones as deltas (notifier.snapshots); readers get text.

The schema carries its version in `PRAGMA user_version`. An older database is brought up to
date in place, one step per version, each in its own transaction; a newer one (written by a
later notifier) is refused before anything is written to it.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from notifier import ledger, receipts, relaylog, snapshots
from notifier.errors import EXIT_CONFIG, StateError, UsageError
from notifier.ledger import Attempt, CheckDay, Deliveries, LogEntry
from notifier.sqldb import Db, Row

_T = TypeVar("_T")


class StateGoneError(StateError):
    """The database file was deleted or replaced while open; nothing more is written to it."""

class StateTooNew(StateError):
    """The database was written by a newer notifier; this one must not touch it."""

    exit_code = EXIT_CONFIG  # restarting cannot fix it: systemd must not loop


FILE_MODE = 0o600  # state.db, its -wal and -shm, and every file notifier keeps beside them
DIR_MODE = 0o700
WAL_AUTOCHECKPOINT = 100  # pages (about 400 KB): fold the WAL back into the database this often...
JOURNAL_SIZE_LIMIT = 512 * 1024  # ...and cut the WAL file back to this many bytes after
# SQLite's page cache per connection, in KiB (SQLite's default: 2,000). At 1,000 watchers the
# database is ~4.4 MB and the default cache fills up, though the OS caches the file anyway:
# 256 KiB takes the daemon at 1,000 url watchers from 45,460 to 43,340 kB RSS, CPU unchanged
# (0.97 -> 0.92 % of a core). A transaction bigger than the cache spills pages to the WAL before
# COMMIT, so a full disk can strike mid-statement: see _rollback.
CACHE_SIZE_KIB = 256
PRUNE_BATCH = 500  # send log rows deleted per transaction, so no check waits behind a prune
NO_LIMIT = 2**62  # LIMIT for "all": SQLite's -1 is an error in PostgreSQL

# Version 3, as notifier 0.1 created it (2 added the digest table, 3 the meta table). IF NOT
# EXISTS lets databases of versions 1 and 2 gain what they lack.
_V3 = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS watcher (
    name TEXT PRIMARY KEY,
    last_check REAL,
    last_change REAL,
    last_error TEXT,
    last_error_at REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    error_alerted_at REAL,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    taken_at REAL NOT NULL,
    content TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshot_by_name ON snapshot(name, id);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    watcher TEXT,
    kind TEXT NOT NULL,
    account TEXT,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'held', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL,
    created REAL NOT NULL,
    last_error TEXT,
    claimed_by TEXT,
    claimed_until REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, not_before);
CREATE TABLE IF NOT EXISTS digest (
    id INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL,
    due REAL NOT NULL,
    watcher TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS digest_due ON digest(due)
"""

# Version 4: the send log, per-day check counts, stable version numbers, and what each queued
# message met so far (recipients already accepted, deferrals by class). snapshot.content may
# hold compressed versions from now on (notifier.snapshots); rows of version 3 stay readable.
# check_day.d<i> counts the checks whose duration fell in bucket i of ledger.DURATION_BUCKETS:
# SQLite stores a zero in no bytes, and sums them for `notifier stats` with no parsing at all.
# send_log_by_time covers what statistics read, so they never visit the entries themselves.
_V4 = """
ALTER TABLE watcher ADD COLUMN versions INTEGER NOT NULL DEFAULT 0;
UPDATE watcher SET versions = (SELECT COUNT(*) FROM snapshot s WHERE s.name = watcher.name);
ALTER TABLE outbox ADD COLUMN accepted TEXT NOT NULL DEFAULT '{}';
ALTER TABLE outbox ADD COLUMN deferrals TEXT NOT NULL DEFAULT '{}';
CREATE TABLE send_log (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('sent', 'partial', 'dead', 'expired')),
    watcher TEXT,
    kind TEXT NOT NULL,
    account TEXT,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    reply_code INTEGER,
    reply TEXT NOT NULL,
    deferrals TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL NOT NULL,
    latency REAL,
    body BLOB
);
CREATE INDEX send_log_by_time ON send_log(finished, account, status, watcher, latency, deferrals);
CREATE INDEX send_log_by_watcher ON send_log(watcher, finished);
CREATE TABLE check_day (
    watcher TEXT NOT NULL,
    day INTEGER NOT NULL,
    checks INTEGER NOT NULL DEFAULT 0,
    changes INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    d0 INTEGER NOT NULL DEFAULT 0, d1 INTEGER NOT NULL DEFAULT 0, d2 INTEGER NOT NULL DEFAULT 0,
    d3 INTEGER NOT NULL DEFAULT 0, d4 INTEGER NOT NULL DEFAULT 0, d5 INTEGER NOT NULL DEFAULT 0,
    d6 INTEGER NOT NULL DEFAULT 0, d7 INTEGER NOT NULL DEFAULT 0, d8 INTEGER NOT NULL DEFAULT 0,
    d9 INTEGER NOT NULL DEFAULT 0, d10 INTEGER NOT NULL DEFAULT 0, d11 INTEGER NOT NULL DEFAULT 0,
    d12 INTEGER NOT NULL DEFAULT 0, d13 INTEGER NOT NULL DEFAULT 0, d14 INTEGER NOT NULL DEFAULT 0,
    d15 INTEGER NOT NULL DEFAULT 0, d16 INTEGER NOT NULL DEFAULT 0, d17 INTEGER NOT NULL DEFAULT 0,
    d18 INTEGER NOT NULL DEFAULT 0, d19 INTEGER NOT NULL DEFAULT 0, d20 INTEGER NOT NULL DEFAULT 0,
    d21 INTEGER NOT NULL DEFAULT 0, d22 INTEGER NOT NULL DEFAULT 0, d23 INTEGER NOT NULL DEFAULT 0,
    d24 INTEGER NOT NULL DEFAULT 0, d25 INTEGER NOT NULL DEFAULT 0, d26 INTEGER NOT NULL DEFAULT 0,
    d27 INTEGER NOT NULL DEFAULT 0, d28 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (watcher, day)
) WITHOUT ROWID;
CREATE INDEX check_day_by_day ON check_day(day)
"""

# Version 5: what came back from sent mail (notifier.receipts). A bounce per message and
# recipient (the unique key makes a second scan of the same report a no-op), with what the send
# log said of the message, so `notifier status` lists bounces without reading the log; and the
# latest result of each account's delivery checks (verify_every, watch_bounces).
_V5 = """
CREATE TABLE bounce (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    watcher TEXT,
    account TEXT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    status TEXT,
    reason TEXT NOT NULL,
    found REAL NOT NULL,
    UNIQUE (message_id, recipient)
);
CREATE INDEX bounce_by_time ON bounce(found);
CREATE TABLE mail_check (
    account TEXT NOT NULL,
    job TEXT NOT NULL,
    at REAL NOT NULL,
    verdict TEXT NOT NULL,
    latency REAL,
    detail TEXT NOT NULL,
    PRIMARY KEY (account, job)
)
"""

# (version, script): applied in order to a database older than the version, each in one
# transaction with the version bump. A fresh database runs them all.
# Version 6: the mail relay (notifier.relaylog). One event per message a client handed over,
# accepted or refused by a rule (the rate limits count the accepted ones of a client); refused
# messages kept for a person when `quarantine: true`, ready to enter the outbox as they are.
_V6 = """
CREATE TABLE relay_event (
    id INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    at REAL NOT NULL,
    rule TEXT NOT NULL,
    message_id TEXT
);
CREATE INDEX relay_event_by_client ON relay_event(client, rule, at);
CREATE INDEX relay_event_by_time ON relay_event(at);
CREATE INDEX relay_event_by_message ON relay_event(message_id);
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    message_id TEXT NOT NULL,
    account TEXT,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL
)
"""

_MIGRATIONS: tuple[tuple[int, str], ...] = ((3, _V3), (4, _V4), (5, _V5), (6, _V6))
SCHEMA_VERSION = _MIGRATIONS[-1][0]


@dataclass(frozen=True)
class Queued:
    """A rendered alert ready for the outbox: the exact bytes and the SMTP envelope."""

    message_id: str
    kind: str
    watcher: str | None
    account: str | None
    sender: str
    recipients: tuple[str, ...]
    body: bytes
    not_before: float = 0.0


@dataclass(frozen=True)
class DigestEntry:
    """A change waiting for its digest mail. `bucket` says who gets it and how (JSON);
    the first entry of a bucket fixes when the digest is due, `period` seconds later."""

    bucket: str
    watcher: str
    payload: str
    period: float
    created: float


Alert = Queued | DigestEntry


@dataclass(frozen=True)
class OutboxRow(Queued):
    id: int = 0
    state: str = "pending"
    attempts: int = 0
    created: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True)
class WatcherState:
    """What the store knows about one watcher."""

    name: str
    content: str | None = None  # last snapshot; None before the first successful check
    meta: Mapping[str, str] = field(default_factory=dict)
    last_check: float | None = None
    last_change: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    failures: int = 0
    error_alerted_at: float | None = None


@dataclass(frozen=True)
class Version:
    """One kept version of a watcher's content. Numbers count every version ever recorded
    for the name, so they stay put when old ones are trimmed."""

    number: int
    taken_at: float
    text: str


class Store:
    """Thread-safe access to the state database (one connection, one lock)."""

    def __init__(self, path: Path, readonly: bool = False, busy_timeout: float = 10.0) -> None:
        """`busy_timeout`: how long to wait for another process's write before giving up."""
        self.path = path
        self._lock = threading.Lock()
        self._db = self._open(path, readonly, busy_timeout)
        try:
            self._file = _file_id(path)  # (st_dev, st_ino) of the file opened, to notice a swap
        except OSError as exc:
            self._db.close()
            raise StateError(f"The state database {path} vanished as it was opened "
                             f"({exc.strerror}).") from None

    @staticmethod
    def _open(path: Path, readonly: bool, busy_timeout: float) -> sqlite3.Connection:
        try:
            if not readonly:
                make_private_dir(path.parent)
                _private_files(path)
            uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
            db = sqlite3.connect(uri, uri=True, timeout=busy_timeout, check_same_thread=False,
                                 isolation_level=None)
            try:
                _refuse_newer(db, path)  # before anything, the journal mode included, is written
                if not readonly:
                    db.execute("PRAGMA journal_mode = WAL")
                    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL survives process crashes
                    db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
                    db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
                    db.execute(f"PRAGMA cache_size = -{CACHE_SIZE_KIB}")
                    _migrate(db)
            except BaseException:
                db.close()
                raise
            return db
        except sqlite3.DatabaseError as exc:
            raise StateError(_explain(path, exc)) from None
        except OSError as exc:
            raise StateError(f"The state directory {path.parent} cannot be used ({exc.strerror}); "
                             f"make it writable for notifier or set state_dir in the config.") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def moved(self) -> str | None:
        """How the file at `path` stopped being the one this store has open: "deleted" or
        "replaced"; None while it still is (or when that cannot be told)."""
        try:
            now = _file_id(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None  # e.g. the directory became unreadable: SQLite will say what it can
        return None if now == self._file else "replaced"

    def gone_error(self) -> StateGoneError | None:
        """The error every write raises once the file was deleted or replaced, or None."""
        how = self.moved()
        if how is None:
            return None
        return StateGoneError(f"The state database {self.path} was {how} while notifier had it "
                              f"open; nothing more is written to the old file.")

    @contextmanager
    def _tx(self) -> Iterator[Db]:
        with self._lock:
            gone = self.gone_error()
            if gone is not None:
                raise gone
            try:
                with _immediate(self._db) as db:
                    yield db
            except sqlite3.DatabaseError as exc:
                raise StateError(_explain(self.path, exc)) from None

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            try:
                cur = self._db.execute(sql, args)
                cur.row_factory = sqlite3.Row
                return cur.fetchall()
            except sqlite3.DatabaseError as exc:
                raise StateError(_explain(self.path, exc)) from None

    def _read(self, reader: Callable[..., _T], *args: Any) -> _T:
        """Run a notifier.ledger reader on the connection, under the lock."""
        with self._lock:
            try:
                return reader(self._db, *args)
            except sqlite3.DatabaseError as exc:
                raise StateError(_explain(self.path, exc)) from None

    # -- identity and upkeep ----------------------------------------------------------------

    def state_id(self, create: bool = False) -> str | None:
        """The random id this database was given (kept in state.id beside it, see
        notifier.statedir); with `create`, give it one if it has none yet."""
        if create:
            with self._tx() as db:
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('state_id', ?)",
                           (secrets.token_hex(16),))
        rows = self._query("SELECT value FROM meta WHERE key = 'state_id'")
        return str(rows[0]["value"]) if rows else None

    def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it, giving its space back."""
        if self.gone_error() is None:  # a checkpoint would write into the orphan
            self._query("PRAGMA wal_checkpoint(TRUNCATE)")

    def rescue(self, dest: Path) -> None:
        """Copy the database as this connection sees it to `dest` (0600): after the file was
        deleted or replaced, the open connection holds the only copy of its state and outbox."""
        _private_files(dest)
        target = sqlite3.connect(dest)
        try:
            with self._lock:
                self._db.backup(target)
        except sqlite3.DatabaseError as exc:
            raise StateError(_explain(dest, exc)) from None
        finally:
            target.close()

    def detach_journal(self, keep_wal_as: Path | None = None) -> None:
        """Once the database file is gone, take its -wal and -shm away from the name (this
        connection keeps them open): SQLite would replay that log into whatever database takes
        the name next, and corrupt it. The log may hold the latest transactions: `rescue` first,
        or keep it under another name with `keep_wal_as`."""
        if self.moved() is None:
            raise StateError(f"{self.path} is still in place; its journal stays with it.")
        wal, shm = (self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm"))
        if keep_wal_as is not None and wal.exists():
            os.replace(wal, keep_wal_as)
        wal.unlink(missing_ok=True)
        shm.unlink(missing_ok=True)

    # -- watchers ---------------------------------------------------------------------------

    def state(self, name: str) -> WatcherState:
        rows = self._query("SELECT w.*, (SELECT content FROM snapshot s WHERE s.name = w.name "
                           "ORDER BY id DESC LIMIT 1) AS content FROM watcher w WHERE name = ?",
                           (name,))
        return _state(rows[0]) if rows else WatcherState(name)

    def states(self) -> dict[str, WatcherState]:
        rows = self._query("SELECT w.*, NULL AS content FROM watcher w")
        return {r["name"]: _state(r) for r in rows}

    def history(self, name: str, limit: int | None = None) -> list[tuple[float, str]]:
        """The kept versions of `name` as (taken_at, text), newest first (the `limit` newest)."""
        return [(v.taken_at, v.text) for v in self.versions(name, limit)]

    def versions(self, name: str, limit: int | None = None) -> list[Version]:
        """The kept versions of `name`, newest first, numbered (see `Version`). Each older one is
        a delta against the next newer, so the `limit` newest decode without the rest."""
        rows = self._query("SELECT taken_at, content, (SELECT versions FROM watcher WHERE name = ?) "
                           "AS total FROM snapshot WHERE name = ? ORDER BY id DESC LIMIT ?",
                           (name, name, NO_LIMIT if limit is None else limit))
        out: list[Version] = []
        newest = max(rows[0]["total"] or 0, len(rows)) if rows else 0
        for r in rows:
            text = snapshots.text_of(r["content"], out[-1].text if out else None)
            out.append(Version(newest - len(out), r["taken_at"], text))
        return out

    def record_success(self, name: str, now: float, meta: Mapping[str, str],
                       content: str | None, history: int, alerts: Sequence[Alert] = (),
                       seconds: float | None = None) -> None:
        """Record a successful check; `content` is None when nothing changed.

        The snapshot, the trimmed history, the cleared failure count, the day's check count,
        how long the check took (`seconds`, for `notifier stats`) and any alerts (a change, a
        recovery) commit together: one transaction per check is most of what a check costs
        the daemon once the page is fetched.
        """
        with self._tx() as db:
            _upsert(db, name)
            db.execute("UPDATE watcher SET last_check = ?, meta = ?, failures = 0, "
                       "error_alerted_at = NULL WHERE name = ?", (now, json.dumps(dict(meta)), name))
            changed = content is not None and _add_version(db, name, now, content, history)
            ledger.count_check(db, name, now, change=changed, seconds=seconds)
            enqueue_alerts(db, alerts)

    def record_failure(self, name: str, now: float, error: str, alerts: Sequence[Alert] = (),
                       seconds: float | None = None) -> None:
        """Count a failed check (and how long it took); with an error alert, remember when it
        was sent.

        `last_error_at` is when the current streak began ("failing since"): set by the first
        failure after a success, kept by the ones after it. SET expressions see the row as it
        was before the UPDATE, so `failures = 0` here means "this failure starts the streak".
        A failure recorded on top of a success of the same check (a user template that failed,
        see notifier.pipeline) counts as a failure, not as a second check.
        """
        with self._tx() as db:
            _upsert(db, name)
            (last_check,) = db.execute("SELECT last_check FROM watcher WHERE name = ?", (name,)).fetchone()
            db.execute("UPDATE watcher SET last_check = ?, last_error = ?, last_error_at = CASE "
                       "WHEN failures = 0 OR last_error_at IS NULL THEN ? ELSE last_error_at END, "
                       "failures = failures + 1 WHERE name = ?", (now, error, now, name))
            if alerts:
                db.execute("UPDATE watcher SET error_alerted_at = ? WHERE name = ?", (now, name))
            ledger.count_check(db, name, now, check=last_check != now, failure=True, seconds=seconds)
            enqueue_alerts(db, alerts)

    def forget(self, names: Sequence[str]) -> None:
        """Drop the state, history and check counts of watchers no longer configured
        (`notifier forget`). Their send log entries stay until they expire."""
        with self._tx() as db:
            for name in names:
                for table, column in (("snapshot", "name"), ("watcher", "name"), ("check_day", "watcher")):
                    db.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))  # noqa: S608

    def rename(self, old: str, new: str) -> None:
        """Give `old`'s state, history, check counts, send log entries and queued mail to `new`,
        in one transaction; refused when `new` already has state of its own."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM watcher WHERE name = ? UNION ALL SELECT 1 FROM snapshot "
                          "WHERE name = ? LIMIT 1", (new, new)).fetchone():
                raise UsageError(f"{new!r} already has state of its own; `notifier forget {new}` "
                                 f"drops it (after removing {new!r} from watchers.yaml).")
            if not db.execute("SELECT 1 FROM watcher WHERE name = ?", (old,)).fetchone():
                raise UsageError(f"no state is kept for a watcher named {old!r}.")
            for table, column in (("watcher", "name"), ("snapshot", "name"), ("check_day", "watcher"),
                                  ("send_log", "watcher"), ("outbox", "watcher"), ("digest", "watcher")):
                db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (new, old))  # noqa: S608

    def check_days(self, since: float) -> list[CheckDay]:
        """Check counts per watcher and day, from the day of `since` on."""
        return self._read(ledger.check_days, ledger.day_of(since))

    def check_totals(self, since: float) -> list[CheckDay]:
        """Check counts per watcher summed over the days from the day of `since` on (`day` is
        that first day), for statistics."""
        return self._read(ledger.check_totals, ledger.day_of(since))

    def busy_days(self, since: float) -> list[tuple[str, int, int, int]]:
        """(watcher, day, changes, failures) of the days from the day of `since` that had any."""
        return self._read(ledger.busy_days, ledger.day_of(since))

    # -- outbox -----------------------------------------------------------------------------

    def enqueue(self, alerts: Sequence[Alert]) -> None:
        with self._tx() as db:
            enqueue_alerts(db, alerts)

    def due_digests(self, now: float) -> dict[str, list[tuple[int, str]]]:
        """Digest entries whose digest is due, by bucket: (id, payload), oldest first."""
        rows = self._query("SELECT id, bucket, payload FROM digest WHERE due <= ? ORDER BY id", (now,))
        out: dict[str, list[tuple[int, str]]] = {}
        for r in rows:
            out.setdefault(r["bucket"], []).append((r["id"], r["payload"]))
        return out

    def flush_digest(self, ids: Sequence[int], message: Queued) -> None:
        """Replace digest entries by their digest mail, in one transaction."""
        with self._tx() as db:
            db.executemany("DELETE FROM digest WHERE id = ?", [(i,) for i in ids])
            enqueue_alerts(db, [message])

    def claim(self, owner: str, now: float, limit: int, lease: float = 600.0) -> list[OutboxRow]:
        """Take up to `limit` due messages for `owner`, so two senders never send one twice.

        A claim expires after `lease` seconds, so a sender that died does not strand mail.
        """
        with self._tx() as db:
            db.execute("UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id IN ("
                       "SELECT id FROM outbox WHERE state = 'pending' AND not_before <= ? AND "
                       "(claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT ?)",
                       (owner, now + lease, now, now, limit))
            cur = db.execute("SELECT * FROM outbox WHERE claimed_by = ? AND claimed_until > ? "
                             "ORDER BY id", (owner, now))
            cur.row_factory = sqlite3.Row
            return [outbox_row(r) for r in cur.fetchall()]

    def renew_claim(self, row_id: int, owner: str, now: float) -> bool:
        """Whether `owner` still holds its claim on a message, asked just before sending it.
        One sender per SQLite state directory: always (notifier.pgstore checks and extends it)."""
        return True

    def claims(self) -> list[str]:
        """Owners that hold claims right now (to find senders that died holding some)."""
        return [r["claimed_by"] for r in self._query(
            "SELECT DISTINCT claimed_by FROM outbox WHERE claimed_by IS NOT NULL")]

    def unclaim(self, owner: str) -> int:
        """Drop `owner`'s claims, once it is known to be dead."""
        with self._tx() as db:
            return db.execute("UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
                              "WHERE claimed_by = ?", (owner,)).rowcount

    def delivered(self, row_id: int, attempt: Attempt | None = None) -> None:
        """A server accepted the message for every recipient left: it leaves the outbox, and
        its send log entry is written in the same transaction."""
        self.delivered_all([(row_id, attempt or Attempt(time.time()))])

    def delivered_all(self, sent: Sequence[tuple[int, Attempt]]) -> None:
        """`delivered` for several messages in one transaction: a sender working through a
        backlog (a busy relay) pays one commit per few dozen messages, not one each."""
        with self._tx() as db:
            for row_id, attempt in sent:
                row = _locked_row(db, row_id)
                if row is None:
                    continue
                db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                ledger.log(db, row, json.loads(row["recipients"]), _accepted(row),
                           json.loads(row["deferrals"]), row["attempts"] + 1, attempt, "sent")

    def reschedule(self, row_id: int, state: str, error: str, not_before: float,
                   recipients: Sequence[str] | None = None, attempt: Attempt | None = None,
                   expired: bool = False) -> None:
        """Put a message back as pending (retry later), held or dead, keeping it whole.

        `recipients`: the ones still to deliver to, when the server took the others (listed in
        `attempt.accepted`). A dead letter has left the queue as far as the send log is
        concerned: its entry is written now, as `expired` when it was given up on (`expired`)
        rather than refused. It stays in the outbox for `notifier outbox retry`.
        """
        attempt = attempt or Attempt(time.time(), reply=error)
        with self._tx() as db:
            row = _locked_row(db, row_id)
            if row is None:
                return
            accepted = {**_accepted(row), **{addr: (reply, attempt.at)
                                             for addr, reply in attempt.accepted.items()}}
            deferrals: dict[str, int] = json.loads(row["deferrals"])
            if attempt.deferral and state == "pending":
                deferrals[attempt.deferral] = deferrals.get(attempt.deferral, 0) + 1
            left = list(recipients) if recipients is not None else json.loads(row["recipients"])
            db.execute("UPDATE outbox SET state = ?, last_error = ?, not_before = ?, "
                       "attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL, "
                       "recipients = ?, accepted = ?, deferrals = ? WHERE id = ?",
                       (state, error, not_before, json.dumps(left),
                        json.dumps({a: list(v) for a, v in accepted.items()}), json.dumps(deferrals),
                        row_id))
            if state == "dead":
                ledger.log(db, row, left, accepted, deferrals, row["attempts"] + 1, attempt,
                           "expired" if expired else "dead")

    def release(self, states: Sequence[str] = ("held",), now: float | None = None) -> int:
        """Make held (or dead) messages due again; returns how many."""
        marks = ",".join("?" * len(states))
        with self._tx() as db:
            cur = db.execute(f"UPDATE outbox SET state = 'pending', not_before = ?, claimed_by = NULL, "  # noqa: S608
                             f"claimed_until = NULL WHERE state IN ({marks})",
                             (time.time() if now is None else now, *states))
            return cur.rowcount

    def outbox(self) -> list[OutboxRow]:
        return [outbox_row(r) for r in self._query("SELECT * FROM outbox ORDER BY id")]

    def outbox_counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
        counts = {"pending": 0, "held": 0, "dead": 0}
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    def queued(self) -> list[tuple[str | None, str, dict[str, int]]]:
        """(account, state, deferrals by class) of every message in the outbox, for statistics."""
        return [(r["account"], r["state"], json.loads(r["deferrals"]))
                for r in self._query("SELECT account, state, deferrals FROM outbox")]

    # -- the send log -----------------------------------------------------------------------

    def log_entries(self, since: float | None = None, watcher: str | None = None,
                    status: str | None = None) -> list[LogEntry]:
        """Send log entries, oldest first, without the message bytes."""
        return self._read(ledger.entries, since, watcher, status)

    def log_listing(self, since: float | None, watcher: str | None, status: str | None, head: str,
                    tail: str, nobody: str) -> list[tuple[float, float | None, str, str]]:
        """Each entry as `notifier log` lists it, oldest first (see notifier.ledger.listing)."""
        return self._read(ledger.listing, since, watcher, status, head, tail, nobody)

    def log_entry(self, message_id: str) -> LogEntry | None:
        """One entry by Message-ID (with or without the angle brackets), bytes included when kept."""
        return self._read(ledger.entry, message_id)

    def log_watchers(self) -> list[str]:
        """Every watcher name the send log mentions."""
        return [r[0] for r in self._query("SELECT DISTINCT watcher FROM send_log WHERE watcher IS NOT NULL")]

    def deliveries(self, since: float) -> Deliveries:
        """What the send log says about deliveries finished since `since`, for statistics."""
        return self._read(ledger.deliveries, since)

    def prune(self, before: float, limit: int = PRUNE_BATCH) -> int:
        """Delete one batch of send log entries, day counts and bounces older than `before`;
        returns how many rows went, so a caller can come back for more without holding the
        database."""
        with self._tx() as db:
            return (ledger.prune(db, before, limit) + receipts.prune(db, before, limit)
                    + relaylog.prune(db, before, limit))

    # -- what came back (notifier.receipts) ---------------------------------------------------

    def record_bounce(self, message_ids: Sequence[str], recipients: Sequence[str], status: str | None,
                      reason: str, at: float,
                      alerts: Callable[[receipts.Sent, list[str]], Sequence[Alert]]) -> receipts.Sent | None:
        """Mark a bounce of one of notifier's messages (the first of `message_ids` in the send log)
        and queue `alerts(original, new recipients)` with it, in one transaction. `recipients`
        empty: every recipient of the message. Returns the original, or None when the send log
        has none of them or the bounce was recorded before."""
        with self._tx() as db:
            original = receipts.sent(db, message_ids)
            if original is None:
                return None
            new = receipts.record_bounce(db, original, recipients, status, reason, at)
            if not new:
                return None
            enqueue_alerts(db, alerts(original, new))
            return original

    def bounces(self, since: float, limit: int = 10) -> list[receipts.BounceRow]:
        return self._read(receipts.bounces, since, limit)

    def bounce_counts(self, since: float) -> dict[str, int]:
        return self._read(receipts.bounce_counts, since)

    def record_mail_check(self, check: receipts.MailCheck, alerts: Sequence[Alert] = ()) -> None:
        """Keep the latest result of a delivery check, and queue the alert about it with it."""
        with self._tx() as db:
            receipts.record_check(db, check)
            enqueue_alerts(db, alerts)

    def mail_checks(self) -> list[receipts.MailCheck]:
        return self._read(receipts.checks)

    # -- the mail relay (notifier.relaylog) ---------------------------------------------------

    def relay_accept(self, messages: Sequence[relaylog.Relayed], now: float,
                     rates: Sequence[tuple[str, float, int]] = ()) -> list[str | None]:
        """Queue relayed messages in one transaction with their rate checks and events; for
        each, the rule that refused it, or None once it is committed (and only then may its
        client get a 250)."""
        with self._tx() as db:
            return [relaylog.accept(db, message, now, rates) for message in messages]

    def relay_refuse(self, client: str, rule: str, now: float,
                     kept: relaylog.Quarantined | None = None) -> None:
        """Count a refused message, keeping it in the quarantine when `kept` is given."""
        with self._tx() as db:
            relaylog.refuse(db, client, rule, now, kept)

    def quarantine_keep(self, kept: relaylog.Quarantined, now: float) -> None:
        """Keep a message whose refusal was counted already (by `relay_accept`)."""
        with self._tx() as db:
            relaylog.keep(db, kept, now)

    def quarantined(self, ids: Sequence[int] = ()) -> list[relaylog.Quarantined]:
        return self._read(relaylog.quarantined, ids)

    def quarantine_release(self, ids: Sequence[int], now: float) -> list[int]:
        """Move quarantined messages into the outbox, in one transaction."""
        with self._tx() as db:
            return relaylog.release(db, ids, now)

    def quarantine_delete(self, ids: Sequence[int]) -> int:
        with self._tx() as db:
            return relaylog.delete(db, ids)

    def relay_figures(self, since: float) -> list[relaylog.ClientFigures]:
        return self._read(relaylog.figures, since)


def _schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _refuse_newer(db: sqlite3.Connection, path: Path) -> None:
    version = _schema_version(db)
    if version > SCHEMA_VERSION:
        raise StateTooNew(
            f"The state database {path} was written by a newer notifier: its schema version "
            f"{version} is newer than this notifier understands ({SCHEMA_VERSION}). It was left as it "
            f"is; run the newer notifier, or restore a backup taken before the upgrade.")


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the schema up to SCHEMA_VERSION, one step per transaction. The version is read
    again inside each transaction: another process may have done the step meanwhile."""
    for version, script in _MIGRATIONS:
        if _schema_version(db) >= version:
            continue
        with _immediate(db):
            if _schema_version(db) < version:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version}")


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed at the end, rolled back if anything fails, the COMMIT
    included (a full disk can refuse it and leave the transaction open, holding the lock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: sqlite3.Connection) -> None:
    """Undo the open transaction, if SQLite has not already. On SQLITE_FULL (or IOERR, NOMEM)
    in the middle of a statement SQLite rolls the whole transaction back by itself; a second
    ROLLBACK would then fail with "cannot rollback - no transaction is active" and that error,
    not the real one, would reach the user."""
    if db.in_transaction:
        db.execute("ROLLBACK")


# (sqlite error names, words of the message, explanation): the first that matches explains.
# Only a damaged file gets the advice to move it aside: a full disk or a permission problem
# says so, and the data in the file is fine.
_EXPLANATIONS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("SQLITE_BUSY", "SQLITE_LOCKED"), ("locked", "busy"),
     "The state database {path} is locked by another process; stop the other notifier or wait "
     "for it to finish."),
    (("SQLITE_FULL",), ("disk is full",),
     "The file system holding {path} is full ({text}); free some space there and notifier "
     "carries on by itself."),
    (("SQLITE_READONLY_DBMOVED",), (),
     "The state database {path} was deleted or replaced while notifier had it open ({text})."),
    (("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM"), ("readonly", "unable to open"),
     "The state database {path} cannot be written ({text}); make {dir} and the files in it "
     "writable for notifier or set state_dir in the config."),
    (("SQLITE_CORRUPT", "SQLITE_NOTADB"), ("not a database", "malformed"),
     "The state database {path} cannot be used ({text}); it was left as it is. Move it aside to "
     "start fresh, or restore it from a backup."),
    (("SQLITE_IOERR",), ("I/O error",),
     "The state database {path} could not be read or written ({text}); check the disk and the "
     "kernel log. The file was left as it is."),
)


def _explain(path: Path, exc: sqlite3.DatabaseError) -> str:
    """One sentence with the real reason and what to do about it."""
    text = str(exc)
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+: "SQLITE_FULL", "SQLITE_NOTADB"...
    for names, words, explanation in _EXPLANATIONS:
        if name.startswith(names) or any(word in text for word in words):
            return explanation.format(path=path, dir=path.parent, text=text)
    return f"The state database {path} cannot be used ({text}); it was left as it is."


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) with the last level 0700 whatever the umask.

    An existing directory is left alone: it may be shared on purpose, and the files in it are
    private anyway.
    """
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)  # the umask may have taken bits away


def _private_files(path: Path) -> None:
    """Create `path` empty if missing, and make it and its -wal/-shm files 0600.

    SQLite creates -wal and -shm with the mode of the database file, so this also decides
    theirs. Files of another owner are left as they are.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    os.close(fd)
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if name.stat().st_mode & 0o777 != FILE_MODE:
                os.chmod(name, FILE_MODE)
        except (FileNotFoundError, PermissionError):
            pass


def _file_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino)


def _upsert(db: Db, name: str) -> None:
    db.execute("INSERT OR IGNORE INTO watcher (name) VALUES (?)", (name,))


def enqueue_alerts(db: Db, alerts: Sequence[Alert]) -> None:
    now = time.time()
    for entry in (a for a in alerts if isinstance(a, DigestEntry)):
        db.execute("INSERT INTO digest (bucket, due, watcher, payload) VALUES (?, COALESCE("
                   "(SELECT MIN(due) FROM digest WHERE bucket = ?), ?), ?, ?)",
                   (entry.bucket, entry.bucket, entry.created + entry.period, entry.watcher,
                    entry.payload))
    db.executemany(
        # Only a repeated Message-ID is skipped; OR IGNORE would also hide NOT NULL failures.
        "INSERT INTO outbox (message_id, watcher, kind, account, sender, recipients, body, "
        "not_before, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
        [(a.message_id, a.watcher, a.kind, a.account, a.sender, json.dumps(list(a.recipients)),
          a.body, a.not_before, now) for a in alerts if isinstance(a, Queued)],
    )


def _state(r: Row) -> WatcherState:
    return WatcherState(
        name=r["name"], content=None if r["content"] is None else snapshots.text_of(r["content"]),
        meta=json.loads(r["meta"] or "{}"),
        last_check=r["last_check"], last_change=r["last_change"], last_error=r["last_error"],
        last_error_at=r["last_error_at"], failures=r["failures"],
        error_alerted_at=r["error_alerted_at"],
    )


def outbox_row(r: Row) -> OutboxRow:
    return OutboxRow(
        message_id=r["message_id"], kind=r["kind"], watcher=r["watcher"], account=r["account"],
        sender=r["sender"], recipients=tuple(json.loads(r["recipients"])), body=bytes(r["body"]),
        not_before=r["not_before"], id=r["id"], state=r["state"], attempts=r["attempts"],
        created=r["created"], last_error=r["last_error"],
    )


def _add_version(db: Db, name: str, now: float, content: str, history: int) -> bool:
    """Store `content` as the newest version, turning the one before into a delta against it,
    and trim to `history` versions. Returns whether there was a version before (a change)."""
    prev = db.execute("SELECT id, content FROM snapshot WHERE name = ? ORDER BY id DESC LIMIT 1",
                      (name,)).fetchone()
    if prev is not None:
        db.execute("UPDATE snapshot SET content = ? WHERE id = ?",
                   (snapshots.delta(snapshots.text_of(prev[1]), content), prev[0]))
    db.execute("INSERT INTO snapshot (name, taken_at, content) VALUES (?, ?, ?)",
               (name, now, snapshots.whole(content)))
    db.execute("UPDATE watcher SET last_change = ?, versions = versions + 1 WHERE name = ?", (now, name))
    db.execute("DELETE FROM snapshot WHERE name = ? AND id NOT IN (SELECT id FROM "
               "snapshot WHERE name = ? ORDER BY id DESC LIMIT ?)", (name, name, history))
    return prev is not None


def _locked_row(db: Db, row_id: int) -> Row | None:
    cur = db.execute("SELECT * FROM outbox WHERE id = ?", (row_id,))
    cur.row_factory = sqlite3.Row
    row: Row | None = cur.fetchone()
    return row


def _accepted(row: Row) -> dict[str, tuple[str, float]]:
    """Recipients a server took on earlier attempts: {address: (reply, when)}."""
    return {addr: (reply, at) for addr, (reply, at) in json.loads(row["accepted"]).items()}
