"""Build alert e-mails: headers, MIME structure and the one policy they are serialized with.

Messages are built once and queued as bytes, so every retry resends the same Message-ID.
Header values are sanitized here because page titles are untrusted and Python before 3.11.10
lets CR/LF in a header inject headers; bodies are 7-bit (quoted-printable or base64) with lines
of at most 76 characters (RFC 2045), and encoded words in headers stay within 75 (RFC 2047).
How a message travels is notifier.transport's business; nothing here opens a connection.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses, make_msgid, parseaddr

from notifier.attachments import Attachment

# One policy for building and serializing: CRLF, and cte_type="7bit" so the content manager
# picks 7bit/quoted-printable/base64 and never emits raw 8bit bodies. max_line_length is 76, not
# SMTP's 78: the content manager uses it as the quoted-printable and base64 line length, which
# RFC 2045 caps at 76, and the header folder fits each encoded word into a line of that length
# with at least one character before it, so encoded words stay within RFC 2047's 75.
MAX_LINE = 76
POLICY = SMTP.clone(max_line_length=MAX_LINE, cte_type="7bit")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")
def sanitize_header(value: str, limit: int = 200) -> str:
    """Make untrusted text safe for one header line: control characters and line separators
    become spaces (CR/LF can never start a header, whatever the Python version), whitespace
    collapses, ``=?`` is split so a title cannot forge an encoded word, and length is capped."""
    value = " ".join(_CONTROL.sub(" ", value).split()).replace("=?", "= ?")
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


def new_message_id(sender: str) -> str:
    """A fresh Message-ID in the sender's domain; generated once per alert and stored with it,
    so retries resend the same id and clients deduplicate. The domain comes from the sender
    rather than the host name, which would be slow to look up and leak the machine's name."""
    _, at, domain = parseaddr(sender)[1].rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = ""
    return make_msgid(domain=domain if at and _DOMAIN.match(domain) else "notifier.invalid")


MAX_ENCODED_WORD = 75  # RFC 2047
_EW_CHROME = len("=?utf-8?b??=")
_PLAIN_WORD = 60  # longer ASCII words are encoded, so that every header line can be folded


def encoded_words(text: str, first: int = MAX_ENCODED_WORD) -> list[str]:
    """`text` as base64 encoded words (RFC 2047) of at most 75 characters, the first at most
    `first`, cut between characters (never inside one's UTF-8 bytes).

    Spaces stay inside the words. Whitespace *between* two encoded words is folding, which
    every decoder drops; Python's own folder (3.11) moves a space there when a word ends at
    one, and "招聘公告 😀" arrives as "招聘公告😀". So headers that need encoding are encoded
    here, and Python only folds plain ASCII.
    """
    words, chunk, size, room = [], "", 0, first
    for char in text:
        width = len(char.encode("utf-8", "surrogatepass"))
        if chunk and _EW_CHROME + 4 * -(-(size + width) // 3) > room:
            words.append(_b_word(chunk))
            chunk, size, room = "", 0, MAX_ENCODED_WORD
        chunk, size = chunk + char, size + width
    if chunk:
        words.append(_b_word(chunk))
    return words


def _b_word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode('ascii')}?="


def _folds_plainly(text: str) -> bool:
    """ASCII made of words short enough to fold at spaces, so Python needs no encoded word."""
    return text.isascii() and all(len(word) <= _PLAIN_WORD for word in text.split())


def _set_unstructured(msg: EmailMessage, name: str, value: str) -> None:
    if _folds_plainly(value):
        msg[name] = value
    else:  # pre-folded lines of at most 76 characters: the policy writes them as they are
        msg.set_raw(name, "\r\n ".join(encoded_words(value, MAX_LINE - len(name) - 2)))


def _set_addresses(msg: EmailMessage, name: str, addresses: list[Address]) -> None:
    """One address per line; display names that need encoding are encoded by
    `encoded_words` for the reason given there, the rest is left to Python."""
    if all(_folds_plainly(str(a)) for a in addresses) or not all(a.addr_spec.isascii()
                                                                for a in addresses):
        msg[name] = addresses
        return
    lines: list[str] = []
    room = MAX_LINE - len(name) - 2
    for n, address in enumerate(addresses):
        comma = "," if n < len(addresses) - 1 else ""
        if _folds_plainly(str(address)) or not address.display_name:
            lines.append(f"{address}{comma}")
        else:
            words = encoded_words(address.display_name, room)
            tail = f"<{address.addr_spec}>{comma}"
            last_room = room if len(words) == 1 else MAX_LINE - 1
            if len(words[-1]) + 1 + len(tail) <= last_room:
                words[-1] += f" {tail}"
            else:
                words.append(tail)
            lines += words
        room = MAX_LINE - 1  # continuation lines start with one space
    msg.set_raw(name, "\r\n ".join(lines))


