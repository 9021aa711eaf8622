"""Magnitude pruning as in See et al. (2016), which Kim & Rush (2016) follow for their students.

Weights are grouped into *classes*; a boolean keep-mask per prunable weight matrix says which
entries survive. Three schemes choose the masks:

- ``class-blind``: one threshold over all prunable weights: the ``ratio`` smallest magnitudes
  in the whole model go (See et al.'s best scheme, the one the paper uses);
- ``class-uniform``: the same fraction ``ratio`` goes from every class;
- ``class-distribution``: in class c, weights with ``|w| < lambda * std_c`` go; lambda is
  given, or solved so that ``ratio`` of all prunable weights go.

A class is one weight matrix of one layer: See et al.'s classes are per layer and per role
(source/target embeddings, each LSTM layer, attention, softmax); in a transformer each layer
has several roles, so its q/k/v/out projections and fc1/fc2 are separate classes, e.g.
``encoder.layers.0.self_attn.q_proj``. The two weight matrices of one ``nn.LSTM`` layer
(input-hidden and hidden-hidden) form one class, ``encoder.lstm.l0``, as in See et al.

Prunable by default: every floating-point weight matrix (2 or more dimensions), embeddings
and the output projection included, because the paper counts and prunes all parameters (its
"13 times fewer parameters"). Never pruned: biases and layer norms (vectors: under 1% of the
parameters, and their values are not on the scale of the weight matrices) and positional
embeddings (position-specific, not vocabulary weights). ``keep_embeddings`` spares the token
embeddings (and an output projection tied to them); ``exclude`` spares names by regex.

The functions work on any ``(name, tensor)`` mapping: a model's parameters during training or
a checkpoint's state dict offline. Parameters shared under several names (tied embeddings)
are counted and masked once, under their first name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from fairseq_seqkd.errors import UserError

SCHEMES = ("class-blind", "class-uniform", "class-distribution")
# where masks live in a checkpoint: extra_state[<task class name>][CHECKPOINT_KEY]
CHECKPOINT_KEY = "pruning"
DEFAULT_TASK_KEY = "TranslationKDTask"

_LSTM_LAYER = re.compile(r"\.weight_(?:ih|hh)_l(\d+)(_reverse)?$")  # torch.nn.LSTM
_LSTM_CELL = re.compile(r"\.weight_(?:ih|hh)$")  # torch.nn.LSTMCell (fairseq's LSTM decoder)
_NOT_PARAMETERS = (".version", "_float_tensor")  # buffers fairseq keeps in its state dicts
_LAYER_INDEX = re.compile(r"\.layers\.\d+\.|\.l\d+(?=$|_)")


@dataclass(frozen=True)
class PruneSpec:
    """What to prune and how: the options of ``--prune-*`` and ``fairseq-seqkd prune``."""

    ratio: float
    scheme: str = "class-blind"
    lam: float = 0.0  # class-distribution: > 0 fixes lambda, 0 solves it from ratio
    keep_embeddings: bool = False
    exclude: str | None = None  # regex on parameter names never pruned

    def validate(self, where: str = "pruning options") -> None:
        """Raise UserError for an unknown scheme or an out-of-range ratio or lambda."""
        if self.scheme not in SCHEMES:
            raise UserError(f"{where}: unknown pruning scheme {self.scheme!r}; "
                            f"use one of {', '.join(SCHEMES)}")
        if not 0.0 <= self.ratio < 1.0:
            raise UserError(f"{where}: prune ratio {self.ratio} must be in [0, 1), e.g. 0.8 to prune 80%")
        if self.lam < 0:
            raise UserError(f"{where}: prune lambda {self.lam} must be >= 0")
        if self.lam > 0 and self.scheme != "class-distribution":
            raise UserError(f"{where}: a prune lambda only applies to --prune-scheme class-distribution")
        if self.exclude:
            try:
                re.compile(self.exclude)
            except re.error as e:
                raise UserError(f"{where}: bad exclude regex {self.exclude!r}: {e}") from e

    @property
    def active(self) -> bool:
        """Whether these options prune anything."""
        return self.ratio > 0 or self.lam > 0

    def as_dict(self) -> dict:
        """Plain-container form, stored next to the masks in a checkpoint."""
        return {"ratio": float(self.ratio), "scheme": self.scheme, "lambda": float(self.lam),
                "keep_embeddings": bool(self.keep_embeddings), "exclude": self.exclude}


def parameter_class(name: str) -> str:
    """The See et al. class of a weight: its layer and role, e.g. ``decoder.layers.1.fc2``."""
    m = _LSTM_LAYER.search(name)
    if m:
        return name[: m.start()] + f".l{m.group(1)}{m.group(2) or ''}"
    if _LSTM_CELL.search(name):
        return _LSTM_CELL.sub("", name)
    return name[: -len(".weight")] if name.endswith(".weight") else name


def class_kind(cls: str) -> str:
    """A class with its layer index wildcarded, to summarize over layers: ``decoder.layers.*.fc2``."""
    return _LAYER_INDEX.sub(lambda m: ".layers.*." if m.group(0).startswith(".layers") else ".l*", cls)


def is_prunable(name: str, tensor: torch.Tensor, keep_embeddings: bool = False,
                exclude: str | None = None) -> bool:
    """The default prunable set: weight matrices, never biases, norms or positional embeddings."""
    if not torch.is_tensor(tensor) or not tensor.is_floating_point() or tensor.dim() < 2:
        return False
    if "embed_positions" in name:
        return False
    if keep_embeddings and "embed_tokens" in name:
        return False
    return not (exclude and re.search(exclude, name))


def prunable_parameters(named: Iterable[tuple[str, torch.Tensor]], keep_embeddings: bool = False,
                        exclude: str | None = None) -> dict[str, torch.Tensor]:
    """The prunable tensors by name, each shared tensor once (under its first name)."""
    seen: dict[tuple, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in named:
        if not torch.is_tensor(t):
            continue
        key = _storage_key(t)
        if key in seen:
            # a tied alias (e.g. decoder.embed_tokens = encoder.embed_tokens): its first name decides
            continue
        seen[key] = name
        if is_prunable(name, t, keep_embeddings, exclude):
            out[name] = t
    return out


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))


def group_by_class(names: Iterable[str]) -> dict[str, list[str]]:
    """Parameter names grouped by :func:`parameter_class`, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(parameter_class(n), []).append(n)
    return groups


