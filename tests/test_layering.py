"""The README's layering, enforced: every module imports only modules of earlier layers.

Each module's imports are read from its source (function-level ones included), so a lazy
import cannot hide a dependency that points the wrong way.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "notifier"

# The order from the README's "How it works", earliest first. A module may import modules of
# its own layer or of earlier ones; a package (watchers, filters) is one layer with its modules.
LAYERS: list[set[str]] = [
    {"errors"},
    {"schedule", "options", "secrets", "charset", "binary", "attachments", "words", "safetext",
     "console", "systemd", "runstate", "logs", "yamlload"},
    {"kinds", "sections"},
    {"config"},
    {"watchers"},
    {"filters"},
    {"schema"},
    {"sqldb"},
    {"store", "diff", "snapshots", "ledger", "receipts", "relaylog"},
    {"pgstore"},
    {"statedir"},
    {"fleet"},
    {"render"},
    {"message", "inbox", "rewrite", "screen", "relaydata"},
    {"alerts"},
    {"transport", "receive"},
    {"outbox", "verify", "reading", "bounces", "relay"},
    {"health"},
    {"pipeline", "mailwatch"},
    {"passes", "daemon"},
    {"lookback", "versions"},
    {"cli_common"},
    {"cli_history", "cli_mailbox", "cli_fleet", "cli_relay"},
    {"sendmail"},
    {"cli"},
]
RANK = {name: index for index, layer in enumerate(LAYERS) for name in layer}


def _layer(module: str) -> str:
    """`notifier.watchers.url` → `watchers`; `notifier.cli` → `cli`."""
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("notifier"):
            found.add(node.module)
            if node.module == "notifier":  # `from notifier import config`
                found |= {f"notifier.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("notifier.")}
    return {name for name in found if name != "notifier"}


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_has_a_layer() -> None:
    unplaced = {_layer(_name(p)) for p in MODULES} - RANK.keys()
    assert not unplaced, f"add {sorted(unplaced)} to LAYERS (and to the README's order)"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_imports_point_only_to_earlier_layers(path: Path) -> None:
    here = _layer(_name(path))
    wrong = sorted(name for name in _imports(path) if RANK[_layer(name)] > RANK[here])
    assert not wrong, f"{_name(path)} (layer {here}) imports later layers: {wrong}"


def test_the_readme_states_the_same_order() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"Layers, earliest first:\s+(.+?)\.\n", text, re.S)
    assert stated, "README's 'How it works' must state the layers"
    layers = [set(re.findall(r"`(\w+)`", part)) for part in re.split(r"\s*→\s*", stated.group(1))]
    assert layers == LAYERS
