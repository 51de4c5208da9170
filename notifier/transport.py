"""Deliver built messages: an SMTP account (ssl, starttls or none) or the local Maildir.

`classify` maps every SMTP failure, in one place, onto the DeliveryError the outbox acts on.
TLS is verified on every path. The password leaves only through `reveal()` into `login()`;
errors and the debug dialogue are redacted. Nothing here imports the store, outbox, daemon or
CLI; messages arrive as bytes built by notifier.message.
"""

from __future__ import annotations

import ipaddress
import logging
import mailbox
import os
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, Self, TypeVar

from notifier.errors import (
    DeliveryError,
    HeldDeliveryError,
    PermanentDeliveryError,
    RateLimitedError,
    TransientDeliveryError,
)
from notifier.message import sanitize_header
from notifier.secrets import MASK, redact

if TYPE_CHECKING:  # only for hints: any object shaped like an account will do
    from notifier.config import SmtpAccount

_dialogue_log = logging.getLogger("notifier.smtp")
_T = TypeVar("_T")

class Transport(Protocol):
    """What the outbox needs from a way of delivering mail. Transports subclass it to inherit
    the context-manager methods: open on enter, close on exit."""

    last_reply: str  # the receiving side's answer to the last message sent, for logs and users

    def open(self) -> None: ...

    def send(self, sender: str, recipients: Sequence[str], data: bytes) -> dict[str, str]:
        """Deliver `data`; return the refused recipients as {addr: "code text"} when the
        message was accepted for the others. Raises DeliveryError when nobody got it."""
        ...

    def close(self) -> None: ...

    def describe(self) -> str: ...

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- SMTP -------------------------------------------------------------------------------------

_AUTH_ARGUMENT = re.compile(r"(?i)(\bAUTH\s+[\w-]+\s+)\S+")
_CHALLENGE = re.compile(r"^reply: (b'|retcode \()334")
_RATE = re.compile(r"(?i)\b(rate|quota|too many|frequen\w*|exceed\w*|limit\w*)\b")
_NOT_RATE = re.compile(r"(?i)DT:SPM|\bsize\b")  # 163's spam verdict; message too big
_SENDER = re.compile(r"(?i)sender|\bfrom\b|not owned|authori[sz]ed user|mismatch")
_FAILURES = (smtplib.SMTPException, OSError, UnicodeError)  # OSError covers ssl and sockets
_AUTH_HINT = ("Check the username and the authorization code (163/QQ need the authorization "
              "code, not the web password).")
PORT_HINT = "465 is ssl (implicit TLS), 587 is starttls; set security: to match the port."
PROBE_TIMEOUT = 5.0  # seconds at most to find out whether a silent port expects implicit TLS


class _Dialogue(smtplib.SMTP):
    """smtplib.SMTP whose debug dialogue goes to the "notifier.smtp" logger instead of stderr.
    redact() catches the literal password, but AUTH sends it base64-encoded, so AUTH arguments
    and every line answering a 334 challenge are masked too."""

    _challenged = False
    _host: str  # smtplib's TLS server name, which it sets only when __init__ connects
    last_reply = ""

    def getreply(self) -> tuple[int, bytes]:
        """smtplib's reply reader, remembering the reply: after sendmail() the last one is the
        server's verdict on the message ("250 2.0.0 Ok: queued as 4Zx"), which sendmail drops."""
        code, text = super().getreply()
        self.last_reply = _reply_text(code, text)
        return code, text

    def _print_debug(self, *args: object) -> None:
        line = " ".join(str(arg) for arg in args)
        if line.startswith("send:"):
            line = f"send: {MASK}" if self._challenged else _AUTH_ARGUMENT.sub(rf"\g<1>{MASK}", line)
            self._challenged = False
        elif _CHALLENGE.match(line):
            self._challenged = True
        _dialogue_log.debug("%s", redact(line))


class _DialogueSSL(_Dialogue, smtplib.SMTP_SSL):
    """Implicit TLS (port 465) with the same logging."""


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_account(account: SmtpAccount) -> str:
    """Where mail goes, for messages and logs; never the password."""
    who = f"as {account.username}" if account.username else "without login"
    return f"{account.host}:{account.port} ({account.security}) {who}"