def _addresses(values: Sequence[str]) -> list[Address]:
    """Parse "Name <addr>" strings into Address objects, so display names (Chinese ones
    included) are quoted and RFC 2047-encoded instead of pasted in raw."""
    out = []
    for value in values:
        parsed = getaddresses([sanitize_header(value, 320)])
        if len(parsed) != 1 or "@" not in parsed[0][1]:
            raise ValueError(f"{value!r} is not one mail address; write it like Name <me@a.com>")
        out.append(Address(display_name=parsed[0][0], addr_spec=parsed[0][1]))
    return out


def build_message(*, subject: str, text: str, html: str | None, sender: str, to: Sequence[str],
                  cc: Sequence[str] = (), message_id: str | None = None,
                  date: datetime | None = None,
                  attachments: Sequence[Attachment | tuple[str, str, bytes]] = ()) -> EmailMessage:
    """Build the alert: text/plain first and text/html last (clients show the last part they
    understand), wrapped in multipart/mixed when there are attachments (`Attachment`, or
    ``(filename, content_type, data)``). Attachments with a `content_id` are the HTML part's
    inline images: they go with it into multipart/related, and every ``cid:`` the HTML names
    must be one of them (ValueError otherwise: a mail never shows a broken image). Bcc is
    deliberately not a parameter: it lives only in the envelope."""
    files = [a if isinstance(a, Attachment) else Attachment(*a) for a in attachments]
    inline = [a for a in files if a.content_id]
    _check_cids(html, inline)
    msg = EmailMessage(policy=POLICY)
    _set_addresses(msg, "From", _addresses([sender]))
    if to:
        _set_addresses(msg, "To", _addresses(to))
    else:
        msg["To"] = "undisclosed-recipients:;"
    if cc:
        _set_addresses(msg, "Cc", _addresses(cc))
    _set_unstructured(msg, "Subject", sanitize_header(subject))
    when = date or datetime.now(UTC)
    msg["Date"] = format_datetime(when if when.tzinfo else when.astimezone())
    msg["Message-ID"] = sanitize_header(message_id or new_message_id(sender), 250)
    msg["MIME-Version"] = "1.0"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: vacation responders stay quiet
    msg["X-Auto-Response-Suppress"] = "All"  # the same, for Exchange/Outlook
    msg.set_content(text, subtype="plain", charset="utf-8")
    if html is not None:
        msg.add_alternative(html, subtype="html", charset="utf-8")
        html_part = msg.get_body(("html",))  # the only HTML part: set just above
        # The first add_related turns the HTML part into multipart/related, holding the images.
        for item in inline:
            assert html_part is not None
            maintype, subtype = _mime_type(item.content_type)
            html_part.add_related(item.data, maintype=maintype, subtype=subtype,
                                  cid=f"<{item.content_id}>", disposition="inline",
                                  filename=sanitize_header(item.filename))
    for item in files:
        if item.content_id:
            continue
        maintype, subtype = _mime_type(item.content_type)
        # Text attachments come from the pipeline, which encodes them as UTF-8.
        params = {"charset": "utf-8"} if maintype == "text" else None
        msg.add_attachment(item.data, maintype=maintype, subtype=subtype, params=params,
                           filename=sanitize_header(item.filename))
    for part in list(msg.walk())[1:]:  # add_alternative stamps MIME-Version on parts too
        del part["MIME-Version"]
    return msg


_CID = re.compile(r"""cid:([^\s"'<>)]+)""", re.I)


def _check_cids(html: str | None, inline: Sequence[Attachment]) -> None:
    """Every ``cid:`` of the HTML names an inline part, and inline parts need an HTML part."""
    if inline and html is None:
        raise ValueError("inline images need an HTML part to show them")
    known = {a.content_id for a in inline}
    dangling = sorted(set(_CID.findall(html or "")) - known)
    if dangling:
        raise ValueError(f"the HTML refers to cid:{dangling[0]}, which no inline part has")


def _mime_type(content_type: str) -> tuple[str, str]:
    maintype, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    return (maintype, subtype) if maintype and subtype else ("application", "octet-stream")


def message_bytes(msg: EmailMessage) -> bytes:
    """Serialize with the module policy: CRLF line ends, ready for SMTP DATA as is."""
    return msg.as_bytes(policy=POLICY)
