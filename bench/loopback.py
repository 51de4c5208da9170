"""A loopback HTTP server serving many realistic, slowly changing HTML pages, for benchmarks.

Benchmarks of `notifier check` need a server that behaves like a busy website farm: keep-alive
connections (so client pooling matters), page bodies of a realistic size and shape (so the
filters, the state store and the diff do real work), a small share of pages changing between
passes (so a pass is mostly "unchanged" with some diffs, as in production) and optional
per-request latency (so concurrency, not raw parsing speed, decides the pass time).

It deliberately does not depend on tests/: benchmarks must keep working whatever the test
fixtures become. Pages are generated once and cached as bytes, so serving costs the server
process next to nothing and the figures measure the client, not the generator.

With `hosts=N` the pages are spread over N sites, page i on site i % N, each its own loopback
address (127.0.0.1, 127.0.0.2, ...: Linux routes all of 127/8 to lo) and port, as a pass over
real watchers visits many sites. One accept loop serves them all; the server notes the most
connections each site had open at once, which is what a client's per-host limit promises.
"""

from __future__ import annotations

import random
import re
import selectors
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

_PATH = re.compile(r"/page/(\d+)\Z")

# A fixed vocabulary and sentence pool: pages read like prose (varied line lengths, repeated
# boilerplate) without the cost of generating every word of every page at random.
_VOCABULARY = (
    "account address agreement analysis annual application approach article available balance "
    "benefit board budget business capital center change city client community company contract "
    "control cost council country customer data decision delivery department design development "
    "director district economy education energy environment equipment event evidence experience "
    "facility family feature finance framework future government group growth health history "
    "housing impact improvement income industry information interest investment issue level "
    "local management market material measure member method model month network news notice "
    "number office operation option order organization owner part payment performance period "
    "plan policy position power practice price process product program project property "
    "proposal public quality question rate record region release report research resource "
    "result review risk role schedule school science season section security service share "
    "site situation society software source staff standard statement strategy structure study "
    "subject supply support system team technology term test training transport update user "
    "value version week world year"
)
_WORDS = _VOCABULARY.split()
_BOILERPLATE = (
    "Read more", "Share this page", "Back to top", "Subscribe to our newsletter",
    "Accept cookies", "Print", "Related articles",
)


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 18))]
    return " ".join(words).capitalize() + rng.choice((".", ".", ".", "?", "!"))


_POOL_RNG = random.Random(1234)
_SENTENCES = tuple(_sentence(_POOL_RNG) for _ in range(4000))


