"""notifier.diff: the patience-anchored diff must agree with difflib on what changed."""

from __future__ import annotations

import difflib
import random

import pytest

from notifier.diff import Diff, compute, opcodes, with_words


def _apply(a: list[str], codes: list[tuple[str, int, int, int, int]], b: list[str]) -> list[str]:
    """Rebuild the new side from the old one using only the opcodes' equal ranges."""
    out: list[str] = []
    for tag, i1, i2, j1, j2 in codes:
        out.extend(a[i1:i2] if tag == "equal" else b[j1:j2])
    return out


def test_random_edits_roundtrip() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        b = list(a)
        for _ in range(rng.randint(0, 6)):
            k = rng.randint(0, len(b))
            if rng.random() < 0.5:
                b.insert(k, rng.choice("abxyz"))
            elif b:
                del b[min(k, len(b) - 1)]
        codes = opcodes(a, b)
        assert _apply(a, codes, b) == b
        for tag, i1, i2, j1, j2 in codes:
            if tag == "equal":
                assert a[i1:i2] == b[j1:j2]


def test_unified_matches_difflib_on_simple_change() -> None:
    old = "\n".join(f"line {i}" for i in range(20))
    new = old.replace("line 10", "line ten")
    ours = compute(old, new, context=3).unified("old", "new")
    ref = "\n".join(difflib.unified_diff(old.splitlines(), new.splitlines(), "old", "new", lineterm="", n=3))
    assert ours == ref + "\n"


def test_large_document_uses_anchors_and_stays_correct() -> None:
    a = [f"row {i} value {i * 7 % 1000}" for i in range(5000)]
    b = list(a)
    for k in range(0, 5000, 100):
        b[k] = f"row {k} CHANGED"
    diff = compute("\n".join(a), "\n".join(b))
    assert len(diff.added) == 50
    assert len(diff.removed) == 50
    assert diff.changed[0] == ("row 0 value 0", "row 0 CHANGED")


def test_structured_lines_and_numbers() -> None:
    diff = compute("a\nb\nc\n", "a\nB\nc\nd\n", context=1)
    tags = [(ln.tag, ln.text, ln.old, ln.new) for h in diff.hunks for ln in h.lines]
    assert tags == [("context", "a", 1, 1), ("removed", "b", 2, None), ("added", "B", None, 2),
                    ("context", "c", 3, 3), ("added", "d", None, 4)]
    assert diff.added == ["B", "d"]
    assert diff.removed == ["b"]


@pytest.mark.parametrize(("old", "new", "kw", "expect"), [
    ("a\nb\n", "a\n", {"additions_only": True}, False),
    ("a\n", "a\nb\n", {"additions_only": True}, True),
    ("a\n", "a\nb\n", {"deletions_only": True}, False),
    ("a\nb\n", "a\n", {"deletions_only": True}, True),
    ("same\n", "same\n", {}, False),
])
def test_additions_and_deletions_only(old: str, new: str, kw: dict[str, bool], expect: bool) -> None:
    diff = compute(old, new, **kw)
    assert bool(diff) is expect
    if diff:
        tags = {ln.tag for h in diff.hunks for ln in h.lines}
        assert tags == {"added" if kw.get("additions_only") else "removed"}


def test_context_lines_option() -> None:
    old = "\n".join(str(i) for i in range(30))
    new = old.replace("15", "fifteen")
    assert len(compute(old, new, context=0).hunks[0].lines) == 2
    assert len(compute(old, new, context=5).hunks[0].lines) == 12


def _marked(diff: Diff) -> list[str]:
    """Each line with its prefix and changed spans in brackets, as a reader would see them."""
    return [ln.prefix + ("".join(f"[{s.text}]" if s.changed else s.text for s in ln.spans)
                         if ln.spans else ln.text) for h in diff.hunks for ln in h.lines]


def test_with_words_marks_rewritten_lines_and_leaves_the_rest() -> None:
    old = "title\nprice: 3.00 USD\nold banner text here\nfooter\n"
    new = "title\nprice: 3.75 USD\nsomething else entirely\nin stock\nfooter\n"
    diff = compute(old, new, context=1)
    assert all(not ln.spans for h in diff.hunks for ln in h.lines)  # compute stays line-level
    assert _marked(with_words(diff)) == [
        " title", "-price: [3.00] USD", "-old banner text here",
        "+price: [3.75] USD", "+something else entirely", "+in stock", " footer"]
    assert with_words(diff).unified() == diff.unified()  # the text form does not change


def test_with_words_pairs_within_each_block_only() -> None:
    old = "a 1\nsame\nb 2\n"
    new = "a 9\nsame\nb 8\n"
    assert _marked(with_words(compute(old, new))) == ["-a [1]", "+a [9]", " same", "-b [2]", "+b [8]"]


def test_with_words_recomputes_spans_from_the_texts() -> None:
    diff = with_words(compute("x 1\n", "x 2\n"))
    data = Diff.from_data(diff.to_data())  # as a digest stores it: spans are not kept...
    assert all(not ln.spans for h in data.hunks for ln in h.lines)
    assert with_words(data).hunks == diff.hunks  # ...and come back the same
