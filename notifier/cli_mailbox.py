"""The commands for the receiving side: verify-delivery, inbox and bounces."""

from __future__ import annotations

import argparse
import signal
import time
from datetime import datetime
from pathlib import Path

from notifier.cli_common import Register, load, open_store
from notifier.errors import (
    EXIT_OK,
    UsageError,
)
from notifier.statedir import NoDaemon, StateDir


def add_commands(command: Register) -> None:
    """The commands that read the receiving side: probes, mailboxes, bounces."""
    p = command("verify-delivery", cmd_verify_delivery, "send a probe alert and find it in the "
                "receiving mailbox: exit 0 inbox, 1 junk, 2 not found, 3 bounced")
    p.add_argument("--account", metavar="NAME", help="smtp account to probe (default: the default one)")
    p.add_argument("--to", metavar="ADDR", help="recipient (default: the receiving mailbox's login)")
    p.add_argument("--timeout", type=_duration, default=180.0, metavar="DURATION",
                   help="how long to look for it after it was accepted (default 3m)")
    p.add_argument("--keep", action="store_true", help="leave the probe in the mailbox")
    p = command("inbox", cmd_inbox, "list the newest mail in a receiving account, or show one")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("uid", nargs="?", metavar="UID", help="for show: the number `inbox` lists")
    p.add_argument("--account", metavar="NAME", help="imap or pop3 account (default: the only one)")
    p.add_argument("--folder", default="INBOX", help="IMAP folder (default INBOX)")
    p.add_argument("--limit", type=int, default=20, help="how many to list (default 20)")
    p.add_argument("--from", dest="sender", metavar="TEXT", help="only mail whose From contains TEXT")
    p.add_argument("--subject", metavar="TEXT", help="only mail whose Subject contains TEXT")
    p.add_argument("--since", type=_date, metavar="YYYY-MM-DD", help="only mail from this day on")
    p.add_argument("--save-attachments", type=Path, metavar="DIR",
                   help="for show: save attachments into DIR (safe names, never overwriting)")
    p = command("bounces", cmd_bounces, "scan the sending account's own mailbox for bounces of "
                "notifier's mail (only what arrived since the last scan); exit 3 when there are some")
    p.add_argument("--account", metavar="NAME", help="smtp account whose bounces to look for")
    p.add_argument("--mailbox", metavar="NAME", help="imap account to scan (default: the sender's own)")


def _duration(text: str) -> float:
    from notifier.options import Duration  # noqa: PLC0415 - only these commands parse durations

    try:
        return float(Duration().parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _date(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-12-01, got {text!r}") from None


def cmd_verify_delivery(args: argparse.Namespace) -> int:
    """A 250 from the server is not an alert in the inbox: send a probe and go and look."""
    from notifier.verify import verify  # noqa: PLC0415 - see the note at the imports

    cfg = load(args)
    result = verify(cfg, args.account, args.to, args.timeout, args.keep, args.debug_smtp)
    for line in result.lines():
        print(line)
    return result.exit_code


def cmd_inbox(args: argparse.Namespace) -> int:
    from notifier import reading  # noqa: PLC0415 - see the note at the imports

    cfg = load(args)
    box = reading.mailbox(cfg, args.account)
    if args.action == "show":
        if not args.uid:
            raise UsageError("`notifier inbox show` needs the UID of a message; `notifier inbox` lists them.")
        for line in reading.show(reading.fetch(box, args.uid, args.folder), args.save_attachments):
            print(line)
        return EXIT_OK
    for listed in reading.listing(box, args.limit, args.sender, args.subject, args.since, args.folder):
        print(listed.line())
    return EXIT_OK


def cmd_bounces(args: argparse.Namespace) -> int:
    """Bounces come back to the sender's own mailbox, minutes after the server said 250."""
    from notifier import bounces, mailwatch  # noqa: PLC0415 - see the note at the imports

    cfg = load(args)
    box = bounces.sender_mailbox(cfg, args.account, args.mailbox)
    state = StateDir(cfg.state_dir)
    # The daemon's store (brought up to date, if it is old); none when there is no state yet.
    store = open_store(cfg, state) if cfg.store is not None or state.db.exists() else None
    scan = bounces.scan_mailbox(box, cfg.state_dir / mailwatch.POSITIONS)
    found = scan.found
    ours = 0
    try:
        # Marked in the send log and alerted about as the daemon would; only then is the scan
        # position (shared with the daemon) moved on, so the daemon will not see these again.
        marked = mailwatch.record(cfg, store, found, time.time()) if store else []
        if store is not None:
            scan.keep()
        alerts = sum(alerted for _, alerted in marked)
        for bounce in found:
            sent = next((e for mid in bounce.message_ids if store and (e := store.log_entry(mid))), None)
            ours += sent is not None
            what = (f"{sent.message_id} ({sent.kind} alert of {sent.watcher or '-'}: {sent.subject})" if sent
                    else f"{', '.join(bounce.message_ids) or 'a message'} (not in the send log)")
            to = f" to {', '.join(bounce.recipients)}" if bounce.recipients else ""
            print(f"bounced: {what}{to}: {bounce.reason}")
    finally:
        if store is not None:
            store.close()
    print(f"{len(found)} bounce(s) in {box.name} since the last scan, {ours} of mail notifier sent.")
    if store is None:
        print(f"There is no state database in {cfg.state_dir}, so nothing was recorded and the next "
              f"scan starts at the same place; set `state_dir:` to the daemon's state directory.")
    if alerts:
        print(f"{alerts} alert(s) about them queued; {_sent_by(state)}")
    return 3 if ours else EXIT_OK


def _sent_by(state: StateDir) -> str:
    """Who delivers what a one-shot command queued: the running daemon (told now), or the next
    `notifier check --send` or `notifier run`."""
    try:
        holder = state.signal_daemon(signal.SIGUSR1)
    except NoDaemon:
        return "`notifier check --send` or `notifier run` sends them."
    return f"the running notifier (pid {holder.pid}) sends them now."
