"""Load YAML keeping the line of every key, expanding ``${VAR}`` and catching duplicate keys.

PyYAML throws line numbers away once it builds dicts; config errors must name the line, so
mappings are built as `LineDict`s that remember where each key was written.

The values are built straight from the parser's events rather than through PyYAML's node
graph and constructor: for 20,000 watchers that graph held 124 MB and took 1.8 s to build and
walk, while the events give the same values and lines for a fraction of both. Aliases share
the anchored value, as PyYAML does, and the size they expand to is counted on the way, so an
alias bomb is refused before anything walks it.

The items of the top-level list a `Stream` asks for (`watchers:`) are handed to it one by
one as each is complete, so the caller can build each watcher and let its mapping go: the
whole file's mappings are never in memory at once. The file itself is parsed as it is read,
not held as text.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import GeneratorType
from typing import Any, BinaryIO, Protocol

import yaml
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent, StreamEndEvent

from notifier.errors import ConfigError, Problem

MAX_NODES = 1_000_000  # values after alias expansion; 20,000 watchers need about 300,000
MAX_DEPTH = 200  # nested collections; a config needs five or six
_INTERNED = 32  # longest key shared between mappings
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN_KEY = str | int | float | bool | None
# PyYAML's events and parser are untyped; they are read through these names only.
Event = Any


class LineDict(dict[Any, Any]):
    """A dict that knows the line of itself (`line`) and of each key (`lines`). Slots, not a
    __dict__ each: a 20,000-watcher file is 40,000 of these at the peak of loading. Read them
    with options.line_of, which allows for a mapping made in code, without lines."""

    __slots__ = ("line", "lines")
    line: int | None
    lines: dict[Any, int]


class LineList(list[Any]):
    """A list that knows the line it starts on and the line of each item (slots, as LineDict)."""

    __slots__ = ("line", "lines")
    line: int | None
    lines: list[int]


# libyaml's parser is 4x faster and needs a third less memory on a 5,000-watcher file.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVERS: dict[str | None, list[tuple[str, re.Pattern[str]]]] = _Loader.yaml_implicit_resolvers


def _implicit_tag(value: str) -> str:
    """The tag YAML's core schema gives a plain scalar (`true`, `3`, `~`, or else text)."""
    resolvers = _RESOLVERS.get(value[:1])
    if resolvers is not None:
        for tag, pattern in resolvers:
            if pattern.match(value):
                return tag
    return _STR


class Stream(Protocol):
    """Takes the items of one list of the top-level mapping as they are parsed (see the
    module doc). Its methods may raise to stop loading (config.load then loads again without
    a stream, when something after the list changes how its items read)."""

    def begin(self, key: object, top: LineDict) -> bool:
        """The list under `key` of the top-level mapping starts; `top` holds the keys before
        it. True: hand its items to `item` rather than keep them."""

    def item(self, value: Any, line: int) -> None:
        """One item of the list, complete, and the line it starts on."""

    def after(self, key: object) -> None:
        """A key of the top-level mapping written after a list that was streamed (`<<` for
        a merge)."""


class _Collection:
    """A mapping or list being built: its value, the key waiting for a value, merges (`<<`);
    `stream` when its items go to the Stream instead of into it."""

    __slots__ = ("anchor", "key", "key_line", "line", "merges", "size", "stream", "value")

    def __init__(self, value: LineDict | LineList, line: int, anchor: str | None) -> None:
        self.value, self.line, self.anchor = value, line, anchor
        self.size = 1
        self.key: object = _NO_KEY
        self.key_line = line
        self.merges: list[tuple[object, int]] | None = None  # (what `<<` names, its line)
        self.stream = False


_NO_KEY = object()


