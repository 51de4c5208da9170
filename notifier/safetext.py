"""Text from outside (pages, command output, server replies) made safe to show a person.

Mails and terminals both render what they are given: an escape sequence in a watched page
could recolour, hide or retitle what the reader sees. `visible` is the one rule for that,
used for every alert part (notifier.render) and for what the CLI prints.
"""

from __future__ import annotations

import re

# Control characters other than tab and newline (C0, DEL, C1), CR and ESC included: what
# `visible` must look at. Complete escape sequences (CSI like ESC[31m, OSC like a terminal
# title ending in BEL or ESC\, and two-character ones like ESC(B) are formatting for a
# terminal and are removed whole; every other control character, a bare ESC included, is
# shown as U+FFFD. CR LF and a lone CR are line ends, as the diff already treats them.
UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])")
REPLACEMENT = "\ufffd"


def visible(text: str) -> str:
    """`text` without terminal escape sequences and with every other control character but tab
    and newline shown as U+FFFD, so nothing fetched can hide text, ring bells or restyle a
    terminal or a mail. Text without control characters is returned as it is (fast)."""
    if not UNSAFE.search(text):
        return text
    text = _ESCAPES.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return UNSAFE.sub(REPLACEMENT, text)
