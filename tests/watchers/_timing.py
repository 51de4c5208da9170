"""Timing one fetch, for the tests that run many url watchers at once."""

from __future__ import annotations

import time

from notifier.errors import WatchError
from notifier.watchers.url import Url


def timed(w: Url) -> tuple[Url, float, str]:
    """Fetch once: the watcher, the seconds it took, and its text or error message."""
    started = time.monotonic()
    try:
        outcome = w.fetch({}).text
    except WatchError as exc:
        outcome = str(exc)
    return w, time.monotonic() - started, outcome