class SmtpTransport(Transport):
    """Send through one SMTP account; one connection serves many messages until close().
    TLS is always verified (hostname and chain). security "none" may log in only to a loopback
    relay: a password in clear over a network is refused (held), never sent silently."""

    def __init__(self, account: SmtpAccount, debug: bool = False) -> None:
        self.account = account
        self.debug = debug
        self._smtp: _Dialogue | None = None
        self.last_reply = ""

    def describe(self) -> str:
        return describe_account(self.account)

    def open(self) -> None:
        if self._smtp is None:
            self._smtp = self._guard(self._connect)

    def send(self, sender: str, recipients: Sequence[str], data: bytes) -> dict[str, str]:
        self.open()
        smtp = self._smtp
        assert smtp is not None
        refused = self._guard(lambda: smtp.sendmail(sender, list(recipients), data))
        self.last_reply = smtp.last_reply
        return {addr: _reply_text(code, text) for addr, (code, text) in refused.items()}

    def close(self) -> None:
        """QUIT politely. Errors from QUIT are ignored: the message was already accepted, and
        QQ answers QUIT with garbage or just drops the connection."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except _FAILURES as exc:
            _dialogue_log.debug("ignored %s on QUIT to %s", type(exc).__name__, self.describe())
        finally:
            smtp.close()

    def _guard(self, step: Callable[[], _T]) -> _T:
        """Run one step of the dialogue; on failure drop the connection (without QUIT, which
        could wait out another timeout) and raise the classified DeliveryError. It is raised
        outside the handler so it has no __context__: smtplib's frames hold the password."""
        try:
            return step()
        except _FAILURES as exc:
            smtp, self._smtp = self._smtp, None
            if smtp is not None:
                smtp.close()
            error = classify(exc, self.account)
        raise error

    def _tls_context(self) -> ssl.SSLContext:
        """System CAs plus `ca_file` if given: it adds trust, it never turns checks off."""
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = True, ssl.CERT_REQUIRED
        try:
            if self.account.ca_file:
                context.load_verify_locations(cafile=self.account.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise _error(HeldDeliveryError, f"ca_file {self.account.ca_file} cannot be loaded "
                         f"({exc}); point it at a PEM CA certificate.") from None
        return context

    def _connect(self) -> _Dialogue:
        acct = self.account
        if acct.username and acct.security == "none" and not _is_loopback(acct.host):
            raise _error(HeldDeliveryError, f"Refusing to send the password for {self.describe()} "
                         "unencrypted over the network. Use security: ssl or starttls; plain "
                         "connections may log in only to a relay on this machine.")
        context = self._tls_context()
        smtp = (_DialogueSSL(timeout=acct.timeout, context=context) if acct.security == "ssl"
                else _Dialogue(timeout=acct.timeout))
        smtp.set_debuglevel(1 if self.debug else 0)
        smtp._host = acct.host  # we connect after __init__, once the debug level is set
        try:
            code, reply = self._greeting(smtp, context)
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            smtp.ehlo()
            if acct.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise _error(HeldDeliveryError, f"{self.describe()} does not offer STARTTLS, "
                                 "so the password and the mail would travel unencrypted; refusing "
                                 "to continue. Check host and port, or use security: ssl.")
                smtp.starttls(context=context)
                smtp.ehlo()
            if acct.username:
                smtp.login(acct.username, acct.password.reveal())
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _greeting(self, smtp: smtplib.SMTP, context: ssl.SSLContext) -> tuple[int, bytes]:
        """Connect and read the server's 220. A plain client at an implicit-TLS port (465) waits
        for a greeting that never comes, because that server waits for a TLS handshake first;
        so when the greeting times out, try one handshake to tell that apart from a server that
        is merely silent, and say which setting is wrong instead of "no answer"."""
        acct = self.account
        try:
            return smtp.connect(acct.host, acct.port)
        except OSError as exc:
            if acct.security == "ssl" or not _timed_out(exc) or not _speaks_tls(
                    acct.host, acct.port, min(acct.timeout, PROBE_TIMEOUT), context):
                raise
        raise _error(HeldDeliveryError, f"{self.describe()} did not greet us in plain text but "
                     f"answers a TLS handshake: port {acct.port} expects implicit TLS. {PORT_HINT}")


def _timed_out(exc: BaseException) -> bool:
    """smtplib wraps a read timeout in SMTPServerDisconnected; look through it."""
    return isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)


