"""`notifier run`: the long-running process that checks on schedule and delivers the outbox.

Threads: checks run from a timetable of their own (notifier.schedule.Timetable: one timer
thread and a bounded pool of workers, each watcher on its own schedule; a url check runs on
the event loop that carries its fetch instead, so no worker waits for it). The daemon's own
rounds run from three more: the outbox sender on one worker, digests, housekeeping (heartbeat,
config-file watch) and a fleet's claims on another, and delivery probes and bounce scans on
a third, so slow watchers can never starve delivery. The main thread only waits for signals
and reloads.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from notifier import config as configmod
from notifier import logs, runstate, systemd
from notifier.config import WatcherConfig
from notifier.errors import ConfigError, StateError
from notifier.health import Health
from notifier.kinds import configure_kinds, watcher_kinds
from notifier.outbox import Sender
from notifier.pipeline import Outcome, check, check_on_loop
from notifier.schedule import Grid, Timetable, stable_fraction
from notifier.statedir import DAEMON, ONESHOT_WAIT, STARTING, StateDir
from notifier.store import PRUNE_BATCH, Store
from notifier.watchers import _loop

if TYPE_CHECKING:  # imported where a PostgreSQL store is configured: psycopg is ~20 MB
    from collections.abc import Sequence

    from notifier.alerts import Alerter, Built
    from notifier.attachments import Attachment
    from notifier.diff import Diff
    from notifier.fleet import Fleet
    from notifier.relay import RelayService
    from notifier.store import Queued, WatcherState

log = logging.getLogger(__name__)

OUTBOX_EVERY = 5.0  # seconds between outbox rounds when nothing wakes the sender sooner
CONFIG_POLL = 1.0  # seconds between looks at watchers.yaml's mtime
DEBOUNCE = 1.0  # an edited config must be unchanged this long before it is reloaded
STARTUP_SPREAD = 30.0  # overdue checks at start are spread over up to this many seconds...
SPREAD_PER_WATCHER = 0.03  # ...and 30 ms per watcher, so a small config starts checking at once
SHUTDOWN_TIMEOUT = 20.0  # running checks get this long to finish on SIGTERM
DIGEST_POLL = 1.0  # seconds between looks for digests that are due
OUTBOX_BATCH = 200  # messages per delivery round; a round repeats while more are due
DELIVER_LINGER = 0.5  # seconds a finished round waits for more mail, its connections still open
CHECKPOINT_EVERY = 60.0  # seconds between WAL truncations, so the WAL gives its space back
PRUNE_EVERY = 600.0  # seconds between looks for expired send log entries, when none were left
PRUNE_BUDGET = 0.2  # seconds of pruning per housekeeping round at most...
PRUNE_PAUSE = 0.01  # ...with this pause after each batch, for the writes waiting for the database
M_ARENA_MAX = -8  # glibc mallopt parameter
FLEET_POLL = 1.0  # seconds between a fleet daemon's claims of due checks (notifier.fleet)
RECEIVING_WORKERS = 2  # delivery probes and bounce scans running at once (see notifier.mailwatch)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas before the thread pools start.

    Each check thread otherwise gets an arena that keeps freed page-parsing memory: about
    10 MB at 1,000 watchers (bench/daemon_idle.py). An I/O-bound daemon needs few arenas.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


class LazyAlerts:
    """The daemon's pipeline.Alerts: notifier.alerts (Jinja and the MIME code, ~2 MiB of a
    daemon's memory) is imported at the first alert, not at start, since most checks alert
    nobody. Two checks racing to the first alert may each build an Alerter; one is kept."""

    def __init__(self, cfg: configmod.Config) -> None:
        self.cfg = cfg
        self._alerter: Alerter | None = None

    def get(self) -> Alerter:
        if self._alerter is None:
            from notifier.alerts import Alerter  # noqa: PLC0415 - jinja2 only once an alert is due

            self._alerter = Alerter(self.cfg)
        return self._alerter

    def change(self, wc: WatcherConfig, diff: Diff, old: str, new: str,
               state: WatcherState, now: float, files: Sequence[Attachment] = ()) -> Built:
        return self.get().change(wc, diff, old, new, state, now, files)

    def error(self, wc: WatcherConfig, error: str, state: WatcherState, now: float) -> Built:
        return self.get().error(wc, error, state, now)

    def recovery(self, wc: WatcherConfig, state: WatcherState, now: float) -> Built:
        return self.get().recovery(wc, state, now)

    def digest(self, bucket: str, payloads: Sequence[str], now: float) -> Queued:
        return self.get().digest(bucket, payloads, now)


class LazyRelay:
    """The daemon's relay.RelayService, created (importing aiosmtpd, ~1.2 MiB) only once a
    config has `relay:`; until then it listens nowhere and says nothing."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.service: RelayService | None = None

    def apply(self) -> None:
        if self.service is None:
            if self.daemon.cfg.relay is None:
                return
            from notifier.relay import RelayService  # noqa: PLC0415 - aiosmtpd only with `relay:`

            d = self.daemon
            self.service = RelayService(lambda: d.cfg, d.store, d.wake_outbox, d.health)
        self.service.apply()

    def retry(self) -> None:
        if self.service is not None:
            self.service.retry()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def describe(self) -> str | None:
        return self.service.describe() if self.service is not None else None

    def status(self) -> str:
        return self.service.status() if self.service is not None else ""


