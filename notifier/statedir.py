"""The state directory: one notifier at a time, the database's identity, private files.

`notifier run` holds an exclusive `flock` on `notifier.lock` for its whole life, and one-shot
commands hold it while they deliver mail. The kernel drops a flock when its process dies, however
it dies, so the lock is never stale. The file says who holds it: "PID ROLE" on the first line,
and the daemon's health (notifier.health) as JSON on the second, so `notifier status` learns how
the daemon is doing without the database, which may be the very thing that is broken. The file
is allocated once and rewritten in place, which keeps working on a full disk.

A pid read from the file is believed only while the lock is held *and* the kernel's lock table
(/proc/locks) names that pid as the holder; a signal then goes through a pidfd opened before
the check. A stale or forged file can never direct a signal at an unrelated process.

`state.id` remembers which database the directory holds: a random id, also stored inside the
database. A database that disappeared or was replaced is refused with a message, never quietly
re-baselined; `notifier run --reinit` accepts the one that is there now.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notifier.errors import EXIT_BUSY, EXIT_CONFIG, NotifierError, StateError
from notifier.store import FILE_MODE, Store, make_private_dir

log = logging.getLogger(__name__)

DB_NAME = "state.db"
LOCK_NAME = "notifier.lock"
MARKER_NAME = "state.id"
LOCK_SIZE = 4096  # bytes allocated for the lock file's content, rewritten in place
PROBE_GRACE = 0.5  # s: `status` and `reload` hold the lock for microseconds; outwait them
ONESHOT_WAIT = 60.0  # s to wait for a one-shot command (`check --send`) to finish delivering
PROC_LOCKS = Path("/proc/locks")
DAEMON = "run"  # the role of `notifier run` once it takes signals...
STARTING = "starting"  # ...and before: a signal now would kill it (the default action)


class StateDirBusy(NotifierError):
    """Another process holds the state directory's lock."""

    exit_code = EXIT_BUSY

    def __init__(self, message: str, holder: Holder | None) -> None:
        super().__init__(message)
        self.holder = holder


class StateDirRefused(NotifierError):
    """The database is not the one this directory held; only a person can decide (--reinit)."""

    exit_code = EXIT_CONFIG  # like an invalid config: restarting cannot fix it, systemd must not loop


class NoDaemon(NotifierError):
    """No `notifier run` holds the state directory, so there is nobody to signal."""


@dataclass(frozen=True)
class Holder:
    """The process holding the lock, as the kernel confirmed it, and what it published."""

    pid: int
    role: str  # "run" / "starting" for the daemon, else the one-shot command ("check"); "?" unknown
    health: Mapping[str, Any] = field(default_factory=dict)

    @property
    def daemon(self) -> bool:
        """`notifier run`, started or starting."""
        return self.role in (DAEMON, STARTING) and self.pid > 0

    @property
    def ready(self) -> bool:
        """`notifier run`, and it takes signals (SIGHUP: reload, SIGUSR1: send the outbox now)."""
        return self.role == DAEMON and self.pid > 0

    def describe(self) -> str:
        """"daemon: ..." for `notifier status`, when the daemon is not (yet) running."""
        if self.role == STARTING:
            return f"daemon: starting (pid {self.pid})"
        what = f"`notifier {self.role}`" if self.role != "?" else "a process"
        return f"daemon: not running ({what} with pid {self.pid} holds the state directory)"

    def health_line(self) -> str:
        """"health: ..." for `notifier status`: what the daemon published in the lock file."""
        if self.health.get("healthy", True):
            return "health: ok"
        since = self.health.get("since")
        when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if since else ""
        state = "CHECKS PAUSED" if self.health.get("paused") else "UNHEALTHY"
        return f"health: {state}{when}: {self.health.get('reason')}"


