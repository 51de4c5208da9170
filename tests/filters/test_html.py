"""HTML filters (notifier/filters/html.py): golden cases, bad selectors, a realistic page."""

# Full-width colons and en dashes are deliberate: non-ASCII text is what these tests check.
# ruff: noqa: RUF001

from __future__ import annotations

import re
from typing import Any

import pytest

from notifier.errors import FilterError
from tests.filters._spec import check_golden, check_module_kinds, golden_cases, make_filter, run

MODULE = "notifier.filters.html"

PAGE = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html>
<html lang="en">
<head>
  <title>Corner Shop</title>
  <style>body { color: red }</style>
  <script>var banner = "<p>never shown</p>";</script>
</head>
<body>
  <nav><a href="/">Home</a> | <a href="#main">Skip</a></nav>
  <!-- tracking pixel goes here -->
  <h1>Caf&eacute; &amp; Bakery</h1>
  <p>Prices are
     <b>lower</b>&nbsp;than <a href="https://shop.example/deals">ever before</a>.<br>
     Open daily.</p>
  <h2>Today</h2>
  <ul>
    <li>Bread &ndash; &euro;2</li>
    <li>Cakes
      <ul><li>Lemon</li><li>Chocolate</li></ul>
    </li>
  </ul>
  <noscript>Please enable JavaScript.</noscript>
  <script>track("visit")</script>
  <footer><p>&copy; 2024 Corner Shop</p></footer>
</body>
</html>
"""

PAGE_TEXT = """Home (/) | Skip

Café & Bakery

Prices are lower than ever before (https://shop.example/deals).
Open daily.

Today

* Bread – €2
* Cakes
  * Lemon
  * Chocolate

© 2024 Corner Shop"""

GBK_PAGE = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=gbk">'
            '</head><body><div class="price">价格：１２元</div><p>欢迎光临</p></body></html>')


@pytest.mark.parametrize("case", golden_cases(MODULE))
def test_golden(case: dict[str, Any]) -> None:
    check_golden(case)


def test_kinds_documented_and_covered() -> None:
    check_module_kinds(MODULE)


def test_html2text_realistic_page() -> None:
    assert run("html2text", PAGE) == PAGE_TEXT


def test_gbk_page_passes_through() -> None:
    page = GBK_PAGE.encode("gbk").decode("gbk")  # as the watcher decodes it
    assert run({"css": {"selector": "div.price", "text": True}}, page) == "价格：１２元"
    assert run({"css": "div.price"}, page) == '<div class="price">价格：１２元</div>'
    assert run({"xpath": "//p/text()"}, page) == "欢迎光临"
    assert run("html2text", page) == "价格：１２元\n\n欢迎光临"


@pytest.mark.parametrize(("spec", "message"), [
    ({"css": "div["}, "css selector 'div[' is not valid"),
    ({"css": "p::text"}, "is not valid: Pseudo-elements are not supported"),
    ({"css": "li:nth-child(x)"}, "is not valid"),
    ({"css": {"selector": "a", "attribute": "href", "text": True}}, "not both"),
    ({"xpath": "//a["}, "xpath expression '//a[' is not valid"),
    ({"xpath": "foo:bar//a"}, "Undefined namespace prefix"),
    ({"xpath": "nosuchfunction(//a)"}, "Unregistered function"),
    ({"css": {"attribute": "href"}}, "is required"),
    ({"css": None}, "selector: is required"),
    ({"xpath": None}, "expression: is required"),
])
def test_bad_specs_fail_at_construction(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_filter(spec)


@pytest.mark.parametrize("spec", [{"css": "table.prices"}, {"xpath": "//table"},
                                  {"xpath": "string(//h3)"}])
def test_no_match_is_filter_error(spec: Any) -> None:
    with pytest.raises(FilterError, match="matched nothing on the page"):
        run(spec, PAGE)


@pytest.mark.parametrize("text", ["", "\n", "<!-- only a comment -->", "\x00\x01", "a\ud800b",
                                  "<<<>>>", "{\"json\": true}", "<p>unclosed <b>tags"])
def test_odd_input_never_crashes(text: str) -> None:
    messages = []
    for spec in ({"css": "p"}, {"xpath": "//p"}, "html2text"):
        try:
            run(spec, text)
        except FilterError as exc:
            messages.append(str(exc))
    assert all(m.endswith(".") for m in messages), messages


@pytest.mark.parametrize(("spec", "description"), [
    ({"css": "div.price"}, "css div.price"),
    ({"css": {"selector": "a", "attribute": "href"}}, "css a @href"),
    ({"css": {"selector": "a", "text": True}}, "css a text"),
    ({"xpath": "//a/@href"}, "xpath //a/@href"),
    ("html2text", "html2text"),
])
def test_describe(spec: Any, description: str) -> None:
    assert make_filter(spec).describe() == description
