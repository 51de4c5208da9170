"""Typed option declarations: the one source of truth for validation, defaults, docs and schema.

Each watcher, filter and config section declares a tuple of `Option`s. The same tuple is used
to check a user's YAML (with a hint for every mistake), to fill defaults, to print
`notifier kinds`, and to generate the published JSON Schema, so they cannot drift apart.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from email.utils import parseaddr
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifier.errors import Problem
from notifier.schedule import CronExpr, Window

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MiB = 1024 * 1024  # sizes in options (max_bytes) are declared in these units
MAX_DURATION = 366 * 86400.0  # a year: anything longer is a typo, and overflows date arithmetic
# C0 and C1 control characters; tab and newline included, since a name is one line of a log.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Type:
    """How one option's value is checked and described. `parse` raises ValueError(hint)."""

    name: ClassVar[str] = "value"

    def parse(self, value: object) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {}

    def show(self, value: Any) -> Any:
        """A parsed value written back as a user would write it (defaults in docs and schema)."""
        return value


class Str(Type):
    name = "string"

    def parse(self, value: object) -> str:
        if type(value) is str:  # nearly always, checked 60,000 times for 20,000 watchers
            return value
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a string, got {_describe(value)}{_quote_hint(value)}")
        return str(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}


class Name(Str):
    """A watcher's name: its identity in the state, in mails and in one-line log records."""

    name = "name"

    def parse(self, value: object) -> str:
        text = super().parse(value)
        if not text.strip():
            raise ValueError("must not be empty; give the watcher a short, stable name")
        if _CONTROL.search(text):
            raise ValueError(f"{text!r} contains a control character (newline, tab, ...); "
                             f"write the name on one line with printable characters")
        return text

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "pattern": r"^[^\x00-\x1f\x7f-\x9f]+$"}


class Int(Type):
    name = "integer"

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def parse(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_describe(value)}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self.maximum:,}, got {value:,}")
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


class Bool(Type):
    name = "boolean"

    def parse(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_describe(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Duration(Type):
    """Seconds, written with a unit: ``30s``, ``10m``, ``1.5h``, ``1d``, ``500ms``.

    A bare number is refused: ``every: 10`` could mean seconds or minutes, and guessing wrong
    checks a site 60 times too often.
    """

    name = "duration"

    def parse(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a duration such as 30s, 10m or 1h, got {_describe(value)}")
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30s, 10m or 1h, got {value!r}")
        if match.group(2) is None:
            raise ValueError(f"{value!r} has no unit; write {match.group(1)}s, {match.group(1)}m "
                             f"or {match.group(1)}h")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if seconds <= 0:
            raise ValueError("a duration must be greater than zero")
        if seconds > MAX_DURATION:
            raise ValueError(f"{value!r} is longer than a year; use a shorter duration")
        return seconds

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": _DURATION.pattern.replace(")?", ")")}

    def show(self, value: Any) -> Any:
        for unit in ("w", "d", "h", "m", "s"):
            if value >= _UNITS[unit] and value % _UNITS[unit] == 0:
                return f"{value / _UNITS[unit]:g}{unit}"
        return f"{value * 1000:g}ms"


class TimeZone(Type):
    """An IANA time zone name, kept as the ZoneInfo the program uses."""

    name = "time zone"

    def parse(self, value: object) -> ZoneInfo:
        text = Str().parse(value)
        try:
            return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{text!r} is not a known time zone; use a name like Asia/Shanghai") from None

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}


class DailyWindow(Type):
    """A daily window such as 22:00-07:30, kept as a `Window`."""

    name = "time window"

    def parse(self, value: object) -> Window:
        text = Str().parse(value)
        match = _WINDOW.match(text)
        if not match or int(match[1]) > 23 or int(match[3]) > 23 or int(match[2]) > 59 or int(match[4]) > 59:
            raise ValueError(f"{text!r} is not a time window; write it like 22:00-07:30")
        return Window(time(int(match[1]), int(match[2])), time(int(match[3]), int(match[4])))

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": _WINDOW.pattern}


class Cron(Type):
    """A five-field cron expression, kept as a validated `CronExpr`."""

    name = "cron"

    def parse(self, value: object) -> CronExpr:
        return CronExpr.parse(Str().parse(value))

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}


class Choice(Type):
    name = "choice"

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def parse(self, value: object) -> str:
        text = value if isinstance(value, str) else repr(value)
        if text not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}; got {value!r}")
        return self.choices[self.choices.index(text)]  # the declared string: one for every watcher

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.choices)}


