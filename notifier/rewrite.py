"""Make a relayed message acceptable to 163/QQ without losing who wrote it.

Those providers refuse mail whose envelope sender or From is not the login (QQ: "501 mail from
address must be same as authorization user", 163: "553 Mail from must equal authorized user").
So the From header becomes the login, with the original writer kept twice: as Reply-To (unless
the message has one), so answers reach them, and in the display name ("Cron Daemon on host1 via
notifier"), so the inbox says who it is. Message-ID and Date are added when missing, Bcc is
taken out. Every other header and the body pass through byte for byte — only line endings are
made CRLF, which SMTP requires and `sendmail` input (plain LF) never has — unless a line of the
body is longer than SMTP carries (998 octets): providers refuse that message outright ("500 Line
too long"), so the part with such a line is re-encoded as quoted-printable, which says the same
text in short lines.

Works on bytes: re-serializing through the email package would refold headers and re-encode
8-bit text, and the promise is that nothing else changes.
"""

from __future__ import annotations

import binascii
import email.policy
import re
import time
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import formataddr, formatdate, getaddresses, make_msgid

CRLF = b"\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")  # a header's name (RFC 5322 ftext)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_ADDRESS = re.compile(r"^[^\s@<>,;:\"()\[\]\\]+(@[^\s@<>,;:\"()\[\]\\]+)?$")
VIA = "via notifier"
LONGEST = 998  # octets a line may have before its CRLF (RFC 5321 4.5.3.1.6)
_AS_IS = ("", "7bit", "8bit", "binary")  # transfer encodings that leave lines as they are
# The email package's generator without refolding: headers are written back as they came.
_RAW = email.policy.compat32.clone(linesep="\r\n", max_line_length=0)


@dataclass(frozen=True)
class Rewritten:
    """The message to queue: its bytes, the Message-ID it goes out with (the outbox key) and
    the envelope sender to use."""

    data: bytes
    message_id: str
    sender: str


def crlf(data: bytes) -> bytes:
    """Every bare LF made CRLF; CRLF stays as it is (checked first: most mail has no bare LF)."""
    return data if data.count(b"\n") == data.count(CRLF) else _BARE_LF.sub(CRLF, data)


def split(data: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines and CRLF) and the rest: the blank line and
    the body. A message that does not start with headers has none; text after the last header
    that is no header starts the body, as the email package reads it too. Only the lines
    before the first blank one are split: the body is most of a message and stays whole."""
    fields: list[bytes] = []
    end = data.find(CRLF + CRLF)
    head, body = (data, None) if end < 0 else (data[:end], data[end + len(CRLF):])
    lines = head.split(CRLF)
    index = 0
    for index, line in enumerate(lines):  # noqa: B007 - index is read after the loop
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + CRLF
        elif _FIELD.match(line):
            fields.append(line + CRLF)
        else:
            break
    else:
        index = len(lines)
    rest = lines[index:]
    return fields, CRLF.join(rest if body is None else [*rest, body])


def name_of(field: bytes) -> str:
    """A header field's name, lower case ("from")."""
    match = _FIELD.match(field)
    return match.group(1).decode("ascii").lower() if match else ""


def value_of(field: bytes) -> str:
    """A header field's value unfolded, as text (8-bit bytes read as UTF-8)."""
    raw = field.split(b":", 1)[1] if b":" in field else b""
    return " ".join(raw.decode("utf-8", "replace").split())


def rewrite(data: bytes, envelope_sender: str, login: str | None, host: str,
            now: float | None = None) -> Rewritten:
    """The message as it is queued. With a `login`, From and the envelope sender become it
    (see the module docstring); without one only Bcc, Message-ID and Date are seen to."""
    fields, rest = split(crlf(data))
    names = [name_of(f) for f in fields]
    out = [f for f, n in zip(fields, names, strict=True) if n != "bcc"]
    sender = envelope_sender
    if login:
        out = _from_login(out, names, envelope_sender, login, host)
        sender = login
    message_id = next((value_of(f) for f in out if name_of(f) == "message-id"), "")
    if not message_id:
        message_id = make_msgid(domain=(login or "").rpartition("@")[2] or host)
        out.append(f"Message-ID: {message_id}".encode("ascii") + CRLF)
    if "date" not in names:
        out.append(f"Date: {formatdate(now or time.time(), localtime=True)}".encode("ascii") + CRLF)
    if not rest.startswith(CRLF) and rest:
        rest = CRLF + rest  # body text that followed the headers directly stays body text
    return Rewritten(fit_lines(out, rest or CRLF), message_id, sender)


