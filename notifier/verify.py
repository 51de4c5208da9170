"""`notifier verify-delivery`: prove that an alert reaches the inbox, not just the SMTP server.

A probe (the real test templates, a unique token in the `X-Notifier-Probe` header and in the
body) is sent through the SMTP account; the receiving mailbox is then watched for it — IMAP
IDLE where offered, else polling with backoff, POP3 by UIDL — in INBOX and the junk folder,
looking only at messages that arrived after the probe was sent (UIDs noted before sending).
A delivery status notice quoting the token in the same mailbox means the probe bounced.
Only the probe itself is deleted afterwards, and only when the server can expunge exactly it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Protocol

from notifier import config, inbox
from notifier.alerts import Alerter
from notifier.bounces import Bounce, BounceScanner
from notifier.config import Config, Mailbox, SmtpAccount
from notifier.errors import ConfigError, PermanentDeliveryError, Problem
from notifier.receive import ImapClient, MailboxRefused, MailboxUnavailable, Pop3Client
from notifier.transport import SmtpTransport

PROBE_HEADER = "X-Notifier-Probe"
FIRST_POLL = 0.5  # seconds between the first looks when polling; grows by half up to MAX_POLL
MAX_POLL = 15.0
EXIT_CODES = {"inbox": 0, "junk": 1, "not found": 2, "bounced": 3}


@dataclass
class Found:
    folder: str  # as people read it; "INBOX", "Junk", "垃圾邮件"
    raw_folder: str  # as the server spells it
    uid: int | str  # IMAP UID or POP3 UIDL
    data: bytes
    bounce: bool = False


@dataclass
class Result:
    verdict: str  # a key of EXIT_CODES
    account: str
    mailbox: str
    token: str
    accepted: str = ""
    latency: float | None = None
    folder: str | None = None
    verdicts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    cleanup: str = ""
    reason: str = ""
    reconnects: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def lines(self) -> list[str]:
        """The report `notifier verify-delivery` prints."""
        out = [f"probe {self.token} sent through smtp.{self.account}"
               + (f": {self.accepted}" if self.accepted else "")]
        if self.verdict in ("inbox", "junk"):
            out.append(f"arrived in {self.folder} of {self.mailbox} {self.latency:.2f} s after it was "
                       f"accepted" + (f" ({self.reconnects} reconnect(s))" if self.reconnects else ""))
            if self.verdict == "junk":
                out.append(f"warning: the probe landed in the junk folder ({self.folder}). Mark it as "
                           f"not spam, add the sender to the contacts/whitelist, and check SPF/DKIM "
                           f"of the sending domain.")
            shown = ", ".join(f"{k}={v}" for k, v in sorted(self.verdicts.items()))
            out.append(f"receiver's verdicts: {shown or 'none added (no Authentication-Results)'}")
            out += ([f"NOT intact: {p}" for p in self.problems] if self.problems else
                    ["intact: same MIME structure, same subject, text and HTML parts present"])
            out.append(self.cleanup)
        elif self.verdict == "bounced":
            out.append(f"BOUNCED: {self.reason}")
        else:
            out.append(f"NOT FOUND: {self.reason}; look in the mailbox by hand, and check the "
                       f"recipient address and the account's sending limits.")
        return out


class Finder(Protocol):
    reconnects: int

    def start(self) -> None: ...
    def look(self, token: str) -> Found | None: ...
    def wait(self, seconds: float) -> None: ...
    def delete(self, found: Found) -> str: ...
    def close(self) -> None: ...


def _is_bounce(data: bytes) -> bool:
    msg = inbox.parse(data)
    sender = inbox.header(msg, "From").lower()
    return (msg.get_content_type() == "multipart/report"
            or any(word in sender for word in ("mailer-daemon", "postmaster"))
            or "undeliver" in inbox.header(msg, "Subject").lower()
            or "退信" in inbox.header(msg, "Subject"))


@dataclass(frozen=True)
class _JunkFolder:
    name: str  # as people read it
    raw: str  # as the server spells it


class ImapFinder:
    """INBOX watched with IDLE (or polled), the junk folder checked by STATUS between waits."""

    def __init__(self, box: Mailbox, sleep: Callable[[float], None] = time.sleep) -> None:
        self.box, self.sleep = box, sleep
        self.client = ImapClient(box)
        self.next_uid: dict[str, int] = {}
        self.junk: _JunkFolder | None = None
        self.reconnects = 0
        self._poll = FIRST_POLL

    def start(self) -> None:
        self._connect()
        self.next_uid["INBOX"] = self.client.select("INBOX")[1]
        if self.junk:
            self.next_uid[self.junk.raw] = self.client.status(self.junk.raw)[1]

    def _connect(self) -> None:
        self.client.connect()
        found = self.client.junk_folder()
        self.junk = _JunkFolder(found.name, found.raw) if found else None

    def _reconnect(self) -> None:
        self.client.close()
        self.reconnects += 1
        self._connect()
        self.client.select("INBOX")

    def look(self, token: str) -> Found | None:
        try:
            return self._look(token)
        except MailboxUnavailable:
            self._reconnect()
            return self._look(token)

    def _look(self, token: str) -> Found | None:
        if self.client.selected != "INBOX":
            self.client.select("INBOX")
        else:
            self.client.noop()  # servers see new mail between commands only when asked (or in IDLE)
        uids = self.client.search(self.next_uid["INBOX"], "HEADER", PROBE_HEADER, token)
        if uids:
            return Found("INBOX", "INBOX", uids[0], self.client.fetch(uids[0]))
        bounce = self._bounce(token)
        if bounce:
            return bounce
        if self.junk and self.client.status(self.junk.raw)[1] > self.next_uid[self.junk.raw]:
            self.client.select(self.junk.raw, readonly=True)
            try:
                uids = self.client.search(self.next_uid[self.junk.raw], "HEADER", PROBE_HEADER, token)
                if uids:
                    return Found(self.junk.name, self.junk.raw, uids[0], self.client.fetch(uids[0]))
            finally:
                self.client.select("INBOX")
        return None

    def _bounce(self, token: str) -> Found | None:
        uids = self.client.search(self.next_uid["INBOX"], "BODY", token, "NOT", "HEADER",
                                  PROBE_HEADER, token)
        for uid in uids:
            data = self.client.fetch(uid)
            if _is_bounce(data):
                return Found("INBOX", "INBOX", uid, data, bounce=True)
        return None

    def wait(self, seconds: float) -> None:
        """IDLE on INBOX (junk is looked at after each wake-up), else sleep with backoff."""
        if self.client.has_idle:
            # The junk folder is not watched by IDLE: wake up now and then to look there too.
            chunk = min(seconds, self._poll if self.junk else seconds)
            self._poll = min(self._poll * 2, MAX_POLL)
            try:
                self.client.idle(chunk)
            except MailboxUnavailable:
                self._reconnect()
            return
        self.sleep(min(seconds, self._poll))
        self._poll = min(self._poll * 1.5, MAX_POLL)

    def delete(self, found: Found) -> str:
        assert isinstance(found.uid, int)
        self.client.select(found.raw_folder)
        try:
            if self.client.delete([found.uid]):
                return f"deleted the probe from {found.folder}"
            return (f"flagged the probe \\Deleted in {found.folder}, not expunged: the server has no "
                    f"UIDPLUS, and a plain EXPUNGE would also remove mail others marked deleted")
        finally:
            self.client.select("INBOX")

    def close(self) -> None:
        self.client.close()


class Pop3Finder:
    """POP3 sees the maildrop as of login, so each look is a new session; UIDL says what is new."""

    def __init__(self, box: Mailbox, sleep: Callable[[float], None] = time.sleep) -> None:
        self.box, self.sleep = box, sleep
        self.seen: set[str] = set()
        self.reconnects = 0
        self._poll = FIRST_POLL

    def start(self) -> None:
        with Pop3Client(self.box) as client:
            self.seen = set(client.uidl())

    def look(self, token: str) -> Found | None:
        with Pop3Client(self.box) as client:
            for uid, number in client.uidl().items():
                if uid in self.seen:
                    continue
                head = inbox.parse(client.headers(number))
                if inbox.header(head, PROBE_HEADER) == token:
                    return Found("INBOX", "INBOX", uid, client.fetch(number))
                data = client.fetch(number)
                if token.encode() in data and _is_bounce(data):
                    return Found("INBOX", "INBOX", uid, data, bounce=True)
                self.seen.add(uid)
        return None

    def wait(self, seconds: float) -> None:
        self.sleep(min(seconds, self._poll))
        self._poll = min(self._poll * 1.5, MAX_POLL)

    def delete(self, found: Found) -> str:
        with Pop3Client(self.box) as client:
            number = client.uidl().get(str(found.uid))
            if number is None:
                return "the probe was already gone"
            client.delete(number)
        return "deleted the probe (POP3)"

    def close(self) -> None:
        pass


class BounceWatch:
    """The sender's own mailbox, when it is not the one the probe goes to: bounces come back
    there (163 and QQ return mail to the login). Scanned by UID from where it stood at sending."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self.client = ImapClient(box)
        self.scanner = BounceScanner()

    def start(self) -> None:
        self.client.connect()
        self.scanner.validity, self.scanner.next_uid = self.client.select("INBOX", readonly=True)

    def check(self, message_id: str) -> Bounce | None:
        try:
            found = self.scanner.scan(self.client)
        except MailboxUnavailable:
            self.client.close()
            self.client.connect()
            found = self.scanner.scan(self.client)
        return next((b for b in found if message_id in b.message_ids), None)

    def close(self) -> None:
        self.client.close()