class ListOf(Type):
    """A list of items; a single item is accepted where users naturally write one."""

    name = "list"

    def __init__(self, item: Type, single_ok: bool = True) -> None:
        self.item = item
        self.single_ok = single_ok

    def parse(self, value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            if not self.single_ok:
                raise ValueError(f"expected a list, got {_describe(value)}")
            value = [value]
        return tuple(self.item.parse(v) for v in value)

    def schema(self) -> dict[str, Any]:
        items = {"type": "array", "items": self.item.schema()}
        return {"anyOf": [items, self.item.schema()]} if self.single_ok else items


class MapOf(Type):
    name = "mapping"

    def __init__(self, value: Type) -> None:
        self.value = value

    def parse(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {_describe(value)}")
        return {str(k): self.value.parse(v) for k, v in value.items()}

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": self.value.schema()}


class Regex(Type):
    name = "regex"

    def parse(self, value: object) -> re.Pattern[str]:
        text = Str().parse(value)
        try:
            return re.compile(text)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression: {exc}") from None

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "regex"}


class Address(Str):
    """An email address, checked when the config is loaded rather than when a mail bounces."""

    name = "address"

    def parse(self, value: object) -> str:
        text = super().parse(value)
        _, addr = parseaddr(text)
        if "\n" in text or "\r" in text or not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", addr):
            raise ValueError(f"{text!r} is not an email address such as name@example.com")
        return text


class StrOrList(Type):
    """A command: a string (run by the shell) or a list of arguments (run without one)."""

    name = "string or list"

    def parse(self, value: object) -> str | tuple[str, ...]:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(
                isinstance(v, str | int) and not isinstance(v, bool) for v in value):
            return tuple(str(v) for v in value)
        raise ValueError("expected a command string or a non-empty list of strings; quote "
                         "arguments YAML would read as something else, like 'false' or 'on'")

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


class AnyValue(Type):
    """A value validated elsewhere (filter lists are checked by the filter registry)."""

    name = "see docs"


REQUIRED: Any = object()


@dataclass(frozen=True)
class Option:
    """One configurable key: its type, default (or REQUIRED) and one line of documentation."""

    name: str
    type: Type
    default: Any = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def default_text(self) -> str:
        """The default as a user writes it (`10m`, `true`), "required", or "" when there is none."""
        if self.required:
            return "required"
        if self.default in (None, ()):
            return ""
        return json.dumps(self.type.show(self.default), ensure_ascii=False).strip('"')

    def schema(self) -> dict[str, Any]:
        out = dict(self.type.schema())
        if self.doc:
            out["description"] = self.doc
        if not self.required and self.default is not None and not callable(self.default):
            out["default"] = self.type.show(self.default)
        return out


def parse_options(
    raw: Mapping[str, Any],
    options: Sequence[Option],
    file: str,
    path: str,
    ignore: Collection[str] = (),
    start: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[Problem]]:
    """Check `raw` against `options`; return parsed values and every problem found.

    `start`, from `with_defaults`, holds each option's value unless `raw` writes it: the
    already-parsed values of the config's `defaults:` section in place of an option's own
    default, merged once for many mappings. Keys in `ignore` belong to the caller.

    Every declared key gets a value, even after a problem, so that callers can go on checking
    the rest of the file and report every problem at once. The work is per key written, not
    per key declared: a watcher sets four of its thirty options, and 20,000 of them are
    checked at start-up.
    """
    plan = _plan(options)
    known = plan.known
    problems: list[Problem] = []
    written = []
    for key in raw:
        if key in known:
            written.append(key)
        elif key not in ignore:
            hint = unknown_key_hint(key, [*known, *ignore])
            problems.append(Problem(file, line_of(raw, key), _join(path, key), hint))
    values = dict(plan.fallbacks if start is None else start)
    for name in plan.required:
        if raw.get(name) is None and values[name] is None:
            opt = known[name]
            problems.append(Problem(file, line_of(raw), _join(path, name),
                                    f"is required ({opt.doc or opt.type.name}); add it."))
    if len(written) > 1:  # in the order of the declarations, as the problems always were
        written.sort(key=plan.order.__getitem__)
    for name in written:
        given = raw[name]
        if given is None:  # written empty (`key:`): not set
            continue
        try:
            values[name] = known[name].type.parse(given)
        except ValueError as exc:
            problems.append(Problem(file, line_of(raw, name), _join(path, name), f"{exc}."))
    return values, problems


def with_defaults(options: Sequence[Option], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Every option's value before a mapping is read: its own default, or the one in
    `defaults`. Pass it to parse_options as `start` to merge the defaults once for many."""
    plan = _plan(options)
    return {**plan.fallbacks, **{key: value for key, value in defaults.items() if key in plan.known}}


@dataclass(frozen=True)
class _Plan:
    """What `parse_options` needs to know about one tuple of options, worked out once."""

    known: Mapping[str, Option]
    order: Mapping[str, int]
    fallbacks: Mapping[str, Any]  # each option's own default (None for a required one)
    required: tuple[str, ...]


_plans: dict[int, tuple[Sequence[Option], _Plan]] = {}


def _plan(options: Sequence[Option]) -> _Plan:
    """The plan for `options`, kept beside the sequence itself so that its id stays its own."""
    found = _plans.get(id(options))
    if found is None or found[0] is not options:
        known = {o.name: o for o in options}
        plan = _Plan(known, {name: n for n, name in enumerate(known)},
                     {o.name: None if o.required else o.default for o in options},
                     tuple(o.name for o in options if o.required))
        found = _plans[id(options)] = (options, plan)
    return found[1]


def unknown_key_hint(key: str, known: Mapping[str, Any] | Sequence[str]) -> str:
    """The message for a key nobody declared, with the closest known key when there is one."""
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; known keys are {', '.join(sorted(known))}."


def line_of(node: object, key: object = None) -> int | None:
    """The 1-based line of `key` in a mapping loaded by `notifier.yamlload`, if it kept one."""
    lines = getattr(node, "lines", None)
    if key is not None and lines and key in lines:
        return int(lines[key])
    line = getattr(node, "line", None)
    return int(line) if line else None


def schema_for(options: Sequence[Option], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON Schema object for a set of options; unknown keys are rejected there too."""
    props = {o.name: o.schema() for o in options}
    props.update(extra or {})
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    required = [o.name for o in options if o.required]
    if required:
        out["required"] = required
    return out


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _quote_hint(value: object) -> str:
    """YAML turns unquoted yes/no/on/off/true/false/null into non-strings; say how to keep text."""
    if isinstance(value, bool) or value is None:
        return f"; put it in quotes, like '{str(value).lower()}', to mean the text"
    return ""


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
