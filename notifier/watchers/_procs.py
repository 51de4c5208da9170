"""Kill every process a command started, including those that left its process group.

Killing the process group misses helpers that called setsid() (daemons, `setsid`, some
shells' job control), and a parent's death hides its orphans from the process tree. So each
command carries a random mark in its environment, which every descendant inherits, and a
kill takes the group, the process tree below the command, and every process of ours that
carries the mark. Only a descendant that both leaves the tree and clears its environment
(`setsid env -i ...` after its parent died) can escape; that is deliberate evasion.

Linux only for the tree and the marks (they are read from /proc); elsewhere the group kill
remains.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal

MARK = "NOTIFIER_CHECK_ID"
_ROUNDS = 20  # each round catches children forked while the previous one was being killed


def new_mark() -> str:
    """A value for MARK that no other command run shares."""
    return secrets.token_hex(16)


def kill_tree(leader: int, mark: str) -> None:
    """SIGKILL the command `leader` (not reaped yet, so its pid is not reused), its process
    group, its descendants and every process carrying `mark`, until no new one turns up."""
    me = os.getpid()
    targets = _descendants(leader) | _marked(mark)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group has gone
        os.killpg(leader, signal.SIGKILL)
    killed: set[int] = set()
    for _ in range(_ROUNDS):
        targets -= killed | {me}
        if not targets:
            return
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= targets
        targets = _marked(mark)


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _descendants(leader: int) -> set[int]:
    """Every process below `leader` in the process tree."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(pid)
    found: set[int] = set()
    todo = [leader]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _marked(mark: str) -> set[int]:
    """Our processes whose environment holds MARK=mark (zombies have no environment left)."""
    needle = f"{MARK}={mark}".encode()
    uid = os.getuid()
    found = set()
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if needle in environ.split(b"\0"):
            found.add(pid)
    return found
