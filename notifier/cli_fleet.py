"""The commands of a PostgreSQL fleet: `notifier migrate` (a single machine's SQLite state into
the shared database), and what `status` and `reload` add when the store is PostgreSQL."""

from __future__ import annotations

import argparse
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from notifier import snapshots
from notifier.cli_common import load, open_store
from notifier.config import Config
from notifier.errors import EXIT_OK, StateError, UsageError
from notifier.statedir import StateDir
from notifier.store import Store

if TYPE_CHECKING:  # imported where used: psycopg (~20 MB) only for a config with `store:`
    from notifier.pgstore import PgStore

Register = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]

# Tables copied by `notifier migrate`, parents first; each holds only what SQLite's store wrote.
# A later table (from a newer migration) is copied too when both databases have it.
_STATE_TABLES = ("meta", "watcher", "snapshot", "outbox", "digest", "send_log", "check_day")
_FILLED = ("watcher", "snapshot", "outbox", "send_log")  # any row here: the database is in use


def add_commands(command: Register) -> None:
    p = command("migrate", cmd_migrate, "copy a single machine's SQLite state into the PostgreSQL "
                "store the config names (history, outbox, send log and all)")
    p.add_argument("--from", dest="source", required=True, metavar="sqlite:///PATH/state.db",
                   help="the SQLite state database to copy; stop the daemon that uses it first")


def cmd_migrate(args: argparse.Namespace) -> int:
    from notifier import pgstore  # noqa: PLC0415 - psycopg only with `store:`

    cfg = load(args)
    source = _sqlite_path(args.source)
    if cfg.store is None:
        raise UsageError("the config names no PostgreSQL store; add `store:` (or store_url_env / "
                         "store_url_credential) to watchers.yaml, then migrate again.")
    if not source.is_file():
        raise UsageError(f"{source} does not exist; give the path of the state.db to copy.")
    lock = StateDir(source.parent).acquire("migrate")  # no daemon may write it meanwhile
    try:
        Store(source).close()  # bring it up to this notifier's schema first, as a start would
        target = open_store(cfg, StateDir(cfg.state_dir))
        assert isinstance(target, pgstore.PgStore)
        try:
            copied = copy_state(source, target)
        finally:
            target.close()
    finally:
        lock.release()
    print(f"Copied {source} into {target.path}: " + ", ".join(f"{n} {t}" for t, n in copied.items())
          + ". Point every daemon at the PostgreSQL store and start them; keep the SQLite file as a "
            "backup.")
    return EXIT_OK


def _sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite://"):
        raise UsageError(f"--from must be a sqlite:///path/to/state.db URL, not {url!r}.")
    return Path(url.removeprefix("sqlite://"))


def copy_state(source: Path, target: PgStore) -> dict[str, int]:
    """Copy every row of the state tables in one transaction; refused into a database that
    already holds state. Identity counters continue after the copied ids."""
    lite = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        copied: dict[str, int] = {}
        with target.locked() as conn:
            for table in _FILLED:
                if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():  # noqa: S608
                    raise StateError(f"{target.path} already holds state (table {table} has rows); "
                                     f"migrate into an empty database.")
            conn.execute("DELETE FROM meta")
            for table in _tables(lite):
                columns, rows = _rows(lite, table)
                if rows:
                    marks = ", ".join(["%s"] * len(columns))
                    conn.cursor().executemany(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)  # noqa: S608
                    if "id" in columns:
                        conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                                     f"(SELECT MAX(id) FROM {table}))")
                copied[table] = len(rows)
        return copied
    finally:
        lite.close()


def _tables(lite: sqlite3.Connection) -> list[str]:
    have = {r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    later = sorted(have - set(_STATE_TABLES) - {"sqlite_sequence"})
    return [t for t in _STATE_TABLES if t in have] + later


def _rows(lite: sqlite3.Connection, table: str) -> tuple[list[str], list[Sequence[Any]]]:
    """A table's columns and rows; snapshot content written as text by schema 3 becomes bytes."""
    cur = lite.execute(f"SELECT * FROM {table}")  # noqa: S608
    columns = [d[0] for d in cur.description]
    rows: list[Sequence[Any]] = cur.fetchall()
    if table == "snapshot":
        at = columns.index("content")
        rows = [(*r[:at], snapshots.whole(r[at]) if isinstance(r[at], str) else r[at], *r[at + 1:])
                for r in rows]
    return columns, rows


# -- what `status` and `reload` add for a fleet ---------------------------------------------------

def fleet_lines(cfg: Config, store: Store) -> list[str]:
    """One line per daemon of the fleet, for `notifier status`."""
    if cfg.store is None:  # SQLite: one daemon, and no psycopg to import
        return []
    from notifier.fleet import members  # noqa: PLC0415 - psycopg only with `store:`
    from notifier.pgstore import PgStore  # noqa: PLC0415 - psycopg only with `store:`

    assert isinstance(store, PgStore)
    now = time.time()
    fleet = members(store)
    prints = {m.fingerprint for m in fleet}
    lines = [f"fleet: {len(fleet)} daemon(s) on {store.path}"
             + (" — their configs DIFFER; give every daemon the same file" if len(prints) > 1 else "")]
    return lines + [f"    {m.line(now)}" for m in fleet]


def reload_fleet(cfg: Config) -> str:
    """Tell every daemon on the config's PostgreSQL store to reload (LISTEN/NOTIFY)."""
    from notifier.fleet import members, request_reload  # noqa: PLC0415 - psycopg only with `store:`
    from notifier.pgstore import PgStore  # noqa: PLC0415 - psycopg only with `store:`

    store = open_store(cfg, StateDir(cfg.state_dir), readonly=True)
    assert isinstance(store, PgStore)
    try:
        request_reload(store, socket.gethostname())
        count = len(members(store))
    finally:
        store.close()
    return f"asked the {count} daemon(s) on {store.path} to reload it"
