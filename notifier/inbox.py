"""Read received mail: headers decoded (RFC 2047, any charset), bodies decoded by their declared
charset and then by detection, the MIME tree, attachments with RFC 2231/2047 names.

Pure functions over bytes; fetching is notifier.receive's business. Input is untrusted: a
message too big, a header block that never ends or a million header lines is refused with a
sentence (`BadMessage`), and malformed MIME (a multipart without its boundary) is read as far
as it goes, with a warning, never a traceback.
"""

from __future__ import annotations

import email
import email.header
import email.message
import email.utils
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from pathlib import Path

from notifier.charset import codec_name, guess_encoding
from notifier.errors import FilterError, NotifierError
from notifier.filters.html import Html2Text

MAX_MESSAGE = 25 * 1024 * 1024
MAX_HEADER_BYTES = 256 * 1024  # the whole header block; real ones are a few KB
MAX_HEADER_LINES = 2000
MAX_PARTS = 500


class BadMessage(NotifierError):
    """The bytes are not a message notifier will read, and the error says why."""


def check_size(data: bytes, max_bytes: int = MAX_MESSAGE) -> None:
    """Refuse oversized messages and header bombs before the parser sees them."""
    if len(data) > max_bytes:
        raise BadMessage(f"the message is {len(data) / 1048576:.1f} MB, more than the "
                         f"{max_bytes / 1048576:.0f} MB notifier reads.")
    end = re.search(rb"\r?\n\r?\n", data[: MAX_HEADER_BYTES + 4])
    if end is None and len(data) > MAX_HEADER_BYTES:
        raise BadMessage(f"the header block is longer than {MAX_HEADER_BYTES // 1024} KB: not a "
                         f"message notifier will read (a header bomb?).")
    block = data[: end.start()] if end else data
    if block.count(b"\n") > MAX_HEADER_LINES:
        raise BadMessage(f"the message has more than {MAX_HEADER_LINES} header lines: not a message "
                         f"notifier will read (a header bomb?).")


def parse(data: bytes, max_bytes: int = MAX_MESSAGE) -> Message:
    check_size(data, max_bytes)
    msg = email.message_from_bytes(data)
    if sum(1 for _ in msg.walk()) > MAX_PARTS:
        raise BadMessage(f"the message has more than {MAX_PARTS} MIME parts; not read.")
    return msg


# --- headers ------------------------------------------------------------------------------------

def _decode_bytes(raw: bytes, charset: str | None) -> str:
    codec = codec_name(charset) if charset else None
    if codec:
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode(guess_encoding(raw) or "gb18030", errors="replace")


def decode_header(value: object) -> str:
    """A header value as text: encoded words in any charset (GBK, GB2312, Big5, UTF-8, B or Q),
    and raw 8-bit headers (which some Chinese mailers send) by detection."""
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        value = str(value)
    text = str(value)
    if any("\udc80" <= c <= "\udcff" for c in text):  # raw bytes the parser escaped
        text = _decode_bytes(text.encode("ascii", "surrogateescape"), None)
    try:
        chunks = email.header.decode_header(text)
    except (ValueError, LookupError):
        return " ".join(text.split())
    out = []
    for chunk, charset in chunks:
        out.append(_decode_bytes(chunk, charset) if isinstance(chunk, bytes) else chunk)
    return " ".join("".join(out).split())


def header(msg: Message, name: str) -> str:
    return decode_header(msg.get(name))


# --- bodies -------------------------------------------------------------------------------------

@dataclass
class Body:
    text: str
    warnings: list[str] = field(default_factory=list)


def part_text(part: Message) -> Body:
    """A text part's content: the declared charset first, then detection. A declared charset
    the bytes do not fit falls back with a warning, instead of mojibake."""
    payload = part.get_payload(decode=True)
    raw = payload if isinstance(payload, bytes) else b""
    declared = part.get_content_charset()
    codec = codec_name(declared) if declared else None
    if codec:
        try:
            return Body(raw.decode(codec))
        except UnicodeDecodeError:
            guessed = "utf-8" if _is_utf8(raw) else guess_encoding(raw) or "gb18030"
            return Body(raw.decode(guessed, errors="replace"),
                        [f"the part declares charset {declared}, but its bytes are not {declared}; "
                         f"read as {guessed}"])
    if declared:
        guessed = guess_encoding(raw) or "utf-8"
        return Body(raw.decode(guessed, errors="replace"),
                    [f"unknown charset {declared!r}; read as {guessed}"])
    if _is_utf8(raw):
        return Body(raw.decode("utf-8"))
    return Body(raw.decode(guess_encoding(raw) or "utf-8", errors="replace"))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def html_to_text(html: str) -> str:
    try:
        return Html2Text({"links": True}).apply(html)
    except FilterError:
        return ""


@dataclass
class Attachment:
    name: str
    content_type: str
    size: int
    part: Message


@dataclass
class Reading:
    """What `notifier inbox show` prints about one message."""

    headers: dict[str, str]
    text: str
    tree: list[str]
    attachments: list[Attachment]
    warnings: list[str]


def _is_attachment(part: Message) -> bool:
    disposition = (part.get_content_disposition() or "").lower()
    return disposition == "attachment" or (part.get_filename() is not None and disposition != "inline")


