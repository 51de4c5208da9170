"""Terminal output for `notifier check`: colored diffs and a progress bar, only on a TTY."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from notifier.words import Span, pair

_COLORS = {"+": "\033[32m", "-": "\033[31m", "@": "\033[36m"}
_BOLD = "\033[1m"
_MARK, _UNMARK = "\033[7m", "\033[27m"  # reverse video for the words that changed in a line
_RESET = "\033[0m"


def use_color(stream: TextIO) -> bool:
    """Color only for a terminal, and never when NO_COLOR is set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def colored_diff(unified: str, color: bool) -> str:
    """A unified diff (as `Diff.unified` writes it) for a terminal: file names bold, hunk
    headers cyan, removed lines red, added green, and inside a removed line and the added line
    it was rewritten as (paired as in mails, by notifier.words) the changed words in reverse
    video. Without `color`, the text as it is."""
    if not color:
        return unified
    lines = unified.splitlines()
    out: list[str] = []
    in_hunk = False
    n = 0
    while n < len(lines):
        line = lines[n]
        in_hunk = in_hunk or line.startswith("@@")
        if not in_hunk:  # the ---/+++ lines before the first hunk
            out.append(f"{_BOLD}{line}{_RESET}" if line.startswith(("---", "+++")) else line)
            n += 1
            continue
        mid = n
        while mid < len(lines) and lines[mid].startswith("-"):
            mid += 1
        end = mid
        while end < len(lines) and lines[end].startswith("+"):
            end += 1
        if end == n:  # context or a hunk header
            code = _COLORS.get(line[:1], "")
            out.append(f"{code}{line}{_RESET}" if code else line)
            n += 1
            continue
        out.extend(_block(lines[n:mid], lines[mid:end]))
        n = end
    return "\n".join(out) + "\n"


def _block(removed: Sequence[str], added: Sequence[str]) -> list[str]:
    """A run of removed lines and the added lines after it, with the changed words marked."""
    marks: dict[tuple[str, int], tuple[Span, ...]] = {}
    for found in pair([ln[1:] for ln in removed], [ln[1:] for ln in added]):
        marks["-", found.old_index] = found.old
        marks["+", found.new_index] = found.new
    out = []
    for sign, block in (("-", removed), ("+", added)):
        for index, line in enumerate(block):
            spans = marks.get((sign, index))
            text = "".join(f"{_MARK}{s.text}{_UNMARK}" if s.changed else s.text
                           for s in spans) if spans else line[1:]
            out.append(f"{_COLORS[sign]}{sign}{text}{_RESET}")
    return out


class Progress:
    """A one-line progress bar on stderr; silent when stderr is not a terminal."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, min_total: int = 5) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.active = stream.isatty() and total >= min_total

    def advance(self) -> None:
        self.done += 1
        if self.active:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(f"\r[{'#' * filled}{' ' * (width - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def clear(self) -> None:
        """Erase the bar before printing a line, so output and bar don't interleave."""
        if self.active:
            self.stream.write("\r\033[K")
