"""The shipped unit works as installed: a wheel in a fresh venv, run the way systemd runs it.

The wheel is built from this checkout and installed into a new venv. `ExecStart=` and
`ExecReload=` are read from systemd/notifier.service and run with the environment systemd
gives a `Type=notify` service with `StateDirectory=`, `ConfigurationDirectory=`,
`LoadCredential=` and `WatchdogSec=`; as root they run as nobody, without capabilities, in
a private mount namespace where everything but the state directory is read-only (like
`ProtectSystem=strict`) and this clone's `notifier/` is hidden, so templates can only come from
the wheel. What this machine refuses is printed, and the daemon's assertions run regardless.
"""

from __future__ import annotations

import email
import email.policy
import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from notifier.render import KINDS
from tests.messages import html_text, parse, plain_text
from tests.servers.smtp import PASSWORD, USERNAME, SmtpServer
from tests.test_daemon import DEADLINE, poll

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "notifier.service"
INSTALLED_AT = "/opt/notifier/.venv"  # where the README installs the venv the unit points at
NOBODY = 65534
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"  # PATH systemd gives services
IS_ROOT = os.geteuid() == 0
# The interpreter this test's venv was made from: CPython sets it, typeshed leaves it out.
BASE_PYTHON: str = getattr(sys, "_base_executable", sys.executable)


@dataclass(frozen=True)
class Unit:
    """What the test needs from the shipped unit file, as systemd would read it."""

    exec_start: str
    exec_reload: tuple[str, ...]
    environment: Mapping[str, str]
    timeout_stop: float
    watchdog_usec: int


def seconds(span: str) -> float:
    """A systemd time span such as "30s", "1min" or "60" (plain numbers are seconds)."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit]
    return total


def read_unit(path: Path) -> Unit:
    values: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    environment = dict(word.split("=", 1) for value in values.get("Environment", [])
                       for word in shlex.split(value))
    (exec_start,) = values["ExecStart"]
    return Unit(exec_start, tuple(values["ExecReload"]), environment,
                seconds(values["TimeoutStopSec"][0]), int(seconds(values["WatchdogSec"][0]) * 1_000_000))


def command_line(line: str, venv: Path, env: Mapping[str, str]) -> list[str]:
    """An Exec*= line as argv: the install path swapped for `venv`, then systemd's variable
    expansion (`${X}` stays one word, a bare `$X` splits on whitespace)."""
    argv: list[str] = []
    for word in shlex.split(line.replace(INSTALLED_AT, str(venv))):
        if re.fullmatch(r"\$[A-Z_]+", word):
            argv.extend(env[word[1:]].split())
        else:
            argv.append(re.sub(r"\$\{([A-Z_]+)\}", lambda m: env[m.group(1)], word))
    assert argv[0].startswith("/"), f"systemd needs an absolute path: {line}"
    return argv


# -- the wheel, installed into a fresh venv ----------------------------------------------------


def as_service_user(argv: list[str]) -> list[str]:
    """DynamicUser=, CapabilityBoundingSet= and NoNewPrivileges=, for a command run as root."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--no-new-privs", "--bounding-set=-all", "--", *argv]


@dataclass(frozen=True)
class ServiceUser:
    """Who runs the service (`uid` None: the current user) and the Python its venv is made from."""

    uid: int | None
    python: str
    refused: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def service_user() -> ServiceUser:
    """nobody, with an interpreter of this Python version that nobody can run.

    A real install makes its venv with the system's python3 (`sudo python3 -m venv`); this
    test's own interpreter may live where nobody cannot reach (pyenv under /root), so the
    system one on systemd's PATH is tried first. Without root, or without such an
    interpreter, the service runs as the current user and the test says so.
    """
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not IS_ROOT:
        return ServiceUser(None, BASE_PYTHON, ("not root: the service runs as the current user",))
    candidates = [shutil.which(f"python{version}", path=SYSTEMD_PATH), BASE_PYTHON]
    for python in filter(None, candidates):
        code = "import sys, venv; print('%d.%d' % sys.version_info[:2])"
        probe = subprocess.run(as_service_user([python, "-c", code]), capture_output=True, text=True,
                               timeout=60, check=False)
        if probe.stdout.strip() == version:
            return ServiceUser(NOBODY, python)
    return ServiceUser(None, BASE_PYTHON,
                       (f"no Python {version} that nobody can run: the service runs as root",))


