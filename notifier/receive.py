"""Read mail back from a receiving account: IMAP (UIDs, IDLE, ID, the junk folder) or POP3 (UIDL).

Like notifier.transport for SMTP: TLS is verified on every path (``ca_file`` adds trust, never
removes checks), the password leaves only through ``reveal()`` into the login, the debug
dialogue (``--debug-imap``) masks LOGIN/AUTHENTICATE/PASS payloads, and `classify` is the one
place that decides what a failure means. Nothing here parses messages; notifier.inbox does.
"""

from __future__ import annotations

import base64
import imaplib
import ipaddress
import logging
import poplib
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from notifier.errors import EXIT_CONFIG, NotifierError
from notifier.secrets import MASK, redact

if TYPE_CHECKING:
    from notifier.config import Mailbox

_dialogue_log = logging.getLogger("notifier.imap")
_T = TypeVar("_T")
_C = TypeVar("_C", bound=imaplib.IMAP4 | poplib.POP3)  # the connection of a _Session
MAX_MESSAGE = 25 * 1024 * 1024  # bigger messages are refused by size, never read into memory
IDLE_RENEW = 25 * 60.0  # RFC 2177: re-issue IDLE before the server's 30-minute timeout
JUNK_NAMES = ("垃圾邮件", "junk", "spam", "junk e-mail", "junk email", "bulk mail")
CLIENT_ID = '("name" "notifier" "vendor" "notifier" "support-url" "https://example.invalid/notifier")'


class MailboxError(NotifierError):
    """A receiving account could not be read this time, and the error says why."""


class MailboxUnavailable(MailboxError):
    """Worth retrying: the connection dropped, the server did not answer in time."""


class MailboxRefused(MailboxError):
    """A person must act: the login was refused, the certificate is not trusted, the port
    speaks another protocol. Exit 78 (EX_CONFIG), like a config error."""

    exit_code = EXIT_CONFIG


def describe(box: Mailbox) -> str:
    who = f"as {box.username}" if box.username else "without login"
    return f"{box.protocol.upper()} {box.host}:{box.port} ({box.security}) {who}"


_AUTH_HINT = ("Check the username and the authorization code (163/QQ need the authorization code, "
              "not the web password, and IMAP/POP3 switched on in the web mail settings).")


def classify(exc: BaseException, box: Mailbox, *, login: bool = False) -> MailboxError:  # noqa: PLR0911 - a case per failure
    """Turn what imaplib, poplib, ssl or the socket raised into the MailboxError that says what
    to do; messages carry the server's words, never a secret."""
    where = describe(box)
    text = _text(exc)
    match exc:
        case MailboxError():
            return exc
        case imaplib.IMAP4.abort() | poplib.error_proto() if not login and _is_eof(text):
            return MailboxUnavailable(redact(f"{where} closed the connection ({text})."))
        case imaplib.IMAP4.error() | poplib.error_proto() if login:
            return MailboxRefused(redact(f"Could not log in to {where}: the server replied "
                                         f"{text!r}. {_AUTH_HINT}"))
        case imaplib.IMAP4.abort():
            return MailboxUnavailable(redact(f"{where} broke off the conversation ({text})."))
        case imaplib.IMAP4.error() if "unsafe login" in text.lower():
            return MailboxRefused(redact(f"{where} refused us as an \"Unsafe Login\" ({text}): 163 "
                                         f"wants the IMAP ID command, which it did not advertise; "
                                         f"allow third-party clients in its web settings."))
        case imaplib.IMAP4.error() | poplib.error_proto():
            return MailboxError(redact(f"{where} refused a command: {text}."))
        case ssl.SSLCertVerificationError():
            trusted = f"ca_file {box.ca_file}" if box.ca_file else "the system CAs"
            return MailboxRefused(f"The TLS certificate of {where} is not trusted "
                                  f"({exc.verify_message}; checked against {trusted}). If the "
                                  f"server uses a private CA, set ca_file to its certificate.")
        case ssl.SSLError() if not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return MailboxRefused(f"The TLS handshake with {where} failed ({exc.reason or exc}): "
                                  f"993/995 are ssl (implicit TLS), 143/110 starttls; set security: "
                                  f"to match the port.")
        case TimeoutError():
            return MailboxUnavailable(f"{where} did not answer within {box.timeout:g} seconds.")
        case OSError():
            return MailboxUnavailable(f"Could not talk to {where}: {exc.strerror or exc}.")
    return MailboxError(redact(f"{where}: unexpected {type(exc).__name__}: {text}"))


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _is_eof(text: str) -> bool:
    return "eof" in text.lower() or "closed" in text.lower()


