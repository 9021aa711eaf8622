"""Pruning while retraining: the ``--prune-*`` options and the hooks that keep pruned weights at 0.

:class:`PruningMixin` goes in front of any fairseq translation task (``translation_kd`` has it)::

    @register_task("my_translation", dataclass=MyConfig)   # MyConfig(PruningConfig, TranslationConfig)
    class MyTask(PruningMixin, TranslationTask): ...

What it does, with fairseq's own hooks and no custom trainer:

- ``begin_epoch`` (called before the first update, after ``--restore-file`` loaded the weights):
  makes the masks once, by magnitude on the loaded weights (:mod:`fairseq_seqkd.compress.pruning`), and
  zeroes the pruned weights. In distributed training rank 0's masks are broadcast, so every
  rank holds the same masks.
- ``optimizer_step``: calls fairseq's step, then zeroes the pruned weights again, so they are
  exactly 0 after every update whatever the optimizer (Adam's moments, weight decay) did.
- ``get_checkpoint_dict``/``set_checkpoint_dict``: the masks go into every checkpoint, in
  ``extra_state[<task class name>]["pruning"]`` (packed bits). This is the task state fairseq
  restores when training resumes; ``task_state`` (``task.state_dict()``) is saved too, but
  fairseq 0.12's trainer does not load it on resume, so the masks are not kept there.

Gradual pruning (Zhu & Gupta 2017, ``--prune-ramp-updates N``): instead of all at once before
the first update, the pruned fraction rises from 0 to ``--prune-ratio`` over N updates on a cubic
schedule (:func:`fairseq_seqkd.compress.pruning.gradual_ratio`); every ``--prune-interval`` updates the
masks are recomputed by magnitude (the weights already at 0 are the smallest, so a pruned weight
stays pruned), and the network adapts between two steps.

On resume the stored masks are used when their options match the command line; otherwise
(new ratio or scheme: iterative pruning, or a resume with ``--reset-dataloader``, which skips
the task's checkpoint dict) they are recomputed from the weights, whose zeros are the smallest
magnitudes and so stay pruned.

With ``--fp16`` (not ``--memory-efficient-fp16``) fairseq keeps fp32 master weights that this
hook does not touch; the model's weights, which the forward pass and checkpoints see, are still
exactly 0 after every step.
"""

# no `from __future__ import annotations`: fairseq reads the config fields' types at runtime
import logging
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum

from fairseq_seqkd.compress.pruning import (
    CHECKPOINT_KEY,
    SCHEMES,
    PruneSpec,
    check_masks,
    compute_masks,
    format_report,
    gradual_ratio,
    masks_from_state,
    masks_to_state,
    pack_mask,
    prunable_parameters,
    pruned_masks,
    solve_lambda,
    sparsity_report,
    unpack_mask,
    zero_pruned,
)
from fairseq_seqkd.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class PruningConfig:
    """Options of magnitude pruning with retraining (See et al. 2016; Kim & Rush 2016, sec. 6)."""

    prune_ratio: float = field(
        default=0.0,
        metadata={"help": "fraction of the prunable weights to prune when training starts, by magnitude, "
                          "then keep at zero while retraining (0 = no pruning; the paper uses 0.8). "
                          "Start from the trained model with --restore-file MODEL --reset-optimizer"},
    )
    prune_scheme: ChoiceEnum(list(SCHEMES)) = field(
        default="class-blind",
        metadata={"help": "class-blind: one magnitude threshold over all prunable weights; class-uniform: "
                          "prune the same fraction of every class (one weight matrix of one layer); "
                          "class-distribution: prune |w| < lambda * std of its class"},
    )
    prune_lambda: float = field(
        default=0.0,
        metadata={"help": "class-distribution only: the lambda of |w| < lambda * std_class; 0 solves "
                          "lambda so that --prune-ratio of all prunable weights go"},
    )
    prune_keep_embeddings: bool = field(
        default=False,
        metadata={"help": "never prune the token embeddings (nor an output projection tied to them); by "
                          "default they are pruned like every weight matrix, as in the paper"},
    )
    prune_exclude: Optional[str] = field(  # noqa: UP007,UP045 (fairseq's argparse bridge needs typing.Optional)
        default=None,
        metadata={"help": "regex of parameter names never to prune (biases, layer norms and positional "
                          "embeddings never are)"},
    )
    prune_ramp_updates: int = field(
        default=0,
        metadata={"help": "gradual pruning (Zhu & Gupta 2017): raise the pruned fraction from 0 to "
                          "--prune-ratio over this many updates on a cubic schedule, then hold it; "
                          "0 prunes it all before the first update (See et al.)"},
    )
    prune_interval: int = field(
        default=100,
        metadata={"help": "with --prune-ramp-updates: recompute the masks every this many updates"},
    )


