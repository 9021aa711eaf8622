"""Seq-Inter (Kim & Rush, 2016): the beam candidate closest to the reference goes first.

``fairseq-generate --task translation_kd --seq-inter --beam K`` runs fairseq's own beam search
with beam K, scores the K finished candidates of every sentence by smoothed sentence BLEU
against the reference (:mod:`fairseq_seqkd.seq_kd.sentence_bleu`, on token ids with EOS and padding
removed) and returns them with the best one first (ties: higher model score), the others
after it in model-score order. fairseq's ``SequenceGenerator`` finishes ``beam`` hypotheses
per sentence whatever ``--nbest`` is, and ``fairseq-generate`` prints the first ``--nbest`` of
what the generator returns, so ``--nbest 1`` prints the Seq-Inter choice alone; the H- line's
score stays the model's score of that candidate.

The task hooks here:

- ``build_generator`` wraps the generator fairseq builds (beam search, sampling, diverse
  beam, ...) in :class:`SeqInterGenerator` when ``--seq-inter`` is set. ``build_model``
  suspends it, so ``--eval-bleu`` validation always scores the model's own 1-best.
- ``get_batch_iterator`` honours ``--num-shards N --shard-id I`` for the ``--gen-subset``
  split: fairseq-generate 0.12 ignores those options (it shards by the distributed world
  size instead, so every "shard" would translate the whole set); with this task shard I
  gets batches I, I+N, ... of the unsharded batching, the split of fairseq's own iterator.
  Without them, a generation outside torch.distributed translates the whole split even when
  ``--distributed-world-size`` is above 1 (its default on a machine with several GPUs:
  fairseq-generate would then translate 1/N of the split in its single process).
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from fairseq.dataclass import ChoiceEnum
from omegaconf import II

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.seq_kd.sentence_bleu import SMOOTH_METHODS, TIE_TOLERANCE, SentenceBLEU, pack


@dataclass
class SeqInterConfig:
    """The Seq-Inter options of task ``translation_kd`` (generation only)."""

    seq_inter: bool = field(
        default=False,
        metadata={"help": "generation: run beam search and put the beam candidate closest to the reference "
                          "(smoothed sentence BLEU on token ids) first, the Seq-Inter target of Kim & Rush "
                          "(2016); needs references. Use with fairseq-generate --beam K --nbest 1"},
    )
    seq_inter_smooth_method: ChoiceEnum(list(SMOOTH_METHODS)) = field(
        default="exp",
        metadata={"help": "smoothing of the Seq-Inter sentence BLEU, as sacrebleu names it: exp (NIST), "
                          "floor, add-k or none"},
    )
    # typing.Optional, not "float | None": fairseq turns this annotation into an argparse type
    seq_inter_smooth_value: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata={"help": "value for --seq-inter-smooth-method floor (default 0.1) or add-k (default 1)"},
    )
    seq_inter_no_effective_order: bool = field(
        default=False,
        metadata={"help": "average the BLEU precisions over all 4 orders even for sentences too short to "
                          "have them (by default only the orders present count, as in sacrebleu's "
                          "sentence BLEU)"},
    )
    # fairseq's own --num-shards/--shard-id/--gen-subset, seen by the task (no option of their own)
    generation_num_shards: int = II("dataset.num_shards")
    generation_shard_id: int = II("dataset.shard_id")
    generation_subset: str = II("dataset.gen_subset")


def _config_value(cfg, name: str, default):
    """``cfg.name``, or ``default`` where the task config was built outside fairseq's (no interpolation)."""
    try:
        value = getattr(cfg, name)
        return type(default)(value) if default is not None else value
    except Exception:  # omegaconf's interpolation errors, a plain dataclass's "${...}" string
        return default


