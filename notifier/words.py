"""Word-level changes inside rewritten lines: which words, numbers or characters differ.

A line diff shows "price 3.00 USD" → "price 3.75 USD" as one line removed and one added, and
the reader hunts for the difference. Here the removed and added lines of one changed block are
paired by similarity, and each pair is cut into spans marked changed or not, which mails show
as <del>/<ins> and a terminal in reverse video. Lines too different to pair get no spans: they
stay a removed and an added line, as a plain line diff shows them.

Tokens need no dictionary: in space-separated scripts a word or a number (3.75 and 1,000 are
one token each), a run of spaces, or one other character; in Chinese, Japanese and Korean,
written without spaces, one character. Combining marks stay with the character they modify.
Pure functions on strings: nothing here knows about mails or terminals.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

SIMILAR = 0.5  # lines pair when at least this share of their (non-space) tokens is kept
MAX_TOKENS = 2_000  # per side, after the common head and tail: more is one changed span
MAX_WORK = 50_000  # tokens compared to pair one block by best match; more pair by position

# Han (with its radicals, strokes and extensions), Bopomofo, Hiragana, Katakana, Hangul.
_CJK = ("\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u318f\u31a0-\u31ff\u3400-\u4dbf"
        "\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f")
_TOKEN = re.compile(rf"[{_CJK}]|(?:[^\W{_CJK}]|(?<=\d)[.,](?=\d))+|\s+|.", re.DOTALL)
_WORD = re.compile(rf"[^\W{_CJK}]")
_ZWJ = "\u200d"
_JOINERS = frozenset({"Mn", "Mc", "Me", "Sk"})  # combining marks; Sk: emoji skin tones


class Span(NamedTuple):
    """A piece of one line; `changed` when the other line of its pair does not have it."""

    text: str
    changed: bool


class Pair(NamedTuple):
    """A removed line (`old_index` in its block) rewritten as an added one (`new_index`)."""

    old_index: int
    new_index: int
    old: tuple[Span, ...]
    new: tuple[Span, ...]


def tokens(line: str) -> list[str]:
    """`line` cut into the units a change is shown in; they join back into `line`."""
    found: list[str] = _TOKEN.findall(line)
    if line.isascii():
        return found
    out: list[str] = []
    for tok in found:
        if out and (_joins(tok[0]) or out[-1][-1] == _ZWJ
                    or (_joins(out[-1][-1]) and _WORD.match(out[-1]) and _WORD.match(tok))):
            out[-1] += tok  # "e\u0301x" is one word, not "é" and "x"
        else:
            out.append(tok)
    return out


def spans(old: str, new: str) -> tuple[tuple[Span, ...], tuple[Span, ...]] | None:
    """What changed between two lines, as spans of each; None when they are too different to
    be one line rewritten (less than `SIMILAR` of their tokens kept)."""
    match = _compare(tokens(old), tokens(new))
    return None if match is None else (match.old, match.new)


def pair(removed: Sequence[str], added: Sequence[str]) -> list[Pair]:
    """The removed and added lines of one changed block that are one line rewritten, in order.

    The pairing keeps the order of both sides and maximises the total similarity (so a line
    inserted between two edited ones does not shift the pairs). Comparing every removed line
    with every added one costs their product: past `MAX_WORK` tokens, line i pairs with line i
    when they are similar enough, which is what a long table of rewritten rows needs anyway.
    """
    old = [tokens(line) for line in removed]
    new = [tokens(line) for line in added]
    work = len(new) * sum(map(len, old)) + len(old) * sum(map(len, new))
    if work > MAX_WORK:
        by_position = ((i, _compare(old[i], new[i])) for i in range(min(len(old), len(new))))
        return [Pair(i, i, match.old, match.new) for i, match in by_position if match is not None]
    compared = {(i, j): match for i in range(len(old)) for j in range(len(new))
                if (match := _compare(old[i], new[j])) is not None}
    best = [[0.0] * (len(new) + 1) for _ in range(len(old) + 1)]  # best[i][j]: old[:i], new[:j]
    for i in range(1, len(old) + 1):
        for j in range(1, len(new) + 1):
            best[i][j] = max(best[i - 1][j], best[i][j - 1])
            if (i - 1, j - 1) in compared:
                best[i][j] = max(best[i][j], best[i - 1][j - 1] + compared[i - 1, j - 1].ratio)
    pairs: list[Pair] = []
    i, j = len(old), len(new)
    while i and j:
        if best[i][j] == best[i - 1][j]:
            i -= 1
        elif best[i][j] == best[i][j - 1]:
            j -= 1
        else:
            i, j = i - 1, j - 1
            pairs.append(Pair(i, j, compared[i, j].old, compared[i, j].new))
    return pairs[::-1]


class _Match(NamedTuple):
    ratio: float  # the share of non-space tokens kept (1.0 for two lines of spaces only)
    old: tuple[Span, ...]
    new: tuple[Span, ...]


def _compare(a: list[str], b: list[str]) -> _Match | None:
    """Spans of both token lists, or None when less than `SIMILAR` of them is kept."""
    total = _words(a) + _words(b)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    mid_a, mid_b = a[head:len(a) - tail], b[head:len(b) - tail]
    kept = 2 * (_words(a[:head]) + _words(a[len(a) - tail:]))  # of both lines, spaces aside
    if total and (kept + 2 * _common(mid_a, mid_b)) / total < SIMILAR:
        return None  # cheap: even if every shared token lined up, too little would be kept
    kept_a, kept_b = [True] * head + [False] * len(mid_a), [True] * head + [False] * len(mid_b)
    if mid_a and mid_b and max(len(mid_a), len(mid_b)) <= MAX_TOKENS:
        # autojunk: past 200 tokens, the frequent ones (spaces) only extend matches, never start
        # one; without it, every space would be tried against every space (seconds per line).
        for i, j, size in difflib.SequenceMatcher(None, mid_a, mid_b).get_matching_blocks():
            kept_a[head + i:head + i + size] = [True] * size
            kept_b[head + j:head + j + size] = [True] * size
            kept += 2 * _words(mid_a[i:i + size])
    kept_a += [True] * tail
    kept_b += [True] * tail
    ratio = kept / total if total else 1.0
    return _Match(ratio, _spans(a, kept_a), _spans(b, kept_b)) if ratio >= SIMILAR else None


def _words(toks: list[str]) -> int:
    """How many tokens are not spaces: similarity counts words, not the gaps between them."""
    return len(toks) - sum(map(str.isspace, toks))


def _common(a: list[str], b: list[str]) -> int:
    """How many non-space tokens both have, in any order: an upper bound of what a match keeps."""
    if not a or not b:
        return 0
    shared = Counter(t for t in a if not t.isspace()) & Counter(t for t in b if not t.isspace())
    return sum(shared.values())


def _spans(toks: list[str], kept: list[bool]) -> tuple[Span, ...]:
    """Runs of kept and changed tokens. Spaces kept between two changes count as changed, so
    "red big" → "blue small" reads as one change rather than two."""
    changed = [not k for k in kept]
    for n in range(1, len(toks) - 1):
        if changed[n - 1] and changed[n + 1] and not changed[n] and toks[n].isspace():
            changed[n] = True
    out: list[Span] = []
    start = 0
    for n in range(1, len(toks) + 1):
        if n == len(toks) or changed[n] != changed[start]:
            out.append(Span("".join(toks[start:n]), changed[start]))
            start = n
    return tuple(out)


def _joins(char: str) -> bool:
    """Whether `char` belongs to the character before it (a combining accent, a skin tone, a
    variation selector, a zero-width joiner)."""
    if char < "\u0300":
        return False
    return unicodedata.category(char) in _JOINERS or char == _ZWJ or "\ufe00" <= char <= "\ufe0f"
