"""One Chromium for the whole process, driven by Playwright from a thread of its own.

Playwright's objects belong to the event loop that made them, while checks run on the
scheduler's threads; so one daemon thread runs an asyncio loop that owns Playwright and the
browser, and `Chromium.render` hands it a job and waits. The browser is the system's
(`executable_path`, never a download), started on the first render, with a fresh context per
job (no cookie or storage crosses watchers), at most `workers` pages at once, and a deadline
per job that closes its context. A browser that crashed is started again by the next job; one
that does not answer within the grace period is killed (Playwright kills its process group)
and started again too. `stop()` ends the browser, the Playwright driver and the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from notifier.errors import WatchError

log = logging.getLogger(__name__)

T = TypeVar("T")

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEBIAN_PACKAGE = "chromium"
# What a browser on a server needs: no updater, sync, first-run UI or background traffic of its
# own (it talks to the watched sites only), no GPU, and HTTP over TCP only (QUIC would bypass
# proxies and the test server alike). Playwright adds --headless and a temporary profile
# (--user-data-dir, removed at close); --no-sandbox comes only with `chromium_sandbox=False`.
FLAGS = ("--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-gpu", "--disable-quic")
LAUNCH_TIMEOUT = 30.0  # seconds Chromium may take to start
CERTUTIL_PACKAGE = "libnss3-tools"  # Debian's package with certutil, for ca_file
CLOSE_GRACE = 5.0  # seconds a context (or the browser) gets to close before it is killed

Job = Callable[[Any], Awaitable[T]]  # gets a fresh BrowserContext


def jit_allowed() -> bool:
    """False under systemd's MemoryDenyWriteExecute=yes: its seccomp filter, which Chromium
    inherits, refuses writable+executable memory, so V8 must run without its JIT (--jitless)."""
    try:
        with mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC):
            return True
    except OSError:
        return False


def find_browser(path: str | None = None) -> str | None:
    """The browser to run: `path` if it is an executable, else the first of CANDIDATES on PATH."""
    if path:
        found = shutil.which(os.path.expanduser(path))
        return found
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def missing_browser(path: str | None = None) -> str:
    """What to do when no browser is found, as one sentence."""
    where = f"browser_path {path!r} is not an executable" if path else \
        f"no Chromium was found on PATH (looked for {', '.join(CANDIDATES)})"
    return (f"kind: browser needs Chromium, and {where}; install the Debian package "
            f"{DEBIAN_PACKAGE!r} (apt-get install {DEBIAN_PACKAGE}) or set browser_path")


class Chromium:
    """The shared browser. Thread-safe: `render` may be called from any number of threads."""

    def __init__(self) -> None:
        self.workers = 2
        self.path: str | None = None
        self._lock = threading.Lock()  # guards the fields below
        self._slots = threading.BoundedSemaphore(self.workers)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._playwright: Any = None
        self._browser: Any = None
        self._launch: asyncio.Lock | None = None
        self._cas: tuple[str, ...] = ()  # ca_file paths the running browser trusts
        self._home: str | None = None  # its HOME, holding the NSS database with those CAs
        self._pid: int | None = None  # the browser process, leader of its process group
        self.launches = 0  # how many times Chromium was started: restarts show here

    def configure(self, workers: int, path: str | None) -> None:
        """New limits from a configuration; a different browser path restarts the browser."""
        with self._lock:
            if workers != self.workers:
                self.workers = workers
                self._slots = threading.BoundedSemaphore(workers)  # running jobs keep theirs
            restart = path != self.path and self._browser is not None
            self.path = path
        if restart:
            self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def render(self, job: Job[T], context_options: Mapping[str, Any], deadline: float,
               ca_file: str | None = None) -> T:
        """Run `job` in a fresh context of the shared browser within `deadline` seconds (waiting
        for a free page is not counted). Raises WatchError for every failure.

        `ca_file` (a PEM bundle) is trusted besides the system's CAs. Trust is the browser's,
        not a context's: the browser restarts to add a new one, and then trusts it for every
        page it opens."""
        executable = find_browser(self.path)
        if executable is None:
            raise WatchError(missing_browser(self.path) + ".")
        slots = self._slots
        with slots:
            loop = self._started()
            future: Future[T] = asyncio.run_coroutine_threadsafe(
                self._run(job, executable, context_options, deadline, ca_file), loop)
            try:
                return future.result(LAUNCH_TIMEOUT + deadline + 2 * CLOSE_GRACE)
            except FutureTimeout:
                future.cancel()
                log.warning("chromium does not answer; restarting it")
                asyncio.run_coroutine_threadsafe(self._kill(), loop)
                raise WatchError(f"the browser did not answer within {deadline:g} seconds and was "
                                 f"restarted; the next check uses a new one.") from None

    def stop(self) -> None:
        """Close the browser and Playwright's driver, and end the thread; a later render starts
        them again. Safe to call at any time, from any thread but the loop's own."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        closing = asyncio.run_coroutine_threadsafe(self._close(), loop)
        with contextlib.suppress(Exception):
            closing.result(LAUNCH_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_GRACE)

    # -- the loop's side --------------------------------------------------------------------

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.close()

                self._thread = threading.Thread(target=run, name="chromium", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    async def _run(self, job: Job[T], executable: str, options: Mapping[str, Any],
                   deadline: float, ca_file: str | None) -> T:
        from playwright.async_api import Error as PlaywrightError  # noqa: PLC0415 - optional

        try:
            context = await self._context(executable, ca_file, options)
        except (PlaywrightError, TimeoutError):  # dead or hung before that was seen: start it again
            await self._kill()
            try:
                context = await self._context(executable, ca_file, options)
            except (PlaywrightError, TimeoutError) as exc:
                await self._kill()
                raise WatchError(f"the browser could not open a page ({_first_line(exc)}); it "
                                 f"is started again for the next check.") from None
        try:
            return await asyncio.wait_for(job(context), deadline)
        except TimeoutError:
            raise WatchError(f"the page did not finish within {deadline:g} seconds (loading, "
                             f"waiting and actions together), so it was closed; the site is slow "
                             f"or the page never settles: raise timeout, or wait_for something "
                             f"else.") from None
        except PlaywrightError as exc:
            raise _explain(exc) from None
        finally:
            try:
                await asyncio.wait_for(context.close(), CLOSE_GRACE)
            except (TimeoutError, PlaywrightError):
                log.warning("a page of chromium did not close; restarting the browser")
                await self._kill()

    async def _context(self, executable: str, ca_file: str | None, options: Mapping[str, Any]) -> Any:
        """A fresh context; a browser that cannot make one within CLOSE_GRACE is hung."""
        browser = await self._connected(executable, ca_file)
        return await asyncio.wait_for(browser.new_context(**options), CLOSE_GRACE)

    async def _connected(self, executable: str, ca_file: str | None) -> Any:
        if self._launch is None:
            self._launch = asyncio.Lock()
        async with self._launch:
            if ca_file and ca_file not in self._cas:
                self._cas += (ca_file,)
                if self._browser is not None:
                    log.info("chromium restarts to trust %s", ca_file)
                    await self._kill()
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._browser is not None:
                log.warning("chromium went away (crashed or killed); starting it again")
                await self._kill()
            try:
                from playwright.async_api import async_playwright  # noqa: PLC0415 - optional
            except ImportError:
                raise WatchError("kind: browser needs the Python package playwright; install "
                                 "notifier with its browser extra: pip install 'notifier[browser]'.") \
                    from None
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            args = list(FLAGS)
            if not jit_allowed():
                log.info("writable+executable memory is denied (MemoryDenyWriteExecute); "
                         "chromium runs JavaScript without its JIT (--jitless), more slowly")
                args.append("--js-flags=--jitless")
            env = {**os.environ, "HOME": self._trust_store()} if self._cas else None
            try:
                self._browser = await self._playwright.chromium.launch(
                    executable_path=executable, args=args, headless=True, env=env,
                    chromium_sandbox=os.geteuid() != 0, timeout=LAUNCH_TIMEOUT * 1000,
                    handle_sigint=False, handle_sigterm=False, handle_sighup=False)
            except Exception as exc:
                raise WatchError(f"Chromium ({executable}) did not start: {_first_line(exc)}.") from None
            self.launches += 1
            self._pid = _launched_pid()
            return self._browser

    def _trust_store(self) -> str:
        """A new HOME whose NSS database (where Chromium on Linux looks for locally trusted
        CAs) holds every certificate of the ca_files; a bad file fails the check with why."""
        home = tempfile.mkdtemp(prefix="notifier-chromium-")
        self._home = home
        database = f"sql:{os.path.join(home, '.pki', 'nssdb')}"
        os.makedirs(os.path.join(home, ".pki", "nssdb"), mode=0o700)
        if shutil.which("certutil") is None:
            raise WatchError(f"ca_file needs certutil to give Chromium the CA; install the Debian "
                             f"package {CERTUTIL_PACKAGE!r} (apt-get install {CERTUTIL_PACKAGE}).")
        _certutil("-N", "-d", database, "--empty-password")
        for n, path in enumerate(self._cas):
            try:
                with open(os.path.expanduser(path), encoding="ascii") as pem_file:
                    text = pem_file.read()
            except (OSError, UnicodeError) as exc:
                raise WatchError(f"ca_file {path} cannot be read ({exc}); check the path.") from None
            blocks = [b.split("-----END CERTIFICATE-----")[0] for b in
                      text.split("-----BEGIN CERTIFICATE-----")[1:]]
            if not blocks:
                raise WatchError(f"ca_file {path} holds no PEM certificate.")
            for m, block in enumerate(blocks):
                pem = os.path.join(home, f"ca-{n}-{m}.pem")
                with open(pem, "w", encoding="ascii") as out:
                    out.write(f"-----BEGIN CERTIFICATE-----{block}-----END CERTIFICATE-----\n")
                _certutil("-A", "-d", database, "-t", "C,,", "-n", f"notifier-{n}-{m}", "-i", pem)
        return home

    async def _kill(self) -> None:
        """Close the browser, or kill it when it does not close in time: its whole process
        group (Playwright starts it as a group leader), so no renderer or zygote outlives it."""
        browser, self._browser = self._browser, None
        pid, self._pid = self._pid, None
        if browser is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.close(), CLOSE_GRACE)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        home, self._home = self._home, None
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)

    async def _close(self) -> None:
        await self._kill()
        playwright, self._playwright = self._playwright, None
        if playwright is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(playwright.stop(), CLOSE_GRACE)


