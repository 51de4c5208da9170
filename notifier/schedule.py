"""When things happen: a watcher's schedule, its quiet hours, the overdue rule, and the
daemon's timetable of checks.

Parsed once from the config into these values; the daemon, `notifier status` and the alerts
ask them, so each rule about time has this one home.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import logging
import math
import threading
import time as clock
import zlib
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

_GRID_START = datetime(2020, 1, 1, tzinfo=UTC).timestamp()  # interval grids count from here
AFTER = 1e-3  # the next time after a check that fired at t is looked for from t + AFTER on

log = logging.getLogger(__name__)


def stable_fraction(name: str) -> float:
    """A number in [0, 1) fixed for a watcher name, used to spread watchers over time."""
    return zlib.crc32(name.encode()) / 2**32


class Times(Protocol):
    """When a name runs, as plain Unix times (the daemon's Timetable, `notifier status` and a
    fleet's claims ask it)."""

    def at_or_after(self, name: str, moment: float) -> float | None:
        """The first time `name` runs at or after `moment`; None: never again."""


def grid_time(anchor: float, every: float, moment: float) -> float:
    """The first of the times `anchor + k * every` at or after `moment`.

    It depends only on the moment asked about, so a prompt first run at start-up or a late run
    never becomes the phase for good, and watchers started together do not stay bunched
    (APScheduler's IntervalTrigger counts from the previous run)."""
    return anchor + max(0, math.ceil((moment - anchor) / every)) * every


class Grid:
    """Times `anchor + k * every` whatever the name: the daemon's own rounds."""

    __slots__ = ("anchor", "every")

    def __init__(self, anchor: float, every: float) -> None:
        self.anchor = anchor
        self.every = every

    def at_or_after(self, name: str, moment: float) -> float:
        return grid_time(self.anchor, self.every, moment)


@dataclass(frozen=True, slots=True)
class CronExpr:
    """A validated five-field cron expression, like ``*/15 9-18 * * mon-fri``.

    APScheduler's CronTrigger reads and fires it; it is imported with the first cron
    expression, so a config without one does not load APScheduler (~2 MiB of a daemon)."""

    text: str

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        """ValueError with a hint when `text` is not a cron expression APScheduler accepts."""
        try:
            _trigger(text, None)  # kept: the trigger of a watcher without a timezone
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a cron expression ({exc}); use five fields like "
                             f"'*/15 9-18 * * mon-fri'") from None
        return cls(text)

    def at_or_after(self, zone: tzinfo | None, moment: float) -> float | None:
        """The first fire time at or after `moment` in `zone` (UTC if None); None: never."""
        fire = _trigger(self.text, zone).get_next_fire_time(None, datetime.fromtimestamp(moment, UTC))
        return None if fire is None else float(fire.timestamp())


@functools.cache
def _trigger(text: str, zone: tzinfo | None) -> CronTrigger:
    """One trigger for each expression and zone, shared by the watchers that use them."""
    from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - see CronExpr

    return CronTrigger.from_crontab(text, timezone=zone or UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Every `every` seconds on a grid with a stable per-name phase, or on a cron expression."""

    every: float
    cron: CronExpr | None = None
    zone: tzinfo | None = None

    def at_or_after(self, name: str, moment: float) -> float | None:
        """An interval is a grid with the name's own phase, so 1,000 watchers do not fire
        together; a cron asks its trigger in the watcher's zone. Worked out at each ask (a crc32
        of the name), so a daemon holds nothing per watcher for it: the schedule is shared by
        the watchers written alike."""
        if self.cron is not None:
            return self.cron.at_or_after(self.zone, moment)
        return grid_time(_GRID_START + stable_fraction(name) * self.every, self.every, moment)

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
    """One scheduled name. It is the heap's item itself, ordered by when it is due, then by
    name; its `due` never changes while it is in the heap (a moved name gets a new entry, see
    Timetable._move), so a daemon holds one object and one float per watcher here."""

    __slots__ = ("again", "due", "name", "not_before", "running", "times")

    def __init__(self, name: str, times: Times, due: float = math.inf) -> None:
        self.name = name
        self.times = times
        self.due = due  # when it is next due (inf: never); while it runs, when the run was due
        self.running = False
        self.not_before = 0.0  # Retry-After: no run before this
        self.again = False  # woken (Timetable.soon) while it ran: run again as soon as it ends

    def __lt__(self, other: _Entry) -> bool:
        """Sooner first; names due at the same time start in the order of their names."""
        if self.due != other.due:
            return self.due < other.due
        return self.name < other.name

    def waiting(self) -> bool:
        """Due some time and not running: in the heap, or held for its queue's turn."""
        return not self.running and self.due != math.inf

    def following(self, now: float) -> float:
        """After a run (or a skipped time): the first time of its schedule after the time it was
        due, or its Retry-After if that is later (inf: never)."""
        nxt = self.times.at_or_after(self.name, max(now, self.due + AFTER))
        if nxt is None:
            return math.inf
        return max(nxt, self.not_before)


