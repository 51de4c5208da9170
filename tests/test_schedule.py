"""notifier.schedule: stable phases that survive late and early runs, cron in the watcher's
zone, quiet hours that wrap midnight, the overdue rule the daemon and `status` share, and the
daemon's timetable of checks (real threads; every wait is an event or a poll with a deadline)."""

from __future__ import annotations

import functools
import threading
import time as clock
from collections.abc import Callable, Iterator, Sized
from concurrent.futures import Future
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from hypothesis import given
from hypothesis import strategies as st

from notifier import config
from notifier.config import WatcherConfig
from notifier.schedule import AFTER, CronExpr, Grid, Schedule, Timetable, Window, stable_fraction


def watcher(tmp_path: Path, name: str, schedule: str = "every: 60s") -> WatcherConfig:
    path = tmp_path / "watchers.yaml"
    path.write_text(f"watchers:\n  - {{name: {name}, kind: file, path: /x, {schedule}}}\n")
    return config.load(path, {}).watchers[0]


def times_of(wc: WatcherConfig) -> Callable[[float], float]:
    """The watcher's fire times as a function of the moment asked about."""
    def at_or_after(moment: float) -> float:
        fire = wc.schedule.at_or_after(wc.name, moment)
        assert fire is not None
        return fire
    return at_or_after


def test_interval_fires_on_the_watchers_own_grid(tmp_path: Path) -> None:
    wc = watcher(tmp_path, "prices")
    next_time = times_of(wc)
    now = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC).timestamp()
    first = next_time(now)
    assert now <= first < now + 60
    phase = (first - datetime(2020, 1, 1, tzinfo=UTC).timestamp()) % 60
    assert abs(phase - stable_fraction("prices") * 60) < 1e-3
    # a prompt run at an arbitrary moment (start-up, late run) does not move the phase
    odd = now + 7.3
    assert next_time(odd + AFTER) == (first if first > odd + AFTER else first + 60)
    late = first + 75
    assert next_time(late) == first + 120
    assert next_time(first) == first  # at a grid point: that point
    assert next_time(first + AFTER) == first + 60


def test_phases_spread_many_watchers(tmp_path: Path) -> None:
    fractions = sorted(stable_fraction(f"w{i}") for i in range(1000))
    per_second = [sum(1 for f in fractions if s <= f * 60 < s + 1) for s in range(60)]
    assert max(per_second) < 40  # uniform would be 16.7; all in one second would be 1000
    assert min(per_second) > 0


def test_cron_follows_the_watchers_time_zone(tmp_path: Path) -> None:
    wc = watcher(tmp_path, "morning", "cron: '0 9 * * *', timezone: Asia/Shanghai")
    fire = wc.schedule.at_or_after(wc.name, datetime(2026, 11, 24, 0, 0, tzinfo=UTC).timestamp())
    assert fire == datetime(2026, 11, 24, 1, 0, tzinfo=UTC).timestamp()  # 09:00 in Shanghai


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


def test_a_crons_times_are_apschedulers(tmp_path: Path) -> None:
    """The timetable, `notifier status` and a fleet's claims all read a cron through
    CronTrigger, in the watcher's zone, including what follows a run."""
    wc = watcher(tmp_path, "morning", "cron: '*/20 9-18 * * mon-fri', timezone: Asia/Shanghai")
    trigger = CronTrigger.from_crontab("*/20 9-18 * * mon-fri", timezone=ZoneInfo("Asia/Shanghai"))
    next_time = times_of(wc)
    for now in (datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC),
                datetime(2026, 11, 27, 10, 0, 7, 300000, tzinfo=UTC)):  # a Friday, after 18:00 there
        fire = trigger.get_next_fire_time(None, now)
        assert next_time(now.timestamp()) == pytest.approx(fire.timestamp(), abs=1e-6)
        again = trigger.get_next_fire_time(fire, fire + timedelta(seconds=AFTER))
        assert next_time(fire.timestamp() + AFTER) == pytest.approx(again.timestamp(), abs=1e-6)


