"""notifier.store: atomic checks, bounded history, a claimable outbox, and clear failures."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from notifier.errors import StateError
from notifier.pgstore import PgStore
from notifier.secrets import Secret
from notifier.store import CACHE_SIZE_KIB, JOURNAL_SIZE_LIMIT, Queued, StateGoneError, Store, _explain


def queued(n: int = 1) -> Queued:
    return Queued(message_id=f"<m{n}@x>", kind="change", watcher="w", account=None,
                  sender="a@x.org", recipients=("b@x.org",), body=b"Subject: x\r\n\r\nbody")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh state database, closed after the test: every case runs on both backends (SQLite in
    tmp_path, a fresh database on the session's real PostgreSQL), so the two cannot drift."""
    if request.param == "sqlite":
        s = Store(tmp_path / "state.db")
    else:
        s = PgStore(Secret(request.getfixturevalue("pg_url")))
    yield s
    s.close()


def refuse_outbox_inserts(store: Store) -> None:
    """Make every insert into the outbox fail, from another connection, as a broken disk or a
    constraint would."""
    if isinstance(store, PgStore):
        with psycopg.connect(store.url.reveal(), autocommit=True) as db:
            db.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RAISE EXCEPTION 'no'; END $$")
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse()")
        return
    lite = sqlite3.connect(store.path, isolation_level=None)
    lite.execute("CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'no'); END")
    lite.close()


def test_first_state_is_empty(store: Store) -> None:
    st = store.state("w")
    assert st.content is None
    assert st.failures == 0
    assert dict(st.meta) == {}


def test_history_is_bounded_and_latest_wins(store: Store) -> None:
    for i in range(5):
        store.record_success("w", float(i), {"etag": str(i)}, f"v{i}", history=3)
    assert [c for _, c in store.history("w")] == ["v4", "v3", "v2"]
    st = store.state("w")
    assert (st.content, st.meta["etag"], st.last_change) == ("v4", "4", 4.0)


def test_unchanged_keeps_content_and_resets_failures(store: Store) -> None:
    store.record_success("w", 1.0, {}, "v1", history=3)
    store.record_failure("w", 2.0, "boom")
    store.record_failure("w", 3.0, "boom", [queued()])
    assert store.state("w").failures == 2
    assert store.state("w").error_alerted_at == 3.0
    store.record_success("w", 4.0, {}, None, history=3)
    st = store.state("w")
    assert (st.content, st.failures, st.error_alerted_at, st.last_check) == ("v1", 0, None, 4.0)


def test_snapshot_and_alert_commit_together(store: Store) -> None:
    store.record_success("w", 1.0, {}, "v1", history=3)
    refuse_outbox_inserts(store)  # writing the alert is what fails
    with pytest.raises(StateError):
        store.record_success("w", 2.0, {}, "v2", history=3, alerts=[queued()])
    assert store.state("w").content == "v1"
    assert store.outbox() == []


def test_claim_is_exclusive_and_expires(store: Store) -> None:
    store.enqueue([queued(1), queued(2)])
    assert len(store.claim("one", now=10.0, limit=10, lease=60)) == 2
    assert store.claim("two", now=20.0, limit=10, lease=60) == []
    assert len(store.claim("two", now=100.0, limit=10, lease=60)) == 2  # first owner died


def test_reschedule_release_and_counts(store: Store) -> None:
    store.enqueue([queued(1), queued(2), queued(3)])
    rows = store.claim("me", now=0.0, limit=10)
    store.reschedule(rows[0].id, "held", "bad login", 0.0)
    store.reschedule(rows[1].id, "dead", "554 no", 0.0, recipients=["c@x.org"])
    store.delivered(rows[2].id)
    assert store.outbox_counts() == {"pending": 0, "held": 1, "dead": 1}
    dead = next(r for r in store.outbox() if r.state == "dead")
    assert (dead.recipients, dead.attempts, dead.last_error) == (("c@x.org",), 1, "554 no")
    assert store.release(("held",), now=5.0) == 1
    assert store.outbox_counts()["pending"] == 1


def test_same_message_id_is_queued_once(store: Store) -> None:
    store.enqueue([queued(1)])
    store.enqueue([queued(1)])
    assert len(store.outbox()) == 1


def test_corrupt_database_is_reported_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=r"cannot be used .*left as it is"):
        Store(path)
    assert path.read_bytes().startswith(b"this is not sqlite")


def test_locked_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(path, busy_timeout=0.1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateError, match="locked by another process"):
            store.record_success("w", 1.0, {}, "x", history=1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot be used"):
        Store(blocker / "sub" / "state.db")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StateError, match="newer than this notifier"):
        Store(path)


def _full_disk_error(tmp_path: Path) -> sqlite3.DatabaseError:
    """A real SQLITE_FULL, from a database capped at a few pages."""
    db = sqlite3.connect(tmp_path / "tiny.db")
    db.execute("PRAGMA max_page_count = 3")
    try:
        db.execute("CREATE TABLE t (x BLOB)")
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.DatabaseError as exc:
        return exc
    finally:
        db.close()
    raise AssertionError("the capped database took 100 KB")