def render_page(index: int, version: int) -> bytes:
    """The HTML of page `index` at `version`: ~13 KB, deterministic, UTF-8.

    The layout and most text depend only on `index`; each version bump changes a few lines
    (a revision note, one price, a new headline at the top of the news list), which is what a
    real page update looks like to a line diff.
    """
    rng = random.Random(index)
    title = " ".join(rng.choice(_WORDS) for _ in range(4)).title()
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '  <meta charset="utf-8">',
        '  <meta name="viewport" content="width=device-width, initial-scale=1">',
        f"  <title>{title} | Example Portal {index}</title>",
        '  <link rel="stylesheet" href="/static/css/main.4f3a9c.css">',
        '  <link rel="icon" href="/favicon.ico">',
        '  <script async src="/static/js/analytics.js"></script>',
        "  <style>body{font-family:sans-serif;margin:0} .nav a{padding:0 8px} .price{color:#060}</style>",
        "</head>",
        "<body>",
        '<header class="site-header">',
        '  <nav class="nav">',
    ]
    out += [f'    <a href="/section/{rng.choice(_WORDS)}/{n}">{rng.choice(_WORDS).title()}</a>'
            for n in range(12)]
    out += ["  </nav>", "</header>", '<main id="content">', f'  <article class="page-{index}">',
            f"    <h1>{title}</h1>",
            f'    <p class="updated">Revision {version} of page {index}</p>',
            '    <ul class="news">']
    # Newest headline first: each version adds one line at the top and pushes one out.
    for v in range(version, max(-1, version - 5), -1):
        news = random.Random(index * 7919 + v)
        out.append(f'      <li><a href="/news/{index}-{v}">{news.choice(_SENTENCES)}</a></li>')
    out.append("    </ul>")
    for section in range(6):
        out.append(f"    <h2>{rng.choice(_WORDS).title()} {rng.choice(_WORDS)}</h2>")
        for _ in range(rng.randint(2, 4)):
            out.append("    <p>")
            out += [f"      {rng.choice(_SENTENCES)}" for _ in range(rng.randint(3, 6))]
            out.append("    </p>")
        if section % 2:
            out.append(f'    <p class="share"><a href="#">{rng.choice(_BOILERPLATE)}</a></p>')
    out += ['    <table class="prices">', "      <tr><th>Item</th><th>Price</th><th>Stock</th></tr>"]
    changed_row = version % 10
    for row in range(10):
        seed = index * 31 + row + (version * 1000 if row == changed_row else 0)
        cell = random.Random(seed)
        out.append(f"      <tr><td>{rng.choice(_WORDS)} {row}</td>"
                   f'<td class="price">{cell.randint(100, 99999) / 100:.2f}</td>'
                   f"<td>{cell.randint(0, 500)}</td></tr>")
    out += ["    </table>", "  </article>", "</main>", '<footer class="site-footer">',
            f"  <p>{_BOILERPLATE[0]} &middot; {_BOILERPLATE[2]}</p>",
            "  <p>&copy; 2024 Example Portal. All rights reserved.</p>",
            "</footer>", "</body>", "</html>", ""]
    html = "\n".join(out)
    # Pad to ~13 KB with more prose so every page weighs about the same.
    filler: list[str] = []
    size = len(html)
    while size < 12_800:
        line = f"      <p>{rng.choice(_SENTENCES)} {rng.choice(_SENTENCES)}</p>"
        filler.append(line)
        size += len(line) + 1
    if filler:
        html = html.replace("  </article>", "\n".join(filler) + "\n  </article>", 1)
    return html.encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    """Serves /page/<i> from the server's cache; keep-alive, no logging, Nagle off."""

    protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is exercised
    disable_nagle_algorithm = True  # TCP_NODELAY: headers and body are separate writes
    server: PageServer

    def do_GET(self) -> None:
        server = self.server
        server.count_request()
        if server.latency:
            time.sleep(server.latency)  # the simulated slow website: sleeping is the point
        match = _PATH.match(self.path)
        body = server.body(int(match.group(1))) if match else None
        if body is None:
            self._reply(404, b"not found\n", "text/plain; charset=utf-8")
            return
        self._reply(200, body, "text/html; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def setup(self) -> None:
        super().setup()
        self.server.count_connection(self.request.getsockname()[:2])

    def finish(self) -> None:
        super().finish()
        self.server.count_disconnection(self.request.getsockname()[:2])

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log: thousands of lines would cost more than the request."""


class PageServer(ThreadingHTTPServer):
    """ThreadingHTTPServer on 127.0.0.1 with `pages` generated pages and a `version` per page.

    Use as a context manager; `url(i)` is the address of page i, `mutate(0.1)` changes about
    10 % of the pages (seeded, so runs are repeatable). With `hosts` > 1 the pages are spread
    over that many loopback sites (see the module's docstring).
    """

    daemon_threads = True  # a stuck client connection never keeps the benchmark alive
    request_queue_size = 1024  # 100+ clients opening connections at once must not be refused
    allow_reuse_address = True

    def __init__(self, pages: int, latency: float = 0.0, seed: int = 0, hosts: int = 1) -> None:
        """`latency`: seconds each request sleeps before answering (simulated remote site)."""
        if not 1 <= hosts <= 250:
            raise ValueError("hosts must be between 1 and 250 (127.0.0.1 to 127.0.0.250)")
        super().__init__(("127.0.0.1", 0), _Handler)
        self.pages = pages
        self.latency = latency
        self.versions = [0] * pages
        self._bodies = [render_page(i, 0) for i in range(pages)]
        self._rng = random.Random(seed)
        self._stats_lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self._open: dict[tuple[str, int], int] = {}
        self.peak_open: dict[tuple[str, int], int] = {}
        self._listeners = [self.socket]
        for k in range(1, hosts):
            listener = socket.create_server((f"127.0.0.{k + 1}", 0), backlog=self.request_queue_size)
            self._listeners.append(listener)
        self._origins = [f"http://{host}:{port}" for host, port, *_ in
                         (sock.getsockname() for sock in self._listeners)]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket],
                     client_address: tuple[str, int]) -> None:
        """A client that hung up mid-answer (a killed daemon, a timed-out fetch) is part of the
        benchmark, not an error worth a traceback among its figures; anything else still is."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        """The first site's origin (all of them: `origins`)."""
        return self._origins[0]

    @property
    def origins(self) -> list[str]:
        return list(self._origins)

    def url(self, index: int) -> str:
        return f"{self._origins[index % len(self._origins)]}/page/{index}"

    def body(self, index: int) -> bytes | None:
        """The current bytes of page `index`, or None for an unknown page."""
        return self._bodies[index] if 0 <= index < self.pages else None

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self._bodies)

    def mutate(self, fraction: float = 0.1) -> list[int]:
        """Bump the version of round(fraction * pages) random pages; returns their indexes."""
        chosen = sorted(self._rng.sample(range(self.pages), round(self.pages * fraction)))
        for i in chosen:
            self.versions[i] += 1
            self._bodies[i] = render_page(i, self.versions[i])  # list item swap: atomic for readers
        return chosen

    def count_request(self) -> None:
        with self._stats_lock:
            self.requests += 1

    def count_connection(self, site: tuple[str, int] = ("", 0)) -> None:
        with self._stats_lock:
            self.connections += 1
            now = self._open[site] = self._open.get(site, 0) + 1
            self.peak_open[site] = max(self.peak_open.get(site, 0), now)

    def count_disconnection(self, site: tuple[str, int] = ("", 0)) -> None:
        with self._stats_lock:
            self._open[site] = self._open.get(site, 1) - 1

    def reset_counts(self) -> tuple[int, int]:
        """(requests, connections) since the last reset, then zero them (and the peaks)."""
        with self._stats_lock:
            counts = (self.requests, self.connections)
            self.requests = self.connections = 0
            self.peak_open = dict(self._open)
        return counts

    def peak_per_site(self) -> int:
        """The most connections any one site had open at once since the last reset."""
        with self._stats_lock:
            return max(self.peak_open.values(), default=0)

    def serve(self) -> None:
        """Accept on every site's socket; each connection gets a thread (ThreadingMixIn)."""
        with selectors.DefaultSelector() as selector:
            for listener in self._listeners:
                listener.setblocking(False)
                selector.register(listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select(0.1):
                    try:
                        conn, address = key.fileobj.accept()  # type: ignore[union-attr]
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        continue  # closed while stopping
                    conn.setblocking(True)
                    self.process_request(conn, address)

    def start(self) -> PageServer:
        self._thread = threading.Thread(target=self.serve, name="loopback-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=5)
            self._thread = None
        for listener in self._listeners[1:]:
            listener.close()
        self.server_close()

    def __enter__(self) -> PageServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse
    import urllib.request

    parser = argparse.ArgumentParser(
        description="Serve generated pages for a bounded time (for profiling a client by hand).")
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="keep serving this long after the demo fetch (at most 600)")
    args = parser.parse_args()
    with PageServer(args.pages, args.latency) as srv:
        with urllib.request.urlopen(srv.url(0), timeout=5) as resp:
            page = resp.read()
        lines = page.count(b"\n") + 1
        print(f"{srv.base_url}: {args.pages} pages, {srv.total_bytes / args.pages / 1024:.1f} KiB "
              f"each on average; page 0 is {len(page)} bytes, {lines} lines", flush=True)
        time.sleep(min(args.seconds, 600))
