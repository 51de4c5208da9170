"""notifier.schedule: stable phases that survive late and early runs, cron in the watcher's
zone, quiet hours that wrap midnight, and the overdue rule the daemon and `status` share."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from notifier import config
from notifier.config import WatcherConfig
from notifier.schedule import CronExpr, Schedule, Window, stable_fraction


def watcher(tmp_path: Path, name: str, schedule: str = "every: 60s") -> WatcherConfig:
    path = tmp_path / "watchers.yaml"
    path.write_text(f"watchers:\n  - {{name: {name}, kind: file, path: /x, {schedule}}}\n")
    return config.load(path, {}).watchers[0]


def test_interval_fires_on_the_watchers_own_grid(tmp_path: Path) -> None:
    wc = watcher(tmp_path, "prices")
    trigger = wc.schedule.trigger(wc.name)
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


def test_cron_follows_the_watchers_time_zone(tmp_path: Path) -> None:
    wc = watcher(tmp_path, "morning", "cron: '0 9 * * *', timezone: Asia/Shanghai")
    fire = wc.schedule.trigger(wc.name).get_next_fire_time(None, datetime(2026, 11, 24, 0, 0, tzinfo=UTC))
    assert fire == datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai


def test_overdue_rule() -> None:
    every = Schedule(60.0)
    assert every.overdue(None, 1000.0)
    assert every.overdue(900.0, 1000.0)
    assert not every.overdue(990.0, 1000.0)
    cron = Schedule(60.0, CronExpr.parse("0 9 * * *"))
    assert cron.overdue(None, 1000.0)
    assert not cron.overdue(0.0, 1e9)  # a missed cron time is not made up


def test_quiet_hours_hold_until_window_ends() -> None:
    zone = ZoneInfo("Asia/Shanghai")
    window = Window(time(22), time(7))
    assert str(window) == "22:00-07:00"
    night = datetime(2026, 11, 24, 23, 30, tzinfo=zone).timestamp()
    assert window.until(night, zone) == datetime(2026, 11, 25, 7, 0, tzinfo=zone).timestamp()
    early = datetime(2026, 11, 25, 6, 0, tzinfo=zone).timestamp()
    assert window.until(early, zone) == datetime(2026, 11, 25, 7, 0, tzinfo=zone).timestamp()
    day = datetime(2026, 11, 25, 12, 0, tzinfo=zone).timestamp()
    assert window.until(day, zone) == day
    assert Window(time(12), time(13)).until(datetime(2026, 1, 1, 12, 30, tzinfo=UTC).timestamp(), UTC) == \
        datetime(2026, 1, 1, 13, 0, tzinfo=UTC).timestamp()