class Daemon:
    """Owns the timetables, the store and the current config; swaps configs on reload."""

    def __init__(self, path: Path, debug_smtp: bool = False, state_dir: Path | None = None,
                 reinit: bool = False) -> None:
        """`reinit`: accept the state database found (or a new one) even if it is not the one
        the state directory held (see notifier.statedir)."""
        self.path = path
        self.debug_smtp = debug_smtp
        self.state_dir_flag = state_dir
        digest = runstate.digest(path)
        self.cfg = configmod.load(path, state_dir=state_dir)
        self.runstate = runstate.RunState(os.getpid(), str(path), digest or "", time.time())
        self.statedir = StateDir(self.cfg.state_dir)
        self.lock = self.statedir.acquire(STARTING, wait=ONESHOT_WAIT)  # one daemon per state dir
        self.store, self.fleet = self._open_store(reinit)  # fleet None: SQLite, this daemon alone
        self.alerter = LazyAlerts(self.cfg)
        self.sender = Sender(self.cfg, self.store, debug_smtp)
        self.health = Health(self, self.lock)
        self.relay = LazyRelay(self)
        self._poke = False  # SIGUSR1: a one-shot command queued mail for us to send
        self._claimed = 0  # fleet checks claimed and waiting for a worker
        self._next_checkpoint = 0.0
        self._next_prune = 0.0
        self._pruned = 0  # rows pruned by the rounds of the current backlog, for one log line
        self._wake = threading.Event()
        self._outbox_wanted = threading.Event()
        self._stop = False
        self._reload = False
        self._running: Counter[str] = Counter()  # running jobs by kind: "check", "send", ...
        self._idle = threading.Condition()  # notified whenever a job finishes
        self._config_sig = self._signature()
        self._config_seen = (self._config_sig, time.monotonic())
        # Each watcher's checks; what escapes a run (a bug) is the daemon's health.
        self.checks = Timetable(self._check, self.cfg.workers, launch=self._launch,
                                failed=lambda name, exc: self._job_failed(f"watcher={name}", exc),
                                queue=self._queue, per_queue=self.cfg.shared.per_host)
        # The daemon's own rounds, by name, in three lanes so none waits behind another: the
        # outbox; digests, housekeeping and a fleet's claims (one at a time); delivery probes
        # and bounce scans, which wait minutes for mail. (APScheduler's BackgroundScheduler
        # did this with three executors, and cost 4 MiB of imports: multiprocessing, pickle,
        # importlib.metadata; it still reads and fires `cron:` schedules.) The outbox and the
        # housework keep time by the monotonic clock: a wall clock stepped back (NTP after a
        # suspend) must not hold up deliveries or the watchdog's heartbeat until it catches up.
        self._rounds: dict[str, Callable[[], object]] = {}
        self.outbox = Timetable(self._round, 1, now=time.monotonic, failed=self._job_failed)
        self.housework = Timetable(self._round, 1, now=time.monotonic, failed=self._job_failed)
        self.receiving = Timetable(self._round, RECEIVING_WORKERS, failed=self._job_failed)
        self._mail_every: dict[str, float] = {}  # the receiving rounds scheduled: key -> period

    # -- lifecycle --------------------------------------------------------------------------


    def _open_store(self, reinit: bool) -> tuple[Store, Fleet | None]:
        """SQLite in the state directory, or the fleet's PostgreSQL and this daemon's place in
        the fleet. notifier.fleet (and psycopg, ~20 MB of the daemon's memory) is imported only
        for the latter."""
        if self.cfg.store is None:
            return self.statedir.open_store(reinit=reinit, locked=True), None
        from notifier import fleet  # noqa: PLC0415 - psycopg only with `store:`

        store = fleet.open_store(self.cfg.store)
        return store, fleet.Fleet.join(store, self.cfg)
    def run(self) -> int:
        limit_malloc_arenas()
        self._announce()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        self.lock.become(DAEMON)  # signals are safe now: `notifier reload` may send them
        self._write_runstate()
        self.store.release(("held",))  # a restart may follow a fix to the account
        self.sender.recover()
        configure_kinds([w.watcher for w in self.cfg.watchers], self.cfg.shared)
        checked = self._last_checks()
        for wc in self.cfg.watchers:
            self._add(wc, checked.get(wc.name))
        now = phase = time.monotonic()  # the outbox's and the housework's clock (see __init__)
        if self.fleet is not None:
            self.fleet.listen(lambda: self._on_hup(signal.SIGHUP, None))
            # Each daemon on its own phase of the second: started together, they would all poll
            # at once, and the first would take every due check each time. The whole housework
            # lane keeps that phase, so its timer's tick never moves the claims off it.
            phase = now + stable_fraction(self.fleet.id) * FLEET_POLL
            self._every(self.housework, "fleet", self._fleet_round, Grid(phase, FLEET_POLL), first=now)
        self._every(self.outbox, "outbox", self._deliver, Grid(now, OUTBOX_EVERY), first=now)
        self._every(self.housework, "digests", functools.partial(
            self._job, self._flush_digests, kind="digest", key="digests"), Grid(phase, DIGEST_POLL))
        self._every(self.housework, "housekeeping", self._housekeeping,
                    Grid(phase, self._heartbeat_every()), first=now)
        self._schedule_mail_checks()
        for table in self._tables():
            table.start()
        self.relay.apply()  # listening before READY=1, so what starts after us can send
        self._note_relay()
        systemd.notify("READY=1", f"STATUS={self.status_line()}")
        try:
            while not self._stop:
                self._wake.wait()
                self._wake.clear()
                if self._poke:
                    self._poke = False
                    self.wake_outbox()
                if self._reload and not self._stop:
                    self._reload = False
                    self.reload()
        finally:
            self._shutdown()
        return 0

    def _announce(self) -> None:
        cfg = self.cfg
        if cfg.accounts:
            where = f"SMTP account {cfg.default_account}"
        else:
            where = (f"the local Maildir {cfg.maildir} (no smtp account is configured; "
                     f"open it with any mail client, e.g. `mutt -f {cfg.maildir}`)")
        log.info("started: %d watcher(s) from %s, state in %s, alerts go to %s",
                 len(cfg.watchers), self.path, self.store.path, where)
        if os.geteuid() == 0 and any(w.kind == "command" for w in cfg.watchers):
            log.warning("command watchers will run as root; run notifier as a dedicated user "
                        "(the shipped systemd unit does) unless that is intended.")

    def _wait_for_jobs(self, deadline: float) -> None:
        """Let the running jobs finish, until `deadline`. A fleet daemon keeps renewing the
        claims of its running checks meanwhile (the paused housework lane no longer does): a lease
        shorter than SHUTDOWN_TIMEOUT would otherwise lapse, another daemon would check them
        again, and the results this one is finishing would be refused."""
        step = FLEET_POLL if self.fleet is not None else SHUTDOWN_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            with self._idle:
                done = self._idle.wait_for(lambda: not +self._running, max(0.0, min(left, step)))
            if done or self.fleet is None or time.monotonic() >= deadline:
                return
            with contextlib.suppress(StateError):
                self.fleet.renew()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True
        self._wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True
        self._wake.set()

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        self._poke = True
        self._wake.set()

    def _shutdown(self) -> None:
        systemd.notify("STOPPING=1")
        self.relay.stop()  # first: no message is accepted that the shutdown could strand
        running = self._running_jobs()
        if running:
            log.info("stopping: waiting up to %.0f s for %s", SHUTDOWN_TIMEOUT, running)
        else:
            log.info("stopping")
        for table in self._tables():
            table.pause()
        self._wait_for_jobs(time.monotonic() + SHUTDOWN_TIMEOUT)
        for table in self._tables():
            table.shutdown()
        if self.fleet is not None:
            self.fleet.leave()
        runstate.remove(self.cfg.state_dir)
        left = self._running_jobs()
        if left:
            # A check commits in one transaction and a message leaves the outbox only once a
            # server took it, so abandoning them loses nothing.
            notes = [what for kind, what in (
                ("check", "checks run again at start"),
                ("send", "messages being sent stay in the outbox and go out after the restart, "
                         "with the same Message-ID")) if self._running[kind]]
            log.warning("stopped with %s still running; %s", left, "; ".join(notes) or "nothing is lost")
        gone = self.store.gone_error()
        if gone is not None:
            # Closing would let SQLite checkpoint and delete -wal/-shm by name: files that may
            # belong to a new database by now. The kernel closes the orphan without a word.
            log.warning("left the orphaned database to the kernel: %s", gone)
        if left or gone is not None:
            logging.shutdown()
            os._exit(0)
        for kind in watcher_kinds().values():
            kind.shut_down()
        self.store.close()
        self.lock.release()
        log.info("stopped")

    def _running_jobs(self) -> str:
        """"1 check, 1 send": what is running now, by kind."""
        with self._idle:
            return ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(self._running.items())
                             if n > 0)

    # -- jobs -------------------------------------------------------------------------------

    def _job(self, func: Any, *args: Any, kind: str = "check", key: str | None = None) -> Any:
        """Run a job, counted by `kind` so shutdown can wait for it and say what it left.

        A state write that fails goes to the health monitor under `key` (the writer, like
        "watcher=prices" or "outbox"): one log line with the reason, no traceback. While the
        database file is gone, jobs do not run at all.
        """
        if not self._job_starts(kind):
            return None
        failed: Exception | None = None
        try:
            return func(*args)
        except Exception as exc:
            failed = exc
            return None
        finally:
            self._job_ends(kind, key, failed)

    def _job_starts(self, kind: str) -> bool:
        if self.health.paused:
            return False
        with self._idle:
            self._running[kind] += 1
        return True

    def _job_ends(self, kind: str, key: str | None, failed: Exception | None) -> None:
        if failed is None:
            self.health.succeeded(key or kind)
        else:
            self._job_failed(key or kind, failed)
        with self._idle:
            self._running[kind] -= 1
            self._idle.notify_all()

    def _job_failed(self, writer: str, failed: Exception) -> None:
        """A job's failure as the daemon's health: a write the database refused, or a bug."""
        if isinstance(failed, StateError):
            self.health.failed(writer, failed)
            return
        log.debug("job %s raised", writer, exc_info=failed)
        self.health.failed(writer, RuntimeError(
            f"the {writer} job failed unexpectedly ({type(failed).__name__}: {failed}); it "
            f"runs again on schedule. This is a bug: run with --debug and report it"))

    def _tables(self) -> tuple[Timetable, ...]:
        return self.checks, self.outbox, self.housework, self.receiving

    def _every(self, table: Timetable, name: str, job: Callable[[], object], grid: Grid,
               first: float | None = None) -> None:
        """Run the round `job` as `name` on `grid` in `table`'s lane, first at `first` (else
        at the grid's next point); a late round runs once, and never beside itself."""
        self._rounds[name] = job
        table.set(name, grid, first)

    def _round(self, name: str) -> None:
        job = self._rounds.get(name)
        if job is not None:
            job()

    def _check(self, name: str) -> None:
        wc = self.cfg.watcher(name)
        if wc is None or self._stop:
            return
        self._job(self._check_and_note, wc, key=f"watcher={name}")

    def _check_and_note(self, wc: WatcherConfig) -> None:
        """One check and what follows it, as one job: a failure anywhere is one health result."""
        self._checked(check(wc, self.store, self.alerter))

    def _launch(self, name: str) -> Future[None] | None:
        """Start a url check on the event loop that carries its fetch, so no worker thread
        waits for it (a thread each cost 200 KiB and two hand-overs a check); None for what
        runs on a worker: other kinds, a fleet's checks (their claims), a paused daemon."""
        wc = self.cfg.watcher(name)
        if wc is None or self._stop or self.fleet is not None or not wc.watcher.asynchronous:
            return None
        if not self._job_starts("check"):
            return None
        return _loop.start(self._check_on_loop(wc))

    def _queue(self, name: str) -> Hashable | None:
        """The site a watcher's fetches take turns at, if any (see Timetable's `queue`)."""
        wc = self.cfg.watcher(name)
        return None if wc is None else wc.watcher.queue()

    async def _check_on_loop(self, wc: WatcherConfig) -> None:
        failed: Exception | None = None
        try:
            self._checked(await check_on_loop(wc, self.store, self.alerter))
        except Exception as exc:
            failed = exc
        finally:
            self._job_ends("check", f"watcher={wc.name}", failed)

    def _checked(self, outcome: Outcome) -> None:
        """After a check: its log line, the site's Retry-After, and the outbox woken for alerts."""
        log.log(logging.WARNING if outcome.status == "failed" else logging.INFO, "%s", outcome.line())
        if outcome.retry_after is not None:
            self._come_back(outcome.name, outcome.retry_after)
        if outcome.alerts:
            self.wake_outbox()

    def _fleet_round(self) -> None:
        """PostgreSQL store: beat the heart, keep the claims of running checks, then claim the
        due checks this daemon has room for, batch after batch while whole batches are due, and
        run each under its claim (notifier.fleet); the claim fences the result."""
        from notifier.fleet import CLAIM_BATCH  # noqa: PLC0415 - psycopg only with `store:`
        from notifier.pgstore import PgStore  # noqa: PLC0415 - psycopg only with `store:`

        assert self.fleet is not None
        names = [w.name for w in self.cfg.watchers]
        try:
            self.fleet.heartbeat(self.health.summary().rstrip(" |"), self.runstate.digest)
            self.fleet.renew()
            claimed = CLAIM_BATCH
            while claimed == CLAIM_BATCH and not self._stop:
                with self._idle:
                    room = self.cfg.workers - self._running["check"] - self._claimed
                batch = self.fleet.claim(names, room)
                self._run_claimed(batch)
                claimed = len(batch)
        except StateError as exc:
            self.health.failed("fleet", exc)
            return
        self.health.succeeded("fleet")
        self.health.clear(lambda writer, reason: writer.startswith("watcher=") and isinstance(
            self.store, PgStore) and self.store.unreachable(reason))

    def _run_claimed(self, names: list[str]) -> None:
        for name in names:
            with self._idle:
                self._claimed += 1
            self.checks.submit(name, functools.partial(self._fleet_check, name))

    def _fleet_check(self, name: str) -> None:
        with self._idle:
            self._claimed -= 1
        wc = self.cfg.watcher(name)
        if self.fleet is None:
            return
        if wc is None:
            self._job(self.fleet.unknown, name, key="fleet")
            return
        with self.fleet.running(wc):
            self._check(name)

    def _come_back(self, name: str, seconds: float) -> None:
        """Honour a site's Retry-After: the next check is then, not at the next grid point
        (later grid points follow as usual). Sooner than the schedule is never asked for."""
        when = time.time() + seconds
        if self.checks.later(name, when):
            log.info("watcher=%s: the site asked to come back in %.0f s; next check at %s", name,
                     seconds, time.strftime("%H:%M:%S", time.localtime(when)))

    def wake_outbox(self) -> None:
        """Deliver now rather than at the next outbox round (change-to-inbox latency).

        A round already running sees the flag and goes on, over the connections it holds;
        one woken as it ends is followed by another (Timetable.soon), so no wake-up is lost.
        """
        self._outbox_wanted.set()
        self.outbox.soon("outbox")

    def _deliver(self) -> None:
        """Rounds until the outbox is empty, over connections kept open from one round to the
        next; mail that arrives within DELIVER_LINGER of a round (a busy relay) goes out over
        them too, rather than over a new TLS handshake and login each."""
        sender = self.sender
        try:
            while not self._stop:
                self._outbox_wanted.clear()
                report = self._job(sender.deliver, OUTBOX_BATCH, True, kind="send", key="outbox")
                handled = report.sent + report.retry + report.held + report.dead if report else 0
                if handled < OUTBOX_BATCH and not self._outbox_wanted.wait(DELIVER_LINGER):
                    break
        finally:
            sender.close_kept()

    def _schedule_mail_checks(self) -> None:
        """verify_every and watch_bounces, as the current config asks (see notifier.mailwatch).
        A reload keeps the jobs whose period did not change, so it never sends an extra probe."""
        wanted = {}
        if any(a.verify_every or a.watch_bounces for a in self.cfg.accounts.values()):
            from notifier import mailwatch  # noqa: PLC0415 - IMAP, POP3 and bounces only when asked for

            wanted = {due.key: due for due in mailwatch.scheduled(self.cfg, self.store, time.time())}
        removed = set()
        for key, every in list(self._mail_every.items()):
            if key in wanted and wanted[key].every == every:
                del wanted[key]
            else:
                self.receiving.remove(key)
                del self._mail_every[key]
                self._rounds.pop(key, None)
                removed.add(key)
        gone = removed - wanted.keys()  # no longer asked for: a failure of theirs ends with them
        self.health.clear(lambda writer, _: writer in gone)
        for due in wanted.values():
            self._mail_every[due.key] = due.every
            self._every(self.receiving, due.key, functools.partial(
                self._job, self._mail_check, due.account, due.job, kind=due.job, key=due.key),
                Grid(due.first, due.every), first=due.first)

    def _mail_check(self, account: str, job: str) -> None:
        if self._stop or account not in self.cfg.accounts:
            return
        from notifier import mailwatch  # noqa: PLC0415 - imported when the job was scheduled

        if mailwatch.run(self.cfg, self.store, account, job):
            self.wake_outbox()

    def _flush_digests(self) -> None:
        """Turn each due digest bucket into one queued mail."""
        due = self.store.due_digests(time.time())
        for bucket, entries in due.items():
            message = self.alerter.digest(bucket, [payload for _, payload in entries], time.time())
            self.store.flush_digest([i for i, _ in entries], message)
        if due:
            self.wake_outbox()

    def _housekeeping(self) -> None:
        self.health.watch()
        if time.monotonic() >= self._next_checkpoint:
            self._next_checkpoint = time.monotonic() + CHECKPOINT_EVERY
            with contextlib.suppress(StateError):  # a full disk is reported by the writes
                self.store.checkpoint()
        self._prune()
        self.relay.retry()
        self._note_relay()
        fields = [f"STATUS={self.status_line()}"]
        if systemd.watchdog_interval():
            fields.append("WATCHDOG=1")
        systemd.notify(*fields)
        self._watch_config()
        self.health.succeeded("housekeeping")  # a round that raised (a bug) ends with this one

    def _prune(self) -> None:
        """Drop send log entries and check counts older than log_retention, a small batch per
        transaction and PRUNE_BUDGET seconds per round at most, so checks and deliveries get the
        database between batches; a backlog (100,000 expired entries) goes over a few rounds."""
        if time.monotonic() < self._next_prune:
            return
        before, deadline = time.time() - self.cfg.log_retention, time.monotonic() + PRUNE_BUDGET
        more = True
        try:
            while more and time.monotonic() < deadline:
                gone = self.store.prune(before, PRUNE_BATCH)
                self._pruned += gone
                more = gone >= PRUNE_BATCH
                # The store's lock is not fair: without a pause this thread would take it back
                # at once, and a check's write would wait out the whole round, not one batch.
                time.sleep(PRUNE_PAUSE)
        except StateError:  # a full disk is reported by the writes that matter; try again later
            more = False
        self._next_prune = time.monotonic() + (0.0 if more else PRUNE_EVERY)
        if not more and self._pruned:
            log.info("pruned %d send log entries and day counts older than log_retention", self._pruned)
            self._pruned = 0

    def _heartbeat_every(self) -> float:
        return min(systemd.watchdog_interval() or CONFIG_POLL, CONFIG_POLL)

    def status_line(self) -> str:
        """The STATUS= line systemctl status shows, e.g. "12 watchers, next check in 40 s, outbox 0",
        led by "UNHEALTHY: <reason> | " while state cannot be recorded."""
        try:
            counts = self.store.outbox_counts()
        except StateError:
            counts = None
        nxt = self.checks.next_due()
        due = f", next check in {max(0.0, nxt - time.time()):.0f} s" if nxt is not None else ""
        if counts is None:
            outbox = "outbox unreadable"
        else:
            held, dead = counts["held"], counts["dead"]
            outbox = f"outbox {counts['pending']}" + (f" ({held} held, {dead} dead)" if held or dead else "")
        return f"{self.health.summary()}{len(self.cfg.watchers)} watchers{due}, {outbox}{self.relay.status()}"

    # -- scheduling and reload --------------------------------------------------------------

    def _last_checks(self) -> dict[str, float | None]:
        """When each watcher was last checked, in one read of the store (not a read of each
        watcher's state and latest content); a fleet's due table keeps its own."""
        if self.fleet is not None:
            return {}
        return {name: state.last_check for name, state in self.store.states().items()}

    def _add(self, wc: WatcherConfig, last_check: float | None) -> None:
        if self.fleet is not None:  # the fleet's due table schedules it (see _fleet_round)
            self.fleet.schedule(wc)
            return
        first = None  # the schedule's next time
        if wc.schedule.overdue(last_check, time.time()):
            # New or overdue: run soon, spread out so a restart is not a thundering herd.
            spread = min(STARTUP_SPREAD, wc.schedule.every,
                         max(1.0, SPREAD_PER_WATCHER * len(self.cfg.watchers)))
            first = time.time() + stable_fraction(wc.name) * spread
        self.checks.set(wc.name, wc.schedule, first)

    def reload(self) -> bool:
        """Load the config again; apply only what changed. A bad config changes nothing.

        Whatever is wrong with the file — a bad value, half an editor's write, a deleted file —
        is one log line and a note in running.json for `notifier status`; the daemon goes on
        with the configuration it has.
        """
        digest = runstate.digest(self.path)
        try:
            new = configmod.load(self.path, state_dir=self.state_dir_flag)
        except ConfigError as exc:
            self._refused(digest, [str(p) for p in exc.problems])
            return False
        except Exception as exc:  # a bug in validation must not stop the daemon either
            log.debug("loading %s raised", self.path, exc_info=True)
            self._refused(digest, [f"{self.path}: unexpected {type(exc).__name__}: {exc}. This is a "
                                   f"bug; run `notifier validate --debug` and report it."])
            return False
        try:
            self._apply(new)
        except Exception as exc:  # a bug: refused like a bad file, so `notifier status` shows it
            log.debug("applying %s raised", self.path, exc_info=True)
            self._refused(digest, [f"{self.path}: applying it failed unexpectedly ({type(exc).__name__}: "
                                   f"{exc}). This is a bug; run with --debug and report it."])
            return False
        self.runstate = runstate.RunState(os.getpid(), str(self.path), digest or "", time.time())
        self._write_runstate()
        return True

    def _refused(self, digest: str | None, problems: list[str]) -> None:
        more = f" (and {len(problems) - 1} more; run `notifier validate`)" if len(problems) > 1 else ""
        log.error("reload refused: %s%s; the running configuration stays in effect.",
                  logs.one_line(problems[0]), more)
        self.runstate = replace(self.runstate, refused_digest=digest, refused_at=time.time(),
                                problems=tuple(problems))
        self._write_runstate()

    def _note_relay(self) -> None:
        """Tell `notifier status` (through running.json) whether the relay listens, when that
        changed: systemd's STATUS= line alone is not where people look."""
        said = self.relay.describe()
        if said != self.runstate.relay:
            self.runstate = replace(self.runstate, relay=said)
            self._write_runstate()

    def _write_runstate(self) -> None:
        try:
            runstate.write(self.cfg.state_dir, self.runstate)
        except OSError as exc:
            log.warning("cannot write %s (%s); `notifier status` will not see the daemon's "
                        "configuration.", self.cfg.state_dir / runstate.FILE_NAME, exc.strerror)

    def _apply(self, new: configmod.Config) -> None:
        """Swap in a validated configuration, touching only the jobs whose watcher changed."""
        if new.state_dir != self.cfg.state_dir:
            log.warning("state_dir changed; restart notifier to move to %s", new.state_dir)
        previous = self.cfg
        self._config_sig = self._signature()
        self.cfg = new
        self.alerter = LazyAlerts(new)
        self.sender = Sender(new, self.store, self.debug_smtp)
        removed = {w.name for w in previous.watchers} - {w.name for w in new.watchers}
        for name in removed:
            self.checks.remove(name)
        gone = {f"watcher={name}" for name in removed}
        self.health.clear(lambda writer, _: writer in gone)  # nothing of theirs is written again
        self.checks.limit(new.workers, new.shared.per_host)
        if self.fleet is not None and removed:
            self.fleet.forget(sorted(removed))
        changed = new.changed_since(previous)
        checked = self._last_checks() if changed else {}
        for wc in changed:
            self._add(wc, checked.get(wc.name))
        try:  # a fixed account may let held messages go; a full disk must not fail the reload
            self.store.release(("held",))
        except StateError as exc:
            self.health.failed("reload", exc)
        # After the removed jobs are gone: a kind whose last watcher went (browser) lets go now.
        configure_kinds([w.watcher for w in new.watchers], new.shared)
        self.relay.apply()
        self._note_relay()
        self._schedule_mail_checks()
        log.info("reloaded %s: %d watcher(s), %d added or changed, %d removed", self.path,
                 len(new.watchers), len(changed), len(removed))
        systemd.notify(f"STATUS={self.status_line()}")

    def _signature(self) -> tuple[float, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size, st.st_ino)

    def _watch_config(self) -> None:
        """Reload when watchers.yaml changed on disk and then stayed unchanged for DEBOUNCE s."""
        sig, now = self._signature(), time.monotonic()
        if sig != self._config_seen[0]:
            self._config_seen = (sig, now)
        elif sig != self._config_sig and sig is not None and now - self._config_seen[1] >= DEBOUNCE:
            self._config_sig = sig
            self._reload = True
            self._wake.set()
