"""The README's layout table names every module of the package, and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_paths() -> set[str]:
    """Every path the README's Layout table names: `a/b.py`, and `c.py` beside it in the same cell."""
    table = ROOT.joinpath("README.md").read_text(encoding="utf-8").split("## Layout", 1)[1].split("\n## ", 1)[0]
    paths = set()
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        cell = row.split("|")[1]
        names = re.findall(r"`([^`]+)`", cell)
        folder = str(Path(names[0]).parent) if "/" in names[0] else ""
        for name in names:
            paths.add(name if "/" in name else f"{folder}/{name}")
    return paths


def test_the_layout_table_names_every_module():
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "fairseq_seqkd").rglob("*.py")
               if p.name != "__init__.py" and p.parent.name != "commands"}
    named = layout_paths()
    assert not sorted(modules - named), f"modules missing from the README's Layout table: {sorted(modules - named)}"
    gone = sorted(p for p in named if not (ROOT / p.rstrip("/")).exists())
    assert not gone, f"the README's Layout table names what is not there: {gone}"