def too_long(data: bytes) -> bool:
    """Whether a line of `data` (CR and LF both end one) is longer than SMTP carries. Split in
    C: the regular expression [^\r\n]{999} restarts at every byte of every line and cost a
    relayed 10 KB message 1.8 ms, most of the relay's time; this costs 25 µs."""
    return len(data) > LONGEST and max(map(len, data.replace(b"\r", b"\n").split(b"\n"))) > LONGEST


def fit_lines(fields: list[bytes], rest: bytes) -> bytes:
    """The message of `fields` and `rest` (the blank line and the body), with a body whose lines
    are longer than SMTP carries re-encoded as quoted-printable; any other message as it is."""
    if not too_long(rest):
        return b"".join(fields) + rest
    kind = next((value_of(f).lower() for f in fields if name_of(f) == "content-type"), "")
    if kind.startswith("multipart/"):
        return _fit_parts(b"".join(fields) + rest)
    encoding = next((value_of(f).lower() for f in fields if name_of(f) == "content-transfer-encoding"), "")
    if encoding not in _AS_IS:
        return b"".join(fields) + rest  # encoded already: its lines are the encoder's
    names = {name_of(f) for f in fields}
    kept = [f for f in fields if name_of(f) != "content-transfer-encoding"]
    added = [] if "mime-version" in names else [b"MIME-Version: 1.0" + CRLF]
    if "content-type" not in names and not rest.isascii():
        added.append(b"Content-Type: text/plain; charset=utf-8" + CRLF)  # 8-bit text is UTF-8 here
    added.append(b"Content-Transfer-Encoding: quoted-printable" + CRLF)
    return b"".join(kept + added) + CRLF + binascii.b2a_qp(rest[len(CRLF):], istext=True)


def _fit_parts(data: bytes) -> bytes:
    """A multipart message with each part that has too long a line re-encoded (the email
    package rebuilds the message, so only this rare message is touched by it)."""
    message = BytesParser(policy=_RAW).parsebytes(data)
    for part in message.walk():
        payload = None if part.is_multipart() else part.get_payload(decode=True)
        if (isinstance(payload, bytes) and too_long(payload)
                and str(part.get("Content-Transfer-Encoding", "")).strip().lower() in _AS_IS):
            _quoted_printable(part, payload)
    return message.as_bytes(policy=_RAW)


def _quoted_printable(part: Message, payload: bytes) -> None:
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(binascii.b2a_qp(crlf(payload), istext=True).decode("ascii"))


def _from_login(fields: list[bytes], names: list[str], envelope_sender: str, login: str,
                host: str) -> list[bytes]:
    """The header fields with From made the login and the original writer kept in the display
    name and as Reply-To (when there is none and the writer is not the login already)."""
    original = next((f for f in fields if name_of(f) == "from"), None)
    name, address = _writer(value_of(original) if original else "", envelope_sender, host)
    display = f"{name or address.partition('@')[0]} on {address.partition('@')[2]} {VIA}"
    new = [_header("From", display, login)]
    if "reply-to" not in names and address.lower() != login.lower():
        new.append(_header("Reply-To", name, address))
    if original is None:
        return new + fields
    at = fields.index(original)
    return fields[:at] + new + [f for f in fields[at + 1:] if name_of(f) != "from"]


def _writer(from_value: str, envelope_sender: str, host: str) -> tuple[str, str]:
    """(display name, address) of who wrote the message: its From, else the envelope sender; an
    address without a domain ("root") is qualified with this host's name. Control characters
    are taken out, so nothing a client sends can start a header line of its own."""
    pairs = getaddresses([from_value]) if from_value else []
    name, address = pairs[0] if pairs and pairs[0][1] else ("", envelope_sender or "MAILER-DAEMON")
    name = _CONTROL.sub(" ", _decoded(name)).strip()
    address = _CONTROL.sub("", address).strip()
    if not _ADDRESS.match(address):
        address = "unknown"
    if "@" not in address:
        address = f"{address}@{host}"
    return name, address


def _decoded(text: str) -> str:
    """RFC 2047 encoded words ("=?utf-8?b?...?=") as the text they stand for."""
    try:
        return str(make_header(decode_header(text)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return text


def _header(field: str, name: str, address: str) -> bytes:
    """One address header; a display name that is not ASCII is RFC 2047 encoded."""
    return f"{field}: {formataddr((name, address), charset='utf-8')}".encode() + CRLF
