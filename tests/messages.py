"""Sample alert messages for the message and transport tests: built, parsed back, sent."""

from __future__ import annotations

import email
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.policy import default
from typing import Any

from notifier.message import build_message, message_bytes
from notifier.transport import SmtpTransport
from tests.servers.smtp import USERNAME, SilentServer, SmtpServer, make_account

MODES = ["smtp_server", "starttls_server", "plain_server"]
SENDER = f"张三 <{USERNAME}>"
MESSAGE_ID = "<alert-1@example.com>"
WHEN = datetime(2024, 5, 1, 8, 30, tzinfo=timezone(timedelta(hours=8)))
TO = ["li@example.com", "cc@example.com", "hidden@example.com"]  # the last one is Bcc


def sample_message(**overrides: object) -> EmailMessage:
    values: dict[str, Any] = {
        "subject": "价格变化 price changed", "text": "第一行\nsecond line\n",
        "html": "<p>价格 <b>128</b></p>", "sender": SENDER, "to": ["李四 <li@example.com>"],
        "cc": ["cc@example.com"], "message_id": MESSAGE_ID, "date": WHEN,
    }
    values.update(overrides)
    return build_message(**values)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=default)
    assert isinstance(msg, EmailMessage)
    return msg


def plain_text(msg: EmailMessage) -> str:
    """The text part as text; base64 text keeps its canonical CRLF line ends."""
    return _part(msg, "plain")


def html_text(msg: EmailMessage) -> str:
    """The HTML part as text, with LF line ends like `plain_text`."""
    return _part(msg, "html")


def _part(msg: EmailMessage, subtype: str) -> str:
    body = msg.get_body((subtype,))
    assert body is not None, f"no text/{subtype} part"
    return str(body.get_content()).replace("\r\n", "\n")


def send(server: SmtpServer | SilentServer, data: bytes | None = None,
          recipients: list[str] = TO, **account: object) -> dict[str, str]:
    with SmtpTransport(make_account(server, **account)) as transport:
        return transport.send(USERNAME, recipients, data or message_bytes(sample_message()))
