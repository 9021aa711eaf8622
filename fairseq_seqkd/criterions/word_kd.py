"""Word-level knowledge distillation (Kim & Rush, 2016, eq. 2): the ``word_kd`` criterion.

loss = (1 - alpha) * label-smoothed NLL of the reference
       + alpha * tau^2 * H(q_tau, p_tau)

where p is the student's distribution, q the teacher's, both at temperature tau, and H the
cross-entropy summed over target tokens. The teacher distribution comes from the sample
(keys ``teacher_topk_ids`` / ``teacher_topk_logits``, added by the ``translation_kd`` task from
a teacher top-k cache; the softmax of the logits is the top-k renormalised) or from an online
teacher loaded with ``--teacher-path`` (full vocabulary, or its top ``--kd-topk``; ``a.pt:b.pt``
is an ensemble, whose members' probabilities are averaged as the cache builder and fairseq's
ensemble decoding average them, see ``fairseq_glue.ensemble_log_probs``). The
criterion learns about the cache only through those two sample keys. Either way the teacher's
probabilities reach the loss in float32; the online teacher keeps float32 weights under
--fp16/--bf16 (autocast on a GPU) and a non-finite output stops training with an error.

Where a batch has no teacher distribution (a validation split without a cache and no online
teacher), the KD term is skipped and the loss is the label-smoothed NLL alone; while training
that is an error, since the student would silently train without its teacher.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.fairseq_glue import (
    TEACHER_IDS_KEY,
    TEACHER_LOGITS_KEY,
    load_teachers,
    teacher_autocast,
    teacher_names,
    teacher_paths,
    teacher_topk,
)

logger = logging.getLogger(__name__)

# The sample keys through which a teacher distribution reaches the criterion (TEACHER_IDS_KEY,
# TEACHER_LOGITS_KEY) live in fairseq_glue, below both the cache's dataset wrapper and this module.


@dataclass
class WordKDConfig(FairseqDataclass):
    kd_alpha: float = field(
        default=0.5,
        metadata={"help": "weight of the KD term: loss = (1 - alpha) * label-smoothed NLL + alpha * KD "
                          "(Kim & Rush use 0.5; 0 gives label_smoothed_cross_entropy exactly)"},
    )
    kd_temperature: float = field(
        default=1.0,
        metadata={"help": "temperature tau applied to teacher and student in the KD term, "
                          "which is scaled by tau^2"},
    )
    kd_topk: int = field(
        default=0,
        metadata={"help": "use only the teacher's k most probable tokens per position (renormalised); "
                          "0: all the cache holds, or the full vocabulary of an online teacher"},
    )
    # typing.Optional, not "str | None": fairseq turns this annotation into an argparse type
    teacher_path: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "teacher checkpoint run online (eval mode, no grad) for batches that carry "
                          "no cached teacher distribution (see --teacher-cache of task translation_kd); "
                          "a.pt:b.pt: an ensemble of teachers of the same vocabulary, their probabilities "
                          "averaged as fairseq-generate's ensemble averages them"},
    )
    teacher_dict: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "the online teacher's target dictionary (dict.LANG.txt of the data it was "
                          "trained on), checked symbol by symbol against this data's; default: the one in "
                          "the data folder its checkpoint names (an error if that is not readable); for an "
                          "ensemble one file for every member, or one per member separated by ':'"},
    )
    teacher_dict_unchecked: bool = field(
        default=False,
        metadata={"help": "accept an online teacher whose dictionary file is not readable after checking "
                          "only the vocabulary size (a dictionary in another order would teach a permuted "
                          "distribution)"},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "epsilon for label smoothing of the NLL term, 0 means no label smoothing"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


# Rows of (tokens x vocabulary) work per chunk: at least 2^20 elements (fewer, larger kernels),
# and at most 32 chunks, so a chunk's few temporaries stay a small fraction of N x V.
_KD_CHUNK_MIN_ELEMENTS = 1 << 20
_KD_MAX_CHUNKS = 32


def tempered_teacher(teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """q_tau: ``teacher_probs ** (1 / tau)`` renormalised over the last dimension, in float32 at least.

    On the same support this equals softmax(teacher logits / tau); a row without mass stays 0.
    """
    q = teacher_probs.to(torch.promote_types(teacher_probs.dtype, torch.float32))
    if temperature != 1.0:
        q = q.pow(1.0 / temperature)
    return q / q.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)


def _kd_rows(student_lprobs: torch.Tensor, teacher_ids: torch.Tensor | None, teacher_probs: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """tau^2 * H(q_tau, p_tau) of each row of (N, V) log-probs: the formula, on a whole batch or a chunk."""
    if temperature != 1.0:
        # log_softmax is shift-invariant: log-probs / tau give the same p_tau as logits / tau
        student_lprobs = F.log_softmax(student_lprobs / temperature, dim=-1)
    q = tempered_teacher(teacher_probs, temperature)
    lp = student_lprobs if teacher_ids is None else student_lprobs.gather(-1, teacher_ids.long())
    return -(temperature**2) * (q * lp).sum(dim=-1)


def _chunk_rows(rows: int, vocab: int) -> int:
    return max(-(-_KD_CHUNK_MIN_ELEMENTS // vocab), -(-rows // _KD_MAX_CHUNKS), 1)


class _ChunkedKD(torch.autograd.Function):
    """:func:`_kd_rows` over chunks of rows, with its gradient written chunk by chunk.

    Autograd on the plain formula keeps (N, V) temporaries alive (normalised teacher probs, the
    product, at tau != 1 the tempered log-probs and probs): float32 tokens x vocabulary buffers
    for an online teacher. Here forward keeps nothing of that size, and backward allocates only
    the gradient it must return, d/dx [-tau^2 sum_v q_v log_softmax(x / tau)_v] =
    -tau * (q - softmax(x / tau) * sum_v q_v) with q the renormalised (tempered) teacher probs
    (at tau = 1 the log-probs are used as they are, and the gradient is -q), computed by the
    same operations autograd would apply to the plain formula.
    """

    @staticmethod
    def forward(ctx, student_lprobs, teacher_ids, teacher_probs, temperature):
        rows, vocab = student_lprobs.shape
        step = _chunk_rows(rows, vocab)
        out = None
        for s in range(0, rows, step):
            ids = None if teacher_ids is None else teacher_ids[s:s + step]
            part = _kd_rows(student_lprobs[s:s + step], ids, teacher_probs[s:s + step], temperature)
            if out is None:
                out = part.new_empty(rows)
            out[s:s + step] = part
        if out is None:  # no rows at all
            out = _kd_rows(student_lprobs, teacher_ids, teacher_probs, temperature)
        ctx.temperature, ctx.step = temperature, step
        ctx.save_for_backward(student_lprobs, teacher_ids, teacher_probs)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        lprobs, teacher_ids, teacher_probs = ctx.saved_tensors
        tau, step = ctx.temperature, ctx.step
        grad = torch.empty(lprobs.shape, dtype=lprobs.dtype, device=lprobs.device)
        # the same operations, in the same order, as autograd applies to _kd_rows, a chunk at a time
        for s in range(0, lprobs.size(0), step):
            q = tempered_teacher(teacher_probs[s:s + step], tau)
            g = grad[s:s + step]
            coef = grad_out[s:s + step, None] * -(tau**2)
            if teacher_ids is None:
                torch.mul(q, coef, out=g)
            else:
                g.zero_().scatter_add_(-1, teacher_ids[s:s + step].long(), q * coef)
            if tau != 1.0:  # back through log_softmax(x / tau)
                p = torch.softmax(lprobs[s:s + step] / tau, dim=-1)
                g.addcmul_(p, g.sum(dim=-1, keepdim=True), value=-1.0).div_(tau)
        return grad, None, None, None


def kd_cross_entropy(
    student_lprobs: torch.Tensor,
    teacher_ids: torch.Tensor | None,
    teacher_probs: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per position tau^2 * H(q_tau, p_tau); ``teacher_ids=None`` means the probs cover the vocabulary.

    ``student_lprobs`` (..., V) are the student's log-probabilities at temperature 1. The teacher
    side is renormalised over the entries given, so a top-k cache yields the teacher's
    distribution restricted to its k most probable tokens.
    """
    if (teacher_ids is not None and temperature == 1.0) or teacher_probs.requires_grad:
        # (N, k) work only; or a teacher that is itself trained: plain autograd
        return _kd_rows(student_lprobs, teacher_ids, teacher_probs, temperature)
    # a full-vocabulary teacher, or log_softmax over the vocabulary at tau != 1: (N, V) work, in chunks
    vocab, k = student_lprobs.size(-1), teacher_probs.size(-1)
    ids = None if teacher_ids is None else teacher_ids.reshape(-1, k)
    kd = _ChunkedKD.apply(student_lprobs.reshape(-1, vocab), ids, teacher_probs.reshape(-1, k), temperature)
    return kd.view(student_lprobs.shape[:-1])


