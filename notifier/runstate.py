"""What the running daemon tells other commands about itself, through a small file.

`notifier status` runs in another process, possibly while watchers.yaml on disk has an error
the daemon refused. The daemon records which configuration it runs (by digest) and what it
refused, in `<state_dir>/running.json`, written atomically and readable by its user only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILE_NAME = "running.json"


@dataclass(frozen=True)
class RunState:
    """The daemon's configuration as it stands: what runs, and the last edit it refused."""

    pid: int
    config: str  # path of watchers.yaml
    digest: str  # sha256 of the bytes the running configuration was loaded from
    loaded_at: float
    refused_digest: str | None = None
    refused_at: float | None = None
    problems: tuple[str, ...] = field(default=())
    relay: str | None = None  # "listening on HOST:PORT" or "NOT LISTENING: why"; None: no relay


def digest(path: Path) -> str | None:
    """The sha256 of a file's bytes, or None when it cannot be read (deleted mid-edit)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def write(state_dir: Path, state: RunState) -> None:
    """Replace the file in one step, so a reader never sees half of it."""
    target = state_dir / FILE_NAME
    tmp = target.with_name(f".{FILE_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(asdict(state), out)
    os.replace(tmp, target)


def read(state_dir: Path) -> RunState | None:
    """The last state a daemon wrote, or None when there is none or it cannot be read."""
    try:
        data = json.loads((state_dir / FILE_NAME).read_text(encoding="utf-8"))
        return RunState(**{**data, "problems": tuple(data.get("problems") or ())})
    except (OSError, ValueError, TypeError):
        return None


def remove(state_dir: Path) -> None:
    """Forget the daemon's state at a clean stop."""
    with contextlib.suppress(OSError):
        (state_dir / FILE_NAME).unlink()
