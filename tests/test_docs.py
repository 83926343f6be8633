"""Documentation that cannot drift: the command list is the parser's, and every torchslim name the
README and docs/ call exists (and is callable where it is called)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import torchslim as ts
from torchslim.cli import command_lines

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_command_list_is_the_parsers():
    """Catches: a command added, renamed or given new options without the docs (the four hand-written
    lists named 6 or 7 of the 8 commands)."""
    text = (ROOT / "docs" / "usage.md").read_text()
    block = re.search(r"<!-- cli:commands[^>]*-->\n```\n(.*?)\n```\n<!-- /cli:commands -->", text, flags=re.S)
    assert block, "docs/usage.md lost its <!-- cli:commands --> block"
    expected = "\n".join(command_lines())
    assert block.group(1) == expected, f"docs/usage.md's command list is out of date; it should read:\n{expected}"


def _resolve(dotted: str):
    obj, path = ts, "torchslim"
    for part in dotted.split(".")[1:]:
        path += "." + part
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(path)  # ImportError: no such name
    return obj


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_name_the_docs_call_exists(doc):
    """Catches: docs that call a function that does not exist (docs/deploy.md told users to call
    ``ts.measure(...)``: a module, not a function)."""
    bad = []
    for m in re.finditer(r"\b(ts|torchslim)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(\()?", doc.read_text()):
        name = "torchslim." + m.group(2)
        try:
            obj = _resolve(name)
        except ImportError:
            bad.append(f"{m.group(0)} (no such name)")
            continue
        if m.group(3) and not callable(obj):
            bad.append(f"{m.group(0)} (not callable)")
    assert not bad, f"{doc.name}: {sorted(set(bad))}"
