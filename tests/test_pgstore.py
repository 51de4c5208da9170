"""notifier.pgstore: the store on a real PostgreSQL — the schema from the one declaration, versions
refused or upgraded, failures that say what to do with the right exit code, and a server restart
survived. The store's own behaviour is tested on both backends in tests/test_store.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from notifier import snapshots, sqldb
from notifier.errors import EXIT_BUSY, EXIT_CONFIG
from notifier.pgstore import DatabaseRefused, DatabaseUnreachable, PgStore, schema_version
from notifier.secrets import Secret
from notifier.store import _MIGRATIONS, _V3, SCHEMA_VERSION, StateTooNew, Store
from tests.servers.postgres import PASSWORD, Postgres


def columns_pg(url: str) -> dict[str, set[str]]:
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT table_name, column_name FROM information_schema.columns "
                          "WHERE table_schema = 'public'").fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


def columns_sqlite(path: Path) -> dict[str, set[str]]:
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        db.close()


def test_both_backends_get_the_same_tables_and_columns_from_one_declaration(
        pg_url: str, tmp_path: Path) -> None:
    PgStore(Secret(pg_url)).close()
    Store(tmp_path / "state.db").close()
    pg = columns_pg(pg_url)
    assert pg.pop("schema_version") == {"version"}  # SQLite keeps it in PRAGMA user_version
    assert pg.pop("fleet_member")  # the fleet's own tables (notifier.fleet)
    assert pg.pop("fleet_check")
    assert pg == columns_sqlite(tmp_path / "state.db")


def test_the_schema_version_is_recorded_and_a_second_open_changes_nothing(pg_url: str) -> None:
    PgStore(Secret(pg_url)).close()
    store = PgStore(Secret(pg_url))
    try:
        with store.locked() as conn:
            assert schema_version(conn) == SCHEMA_VERSION
    finally:
        store.close()


def test_a_newer_schema_is_refused_before_anything_is_written(pg_url: str) -> None:
    PgStore(Secret(pg_url)).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StateTooNew, match="newer than this notifier understands") as refused:
        PgStore(Secret(pg_url))
    assert refused.value.exit_code == EXIT_CONFIG
    assert PASSWORD not in str(refused.value)
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone() == (99,)


def test_an_older_schema_is_upgraded_in_place_keeping_its_rows(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as db:
        for statement in sqldb.schema_script(_V3):
            db.execute(statement)
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (3)")
        db.execute("INSERT INTO watcher (name, last_check) VALUES ('prices', 1.0)")
        db.execute("INSERT INTO snapshot (name, taken_at, content) VALUES ('prices', 1.0, %s)",
                   (snapshots.whole("price 4.00"),))
    store = PgStore(Secret(pg_url))
    try:
        assert store.state("prices").last_check == 1.0
        store.record_success("prices", 2.0, {}, "price 4.20", history=3)
        assert [v.text for v in store.versions("prices")] == ["price 4.20", "price 4.00"]
        with store.locked() as conn:
            assert schema_version(conn) == SCHEMA_VERSION == _MIGRATIONS[-1][0]
    finally:
        store.close()


def test_a_wrong_password_is_a_config_error_that_does_not_show_the_password(
        postgres: Postgres, pg_url: str) -> None:
    wrong = pg_url.replace(PASSWORD, "Not-The-Password-77")
    with pytest.raises(DatabaseRefused, match="refused notifier's login") as refused:
        PgStore(Secret(wrong))
    assert refused.value.exit_code == EXIT_CONFIG
    assert "Not-The-Password-77" not in str(refused.value)
    assert "fix the user, password or database name" in str(refused.value)


def test_an_unreachable_database_is_a_temporary_failure(postgres: Postgres) -> None:
    closed = Postgres.free_port()
    url = f"postgresql://notifier:{PASSWORD}@127.0.0.1:{closed}/x"
    with pytest.raises(DatabaseUnreachable, match="cannot be reached") as unreachable:
        PgStore(Secret(url))
    assert unreachable.value.exit_code == EXIT_BUSY
    assert PASSWORD not in str(unreachable.value)


def test_the_store_reconnects_after_the_server_restarts(postgres: Postgres, pg_url: str) -> None:
    store = PgStore(Secret(pg_url))
    try:
        store.record_success("w", 1.0, {}, "v1", history=3)
        postgres.restart()
        with pytest.raises(DatabaseUnreachable, match="checks pause"):  # the dropped connection
            store.record_success("w", 2.0, {}, "v2", history=3)
        store.record_success("w", 3.0, {}, "v3", history=3)  # the next call reconnects
        assert [v.text for v in store.versions("w")] == ["v3", "v1"]
    finally:
        store.close()
