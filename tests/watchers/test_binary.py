"""The shared binary summary: which media types are binary, and how a change is described."""

from __future__ import annotations

import pytest

from notifier.binary import binary_type, describe_change, summary

DIGEST_A, DIGEST_B = "a" * 64, "b" * 64


@pytest.mark.parametrize(("content_type", "binary"), [
    ("image/png", True),
    ("IMAGE/JPEG; q=1", True),
    ("application/octet-stream", True),
    ("application/pdf", True),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", True),
    ("font/woff2", True),
    ("image/svg+xml", False),
    ("application/json; charset=utf-8", False),
    ("application/vnd.api+json", False),
    ("application/x-custom", False),  # unknown: the bytes decide
    ("text/html", False),
    ("", False),
])
def test_binary_types(content_type: str, binary: bool) -> None:
    assert binary_type(content_type) is binary


def test_a_change_between_summaries_reads_as_one_sentence() -> None:
    old = summary("binary content (image/png)", 12345, DIGEST_A)
    new = summary("binary content (image/png)", 12001, DIGEST_B)
    assert old == f"binary content (image/png), 12345 bytes, sha256 {DIGEST_A}"
    assert describe_change(old, new) == (
        "binary content (image/png) changed (size 12,345 → 12,001 bytes, "
        "sha256 aaaaaaaaaaaa… → bbbbbbbbbbbb…)")


def test_text_on_either_side_is_not_a_binary_change() -> None:
    binary = summary("binary file", 3, DIGEST_A)
    assert describe_change("<p>hello</p>", binary) is None
    assert describe_change(binary, "binary content, but really a sentence") is None