class _Builder:
    """Turns the parser's events into LineDicts, LineLists and scalars; see the module doc."""

    def __init__(self, source: BinaryIO, filename: str, environ: Mapping[str, str],
                 stream: Stream | None = None) -> None:
        self.parser: Any = _Loader(source)  # only its parser part is used: get_event()
        self.filename = filename
        self.environ = environ
        self.stream = stream
        self.streamed = False  # a list went to the stream: later top-level keys are told to it
        self.top: _Collection | None = None  # the outermost collection
        self.problems: list[Problem] = []
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # name: (value, size, line)
        self.open: set[str] = set()  # anchors on collections still being built

    def document(self) -> Any:
        """The one document's value (None for an empty stream); more than one is an error."""
        get = self.parser.get_event
        get()  # stream start
        if isinstance(self.parser.peek_event(), StreamEndEvent):
            return None
        get()  # document start
        value = self.value()
        get()  # document end
        if not isinstance(self.parser.peek_event(), StreamEndEvent):
            raise _error(self.filename, _line(self.parser.peek_event()), "starts a second YAML "
                         "document (after `---` or `...`); a config is one document, so keep one.")
        return value

    def value(self) -> Any:
        """Build the next value, collections included, without recursion."""
        get, add, resolvers = self.parser.get_event, self.add, _RESOLVERS
        stack: list[_Collection] = []
        while True:
            event = get()
            kind = type(event)
            if kind is ScalarEvent:
                value, size, line = event.value, 1, event.start_mark.line + 1
                # Text no implicit tag can claim (`url`, `page-00001`) or quoted: as it is.
                if event.tag is not None or "${" in value or (
                        event.implicit[0] and value[:1] in resolvers):
                    value = self.scalar(event)
                if event.anchor is not None:
                    self.anchor(event.anchor, value, size, line)
            elif kind is AliasEvent:
                value, size = self.alias(event)
                line = event.start_mark.line + 1
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                stack.append(self.start(event, len(stack)))
                if len(stack) == 1:
                    self.top = stack[0]
                elif len(stack) == 2 and self.stream is not None and kind is SequenceStartEvent:
                    self.begin(stack[0], stack[1])
                continue
            else:  # the end of the innermost collection
                done = stack.pop()
                if done.merges:
                    self.merge(done)
                value, size, line = done.value, done.size, done.line
                if done.anchor is not None:  # aliases to it may be used now, at its full size
                    self.open.discard(done.anchor)
                    self.anchors[done.anchor] = (value, size, self.anchors[done.anchor][2])
            if not stack:
                return value
            add(stack[-1], value, size, line)

    def start(self, event: Event, depth: int) -> _Collection:
        """A new mapping or list; only YAML's own tags are understood on them."""
        mapping = type(event) is MappingStartEvent
        line = _line(event)
        if event.tag not in (None, "!", _MAP if mapping else _SEQ):
            raise _error(self.filename, line, f"has the tag {event.tag}, which a config does not "
                         f"use; remove it.")
        if depth >= MAX_DEPTH:
            raise _error(self.filename, line, "is nested too deeply to be a config; flatten it.")
        value: LineDict | LineList = LineDict() if mapping else LineList()
        value.line = line
        value.lines = {} if isinstance(value, LineDict) else []
        if event.anchor is not None:
            self.anchor(event.anchor, value, 0, line)
            self.open.add(event.anchor)
        return _Collection(value, line, event.anchor)

    def begin(self, top: _Collection, started: _Collection) -> None:
        """Offer the list just started under a key of the top-level mapping to the stream;
        not while merges into that mapping are pending, which could change what it holds,
        nor an anchored list, whose aliases must see its items."""
        assert self.stream is not None
        if isinstance(top.value, LineDict) and top.key is not _NO_KEY and not top.merges \
                and started.anchor is None:
            started.stream = self.stream.begin(top.key, top.value)
            self.streamed = self.streamed or started.stream

    def add(self, parent: _Collection, value: Any, size: int, line: int) -> None:
        """Put a finished value into the collection being built: an item, a key or a value."""
        parent.size += size
        if parent.size > MAX_NODES:
            raise _error(self.filename, parent.line, f"expands to more than {MAX_NODES:,} values "
                         f"through aliases (&anchor / *alias); a config never needs that many, so "
                         f"this looks like an alias bomb. Write the values out instead.")
        target = parent.value
        if parent.stream:
            assert self.stream is not None
            self.stream.item(value, line)
        elif isinstance(target, LineList):
            target.append(value)
            target.lines.append(line)
        elif parent.key is _NO_KEY:
            # Keys come thousands of times: one string each, not one per watcher. Values are
            # not interned; those kept (kinds, settings) are shared by config, after checking.
            if type(value) is str and len(value) <= _INTERNED:
                value = sys.intern(value)
            parent.key, parent.key_line = value, line
            if self.streamed and parent is self.top:
                assert self.stream is not None
                self.stream.after("<<" if value is _MERGE_KEY else value)
        else:
            key, parent.key = parent.key, _NO_KEY
            if type(key) is str and key not in target:  # as nearly every key is: put() in short
                target[key] = value
                target.lines[key] = parent.key_line
            else:
                self.put(target, key, value, parent.key_line, parent)

    def put(self, target: LineDict, key: object, value: Any, line: int, parent: _Collection) -> None:
        """One key and its value; a key that is not a plain word, or comes twice, is a problem."""
        if key is _MERGE_KEY:
            parent.merges = [*(parent.merges or ()), (value, line)]
        elif type(key) is not str and not isinstance(key, _PLAIN_KEY):
            self.problems.append(Problem(self.filename, line, "",
                                         "a key must be a plain word, not a list or mapping; "
                                         "check the indentation and the `?` there."))
        else:
            if key in target:
                self.problems.append(Problem(self.filename, line, str(key),
                                             f"appears twice in one mapping (first on line "
                                             f"{target.lines[key]}); keep one."))
            target[key] = value
            target.lines[key] = line

    def merge(self, done: _Collection) -> None:
        """Apply `<<: *base` (or a list of them): keys written in the mapping win, then earlier
        merged mappings over later ones, as YAML's merge key says."""
        target = done.value
        for source, line in done.merges or ():
            for each in source if isinstance(source, list) else [source]:
                if not isinstance(each, dict) or not isinstance(target, LineDict):
                    raise _error(self.filename, line, "`<<` merges mappings: write `<<: *name` or "
                                 "`<<: [*one, *two]`, naming anchored mappings.")
                for key, value in each.items():
                    if key not in target:
                        target[key] = value
                        target.lines[key] = getattr(each, "lines", {}).get(key, done.line)

    def scalar(self, event: Event) -> Any:
        """A scalar as YAML's core schema reads it; text gets its ``${VAR}`` expanded."""
        tag, text = event.tag, event.value
        if tag is None or tag == "!":
            tag = _implicit_tag(text) if event.implicit[0] else _STR
        if tag == _STR:
            if "${" in text:
                return self.expand(text, _line(event))
            return text
        if tag == _MERGE:
            return _MERGE_KEY
        node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)  # !!int, !!timestamp
        constructor = _Loader.yaml_constructors.get(tag) or _Loader.yaml_constructors[None]
        made = constructor(self.parser, node)
        if isinstance(made, GeneratorType):  # a collection's constructor (`!!map x`): it raises
            return list(made)
        return made

    def alias(self, event: Event) -> tuple[Any, int]:
        """The anchored value `*name` shares, and the size it expands to."""
        name = event.anchor
        if name in self.open:
            raise _error(self.filename, _line(event), "an alias refers to the value that contains "
                         "it; a config cannot be infinite, so remove that alias.")
        if name not in self.anchors:
            raise _error(self.filename, _line(event), f"uses *{name}, but no &{name} comes before "
                         f"it; define the anchor first or write the value out.")
        value, size, _ = self.anchors[name]
        return value, size

    def anchor(self, name: str | None, value: Any, size: int, line: int) -> None:
        """Remember `&name`; defining a name twice is refused, as PyYAML does."""
        if name is None:
            return
        if name in self.anchors:
            raise _error(self.filename, line, f"defines &{name} again (first on line "
                         f"{self.anchors[name][2]}); give each anchor its own name.")
        self.anchors[name] = (value, size, line)

    def expand(self, text: str, line: int) -> str:
        """``${VAR}`` and ``${VAR:-default}`` from the environment; an unset one is a problem."""

        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            self.problems.append(Problem(self.filename, line, f"${{{name}}}",
                                         f"environment variable {name} is not set; set it or "
                                         f"write ${{{name}:-default}}."))
            return ""

        return _ENV.sub(one, text)


