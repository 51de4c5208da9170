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
memory stays flat however many watchers there are.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from notifier.config import WatcherConfig
from notifier.pipeline import Alerts, Outcome, check, check_on_loop
from notifier.store import Store
from notifier.watchers import _loop

FLUSH_EVERY = 0.01  # seconds an outcome may wait to be printed with the ones after it

# Outcomes that finished in one turn of the loop, what stopped the pass, or the end.
_Item = list[Outcome] | BaseException | None


def run_pass(selected: Sequence[WatcherConfig], workers: int, store: Store, alerts: Alerts | None,
             dry_run: bool) -> Iterator[Outcome]:
    """Yield the outcome of checking each of `selected` once, as the checks finish.

    A check that raises (a broken state database) stops the pass from starting more; the
    checks under way finish, then it is re-raised here. Leaving the loop early (an
    interrupt) cancels the checks still waiting on the network.
    """
    results: queue.SimpleQueue[_Item] = queue.SimpleQueue()
    with ThreadPoolExecutor(workers, thread_name_prefix="check") as pool:
        driver = _loop.start(_drive(selected, workers, pool, store, alerts, dry_run, results.put))
        try:
            while (item := results.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            driver.cancel()


async def _drive(selected: Sequence[WatcherConfig], workers: int, pool: ThreadPoolExecutor,
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
            room.release()

    try:
        for wc in selected:
            await room.acquire()
            if failed:
                break
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
