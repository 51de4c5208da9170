"""Line-oriented filters: trim, order and pick lines so only meaningful changes alert.

All of them split on ``\\n``, ``\\r\\n`` or ``\\r`` (so a page served with CRLF diffs like one
served with LF) and keep a final newline if the input had one (strip drops it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from notifier.errors import FilterError
from notifier.kinds import Filter
from notifier.options import REQUIRED, Bool, Int, ListOf, Option, Regex, Str

_NEWLINE = re.compile(r"\r\n?|\n")

_IGNORECASE = Option("ignorecase", Bool(), False, doc="Match letters in either case.")
_PATTERN = Option("pattern", Regex(), REQUIRED, doc="Python regular expression to find in lines.")


def split_lines(text: str) -> list[str]:
    """The lines of `text` without their line endings; a final newline adds no empty line."""
    # str.split is five times faster than the pattern, and most pages have no \r at all.
    lines = _NEWLINE.split(text) if "\r" in text else text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def join_lines(lines: Iterable[str], like: str) -> str:
    """Join lines with ``\\n``, ending with one if `like` (the input) did."""
    out = "\n".join(lines)
    return out + "\n" if out and like.endswith(("\n", "\r")) else out


def matched_nothing(what: str, where: str, noun: str) -> FilterError:
    """The error for a filter that found nothing: silence there would hide a broken watcher."""
    return FilterError(f"{what} matched nothing {where}; check the {noun} with "
                       "`notifier test-filter NAME`.")


def with_flags(pattern: re.Pattern[str], ignorecase: bool) -> re.Pattern[str]:
    """`pattern` recompiled case-insensitively when asked; compiled patterns are cached by re."""
    return re.compile(pattern.pattern, pattern.flags | re.IGNORECASE) if ignorecase else pattern


class LineFilter(Filter):
    """Base of filters that transform the list of lines, so splitting is done one way."""

    def apply(self, text: str) -> str:
        return join_lines(self.lines(split_lines(text)), like=text)

    def lines(self, lines: list[str]) -> list[str]:
        raise NotImplementedError


class Strip(LineFilter, kind="strip"):
    """Strip trailing whitespace from every line and drop blank lines at the start and end.

    Trailing spaces and extra blank lines change often without anything a reader could see;
    indentation is kept because it can carry meaning (code, nested lists).
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("chars", Str(), None,
               doc="Characters to strip from line ends, instead of whitespace."),
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.chars: str | None = options["chars"]

    def lines(self, lines: list[str]) -> list[str]:
        out = [line.rstrip(self.chars) for line in lines]
        # Only the ends are looked at for blank lines, not every line of a long page.
        first = next((n for n, line in enumerate(out) if line.strip()), len(out))
        last = next((n for n in range(len(out), first, -1) if out[n - 1].strip()), first)
        return out[first:last]

    def apply(self, text: str) -> str:
        return "\n".join(self.lines(split_lines(text)))  # no final newline: it is trailing space

    def describe(self) -> str:
        return f"strip {self.chars!r}" if self.chars else "strip"


class Sort(LineFilter, kind="sort"):
    """Sort lines, for lists whose order shuffles on every load but whose items matter."""

    options: ClassVar[tuple[Option, ...]] = (
        Option("reverse", Bool(), False, doc="Sort from Z to A instead."),
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.reverse = bool(options["reverse"])

    def lines(self, lines: list[str]) -> list[str]:
        return sorted(lines, reverse=self.reverse)

    def describe(self) -> str:
        return "sort reverse" if self.reverse else "sort"


class Dedupe(LineFilter, kind="dedupe"):
    """Drop repeated lines (blank ones too), keeping the first of each in its place."""

    def lines(self, lines: list[str]) -> list[str]:
        return list(dict.fromkeys(lines))


class Replace(Filter, kind="regex"):
    """Replace what a regular expression matches, e.g. to blank out timestamps and counters.

    Matching nothing is not an error: the text is simply left as it was.
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("pattern", Regex(), REQUIRED, doc="Python regular expression to search for."),
        Option("replace", Str(), "", doc="Replacement; \\1 or \\g<name> insert groups."),
        Option("count", Int(minimum=0), 0, doc="Replace at most this many matches; 0 means all."),
        _IGNORECASE,
    )
    shorthand = "pattern"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.pattern = with_flags(options["pattern"], options["ignorecase"])
        self.replace: str = options["replace"] or ""
        self.count: int = options["count"] or 0
        self._check_template()

    def _check_template(self) -> None:
        """Expand `replace` once against empty groups shaped like the pattern's, to fail early."""
        names = {index: name for name, index in self.pattern.groupindex.items()}
        groups = [f"(?P<{names[i]}>)" if i in names else "()"
                  for i in range(1, self.pattern.groups + 1)]
        try:
            re.compile("".join(groups)).sub(self.replace, "", count=1)
        except (re.error, IndexError) as exc:
            raise ValueError(f"replacement {self.replace!r} is not usable with pattern "
                             f"{self.pattern.pattern!r}: {exc}.") from None

    def apply(self, text: str) -> str:
        return self.pattern.sub(self.replace, text, count=self.count)

    def describe(self) -> str:
        return f"regex {self.pattern.pattern!r} -> {self.replace!r}"


class MatchLines(LineFilter):
    """Base of the filters that keep (`keep = True`) or drop lines matching any pattern."""

    keep: ClassVar[bool]
    patterns: tuple[re.Pattern[str], ...]

    def __init__(self, options: Mapping[str, Any]) -> None:
        found = tuple(options["patterns"]) if "patterns" in options else (options["pattern"],)
        if not found:
            raise ValueError(f"{self.kind} needs at least one pattern.")
        self.patterns = tuple(with_flags(p, options["ignorecase"]) for p in found)

    def matches(self, line: str) -> bool:
        return any(p.search(line) for p in self.patterns)

    def lines(self, lines: list[str]) -> list[str]:
        return [line for line in lines if self.matches(line) is self.keep]

    def describe(self) -> str:
        return f"{self.kind} " + ", ".join(repr(p.pattern) for p in self.patterns)


class Grep(MatchLines, kind="grep"):
    """Keep only the lines that match a regular expression; no matching line is an error."""

    options: ClassVar[tuple[Option, ...]] = (_PATTERN, _IGNORECASE)
    shorthand = "pattern"
    keep = True

    def lines(self, lines: list[str]) -> list[str]:
        out = super().lines(lines)
        if not out:
            raise matched_nothing(f"grep pattern {self.patterns[0].pattern!r}", "in the text",
                                  "pattern")
        return out


class GrepInvert(MatchLines, kind="grep_invert"):
    """Drop the lines that match a regular expression.

    Dropping every line is allowed (the result is empty): removing noise is the intent, and if
    everything was noise the diff shows it.
    """

    options: ClassVar[tuple[Option, ...]] = (_PATTERN, _IGNORECASE)
    shorthand = "pattern"
    keep = False


class Ignore(MatchLines, kind="ignore"):
    """Drop the lines that match any of several regular expressions (ads, clocks, counters).

    Like grep_invert, an empty result is allowed: ignoring is the intent.
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("patterns", ListOf(Regex()), REQUIRED, doc="Regular expressions; a line matching "
               "any of them is dropped."),
        _IGNORECASE,
    )
    shorthand = "patterns"
    keep = False
