"""notifier.alerts, end to end: a page changes → the mail that arrives is right and safe."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from notifier import config
from notifier.alerts import Alerter, quiet_until
from notifier.outbox import Sender
from notifier.pipeline import check
from notifier.store import Store
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


def deliver_change(tmp_path: Path, http: LocalHTTPServer,
                   smtp: SmtpServer) -> tuple[EmailMessage, tuple[str, ...]]:
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
    msg = email.message_from_bytes(received.content, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg, received.rcpt_tos


@pytest.fixture
def change_mail(tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SmtpServer):  # type: ignore[no-untyped-def]
    """The parsed change mail and its envelope recipients."""
    return deliver_change(tmp_path, http_server, smtp_server)


def test_structure_and_headers(change_mail) -> None:  # type: ignore[no-untyped-def]
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


def test_hostile_content_cannot_inject_headers(change_mail) -> None:  # type: ignore[no-untyped-def]
    msg, rcpts = change_mail
    assert msg["X-Evil"] is None
    assert "victim@example.com" not in rcpts
    assert "\n" not in msg["Subject"]
    assert "=?utf-8?b?SGk=?=" not in msg["Subject"]  # an encoded word would decode to "Hi"
    assert "Hi" not in msg["Subject"].split("X-Evil: 1")[-1]


def test_both_parts_carry_the_diff_and_html_is_escaped(change_mail) -> None:  # type: ignore[no-untyped-def]
    msg, _ = change_mail
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "-价格 100 元" in text
    assert "+价格 120 元" in text
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "价格 120 元" in html
    assert "<" not in text.replace("<script>alert(1)</script>", "")


def test_no_long_lines_and_no_8bit(change_mail) -> None:  # type: ignore[no-untyped-def]
    msg, _ = change_mail
    raw = msg.as_bytes(policy=email.policy.SMTP)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert b"8bit" not in raw.lower()


def test_quiet_hours_hold_until_window_ends() -> None:
    zone = ZoneInfo("Asia/Shanghai")
    night = datetime(2026, 11, 24, 23, 30, tzinfo=zone).timestamp()
    assert quiet_until("22:00-07:00", zone, night) == datetime(2026, 11, 25, 7, 0, tzinfo=zone).timestamp()
    early = datetime(2026, 11, 25, 6, 0, tzinfo=zone).timestamp()
    assert quiet_until("22:00-07:00", zone, early) == datetime(2026, 11, 25, 7, 0, tzinfo=zone).timestamp()
    day = datetime(2026, 11, 25, 12, 0, tzinfo=zone).timestamp()
    assert quiet_until("22:00-07:00", zone, day) == day
    assert quiet_until("12:00-13:00", UTC, datetime(2026, 1, 1, 12, 30, tzinfo=UTC).timestamp()) == \
        datetime(2026, 1, 1, 13, 0, tzinfo=UTC).timestamp()


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
    msg = email.message_from_bytes(received.content, policy=email.policy.default)
    assert msg["Subject"] == "[notifier] 3 changes: doc, other"
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.count("+two") == 2
    assert "+three" in text
    assert "== doc: 1 added, 1 removed ==" in text
