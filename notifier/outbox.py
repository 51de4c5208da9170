"""Deliver the outbox: claim due messages, send them in batches, and decide what a failure means.

A message leaves the outbox only after a server (or the Maildir) accepted it. What happens on
failure depends on its type (see notifier.errors): transient → retry with exponential backoff
and jitter; rate-limited → slow retry; held → wait for a person (config change or
`notifier outbox retry`); permanent → dead letter, kept and listed, never dropped. A message
that keeps failing for GIVE_UP_AFTER is given up on like a mail server's queue lifetime: it
becomes a dead letter too (still listed, still retryable by hand).

Every message that leaves the queue — delivered, dead or given up — gets its send log entry in
the transaction that removes or changes its row (see notifier.ledger): what each recipient
got, the server's final reply, the attempts, and why it had to wait (`deferral_class`).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from itertools import groupby
from typing import TYPE_CHECKING

from notifier.config import Config
from notifier.errors import (
    DeliveryError,
    HeldDeliveryError,
    PermanentDeliveryError,
    RateLimitedError,
)
from notifier.ledger import Attempt
from notifier.store import OutboxRow, Store

if TYPE_CHECKING:
    from notifier.transport import Transport

log = logging.getLogger(__name__)

BACKOFF_BASE = 30.0  # seconds before the first retry
BACKOFF_CAP = 3600.0  # never wait longer than an hour between retries
RATE_LIMIT_DELAY = 1800.0  # providers' hourly/daily quotas: come back much later
GIVE_UP_AFTER = 5 * 86400.0  # a message failing this long after it was queued is given up on
PER_LANE = 10  # a backlog gets one more connection (up to the account's `connections`) per this many
# Messages a server accepted are taken out of the outbox this many at a time (one transaction),
# and at the end of each batch. A crash in between sends those again, with the same Message-ID.
MARK_EVERY = 25
Sent = list[tuple[OutboxRow, Attempt, str]]  # accepted messages not yet out of the outbox, with `via`


@dataclass
class Report:
    """What one delivery round did, for logs, status lines and tests; `waiting` counts what is
    left in the outbox afterwards by state (pending, held, dead), including messages that were
    held or dead before this round and so were not even tried."""

    sent: int = 0
    retry: int = 0
    held: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)


def jittered(delay: float) -> float:
    """`delay` scaled by a random factor in [0.5, 1.5), so many retries spread apart."""
    return delay * (0.5 + random.random())  # noqa: S311 - jitter, not cryptography


def backoff(attempts: int) -> float:
    """Exponential backoff with jitter, capped at an hour."""
    return jittered(min(BACKOFF_BASE * 2 ** attempts, BACKOFF_CAP))


class Sender:
    """Delivers due outbox rows for one config. Safe to run from several processes at once."""

    def __init__(self, cfg: Config, store: Store, debug_smtp: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.store = store
        self.debug_smtp = debug_smtp
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        # Connections kept open between rounds, several per account when it delivers over
        # several lanes; lanes take and give back under the lock.
        self._kept: dict[str | None, list[Transport]] = {}
        self._kept_lock = threading.Lock()

    def recover(self) -> int:
        """Release claims of senders on this host that are no longer running (killed -9).

        Without this their messages would wait for the claim lease to expire.
        """
        host = socket.gethostname()
        released = 0
        for owner in self.store.claims():
            name, _, pid = owner.rpartition(":")
            if name == host and pid.isdigit() and owner != self.owner and not _alive(int(pid)):
                released += self.store.unclaim(owner)
        if released:
            log.info("took over %d message(s) claimed by a sender that is gone", released)
        return released

    def transport(self, account: str | None) -> Transport:
        """The transport for an account name; no account means the local Maildir.

        notifier.transport (smtplib, mailbox, the email package: 1.5 MiB) is imported at the
        first message, not at start: a daemon whose pages do not change never sends one."""
        from notifier.transport import MaildirTransport, SmtpTransport  # noqa: PLC0415 - see above

        if account is None:
            return MaildirTransport(self.cfg.maildir)
        acct = self.cfg.accounts.get(account)
        if acct is None:
            raise HeldDeliveryError(f"the smtp account {account!r} is no longer configured; add it "
                                    f"back or run `notifier outbox retry` after fixing the config.")
        return SmtpTransport(acct, debug=self.debug_smtp)

    def deliver(self, limit: int = 200, keep_open: bool = False) -> Report:
        """Send every due message (up to `limit`), one connection per account. `keep_open`:
        leave the connections open for the next round (a busy relay sends round after round;
        a new TLS handshake and login for each would cost more than the messages), until
        `close_kept`."""
        report = Report()
        rows = self.store.claim(self.owner, self.clock(), limit)
        by_account = sorted(rows, key=lambda r: r.account or "")
        for account, group in groupby(by_account, key=lambda r: r.account):
            self._deliver_lanes(account, list(group), report, keep_open)
        report.waiting = self.store.outbox_counts()
        return report

    def close_kept(self) -> None:
        """Close the connections `deliver(keep_open=True)` left open."""
        with self._kept_lock:
            kept = [t for transports in self._kept.values() for t in transports]
            self._kept.clear()
        for transport in kept:
            transport.close()

    def _reused(self, account: str | None) -> Transport | None:
        """A connection to `account` a lane left open, if one is free."""
        with self._kept_lock:
            free = self._kept.get(account)
            return free.pop() if free else None

    def _deliver_lanes(self, account: str | None, rows: list[OutboxRow], report: Report,
                       keep_open: bool = False) -> None:
        """A backlog (a busy relay) over the account's `connections` at once, each its own
        share of the claimed rows; a few messages over one connection, as always."""
        acct = self.cfg.accounts.get(account or "")
        lanes = min(acct.connections if acct else 1, len(rows) // PER_LANE) or 1
        if lanes == 1:
            self._deliver_batch(account, rows, report, keep_open)
            return
        parts = [Report() for _ in range(lanes)]
        with ThreadPoolExecutor(lanes, thread_name_prefix="send") as pool:
            list(pool.map(self._deliver_batch, [account] * lanes,
                          [rows[i::lanes] for i in range(lanes)], parts, [keep_open] * lanes))
        for part in parts:
            report.sent, report.retry = report.sent + part.sent, report.retry + part.retry
            report.held, report.dead = report.held + part.held, report.dead + part.dead
            report.errors += part.errors

    def _deliver_batch(self, account: str | None, rows: list[OutboxRow], report: Report,
                       keep_open: bool = False) -> None:
        """Send `rows` over one connection, reconnecting after a message-level failure."""
        pending = list(rows)
        sent: Sent = []
        try:
            self._send_rows(account, pending, report, sent, keep_open)
        finally:
            self._mark_sent(sent)

    def _send_rows(self, account: str | None, pending: list[OutboxRow], report: Report,
                   sent: Sent, keep_open: bool) -> None:
        while pending:
            try:
                transport = self._reused(account) or self.transport(account)
                transport.open()
            except DeliveryError as exc:
                # Cannot even connect or log in: every message in the batch waits alike.
                for row in pending:
                    self._failed(row, exc, report)
                return
            try:
                while pending:
                    row = pending.pop(0)
                    if not self.store.renew_claim(row.id, self.owner, self.clock()):
                        continue  # the claim lapsed (a pause, a cut-off database): another sender has it
                    try:
                        refused = transport.send(row.sender, row.recipients, row.body)
                    except DeliveryError as exc:
                        self._failed(row, exc, report)
                        break  # the session may be unusable now; reconnect for the rest
                    self._accepted(row, refused, transport.describe(), transport.last_reply, report, sent)
                    if len(sent) >= MARK_EVERY:
                        self._mark_sent(sent)
            finally:
                if keep_open and not pending:
                    with self._kept_lock:
                        self._kept.setdefault(account, []).append(transport)
                else:
                    transport.close()

    def _accepted(self, row: OutboxRow, refused: dict[str, str], via: str, reply: str,
                  report: Report, sent: Sent) -> None:
        if not refused:
            sent.append((row, Attempt(self.clock(), reply, keep_body=self.cfg.keep_sent), via))
            report.sent += 1
            return
        # Accepted for some recipients: keep the message only for the refused ones.
        error = "; ".join(f"{addr}: {reason}" for addr, reason in refused.items())
        from notifier.transport import refusal_error  # noqa: PLC0415 - loaded by the transport

        exc = refusal_error(refused, f"the server refused some recipients ({error})")
        report.sent += 1
        taken = {addr: reply for addr in row.recipients if addr not in refused}
        self._failed(row, exc, report, recipients=list(refused), accepted=taken)

    def _mark_sent(self, sent: Sent) -> None:
        """Take the accepted messages out of the outbox in one transaction, then log them."""
        if not sent:
            return
        self.store.delivered_all([(row.id, attempt) for row, attempt, _ in sent])
        for row, attempt, via in sent:
            log.info("message=%s alert=%s watcher=%s outcome=sent via=%s recipients=%d reply=%r",
                     row.message_id, row.kind, row.watcher, via, len(row.recipients), attempt.reply)
        sent.clear()

    def _failed(self, row: OutboxRow, exc: DeliveryError, report: Report,
                recipients: list[str] | None = None, accepted: dict[str, str] | None = None) -> None:
        now = self.clock()
        message = str(exc)
        expired = False
        if isinstance(exc, HeldDeliveryError):
            state, when, report.held = "held", now, report.held + 1
        elif isinstance(exc, PermanentDeliveryError):
            state, when, report.dead = "dead", now, report.dead + 1
        elif now - row.created >= GIVE_UP_AFTER:
            expired, state, when, report.dead = True, "dead", now, report.dead + 1
            message = (f"given up after {row.attempts + 1} attempts over "
                       f"{(now - row.created) / 86400:.0f} days; the last: {message}")
        elif isinstance(exc, RateLimitedError):
            state, when, report.retry = "pending", now + jittered(RATE_LIMIT_DELAY), report.retry + 1
        else:
            state, when, report.retry = "pending", now + backoff(row.attempts), report.retry + 1
        report.errors.append(message)
        # The server's last word: its 250 when some recipients were taken, else the refusal.
        reply = next(iter((accepted or {}).values()), None) or exc.reply or message
        attempt = Attempt(now, reply, accepted or {}, exc.refused,
                          deferral_class(exc), keep_body=self.cfg.keep_sent)
        self.store.reschedule(row.id, state, message, when, recipients, attempt, expired=expired)
        level = logging.WARNING if state == "pending" else logging.ERROR
        retry = f" Next attempt at {_clock(when, now, None, '%H:%M:%S')}." if state == "pending" else ""
        outcome = "retry" if state == "pending" else "expired" if expired else state
        log.log(level, "message=%s alert=%s watcher=%s outcome=%s attempts=%d: %s%s", row.message_id,
                row.kind, row.watcher, outcome, row.attempts + 1, message, retry)


def deferral_class(exc: DeliveryError) -> str | None:
    """Why a message has to wait, as statistics group it: the reply code of a temporary
    refusal ("451"), "rate limit" with its code, or "connection" when the server gave no
    answer at all; None for failures that do not make a message wait for a retry."""
    if isinstance(exc, HeldDeliveryError | PermanentDeliveryError):
        return None
    codes = [r[:3] for r in (exc.reply, *exc.refused.values()) if r and r[:3].isdigit()]
    if isinstance(exc, RateLimitedError):
        return f"rate limit {codes[0]}" if codes else "rate limit"
    return next((c for c in codes if c.startswith("4")), codes[0] if codes else "connection")


def waiting_reason(row: OutboxRow, now: float, zone: tzinfo | None = None) -> str:
    """Why `row` has not been sent, in words, from the row alone, with times in `zone`
    (local time when None): held or dead with the error; a first attempt that is not due yet
    waits for quiet hours (nothing else creates a message for later); a later attempt that is
    not due waits out its backoff, a slow one after a rate limit."""
    if row.state in ("held", "dead"):
        return f"{row.state}: {row.last_error or 'no reason recorded'}"
    if row.not_before <= now:
        return f"due now (attempt {row.attempts + 1})"
    if row.attempts == 0:
        return f"held for quiet hours until {_clock(row.not_before, now, zone, '%H:%M')}"
    return f"backoff until {_clock(row.not_before, now, zone, '%H:%M:%S')} (attempt {row.attempts + 1})"


def _clock(ts: float, now: float, zone: tzinfo | None, fmt: str) -> str:
    """`ts` as a time of day; with the date too when it is not within the next 24 hours."""
    when = datetime.fromtimestamp(ts, zone)
    return when.strftime(fmt if 0 <= ts - now < 86400 else f"%Y-%m-%d {fmt}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
