"""The url kind through real proxies on 127.0.0.1: https through an HTTP proxy's CONNECT tunnel
(the site's certificate still checked), SOCKS5/5h and SOCKS4/4a with names resolved where the
scheme says, proxy logins taken from the proxy URL, and every way a proxy can fail ending in
a WatchError that names the proxy."""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time
from typing import Any

import pytest

from notifier.errors import WatchError
from notifier.watchers._http import close_pools
from notifier.watchers.url import Url
from tests.servers.http import LocalHTTPServer, server_context
from tests.servers.proxy import HttpProxy, SocksProxy
from tests.servers.smtp import LocalCA
from tests.watchers._build import url_watcher

SITE = {"site.test": "127.0.0.1"}  # a name only the test proxies can resolve


pytestmark = pytest.mark.usefixtures("hermetic_http")


def watcher(url: str, **raw: Any) -> Url:
    return url_watcher(url, **{"timeout": "5s", **raw})


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


def test_https_through_a_connect_tunnel_with_the_login_from_the_proxy_url(tls_ca: LocalCA) -> None:
    with LocalHTTPServer(tls=server_context(tls_ca)) as site, HttpProxy("user:p@ss") as proxy:
        port = site.server_address[1]
        w = watcher(site.url("/"), proxy=f"http://user:p%40ss@127.0.0.1:{proxy.port}",
                    ca_file=tls_ca.ca_file)
        assert w.fetch({}).text == "hello"
        assert w.fetch({}).text == "hello"
        assert proxy.connections == 1, "the tunnel was not kept alive for the second fetch"
        [asked] = proxy.asked
        assert asked.target == f"127.0.0.1:{port}"
        assert asked.authorization == "Basic " + base64.b64encode(b"user:p@ss").decode()
        assert "proxy-authorization" not in site.requests("/")[0].headers, "the login leaked"


def test_the_tunnelled_site_certificate_is_still_checked(tls_ca: LocalCA) -> None:
    with LocalHTTPServer(tls=server_context(tls_ca)) as site, HttpProxy() as proxy:
        w = watcher(site.url("/"), proxy=f"http://127.0.0.1:{proxy.port}")  # no ca_file
        with pytest.raises(WatchError, match="failed the TLS certificate check"):
            w.fetch({})
        assert len(proxy.asked) == 1


def test_a_proxy_refusing_the_tunnel_is_a_watch_error(tls_ca: LocalCA) -> None:
    with LocalHTTPServer(tls=server_context(tls_ca)) as site, HttpProxy("user:right") as proxy:
        port = site.server_address[1]
        w = watcher(site.url("/"), proxy=f"http://user:wrong@127.0.0.1:{proxy.port}",
                    ca_file=tls_ca.ca_file)
        with pytest.raises(WatchError) as caught:
            w.fetch({})
        assert str(caught.value) == (
            f"GET {site.url('/')} could not go through the proxy (the proxy answered 407 Proxy "
            f"Authentication Required when asked for a tunnel to 127.0.0.1:{port}); check the "
            f"proxy option.")
        assert site.count("/") == 0


@pytest.mark.parametrize(("how", "reason"), [
    ("hang_up", "the proxy 127.0.0.1 closed the connection without answering"),
    ("reset", "the proxy 127.0.0.1 broke off the connection: Connection reset by peer"),
])
def test_a_proxy_hanging_up_on_connect_is_a_watch_error_about_the_proxy(
        tls_ca: LocalCA, how: str, reason: str) -> None:
    with (LocalHTTPServer(tls=server_context(tls_ca)) as site,
          HttpProxy(hang_up=how == "hang_up", reset=how == "reset") as proxy):
        w = watcher(site.url("/"), proxy=f"http://127.0.0.1:{proxy.port}", ca_file=tls_ca.ca_file)
        with pytest.raises(WatchError) as caught:
            w.fetch({})
        assert str(caught.value) == (f"GET {site.url('/')} could not go through the proxy "
                                     f"({reason}); check the proxy option.")


def test_socks5h_lets_the_proxy_resolve_the_name_and_logs_in(http_server: LocalHTTPServer) -> None:
    port = http_server.server_address[1]
    with SocksProxy("alice:s3cret", hosts=SITE) as proxy:
        w = watcher(f"http://site.test:{port}/", proxy=f"socks5h://alice:s3cret@127.0.0.1:{proxy.port}")
        assert w.fetch({}).text == "hello"
        [asked] = proxy.asked
        assert (asked.target, asked.name_given) == (f"site.test:{port}", True)
        assert (asked.user, asked.password) == ("alice", "s3cret")
        assert 2 in asked.methods
    assert http_server.requests("/")[0].headers["host"] == f"site.test:{port}"