def poll(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = clock.monotonic() + timeout
    while not condition():
        assert clock.monotonic() < end, f"timed out waiting for {what}"
        clock.sleep(0.005)


def every(seconds: float) -> Grid:
    """A schedule on a grid of `seconds` from the epoch."""
    return Grid(0.0, seconds)


class Never:
    """A schedule with no times: the name runs only at the `first` it is set with."""

    def at_or_after(self, name: str, moment: float) -> None:
        return None


class Runs:
    """The `run` of a Timetable under test: counts runs per name, notes overlaps, and holds
    the names in `hold` until `release` is set."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.active: set[str] = set()
        self.overlaps: list[str] = []
        self.most = 0
        self.started: dict[str, float] = {}
        self.hold: set[str] = set()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, name: str) -> None:
        with self.lock:
            self.started.setdefault(name, clock.time())
            if name in self.active:
                self.overlaps.append(name)
            self.active.add(name)
            self.most = max(self.most, len(self.active))
        if name in self.hold:
            self.release.wait(10)
        with self.lock:
            self.active.discard(name)
            self.count[name] = self.count.get(name, 0) + 1

    def n(self, name: str) -> int:
        with self.lock:
            return self.count.get(name, 0)


@pytest.fixture
def runs() -> Iterator[Runs]:
    """A Runs whose held names are let go at the end of the test, whatever happened."""
    made = Runs()
    yield made
    made.release.set()


def test_timetable_runs_each_name_on_its_schedule_never_twice_at_once(runs: Runs) -> None:
    table = Timetable(runs, workers=4)
    table.TICK = 0.005  # many runs quickly; the tick has a test of its own
    runs.hold.add("slow")
    table.set("fast", every(0.02))
    table.set("slow", every(0.02), first=clock.time())
    table.start()
    try:
        poll(lambda: runs.n("fast") >= 10, "10 runs of a 20 ms schedule")
        assert runs.n("slow") == 0  # still in its first run: its later times were skipped
        assert table.next_due() is not None
        runs.release.set()
        poll(lambda: runs.n("slow") >= 3, "the held name running on schedule again")
        table.remove("fast")
        done = runs.n("fast")
        poll(lambda: runs.n("slow") >= 6, "more runs of the other name")
        assert runs.n("fast") <= done + 1  # one run may have been under way
        assert runs.overlaps == []
    finally:
        table.shutdown()


def test_timetable_keeps_to_its_workers_and_ends_idle_ones(runs: Runs) -> None:
    table = Timetable(runs, workers=2)
    table.IDLE_END = 0.05
    runs.hold |= {"a", "b", "c"}
    start = clock.time()
    for name in ("a", "b", "c"):
        table.set(name, Never(), first=start)  # one run each, then never again
    table.start()
    try:
        poll(lambda: len(runs.active) == 2, "two runs at once")
        assert sum(runs.n(x) for x in "abc") == 0  # the third waits for a worker
        runs.release.set()
        poll(lambda: sum(runs.n(x) for x in "abc") == 3, "the third run, once a worker is free")
        assert runs.most == 2
        poll(lambda: not any(t.name.startswith("check-") for t in threading.enumerate()),
             "idle workers to end")
        assert table.next_due() is None
    finally:
        table.shutdown()


def test_timetable_later_defers_the_next_run_only(runs: Runs) -> None:
    """Retry-After: the next run waits; sooner than the schedule is refused."""
    table = Timetable(runs, workers=1)
    runs.hold.add("site")
    table.set("site", every(0.02))
    table.start()
    try:
        poll(lambda: "site" in runs.active, "a first run")  # the daemon asks from inside the run
        assert not table.later("site", clock.time() - 1)  # sooner than planned: no change
        assert not table.later("other", clock.time() + 60)  # not scheduled here
        assert table.later("site", clock.time() + 60)
        runs.release.set()
        poll(lambda: table.next_due() is not None, "the run to end")
        assert (table.next_due() or 0) > clock.time() + 59
        assert runs.n("site") == 1
        count = runs.n("site")
        table.set("site", every(0.02))  # a reload replaces the entry, and its deferral with it
        poll(lambda: runs.n("site") > count, "the replaced entry running on its schedule")
    finally:
        table.shutdown()


NAMES = st.sampled_from("abcdef")
MOMENTS = st.floats(0, 5000, allow_nan=False)
MOVES = st.lists(st.one_of(
    st.tuples(st.just("set"), NAMES, MOMENTS), st.tuples(st.just("later"), NAMES, MOMENTS),
    st.tuples(st.just("soon"), NAMES, st.just(0.0)), st.tuples(st.just("remove"), NAMES, st.just(0.0))),
    max_size=40)


@given(MOVES)
def test_the_next_due_is_the_soonest_of_every_names_latest_time(moves: list[tuple[str, str, float]]) -> None:
    """Entries are the heap's items and are never moved in place: whatever is set, deferred,
    woken and removed, the timetable's next time is the soonest any name is due now."""
    now = 1000.0
    table = Timetable(lambda name: None, workers=1, now=lambda: now)
    due: dict[str, float] = {}
    for move, name, moment in moves:
        if move == "set":
            table.set(name, Never(), first=moment)
            due[name] = moment
        elif move == "later":
            moved = name in due and moment > due[name]
            assert table.later(name, moment) == moved
            if moved:
                due[name] = moment
        elif move == "soon":
            table.soon(name)
            if name in due:
                due[name] = now
        else:
            table.remove(name)
            due.pop(name, None)
        assert table.next_due() == min(due.values(), default=None)


def test_timetable_starts_what_is_due_at_most_a_tick_late_never_early(runs: Runs) -> None:
    table = Timetable(runs, workers=4)
    table.TICK = 0.2
    due = {f"w{i}": clock.time() + 0.3 + i * 0.03 for i in range(10)}  # ten runs within 0.3 s
    for name, when in due.items():
        table.set(name, Never(), first=when)
    table.start()
    try:
        poll(lambda: len(runs.started) == 10, "every run")
        late = {name: runs.started[name] - when for name, when in due.items()}
        assert min(late.values()) >= 0, late
        assert max(late.values()) < table.TICK + 0.5, late  # the 0.5 s: a loaded test machine
    finally:
        table.shutdown()


class Launches:
    """A Timetable's `launch` under test: a pending future for each run of a name that starts
    with `only` (the others it declines: they run on the workers), and the most of them pending
    at once among the names that start with `counted`."""

    def __init__(self, only: str = "", counted: str = "") -> None:
        self.only = only
        self.counted = counted
        self.futures: list[tuple[str, Future[None]]] = []
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, name: str) -> Future[None] | None:
        if not name.startswith(self.only):
            return None
        future: Future[None] = Future()
        with self.lock:
            self.futures.append((name, future))
            self.most = max(self.most, sum(1 for n, f in self.futures
                                           if n.startswith(self.counted) and not f.done()))
        return future

    def started(self, prefix: str = "") -> int:
        with self.lock:
            return sum(1 for n, _ in self.futures if n.startswith(prefix))

    def end(self, name: str) -> None:
        """End the first pending run of `name`."""
        with self.lock:
            future = next(f for n, f in self.futures if n == name and not f.done())
        future.set_result(None)  # its callbacks (the timetable's) run here, outside the lock

    def end_all(self) -> None:
        with self.lock:
            pending = [f for _, f in self.futures if not f.done()]
        for future in pending:
            future.set_result(None)


