"""Load YAML keeping the line of every key, expanding ``${VAR}`` and catching duplicate keys.

PyYAML throws line numbers away once it builds dicts; config errors must name the line, so
mappings are built as `LineDict`s that remember where each key was written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from notifier.errors import ConfigError, Problem

MAX_NODES = 1_000_000  # values after alias expansion; 20,000 watchers need about 300,000
_ALIAS = re.compile(r"(?:^|[\s\[\]{},])\*[^\s\[\]{},]")  # a `*name` token, roughly
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class LineDict(dict[Any, Any]):
    """A dict that knows the line of itself (`line`) and of each key (`lines`)."""

    line: int | None = None
    lines: dict[Any, int]


class LineList(list[Any]):
    """A list that knows the line it starts on and the line of each item."""

    line: int | None = None
    lines: list[int]


# libyaml's parser is 4x faster and needs a third less memory on a 5,000-watcher file.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """A safe loader (no arbitrary objects) that records lines and reports env/duplicate issues."""

    problems: list[Problem]
    filename: str
    environ: Mapping[str, str]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LineDict:
        self.flatten_mapping(node)
        out = LineDict()
        out.line = node.start_mark.line + 1
        out.lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool | None):
                self.problems.append(Problem(self.filename, line, "",
                                             "a key must be a plain word, not a list or mapping; "
                                             "check the indentation and the `?` there."))
                continue
            if key in out:
                self.problems.append(Problem(self.filename, line, str(key),
                                             f"appears twice in one mapping (first on line "
                                             f"{out.lines[key]}); keep one."))
            out[key] = self.construct_object(value_node, deep=True)
            out.lines[key] = line
        return out

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LineList:
        out = LineList(self.construct_object(child, deep=True) for child in node.value)
        out.line = node.start_mark.line + 1
        out.lines = [child.start_mark.line + 1 for child in node.value]
        return out

    def construct_yaml_str(self, node: yaml.ScalarNode) -> str:
        text = str(self.construct_scalar(node))
        return _ENV.sub(lambda m: self._expand(m, node.start_mark.line + 1), text)

    def _expand(self, match: re.Match[str], line: int) -> str:
        name, default = match.group(1), match.group(2)
        if name in self.environ:
            return self.environ[name]
        if default is not None:
            return default
        self.problems.append(Problem(self.filename, line, f"${{{name}}}",
                                     f"environment variable {name} is not set; set it or "
                                     f"write ${{{name}:-default}}."))
        return ""


def _map(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    return loader.construct_mapping(node)


def _seq(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    return loader.construct_sequence(node)


def _str(loader: _Loader, node: yaml.ScalarNode) -> str:
    return loader.construct_yaml_str(node)


_Loader.add_constructor("tag:yaml.org,2002:map", _map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _seq)
_Loader.add_constructor("tag:yaml.org,2002:str", _str)


def load_yaml(path: Path, environ: Mapping[str, str] | None = None) -> tuple[Any, list[Problem]]:
    """Parse `path`; return the data and the problems found while building it.

    Unreadable files and syntax errors raise ConfigError right away: nothing else can be
    checked in a file that does not parse.
    """
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _error(name, None, "file not found; create it or pass -c PATH.") from None
    except UnicodeDecodeError as exc:
        raw = path.read_bytes()
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _error(name, line, f"is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                     f"{exc.start}); save the file as UTF-8.") from None
    except OSError as exc:
        raise _error(name, None, f"cannot be read ({exc.strerror or exc}); check its permissions.") from None
    loader = _Loader(text)
    loader.problems = []
    loader.filename = name
    loader.environ = os.environ if environ is None else environ
    try:
        node = loader.get_single_node()
        if node is None:
            return None, loader.problems
        if _ALIAS.search(text):  # only aliases can make a small file expand
            _check_size(name, node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        col = f", column {mark.column + 1}" if mark else ""
        raise _error(name, mark.line + 1 if mark else None,
                     f"is not valid YAML{col}: {exc.problem}; {_syntax_hint(text, mark)}") from None
    except yaml.YAMLError as exc:
        raise _error(name, None, f"is not valid YAML: {exc}.") from None
    except RecursionError:
        raise _error(name, None, "is nested too deeply to be a config; flatten it.") from None
    finally:
        loader.dispose()
    return data, loader.problems


def _syntax_hint(text: str, mark: yaml.Mark | None) -> str:
    """What to do about a syntax error; tabs get their own hint, being the usual cause."""
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line][: mark.column + 1]:
        return "YAML does not allow a tab there; indent with spaces."
    return "fix the syntax there."


def _check_size(file: str, root: yaml.Node) -> None:
    """Refuse documents whose aliases expand to more values than any config needs.

    PyYAML shares aliased nodes, so a "billion laughs" file loads in a moment, but anything
    that walks the result (a fingerprint, a JSON dump) would expand it. Counting the expanded
    size on the node graph, with each node's size computed once, costs one pass over the file.
    """
    sizes: dict[int, int] = {}
    pending: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in pending:
            raise _error(file, node.start_mark.line + 1, "an alias refers to the value that contains "
                         "it; a config cannot be infinite, so remove that alias.")
        pending.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        pending.discard(key)
        sizes[key] = total
        if total > MAX_NODES:
            raise _error(file, node.start_mark.line + 1, f"expands to more than {MAX_NODES:,} values "
                         f"through aliases (&anchor / *alias); a config never needs that many, so "
                         f"this looks like an alias bomb. Write the values out instead.")
        return total

    size(root)


def _error(file: str, line: int | None, message: str) -> ConfigError:
    return ConfigError([Problem(file, line, "", message)])
