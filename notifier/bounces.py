"""Recognise bounces of notifier's own mail, and scan a mailbox for them by UID.

A bounce is an RFC 3464 report (multipart/report; report-type=delivery-status) or one of the
non-standard notices providers send: QQ (X-OQ-MSGID names the original), 163 (the original
attached as message/rfc822), Gmail (a report whose human part says "Address not found").
It is tied to the message it bounces by the original Message-ID: from X-OQ-MSGID, from the
attached or quoted original headers, or from a "Message-ID:" line quoted in the text (VERP is
impossible: 163 and QQ require the envelope sender to be the login). Auto-replies
(Auto-Submitted without a report or a postmaster sender) and challenge-response mail are not
bounces. `BounceScanner` looks only at messages newer than the last scan (UIDs; a new
UIDVALIDITY starts over) and lets the server pick the candidates, so a mailbox of 10,000
messages costs one SEARCH per scan.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from notifier import inbox
from notifier.config import Config, Mailbox, own_mailbox
from notifier.errors import ConfigError, Problem, UsageError
from notifier.receive import ImapClient

_MESSAGE_ID = re.compile(r"(?im)^\s*Message-ID:\s*(<[^>\s]+>)")
_DAEMON = re.compile(r"(?i)mailer-daemon|postmaster|mail delivery (sub)?system")
_SUBJECT = re.compile(r"(?i)undeliver|delivery status notification|returned mail|failure notice|"
                      r"delivery (has )?failed|退信|无法投递|投递失败")
_REASON = re.compile(r"(?i)\b[45]\d\d\b|reason|not (be )?found|does not exist|unknown|原因|不存在")
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True)
class Bounce:
    """What a bounce says: which of our messages, which recipients, and why."""

    message_ids: tuple[str, ...]
    recipients: tuple[str, ...]
    status: str | None
    reason: str
    shape: str  # "rfc3464", "qq", "attached", "text"
    uid: int = 0


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    return [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []


def _original_ids(msg: Message) -> list[str]:
    ids: list[str] = []
    if msg.get("X-OQ-MSGID"):
        ids.append(inbox.decode_header(msg["X-OQ-MSGID"]).strip())
    for _, part in inbox.walk(msg):
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            for inner in _blocks(part):
                if inner.get("Message-ID"):
                    ids.append(str(inner["Message-ID"]).strip())
        elif ctype in ("text/rfc822-headers", "text/plain", "text/html") and part is not msg:
            ids += _MESSAGE_ID.findall(inbox.part_text(part).text)
    if not ids and msg.get_content_type().startswith("text/"):
        ids += _MESSAGE_ID.findall(inbox.part_text(msg).text)
    return list(dict.fromkeys(i for i in ids if i.startswith("<")))


def recognise(data: bytes | Message, uid: int = 0) -> Bounce | None:
    """The bounce `data` is, or None (ordinary mail, an auto-reply, a delay warning)."""
    msg = data if isinstance(data, Message) else inbox.parse(data)
    sender, subject = inbox.header(msg, "From"), inbox.header(msg, "Subject")
    kind = msg.get_param("report-type")
    report = msg.get_content_type() == "multipart/report" and \
        isinstance(kind, str) and kind.lower() == "delivery-status"
    if not (report or msg.get("X-OQ-MSGID") or _DAEMON.search(sender)):
        return None  # Auto-Submitted mail from a person's address is an auto-reply, not a bounce
    if not report and not _SUBJECT.search(subject):
        return None
    recipients: list[str] = []
    statuses: list[str] = []
    reasons: list[str] = []
    failed = not report
    for _, part in inbox.walk(msg):
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in _blocks(part)[1:]:  # the first block describes the reporting MTA
            action = (block.get("Action") or "").strip().lower()
            if action != "failed":
                continue
            failed = True
            recipients.append(str(block.get("Final-Recipient", "")).split(";")[-1].strip())
            if block.get("Status"):
                statuses.append(str(block["Status"]).strip())
            if block.get("Diagnostic-Code"):
                reasons.append(" ".join(str(block["Diagnostic-Code"]).split(";", 1)[-1].split()))
    if not failed:
        return None  # "delayed" or "delivered" reports are not bounces
    reading = inbox.read(msg)
    if not reasons:
        lines = [line.strip() for line in reading.text.splitlines() if line.strip()]
        telling = [line for line in lines if _REASON.search(line)] or lines[:2]
        reasons = [subject + (f": {' '.join(telling[:2])}" if telling else "")]
    if not statuses and (found := _STATUS.search(" ".join(reasons))):
        statuses.append(found.group(1))
    shape = ("rfc3464" if report else "qq" if msg.get("X-OQ-MSGID") else
             "attached" if any(p.get_content_type() == "message/rfc822" for _, p in inbox.walk(msg))
             else "text")
    return Bounce(tuple(_original_ids(msg)), tuple(r for r in recipients if r), next(iter(statuses), None),
                  "; ".join(reasons), shape, uid)


# Server-side candidates: what could be a bounce, so ordinary mail is never fetched.
_CANDIDATES = ("OR", "OR", "OR", "FROM", "mailer-daemon", "FROM", "postmaster",
               "HEADER", "Content-Type", "report", "HEADER", "X-OQ-MSGID", '""')


class BounceScanner:
    """Scans one folder for new bounces; remembers where it stopped (UIDVALIDITY, next UID)."""

    def __init__(self, folder: str = "INBOX", validity: int = 0, next_uid: int = 1) -> None:
        self.folder, self.validity, self.next_uid = folder, validity, next_uid
        self.fetched = 0  # messages fetched by the last scan, to show it touched only new ones

    def scan(self, client: ImapClient) -> list[Bounce]:
        validity, uidnext = client.select(self.folder, readonly=True)
        if validity != self.validity:  # the folder was recreated: its UIDs mean something else
            self.validity, self.next_uid = validity, 1
        self.fetched = 0
        found = []
        if uidnext > self.next_uid:
            for uid in client.search(self.next_uid, *_CANDIDATES):
                self.fetched += 1
                bounce = recognise(client.fetch(uid), uid)
                if bounce is not None:
                    found.append(bounce)
        self.next_uid = max(self.next_uid, uidnext)
        return found


def sender_mailbox(cfg: Config, account: str | None, mailbox: str | None) -> Mailbox:
    """Where bounces of an SMTP account's mail arrive: its own login's mailbox (163 and QQ
    return mail to the envelope sender, which must be the login), or the one named."""
    found: Mailbox | None
    if mailbox:
        if mailbox not in cfg.mailboxes:
            raise UsageError(f"no imap account named {mailbox!r}; known: "
                             f"{', '.join(cfg.mailboxes) or 'none'}.")
        found = cfg.mailboxes[mailbox]
    else:
        smtp = cfg.accounts.get(account or cfg.default_account or "")
        login = (smtp.username or "").lower() if smtp else ""
        found = own_mailbox(smtp, cfg.mailboxes) if smtp else None
        if found is None:
            raise ConfigError([Problem(str(cfg.path), None, "imap", f"no imap: account logs in as "
                                       f"{login or 'the sending account'}; add the sender's own mailbox "
                                       f"(bounces come back there), or name one with --mailbox.")])
    if found.protocol != "imap":
        raise UsageError(f"{found.name} is a pop3 account; bounce scanning needs IMAP.")
    return found


@dataclass(frozen=True)
class Scan:
    """The bounces found in one mailbox since its last scan, and where the next scan starts.
    The position is kept only by `keep`, once the bounces are recorded: a scan whose bounces
    were not recorded (the database refused them) must see them again."""

    found: list[Bounce]
    positions: Path
    key: str
    position: tuple[int, int]  # UIDVALIDITY, next UID

    def keep(self) -> None:
        """Write the position into the JSON file (private to its owner), beside the other
        mailboxes' positions; OSError when it cannot be written."""
        saved = _positions(self.positions)
        saved[self.key] = list(self.position)
        self.positions.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.positions.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(saved, handle)
        os.replace(tmp, self.positions)


def _positions(path: Path) -> dict[str, list[int]]:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def scan_mailbox(box: Mailbox, positions: Path) -> Scan:
    """Scan `box`'s INBOX for bounces newer than the last scan kept in `positions` (one entry
    per mailbox); the caller keeps the new position once it has recorded what was found."""
    key = f"{box.username}@{box.host}:{box.port}"
    validity, next_uid = _positions(positions).get(key, [0, 1])
    scanner = BounceScanner("INBOX", int(validity), int(next_uid))
    with ImapClient(box) as client:
        found = scanner.scan(client)
    return Scan(found, positions, key, (scanner.validity, scanner.next_uid))
