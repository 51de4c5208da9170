"""Shared pytest fixtures, re-exported so every test directory can use them by name."""

from tests.servers.http import http_server  # noqa: F401
