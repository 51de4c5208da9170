"""notifier.snapshots: versions stored whole or as deltas always come back exactly as they were."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.snapshots import DELTA, WHOLE, delta, needs_newer, text_of, whole

SAMPLES = [
    "",
    "one line without an end",
    "a\nb\nc\n",
    "windows\r\nline ends\r\n",
    "mixed\rends\r\nand\nmore\x0bodd\x1cseparators\u2028here",
    "价格 3.00 元\n运费 免费\n",
    "lone surrogate \udc80 from a surrogateescape decode\n",
    "\n\n\n",
]


@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("newer", SAMPLES)
def test_every_pair_round_trips(text: str, newer: str) -> None:
    assert text_of(whole(text)) == text
    assert text_of(delta(text, newer), newer) == text


@given(st.lists(st.sampled_from(["a\n", "b\n", "c", "\r\n", "价\n", "x y\n", ""]), max_size=30),
       st.lists(st.sampled_from(["a\n", "b\n", "c", "\r\n", "价\n", "x y\n", ""]), max_size=30))
def test_any_two_texts_round_trip(old: list[str], new: list[str]) -> None:
    text, newer = "".join(old), "".join(new)
    assert text_of(delta(text, newer), newer) == text


def page(seed: int = 7) -> list[str]:
    """300 lines of words and prices: text that zlib only roughly halves."""
    rng = random.Random(seed)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur"]
    return [" ".join(rng.choice(words) for _ in range(8))
            + f" {rng.randint(1, 999)}.00" for _ in range(300)]


def test_a_small_change_is_stored_as_a_small_delta() -> None:
    lines = page()
    old = "\n".join(lines) + "\n"
    lines[150] = "price 3.75 USD"
    new = "\n".join(lines) + "\n"
    stored = delta(old, new)
    assert stored[:1] == DELTA
    assert needs_newer(stored)
    assert len(stored) < 200 < len(whole(old)) // 10


def test_unrelated_versions_are_stored_whole() -> None:
    rng = random.Random(3)
    old = "".join(f"{rng.random()}\n" for _ in range(200))
    new = "".join(f"{rng.random()}\n" for _ in range(200))
    stored = delta(old, new)
    assert stored[:1] == WHOLE
    assert not needs_newer(stored)
    assert text_of(stored) == old


def test_text_written_before_compression_reads_as_it_is() -> None:
    assert text_of("stored by schema 3\n") == "stored by schema 3\n"
    assert not needs_newer("stored by schema 3\n")


def test_a_delta_without_its_newer_version_is_an_error_not_garbage() -> None:
    lines = page()
    stored = delta("\n".join(lines), "\n".join(lines[1:]))
    assert needs_newer(stored)
    with pytest.raises(ValueError, match="delta without"):
        text_of(stored)