def _speaks_tls(host: str, port: int, timeout: float, context: ssl.SSLContext) -> bool:
    """Whether `port` answers a TLS handshake (with any certificate: an untrusted one is still
    TLS). Nothing but the handshake is sent, and the connection is closed right after."""
    try:
        with socket.create_connection((host, port), timeout) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return True
    except ssl.SSLCertVerificationError:
        return True
    except OSError:  # not TLS (ssl.SSLError), or silent here too
        return False


def _error(cls: type[DeliveryError], message: str, refused: dict[str, str] | None = None,
           reply: str | None = None) -> DeliveryError:
    return cls(redact(message), {addr: redact(r) for addr, r in (refused or {}).items()},
               reply=redact(reply) if reply else None)


def _reply_text(code: int, text: bytes | str) -> str:
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return " ".join(f"{code} {text}".split())


def _rate_limited(reply: str) -> bool:
    """Whether a reply (4xx or 5xx) says we send too much, rather than what is wrong with us."""
    return bool(_RATE.search(reply)) and not _NOT_RATE.search(reply)


def _reply_error(code: int, reply: str, where: str) -> DeliveryError:
    """Map a server reply onto what to do: rate texts slowly (4xx or 5xx), other 4xx later,
    other 5xx never."""
    if code == 530:
        return _error(HeldDeliveryError, f"{where} wants a login or TLS first: it replied "
                      f"{reply}. Set username and password, and use security ssl or starttls.",
                      reply=reply)
    if _rate_limited(reply):
        return _error(RateLimitedError, f"{where} says we send too much: it replied {reply}.",
                      reply=reply)
    if not 500 <= code < 600:  # 4xx, and -1 for an unparsable reply
        return _error(TransientDeliveryError, f"{where} cannot take the message now: it "
                      f"replied {reply}.", reply=reply)
    return _error(PermanentDeliveryError, f"{where} refused the message: it replied {reply}. "
                  "Retrying will not help.", reply=reply)


def refusal_error(refused: dict[str, str], message: str) -> DeliveryError:
    """The error for recipients refused with these "code text" replies: slow retry when any
    reply is a rate limit, later when any is temporary (4xx), otherwise a dead letter."""
    replies = refused.values()
    cls: type[DeliveryError] = (
        RateLimitedError if any(_rate_limited(r) for r in replies)
        else PermanentDeliveryError if all(r.startswith("5") for r in replies)
        else TransientDeliveryError)
    return _error(cls, message, refused, reply=next(iter(replies), None))