def test_timetable_launched_runs_hold_their_name_until_their_future_is_done(runs: Runs) -> None:
    """A name `launch` takes elsewhere (the daemon: a url check on the event loop) uses no
    worker, is not started again while its future is pending, and is rescheduled once it is
    done; names `launch` declines run on the workers as usual."""
    launches = Launches(only="elsewhere")
    table = Timetable(runs, workers=2, launch=launches)
    table.TICK = 0.005
    table.set("elsewhere", every(0.02), first=clock.time())
    table.set("here", every(0.02))
    table.start()
    try:
        poll(lambda: runs.n("here") >= 5, "5 runs of the name on the workers")
        assert launches.started() == 1  # its later times were skipped while it was pending
        launches.end("elsewhere")
        poll(lambda: launches.started() >= 2, "the launched name started again after its run ended")
        assert "elsewhere" not in runs.count  # never run on a worker
    finally:
        launches.end_all()
        table.shutdown()


def test_launched_runs_count_toward_the_runs_at_once() -> None:
    """Names due together wait in the timetable while `workers` runs are under way, launched
    ones too: a daemon started on thousands of overdue url watchers holds `workers` checks on
    the event loop, not all of them."""
    launches = Launches()
    table = Timetable(lambda name: None, workers=3, launch=launches)
    for i in range(8):
        table.set(f"w{i}", Never(), first=clock.time())
    table.start()
    try:
        for done in range(8):  # finish the runs one by one, as each starts (in name order)
            poll(functools.partial(lambda n: launches.started() > n, done), f"run {done + 1} of 8")
            launches.end(f"w{done}")
        assert launches.most == 3
    finally:
        launches.end_all()
        table.shutdown()


