"""notifier.inbox on a corpus of real-shaped messages (tests/data/mail/): RFC 2047 headers in
GBK/GB2312 (B and Q), RFC 2231 and RFC 2047 file names, a wrong declared charset, Big5, nested
mixed → related → alternative, HTML-only mail, a Postfix DSN and QQ/163/Gmail bounces; and bad
input (50 MB, no boundary, header bombs) refused or read with a warning, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from notifier import inbox
from notifier.verify import _bounce_reason, _is_bounce

MAIL = Path(__file__).parent / "data" / "mail"


def _read(name: str) -> inbox.Reading:
    return inbox.read(inbox.parse((MAIL / name).read_bytes()))


def test_gbk_subject_in_base64_words_and_gbk_body() -> None:
    reading = _read("gbk_subject_b.eml")
    assert reading.headers["Subject"] == "价格变动通知\N{FULLWIDTH COLON}商品降价了"
    assert reading.headers["From"] == "价格监控 <monitor@163.com>"
    assert "价格已从 199 元降到 149 元" in reading.text
    assert reading.warnings == []


def test_gb2312_subject_in_quoted_printable_words() -> None:
    reading = _read("gb2312_subject_q.eml")
    assert reading.headers["Subject"] == "系统通知 测试"
    assert reading.headers["From"].startswith("腾讯QQ邮箱")
    assert "这是一封测试邮件" in reading.text


def test_wrong_declared_charset_falls_back_with_a_warning() -> None:
    reading = _read("wrong_charset.eml")
    assert "您的订单已发货" in reading.text
    assert any("declares charset utf-8" in w and "gb18030" in w for w in reading.warnings)


def test_big5_body_reads_right() -> None:
    assert "這是一封繁體中文的測試郵件" in _read("big5.eml").text


def test_attachment_names_rfc2231_and_rfc2047() -> None:
    names = [a.name for a in _read("rfc2231_filenames.eml").attachments]
    assert names == ["报价单 2026.xlsx", "合同.pdf", "../../etc/passwd"]


def test_saved_attachments_get_safe_names_and_never_overwrite(tmp_path: Path) -> None:
    reading = _read("rfc2231_filenames.eml")
    (tmp_path / "合同.pdf").write_bytes(b"mine")
    saved = inbox.save_attachments(reading, tmp_path)
    assert [p.name for p in saved] == ["报价单 2026.xlsx", "合同 (1).pdf", "passwd"]
    assert all(p.parent == tmp_path for p in saved)
    assert (tmp_path / "合同.pdf").read_bytes() == b"mine"
    assert (tmp_path / "合同 (1).pdf").read_bytes() == b"%PDF-1.4 fake"


@pytest.mark.parametrize(("name", "safe"), [("../../etc/passwd", "passwd"), ("..", "attachment"),
                                            ("C:\\win\\evil.exe", "evil.exe"), (".bashrc", "bashrc"),
                                            ("a\x00b\nc.txt", "a_b_c.txt")])
def test_safe_names(name: str, safe: str) -> None:
    assert inbox.safe_name(name) == safe


def test_nested_mixed_related_alternative_tree_and_text() -> None:
    reading = _read("nested_mixed_related_alternative.eml")
    assert [line.split(";")[0].split(" (")[0] for line in reading.tree] == [
        "multipart/mixed", "  multipart/related", "    multipart/alternative",
        "      text/plain", "      text/html", "    image/png", "  text/plain"]
    assert reading.headers["Subject"] == "[notifier] 价格 changed"
    assert reading.text.startswith("价格变动")
    assert [a.name for a in reading.attachments] == ["snapshot.txt"]


def test_html_only_mail_is_rendered_to_text() -> None:
    text = _read("html_only.eml").text
    assert "第一段" in text
    assert "* 项目" in text
    assert "<p>" not in text


def test_missing_boundary_is_read_with_a_warning() -> None:
    reading = _read("missing_boundary.eml")
    assert any("malformed MIME" in w for w in reading.warnings)


@pytest.mark.parametrize("name", ["postfix_dsn.eml", "qq_bounce.eml", "163_bounce.eml", "gmail_bounce.eml"])
def test_bounce_shapes_are_recognised_with_a_reason(name: str) -> None:
    data = (MAIL / name).read_bytes()
    assert _is_bounce(data)
    reason = _bounce_reason(inbox.parse(data))
    assert any(word in reason for word in ("User unknown", "does not exist", "退信"))


def test_an_auto_reply_is_not_a_bounce() -> None:
    assert not _is_bounce((MAIL / "vacation_auto_reply.eml").read_bytes())


def test_a_50_mb_message_is_refused_by_size_at_once() -> None:
    data = b"Subject: big\r\n\r\n" + b"x" * (50 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(inbox.BadMessage, match=r"50\.0 MB"):
        inbox.parse(data)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("data", [
    b"".join(b"X-H%d: v\r\n" % i for i in range(100_000)) + b"\r\nbody",
    b"Subject: " + b"a" * (1024 * 1024) + b"\r\n\r\nbody",
], ids=["many-lines", "one-huge-header"])
def test_header_bombs_are_refused_with_a_sentence(data: bytes) -> None:
    with pytest.raises(inbox.BadMessage, match="header"):
        inbox.parse(data)


def test_intact_compares_structure_subject_and_parts() -> None:
    sent = inbox.parse((MAIL / "nested_mixed_related_alternative.eml").read_bytes())
    assert inbox.intact(sent, sent) == []
    stripped = inbox.parse((MAIL / "gbk_subject_b.eml").read_bytes())
    problems = inbox.intact(sent, stripped)
    assert any("MIME structure" in p for p in problems)
    assert any("subject" in p for p in problems)
    assert any("text/html part is missing" in p for p in problems)


def test_verdicts_from_authentication_results() -> None:
    msg = inbox.parse(b"Authentication-Results: mx.qq.com; spf=pass smtp.mailfrom=a@b.c; dkim=fail "
                      b"header.d=b.c; dmarc=none\r\nReceived-SPF: softfail\r\nSubject: x\r\n\r\nbody")
    assert inbox.verdicts(msg) == {"spf": "pass", "dkim": "fail", "dmarc": "none"}
