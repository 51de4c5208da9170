"""`notifier inbox`: list and show mail in a receiving account, decoded for people.

Listing fetches only the headers it prints (IMAP: one UID FETCH of the last N; POP3: TOP n 0),
never whole messages; `show` fetches one message, refused by size when it is too big.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from notifier import inbox
from notifier.config import Config, Mailbox
from notifier.errors import ConfigError, Problem, UsageError
from notifier.receive import ImapClient, Pop3Client


def mailbox(cfg: Config, name: str | None) -> Mailbox:
    """The named receiving account, else the only one (or the default account's verify_with)."""
    if name:
        if name not in cfg.mailboxes:
            raise UsageError(f"no imap or pop3 account named {name!r}; known: "
                             f"{', '.join(cfg.mailboxes) or 'none'}.")
        return cfg.mailboxes[name]
    account = cfg.accounts.get(cfg.default_account or "")
    if account and account.verify_with:
        return cfg.mailboxes[account.verify_with]
    if len(cfg.mailboxes) == 1:
        return next(iter(cfg.mailboxes.values()))
    if not cfg.mailboxes:
        raise ConfigError([Problem(str(cfg.path), None, "imap", "no imap: or pop3: account is "
                                   "configured; add the mailbox to read (see the README's Email).")])
    raise UsageError(f"say which mailbox to read with --account ({', '.join(cfg.mailboxes)}).")


@dataclass(frozen=True)
class Listed:
    uid: str
    date: datetime | None
    sender: str
    subject: str
    size: int

    def line(self) -> str:
        when = self.date.strftime("%Y-%m-%d %H:%M") if self.date else "?" * 16
        return f"{self.uid:>8}  {when}  {self.sender[:30]:30}  {self.subject}"


def _listed(uid: str, size: int, headers: bytes) -> Listed:
    msg = inbox.parse(headers)
    return Listed(uid, inbox.date_of(msg), inbox.header(msg, "From"), inbox.header(msg, "Subject"), size)


def listing(box: Mailbox, limit: int = 20, sender: str | None = None, subject: str | None = None,
            since: datetime | None = None, folder: str = "INBOX") -> list[Listed]:
    """The newest `limit` messages matching the filters, newest last. IMAP filters on the
    server (SEARCH FROM/SUBJECT/SINCE); POP3 reads the headers of the newest ones."""
    if box.protocol == "imap":
        with ImapClient(box) as client:
            client.select(folder, readonly=True)
            criteria = []  # what the server can filter; IMAP SEARCH takes ASCII without CHARSET
            if sender and sender.isascii():
                criteria += ["FROM", _quoted(sender)]
            if subject and subject.isascii():
                criteria += ["SUBJECT", _quoted(subject)]
            if since:
                criteria += ["SINCE", since.strftime("%d-%b-%Y")]
            filtered_here = any(v and not v.isascii() for v in (sender, subject))
            wanted = max(limit * 20, 200) if filtered_here else limit
            uids = client.search(1, *(criteria or ["ALL"]))[-wanted:]
            out = [_listed(str(s.uid), s.size, s.headers) for s in client.summaries(uids)]
    else:
        with Pop3Client(box) as pop:
            numbers = sorted(pop.uidl().items(), key=lambda item: item[1])
            out = [_listed(str(n), pop.size(n), pop.headers(n)) for _, n in numbers[-max(limit * 5, 100):]]
    out = [m for m in out if _matches(m, sender, subject, since)]
    return out[-limit:]


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _matches(m: Listed, sender: str | None, subject: str | None, since: datetime | None) -> bool:
    if sender and sender.lower() not in m.sender.lower():
        return False
    if subject and subject.lower() not in m.subject.lower():
        return False
    return not (since and m.date and m.date.replace(tzinfo=None) < since.replace(tzinfo=None))


def fetch(box: Mailbox, uid: str, folder: str = "INBOX") -> bytes:
    if not uid.isdigit():
        raise UsageError(f"{uid!r} is not a message number; `notifier inbox` lists them.")
    if box.protocol == "imap":
        with ImapClient(box) as client:
            client.select(folder, readonly=True)
            return client.fetch(int(uid))
    with Pop3Client(box) as pop:
        return pop.fetch(int(uid))


def show(data: bytes, save_to: Path | None = None) -> Iterator[str]:
    """The lines `notifier inbox show` prints: headers, MIME tree, attachments, warnings, text."""
    reading = inbox.read(inbox.parse(data))
    for name, value in reading.headers.items():
        yield f"{name}: {value}"
    yield ""
    yield "MIME structure:"
    yield from (f"  {line}" for line in reading.tree)
    for warning in reading.warnings:
        yield f"warning: {warning}"
    if save_to is not None:
        for path in inbox.save_attachments(reading, save_to):
            yield f"saved {path}"
    yield ""
    yield reading.text.rstrip("\n")
