"""notifier.pipeline: baseline, change, unchanged, and monit-style failure/recovery rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier import config
from notifier.config import WatcherConfig
from notifier.diff import Diff
from notifier.pipeline import check
from notifier.store import Queued, Store, WatcherState


class Recorder:
    """Our own Alerts protocol, recording what the pipeline asked for (no mail involved)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def _q(self, kind: str, wc: WatcherConfig, detail: str) -> list[Queued]:
        self.calls.append((kind, detail))
        return [Queued(message_id=f"<{len(self.calls)}@t>", kind=kind, watcher=wc.name, account=None,
                       sender="n@localhost", recipients=("u@localhost",), body=b"x")]

    def change(self, wc: WatcherConfig, diff: Diff, old: str, new: str,
               state: WatcherState, now: float) -> list[Queued]:
        return self._q("change", wc, "".join(diff.added))

    def error(self, wc: WatcherConfig, error: str, state: WatcherState, now: float) -> list[Queued]:
        return self._q("error", wc, error)

    def recovery(self, wc: WatcherConfig, state: WatcherState, now: float) -> list[Queued]:
        return self._q("recovery", wc, str(state.failures))


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A file watcher on tmp_path/watched.txt with a grep filter, its store and a recorder."""
    (tmp_path / "watchers.yaml").write_text(f"""\
watchers:
  - name: w
    kind: file
    path: {tmp_path / "watched.txt"}
    error_after: 2
    filters:
      - grep: price
""")
    wc = config.load(tmp_path / "watchers.yaml", {}).watchers[0]
    store = Store(tmp_path / "state.db")
    yield wc, store, Recorder(), tmp_path / "watched.txt"
    store.close()


def test_baseline_then_change_then_unchanged(setup) -> None:  # type: ignore[no-untyped-def]
    wc, store, rec, path = setup
    path.write_text("price 1\nnoise a\n")
    assert check(wc, store, rec).status == "baseline"
    assert rec.calls == []
    path.write_text("price 1\nnoise b\n")  # filtered away: no change
    assert check(wc, store, rec).status == "unchanged"
    path.write_text("price 2\nnoise b\n")
    outcome = check(wc, store, rec)
    assert outcome.status == "changed"
    assert outcome.alerts == 1
    assert rec.calls == [("change", "price 2")]
    assert len(store.outbox()) == 1
    assert store.state("w").content == "price 2\n"
    assert "watcher=w kind=file outcome=changed" in outcome.line()


def test_dry_run_leaves_state_untouched(setup) -> None:  # type: ignore[no-untyped-def]
    wc, store, rec, path = setup
    path.write_text("price 1\n")
    check(wc, store, rec)
    path.write_text("price 2\n")
    assert check(wc, store, rec, dry_run=True).status == "changed"
    assert store.state("w").content == "price 1\n"
    assert store.outbox() == []


def test_filter_matching_nothing_is_a_failure_not_a_change(setup) -> None:  # type: ignore[no-untyped-def]
    wc, store, rec, path = setup
    path.write_text("price 1\n")
    check(wc, store, rec)
    path.write_text("nothing here\n")
    outcome = check(wc, store, rec)
    assert outcome.status == "failed"
    assert "matched nothing" in (outcome.error or "")
    assert store.state("w").content == "price 1\n"


def test_error_after_n_failures_once_then_one_recovery(setup) -> None:  # type: ignore[no-untyped-def]
    wc, store, rec, path = setup
    path.write_text("price 1\n")
    check(wc, store, rec)
    path.write_text("broken\n")
    statuses = [check(wc, store, rec).status for _ in range(4)]
    assert statuses == ["failed"] * 4
    assert [k for k, _ in rec.calls] == ["error"]  # on the 2nd failure only
    path.write_text("price 1\n")
    assert check(wc, store, rec).status == "unchanged"
    assert check(wc, store, rec).status == "unchanged"
    assert [k for k, _ in rec.calls] == ["error", "recovery"]
    assert rec.calls[1] == ("recovery", "4")


def test_short_failure_streak_sends_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    wc, store, rec, path = setup
    path.write_text("price 1\n")
    check(wc, store, rec)
    path.write_text("broken\n")
    check(wc, store, rec)
    path.write_text("price 1\n")
    check(wc, store, rec)
    assert rec.calls == []


def test_reminders(setup) -> None:  # type: ignore[no-untyped-def]
    wc, store, rec, path = setup
    wc = WatcherConfig(**{**wc.__dict__, "remind_every": 100.0})
    path.write_text("broken\n")
    times = iter([0.0, 10.0, 50.0, 111.0, 150.0])
    for _ in range(5):
        check(wc, store, rec, clock=lambda: next(times))
    assert [k for k, _ in rec.calls] == ["error", "error"]  # at t=10 and the reminder at t=111


def test_watcher_bug_is_contained(setup) -> None:  # type: ignore[no-untyped-def]
    wc, store, rec, _ = setup

    class Broken:
        def fetch(self, previous: object) -> None:
            raise ZeroDivisionError("oops")

    outcome = check(WatcherConfig(**{**wc.__dict__, "watcher": Broken()}), store, rec)
    assert outcome.status == "failed"
    assert "unexpected ZeroDivisionError: oops" in (outcome.error or "")
