"""Real SMTP servers on 127.0.0.1 for tests, with faults a test can switch on.

Nothing mocks smtplib: aiosmtpd runs in its own thread and the client meets real TLS (a trustme
CA the clients trust through ``ca_file``, verification on), real AUTH and real reply codes.
Three modes, named like ``SmtpAccount.security``: "ssl" (implicit TLS), "starttls" and "none".
`SilentServer` accepts connections and never speaks, for timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from notifier.config import SmtpAccount
from notifier.secrets import Secret

HOST = "127.0.0.1"
USERNAME = "robot@example.com"
PASSWORD = "Auth-Code-7f3a9q"
DROP = "<close the connection without replying>"
# Longer than smtplib's _MAXLINE (8192): smtplib raises instead of parsing it as a reply.
GARBAGE = "\x7f garbage " * 1000
FAULTABLE = frozenset({"AUTH", "MAIL", "DATA", "QUIT"})


@dataclass(frozen=True)
class Received:
    """One accepted message: the envelope and the DATA bytes exactly as received."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes


class _Controller(Controller):
    """aiosmtpd's Controller, listening on a port the OS picks (port=0).

    Controller.start() opens a trigger connection to ``self.port``, which would still be 0;
    by then the server is bound, so read the real port from its socket first.
    """

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated


class _Handler:
    """aiosmtpd hooks; returning MISSING means "do the default", anything else is the reply."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner
        self.auth_faults: weakref.WeakKeyDictionary[Session, Any] = weakref.WeakKeyDictionary()

    async def handle_AUTH(self, server: SMTP, session: Session, envelope: Envelope,
                          args: list[str]) -> Any:
        # A refused login stays refused for the whole connection, or smtplib's fallback to
        # its next mechanism would get in: so an AUTH fault's `times` counts logins.
        if session not in self.auth_faults:
            self.auth_faults[session] = await self.owner._fault("AUTH", server)
        return self.auth_faults[session]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> Any:
        if self.owner.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if self.owner.from_must_match and address.lower() != self.owner.username.lower():
            return "553 Mail from must equal authorized user"  # 163's words
        return await self.owner._fault("MAIL", server)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> Any:
        return self.owner.refused.get(address, MISSING)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        fault = await self.owner._fault("DATA", server)
        if fault is MISSING and self.owner.from_must_match and not self.owner._from_is_login(
                bytes(envelope.original_content or b"")):
            return "554 5.7.1 From header must equal authorized user"
        if fault is MISSING:
            content = bytes(envelope.original_content or b"")
            hold = self.owner._take_hold(content)
            if hold is not None and not hold.stored:
                await hold.wait(content)  # cancelled when the client goes away: nothing stored
            self.owner._store(Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), content))
            if self.owner.after_store is not None:  # a test's crash between storing and the 250
                self.owner.after_store()
            if hold is not None and hold.stored:
                await hold.wait(content)
            return "250 2.0.0 Ok: queued"
        return fault

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        return await self.owner._fault("QUIT", server)


class Hold:
    """The next message whose DATA contains `match`, held before the provider stores it or,
    with `stored`, right after, before its 250: the client waits for the reply as it would on
    a slow server, and the test learns who is sending (`arrived`) and can kill it right there.
    Held until `release()` or until the client goes away; then the session ends as a real
    server's does: a message not yet stored is dropped, and a dead client gets no 250.
    Driven by events, not sleeps; the server's other sessions go on meanwhile."""

    def __init__(self, stored: bool, match: bytes = b"") -> None:
        self.stored, self.match = stored, match
        self.arrived = threading.Event()  # a message is held now; its DATA is in `content`
        self.abandoned = threading.Event()  # its client went away while it was held
        self.content = b""
        self._released = threading.Event()
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    async def wait(self, content: bytes) -> None:
        """In the server's event loop: hold this session until released or abandoned."""
        wake = asyncio.Event()
        self._wake, self.content = (asyncio.get_running_loop(), wake), content
        self.arrived.set()
        if self._released.is_set():  # released before the message even came
            return
        try:
            await wake.wait()
        except asyncio.CancelledError:  # aiosmtpd cancels the session when the client is gone
            self.abandoned.set()
            raise

    def release(self) -> None:
        """Let the held session go on (from the test's thread)."""
        self._released.set()
        if self._wake is not None:
            loop, wake = self._wake
            with contextlib.suppress(RuntimeError):  # the server stopped already
                loop.call_soon_threadsafe(wake.set)


