"""When things happen: a watcher's schedule, its quiet hours, and the overdue rule.

Parsed once from the config into these values; the daemon, `notifier status` and the alerts
ask them, so each rule about time has this one home.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

_GRID_START = datetime(2020, 1, 1, tzinfo=UTC)  # interval grids count from here


def stable_fraction(name: str) -> float:
    """A number in [0, 1) fixed for a watcher name, used to spread watchers over time."""
    return zlib.crc32(name.encode()) / 2**32


class PhasedInterval(IntervalTrigger):  # type: ignore[misc]  # apscheduler has no type hints
    """An interval that always fires on its own grid (start_date + k intervals).

    APScheduler's IntervalTrigger counts from the previous run, so a prompt first run at
    start-up (or a late run) would become the watcher's phase for good, and watchers started
    together would stay bunched. Here the next time is the next grid point after both `now`
    and the previous run, whatever time the previous run happened at.
    """

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is not None:
            now = max(now, previous_fire_time + timedelta(microseconds=1))
        fire: datetime | None = super().get_next_fire_time(None, now)
        return fire


@dataclass(frozen=True, slots=True)
class CronExpr:
    """A validated five-field cron expression, like ``*/15 9-18 * * mon-fri``."""

    text: str

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        """ValueError with a hint when `text` is not a cron expression APScheduler accepts."""
        try:
            CronTrigger.from_crontab(text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a cron expression ({exc}); use five fields like "
                             f"'*/15 9-18 * * mon-fri'") from None
        return cls(text)

    def trigger(self, zone: tzinfo | None) -> CronTrigger:
        return CronTrigger.from_crontab(self.text, timezone=zone or UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Every `every` seconds on a grid with a stable per-name phase, or on a cron expression."""

    every: float
    cron: CronExpr | None = None
    zone: tzinfo | None = None

    def trigger(self, name: str) -> BaseTrigger:
        """Interval watchers get a stable per-name phase, so 1,000 of them don't fire together."""
        if self.cron is not None:
            return self.cron.trigger(self.zone)
        anchor = _GRID_START + timedelta(seconds=stable_fraction(name) * self.every)
        return PhasedInterval(seconds=self.every, start_date=anchor, timezone=UTC)

    def overdue(self, last_check: float | None, now: float) -> bool:
        """Never checked, or an interval has passed since the last check: run it at once.

        A cron watcher is never overdue: a missed cron time is not made up at start-up.
        """
        return last_check is None or (self.cron is None and now - last_check >= self.every)


@dataclass(frozen=True, slots=True)
class Window:
    """A daily time window such as 23:00-07:00 (it may wrap midnight); alerts wait it out."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def until(self, now: float, zone: tzinfo | None) -> float:
        """When something created at `now` may go out: the end of the window, or `now`."""
        local = datetime.fromtimestamp(now, zone).astimezone(zone)
        start = datetime.combine(local.date(), self.start, local.tzinfo)
        end = datetime.combine(local.date(), self.end, local.tzinfo)
        if start <= end:
            inside = start <= local < end
        else:  # the window wraps midnight, like 22:00-07:00
            inside = local >= start or local < end
            if local >= start:
                end += timedelta(days=1)
        return end.timestamp() if inside else now