def own_mailbox(cfg: Config, account: SmtpAccount, box: Mailbox) -> Mailbox | None:
    """The imap account that logs in as the SMTP account's login, if it is not `box`."""
    found = config.own_mailbox(account, cfg.mailboxes)
    return found if found is not box else None


def finder_for(box: Mailbox) -> ImapFinder | Pop3Finder:
    return ImapFinder(box) if box.protocol == "imap" else Pop3Finder(box)


def choose(cfg: Config, account_name: str | None) -> tuple[SmtpAccount, Mailbox]:
    """The SMTP account to probe and the mailbox that receives it: `verify_with:`, else the
    only mailbox configured. Anything else is a config problem (exit 78)."""
    name = account_name or cfg.default_account
    if not name or name not in cfg.accounts:
        known = ", ".join(cfg.accounts) or "none"
        raise ConfigError([Problem(str(cfg.path), None, "smtp", f"names no account {name!r} to verify; "
                                   f"known accounts: {known}. Add an smtp: account first.")])
    account = cfg.accounts[name]
    if account.verify_with:
        return account, cfg.mailboxes[account.verify_with]
    if len(cfg.mailboxes) == 1:
        return account, next(iter(cfg.mailboxes.values()))
    hint = ("add an imap: (or pop3:) account for the mailbox that receives the alerts"
            if not cfg.mailboxes else f"say which of {', '.join(cfg.mailboxes)} receives them")
    raise ConfigError([Problem(str(cfg.path), None, f"smtp.{name}.verify_with",
                               f"is not set; {hint} with `verify_with:`.")])


