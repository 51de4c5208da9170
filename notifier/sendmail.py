"""`notifier sendmail` (what /usr/sbin/sendmail can be linked to): read the message, hand it
to the running daemon's relay over SMTP, so it is screened, counted and queued there.

When no relay answers, it runs the same intake itself and queues straight into the state
database; the daemon sends it when it runs. It exits non-zero only when the message could not
be queued (or was refused by a rule): errors go to stderr and the exit status, never back as a
mail (no bounce loops). The command line was read by notifier.cli_relay.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import smtplib
import socket
import sys
from collections.abc import Iterator, Sequence
from email.utils import formataddr, getaddresses
from pathlib import Path
from typing import BinaryIO, TextIO

from notifier import config as configmod
from notifier import logs
from notifier.cli_common import existing_store
from notifier.cli_relay import Invocation
from notifier.config import Config
from notifier.errors import EXIT_OK, ConfigError, NotifierError, Problem, UsageError
from notifier.rewrite import CRLF, crlf, name_of, split
from notifier.secrets import redact

EX_DATAERR, EX_TEMPFAIL, EX_USAGE = 65, 75, 64  # sysexits.h, as sendmail's callers expect
SYSTEM_CONFIG = Path("/etc/notifier/watchers.yaml")
GREETING_TIMEOUT = 5.0  # seconds for the relay to accept the connection and greet...
HANDOVER_TIMEOUT = 60.0  # ...and to answer each command after that
NOT_TAKEN = (421, 530)  # relay too busy, or it wants a login: queue here (only before DATA)
_REPLY = re.compile(r"^[2-5]\d\d ")  # an SMTP reply line: a code, a space, the text
_CODE = re.compile(r"\b[2-5]\d\d\b")


def sendmail_main(inv: Invocation, stdin: BinaryIO | None = None, stdout: TextIO | None = None) -> int:
    """Run one sendmail invocation; the error boundary of `notifier sendmail`."""
    logs.setup("warning")
    stdin = stdin or sys.stdin.buffer
    try:
        if inv.problem is not None:
            raise inv.problem
        cfg = configmod.load(_existing(_config_path(inv)), state_dir=inv.state_dir)
        if cfg.relay is None:
            raise UsageError(f"{cfg.path} has no `relay:` section, so notifier does not relay mail; "
                             "add `relay: {}` to it (see the README's \"Local mail relay\").")
        if inv.smtp:
            return _smtp_session(cfg, stdin, stdout or sys.stdout)
        sender = inv.sender or _local_sender()
        data, recipients = _message(stdin.read(), inv, sender)
        if not recipients:
            raise UsageError("no recipients: name them as arguments, or use -t to read them "
                             "from the To, Cc and Bcc headers.")
        reply = hand_over(cfg, sender, recipients, data)
    except NotifierError as exc:
        print(f"notifier sendmail: {redact(str(exc))}", file=sys.stderr)
        return EX_USAGE if isinstance(exc, UsageError) else EX_TEMPFAIL
    if reply.startswith("2"):
        return EXIT_OK
    print(f"notifier sendmail: the message was not queued: {reply}", file=sys.stderr)
    return EX_DATAERR if reply.startswith("5") else EX_TEMPFAIL


def _config_path(inv: Invocation) -> Path:
    """-C or -c; else $NOTIFIER_CONFIG; else the system's file when it exists, else ./watchers.yaml."""
    if inv.config:
        return inv.config
    if os.environ.get("NOTIFIER_CONFIG"):
        return Path(os.environ["NOTIFIER_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else Path("watchers.yaml")


def _existing(path: Path) -> Path:
    """`path`, when there is a file there. sendmail's callers (cron) pass no notifier options,
    so the message names the ways sendmail itself has of finding the file."""
    if not path.exists():
        raise ConfigError([Problem(str(path), None, "", (
            f"file not found, so the message was not queued. notifier sendmail reads -C FILE, else "
            f"$NOTIFIER_CONFIG, else {SYSTEM_CONFIG}: put the config there (cron sets neither "
            f"option nor variable, so for cron it must be {SYSTEM_CONFIG})."))])
    return path


def _local_sender() -> str:
    """user@host, as sendmail names the user who runs it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _message(raw: bytes, inv: Invocation, sender: str) -> tuple[bytes, list[str]]:
    """The message as read from stdin (up to a lone "." unless -i) with CRLF line ends and a
    From when it had none (-F names it); and its recipients (with -t, those of its headers)."""
    data = crlf(raw)
    if inv.dot_ends:
        head, dot, _ = data.partition(b"\r\n.\r\n")
        data = head + CRLF if dot else (b"" if data.startswith(b".\r\n") else data)
    fields, _ = split(data)
    if not any(name_of(f) == "from" for f in fields):
        data = f"From: {formataddr((inv.fullname or '', sender), charset='utf-8')}".encode() + CRLF + data
    recipients = list(inv.recipients)
    if inv.extract:
        values = [f.split(b":", 1)[1].decode("utf-8", "replace") for f in fields
                  if name_of(f) in ("to", "cc", "bcc")]
        recipients += [addr for _, addr in getaddresses([" ".join(v.split()) for v in values]) if addr]
    return data, list(dict.fromkeys(recipients))


def hand_over(cfg: Config, sender: str, recipients: Sequence[str], data: bytes) -> str:
    """Give the message to the running relay, or queue it here when the relay does not take it
    before DATA: nobody listens, no greeting in time, too busy (421), or it wants a login (530:
    a relay listening beyond loopback). Once the message went out in DATA the relay's answer
    stands: queueing it here as well could send it twice. The reply, as SMTP words it."""
    relay = cfg.relay
    assert relay is not None
    host = "127.0.0.1" if relay.host in ("0.0.0.0", "::", "") else relay.host  # noqa: S104
    try:
        smtp = smtplib.SMTP(host, relay.port, timeout=GREETING_TIMEOUT,
                            local_hostname=socket.gethostname())
    except (OSError, smtplib.SMTPException):
        return queue_here(cfg, sender, recipients, data)
    try:
        smtp.timeout = HANDOVER_TIMEOUT
        if smtp.sock is not None:
            smtp.sock.settimeout(HANDOVER_TIMEOUT)
        refusal = _envelope(smtp, sender, recipients)
        return refusal or _send_data(smtp, data)
    except _NotTaken:
        return queue_here(cfg, sender, recipients, data)
    finally:
        _quit(smtp)


class _NotTaken(Exception):
    """The relay cannot take the message (gone, busy, or wants a login) and nothing of it was
    sent: it is queued here instead."""


def _envelope(smtp: smtplib.SMTP, sender: str, recipients: Sequence[str]) -> str | None:
    """EHLO, MAIL and RCPT: the refusal to report (every recipient refused, or the sender), or
    None when DATA may follow."""
    try:
        smtp.ehlo_or_helo_if_needed()
        code, text = smtp.mail(sender)
        if code in NOT_TAKEN:
            raise _NotTaken
        if code != 250:
            return f"{code} {_text(text)}"
        replies = [(address, *smtp.rcpt(address)) for address in recipients]
    except (OSError, smtplib.SMTPException):
        raise _NotTaken from None
    if any(code in NOT_TAKEN for _, code, _ in replies):
        raise _NotTaken
    refused = [f"{a}: {c} {_text(t)}" for a, c, t in replies if c not in (250, 251)]
    return " ".join(refused) if len(refused) == len(replies) else None


def _send_data(smtp: smtplib.SMTP, data: bytes) -> str:
    """DATA, and the relay's answer to it; an answer lost after the message went out is a
    temporary failure (exit 75) — the relay may hold the message already."""
    try:
        code, text = smtp.data(data)
    except smtplib.SMTPResponseException as exc:
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    except (OSError, smtplib.SMTPException) as exc:
        return (f"451 4.4.2 The relay did not answer after the message was sent ({exc or 'no reply'}); "
                "it may have queued it: look at `notifier outbox` before sending it again.")
    return "250 queued by the relay" if code == 250 else f"{code} {_text(text)}"


def _quit(smtp: smtplib.SMTP) -> None:
    """QUIT when the connection still stands; what the relay says to it changes nothing."""
    with contextlib.suppress(OSError, smtplib.SMTPException):
        smtp.quit()
    smtp.close()


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def queue_here(cfg: Config, sender: str, recipients: Sequence[str], data: bytes) -> str:
    """The relay's intake run in this process, into the outbox of the daemon's own store.
    notifier.relay is imported here, not at the top: it brings aiosmtpd (~12 MB), which the
    other commands never use."""
    from notifier.relay import LOCAL, Intake  # noqa: PLC0415 - aiosmtpd only here

    store = existing_store(cfg, f"the message was not queued (no relay answered either). Set "
                           f"`state_dir:` in {cfg.path} to the daemon's state directory "
                           f"(/var/lib/notifier under the shipped unit), or start `notifier run`.")
    intake = Intake(lambda: cfg, store)
    try:
        return intake.submit(LOCAL, sender, recipients, data)
    finally:
        intake.commits.close()
        store.close()


def _smtp_session(cfg: Config, stdin: BinaryIO, stdout: TextIO) -> int:
    """-bs: an SMTP dialogue on stdin and stdout, each message handed over as above."""
    def say(line: str) -> None:
        stdout.write(line + "\r\n")
        stdout.flush()

    say(f"220 {socket.gethostname()} notifier sendmail ESMTP")
    sender: str | None = None
    recipients: list[str] = []
    for line in _lines(stdin):
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb in ("HELO", "EHLO"):
            say(f"250 {socket.gethostname()}")
        elif verb == "MAIL" and arg.upper().startswith("FROM:"):
            sender, recipients = _angle(arg[5:]), []
            say("250 2.1.0 OK")
        elif verb == "RCPT" and arg.upper().startswith("TO:") and sender is not None:
            recipients.append(_angle(arg[3:]))
            say("250 2.1.5 OK")
        elif verb == "DATA" and sender is not None and recipients:
            say("354 End data with <CR><LF>.<CR><LF>")
            say(_handed_over(cfg, sender, recipients, _data(stdin)))
            sender, recipients = None, []
        elif verb in ("RSET", "NOOP"):
            sender, recipients = (None, []) if verb == "RSET" else (sender, recipients)
            say("250 2.0.0 OK")
        elif verb == "QUIT":
            say("221 2.0.0 Bye")
            return EXIT_OK
        else:
            say("503 5.5.1 Command out of sequence or not supported.")
    return EXIT_OK


def _handed_over(cfg: Config, sender: str, recipients: Sequence[str], data: bytes) -> str:
    """hand_over's answer as one valid SMTP reply line (-bs talks to a program that parses it):
    a code first, the text on one line; a message that could not be queued is a 451."""
    try:
        reply = " ".join(hand_over(cfg, sender, recipients, data).split())
    except NotifierError as exc:
        reply = f"451 4.3.0 {' '.join(redact(str(exc)).split())}"
    if _REPLY.match(reply):
        return reply
    code = _CODE.search(reply)  # "a@x: 550 ...": the first recipient's code leads
    return f"{code.group() if code else '451'} {reply}"


def _lines(stdin: BinaryIO) -> Iterator[str]:
    for raw in iter(stdin.readline, b""):
        yield raw.decode("utf-8", "replace").rstrip("\r\n")


def _angle(text: str) -> str:
    """The address of "FROM:<a@b> SIZE=10"."""
    text = text.strip()
    return text[1:text.index(">")] if text.startswith("<") and ">" in text else text.split(" ")[0]


def _data(stdin: BinaryIO) -> bytes:
    """DATA up to the lone ".", with dot-stuffing undone."""
    lines = []
    for raw in iter(stdin.readline, b""):
        line = raw.rstrip(b"\r\n")
        if line == b".":
            break
        lines.append(line[1:] if line.startswith(b".") else line)
    return CRLF.join(lines) + CRLF
