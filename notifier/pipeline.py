"""One check of one watcher: fetch → filters → compare with the stored state → alerts.

This is the only place that knows the order of the stages; `cli` and `daemon` call it.
Failures follow monit's rules: an error alert after `error_after` consecutive failures, once
(plus optional reminders), and one recovery alert when the watcher works again. A change and
an error never count as each other.

A user template that fails while an alert is rendered loses nothing: the shipped templates
render that alert. But it is the watcher's problem to fix, so the check counts as failed and
an error alert naming the template goes out at once, without waiting for `error_after` (that
waits out flaky fetches; a template that raised will raise again). See `_charge_template`.

Noise control (`trigger`, `trigger_invert`, `compared_versions`) decides here, after the diff:
a suppressed change is still recorded, so the next diff is against it and history shows it, but
queues no change alert; the outcome stays "changed" and its log line says
`suppressed=<reason>`. See `_suppressed`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal, Protocol

import notifier
from notifier.attachments import Attachment
from notifier.config import WatcherConfig
from notifier.diff import Diff, compute
from notifier.errors import NotifierError, StateError, WatchError
from notifier.kinds import Fetched, Received
from notifier.store import Alert, Store, WatcherState

log = logging.getLogger(__name__)

INLINE_MAX = 256 * 1024  # bytes: up to this, decoding and any filter take milliseconds at most

Status = Literal["baseline", "unchanged", "changed", "failed"]
# Why a change was recorded without an alert: every changed line matched `trigger_invert`, none
# matched `trigger`, or the content equals one of the `compared_versions` last versions.
Suppressed = Literal["trigger_invert", "trigger", "seen-before"]


# What an Alerts method returns (notifier.alerts.Built): the alerts, and the failure of a user
# template when the shipped templates had to render them instead.
Built = tuple[list[Alert], str | None]


class Alerts(Protocol):
    """Builds the queued messages for what a check found (see notifier.alerts)."""

    def change(self, wc: WatcherConfig, diff: Diff, old: str, new: str,
               state: WatcherState, now: float, files: Sequence[Attachment] = ()) -> Built: ...

    def error(self, wc: WatcherConfig, error: str, state: WatcherState, now: float) -> Built: ...

    def recovery(self, wc: WatcherConfig, state: WatcherState, now: float) -> Built: ...


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
    retry_after: float | None = None  # seconds the source asked us to wait (HTTP Retry-After)
    suppressed: Suppressed | None = None  # a change recorded without its alert, and why

    def line(self) -> str:
        """The one log line per watcher run."""
        extra = f" alerts={self.alerts}" if self.alerts else ""
        extra += f" suppressed={self.suppressed}" if self.suppressed else ""
        err = f" error={self.error!r}" if self.error else ""
        return f"watcher={self.name} kind={self.kind} outcome={self.status} {self.seconds:.2f}s{extra}{err}"


def filtered(wc: WatcherConfig, text: str, step: Callable[[str, str], None] | None = None) -> str:
    """Run the watcher's filter chain; `step` sees each intermediate result (test-filter)."""
    for flt in wc.filters:
        text = flt.apply(text)
        if step:
            step(flt.describe(), text)
    return text


@dataclass(frozen=True, slots=True)
class Begun:
    """A check under way: what was stored before it, and when it started."""

    state: WatcherState
    now: float  # wall clock, for the record and the alerts
    started: float  # monotonic, for the check's duration


def check(wc: WatcherConfig, store: Store, alerts: Alerts | None, dry_run: bool = False,
          clock: Callable[[], float] = time.time) -> Outcome:
    """Check one watcher once and record the result (unless `dry_run`).

    Never raises for a watcher's own failure; only a broken state database propagates,
    since no other check could succeed either.
    """
    begun = begin(wc, store, clock)
    return conclude(wc, store, alerts, begun, partial(wc.watcher.fetch, begun.state.meta), dry_run)


def begin(wc: WatcherConfig, store: Store, clock: Callable[[], float] = time.time) -> Begun:
    """The first stage of a check: read the stored state (its meta goes with the fetch)."""
    started = time.monotonic()
    return Begun(store.state(wc.name), clock(), started)