def test_socks5_resolves_the_name_itself(http_server: LocalHTTPServer) -> None:
    port = http_server.server_address[1]
    with SocksProxy() as proxy:
        w = watcher(f"http://localhost:{port}/", proxy=f"socks5://127.0.0.1:{proxy.port}")
        assert w.fetch({}).text == "hello"
        [asked] = proxy.asked
        assert (asked.target, asked.name_given) == (f"127.0.0.1:{port}", False)
        assert asked.methods == b"\x00"  # no login in the URL: none offered


@pytest.mark.parametrize(("scheme", "host", "target", "name_given"), [
    ("socks4a", "site.test", "site.test", True),
    ("socks4", "localhost", "127.0.0.1", False),
])
def test_socks4_and_4a(http_server: LocalHTTPServer, scheme: str, host: str, target: str,
                       name_given: bool) -> None:
    port = http_server.server_address[1]
    with SocksProxy(hosts=SITE) as proxy:
        w = watcher(f"http://{host}:{port}/", proxy=f"{scheme}://bob@127.0.0.1:{proxy.port}")
        assert w.fetch({}).text == "hello"
        [asked] = proxy.asked
        assert (asked.target, asked.name_given, asked.user) == (f"{target}:{port}", name_given, "bob")


def test_a_socks5_proxy_refusing_the_login_is_a_watch_error(http_server: LocalHTTPServer) -> None:
    with SocksProxy("alice:right", hosts=SITE) as proxy:
        w = watcher(http_server.url("/"), proxy=f"socks5h://alice:wrong@127.0.0.1:{proxy.port}")
        with pytest.raises(WatchError, match=r"could not go through the proxy \(the SOCKS proxy refused "
                                             r"the user and password in the proxy URL\)"):
            w.fetch({})
        no_login = watcher(http_server.url("/"), proxy=f"socks5h://127.0.0.1:{proxy.port}")
        with pytest.raises(WatchError, match=r"could not go through the proxy \(the SOCKS proxy "
                                             r"accepts none of the login methods"):
            no_login.fetch({})
    assert http_server.count("/") == 0


def test_a_socks_proxy_that_cannot_reach_the_site_is_a_watch_error() -> None:
    port = free_port()
    with SocksProxy(hosts=SITE) as proxy:
        w = watcher(f"http://site.test:{port}/", proxy=f"socks5h://127.0.0.1:{proxy.port}")
        with pytest.raises(WatchError, match=rf"could not go through the proxy \(the SOCKS proxy could "
                                             rf"not connect to site.test:{port} \(host unreachable\)\)"):
            w.fetch({})


