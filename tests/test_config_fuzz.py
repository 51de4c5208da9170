"""Property: no edit of a real config makes `notifier validate` crash.

The shipped watchers.yaml and every README example are mutated the ways people (and editors)
break files — keys deleted or misspelt, values swapped for other types, random scalars,
truncation mid-write — and `validate` must answer with problems or "valid", never a bug.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier import cli

ROOT = Path(__file__).resolve().parent.parent
ENV = {"NOTIFIER_SMTP_PASSWORD": "fuzz-password"}
SEEDS: list[str] = [(ROOT / "watchers.yaml").read_text()] + [
    b for b in re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    if "watchers:" in b
]
KEYS = ["name", "kind", "every", "cron", "url", "path", "command", "filters", "history", "to",
        "timeout", "quiet_hours", "timezone", "smtp", "mail", "defaults", "watchers", "css",
        "provider", "port", "digest", "error_after", "enabled", "nmae", "evry", "state_dir"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["10", "0s", "-1m", "soon", "25:00-07:00", "*/0 * * * *", "Mars/Base",
                     "not-an-email", "http://", "(", "\t", "${UNSET_VAR}", "a\nb", "", "1e400s"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a mapping key or list item in the document."""
    out = []
    if isinstance(node, dict):
        for key, child in node.items():
            out.append((*prefix, key))
            out.extend(_paths(child, (*prefix, key)))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out.append((*prefix, index))
            out.extend(_paths(child, (*prefix, index)))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A seed config with one to three structural mutations, or cut at a random offset."""
    text = draw(st.sampled_from(SEEDS))
    if draw(st.booleans()) and draw(st.booleans()):
        return text[: draw(st.integers(0, len(text)))]
    doc = yaml.safe_load(text)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        *parent_path, last = draw(st.sampled_from(paths))
        parent = doc
        for step in parent_path:
            parent = parent[step]
        action = draw(st.sampled_from(["delete", "replace", "rename", "insert"]))
        if action == "delete":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(values)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = parent.pop(last)
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(values)
        else:
            parent.insert(last, draw(values))
    return yaml.safe_dump(doc, allow_unicode=True)


def validate(path: Path, text: str) -> tuple[int, str]:
    path.write_text(text, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["-c", str(path), "validate"])
    return code, out.getvalue() + err.getvalue()


def never_crashes(text: str, folder: Path) -> None:
    """validate answers with problems (1) or "valid" (0); never a bug, never a traceback."""
    code, output = validate(folder / "watchers.yaml", text)
    assert code in (0, 1), output
    assert "Traceback" not in output, output
    assert "This is a bug" not in output, output
    if code == 1:
        assert re.search(r"^error: .+watchers\.yaml", output, re.M), output


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(FUZZ, max_examples=1500)
@given(text=mutated())
def test_validate_never_crashes_on_a_mutated_config(
        text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    never_crashes(text, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@settings(FUZZ, max_examples=30_000)
@given(text=mutated())
def test_validate_never_crashes_on_many_more_mutations(
        text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same property, 20 times the examples: `pytest -m slow` (several minutes)."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    never_crashes(text, tmp_path)


@pytest.mark.parametrize("data", [
    b"", b"# only a comment\n", b"- a\n- b\n", b"watchers:\n\t- name: a\n", b"\xff\xfe\x00bad",
    b"watchers: [\n", b"watchers:\n  - name: caf\xe9\n", b"a: &a [*a, *a]\nwatchers: []\n",
])
def test_validate_answers_odd_files_with_problems(
        data: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "watchers.yaml"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["-c", str(path), "validate"])
    assert code == 1, out.getvalue() + err.getvalue()
    assert f"error: {path}" in out.getvalue()
