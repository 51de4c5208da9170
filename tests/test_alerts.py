"""notifier.alerts, end to end: a page changes → the mail that arrives is right and safe."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import time
from collections.abc import Mapping
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from notifier import config
from notifier.alerts import Alerter
from notifier.cli import main
from notifier.config import Config
from notifier.errors import WatchError
from notifier.kinds import Fetched, Watcher
from notifier.outbox import Sender
from notifier.pipeline import check
from notifier.render import fmt_time
from notifier.store import Store
from tests.messages import html_text, parse, plain_text
from tests.servers.http import LocalHTTPServer
from tests.servers.smtp import PASSWORD, USERNAME, SmtpServer, smtp_yaml

HOSTILE = "Price\r\nBcc: victim@example.com\r\nX-Evil: 1 =?utf-8?b?SGk=?="


def write_config(tmp_path: Path, http: LocalHTTPServer, smtp: SmtpServer) -> Path:
    path = tmp_path / "watchers.yaml"
    path.write_text(f"""\
{smtp_yaml(smtp)}mail:
  from: "通知机器人 <{USERNAME}>"
  to: ["张三 <zhang@example.com>"]
  bcc: [hidden@example.com]
watchers:
  - name: "shop: {HOSTILE.replace(chr(13), "").replace(chr(10), " ")}"
    kind: url
    url: {http.url("/shop")}
    filters: [html2text]
""")
    return path


ChangeMail = tuple[EmailMessage, tuple[str, ...]]
"""The parsed mail and its envelope recipients."""


def deliver_change(tmp_path: Path, http: LocalHTTPServer, smtp: SmtpServer) -> ChangeMail:
    cfg = config.load(write_config(tmp_path, http, smtp), {"PW": PASSWORD})
    store = Store(cfg.state_dir / "state.db")
    try:
        alerter = Alerter(cfg)
        http.set("/shop", "<html><head><title>t</title></head><body><p>价格 100 元</p></body></html>")
        assert check(cfg.watchers[0], store, alerter).status == "baseline"
        http.set("/shop", f"<html><body><p>价格 120 元</p><pre>{HOSTILE}</pre>"
                          "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p></body></html>")
        assert check(cfg.watchers[0], store, alerter).status == "changed"
        assert Sender(cfg, store).deliver().sent == 1
    finally:
        store.close()
    (received,) = smtp.wait_for(1)
    return parse(received.content), received.rcpt_tos


@pytest.fixture
def change_mail(tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer) -> ChangeMail:
    """The parsed change mail and its envelope recipients."""
    return deliver_change(tmp_path, http_server, smtp_server)


def test_structure_and_headers(change_mail: ChangeMail) -> None:
    msg, rcpts = change_mail
    assert msg.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Message-ID"].startswith("<")
    assert str(msg["From"]) == f"通知机器人 <{USERNAME}>"
    assert str(msg["To"]) == "张三 <zhang@example.com>"
    assert "hidden@example.com" in rcpts
    assert "hidden@example.com" not in str(msg)
    assert msg["Bcc"] is None


def test_hostile_content_cannot_inject_headers(change_mail: ChangeMail) -> None:
    msg, rcpts = change_mail
    assert msg["X-Evil"] is None
    assert "victim@example.com" not in rcpts
    assert "\n" not in msg["Subject"]
    assert "=?utf-8?b?SGk=?=" not in msg["Subject"]  # an encoded word would decode to "Hi"
    assert "Hi" not in msg["Subject"].split("X-Evil: 1")[-1]


def test_both_parts_carry_the_diff_and_html_is_escaped(change_mail: ChangeMail) -> None:
    msg, _ = change_mail
    text, html = parts(msg)
    assert "-价格 100 元" in text
    assert "+价格 120 元" in text
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "价格 120 元" in unmarked(html)
    assert "<" not in text.replace("<script>alert(1)</script>", "")


def test_html_part_marks_the_changed_words(change_mail: ChangeMail) -> None:
    """"价格 100 元" → "价格 120 元": the mail's HTML marks the number, the text part does not."""
    msg, _ = change_mail
    text, html = parts(msg)
    assert re.search(r'>-价格 <del style="[^"]*">100</del> 元</div>', html)
    assert re.search(r'>\+价格 <ins style="[^"]*">120</ins> 元</div>', html)
    assert "-价格 100 元\n+价格 120 元\n" in text
    assert "<ins" not in text


