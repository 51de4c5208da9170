"""Turn an alert into a mail's subject, text part and HTML part with Jinja templates.

User template directories (global or per watcher) override shipped `templates/` file by file.
Watched content (diff lines, old/new, errors, the watcher's source) is untrusted: the HTML
environment autoescapes it, sizes are capped so a huge change never becomes a 50 MB mail, and
control characters and terminal escape sequences are made visible or removed in one place,
`template_variables`, which every kind of alert goes through.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import jinja2
from markupsafe import escape

from notifier.binary import describe_change
from notifier.diff import Diff, compute, with_words
from notifier.safetext import UNSAFE, visible

log = logging.getLogger(__name__)

SHIPPED_TEMPLATES = Path(__file__).resolve().parent / "templates"  # package data, in the wheel
MAX_SUBJECT = 150  # characters; longer subjects get cut with an ellipsis
MAX_CONTENT_BYTES = 100_000  # per side, for `old` and `new` as templates see them
MAX_DIFF_LINES = 2_000  # diff lines shown; the rest is summarised as "… N more lines"

AlertKind = Literal["change", "error", "recovery", "test", "digest"]
KINDS: tuple[AlertKind, ...] = ("change", "error", "recovery", "test", "digest")

# Whitespace of any kind and control characters end a subject line; bidi overrides could
# make a subject read differently from what it says, so they are dropped.
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_URL_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")
MAX_PROBLEM = 500  # characters of a template's exception message kept in `problem`


@dataclass(frozen=True)
class WatcherInfo:
    """What the templates may say about the watcher; `link` is where a reader can look."""

    name: str
    kind: str
    source: str  # URL, path or command line, shown as text
    link: str | None = None


@dataclass(frozen=True)
class DigestItem:
    """One change inside a digest mail."""

    watcher: WatcherInfo
    at: datetime
    diff: Diff


@dataclass(frozen=True)
class AlertContext:
    """Everything one alert knows. Times must be timezone-aware so mails never guess a zone."""

    kind: AlertKind
    watcher: WatcherInfo | None
    at: datetime
    diff: Diff | None = None  # computed from old/new for change alerts when not given
    old: str = ""
    new: str = ""
    previous_at: datetime | None = None
    error: str | None = None
    failures: int = 0
    failing_since: datetime | None = None
    subject_prefix: str = "[notifier]"
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    entries: tuple[DigestItem, ...] = ()  # the changes a digest alert carries

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown alert kind {self.kind!r}; expected one of {KINDS}")
        for name in ("at", "previous_at", "failing_since"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, got {value!r}")


@dataclass(frozen=True)
class Rendered:
    """The parts of one mail; `subject` is already a single safe header line. `problem` says
    which user template failed when the shipped templates had to be used instead."""

    subject: str
    text: str
    html: str
    problem: str | None = None


def fmt_time(dt: datetime | None) -> str:
    """'2026-11-24 10:15:03 CST (+0800)': the zone name alone is ambiguous, the offset is not."""
    if dt is None:
        return ""
    stamp = dt.strftime("%Y-%m-%d %H:%M:%S")
    if dt.utcoffset() is None:
        return stamp
    name, offset = dt.tzname() or "", dt.strftime("%z")
    if not name or name[0] in "+-" or name.startswith(("UTC+", "UTC-")):
        return f"{stamp} ({offset})"  # the name only repeats the offset
    return f"{stamp} {name} ({offset})"


def one_line(text: str, limit: int = MAX_SUBJECT) -> str:
    """Collapse to a single safe header line: no CR/LF can reach the mail headers."""
    text = _BREAKS.sub(" ", _BIDI.sub("", text)).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _visible_diff(diff: Diff) -> Diff:
    """The diff with `visible` line texts and the word-level spans of those texts."""
    texts = [ln.text for hunk in diff.hunks for ln in hunk.lines]
    texts += [side for pair in diff.changed for side in pair]
    if any(UNSAFE.search(text) for text in texts):
        hunks = tuple(replace(hunk, lines=tuple(replace(ln, text=visible(ln.text)) for ln in hunk.lines))
                      for hunk in diff.hunks)
        diff = Diff(hunks, tuple((visible(old), visible(new)) for old, new in diff.changed))
    return with_words(diff)  # always recomputed from the visible texts, never taken as given


def _visible_watcher(watcher: WatcherInfo) -> WatcherInfo:
    return WatcherInfo(visible(watcher.name), visible(watcher.kind), visible(watcher.source),
                       None if watcher.link is None else visible(watcher.link))


def safe_link(link: str | None) -> str | None:
    """The link when it is a plain http(s) URL, else None (no javascript:, data:, file:...)."""
    link = (link or "").strip()
    try:
        parts = urlsplit(link)
    except ValueError:
        return None
    ok = parts.scheme.lower() in ("http", "https") and parts.hostname and not _URL_UNSAFE.search(link)
    return link if ok else None


def cap_text(text: str, limit: int = MAX_CONTENT_BYTES) -> str:
    """Cut to `limit` UTF-8 bytes on a character boundary and say how much was left out."""
    if len(text) * 4 <= limit:  # cannot be over the limit; skip encoding
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    cut = limit
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # do not split a multi-byte character
        cut -= 1
    kept = data[:cut].decode("utf-8", "surrogatepass")
    return f"{kept}\n… [truncated: {len(data) - cut:,} more bytes]"


def cap_diff(diff: Diff, limit: int = MAX_DIFF_LINES) -> tuple[Diff, int]:
    """The first `limit` lines of the diff, and how many lines were left out."""
    total = sum(len(h.lines) for h in diff.hunks)
    if total <= limit:
        return diff, 0
    hunks, room = [], limit
    for hunk in diff.hunks:
        if room <= 0:
            break
        hunks.append(replace(hunk, lines=hunk.lines[:room]))
        room -= len(hunks[-1].lines)
    return Diff(tuple(hunks), diff.changed[:limit]), total - limit


def _counts(diff: Diff | None) -> dict[str, int]:
    """Counted on the whole diff, so they stay true when the shown diff is capped."""
    tags = [line.tag for hunk in diff.hunks for line in hunk.lines] if diff else []
    return {"added": tags.count("added"), "removed": tags.count("removed"),
            "changed": len(diff.changed) if diff else 0}


@functools.lru_cache(maxsize=64)
def _environments(dirs: tuple[Path, ...]) -> tuple[jinja2.Environment, jinja2.Environment]:
    """(html, text) environments for one search path, cached so templates compile once.

    Both share one loader; only the HTML one autoescapes. `shipped/NAME` always names the
    shipped template, so an override of `_base.html` can still extend the original.
    """
    loader = jinja2.ChoiceLoader([
        jinja2.FileSystemLoader([*dirs, SHIPPED_TEMPLATES], encoding="utf-8"),
        jinja2.PrefixLoader({"shipped": jinja2.FileSystemLoader(SHIPPED_TEMPLATES)}),
    ])
    common: dict[str, Any] = {"loader": loader, "undefined": jinja2.StrictUndefined,
                              "trim_blocks": True, "lstrip_blocks": True}
    html = jinja2.Environment(autoescape=True, **common)
    text = jinja2.Environment(autoescape=False, **common)  # noqa: S701 - subject/text are not HTML
    for env in (html, text):
        env.filters["fmt_time"] = fmt_time
        env.globals["fmt_time"] = fmt_time
    return html, text


def template_variables(ctx: AlertContext) -> dict[str, Any]:
    """What templates see (templates/README.md lists it). Every alert's values pass here, so
    this is where sizes are capped and every text from outside goes through `visible`."""
    diff = ctx.diff
    if diff is None and ctx.kind == "change":
        diff = compute(ctx.old, ctx.new)
    shown, omitted = cap_diff(diff) if diff is not None else (None, 0)
    watcher = _visible_watcher(ctx.watcher) if ctx.watcher else None

    return {
        "kind": ctx.kind, "watcher": watcher,
        "name": one_line(watcher.name, 1_000) if watcher else "notifier",
        "link": safe_link(watcher.link) if watcher else None,
        "at": ctx.at, "previous_at": ctx.previous_at,
        "diff": _visible_diff(shown) if shown is not None else None, "omitted": omitted,
        "counts": _counts(diff),
        "binary": describe_change(ctx.old, ctx.new) if ctx.kind == "change" else None,
        "old": visible(cap_text(ctx.old)), "new": visible(cap_text(ctx.new)),
        "error": visible(ctx.error) if ctx.error is not None else None,
        "failures": ctx.failures, "failing_since": ctx.failing_since,
        "subject_prefix": visible(ctx.subject_prefix),
        "extra": MappingProxyType({visible(str(key)): visible(value) if isinstance(value, str) else value
                                   for key, value in ctx.extra.items()}),
        "entries": [_entry(item) for item in ctx.entries],
        "template_problem": None,
    }


def _entry(item: DigestItem) -> dict[str, Any]:
    shown, omitted = cap_diff(item.diff)
    watcher = _visible_watcher(item.watcher)
    return {"watcher": watcher, "name": one_line(watcher.name, 1_000),
            "link": safe_link(watcher.link), "at": item.at, "diff": _visible_diff(shown),
            "omitted": omitted, "counts": _counts(item.diff)}


def diff_html(diff: Diff, title: str | None = None, template_dirs: Sequence[Path | str] = ()) -> str:
    """The diff as the HTML part of a change alert shows it (the `_diff.html` macro: capped,
    made visible, escaped, changed words marked), for `notifier diff --html`.

    Without `title`, the block alone; with one, a whole page (UTF-8, titled) to open in a browser.
    """
    dirs = tuple(Path(d).expanduser().resolve() for d in template_dirs)
    shown, omitted = cap_diff(diff)
    macro = _environments(dirs)[0].get_template("_diff.html").module.render_diff  # type: ignore[attr-defined]
    block = str(macro(_visible_diff(shown), omitted))  # Markup: escaped by the template
    if title is None:
        return block
    return (f'<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(one_line(visible(title), 1_000))}</title>\n</head>\n"
            f'<body style="max-width:960px;margin:0 auto;padding:12px;">\n{block}</body>\n</html>\n')


def template_problem(exc: BaseException, kind: str) -> str:
    """One line naming the user template that failed (file and line, when Jinja's rewritten
    traceback or the error itself tells) and what it raised."""
    where: str | None = None
    if isinstance(exc, jinja2.TemplateSyntaxError):
        where = f"{exc.filename or exc.name}:{exc.lineno}"
    elif isinstance(exc, jinja2.TemplateNotFound):
        where = str(exc.name)
    tb = exc.__traceback__ if where is None else None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.endswith(".py") and not filename.startswith("<"):
            where = f"{filename}:{tb.tb_lineno}"  # the innermost template frame wins
        tb = tb.tb_next
    message = one_line(f"{type(exc).__name__}: {exc}", MAX_PROBLEM)
    return f"the template {where or f'for {kind} alerts'} failed: {message}"


def _render(envs: tuple[jinja2.Environment, jinja2.Environment], kind: str,
            variables: dict[str, Any]) -> Rendered:
    html_env, text_env = envs
    subject = one_line(text_env.get_template(f"{kind}.subject.txt").render(variables))
    variables = {**variables, "subject": subject}
    text = text_env.get_template(f"{kind}.txt").render(variables).rstrip("\n") + "\n"
    html = html_env.get_template(f"{kind}.html").render(variables)
    return Rendered(subject, text, html)


class Renderer:
    """Renders alerts with user template directories searched before the shipped ones."""

    def __init__(self, template_dirs: Sequence[Path | str] = ()) -> None:
        self.template_dirs = tuple(Path(d).expanduser().resolve() for d in template_dirs)
        self._envs = _environments(self.template_dirs)

    def render(self, ctx: AlertContext) -> Rendered:
        """Subject, text and HTML for one alert.

        A user template that fails (any exception: `{{ 1/0 }}` is not a Jinja error) must not
        swallow the alert: the shipped templates render it instead, showing the problem in the
        mail, and `Rendered.problem` names it so the caller can count it against the watcher.
        The shipped templates are not guarded: a failure there is a bug and propagates.
        """
        variables = template_variables(ctx)
        try:
            return _render(self._envs, ctx.kind, variables)
        except Exception as exc:
            if not self.template_dirs:
                raise
            problem = template_problem(exc, ctx.kind)
            log.warning("%s; the shipped templates render this %s alert instead", problem,
                        ctx.kind, exc_info=log.isEnabledFor(logging.DEBUG))
        rendered = _render(_environments(()), ctx.kind, {**variables, "template_problem": problem})
        return replace(rendered, problem=problem)

    def check(self) -> None:
        """Render every kind with sample data; raises jinja2.TemplateError on a broken template."""
        at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        watcher = WatcherInfo("example", "url", "https://example.com/", "https://example.com/")
        for kind in KINDS:
            ctx = AlertContext(kind, watcher, at, old="a\nb\n", new="a\nc\n", error="sample",
                               failures=3, failing_since=at - timedelta(hours=1),
                               previous_at=at - timedelta(hours=1),
                               entries=(DigestItem(watcher, at, compute("a\n", "b\n")),))
            _render(self._envs, kind, template_variables(ctx))
