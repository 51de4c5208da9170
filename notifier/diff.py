"""Line diffs between two versions, as a unified diff and as structured lines for templates.

difflib alone is slow on large documents (it compares every line with every line in the
changed region). We first cut the common head and tail, then anchor on lines that occur
exactly once on both sides (the "patience" idea) so difflib only ever sees the small gaps
between anchors. `with_words` adds what changed inside a rewritten line (notifier.words).
"""

from __future__ import annotations

import bisect
import difflib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from notifier.words import Span, pair

Opcode = tuple[str, int, int, int, int]
_SMALL = 200  # gaps up to this many lines per side go straight to difflib


@dataclass(frozen=True)
class Line:
    """One line of a hunk; `old`/`new` are 1-based line numbers on each side, when present.
    `spans` (set by `with_words`) cut a removed or added line that pairs with one on the other
    side into what both have and what changed; empty for every other line."""

    tag: Literal["context", "added", "removed"]
    text: str
    old: int | None
    new: int | None
    spans: tuple[Span, ...] = ()

    @property
    def prefix(self) -> str:
        return {"context": " ", "added": "+", "removed": "-"}[self.tag]


@dataclass(frozen=True)
class Hunk:
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    lines: tuple[Line, ...]

    @property
    def header(self) -> str:
        return f"@@ -{_range(self.old_start, self.old_len)} +{_range(self.new_start, self.new_len)} @@"


@dataclass(frozen=True)
class Diff:
    """What changed. Empty (`bool(diff)` is False) means there is nothing to alert on."""

    hunks: tuple[Hunk, ...]
    changed: tuple[tuple[str, str], ...]  # (old, new) line pairs that were rewritten in place

    def __bool__(self) -> bool:
        return bool(self.hunks)

    @property
    def added(self) -> list[str]:
        return [ln.text for h in self.hunks for ln in h.lines if ln.tag == "added"]

    @property
    def removed(self) -> list[str]:
        return [ln.text for h in self.hunks for ln in h.lines if ln.tag == "removed"]

    def to_data(self) -> list[Any]:
        """Plain lists for JSON, so a diff can wait in the state database (digests)."""
        return [[h.old_start, h.old_len, h.new_start, h.new_len,
                 [[ln.tag, ln.text, ln.old, ln.new] for ln in h.lines]] for h in self.hunks]

    @classmethod
    def from_data(cls, data: list[Any]) -> Diff:
        """The inverse of `to_data` (rewritten-line pairs are not kept)."""
        return cls(tuple(Hunk(a, b, c, d, tuple(Line(*ln) for ln in lines))
                         for a, b, c, d, lines in data), ())

    def unified(self, old_label: str = "old", new_label: str = "new") -> str:
        """The diff as `diff -u` prints it."""
        if not self.hunks:
            return ""
        out = [f"--- {old_label}", f"+++ {new_label}"]
        for hunk in self.hunks:
            out.append(hunk.header)
            out.extend(ln.prefix + ln.text for ln in hunk.lines)
        return "\n".join(out) + "\n"


def compute(old: str, new: str, context: int = 3, additions_only: bool = False,
            deletions_only: bool = False) -> Diff:
    """Diff two texts line by line.

    With `additions_only` (or `deletions_only`) the result keeps only added (removed) lines
    and no context, so a page that only lost lines produces an empty diff and no alert.
    """
    a, b = old.splitlines(), new.splitlines()
    codes = opcodes(a, b)
    changed = tuple(pair for tag, i1, i2, j1, j2 in codes if tag == "replace"
                    for pair in zip(a[i1:i2], b[j1:j2], strict=False))
    if additions_only or deletions_only:
        keep = "added" if additions_only else "removed"
        hunks = tuple(h for h in (_only(_hunk(a, b, g), keep) for g in _grouped(codes, 0)) if h.lines)
        return Diff(hunks, changed if not hunks else ())
    return Diff(tuple(_hunk(a, b, g) for g in _grouped(codes, context)), changed)


def with_words(diff: Diff) -> Diff:
    """The diff with word-level `spans` on each removed line and the added line it was
    rewritten as (paired by `notifier.words.pair` within each run of removed-then-added lines).

    Spans are computed from the line texts every time, so they always agree with them: call
    this after the texts are final (render calls it after making them visible and capping).
    """
    hunks = []
    for hunk in diff.hunks:
        lines = [replace(ln, spans=()) if ln.spans else ln for ln in hunk.lines]
        start = 0
        while start < len(lines):
            mid = start
            while mid < len(lines) and lines[mid].tag == "removed":
                mid += 1
            end = mid
            while end < len(lines) and lines[end].tag == "added":
                end += 1
            for found in pair([ln.text for ln in lines[start:mid]], [ln.text for ln in lines[mid:end]]):
                lines[start + found.old_index] = replace(lines[start + found.old_index], spans=found.old)
                lines[mid + found.new_index] = replace(lines[mid + found.new_index], spans=found.new)
            start = max(end, start + 1)
        hunks.append(replace(hunk, lines=tuple(lines)))
    return Diff(tuple(hunks), diff.changed)


def opcodes(a: Sequence[str], b: Sequence[str]) -> list[Opcode]:
    """difflib-style opcodes for `a` → `b`, computed piecewise between unique anchors."""
    out: list[Opcode] = []
    _diff_range(a, b, 0, len(a), 0, len(b), out)
    return _merge(out)


