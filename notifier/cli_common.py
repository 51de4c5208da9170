"""What every part of the command line shares: loading the config, registering a command."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from notifier import config as configmod
from notifier.config import Config
from notifier.errors import StateError
from notifier.statedir import StateDir
from notifier.store import Store

log = logging.getLogger(__name__)

# How a module of commands registers one: name, function, one line of help → its parser.
Register = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def load(args: argparse.Namespace) -> Config:
    cfg = configmod.load(args.config, state_dir=args.state_dir)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    return cfg


def open_store(cfg: Config, state: StateDir, readonly: bool = False) -> Store:
    """The configured store: SQLite in the state directory, or the fleet's PostgreSQL.
    notifier.fleet is imported only for the latter: it brings psycopg (~20 MB, 0.1 s), which
    no command on a single machine's SQLite state should pay for."""
    if cfg.store is None:
        return state.open_store()
    from notifier import fleet  # noqa: PLC0415 - psycopg only with `store:`

    return fleet.open_store(cfg.store, readonly=readonly)


class NoState(StateError):
    """The configured state directory holds no database: the daemon keeps its state elsewhere,
    or has never run."""


def existing_store(cfg: Config, what_next: str) -> Store:
    """The store the daemon uses (its SQLite database, or the fleet's PostgreSQL), never a new
    one: a command that wrote into a database of its own would do its work where no daemon looks.
    `what_next` completes the sentence that says so."""
    state = StateDir(cfg.state_dir)
    if cfg.store is None and not state.db.exists():
        raise NoState(f"{cfg.state_dir} holds no state database, so {what_next}")
    return open_store(cfg, state)