def test_no_long_lines_and_no_8bit(change_mail: ChangeMail) -> None:
    msg, _ = change_mail
    raw = msg.as_bytes(policy=email.policy.SMTP)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert b"8bit" not in raw.lower()


def test_digest_batches_changes_into_one_mail(tmp_path: Path, smtp_server: SmtpServer) -> None:
    doc = tmp_path / "doc.txt"
    path = tmp_path / "watchers.yaml"
    path.write_text(f"""\
{smtp_yaml(smtp_server)}mail: {{to: [me@example.com]}}
defaults: {{digest: 1h}}
watchers:
  - {{name: doc, kind: file, path: {doc}}}
  - {{name: other, kind: file, path: {doc}}}
""")
    cfg = config.load(path, {"PW": PASSWORD})
    store = Store(cfg.state_dir / "state.db")
    alerter = Alerter(cfg)
    try:
        times = iter([1000.0, 1000.0, 2000.0, 2000.0, 3000.0])
        doc.write_text("one\n")
        for wc in cfg.watchers:
            check(wc, store, alerter, clock=lambda: next(times))
        doc.write_text("two\n")
        for wc in cfg.watchers:
            check(wc, store, alerter, clock=lambda: next(times))
        doc.write_text("three\n")
        check(cfg.watchers[0], store, alerter, clock=lambda: next(times))
        assert store.outbox() == []
        assert store.due_digests(2000.0 + 3599) == {}
        (bucket, entries), = store.due_digests(2000.0 + 3600).items()
        assert len(entries) == 3
        store.flush_digest([i for i, _ in entries], alerter.digest(bucket, [p for _, p in entries], 5600.0))
        assert store.due_digests(1e12) == {}
        assert Sender(cfg, store).deliver().sent == 1
    finally:
        store.close()
    (received,) = smtp_server.wait_for(1)
    msg = parse(received.content)
    assert msg["Subject"] == "[notifier] 3 changes: doc, other"
    text = plain_text(msg)
    assert text.count("+two") == 2
    assert "+three" in text
    assert "== doc: 1 added, 1 removed ==" in text


# --- what a delivered mail must never carry, and what it must say -------------------------------

NASTY = "\x1b[31mred\x1b[0m\x00\x07\x85"
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 but tab/newline, DEL, C1
SHANGHAI = ZoneInfo("Asia/Shanghai")


def load(tmp_path: Path, smtp: SmtpServer, watchers: str, head: str = "") -> Config:
    path = tmp_path / "watchers.yaml"
    path.write_text(f"{smtp_yaml(smtp)}mail: {{to: [me@example.com]}}\ntimezone: Asia/Shanghai\n"
                    f"{head}watchers:\n{watchers}")
    return config.load(path, {"PW": PASSWORD})


def delivered(cfg: Config, store: Store, smtp: SmtpServer) -> list[EmailMessage]:
    """Send what is queued and return every message the server has received so far."""
    Sender(cfg, store).deliver()
    return [parse(received.content) for received in smtp.received]


def parts(msg: EmailMessage) -> tuple[str, str]:
    """The text and HTML parts; base64 parts keep MIME's canonical CRLF, so read it as LF."""
    return plain_text(msg), html_text(msg)


def unmarked(html: str) -> str:
    """The HTML without the <ins>/<del> marks of changed words, to find a line's whole text."""
    return re.sub(r"</?(?:ins|del)\b[^>]*>", "", html)


def assert_clean(msg: EmailMessage) -> None:
    for part in (msg["Subject"], *parts(msg)):
        assert not FORBIDDEN.search(part), repr(FORBIDDEN.findall(part))
        assert "[31m" not in part


class Failing(Watcher):
    """A watcher whose fetch fails with `message` (like a command whose output is quoted)."""

    def __init__(self, message: str) -> None:
        super().__init__({})
        self.message = message

    def fetch(self, previous: Mapping[str, str]) -> Fetched:
        raise WatchError(self.message)

    def source(self) -> str:
        return f"fake {NASTY}"

    def link(self) -> None:
        return None