def _diff_range(a: Sequence[str], b: Sequence[str], alo: int, ahi: int, blo: int, bhi: int,
                out: list[Opcode]) -> None:
    head = 0
    while alo + head < ahi and blo + head < bhi and a[alo + head] == b[blo + head]:
        head += 1
    tail = 0
    while ahi - tail > alo + head and bhi - tail > blo + head and a[ahi - tail - 1] == b[bhi - tail - 1]:
        tail += 1
    if head:
        out.append(("equal", alo, alo + head, blo, blo + head))
    _diff_middle(a, b, alo + head, ahi - tail, blo + head, bhi - tail, out)
    if tail:
        out.append(("equal", ahi - tail, ahi, bhi - tail, bhi))


def _diff_middle(a: Sequence[str], b: Sequence[str], alo: int, ahi: int, blo: int, bhi: int,
                 out: list[Opcode]) -> None:
    if alo == ahi and blo == bhi:
        return
    if alo == ahi or blo == bhi:
        out.append(("insert" if alo == ahi else "delete", alo, ahi, blo, bhi))
        return
    anchors = [] if max(ahi - alo, bhi - blo) <= _SMALL else _anchors(a, b, alo, ahi, blo, bhi)
    if not anchors:
        matcher = difflib.SequenceMatcher(None, a[alo:ahi], b[blo:bhi], autojunk=False)
        out.extend((t, i1 + alo, i2 + alo, j1 + blo, j2 + blo) for t, i1, i2, j1, j2 in matcher.get_opcodes())
        return
    i, j = alo, blo
    for ai, bj in anchors:
        _diff_range(a, b, i, ai, j, bj, out)
        out.append(("equal", ai, ai + 1, bj, bj + 1))
        i, j = ai + 1, bj + 1
    _diff_range(a, b, i, ahi, j, bhi, out)


def _anchors(a: Sequence[str], b: Sequence[str], alo: int, ahi: int, blo: int,
             bhi: int) -> list[tuple[int, int]]:
    """Lines unique on both sides, in the longest order-preserving chain (patience sorting)."""
    count_a = Counter(a[alo:ahi])
    count_b = Counter(b[blo:bhi])
    where_b = {b[j]: j for j in range(blo, bhi) if count_b[b[j]] == 1}
    pairs = [(i, where_b[a[i]]) for i in range(alo, ahi) if count_a[a[i]] == 1 and a[i] in where_b]
    return _longest_increasing(pairs)


def _longest_increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest subsequence of `pairs` (sorted by first item) increasing in the second."""
    tails: list[int] = []  # tails[k] = smallest b-index ending a chain of length k+1
    tail_at: list[int] = []  # index into pairs of that chain end
    back: list[int] = [-1] * len(pairs)
    for n, (_, j) in enumerate(pairs):
        k = bisect.bisect_left(tails, j)
        if k == len(tails):
            tails.append(j)
            tail_at.append(n)
        else:
            tails[k] = j
            tail_at[k] = n
        back[n] = tail_at[k - 1] if k else -1
    chain = []
    n = tail_at[-1] if tail_at else -1
    while n != -1:
        chain.append(pairs[n])
        n = back[n]
    return chain[::-1]


def _merge(codes: list[Opcode]) -> list[Opcode]:
    """Join neighbouring opcodes of the same kind, and delete+insert pairs into a replace."""
    merged: list[Opcode] = []
    for tag, i1, i2, j1, j2 in codes:
        if i1 == i2 and j1 == j2:
            continue
        if merged:
            ptag, pi1, _, pj1, _ = merged[-1]
            if ptag == tag or (ptag != "equal" and tag != "equal"):
                kind = tag if ptag == tag else "replace"
                merged[-1] = (kind, pi1, i2, pj1, j2)
                continue
        merged.append((tag, i1, i2, j1, j2))
    return merged


class _Precomputed(difflib.SequenceMatcher):  # type: ignore[type-arg]
    """Lets difflib's own hunk grouping work on opcodes we computed faster."""

    def __init__(self, codes: list[Opcode]) -> None:
        super().__init__(None, "", "")
        self._codes = codes

    def get_opcodes(self) -> list[Opcode]:  # type: ignore[override]
        return self._codes


def _grouped(codes: list[Opcode], context: int) -> list[list[Opcode]]:
    if all(tag == "equal" for tag, *_ in codes):
        return []
    return list(_Precomputed(codes).get_grouped_opcodes(context))


def _hunk(a: Sequence[str], b: Sequence[str], group: list[Opcode]) -> Hunk:
    lines: list[Line] = []
    for tag, i1, i2, j1, j2 in group:
        if tag == "equal":
            lines.extend(Line("context", a[i], i + 1, j1 + i - i1 + 1) for i in range(i1, i2))
            continue
        lines.extend(Line("removed", a[i], i + 1, None) for i in range(i1, i2))
        lines.extend(Line("added", b[j], None, j + 1) for j in range(j1, j2))
    first, last = group[0], group[-1]
    return Hunk(first[1] + 1, last[2] - first[1], first[3] + 1, last[4] - first[3], tuple(lines))


def _only(hunk: Hunk, tag: str) -> Hunk:
    return Hunk(hunk.old_start, hunk.old_len, hunk.new_start, hunk.new_len,
                tuple(ln for ln in hunk.lines if ln.tag == tag))


def _range(start: int, length: int) -> str:
    """Unified-diff range: difflib's convention (an empty range names the line before it)."""
    if length == 1:
        return str(start)
    return f"{start - 1 if length == 0 else start},{length}"
