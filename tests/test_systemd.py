"""notifier.systemd and the unit files: sd_notify datagrams and `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from notifier import systemd

ROOT = Path(__file__).resolve().parent.parent


def test_notify_sends_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert systemd.notify("READY=1", "STATUS=2 watchers")
        assert sock.recv(4096) == b"READY=1\nSTATUS=2 watchers"


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["notifier.service", "notifier-user.service"])
def test_units_verify(tmp_path: Path, unit: str) -> None:
    """The shipped units parse cleanly, with the install path pointed at this checkout."""
    binary = str(Path(sys.executable).parent / "notifier")
    text = (ROOT / "systemd" / unit).read_text()
    text = text.replace("/opt/notifier/.venv/bin/notifier", binary)
    text = text.replace("%h/.local/share/notifier/.venv/bin/notifier", binary)
    (tmp_path / "notifier.service").write_text(text)
    args = ["systemd-analyze", "verify", "--man=no"]
    if "user" in unit:
        args.append("--user")
    result = subprocess.run([*args, str(tmp_path / "notifier.service")], capture_output=True,
                            text=True, timeout=60, check=False)
    problems = [ln for ln in result.stderr.splitlines() if "notifier.service" in ln]
    assert problems == [], result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_system_unit_exposure_is_low(tmp_path: Path) -> None:
    shutil.copy(ROOT / "systemd" / "notifier.service", tmp_path / "notifier.service")
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(tmp_path / "notifier.service")], capture_output=True, text=True,
                            timeout=60, check=False)
    line = next(ln for ln in result.stdout.splitlines() if "Overall exposure level" in ln)
    assert float(line.split(":")[1].split()[0]) <= 2.0, line
