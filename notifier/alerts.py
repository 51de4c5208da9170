"""Turn what a check found into queued messages: render the templates, build the email.

The message is rendered and serialized once, here, so the outbox stores the exact bytes that
will be sent; a retry sends the same message with the same Message-ID. When a user template
fails, the shipped templates render the mail and the problem comes back with it (`Built`), so
the pipeline can count it against the watcher instead of it passing unnoticed.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from email.utils import make_msgid, parseaddr
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

from notifier.attachments import Attachment, fit
from notifier.config import Config, Recipients, WatcherConfig
from notifier.diff import Diff
from notifier.message import build_message, message_bytes, new_message_id
from notifier.render import AlertContext, AlertKind, DigestItem, Renderer, WatcherInfo, cap_diff
from notifier.store import Alert, DigestEntry, Queued, WatcherState

LOCAL_SENDER = "notifier@localhost"


class Built(NamedTuple):
    """What a check's alert produced: the messages (or digest entries) to commit with the
    state, and `problem`, a user template's failure when the shipped templates were used."""

    alerts: list[Alert]
    problem: str | None = None


class Alerter:
    """Builds `Queued` alerts for one loaded config (implements pipeline.Alerts)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._renderers: dict[tuple[Path, ...], Renderer] = {}

    def change(self, wc: WatcherConfig, diff: Diff, old: str, new: str,
               state: WatcherState, now: float, files: Sequence[Attachment] = ()) -> Built:
        """`files` came with the fetch (a browser watcher's screenshots): its images are shown
        inline by the HTML part; a digest keeps only the diff."""
        if wc.digest:
            return Built([self._digest_entry(wc, diff, now)])
        images = [replace(f, content_id=make_msgid(f"shot{n}", "notifier.invalid")[1:-1])
                  for n, f in enumerate(files) if f.content_type.startswith("image/")]
        others = [f for f in files if not f.content_type.startswith("image/")]
        if wc.attach_snapshot:
            others.append(Attachment("snapshot.txt", "text/plain", new.encode()))
        attachments, _ = fit([*images, *others])
        shown = [a for a in attachments if a.content_id]
        ctx = AlertContext(kind="change", watcher=watcher_info(wc), at=self._at(wc, now), diff=diff,
                           old=old, new=new, previous_at=self._time(wc, state.last_change),
                           subject_prefix=self.cfg.subject_prefix,
                           extra={"images": tuple(shown)} if shown else {})
        return self._queue(wc, ctx, now, attachments)

    def error(self, wc: WatcherConfig, error: str, state: WatcherState, now: float) -> Built:
        """The error alert for the failure being recorded now; `state` is from before it, so
        the streak ("failing since") began at `state.last_error_at`, or now if this is its first."""
        ctx = AlertContext(kind="error", watcher=watcher_info(wc), at=self._at(wc, now), error=error,
                           failures=state.failures + 1,
                           failing_since=self._time(wc, state.last_error_at if state.failures else now),
                           subject_prefix=self.cfg.subject_prefix)
        built = self._queue(wc, ctx, now)
        if state.error_alerted_at is None:
            return built
        # A reminder (remind_every) renders as the error alert it repeats; the send log and
        # `notifier stats` tell the two apart by the queued kind.
        return Built([replace(a, kind="reminder") if isinstance(a, Queued) else a for a in built.alerts],
                     built.problem)

    def recovery(self, wc: WatcherConfig, state: WatcherState, now: float) -> Built:
        ctx = AlertContext(kind="recovery", watcher=watcher_info(wc), at=self._at(wc, now),
                           error=state.last_error, failures=state.failures,
                           failing_since=self._time(wc, state.last_error_at),
                           subject_prefix=self.cfg.subject_prefix)
        return self._queue(wc, ctx, now)

    def about_notifier(self, kind: AlertKind, reason: str, since: float, now: float) -> Queued:
        """An error or recovery mail about notifier itself (no watcher in it: "notifier is
        failing"), to the default account and recipients."""
        ctx = AlertContext(kind=kind, watcher=None, at=self._at(None, now), error=reason,
                           failing_since=self._at(None, since), subject_prefix=self.cfg.subject_prefix)
        queued, _problem = self._build(ctx, self.cfg.default_account, self.cfg.recipients,
                                       self._renderer(None), now, None, [])
        return queued  # a template problem is in the mail itself; there is no watcher to charge

    def test(self, now: float, to: Sequence[str] = (), account: str | None = None,
             probe: str | None = None) -> Queued:
        """A test alert through `account` (else the default one), to `to` or the configured
        recipients; `probe` is verify-delivery's token, shown in the body to be found again."""
        account = account or self.cfg.default_account
        extra = {"via": self._via(account)} | ({"probe": probe} if probe else {})
        ctx = AlertContext(kind="test", watcher=None, at=self._at(None, now),
                           subject_prefix=self.cfg.subject_prefix, extra=extra)
        recipients = Recipients(tuple(to)) if to else self.cfg.recipients
        return self._build(ctx, account, recipients, self._renderer(None), 0.0, None, [])[0]

    def _digest_entry(self, wc: WatcherConfig, diff: Diff, now: float) -> DigestEntry:
        """A change of a `digest:` watcher waits, grouped by who receives it and how often."""
        recipients = self._recipients(wc)
        bucket = json.dumps({"account": wc.account or self.cfg.default_account, "to": recipients.to,
                             "cc": recipients.cc, "bcc": recipients.bcc, "every": wc.digest},
                            sort_keys=True)
        shown, _ = cap_diff(diff)
        info = watcher_info(wc)
        payload = json.dumps({"name": info.name, "kind": info.kind, "source": info.source,
                              "link": info.link, "at": now, "diff": shown.to_data()})
        return DigestEntry(bucket=bucket, watcher=wc.name, payload=payload,
                           period=wc.digest or 0.0, created=now)

    def digest(self, bucket: str, payloads: Sequence[str], now: float) -> Queued:
        """One mail for every change collected in a digest bucket."""
        spec = json.loads(bucket)
        items = []
        for payload in payloads:
            data = json.loads(payload)
            watcher = WatcherInfo(data["name"], data["kind"], data["source"], data["link"])
            items.append(DigestItem(watcher, self._at(None, data["at"]), Diff.from_data(data["diff"])))
        ctx = AlertContext(kind="digest", watcher=None, at=self._at(None, now), entries=tuple(items),
                           subject_prefix=self.cfg.subject_prefix)
        recipients = Recipients(tuple(spec["to"]), tuple(spec["cc"]), tuple(spec["bcc"]))
        return self._build(ctx, spec["account"], recipients, self._renderer(None), now, None, [])[0]

    def _recipients(self, wc: WatcherConfig) -> Recipients:
        return wc.recipients if wc.recipients.envelope() else self.cfg.recipients

    def _queue(self, wc: WatcherConfig, ctx: AlertContext, now: float,
               attachments: Sequence[Attachment] = ()) -> Built:
        account = wc.account or self.cfg.default_account
        recipients = self._recipients(wc)
        not_before = wc.quiet_hours.until(now, self._zone(wc)) if wc.quiet_hours else now
        queued, problem = self._build(ctx, account, recipients, self._renderer(wc), not_before,
                                      wc.name, attachments)
        return Built([queued], problem)

    def _build(self, ctx: AlertContext, account: str | None, recipients: Recipients,
               renderer: Renderer, not_before: float, watcher: str | None,
               attachments: Sequence[Attachment]) -> tuple[Queued, str | None]:
        """Render and serialize one message; a template problem, if any, comes with it. Test
        and digest mails have no watcher to charge a template problem to: theirs is logged by
        the renderer and shown in the mail itself."""
        sender = self._sender(account)
        if not recipients.envelope():
            recipients = Recipients((f"{getpass.getuser()}@localhost",))
        rendered = renderer.render(ctx)
        message_id = new_message_id(sender)
        msg = build_message(subject=rendered.subject, text=rendered.text, html=rendered.html,
                            sender=sender, to=recipients.to, cc=recipients.cc,
                            message_id=message_id, date=ctx.at, attachments=attachments)
        queued = Queued(message_id=message_id, kind=ctx.kind, watcher=watcher, account=account,
                        sender=_address(sender), recipients=recipients.envelope(),
                        body=message_bytes(msg), not_before=not_before)
        return queued, rendered.problem

    def _sender(self, account: str | None) -> str:
        acct = self.cfg.accounts.get(account) if account else None
        if acct is not None:
            return acct.sender or self.cfg.sender or acct.username or LOCAL_SENDER
        return self.cfg.sender or LOCAL_SENDER

    def _via(self, account: str | None) -> str:
        acct = self.cfg.accounts.get(account) if account else None
        if acct is None:
            return f"the local Maildir {self.cfg.maildir}"
        return f"{acct.host}:{acct.port} ({acct.security})"

    def _renderer(self, wc: WatcherConfig | None) -> Renderer:
        names = (wc.templates if wc else None, self.cfg.templates)
        dirs = tuple(self.cfg.path.parent / d for d in names if d)
        if dirs not in self._renderers:
            self._renderers[dirs] = Renderer(dirs)
        return self._renderers[dirs]

    def _zone(self, wc: WatcherConfig | None) -> ZoneInfo | None:
        """The watcher's time zone, else the config's; None means the machine's local time."""
        return (wc.timezone if wc else None) or self.cfg.timezone

    def _at(self, wc: WatcherConfig | None, ts: float) -> datetime:
        """`ts` as an aware datetime in the watcher's (or the config's, or local) time zone."""
        return datetime.fromtimestamp(ts, self._zone(wc)).astimezone(self._zone(wc))

    def _time(self, wc: WatcherConfig | None, ts: float | None) -> datetime | None:
        return None if ts is None else self._at(wc, ts)


def watcher_info(wc: WatcherConfig) -> WatcherInfo:
    return WatcherInfo(name=wc.name, kind=wc.kind, source=wc.watcher.source(), link=wc.watcher.link())


def _address(sender: str) -> str:
    """The bare address of a From value, for the SMTP envelope."""
    return parseaddr(sender)[1] or sender
