"""The `notifier` command. This is the one place where errors become messages and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import notifier
from notifier import cli_fleet, cli_history, cli_mailbox, cli_relay, logs, runstate, schema
from notifier import config as configmod
from notifier.cli_common import load, open_store
from notifier.config import Config, WatcherConfig
from notifier.console import Progress, colored_diff, use_color
from notifier.errors import (
    EXIT_BUG,
    EXIT_CHANGED,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PIPE,
    ConfigError,
    DeliveryError,
    NotifierError,
    StateError,
    UsageError,
)
from notifier.kinds import Kind, configure_kinds, filter_kinds, watcher_kinds
from notifier.passes import run_pass
from notifier.pipeline import Outcome, filtered
from notifier.safetext import visible
from notifier.secrets import redact
from notifier.statedir import MARKER_NAME, ONESHOT_WAIT, NoDaemon, StateDir, StateDirBusy
from notifier.store import Store, WatcherState

if TYPE_CHECKING:
    from notifier.alerts import Alerter
    from notifier.outbox import Report, Sender

# Rendering (jinja2), delivery and the scheduler are imported by the commands that use them:
# a plain `check` of 1,000 watchers stays several MB smaller and starts faster without them.

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """`notifier sendmail` (or notifier run as sendmail), else a subcommand of notifier's own.
    sendmail's options (-FCronDaemon, -oem) are no argparse options: it parses its own."""
    sendmail = cli_relay.sendmail_argv(sys.argv[1:] if argv is None else argv,
                                       sys.argv[0] if argv is None else "notifier")
    if sendmail is not None:
        from notifier.sendmail import sendmail_main  # noqa: PLC0415 - smtplib only for sendmail

        return sendmail_main(sendmail)
    return _command(argv)