def _keep_all_but_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A keep-mask over a 1-D tensor that drops exactly its ``k`` smallest entries (ties by index)."""
    n = scores.numel()
    if k <= 0:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    threshold = torch.kthvalue(scores.float().cpu(), k).values.to(scores.device)
    keep = scores > threshold
    # more than k entries tie at or under the threshold (e.g. weights already zero): keep the
    # surplus ties, the last ones by index, so that exactly k go
    surplus = int((~keep).sum()) - k
    if surplus > 0:
        ties = torch.nonzero(scores == threshold).flatten()
        keep[ties[-surplus:]] = True
    return keep


def _split(flat: torch.Tensor, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, t in params.items():
        out[name] = flat[start:start + t.numel()].view(t.shape)
        start += t.numel()
    return out


def _flat_abs(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().abs().flatten().float() for t in params.values()])


def class_std(params: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Standard deviation of each class's weights (See et al.'s sigma_c)."""
    return {cls: float(torch.cat([params[n].detach().flatten().float() for n in names]).std())
            for cls, names in group_by_class(params).items()}


def _distribution_scores(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``|w| / std_c``: class-distribution prunes a weight when this is under lambda."""
    std = class_std(params)
    # a class of identical weights has std 0: nothing in it is "small", never prune it first
    return {n: t.detach().abs().float() / std[parameter_class(n)] if std[parameter_class(n)] > 0
            else torch.full_like(t, float("inf"), dtype=torch.float) for n, t in params.items()}


def solve_lambda(params: Mapping[str, torch.Tensor], ratio: float) -> float:
    """The lambda at which class-distribution prunes ``ratio`` of all prunable weights."""
    scores = torch.cat([s.flatten() for s in _distribution_scores(params).values()])
    k = round(ratio * scores.numel())
    if k <= 0:
        return 0.0
    return float(torch.kthvalue(scores.cpu(), min(k, scores.numel())).values)


def gradual_ratio(final: float, update: int, ramp: int, interval: int = 1) -> float:
    """The fraction pruned after ``update`` updates under Zhu & Gupta (2017)'s gradual schedule.

    It rises from 0 to ``final`` over ``ramp`` updates, fast at first and slowly near the end,
    ``s_t = final * (1 - (1 - t / ramp) ** 3)``, in steps every ``interval`` updates (the masks are
    recomputed that often), and stays at ``final`` afterwards. ``ramp`` 0: ``final`` at once.
    """
    if ramp <= 0:
        return final
    t = min(ramp, (update // interval) * interval)
    return final * (1.0 - (1.0 - t / ramp) ** 3)


def compute_masks(params: Mapping[str, torch.Tensor], spec: PruneSpec) -> dict[str, torch.Tensor]:
    """Keep-masks (bool, True = kept) for the prunable ``params`` under ``spec``'s scheme."""
    spec.validate()
    if not params:
        raise UserError("no prunable parameters (all excluded?): check --prune-exclude and "
                        "--prune-keep-embeddings")
    if spec.scheme == "class-blind":
        flat = _flat_abs(params)
        return _split(_keep_all_but_smallest(flat, round(spec.ratio * flat.numel())), params)
    if spec.scheme == "class-uniform":
        masks: dict[str, torch.Tensor] = {}
        for names in group_by_class(params).values():
            group = {n: params[n] for n in names}
            flat = _flat_abs(group)
            masks.update(_split(_keep_all_but_smallest(flat, round(spec.ratio * flat.numel())), group))
        return masks
    scores = _distribution_scores(params)
    if spec.lam > 0:
        return {n: s >= spec.lam for n, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    return _split(_keep_all_but_smallest(flat, round(spec.ratio * flat.numel())), params)


def pruned_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The complements of keep-masks (True = pruned): made once, reused at every step."""
    return {n: ~m for n, m in masks.items()}


@torch.no_grad()
def zero_pruned(params: Mapping[str, torch.Tensor], pruned: Mapping[str, torch.Tensor]) -> None:
    """Zero in place the entries that ``pruned`` marks (exactly 0.0); allocates nothing per call."""
    for name, mask in pruned.items():
        params[name].masked_fill_(mask, 0.0)


def apply_masks(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries of keep-``masks`` in place (exactly 0.0, whatever the weight was)."""
    zero_pruned(params, {n: ~m.to(params[n].device) for n, m in masks.items()})


def check_masks(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``masks`` do not fit ``params`` (names or shapes differ), or None when they fit."""
    if set(params) != set(masks):
        missing = sorted(set(params) - set(masks))[:3]
        extra = sorted(set(masks) - set(params))[:3]
        return f"parameter names differ (no mask for {missing}, mask without parameter {extra})"
    for name, t in params.items():
        if tuple(masks[name].shape) != tuple(t.shape):
            return f"{name}: mask shape {tuple(masks[name].shape)} != weight shape {tuple(t.shape)}"
    return None


# ---- masks in a checkpoint: packed 8 per byte, plain tensors and containers only ----

def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask packed 8 entries per uint8 byte (little-endian bits), flattened."""
    flat = mask.detach().flatten().to(device="cpu", dtype=torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`pack_mask`."""
    bits = (packed.to(torch.uint8).unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
    n = 1
    for d in shape:
        n *= int(d)
    return bits.flatten()[:n].bool().view(*shape)


def masks_to_state(masks: Mapping[str, torch.Tensor], spec: PruneSpec) -> dict:
    """Masks and the options that made them, as a checkpoint entry (tensors and plain values)."""
    return {"spec": spec.as_dict(),
            "masks": {n: {"shape": list(m.shape), "bits": pack_mask(m)} for n, m in masks.items()}}


def masks_from_state(state: Mapping) -> tuple[dict[str, torch.Tensor], dict]:
    """The masks and their spec dict from :func:`masks_to_state` output."""
    masks = {n: unpack_mask(e["bits"], e["shape"]) for n, e in state["masks"].items()}
    return masks, dict(state.get("spec", {}))


def find_checkpoint_masks(ckpt: Mapping) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Masks stored in a fairseq checkpoint dict (any task's extra_state entry), or None."""
    extra = ckpt.get("extra_state") or {}
    for value in extra.values():
        if isinstance(value, Mapping) and CHECKPOINT_KEY in value:
            return masks_from_state(value[CHECKPOINT_KEY])
    return None


# ---- the report ----

def sparsity_report(named: Iterable[tuple[str, torch.Tensor]], keep_embeddings: bool = False,
                    exclude: str | None = None) -> dict:
    """Per-class and overall counts of weights and exact zeros, measured on the tensors."""
    named = list(named)
    prunable = prunable_parameters(named, keep_embeddings, exclude)
    tied = tied_names(named)
    classes = []
    for cls, names in group_by_class(prunable).items():
        total = sum(prunable[n].numel() for n in names)
        zeros = sum(int((prunable[n] == 0).sum()) for n in names)
        aliases = [parameter_class(a) for n in names for a in tied.get(n, [])]
        label = f"{cls} (tied: {', '.join(aliases)})" if aliases else cls
        classes.append({"class": label, "params": total, "zeros": zeros, "sparsity": zeros / total})
    # every parameter once (tied aliases once), without fairseq's bookkeeping buffers
    every = {n: t for n, t in _unique(named).items()
             if t.is_floating_point() and not n.endswith(_NOT_PARAMETERS)}
    total_all = sum(t.numel() for t in every.values())
    zeros_all = sum(int((t == 0).sum()) for t in every.values())
    p_total = sum(c["params"] for c in classes)
    p_zeros = sum(c["zeros"] for c in classes)
    return {
        "classes": classes,
        "prunable_params": p_total,
        "prunable_zeros": p_zeros,
        "prunable_sparsity": p_zeros / p_total if p_total else 0.0,
        "params": total_all,
        "nonzero_params": total_all - zeros_all,
        "sparsity": zeros_all / total_all if total_all else 0.0,
    }


def tied_names(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, list[str]]:
    """For each tensor shared under several names, its first name -> the other names."""
    first: dict[tuple, str] = {}
    out: dict[str, list[str]] = {}
    for name, t in named:
        if not torch.is_tensor(t):
            continue
        key = _storage_key(t)
        if key in first:
            out.setdefault(first[key], []).append(name)
        else:
            first[key] = name
    return out


def _unique(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    seen, out = set(), {}
    for name, t in named:
        if torch.is_tensor(t) and _storage_key(t) not in seen:
            seen.add(_storage_key(t))
            out[name] = t
    return out


def format_report(report: Mapping, by_kind: bool = False) -> str:
    """The report as a text table; ``by_kind`` sums classes over layers."""
    rows = report["classes"]
    if by_kind:
        merged: dict[str, list[int]] = {}
        for r in rows:
            acc = merged.setdefault(class_kind(r["class"]), [0, 0])
            acc[0] += r["params"]
            acc[1] += r["zeros"]
        rows = [{"class": k, "params": p, "zeros": z, "sparsity": z / p} for k, (p, z) in merged.items()]
    width = max([len(r["class"]) for r in rows] + [len("class")])
    lines = [f"{'class':<{width}}  {'params':>10}  {'zeros':>10}  sparsity"]
    lines += [f"{r['class']:<{width}}  {r['params']:>10}  {r['zeros']:>10}  {r['sparsity']:8.2%}"
              for r in rows]
    lines.append(f"{'prunable (all classes)':<{width}}  {report['prunable_params']:>10}  "
                 f"{report['prunable_zeros']:>10}  {report['prunable_sparsity']:8.2%}")
    lines.append(f"{'all parameters':<{width}}  {report['params']:>10}  "
                 f"{report['params'] - report['nonzero_params']:>10}  {report['sparsity']:8.2%}")
    return "\n".join(lines)


# ---- offline: prune a checkpoint file ----

def prune_state_dict(model_state: Mapping[str, torch.Tensor], spec: PruneSpec) -> dict[str, torch.Tensor]:
    """Compute masks on a model state dict and zero its pruned weights in place; return the masks."""
    params = prunable_parameters(model_state.items(), spec.keep_embeddings, spec.exclude)
    masks = compute_masks(params, spec)
    apply_masks(params, masks)
    return masks


def prune_checkpoint(path: str, out: str, spec: PruneSpec, task_key: str = DEFAULT_TASK_KEY) -> dict:
    """Prune a fairseq checkpoint file offline; write it with its masks; return the sparsity report.

    The masks go where the ``translation_kd`` task keeps them (``extra_state[task_key]``), so a
    ``fairseq-train --task translation_kd --restore-file OUT`` with the same options retrains with them.
    """
    from fairseq_seqkd.checkpoints.storage import load_checkpoint, save_checkpoint

    spec.validate(where=path)
    ckpt = load_checkpoint(path)
    masks = prune_state_dict(ckpt["model"], spec)
    extra = ckpt.setdefault("extra_state", {}) or {}
    ckpt["extra_state"] = extra
    extra.setdefault(task_key, {})[CHECKPOINT_KEY] = masks_to_state(masks, spec)
    save_checkpoint(ckpt, out)
    return sparsity_report(ckpt["model"].items(), spec.keep_embeddings, spec.exclude)
