"""When things happen: a watcher's schedule, its quiet hours, the overdue rule, and the
daemon's timetable of checks.

Parsed once from the config into these values; the daemon, `notifier status` and the alerts
ask them, so each rule about time has this one home.
"""

from __future__ import annotations

import collections
import functools
import heapq
import logging
import math
import threading
import time as clock
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

_GRID_START = datetime(2020, 1, 1, tzinfo=UTC)  # interval grids count from here
AFTER = 1e-3  # the next time after a check that fired at t is looked for from t + AFTER on

NextTime = Callable[[float], float | None]
"""A schedule as a function of Unix times: the first fire time at or after a moment (None: never)."""

log = logging.getLogger(__name__)


def stable_fraction(name: str) -> float:
    """A number in [0, 1) fixed for a watcher name, used to spread watchers over time."""
    return zlib.crc32(name.encode()) / 2**32


class Grid:
    """A NextTime of times `anchor + k * every`: the first at or after a moment.

    The next time depends only on the moment asked about, so a prompt first run at start-up or
    a late run never becomes the phase for good, and watchers started together do not stay
    bunched (APScheduler's IntervalTrigger counts from the previous run). Two floats, not a
    closure: a daemon holds one per watcher.
    """

    __slots__ = ("anchor", "every")

    def __init__(self, anchor: float, every: float) -> None:
        self.anchor = anchor
        self.every = every

    def __call__(self, after: float) -> float:
        return self.anchor + max(0, math.ceil((after - self.anchor) / self.every)) * self.every