def _command(argv: Sequence[str] | None) -> int:
    """Parse arguments, run the subcommand, and turn known errors into one line each."""
    args = _parser().parse_args(argv)  # the parser (every subcommand's) is not kept while a daemon runs
    logs.setup("debug" if args.debug else args.log_level or "warning", args.debug_smtp)
    if args.debug_imap:  # the IMAP/POP3 dialogue, LOGIN/AUTHENTICATE/PASS masked by notifier.receive
        logging.getLogger("notifier.imap").setLevel(logging.DEBUG)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found; fix them and run `notifier validate` again.",
              file=sys.stderr)
        return EXIT_CONFIG
    except NotifierError as exc:
        print(f"notifier: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `notifier check | head`: the reader has all it wanted. Point stdout at /dev/null so
        # the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except Exception as exc:
        if args.debug:
            raise
        print(f"notifier: unexpected {type(exc).__name__}: {redact(str(exc))}. This is a bug; "
              f"run again with --debug to see where, and report it.", file=sys.stderr)
        return EXIT_BUG


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before or after the command (`notifier -c X run` = `notifier run -c X`).

    On the subcommands their defaults are suppressed, so they only override when given.
    """
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("-c", "--config", type=Path, default=default(Path("watchers.yaml")),
                        help="path of watchers.yaml (default: ./watchers.yaml)")
    parser.add_argument("-s", "--state-dir", type=Path, default=default(None),
                        help="state directory; wins over $STATE_DIRECTORY and state_dir: in the file")
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="verbose logs, and tracebacks for bugs")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default=default(None))
    parser.add_argument("--debug-smtp", action="store_true", default=default(False),
                        help="log the SMTP dialogue (credentials masked)")
    parser.add_argument("--debug-imap", action="store_true", default=default(False),
                        help="log the IMAP/POP3 dialogue (credentials masked)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier",
                                     description="Watch things; email a diff when they change.")
    _global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {notifier.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(func=func)
        return p

    command("validate", cmd_validate, "check watchers.yaml and report every problem at once")
    p = command("check", cmd_check, "run watchers once and print what changed (a preview unless --send)")
    p.add_argument("names", nargs="*", metavar="NAME", help="watchers to run (default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help="record nothing and send nothing (the default without --send)")
    p.add_argument("--send", action="store_true",
                   help="record the new state and send its alerts, as the daemon would")
    p = command("run", cmd_run, "run the daemon: check on schedule, send alerts, reload on change")
    p.add_argument("--reinit", action="store_true",
                   help="accept the state database found (or start a new one) although it is not the "
                        "one this state directory held; see `state.id` in the README")
    command("reload", cmd_reload, "validate the config, then tell the running daemon to reload it")
    command("status", cmd_status, "show each watcher's schedule, last check, change, error; outbox counts")
    p = command("forget", cmd_forget, "delete the state and history of watchers removed from the config")
    p.add_argument("names", nargs="+", metavar="NAME", help="watchers no longer in watchers.yaml")
    p = command("outbox", cmd_outbox, "list pending, held and dead messages")
    p.add_argument("action", nargs="?", choices=["list", "retry"], default="list",
                   help="retry: make held and dead messages due again now")
    p = command("test-mail", cmd_test_mail, "send a test alert and report the server's answer")
    p.add_argument("--to", action="append", default=[], metavar="ADDR", help="recipient (repeatable)")
    cli_mailbox.add_commands(command)
    p = command("test-filter", cmd_test_filter, "fetch once and show the text after each filter")
    p.add_argument("name", metavar="NAME")
    p = command("kinds", cmd_kinds, "list watcher and filter kinds with their options")
    p.add_argument("--markdown", action="store_true", help="as the README's option tables")
    command("schema", cmd_schema, "print the JSON Schema of watchers.yaml")
    cli_history.add_commands(command)
    cli_relay.add_commands(command)
    cli_fleet.add_commands(command)
    return parser




def cmd_validate(args: argparse.Namespace) -> int:
    try:
        cfg = load(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        print(f"{len(exc.problems)} problem(s) found in {args.config}.")
        return 1
    for warning in cfg.warnings:
        print(f"warning: {warning}")
    print(f"{args.config} is valid: {len(cfg.watchers)} watcher(s).")
    return EXIT_OK


def _select(cfg: Config, names: Sequence[str]) -> list[WatcherConfig]:
    """The watchers named on the command line (all when none); a usage error for unknown names."""
    known = [w.name for w in cfg.watchers]
    for name in names:
        if cfg.watcher(name) is None:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known) or 'none'}."
            raise UsageError(f"no watcher named {name!r} in {cfg.path}; {hint}")
    return [w for w in cfg.watchers if not names or w.name in names]


def cmd_check(args: argparse.Namespace) -> int:
    """Without --send a preview: the stored state stays as it was, so a change seen here is
    still new to the daemon, which alerts on it as usual."""
    cfg = load(args)
    selected = _select(cfg, args.names)
    send = args.send and not args.dry_run
    store = open_store(cfg, StateDir(cfg.state_dir))  # SQLite here, or the fleet's PostgreSQL
    color = use_color(sys.stdout)
    progress = Progress(len(selected))
    statuses: Counter[str] = Counter()  # counts only: 20,000 outcomes (and diffs) are not kept
    alerts = 0
    started = time.monotonic()
    configure_kinds([w.watcher for w in selected], cfg.shared)
    try:
        alerter = _alerter(cfg) if send else None
        for outcome in run_pass(selected, cfg.workers, cfg.shared.per_host, store, alerter,
                                dry_run=not send):
            statuses[outcome.status] += 1
            alerts += outcome.alerts
            progress.clear()
            _print_outcome(outcome, color)
            progress.advance()
        progress.clear()
        print(_check_summary(statuses, alerts, time.monotonic() - started, send))
        if send:
            _send_queued(cfg, store, args.debug_smtp)
    finally:
        progress.clear()
        store.close()
        for kind in watcher_kinds().values():  # a browser started for these checks stops
            kind.shut_down()
    return _check_exit(set(statuses))


def _check_summary(statuses: Counter[str], alerts: int, seconds: float, sent: bool) -> str:
    """The last line of `check`: counts, time, and what happened to the state and alerts."""
    effect = (f"state recorded, {alerts} alert(s) queued" if sent else
              "preview: nothing recorded or sent, use --send to record and alert")
    return (f"checked {statuses.total()}, changed {statuses['changed']}, failed "
            f"{statuses['failed']}, took {seconds:.1f}s; {effect}.")


def _alerter(cfg: Config) -> Alerter:
    from notifier.alerts import Alerter  # noqa: PLC0415 - see the note at the imports

    return Alerter(cfg)


def _outbox_sender(cfg: Config, store: Store, debug_smtp: bool) -> Sender:
    from notifier.outbox import Sender  # noqa: PLC0415 - see the note at the imports

    return Sender(cfg, store, debug_smtp)


def _send_queued(cfg: Config, store: Store, debug_smtp: bool) -> None:
    """Deliver the outbox, unless a running daemon does: one sender per state directory, so a
    message is never sent by two processes. The daemon is told to send now (SIGUSR1)."""
    state = StateDir(cfg.state_dir)
    for _ in range(2):
        try:
            lock = state.acquire("check", wait=ONESHOT_WAIT)
        except StateDirBusy as busy:
            if busy.holder is None or not busy.holder.daemon:
                raise
            try:
                if busy.holder.ready:
                    state.signal_daemon(signal.SIGUSR1)
            except NoDaemon:
                continue  # it stopped just now: send them here
            print(f"outbox: {store.outbox_counts()['pending']} message(s) waiting; the running "
                  f"notifier (pid {busy.holder.pid}) sends them.")
            return
        old_umask = os.umask(0o077)  # Maildir files private, as the daemon's (checks are done)
        try:
            _print_report(_outbox_sender(cfg, store, debug_smtp).deliver(limit=10_000))
        finally:
            os.umask(old_umask)
            lock.release()
        return


def _print_report(report: Report) -> None:
    """What the round did; then the held and dead messages waiting in the outbox, including
    those from earlier runs that no round retries by itself, and how to deal with them."""
    print(f"outbox: {report.sent} sent, {report.retry} to retry, {report.held} held, {report.dead} dead")
    for error in dict.fromkeys(report.errors):
        print(f"  {error}")
    held, dead = report.waiting.get("held", 0), report.waiting.get("dead", 0)
    if held or dead:
        print(f"  {held} held and {dead} dead message(s) are waiting in the outbox: `notifier outbox` "
              "says why; fix that, then `notifier outbox retry` sends them again.")


def _print_outcome(outcome: Outcome, color: bool) -> None:
    if outcome.diff:
        sys.stdout.write(colored_diff(visible(outcome.diff.unified(f"{outcome.name} (old)",
                                                                   f"{outcome.name} (new)")), color))
    print(outcome.line(), flush=True)


def _check_exit(statuses: set[str]) -> int:
    if "failed" in statuses:
        return EXIT_FAILED
    if "changed" in statuses:
        return EXIT_CHANGED
    return EXIT_OK


def cmd_test_filter(args: argparse.Namespace) -> int:
    cfg = load(args)
    (wc,) = _select(cfg, [args.name])
    fetched = wc.watcher.fetch({})
    print(f"=== fetched from {wc.watcher.source()} ({len(fetched.text)} characters)")
    print(visible(fetched.text))

    def step(description: str, text: str) -> None:
        print(f"=== after {description} ({len(text)} characters)")
        print(visible(text))

    filtered(wc, fetched.text, step)
    return EXIT_OK


def cmd_kinds(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(schema.markdown())
        return EXIT_OK
    families: dict[str, Mapping[str, type[Kind]]] = {"watchers": watcher_kinds(), "filters": filter_kinds()}
    for family, registry in families.items():
        print(f"{family}:")
        for name, cls in sorted(registry.items()):
            shorthand = getattr(cls, "shorthand", None)
            short = f" (shorthand: {name}: <{shorthand}>)" if shorthand else ""
            print(f"  {name}: {cls.summary()}{short}")
            for opt in cls.options:
                default = opt.default_text()
                req = f", {default}" if default == "required" else f", default {default}" if default else ""
                print(f"      {opt.name} ({opt.type.name}{req}): {opt.doc}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from notifier.daemon import Daemon  # noqa: PLC0415 - see the note at the imports

    os.umask(0o077)  # like the shipped unit's UMask=: what the daemon writes (Maildir too) is private
    daemon = Daemon(args.config, debug_smtp=args.debug_smtp, state_dir=args.state_dir, reinit=args.reinit)
    if not args.log_level and not args.debug:
        logs.setup(daemon.cfg.log_level, args.debug_smtp)
    return daemon.run()


def cmd_reload(args: argparse.Namespace) -> int:
    cfg = load(args)
    if cfg.store is not None:  # a fleet: every daemon on the database hears it
        print(f"{args.config} is valid; {cli_fleet.reload_fleet(cfg)}.")
        return EXIT_OK
    try:  # only a process holding the state directory's lock is signalled, never a stale pid
        pid = StateDir(cfg.state_dir).signal_daemon(signal.SIGHUP).pid
    except NoDaemon as exc:
        raise NotifierError(f"no running notifier found for {args.config} ({exc}); start it with "
                            f"`notifier run`.") from None
    print(f"{args.config} is valid; asked notifier (pid {pid}) to reload it.")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Each watcher's state, and whether the running daemon runs the file on disk.

    Works while watchers.yaml has errors: the daemon keeps its last good configuration then,
    and this is where the user sees that (and why).
    """
    try:
        cfg: Config | None = load(args)
        problems: list[str] = []
    except ConfigError as exc:
        cfg, problems = None, [str(p) for p in exc.problems]
    state_dir = cfg.state_dir if cfg else configmod.locate_state_dir(args.config, args.state_dir)
    _print_daemon(state_dir, args.config, problems)
    if cfg is not None and cfg.store is not None:
        store: Store = open_store(cfg, StateDir(state_dir), readonly=True)
        for line in cli_fleet.fleet_lines(cfg, store):
            print(line)
    elif not StateDir(state_dir).db.exists():
        if (state_dir / MARKER_NAME).exists():
            raise NotifierError(f"{state_dir / 'state.db'} is missing although {state_dir} held a "
                                f"state database; restore it from a backup (or a rescued copy "
                                f"beside it), or start afresh with `notifier run --reinit`.")
        raise NotifierError(f"no state yet in {state_dir}; run `notifier check --send` or start "
                            f"`notifier run` first.")
    else:
        store = Store(StateDir(state_dir).db, readonly=True)
    try:
        states = store.states()
        counts = store.outbox_counts()
        receiving = _receiving(store, cfg)
    finally:
        store.close()
    now = time.time()
    for wc in cfg.watchers if cfg else ():
        st = states.get(wc.name)
        cron = wc.schedule.cron
        schedule = f"cron {cron.text}" if cron else f"every {_ago(wc.schedule.every)}"
        print(f"{wc.name} ({wc.kind}, {schedule})")
        print(f"    last check {_when(st.last_check if st else None, now)}, last change "
              f"{_when(st.last_change if st else None, now)}, next run {_when(next_run(wc, st), now)}")
        if st and st.failures:
            print(f"    failing {st.failures} time(s) in a row: {visible(st.last_error or '')}")
    if cfg is None:
        for name, st in sorted(states.items()):
            failing = f", failing {st.failures} time(s) in a row: {visible(st.last_error or '')}"
            print(f"{name}: last check {_when(st.last_check, now)}, last change {_when(st.last_change, now)}"
                  + (failing if st.failures else ""))
    print(f"outbox: {counts['pending']} pending, {counts['held']} held, {counts['dead']} dead")
    for line in receiving:
        print(visible(line))
    return EXIT_CONFIG if problems else EXIT_OK


def _receiving(store: Store, cfg: Config | None) -> list[str]:
    """Delivery probes and bounces for `status`; none from a database the daemon has not
    upgraded yet (status opens it read-only, so it cannot upgrade it itself)."""
    from notifier.lookback import receiving_lines  # noqa: PLC0415 - see the note at the imports

    try:
        return receiving_lines(store, time.time(), cfg.timezone if cfg else None)
    except StateError:
        return []


def _print_daemon(state_dir: Path, config: Path, problems: Sequence[str]) -> None:
    """Say which configuration the running daemon uses, and what it refused and why."""
    run = runstate.read(state_dir)
    holder = StateDir(state_dir).holder()  # the kernel's word, unlike a pid in a file
    if holder is not None and holder.ready and (run is None or run.pid != holder.pid):
        # running.json could not be written (a full disk?); the lock file still tells its health
        print(f"daemon: running (pid {holder.pid})\n{holder.health_line()}")
        return
    if holder is None or not holder.ready or run is None:
        print(holder.describe() if holder else "daemon: not running")
        if problems:
            print(f"config: {config} has {len(problems)} problem(s); `notifier run` would refuse to "
                  f"start. First: {problems[0]}")
        return
    print(f"daemon: running (pid {run.pid}), configuration loaded {_when(run.loaded_at, time.time())}")
    print(holder.health_line())
    if run.relay:
        print(f"relay: {run.relay}")
    on_disk = runstate.digest(config)
    if on_disk == run.digest:
        print(f"config: the daemon runs {config} as it is on disk")
    elif run.refused_digest is not None and on_disk == run.refused_digest:
        print(f"config: {config} on disk was REFUSED {_when(run.refused_at, time.time())}; the daemon "
              f"keeps its last good configuration. Fix the file and save it again:")
        for problem in run.problems:
            print(f"    {problem}")
    else:
        print(f"config: {config} on disk differs from the running configuration; the daemon picks "
              f"up a saved file within a few seconds (or run `notifier reload`).")


def next_run(wc: WatcherConfig, st: WatcherState | None) -> float | None:
    """When the daemon will check next, derived from the schedule and the last check."""
    now = time.time()
    if st is None or wc.schedule.overdue(st.last_check, now):
        return now  # new or overdue: the daemon runs it at once
    return wc.schedule.at_or_after(wc.name, now)


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    return f"{_ago(abs(now - ts))} {'ago' if ts <= now else 'from now'}"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def cmd_forget(args: argparse.Namespace) -> int:
    """History follows a name, so a removed watcher's state stays until it is forgotten: a
    watcher added back under that name later resumes from it instead of re-baselining."""
    cfg = load(args)
    configured = [n for n in args.names if cfg.watcher(n) is not None]
    if configured:
        raise UsageError(f"{', '.join(configured)} is still in {cfg.path}; remove it from there first "
                         f"(forgetting a configured watcher would silently re-baseline it).")
    store = open_store(cfg, StateDir(cfg.state_dir))  # SQLite here, or the fleet's PostgreSQL
    try:
        stored = list(store.states())
        for name in args.names:
            if name not in stored:
                close = difflib.get_close_matches(name, stored, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "`notifier status` lists what is kept."
                raise UsageError(f"no state is kept for a watcher named {name!r}; {hint}")
        store.forget(args.names)
    finally:
        store.close()
    print(f"forgot {len(args.names)} watcher(s): {', '.join(args.names)}.")
    return EXIT_OK


def cmd_outbox(args: argparse.Namespace) -> int:
    cfg = load(args)
    store = open_store(cfg, StateDir(cfg.state_dir))  # SQLite here, or the fleet's PostgreSQL
    try:
        if args.action == "retry":
            print(f"{store.release(('held', 'dead'))} message(s) will be sent on the next round.")
            with contextlib.suppress(NoDaemon):  # a running daemon's next round is now
                StateDir(cfg.state_dir).signal_daemon(signal.SIGUSR1)
            return EXIT_OK
        rows = store.outbox()
    finally:
        store.close()
    from notifier.outbox import waiting_reason  # noqa: PLC0415 - see the note at the imports

    now = time.time()
    for row in rows:
        print(f"{row.state:8} {row.kind:9} {row.watcher or '-':20} attempts={row.attempts} "
              f"to={','.join(row.recipients)} {row.message_id}")
        print(f"         {waiting_reason(row, now, cfg.timezone)}")  # held/dead: with the error
        if row.last_error and row.state == "pending":
            print(f"         last error: {visible(row.last_error)}")
    print(f"{len(rows)} message(s) in the outbox.")
    return EXIT_OK


def cmd_test_mail(args: argparse.Namespace) -> int:
    cfg = load(args)
    store = open_store(cfg, StateDir(cfg.state_dir))  # SQLite here, or the fleet's PostgreSQL
    try:
        queued = _alerter(cfg).test(time.time(), args.to)
        sender = _outbox_sender(cfg, store, args.debug_smtp)
        transport = sender.transport(queued.account)
        try:
            with transport:
                refused = transport.send(queued.sender, queued.recipients, queued.body)
        except DeliveryError as exc:
            # Sent once, in the foreground: unlike the outbox, nothing here tries again.
            raise DeliveryError(f"{exc} The test message was not sent; fix that and run "
                                f"`notifier test-mail` again.") from None
    finally:
        store.close()
    accepted = [r for r in queued.recipients if r not in refused]
    print(f"{transport.describe()} accepted the test message for {', '.join(accepted) or 'nobody'}: "
          f"{transport.last_reply}")
    for addr, reason in refused.items():
        print(f"refused {addr}: {reason}")
    return EXIT_FAILED if refused else EXIT_OK



def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema.render())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
