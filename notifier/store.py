"""The state database: last result and bounded history per watcher, and the outbox.

One SQLite file in WAL mode. Every check is one transaction, and a detected change writes
the new snapshot and the queued alert in that same transaction, so a crash can lose neither
one without the other: either the change is still "new" on the next run, or its alert is
waiting in the outbox. A database that cannot be opened is reported, never reset.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notifier.errors import StateError

SCHEMA_VERSION = 2  # 2: digest table
_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS digest_due ON digest(due);
"""


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


class Store:
    """Thread-safe access to the state database (one connection, one lock)."""

    def __init__(self, path: Path, readonly: bool = False, busy_timeout: float = 10.0) -> None:
        """`busy_timeout`: how long to wait for another process's write before giving up."""
        self.path = path
        self._lock = threading.Lock()
        self._db = self._open(path, readonly, busy_timeout)

    @staticmethod
    def _open(path: Path, readonly: bool, busy_timeout: float) -> sqlite3.Connection:
        try:
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True)
            uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
            db = sqlite3.connect(uri, uri=True, timeout=busy_timeout, check_same_thread=False,
                                 isolation_level=None)
            if not readonly:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL survives process crashes
                _migrate(db)
            return db
        except sqlite3.DatabaseError as exc:
            raise StateError(_explain(path, exc)) from None
        except OSError as exc:
            raise StateError(f"The state directory {path.parent} cannot be used ({exc.strerror}); "
                             f"make it writable for notifier or set state_dir in the config.") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise StateError(_explain(self.path, exc)) from None

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cur = self._db.execute(sql, args)
                cur.row_factory = sqlite3.Row
                return cur.fetchall()
            except sqlite3.DatabaseError as exc:
                raise StateError(_explain(self.path, exc)) from None

    # -- watchers ---------------------------------------------------------------------------

    def state(self, name: str) -> WatcherState:
        rows = self._query("SELECT w.*, (SELECT content FROM snapshot s WHERE s.name = w.name "
                           "ORDER BY id DESC LIMIT 1) AS content FROM watcher w WHERE name = ?",
                           (name,))
        return _state(rows[0]) if rows else WatcherState(name)

    def states(self) -> dict[str, WatcherState]:
        rows = self._query("SELECT w.*, NULL AS content FROM watcher w")
        return {r["name"]: _state(r) for r in rows}

    def history(self, name: str) -> list[tuple[float, str]]:
        rows = self._query("SELECT taken_at, content FROM snapshot WHERE name = ? ORDER BY id DESC",
                           (name,))
        return [(r["taken_at"], r["content"]) for r in rows]

    def record_success(self, name: str, now: float, meta: Mapping[str, str],
                       content: str | None, history: int, alerts: Sequence[Alert] = ()) -> None:
        """Record a successful check; `content` is None when nothing changed.

        The snapshot, the trimmed history, the cleared failure count and any alerts (a change,
        a recovery) commit together.
        """
        with self._tx() as db:
            _upsert(db, name)
            db.execute("UPDATE watcher SET last_check = ?, meta = ?, failures = 0, "
                       "error_alerted_at = NULL WHERE name = ?", (now, json.dumps(dict(meta)), name))
            if content is not None:
                db.execute("INSERT INTO snapshot (name, taken_at, content) VALUES (?, ?, ?)",
                           (name, now, content))
                db.execute("UPDATE watcher SET last_change = ? WHERE name = ?", (now, name))
                db.execute("DELETE FROM snapshot WHERE name = ? AND id NOT IN (SELECT id FROM "
                           "snapshot WHERE name = ? ORDER BY id DESC LIMIT ?)", (name, name, history))
            _enqueue(db, alerts)

    def record_failure(self, name: str, now: float, error: str, alerts: Sequence[Alert] = ()) -> None:
        """Count a failed check; with an error alert, remember when it was sent."""
        with self._tx() as db:
            _upsert(db, name)
            db.execute("UPDATE watcher SET last_check = ?, last_error = ?, last_error_at = ?, "
                       "failures = failures + 1 WHERE name = ?", (now, error, now, name))
            if alerts:
                db.execute("UPDATE watcher SET error_alerted_at = ? WHERE name = ?", (now, name))
            _enqueue(db, alerts)

    def forget(self, names: Sequence[str]) -> None:
        """Drop state of watchers no longer configured (`notifier prune`)."""
        with self._tx() as db:
            for name in names:
                db.execute("DELETE FROM snapshot WHERE name = ?", (name,))
                db.execute("DELETE FROM watcher WHERE name = ?", (name,))

    # -- outbox -----------------------------------------------------------------------------

    def enqueue(self, alerts: Sequence[Alert]) -> None:
        with self._tx() as db:
            _enqueue(db, alerts)

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
            _enqueue(db, [message])

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
            return [_row(r) for r in cur.fetchall()]

    def claims(self) -> list[str]:
        """Owners that hold claims right now (to find senders that died holding some)."""
        return [r["claimed_by"] for r in self._query(
            "SELECT DISTINCT claimed_by FROM outbox WHERE claimed_by IS NOT NULL")]

    def unclaim(self, owner: str) -> int:
        """Drop `owner`'s claims, once it is known to be dead."""
        with self._tx() as db:
            return db.execute("UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
                              "WHERE claimed_by = ?", (owner,)).rowcount

    def delivered(self, row_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def reschedule(self, row_id: int, state: str, error: str, not_before: float,
                   recipients: Sequence[str] | None = None) -> None:
        """Put a message back as pending (retry later), held or dead, keeping it whole."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET state = ?, last_error = ?, not_before = ?, "
                       "attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL, "
                       "recipients = COALESCE(?, recipients) WHERE id = ?",
                       (state, error, not_before,
                        json.dumps(list(recipients)) if recipients is not None else None, row_id))

    def release(self, states: Sequence[str] = ("held",), now: float | None = None) -> int:
        """Make held (or dead) messages due again; returns how many."""
        marks = ",".join("?" * len(states))
        with self._tx() as db:
            cur = db.execute(f"UPDATE outbox SET state = 'pending', not_before = ?, claimed_by = NULL, "  # noqa: S608
                             f"claimed_until = NULL WHERE state IN ({marks})",
                             (time.time() if now is None else now, *states))
            return cur.rowcount

    def outbox(self) -> list[OutboxRow]:
        return [_row(r) for r in self._query("SELECT * FROM outbox ORDER BY id")]

    def outbox_counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
        counts = {"pending": 0, "held": 0, "dead": 0}
        counts.update({r["state"]: r["n"] for r in rows})
        return counts


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} is newer than this notifier "
                                    f"understands ({SCHEMA_VERSION})")
    if version < SCHEMA_VERSION:
        db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")


def _explain(path: Path, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return (f"The state database {path} is locked by another process; stop the other "
                f"notifier or wait for it to finish.")
    if "readonly" in text or "unable to open" in text:
        return (f"The state database {path} cannot be written; make {path.parent} writable "
                f"for notifier or set state_dir in the config.")
    return (f"The state database {path} cannot be used ({text}); it was left as it is. Move it "
            f"aside to start fresh, or restore it from a backup.")


def _upsert(db: sqlite3.Connection, name: str) -> None:
    db.execute("INSERT OR IGNORE INTO watcher (name) VALUES (?)", (name,))


def _enqueue(db: sqlite3.Connection, alerts: Sequence[Alert]) -> None:
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


def _state(r: sqlite3.Row) -> WatcherState:
    return WatcherState(
        name=r["name"], content=r["content"], meta=json.loads(r["meta"] or "{}"),
        last_check=r["last_check"], last_change=r["last_change"], last_error=r["last_error"],
        last_error_at=r["last_error_at"], failures=r["failures"],
        error_alerted_at=r["error_alerted_at"],
    )


def _row(r: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        message_id=r["message_id"], kind=r["kind"], watcher=r["watcher"], account=r["account"],
        sender=r["sender"], recipients=tuple(json.loads(r["recipients"])), body=bytes(r["body"]),
        not_before=r["not_before"], id=r["id"], state=r["state"], attempts=r["attempts"],
        created=r["created"], last_error=r["last_error"],
    )