@pytest.mark.parametrize("scheme", ["http", "socks5", "socks5h", "socks4a"])
def test_a_proxy_that_is_not_listening_is_a_watch_error(scheme: str) -> None:
    port = free_port()
    w = watcher("https://example.invalid/", proxy=f"{scheme}://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(WatchError) as caught:
        w.fetch({})
    assert time.monotonic() - started < 4
    message = str(caught.value)
    assert "could not go through the proxy (the proxy 127.0.0.1 could not be reached: " in message
    assert "refused" in message.lower()


def test_a_socks5_login_longer_than_the_protocol_allows_is_a_watch_error(
        http_server: LocalHTTPServer) -> None:
    """RFC 1929 gives the user and password one length byte each: a longer one is the
    proxy option's mistake, said as such (it was a ValueError traceback from bytes())."""
    with SocksProxy("alice:right") as proxy:
        w = watcher(http_server.url("/"), proxy=f"socks5://{'u' * 256}:pw@127.0.0.1:{proxy.port}")
        with pytest.raises(WatchError, match=r"could not go through the proxy \(the user or password "
                                             r"in the proxy URL is longer than SOCKS5 allows"):
            w.fetch({})


def test_http_urls_go_to_an_http_proxy_in_absolute_form(http_server: LocalHTTPServer) -> None:
    with HttpProxy("user:pw") as proxy:
        w = watcher(http_server.url("/"), proxy=f"http://user:pw@127.0.0.1:{proxy.port}")
        assert w.fetch({}).text == "hello"
        [asked] = proxy.asked
        assert asked.target == http_server.url("/")
        assert asked.authorization == "Basic " + base64.b64encode(b"user:pw").decode()
        wrong = watcher(http_server.url("/"), proxy=f"http://user:nope@127.0.0.1:{proxy.port}")
        with pytest.raises(WatchError, match=r"returned HTTP 407 Proxy Authentication Required; the "
                                             r"proxy asks for a login"):
            wrong.fetch({})
    assert http_server.count("/") == 1


def test_a_site_resetting_the_tls_handshake_in_a_tunnel_is_a_tls_failure() -> None:
    """Behind a CONNECT tunnel the site resets the connection on the TLS ClientHello: a
    failed handshake, said as such (it was an OSError without a message, reported as
    "failed: ; check the watcher's files and settings")."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def reset_on_hello() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    resetter = threading.Thread(target=reset_on_hello, daemon=True)
    resetter.start()
    try:
        with HttpProxy() as proxy:
            w = watcher(f"https://127.0.0.1:{port}/", proxy=f"http://127.0.0.1:{proxy.port}")
            with pytest.raises(WatchError) as caught:
                w.fetch({})
    finally:
        resetter.join(5)
        listener.close()
    assert str(caught.value) == (f"GET https://127.0.0.1:{port}/ failed the TLS handshake (the site "
                                 f"broke off the connection); check that the url's port speaks https.")


@pytest.mark.parametrize(("no_proxy", "direct"), [
    ("127.0.0.0/8", True),  # a network, as requests and curl read it
    ("10.0.0.0/8, 127.0.0.1/32", True),
    ("::1/128,192.168.0.0/16", False),  # other networks: through the proxy
    ("127.0.0.1:1", False),  # the address, but another port
    ("127.0.0.0/33,nonsense/8", False),  # malformed networks match nothing (and break nothing)
    ("", False),
])
def test_no_proxy_names_networks_of_addresses(
        http_server: LocalHTTPServer, monkeypatch: pytest.MonkeyPatch, no_proxy: str, direct: bool) -> None:
    """HTTP_PROXY from the environment, and NO_PROXY exempting the site by its network: the
    proxy sees the request only when no entry covers the site's address."""
    with HttpProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", no_proxy)
        close_pools()  # the environment's proxies are read once per site
        assert watcher(http_server.url("/")).fetch({}).text == "hello"
        assert len(proxy.asked) == (0 if direct else 1)
    assert http_server.count("/") == 1


def test_a_proxy_from_the_environment_with_a_bad_port_is_a_watch_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY is not checked like the config: its bad port is the check's error, with the
    proxy's name and what to fix (never its password), not an unexpected bug."""
    monkeypatch.setenv("HTTP_PROXY", "http://user:secret@proxy.test:99999")
    close_pools()  # the environment's proxies are read once per site
    bad_port = r"the URL of the proxy proxy\.test has an invalid port number"
    with pytest.raises(WatchError, match=bad_port) as caught:
        watcher("http://site.test/").fetch({})
    assert "secret" not in str(caught.value)


def test_an_https_proxy_carries_a_sites_tls_inside_its_own(
        tls_ca: LocalCA, http_server: LocalHTTPServer) -> None:
    """https:// proxy: TLS to the proxy (its certificate checked like a site's), a CONNECT
    tunnel inside it, and the site's own TLS inside the tunnel; an http:// site goes to the
    same proxy in absolute form over its TLS."""
    with LocalHTTPServer(tls=server_context(tls_ca)) as site, HttpProxy(tls=server_context(tls_ca)) as proxy:
        w = watcher(site.url("/"), proxy=f"https://127.0.0.1:{proxy.port}", ca_file=tls_ca.ca_file)
        assert w.fetch({}).text == "hello"
        assert w.fetch({}).text == "hello"
        assert proxy.connections == 1, "the tunnel was not kept alive for the second fetch"
        assert [a.target for a in proxy.asked] == [f"127.0.0.1:{site.server_address[1]}"]
        plain = watcher(http_server.url("/"), proxy=f"https://127.0.0.1:{proxy.port}", ca_file=tls_ca.ca_file)
        assert plain.fetch({}).text == "hello"
        assert proxy.asked[-1].target == http_server.url("/")
        unknown = watcher(site.url("/"), proxy=f"https://127.0.0.1:{proxy.port}")  # the CA not given
        with pytest.raises(WatchError, match="failed the TLS certificate check"):
            unknown.fetch({})
    assert site.count("/") == 2
