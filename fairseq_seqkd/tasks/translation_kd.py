"""The ``translation_kd`` task: fairseq's translation task plus the three KD switches.

It stays thin: each concept lives in its own module and reaches the task as a config
dataclass plus a mixin that overrides one fairseq hook.

- teacher top-k cache (``--teacher-cache``): :mod:`fairseq_seqkd.tasks.teacher_source`
  wraps the language-pair dataset in ``load_dataset``;
- Seq-Inter (``--seq-inter``): :mod:`fairseq_seqkd.seq_kd.seq_inter` wraps the generator in
  ``build_generator``;
- pruning (``--prune-ratio``): :mod:`fairseq_seqkd.tasks.pruning_hooks` re-applies the
  masks in ``optimizer_step``;
- a cluster's warning before a time limit (SIGURG): :mod:`fairseq_seqkd.tasks.stop_signal` saves and
  stops fairseq-train, hung on ``begin_epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from fairseq_seqkd.seq_kd.seq_inter import SeqInterConfig, SeqInterMixin
from fairseq_seqkd.tasks.pruning_hooks import PruningConfig, PruningMixin
from fairseq_seqkd.tasks.stop_signal import StopSignalMixin
from fairseq_seqkd.tasks.teacher_source import TeacherCacheConfig, TeacherCacheMixin


@dataclass
class TranslationKDConfig(PruningConfig, SeqInterConfig, TeacherCacheConfig, TranslationConfig):
    """fairseq's TranslationConfig plus the teacher-cache, Seq-Inter and pruning options."""


@register_task("translation_kd", dataclass=TranslationKDConfig)
class TranslationKDTask(TeacherCacheMixin, SeqInterMixin, PruningMixin, StopSignalMixin, TranslationTask):
    """Translation with knowledge-distillation extras; without them it is plain translation."""

    cfg: TranslationKDConfig
