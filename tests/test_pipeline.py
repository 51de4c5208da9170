"""notifier.pipeline: baseline, change, unchanged, and monit-style failure/recovery rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from textwrap import indent
from typing import NamedTuple

import pytest

from notifier import config
from notifier.attachments import Attachment
from notifier.config import WatcherConfig
from notifier.diff import Diff
from notifier.kinds import Fetched, Watcher
from notifier.pipeline import Outcome, check
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
               state: WatcherState, now: float,
               files: Sequence[Attachment] = ()) -> tuple[list[Alert], str | None]:
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

    outcome = check(replace(wc, watcher=Broken({})), store, rec)
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


# --- noise control: compared_versions, trigger, trigger_invert ----------------------------------

class Page(NamedTuple):
    """A file watcher on page.txt with some noise options, its real store and a recorder."""

    wc: WatcherConfig
    store: Store
    rec: Recorder
    path: Path

    def visit(self, text: str) -> Outcome:
        """Write `text` to the watched file and check it once."""
        self.path.write_text(text)
        return check(self.wc, self.store, self.rec)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Callable[[str], Page]]:
    """Makes the watcher from its options (YAML lines, through the real loader); one database."""
    store = Store(tmp_path / "noise.db")

    def make(options: str) -> Page:
        path = tmp_path / "page.txt"
        (tmp_path / "noise.yaml").write_text(
            f"watchers:\n  - name: page\n    kind: file\n    path: {path}\n{indent(options, '    ')}")
        return Page(config.load(tmp_path / "noise.yaml", {}).watchers[0], store, Recorder(), path)

    yield make
    store.close()


def seen(outcomes: list[Outcome]) -> list[tuple[str, int, str | None]]:
    return [(o.status, o.alerts, o.suppressed) for o in outcomes]


def test_flapping_back_to_a_recent_version_is_recorded_without_an_alert(
        page: Callable[[str], Page]) -> None:
    p = page("compared_versions: 2\n")
    outcomes = [p.visit(text) for text in ("banner A\n", "banner B\n", "banner A\n", "banner B\n")]
    assert seen(outcomes) == [("baseline", 0, None), ("changed", 1, None),
                              ("changed", 0, "seen-before"), ("changed", 0, "seen-before")]
    assert "outcome=changed" in outcomes[2].line()
    assert outcomes[2].line().endswith(" suppressed=seen-before")
    assert [kind for kind, _ in p.rec.calls] == ["change"]
    assert len(p.store.outbox()) == 1
    # Recorded all the same: history shows each flip and the next diff is against the last one.
    assert [c for _, c in p.store.history("page")] == ["banner B\n", "banner A\n"] * 2
    assert p.visit("banner B\n").status == "unchanged"
    assert seen([p.visit("banner C\n"), p.visit("banner D\n")]) == [("changed", 1, None)] * 2
    assert p.visit("banner B\n").alerts == 1  # three versions back: past compared_versions: 2


def test_by_default_every_flip_alerts(page: Callable[[str], Page]) -> None:
    p = page("")
    assert [p.visit(text).alerts for text in ("A\n", "B\n", "A\n", "B\n")] == [0, 1, 1, 1]


def test_trigger_alerts_only_when_a_changed_line_matches(page: Callable[[str], Page]) -> None:
    p = page("trigger: '(?i)in stock|sold out'\n")
    p.visit("Widget\nprice 10\nsold out\n")
    assert seen([p.visit("Widget\nprice 12\nsold out\n")]) == [("changed", 0, "trigger")]
    preview = check(p.wc, p.store, p.rec, dry_run=True)
    assert (preview.status, preview.suppressed) == ("unchanged", None)  # the price was recorded
    assert seen([p.visit("Widget\nprice 12\nIn stock\n")]) == [("changed", 1, None)]
    assert seen([p.visit("Widget\nprice 12\n")]) == [("changed", 1, None)]  # a removed line counts
    assert p.rec.calls == [("change", "In stock"), ("change", "")]


def test_trigger_invert_ignores_changes_made_only_of_matching_lines(page: Callable[[str], Page]) -> None:
    p = page("trigger_invert: ['^Updated ', '^Visitors: \\d+$']\n")
    p.visit("News\nUpdated 10:00\nVisitors: 5\n")
    assert seen([p.visit("News\nUpdated 10:05\nVisitors: 9\n")]) == [("changed", 0, "trigger_invert")]
    # A real change alerts even though the clock changed with it, and the diff still shows both.
    assert seen([p.visit("Big news\nUpdated 10:10\nVisitors: 9\n")]) == [("changed", 1, None)]
    assert p.rec.calls == [("change", "Big newsUpdated 10:10")]


def test_trigger_and_trigger_invert_together_on_additions_only(page: Callable[[str], Page]) -> None:
    p = page("trigger: price\ntrigger_invert: 'price list updated'\nadditions_only: true\n")
    p.visit("a\n")
    outcomes = [p.visit("a\nprice list updated\n"),  # its only added line is ignored
                p.visit("a\nprice list updated\nprice: 3\n"),  # "price: 3" is what we wait for
                p.visit("a\nprice: 3\n"),  # only a removal: nothing to alert with additions_only
                p.visit("a\nprice: 3\nnote\n")]  # an addition, but not a price
    assert seen(outcomes) == [("changed", 0, "trigger_invert"), ("changed", 1, None),
                              ("unchanged", 0, None), ("changed", 0, "trigger")]


def test_the_same_fetched_text_is_not_filtered_again(setup: Setup, tmp_path: Path) -> None:
    """The digest of what was fetched is recorded with the content; the same text again is
    "unchanged" without running the filters (planted here: a content the filters would never
    give), and other filters (another key) filter it anew."""
    wc, store, rec, path = setup
    path.write_text("price 1\nnoise\n")
    assert check(wc, store, rec).status == "baseline"
    recorded = store.state("w")
    assert recorded.meta.get("source_digest")
    store.record_success("w", 1.0, recorded.meta, "planted\n", wc.history)
    assert check(wc, store, rec).status == "unchanged"
    assert store.state("w").content == "planted\n"
    reconfigured = replace(wc, settings=replace(wc.settings, filters_key=b"another"))
    assert check(reconfigured, store, rec).status == "changed"
    assert store.state("w").content == "price 1\n"