def test_command_output_controls_reach_no_part_of_any_alert(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """Change, error and recovery mails of a command watcher whose output (and error) carry
    ANSI colours, NUL, BEL and a C1 control: no filters, so nothing else cleans them."""
    output = tmp_path / "output.txt"
    output.write_text("status: ok\n")
    cfg = load(tmp_path, smtp_server, f"  - {{name: cmd, kind: command, command: [cat, {output}], "
                                      f"error_after: 1}}\n")
    store = Store(cfg.state_dir / "state.db")
    alerter = Alerter(cfg)
    try:
        (wc,) = cfg.watchers
        assert check(wc, store, alerter).status == "baseline"
        output.write_text(f"status: {NASTY}\n", encoding="utf-8")
        assert check(wc, store, alerter).status == "changed"
        broken = dataclasses.replace(wc, watcher=Failing(f"exit status 1: {NASTY}"))
        assert check(broken, store, alerter).status == "failed"
        assert check(wc, store, alerter).status == "unchanged"  # recovery, quoting the error
        mails = delivered(cfg, store, smtp_server)
    finally:
        store.close()
    assert sorted(m["Subject"].split()[2] for m in mails) == ["changed:", "is", "is"]
    for msg in mails:
        assert_clean(msg)
    text, html = parts(mails[0])
    assert "+status: red\ufffd\ufffd" in text  # the colour codes go, the text stays
    assert "+status: red\ufffd\ufffd" in unmarked(html)
    for msg in mails[1:]:
        assert "exit status 1: red\ufffd\ufffd" in parts(msg)[0]


def test_failing_since_is_the_first_failure_in_error_reminder_and_recovery(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("price 1\n")
    cfg = load(tmp_path, smtp_server, f"  - {{name: doc, kind: file, path: {doc}, filters: [grep: price], "
                                      f"error_after: 3, remind_every: 1h}}\n")
    store = Store(cfg.state_dir / "state.db")
    alerter = Alerter(cfg)
    t0 = time.time() - 6 * 3600
    t1, t2, t3, t4, t5 = (t0 + minutes * 60 for minutes in (10, 20, 30, 100, 110))
    try:
        (wc,) = cfg.watchers
        check(wc, store, alerter, clock=lambda: t0)
        doc.write_text("nothing to see\n")
        times = iter([t1, t2, t3, t4])  # the error alert at t3, a reminder at t4
        for _ in range(4):
            assert check(wc, store, alerter, clock=lambda: next(times)).status == "failed"
        doc.write_text("price 1\n")
        check(wc, store, alerter, clock=lambda: t5)
        mails = delivered(cfg, store, smtp_server)
    finally:
        store.close()
    assert [m["Subject"].split(" is ")[1].split()[0] for m in mails] == ["failing", "failing", "back"]
    since = fmt_time(datetime.fromtimestamp(t1, SHANGHAI))
    for msg in mails:
        text, html = parts(msg)
        assert f"Failing since: {since}" in text
        assert since in html
    assert "3 failed checks in a row" in parts(mails[0])[0]
    assert "4 failed checks in a row" in parts(mails[1])[0]


def test_user_template_that_raises_still_alerts_and_shows_as_an_error(
        tmp_path: Path, smtp_server: SmtpServer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """{{ 1/0 }} in a user template: the change still arrives (shipped templates, with a note),
    an error alert names the file and the error, and `notifier status` shows the watcher failing."""
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "change.txt").write_text("Changed!\n{{ 1/0 }}\n")
    doc = tmp_path / "doc.txt"
    doc.write_text("one\n")
    cfg = load(tmp_path, smtp_server, f"  - {{name: doc, kind: file, path: {doc}}}\n",
               head="templates: tpl\n")
    store = Store(cfg.state_dir / "state.db")
    alerter = Alerter(cfg)
    try:
        (wc,) = cfg.watchers
        check(wc, store, alerter)
        doc.write_text("two\n")
        outcome = check(wc, store, alerter)
        mails = delivered(cfg, store, smtp_server)
    finally:
        store.close()
    where = f"{templates / 'change.txt'}:2"
    assert outcome.status == "failed"
    assert where in (outcome.error or "")
    change, error = mails
    assert change["Subject"] == "[notifier] doc changed: 1 added, 1 removed"
    text, html = parts(change)
    assert "+two" in text
    assert "+two" in html
    assert f"Note: the template {where} failed: ZeroDivisionError: division by zero" in text
    assert "rendered with the shipped templates" in html
    assert error["Subject"].startswith("[notifier] doc is failing (1 in a row): the template")
    text, html = parts(error)
    assert where in text
    assert "ZeroDivisionError: division by zero" in text
    assert where in html

    monkeypatch.setenv("PW", PASSWORD)
    assert main(["-c", str(cfg.path), "status"]) == 0
    status = capsys.readouterr().out
    assert "failing 1 time(s) in a row" in status
    assert where in status
