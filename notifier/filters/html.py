"""HTML filters: pick parts of a page (css, xpath) or turn it into readable text (html2text).

lxml parses any input the forgiving way browsers do, so broken markup never crashes a filter.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from notifier.errors import FilterError
from notifier.filters.text import matched_nothing
from notifier.kinds import Filter
from notifier.options import REQUIRED, Bool, Option, Str

# lxml and cssselect (6 MB) are imported by the first html filter built or run, not by every
# process that loads the filter kinds: a config of strip and jsonpath filters never needs them.
if TYPE_CHECKING:
    import lxml.html
    from lxml import etree
    from lxml.cssselect import CSSSelector

# lxml refuses str input that declares an encoding; the text is already decoded, so drop it.
_XML_DECLARATION = re.compile(r"\A\ufeff?\s*<\?xml[^>]*\?>")
_SPACES = re.compile(r"[ \t\n\r\f\xa0]+")  # what HTML collapses, plus &nbsp;; not U+3000
_NAMESPACES = {"re": "http://exslt.org/regular-expressions"}  # EXSLT regex functions

_SKIPPED = ("head", "script", "style", "noscript", "template", "svg", "iframe", "object")
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table",
                         "dl", "hr", "figure", "form", "fieldset", "address", "details"})
_BLOCKS = _PARAGRAPHS | {"html", "body", "div", "section", "article", "main", "header", "footer",
                         "nav", "aside", "ul", "ol", "li", "tr", "dt", "dd", "caption",
                         "figcaption", "summary", "legend", "option"}


def parse_html(text: str, what: str) -> lxml.html.HtmlElement:
    """The whole document in `text` (fragments are wrapped in html/body, as browsers do)."""
    import lxml.html  # noqa: PLC0415 - see the note at the imports
    from lxml import etree  # noqa: PLC0415

    try:
        return lxml.html.document_fromstring(_XML_DECLARATION.sub("", text, count=1))
    except (etree.ParserError, ValueError) as exc:  # ParserError: nothing but space/comments
        raise FilterError(f"{what} could not read the page as HTML: {str(exc).rstrip('.')}.") from None


def outer_html(element: Any) -> str:
    """An element's own markup, without the text that follows it in its parent."""
    import lxml.html  # noqa: PLC0415 - see the note at the imports

    return str(lxml.html.tostring(element, encoding="unicode", with_tail=False))


def collapse(text: str) -> str:
    """Whitespace runs as one space, as a browser shows them."""
    return _SPACES.sub(" ", text).strip(" ")


class Query(Filter):
    """Base of css and xpath: run a compiled query on the parsed page, one line per result."""

    noun: ClassVar[str]  # what users call the query: selector, expression
    query: str

    def apply(self, text: str) -> str:
        values = self.select(parse_html(text, self.describe()))
        if not values:
            raise matched_nothing(f"{self.kind} {self.noun} {self.query!r}", "on the page",
                                  self.noun)
        return "\n".join(values)

    def select(self, root: lxml.html.HtmlElement) -> list[str]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind} {self.query}"


class Css(Query, kind="css"):
    """Keep what a CSS selector matches on an HTML page: its HTML, its text or an attribute."""

    options: ClassVar[tuple[Option, ...]] = (
        Option("selector", Str(), REQUIRED, doc="CSS selector, e.g. div.price or #news li > a."),
        Option("attribute", Str(), None, doc="Output this attribute of each match instead."),
        Option("text", Bool(), False, doc="Output the text of each match instead of its HTML."),
    )
    shorthand = "selector"
    noun = "selector"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.query = options["selector"]
        self.attribute: str | None = options["attribute"]
        self.text = bool(options["text"])
        if self.attribute and self.text:
            raise ValueError("css outputs an attribute or the text of matches, not both; drop one.")
        # Checked with cssselect alone, which parses and translates it as lxml's CSSSelector
        # does: `notifier validate` then loads no lxml (4 MB); the first check compiles it.
        from cssselect import HTMLTranslator, SelectorError  # noqa: PLC0415 - see the note at the imports

        try:
            HTMLTranslator().css_to_xpath(self.query)
        except SelectorError as exc:
            raise ValueError(f"css selector {self.query!r} is not valid: {exc}.") from None
        self._compiled: CSSSelector | None = None  # at the first check (filters are shared)

    def select(self, root: lxml.html.HtmlElement) -> list[str]:
        if self._compiled is None:  # kept: _css's cache may hold fewer selectors than a config
            self._compiled = _css(self.query)
        found = self._compiled(root)
        if self.text:
            return [collapse(el.text_content()) for el in found]
        if not self.attribute:
            return [outer_html(el) for el in found]
        values = [v for v in (el.get(self.attribute) for el in found) if v is not None]
        if found and not values:
            raise FilterError(f"css selector {self.query!r} matched {len(found)} element(s) "
                              f"but none has the attribute {self.attribute!r}.")
        return values

    def describe(self) -> str:
        extra = f" @{self.attribute}" if self.attribute else " text" if self.text else ""
        return f"css {self.query}{extra}"


@functools.lru_cache(maxsize=1024)
def _css(selector: str) -> CSSSelector:
    """Compiled once per selector: a thousand watchers often share a few selectors, and an
    lxml XPath object is safe to share between threads (it locks around evaluation)."""
    from lxml.cssselect import CSSSelector  # noqa: PLC0415 - see the note at the imports

    return CSSSelector(selector, translator="html")


