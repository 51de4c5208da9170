"""A watchdog thread: deadlines that fire even while the guarded thread is stuck in a call.

A per-read socket timeout never fires against a server that sends one byte a second, so a
fetch's total deadline needs someone else to act when it passes. One watchdog thread serves
every fetch in the process: arming a deadline is a heap push, not a thread per fetch.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

COMPACT_AT = 256  # cancelled alarms tolerated in the heap before it is rebuilt without them


class Alarm:
    """One armed deadline; `cancel()` it once the guarded work is over."""

    __slots__ = ("_dog", "at", "callback", "cancelled")

    def __init__(self, at: float, callback: Callable[[], None], dog: Watchdog) -> None:
        self.at = at  # time.monotonic() seconds
        self.callback = callback
        self.cancelled = False
        self._dog = dog

    def cancel(self) -> None:
        """Stop the callback from running, if it has not started yet. Takes no lock: a hundred
        fetch threads cancel at once, and the flag is all the watchdog thread reads."""
        if not self.cancelled:
            self.cancelled = True
            self._dog.dead += 1  # a count for compaction: a lost update only delays it


class Watchdog:
    """Runs callbacks at their deadlines on one daemon thread, started on first use.

    A cancelled alarm stays in the heap (cancelling is a flag and a count, no lock), but once
    more than half the heap is cancelled the next `arm` rebuilds it without them: a pass of
    thousands of fetches, each cancelling a 30 s alarm after a few milliseconds, keeps the
    heap about as small as the number of fetches in flight, not the number started within a
    timeout.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[tuple[float, int, Alarm]] = []
        self._seq = itertools.count()
        self.dead = 0  # about how many cancelled alarms are still in the heap
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def arm(self, at: float, callback: Callable[[], None]) -> Alarm:
        """Call `callback` on the watchdog thread at monotonic time `at`, unless cancelled."""
        alarm = Alarm(at, callback, self)
        with self._wake:
            if self.dead > COMPACT_AT and 2 * self.dead > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self.dead = 0
            heapq.heappush(self._heap, (at, next(self._seq), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is alarm:
                self._wake.notify()  # due sooner than what the thread is waiting for
        return alarm

    def pending(self) -> int:
        """Alarms in the heap, cancelled ones included (for tests and benchmarks)."""
        with self._wake:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._wake:
                alarm = self._next_due()
            try:
                alarm.callback()
            except Exception:  # a failing callback must not stop every later deadline
                log.exception("deadline callback failed")

    def _next_due(self) -> Alarm:
        """Wait (holding the condition) until an uncancelled alarm is due, and pop it."""
        while True:
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
                self.dead = max(self.dead - 1, 0)
            if not self._heap:
                self._wake.wait()
                continue
            delay = self._heap[0][0] - time.monotonic()
            if delay <= 0:
                alarm = heapq.heappop(self._heap)[2]
                alarm.cancelled = True  # gone from the heap: a late cancel() has nothing to count
                return alarm
            self._wake.wait(delay)


watchdog = Watchdog("notifier-deadlines")
