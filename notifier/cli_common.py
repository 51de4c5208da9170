"""What every part of the command line shares: loading the config, registering a command."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from notifier import config as configmod
from notifier.config import Config

log = logging.getLogger(__name__)

# How a module of commands registers one: name, function, one line of help → its parser.
Register = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def load(args: argparse.Namespace) -> Config:
    cfg = configmod.load(args.config, state_dir=args.state_dir)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    return cfg
