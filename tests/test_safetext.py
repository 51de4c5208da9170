"""notifier.safetext: what reaches a mail or a terminal from outside cannot drive it."""

from __future__ import annotations

import pytest

from notifier.safetext import visible


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b[31mred\x1b[0m", "red"),  # CSI sequences are terminal formatting: removed whole
    ("\x1b[1;38;5;196mbold\x1b[m", "bold"),
    ("\x1b]0;title\x07text", "text"),  # OSC (window title), ended by BEL...
    ("\x1b]8;;https://e.com\x1b\\link\x1b]8;;\x1b\\", "link"),  # ...or by ESC \\
    ("\x1b(Bplain", "plain"),  # two-character sequences (tput sgr0 prints this one)
    ("bare\x1b", "bare\ufffd"),  # a bare ESC is shown, not dropped
    ("a\x00b\x07c\x85d\x9be\x7ff", "a\ufffdb\ufffdc\ufffdd\ufffde\ufffdf"),
    ("crlf\r\nlone\rcr", "crlf\nlone\ncr"),
    ("tab\tand\nnewline 价格 😀 \u2028", "tab\tand\nnewline 价格 😀 \u2028"),
])
def test_visible(raw: str, shown: str) -> None:
    assert visible(raw) == shown
