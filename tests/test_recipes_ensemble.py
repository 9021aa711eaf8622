"""A teacher ensemble distilled in SMOKE=1 mode: teacher_seeds [1, 2] trains two teachers, and their ensemble
(fairseq's --path a.pt:b.pt) translates the training set for Seq-KD and Seq-Inter and fills the Word-KD cache
with the top-k of the averaged distribution; the ensemble is scored beside the single teacher.

The jobs that do not depend on the teacher (pruning, export, the other rows) are those of every run, tested in
test_recipes_smoke.py: this run stops at the Seq-KD and Word-KD students, the Seq-Inter corpus and the
ensemble's own score.
"""

from __future__ import annotations

import json

import pytest
from recipe_runs import run_recipe

pytestmark = pytest.mark.recipes

ENSEMBLE = "teacher/checkpoint_best.pt:teacher.seed2/checkpoint_best.pt"


def test_a_two_teacher_ensemble_is_distilled(tmp_path):
    run = tmp_path / "ensemble"
    # the Seq-Inter corpus, not a fine-tune on it (that is the same job as in any run): make test's minutes
    targets = ["seq_kd/train.done", "word_kd/train.done", "data-bin-seqinter/train.extract.json",
               "results/teacher_ensemble.json", "results/teacher.json"]
    run_recipe("multi30k_en_de.sh", run, "-j", "2", *targets, "--config", "teacher_seeds=[1,2]",
               "teacher_engine=fairseq")
    commands = [json.loads((run / t / "train.json").read_text())["command"] for t in ("teacher", "teacher.seed2")]
    seeds = [[c[i + 1] for i, a in enumerate(c) if a == "--seed"] for c in commands]
    assert seeds[0][-1] == "1" and seeds[1][-1] == "2", seeds  # the last --seed wins
    # the teacher's work is the ensemble's: both translations (beam 5 and Seq-Inter's beam) and the caches
    for log in ("generate_shard.seqkd.0000", "generate_shard.seqinter.0000", "cache_shard.cache.0000"):
        text = (run / "logs" / f"{log}.log").read_text()
        assert ENSEMBLE in text, (log, text[:2000])
    header = json.loads((run / "cache/train.header.json").read_text())
    assert "teacher.seed2" in json.dumps(header), header  # the cache records which teachers made it
    ens, one = (json.loads((run / f"results/{s}.json").read_text()) for s in ("teacher_ensemble", "teacher"))
    assert ens["bleu_greedy"] is not None and ens["bleu_beam"] is not None and ens.get("params") is None
    assert (run / "eval/teacher_ensemble.greedy.txt").read_text() != (run / "eval/teacher.greedy.txt").read_text()
    assert one["params"] > 0