class _Worker:
    """A worker thread's hand-over slot: the job it is given, and the lock it waits on for it."""

    __slots__ = ("job", "wake")

    def __init__(self, job: Callable[[], None] | None) -> None:
        self.job = job
        self.wake = threading.Lock()
        self.wake.acquire()  # released by a hand-over


class Timetable:
    """Runs `run(name)` for every name on its own schedule, at most `workers` runs at once.

    The daemon's checks: a thousand watchers as a thousand scheduler jobs cost a thousand jobs'
    bookkeeping (datetimes, events, futures) at every check; here a check is a heap entry of
    plain Unix times, one wait of one thread, and a hand-over to a worker. The rules are those
    of the jobs they replace: a name never runs twice at once (a run still going when its next
    time comes skips that time), a late run still runs, once, and the next time is the first of
    the schedule after the run was due, so a late or early run never moves a grid's phase.

    The runs at once count those `launch` took elsewhere too (the daemon's url checks on the
    event loop): a daemon started on 20,000 overdue watchers of one site had launched them all
    within its 30 s spread, 20,000 checks waiting for the site's turn at once, each holding its
    stored state (the peak of its memory). Names due while every run's room is taken wait in
    the heap, the soonest due first. And names in one `queue` (the daemon: a url watcher's
    site) have at most `per_queue` runs under way; the others wait here for one of them to
    end, holding no room, so a slow or hung site's checks never take every run's room while
    other sites could go on.

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
                 failed: Callable[[str, Exception], None] | None = None,
                 queue: Callable[[str], Hashable | None] | None = None, per_queue: int = 1) -> None:
        self.run = run
        # Told which name's run raised what (the daemon: its health, a `status` line); a run is
        # meant to catch its own failures, so this is a last guard, never only a log line.
        self.failed = failed
        # Runs a name elsewhere (the daemon: a url check on the event loop, which needs no
        # thread while it waits) and returns its future; None: run it on a worker as usual.
        self.launch = launch
        self.workers = workers
        self.queue = queue  # the queue a name's runs take turns in (None: none)
        self.per_queue = per_queue
        self.now = now
        self._cond = threading.Condition()
        # The waiting entries, and the stale ones left in place until they come up (see _stale).
        self._heap: list[_Entry] = []
        self._entries: dict[str, _Entry] = {}
        self._running: set[str] = set()
        self._idle: list[_Worker] = []  # the last one to finish is the first to get work
        self._waiting: collections.deque[Callable[[], None]] = collections.deque()  # no worker free
        self._threads = 0
        self._paused = False
        self._stopped = False
        self._full = False  # the timer waits for a run to end before it starts the next
        self._turns: collections.Counter[Hashable] = collections.Counter()  # runs under way per queue
        self._queue_of: dict[str, Hashable] = {}  # the queue of each name under way in one
        self._held: dict[Hashable, collections.deque[_Entry]] = {}  # due, waiting for their queue
        self._timer: threading.Thread | None = None

    # -- the schedule ----------------------------------------------------------------------------

    def set(self, name: str, times: Times, first: float | None = None) -> None:
        """Schedule `name` (again, replacing what it had): first at `first`, else its next time."""
        with self._cond:
            due = times.at_or_after(name, self.now()) if first is None else first
            self._add(_Entry(name, times, math.inf if due is None else due))

    def remove(self, name: str) -> None:
        """Unschedule `name`; a run going on finishes but schedules nothing after it."""
        with self._cond:
            self._entries.pop(name, None)  # left in the heap until it comes up (see _stale)

    def later(self, name: str, when: float) -> bool:
        """Retry-After: no run of `name` before `when`. True if that moved its next run (later
        grid times follow as usual); sooner than the schedule is never asked for."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is None:
                return False
            scheduled = entry.following(self.now()) if entry.running else entry.due
            if when <= scheduled:
                return False
            entry.not_before = when
            if entry.waiting():
                self._move(entry, when)
            return True

    def limit(self, workers: int, per_queue: int) -> None:
        """New limits (a reload): runs at once, and runs of one queue at once. The names held
        for their queue's turn go back into the heap, to be started or held again by them."""
        with self._cond:
            self.workers, self.per_queue = workers, per_queue
            for entry in itertools.chain.from_iterable(self._held.values()):
                if not self._stale(entry) and entry.waiting():
                    self._push(entry)
            self._held.clear()
            self._cond.notify()  # more room, maybe: the timer looks again

    def next_due(self) -> float | None:
        """The earliest time any name is due (one held for its queue's turn is due), or None."""
        with self._cond:
            while self._heap and self._stale(self._heap[0]):
                heapq.heappop(self._heap)
            held = (waiting[0].due for waiting in self._held.values())
            return min(itertools.chain(held, (self._heap[0].due,) if self._heap else ()), default=None)

    def _add(self, entry: _Entry) -> None:
        """Make `entry` its name's, and put it in the heap if it is ever due."""
        self._entries[entry.name] = entry
        if entry.waiting():
            self._push(entry)

    def _move(self, entry: _Entry, due: float) -> None:
        """A waiting entry is due at another time: a copy at that time takes its place, and the
        entry itself is left in the heap, stale, until it comes up (moving it in place would
        break the heap's order; moves are rare: Retry-After, a woken outbox)."""
        moved = _Entry(entry.name, entry.times, due)
        moved.not_before = entry.not_before
        self._add(moved)

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:  # sooner than the timer waits for: wake it
            self._cond.notify()

    def _stale(self, entry: _Entry) -> bool:
        """Removed, or replaced by `set` or `_move`, since it went into the heap."""
        return self._entries.get(entry.name) is not entry

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
            if entry.running:
                entry.again = True
            else:
                self._move(entry, self.now())

    def _timer_loop(self) -> None:
        look = 0.0  # the monotonic time before which the timer does not wake again for a run
        with self._cond:
            while not self._stopped:
                if self._paused or not self._heap:
                    self._cond.wait(self.LONGEST_WAIT)
                    continue
                entry = self._heap[0]
                wait = entry.due - self.now()
                if wait > 0:  # nothing due: sleep, then start all that is due after the sleep
                    self._cond.wait(min(max(wait, look - clock.monotonic()), self.LONGEST_WAIT))
                    look = clock.monotonic() + self.TICK
                    continue
                if len(self._running) >= self.workers:  # wait for a run to end (see _finished)
                    self._full = True
                    self._cond.wait(self.LONGEST_WAIT)
                    continue
                heapq.heappop(self._heap)
                if self._stale(entry):
                    continue
                try:
                    self._start(entry)
                except Exception as exc:  # a bug in `queue` or `launch`: the run's, not the timer's end
                    self._report(entry.name, exc)
                    self._finished(entry)

    def _start(self, entry: _Entry) -> None:
        """With the lock held: run a due entry, or skip this time while its name still runs (an
        entry `set` anew during a run)."""
        if entry.name in self._running:
            entry.due = entry.following(self.now())
            if entry.waiting():
                self._push(entry)
            return
        queue = self.queue(entry.name) if self.queue is not None else None
        if queue is not None:
            if self._turns[queue] >= self.per_queue:
                self._held.setdefault(queue, collections.deque()).append(entry)
                return
            self._turns[queue] += 1
            self._queue_of[entry.name] = queue
        entry.running = True
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
            if self._full:  # the timer waits for this: wake it (else it sleeps on, unbothered)
                self._full = False
                self._cond.notify()
            queue = self._queue_of.pop(entry.name, None)
            if queue is not None:
                self._next_turn(queue)
            entry.running = False
            entry.due = self.now() if entry.again else entry.following(self.now())
            entry.again = False
            if not self._stale(entry) and entry.waiting():  # not removed or replaced meanwhile
                self._push(entry)

    def _next_turn(self, queue: Hashable) -> None:
        """With the lock held: a run of `queue` ended, so the first of its names held for a
        turn goes back into the heap, due as it was (it comes first)."""
        self._turns[queue] -= 1
        if not self._turns[queue]:
            del self._turns[queue]
        held = self._held.get(queue)
        while held:
            entry = held.popleft()
            if not self._stale(entry) and entry.waiting():  # not moved, replaced or removed since
                self._push(entry)
                break
        if not held:
            self._held.pop(queue, None)

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
