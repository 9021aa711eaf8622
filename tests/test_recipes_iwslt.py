"""The IWSLT15 recipe's own data path in SMOKE=1 mode: WIT3's train.tags and XML files, Thai.

Its jobs after the binarized data are those of every recipe, run by test_recipes_smoke.py; a
module of its own so that it runs beside that one.
"""

from __future__ import annotations

import json

import pytest
from recipe_runs import run_recipe

pytestmark = pytest.mark.recipes


def test_iwslt15_th_en_smoke(tmp_path):
    run = tmp_path / "th"
    run_recipe("iwslt15_th_en.sh", run, "-j", "2", "data-bin/dict.en.txt")
    prepared = run / "prepared"
    # train.tags with its talk metadata skipped, two XML test sets concatenated, th/en suffixes
    manifest = json.loads((prepared / "prepare.json").read_text())
    assert manifest["splits"]["train"]["read"] == 600
    assert manifest["splits"]["test"]["kept"] == 60
    assert manifest["settings"]["spm"]["character_coverage"] == 1.0
    assert (prepared / "train.th").exists() and (prepared / "test.raw.en").exists()
    assert "<" not in (prepared / "train.raw.th").read_text()
    # the jobs after it are the WMT14 recipe's, tested there
    assert (run / "data-bin" / "test.th-en.th.bin").exists() and not (run / "teacher").exists()