def test_a_full_disk_is_explained_without_blaming_the_database(tmp_path: Path) -> None:
    message = _explain(tmp_path / "state.db", _full_disk_error(tmp_path))
    assert message.startswith(f"The file system holding {tmp_path / 'state.db'} is full")
    assert "free some space" in message
    assert "Move it aside" not in message
    assert "\n" not in message


def test_only_a_damaged_file_gets_the_advice_to_move_it_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="Move it aside") as damaged:
        Store(path)
    assert "file is not a database" in str(damaged.value)
    readonly = tmp_path / "ro"
    Store(readonly / "state.db").close()
    readonly.chmod(0o500)
    (readonly / "state.db").chmod(0o400)
    try:
        store = Store(readonly / "state.db", readonly=True)
        store.close()
        if os.geteuid() != 0:  # root writes anyway
            with pytest.raises(StateError) as unwritable:
                Store(readonly / "state.db").record_success("w", 1.0, {}, "x", history=1)
            assert "Move it aside" not in str(unwritable.value)
    finally:
        readonly.chmod(0o700)


def test_writes_stop_once_the_file_is_deleted_or_replaced(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    try:
        store.record_success("w", 1.0, {}, "v1", history=3)
        assert store.moved() is None
        os.replace(path, tmp_path / "aside.db")
        assert store.moved() == "deleted"
        with pytest.raises(StateGoneError, match="was deleted while notifier had it open"):
            store.record_success("w", 2.0, {}, "v2", history=3)
        other = sqlite3.connect(tmp_path / "other.db")  # a rollback-journal database: no -wal
        other.execute("CREATE TABLE x (y)")
        other.close()
        os.replace(tmp_path / "other.db", path)
        assert store.moved() == "replaced"
        with pytest.raises(StateGoneError, match="was replaced"):
            store.enqueue([queued()])
        assert store.state("w").content == "v1"  # reads still see the orphan
        store.rescue(tmp_path / "rescued.db")
        store.detach_journal()
        assert not (tmp_path / "state.db-wal").exists()  # never to be replayed into the new file
        assert store.state("w").content == "v1"
    finally:
        store.close()
    rescued = Store(tmp_path / "rescued.db")
    try:
        assert rescued.state("w").content == "v1"
        assert (tmp_path / "rescued.db").stat().st_mode & 0o777 == 0o600
    finally:
        rescued.close()


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        wide = tmp_path / "old" / "state.db"
        wide.parent.mkdir()
        Store(wide).close()
        wide.chmod(0o644)  # written by an older notifier
        store = Store(tmp_path / "new" / "state.db")
        store.record_success("w", 1.0, {}, "v1", history=3)
        Store(wide).close()
    finally:
        os.umask(old)
    try:
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            assert (tmp_path / "new" / name).stat().st_mode & 0o777 == 0o600, name
        assert wide.stat().st_mode & 0o777 == 0o600
    finally:
        store.close()


def test_the_write_ahead_log_stays_small(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    wal = tmp_path / "state.db-wal"
    try:
        biggest = 0
        for i in range(300):
            store.record_success("w", float(i), {}, f"{i}\n" + "x" * 20_000, history=2)
            biggest = max(biggest, wal.stat().st_size)
        assert biggest < JOURNAL_SIZE_LIMIT + 20 * 4096  # the limit, plus one transaction
        store.checkpoint()
        assert wal.stat().st_size == 0
    finally:
        store.close()


def test_the_page_cache_is_kept_small(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        assert store._query("PRAGMA cache_size")[0][0] == -CACHE_SIZE_KIB  # negative: KiB, not pages
    finally:
        store.close()


def test_a_disk_filling_up_in_the_middle_of_a_write_is_explained(tmp_path: Path) -> None:
    """A transaction bigger than the page cache spills pages to the WAL before COMMIT; if that
    write finds the disk full, SQLite rolls the whole transaction back itself. The error must
    still say the disk is full, not "cannot rollback - no transaction is active"."""
    store = Store(tmp_path / "state.db")
    try:
        store.record_success("w", 1.0, {}, "v1", history=3)
        pages = store._query("PRAGMA page_count")[0][0]
        store._query(f"PRAGMA max_page_count = {pages + 2}")  # SQLITE_FULL, as a full disk gives
        big = "".join(f"line {i} {os.urandom(16).hex()}\n" for i in range(40_000))  # >> the cache
        full = r"The file system holding .* is full \(database or disk is full\)"
        with pytest.raises(StateError, match=full):
            store.record_success("w", 2.0, {}, big, history=3)
        store._query("PRAGMA max_page_count = 1073741823")  # space is back: writes work again
        store.record_success("w", 3.0, {}, "v3", history=3)
        assert [c for _, c in store.history("w")] == ["v3", "v1"]
    finally:
        store.close()


def test_the_state_id_is_made_once_and_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        assert store.state_id() is None
        made = store.state_id(create=True)
        assert made
        assert store.state_id(create=True) == made
    finally:
        store.close()
    again = Store(tmp_path / "state.db")
    try:
        assert again.state_id() == made
    finally:
        again.close()
