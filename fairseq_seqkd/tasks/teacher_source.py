"""The ``--teacher-cache`` option of task ``translation_kd`` and its ``load_dataset`` hook.

With a cache folder (built by ``fairseq-seqkd cache``), every split loaded is wrapped so that
its batches carry ``teacher_topk_ids`` / ``teacher_topk_logits`` for criterion ``word_kd``.
The training subset must have a cache; another split (valid, test) without one is left as is,
and ``word_kd`` then uses its online teacher there (``--teacher-path``) or the NLL alone.
"""

from dataclasses import dataclass, field
from typing import Optional

from fairseq import utils

from fairseq_seqkd.teacher_cache.dataset import attach_teacher_cache


@dataclass
class TeacherCacheConfig:
    # typing.Optional, not "str | None": fairseq turns this annotation into an argparse type
    teacher_cache: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "folder of a teacher top-k cache (`fairseq-seqkd cache`): adds the teacher's "
                          "distribution to each batch for --criterion word_kd; checked against the data "
                          "at load. Colon-separated folders follow colon-separated data paths"},
    )


class TeacherCacheMixin:
    """Wraps each loaded split with its teacher cache, after fairseq's own ``load_dataset``."""

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if not self.cfg.teacher_cache:
            return
        # the same folder choice as fairseq's TranslationTask makes for the data paths
        paths = utils.split_paths(self.cfg.teacher_cache)
        if split != self.cfg.train_subset:
            paths = paths[:1]
        self.datasets[split] = attach_teacher_cache(
            self.datasets[split], paths[(epoch - 1) % len(paths)], split, self.target_dictionary,
            required=split == self.cfg.train_subset)
