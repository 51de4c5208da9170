"""The relay's command lines: `notifier relay quarantine`, and what a `notifier sendmail`
command line (or notifier run as sendmail) asks for.

`sendmail` takes the options programs actually pass — cron's `-i -FCronDaemon -B8BITMIME -oem
user` among them. The command line is read here, at every start; the message is read and
handed over by notifier.sendmail, imported only for sendmail (smtplib and the email package's
header parsing are 1.4 MiB a daemon or another command would otherwise carry).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from notifier.cli_common import Register, existing_store, load
from notifier.errors import EXIT_OK, UsageError
from notifier.relaylog import Quarantined

# Options that take a value (attached, "-FCronDaemon", or as the next argument); those that
# notifier has no use for are accepted and ignored, as other sendmail replacements do.
_WITH_VALUE = frozenset("fFrBCNRVXLhop")
_FLAGS = frozenset("tivmnUGS")
_GLOBAL = {"-c": "config", "--config": "config", "-s": "state_dir", "--state-dir": "state_dir"}


@dataclass
class Invocation:
    """What a sendmail command line asks for."""

    sender: str | None = None  # -f / -r
    fullname: str | None = None  # -F
    extract: bool = False  # -t: recipients from To, Cc and Bcc too
    dot_ends: bool = True  # a line "." ends the message unless -i / -oi
    smtp: bool = False  # -bs: speak SMTP on stdin and stdout
    config: Path | None = None  # -C, or notifier's own -c before `sendmail`
    state_dir: Path | None = None
    recipients: list[str] = field(default_factory=list)
    problem: UsageError | None = None  # what is wrong with the command line, said by sendmail_main


def sendmail_argv(argv: Sequence[str], program: str) -> Invocation | None:
    """The sendmail invocation in a command line, or None when it asks for another command:
    `notifier [-c FILE] [-s DIR] sendmail ARGS`, or any ARGS when run under the name sendmail."""
    found = Invocation()
    rest = list(argv)
    if Path(program).name not in ("sendmail", "notifier-sendmail"):
        while rest and rest[0] in _GLOBAL and len(rest) > 1:
            setattr(found, _GLOBAL[rest[0]], Path(rest[1]))
            rest = rest[2:]
        if not rest or rest[0] != "sendmail":
            return None
        rest = rest[1:]
    try:
        return _parse(rest, found)
    except UsageError as exc:
        found.problem = exc
        return found


def _parse(args: list[str], found: Invocation) -> Invocation:
    """sendmail's own options, as its man page has them."""
    values = iter(args)
    for arg in values:
        if arg == "--":
            found.recipients += list(values)
        elif not arg.startswith("-") or arg == "-":
            found.recipients.append(arg)
        elif arg[1] in _WITH_VALUE:
            value = arg[2:] or next(values, "")
            _option(found, arg[1], value)
        elif arg[1] == "b":
            if arg[2:] not in ("m", "s"):
                raise UsageError(f"sendmail mode {arg} is not supported; notifier sendmail only "
                                 "sends (-bm, the default) or speaks SMTP on stdin (-bs).")
            found.smtp = arg == "-bs"
        elif arg[1] in _FLAGS and all(c in _FLAGS for c in arg[1:]):
            found.extract |= "t" in arg
            found.dot_ends &= "i" not in arg
        else:
            raise UsageError(f"the sendmail option {arg} is not supported; see the README's "
                             "\"Local mail relay\" section for the ones that are.")
    return found


def _option(found: Invocation, letter: str, value: str) -> None:
    if letter in "fr":
        found.sender = value
    elif letter == "F":
        found.fullname = " ".join(value.split())  # one line: a newline would start a header
    elif letter == "C":
        found.config = Path(value)
    elif letter == "o" and value in ("i", "i=true"):
        found.dot_ends = False
    # -B (body type), -oem / -oee / -odb (error and delivery modes), -N, -R, -V, -X, -L, -h, -p:
    # nothing to do; errors always go to stderr and the exit status.


# -- notifier relay quarantine ---------------------------------------------------------------

def add_commands(command: Register) -> None:
    p = command("relay", cmd_relay, "the local mail relay's quarantine: list, show, release or "
                "delete messages a screening rule refused")
    p.add_argument("what", choices=["quarantine"])
    p.add_argument("action", nargs="?", choices=["list", "show", "release", "delete"], default="list")
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="the numbers `quarantine` lists")


def cmd_relay(args: argparse.Namespace) -> int:
    cfg = load(args)
    store = existing_store(cfg, f"there is no quarantine to look at. Set `state_dir:` in {cfg.path} "
                           f"to the daemon's state directory (/var/lib/notifier under the shipped unit).")
    try:
        if args.action != "list":
            _check_ids(store.quarantined(args.ids), args.ids, args.action)
        actions: dict[str, Callable[[], str]] = {
            "list": lambda: _listing(store.quarantined()),
            "show": lambda: "\n\n".join(_shown(q) for q in store.quarantined(args.ids)),
            "release": lambda: (f"released {len(store.quarantine_release(args.ids, time.time()))} "
                                "message(s) into the outbox; the daemon sends them on its next round."),
            "delete": lambda: f"deleted {store.quarantine_delete(args.ids)} message(s).",
        }
        print(actions[args.action]())
    finally:
        store.close()
    return EXIT_OK


def _check_ids(found: Sequence[Quarantined], ids: Sequence[int], action: str) -> None:
    """Every number given names a quarantined message: a typo must not pass for "done"."""
    if not ids:
        raise UsageError(f"name the messages to {action} by the numbers `notifier relay quarantine` lists.")
    missing = sorted(set(ids) - {q.id for q in found})
    if missing:
        raise UsageError(f"the quarantine holds no message {', '.join(map(str, missing))}; "
                         f"`notifier relay quarantine` lists the numbers it holds.")


def _shown(q: Quarantined) -> str:
    """One quarantined message: why it was refused, its envelope, then the message itself."""
    m = q.message
    return (f"message {q.id}, refused by rule {q.rule}: {q.reason}\n"
            f"client {q.client}, {datetime.fromtimestamp(q.created):%Y-%m-%d %H:%M:%S}, account "
            f"{m.account or '-'}\nenvelope: {m.sender or '<>'} → {', '.join(m.recipients)}\n\n"
            + m.body.decode("utf-8", "replace"))


def _listing(items: Sequence[Quarantined]) -> str:
    lines = [f"{q.id:>5}  {datetime.fromtimestamp(q.created):%Y-%m-%d %H:%M}  {q.client:<12} "
             f"{q.rule:<20} {q.message.sender} → {', '.join(q.message.recipients)}" for q in items]
    return "\n".join(lines) if lines else "The quarantine is empty."