def word_kd_loss(
    student_lprobs: torch.Tensor,
    teacher_ids: torch.Tensor | None,
    teacher_probs: torch.Tensor | None,
    target: torch.Tensor,
    pad: int,
    alpha: float,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    reduce: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, nll_loss, kd_loss) of word-level KD; ``teacher_probs=None`` skips KD (loss = LS-NLL).

    Shapes: student_lprobs (..., V) log-probs, target (...), teacher_ids/probs (..., k), or
    teacher_probs (..., V) with teacher_ids None. Positions where target == pad are ignored.
    """
    vocab = student_lprobs.size(-1)
    lprobs = student_lprobs.reshape(-1, vocab)
    target = target.reshape(-1)
    ls_loss, nll_loss = label_smoothed_nll_loss(lprobs, target, label_smoothing, ignore_index=pad,
                                                reduce=reduce)
    if teacher_probs is None:
        return ls_loss, nll_loss, None
    k = teacher_probs.size(-1)
    ids = None if teacher_ids is None else teacher_ids.reshape(-1, k)
    kd = kd_cross_entropy(lprobs, ids, teacher_probs.reshape(-1, k), temperature)
    kd = kd.masked_fill(target.eq(pad), 0.0).unsqueeze(-1)  # (N, 1) like label_smoothed_nll_loss
    if reduce:
        kd = kd.sum()
    # alpha = 0 must reproduce label_smoothed_cross_entropy bit for bit
    loss = ls_loss if alpha == 0 else (1.0 - alpha) * ls_loss + alpha * kd
    return loss, nll_loss, kd


_ONLINE_TEACHER_FIX = (
    "Check that the checkpoint translates (fairseq-generate --path TEACHER.pt). If it does and this runs on a GPU "
    "under --fp16 or --amp, its activations overflow float16: build a teacher cache in float32 (`fairseq-seqkd "
    "cache` without --fp16) and train from it (--task translation_kd --teacher-cache DIR), or train without "
    "--fp16/--amp")


@register_criterion("word_kd", dataclass=WordKDConfig)
class WordKDCriterion(FairseqCriterion):
    """Label-smoothed NLL plus the cross-entropy to a teacher's (cached or online) distribution."""

    def __init__(self, task, sentence_avg, label_smoothing, kd_alpha, kd_temperature, kd_topk,
                 teacher_path, teacher_dict=None, teacher_dict_unchecked=False):
        super().__init__(task)
        if not 0.0 <= kd_alpha <= 1.0:
            raise UserError(f"--kd-alpha must lie in [0, 1], got {kd_alpha}")
        if kd_temperature <= 0:
            raise UserError(f"--kd-temperature must be positive, got {kd_temperature}")
        if kd_topk < 0:
            raise UserError(f"--kd-topk must be >= 0 (0: everything available), got {kd_topk}")
        self.sentence_avg = sentence_avg
        self.eps = label_smoothing
        self.alpha = kd_alpha
        self.temperature = kd_temperature
        self.topk = kd_topk
        # A plain list, not a submodule: the teacher must stay out of the optimizer, out of the
        # student's checkpoints and out of criterion.train().
        # Several for an ensemble (--teacher-path a.pt:b.pt).
        self._teacher: list[torch.nn.Module] = []
        self.teacher_path = teacher_path
        self._teacher_names: list[str] = []
        if teacher_path:
            paths = teacher_paths(teacher_path, "--teacher-path")
            self._teacher = load_teachers(paths, task, teacher_dict, teacher_dict_unchecked)
            self._teacher_names = teacher_names(paths, "word_kd's online teacher ")
            logger.info("word_kd: online teacher %s loaded (eval mode, no grad%s)", teacher_path,
                        f"; an ensemble of {len(paths)}, probabilities averaged" if len(paths) > 1 else "")

    def teacher_distribution(self, model, sample) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(ids, float32 probs) from the sample's cached top-k, else from the online teacher, else (None, None)."""
        if TEACHER_LOGITS_KEY in sample:
            ids, logits = sample[TEACHER_IDS_KEY], sample[TEACHER_LOGITS_KEY]
            if ids.shape[:2] != sample["target"].shape:
                raise UserError(f"teacher cache batch of shape {tuple(ids.shape)} does not line up with "
                                f"the target {tuple(sample['target'].shape)}")
            if self.topk:
                if self.topk > ids.size(-1):
                    raise UserError(f"--kd-topk {self.topk} exceeds the k={ids.size(-1)} the teacher cache "
                                    "holds: lower --kd-topk or rebuild the cache with a larger --topk")
                ids, logits = ids[..., : self.topk], logits[..., : self.topk]
            return ids, torch.softmax(logits.float(), dim=-1)
        if self._teacher:
            param = next(model.parameters())
            for teacher in self._teacher:
                if next(teacher.parameters()).device != param.device:
                    teacher.to(device=param.device)  # its weights stay float32 whatever the student's dtype
            with teacher_autocast(param.device, param.dtype):  # each member checked before the average
                ids, lprobs = teacher_topk(self._teacher, self._teacher_names, sample["net_input"], self.topk,
                                           _ONLINE_TEACHER_FIX)
            return ids, lprobs.float().exp()
        return None, None

    def forward(self, model, sample, reduce=True):
        """Compute the loss for the given sample: (loss, sample_size, logging_output)."""
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        target = model.get_targets(sample, net_output)
        ids, probs = self.teacher_distribution(model, sample)
        if probs is None and model.training and self.alpha > 0:
            raise UserError("criterion word_kd has no teacher for this training batch: pass "
                            "--task translation_kd --teacher-cache DIR (see `fairseq-seqkd cache`) "
                            "or --teacher-path TEACHER_CHECKPOINT")
        loss, nll_loss, kd_loss = word_kd_loss(lprobs, ids, probs, target, self.padding_idx, self.alpha,
                                               self.temperature, self.eps, reduce=reduce)
        ntokens = sample["ntokens"]
        sample_size = sample["target"].size(0) if self.sentence_avg else ntokens
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": ntokens,
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if kd_loss is not None:
            logging_output["kd_loss"] = kd_loss.data
            logging_output["kd_ntokens"] = ntokens
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs: loss per sample_size, nll and kd per token (base 2), ppl."""
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        nll_loss_sum = sum(log.get("nll_loss", 0) for log in logging_outputs)
        kd_loss_sum = sum(log.get("kd_loss", 0) for log in logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        kd_ntokens = sum(log.get("kd_ntokens", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", nll_loss_sum / ntokens / math.log(2), ntokens, round=3)
        if kd_ntokens > 0:
            metrics.log_scalar("kd_loss", kd_loss_sum / kd_ntokens / math.log(2), kd_ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        """Logging outputs are plain sums, so workers' outputs can be summed before reduce_metrics."""
        return True