class SmtpServer:
    """An aiosmtpd server in one of three modes, with AUTH for one user and fault injection.

    Use it as a context manager (or start()/stop()). Tests inject faults with `fail()` and
    `refuse_recipient()`, and wait for deliveries with `wait_for()`.
    """

    host = HOST

    def __init__(self, security: str = "ssl", *, ca: trustme.CA | None = None,
                 ca_file: str | None = None, username: str = USERNAME, password: str = PASSWORD,
                 require_auth: bool = True, exclude_auth: Sequence[str] = (),
                 from_must_match: bool = False) -> None:
        """`from_must_match`: like 163 and QQ, refuse an envelope sender or From header that is
        not the login."""
        if security not in {"ssl", "starttls", "none"}:
            raise ValueError(f"security must be ssl, starttls or none, not {security!r}")
        self.security, self.ca_file = security, ca_file
        self.username, self.password, self.require_auth = username, password, require_auth
        self.from_must_match = from_must_match
        self.after_store: Callable[[], None] | None = None
        self._hold: Hold | None = None
        self.port = 0
        self.received: list[Received] = []
        self.logins: list[str] = []  # one entry per successful AUTH, so per connection
        self.refused: dict[str, str] = {}
        self._faults: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        kwargs: dict[str, Any] = {"auth_exclude_mechanism": list(exclude_auth)}
        if security == "none":
            kwargs.update(auth_require_tls=False)  # loopback only; the client decides
        else:
            if ca is None:
                raise ValueError(f"a {security!r} server needs the test CA")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("localhost", HOST).configure_cert(context)
            if security == "ssl":
                # aiosmtpd only counts STARTTLS as TLS, so AUTH must be allowed "without" it.
                kwargs.update(ssl_context=context, auth_require_tls=False)
            else:
                kwargs.update(tls_context=context, require_starttls=True)
        self._controller = _Controller(_Handler(self), hostname=HOST, port=0,
                                       server_hostname="localhost",
                                       authenticator=self._authenticate, **kwargs)

    def start(self) -> SmtpServer:
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fail(self, command: str, reply: str, times: int | None = 1) -> None:
        """Answer the next `times` AUTH, MAIL, DATA or QUIT commands (None: all of them) with
        `reply`, like "451 4.3.0 Try later"; DROP closes the connection without replying and
        GARBAGE sends an overlong junk line. A failed DATA stores nothing; an AUTH fault covers
        every mechanism the client tries on that connection, so `times` counts logins."""
        command = command.upper()
        if command not in FAULTABLE:
            raise ValueError(f"faults are for {sorted(FAULTABLE)}, not {command}")
        with self._lock:
            self._faults[command] = [reply, times]

    def clear_faults(self) -> None:
        """Take back every fault `fail()` switched on: the server behaves again."""
        with self._lock:
            self._faults.clear()

    def hold(self, stored: bool, match: bytes = b"") -> Hold:
        """Hold the next message containing `match` (see Hold); later ones pass."""
        with self._lock:
            self._hold = Hold(stored, match)
            return self._hold

    def _take_hold(self, content: bytes) -> Hold | None:
        with self._lock:
            hold = self._hold
            if hold is None or hold.match not in content:
                return None
            self._hold = None
            return hold

    def refuse_recipient(self, address: str, reply: str = "550 5.1.1 Mailbox unavailable") -> None:
        """Refuse RCPT TO for `address` with `reply`; other recipients are accepted."""
        self.refused[address] = reply

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until `count` messages have arrived; fail the test after `timeout` seconds."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"expected {count} messages within {timeout} s, "
                                     f"got {len(self.received)}")
            return list(self.received)

    def _from_is_login(self, content: bytes) -> bool:
        message = email.message_from_bytes(content, policy=email.policy.default)
        return parseaddr(str(message.get("From", "")))[1].lower() == self.username.lower()

    def _store(self, message: Received) -> None:
        with self._arrived:
            self.received.append(message)
            self._arrived.notify_all()

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, data: LoginPassword) -> AuthResult:
        ok = data.login.decode() == self.username and data.password.decode() == self.password
        if ok:
            self.logins.append(self.username)
        return AuthResult(success=ok, handled=False)

    async def _fault(self, command: str, server: SMTP) -> Any:
        with self._lock:
            fault = self._faults.get(command)
            if fault is None:
                return MISSING
            reply, times = fault
            if times is not None:
                fault[1] = times - 1
                if fault[1] <= 0:
                    del self._faults[command]
        if reply == DROP:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            # connection_lost() cancels this session's task; wait here until it does.
            await asyncio.get_running_loop().create_future()
        return reply