def _certutil(*args: str) -> None:
    # certutil is found on PATH as the browser is: it is the system's, like Chromium.
    result = subprocess.run(["certutil", *args], capture_output=True, text=True,  # noqa: S607
                            timeout=30, check=False)
    if result.returncode:
        said = result.stderr.strip() or result.stdout.strip()
        raise WatchError(f"certutil could not load the ca_file ({said}); check that it is a PEM "
                         f"certificate bundle.")


def _launched_pid() -> int | None:
    """The newest Chromium browser process started by Playwright's driver (our child): the
    group leader `_kill` ends when the browser does not close. Renderers and zygotes are its
    descendants, not children of the driver."""
    parent: dict[int, int] = {}
    started: dict[int, int] = {}
    browsers: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue
        pid, fields = int(entry.name), stat[stat.rindex(")") + 2:].split()
        parent[pid], started[pid] = int(fields[1]), int(fields[19])
        if "chrom" in stat[stat.index("(") + 1:stat.rindex(")")]:
            browsers.append(pid)
    mine = [pid for pid in browsers if parent.get(parent[pid]) == os.getpid()]
    return max(mine, key=lambda pid: started[pid]) if mine else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _explain(exc: BaseException) -> WatchError:
    """A Playwright error as a sentence that says what happened and what to do."""
    text = _first_line(exc)
    if "crash" in text.lower():
        return WatchError(f"the page crashed the browser tab ({text}); the next check opens a new one.")
    if "ERR_CERT" in text or "SSL" in text:
        return WatchError(f"the page failed the TLS certificate check ({text}); set ca_file to the "
                          f"CA that signed the site's certificate.")
    if "closed" in text.lower():
        return WatchError(f"the browser went away during the check ({text}); it is started again "
                          f"for the next check.")
    return WatchError(f"the browser failed: {text}.")