def prune_spec(cfg) -> PruneSpec:
    """The :class:`PruneSpec` of a config that has the :class:`PruningConfig` fields."""
    return PruneSpec(ratio=float(cfg.prune_ratio), scheme=str(cfg.prune_scheme), lam=float(cfg.prune_lambda),
                     keep_embeddings=bool(cfg.prune_keep_embeddings), exclude=cfg.prune_exclude or None)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # fairseq wraps the model for distributed training; masks are named as in the bare model
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def broadcast_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every data-parallel rank (a no-op without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return masks
    from fairseq.distributed import utils as dist_utils

    group = dist_utils.get_data_parallel_group()
    if dist_utils.get_world_size(group) <= 1:
        return masks
    names = sorted(masks)
    shapes = [masks[n].shape for n in names]
    device = next(iter(masks.values())).device
    packed = [pack_mask(masks[n]) for n in names] if dist_utils.get_rank(group) == 0 else None
    received = dist_utils.broadcast_tensors(packed, src_rank=0, group=group)
    return {n: unpack_mask(p.cpu(), s).to(device) for n, p, s in zip(names, received, shapes)}


def scheduled_spec(cfg, update_num: int) -> PruneSpec:
    """The pruning wanted after ``update_num`` updates: ``--prune-ratio``, or its gradual schedule."""
    spec = prune_spec(cfg)
    ramp, interval = int(cfg.prune_ramp_updates), int(cfg.prune_interval)
    if ramp < 0 or interval < 1:
        raise UserError(f"--prune-ramp-updates {ramp} must be >= 0 and --prune-interval {interval} >= 1")
    if ramp == 0:
        return spec
    if spec.lam > 0:
        raise UserError("--prune-ramp-updates schedules --prune-ratio; it does not apply to a fixed "
                        "--prune-lambda (leave --prune-lambda at 0 to solve it from the ratio)")
    return replace(spec, ratio=gradual_ratio(spec.ratio, update_num, ramp, interval))


class PruningMixin:
    """Task mixin: masks made at the start of training (or on a gradual schedule), re-applied after
    every optimizer step."""

    _prune_params: dict[str, torch.Tensor] | None = None
    # True = pruned (the complement of the keep-masks checkpoints store), made once: every
    # optimizer step zeroes with these and allocates nothing
    _prune_pruned: dict[str, torch.Tensor] | None = None
    _prune_spec: PruneSpec | None = None
    _prune_restored: dict | None = None

    def _prune_enabled(self) -> bool:
        return prune_spec(self.cfg).active

    def _ensure_masks(self, model: torch.nn.Module, spec: PruneSpec) -> None:
        """Make (or adopt restored) masks for ``spec`` unless they are made, and zero the pruned weights."""
        if self._prune_pruned is not None and spec == self._prune_spec:
            return
        spec.validate(where="--prune-* options")
        if not spec.active:  # a gradual schedule that has not started
            return
        params = prunable_parameters(_unwrap(model).named_parameters(remove_duplicate=False),
                                     spec.keep_embeddings, spec.exclude)
        masks = self._restored_masks(params, spec)
        if masks is None:
            masks = compute_masks(params, spec)
            how = f"scheme {spec.scheme}, ratio {spec.ratio:.4g}"
            if spec.scheme == "class-distribution":
                how += f", lambda {spec.lam or solve_lambda(params, spec.ratio):.4f}"
            logger.info(f"pruning: masks made from the current weights ({how})")
        masks = {n: m.to(params[n].device) for n, m in broadcast_masks(masks).items()}
        self._prune_params, self._prune_pruned, self._prune_spec = params, pruned_masks(masks), spec
        zero_pruned(params, self._prune_pruned)
        if spec == prune_spec(self.cfg):  # the final masks: their table; a gradual step: a line
            report = sparsity_report(_unwrap(model).named_parameters(remove_duplicate=False),
                                     spec.keep_embeddings, spec.exclude)
            logger.info("pruning: sparsity per class\n" + format_report(report, by_kind=True))

    def _restored_masks(self, params: dict[str, torch.Tensor], spec: PruneSpec) -> dict | None:
        if self._prune_restored is None:
            return None
        masks, stored = masks_from_state(self._prune_restored)
        self._prune_restored = None
        if stored != spec.as_dict():
            logger.info(f"pruning: the checkpoint's masks were made with {stored}, the options now are "
                        f"{spec.as_dict()}: recomputing them from the weights")
            return None
        problem = check_masks(params, masks)
        if problem:
            logger.warning(f"pruning: the checkpoint's masks do not fit this model ({problem}): "
                           "recomputing them from the weights")
            return None
        logger.info("pruning: masks restored from the checkpoint")
        return masks

    def begin_epoch(self, epoch, model):
        """fairseq hook: make the masks before the first update of this run."""
        super().begin_epoch(epoch, model)
        if self._prune_enabled() and not self.cfg.prune_ramp_updates:
            self._ensure_masks(model, prune_spec(self.cfg))

    def optimizer_step(self, optimizer, model, update_num):
        """fairseq hook: the optimizer's step, then the pruned weights back to exactly zero."""
        if self._prune_enabled():
            self._ensure_masks(model, scheduled_spec(self.cfg, update_num))
        super().optimizer_step(optimizer, model, update_num)
        if self._prune_pruned is not None:
            zero_pruned(self._prune_params, self._prune_pruned)

    def get_checkpoint_dict(self) -> dict:
        """fairseq hook: task state for ``extra_state``; the masks ride along under this class's name."""
        parent = getattr(super(), "get_checkpoint_dict", None)
        state = dict(parent()) if parent else {}
        if self._prune_pruned is not None:
            key = self.__class__.__name__
            keep = {n: ~m for n, m in self._prune_pruned.items()}  # once per checkpoint, not per step
            state[key] = {**state.get(key, {}), CHECKPOINT_KEY: masks_to_state(keep, self._prune_spec)}
        return state

    def set_checkpoint_dict(self, state: dict) -> None:
        """fairseq hook on resume: keep the stored masks until the model is there to check them."""
        parent = getattr(super(), "set_checkpoint_dict", None)
        if parent:
            parent(state)
        if self._prune_enabled() and CHECKPOINT_KEY in state:
            self._prune_restored = state[CHECKPOINT_KEY]
