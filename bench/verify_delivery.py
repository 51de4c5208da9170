"""`notifier verify-delivery` against a local Dovecot: accepted → found latency.

Issue 12's targets: with IMAP IDLE, the median of 10 probes under 1 s; polling (a server
without IDLE) under the poll interval + 0.5 s; a bounce scan of a mailbox holding 10,000
messages touches only the new ones, under 1 s per scan after the first. The daemon's
`watch_bounces` scan (a new session each time, its position kept in the state directory) is
timed on the same mailbox.

How: the test fixtures' real servers — Dovecot (tests/servers/dovecot.py, started unprivileged
from a temporary directory) and the aiosmtpd relay that drops each accepted message into the
recipient's Maildir — so the client pays for real TLS (trustme CA), real LOGIN/ID/SELECT, real
SEARCH and FETCH. `verify()` itself is run, and its own figure is reported: from the moment the
SMTP server accepted the probe to the moment the probe's UID was found (the fetch, intact check
and deletion come after and are timed separately as "whole run"). The relay can hold each
delivery back (`--delay`), like a real provider's pipeline, to show that polling pays for its
interval while IDLE does not.

Nothing is asserted; the figures are printed for a person to judge.

    .venv/bin/python bench/verify_delivery.py               # 10 probes each way
    .venv/bin/python bench/verify_delivery.py --probes 20 --delay 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notifier import config
from notifier.bounces import BounceScanner, scan_mailbox
from notifier.receive import ImapClient
from notifier.verify import FIRST_POLL, MAX_POLL, verify
from tests.servers.dovecot import (
    RECEIVER,
    RECEIVER_PASSWORD,
    SENDER,
    SENDER_PASSWORD,
    DeliveringSmtpServer,
    Dovecot,
)
from tests.servers.smtp import LocalCA, write_ca_file


def _config(directory: Path, relay: DeliveringSmtpServer, dovecot: Dovecot) -> config.Config:
    path = directory / "watchers.yaml"
    path.write_text(
        f"state_dir: {directory / 'state'}\n"
        f"mail: {{from: {SENDER}, to: [{RECEIVER}]}}\n"
        f"smtp:\n  test: {{host: {relay.host}, port: {relay.port}, security: ssl, username: {SENDER}, "
        f"password_env: PW, ca_file: {relay.ca_file}, verify_with: box}}\n"
        f"imap:\n  box: {{host: localhost, port: {dovecot.imaps}, username: {RECEIVER}, "
        f"password_env: IMAP_PW, ca_file: {dovecot.ca.ca_file}}}\nwatchers: []\n")
    return config.load(path, environ={"PW": SENDER_PASSWORD, "IMAP_PW": RECEIVER_PASSWORD})


def _run(ca: LocalCA, idle: bool, probes: int, delay: float) -> tuple[list[float], list[float]]:
    found, whole = [], []
    with Dovecot(ca, idle=idle) as dovecot, tempfile.TemporaryDirectory() as tmp, \
            DeliveringSmtpServer("ssl", ca=ca, ca_file=ca.ca_file, dovecot=dovecot) as relay:
        relay.delay = delay
        cfg = _config(Path(tmp), relay, dovecot)
        for _ in range(probes):
            started = time.monotonic()
            result = verify(cfg, timeout=30)
            whole.append(time.monotonic() - started)
            if result.verdict != "inbox" or result.latency is None:
                raise SystemExit(f"probe not delivered: {result.lines()}")
            found.append(result.latency)
    return found, whole


def _bounce_scan(ca: LocalCA, messages: int) -> list[str]:
    """A mailbox of `messages` (one in 500 a Postfix DSN); scan it, add 10 more, scan again."""
    dsn = (Path(__file__).resolve().parent.parent / "tests/data/mail/postfix_dsn.eml").read_bytes()
    out = []
    with Dovecot(ca) as dovecot:
        for n in range(messages):
            dovecot.deliver(SENDER, dsn if n % 500 == 0 else
                            f"From: a@example.com\r\nSubject: ordinary {n}\r\n\r\nhello\r\n".encode())
        scanner = BounceScanner()
        with ImapClient(dovecot.account(user=SENDER)) as client:
            for label, extra in (("first scan", 0), ("second scan (+10 new)", 10),
                                 ("third scan (nothing new)", 0)):
                for n in range(extra):
                    dovecot.deliver(SENDER, dsn if n == 0 else b"Subject: new\r\n\r\nhi\r\n")
                started = time.monotonic()
                found = scanner.scan(client)
                out.append(f"{label:28} {time.monotonic() - started:6.3f} s   bounces {len(found):3}   "
                           f"messages fetched {scanner.fetched}")
        out += _daemon_scans(dovecot)
    return out


def _daemon_scans(dovecot: Dovecot) -> list[str]:
    """What `watch_bounces` pays each `bounce_every`: a new session (TLS, LOGIN, SELECT) and the
    scan from the position kept in the state directory."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        positions = Path(tmp) / "bounces.json"
        for label in ("daemon scan, first", "daemon scan, nothing new", "daemon scan, nothing new"):
            started = time.monotonic()
            scan = scan_mailbox(dovecot.account(user=SENDER), positions)
            scan.keep()
            found = scan.found
            out.append(f"{label:28} {time.monotonic() - started:6.3f} s   bounces {len(found):3}   "
                       f"(with login)")
    return out


def _line(name: str, found: list[float], whole: list[float]) -> str:
    return (f"{name:28} median {statistics.median(found):6.3f} s   min {min(found):6.3f}   "
            f"max {max(found):6.3f}   whole run median {statistics.median(whole):6.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--mailbox", type=int, default=10_000, help="messages for the bounce scan")
    parser.add_argument("--delay", type=float, default=0.3,
                        help="seconds the relay holds each delivery back, so the probe arrives while "
                             "notifier waits (default 0.3; 0 finds it on the first look)")
    args = parser.parse_args()
    ca = LocalCA()
    with tempfile.TemporaryDirectory() as tmp:
        ca.ca_file = write_ca_file(ca, Path(tmp))
        idle = _run(ca, True, args.probes, args.delay)
        polling = _run(ca, False, args.probes, args.delay)
        scans = _bounce_scan(ca, args.mailbox)
    print(f"{args.probes} probes each, relay delay {args.delay:g} s; accepted → found:")
    print(_line("IMAP IDLE", *idle))
    print(_line("polling (no IDLE)", *polling))
    print(f"polling waits {FIRST_POLL:g} s, then 1.5 times longer each round up to {MAX_POLL:g} s; "
          f"targets: IDLE median < 1 s, polling < its interval + 0.5 s.")
    print(f"bounce scan of a mailbox of {args.mailbox:,} messages (1 in 500 a DSN):")
    for line in scans:
        print(line)


if __name__ == "__main__":
    main()