def test_a_queues_runs_beyond_its_turns_wait_without_taking_room() -> None:
    """Names of one queue (the daemon: a url watcher's site) have at most `per_queue` runs
    under way; the rest wait without taking the room of `workers`, so names due later on
    other sites go on; each end of a queue's run starts the next of it, and `limit` (a reload)
    gives a queue more turns at once."""
    launches = Launches(counted="slow")
    table = Timetable(lambda name: None, workers=6, launch=launches, per_queue=2,
                      queue=lambda name: "slow.example" if name.startswith("slow") else None)
    now = clock.time()
    for i in range(8):  # due first: without turns they would take all six runs' room
        table.set(f"slow-{i}", Never(), first=now - 1)
    for i in range(4):
        table.set(f"fast-{i}", Never(), first=now)
    table.start()
    try:
        poll(lambda: launches.started("fast") == 4, "the other site's runs beside the queue's two")
        assert launches.started("slow") == 2
        assert table.next_due() == now - 1  # the held ones are due
        launches.end("slow-0")
        poll(lambda: launches.started("slow") == 3, "the queue's next run as one of its runs ends")
        table.limit(8, 4)
        poll(lambda: launches.started("slow") == 5, "two more turns at once after a reload")
        assert launches.most == 4
    finally:
        launches.end_all()
        table.shutdown()


def fail_twice(table: Timetable, name: str, started: threading.Semaphore, seen: Sized) -> None:
    """Run `name` (whose runs all fail) every 20 ms until it has started twice and both
    failures reached `seen`: a failing name keeps its schedule."""
    table.TICK = 0.005
    table.set(name, every(0.02), first=clock.time())
    table.start()
    for _ in range(2):
        assert started.acquire(timeout=5), f"{name} was not run again after a failure"
    poll(lambda: len(seen) >= 2, "both failures handed over")


def test_timetable_hands_what_escapes_a_run_to_its_failed_callback() -> None:
    """A run is meant to catch its own failures; one that does not reaches `failed` (the
    daemon's health), and the name keeps its schedule."""
    seen: list[tuple[str, Exception]] = []
    calls = threading.Semaphore(0)

    def run(name: str) -> None:
        calls.release()
        raise ValueError(f"{name} broke")

    table = Timetable(run, workers=1, failed=lambda name, exc: seen.append((name, exc)))
    try:
        fail_twice(table, "x", calls, seen)
        assert seen[0][0] == "x"
        assert str(seen[0][1]) == "x broke"
    finally:
        table.shutdown()


