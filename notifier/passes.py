"""A pass: every selected watcher checked once, `workers` checks under way at a time.

A check of a url watcher spends nearly all its time waiting for the network, so a pass keeps
`workers` (default 100) checks in flight on the one event loop that carries every url fetch
(notifier.watchers._loop). The rest of such a check — the stored state, decoding, filters,
diff, the record — runs on the loop too, between fetches: handing each check to a thread and
back cost twice the check itself (measured: 0.63 against 0.23 ms of CPU per page). Only a
large body (over pipeline.INLINE_MAX) goes to a thread, so a 10 MB page's filters never hold up the
other fetches or their deadlines. Kinds that block (a command, a file, the browser) fetch on
those threads as well; the pool grows to `workers` threads only if that many block at once.

Outcomes come back in the order checks finish, one at a time, and nothing is queued ahead:
memory stays flat however many watchers there are. A site's checks take turns: at most
`per_host` of them are under way, and the rest wait without holding any of the `workers`, so
a slow or hung site's watchers never take every check's room while other sites could go on
(the daemon's timetable does the same).
"""

from __future__ import annotations

import asyncio
import collections
import queue
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from notifier.config import WatcherConfig
from notifier.pipeline import Alerts, Outcome, check, check_on_loop
from notifier.store import Store
from notifier.watchers import _loop

FLUSH_EVERY = 0.01  # seconds an outcome may wait to be printed with the ones after it

# Outcomes that finished in one turn of the loop, what stopped the pass, or the end.
_Item = list[Outcome] | BaseException | None


def run_pass(selected: Sequence[WatcherConfig], workers: int, per_queue: int, store: Store,
             alerts: Alerts | None, dry_run: bool) -> Iterator[Outcome]:
    """Yield the outcome of checking each of `selected` once, as the checks finish.

    A check that raises (a broken state database) stops the pass from starting more; the
    checks under way finish, then it is re-raised here. Leaving the loop early (an
    interrupt) cancels the checks still waiting on the network.
    """
    results: queue.SimpleQueue[_Item] = queue.SimpleQueue()
    with ThreadPoolExecutor(workers, thread_name_prefix="check") as pool:
        turns = _Turns(selected, per_queue)
        driver = _loop.start(_drive(turns, workers, pool, store, alerts, dry_run, results.put))
        try:
            while (item := results.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            driver.cancel()


class _Turns:
    """The checks of a pass in the order they may start: each as it comes, unless its queue
    (a url's site) has `per_queue` under way; then when one of those ends. Used on the loop."""

    def __init__(self, selected: Sequence[WatcherConfig], per_queue: int) -> None:
        self._feed = iter(selected)
        self.per_queue = per_queue
        self._under_way: collections.Counter[Hashable] = collections.Counter()
        self._held: dict[Hashable, collections.deque[WatcherConfig]] = {}
        self._ready: collections.deque[WatcherConfig] = collections.deque()  # given a turn
        self.more = asyncio.Event()  # set when a held check is given its turn

    def next(self) -> WatcherConfig | None:
        """The next check to start; None when all have started or the rest are held."""
        if self._ready:
            return self._ready.popleft()
        for wc in self._feed:
            queue = wc.watcher.queue()
            if queue is None:
                return wc
            if self._under_way[queue] < self.per_queue:
                self._under_way[queue] += 1
                return wc
            self._held.setdefault(queue, collections.deque()).append(wc)
        return None

    def holding(self) -> bool:
        return bool(self._held)

    def ended(self, wc: WatcherConfig) -> None:
        """`wc`'s check ended: the first check held for its queue has the turn."""
        queue = wc.watcher.queue()
        if queue is None:
            return
        held = self._held.get(queue)
        if held:
            self._ready.append(held.popleft())
            self.more.set()
            if not held:
                del self._held[queue]
        else:
            self._under_way[queue] -= 1


async def _drive(turns: _Turns, workers: int, pool: ThreadPoolExecutor,
                 store: Store, alerts: Alerts | None, dry_run: bool,
                 report: Callable[[_Item], None]) -> None:
    """Start checks while fewer than `workers` are under way; report the outcomes, then None.

    Outcomes are reported in batches, at most FLUSH_EVERY after the first of them finished:
    waking the reading thread for each one cost a fifth of the pass's time in GIL hand-overs
    (and, at 50 ms a page, 0.47 against 0.39-0.43 ms of CPU a page when batched per loop turn).
    """
    room = asyncio.Semaphore(workers)
    failed: list[BaseException] = []
    running: set[asyncio.Task[None]] = set()
    done: list[Outcome] = []

    def flush() -> None:
        if done:
            report(done.copy())
            done.clear()

    async def one(wc: WatcherConfig) -> None:
        try:
            outcome = await _check(wc, pool, store, alerts, dry_run)
            if not done:
                asyncio.get_running_loop().call_later(FLUSH_EVERY, flush)
            done.append(outcome)
        except Exception as exc:  # the state database broke: no other check can succeed
            failed.append(exc)
        finally:
            turns.ended(wc)
            room.release()

    try:
        while True:
            await room.acquire()
            wc = None if failed else turns.next()
            if wc is None:
                room.release()
                if failed or not turns.holding():
                    break
                turns.more.clear()  # nothing is ready (next() took all), so no turn is missed
                await turns.more.wait()
                continue
            task = asyncio.create_task(one(wc))
            running.add(task)
            task.add_done_callback(running.discard)
        for _ in range(workers):  # every check under way has finished
            await room.acquire()
    finally:
        for task in running:
            task.cancel()
        flush()
        report(failed[0] if failed else None)


async def _check(wc: WatcherConfig, pool: ThreadPoolExecutor, store: Store, alerts: Alerts | None,
                 dry_run: bool) -> Outcome:
    if wc.watcher.asynchronous:
        return await check_on_loop(wc, store, alerts, dry_run, pool)
    return await asyncio.get_running_loop().run_in_executor(pool, check, wc, store, alerts, dry_run)