_MERGE_KEY = object()  # what `<<` reads as, until its mapping is complete


def _line(event: Event) -> int:
    """The 1-based line an event starts on."""
    return int(event.start_mark.line) + 1


def load_yaml(path: Path, environ: Mapping[str, str] | None = None,
              stream: Stream | None = None) -> tuple[Any, list[Problem]]:
    """Parse `path`; return the data and the problems found while building it. The items of a
    top-level list `stream` takes are not in the data: they went to it.

    Unreadable files and syntax errors raise ConfigError right away: nothing else can be
    checked in a file that does not parse.
    """
    name = str(path)
    try:
        with path.open("rb") as file:
            _check_utf8(name, file.read())  # the whole text, but only for a moment
            file.seek(0)
            return _parse(path, file, os.environ if environ is None else environ, stream)
    except FileNotFoundError:
        raise _error(name, None, "file not found; create it or pass -c PATH.") from None
    except OSError as exc:
        raise _error(name, None, f"cannot be read ({exc.strerror or exc}); check its permissions.") from None


def _check_utf8(name: str, raw: bytes) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _error(name, line, f"is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                     f"{exc.start}); save the file as UTF-8.") from None


def _parse(path: Path, file: BinaryIO, environ: Mapping[str, str],
           stream: Stream | None) -> tuple[Any, list[Problem]]:
    """Build the document from the file as libyaml reads it, in pieces."""
    name = str(path)
    builder = _Builder(file, name, environ, stream)
    try:
        data = builder.document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        col = f", column {mark.column + 1}" if mark else ""
        raise _error(name, mark.line + 1 if mark else None,
                     f"is not valid YAML{col}: {exc.problem}; "
                     f"{_syntax_hint(path.read_text(encoding='utf-8'), mark)}") from None
    except yaml.YAMLError as exc:
        raise _error(name, None, f"is not valid YAML: {exc}.") from None
    finally:
        builder.parser.dispose()
    return data, builder.problems


def _syntax_hint(text: str, mark: yaml.Mark | None) -> str:
    """What to do about a syntax error; tabs get their own hint, being the usual cause."""
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line][: mark.column + 1]:
        return "YAML does not allow a tab there; indent with spaces."
    return "fix the syntax there."


def _error(file: str, line: int | None, message: str) -> ConfigError:
    return ConfigError([Problem(file, line, "", message)])
