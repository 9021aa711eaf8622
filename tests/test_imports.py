"""The package imports no fairseq until fairseq asks: --user-dir, or an explicit register()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import plugin_dir

PACKAGE = Path(__file__).resolve().parents[1] / "fairseq_seqkd"

# The modules that import fairseq themselves, and why; every other module must not.
NEEDS_FAIRSEQ = {
    "fairseq_seqkd.criterions",  # registers word_kd
    "fairseq_seqkd.criterions.word_kd",  # a FairseqCriterion
    "fairseq_seqkd.tasks",  # registers translation_kd
    "fairseq_seqkd.tasks.translation_kd",  # a TranslationTask
    "fairseq_seqkd.tasks.teacher_source",  # fairseq's utils and the cache's dataset wrapper
    "fairseq_seqkd.tasks.pruning_hooks",  # its config's ChoiceEnum
    "fairseq_seqkd.tasks.stop_signal",  # a task mixin: fairseq-train's loop (its package registers the tasks)
    "fairseq_seqkd.fairseq_glue",  # task setup, split loading, teacher loading
    "fairseq_seqkd.checkpoints.save",  # fairseq's checkpoint_utils and PathManager
    "fairseq_seqkd.teacher_cache.dataset",  # a fairseq dataset wrapper
    "fairseq_seqkd.teacher_cache.build",  # runs the teacher (fairseq_glue)
    "fairseq_seqkd.seq_kd.seq_inter",  # a SequenceGenerator wrapper; its config's ChoiceEnum
    "fairseq_seqkd.commands.cache",  # teacher_cache.build
}


def module_names() -> list[str]:
    """Every module of the package, from its files (walking with pkgutil would import the packages)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("fairseq_seqkd", *path.relative_to(PACKAGE).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_list_of_modules_that_need_fairseq_names_modules():
    assert NEEDS_FAIRSEQ <= set(module_names()), sorted(NEEDS_FAIRSEQ - set(module_names()))


def test_modules_import_without_fairseq():
    free = [name for name in module_names() if name not in NEEDS_FAIRSEQ]
    # one by one, so that a failure names the first module that brought fairseq in
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "    if 'fairseq' in sys.modules:\n"
            "        sys.exit(f'importing {name} imported fairseq')\n"
            "print(len(sys.argv) - 1, 'modules')\n")
    proc = subprocess.run([sys.executable, "-c", code, *free], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"{len(free)} modules"


def test_user_dir_registers_the_task_and_the_criterion():
    # what fairseq-train does with its command line (fairseq_cli.train.cli_main), in a fresh process
    code = ("import sys\n"
            "from fairseq import options\n"
            "from fairseq.criterions import CRITERION_REGISTRY\n"
            "from fairseq.tasks import TASK_REGISTRY\n"
            "args = options.parse_args_and_arch(options.get_training_parser(), sys.argv[1:])\n"
            "print(args.task, args.criterion, args.kd_alpha, args.seq_inter,\n"
            "      TASK_REGISTRY['translation_kd'].__module__, CRITERION_REGISTRY['word_kd'].__module__)\n")
    argv = ["data-bin", "--user-dir", plugin_dir(), "--task", "translation_kd", "--criterion", "word_kd",
            "--arch", "transformer", "--kd-alpha", "0.25"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["translation_kd", "word_kd", "0.25", "False", "fairseq_seqkd.tasks.translation_kd",
                                   "fairseq_seqkd.criterions.word_kd"]
