"""The receiving side, on schedule: delivery probes (`verify_every`) and bounce scans
(`watch_bounces`) of each SMTP account, run by the daemon in a pool of their own.

Each run leaves its latest result in the state (notifier.receipts) for `notifier status`; a
failure to run at all (a mailbox that refuses the login, a server that is down) is that
result too, with the reason. When delivery itself fails — the probe landed in junk, never
arrived, or bounced; an alert bounced because its recipient is unreachable — an error alert is
queued in the same transaction as the result, through a path that avoids the failing one:
another SMTP account if there is one, else the local Maildir (`<state_dir>/maildir`, which any
mail client reads). Never through the broken account alone.

No loops: the alerts written here are queued as kinds of their own (`bounce`, `delivery`), and a
bounce of one of those (or of a test mail) is recorded and counted but never alerted about.
Probes are not in the send log at all: their bounces are the probe's own verdict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from notifier import config
from notifier.alerts import Alerter, watcher_info
from notifier.bounces import Bounce, scan_mailbox
from notifier.config import Config, Recipients
from notifier.errors import NotifierError, StateError
from notifier.receipts import MailCheck, Sent
from notifier.relaylog import KIND as RELAYED
from notifier.render import AlertContext
from notifier.store import Alert, Queued, Store
from notifier.verify import Result, verify

log = logging.getLogger(__name__)

BOUNCE_KIND = "bounce"  # the queued kind of an alert about a bounce
DELIVERY_KIND = "delivery"  # the queued kind of an alert about a failed delivery probe
SILENT_KINDS = (BOUNCE_KIND, DELIVERY_KIND, "test")  # their bounces are recorded, never alerted about
POSITIONS = "bounces.json"  # in the state directory: where each mailbox's last scan stopped

_HEADLINES = {
    "junk": "alerts sent through smtp.{account} land in the junk folder ({folder}) of {mailbox}",
    "not found": "alerts sent through smtp.{account} did not arrive in {mailbox}",
    "bounced": "alerts sent through smtp.{account} bounce",
}


@dataclass(frozen=True)
class Scheduled:
    """One delivery check the daemon runs: which account, which job, how often, and when first."""

    account: str
    job: str  # "verify" or "bounces"
    every: float
    first: float

    @property
    def key(self) -> str:
        """The scheduler's job id, and the health key its failures are reported under."""
        return f"{self.job}:{self.account}"


def scheduled(cfg: Config, store: Store, now: float) -> list[Scheduled]:
    """The delivery checks `cfg` asks for. Each runs first one period after its last recorded
    run, or now if that is past: a daemon restarted every hour still probes once a day."""
    try:
        last = {(c.account, c.job): c.at for c in store.mail_checks()}
    except StateError:  # reported by the writes that matter; run them all soon
        last = {}
    out = []
    for name, account in cfg.accounts.items():
        for job, every in (("verify", account.verify_every),
                           ("bounces", account.bounce_every if account.watch_bounces else None)):
            if every:
                out.append(Scheduled(name, job, every, max(now, last.get((name, job), 0.0) + every)))
    return out


def run(cfg: Config, store: Store, account: str, job: str, clock: Callable[[], float] = time.time) -> int:
    """Run one delivery check of `account` and record it; returns the alerts queued."""
    if job == "verify":
        return verify_account(cfg, store, account, clock)
    return watch_bounces(cfg, store, account, clock)


# -- verify_every --------------------------------------------------------------------------------

def verify_account(cfg: Config, store: Store, name: str, clock: Callable[[], float] = time.time) -> int:
    """Send a probe through `name` and look for it; a junked, lost or bounced probe alerts."""
    try:
        result = verify(cfg, name, timeout=cfg.accounts[name].verify_timeout)
    except (NotifierError, OSError) as exc:
        _could_not(store, MailCheck(name, "verify", clock(), "error", None, _reason(exc)))
        return 0
    report = "; ".join(result.lines()[1:3])
    check = MailCheck(name, "verify", clock(), result.verdict, result.latency, report)
    if result.verdict == "inbox":
        log.info("account=%s delivery verified: %s", name, report)
        store.record_mail_check(check)
        return 0
    log.warning("account=%s delivery failed verification (%s): %s", name, result.verdict, report)
    alert = _delivery_alert(cfg, result, check.at)
    store.record_mail_check(check, [alert])
    return 1


def _delivery_alert(cfg: Config, result: Result, now: float) -> Queued:
    headline = _HEADLINES[result.verdict].format(account=result.account, mailbox=result.mailbox,
                                                 folder=result.folder)
    error = (f"{headline}. `notifier verify-delivery --account {result.account}` repeats the probe "
             f"by hand.\n\n" + "\n".join(result.lines()))
    return DetourAlerts(cfg).error_about(None, error, now, result.account, cfg.recipients, DELIVERY_KIND)


# -- watch_bounces --------------------------------------------------------------------------------

