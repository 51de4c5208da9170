"""notifier.bounces: the corpus's Postfix DSN and QQ/163/Gmail notices are bounces tied to the
original Message-ID; an auto-reply is not; and the scanner touches only new messages of a real
Dovecot mailbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier.bounces import BounceScanner, recognise
from notifier.receive import ImapClient
from tests.servers.dovecot import SENDER, Dovecot

MAIL = Path(__file__).parent / "data" / "mail"
ORIGINAL = "<170000.1.abc@example.com>"


@pytest.mark.parametrize(("name", "shape", "status", "why"), [
    ("postfix_dsn.eml", "rfc3464", "5.1.1", "User unknown"),
    ("gmail_bounce.eml", "rfc3464", "5.1.1", "does not exist"),
    ("qq_bounce.eml", "qq", None, "不存在"),
    ("163_bounce.eml", "attached", None, "Mailbox not found"),
])
def test_bounce_shapes_name_the_original_message(name: str, shape: str, status: str | None, why: str) -> None:
    bounce = recognise((MAIL / name).read_bytes())
    assert bounce is not None
    assert bounce.shape == shape
    assert ORIGINAL in bounce.message_ids
    assert why in bounce.reason
    if status:
        assert bounce.status == status
        assert bounce.recipients == ("nobody@example.com",)


@pytest.mark.parametrize("name", ["vacation_auto_reply.eml", "gbk_subject_b.eml", "html_only.eml"])
def test_auto_replies_and_ordinary_mail_are_not_bounces(name: str) -> None:
    assert recognise((MAIL / name).read_bytes()) is None


def test_a_delay_warning_is_not_a_bounce() -> None:
    data = (MAIL / "postfix_dsn.eml").read_bytes().replace(b"Action: failed", b"Action: delayed")
    assert recognise(data) is None


def test_scanner_fetches_only_new_candidates(dovecot: Dovecot) -> None:
    for n in range(30):
        dovecot.deliver(SENDER, f"From: a@example.com\r\nSubject: ordinary {n}\r\n\r\nhello\r\n".encode())
    dovecot.deliver(SENDER, (MAIL / "postfix_dsn.eml").read_bytes())
    dovecot.deliver(SENDER, (MAIL / "vacation_auto_reply.eml").read_bytes())
    scanner = BounceScanner()
    with ImapClient(dovecot.account(user=SENDER)) as client:
        first = scanner.scan(client)
        assert [b.shape for b in first] == ["rfc3464"]
        assert scanner.fetched == 1  # only the candidate the server picked, never ordinary mail
        assert scanner.scan(client) == []
        assert scanner.fetched == 0
        dovecot.deliver(SENDER, (MAIL / "qq_bounce.eml").read_bytes())
        again = scanner.scan(client)
    assert [b.shape for b in again] == ["qq"]
    assert scanner.fetched == 1