async def check_on_loop(wc: WatcherConfig, store: Store, alerts: Alerts | None, dry_run: bool = False,
                        pool: Executor | None = None) -> Outcome:
    """`check` for a kind that waits on the network (`Watcher.asynchronous`), run on the event
    loop that carries its fetch, so no thread waits for it.

    The stored state is read and the check concluded on the loop itself, between fetches (a
    hand-over to a thread and back cost more than the check: see notifier.passes); only a
    body over INLINE_MAX is concluded on a thread of `pool` (None: the loop's default), so a
    large page's filters never hold up other fetches or their deadlines.
    """
    begun = begin(wc, store)
    try:
        received = await wc.watcher.receive(begun.state.meta)
    except Exception as exc:  # a WatchError, or a bug: `conclude` tells them apart
        received = Received(partial(_raise, exc), 0)
    if received.size > INLINE_MAX:
        return await asyncio.get_running_loop().run_in_executor(
            pool, conclude, wc, store, alerts, begun, received.finish, dry_run)
    return conclude(wc, store, alerts, begun, received.finish, dry_run)


def _raise(exc: Exception) -> Fetched:
    raise exc


def conclude(wc: WatcherConfig, store: Store, alerts: Alerts | None, begun: Begun,
             fetch: Callable[[], Fetched], dry_run: bool = False) -> Outcome:
    """The rest of a check once `fetch` gives what was fetched (or raises what went wrong):
    filters, diff, alerts, record. `check` passes the watcher's own fetch; a pass the result
    of a fetch already made on the event loop (see notifier.passes)."""
    state, now, started = begun.state, begun.now, begun.started
    try:
        fetched = fetch()
        text, meta = (None, fetched.meta) if fetched.unchanged else _filtered_anew(wc, fetched, state)
    except StateError:
        raise
    except NotifierError as exc:
        outcome = _failed(wc, store, alerts, state, str(exc), now, started, dry_run)
        return replace(outcome, retry_after=exc.retry_after) if isinstance(exc, WatchError) else outcome
    except Exception as exc:  # a bug in one watcher must not stop the others
        log.debug("watcher %s raised", wc.name, exc_info=True)
        message = f"unexpected {type(exc).__name__}: {exc}. This is a bug; run with --debug and report it."
        return _failed(wc, store, alerts, state, message, now, started, dry_run)
    queued: list[Alert] = []
    problems: list[str] = []

    def add(built: Built) -> None:
        queued.extend(built[0])
        problems.extend([built[1]] if built[1] else [])

    if alerts and state.error_alerted_at is not None:
        add(alerts.recovery(wc, state, now))
    suppressed: Suppressed | None = None
    if text is None or text == state.content:
        status: Status = "unchanged"
        diff = None
        store_text = None
    elif state.content is None:
        status, diff, store_text = "baseline", None, text  # the first check alerts nobody
    else:
        diff = compute(state.content, text, wc.context_lines, wc.additions_only, wc.deletions_only)
        status, store_text = ("changed" if diff else "unchanged"), text
        suppressed = _suppressed(wc, store, diff, text) if diff else None
        if diff and alerts and not suppressed:
            add(alerts.change(wc, diff, state.content, text, state, now, fetched.attachments))
    error = _charge_template(wc, alerts, state, now, problems, queued)
    seconds = time.monotonic() - started  # up to the record, so it is counted in the same commit
    if not dry_run:
        store.record_success(wc.name, now, meta, store_text, wc.history, queued, seconds)
        if error:
            store.record_failure(wc.name, now, error)
    return Outcome(wc.name, wc.kind, "failed" if error else status, seconds,
                   diff, error=error, alerts=len(queued), suppressed=suppressed)


SOURCE_DIGEST = "source_digest"  # the state's meta key: what the stored content was filtered from
# Part of that digest's key: a new release may filter the same page differently.
RELEASE = notifier.__version__.encode()