class SilentServer:
    """Accepts TCP connections (the kernel does, through the backlog) and never says a word,
    so clients wait for a greeting or a TLS handshake until their timeout fires."""

    host = HOST
    ca_file: str | None = None

    def __init__(self, security: str = "ssl") -> None:
        self.security = security
        self._socket = socket.create_server((HOST, 0), backlog=16)
        self.port = self._socket.getsockname()[1]

    def close(self) -> None:
        self._socket.close()


def make_account(server: SmtpServer | SilentServer, **overrides: Any) -> SmtpAccount:
    """An SmtpAccount for `server` that logs in as the test user and trusts the test CA;
    `password` may be given as a plain string."""
    values: dict[str, Any] = {
        "name": "test", "host": server.host, "port": server.port, "security": server.security,
        "username": USERNAME, "password": PASSWORD, "sender": USERNAME, "timeout": 5.0,
        "ca_file": server.ca_file, "from_must_match": False,
    }
    values.update(overrides)
    if isinstance(values["password"], str):
        values["password"] = Secret(values["password"])
    return SmtpAccount(**values)


def smtp_yaml(server: SmtpServer, ca_file: bool = True) -> str:
    """The `smtp:` section of a watchers.yaml for `server`, as users write it; the password
    comes from $PW and, unless `ca_file` is False, the test CA is trusted."""
    trust = f", ca_file: {server.ca_file}" if ca_file else ""
    return (f"smtp:\n  test: {{host: {server.host}, port: {server.port}, security: {server.security}, "
            f"username: {USERNAME}, password_env: PW{trust}}}\n")


class LocalCA(trustme.CA):
    """A trustme CA that also knows where its certificate is written, for ``ca_file``."""

    ca_file: str


def write_ca_file(ca: trustme.CA, directory: Path) -> str:
    """Write the CA certificate as PEM, for ``SmtpAccount.ca_file``."""
    path = directory / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    """One test CA per session (servers get certificates for localhost and 127.0.0.1); its
    PEM file is at ``tls_ca.ca_file``."""
    ca = LocalCA()
    ca.ca_file = write_ca_file(ca, tmp_path_factory.mktemp("ca"))
    return ca


def _serve(security: str, ca: LocalCA) -> Iterator[SmtpServer]:
    with SmtpServer(security, ca=ca, ca_file=ca.ca_file) as server:
        yield server


@pytest.fixture
def smtp_server(tls_ca: LocalCA) -> Iterator[SmtpServer]:
    """Implicit TLS (like port 465) with AUTH required."""
    yield from _serve("ssl", tls_ca)


@pytest.fixture
def smtp_163(tls_ca: LocalCA) -> Iterator[SmtpServer]:
    """Like 163 and QQ: implicit TLS, AUTH, and mail whose sender or From is not the login refused."""
    with SmtpServer("ssl", ca=tls_ca, ca_file=tls_ca.ca_file, from_must_match=True) as server:
        yield server


@pytest.fixture
def starttls_server(tls_ca: LocalCA) -> Iterator[SmtpServer]:
    """STARTTLS required before anything else (like port 587), then AUTH."""
    yield from _serve("starttls", tls_ca)


@pytest.fixture
def plain_server(tls_ca: LocalCA) -> Iterator[SmtpServer]:
    """No TLS at all (like a local relay on port 25); AUTH is offered in clear."""
    yield from _serve("none", tls_ca)


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    """A port that accepts connections and never answers."""
    server = SilentServer()
    yield server
    server.close()
