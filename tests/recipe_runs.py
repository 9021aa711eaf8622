"""Running a recipe (recipes/*.sh) in SMOKE=1 mode from a test, and reading what it printed.

Shared by the recipe tests (test_recipes_smoke.py, test_recipes_iwslt.py, test_teacher_folder.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import BIN

ROOT = Path(__file__).resolve().parents[1]


def _recipe_env(run_dir: Path, env: dict, path_first: Path | None = None) -> dict:
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    if path_first is not None:
        path = f"{path_first}{os.pathsep}{path}"
    full_env = {**os.environ, "PATH": path, "SMOKE": "1", "RUN": str(run_dir), **env}
    for var in ("RAW_DIR", "CONFIGFILE", "ARCH"):
        if var not in env:
            full_env.pop(var, None)  # a recipe variable set in the caller's shell must not leak in
    return full_env


def start_recipe(recipe: str, run_dir: Path, *args: str, path_first: Path | None = None,
                 **env: str) -> subprocess.Popen:
    """Start ``bash recipes/RECIPE ARGS`` in SMOKE mode with the venv's commands first on PATH."""
    return subprocess.Popen(["bash", str(ROOT / "recipes" / recipe), *args], cwd=ROOT,
                            env=_recipe_env(run_dir, env, path_first), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(recipe: str, proc: subprocess.Popen, check: bool = True) -> subprocess.CompletedProcess:
    """Wait for a started recipe; a failure (when ``check``) shows the end of its output."""
    out, err = proc.communicate()
    if check and proc.returncode != 0:
        raise AssertionError(f"{recipe} exited {proc.returncode}:\n{out[-3000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_recipe(recipe: str, run_dir: Path, *args: str, check: bool = True, path_first: Path | None = None,
               **env: str) -> subprocess.CompletedProcess:
    """Run a recipe to the end."""
    return finish(recipe, start_recipe(recipe, run_dir, *args, path_first=path_first, **env), check)


def ran(proc: subprocess.CompletedProcess) -> list[str]:
    """The commands a run started, as its terminal lines name them (``LOG | COMMAND | running``)."""
    return re.findall(r"\| (\S+) \| [^|]+ \| running", proc.stderr)


def planned(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """A dry run's 'Job stats' table: rule -> number of jobs."""
    table = proc.stdout.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