def filename(part: Message) -> str | None:
    """The part's file name: RFC 2231 (filename*=gbk''...) or RFC 2047 (=?GBK?B?..?=) forms."""
    name = part.get_filename() or part.get_param("name")
    if name is None:
        return None
    if isinstance(name, tuple):  # an RFC 2231 value the library did not collapse
        charset, _, value = name
        name = _decode_bytes(value.encode("latin-1", "replace"), charset or None)
    return decode_header(name)


def walk(msg: Message, depth: int = 0) -> Iterator[tuple[int, Message]]:
    yield depth, msg
    if msg.is_multipart():
        for child in msg.get_payload():
            if isinstance(child, Message):
                yield from walk(child, depth + 1)


def read(msg: Message) -> Reading:
    """Decode a message for people: headers, the text (or the HTML as text), tree, attachments."""
    headers = {name: header(msg, name) for name in ("Date", "From", "To", "Cc", "Subject", "Message-ID")
               if msg.get(name) is not None}
    tree, attachments, warnings = [], [], []
    plain: Body | None = None
    html: Body | None = None
    for depth, part in walk(msg):
        ctype = part.get_content_type()
        size = len(part.get_payload(decode=True) or b"") if not part.is_multipart() else 0
        label = f"{'  ' * depth}{ctype}"
        if charset := part.get_content_charset():
            label += f"; charset={charset}"
        if not part.is_multipart():
            label += f" ({size} bytes)"
        if _is_attachment(part):
            name = filename(part) or "attachment"
            label += f' attachment "{name}"'
            attachments.append(Attachment(name, ctype, size, part))
        elif ctype == "text/plain" and plain is None:
            plain = part_text(part)
        elif ctype == "text/html" and html is None:
            html = part_text(part)
        tree.append(label)
    for defect in _defects(msg):
        warnings.append(f"malformed MIME: {defect}")
    if plain is not None:
        text, warnings = plain.text, warnings + plain.warnings
    elif html is not None:
        text, warnings = html_to_text(html.text), warnings + html.warnings
    else:
        text = ""
    return Reading(headers, text, tree, attachments, warnings)


def _defects(msg: Message) -> list[str]:
    found = []
    for _, part in walk(msg):
        for defect in getattr(part, "defects", []):
            found.append((defect.__doc__ or type(defect).__name__).strip().splitlines()[0])
    return list(dict.fromkeys(found))


# --- attachments --------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


def safe_name(name: str) -> str:
    """A file name that stays inside the target directory: no directories, no leading dots,
    no control or reserved characters, at most 150 characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    if len(name) > 150:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 140] + dot + ext[:9]) if dot else name[:150]
    return name or "attachment"


def save_attachments(reading: Reading, directory: Path) -> list[Path]:
    """Write each attachment into `directory` under a safe name, never overwriting a file
    (name.ext, then "name (1).ext", ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    saved = []
    for attachment in reading.attachments:
        data = attachment.part.get_payload(decode=True)
        base = safe_name(attachment.name)
        stem, dot, ext = base.rpartition(".")
        if not dot:
            stem, ext = base, ""
        for n in range(1000):
            candidate = directory / (base if n == 0 else f"{stem} ({n}){dot}{ext}")
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as handle:
                handle.write(data if isinstance(data, bytes) else b"")
            saved.append(candidate)
            break
    return saved


# --- delivery verdicts --------------------------------------------------------------------------

def structure(msg: Message) -> list[str]:
    """The MIME tree as content types, in order: what "arrived intact" compares."""
    return [f"{depth}:{part.get_content_type()}" for depth, part in walk(msg)]


def intact(sent: Message, received: Message) -> list[str]:
    """What differs between the message sent and the one that arrived (empty: intact)."""
    problems = []
    if structure(sent) != structure(received):
        problems.append(f"MIME structure changed: {structure(sent)} → {structure(received)}")
    if header(sent, "Subject") != header(received, "Subject"):
        problems.append(f"subject decodes differently: {header(received, 'Subject')!r}")
    types = {part.get_content_type() for _, part in walk(received)}
    for wanted in ("text/plain", "text/html"):
        if wanted in {p.get_content_type() for _, p in walk(sent)} and wanted not in types:
            problems.append(f"the {wanted} part is missing")
    for _, part in walk(received):
        if part.get_content_type() in ("text/plain", "text/html") and not part_text(part).text.strip():
            problems.append(f"the {part.get_content_type()} part is empty")
    return problems


_VERDICT = re.compile(r"\b(spf|dkim|dmarc|arc)\s*=\s*([a-z]+)", re.I)


def verdicts(msg: Message) -> dict[str, str]:
    """What the receiving server said about the sender: SPF/DKIM/DMARC from
    Authentication-Results (or Received-SPF), and whether a DKIM signature is present."""
    out: dict[str, str] = {}
    for value in msg.get_all("Authentication-Results") or []:
        for name, verdict in _VERDICT.findall(decode_header(value)):
            out.setdefault(name.lower(), verdict.lower())
    spf = msg.get("Received-SPF")
    if spf and "spf" not in out:
        out["spf"] = decode_header(spf).split()[0].lower()
    if msg.get("DKIM-Signature") and "dkim" not in out:
        out["dkim"] = "signed (not checked by the receiver)"
    return out


def date_of(msg_or_value: Message | str | None) -> datetime | None:
    value = msg_or_value.get("Date") if isinstance(msg_or_value, Message) else msg_or_value
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