class Lock:
    """An exclusive hold on a state directory, until `release()` or the death of the process."""

    def __init__(self, fd: int, path: Path, role: str) -> None:
        self._fd: int | None = fd
        self.path = path
        self.role = role
        self._health: dict[str, Any] = {}
        with contextlib.suppress(OSError):  # a full disk: rewriting in place still works below
            os.posix_fallocate(fd, 0, LOCK_SIZE)
        os.ftruncate(fd, LOCK_SIZE)
        self.publish({})

    def become(self, role: str) -> None:
        """Change the role others see (the daemon: from "starting" to "run")."""
        self.role = role
        self.publish(self._health)

    def publish(self, health: Mapping[str, Any]) -> None:
        """Say who holds the lock and how it is doing, in place: no new disk block is needed."""
        self._health = dict(health)
        if self._fd is None:
            return
        head = f"{os.getpid()} {self.role}\n"
        body = json.dumps(dict(health), sort_keys=True)
        if len(head) + len(body) + 1 > LOCK_SIZE:
            body = json.dumps({**health, "reason": str(health.get("reason"))[:LOCK_SIZE // 2]})
        try:
            os.pwrite(self._fd, (head + body + "\n").encode().ljust(LOCK_SIZE, b" "), 0)
        except OSError as exc:
            log.debug("could not update %s: %s", self.path, exc)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class StateDir:
    """The files of one state directory and the rules for using them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = path / DB_NAME
        self.lock_path = path / LOCK_NAME
        self.marker = path / MARKER_NAME

    # -- the lock ---------------------------------------------------------------------------

    def acquire(self, role: str, wait: float = 0.0) -> Lock:
        """Take the lock for `role`. A daemon holding it makes this fail at once; a one-shot
        command is waited for up to `wait` seconds. Raises StateDirBusy naming the holder."""
        try:
            make_private_dir(self.path)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise StateError(f"The state directory {self.path} cannot be used ({exc.strerror}); make "
                             f"it writable for notifier or set state_dir in the config.") from None
        try:
            with contextlib.suppress(PermissionError):
                os.fchmod(fd, FILE_MODE)
            self._lock(fd, role, wait)
            return Lock(fd, self.lock_path, role)
        except BaseException:
            os.close(fd)
            raise

    def _lock(self, fd: int, role: str, wait: float) -> None:
        started = time.monotonic()
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - started
            if waited >= PROBE_GRACE:
                holder = self.holder()
                if holder is not None and (holder.daemon or waited >= wait):
                    raise StateDirBusy(self._busy_message(holder, role, wait), holder)
                if holder is not None and not said:
                    log.warning("waiting for `notifier %s` (pid %d) to finish with %s",
                                holder.role, holder.pid, self.path)
                    said = True
            time.sleep(0.05)

    def _busy_message(self, holder: Holder, role: str, wait: float) -> str:
        if holder.daemon:
            if role in (DAEMON, STARTING):
                return (f"notifier is already running on {self.path} (pid {holder.pid}); one daemon "
                        f"per state directory. Stop it first, or use `notifier reload`.")
            return f"notifier (pid {holder.pid}) is running on {self.path}."
        if holder.role == "?":
            return f"{self.lock_path} is locked by another process (pid {holder.pid or 'unknown'})."
        return (f"`notifier {holder.role}` (pid {holder.pid}) has been using {self.path} for over "
                f"{wait:.0f} s; try again when it is done.")

    def holder(self) -> Holder | None:
        """Who holds the lock now, confirmed by the kernel, or None when nobody does."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NotifierError(f"{self.lock_path} cannot be read ({exc.strerror}); run this as the "
                                f"user the daemon runs as.") from None
        try:
            deadline = time.monotonic() + 1.0
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    return None
                said = _parse(os.pread(fd, LOCK_SIZE, 0))
                owners = _flock_owners(os.fstat(fd))
                if said is not None and (owners is None or said.pid in owners):
                    return said
                # A holder that has just taken the lock has not written its pid yet; a file
                # that still disagrees after that is not to be believed.
                if time.monotonic() > deadline:
                    return Holder(min(owners) if owners else 0, "?")
                time.sleep(0.02)
        finally:
            os.close(fd)

    def signal_daemon(self, signum: int) -> Holder:
        """Send `signum` to the running daemon, and only to it. Raises NoDaemon."""
        holder = self.holder()
        if holder is None:
            raise NoDaemon(f"nothing holds {self.lock_path}")
        if holder.role == STARTING:
            raise NoDaemon(f"notifier (pid {holder.pid}) is still starting; try again in a moment")
        if not holder.ready:
            raise NoDaemon(f"{self.lock_path} is held by pid {holder.pid}, which is not `notifier run`")
        try:
            pidfd = os.pidfd_open(holder.pid)
        except ProcessLookupError:
            raise NoDaemon(f"pid {holder.pid} has just exited") from None
        try:
            # The pidfd names the process for good; if it still holds the lock now, it is ours.
            again = self.holder()
            if again is None or again.pid != holder.pid or not again.ready:
                raise NoDaemon(f"pid {holder.pid} let go of {self.lock_path}")
            signal.pidfd_send_signal(pidfd, signum)
        finally:
            os.close(pidfd)
        return holder

    # -- the database and its identity --------------------------------------------------------

    def open_store(self, reinit: bool = False, locked: bool = False) -> Store:
        """Open state.db, refusing one that is not the database this directory held.

        `reinit` accepts whatever is there (or a new, empty database) and records it as this
        directory's. `locked`: the caller holds the lock, so leftovers of a deleted database
        (its -wal, -shm) can be cleared away safely.
        """
        try:
            make_private_dir(self.path)
            marker = self.marker.read_text().strip() or None
        except FileNotFoundError:
            marker = None
        except OSError as exc:
            raise StateError(f"{self.marker} cannot be read ({exc.strerror}).") from None
        if not self.db.exists():
            if marker and not reinit:
                raise StateDirRefused(
                    f"{self.db} is missing, but {self.marker} says this directory held database "
                    f"{marker}: it was deleted or moved. Put it back (or a backup of it), or run "
                    f"`notifier run --reinit` to start afresh: every watcher records a new baseline "
                    f"and alerts still queued in the old database are lost.")
            self._clear_leftovers(locked)
        store = Store(self.db)
        try:
            current = store.state_id(create=marker is None or reinit)
            if marker and current != marker and not reinit:
                raise StateDirRefused(
                    f"{self.db} is not the database this directory held: its id is "
                    f"{current or 'missing'}, {self.marker} says {marker}. It was replaced. Put the "
                    f"right file back, or run `notifier run --reinit` to accept this one.")
            if current is None:
                current = store.state_id(create=True)
            if current != marker:
                self._write_marker(str(current))
                if marker:
                    log.warning("%s: accepted %s as this directory's database (--reinit)", self.path, self.db)
        except BaseException:
            store.close()
            raise
        return store

    def _clear_leftovers(self, locked: bool) -> None:
        """A -wal or -shm without its database belongs to a deleted one; SQLite would apply
        that old log to a new database and corrupt it."""
        leftovers = [p for p in (self.path / f"{DB_NAME}-wal", self.path / f"{DB_NAME}-shm") if p.exists()]
        if not leftovers:
            return
        if not locked:
            raise StateDirRefused(f"{self.db} is missing but {leftovers[0].name} is still there; run "
                                  f"`notifier run --reinit` to clear it and start afresh.")
        for path in leftovers:
            path.unlink(missing_ok=True)
        log.warning("removed %s, left behind by a deleted database", ", ".join(p.name for p in leftovers))

    def _write_marker(self, state_id: str) -> None:
        tmp = self.marker.with_name(f".{MARKER_NAME}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                os.write(fd, f"{state_id}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.marker)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StateError(f"{self.marker} cannot be written ({exc.strerror}); free some space "
                             f"or make {self.path} writable for notifier.") from None


def _parse(data: bytes) -> Holder | None:
    """The lock file's content, or None while it is being written."""
    lines = data.decode(errors="replace").split("\n")
    pid, _, role = lines[0].partition(" ")
    if not pid.isdigit() or not role:
        return None
    try:
        health = json.loads(lines[1]) if len(lines) > 1 and lines[1].strip() else {}
    except json.JSONDecodeError:
        return None  # caught halfway through a rewrite
    return Holder(int(pid), role.strip(), health if isinstance(health, dict) else {})


def _flock_owners(st: os.stat_result) -> set[int] | None:
    """Pids the kernel lists as holding an exclusive flock on this file (None: cannot tell).

    /proc/locks lines look like "1: FLOCK  ADVISORY  WRITE 7255 fe:00:2148418 0 EOF"; a waiter
    has "->" after the number and holds nothing. A pid outside our pid namespace shows as 0.
    """
    try:
        text = PROC_LOCKS.read_text()
    except OSError:
        return None
    file = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    owners = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[3] == "WRITE" and parts[5] == file:
            owners.add(int(parts[4]))
    return owners
