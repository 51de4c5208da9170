"""notifier.console: colored diffs with the changed words marked, plain text when not a TTY."""

from __future__ import annotations

import io

import pytest

from notifier.console import Progress, colored_diff, use_color
from notifier.diff import compute

RED, GREEN, CYAN, BOLD, RESET = "\033[31m", "\033[32m", "\033[36m", "\033[1m", "\033[0m"
MARK, UNMARK = "\033[7m", "\033[27m"

OLD = "title\nprice: 3.00 USD\n--- a line of dashes\nfooter\n"
NEW = "title\nprice: 3.75 USD\nsomething new\nfooter\n"


def test_without_color_the_unified_diff_is_unchanged() -> None:
    unified = compute(OLD, NEW).unified()
    assert colored_diff(unified, color=False) == unified


def test_changed_words_are_in_reverse_video_inside_their_line_color() -> None:
    lines = colored_diff(compute(OLD, NEW).unified("before", "after"), color=True).splitlines()
    assert lines == [
        f"{BOLD}--- before{RESET}",
        f"{BOLD}+++ after{RESET}",
        f"{CYAN}@@ -1,4 +1,4 @@{RESET}",
        " title",
        f"{RED}-price: {MARK}3.00{UNMARK} USD{RESET}",
        f"{RED}---- a line of dashes{RESET}",  # content, not a file header: no pair, no marks
        f"{GREEN}+price: {MARK}3.75{UNMARK} USD{RESET}",
        f"{GREEN}+something new{RESET}",
        " footer",
    ]


def test_chinese_characters_are_marked_one_by_one() -> None:
    out = colored_diff(compute("本次考试取消\n", "本次考试延期\n").unified(), color=True)
    assert f"{RED}-本次考试{MARK}取消{UNMARK}{RESET}\n" in out
    assert f"{GREEN}+本次考试{MARK}延期{UNMARK}{RESET}\n" in out


def test_a_line_rewritten_completely_is_colored_whole() -> None:
    out = colored_diff(compute("Welcome to our shop\n", "Closed for holidays until May\n").unified(),
                       color=True)
    assert f"{RED}-Welcome to our shop{RESET}\n" in out
    assert f"{GREEN}+Closed for holidays until May{RESET}\n" in out
    assert MARK not in out


def test_additions_alone_are_green() -> None:
    out = colored_diff(compute("a\n", "a\nb\n").unified(), color=True)
    assert f"{GREEN}+b{RESET}\n" in out
    assert MARK not in out


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_color_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Tty())
    assert not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())


def test_progress_draws_only_on_a_terminal() -> None:
    quiet, tty = io.StringIO(), Tty()
    for stream in (quiet, tty):
        bar = Progress(5, stream)
        for _ in range(5):
            bar.advance()
        bar.clear()
    assert quiet.getvalue() == ""
    assert "5/5" in tty.getvalue()