def world_readable_dir(prefix: str) -> Path:
    """A temporary directory other users can enter (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the package sources, as `pip install /opt/notifier` does.

    A copy, so the build's `build/` and egg-info do not land in the shared working tree.
    pyproject.toml needs setuptools>=77 (an SPDX `license`), newer than the one a venv starts
    with: unless this venv has it, pip builds in isolation, fetching it from the package index
    as that install does.
    """
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(ROOT / "notifier", src / "notifier", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    try:
        offline = int(importlib.metadata.version("setuptools").split(".")[0]) >= 77
    except importlib.metadata.PackageNotFoundError:
        offline = False
    isolation = ["--no-build-isolation"] if offline else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
                    "-w", str(out), str(src)], check=True, timeout=120)
    (built,) = out.glob("notifier-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, service_user: ServiceUser) -> Iterator[Path]:
    """A fresh venv with the wheel installed, readable by the unprivileged user.

    The wheel goes in with --no-deps (fast, and no network needed). Its dependencies come from
    this project's venv through a .pth line naming that venv's site-packages: directories
    added by a .pth line have their own .pth files ignored, so the editable install of this
    clone (`__editable__.notifier-*.pth` there) stays inert, and the fresh site-packages comes
    first on sys.path: `import notifier` can only find the wheel's copy.
    """
    base = world_readable_dir("notifier-venv-")
    path = base / "venv"
    subprocess.run([service_user.python, "-m", "venv", "--without-pip", str(path)], check=True, timeout=60)
    python = path / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=120)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    (Path(site) / "_notifier_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    yield path
    shutil.rmtree(base)


def test_wheel_ships_the_templates(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for kind in KINDS:
        for suffix in (".subject.txt", ".txt", ".html"):
            assert f"notifier/templates/{kind}{suffix}" in names
    assert "notifier/templates/README.md" in names
    assert not [n for n in names if n.startswith("templates/") or n.endswith("schema.json")]


def test_installed_notifier_renders_from_its_package_data(venv: Path, tmp_path: Path) -> None:
    python, site = venv / "bin" / "python", venv / "lib"
    code = "import notifier.render as r; print(r.__file__); print(r.SHIPPED_TEMPLATES)"
    where = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, check=True,
                           timeout=60, cwd=tmp_path).stdout.split()
    assert [Path(p).is_relative_to(site) for p in where] == [True, True], where
    # With no smtp account the test alert goes to the Maildir: rendered from the wheel's templates.
    (tmp_path / "watchers.yaml").write_text("mail: {to: [me@example.com]}\nwatchers: []\n")
    result = subprocess.run([str(venv / "bin" / "notifier"), "-c", "watchers.yaml", "test-mail"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={"PATH": SYSTEMD_PATH, "HOME": str(tmp_path)}, check=False)
    assert result.returncode == 0, result.stderr
    (delivered,) = (tmp_path / "state" / "maildir" / "new").iterdir()
    msg = email.message_from_bytes(delivered.read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "[notifier] Test alert"
    assert msg.get_body(("html",)) is not None


# -- the unit's sandbox, as far as this machine allows -----------------------------------------


class Sandbox:
    """Runs a command the way the unit does: as the service user, umask 0077, in `/`, with the
    file system read-only except the state directory and this clone's package hidden.

    `refused` says what this machine would not do (not root, no mount namespace, no Python
    for nobody); those parts are left out and everything else still runs.
    """

    def __init__(self, state: Path, user: ServiceUser) -> None:
        self.state, self.user = state, user
        self.refused = list(user.refused)
        self.mounts = IS_ROOT
        if not IS_ROOT:
            self.refused.append("not root: no mount namespace, the file system stays writable")
            self.mounts = False
            return
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                               capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode != 0:
            self.refused.append(f"no mount namespace ({probe.stderr.strip()}): "
                                "the file system stays writable")
            self.mounts = False

    def command(self, argv: list[str]) -> list[str]:
        state = shlex.quote(str(self.state))
        script = ""
        if self.mounts:
            # ProtectSystem=strict + StateDirectory=: every mount read-only but the state dir.
            # A mount the kernel keeps writable is reported ("sandbox: ...") in the log.
            script += f"""
mount --bind {state} {state} || echo "sandbox: cannot bind {state}" >&2
awk '{{print $5}}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case "$mp" in /proc|/proc/*|/dev|/dev/*|{state}) continue;; esac
  mount -o remount,bind,ro "$mp" || echo "sandbox: $mp stays writable" >&2
done
mount -t tmpfs -o ro,size=4k,mode=0755 hidden {shlex.quote(str(ROOT / "notifier"))} \\
  || echo "sandbox: cannot hide the clone's package" >&2
"""
        script += 'cd / && umask 077 && export WATCHDOG_PID=$$ && exec "$@"\n'
        if self.user.uid is not None:
            argv = as_service_user(argv)
        wrapped = ["sh", "-c", script, "unit", *argv]
        return ["unshare", "-m", "--propagation", "private", "--", *wrapped] if self.mounts else wrapped

    def check(self) -> None:
        """Probe the sandbox as the service would see it; note what the kernel refused, and
        require what it allowed: /tmp read-only, the state dir writable, the clone hidden."""
        probe = f"""
if touch /tmp/notifier-probe-$$ 2>/dev/null; then rm /tmp/notifier-probe-$$; echo "/tmp is writable"; fi
touch "$STATE_DIRECTORY/probe" && rm "$STATE_DIRECTORY/probe" || echo "the state dir is not writable"
ls -A {shlex.quote(str(ROOT / "notifier"))}
"""
        result = subprocess.run(self.command(["/bin/sh", "-c", probe]), capture_output=True, text=True,
                                env={"PATH": SYSTEMD_PATH, "STATE_DIRECTORY": str(self.state)},
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "the state dir is not writable" not in result.stdout
        refused = [ln.removeprefix("sandbox: ") for ln in result.stderr.splitlines()
                   if ln.startswith("sandbox: ")]
        self.refused.extend(refused)
        if self.mounts and not refused:
            assert result.stdout == "", result.stdout  # nothing writable, nothing of the clone


def owned(path: Path, mode: int, user: ServiceUser | None = None) -> Path:
    """Give `path` the mode, and the service user as owner if `user` is given, as systemd would."""
    if user is not None and user.uid is not None:
        os.chown(path, user.uid, user.uid)
    path.chmod(mode)
    return path


class NotifySocket:
    """The NOTIFY_SOCKET end: collects the daemon's datagrams, one list entry per field."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        path.chmod(0o777)  # like /run/systemd/notify: any service may write to it
        self.fields: list[str] = []

    def seen(self, pattern: str, after: int = 0) -> bool:
        """Whether a field matching `pattern` arrived (after the first `after` fields)."""
        while True:
            try:
                self.fields.extend(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                break
        return any(re.fullmatch(pattern, f) for f in self.fields[after:])


    def close(self) -> None:
        self.sock.close()


@dataclass
class Installed:
    """/etc/notifier, /var/lib/notifier, the credentials and the journal for one run."""

    base: Path
    config: Path
    state: Path
    credentials: Path
    watched: Path
    journal: Path


@pytest.fixture
def installed(smtp_server: SmtpServer, service_user: ServiceUser) -> Iterator[Installed]:
    """The shipped watchers.yaml as installed, its watchers replaced by one file watcher.

    Its global settings are kept, so one that cannot work under the unit (say a state_dir in
    the read-only /etc/notifier) fails here. Mail goes to the test server, logging in with the
    `smtp-password` credential and trusting the test CA from a copy the service can read.
    """
    base = world_readable_dir("notifier-unit-")
    config = base / "etc-notifier"
    config.mkdir(mode=0o755)
    assert smtp_server.ca_file is not None
    owned(Path(shutil.copy(smtp_server.ca_file, config / "test-ca.pem")), 0o644)
    watched = base / "watched" / "doc.txt"
    watched.parent.mkdir(mode=0o755)
    watched.write_text("v1\n")
    watched.chmod(0o644)
    settings = yaml.safe_load((ROOT / "watchers.yaml").read_text())
    settings.update(
        smtp={"test": {"host": smtp_server.host, "port": smtp_server.port, "security": smtp_server.security,
                       "username": USERNAME, "password_credential": "smtp-password",
                       "ca_file": str(config / "test-ca.pem")}},
        mail={"to": ["me@example.com"]},
        watchers=[{"name": "doc", "kind": "file", "path": str(watched), "every": "1s"}])
    (config / "watchers.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    (config / "watchers.yaml").chmod(0o644)
    credentials = base / "credentials"
    credentials.mkdir()
    (credentials / "smtp-password").write_text(PASSWORD)
    owned(credentials / "smtp-password", 0o400, user=service_user)
    owned(credentials, 0o500, user=service_user)
    state = base / "state"
    state.mkdir()
    owned(state, 0o700, user=service_user)  # StateDirectoryMode=0700
    journal = base / "journal.log"
    journal.touch()
    yield Installed(base, config, state, credentials, watched, journal)
    shutil.rmtree(base)


def received(smtp: SmtpServer) -> list[EmailMessage]:
    return [parse(r.content) for r in smtp.received]


def test_shipped_unit_runs_as_installed(venv: Path, installed: Installed, smtp_server: SmtpServer,
                                        service_user: ServiceUser) -> None:
    started = time.monotonic()
    unit = read_unit(UNIT)
    sandbox = Sandbox(installed.state, service_user)
    sandbox.check()
    for reason in sandbox.refused:
        print(f"unit emulation refused: {reason}")
    notify = NotifySocket(installed.base / "notify")
    journal = installed.journal.stat()
    env = {
        "PATH": SYSTEMD_PATH, "HOME": "/", "USER": "nobody", "LOGNAME": "nobody",
        "INVOCATION_ID": uuid.uuid4().hex,
        "STATE_DIRECTORY": str(installed.state),
        "CONFIGURATION_DIRECTORY": str(installed.config),
        "CREDENTIALS_DIRECTORY": str(installed.credentials),
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": str(unit.watchdog_usec),
        "JOURNAL_STREAM": f"{journal.st_dev}:{journal.st_ino}",  # stdout/stderr go to "the journal"
        **unit.environment,
    }

    def log() -> str:
        return installed.journal.read_text(errors="replace")

    def run(line: str, main_pid: int) -> subprocess.CompletedProcess[str]:
        argv = command_line(line, venv, {**env, "MAINPID": str(main_pid)})
        return subprocess.run(sandbox.command(argv), env=env, capture_output=True, text=True,
                              timeout=60, cwd="/", check=False)

    def until(condition: Callable[[], bool], what: str) -> None:
        """Poll for `condition`, failing at once with the journal if the daemon died."""
        poll(lambda: condition() or proc.poll() is not None, what)
        assert proc.poll() is None, f"notifier exited with {proc.returncode}:\n{log()}"

    def notified(pattern: str, after: int = 0) -> None:
        until(lambda: notify.seen(pattern, after), f"{pattern!r} on NOTIFY_SOCKET")

    with installed.journal.open("ab") as out:
        proc = subprocess.Popen(sandbox.command(command_line(unit.exec_start, venv, env)), env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd="/")
    try:
        notified("READY=1")
        assert notify.seen(r"STATUS=1 watchers, next check in \d+ s, outbox 0")
        notified("WATCHDOG=1")  # WatchdogSec= is honoured
        until(lambda: "watcher=doc kind=file outcome=baseline" in log(), "the baseline check")

        installed.watched.write_text("v2\n")
        smtp_server.wait_for(1, timeout=DEADLINE)
        (msg,) = received(smtp_server)
        assert smtp_server.received[0].rcpt_tos == ("me@example.com",)
        assert msg["Subject"] == "[notifier] doc changed: 1 added, 1 removed"
        assert msg["To"] == "me@example.com"
        text = plain_text(msg).splitlines()
        assert text[-2:] == ["-v1", "+v2"]
        assert "v2" in html_text(msg)
        assert smtp_server.logins == [USERNAME]  # the password came from the credential

        # `systemctl reload`: each ExecReload= line, as the service user with its environment.
        reloaded = len(notify.fields)
        for line in unit.exec_reload:
            result = run(line, proc.pid)
            assert result.returncode == 0, (line, result.stdout, result.stderr)
        reload_line = r"reloaded .*: 1 watcher\(s\), 0 added or changed, 0 removed"
        until(lambda: re.search(reload_line, log()) is not None, "the reload in the log")
        notified(r"STATUS=1 watchers.*", after=reloaded)

        # `systemctl stop`: SIGTERM, and a clean exit within TimeoutStopSec=.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=unit.timeout_stop) == 0, log()
        assert notify.seen("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        notify.close()
        print(log())
    journal_text = log()
    assert "stopped" in journal_text
    assert "Traceback" not in journal_text
    assert PASSWORD not in journal_text
    assert not re.search(r"^\d{4}-", journal_text, re.MULTILINE)  # the journal adds its own times
    db = installed.state / "state.db"
    assert stat.S_IMODE(db.stat().st_mode) & 0o077 == 0  # UMask=0077
    assert db.stat().st_uid == (service_user.uid if service_user.uid is not None else os.geteuid())
    assert not (installed.config / "state").exists()
    print(f"unit emulation: {'as nobody' if service_user.uid is not None else 'as the current user'}, "
          f"{'read-only file system' if sandbox.mounts else 'writable file system'}, "
          f"{time.monotonic() - started:.1f} s")
