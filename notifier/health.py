"""Whether the daemon can record what it does, and who hears about it when it cannot.

A check that cannot write its result (a full disk, a read-only file system) must not pass for a
quiet success. The first such failure makes the daemon unhealthy: one log line with the reason,
the reason published in the lock file (`notifier status` reads it there, since the database may
be what is broken) and in systemd's STATUS= line, and one error alert through whatever still
works: the outbox if it can still be written, else straight through the transport. Each writer
(a watcher, the outbox, the digests) that failed is remembered, and once every one of them has
written again the daemon says it recovered and sends a recovery alert.

A database deleted or replaced under the daemon is different: writing on would only fill a file
nobody will read again, so checks pause until a restart (which `notifier.statedir` guards), what
the orphan holds is copied aside, and its -wal is taken away from the name so that it can never
be replayed into the next database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from notifier.config import Config
from notifier.outbox import Sender
from notifier.statedir import Lock
from notifier.store import Queued, StateGoneError, Store

if TYPE_CHECKING:
    from notifier.render import AlertKind

log = logging.getLogger(__name__)

ALERT_RETRY = 60.0  # seconds between attempts to send the alert straight through the transport
ALERT_QUIET = 3600.0  # a flapping disk alerts once an hour per reason, not at every flap
DATABASE = "database"  # the writer key of "the database file itself is gone"


class Host(Protocol):
    """What Health uses of the daemon; read at each use, since a reload swaps them."""

    cfg: Config
    store: Store
    sender: Sender

    def wake_outbox(self) -> None: ...


def about_notifier(cfg: Config, kind: AlertKind, reason: str, since: float, now: float) -> Queued:
    """An error or recovery mail about notifier itself (no watcher in it: "notifier is failing").

    notifier.alerts (Jinja and the MIME code, ~2 MiB of a daemon's memory) is imported here, when
    such a mail is written, not when the daemon starts: a healthy daemon never needs it.
    """
    from notifier.alerts import Alerter  # noqa: PLC0415 - jinja2 only once an alert is written

    return Alerter(cfg).about_notifier(kind, reason, since, now)


class Health:
    """Thread-safe: jobs report each write's fate; housekeeping calls `watch()` every tick."""

    def __init__(self, host: Host, lock: Lock, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.lock = lock
        self.clock = clock
        self.paused = False  # the database file was deleted or replaced: checks wait
        self._mutex = threading.Lock()
        self._failing: dict[str, str] = {}  # writer -> why its last write failed
        self._since: float | None = None
        self._alert: Queued | None = None  # the alert still to send straight through a transport
        self._alerted = False  # an alert went out, so a recovery alert follows
        self._next_try = 0.0
        self._sending = False
        self._alerted_at: dict[str, float] = {}  # reason -> when an alert about it was raised
        self._publish()

    @property
    def healthy(self) -> bool:
        return not self._failing

    def reason(self) -> str | None:
        with self._mutex:
            return self._failing.get(DATABASE) or next(iter(self._failing.values()), None)

    def summary(self) -> str:
        """The start of the STATUS= line: empty while healthy."""
        reason = self.reason()
        if reason is None:
            return ""
        return f"{'CHECKS PAUSED' if self.paused else 'UNHEALTHY'}: {reason} | "

    # -- what jobs report --------------------------------------------------------------------

    def failed(self, writer: str, exc: Exception) -> None:
        """A write by `writer` ("watcher=NAME", "outbox", ...) failed with a StateError."""
        if isinstance(exc, StateGoneError):
            self._gone(str(exc))
            return
        reason, now = str(exc), self.clock()
        with self._mutex:
            known = reason in self._failing.values()
            first = not self._failing
            self._failing[writer] = reason
            if first:
                self._since = now
            since = self._since or now
        if known:
            log.debug("%s could not record its result either: %s", writer, reason)
            return
        log.error("unhealthy: %s could not record its result: %s", writer, reason)
        self._publish()
        if first:
            self._raise(reason, since, now)

    def succeeded(self, writer: str) -> None:
        """A write by `writer` went through; the last failing writer ends the episode."""
        if writer not in self._failing:  # the common case, without taking the lock
            return
        with self._mutex:
            reason = self._failing.pop(writer, None)
            if reason is None or self._failing:
                return
        self._recovered(reason)

    def clear(self, picked: Callable[[str, str], bool]) -> None:
        """End the failures for which `picked(writer, reason)` holds, as if each had written.
        A fleet's check goes to whichever daemon claims it next, so a watcher whose write failed
        here may never write here again: its failure ends when the database answers again."""
        with self._mutex:
            writers = [w for w, reason in self._failing.items() if picked(w, reason)]
        for writer in writers:
            self.succeeded(writer)

    def watch(self) -> None:
        """Housekeeping: notice a deleted or replaced database even when nothing writes, and
        retry an alert that could not be sent yet."""
        if not self.paused:
            gone = self.host.store.gone_error()
            if gone is not None:
                self._gone(str(gone))
        self._retry()

    # -- episodes ------------------------------------------------------------------------------

    def _gone(self, reason: str) -> None:
        now = self.clock()
        with self._mutex:
            if self.paused:
                return
            self.paused = True
            self._since = since = self._since or now
        reason = (f"{reason}{self._rescue()} Checks are paused. Put the file back and restart "
                  f"notifier, or restart it with `notifier run --reinit` to start afresh.")
        with self._mutex:
            self._failing[DATABASE] = reason
        log.error("checks paused: %s", reason)
        self._publish()
        self._raise(reason, since, now)

    def _rescue(self) -> str:
        """Copy what the orphaned database holds (state, queued alerts) next to it, and take
        its write-ahead log away from the name the next database will have."""
        store = self.host.store
        dest = store.path.with_name(f"{store.path.name}.rescued-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            store.rescue(dest)
            said = f" What it held is copied to {dest}."
            keep = None
        except Exception as exc:  # a copy is a courtesy; failing it must not hide the alert
            dest.unlink(missing_ok=True)
            keep = dest.with_name(f"{dest.name}-wal")
            said = f" Its content could not be copied aside ({exc}); its log is kept as {keep}."
        try:
            store.detach_journal(keep)
        except Exception as exc:
            said += f" Remove {store.path.name}-wal before restarting ({exc})."
        return said

    def _recovered(self, reason: str) -> None:
        now = self.clock()
        with self._mutex:
            since, self._since = self._since or now, None
            # An alert still on its way counts: a recovery without an error beats the reverse.
            alerted, self._alerted, self._alert = self._alerted or self._sending, False, None
        log.warning("recovered: the state database records results again, after %.0f s unhealthy (%s)",
                    now - since, reason)
        self._publish()
        if alerted:
            try:
                self.host.store.enqueue([self._message("recovery", reason, since, now)])
            except Exception as exc:
                log.error("could not queue the recovery alert: %s", exc)
                return
            self.host.wake_outbox()

    # -- alerts ----------------------------------------------------------------------------------

    def _message(self, kind: AlertKind, reason: str, since: float, now: float) -> Queued:
        return about_notifier(self.host.cfg, kind, reason, since, now)

    def _raise(self, reason: str, since: float, now: float) -> None:
        """Alert through the outbox if it can be written, else straight through the transport."""
        with self._mutex:
            last = self._alerted_at.get(reason)
            if last is not None and now - last < ALERT_QUIET:
                return
            self._alerted_at[reason] = now
        message = self._message("error", reason, since, now)
        try:
            self.host.store.enqueue([message])
        except Exception as exc:
            log.debug("the outbox cannot take the alert (%s); sending it directly", exc)
            with self._mutex:
                self._alert, self._next_try = message, 0.0
            self._retry()
            return
        with self._mutex:
            self._alerted = True
        self.host.wake_outbox()

    def _retry(self) -> None:
        with self._mutex:
            message = self._alert
            if message is None or self._sending or self.clock() < self._next_try:
                return
            self._sending, first = True, self._next_try == 0.0
            self._next_try = self.clock() + ALERT_RETRY
        threading.Thread(target=self._send, args=(message, first), name="health-alert", daemon=True).start()

    def _send(self, message: Queued, first: bool) -> None:
        """Deliver past the outbox: one attempt, from a thread of its own (SMTP takes time)."""
        try:
            transport = self.host.sender.transport(message.account)
            with transport:
                transport.send(message.sender, message.recipients, message.body)
        except Exception as exc:
            log.log(logging.ERROR if first else logging.DEBUG,
                    "could not send the alert about it either (%s); trying every %.0f s", exc, ALERT_RETRY)
        else:
            log.warning("sent the alert about it through %s, past the outbox", transport.describe())
            with self._mutex:
                if self._alert is message:
                    self._alert, self._alerted = None, True
        finally:
            with self._mutex:
                self._sending = False

    def _publish(self) -> None:
        with self._mutex:
            reason = self._failing.get(DATABASE) or next(iter(self._failing.values()), None)
            state: dict[str, Any] = {"healthy": not self._failing, "reason": reason,
                                     "since": self._since, "paused": self.paused}
        self.lock.publish(state)

