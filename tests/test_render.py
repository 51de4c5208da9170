"""Rendering alerts: one-line subjects, escaped HTML, clean text parts, overrides and caps."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import cast
from zoneinfo import ZoneInfo

import jinja2
import pytest

from notifier.diff import compute
from notifier.render import (
    KINDS,
    MAX_CONTENT_BYTES,
    MAX_DIFF_LINES,
    MAX_SUBJECT,
    SHIPPED_TEMPLATES,
    AlertContext,
    AlertKind,
    DigestItem,
    Renderer,
    WatcherInfo,
    diff_html,
    fmt_time,
    one_line,
    safe_link,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
AT = datetime(2026, 11, 24, 10, 15, 3, tzinfo=SHANGHAI)
WATCHER = WatcherInfo("prices", "url", "https://example.com/p?a=1&b=2", "https://example.com/p")
OLD = "title\nprice: 10\n<p>keep</p>\nfooter\n"
NEW = "title\nprice: 12\n<script>alert(1)</script>\n<p>keep</p>\nfooter\n"
TAG = re.compile(r"</?[A-Za-z!][^>]*>")


def change(watcher: WatcherInfo | None = WATCHER, old: str = OLD, new: str = NEW,
           extra: Mapping[str, str] = MappingProxyType({})) -> AlertContext:
    return AlertContext("change", watcher, AT, diff=compute(old, new), old=old, new=new,
                        previous_at=AT - timedelta(hours=1), extra=extra)


def line_divs(html: str, text: str) -> list[str]:
    """The style attribute of every diff line whose content is exactly `text`."""
    return re.findall(r'<div style="([^"]*)">' + re.escape(text) + "</div>", html)


def test_change_subject_is_one_line_with_name_and_counts() -> None:
    ctx = change(WatcherInfo("pri\r\nBcc: evil@example.com\tces", "url", "x", None),
                 old="a\n", new="a\r\nb\r\nc\u2028d\n")
    subject = Renderer().render(ctx).subject
    assert subject == "[notifier] pri Bcc: evil@example.com ces changed: 3 added, 0 removed"
    assert not re.search(r"[\x00-\x1f\x7f\u2028\u2029]", subject)


def test_subject_is_capped_and_stripped_of_controls() -> None:
    assert one_line("  a\r\n\x00b\x1b[0m \u202ec\t ") == "a b [0m c"
    capped = one_line("x" * 1000)
    assert len(capped) == MAX_SUBJECT
    assert capped.endswith("…")
    ctx = AlertContext("error", WATCHER, AT, error="boom\n" * 500, failures=3)
    assert len(Renderer().render(ctx).subject) <= MAX_SUBJECT


def test_html_escapes_watched_content() -> None:
    ctx = change(WatcherInfo("<b>name</b>", "command", "echo '<img src=x onerror=1>'", None),
                 extra={"note": "<i>x</i>"})
    html = Renderer().render(ctx).html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    assert "<b>name</b>" not in html
    assert "&lt;b&gt;name&lt;/b&gt;" in html
    assert "<img" not in html
    assert "&lt;img src=x onerror=1&gt;" in html


def test_error_text_is_escaped_in_html_and_raw_in_text() -> None:
    ctx = AlertContext("error", WATCHER, AT, error="bad <script>x</script> & more", failures=2)
    out = Renderer().render(ctx)
    assert "bad &lt;script&gt;x&lt;/script&gt; &amp; more" in out.html
    assert "<script" not in out.html
    assert "bad <script>x</script> & more" in out.text


def test_text_part_has_unified_diff_and_no_html() -> None:
    ctx = change(old="one\ntwo\nthree\n", new="one\n2\nthree\nfour & more\n")
    text = Renderer().render(ctx).text
    for line in ("--- before", "+++ after", "@@ -1,3 +1,4 @@", " one", "-two", "+2",
                 "+four & more"):
        assert line + "\n" in text
    assert not TAG.search(text)
    assert not re.search(r"&(?:[a-z]+|#\d+);", text)
    assert "prices" in text
    assert "https://example.com/p?a=1&b=2" in text
    assert "2026-11-24 10:15:03 CST (+0800)" in text


def test_text_part_keeps_page_markup_verbatim() -> None:
    text = Renderer().render(change()).text
    assert "+<script>alert(1)</script>\n" in text  # the page's own text, not an HTML leftover
    assert "&lt;" not in text


MARKED = re.compile(r'<(ins|del) style="([^"]*)">(.*?)</\1>')


def test_added_green_removed_red_context_grey() -> None:
    rewritten = Renderer().render(change(old="title\nbanner one\nfooter\n", new="title\nall new\nfooter\n"))
    assert all("#e6ffec" in s and "#1a7f37" in s for s in line_divs(rewritten.html, "+all new"))
    assert line_divs(rewritten.html, "+all new")
    assert all("#ffebe9" in s and "#cf222e" in s for s in line_divs(rewritten.html, "-banner one"))
    assert line_divs(rewritten.html, "-banner one")
    html = Renderer().render(change()).html
    (context,) = line_divs(html, " title")
    assert "#57606a" in context
    assert "white-space:pre-wrap" in context
    assert "word-break:break-all" in context
    assert "monospace" in html
    assert "@@ -1,5 +1,5 @@" not in html
    assert "@@ -1,4 +1,5 @@" in html
    assert 'name="viewport"' in html
    assert "max-width:720px" in html
    assert "<style" not in html


def test_changed_words_are_marked_in_html_and_the_text_part_stays_unified() -> None:
    out = Renderer().render(change())
    removed, added = (re.search(r">" + re.escape(sign) + r"price: (.*?)</div>", out.html) for sign in "-+")
    assert removed is not None
    assert added is not None
    assert [m[0::2] for m in MARKED.findall(removed.group(1))] == [("del", "10")]
    assert [m[0::2] for m in MARKED.findall(added.group(1))] == [("ins", "12")]
    for _, style, _ in MARKED.findall(out.html):
        assert "background:" in style
        assert "text-decoration:none" in style
    assert "-price: 10\n+price: 12\n" in out.text  # the text part: a unified diff, no marks
    assert "<ins" not in out.text
    assert "<del" not in out.text


def test_chinese_changes_are_marked_by_character() -> None:
    html = Renderer().render(change(old="a\n本次考试取消\n", new="a\n本次考试延期\n")).html
    assert [m[0::2] for m in MARKED.findall(html)] == [("del", "取消"), ("ins", "延期")]
    assert "-本次考试<del " in html


def test_a_changed_word_cannot_inject_markup_or_controls() -> None:
    old = "price: 10 <b>ok</b>\n"
    new = "price: 10 <script>alert(1)</script>\x1b]0;title\x07\x00\n"
    out = Renderer().render(change(old=old, new=new))
    assert MARKED.findall(out.html)  # the lines paired: the changed words are marked...
    assert "<script" not in out.html  # ...and escaped like everything else
    assert "<b>" not in out.html
    added = re.search(r">(\+price.*?)</div>", out.html)
    assert added is not None
    whole = re.sub(r"</?ins[^>]*>", "", added.group(1))
    assert whole == "+price: 10 &lt;script&gt;alert(1)&lt;/script&gt;\ufffd"
    assert "<ins style=\"background:#abf2bc;text-decoration:none;\">script</ins>" in added.group(1)
    assert not FORBIDDEN.search(out.html)


def test_digest_entries_are_marked_too() -> None:
    entry = DigestItem(WATCHER, AT, compute("price: 1\n", "price: 2\n"))
    ctx = AlertContext("digest", None, AT, entries=(entry,))
    html = Renderer().render(ctx).html
    assert [m[0::2] for m in MARKED.findall(html)] == [("del", "1"), ("ins", "2")]


def test_diff_html_is_the_block_a_change_mail_carries() -> None:
    diff = compute(OLD, NEW)
    block = diff_html(diff)
    assert block.startswith("<div ")
    assert block in Renderer().render(change()).html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in block
    assert "<ins " in block
    page = diff_html(diff, title="prices <b>\x1b[31m</b>")
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page
    assert "<title>prices &lt;b&gt;&lt;/b&gt;</title>" in page
    assert block in page


@pytest.mark.parametrize(("link", "href"), [
    ("https://example.com/a?x=1&y=2", 'href="https://example.com/a?x=1&amp;y=2"'),
    ("http://example.com/", 'href="http://example.com/"'),
    ("javascript:alert(1)", None),
    ("JaVaScRiPt:alert(1)", None),
    ("data:text/html,<b>x</b>", None),
    ("file:///etc/passwd", None),
    ("https://exa mple.com/", None),
    ("/relative/path", None),
    (None, None),
])
def test_link_only_for_http_and_https(link: str | None, href: str | None) -> None:
    watcher = WatcherInfo("w", "url", "src", link)
    out = Renderer().render(change(watcher))
    if href:
        assert href in out.html
    else:
        assert "<a " not in out.html
        assert "href=" not in out.html
        assert safe_link(link) is None
    if link:
        assert link in out.text
        assert "<b>x</b>" not in out.html


def test_user_directory_overrides_one_template(tmp_path: Path) -> None:
    (tmp_path / "change.subject.txt").write_text("Custom: {{ name }} +{{ counts.added }}\n")
    out = Renderer([tmp_path]).render(change())
    assert out.subject == "Custom: prices +2"
    shipped = Renderer().render(change())
    assert out.text == shipped.text
    assert out.html == shipped.html.replace(shipped.subject, out.subject)
    assert Renderer().render(change()).subject.startswith("[notifier] prices changed")


def test_override_can_extend_the_shipped_template(tmp_path: Path) -> None:
    (tmp_path / "change.html").write_text(
        '{% extends "shipped/change.html" %}{% block footer %}Team footer{% endblock %}')
    html = Renderer([str(tmp_path)]).render(change()).html
    assert "Team footer" in html
    assert "Sent by notifier" not in html
    assert "&lt;script&gt;" in html


def test_broken_override_falls_back_and_check_reports_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "error.txt").write_text("{{ no_such_variable }}")
    renderer = Renderer([tmp_path])
    with caplog.at_level(logging.WARNING, logger="notifier.render"):
        out = renderer.render(AlertContext("error", WATCHER, AT, error="boom", failures=3))
    assert "boom" in out.text
    assert "shipped" in caplog.text
    with pytest.raises(jinja2.UndefinedError):
        renderer.check()
    Renderer().check()


def test_huge_diff_is_capped() -> None:
    old = "".join(f"old {i}\n" for i in range(20_000))
    new = "".join(f"new {i} 变化\n" for i in range(20_000))
    ctx = change(old=old, new=new)
    out = Renderer().render(ctx)
    assert out.subject.endswith("changed: 20000 added, 20000 removed")
    more = 40_000 - MAX_DIFF_LINES
    assert f"… {more:,} more lines not shown" in out.text
    assert f"… {more:,} more lines not shown" in out.html
    assert out.text.count("\n") < MAX_DIFF_LINES + 50
    assert len(out.html.encode()) < 1_000_000


def test_old_and_new_are_capped_for_templates(tmp_path: Path) -> None:
    (tmp_path / "change.txt").write_text("{{ old }}|{{ new }}")
    new = "中" * MAX_CONTENT_BYTES  # 3 bytes each
    text = Renderer([tmp_path]).render(change(old="short", new=new)).text
    old_part, new_part = text.split("|")
    assert old_part == "short"
    kept, note = new_part.split("\n…")
    assert set(kept) == {"中"}
    assert len(kept.encode()) <= MAX_CONTENT_BYTES
    assert "truncated" in note


def test_diff_is_computed_from_old_and_new_when_missing() -> None:
    ctx = AlertContext("change", WATCHER, AT, old="a\n", new="a\nb\n")
    out = Renderer().render(ctx)
    assert "1 added, 0 removed" in out.subject
    assert "+b\n" in out.text


def test_error_recovery_and_test_kinds() -> None:
    since = AT - timedelta(hours=2)
    error = Renderer().render(AlertContext("error", WATCHER, AT, error="timed out after 30s",
                                           failures=4, failing_since=since))
    assert error.subject == "[notifier] prices is failing (4 in a row): timed out after 30s"
    assert "4 failed checks in a row" in error.text
    assert "timed out after 30s" in error.html
    assert "Failing since: 2026-11-24 08:15:03 CST (+0800)" in error.text

    recovery = Renderer().render(AlertContext("recovery", WATCHER, AT, failures=4,
                                              failing_since=since))
    assert recovery.subject == "[notifier] prices is back to normal after 4 failures"
    assert "back to normal after 4 failed checks" in recovery.text
    assert "Recovered: 2026-11-24 10:15:03 CST (+0800)" in recovery.text

    test = Renderer().render(AlertContext("test", None, AT, subject_prefix="[mon]",
                                          extra={"via": "smtp.163.com:465 (ssl)"}))
    assert test.subject == "[mon] Test alert"
    assert "This is a test alert from notifier, sent via smtp.163.com:465 (ssl)." in test.text
    assert "sent via smtp.163.com:465 (ssl)" in test.html


def test_chinese_content_round_trips() -> None:
    watcher = WatcherInfo("招聘公告", "url", "https://例子.中国/公告", "https://例子.中国/公告")
    ctx = change(watcher, old="标题\n旧内容\n", new="标题\n新内容报名开始\n")
    out = Renderer().render(ctx)
    assert out.subject == "[notifier] 招聘公告 changed: 1 added, 1 removed"
    assert "+新内容报名开始\n" in out.text
    assert "-旧内容\n" in out.text
    assert "+新内容报名开始</div>" in out.html
    assert 'href="https://例子.中国/公告"' in out.html
    out.html.encode("utf-8")
    out.text.encode("utf-8")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("watcher", [WATCHER, None])
def test_every_kind_renders_with_minimal_context(kind: AlertKind, watcher: WatcherInfo | None) -> None:
    out = Renderer().render(AlertContext(kind, watcher, AT))
    assert out.subject
    assert "\n" not in out.subject
    assert out.text.endswith("\n")
    assert not TAG.search(out.text)
    assert out.html.startswith("<!DOCTYPE html>")
    assert out.html.rstrip().endswith("</html>")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_with_full_context(kind: AlertKind) -> None:
    ctx = AlertContext(kind, WATCHER, AT, diff=compute(OLD, NEW), old=OLD, new=NEW,
                       previous_at=AT - timedelta(hours=1), error="e", failures=1,
                       failing_since=AT - timedelta(hours=3), extra={"via": "x", "k": "v"},
                       entries=(DigestItem(WATCHER, AT, compute(OLD, NEW)),))
    out = Renderer().render(ctx)
    assert "10:15:03 CST (+0800)" in out.text  # in the zone alerts.py gave the times


def test_every_shipped_kind_has_three_templates() -> None:
    for kind in KINDS:
        for suffix in (".subject.txt", ".txt", ".html"):
            assert (SHIPPED_TEMPLATES / f"{kind}{suffix}").is_file()


def test_context_validation() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AlertContext("change", WATCHER, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="unknown alert kind"):
        AlertContext(cast("AlertKind", "weekly"), WATCHER, AT)  # what an untyped caller could pass


def test_fmt_time() -> None:
    assert fmt_time(AT) == "2026-11-24 10:15:03 CST (+0800)"
    assert fmt_time(AT.astimezone(UTC)) == "2026-11-24 02:15:03 UTC (+0000)"
    fixed = AT.astimezone(timezone(timedelta(hours=8)))
    assert fmt_time(fixed) == "2026-11-24 10:15:03 (+0800)"
    assert fmt_time(None) == ""


def test_rendering_is_fast() -> None:
    ctx = change()
    Renderer().render(ctx)
    start = time.perf_counter()
    for _ in range(1000):
        Renderer().render(ctx)
    assert time.perf_counter() - start < 5  # about 0.15 ms each; generous for slow CI


# --- control characters and escape sequences ---------------------------------------------------

NASTY = "\x1b[31mred\x1b[0m\x00\x07\x85"
# Every C0 control but tab and newline, DEL, every C1 control: none may reach a mail part.
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.mark.parametrize("kind", KINDS)
def test_control_characters_never_reach_either_part(kind: AlertKind) -> None:
    watcher = WatcherInfo(f"name{NASTY}", "command", f"printf '{NASTY}'", f"https://e.com/{NASTY}")
    old, new = f"same\nold {NASTY}\n", f"same\nnew {NASTY}\n\x1b[1mbold\x1b[22m\n"
    ctx = AlertContext(kind, watcher, AT, old=old, new=new, error=f"exit 1: {NASTY}",
                       failures=3, subject_prefix=f"[n{NASTY}]", extra={"via": NASTY, NASTY: NASTY},
                       entries=(DigestItem(watcher, AT, compute(old, new)),))
    out = Renderer().render(ctx)
    for part in (out.subject, out.text, out.html):
        assert not FORBIDDEN.search(part), repr(FORBIDDEN.findall(part))
        assert "[31m" not in part
    if kind in ("change", "digest"):
        assert "+new red\ufffd\ufffd" in out.text
        assert "bold" in out.html
    if kind == "error":
        assert "exit 1: red\ufffd\ufffd" in out.text


def test_user_templates_see_visible_values_too(tmp_path: Path) -> None:
    (tmp_path / "change.txt").write_text("{{ old }}|{{ new }}|{{ watcher.source }}|{{ diff.added }}")
    out = Renderer([tmp_path]).render(change(WatcherInfo("w", "command", NASTY, None),
                                             old="a\n", new=f"a\n{NASTY}\n"))
    assert out.problem is None
    assert not FORBIDDEN.search(out.text)
    assert "red\ufffd\ufffd" in out.text


# --- user templates that fail at render time ------------------------------------------------

@pytest.mark.parametrize(("body", "raised"), [
    ("line one\n{{ 1/0 }}\n", "ZeroDivisionError: division by zero"),
    ("line one\n{{ at.strftime(7) }}\n", "TypeError"),
    ("line one\n{{ no_such_variable }}\n", "UndefinedError: 'no_such_variable' is undefined"),
])
def test_runtime_failure_of_a_user_template_uses_the_shipped_ones(
        tmp_path: Path, body: str, raised: str) -> None:
    (tmp_path / "change.txt").write_text(body)
    out = Renderer([tmp_path]).render(change())
    shipped = Renderer().render(change())
    assert out.problem is not None
    assert f"{tmp_path / 'change.txt'}:2" in out.problem  # the file and the line
    assert raised in out.problem
    assert out.subject == shipped.subject
    assert out.text.startswith(shipped.text.rstrip("\n"))
    for part in (out.text, out.html):
        assert "rendered with the shipped templates" in part
        assert raised.partition(":")[0] in part  # the type of error, in the note
    assert shipped.problem is None
    assert "shipped templates" not in shipped.text


def test_failure_in_an_included_user_template_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "_base.html").write_text("<html>{% block content %}{% endblock %}{{ 1/0 }}</html>")
    out = Renderer([tmp_path]).render(change())
    assert out.problem is not None
    assert f"{tmp_path / '_base.html'}:1" in out.problem
    assert "&lt;script&gt;" in out.html  # the shipped HTML, still escaped



def test_a_binary_change_is_one_sentence_not_a_diff() -> None:
    old = f"binary content (image/png), 1000 bytes, sha256 {'a' * 64}\n"
    new = f"binary content (image/png), 1200 bytes, sha256 {'b' * 64}\n"
    out = Renderer().render(AlertContext("change", WATCHER, AT, old=old, new=new))
    sentence = ("binary content (image/png) changed (size 1,000 → 1,200 bytes, "
                "sha256 aaaaaaaaaaaa… → bbbbbbbbbbbb…)")
    assert out.subject == f"[notifier] prices: {sentence}"
    assert f"prices: {sentence}." in out.text
    assert f"{sentence}." in out.html
