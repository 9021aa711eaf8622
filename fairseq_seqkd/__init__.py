"""fairseq-seqkd: Sequence-Level Knowledge Distillation (Kim & Rush, EMNLP 2016) for fairseq.

Loaded by fairseq through ``--user-dir``: importing this package registers the ``word_kd``
criterion and the ``translation_kd`` task, and lets torch's ``weights_only`` loader read the
checkpoints that ``fairseq-train`` writes.
"""

__version__ = "0.1.0"

try:
    import fairseq  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fairseq-seqkd is a fairseq plugin and needs fairseq, which is not installed. "
        "Run `make install` in the fairseq-seqkd checkout (it builds fairseq-fixed==0.12.3.1 "
        "from source for Python 3.11), or install your own fairseq build "
        "(e.g. `pip install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1`)."
    ) from e

from fairseq_seqkd.checkpoint_compat import register_safe_globals

register_safe_globals()

from fairseq_seqkd import criterions, tasks  # noqa: E402,F401  (registrations)