@functools.lru_cache(maxsize=1024)
def _xpath(expression: str) -> etree.XPath:
    """Compiled once per expression, for the same reason as `_css`."""
    from lxml import etree  # noqa: PLC0415 - see the note at the imports

    return etree.XPath(expression, namespaces=_NAMESPACES, smart_strings=False)


class XPath(Query, kind="xpath"):
    """Keep what an XPath 1.0 expression selects on an HTML page: elements, text or a value.

    Elements come out as HTML, text and attributes as text, one per line; count() and the like
    as one value. EXSLT regular expressions work with ``re:``, e.g. ``re:test(@href, 'pdf$')``.
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("expression", Str(), REQUIRED, doc="XPath expression, e.g. //td[2] or //a/@href."),
    )
    shorthand = "expression"
    noun = "expression"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.query = options["expression"]
        from lxml import etree  # noqa: PLC0415 - see the note at the imports

        try:
            self._xpath = _xpath(self.query)
            self._xpath(etree.Element("html"))  # unknown functions or prefixes fail only when run
        except etree.XPathError as exc:
            raise ValueError(f"xpath expression {self.query!r} is not valid: {exc}.") from None

    def select(self, root: lxml.html.HtmlElement) -> list[str]:
        """Lines for any XPath result; none when nothing was found (NaN and '' included)."""
        from lxml import etree  # noqa: PLC0415 - see the note at the imports

        try:
            result = self._xpath(root)
        except (etree.XPathError, re.error) as exc:  # re: a bad regex in re:test() on a match
            raise FilterError(f"xpath expression {self.query!r} failed: {exc}.") from None
        if isinstance(result, bool):
            return ["true" if result else "false"]
        if isinstance(result, float):  # NaN is what number() gives when it found no number
            return [] if math.isnan(result) else [f"{result:.15g}"]
        if isinstance(result, str):
            return [result] if result else []
        return [outer_html(item) if etree.iselement(item) else str(item) for item in result]


class Html2Text(Filter, kind="html2text"):
    """Turn an HTML page into readable plain text, so alerts show words instead of markup.

    Scripts, styles and the head are dropped; blocks and <br> start lines, paragraphs and
    headings are set apart by a blank line, list items start with "* ", table cells are joined
    by " | ", whitespace collapses (except in <pre>). A page without text is an error: it is
    most likely filled in by JavaScript, which notifier does not run.
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("links", Bool(), True, doc="Follow each link's text by its address in brackets."),
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.links = bool(options["links"])

    def apply(self, text: str) -> str:
        from lxml import etree  # noqa: PLC0415 - see the note at the imports

        root = parse_html(text, self.kind)
        for element in list(root.iter(*_SKIPPED, etree.Comment, etree.ProcessingInstruction)):
            element.drop_tree()  # keeps the element's tail text
        if not (out := _Writer(self.links).render(root)):
            raise FilterError("html2text found no readable text on the page; it is probably "
                              "filled in by JavaScript, which notifier does not run.")
        return out


class _Writer:
    """Collects text into lines while html2text walks the tree; blank lines never pile up."""

    def __init__(self, links: bool) -> None:
        self.links = links
        self.lines: list[str] = []
        self.chunks: list[str] = []
        self.bullet = ""  # "* " (indented) waiting for the first text of a list item
        self.pre = 0  # depth of <pre> elements we are in

    def render(self, root: lxml.html.HtmlElement) -> str:
        from lxml import etree  # noqa: PLC0415 - see the note at the imports

        for event, element in etree.iterwalk(root, events=("start", "end")):
            (self.start if event == "start" else self.end)(element)
        self.end_line()
        out = [line for i, line in enumerate(self.lines) if line or self.lines[i - 1]]
        return "\n".join(out).strip("\n")

    def add(self, text: str | None) -> None:
        if not text:
            return
        first, *rest = text.split("\n") if self.pre else [text]
        self.chunks.append(first)
        for piece in rest:  # only <pre> keeps its line breaks
            self.end_line(keep_empty=True)
            self.chunks.append(piece)

    def end_line(self, keep_empty: bool = False, blank: bool = False) -> None:
        """Finish the current line; `blank` leaves one empty line after it, unless one is there."""
        joined, self.chunks = "".join(self.chunks), []
        line = joined.rstrip() if self.pre else collapse(joined)
        if line:
            self.lines.append(self.bullet + line)
            self.bullet = ""
        if (keep_empty and not line) or (blank and self.lines[-1:] != [""]):
            self.lines.append("")

    def start(self, element: Any) -> None:
        tag = element.tag
        if tag in _BLOCKS or tag == "br":
            self.end_line(keep_empty=tag == "br", blank=tag in _PARAGRAPHS)
        if tag == "li":
            self.bullet = "  " * (sum(1 for _ in element.iterancestors("ul", "ol")) - 1) + "* "
        elif tag in ("td", "th") and element.getprevious() is not None:
            self.add(" | ")
        elif tag == "pre":
            self.pre += 1
        self.add(element.text)

    def end(self, element: Any) -> None:
        tag = element.tag
        if tag == "a" and self.links:
            self.add(_link(element))
        if tag in _BLOCKS:
            self.end_line(blank=tag in _PARAGRAPHS)
        if tag == "pre":
            self.pre -= 1
        elif tag == "li":
            self.bullet = ""  # an empty item leaves no stray bullet
        self.add(element.tail)


def _link(element: Any) -> str:
    """" (href)" after a link's text, unless it leads nowhere new (anchors, scripts, itself)."""
    href = (element.get("href") or "").strip()
    if not href or href.startswith(("#", "javascript:")):
        return ""
    return "" if href == collapse(element.text_content()) else f" ({href})"
