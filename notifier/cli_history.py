"""The commands that look back: the send log, statistics, kept versions, renaming."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import sys
import time
from pathlib import Path

from notifier.cli_common import Register, load, open_store
from notifier.config import Config, WatcherConfig
from notifier.console import colored_diff, use_color
from notifier.errors import (
    EXIT_OK,
    NotifierError,
    UsageError,
)
from notifier.safetext import visible
from notifier.statedir import StateDir
from notifier.store import Store, Version


def add_commands(command: Register) -> None:
    """The commands that look back: the send log, statistics, kept versions, renaming."""
    since = "a duration back from now (7d, 12h) or a time (2026-11-30T10:00)"
    p = command("log", cmd_log, "list the send log: each message that left the outbox, and how")
    p.add_argument("message_id", nargs="?", metavar="MESSAGE-ID", help="show this entry whole")
    p.add_argument("--watcher", metavar="NAME", help="only this watcher's messages")
    p.add_argument("--since", metavar="WHEN", help=f"only entries since WHEN: {since}")
    p.add_argument("--status", choices=["sent", "partial", "dead", "expired"], help="only these")
    p.add_argument("--json", action="store_true", help="as a JSON array")
    p.add_argument("--raw", action="store_true", help="with MESSAGE-ID: the message as sent (keep_sent)")
    p = command("stats", cmd_stats, "checks, changes, failures and deliveries per watcher and account")
    p.add_argument("--since", default="30d", metavar="WHEN", help=f"{since}; default 30d")
    p.add_argument("--json", action="store_true", help="as JSON")
    p = command("history", cmd_history, "list a watcher's kept versions with lines added and removed")
    p.add_argument("name", metavar="NAME")
    version = "a number from `notifier history`, 0 the newest, -1 the one before, or a time"
    p = command("show", cmd_show, "print one kept version of a watcher (default: the newest)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("version", nargs="?", default="0", metavar="VERSION", help=version)
    p = command("diff", cmd_diff, "diff two kept versions of a watcher (default: its last change)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("older", nargs="?", default="-1", metavar="A", help=f"{version}; default -1")
    p.add_argument("newer", nargs="?", default="0", metavar="B", help="the same; default 0, the newest")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write the HTML a change alert carries")
    p = command("rename", cmd_rename, "give a watcher's state, history and send log to a new name")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")


def _looking_back(cfg: Config) -> Store:
    """The state database for the commands that look back, brought up to date if it is old."""
    state = StateDir(cfg.state_dir)
    if cfg.store is not None:  # the fleet's PostgreSQL
        return open_store(cfg, state)
    if not state.db.exists():
        raise NotifierError(f"no state yet in {cfg.state_dir}; run `notifier check --send` or start "
                            f"`notifier run` first.")
    return state.open_store()


def cmd_log(args: argparse.Namespace) -> int:
    from notifier import lookback, versions  # noqa: PLC0415 - see the note at the imports

    cfg = load(args)
    with contextlib.closing(_looking_back(cfg)) as store:
        if args.message_id:
            entry = store.log_entry(args.message_id)
            if entry is None:
                raise UsageError(f"the send log has no entry for {args.message_id}; `notifier log` "
                                 f"lists them (entries older than log_retention are gone).")
            if args.raw:
                if entry.body is None:
                    raise UsageError(f"the message {entry.message_id} was not kept; set keep_sent: true "
                                     f"to keep the messages sent from now on.")
                sys.stdout.buffer.write(entry.body)
            else:
                text = (lookback.log_json([entry], cfg.timezone) if args.json
                        else "\n".join(lookback.log_entry_lines(entry, cfg.timezone)))
                print(text)
            return EXIT_OK
        since = lookback.parse_since(args.since, time.time(), cfg.timezone) if args.since else None
        if args.watcher:
            versions.check_name(args.watcher, cfg, [*store.states(), *store.log_watchers()])
        if args.json:
            print(lookback.log_json(store.log_entries(since, args.watcher, args.status), cfg.timezone))
            return EXIT_OK
        lines = lookback.log_lines(store, since, args.watcher, args.status, cfg.timezone)
    count = len(lines) - 1  # under the header
    sys.stdout.write("\n".join([*lines, f"{count} entr{'y' if count == 1 else 'ies'}."]) + "\n")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from notifier import lookback  # noqa: PLC0415 - see the note at the imports

    cfg = load(args)
    now = time.time()
    since = lookback.parse_since(args.since, now, cfg.timezone)
    with contextlib.closing(_looking_back(cfg)) as store:
        sparklines = sys.stdout.isatty() and not args.json
        figures = lookback.gather(store, [w.name for w in cfg.watchers], since, now,
                                  days=args.json or sparklines)
    if args.json:
        print(lookback.stats_json(figures, cfg.timezone))
    else:
        print("\n".join(lookback.stats_lines(figures, cfg.timezone, sparklines)))
    return EXIT_OK


def _versions(cfg: Config, name: str) -> tuple[WatcherConfig | None, list[Version]]:
    from notifier import versions  # noqa: PLC0415 - see the note at the imports

    with contextlib.closing(_looking_back(cfg)) as store:
        wc = versions.check_name(name, cfg, store.states())
        return wc, store.versions(name)


def cmd_history(args: argparse.Namespace) -> int:
    from notifier import versions  # noqa: PLC0415 - see the note at the imports

    cfg = load(args)
    wc, kept = _versions(cfg, args.name)
    versions.need(args.name, kept)
    print(f"{'version':>8}  {'taken':19}  {'bytes':>10}  {'added':>6}  {'removed':>7}")
    for row in versions.listing(kept):
        counts = ("-", "-") if row.added is None else (f"+{row.added}", f"-{row.removed}")
        taken = versions.show_time(row.version.taken_at, cfg.timezone)
        print(f"{'#' + str(row.version.number):>8}  {taken}  {row.size:>10,}  {counts[0]:>6}  {counts[1]:>7}")
    limit = f" (history: {wc.history})" if wc else " (no longer in the configuration)"
    print(f"{len(kept)} version(s) of {args.name} kept{limit}; `notifier diff {args.name} A B` compares two.")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from notifier import versions  # noqa: PLC0415 - see the note at the imports

    cfg = load(args)
    _, kept = _versions(cfg, args.name)
    sys.stdout.write(visible(versions.resolve(args.name, kept, args.version, cfg.timezone).text))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from notifier import versions  # noqa: PLC0415 - see the note at the imports

    cfg = load(args)
    wc, kept = _versions(cfg, args.name)
    versions.need(args.name, kept, 2)
    zone = (wc.timezone if wc else None) or cfg.timezone
    older, newer = (versions.resolve(args.name, kept, spec, zone) for spec in (args.older, args.newer))
    diff = versions.compare(wc, older, newer)
    if diff:
        sys.stdout.write(colored_diff(visible(diff.unified(versions.label(args.name, older, zone),
                                                           versions.label(args.name, newer, zone))),
                                      use_color(sys.stdout)))
    else:
        print(f"no differences between #{older.number} and #{newer.number} of {args.name}"
              + (" that its additions_only/deletions_only shows" if wc and (wc.additions_only or
                                                                         wc.deletions_only) else "."))
    if args.html:
        args.html.write_text(versions.html(cfg, args.name, wc, older, newer, diff), encoding="utf-8")
        print(f"wrote the HTML diff to {args.html}", file=sys.stderr)
    return EXIT_OK


def cmd_rename(args: argparse.Namespace) -> int:
    """A watcher's name is its identity; this moves everything kept under one name to another."""
    cfg = load(args)
    if args.old == args.new:
        raise UsageError("the old and the new name are the same.")
    with contextlib.closing(_looking_back(cfg)) as store:
        stored = list(store.states())
        if args.old not in stored:
            close = difflib.get_close_matches(args.old, stored, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "`notifier status` lists what is kept."
            raise UsageError(f"no state is kept for a watcher named {args.old!r}; {hint}")
        store.rename(args.old, args.new)
    print(f"renamed {args.old!r} to {args.new!r}: its state, kept versions, check counts, send log "
          f"entries and queued mail now go by the new name.")
    if cfg.watcher(args.old) is not None and cfg.watcher(args.new) is None:
        print(f"Now rename it in {cfg.path} (name: {args.new}); a running notifier picks that up. If it "
              f"checks {args.old!r} before then, `notifier forget {args.old}` drops the new baseline "
              f"that records.")
    return EXIT_OK