def test_soon_runs_a_name_now_and_again_after_its_running_self(runs: Runs) -> None:
    """The daemon's outbox wake-up: a name due in an hour runs now; woken again while it runs,
    it runs once more right after (never beside itself, so no wake-up is lost), and then its
    schedule goes on unchanged."""
    table = Timetable(runs, workers=2)
    runs.hold.add("outbox")
    table.set("outbox", every(3600), first=clock.time() + 3600)
    table.soon("unknown")  # nothing scheduled under that name: nothing happens
    table.start()
    try:
        table.soon("outbox")
        poll(lambda: "outbox" in runs.active, "the woken run")
        table.soon("outbox")  # running: another run follows it, none starts beside it
        table.soon("outbox")  # woken twice meanwhile: still one more run
        runs.release.set()
        poll(lambda: runs.n("outbox") == 2, "the run that follows the woken one")
        poll(lambda: (table.next_due() or 0) > clock.time() + 60, "the name back on its hourly grid")
        assert runs.overlaps == []
        assert runs.n("outbox") == 2
        assert "unknown" not in runs.started
    finally:
        table.shutdown()


def test_a_launch_that_raises_is_the_runs_failure_and_the_timer_goes_on() -> None:
    """A bug in `launch` (or `queue`) reaches `failed` under the name, and the names due after
    it still start."""
    seen: list[tuple[str, str]] = []
    launches = Launches()

    def launch(name: str) -> Future[None] | None:
        if name == "a-broken":
            raise RuntimeError("launch broke")
        return launches(name)

    table = Timetable(lambda name: None, workers=2, launch=launch,
                      failed=lambda name, exc: seen.append((name, str(exc))))
    table.set("a-broken", Never(), first=clock.time())
    table.set("b-fine", Never(), first=clock.time())
    table.start()
    try:
        poll(lambda: launches.started("b-fine") == 1, "the name due after the broken one")
        assert seen == [("a-broken", "launch broke")]
    finally:
        launches.end_all()
        table.shutdown()


def test_a_submitted_job_that_raises_is_reported_under_its_name() -> None:
    """A fleet's claimed check runs through submit; what escapes it reaches `failed` with the
    watcher's name, and the worker goes on to the next job."""
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def broken() -> None:
        raise RuntimeError("claimed check broke")

    table = Timetable(lambda name: None, workers=1, failed=lambda name, exc: seen.append((name, str(exc))))
    try:
        table.submit("prices", broken)
        table.submit("stock", done.set)
        assert done.wait(5), "the worker did not go on after a job raised"
        assert seen == [("prices", "claimed check broke")]
    finally:
        table.shutdown()


def test_what_escapes_a_launched_run_is_reported_under_its_name() -> None:
    """A url check runs on the event loop and hands the timetable its future: an exception in
    it reaches `failed` with the name (never only the future), and the name runs again."""
    seen: list[tuple[str, str]] = []
    launched = threading.Semaphore(0)

    def launch(name: str) -> Future[None]:
        future: Future[None] = Future()
        launched.release()
        future.set_exception(ValueError(f"{name} broke on the loop"))
        return future

    table = Timetable(lambda name: None, workers=1, launch=launch,
                      failed=lambda name, exc: seen.append((name, str(exc))))
    try:
        fail_twice(table, "prices", launched, seen)
        assert seen[0] == ("prices", "prices broke on the loop")
    finally:
        table.shutdown()


def test_a_failed_callback_that_raises_does_not_stop_a_one_worker_lane() -> None:
    """The outbox and housework lanes have one worker: were it to die with the reporting of a
    failure, the lane would stop for good."""
    done = threading.Event()

    def failed(name: str, exc: Exception) -> None:
        raise RuntimeError("reporting broke too")

    def broken() -> None:
        raise ValueError("run broke")

    table = Timetable(lambda name: None, workers=1, failed=failed)
    try:
        table.submit("a", broken)
        table.submit("b", done.set)
        assert done.wait(5), "the lane's only worker died"
    finally:
        table.shutdown()
