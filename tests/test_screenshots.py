"""Screenshots in alerts: inline images in multipart/related, general attachments, and a
browser watcher's change alert delivered through the test SMTP server and read back."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from notifier import config
from notifier.alerts import Alerter
from notifier.attachments import Attachment, fit, image_size
from notifier.kinds import configure_kinds
from notifier.message import message_bytes
from notifier.outbox import Sender
from notifier.pipeline import check
from notifier.store import Store
from notifier.watchers.browser import CHROMIUM
from tests.messages import html_text, parse, plain_text, sample_message
from tests.servers.http import LocalHTTPServer, png
from tests.servers.smtp import PASSWORD, USERNAME, SmtpServer, smtp_yaml
from tests.watchers.test_browser import chromium_pids

CID = re.compile(r'src="cid:([^"]+)"')


def _limits(data: bytes) -> None:
    data.decode("ascii")
    assert max(len(line) for line in data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")) <= 76


def _related_images(msg: EmailMessage) -> dict[str, EmailMessage]:
    """The mail's structure as the rules want it, and its inline parts by Content-ID."""
    assert msg.get_content_type() == "multipart/alternative"
    text, related = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, *images = related.iter_parts()
    assert html.get_content_type() == "text/html"
    found: dict[str, EmailMessage] = {}
    for image in images:
        assert isinstance(image, EmailMessage)
        assert image.get_content_disposition() == "inline"
        found[str(image["Content-ID"]).strip("<>")] = image
    return found


def test_inline_images_go_into_related_and_every_cid_resolves() -> None:
    image = Attachment("截图 screenshot.png", "image/png", png(40, 30), content_id="shot1@x.invalid",
                       alt="the page")
    msg = sample_message(html='<p>see</p><img src="cid:shot1@x.invalid" alt="the page">',
                         attachments=[image, ("快照.txt", "text/plain", "全文\n".encode())])
    data = message_bytes(msg)
    _limits(data)
    parsed = parse(data)
    assert parsed.get_content_type() == "multipart/mixed"
    alternative, snapshot = parsed.iter_parts()
    assert isinstance(alternative, EmailMessage)
    images = _related_images(alternative)
    assert set(CID.findall(html_text(parsed))) == set(images) == {"shot1@x.invalid"}
    part = images["shot1@x.invalid"]
    assert part.get_filename() == "截图 screenshot.png"
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert image_size(payload) == (40, 30)
    assert snapshot.get_filename() == "快照.txt"
    assert b"filename*=utf-8''%E5%BF%AB%E7%85%A7.txt" in data  # RFC 2231, not an encoded word


def test_long_chinese_file_names_stay_within_76_characters() -> None:
    name = "价格变化截图" * 12 + ".png"
    data = message_bytes(sample_message(attachments=[(name, "image/png", png())]))
    _limits(data)
    (_, part) = parse(data).iter_parts()
    assert part.get_filename() == name


def test_a_dangling_cid_is_refused() -> None:
    with pytest.raises(ValueError, match="cid:missing@x"):
        sample_message(html='<img src="cid:missing@x">')
    with pytest.raises(ValueError, match="need an HTML part"):
        sample_message(html=None, attachments=[Attachment("a.png", "image/png", png(), content_id="a@x")])


def test_fit_keeps_what_the_budget_allows_in_order() -> None:
    small, big = Attachment("a", "image/png", b"1" * 10), Attachment("b", "image/png", b"2" * 100)
    assert fit([big, small], 50) == ([small], [big])
    assert fit([small, big], 200) == ([small, big], [])


def test_image_size_reads_png_and_jpeg_headers() -> None:
    assert image_size(png(7, 5)) == (7, 5)
    jpeg = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffc0001108002a00370301220002110103"
                         "1101ffd9")
    assert image_size(jpeg) == (55, 42)
    assert image_size(b"GIF89a") is None


# --- end to end through real Chromium and the test SMTP server -----------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[None]:
    """The shared Chromium for this module, stopped after it (nothing left behind)."""
    yield
    CHROMIUM.stop()
    assert chromium_pids() == []


def _decoded_size(data: bytes, content_type: str) -> tuple[int, int]:
    """Let Chromium decode the image: its natural size, or (0, 0) when it is not an image."""

    async def job(context: Any) -> tuple[int, int]:
        page = await context.new_page()
        src = f"data:{content_type};base64,{base64.b64encode(data).decode()}"
        await page.set_content(f'<img id=i src="{src}">')
        await page.wait_for_function("document.getElementById('i').complete")
        size = await page.evaluate("[document.getElementById('i').naturalWidth,"
                                   " document.getElementById('i').naturalHeight]")
        return int(size[0]), int(size[1])

    return CHROMIUM.render(job, {}, 10.0)


def test_a_screenshot_alert_arrives_with_its_images(browser: None, tmp_path: Path,
                                                    http_server: LocalHTTPServer,
                                                    smtp_server: SmtpServer) -> None:
    path = tmp_path / "watchers.yaml"
    path.write_text(f"""\
{smtp_yaml(smtp_server)}mail:
  from: {USERNAME}
  to: [me@example.com]
watchers:
  - name: 演唱会门票
    kind: browser
    url: {http_server.url("/tickets")}
    wait_for: "#status"
    screenshot: page
    viewport: 800x600
    max_image_bytes: 400000
    filters: [{{css: "#status"}}, html2text]
""")
    cfg = config.load(path, {"PW": PASSWORD})
    configure_kinds([w.watcher for w in cfg.watchers], cfg.shared)  # as the daemon does
    page = ("<meta name=viewport content='width=device-width'><body style='margin:0'>"
            "<div style='height:600px;background:{}'></div><script>setTimeout(() => document.body"
            ".insertAdjacentHTML('beforeend', '<p id=status>' + '{}' + '</p>'), 100)</script>")
    store = Store(cfg.state_dir / "state.db")
    try:
        alerter = Alerter(cfg)
        http_server.set("/tickets", page.format("#036", "sold out"))
        assert check(cfg.watchers[0], store, alerter).status == "baseline"
        http_server.set("/tickets", page.format("#c60", "on sale"))
        assert check(cfg.watchers[0], store, alerter).status == "changed"
        assert Sender(cfg, store).deliver().sent == 1
    finally:
        store.close()
    (received,) = smtp_server.wait_for(1)
    _limits(received.content)
    msg = parse(received.content)
    images = _related_images(msg)
    html = html_text(msg)
    assert sorted(CID.findall(html)) == sorted(images)
    assert len(images) == 2  # now, and before (kept from the previous check)
    assert "Screenshot of" in html
    assert "Screenshots (2) are in the HTML version" in plain_text(msg)
    assert "+on sale" in plain_text(msg)
    total = 0
    for image in images.values():
        data = image.get_payload(decode=True)
        assert isinstance(data, bytes)
        total += len(data)
        assert image.get_content_type() == "image/jpeg"
        assert _decoded_size(data, "image/jpeg") == image_size(data)
        width, height = image_size(data) or (0, 0)
        assert width in (800, 600, 400, 280, 200)  # a scale of the 800 px viewport
        assert height * 800 == pytest.approx(width * 622, rel=0.05)  # the page: 600 px + the line
    assert total <= 400_000
