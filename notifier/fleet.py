"""Several daemons on one PostgreSQL store: who is running, which daemon runs which check.

Each daemon registers itself in `fleet_member` (host, pid, version, the fingerprint of its config
and a heartbeat). Each watcher has one row in `fleet_check`: its next due time, and the claim on
it. A daemon claims the due checks it has room for in small batches (`FOR UPDATE SKIP LOCKED`, so
daemons never wait on each other's rows), each for `lease` seconds by the database's clock. The
result of a check is recorded only while the claim still holds, in the same transaction that
moves the due time on (notifier.pgstore's fence): a daemon that was paused or cut off past its
lease cannot record a result another daemon is already producing. A daemon that dies leaves its
claims to expire; the others take the checks over one lease later. Due times come from each
watcher's schedule (notifier.schedule: the same grid on every host), so it does not matter which
daemon runs a check.

`notifier reload` on one host reaches the others through LISTEN/NOTIFY on RELOAD_CHANNEL.
SQLite keeps its one daemon per state directory (notifier.statedir); none of this applies there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

import notifier
from notifier import runstate
from notifier.config import Config, StoreConfig, WatcherConfig
from notifier.errors import StateError
from notifier.pgstore import DB_NOW, DatabaseRefused, Fence, PgStore, connect
from notifier.schedule import stable_fraction
from notifier.secrets import Secret
from notifier.store import Store

log = logging.getLogger(__name__)

RELOAD_CHANNEL = "notifier_reload"
HEARTBEAT_EVERY = 5.0  # seconds between a daemon's heartbeats...
ALIVE_FOR = 30.0  # ...and how old the last one may be for `status` to call the daemon alive
FORGET_AFTER = 86400.0  # a member silent this long leaves the list
CLAIM_BATCH = 20  # due checks claimed per round and daemon: small, so the others get theirs
RETRY_UNRECORDED = 5.0  # seconds before a check whose result could not be recorded runs again
STARTUP_SPREAD = 30.0  # new or overdue watchers are spread over up to this many seconds


def store_url(store: StoreConfig) -> Secret:
    """The store URL with its password, read from where the config says it is."""
    if isinstance(store.url, Secret):
        return store.url
    try:
        url = store.url.read()
    except ValueError as exc:
        raise DatabaseRefused(f"The store URL cannot be read: {exc}.") from None
    if store.url.env:  # read once: what this process starts (commands, Chromium) must not inherit it
        os.environ.pop(store.url.env, None)
    return url


def open_store(store: StoreConfig, readonly: bool = False) -> PgStore:
    """The fleet's shared PostgreSQL database (SQLite stays with notifier.statedir: callers
    choose, so that a single machine never imports this module and psycopg)."""
    return PgStore(store_url(store), readonly=readonly, lease=store.lease)


@dataclass(frozen=True)
class Member:
    """One daemon of the fleet as `notifier status` lists it."""

    id: str
    host: str
    pid: int
    version: str
    fingerprint: str
    started: float
    heartbeat: float
    health: str

    def line(self, now: float, mine: str | None = None) -> str:
        alive = "alive" if now - self.heartbeat <= ALIVE_FOR else f"silent {now - self.heartbeat:.0f} s"
        differs = "" if mine is None or mine == self.fingerprint else ", config DIFFERS"
        health = f", {self.health}" if self.health else ""
        return (f"{self.host} pid {self.pid}: {alive}, version {self.version}, config "
                f"{self.fingerprint[:12]}{differs}{health}")


class Fleet:
    """This daemon's place in the fleet: its registration, its claims, the reload listener."""

    def __init__(self, store: PgStore, store_cfg: StoreConfig, config_path: Path) -> None:
        self.store = store
        self.lease = store_cfg.lease
        self.strict = store_cfg.strict_fleet
        self.config_path = config_path
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fingerprint = runstate.digest(config_path) or ""
        self.differing: tuple[str, ...] = ()  # members whose config differs, as last seen
        self._next_heartbeat = 0.0
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._pending: list[WatcherConfig] = []  # scheduled, due rows not written yet
        self._held: set[str] = set()  # claimed and not yet done: the claims `renew` keeps
        self._pending_lock = threading.Lock()

    @classmethod
    def join(cls, store: Store, cfg: Config) -> Fleet | None:
        """The fleet of a PostgreSQL store, registered; None for SQLite (one daemon per state dir)."""
        if cfg.store is None or not isinstance(store, PgStore):
            return None
        fleet = cls(store, cfg.store, cfg.path)
        fleet.heartbeat()
        return fleet

    # -- membership ------------------------------------------------------------------------------

    def heartbeat(self, health: str = "", fingerprint: str = "") -> None:
        """Say this daemon is alive (every HEARTBEAT_EVERY seconds at most) and compare configs.
        `fingerprint`: of the configuration running now (a refused edit on disk does not count)."""
        now = time.time()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_EVERY
        self.fingerprint = fingerprint or self.fingerprint
        with self.store.locked() as conn:
            conn.execute(
                "INSERT INTO fleet_member (id, host, pid, version, fingerprint, started, heartbeat, "
                "health) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, heartbeat = excluded.heartbeat, "
                "health = excluded.health",
                (self.id, socket.gethostname(), os.getpid(), notifier.__version__, self.fingerprint,
                 now, now, health))
            conn.execute("DELETE FROM fleet_member WHERE heartbeat < %s", (now - FORGET_AFTER,))
        self._compare(members(self.store), now)

    def _compare(self, fleet: Sequence[Member], now: float) -> None:
        """Warn (once per change) when a live daemon runs another config than this one."""
        differing = tuple(sorted(f"{m.host} pid {m.pid}" for m in fleet if m.id != self.id
                                 and now - m.heartbeat <= ALIVE_FOR and m.fingerprint != self.fingerprint))
        if differing and differing != self.differing:
            then = ("this daemon runs no checks until they match (strict_fleet)" if self.strict
                    else "checks follow whichever config the daemon that claims them has")
            log.warning("fleet: %s run(s) a different config than %s; %s. Give every daemon the "
                        "same file.", ", ".join(differing), self.config_path, then)
        elif self.differing and not differing:
            log.info("fleet: every daemon runs the same config again")
        self.differing = differing

    @property
    def refusing(self) -> bool:
        """strict_fleet and a differing config: claim no checks."""
        return self.strict and bool(self.differing)

    def leave(self) -> None:
        """Unregister and hand back every claim at once, so the others need not wait a lease."""
        self._stop.set()
        with contextlib.suppress(StateError), self.store.locked() as conn:
            conn.execute("UPDATE fleet_check SET claimed_by = NULL, claimed_until = NULL "
                         "WHERE claimed_by = %s", (self.id,))
            conn.execute("DELETE FROM fleet_member WHERE id = %s", (self.id,))

    # -- checks ----------------------------------------------------------------------------------

    def schedule(self, wc: WatcherConfig) -> None:
        """Give a watcher its due row if it has none, at the next round (see `_flush`)."""
        with self._pending_lock:
            self._pending.append(wc)

    def _flush(self) -> None:
        """Write the due rows of the watchers scheduled since the last round in one statement:
        soon (spread) when never checked or overdue, else the next grid point; a row that exists
        is the fleet's and stays. A daemon starting with 9,000 watchers asks twice, not 18,000
        times, while the others are already checking."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            now, last = time.time(), {n: st.last_check for n, st in self.store.states().items()}
            spread = max(1.0, 0.03 * len(pending))
            dues = [now + stable_fraction(wc.name) * min(STARTUP_SPREAD, wc.schedule.every, spread)
                    if wc.schedule.overdue(last.get(wc.name), now) else next_due(wc, now) for wc in pending]
            with self.store.locked() as conn:
                conn.execute("INSERT INTO fleet_check (name, due) SELECT * FROM unnest(%s::text[], "
                             "%s::float8[]) ON CONFLICT DO NOTHING", ([wc.name for wc in pending], dues))
        except StateError:
            with self._pending_lock:
                self._pending[:0] = pending  # the next round tries again
            raise

    def renew(self) -> None:
        """Write the due rows scheduled since the last round, and extend the claims of the
        checks this daemon is running: a live daemon keeps them, only a dead or cut-off one
        loses them."""
        self._flush()
        with self._pending_lock:
            held = sorted(self._held)
        with self.store.locked() as conn:
            conn.execute(f"UPDATE fleet_check SET claimed_until = {DB_NOW} + %s "  # noqa: S608
                         f"WHERE claimed_by = %s AND name = ANY(%s)", (self.lease, self.id, held))
            # A claim whose release failed (the database was away then) is handed back now.
            conn.execute("UPDATE fleet_check SET claimed_by = NULL, claimed_until = NULL "
                         "WHERE claimed_by = %s AND NOT name = ANY(%s)", (self.id, held))

    def claim(self, names: Sequence[str], room: int) -> list[str]:
        """Claim up to `room` (at most CLAIM_BATCH) due checks, oldest due first. While every
        daemon runs the same config any due check will do; else only those among `names`."""
        if self.refusing or room <= 0:
            return []
        with self._pending_lock:  # never a check this daemon still runs (see below)
            busy = sorted(self._held)
        only = "AND name = ANY(%s) " if self.differing else ""
        args = (self.id, self.lease, busy, *([list(names)] if self.differing else []), min(room, CLAIM_BATCH))
        # The fence knows the daemon, not the claim: claiming again a check whose earlier run here
        # lost its lease (a partition) and is still finishing would let that stale result through.
        with self.store.locked() as conn:
            rows = conn.execute(
                f"UPDATE fleet_check f SET claimed_by = %s, claimed_until = {DB_NOW} + %s FROM ("  # noqa: S608
                f"SELECT name FROM fleet_check WHERE due <= {DB_NOW} AND (claimed_until IS NULL OR "
                f"claimed_until < {DB_NOW}) AND NOT name = ANY(%s) {only}ORDER BY due LIMIT %s "
                f"FOR UPDATE SKIP LOCKED) AS d WHERE f.name = d.name RETURNING f.name", args).fetchall()
        names = [str(r[0]) for r in rows]
        with self._pending_lock:
            self._held.update(names)
        return names

    def unknown(self, name: str) -> None:
        """A claimed check this daemon's config does not have (another daemon's config is newer,
        or older): it goes back, due a little later, for a daemon that knows it."""
        self._done(name)
        with self.store.locked() as conn:
            conn.execute("UPDATE fleet_check SET claimed_by = NULL, claimed_until = NULL, due = %s "
                         "WHERE name = %s AND claimed_by = %s",
                         (time.time() + RETRY_UNRECORDED, name, self.id))

    def forget(self, names: Sequence[str]) -> None:
        """Watchers removed from the config (a reload): their due rows go."""
        with self.store.locked() as conn:
            conn.execute("DELETE FROM fleet_check WHERE name = ANY(%s)", (list(names),))

    @contextlib.contextmanager
    def running(self, wc: WatcherConfig) -> Iterator[None]:
        """Run a claimed check: its result is fenced by the claim; the claim goes back after.
        A result that could not be recorded (the database was down) is tried again soon."""
        fence = Fence(wc.name, self.id, lambda now: next_due(wc, now))
        try:
            with self.store.fenced(fence):
                yield
        finally:
            self._done(wc.name)
            retry = time.time() + RETRY_UNRECORDED
            with contextlib.suppress(StateError), self.store.locked() as conn:
                conn.execute("UPDATE fleet_check SET claimed_by = NULL, claimed_until = NULL, "
                             "due = CASE WHEN %s THEN due ELSE GREATEST(due, %s) END "
                             "WHERE name = %s AND claimed_by = %s",
                             (fence.recorded, retry, wc.name, self.id))

    def _done(self, name: str) -> None:
        with self._pending_lock:
            self._held.discard(name)

    # -- reload ----------------------------------------------------------------------------------

    def listen(self, on_reload: Callable[[], None]) -> None:
        """Call `on_reload` whenever another host's `notifier reload` sends RELOAD_CHANNEL."""
        self._listener = threading.Thread(target=self._listen, args=(self.store.url, on_reload),
                                          name="fleet-listen", daemon=True)
        self._listener.start()

    def _listen(self, url: Secret, on_reload: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                with connect(url, "notifier-listen") as conn:
                    conn.execute(f"LISTEN {RELOAD_CHANNEL}")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.payload != self.id:
                                log.info("fleet: reload requested by %s", note.payload or "another host")
                                on_reload()
            except (StateError, psycopg.Error) as exc:
                log.debug("fleet: the reload listener lost the database (%s)", exc)
                self._stop.wait(HEARTBEAT_EVERY)


def next_due(wc: WatcherConfig, now: float) -> float:
    """The watcher's next grid point at or after `now` (the same on every host)."""
    fire = wc.schedule.at_or_after(wc.name, now)
    return fire if fire is not None else now + 86400.0


def members(store: PgStore) -> list[Member]:
    """Every registered daemon, by host and pid."""
    with store.locked() as conn:
        rows = conn.execute("SELECT id, host, pid, version, fingerprint, started, heartbeat, health "
                            "FROM fleet_member ORDER BY host, pid").fetchall()
    return [Member(*r) for r in rows]


def request_reload(store: PgStore, sender: str = "") -> None:
    """Tell every daemon of the fleet to reload its config (`notifier reload`)."""
    with store.locked() as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (RELOAD_CHANNEL, sender or socket.gethostname()))
