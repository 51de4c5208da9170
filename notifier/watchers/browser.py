"""The `browser` kind: watch a page as real Chromium renders it, JavaScript and all.

The text is the rendered DOM, serialized as HTML, so every filter applies as it does to a
fetched page. The browser is shared by every browser watcher of the process (see `_chromium`);
each check gets a fresh context, so nothing a site stores lasts to the next check. A
screenshot, when asked for, is scaled and compressed by Chromium itself until it fits its
share of `max_image_bytes`, and the last one is kept in the state so a change alert can show
before and after.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from notifier.attachments import Attachment
from notifier.errors import WatchError
from notifier.kinds import Fetched, Shared, Watcher
from notifier.options import REQUIRED, AnyValue, Bool, Choice, Duration, Int, ListOf, MapOf, Option, Str
from notifier.watchers._chromium import Chromium, find_browser, missing_browser

MiB = 1024 * 1024
MAX_SHOT_HEIGHT = 4000  # CSS pixels of a full-page screenshot; the rest of a long page is cut
QUALITY = 80  # JPEG quality of the first attempt; later ones trade quality and size for fit
ATTEMPTS = 4
MIN_SCALE = 0.1
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True}
RESOURCE_TYPES = frozenset({"document", "stylesheet", "image", "media", "font", "script", "texttrack",
                            "xhr", "fetch", "eventsource", "websocket", "manifest", "other"})
_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_DELAY = re.compile(r"^\d+(\.\d+)?(ms|s|m)$")
META_SHOT = "screenshot"  # the state's copy of the last screenshot (base64), for "before"

CHROMIUM = Chromium()


@dataclass(frozen=True)
class Action:
    """One step before the page is read: click, fill, press or wait."""

    verb: str  # click | fill | press | wait
    target: str = ""  # a selector (click, fill), a key (press), or nothing
    text: str = ""  # what fill types
    seconds: float = 0.0  # wait


class Browser(Watcher, kind="browser"):
    """Render a page in Chromium (JavaScript, cookie banners, lazy content) and watch its DOM.

    Needs the system's Chromium (Debian: apt-get install chromium) and the Python package
    playwright (`pip install 'notifier[browser]'`); nothing is downloaded. One browser serves
    every browser watcher, at most `browser_workers` pages at once, each check in a fresh
    context; `timeout` bounds the whole check (loading, waiting, actions, screenshot) and the
    page is closed when it passes. TLS errors fail the check unless `verify: false`.
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("url", Str(), REQUIRED, "The http:// or https:// page to open."),
        Option("headers", MapOf(Str()), None, "Extra request headers sent with every request of the page."),
        Option("cookies", MapOf(Str()), None, "Cookies set for the page's site before it is opened."),
        Option("user_agent", Str(), None, "User-Agent to present instead of Chromium's own."),
        Option("timeout", Duration(), 30.0, "Seconds the whole check may take; then the page is closed."),
        Option("proxy", Str(), None, "Proxy URL, like http://proxy:3128."),
        Option("verify", Bool(), True, "Check TLS certificates; false only on trusted networks."),
        Option("ca_file", Str(), None,
               "CA bundle (PEM) to trust besides the system's; the shared browser then trusts it."),
        Option("max_bytes", Int(minimum=1), 10 * MiB, "Largest rendered DOM accepted, in bytes."),
        Option("wait_for", Str(), None,
               "Before reading: a CSS selector to appear, networkidle, or a delay like 2s."),
        Option("viewport", Str(), "1280x800", "Window size WIDTHxHEIGHT, or phone."),
        Option("javascript", Bool(), True, "Run the page's scripts; false reads the HTML as sent."),
        Option("actions", ListOf(AnyValue(), single_ok=False), (),
               "Steps before reading: click: SEL, fill: {selector, text}, press: KEY, wait: 2s."),
        Option("block", ListOf(Str()), (),
               "Resource types (image, font, media, stylesheet, script...) or URL patterns not to load."),
        Option("screenshot", Choice("none", "page", "element"), "none",
               "Put a screenshot in change alerts: the page, or the `element` selector's part."),
        Option("element", Str(), None, "CSS selector of the part screenshot: element shows."),
        Option("max_image_bytes", Int(minimum=10_000), MiB,
               "Most bytes the screenshots of one alert may take; they are scaled down to fit."),
        Option("previous_screenshot", Bool(), True,
               "Keep the last screenshot, so a change alert shows before and after."),
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.url: str = options["url"]
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {self.url!r} must be a full http:// or https:// address")
        self.headers: dict[str, str] = dict(options.get("headers") or {})
        self.cookies: dict[str, str] = dict(options.get("cookies") or {})
        self.user_agent: str | None = options.get("user_agent")
        self.timeout: float = options.get("timeout") or 30.0
        self.proxy: str | None = options.get("proxy")
        self.verify: bool = options.get("verify") is not False
        self.ca_file: str | None = os.path.abspath(os.path.expanduser(options["ca_file"])) \
            if options.get("ca_file") else None
        if self.ca_file and not self.verify:
            raise ValueError("ca_file and verify: false contradict each other; keep one")
        self.max_bytes: int = options.get("max_bytes") or 10 * MiB
        self.wait_for: str | None = options.get("wait_for")
        self.viewport = _viewport(options.get("viewport") or "1280x800")
        self.javascript: bool = options.get("javascript") is not False
        self.actions = tuple(_action(raw) for raw in options.get("actions") or ())
        self.block_types, self.block_urls = _blocks(options.get("block") or ())
        self.screenshot: str = options.get("screenshot") or "none"
        self.element: str | None = options.get("element")
        if self.screenshot == "element" and not self.element:
            raise ValueError("screenshot: element needs `element:`, the CSS selector of the part to show "
                             "(usually the css filter's selector)")
        self.max_image_bytes: int = options.get("max_image_bytes") or MiB
        self.previous_screenshot: bool = options.get("previous_screenshot") is not False

    def source(self) -> str:
        return self.url

    def link(self) -> str:
        return self.url

    @classmethod
    def shut_down(cls) -> None:
        CHROMIUM.stop()

    @classmethod
    def configured(cls, watchers: Sequence[Watcher], shared: Shared) -> None:
        CHROMIUM.configure(shared.browser_workers, shared.browser_path)
        if not watchers:
            CHROMIUM.stop()

    @classmethod
    def warnings(cls, watchers: Sequence[Watcher], shared: Shared) -> list[str]:
        if watchers and find_browser(shared.browser_path) is None:
            return [missing_browser(shared.browser_path) + "; until then these checks fail."]
        return []

    def fetch(self, previous: Mapping[str, str]) -> Fetched:
        html, shot = CHROMIUM.render(self._visit, self._context_options(), self.timeout, self.ca_file)
        size = len(html.encode("utf-8", "surrogatepass"))
        if size > self.max_bytes:
            raise WatchError(f"{self.url} rendered {size:,} bytes of HTML, more than max_bytes "
                             f"({self.max_bytes:,}); raise max_bytes if that is expected.")
        meta: dict[str, str] = {}
        attachments: list[Attachment] = []
        if shot is not None:
            attachments.append(Attachment("screenshot.jpg", "image/jpeg", shot,
                                          alt=f"Screenshot of {self.url} now"))
            if self.previous_screenshot:
                meta[META_SHOT] = base64.b64encode(shot).decode("ascii")
                before = _decoded(previous.get(META_SHOT))
                if before is not None:
                    attachments.append(Attachment("screenshot-before.jpg", "image/jpeg", before,
                                                  alt=f"Screenshot of {self.url} at the previous check"))
        return Fetched(text=html, meta=meta, attachments=tuple(attachments))

    # -- in the browser's loop ----------------------------------------------------------------

    def _context_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"java_script_enabled": self.javascript,
                                   "ignore_https_errors": not self.verify,
                                   "service_workers": "block", **self.viewport}
        if self.headers:
            options["extra_http_headers"] = self.headers
        if self.user_agent:
            options["user_agent"] = self.user_agent
        if self.proxy:
            options["proxy"] = {"server": self.proxy}
        return options

    async def _visit(self, context: Any) -> tuple[str, bytes | None]:
        if self.cookies:
            await context.add_cookies([{"name": k, "value": v, "url": self.url}
                                       for k, v in self.cookies.items()])
        if self.block_types or self.block_urls:
            await context.route("**/*", self._route)
        page = await context.new_page()
        crashed = asyncio.Event()
        page.on("crash", lambda _: crashed.set())
        work = asyncio.ensure_future(self._read(page))
        crash = asyncio.ensure_future(crashed.wait())
        try:
            done, _ = await asyncio.wait({work, crash}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            crash.cancel()
            if not work.done():
                work.cancel()
        if work not in done:
            raise WatchError(f"{self.url} crashed the browser tab (out of memory, or a bug the "
                             f"page triggers); the next check opens a new one.")
        return work.result()

    async def _route(self, route: Any) -> None:
        request = route.request
        if request.resource_type in self.block_types or any(
                fnmatch.fnmatchcase(request.url, pattern) for pattern in self.block_urls):
            await route.abort("blockedbyclient")
        else:
            await route.fallback()

    async def _read(self, page: Any) -> tuple[str, bytes | None]:
        wait = self.wait_for
        response = await page.goto(self.url, wait_until="networkidle" if wait == "networkidle" else "load",
                                   timeout=0)
        if response is not None and response.status >= 400:
            raise WatchError(f"{self.url} returned HTTP {response.status}; check the url, headers "
                             f"and cookies.")
        if wait and wait != "networkidle":
            if _DELAY.match(wait):
                await page.wait_for_timeout(Duration().parse(wait) * 1000)
            else:
                await page.wait_for_selector(wait, state="attached", timeout=0)
        for action in self.actions:
            await _perform(page, action)
        html = await page.content()
        shot = None
        if self.screenshot != "none":
            share = self.max_image_bytes // (2 if self.previous_screenshot else 1)
            shot = await _screenshot(page, self.element if self.screenshot == "element" else None, share)
        return html, shot


async def _perform(page: Any, action: Action) -> None:
    if action.verb == "click":
        await page.click(action.target, timeout=0)
    elif action.verb == "fill":
        await page.fill(action.target, action.text, timeout=0)
    elif action.verb == "press":
        await page.keyboard.press(action.target)
    else:
        await page.wait_for_timeout(action.seconds * 1000)


async def _screenshot(page: Any, selector: str | None, cap: int) -> bytes | None:
    """A JPEG of the page (up to MAX_SHOT_HEIGHT) or of one element, at the best quality and
    scale that fits in `cap` bytes; None when even the smallest does not."""
    if selector:
        handle = await page.query_selector(selector)
        box = await handle.bounding_box() if handle is not None else None
        if box is None:
            raise WatchError(f"the element selector {selector!r} matched nothing visible, so there "
                             f"is no screenshot; check `element`.")
        clip = {"x": box["x"], "y": box["y"], "width": max(box["width"], 1), "height": max(box["height"], 1)}
    else:
        width, height = await page.evaluate(
            "[document.documentElement.clientWidth, Math.max(document.documentElement.scrollHeight,"
            " document.body ? document.body.scrollHeight : 0)]")
        clip = {"x": 0, "y": 0, "width": width, "height": min(max(height, 1), MAX_SHOT_HEIGHT)}
    session = await page.context.new_cdp_session(page)
    try:
        scale, quality = 1.0, QUALITY
        for _ in range(ATTEMPTS):
            result = await session.send("Page.captureScreenshot", {
                "format": "jpeg", "quality": quality, "captureBeyondViewport": True,
                "clip": {**clip, "scale": scale}})
            data = base64.b64decode(result["data"])
            if len(data) <= cap:
                return data
            # JPEG size goes roughly with the pixel count: aim below the cap at once.
            scale = max(MIN_SCALE, scale * (cap / len(data)) ** 0.5 * 0.9)
            quality = max(40, quality - 15)
    finally:
        await session.detach()
    return None


def _decoded(value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _viewport(value: str) -> dict[str, Any]:
    if value == "phone":
        return dict(PHONE)
    found = _SIZE.match(value.strip())
    if not found:
        raise ValueError(f"viewport {value!r} must be WIDTHxHEIGHT, like 1280x800, or phone")
    return {"viewport": {"width": int(found[1]), "height": int(found[2])}}


def _action(raw: object) -> Action:
    """One `actions:` entry, checked now so a typo is a config error with its line."""
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise ValueError("each action is one of `click: SELECTOR`, `fill: {selector: S, text: T}`, "
                         "`press: KEY` or `wait: 2s`")
    (verb, value), = raw.items()
    if verb in ("click", "press") and isinstance(value, str) and value:
        return Action(str(verb), value)
    if verb == "fill" and isinstance(value, Mapping) and set(value) == {"selector", "text"}:
        return Action("fill", str(value["selector"]), text=str(value["text"]))
    if verb == "wait":
        return Action("wait", seconds=Duration().parse(value))
    raise ValueError(f"action {verb}: {value!r} is not understood; use `click: SELECTOR`, "
                     f"`fill: {{selector: S, text: T}}`, `press: KEY` or `wait: 2s`")


def _blocks(entries: Sequence[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Split `block:` into resource types and URL patterns (anything with / * or .)."""
    types, patterns = set(), []
    for entry in entries:
        if entry in RESOURCE_TYPES:
            types.add(entry)
        elif any(c in entry for c in "/*."):
            patterns.append(entry if "*" in entry else f"*{entry}*")
        else:
            kinds = ", ".join(sorted(RESOURCE_TYPES))
            raise ValueError(f"block entry {entry!r} is neither a resource type ({kinds}) nor a "
                             f"URL pattern like *.doubleclick.net/*")
    return frozenset(types), tuple(patterns)
