"""The watchdog thread behind url deadlines: alarms fire in time order, cancelled ones never."""

from __future__ import annotations

import threading
import time

from notifier.watchers._watchdog import Watchdog


def test_alarms_fire_in_order_and_cancelled_ones_do_not() -> None:
    dog = Watchdog("test-watchdog")
    fired: list[str] = []
    done = threading.Event()

    def late() -> None:
        fired.append("late")
        done.set()

    now = time.monotonic()
    dog.arm(now + 0.3, late)
    cancelled = dog.arm(now + 0.1, lambda: fired.append("cancelled"))
    dog.arm(now + 0.05, lambda: fired.append("early"))  # sooner than what the thread waits for
    cancelled.cancel()
    assert done.wait(5)
    assert fired == ["early", "late"]
    assert time.monotonic() - now >= 0.3


def test_a_failing_callback_does_not_stop_later_alarms() -> None:
    dog = Watchdog("test-watchdog")
    done = threading.Event()
    now = time.monotonic()

    def boom() -> None:
        raise RuntimeError("callback bug")

    dog.arm(now, boom)
    dog.arm(now + 0.05, done.set)
    assert done.wait(5)


def test_cancelled_alarms_do_not_pile_up() -> None:
    """A pass cancels thousands of 30 s alarms within milliseconds; the heap must not keep them."""
    dog = Watchdog("test-watchdog")
    far = time.monotonic() + 3600
    for _ in range(5000):
        dog.arm(far, lambda: None).cancel()
    assert dog.pending() < 600