def verify(cfg: Config, account_name: str | None = None, to: str | None = None,
           timeout: float = 180.0, keep: bool = False, debug_smtp: bool = False,
           finder: Finder | None = None) -> Result:
    """Send one probe and watch for it until `timeout` seconds after the server accepted it."""
    account, box = choose(cfg, account_name)
    finder = finder or finder_for(box)
    token = secrets.token_hex(12)
    result = Result("not found", account.name, box.name, token)
    recipient = to or (box.username if box.username and "@" in box.username else None)
    own = own_mailbox(cfg, account, box)
    bounces = BounceWatch(own) if own else None
    try:
        finder.start()  # note the UIDs first, so only what arrives after the probe is looked at
        if bounces:
            bounces.start()
        queued = Alerter(cfg).test(time.time(), [recipient] if recipient else (), account.name, token)
        data = f"{PROBE_HEADER}: {token}\r\n".encode() + queued.body
        if not _send(account, queued.sender, queued.recipients, data, debug_smtp, result):
            return result
        accepted = time.monotonic()
        deadline = accepted + timeout
        while (found := finder.look(token)) is None:
            if bounces and (bounce := bounces.check(queued.message_id)):
                result.latency = time.monotonic() - accepted
                result.verdict, result.folder = "bounced", f"{own.name if own else ''} (the sender's)"
                result.reason = f"{bounce.reason} (reported to {bounces.box.name})"
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.reason = (f"the probe did not arrive in {box.name} within {timeout:g} s of "
                                 f"being accepted")
                return result
            finder.wait(remaining)
        result.latency = time.monotonic() - accepted
        _judge(found, data, result)
        if result.verdict != "bounced":
            result.cleanup = "kept the probe (--keep)" if keep else finder.delete(found)
        return result
    finally:
        result.reconnects = finder.reconnects
        finder.close()
        if bounces:
            bounces.close()


def _send(account: SmtpAccount, sender: str, recipients: tuple[str, ...], data: bytes, debug_smtp: bool,
          result: Result) -> bool:
    """Hand the probe to the SMTP server; False (with the verdict "bounced") when it refused it."""
    transport = SmtpTransport(account, debug_smtp)
    try:
        with transport:
            refused = transport.send(sender, recipients, data)
    except PermanentDeliveryError as exc:
        result.verdict, result.reason = "bounced", f"refused at once: {exc}"
        return False
    if refused:
        result.verdict = "bounced"
        result.reason = "; ".join(f"{a}: {r}" for a, r in refused.items())
        return False
    result.accepted = transport.last_reply
    return True


def _judge(found: Found, sent: bytes, result: Result) -> None:
    """Where the probe (or its bounce) landed, what the receiver said, whether it is intact."""
    result.folder = found.folder
    received = inbox.parse(found.data)
    if found.bounce:
        result.verdict, result.reason = "bounced", _bounce_reason(received)
        return
    result.verdict = "inbox" if found.folder == "INBOX" else "junk"
    result.verdicts = inbox.verdicts(received)
    result.problems = inbox.intact(inbox.parse(sent), received)


def _bounce_reason(msg: Message) -> str:
    for _, part in inbox.walk(msg):
        if part.get_content_type() == "message/delivery-status":
            for block in part.get_payload():
                if isinstance(block, Message) and block.get("Diagnostic-Code"):
                    return inbox.decode_header(block.get("Diagnostic-Code"))
    reading = inbox.read(msg)
    lines = [line.strip() for line in reading.text.splitlines() if line.strip()]
    return inbox.header(msg, "Subject") + (f": {lines[0]}" if lines else "")


__all__ = ["EXIT_CODES", "MailboxRefused", "Result", "choose", "verify"]
