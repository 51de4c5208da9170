"""notifier.store's schema versions: an older database is upgraded in place, a newer one refused.

The old database is tests/data/state-v3.sql, dumped from a database the previous release's
store.py wrote through its own API; every test here works on real SQLite files.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from notifier.errors import EXIT_CONFIG
from notifier.store import SCHEMA_VERSION, StateTooNew, Store

V3 = Path(__file__).parent / "data" / "state-v3.sql"


def v3_database(path: Path) -> Path:
    """A state database exactly as schema version 3 left it."""
    db = sqlite3.connect(path)
    db.executescript(V3.read_text())
    db.close()
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_version_3_database_is_upgraded_in_place_keeping_every_row(tmp_path: Path) -> None:
    path = v3_database(tmp_path / "state.db")
    store = Store(path)
    try:
        assert store.state_id() == "dce7e785a8b54a8bbb06f08a5bd51e65"
        prices = store.state("prices")
        assert (prices.content, prices.meta["etag"]) == ("price 4.00 USD\nshipping 5 USD\n", '"abf"')
        assert [(v.number, v.text) for v in store.versions("prices")] == [
            (3, "price 4.00 USD\nshipping 5 USD\n"), (2, "price 3.75 USD\nshipping 5 USD\n"),
            (1, "price 3.75 USD\nshipping free\n")]
        nginx = store.state("nginx")
        assert (nginx.failures, nginx.last_error_at) == (1, 1764003600.0)
        rows = {r.message_id: r for r in store.outbox()}
        assert rows["<pending.1@example.com>"].recipients == ("me@example.com", "boss@example.com")
        assert (rows["<dead.1@example.com>"].state, rows["<dead.1@example.com>"].attempts) == ("dead", 1)
        assert len(store.due_digests(2e9)) == 1

        # The new parts work on the old rows: a change becomes version 4, delivery is logged.
        store.record_success("prices", 1764014400.0, {}, "price 4.20 USD\nshipping 5 USD\n", history=3)
        assert [v.number for v in store.versions("prices")] == [4, 3, 2]
        assert store.versions("prices")[1].text == "price 4.00 USD\nshipping 5 USD\n"
        store.delivered(rows["<pending.1@example.com>"].id)
        (entry,) = store.log_entries()
        assert (entry.message_id, entry.attempts, entry.subject) == (
            "<pending.1@example.com>", 2, "[notifier] prices changed")
        assert [d.checks for d in store.check_days(0)] == [1]
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def test_a_fresh_database_and_an_upgraded_one_have_the_same_schema(tmp_path: Path) -> None:
    Store(tmp_path / "fresh.db").close()
    Store(v3_database(tmp_path / "old.db")).close()

    def schema(path: Path) -> set[tuple[str, str]]:
        db = sqlite3.connect(path)
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {(t, f"{c[1]} {c[2]} {c[3]} {c[4]}") for t in tables
                    for c in db.execute(f"PRAGMA table_info({t})")}
        finally:
            db.close()

    assert schema(tmp_path / "fresh.db") == schema(tmp_path / "old.db")


def test_two_processes_upgrading_at_once_both_succeed(tmp_path: Path) -> None:
    """The version is read again inside each step's transaction, so the loser of the race
    finds the step done instead of adding the same column twice."""
    path = v3_database(tmp_path / "state.db")
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_it() -> None:
        start.wait()
        try:
            Store(path).close()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


def test_a_newer_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = v3_database(tmp_path / "state.db")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = digest(path)
    for readonly in (False, True):
        with pytest.raises(StateTooNew, match=r"written by a newer notifier.*left as it is") as refused:
            Store(path, readonly=readonly)
        assert refused.value.exit_code == EXIT_CONFIG
    assert digest(path) == before
    assert not (tmp_path / "state.db-wal").exists()


def test_notifier_refuses_a_newer_database_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "watchers.yaml"
    config.write_text("watchers: []\n")
    (tmp_path / "state").mkdir()
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    db.close()
    before = digest(tmp_path / "state" / "state.db")
    for command in (["stats"], ["run"]):
        result = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), *command],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == EXIT_CONFIG, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "written by a newer notifier" in result.stderr
    assert digest(tmp_path / "state" / "state.db") == before
