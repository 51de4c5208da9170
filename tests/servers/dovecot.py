"""A real Dovecot (IMAP and POP3) for tests, started from a temporary directory with its own
config, users (passwd-file), Maildirs and TLS certificate from the session's trustme CA.

It never runs as root: when the tests do (CI), Dovecot is started as `nobody` through setpriv,
in a directory nobody owns. Dovecot cannot listen on port 0, so free ports are picked first.
It is stopped by the PID of the master process (`dovecot -F` runs in the foreground).

`DeliveringSmtpServer` closes the loop: the aiosmtpd server of tests/servers/smtp.py, which
drops every accepted message into the recipient's Maildir `new/` (written in `tmp/`, then
renamed, as a delivery agent does), optionally into a folder or after a delay, or answers it
with a bounce (an RFC 3464 report to the sender), like a remote server would minutes later.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from notifier.config import Mailbox
from notifier.receive import encode_folder
from notifier.secrets import Secret
from tests.servers import stop_process
from tests.servers.smtp import HOST, LocalCA, Received, SmtpServer

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
RECEIVER = "alerts@example.com"
RECEIVER_PASSWORD = "Imap-Code-5k2p"
SENDER = "robot@example.com"  # tests/servers/smtp.py's USERNAME: bounces come back here
SENDER_PASSWORD = "Auth-Code-7f3a9q"
JUNK = "垃圾邮件"  # QQ's and 163's junk folder
JUNK_RAW = "&V4NXPpCuTvY-"  # the same in modified UTF-7, as IMAP (and the Maildir on disk) spell it
IS_ROOT = os.geteuid() == 0
# Dovecot's default CAPABILITY after login, minus IDLE: a server that does not offer it.
NO_IDLE = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE SORT SORT=DISPLAY THREAD=REFERENCES "
           "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
           "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
           "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
           "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE")

_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = {host}
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/cert.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
first_valid_uid = 1
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
{capability}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox "{junk}" {{
    {junk_flag}
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
}}
"""


def require_dovecot() -> None:
    """Fail (never skip) with what to install when Dovecot is missing."""
    if not Path(DOVECOT).exists():
        pytest.fail("Dovecot is not installed: these tests run a real IMAP/POP3 server. Install it "
                    "with `make debs` (as root) or `sudo apt-get install dovecot-imapd dovecot-pop3d`.",
                    pytrace=False)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.create_server((HOST, 0)) for _ in range(count)]
    try:
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Dovecot:
    """One Dovecot with two users (RECEIVER, and SENDER for bounces), IMAP and POP3 in clear and
    over implicit TLS. `idle=False` drops IDLE from its capabilities; `junk` names the junk
    folder (as people read it), `junk_flag` its SPECIAL-USE flag ("" for none)."""

    def __init__(self, ca: LocalCA, *, idle: bool = True, junk: str = JUNK,
                 junk_flag: str = "\\Junk") -> None:
        require_dovecot()
        self.ca, self.idle, self.junk, self.junk_flag = ca, idle, junk, junk_flag
        self.root = Path(tempfile.mkdtemp(prefix="notifier-dovecot-"))
        self.root.chmod(0o755)
        runner = pwd.getpwnam("nobody") if IS_ROOT else pwd.getpwuid(os.getuid())
        self.uid, self.gid = runner.pw_uid, runner.pw_gid
        self.user = runner.pw_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.imap = self.imaps = self.pop3 = self.pop3s = 0

    def start(self) -> Dovecot:
        for attempt in range(5):  # a picked port may be taken again before Dovecot binds it
            self.imap, self.imaps, self.pop3, self.pop3s = _free_ports(4)
            self._write()
            if self._launch():
                return self
            self.stop(cleanup=False)
            if attempt == 4:
                raise RuntimeError(f"Dovecot did not start:\n{self.log()}")
        return self

    def _write(self) -> None:
        for sub in ("run", "state", "home"):
            (self.root / sub).mkdir(exist_ok=True)
        self.ca.issue_cert("localhost", HOST).private_key_and_cert_chain_pem.write_to_path(
            str(self.root / "cert.pem"))
        (self.root / "passwd").write_text(f"{RECEIVER}:{{PLAIN}}{RECEIVER_PASSWORD}\n"
                                          f"{SENDER}:{{PLAIN}}{SENDER_PASSWORD}\n")
        group = "nogroup" if IS_ROOT else self.user
        try:
            import grp  # noqa: PLC0415 - only here

            group = grp.getgrgid(self.gid).gr_name
        except KeyError:
            pass
        capability = "" if self.idle else f"imap_capability = {NO_IDLE}"
        (self.root / "dovecot.conf").write_text(_CONFIG.format(
            root=self.root, host=HOST, user=self.user, group=group, uid=self.uid, gid=self.gid,
            imap=self.imap, imaps=self.imaps, pop3=self.pop3, pop3s=self.pop3s,
            capability=capability, junk=self.junk,
            junk_flag=f"special_use = {self.junk_flag}" if self.junk_flag else ""))
        (self.root / "dovecot.log").unlink(missing_ok=True)
        self._own(self.root)

    def _own(self, path: Path) -> None:
        """Everything under `path` belongs to the user Dovecot runs as (when we are root)."""
        if not IS_ROOT:
            return
        for dirpath, _, files in os.walk(path):
            os.chown(dirpath, self.uid, self.gid)
            for name in files:
                os.chown(os.path.join(dirpath, name), self.uid, self.gid)

    def _own_new(self, paths: list[Path]) -> None:
        if IS_ROOT:
            for path in paths:
                os.chown(path, self.uid, self.gid)

    def _launch(self) -> bool:
        command = [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")]
        if IS_ROOT:
            command = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                       *command]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                for port in (self.imap, self.imaps, self.pop3, self.pop3s):
                    socket.create_connection((HOST, port), 0.2).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def log(self) -> str:
        try:
            return (self.root / "dovecot.log").read_text(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self, cleanup: bool = True) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            # The master leads its own process group (its PID is the group's id): the whole
            # group gets the signal at once, instead of the master ending its children one by one.
            stop_process(proc, signal.SIGTERM, 10, group=True)
        if cleanup:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        base = self.root / "home" / user / "Maildir"
        return base if folder == "INBOX" else base / f".{encode_folder(folder).replace('/', '.')}"

    def deliver(self, user: str, data: bytes, folder: str = "INBOX") -> Path:
        """Drop a message into a user's Maildir like a delivery agent: written in tmp/, renamed
        into new/, so Dovecot never sees half a file."""
        box = self.maildir(user, folder)
        if not (box / "new").is_dir():
            for sub in ("tmp", "new", "cur"):
                (box / sub).mkdir(parents=True, exist_ok=True)
            if folder != "INBOX":
                (box / "maildirfolder").touch()
            self._own(self.root / "home" / user)
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.notifier-tests"
        tmp = box / "tmp" / name
        tmp.write_bytes(data.replace(b"\r\n", b"\n"))
        self._own_new([tmp])
        final = box / "new" / name
        os.rename(tmp, final)
        return final

    def account(self, protocol: str = "imap", security: str = "ssl", user: str = RECEIVER,
                password: str | None = None, **overrides: Any) -> Mailbox:
        """A Mailbox for this server, trusting the test CA."""
        ports = {("imap", "ssl"): self.imaps, ("imap", "starttls"): self.imap, ("imap", "none"): self.imap,
                 ("pop3", "ssl"): self.pop3s, ("pop3", "starttls"): self.pop3, ("pop3", "none"): self.pop3}
        if password is None:
            password = RECEIVER_PASSWORD if user == RECEIVER else SENDER_PASSWORD
        values: dict[str, Any] = {
            "name": f"{protocol}-test", "protocol": protocol, "host": "localhost" if security != "none"
            else HOST, "port": ports[protocol, security], "security": security, "username": user,
            "password": Secret(password), "timeout": 5.0, "ca_file": self.ca.ca_file}
        values.update(overrides)
        return Mailbox(**values)


