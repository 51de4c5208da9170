"""Real servers the tests start from a temporary directory, and what they share."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], sig: int, timeout: float, *, group: bool) -> None:
    """Stop a server by its PID: `sig` to the process (or to its process group, which it leads),
    then SIGKILL to the whole group if it has not ended within `timeout` seconds."""
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
