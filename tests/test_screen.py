"""notifier.screen: each rule refuses what it should, by name, and lets ordinary mail through."""

from __future__ import annotations

import io
import re
import zipfile
from email.message import EmailMessage

import pytest

from notifier.config import Screen
from notifier.screen import check_content, check_envelope
from notifier.sections import BLOCKED_ATTACHMENTS

DEFAULT = Screen(blocked_attachments=BLOCKED_ATTACHMENTS)


def mail(text: str = "hello", subject: str = "report", attach: tuple[str, bytes] | None = None) -> bytes:
    message = EmailMessage()
    message["Subject"] = subject
    message.set_content(text)
    if attach:
        message.add_attachment(attach[1], maintype="application", subtype="octet-stream",
                               filename=attach[0])
    return message.as_bytes()


def rule(screen: Screen, data: bytes) -> str | None:
    refusal = check_content(screen, data)
    return refusal.rule if refusal else None


def test_ordinary_mail_passes_the_default_rules() -> None:
    assert rule(DEFAULT, mail("backup done: 4111 files, id 12345678901234567")) is None
    assert rule(DEFAULT, mail(attach=("report.pdf", b"%PDF-1.7 ..."))) is None
    assert check_envelope(DEFAULT, ["a@x.example"] * 100) is None


def test_recipient_rules() -> None:
    refusal = check_envelope(DEFAULT, [f"u{i}@x.example" for i in range(1000)])
    assert refusal is not None
    assert refusal.rule == "max_recipients"
    assert refusal.reply().startswith("550 5.7.1 Refused by screening rule max_recipients:")
    only = Screen(allowed_recipients=("corp.example", "boss@gmail.com"))
    assert check_envelope(only, ["a@corp.example", "BOSS@gmail.com"]) is None
    refused = check_envelope(only, ["a@corp.example", "x@gmail.com"])
    assert refused is not None
    assert refused.rule == "allowed_recipients"
    assert "x@gmail.com" in refused.reason


@pytest.mark.parametrize(("name", "content"), [
    ("setup.exe", b"anything"),
    ("setup.exe.", b"anything"),  # Windows drops the trailing dot and runs it
    ("setup.exe . ", b"anything"),
    ("invoice.JS", b"var a = 1;"),
    ("screen.scr", b"x"),
    ("report.docm", b"x"),
    ("harmless.txt", b"MZ\x90\x00 a Windows program under another name"),
    ("budget.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1 ... _VBA_PROJECT ..."),
])
def test_blocked_attachments_by_extension_and_by_content(name: str, content: bytes) -> None:
    assert rule(DEFAULT, mail(attach=(name, content))) == "blocked_attachments"


def test_archives_are_looked_into() -> None:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("docs/readme.txt", "hi")
        archive.writestr("docs/run.exe", "MZ")
    assert rule(DEFAULT, mail(attach=("docs.zip", packed.getvalue()))) == "blocked_attachments"
    macro = io.BytesIO()
    with zipfile.ZipFile(macro, "w") as archive:
        archive.writestr("word/vbaProject.bin", "x")
    assert rule(DEFAULT, mail(attach=("letter.docx", macro.getvalue()))) == "blocked_attachments"
    assert rule(Screen(), mail(attach=("setup.exe", b"MZ"))) is None  # nothing blocked: nothing refused


def test_patterns_and_presets() -> None:
    screen = Screen(subject_patterns=(re.compile("(?i)confidential"),),
                    body_patterns=(re.compile(r"password\s*[:=]"),),
                    presets=("credit_card", "cn_id_card", "private_key"))
    assert rule(screen, mail(subject="CONFIDENTIAL plans")) == "subject_patterns"
    assert rule(screen, mail("db password: hunter2")) == "body_patterns"
    assert rule(screen, mail("card 4111 1111 1111 1111 exp 12/29")) == "credit_card"
    assert rule(screen, mail("card 4111 1111 1111 1112")) is None  # fails the Luhn check
    assert rule(screen, mail("身份证 11010519491231002X")) == "cn_id_card"
    assert rule(screen, mail("order 110105194912310021")) is None  # wrong check digit
    assert rule(screen, mail("-----BEGIN OPENSSH PRIVATE KEY-----\nabc")) == "private_key"
    assert rule(DEFAULT, mail("card 4111 1111 1111 1111")) is None  # presets are off by default


def test_size_rule() -> None:
    refusal = check_content(Screen(max_size=100), mail("x" * 200))
    assert refusal is not None
    assert refusal.rule == "max_size"


def test_a_folded_content_type_or_an_encoded_text_part_is_still_looked_into() -> None:
    """The shortcut for plain mail reads the header alone: it must not be fooled by folding or
    by a program in a base64 text part."""
    folded = (b"Subject: r\r\nMIME-Version: 1.0\r\nContent-Type:\r\n multipart/mixed; boundary=x\r\n\r\n"
              b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
              b"--x\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Disposition: attachment; filename=a.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n"
              b"TVqQAAMAAAAEAAAA\r\n--x--\r\n")
    assert rule(DEFAULT, folded) == "blocked_attachments"
    encoded = (b"Subject: r\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               b"TVqQAAMAAAAEAAAA\r\n")  # "MZ...": a Windows program
    assert rule(DEFAULT, encoded) == "blocked_attachments"
    assert rule(DEFAULT, mail("just text")) is None
