"""fairseq-seqkd: Sequence-Level Knowledge Distillation (Kim & Rush, EMNLP 2016) for fairseq.

Loaded by fairseq through ``--user-dir``, with fairseq already imported: then importing this
package runs :func:`register` (the ``word_kd`` criterion, the ``translation_kd`` task, torch's
``weights_only`` loader reading the checkpoints that ``fairseq-train`` writes). In a process
without fairseq, importing the package, or any module of it that does not need fairseq itself
(tests/test_imports.py lists those that do), imports no fairseq (importing it takes seconds, and
the pipeline runs scoring, reports and data preparation many times); code that runs
fairseq in-process calls :func:`register` itself, as do the ``fairseq-seqkd`` subcommands that
declare ``NEEDS_FAIRSEQ``.
"""

import sys

__version__ = "0.1.0"


def register() -> None:
    """Register the ``word_kd`` criterion, the ``translation_kd`` task, torch's safe globals, the ranks'
    loader of rank 0's checkpoint, ranks launched by srun or torchrun without CUDA and atomic checkpoint
    copies; calling it again changes nothing."""
    try:
        import fairseq  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fairseq-seqkd is a fairseq plugin and needs fairseq, which is not installed. "
            "Run `make install` in the fairseq-seqkd checkout (it builds fairseq-fixed==0.12.3.1 "
            "from source for Python 3.11), or install your own fairseq build "
            "(e.g. `pip install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1`)."
        ) from e

    from fairseq_seqkd.checkpoints.compat import install_trusted_checkpoint_broadcast, register_safe_globals

    register_safe_globals()
    install_trusted_checkpoint_broadcast()
    from fairseq_seqkd.distributed_init import install_cpu_rank_init

    install_cpu_rank_init()
    from fairseq_seqkd.checkpoints.save import install_atomic_checkpoint_copies

    install_atomic_checkpoint_copies()
    from fairseq_seqkd import criterions, tasks  # noqa: F401  (registrations)


# fairseq imports this package through --user-dir, so fairseq is loaded by then; a process without
# fairseq (the pipeline, scoring, reports) imports the package's modules and never pays for it
if "fairseq" in sys.modules:
    register()