def _filtered_anew(wc: WatcherConfig, fetched: Fetched,
                   state: WatcherState) -> tuple[str | None, Mapping[str, str]]:
    """The filtered text, or None when the filters would only give the stored content again;
    and the meta to record.

    As changedetection.io does, a watcher with filters remembers a digest of what it fetched
    (keyed by its filters as written and notifier's version): when the next fetch is the same
    text, the filters (an lxml parse for css, the costliest part of most checks) are skipped
    and the check is "unchanged". The digest is recorded in the meta, with the content.
    """
    if not wc.filters:
        return fetched.text, fetched.meta
    digest = hashlib.blake2b(fetched.text.encode("utf-8", "surrogatepass"), digest_size=16,
                             key=wc.settings.filters_key + RELEASE).hexdigest()
    meta = {**fetched.meta, SOURCE_DIGEST: digest}
    if state.content is not None and state.meta.get(SOURCE_DIGEST) == digest:
        return None, meta
    return filtered(wc, fetched.text), meta


def _suppressed(wc: WatcherConfig, store: Store, diff: Diff, new: str) -> Suppressed | None:
    """Why this change should not alert, or None when it should.

    The patterns see the diff's added and removed lines (only the added ones with
    `additions_only`): lines matching `trigger_invert` do not count, and of the rest one must
    match `trigger` when it is set. `compared_versions: N` then looks at the N versions kept,
    newest first; the newest is the one just diffed against, so only older ones can match.
    """
    lines = [*diff.added, *diff.removed]
    if wc.trigger_invert:
        lines = [ln for ln in lines if not any(p.search(ln) for p in wc.trigger_invert)]
        if not lines:
            return "trigger_invert"
    if wc.trigger and not any(p.search(ln) for ln in lines for p in wc.trigger):
        return "trigger"
    if wc.compared_versions > 1:
        older = store.history(wc.name, limit=wc.compared_versions)[1:]
        if any(content == new for _, content in older):
            return "seen-before"
    return None


def _charge_template(wc: WatcherConfig, alerts: Alerts | None, state: WatcherState, now: float,
                     problems: list[str], queued: list[Alert]) -> str | None:
    """The error to record when a user template failed in this check, and its error alert
    (added to `queued`, so it commits with the state and the alerts it is about).

    The content and its alerts are recorded as usual (they were delivered with the shipped
    templates, so nothing is lost or sent twice), then one failure is recorded on top: status
    shows the watcher failing with the template's file and message until a check succeeds
    again. The error alert is not remembered as one (no `error_alerted_at`), so that next
    success sends no "back to normal": it would claim a fix nobody made.
    """
    if not problems:
        return None
    error = (f"{'; '.join(dict.fromkeys(problems))}. The alert was sent with the shipped "
             "templates instead; fix the template.")
    if alerts:
        # The streak restarts here: record_success clears the count before this failure.
        queued.extend(alerts.error(wc, error, replace(state, failures=0), now)[0])
    return error


def _failed(wc: WatcherConfig, store: Store, alerts: Alerts | None, state: WatcherState,
            error: str, now: float, started: float, dry_run: bool) -> Outcome:
    failures = state.failures + 1
    queued: list[Alert] = []
    if alerts and _error_due(wc, state, failures, now):
        queued, problem = alerts.error(wc, error, state, now)
        if problem:  # the alert went out with the shipped templates; keep the reason in status
            error = f"{error}; also, {problem} (the error alert used the shipped templates)"
    seconds = time.monotonic() - started
    if not dry_run:
        store.record_failure(wc.name, now, error, queued, seconds)
    return Outcome(wc.name, wc.kind, "failed", seconds, error=error, alerts=len(queued))


def _error_due(wc: WatcherConfig, state: WatcherState, failures: int, now: float) -> bool:
    """Alert on the N-th consecutive failure, then only as reminders if configured."""
    if failures < wc.error_after:
        return False
    if state.error_alerted_at is None:
        return True
    return wc.remind_every is not None and now - state.error_alerted_at >= wc.remind_every
