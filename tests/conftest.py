"""Shared pytest fixtures, re-exported so every test directory can use them by name."""

from tests.servers.dovecot import dovecot, dovecot_no_idle, fresh_client_ip  # noqa: F401
from tests.servers.http import hermetic_http, http_server  # noqa: F401
from tests.servers.imap_proxy import id_proxy  # noqa: F401
from tests.servers.postgres import pg_url, postgres  # noqa: F401
from tests.servers.smtp import (  # noqa: F401
    plain_server,
    silent_server,
    smtp_163,
    smtp_server,
    starttls_server,
    tls_ca,
)
