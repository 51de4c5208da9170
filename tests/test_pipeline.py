"""notifier.pipeline: baseline, change, unchanged, and monit-style failure/recovery rules."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest

from notifier import config
from notifier.config import WatcherConfig
from notifier.diff import Diff
from notifier.kinds import Fetched, Watcher
from notifier.pipeline import check
from notifier.store import Alert, Queued, Store, WatcherState


class Recorder:
    """Our own Alerts protocol, recording what the pipeline asked for (no mail involved).
    `broken` lists the alert kinds whose "user template" fails, so the shipped ones were used."""

    def __init__(self, broken: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.states: list[WatcherState] = []
        self.broken = broken

    def _q(self, kind: str, wc: WatcherConfig, detail: str) -> tuple[list[Alert], str | None]:
        self.calls.append((kind, detail))
        queued = Queued(message_id=f"<{len(self.calls)}@t>", kind=kind, watcher=wc.name,
                        account=None, sender="n@localhost", recipients=("u@localhost",), body=b"x")
        problem = f"the template /t/{kind}.txt:1 failed: ZeroDivisionError: division by zero"
        return [queued], problem if kind in self.broken else None

    def change(self, wc: WatcherConfig, diff: Diff, old: str, new: str,
               state: WatcherState, now: float) -> tuple[list[Alert], str | None]:
        return self._q("change", wc, "".join(diff.added))

    def error(self, wc: WatcherConfig, error: str, state: WatcherState,
              now: float) -> tuple[list[Alert], str | None]:
        self.states.append(state)
        return self._q("error", wc, error)

    def recovery(self, wc: WatcherConfig, state: WatcherState,
                 now: float) -> tuple[list[Alert], str | None]:
        return self._q("recovery", wc, str(state.failures))


class Setup(NamedTuple):
    """What the `setup` fixture gives."""

    wc: WatcherConfig
    store: Store
    rec: Recorder
    path: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
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
    yield Setup(wc, store, Recorder(), tmp_path / "watched.txt")
    store.close()


def test_baseline_then_change_then_unchanged(setup: Setup) -> None:
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


def test_dry_run_leaves_state_untouched(setup: Setup) -> None:
    wc, store, rec, path = setup
    path.write_text("price 1\n")
    check(wc, store, rec)
    path.write_text("price 2\n")
    assert check(wc, store, rec, dry_run=True).status == "changed"
    assert store.state("w").content == "price 1\n"
    assert store.outbox() == []


def test_filter_matching_nothing_is_a_failure_not_a_change(setup: Setup) -> None:
    wc, store, rec, path = setup
    path.write_text("price 1\n")
    check(wc, store, rec)
    path.write_text("nothing here\n")
    outcome = check(wc, store, rec)
    assert outcome.status == "failed"
    assert "matched nothing" in (outcome.error or "")
    assert store.state("w").content == "price 1\n"


def test_error_after_n_failures_once_then_one_recovery(setup: Setup) -> None:
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


def test_short_failure_streak_sends_nothing(setup: Setup) -> None:
    wc, store, rec, path = setup
    path.write_text("price 1\n")
    check(wc, store, rec)
    path.write_text("broken\n")
    check(wc, store, rec)
    path.write_text("price 1\n")
    check(wc, store, rec)
    assert rec.calls == []


def test_reminders(setup: Setup) -> None:
    wc, store, rec, path = setup
    wc = replace(wc, remind_every=100.0)
    path.write_text("broken\n")
    times = iter([0.0, 10.0, 50.0, 111.0, 150.0])
    for _ in range(5):
        check(wc, store, rec, clock=lambda: next(times))
    assert [k for k, _ in rec.calls] == ["error", "error"]  # at t=10 and the reminder at t=111


def test_watcher_bug_is_contained(setup: Setup) -> None:
    wc, store, rec, _ = setup

    class Broken(Watcher):
        def fetch(self, previous: Mapping[str, str]) -> Fetched:
            raise ZeroDivisionError("oops")

    outcome = check(replace(wc, watcher=Broken("w", {})), store, rec)
    assert outcome.status == "failed"
    assert "unexpected ZeroDivisionError: oops" in (outcome.error or "")


def test_failing_since_is_the_first_failure_of_the_streak(setup: Setup) -> None:
    wc, store, rec, path = setup
    wc = replace(wc, error_after=3, remind_every=100.0)
    path.write_text("price 1\n")
    check(wc, store, rec, clock=lambda: 0.0)
    path.write_text("broken\n")
    times = iter([10.0, 20.0, 30.0])
    for _ in range(3):
        check(wc, store, rec, clock=lambda: next(times))
    assert (store.state("w").failures, store.state("w").last_error_at) == (3, 10.0)
    check(wc, store, rec, clock=lambda: 140.0)  # the reminder
    assert [s.last_error_at for s in rec.states] == [10.0, 10.0]  # what error() is told
    path.write_text("price 1\n")
    check(wc, store, rec, clock=lambda: 150.0)  # recovered: the next streak starts afresh
    path.write_text("broken\n")
    check(wc, store, rec, clock=lambda: 160.0)
    assert store.state("w").last_error_at == 160.0


def test_user_template_failure_keeps_the_change_and_counts_as_a_failure(setup: Setup) -> None:
    wc, store, rec, path = setup
    rec.broken = ("change",)
    path.write_text("price 1\n")
    check(wc, store, rec)
    path.write_text("price 2\n")
    outcome = check(wc, store, rec, clock=lambda: 50.0)
    assert outcome.status == "failed"
    assert "/t/change.txt:1" in (outcome.error or "")
    assert outcome.diff is not None
    assert [k for k, _ in rec.calls] == ["change", "error"]  # at once, not after error_after
    assert "ZeroDivisionError: division by zero" in rec.calls[1][1]
    assert len(store.outbox()) == 2  # nothing lost: the change went out with the shipped templates
    st = store.state("w")
    assert st.content == "price 2\n"  # recorded, so the change is not alerted twice
    assert (st.failures, st.last_error_at, st.error_alerted_at) == (1, 50.0, None)
    assert "/t/change.txt:1" in (st.last_error or "")
    assert check(wc, store, rec).status == "unchanged"
    assert store.state("w").failures == 0
    assert [k for k, _ in rec.calls] == ["change", "error"]  # no "back to normal" for an unfixed template


def test_broken_error_template_is_named_in_the_recorded_error(setup: Setup) -> None:
    wc, store, rec, path = setup
    rec.broken = ("error",)
    path.write_text("broken\n")
    check(wc, store, rec)
    outcome = check(wc, store, rec)
    assert outcome.status == "failed"
    assert [k for k, _ in rec.calls] == ["error"]
    error = store.state("w").last_error or ""
    assert "matched nothing" in error
    assert "/t/error.txt:1" in error
