"""The local mail relay's throughput: messages per second it accepts, and end to end to the
provider, beside the same messages sent straight to the provider with smtplib.

Issue 13's benchmark: 10 KB messages, 10 concurrent clients, loopback, durable (each message is
committed to the outbox before its 250). Target: relaying adds at most 20 % to the end-to-end
time of sending straight.

How it is measured:

* The relay runs where users run it: in a real `notifier run` process, which also delivers what
  it accepts (one sender thread, one connection per batch, as for alerts). The provider is the
  project's test server (implicit TLS, AUTH) in a child process (see bench/mail_throughput.py,
  whose server child this reuses), so neither side measures the other's event loop.
* Ten client threads each open one connection to the relay and send their share of the
  messages back to back. "accepted" ends at the last 250; "end to end" at the provider's
  acceptance of the last message, polled every 2 ms.
* The floor: the same messages, the same ten threads, each with one implicit-TLS connection
  straight to the provider (login once, then send), no notifier in between.

Nothing is asserted; the figures are printed for a person to judge.

    .venv/bin/python bench/relay.py                  # 1,000 messages
    .venv/bin/python bench/relay.py --messages 2000
"""

from __future__ import annotations

import argparse
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(1, str(BENCH))

from mail_throughput import SmtpChild  # noqa: E402 - the provider in a child process

CLIENTS = 10
SIZE = 10 * 1024
POLL = 0.002
START_TIMEOUT = 30.0


def message(n: int, sender: str) -> bytes:
    """A 10 KB plain-text message, numbered so every one is distinct."""
    head = f"From: Job {n} <{sender}>\r\nTo: ops@corp.example\r\nSubject: report {n}\r\n\r\n".encode()
    line = b"0123456789abcdef" * 4 + b"\r\n"
    return head + line * ((SIZE - len(head)) // len(line))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(directory: Path, smtp: SmtpChild, port: int, connections: int) -> Path:
    path = directory / "watchers.yaml"
    path.write_text(
        f"smtp: {{provider: {{host: 127.0.0.1, port: {smtp.port}, security: ssl, "
        f"username: {smtp.username}, password_env: PW, ca_file: {smtp.ca_file}, "
        f"connections: {connections}}}}}\n"
        f"mail: {{to: [admin@example.com]}}\nrelay: {{listen: '127.0.0.1:{port}'}}\nwatchers: []\n")
    return path


def in_parallel(count: int, send: Callable[[list[int]], None], clients: int = CLIENTS) -> float:
    """Run `send` on `clients` threads, message numbers dealt out evenly; seconds it took."""
    shares = [list(range(i, count, clients)) for i in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, shares))
    return time.perf_counter() - started


def wait_received(smtp: SmtpChild, count: int, since: float) -> float:
    """Seconds from `since` (perf_counter) until the provider has `count` messages."""
    while smtp.stats()[0] < count:
        time.sleep(POLL)
    return time.perf_counter() - since


def straight(smtp: SmtpChild, count: int, clients: int = CLIENTS) -> float:
    """The floor: each of `clients` threads logs in to the provider once and sends its share."""
    context = ssl.create_default_context(cafile=smtp.ca_file)

    def send(numbers: list[int]) -> None:
        with smtplib.SMTP_SSL("127.0.0.1", smtp.port, context=context, timeout=60) as client:
            client.login(smtp.username, smtp.password)
            for n in numbers:
                client.sendmail(smtp.username, ["ops@corp.example"], message(n, smtp.username))

    before = smtp.stats()[0]
    started = time.perf_counter()
    in_parallel(count, send, clients)
    return wait_received(smtp, before + count, started)


def relayed(smtp: SmtpChild, directory: Path, count: int, connections: int) -> tuple[float, float]:
    """(seconds until the relay accepted all, seconds until the provider had all)."""
    port = free_port()
    config = write_config(directory, smtp, port, connections)
    log = (directory / "daemon.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "notifier.cli", "-c", str(config), "run"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=BENCH.parent,
                              env={**os.environ, "PW": smtp.password})
    try:
        _wait_listening(port)

        def send(numbers: list[int]) -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                for n in numbers:
                    client.sendmail(f"job{n}@host1", ["ops@corp.example"], message(n, f"job{n}@host1"))

        before = smtp.stats()[0]
        started = time.perf_counter()
        accepted = in_parallel(count, send)
        return accepted, wait_received(smtp, before + count, started)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                if probe.recv(3) == b"220":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon's relay did not start listening; see daemon.log")
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=1,
                        help="the account's `connections` (the relay's delivery lanes)")
    args = parser.parse_args(argv)
    count = args.messages
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp, SmtpChild(Path(tmp)) as smtp:
        direct = straight(smtp, count)
        one = straight(smtp, count, clients=1)
        accepted, end_to_end = relayed(smtp, Path(tmp), count, args.connections)
    print(f"{count} messages of {SIZE // 1024} KB, {CLIENTS} concurrent clients, loopback; "
          f"the relay delivers over {args.connections} connection(s)")
    for what, seconds in (("relay accepted (durable, in `notifier run`)", accepted),
                          ("relay end to end to the provider", end_to_end),
                          ("straight to the provider, 10 clients", direct),
                          ("straight to the provider, 1 connection", one)):
        print(f"  {what + ':':45} {seconds:7.2f} s  {count / seconds:7.0f} msg/s")
    print(f"  relaying adds {100 * (end_to_end / direct - 1):+.0f} % to the end-to-end time of 10 "
          f"clients straight (target: at most +20 %), {100 * (end_to_end / one - 1):+.0f} % to one "
          "connection's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
