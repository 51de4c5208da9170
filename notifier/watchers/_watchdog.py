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
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(order=True)
class Alarm:
    """One armed deadline; `cancel()` it once the guarded work is over."""

    at: float  # time.monotonic() seconds
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Stop the callback from running, if it has not started yet (a flag: no lock needed)."""
        self.cancelled = True


class Watchdog:
    """Runs callbacks at their deadlines on one daemon thread, started on first use.

    Cancelled alarms stay in the heap until they are due and are then dropped, which keeps
    `cancel()` free; there are at most as many as fetches started within one timeout.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[Alarm] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, at: float, callback: Callable[[], None]) -> Alarm:
        """Call `callback` on the watchdog thread at monotonic time `at`, unless cancelled."""
        alarm = Alarm(at, next(self._seq), callback)
        with self._wake:
            heapq.heappush(self._heap, alarm)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0] is alarm:
                self._wake.notify()  # due sooner than what the thread is waiting for
        return alarm

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
            while self._heap and self._heap[0].cancelled:
                heapq.heappop(self._heap)
            if not self._heap:
                self._wake.wait()
                continue
            delay = self._heap[0].at - time.monotonic()
            if delay <= 0:
                return heapq.heappop(self._heap)
            self._wake.wait(delay)


watchdog = Watchdog("notifier-deadlines")