class DeliveringSmtpServer(SmtpServer):
    """The SMTP server of tests/servers/smtp.py, delivering what it accepts into Dovecot.

    `route(rcpt, data)` names the folder ("INBOX", the junk folder) or "bounce"; `delay` holds
    each delivery back that many seconds, in a thread, like a real relay."""

    def __init__(self, *args: Any, dovecot: Dovecot, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dovecot = dovecot
        self.route: Callable[[str, bytes], str] = lambda rcpt, data: "INBOX"
        self.delay = 0.0
        self.delivered = threading.Event()

    def __enter__(self) -> DeliveringSmtpServer:
        self.start()
        return self

    def _store(self, message: Received) -> None:
        super()._store(message)
        if self.delay:
            threading.Timer(self.delay, self._deliver, (message,)).start()
        else:
            self._deliver(message)

    def _deliver(self, message: Received) -> None:
        for rcpt in message.rcpt_tos:
            head = f"Return-Path: <{message.mail_from}>\r\nDelivered-To: {rcpt}\r\n".encode()
            where = self.route(rcpt, message.content)
            if where == "bounce":
                self.dovecot.deliver(message.mail_from, bounce(message, rcpt))
            else:
                self.dovecot.deliver(rcpt, head + message.content, where)
        self.delivered.set()


def bounce(message: Received, rcpt: str) -> bytes:
    """An RFC 3464 report to the sender, as Postfix writes one, quoting the original headers."""
    headers = message.content.split(b"\r\n\r\n", 1)[0]
    return (
        b"From: MAILER-DAEMON@example.com (Mail Delivery System)\r\n"
        b"To: " + message.mail_from.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"Auto-Submitted: auto-replied\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"BOUNDARY\"\r\n"
        b"\r\n--BOUNDARY\r\nContent-Type: text/plain\r\n\r\n"
        b"I'm sorry to have to inform you that your message could not be delivered.\r\n"
        b"\r\n--BOUNDARY\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.com\r\n\r\n"
        b"Final-Recipient: rfc822; " + rcpt.encode() + b"\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 <" + rcpt.encode() + b">: User unknown\r\n"
        b"\r\n--BOUNDARY\r\nContent-Type: text/rfc822-headers\r\n\r\n" + headers +
        b"\r\n\r\n--BOUNDARY--\r\n")


@pytest.fixture(scope="module")
def dovecot(tls_ca: LocalCA) -> Iterator[Dovecot]:
    """One Dovecot per test module (IDLE on, junk folder 垃圾邮件 flagged \\Junk)."""
    with Dovecot(tls_ca) as server:
        yield server


@pytest.fixture(scope="module")
def dovecot_no_idle(tls_ca: LocalCA) -> Iterator[Dovecot]:
    """A Dovecot that does not offer IDLE, and whose junk folder is just named "Spam"."""
    with Dovecot(tls_ca, idle=False, junk="Spam", junk_flag="") as server:
        yield server


_next_source = iter(range(2, 250))


@pytest.fixture
def fresh_client_ip(monkeypatch: pytest.MonkeyPatch) -> str:
    """Connect from an address of 127.0.0.0/8 no other test used. Dovecot slows down every
    login from an address that failed one (its auth penalty, seconds long); a test that fails a
    login on purpose uses this, so the tests after it are not slowed down."""
    source = f"127.0.0.{next(_next_source)}"
    original = socket.create_connection

    def connect(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        kwargs.setdefault("source_address", (source, 0))
        return original(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", connect)
    return source
