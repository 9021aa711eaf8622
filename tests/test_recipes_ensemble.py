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
from recipe_runs import ROOT, run_recipe

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


def test_the_teachers_layer_distils_seq_kd_variants_and_compares_them(tmp_path):
    """recipes/config/multi30k_en_de.teachers.yaml, the Multi30k evidence run's layer, in SMOKE mode to its report:
    two teachers and their ensemble; the Seq-KD students of the ensemble's top-1 and of the first teacher's K-best
    list chosen four ways (top-1, Seq-Inter, MBR, filtered); only the students asked for (students: no Word-KD
    cache, no Seq-Inter corpus, no pruning); every system on val too; the asked comparisons in the report."""
    run = tmp_path / "teachers"
    layer = ROOT / "recipes/config/multi30k_en_de.teachers.yaml"
    run_recipe("multi30k_en_de.sh", run, "-j", "2", CONFIGFILE=str(layer))
    # one K-best list of the first teacher alone (beam 5, every candidate), the ensemble's top-1 for seq_kd
    kbest = (run / "logs/generate_kbest.first.0000.log").read_text()
    assert "--nbest 5" in kbest and "teacher/checkpoint_best.pt" in kbest and ENSEMBLE not in kbest
    assert ENSEMBLE in (run / "logs/generate_shard.seqkd.0000.log").read_text()
    reports = {v: json.loads((run / f"data-bin-seqkd.{v}/train.extract.json").read_text())
               for v in ("first", "seqinter", "mbr", "filtered")}
    assert reports["seqinter"]["selection"] == "seq_inter" and reports["mbr"]["selection"] == "mbr"
    assert reports["mbr"]["teachers"][0]["name"] == "teacher"
    assert reports["first"].get("filters") is None
    dropped = reports["filtered"]["filters"]
    assert dropped["options"]["score_quantile"] == 0.1 and dropped["dropped"]["score"] > 0
    listed = (run / "data-bin-seqkd.filtered/train.dropped.tsv").read_text().splitlines()
    assert len(listed) - 1 == dropped["dropped_sentences"]  # a header, then one line per dropped sentence
    # the top-1 of the K-best list is the teacher's beam top-1: the same corpus as a plain Seq-KD run would make
    firsts = (run / "data-bin-seqkd.first/text/train.de").read_text().splitlines()
    chosen = (run / "data-bin-seqkd.mbr/text/train.de").read_text().splitlines()
    assert len(firsts) == len(chosen) and firsts != chosen
    # students: only the rows asked for, and nothing that only the others read
    for absent in ("word_kd", "cache", "data-bin-seqinter", "pruned", "curve", "export"):
        assert not (run / absent).exists(), absent
    report = json.loads((run / "report.json").read_text())
    systems = set(report["systems"])
    assert systems == {"teacher", "teacher_ensemble", "baseline", "seq_kd", "seq_kd.first", "seq_kd.seqinter",
                       "seq_kd.mbr", "seq_kd.filtered"}, systems
    assert set(report["extra_test_sets"]["val"]["systems"]) == systems
    assert "teacher" in report["seeds"]  # teacher.seed2, scored alone: the teachers' spread
    pairs = {(r["a"], r["b"]) for rows in report["comparisons"].values() for r in rows}
    assert ("seq_kd.mbr", "seq_kd.first") in pairs and len(report["comparisons"]) == 2
    assert "## Comparisons" in (run / "report.md").read_text()
