"""The state in PostgreSQL, for several daemons sharing one list of watchers.

`PgStore` is the store (notifier.store) with a psycopg connection behind the `Db` seam: every
method, and so every transaction boundary ("the snapshot and its alert commit together"), is the
SQLite store's own code; only opening, transactions, the schema version and error messages are
PostgreSQL's here. Statements are translated from the store's SQLite dialect once each
(notifier.sqldb), and the schema is the store's own migration scripts, translated.

The schema version lives in a one-row table `schema_version` (SQLite keeps it in PRAGMA
user_version). Migrations take a transaction-scoped advisory lock, so daemons starting together
upgrade once; a database newer than this notifier is refused before anything is written.

The URL carries the password (from the YAML, an environment variable or a credential): it is held
as a Secret, so the log filter masks it, and it is never put in an error message or a child's
environment. A lost connection (a database restart) is reopened by the next transaction; until
then every store call fails with a StateError that says checks pause.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo
from psycopg.rows import RowMaker
from psycopg.types.numeric import NumericLoader

from notifier import sqldb
from notifier.errors import EXIT_BUSY, EXIT_CONFIG, StateError
from notifier.secrets import Secret
from notifier.sqldb import Row
from notifier.store import OutboxRow, Queued, StateTooNew, Store, enqueue_alerts, outbox_row

_T = TypeVar("_T")

CONNECT_TIMEOUT = 10  # seconds: an unreachable host is an error at start, not a hang
MIGRATION_LOCK = 0x6E6F7469  # pg_advisory_xact_lock key ("noti") serialising schema upgrades
UNREACHABLE = "cannot be reached"  # the words of classify()'s message for a database that is away
LEASE_LOST = "claim expired before the result was recorded"  # the words of LeaseLost's message
DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"  # leases are timed by the database's one clock

# The fleet's own tables (notifier.fleet), PostgreSQL only: which daemons run, and each watcher's
# next due time with the claim on it. Created if missing after the store's migrations.
FLEET_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fleet_member (id TEXT PRIMARY KEY, host TEXT NOT NULL, "
    "pid INTEGER NOT NULL, version TEXT NOT NULL, fingerprint TEXT NOT NULL, "
    "started DOUBLE PRECISION NOT NULL, heartbeat DOUBLE PRECISION NOT NULL, "
    "health TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE IF NOT EXISTS fleet_check (name TEXT PRIMARY KEY, due DOUBLE PRECISION NOT NULL, "
    "claimed_by TEXT, claimed_until DOUBLE PRECISION)",
    "CREATE INDEX IF NOT EXISTS fleet_check_due ON fleet_check (due)",
    "CREATE INDEX IF NOT EXISTS fleet_check_claimed ON fleet_check (claimed_by) WHERE claimed_by IS NOT NULL",
)


class DatabaseUnreachable(StateError):
    """The database server cannot be reached (yet): systemd retries the start later."""

    exit_code = EXIT_BUSY


class DatabaseRefused(StateError):
    """The server refused the login (wrong password, unknown role or database): retrying
    cannot fix it, so systemd must not loop."""

    exit_code = EXIT_CONFIG


class PgRow(tuple[Any, ...]):
    """A row by position or by column name, like sqlite3.Row."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _pg_rows(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    """psycopg row factory: each row a PgRow sharing one name → position map per result."""
    index = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> PgRow:
        row = PgRow(values)
        row._index = index
        return row

    return make


class _Number(NumericLoader):
    """NUMERIC as int or float: PostgreSQL sums BIGINT columns to NUMERIC, and the store's
    callers expect what SQLite gives them, not Decimal."""

    def load(self, data: Any) -> int | float:  # type: ignore[override]
        value = super().load(data)
        return int(value) if value == value.to_integral_value() else float(value)


class _Cursor:
    """A psycopg cursor as the store's `sqldb.Cursor`."""

    row_factory: object = None  # see sqldb.Cursor

    def __init__(self, cursor: psycopg.Cursor[PgRow]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> PgRow | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[PgRow]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[PgRow]:
        return iter(self.fetchall())


class PgDb:
    """A psycopg connection as the store's `sqldb.Db`: statements arrive in SQLite's dialect."""

    def __init__(self, conn: psycopg.Connection[PgRow]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> _Cursor:
        return _Cursor(self.conn.execute(sqldb.statement(sql), list(parameters)))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> _Cursor:
        cursor = self.conn.cursor()
        cursor.executemany(sqldb.statement(sql), [list(p) for p in parameters])
        return _Cursor(cursor)


def describe(url: Secret) -> str:
    """The URL without its password, for messages: postgresql://user@host:port/dbname."""
    try:
        parts = conninfo.conninfo_to_dict(url.reveal())
    except psycopg.ProgrammingError:
        return "postgresql://(an unreadable URL)"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{parts.get('host', 'localhost')}{port}/{parts.get('dbname', '')}"


def password_of(url: str) -> str | None:
    """The password written in a postgresql:// URL itself, if any (config warns about it)."""
    try:
        value = conninfo.conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        return None
    return None if value is None else str(value)


def connect(url: Secret, name: str = "notifier") -> psycopg.Connection[PgRow]:
    """Open a connection in autocommit mode (the store opens its own transactions), or raise
    DatabaseUnreachable / DatabaseRefused with what to do."""
    password = password_of(url.reveal())
    if password:
        Secret(password)  # known to the log filter on its own too, wherever a message quotes it
    try:
        conn = psycopg.connect(url.reveal(), autocommit=True, row_factory=_pg_rows,
                               connect_timeout=CONNECT_TIMEOUT,
                               application_name=f"{name} {socket.gethostname()} {os.getpid()}")
        conn.adapters.register_loader("numeric", _Number)
        return conn
    except psycopg.OperationalError as exc:
        raise classify(url, exc) from None
    except psycopg.ProgrammingError as exc:  # a URL psycopg cannot parse
        raise DatabaseRefused(f"The store URL cannot be read ({_first_line(exc)}); write it as "
                              f"postgresql://user@host/dbname.") from None


# Words of libpq's messages that mean the server answered and said no: retrying cannot help.
# (libpq gives no SQLSTATE for a failed login, so its text is all there is.)
_REFUSALS = ("password authentication failed", "no password supplied", "does not exist",
             "no pg_hba.conf entry", "authentication failed", "permission denied")


def classify(url: Secret, exc: psycopg.Error) -> StateError:
    """The one place a database failure becomes an error with an exit code and a hint."""
    where, text = describe(url), _first_line(exc)
    if any(word in text for word in _REFUSALS):
        return DatabaseRefused(f"The database {where} refused notifier's login ({text}); fix the "
                               f"user, password or database name in the store URL.")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnreachable(f"The database {where} {UNREACHABLE} ({text}); checks pause "
                                   f"until it answers again. Check that PostgreSQL runs and that "
                                   f"this host may connect to it.")
    return StateError(f"The database {where} failed a statement ({text}); it was left as it is.")


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")[0].split())


class _Rollback(Exception):  # not an error: "undo this transaction, quietly"
    """Raised inside a transaction to roll it back without an error."""


class LeaseLost(StateError):
    """This daemon's claim on a check expired (it was partitioned or paused) before its result
    was recorded: another daemon has the check now, so this result is dropped, not written."""


@dataclass
class Fence:
    """A claim the result of a check must still hold when it is recorded: `owner` holds watcher
    `name`, and recording moves its due time on to `next_due(now)`, now being when the result
    is recorded (a check that ran late serves the period it ran in). `recorded` says it was."""

    name: str
    owner: str
    next_due: Callable[[float], float]
    recorded: bool = False


class PgStore(Store):
    """The store on a PostgreSQL database (see the module's docstring)."""

    def __init__(self, url: Secret, readonly: bool = False, lease: float = 30.0) -> None:
        self.url = url
        self.readonly = readonly
        self.lease = lease  # seconds an outbox claim lasts (notifier.fleet: and a check's)
        self._fence = threading.local()
        self.path = Path(describe(url))  # where, for messages; there is no file
        self._lock = threading.Lock()
        self._conn = connect(url)
        try:
            self._limit_idle(self._conn)
            self._db: PgDb = PgDb(self._conn)  # type: ignore[assignment]
            migrate(self._conn, url, readonly)
        except BaseException:
            self._conn.close()
            raise

    def _limit_idle(self, conn: psycopg.Connection[PgRow]) -> None:
        """Have the server end this session when a transaction of it sits idle for a lease. A
        daemon cut off between a statement and its COMMIT leaves the transaction open on the
        server, with the row locks it took (its claims, renewed); the others skip locked rows,
        so without this its checks would wait until the kernel gives up on the path, hours on."""
        try:
            conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                         (str(max(1, round(self.lease * 1000))),))
        except psycopg.Error as exc:
            raise classify(self.url, exc) from None

    def _reconnect(self) -> None:
        """Reopen a connection the server dropped (a restart), before the next statement."""
        if self._conn.broken or self._conn.closed:
            self._conn = connect(self.url)
            self._limit_idle(self._conn)
            self._db = PgDb(self._conn)

    @contextmanager
    def _tx(self, writes: bool = True) -> Iterator[PgDb]:
        """One transaction. A writing one in a thread running a claimed check first checks the
        check's fence (see `fenced`): every write a check makes is its result."""
        with self._lock:
            try:
                self._reconnect()
                with self._conn.transaction():
                    fence: Fence | None = getattr(self._fence, "value", None) if writes else None
                    if fence is not None:
                        self._check_fence(self._db, fence)
                    yield self._db
            except _Rollback:
                return
            except psycopg.Error as exc:
                raise classify(self.url, exc) from None

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._tx(writes=False) as db:
            return list(db.execute(sql, args).fetchall())

    def _read(self, reader: Callable[..., _T], *args: Any) -> _T:
        with self._tx(writes=False) as db:
            return reader(db, *args)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def moved(self) -> str | None:
        return None  # no file to be deleted or replaced

    def gone_error(self) -> None:
        return None

    def checkpoint(self) -> None:
        """PostgreSQL checkpoints by itself."""

    def rescue(self, dest: Path) -> None:
        raise StateError(f"{self.path} is a PostgreSQL database; back it up with pg_dump.")

    def detach_journal(self, keep_wal_as: Path | None = None) -> None:
        raise StateError(f"{self.path} is a PostgreSQL database; it has no journal file.")

    def log_listing(self, since: float | None, watcher: str | None, status: str | None, head: str,
                    tail: str, nobody: str) -> list[tuple[float, float | None, str, str]]:
        """As Store.log_listing, formatted here: PostgreSQL has no printf. `%-!16s` is SQLite's
        "width in characters", which is what Python's % always counts."""
        head = head.replace("%-!", "%-")
        return [(e.finished, e.latency,
                 head % (e.status, e.kind, e.watcher or "-", e.account or nobody, e.attempts),
                 tail % (e.recipients[0].address if e.recipients else "-",
                         f" +{len(e.recipients) - 1}" if len(e.recipients) > 1 else "",
                         e.message_id, e.subject))
                for e in self.log_entries(since, watcher, status)]

    # -- several daemons on one database ------------------------------------------------------

    @contextmanager
    def fenced(self, fence: Fence) -> Iterator[None]:
        """While a claimed check runs in this thread (checks run in a pool: each thread has its
        own): whatever it writes is written only while `fence` holds."""
        self._fence.value = fence
        try:
            yield
        finally:
            self._fence.value = None

    def _check_fence(self, db: PgDb, fence: Fence) -> None:
        """In the transaction that records the check's result: the claim must still be this
        daemon's and unexpired (by the database's clock), and the due time moves on with it."""
        due = fence.next_due(time.time())
        held = db.execute(f"UPDATE fleet_check SET due = ? WHERE name = ? AND claimed_by = ? AND "  # noqa: S608
                          f"claimed_until > {DB_NOW}", (due, fence.name, fence.owner)).rowcount
        fence.recorded = fence.recorded or bool(held)
        if not held:
            raise LeaseLost(f"watcher={fence.name}: this daemon's {LEASE_LOST} (paused or cut off "
                            f"from the database for longer than the lease); another daemon checks "
                            f"it, and this result was dropped.")

    def claim(self, owner: str, now: float, limit: int, lease: float = 600.0) -> list[OutboxRow]:
        """As Store.claim, but with row locks that other daemons skip (FOR UPDATE SKIP LOCKED)
        instead of waiting on, and this store's lease: a dead daemon's mail goes out after it."""
        with self._tx() as db:
            rows = db.execute(
                "UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id IN (SELECT id FROM "
                "outbox WHERE state = 'pending' AND not_before <= ? AND (claimed_until IS NULL OR "
                "claimed_until < ?) ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING *",
                (owner, now + self.lease, now, now, limit)).fetchall()
        return sorted((outbox_row(r) for r in rows), key=lambda r: r.id)

    @staticmethod
    def unreachable(reason: str) -> bool:
        """Whether an error message ends once the database answers again: classify()'s "cannot
        be reached", or LeaseLost's refused result (the daemon was cut off or paused; when it
        answers again, the check is another daemon's and may never be this one's again)."""
        return UNREACHABLE in reason or LEASE_LOST in reason

    def renew_claim(self, row_id: int, owner: str, now: float) -> bool:
        """Fencing for sends: only while `owner`'s claim on the message holds, and then for a
        whole lease more, so no other daemon can claim it while this one talks to the server.
        A daemon cut off from the database cannot ask, and so does not send."""
        with self._tx() as db:
            return bool(db.execute("UPDATE outbox SET claimed_until = ? WHERE id = ? AND claimed_by = ? "
                                   "AND claimed_until > ?", (now + self.lease, row_id, owner, now)).rowcount)

    def flush_digest(self, ids: Sequence[int], message: Queued) -> None:
        """As Store.flush_digest, once: when another daemon flushed these entries first, its
        digest is the one that goes, and this one is dropped."""
        with self._tx() as db:
            gone = db.execute("DELETE FROM digest WHERE id = ANY(?)", (list(ids),)).rowcount
            if gone != len(ids):
                raise _Rollback
            enqueue_alerts(db, [message])

    def connection(self) -> psycopg.Connection[PgRow]:
        """The open connection, for the fleet's own tables (notifier.fleet); under `locked()`."""
        return self._conn

    @contextmanager
    def locked(self) -> Iterator[psycopg.Connection[PgRow]]:
        """The connection under the store's lock and error boundary, in one transaction."""
        with self._tx():
            yield self._conn


# -- the schema ----------------------------------------------------------------------------------

def schema_version(conn: psycopg.Connection[PgRow]) -> int:
    """The version recorded in `schema_version`; 0 for a database notifier never used."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    version = conn.execute("SELECT version FROM schema_version").fetchone()
    return 0 if version is None else int(version[0])


def migrate(conn: psycopg.Connection[PgRow], url: Secret, readonly: bool = False) -> None:
    """Refuse a newer schema; bring an older one up to date, one version per transaction,
    under an advisory lock so two daemons starting together do each step once."""
    from notifier import store  # noqa: PLC0415 - the migrations as they are now, added ones included

    try:
        _refuse_newer(schema_version(conn), url)
        if readonly:
            return
        for version, script in store._MIGRATIONS:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                current = schema_version(conn)
                _refuse_newer(current, url)
                if current >= version:
                    continue
                for statement in sqldb.schema_script(script):
                    conn.execute(statement)
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            for statement in FLEET_SCHEMA:
                conn.execute(statement)
    except psycopg.Error as exc:
        raise classify(url, exc) from None


def _refuse_newer(version: int, url: Secret) -> None:
    from notifier.store import SCHEMA_VERSION  # noqa: PLC0415 - see migrate

    if version > SCHEMA_VERSION:
        raise StateTooNew(
            f"The database {describe(url)} was written by a newer notifier: its schema version "
            f"{version} is newer than this notifier understands ({SCHEMA_VERSION}). It was left as "
            f"it is; run the newer notifier on every host.")


