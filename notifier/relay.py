"""The local mail relay: an SMTP server for the machine's other programs (cron, backup scripts,
smartd), in front of the same durable outbox as the alerts.

`Intake` decides what happens to one message, whatever brought it (an SMTP client, or
`notifier sendmail` queueing straight into the database): the screening rules
(notifier.screen), the 163/QQ rewriting (notifier.rewrite), and one transaction that puts it
in the outbox with its event — a client gets 250 only after that commit, so a message is never
acknowledged and then lost, and a crash before the commit leaves the client to retry. The
relay never writes a bounce: a refusal is the SMTP reply itself, and a message the provider
refuses later becomes a dead letter in `notifier outbox`, so mail cannot loop.

`RelayServer` is aiosmtpd in its own thread and event loop. The database work of DATA runs in
the loop's thread pool, so one slow commit does not stall the other connections. At most
`max_clients` connections are served (the next is told 421); a client silent for `timeout`
is disconnected, freeing its slot. Beyond loopback, MAIL needs a login (AUTH after STARTTLS).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from notifier import screen
from notifier.config import Config, RelayConfig
from notifier.errors import NotifierError, StateError
from notifier.relaydata import TooBig, read_data
from notifier.relaylog import HOUR, MINUTE, Quarantined, Relayed
from notifier.rewrite import crlf, rewrite
from notifier.store import Store

log = logging.getLogger(__name__)

RELAY_WRITER = "relay"  # the relay's writes, as the daemon's health names their writer


class Writes(Protocol):
    """Who hears how the relay's writes go: the daemon's Health (notifier.health: a failure is
    UNHEALTHY in `notifier status` and an alert, the next success ends it), or nobody."""

    def failed(self, writer: str, exc: Exception) -> None: ...
    def succeeded(self, writer: str) -> None: ...


class _Nobody:
    """`notifier sendmail` queueing by itself: its exit code and message tell the failure."""

    def failed(self, writer: str, exc: Exception) -> None:
        """Nobody to tell: the caller reports the failure itself."""

    def succeeded(self, writer: str) -> None:
        """Nothing to end."""


NOBODY = _Nobody()

LOCAL = "local"  # the client name of unauthenticated connections from this machine
RCPT_CAP = 10_000  # recipients one transaction may collect before screening counts them
# An envelope address: no spaces, controls or brackets (nothing that could end a header line).
_ENVELOPE = re.compile(r"^[^\s<>()\[\],;:\\\"\x00-\x1f\x7f]+@[^\s<>()\[\],;:\\\"\x00-\x1f\x7f@]+$")
_LOCAL_USER = re.compile(r"^[A-Za-z0-9._+-]+$")  # "root", "user": a user of this machine
# A path of MAIL or RCPT in its plain form, <dot-atom@domain>: what nearly every client sends.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
                         r"(?:[ \t]+(?=[^\s(])|$)")  # then parameters, but no comment
# aiosmtpd's own words for a message over the size limit: announced (MAIL ... SIZE=), sent, or
# one line of it longer than the whole limit (lines may be as long as the limit, see below).
_TOO_BIG = ("552 Error: Too much mail data",
            "552 Error: message size exceeds fixed maximum message size",
            "500 Line too long (see RFC5321 4.5.3.1.6)")


class RelayError(NotifierError):
    """The relay cannot serve (it cannot listen, or its certificate cannot be loaded)."""


def valid_address(address: str, empty_ok: bool = False, local_ok: bool = False) -> bool:
    """Whether an envelope address is safe to carry: one mailbox, no spaces or control
    characters; `local_ok` lets a user name of this machine ("root") through as well."""
    return ((empty_ok and address == "") or bool(_ENVELOPE.match(address))
            or (local_ok and bool(_LOCAL_USER.match(address))))


def expand(recipients: Sequence[str], cfg: Config) -> list[str]:
    """Recipients with each user of this machine ("root", cron's MAILTO=user) replaced by the
    alerts' recipients (mail.to and mail.cc): the box has no mailboxes of its own."""
    out: list[str] = []
    for address in recipients:
        out += [address] if "@" in address else [*cfg.recipients.to, *cfg.recipients.cc]
    return list(dict.fromkeys(out))


def is_loopback(peer: object) -> bool:
    """Whether a peer (host, port, ...) connects from this machine."""
    host = peer[0] if isinstance(peer, tuple) and peer else ""
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


class Checked(NamedTuple):
    """A message screened and rewritten, not yet stored; `refusal` is the screening rule's."""

    relayed: Relayed
    refusal: screen.Refusal | None
    relay: RelayConfig
    size: int  # bytes as the client sent them (line ends made CRLF), for the log


class Intake:
    """Screen, rewrite and queue one message; returns the SMTP reply the client gets.

    `config` is read for every message, so a reload applies to the next one. `on_accept` is
    called after a commit (the daemon delivers at once rather than at its next round).
    """

    def __init__(self, config: Callable[[], Config], store: Store,
                 on_accept: Callable[[], None] = lambda: None, host: str | None = None,
                 health: Writes = NOBODY) -> None:
        self.config = config
        self.store = store
        self.on_accept = on_accept
        self.host = host or socket.gethostname()
        self.health = health  # the daemon's: a write that fails is its health, not only a log line
        self.commits = GroupCommit(store, health)

    def submit(self, client: str, sender: str, recipients: Sequence[str], data: bytes) -> str:
        """The whole decision, waiting for the commit (`notifier sendmail`, which has no loop)."""
        checked = self.check(client, sender, recipients, data)
        return checked if isinstance(checked, str) else self.store_checked(checked)

    def check(self, client: str, sender: str, recipients: Sequence[str], data: bytes) -> str | Checked:
        """Everything before the database: the reply when the addresses cannot be carried,
        else the message rewritten, with the screening rule that refuses it, if one does."""
        cfg = self.config()
        relay = cfg.relay
        assert relay is not None, "the relay is served only while relay: is configured"
        bad = next((a for a in recipients if not valid_address(a, local_ok=True)), None)
        if not valid_address(sender, empty_ok=True, local_ok=True) or bad is not None:
            return f"501 5.1.3 {bad or sender!r} is not a mail address notifier can carry."
        recipients = expand(recipients, cfg)
        if not recipients:
            return ("550 5.1.1 Mail for users of this machine goes to mail.to, which names nobody; "
                    "set mail.to in the config or give a full address.")
        data = crlf(data)
        account = cfg.accounts.get(relay.account or "")
        login = account.username if account and relay.rewrite_from else None
        message = rewrite(data, sender, login, self.host)
        relayed = Relayed(client, message.message_id, account.name if account else None,
                          message.sender, tuple(recipients), message.data)
        refusal = (screen.check_envelope(relay.screen, recipients)
                   or screen.check_content(relay.screen, data))
        return Checked(relayed, refusal, relay, len(data))

    def store_checked(self, checked: Checked) -> str:
        """Count a refusal, or commit the message; the reply either way (blocking)."""
        try:
            if checked.refusal is not None:
                return self._refused(checked.relayed, checked.refusal, checked.relay)
            rule = self.commits.queue(checked.relayed, _rates(checked.relay)).result()
        except StateError as exc:
            return self.deferred(checked, exc)
        return self.decided(checked, rule)

    def deferred(self, checked: Checked, exc: StateError) -> str:
        """The reply when the database could not take the message: the client tries again."""
        log.error("relay client=%s outcome=deferred: %s", checked.relayed.client, exc)
        self.health.failed(RELAY_WRITER, exc)
        return "451 4.3.0 The message could not be stored; try again later."

    def decided(self, checked: Checked, rule: str | None) -> str:
        """The reply once the transaction decided: a rate rule refused it, or it is queued."""
        relayed = checked.relayed
        if rule is not None:
            return self._refused(relayed, _rate_refusal(rule, checked.relay), checked.relay, counted=True)
        log.info("relay client=%s outcome=accepted message=%s recipients=%d size=%d", relayed.client,
                 relayed.message_id, len(relayed.recipients), checked.size)
        self.on_accept()
        return _queued_reply(relayed.message_id)

    def refuse_size(self, client: str, limit: int) -> str:
        """A message over `max_message_size`, refused while it arrived: nothing of it is
        kept, only the refusal counted."""
        with_rule = screen.Refusal("max_message_size", f"the message is larger than {limit:,} bytes.")
        try:
            self.store.relay_refuse(client, with_rule.rule, time.time())
        except StateError as exc:
            log.error("relay client=%s: the refusal could not be counted: %s", client, exc)
            self.health.failed(RELAY_WRITER, exc)
        else:
            self.health.succeeded(RELAY_WRITER)
        log.warning("relay client=%s outcome=refused rule=%s", client, with_rule.rule)
        return with_rule.reply().replace("550 5.7.1", "552 5.3.4", 1)

    def _refused(self, relayed: Relayed, refusal: screen.Refusal, relay: RelayConfig,
                 counted: bool = False) -> str:
        """Count a refusal (unless the transaction that found it did: a rate limit, a reused
        Message-ID), keep the message when the quarantine is on, and word the reply. A rate-limited
        message is kept too: a client that does not retry (cron, through sendmail) would lose it."""
        kept = (Quarantined(0, relayed.client, refusal.rule, refusal.reason, relayed, 0.0)
                if relay.screen.quarantine else None)
        if not counted:
            self.store.relay_refuse(relayed.client, refusal.rule, time.time(), kept)
        elif kept is not None and refusal.temporary:
            self._keep(kept)
        log.warning("relay client=%s outcome=refused rule=%s message=%s", relayed.client,
                    refusal.rule, relayed.message_id)
        return refusal.reply()

    def _keep(self, kept: Quarantined) -> None:
        """Quarantine a message the commit refused (rare: on the loop, a write of one row)."""
        try:
            self.store.quarantine_keep(kept, time.time())
        except StateError as exc:
            log.error("relay client=%s: the refused message could not be quarantined: %s",
                      kept.client, exc)
            self.health.failed(RELAY_WRITER, exc)
        else:
            self.health.succeeded(RELAY_WRITER)


Rates = Sequence[tuple[str, float, int]]  # (rule, window in seconds, most messages)
GROUP_MOST = 64  # messages committed in one transaction at most


class GroupCommit:
    """Messages that arrive at the same time share one transaction: each client still gets its
    250 only after the commit that holds its message, but ten clients cost one commit, not ten.
    One thread writes; it starts with the first message and ends with `close`."""

    def __init__(self, store: Store, health: Writes = NOBODY) -> None:
        self.store = store
        self.health = health
        self._queue: queue.SimpleQueue[tuple[Relayed, Rates, Future[str | None]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def queue(self, relayed: Relayed, rates: Rates) -> Future[str | None]:
        """Queue `relayed` in the next transaction. The future's result is the rule that
        refused it, or None once it is committed; StateError when the transaction failed."""
        done: Future[str | None] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write, name="relay-commit", daemon=True)
                self._thread.start()
            self._queue.put((relayed, rates, done))
        return done

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join()

    def _write(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            while len(batch) < GROUP_MOST:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # end after this batch
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Relayed, Rates, Future[str | None]]]) -> None:
        """One transaction for the batch (the rates are the same config's for all of it). Any
        failure fails the batch as a StateError (each client gets a 451 and sends again): an
        exception that escaped would end the writer and leave every client waiting for good."""
        try:
            rules = self.store.relay_accept([m for m, _, _ in batch], time.time(), batch[0][1])
        except Exception as exc:  # any: see the docstring
            if not isinstance(exc, StateError):
                log.error("relay: %d message(s) could not be stored (a bug: %s: %s); their clients "
                          "are told to send again.", len(batch), type(exc).__name__, exc)
                exc = StateError(f"the message could not be stored ({type(exc).__name__})")
            self.health.failed(RELAY_WRITER, exc)
            for _, _, done in batch:
                done.set_exception(exc)
            return
        self.health.succeeded(RELAY_WRITER)
        for (_, _, done), rule in zip(batch, rules, strict=True):
            done.set_result(rule)


