"""One check of one watcher: fetch → filters → compare with the stored state → alerts.

This is the only place that knows the order of the stages; `cli` and `daemon` call it.
Failures follow monit's rules: an error alert after `error_after` consecutive failures, once
(plus optional reminders), and one recovery alert when the watcher works again. A change and
an error never count as each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from notifier.config import WatcherConfig
from notifier.diff import Diff, compute
from notifier.errors import NotifierError, StateError
from notifier.store import Alert, Store, WatcherState

log = logging.getLogger("notifier.check")

Status = Literal["baseline", "unchanged", "changed", "failed"]


class Alerts(Protocol):
    """Builds the queued messages for what a check found (see notifier.alerts)."""

    def change(self, wc: WatcherConfig, diff: Diff, old: str, new: str,
               state: WatcherState, now: float) -> list[Alert]: ...

    def error(self, wc: WatcherConfig, error: str, state: WatcherState, now: float) -> list[Alert]: ...

    def recovery(self, wc: WatcherConfig, state: WatcherState, now: float) -> list[Alert]: ...


@dataclass(frozen=True)
class Outcome:
    """What one check did, for the summary line and the exit code."""

    name: str
    kind: str
    status: Status
    seconds: float
    diff: Diff | None = None
    error: str | None = None
    alerts: int = 0

    def line(self) -> str:
        """The one log line per watcher run."""
        extra = f" alerts={self.alerts}" if self.alerts else ""
        err = f" error={self.error!r}" if self.error else ""
        return f"watcher={self.name} kind={self.kind} outcome={self.status} {self.seconds:.2f}s{extra}{err}"


def filtered(wc: WatcherConfig, text: str, step: Callable[[str, str], None] | None = None) -> str:
    """Run the watcher's filter chain; `step` sees each intermediate result (test-filter)."""
    for flt in wc.filters:
        text = flt.apply(text)
        if step:
            step(flt.describe(), text)
    return text


def check(wc: WatcherConfig, store: Store, alerts: Alerts | None, dry_run: bool = False,
          clock: Callable[[], float] = time.time) -> Outcome:
    """Check one watcher once and record the result (unless `dry_run`).

    Never raises for a watcher's own failure; only a broken state database propagates,
    since no other check could succeed either.
    """
    started = time.monotonic()
    state = store.state(wc.name)
    now = clock()
    try:
        fetched = wc.watcher.fetch(state.meta)
        text = None if fetched.unchanged else filtered(wc, fetched.text)
    except StateError:
        raise
    except NotifierError as exc:
        return _failed(wc, store, alerts, state, str(exc), now, started, dry_run)
    except Exception as exc:  # a bug in one watcher must not stop the others
        log.debug("watcher %s raised", wc.name, exc_info=True)
        message = f"unexpected {type(exc).__name__}: {exc}. This is a bug; run with --debug and report it."
        return _failed(wc, store, alerts, state, message, now, started, dry_run)
    queued = _recovery(wc, alerts, state, now)
    if text is None or text == state.content:
        status: Status = "unchanged"
        diff = None
        store_text = None
    elif state.content is None:
        status, diff, store_text = "baseline", None, text  # the first check alerts nobody
    else:
        diff = compute(state.content, text, wc.context_lines, wc.additions_only, wc.deletions_only)
        status, store_text = ("changed" if diff else "unchanged"), text
        if diff and alerts:
            queued += alerts.change(wc, diff, state.content, text, state, now)
    if not dry_run:
        store.record_success(wc.name, now, fetched.meta, store_text, wc.history, queued)
    return Outcome(wc.name, wc.kind, status, time.monotonic() - started, diff, alerts=len(queued))


def _recovery(wc: WatcherConfig, alerts: Alerts | None, state: WatcherState, now: float) -> list[Alert]:
    if alerts and state.error_alerted_at is not None:
        return alerts.recovery(wc, state, now)
    return []


def _failed(wc: WatcherConfig, store: Store, alerts: Alerts | None, state: WatcherState,
            error: str, now: float, started: float, dry_run: bool) -> Outcome:
    failures = state.failures + 1
    queued: list[Alert] = []
    if alerts and _error_due(wc, state, failures, now):
        queued = alerts.error(wc, error, state, now)
    if not dry_run:
        store.record_failure(wc.name, now, error, queued)
    return Outcome(wc.name, wc.kind, "failed", time.monotonic() - started, error=error,
                   alerts=len(queued))


def _error_due(wc: WatcherConfig, state: WatcherState, failures: int, now: float) -> bool:
    """Alert on the N-th consecutive failure, then only as reminders if configured."""
    if failures < wc.error_after:
        return False
    if state.error_alerted_at is None:
        return True
    return wc.remind_every is not None and now - state.error_alerted_at >= wc.remind_every