def _os_reason(exc: OSError, account: SmtpAccount) -> str:
    """Why the connection failed, in words; smtplib wraps read timeouts in SMTPServerDisconnected."""
    if _timed_out(exc):
        return f"no answer within {account.timeout:g} seconds"
    if isinstance(exc, smtplib.SMTPServerDisconnected | ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "the server closed the connection"
    return exc.strerror or str(exc) or type(exc).__name__


def classify(exc: BaseException, account: SmtpAccount) -> DeliveryError:
    """Turn what smtplib, ssl or the socket raised into the DeliveryError that tells the outbox
    what to do. One function decides, by exception type and reply code, so retry policy is
    not spread over string matches; messages keep the server's code and text, never secrets."""
    where = describe_account(account)
    cls: type[DeliveryError] = HeldDeliveryError
    reply = (_reply_text(exc.smtp_code, exc.smtp_error)
             if isinstance(exc, smtplib.SMTPResponseException) else None)
    match exc:
        case smtplib.SMTPRecipientsRefused():
            refused = {addr: _reply_text(code, text) for addr, (code, text) in exc.recipients.items()}
            listed = "; ".join(f"{addr}: {reply}" for addr, reply in refused.items())
            return refusal_error(refused, f"{where} refused every recipient ({listed}).")
        case smtplib.SMTPAuthenticationError(smtp_code=code) if code >= 500:
            message = (f"Could not log in to {where}: the server replied "
                       f"{_reply_text(code, exc.smtp_error)}. {_AUTH_HINT}")
        case smtplib.SMTPSenderRefused(smtp_code=501 | 550 | 553 as code) if (
                _SENDER.search(reply := _reply_text(code, exc.smtp_error))
                and not _rate_limited(reply)):
            message = (f"{where} refused the sender {exc.sender}: it replied {reply}. "
                       f"The From address must equal the login ({account.username}).")
        case smtplib.SMTPResponseException():
            return _reply_error(exc.smtp_code, _reply_text(exc.smtp_code, exc.smtp_error), where)
        case smtplib.SMTPException() if not isinstance(exc, smtplib.SMTPServerDisconnected):
            message = f"{where} cannot be used as configured: {exc} Check host, port and security."
        case ssl.SSLCertVerificationError():
            trusted = f"ca_file {account.ca_file}" if account.ca_file else "the system CAs"
            message = (f"The TLS certificate of {where} is not trusted ({exc.verify_message}; "
                       f"checked against {trusted}). If the server uses a private CA, set "
                       "ca_file to its certificate.")
        case ssl.SSLError() if account.security == "ssl" and not isinstance(
                exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            # An implicit-TLS client at a plain or STARTTLS port reads the server's "220 ..."
            # greeting as a TLS record: OpenSSL calls that a wrong version number.
            message = (f"{where} did not answer the TLS handshake with TLS ({exc.reason or exc}): "
                       f"port {account.port} does not speak implicit TLS. {PORT_HINT}")
        case ssl.SSLError() if not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            message = (f"The TLS handshake with {where} failed after STARTTLS "
                       f"({exc.reason or exc}). {PORT_HINT}")
        case OSError():
            cls = TransientDeliveryError
            message = f"Could not talk to {where}: {_os_reason(exc, account)}."
        case _:
            message = (f"The username, password or an address for {where} has characters SMTP "
                       f"cannot carry ({type(exc).__name__}); use plain ASCII.")
    return _error(cls, message, reply=reply)


# --- Maildir ----------------------------------------------------------------------------------

class _PrivateMaildir(mailbox.Maildir):
    """A Maildir whose messages are readable by their owner only, whatever the umask: alerts
    quote watched pages and command output, which may be private."""

    def _create_tmp(self) -> BinaryIO:
        handle: BinaryIO = super()._create_tmp()  # type: ignore[misc]  # private in typeshed
        os.fchmod(handle.fileno(), 0o600)
        return handle


class MaildirTransport(Transport):
    """Deliver into a local Maildir: the default when no SMTP account is configured, so alerts
    are never lost and any mail client (mutt -f DIR) can read them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._box: mailbox.Maildir | None = None
        self.last_reply = ""

    def describe(self) -> str:
        return f"the Maildir {self.path}"

    def open(self) -> None:
        if self._box is None:
            self._box = self._guard(self._create)

    def _create(self) -> mailbox.Maildir:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # Maildir makes only the last level
        return _PrivateMaildir(self.path, create=True)

    def send(self, sender: str, recipients: Sequence[str], data: bytes) -> dict[str, str]:
        self.open()
        box = self._box
        assert box is not None
        # What a local delivery agent adds; mailbox writes os.linesep, so feed it bare LF.
        envelope = [f"Return-Path: <{sanitize_header(sender, 320)}>"]
        envelope += [f"Delivered-To: {sanitize_header(r, 320)}" for r in recipients]
        text = "\n".join(envelope).encode() + b"\n" + data.replace(b"\r\n", b"\n")
        key = self._guard(lambda: box.add(text))
        self.last_reply = f"delivered as {self.path / 'new' / key}"
        return {}

    def close(self) -> None:
        box, self._box = self._box, None
        if box is not None:
            box.close()

    def _guard(self, step: Callable[[], _T]) -> _T:
        try:
            return step()
        except OSError as exc:
            cls = HeldDeliveryError if isinstance(exc, PermissionError) else TransientDeliveryError
            error = _error(cls, f"Could not write to {self.describe()}: {exc.strerror or exc}.")
        raise error