@dataclass(frozen=True, slots=True)
class CronExpr:
    """A validated five-field cron expression, like ``*/15 9-18 * * mon-fri``.

    APScheduler's CronTrigger reads and fires it; it is imported with the first cron
    expression, so a config without one does not load APScheduler (~2 MiB of a daemon)."""

    text: str

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        """ValueError with a hint when `text` is not a cron expression APScheduler accepts."""
        from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - see the class

        try:
            CronTrigger.from_crontab(text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a cron expression ({exc}); use five fields like "
                             f"'*/15 9-18 * * mon-fri'") from None
        return cls(text)

    def trigger(self, zone: tzinfo | None) -> CronTrigger:
        from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - see the class

        return CronTrigger.from_crontab(self.text, timezone=zone or UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Every `every` seconds on a grid with a stable per-name phase, or on a cron expression."""

    every: float
    cron: CronExpr | None = None
    zone: tzinfo | None = None

    def next_time(self, name: str) -> NextTime:
        """When `name` runs, as plain Unix times (for the daemon's Timetable, `notifier status` and
        a fleet's claims): an interval is a grid with the name's own phase, so 1,000 watchers do
        not fire together; a cron asks its trigger in the watcher's zone."""
        if self.cron is not None:
            trigger = self.cron.trigger(self.zone)

            def cron_time(after: float) -> float | None:
                fire = trigger.get_next_fire_time(None, datetime.fromtimestamp(after, UTC))
                return None if fire is None else float(fire.timestamp())
            return cron_time
        return Grid(_GRID_START.timestamp() + stable_fraction(name) * self.every, self.every)

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


class _Entry:
    """One scheduled name: when it is next due (None while it runs or once it is removed)."""

    __slots__ = ("again", "fired", "name", "next_time", "not_before", "when")

    def __init__(self, name: str, next_time: NextTime) -> None:
        self.name = name
        self.next_time = next_time
        self.when: float | None = None
        self.fired = 0.0  # when its current or last run was due
        self.not_before = 0.0  # Retry-After: no run before this
        self.again = False  # woken (Timetable.soon) while it ran: run again as soon as it ends

    def __lt__(self, other: _Entry) -> bool:
        """Names due at the same time start in the order of their names."""
        return self.name < other.name


class _Worker:
    """A worker thread's hand-over slot: the job it is given, and the lock it waits on for it."""

    __slots__ = ("job", "wake")

    def __init__(self, job: Callable[[], None] | None) -> None:
        self.job = job
        self.wake = threading.Lock()
        self.wake.acquire()  # released by a hand-over


class Timetable:
    """Runs `run(name)` for every name on its own schedule, in at most `workers` threads.

    The daemon's checks: a thousand watchers as a thousand scheduler jobs cost a thousand jobs'
    bookkeeping (datetimes, events, futures) at every check; here a check is a heap entry of
    plain Unix times, one wait of one thread, and a hand-over to a worker. The rules are those
    of the jobs they replace: a name never runs twice at once (a run still going when its next
    time comes skips that time), a late run still runs, once, and the next time is the first of
    the schedule after the run was due, so a late or early run never moves a grid's phase.

    Worker threads start when a run finds none idle and end after IDLE_END seconds without
    work, so a burst (the first pass at start-up) leaves no threads behind: the worker idle the
    shortest time gets the next run, so the others really are idle (a shared queue would hand
    runs round the whole pool and keep every thread alive).

    The timer wakes at most every TICK seconds and starts everything due by then: a run may
    start up to TICK late, never early (as systemd coalesces timers within their accuracy).
    Runs due close together share a wake-up, and the event loop then carries their fetches
    together, so the cost of waking the process is paid once for several runs: at 1,000
    watchers a minute (bench/daemon_idle.py), the daemon used 2.0 % of a core with a 0.05 s
    tick, 1.0 % with 0.5 s and 0.8 % with 1 s. Half a second late is nothing beside a minute's
    interval; a longer tick would also start more worker runs (command, file) at once, each
    holding a thread (~200 KiB).
    """

    IDLE_END = 60.0  # seconds an idle worker waits for work before it ends
    TICK = 0.5  # the timer wakes at most this often, and starts what is due at each wake-up
    LONGEST_WAIT = 10.0  # the timer looks again at least this often (a wall clock that jumped)

    def __init__(self, run: Callable[[str], None], workers: int,
                 now: Callable[[], float] = clock.time,
                 launch: Callable[[str], Future[None] | None] | None = None,
                 failed: Callable[[str, Exception], None] | None = None) -> None:
        self.run = run
        # Told which name's run raised what (the daemon: its health, a `status` line); a run is
        # meant to catch its own failures, so this is a last guard, never only a log line.
        self.failed = failed
        # Runs a name elsewhere (the daemon: a url check on the event loop, which needs no
        # thread while it waits) and returns its future; None: run it on a worker as usual.
        self.launch = launch
        self.workers = workers
        self.now = now
        self._cond = threading.Condition()
        # (when, entry), a name's old times left in place until they come up (see _stale): a
        # daemon holds one per watcher, so no sequence number (entries due together go by name).
        self._heap: list[tuple[float, _Entry]] = []
        self._entries: dict[str, _Entry] = {}
        self._running: set[str] = set()
        self._idle: list[_Worker] = []  # the last one to finish is the first to get work
        self._waiting: collections.deque[Callable[[], None]] = collections.deque()  # no worker free
        self._threads = 0
        self._paused = False
        self._stopped = False
        self._timer: threading.Thread | None = None

    # -- the schedule ----------------------------------------------------------------------------

    def set(self, name: str, next_time: NextTime, first: float | None = None) -> None:
        """Schedule `name` (again, replacing what it had): first at `first`, else its next time."""
        entry = _Entry(name, next_time)
        with self._cond:
            self._entries[name] = entry
            self._push(entry, first if first is not None else next_time(self.now()))

    def remove(self, name: str) -> None:
        """Unschedule `name`; a run going on finishes but schedules nothing after it."""
        with self._cond:
            entry = self._entries.pop(name, None)
            if entry is not None:
                entry.when = None

    def later(self, name: str, when: float) -> bool:
        """Retry-After: no run of `name` before `when`. True if that moved its next run (later
        grid times follow as usual); sooner than the schedule is never asked for."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is None:
                return False
            scheduled = entry.when
            if scheduled is None:  # running: its next time is worked out when the run ends
                scheduled = entry.next_time(max(self.now(), entry.fired + AFTER))
            if scheduled is None or when <= scheduled:
                return False
            entry.not_before = when
            if entry.when is not None:
                self._push(entry, when)
            return True

    def next_due(self) -> float | None:
        """The earliest time any name is due, or None."""
        with self._cond:
            while self._heap and self._stale(*self._heap[0]):
                heapq.heappop(self._heap)
            return self._heap[0][0] if self._heap else None

    def _push(self, entry: _Entry, when: float | None) -> None:
        entry.when = when
        if when is not None:
            heapq.heappush(self._heap, (when, entry))
            if self._heap[0][1] is entry:  # sooner than the timer waits for: wake it
                self._cond.notify()

    def _stale(self, when: float, entry: _Entry) -> bool:
        return entry.when != when or self._entries.get(entry.name) is not entry

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._timer = threading.Thread(target=self._timer_loop, name="timetable", daemon=True)
        self._timer.start()

    def pause(self) -> None:
        """Start no more runs (shutdown: the running ones finish)."""
        with self._cond:
            self._paused = True

    def shutdown(self) -> None:
        """Stop the timer and the idle workers, without waiting for running ones."""
        with self._cond:
            self._paused = self._stopped = True
            self._cond.notify_all()
            self._waiting.clear()
            for worker in self._idle:
                worker.wake.release()  # with no job: it ends
            self._idle.clear()

    def submit(self, name: str, job: Callable[[], None]) -> None:
        """Run `job` for `name` once, now, in a worker (a fleet's claimed check)."""
        with self._cond:
            self._hand_over(functools.partial(self._guarded, name, job))

    def soon(self, name: str) -> None:
        """Run `name` now rather than at its next time; a run going on is followed by another
        at once (never beside it). The times after follow its schedule as usual."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is None:
                return
            if entry.when is None:  # running
                entry.again = True
            else:
                self._push(entry, self.now())

    def _timer_loop(self) -> None:
        look = 0.0  # the monotonic time before which the timer does not wake again for a run
        with self._cond:
            while not self._stopped:
                if self._paused or not self._heap:
                    self._cond.wait(self.LONGEST_WAIT)
                    continue
                when, entry = self._heap[0]
                wait = when - self.now()
                if wait > 0:  # nothing due: sleep, then start all that is due after the sleep
                    self._cond.wait(min(max(wait, look - clock.monotonic()), self.LONGEST_WAIT))
                    look = clock.monotonic() + self.TICK
                    continue
                heapq.heappop(self._heap)
                if self._stale(when, entry):
                    continue
                entry.fired, entry.when = when, None
                if entry.name in self._running:  # its previous run goes on: skip this time
                    self._push(entry, entry.next_time(max(self.now(), when + AFTER)))
                    continue
                self._running.add(entry.name)
                launched = self.launch(entry.name) if self.launch is not None else None
                if launched is None:
                    self._hand_over(functools.partial(self._fire, entry))
                else:
                    launched.add_done_callback(functools.partial(self._finished, entry))

    def _fire(self, entry: _Entry) -> None:
        try:
            self._guarded(entry.name, functools.partial(self.run, entry.name))
        finally:
            self._finished(entry)

    def _guarded(self, name: str, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as exc:  # the daemon's jobs catch their own; this is a last guard
            self._report(name, exc)

    def _report(self, name: str, exc: BaseException) -> None:
        """What escaped a run, to `failed`; a `failed` that raises itself is logged, so the
        worker (the only one of a one-worker lane) lives on."""
        try:
            if self.failed is not None and isinstance(exc, Exception):
                self.failed(name, exc)
                return
        except Exception as failing:
            log.error("reporting the failure of a run of %s failed", name, exc_info=failing)
        log.error("a scheduled run of %s failed", name, exc_info=exc)

    def _finished(self, entry: _Entry, launched: Future[None] | None = None) -> None:
        """A run of `entry` ended: its next one is the first of its schedule after this one was
        due (or when its site asked to be left alone until), or now if it was woken meanwhile.
        A launched run's failure (its future's exception) is reported like a worker's."""
        failure = None if launched is None or launched.cancelled() else launched.exception()
        if failure is not None:
            self._report(entry.name, failure)
        with self._cond:
            self._running.discard(entry.name)
            if self._entries.get(entry.name) is entry:  # not removed or replaced meanwhile
                nxt = entry.next_time(max(self.now(), entry.fired + AFTER))
                if nxt is not None and entry.not_before > nxt:
                    nxt = entry.not_before
                if entry.again:
                    entry.again, nxt = False, self.now()
                self._push(entry, nxt)

    def _hand_over(self, job: Callable[[], None]) -> None:
        """With the lock held: give `job` to the worker idle the shortest time, or to a new one
        if there is room, or else to the first worker that finishes."""
        if self._idle:
            worker = self._idle.pop()
            worker.job = job
            worker.wake.release()
        elif self._threads < self.workers:
            self._threads += 1
            threading.Thread(target=self._work, args=(_Worker(job),), name=f"check-{self._threads}",
                             daemon=True).start()
        else:
            self._waiting.append(job)

    def _work(self, me: _Worker) -> None:
        while True:
            job, me.job = me.job, None
            if job is None:  # shutdown
                return
            job()  # guarded: see _fire and submit
            with self._cond:
                if self._waiting:
                    me.job = self._waiting.popleft()
                    continue
                if self._stopped:
                    return
                self._idle.append(me)
            if not me.wake.acquire(timeout=self.IDLE_END):
                with self._cond:
                    if me in self._idle:  # no hand-over came: end
                        self._idle.remove(me)
                        self._threads -= 1
                        return
                me.wake.acquire()  # a hand-over came as the wait ended: its release is done
