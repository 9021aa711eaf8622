"""The plugin installs, loads with --user-dir, and its checkpoints load under weights_only once registered."""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import BIN, TOY_SIZES, plugin_dir, run_cli

from fairseq_seqkd.evaluate.scoring import evaluate_generation


def test_checkpoint_loads_weights_only_after_register(toy_teacher):
    # Without the plugin, torch's default loader refuses fairseq-train's pickled configuration ...
    code = ("import torch, sys\n"
            f"try:\n    torch.load({str(toy_teacher)!r}, weights_only=True)\n"
            "except Exception as e:\n    print(type(e).__name__); sys.exit(0)\nprint('loaded')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "UnpicklingError", out
    # ... and once the plugin is registered, the same default loader reads it.
    import fairseq_seqkd

    fairseq_seqkd.register()
    state = torch.load(toy_teacher, weights_only=True)
    assert "model" in state and any(k.startswith("encoder.") for k in state["model"])


def test_generate_with_user_dir_scores_every_sentence(toy_data_bin, toy_teacher, toy_corpus, tmp_path):
    proc = run_cli("fairseq-generate", toy_data_bin, "--user-dir", plugin_dir(), "--task", "translation_kd",
                   "--path", toy_teacher, "--gen-subset", "test", "--beam", "2", "--batch-size", "16",
                   "--required-batch-size-multiple", "1", "--cpu")
    out = tmp_path / "gen.txt"
    out.write_text(proc.stdout + proc.stderr)
    res = evaluate_generation(str(out), str(toy_corpus / "test.de"), tokenize="none")
    assert res["sentences"] == TOY_SIZES["test"]
    assert res["words_per_s"] and res["words_per_s"] > 0
    assert "tok:none" in res["bleu_signature"]


def test_register_without_fairseq_says_what_to_install():
    # the package imports without fairseq (the pipeline's process); registering with it needs it
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'fairseq' or name.startswith('fairseq.'):\n"
            "            raise ImportError('No module named fairseq')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import fairseq_seqkd\n"
            "print('imported', flush=True)\n"
            "fairseq_seqkd.register()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "imported", proc.stderr[-2000:]
    assert proc.returncode != 0
    assert "make install" in proc.stderr and "fairseq-fixed" in proc.stderr


def test_cli_lists_subcommands():
    proc = subprocess.run([str(BIN / "fairseq-seqkd"), "--help"], capture_output=True, text=True, check=True)
    for name in ("toy-corpus", "evaluate", "report"):
        assert name in proc.stdout
