"""Both paper recipes end to end in SMOKE=1 mode: the real data path on a tiny corpus, every stage.

Each recipe writes the toy corpus into its official file layout (WMT SGML test set, IWSLT
train.tags and XML files with th/en suffixes), prepares it with sentencepiece, and runs every
stage of recipes/pipeline.sh. Select these alone with ``pytest -m recipes``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import BIN

pytestmark = pytest.mark.recipes

ROOT = Path(__file__).resolve().parents[1]
# The systems of the paper's Table 1 that every full run reports.
SYSTEMS = ["teacher", "baseline", "word_kd", "seq_kd", "seq_inter", "seq_kd_seq_inter_word_kd", "pruned"]


def _recipe_env(run_dir: Path, env: dict) -> dict:
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "SMOKE": "1",
                "RUN": str(run_dir), **env}
    for var in ("RAW_DIR", "TRAIN_FILES", "VALID_FILES", "TEST_FILES", "STAGES", "SHARD_ID", "ARCH"):
        if var not in env:
            full_env.pop(var, None)  # a recipe variable set in the caller's shell must not leak in
    return full_env


def start_recipe(recipe: str, run_dir: Path, **env: str) -> subprocess.Popen:
    """Start ``bash recipes/RECIPE`` in SMOKE mode with the venv's commands first on PATH."""
    return subprocess.Popen(["bash", str(ROOT / "recipes" / recipe)], cwd=ROOT, env=_recipe_env(run_dir, env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(recipe: str, proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for a started recipe; a failure shows the end of its output."""
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"{recipe} exited {proc.returncode}:\n{out[-3000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_recipe(recipe: str, run_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a recipe to the end."""
    return finish(recipe, start_recipe(recipe, run_dir, **env))


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, Path]:
    """Both recipes, run side by side (each is mostly single-threaded process start-ups)."""
    runs = {"wmt14_en_de.sh": tmp_path_factory.mktemp("smoke") / "wmt",
            "iwslt15_th_en.sh": tmp_path_factory.mktemp("smoke") / "th"}
    procs = {recipe: start_recipe(recipe, run) for recipe, run in runs.items()}
    for recipe, proc in procs.items():
        finish(recipe, proc)
    return runs


def check_report(run_dir: Path, test_sentences: int) -> dict:
    """Every Table 1 system is in report.json, scored greedy and beam on the whole test set."""
    report = json.loads((run_dir / "report.json").read_text())
    systems = report["systems"]
    missing = [s for s in SYSTEMS if s not in systems]
    assert not missing, f"report.json lacks {missing}; it has {list(systems)}"
    for name, r in systems.items():
        for key in ("bleu_greedy", "bleu_beam", "ppl", "params", "nonzero_params",
                    "words_per_s_greedy", "words_per_s_beam"):
            assert key in r, (name, key)
        assert isinstance(r["bleu_greedy"], float) and isinstance(r["bleu_beam"], float), (name, r)
        assert r["sentences"] == test_sentences, (name, r["sentences"])
    assert "tok:13a" in systems["teacher"]["bleu_signature"]
    assert (run_dir / "report.md").exists()
    return report


def test_wmt14_en_de_smoke(smoke_runs):
    run = smoke_runs["wmt14_en_de.sh"]
    manifest = json.loads((run / "prepared" / "prepare.json").read_text())
    # three training corpora concatenated, the SGML test set read segment by segment
    assert manifest["splits"]["train"]["read"] == 600 and manifest["splits"]["test"]["kept"] == 30
    assert (run / "prepared" / "test.raw.de").read_text().count("\n") == 30
    check_report(run, 30)
    pruned = json.loads((run / "report.json").read_text())["systems"]["pruned"]
    assert pruned["nonzero_params"] < pruned["params"]
    # pruned gradually (the smoke PRUNE_ARGS' 2-update ramp): 70% first, then the final 80%
    text = (run / "logs" / "pruned.train.log").read_text()
    assert "(scheme class-blind, ratio 0.7)" in text and "(scheme class-blind, ratio 0.8)" in text
    assert text.index("ratio 0.7)") < text.index("ratio 0.8)") < text.index("sparsity per class")
    # fine-tunes start from the student's last checkpoint at the fixed FINETUNE_ARGS rate (not a
    # restarted warm-up); the pruned retraining's PRUNE_ARGS come after and win
    for log, start, lr in (("seq_inter", "baseline", 0.001), ("combined", "seq_kd", 0.001),
                           ("pruned", "seq_kd_seq_inter_word_kd", 0.002)):
        text = (run / "logs" / f"{log}.train.log").read_text()
        assert f"loading pretrained model from {run / start / 'checkpoint_last.pt'}" in text, log
        assert "'lr_scheduler': {'_name': 'fixed', " in text and f"'lr': [{lr}]}}" in text, log
    # the students of the teacher's translations learn by plain likelihood (DISTILL_ARGS); the
    # baseline keeps the recipe's label smoothing
    for log, eps in (("baseline", 0.1), ("seq_kd", 0.0), ("seq_inter", 0.0), ("combined", 0.0),
                     ("pruned", 0.0)):
        text = (run / "logs" / f"{log}.train.log").read_text()
        assert f"'label_smoothing': {eps}" in text and text.count("'label_smoothing': ") == 1, log

    # a finished run resumes to nothing: every stage is skipped, nothing is trained again
    mtime = (run / "teacher" / "checkpoint_best.pt").stat().st_mtime
    again = run_recipe("wmt14_en_de.sh", run)
    assert ": running (log:" not in again.stderr, again.stderr[-3000:]
    assert (run / "teacher" / "checkpoint_best.pt").stat().st_mtime == mtime


def test_iwslt15_th_en_smoke(smoke_runs):
    run = smoke_runs["iwslt15_th_en.sh"]
    prepared = run / "prepared"
    # train.tags with its talk metadata skipped, two XML test sets concatenated, th/en suffixes
    manifest = json.loads((prepared / "prepare.json").read_text())
    assert manifest["splits"]["train"]["read"] == 600
    assert manifest["splits"]["test"]["kept"] == 60
    assert manifest["settings"]["spm"]["character_coverage"] == 1.0
    assert (prepared / "train.th").exists() and (prepared / "test.raw.en").exists()
    assert "<" not in (prepared / "train.raw.th").read_text()
    check_report(run, 60)
