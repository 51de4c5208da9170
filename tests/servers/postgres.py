"""A real PostgreSQL for tests: `initdb` into a temporary directory, one server per test session
(per xdist worker), a fresh database per test.

PostgreSQL refuses to run as root: when the tests do (CI), the cluster directory is given to
`nobody` and every server binary runs through setpriv as that user. The server listens on a
unix socket in its own directory (trust: the tests' own connections) and on a free loopback
port with a password (scram-sha-256), so a wrong password is refused as it would be in
production. It is stopped by the PID of the postmaster; `restart()` stops and starts it again on
the same data and port, for the tests of a database that goes away under the daemons.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.servers import stop_process

BIN = Path("/usr/lib/postgresql/15/bin")
HOST = "127.0.0.1"
USER = "notifier"
PASSWORD = "Pg-Test-Secret-4x9w"  # a throwaway cluster's
IS_ROOT = os.geteuid() == 0


def require_postgres() -> None:
    """Fail (never skip) with what to install when PostgreSQL's server binaries are missing."""
    missing = [name for name in ("initdb", "postgres") if not (BIN / name).exists()]
    if missing:
        pytest.fail(f"PostgreSQL 15 is not installed ({', '.join(missing)} missing from {BIN}): "
                    f"these tests run a real server. Install it with `make debs` (as root) or "
                    f"`sudo apt-get install postgresql`.", pytrace=False)


class Postgres:
    """One throwaway cluster; `url(db)` is how notifier reaches it over TCP with the password."""

    def __init__(self) -> None:
        require_postgres()
        self.root = Path(tempfile.mkdtemp(prefix="notifier-pg-"))
        self.root.chmod(0o755)
        runner = pwd.getpwnam("nobody") if IS_ROOT else pwd.getpwuid(os.getuid())
        self.uid, self.gid = runner.pw_uid, runner.pw_gid
        self.data = self.root / "data"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def free_port() -> int:
        """A loopback port nothing listens on (just now)."""
        with socket.create_server((HOST, 0)) as s:
            port: int = s.getsockname()[1]
            return port

    def _as_runner(self, command: list[str]) -> list[str]:
        if not IS_ROOT:
            return command
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", *command]

    def init(self) -> Postgres:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        pwfile.chmod(0o600)
        if IS_ROOT:
            os.chown(self.root, self.uid, self.gid)
            os.chown(pwfile, self.uid, self.gid)
        done = subprocess.run(self._as_runner(
            [str(BIN / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
             "--locale=C.UTF-8"]), capture_output=True, check=False)
        pwfile.unlink()
        if done.returncode:
            raise RuntimeError(f"initdb failed:\n{done.stderr.decode(errors='replace')}")
        return self

    def start(self) -> Postgres:
        """Start the postmaster and wait (with a deadline) until it accepts connections."""
        for _attempt in range(5):  # a picked port may be taken before the server binds it
            self.port = self.port or self.free_port()
            if self._launch():
                return self
            self.port = 0
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log()}")

    def _launch(self) -> bool:
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - the child keeps it
        if IS_ROOT:
            os.chown(self.root / "postgres.log", self.uid, self.gid)
        command = [str(BIN / "postgres"), "-D", str(self.data), "-k", str(self.root), "-h", HOST,
                   "-p", str(self.port), "-c", "fsync=off", "-c", "synchronous_commit=off",
                   "-c", "full_page_writes=off", "-c", "max_connections=200"]
        self.proc = subprocess.Popen(self._as_runner(command), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.admin_dsn(), connect_timeout=1).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """Over the unix socket, trusted: how the fixture itself creates and drops databases."""
        return f"host={self.root} port={self.port} user={USER} dbname={dbname}"

    def url(self, dbname: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@{HOST}:{self.port}/{dbname}"

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn(), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log(self) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Fast shutdown by the postmaster's PID (SIGINT), SIGKILL past a deadline."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, signal.SIGINT, 15, group=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session (each xdist worker has its own)."""
    server = Postgres().init().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """A fresh, empty database on the session's server, as a postgresql:// URL with the password."""
    name = postgres.create_database()
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)