def _queued_reply(message_id: str) -> str:
    """The 250 after the commit. The Message-ID is the client's own text: echoed only when it
    is short printable ASCII, since a reply aiosmtpd cannot encode would turn a queued message
    into a 500 (and the client would send it again)."""
    if message_id.isascii() and message_id.isprintable() and len(message_id) <= 200:
        return f"250 2.0.0 Queued as {message_id}"
    return "250 2.0.0 Queued"


def _rates(relay: RelayConfig) -> list[tuple[str, float, int]]:
    limits = (("rate_per_minute", MINUTE, relay.screen.rate_per_minute),
              ("rate_per_hour", HOUR, relay.screen.rate_per_hour))
    return [(rule, window, most) for rule, window, most in limits if most]


def _rate_refusal(rule: str, relay: RelayConfig) -> screen.Refusal:
    if rule not in ("rate_per_minute", "rate_per_hour"):
        return screen.Refusal(rule, "a different message with this Message-ID is already "
                              "queued; give each message its own Message-ID.")
    most = relay.screen.rate_per_minute if rule == "rate_per_minute" else relay.screen.rate_per_hour
    return screen.Refusal(rule, f"this client may send {most} messages per "
                          f"{rule.rpartition('_')[2]}; send again later.", temporary=True)


class _Slots:
    """How many connections are being served, against `max_clients`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.used = 0

    def take(self, most: int) -> bool:
        with self.lock:
            if self.used >= most:
                return False
            self.used += 1
            return True

    def give_back(self) -> None:
        with self.lock:
            self.used -= 1


class _RelaySMTP(SMTP):
    """aiosmtpd's SMTP with a connection limit and notifier's wording of the size refusal.

    Lines may be as long as a whole message: mail written with bare LF arrives as one long
    "line", and the size limit is what bounds memory."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        self.line_length_limit = max(kwargs["data_size_limit"], 1001)
        self._handler = handler
        self._slot = False
        super().__init__(handler, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._slot or self.transport is not None:  # STARTTLS: the same connection
            super().connection_made(transport)
            return
        if not self._handler.slots.take(self._handler.relay().max_clients):
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"421 4.3.2 Too many connections; try again in a minute.\r\n")
            transport.close()
            return
        self._slot = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._slot:
            return
        self._slot = False
        self._handler.slots.give_back()
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        return super().eof_received() if self._slot else False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL or RCPT and the parameters after it. A plain <local@domain>
        is taken as it is; anything else goes to aiosmtpd's parser, which builds an email
        header token tree for it: a tenth of the relay's time before this shortcut."""
        plain = _PLAIN_PATH.match(arg)
        if plain is None or (self.local_part_limit
                             and len(plain.group(1).rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)
        return plain.group(1), arg[plain.end():]

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the message read in large pieces (notifier.relaydata) rather
        than line by line; the checks before it and the replies are aiosmtpd's own."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos or arg:
            await self.push("503 Error: need RCPT command" if not self.envelope.rcpt_tos
                            else "501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_data(self._reader, self.data_size_limit or 0)
        except asyncio.IncompleteReadError:  # the client went away: nothing to answer or keep
            self._writer.close()
            return
        except TooBig:
            await self.push(_TOO_BIG[0])
            self.envelope = self._create_envelope()
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state, which is untyped
        await self.push("250 OK" if status is MISSING else status)

    async def push(self, status: str) -> None:  # type: ignore[override]  # aiosmtpd pushes str
        if status in _TOO_BIG and self.session is not None:
            client = _client(self.session)
            status = await self.loop.run_in_executor(
                None, self._handler.intake.refuse_size, client, self.data_size_limit or 0)
        await super().push(status)


def _client(session: Session) -> str:
    return str(session.auth_data) if session.authenticated else LOCAL


class _Handler:
    """aiosmtpd's hooks: who may send, which addresses, and DATA handed to the Intake."""

    def __init__(self, intake: Intake, relay: Callable[[], RelayConfig]) -> None:
        self.intake = intake
        self.relay = relay
        self.slots = _Slots()

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if not is_loopback(session.peer) and not session.authenticated:
            return ("530 5.7.0 Authentication required: log in (AUTH, after STARTTLS) with a "
                    "username and password from relay.clients.")
        if not valid_address(address, empty_ok=True, local_ok=True):
            return "501 5.1.7 The sender address has characters notifier cannot carry."
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if not valid_address(address, local_ok=True):
            return "501 5.1.3 The recipient address has characters notifier cannot carry."
        if len(envelope.rcpt_tos) >= RCPT_CAP:
            return f"452 4.5.3 Too many recipients; at most {RCPT_CAP} per message."
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Screening and rewriting run here, on the loop: they only compute, and a trip to a
        pool thread and back would cost more. The commit is the commit thread's; while it
        runs, the loop serves the other clients. A refusal is counted in the pool."""
        checked = self.intake.check(_client(session), str(envelope.mail_from),
                                    list(envelope.rcpt_tos), bytes(envelope.original_content or b""))
        if isinstance(checked, str):
            return checked
        if checked.refusal is not None:
            refused: str = await asyncio.get_running_loop().run_in_executor(
                None, self.intake.store_checked, checked)
            return refused
        try:
            rule = await asyncio.wrap_future(self.intake.commits.queue(checked.relayed,
                                                                       _rates(checked.relay)))
        except StateError as exc:
            return self.intake.deferred(checked, exc)
        return self.intake.decided(checked, rule)

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     data: object) -> AuthResult:
        """A login of one of relay.clients. Beyond loopback only over TLS: the password would
        otherwise cross the network in clear."""
        if not is_loopback(session.peer) and session.ssl is None:
            return AuthResult(success=False, handled=False,
                              message="538 5.7.11 Encryption required: use STARTTLS before AUTH.")
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = data.login.decode("utf-8", "replace")
        for client in self.intake.config().relay.clients.values():  # type: ignore[union-attr]
            if hmac.compare_digest(client.username.encode(), data.login):
                result = _check_password(client, data)
                if result.success or result.message:
                    return result
                break
        log.warning("relay: a failed login as %r from %s", login, session.peer)
        return AuthResult(success=False, handled=False)


def _check_password(client: Any, data: LoginPassword) -> AuthResult:
    """The login of `client`. A password the daemon cannot read is the server's problem, not
    the client's: a temporary 454 that says nothing of where the password should have been
    (the log says that, in one line)."""
    try:
        expected = client.password.read().reveal().encode()
    except (ValueError, NotifierError) as exc:
        log.error("relay: client %s cannot log in: its password cannot be read (%s).",
                  client.name, exc)
        return AuthResult(success=False, handled=False, message="454 4.7.0 Temporary "
                          "authentication failure on the server; try again later.")
    return AuthResult(success=hmac.compare_digest(expected, data.password), handled=False,
                      auth_data=client.name)


class _Controller(Controller):
    """aiosmtpd's threaded controller, building notifier's SMTP class on a socket bound before
    it starts: a taken address is an error at once, not after aiosmtpd's start-up timeout."""

    sock: socket.socket

    def factory(self) -> _RelaySMTP:
        return _RelaySMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self.sock, ssl=self.ssl_context)


def _bind(relay: RelayConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in relay.host else socket.AF_INET
    try:
        return socket.create_server((relay.host, relay.port), family=family, backlog=128)
    except OSError as exc:
        raise RelayError(f"The relay cannot listen on {relay.host}:{relay.port} "
                         f"({exc.strerror or exc}); stop what listens there or set relay.listen "
                         f"to another address.") from None


def listening(relay: RelayConfig) -> tuple[object, ...]:
    """What the listening socket is made of: when it changes on reload, the server restarts."""
    return (relay.host, relay.port, relay.certificate, relay.key, relay.max_message_size, relay.timeout)


class RelayServer:
    """The relay's SMTP server in its own thread; `start` raises RelayError in a sentence."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.port = 0
        self._controller: _Controller | None = None
        self.serving: tuple[object, ...] = ()

    def _relay(self) -> RelayConfig:
        relay = self.intake.config().relay
        assert relay is not None
        return relay

    def start(self) -> None:
        logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd: a line per command, and a
        # deprecation warning of its own at every login
        relay = self._relay()
        handler = _Handler(self.intake, self._relay)
        kwargs: dict[str, Any] = {
            "hostname": relay.host, "port": relay.port, "server_hostname": self.intake.host,
            "data_size_limit": relay.max_message_size, "timeout": relay.timeout,
            "authenticator": handler.authenticate, "auth_require_tls": False,
            "enable_SMTPUTF8": False, "ident": "notifier relay", "ready_timeout": 10.0,
        }
        if relay.certificate and relay.key:
            kwargs["tls_context"] = _tls(relay)
        sock = _bind(relay)
        kwargs["port"] = sock.getsockname()[1]
        controller = _Controller(handler, **kwargs)
        controller.sock = sock
        try:
            controller.start()
        except (OSError, TimeoutError) as exc:
            controller.stop(no_assert=True)
            sock.close()
            raise RelayError(f"The relay on {relay.host}:{controller.port} did not start ({exc}); "
                             f"see the log above, and restart notifier.") from None
        self._controller, self.port, self.serving = controller, controller.port, listening(relay)
        log.info("relay: listening on %s:%d for mail to send through %s", relay.host, self.port,
                 relay.account or "the local Maildir")

    def stop(self) -> None:
        """Stop listening and drop open connections: a message not yet answered 250 is the
        client's to send again, and one that was is in the outbox already."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
        self.intake.commits.close()


def _tls(relay: RelayConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(relay.certificate), str(relay.key))
    except (OSError, ssl.SSLError) as exc:
        raise RelayError(f"The relay's certificate {relay.certificate} or key {relay.key} cannot be "
                         f"loaded ({exc}); point them at a PEM certificate and its key.") from None
    return context


RETRY_LISTEN = 60.0  # seconds between attempts to listen after the address was taken


class RelayService:
    """The relay as the daemon runs it: started when `relay:` is configured, restarted when its
    socket settings change on reload, stopped at shutdown. A relay that cannot listen is an
    error line and a note in the daemon's status; checks go on, and it tries again every minute."""

    def __init__(self, config: Callable[[], Config], store: Store, on_accept: Callable[[], None],
                 health: Writes = NOBODY) -> None:
        self.config = config
        self.store = store
        self.on_accept = on_accept
        self.health = health
        self.server: RelayServer | None = None
        self.problem: str | None = None
        self._next_try = 0.0

    def apply(self) -> None:
        """Serve what the current config says (nothing, the same, or a new socket)."""
        relay = self.config().relay
        if relay is None:
            self.stop()
            self.problem = None
            return
        if self.server is not None and self.server.serving == listening(relay):
            return
        self.stop()
        server = RelayServer(Intake(self.config, self.store, self.on_accept,
                                     health=self.health))
        self._next_try = time.monotonic() + RETRY_LISTEN
        try:
            server.start()
        except RelayError as exc:
            if self.problem != str(exc):
                log.error("%s The daemon goes on without it and tries again every minute.", exc)
            self.problem = str(exc)
            return
        self.server, self.problem = server, None

    def retry(self) -> None:
        """After a failure to listen, try again once RETRY_LISTEN has passed."""
        if self.problem is not None and time.monotonic() >= self._next_try:
            self.apply()

    def stop(self) -> None:
        """Stop serving. A problem to listen is kept: the retry that fails the same way again
        says nothing new, so it logs nothing."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def describe(self) -> str | None:
        """The relay's line in `notifier status` (through the daemon's running.json): where it
        listens, or why it cannot; None when no relay is configured."""
        relay = self.config().relay
        if self.problem is not None:
            return f"NOT LISTENING: {self.problem} notifier tries again every minute."
        if self.server is None or relay is None:
            return None
        return f"listening on {relay.host}:{self.server.port}"

    def status(self) -> str:
        """The relay's part of the daemon's status line."""
        if self.problem is not None:
            return ", relay NOT LISTENING (see the log)"
        relay = self.config().relay
        return f", relay on {relay.host}:{self.server.port}" if self.server and relay else ""
