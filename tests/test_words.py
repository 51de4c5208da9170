"""notifier.words: the words (or CJK characters) that changed inside a rewritten line."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.words import MAX_TOKENS, MAX_WORK, Span, pair, spans, tokens

GOLDEN = Path(__file__).parent / "data" / "word_tests.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(GOLDEN.read_text(encoding="utf-8"))


def marked(parts: tuple[Span, ...], start: str, end: str) -> str:
    """The line with its changed spans between `start` and `end`, as the golden file writes it."""
    return "".join(f"{start}{s.text}{end}" if s.changed else s.text for s in parts)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden(case: dict[str, Any]) -> None:
    found = spans(case["old"], case["new"])
    if case.get("paired", True) is False:
        assert found is None
        assert pair([case["old"]], [case["new"]]) == []
        return
    assert found is not None
    old, new = found
    assert [marked(old, "[-", "-]"), marked(new, "{+", "+}")] == case["marked"]


def test_golden_names_are_unique() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("line", "expected"), [
    ("Price: 3.75 USD", ["Price", ":", " ", "3.75", " ", "USD"]),
    ("今天3元", ["今", "天", "3", "元"]),
    ("ひらがなカタカナ", list("ひらがなカタカナ")),
    ("한국어 text", ["한", "국", "어", " ", "text"]),
    ("e\u0301x 👍🏽!", ["e\u0301x", " ", "👍🏽", "!"]),  # marks and skin tones stay attached
    ("👨\u200d👩\u200d👧 family", ["👨\u200d👩\u200d👧", " ", "family"]),
    ("end. Next 1.5.", ["end", ".", " ", "Next", " ", "1.5", "."]),
    ("", []),
])
def test_tokens(line: str, expected: list[str]) -> None:
    assert tokens(line) == expected


def test_lines_pair_by_similarity_in_order() -> None:
    removed = ["Intro paragraph that was dropped entirely", "price 3.00 USD", "stock: 12 left"]
    added = ["price 3.75 USD", "a brand new line about something else", "stock: 9 left"]
    found = pair(removed, added)
    assert [(p.old_index, p.new_index) for p in found] == [(1, 0), (2, 2)]
    assert marked(found[1].new, "{", "}") == "stock: {9} left"


def test_the_best_match_wins_over_the_first() -> None:
    removed = ["alpha beta gamma delta"]
    added = ["alpha beta xx yy", "alpha beta gamma delta epsilon"]
    assert [(p.old_index, p.new_index) for p in pair(removed, added)] == [(0, 1)]


def test_large_blocks_pair_by_position() -> None:
    rows = int((MAX_WORK / 20) ** 0.5) + 1  # about 10 tokens a line
    removed = [f"row {i}: price {i}.00 USD" for i in range(rows)]
    added = [f"row {i}: price {i}.50 USD" for i in range(rows)]
    found = pair(removed, added)
    assert [(p.old_index, p.new_index) for p in found] == [(i, i) for i in range(rows)]
    assert marked(found[3].new, "{", "}") == "row 3: price {3.50} USD"


def test_long_lines_stay_fast_and_exact() -> None:
    words = [f"w{i}" for i in range(50_000)]
    old = " ".join(words)
    near = " ".join([*words[:25_000], "CHANGED", *words[25_001:25_100], "ALSO", *words[25_101:]])
    apart = " ".join(["CHANGED", *words[1:-1], "ALSO"])  # the middle is past MAX_TOKENS
    start = time.perf_counter()
    found, far = spans(old, near), spans(old, apart)
    assert time.perf_counter() - start < 2
    assert found is not None
    assert "".join(s.text for s in found[0]) == old
    assert "".join(s.text for s in found[1]) == near
    assert [s.text for s in found[1] if s.changed] == ["CHANGED", "ALSO"]
    assert len(tokens(old)) > MAX_TOKENS
    assert far is None  # nothing kept but the spaces: shown as a removed and an added line


@pytest.mark.parametrize("width", [8, 400])
def test_many_lines_of_the_same_words_pair_quickly(width: int) -> None:
    """The worst case: every line has the same words in another order, so no cheap bound rules
    a combination out."""
    lines = [" ".join(f"w{(i * 7 + k) % width}" for k in range(width)) for i in range(50)]
    start = time.perf_counter()
    pair(lines, lines[::-1])
    assert time.perf_counter() - start < 2


# --- properties: whatever the lines, the spans are the lines ----------------------------------

TEXT = st.text(st.sampled_from([*"ab cd.,3", "1", "价", "格", "元", "\u0301", "\u200d", "😀", "\t"]),
               max_size=30)
PROPERTY = settings(deadline=None)  # a slow first example (a cold import) is not a failure


@PROPERTY
@given(TEXT, TEXT)
def test_spans_reassemble_both_lines(old: str, new: str) -> None:
    assert "".join(tokens(old)) == old
    found = spans(old, new)
    if found is None:
        return
    for line, parts in zip((old, new), found, strict=True):
        assert "".join(s.text for s in parts) == line
        assert all(s.text for s in parts)
        assert all(a.changed != b.changed for a, b in itertools.pairwise(parts))


@PROPERTY
@given(st.lists(TEXT, max_size=6), st.lists(TEXT, max_size=6))
def test_pairs_keep_order_and_reassemble(removed: list[str], added: list[str]) -> None:
    found = pair(removed, added)
    for before, after in itertools.pairwise(found):
        assert before.old_index < after.old_index
        assert before.new_index < after.new_index
    for p in found:
        assert "".join(s.text for s in p.old) == removed[p.old_index]
        assert "".join(s.text for s in p.new) == added[p.new_index]


@PROPERTY
@given(TEXT)
def test_an_unchanged_line_has_no_changed_span(line: str) -> None:
    found = spans(line, line)
    assert found is not None
    assert not any(s.changed for side in found for s in side)