def _distributed() -> bool:
    """Whether this process is one rank of several (torch.distributed initialised)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def bleu_from_config(cfg: SeqInterConfig) -> SentenceBLEU:
    """The sentence BLEU that the task options describe."""
    return SentenceBLEU(smooth_method=str(cfg.seq_inter_smooth_method),
                        smooth_value=cfg.seq_inter_smooth_value,
                        effective_order=not cfg.seq_inter_no_effective_order)


def seq_inter_order(bleu: list[float], model_scores: list[float]) -> list[int]:
    """Candidate order: the best BLEU first (ties: higher model score, then earlier), the rest as given."""
    if not bleu:
        return []
    top = max(bleu)
    best = max((i for i, b in enumerate(bleu) if b >= top - TIE_TOLERANCE),
               key=lambda i: (model_scores[i], -i))
    return [best] + [i for i in range(len(bleu)) if i != best]


def rerank_by_bleu(hypos: list[list[dict]], target: torch.Tensor, bleu: SentenceBLEU,
                   strip: set[int]) -> list[list[dict]]:
    """Reorder every sentence's finished hypotheses by :func:`seq_inter_order` against ``target``.

    ``hypos[i]`` are the generator's hypothesis dicts for row i of ``target`` (padded references);
    ``strip`` holds the ids (EOS, padding) that are not words on either side.
    """
    counts = [len(h) for h in hypos]
    cands = [h["tokens"] for sent in hypos for h in sent]
    if not cands:
        return hypos
    strip_ids = np.array(sorted(strip), dtype=np.int64)
    hyp_tokens, hyp_lens = pack(cands)
    keep = ~np.isin(hyp_tokens, strip_ids)
    hyp_lens = np.bincount(np.repeat(np.arange(len(cands)), hyp_lens)[keep], minlength=len(cands))
    target = target.detach().cpu().numpy()
    ref_mask = ~np.isin(target, strip_ids)
    scores = bleu.score_packed(hyp_tokens[keep], hyp_lens, target[ref_mask], ref_mask.sum(1),
                               np.repeat(np.arange(len(hypos)), counts)).tolist()
    model = torch.stack([h["score"] for sent in hypos for h in sent]).float().cpu().tolist()  # one copy
    out, lo = [], 0
    for sent, k in zip(hypos, counts):
        order = seq_inter_order(scores[lo:lo + k], model[lo:lo + k])
        out.append([sent[i] for i in order])
        lo += k
    return out


class SeqInterGenerator:
    """Wraps a fairseq generator: its candidates, the one closest to the reference first."""

    def __init__(self, generator, tgt_dict, bleu: SentenceBLEU):
        self.generator = generator
        self.bleu = bleu
        eos = getattr(generator, "eos", tgt_dict.eos())
        stripped = getattr(generator, "symbols_to_strip_from_output", None) or {eos}
        self.strip = {int(s) for s in stripped} | {tgt_dict.pad(), tgt_dict.eos()}

    def __getattr__(self, name: str):
        # anything else fairseq asks of a generator (eos, symbols_to_strip_from_output, ...)
        if name == "generator":
            raise AttributeError(name)
        return getattr(self.generator, name)

    @torch.no_grad()
    def generate(self, models, sample: dict, **kwargs) -> list[list[dict]]:
        """The wrapped generator's hypotheses, reordered by sentence BLEU against ``sample['target']``."""
        hypos = self.generator.generate(models, sample, **kwargs)
        target = sample.get("target")
        if target is None:
            raise UserError("--seq-inter picks the beam candidate closest to the reference, but this data "
                            "has no target side: generate on a split with references (e.g. --gen-subset "
                            "train of a parallel data-bin), or drop --seq-inter")
        return rerank_by_bleu(hypos, target, self.bleu, self.strip)


class SeqInterMixin:
    """``build_generator`` with Seq-Inter; ``--num-shards``/``--shard-id`` for fairseq-generate."""

    _seq_inter_suspended = False

    def build_model(self, cfg, from_checkpoint=False):
        # the --eval-bleu validation generator is built here: it must score the model's own 1-best
        self._seq_inter_suspended = True
        try:
            return super().build_model(cfg, from_checkpoint=from_checkpoint)
        finally:
            self._seq_inter_suspended = False

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        generator = super().build_generator(models, args, seq_gen_cls=seq_gen_cls,
                                            extra_gen_cls_kwargs=extra_gen_cls_kwargs,
                                            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)
        if (not getattr(self.cfg, "seq_inter", False) or self._seq_inter_suspended
                or getattr(args, "score_reference", False)):
            return generator
        return SeqInterGenerator(generator, self.target_dictionary, bleu_from_config(self.cfg))

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1,
                           num_shards=1, shard_id=0, num_workers=0, epoch=1, data_buffer_size=0,
                           disable_iterator_cache=False, skip_remainder_batch=False,
                           grouped_shuffling=False, update_epoch_batch_itr=False):
        shards = _config_value(self.cfg, "generation_num_shards", 1)
        subset = _config_value(self.cfg, "generation_subset", None)
        generating = subset in self.datasets and dataset is self.datasets[subset]
        if generating and (shards > 1 or (num_shards > 1 and not _distributed())):
            # fairseq-generate shards by --distributed-world-size, which defaults to the number of
            # GPUs, but runs one process: the other "ranks" would never translate their share
            num_shards, shard_id = shards, _config_value(self.cfg, "generation_shard_id", 0)
            if not 0 <= shard_id < num_shards:
                raise UserError(f"--shard-id {shard_id} is not below --num-shards {num_shards}")
        return super().get_batch_iterator(
            dataset, max_tokens=max_tokens, max_sentences=max_sentences, max_positions=max_positions,
            ignore_invalid_inputs=ignore_invalid_inputs,
            required_batch_size_multiple=required_batch_size_multiple, seed=seed, num_shards=num_shards,
            shard_id=shard_id, num_workers=num_workers, epoch=epoch, data_buffer_size=data_buffer_size,
            disable_iterator_cache=disable_iterator_cache, skip_remainder_batch=skip_remainder_batch,
            grouped_shuffling=grouped_shuffling, update_epoch_batch_itr=update_epoch_batch_itr)