_FAILURES = (imaplib.IMAP4.error, poplib.error_proto, OSError, EOFError)


def _guard(box: Mailbox, step: Callable[[], _T], *, login: bool = False) -> _T:
    """Run one exchange; every failure leaves as a classified MailboxError, raised outside the
    handler so no frame holding the password hangs off it."""
    try:
        return step()
    except _FAILURES as exc:
        error = classify(exc, box, login=login)
    raise error


def tls_context(box: Mailbox) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = True, ssl.CERT_REQUIRED
    if box.ca_file:
        try:
            context.load_verify_locations(cafile=box.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise MailboxRefused(f"ca_file {box.ca_file} cannot be loaded ({exc}); point it at a "
                                 f"PEM CA certificate.") from None
    return context


def _check_cleartext(box: Mailbox) -> None:
    if box.security != "none" or not box.username:
        return
    try:
        loopback = box.host == "localhost" or ipaddress.ip_address(box.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise MailboxRefused(f"Refusing to send the password for {describe(box)} unencrypted over "
                             f"the network; use security: ssl or starttls.")


# --- modified UTF-7 (RFC 3501 5.1.3): how IMAP spells folder names such as 垃圾邮件 --------------

def decode_folder(name: str) -> str:
    """`&V4NXPpCuTvY-` → 垃圾邮件; `&-` → `&`."""
    def chunk(match: re.Match[str]) -> str:
        body = match.group(1)
        if not body:
            return "&"
        data = body.replace(",", "/")
        return base64.b64decode(data + "=" * (-len(data) % 4)).decode("utf-16-be")
    return re.sub(r"&([A-Za-z0-9+,]*)-", chunk, name)


def encode_folder(name: str) -> str:
    out, pending = [], ""

    def flush() -> None:
        nonlocal pending
        if pending:
            data = base64.b64encode(pending.encode("utf-16-be")).decode("ascii").rstrip("=")
            out.append("&" + data.replace("/", ",") + "-")
            pending = ""
    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending += char
    flush()
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LIST = re.compile(r'^\((?P<flags>[^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (?P<name>.+)$')


@dataclass(frozen=True)
class Folder:
    name: str  # decoded, as people read it
    raw: str  # as the server spells it (modified UTF-7)
    flags: frozenset[str]


@dataclass(frozen=True)
class Summary:
    """One message as a listing shows it: its UID, size and raw header block."""

    uid: int
    size: int
    headers: bytes


# --- IMAP ---------------------------------------------------------------------------------------

class _Reader:
    """The socket reader imaplib reads through, replacing its buffered file so IDLE can tell
    whether a line is already waiting (in our buffer or in the TLS layer) before select()."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0 or 0 < limit <= len(self.buf):
                size = end + 1 if end >= 0 else limit
                if limit > 0:
                    size = min(size, limit)
                return self._take(size)
            if not self._fill():
                return self._take(len(self.buf))

    def read(self, size: int) -> bytes:
        while len(self.buf) < size and self._fill():
            pass
        return self._take(size)

    def _take(self, size: int) -> bytes:
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    def pending(self) -> bool:
        return bool(self.buf) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    def close(self) -> None:
        self.buf.clear()


_LOGIN_LINE = re.compile(rb"(?i)^(\S+ LOGIN \S+ ).*$")
_AUTH_LINE = re.compile(rb"(?i)^(\S+ AUTHENTICATE \S+ ).*$")


class _Dialogue:
    """Mixin: imaplib's reads and writes go through `_Reader` and are logged to
    "notifier.imap" with LOGIN and AUTHENTICATE payloads masked."""

    sock: socket.socket
    file: Any
    _challenged = False

    def _wrap(self) -> None:
        self.file = _Reader(self.sock)

    def send(self, data: Any) -> None:
        if _dialogue_log.isEnabledFor(logging.DEBUG):
            for line in data.rstrip(b"\r\n").split(b"\r\n"):
                shown = (MASK.encode() if self._challenged else
                         _AUTH_LINE.sub(rb"\g<1>" + MASK.encode(),
                                        _LOGIN_LINE.sub(rb"\g<1>" + MASK.encode(), line)))
                _dialogue_log.debug("C: %s", redact(shown.decode("utf-8", "replace")))
        self._challenged = False
        super().send(data)  # type: ignore[misc]

    def _get_line(self) -> bytes:
        line: bytes = super()._get_line()  # type: ignore[misc]
        self._challenged = line.startswith(b"+ ") and len(line) > 2 and not line.startswith(b"+ idling")
        if _dialogue_log.isEnabledFor(logging.DEBUG):
            _dialogue_log.debug("S: %s", redact(line[:300].decode("utf-8", "replace")))
        return line


class _Imap(_Dialogue, imaplib.IMAP4):
    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        super().open(host, port, timeout)
        self._wrap()

    def starttls(self, ssl_context: ssl.SSLContext | None = None) -> Any:
        result = super().starttls(ssl_context)
        self._wrap()
        return result


class _ImapSSL(_Dialogue, imaplib.IMAP4_SSL):
    def open(self, host: str = "", port: int | None = 993, timeout: float | None = None) -> None:
        super().open(host, port, timeout)
        self._wrap()


class _Session(Generic[_C]):
    """A mailbox session as a context manager: connected on enter, closed (politely) on exit.

    `connect()` is the same for both protocols — refuse a cleartext password, open the
    connection (`_open`), log in (`_login`) — with every failure classified by `_guard`."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self._conn: _C | None = None

    @property
    def conn(self) -> _C:
        if self._conn is None:
            raise MailboxUnavailable(f"{describe(self.box)}: not connected.")
        return self._conn

    def connect(self) -> None:
        box = self.box
        _check_cleartext(box)
        context = tls_context(box)
        self._conn = _guard(box, lambda: self._open(context))
        if box.username:
            password = box.password.reveal()
            _guard(box, lambda: self._login(str(box.username), password), login=True)

    def _open(self, context: ssl.SSLContext) -> _C:
        raise NotImplementedError

    def _login(self, username: str, password: str) -> object:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ImapClient(_Session[_Imap | _ImapSSL]):
    """One IMAP connection: connect() logs in and sends ID when offered (163 refuses SELECT
    before it); then folders, UID searches and fetches of new messages only, and IDLE."""

    def __init__(self, box: Mailbox) -> None:
        super().__init__(box)
        self.capabilities: frozenset[str] = frozenset()
        self.selected: str | None = None

    def _open(self, context: ssl.SSLContext) -> _Imap | _ImapSSL:
        box = self.box
        if box.security == "ssl":
            return _ImapSSL(box.host, box.port, ssl_context=context, timeout=box.timeout)
        conn = _Imap(box.host, box.port, timeout=box.timeout)
        if box.security == "starttls":
            if "STARTTLS" not in conn.capabilities:
                conn.shutdown()
                raise MailboxRefused(f"{describe(box)} does not offer STARTTLS, so the password "
                                     f"would travel unencrypted; use security: ssl.")
            conn.starttls(context)
        return conn

    def _login(self, username: str, password: str) -> object:
        return self.conn.login(username, password)

    def connect(self) -> None:
        super().connect()
        self.capabilities = frozenset(c.upper() for c in self._caps())
        if "ID" in self.capabilities:
            self._ok(self.conn.xatom("ID", CLIENT_ID))
        self.selected = None

    def _caps(self) -> list[str]:
        conn = self.conn
        typ, data = _guard(self.box, conn.capability)
        return (data[-1] or b"").decode("ascii", "replace").split() if typ == "OK" else []

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.logout()
        except (*_FAILURES, AttributeError):
            conn.shutdown()

    def _ok(self, result: tuple[str, list[Any]]) -> list[Any]:
        typ, data = result
        if typ != "OK":
            raise classify(imaplib.IMAP4.error(b" ".join(d for d in data if isinstance(d, bytes))),
                           self.box)
        return data

    def _run(self, step: Callable[[], tuple[str, list[Any]]]) -> list[Any]:
        return self._ok(_guard(self.box, step))

    def noop(self) -> None:
        """Let the server tell us what changed in the selected folder since the last command."""
        conn = self.conn
        self._run(conn.noop)

    @property
    def has_idle(self) -> bool:
        return "IDLE" in self.capabilities

    def folders(self) -> list[Folder]:
        out = []
        conn = self.conn
        for item in self._run(conn.list):
            line = b" ".join(p for p in item if isinstance(p, bytes)) if isinstance(item, tuple) else item
            match = _LIST.match((line or b"").decode("utf-8", "replace"))
            if not match:
                continue
            raw = match.group("name")
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            out.append(Folder(decode_folder(raw), raw, frozenset(match.group("flags").split())))
        return out

    def junk_folder(self) -> Folder | None:
        """SPECIAL-USE \\Junk, or a folder named like the providers' (垃圾邮件, Junk, Spam)."""
        folders = self.folders()
        for folder in folders:
            if "\\JUNK" in {f.upper() for f in folder.flags}:
                return folder
        for folder in folders:
            leaf = re.split(r"[./]", folder.name)[-1].lower()
            if leaf in JUNK_NAMES:
                return folder
        return None

    def select(self, folder: str = "INBOX", readonly: bool = False) -> tuple[int, int]:
        """Select `folder` (raw name); its (UIDVALIDITY, UIDNEXT)."""
        self._run(lambda: self.conn.select(_quote(folder), readonly))
        self.selected = folder
        validity = self._response_int("UIDVALIDITY")
        uidnext = self._response_int("UIDNEXT")
        if uidnext is None:  # older servers: ask
            uidnext = self.status(folder)[1]
        return validity or 0, uidnext

    def _response_int(self, code: str) -> int | None:
        _, data = self.conn.response(code)
        try:
            return int(data[-1]) if data and data[-1] is not None else None
        except (TypeError, ValueError):
            return None

    def status(self, folder: str) -> tuple[int, int]:
        """(UIDVALIDITY, UIDNEXT) of a folder without selecting it."""
        data = self._run(lambda: self.conn.status(_quote(folder), "(UIDVALIDITY UIDNEXT)"))
        text = (data[0] or b"").decode("ascii", "replace")
        nums = dict(re.findall(r"(UIDVALIDITY|UIDNEXT) (\d+)", text))
        return int(nums.get("UIDVALIDITY", 0)), int(nums.get("UIDNEXT", 1))

    def search(self, since_uid: int, *criteria: str) -> list[int]:
        """UIDs at or above `since_uid` in the selected folder that match `criteria`; only new
        messages are looked at ("n:*" also names the highest UID when none is new: dropped)."""
        data = self._run(lambda: self.conn.uid("SEARCH", "UID", f"{since_uid}:*", *criteria))
        uids = [int(u) for u in (data[0] or b"").split()]
        return sorted(u for u in uids if u >= since_uid)

    def size(self, uid: int) -> int | None:
        data = self._run(lambda: self.conn.uid("FETCH", str(uid), "(RFC822.SIZE)"))
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            found = re.search(rb"RFC822\.SIZE (\d+)", line or b"")
            if found:
                return int(found.group(1))
        return None

    def fetch(self, uid: int, max_bytes: int = MAX_MESSAGE) -> bytes:
        """The whole message, refused by its size (not read) when larger than `max_bytes`."""
        size = self.size(uid)
        if size is None:
            raise MailboxError(f"{describe(self.box)} has no message with UID {uid} in {self.selected}.")
        if size > max_bytes:
            raise MailboxError(f"message UID {uid} is {size / 1048576:.1f} MB, more than the "
                               f"{max_bytes / 1048576:.0f} MB notifier reads; not fetched.")
        data = self._run(lambda: self.conn.uid("FETCH", str(uid), "(BODY.PEEK[])"))
        for item in data:
            if isinstance(item, tuple):
                return bytes(item[1])
        raise MailboxError(f"{describe(self.box)} sent no body for UID {uid}.")

    def summaries(self, uids: Sequence[int]) -> Iterator[Summary]:
        """Size and the headers a listing needs, for many messages in one round trip."""
        if not uids:
            return
        wanted = "BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID CONTENT-TYPE)]"
        data = self._run(lambda: self.conn.uid("FETCH", ",".join(map(str, uids)),
                                               f"(UID RFC822.SIZE {wanted})"))
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta = item[0]
            uid, size = re.search(rb"UID (\d+)", meta), re.search(rb"RFC822\.SIZE (\d+)", meta)
            if uid:
                yield Summary(int(uid.group(1)), int(size.group(1)) if size else 0, bytes(item[1]))

    def delete(self, uids: Sequence[int]) -> bool:
        """Flag `uids` \\Deleted and expunge exactly them (UIDPLUS). Without UIDPLUS they stay
        flagged: a plain EXPUNGE would also remove what others flagged. True when expunged."""
        if not uids:
            return True
        numbers = ",".join(map(str, uids))
        self._run(lambda: self.conn.uid("STORE", numbers, "+FLAGS.SILENT", "(\\Deleted)"))
        if "UIDPLUS" not in self.capabilities:
            return False
        self._run(lambda: self.conn.uid("EXPUNGE", numbers))
        return True

    def idle(self, seconds: float) -> bool:
        """Wait in IDLE up to `seconds` for the selected folder to change; True when it did
        (EXISTS/RECENT). A dropped connection raises MailboxUnavailable."""
        return _guard(self.box, lambda: self._idle(min(seconds, IDLE_RENEW)))

    def _idle(self, seconds: float) -> bool:
        conn = self.conn
        tag: bytes = conn._new_tag()
        conn.send(tag + b" IDLE\r\n")
        changed = False
        while True:
            line = conn._get_line()
            if line.startswith(b"+"):
                break
            if line.startswith(tag):
                raise imaplib.IMAP4.error(line)
            changed |= _changes(line)
        deadline = time.monotonic() + seconds
        reader: _Reader = conn.file
        while not changed and (remaining := deadline - time.monotonic()) > 0:
            if not reader.pending() and not select.select([conn.sock], [], [], remaining)[0]:
                break
            line = conn._get_line()
            changed |= _changes(line)
        conn.send(b"DONE\r\n")
        while True:
            line = conn._get_line()
            if line.startswith(tag):
                return changed
            changed |= _changes(line)


def _changes(line: bytes) -> bool:
    return bool(re.match(rb"\* \d+ (EXISTS|RECENT)", line))


# --- POP3 ---------------------------------------------------------------------------------------

class _PopDialogue:
    def _putline(self, line: bytes) -> None:
        if _dialogue_log.isEnabledFor(logging.DEBUG):
            shown = b"PASS " + MASK.encode() if line[:5].upper() == b"PASS " else line
            _dialogue_log.debug("C: %s", redact(shown.decode("utf-8", "replace")))
        super()._putline(line)  # type: ignore[misc]  # a mixin: poplib.POP3 comes after it

    def _getline(self) -> tuple[bytes, int]:
        line, octets = super()._getline()  # type: ignore[misc]
        if _dialogue_log.isEnabledFor(logging.DEBUG) and line[:1] in (b"+", b"-"):
            _dialogue_log.debug("S: %s", redact(line[:300].decode("utf-8", "replace")))
        return line, octets


class _Pop(_PopDialogue, poplib.POP3):
    pass


class _PopSSL(_PopDialogue, poplib.POP3_SSL):
    pass


class Pop3Client(_Session[poplib.POP3]):
    """One POP3 session. POP3 shows the mailbox as it was at login, so a poller opens a new
    session each round; messages are told apart by UIDL."""

    def _open(self, context: ssl.SSLContext) -> poplib.POP3:
        box = self.box
        if box.security == "ssl":
            return _PopSSL(box.host, box.port, timeout=box.timeout, context=context)
        conn = _Pop(box.host, box.port, timeout=box.timeout)
        if box.security == "starttls":
            conn.stls(context)
        return conn

    def _login(self, username: str, password: str) -> object:
        self.conn.user(username)
        return self.conn.pass_(password)

    def close(self) -> None:
        """QUIT, which is when a POP3 server really deletes what DELE marked."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except _FAILURES:
            conn.close()

    def uidl(self) -> dict[str, int]:
        """{unique id: message number} for the maildrop as of login."""
        conn = self.conn
        _, lines, _ = _guard(self.box, conn.uidl)
        out = {}
        for line in lines:
            number, _, uid = line.decode("ascii", "replace").partition(" ")
            out[uid.strip()] = int(number)
        return out

    def size(self, number: int) -> int:
        reply = _guard(self.box, lambda: self.conn.list(number))
        assert isinstance(reply, bytes)
        return int(reply.split()[2])

    def headers(self, number: int) -> bytes:
        _, lines, _ = _guard(self.box, lambda: self.conn.top(number, 0))
        return b"\r\n".join(lines) + b"\r\n"

    def fetch(self, number: int, max_bytes: int = MAX_MESSAGE) -> bytes:
        size = self.size(number)
        if size > max_bytes:
            raise MailboxError(f"message {number} is {size / 1048576:.1f} MB, more than the "
                               f"{max_bytes / 1048576:.0f} MB notifier reads; not fetched.")
        _, lines, _ = _guard(self.box, lambda: self.conn.retr(number))
        return b"\r\n".join(lines) + b"\r\n"

    def delete(self, number: int) -> None:
        _guard(self.box, lambda: self.conn.dele(number))


def open_client(box: Mailbox) -> ImapClient | Pop3Client:
    return ImapClient(box) if box.protocol == "imap" else Pop3Client(box)
