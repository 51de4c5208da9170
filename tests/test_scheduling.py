"""notifier.daemon's scheduling pieces: stable phases that survive late and early runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from notifier import config
from notifier.daemon import stable_fraction, trigger_for


def watcher(tmp_path: Path, name: str, every: str = "60s"):  # type: ignore[no-untyped-def]
    path = tmp_path / "watchers.yaml"
    path.write_text(f"watchers:\n  - {{name: {name}, kind: file, path: /x, every: {every}}}\n")
    return config.load(path, {}).watchers[0]


def test_interval_fires_on_the_watchers_own_grid(tmp_path: Path) -> None:
    wc = watcher(tmp_path, "prices")
    trigger = trigger_for(wc)
    now = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
    first = trigger.get_next_fire_time(None, now)
    phase = (first - datetime(2020, 1, 1, tzinfo=UTC)).total_seconds() % 60
    assert abs(phase - stable_fraction("prices") * 60) < 1e-3
    # a prompt run at an arbitrary moment (start-up, late run) does not move the phase
    odd = now + timedelta(seconds=7.3)
    expected = first if first > odd else first + timedelta(seconds=60)
    assert trigger.get_next_fire_time(odd, odd) == expected
    late = first + timedelta(seconds=75)
    assert trigger.get_next_fire_time(first, late) == first + timedelta(seconds=120)
    assert trigger.get_next_fire_time(first, first) == first + timedelta(seconds=60)


def test_phases_spread_many_watchers(tmp_path: Path) -> None:
    fractions = sorted(stable_fraction(f"w{i}") for i in range(1000))
    per_second = [sum(1 for f in fractions if s <= f * 60 < s + 1) for s in range(60)]
    assert max(per_second) < 40  # uniform would be 16.7; all in one second would be 1000
    assert min(per_second) > 0
