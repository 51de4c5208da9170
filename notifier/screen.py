"""The rules a relayed message must pass (`relay.screen:`), applied before it is accepted.

Each rule has a name; a refusal carries it, so the client's SMTP error, the statistics and the
quarantine all say which rule it was. The envelope rules (recipients) and the content rules
(size, attachments, patterns) are pure functions of the message; the rate limit needs the
counts of what the client sent, which the store decides in the transaction that would accept
the message (notifier.relaylog), so two clients at once cannot both slip under it.
"""

from __future__ import annotations

import email.policy
import io
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser

from notifier.config import Screen

MACRO_TYPES = frozenset({"docm", "xlsm", "pptm", "dotm"})
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # old Office documents (and .msi)
_ZIP = b"PK\x03\x04"


@dataclass(frozen=True)
class Refusal:
    """Why a message is refused: the rule's name and a sentence for the client."""

    rule: str
    reason: str
    temporary: bool = False  # a rate limit: the same message is welcome later

    def reply(self) -> str:
        """The SMTP reply, with the rule's name so the client knows which: permanent (do not
        retry), or for a rate limit temporary (retry later)."""
        if self.temporary:
            return f"451 4.7.1 Deferred by screening rule {self.rule}: {self.reason}"
        return f"550 5.7.1 Refused by screening rule {self.rule}: {self.reason}"


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _cn_id(text: str) -> bool:
    """The check character of an 18-character resident identity card number (GB 11643)."""
    total = sum(int(c) * w for c, w in zip(text[:17], _ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11] == text[17].upper()


# name: (pattern, check of a match): a number must also pass its checksum, so order numbers and
# timestamps of the same length are not taken for card numbers.
PRESETS: dict[str, tuple[re.Pattern[str], Callable[[str], bool]]] = {
    "credit_card": (re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
                    lambda m: _luhn(re.sub(r"\D", "", m))),
    "cn_id_card": (re.compile(r"(?<!\d)\d{17}[\dXx](?![\dXx])"), _cn_id),
    "private_key": (re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"), lambda m: True),
}


def check_envelope(screen: Screen, recipients: Sequence[str]) -> Refusal | None:
    """The recipient rules: how many, and whether each is allowed."""
    if len(recipients) > screen.max_recipients:
        return Refusal("max_recipients", f"{len(recipients)} recipients, at most "
                       f"{screen.max_recipients} are allowed; split the message.")
    allowed = {a.lower() for a in screen.allowed_recipients}
    for address in recipients if allowed else ():
        domain = address.rpartition("@")[2].lower()
        if address.lower() not in allowed and domain not in allowed:
            return Refusal("allowed_recipients", f"{address} is not an allowed recipient; ask the "
                           f"administrator to add it or its domain to relay.screen.")
    return None


def check_content(screen: Screen, data: bytes) -> Refusal | None:
    """The content rules, cheapest first: size, attachments, subject, text."""
    if screen.max_size is not None and len(data) > screen.max_size:
        return Refusal("max_size", f"the message has {len(data):,} bytes, at most "
                       f"{screen.max_size:,} are allowed.")
    if not (screen.subject_patterns or screen.body_patterns or screen.presets) and _plain_text(data):
        return None  # nothing to read and nothing attached: no need to parse it
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    return _attachments(screen, message) or _patterns(screen, message)


def _patterns(screen: Screen, message: EmailMessage) -> Refusal | None:
    """The subject and text rules, and the presets on both."""
    subject = " ".join(str(message.get("Subject", "")).split())
    if any(p.search(subject) for p in screen.subject_patterns):
        return Refusal("subject_patterns", "the subject matches a pattern the administrator "
                       "does not allow.")
    text = "\n".join(_texts(message))
    if any(p.search(text) for p in screen.body_patterns):
        return Refusal("body_patterns", "the text matches a pattern the administrator does not allow.")
    for name in screen.presets:
        pattern, valid = PRESETS[name]
        if any(valid(m.group()) for m in pattern.finditer(f"{subject}\n{text}")):
            return Refusal(name, f"the message appears to contain a {name.replace('_', ' ')}; "
                           "send it another way.")
    return None


_CONTENT_TYPE = re.compile(rb"^content-type:[ \t]*([\w.+-]+/[\w.+-]+)", re.MULTILINE)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")  # a header line continued on the next
# Anything in a header that may hide a file: a name, a disposition, or an encoded body (a text
# part in base64 can carry a program just as well as an attachment can).
_FILE_MARKERS = (b"name=", b"name*", b"content-disposition", b"base64")


def _plain_text(data: bytes) -> bool:
    """Whether the message is one text part with no file name and a body as it is, judged from
    its header alone (unfolded: a folded Content-Type is as much a multipart as a one-line one):
    then it carries no attachment and no content to sniff."""
    head = _FOLD.sub(b"", data.split(b"\r\n\r\n", 1)[0].lower())
    kind = _CONTENT_TYPE.search(head)
    return ((kind is None or kind.group(1).startswith(b"text/"))
            and not any(marker in head for marker in _FILE_MARKERS))


def _parts(message: EmailMessage) -> Iterator[EmailMessage]:
    for part in message.walk():
        if not part.is_multipart():
            yield part


def _texts(message: EmailMessage) -> Iterator[str]:
    """The text of every part that is text and no attachment, decoded as well as it can be."""
    for part in _parts(message):
        if part.get_content_maintype() != "text" or part.get_filename():
            continue
        try:
            yield str(part.get_content())
        except (LookupError, UnicodeError, ValueError, AssertionError):  # an unknown charset
            payload = part.get_payload(decode=True)
            yield payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def _attachments(screen: Screen, message: EmailMessage) -> Refusal | None:
    """A part whose name or content is of a blocked type; zip archives are looked into."""
    blocked = set(screen.blocked_attachments)
    for part in _parts(message) if blocked else ():
        name = part.get_filename() or ""
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        kind = _extension(name) if _extension(name) in blocked else _sniff(content, blocked)
        if kind:
            shown = f"{name!r}" if name else "an unnamed part"
            return Refusal("blocked_attachments", f"the attachment {shown} is of a blocked type "
                           f"({kind}); send a link or a different format.")
    return None


def _extension(name: str) -> str:
    """The extension Windows goes by: it drops trailing dots and spaces, so "a.exe." runs too."""
    name = name.rstrip(". ")
    return name.rpartition(".")[2].lower() if "." in name else ""


def _sniff(content: bytes, blocked: set[str]) -> str:
    """What the bytes are, whatever the name says: a Windows program, an Office document with
    macros, or an archive with a blocked file in it; "" when none of those that are blocked."""
    if content.startswith(b"MZ") and "exe" in blocked:
        return "exe"
    macros = blocked & MACRO_TYPES
    if content.startswith(_OLE) and macros and (b"_VBA_PROJECT" in content or b"V\x00B\x00A" in content):
        return "macro document"
    if content.startswith(_ZIP):
        try:
            names = zipfile.ZipFile(io.BytesIO(content)).namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return ""
        if macros and any(n.endswith("vbaProject.bin") for n in names):
            return "macro document"
        inner = next((_extension(n) for n in names if _extension(n) in blocked), "")
        return f"{inner} in an archive" if inner else ""
    return ""