def watch_bounces(cfg: Config, store: Store, name: str, clock: Callable[[], float] = time.time) -> int:
    """Scan `name`'s own mailbox for bounces that arrived since the last scan and record them."""
    box = config.own_mailbox(cfg.accounts[name], cfg.mailboxes)
    if box is None:  # config.load refuses this; a Config built some other way may still lack it
        _could_not(store, MailCheck(name, "bounces", clock(), "error", None, "no imap account logs in "
                                    "as this account; add one with the same username."))
        return 0
    try:
        scan = scan_mailbox(box, cfg.state_dir / POSITIONS)
    except (NotifierError, OSError) as exc:
        _could_not(store, MailCheck(name, "bounces", clock(), "error", None, _reason(exc)))
        return 0
    now = clock()
    ours = record(cfg, store, scan.found, now)  # a StateError here leaves the position: seen again
    alerts = sum(1 for _, alerted in ours if alerted)
    try:
        scan.keep()
    except OSError as exc:  # recorded once all the same: the next scan finds them recorded
        _could_not(store, MailCheck(name, "bounces", clock(), "error", None, _reason(exc)))
        return alerts
    store.record_mail_check(MailCheck(name, "bounces", now, "ok", None,
                                      f"{len(scan.found)} new bounce(s) in {box.name}, {len(ours)} of "
                                      f"notifier's mail, {alerts} alert(s) queued"))
    return alerts


def record(cfg: Config, store: Store, found: Sequence[Bounce], now: float) -> list[tuple[Sent, bool]]:
    """Mark each bounce of notifier's own mail in the send log (once), queueing its alert with
    it; returns the originals newly marked, each with whether an alert went with it."""
    out = []
    for bounce in found:
        alerted = False

        def alerts(original: Sent, new: list[str], bounce: Bounce = bounce) -> list[Alert]:
            nonlocal alerted
            queued = _bounce_alerts(cfg, bounce, original, new, now)
            alerted = bool(queued)
            return queued

        original = store.record_bounce(bounce.message_ids, bounce.recipients, bounce.status,
                                       bounce.reason, now, alerts)
        if original is not None:
            log.warning("message=%s alert=%s watcher=%s outcome=bounced: %s", original.message_id,
                        original.kind, original.watcher, bounce.reason)
            out.append((original, alerted))
    return out


def unreachable(bounce: Bounce) -> bool:
    """A permanent failure (5.x.x, or a provider's notice, which never reports a delay)."""
    return bounce.status is None or bounce.status.startswith("5")


def _bounce_alerts(cfg: Config, bounce: Bounce, original: Sent, new: list[str], now: float) -> list[Alert]:
    if original.kind in SILENT_KINDS or not unreachable(bounce):
        return []
    wc = cfg.watcher(original.watcher) if original.watcher else None
    who = wc.recipients if wc and wc.recipients.envelope() else cfg.recipients
    error = f"{_what_bounced(original, new)} bounced: {bounce.reason}. {_what_to_fix(original)}"
    gone = {r.lower() for r in new}
    left = Recipients(*(tuple(a for a in part if a.lower() not in gone)
                        for part in (who.to, who.cc, who.bcc)))
    return [DetourAlerts(cfg).error_about(wc, error, now, original.account, left, BOUNCE_KIND)]


def _what_bounced(original: Sent, recipients: list[str]) -> str:
    what = "the relayed message" if original.kind == RELAYED else f"its {original.kind} alert"
    return f"{what} \"{original.subject}\" to {', '.join(recipients)}"


def _what_to_fix(original: Sent) -> str:
    """Where the bad address came from: watchers.yaml for alerts; for relayed mail, the program
    that handed it to the relay (a crontab's MAILTO, a script), which watchers.yaml cannot fix."""
    source = ("the program that sent it through the relay (a crontab's MAILTO, a script's "
              "recipient)" if original.kind == RELAYED else "watchers.yaml")
    return (f"Correct the address in {source} if it is wrong, or ask the recipient's mail "
            f"administrator why the mail was refused.")


# -- alerts that avoid the failing account ---------------------------------------------------------

def detour(cfg: Config, failing: str | None, recipients: Recipients) -> str | None:
    """The account for an alert about `failing`: another SMTP account, else None (the local
    Maildir); the Maildir too when nobody is left to send to."""
    if not recipients.envelope():
        return None
    return next((name for name in cfg.accounts if name != failing), None)


class DetourAlerts(Alerter):
    """Error alerts about delivery itself, sent around the account that failed."""

    def error_about(self, wc: config.WatcherConfig | None, error: str, now: float, failing: str | None,
                    recipients: Recipients, kind: str) -> Queued:
        account = detour(self.cfg, failing, recipients)
        ctx = AlertContext(kind="error", watcher=watcher_info(wc) if wc else None, at=self._at(wc, now),
                           error=error, subject_prefix=self.cfg.subject_prefix)
        to = recipients if recipients.envelope() else self.cfg.recipients
        queued, _problem = self._build(ctx, account, to, self._renderer(wc), now, wc.name if wc else None, [])
        # A template problem is in the mail itself; the watcher did not fail a check.
        return replace(queued, kind=kind)


def _reason(exc: Exception) -> str:
    """Why a check could not run, as a sentence: notifier's own errors say what to do already."""
    if isinstance(exc, NotifierError):
        return str(exc)
    return f"{exc}; check the state directory and the network. It is tried again at its next run."


def _could_not(store: Store, check: MailCheck) -> None:
    """A delivery check that could not run is a `notifier status` line and a log line."""
    log.warning("account=%s the %s check could not run: %s", check.account, check.job, check.detail)
    store.record_mail_check(check)
