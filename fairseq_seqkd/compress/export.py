"""Ship a student: a plain fairseq checkpoint (masks folded in, no plugin state) and CTranslate2.

The plain checkpoint holds only tensors, dicts, lists and plain scalars, so it loads with
``torch.load(..., weights_only=True)`` and in stock ``fairseq-generate`` without ``--user-dir``:
the config is converted to plain containers, the task becomes ``translation`` (keeping only
TranslationConfig's fields), a plugin criterion becomes ``cross_entropy``, ``user_dir`` is
cleared, and the optimizer state, metrics and task state are dropped (fine-tune it with
``--finetune-from-model`` or ``--restore-file ... --reset-optimizer``).

CTranslate2 conversion goes through ``ctranslate2.converters.FairseqConverter``: fairseq
transformers only (CTranslate2 has no fairseq LSTM); the converter reads the model options as an
``argparse.Namespace``, so it is given a temporary copy of the plain checkpoint in that form.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping

import torch

from fairseq_seqkd.checkpoints.storage import load_checkpoint, save_checkpoint
from fairseq_seqkd.compress.pruning import apply_masks, check_masks, find_checkpoint_masks, prunable_parameters
from fairseq_seqkd.errors import UserError

QUANTIZATIONS = ("int8", "float32", "int8_float32", "int16", "float16", "bfloat16", "int8_float16")
# extra_state entries fairseq itself needs to resume or fine-tune; the rest is plugin or log state
_KEEP_EXTRA_STATE = ("train_iterator", "val_loss", "best", "previous_training_time")


def fold_masks(ckpt: dict) -> bool:
    """Zero the pruned weights of ``ckpt['model']`` from its stored masks; False when it has none."""
    found = find_checkpoint_masks(ckpt)
    if found is None:
        return False
    masks, _spec = found
    params = prunable_parameters(ckpt["model"].items())
    params = {n: params[n] for n in masks if n in params}
    problem = check_masks(params, masks)
    if problem:
        raise UserError(f"the checkpoint's pruning masks do not fit its model ({problem}); "
                        "was it edited by hand? Re-prune it with `fairseq-seqkd prune`")
    apply_masks(params, masks)
    return True


def _to_plain(obj, where: str = "checkpoint"):
    """A copy of ``obj`` with only dicts, lists, plain scalars and tensors (Namespaces become dicts)."""
    if torch.is_tensor(obj):
        return obj
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return [_to_plain(v, where) for v in sorted(obj, key=str)]
    if hasattr(obj, "value") and hasattr(obj, "name"):  # enums, e.g. fairseq's ChoiceEnum values
        return _to_plain(obj.value, where)
    raise UserError(f"{where}: a {type(obj).__name__} cannot go into a plain checkpoint; "
                    "report this with the command that wrote the checkpoint")


def assert_plain(obj, where: str = "checkpoint") -> None:
    """Raise ValueError unless ``obj`` holds only dicts, lists, plain scalars and tensors."""
    if torch.is_tensor(obj) or obj is None or type(obj) in (bool, int, float, str):
        return
    if type(obj) is dict:
        for k, v in obj.items():
            if type(k) is not str:
                raise ValueError(f"{where}: key {k!r} is a {type(k).__name__}")
            assert_plain(v, f"{where}.{k}")
        return
    if type(obj) is list:
        for i, v in enumerate(obj):
            assert_plain(v, f"{where}[{i}]")
        return
    raise ValueError(f"{where}: {type(obj).__module__}.{type(obj).__name__} is not a plain type")


def _config(ckpt: dict) -> dict:
    """The checkpoint's config as plain nested dicts (old ``args``-only checkpoints included)."""
    if ckpt.get("cfg") is not None:
        cfg = ckpt["cfg"]
        try:
            from omegaconf import OmegaConf

            if OmegaConf.is_config(cfg):
                cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        except ImportError:  # pragma: no cover
            pass
        return _to_plain(cfg, "cfg")
    if ckpt.get("args") is not None:
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from omegaconf import OmegaConf

        cfg = convert_namespace_to_omegaconf(ckpt["args"])
        return _to_plain(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "cfg")
    raise UserError("the checkpoint has neither 'cfg' nor 'args': not written by fairseq-train?")


def _is_stock(registry: Mapping, name: str | None) -> bool:
    cls = registry.get(name) if name else None
    return cls is not None and cls.__module__.startswith("fairseq.")


def plain_config(cfg: dict) -> dict:
    """``cfg`` made loadable by stock fairseq: task ``translation``, stock criterion, no user_dir."""
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.tasks.translation import TranslationConfig

    cfg = dict(cfg)
    translation_fields = {f.name for f in dataclasses.fields(TranslationConfig)}
    task = dict(cfg.get("task") or {})
    cfg["task"] = {k: v for k, v in task.items() if k in translation_fields}
    cfg["task"]["_name"] = "translation"
    crit = dict(cfg.get("criterion") or {})
    if not _is_stock(CRITERION_REGISTRY, crit.get("_name")):
        cfg["criterion"] = {"_name": "cross_entropy", "sentence_avg": False}
    cfg["common"] = {**(cfg.get("common") or {}), "user_dir": None}
    model = cfg.get("model")
    if isinstance(model, dict):
        # legacy architectures keep every command-line option in cfg.model: clear the plugin's
        plugin = plugin_option_names() - translation_fields
        model = {k: v for k, v in model.items() if k not in plugin}
        model.update({"user_dir": None, "task": "translation"})
        if "criterion" in model:
            model["criterion"] = cfg["criterion"]["_name"]
        cfg["model"] = model
    return cfg


def plugin_option_names() -> set[str]:
    """Option names of this plugin's registered tasks and criterions (meaningless to stock fairseq)."""
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    from fairseq_seqkd import register

    register()
    names: set[str] = set()
    for registry in (TASK_DATACLASS_REGISTRY, CRITERION_DATACLASS_REGISTRY):
        for dc in registry.values():
            if dc.__module__.startswith("fairseq_seqkd."):
                names |= {f.name for f in dataclasses.fields(dc)}
    return names


def plain_checkpoint(ckpt: dict) -> dict:
    """A plain, plugin-free fairseq checkpoint from a loaded one (masks folded into the weights)."""
    fold_masks(ckpt)
    history = ckpt.get("optimizer_history") or [{}]
    last = history[-1]
    extra = ckpt.get("extra_state") or {}
    plain = {
        "args": None,
        "cfg": plain_config(_config(ckpt)),
        "model": {k: v.detach().cpu() for k, v in ckpt["model"].items() if torch.is_tensor(v)},
        "criterion": None,
        "optimizer_history": [{
            "criterion_name": "CrossEntropyCriterion",
            "optimizer_name": str(last.get("optimizer_name", "FairseqAdam")),
            "lr_scheduler_state": _to_plain(last.get("lr_scheduler_state", {}), "lr_scheduler_state"),
            "num_updates": int(last.get("num_updates", 0)),
        }],
        "task_state": {},
        "extra_state": _to_plain({k: extra[k] for k in _KEEP_EXTRA_STATE if k in extra}, "extra_state"),
    }
    assert_plain(plain)
    return plain


def parameter_counts(model_state: Mapping[str, torch.Tensor]) -> dict:
    """Parameters and non-zero parameters, each tied tensor once, fairseq's buffers excluded."""
    from fairseq_seqkd.compress.pruning import sparsity_report

    report = sparsity_report(model_state.items())
    return {"params": report["params"], "nonzero_params": report["nonzero_params"]}


def model_arch(cfg: dict) -> tuple[str, str]:
    """(arch, fairseq model name) of a plain config, e.g. ('transformer_iwslt_de_en', 'transformer')."""
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY

    model = cfg.get("model") or {}
    arch = model.get("arch") or model.get("_name")
    return str(arch), ARCH_MODEL_NAME_REGISTRY.get(arch, str(arch))


def _language_pair(cfg: dict, data_dir: str, source_lang: str | None,
                   target_lang: str | None) -> tuple[str, str]:
    from fairseq.data.data_utils import infer_language_pair

    task = cfg.get("task") or {}
    src = source_lang or task.get("source_lang")
    tgt = target_lang or task.get("target_lang")
    if not (src and tgt):
        inferred = infer_language_pair(data_dir)
        src, tgt = src or inferred[0], tgt or inferred[1]
    if not (src and tgt):
        raise UserError(f"{data_dir}: cannot tell the language pair (no train.SRC-TGT.* files): "
                        "give --source-lang and --target-lang")
    for lang in (src, tgt):
        if not os.path.isfile(os.path.join(data_dir, f"dict.{lang}.txt")):
            raise UserError(f"{data_dir}: no dict.{lang}.txt; pass the fairseq-preprocess output the model "
                            "was trained on with --data")
    return src, tgt


def ct2_inputs(plain: dict, data_dir: str | None = None, source_lang: str | None = None,
               target_lang: str | None = None) -> tuple[str, str, str]:
    """(data folder, source, target language) for converting ``plain``; UserError if it cannot be."""
    cfg = plain["cfg"]
    arch, model_name = model_arch(cfg)
    if model_name != "transformer":
        raise UserError(f"CTranslate2 converts fairseq transformer models only; this checkpoint is a "
                        f"{model_name!r} model (--arch {arch}): export it without --ct2 and decode it "
                        "with fairseq-generate")
    data_dir = data_dir or (cfg.get("task") or {}).get("data")
    if not data_dir or not os.path.isdir(data_dir):
        raise UserError(f"the model's data folder {data_dir!r} (its dictionaries) is not there; "
                        "give the fairseq-preprocess output folder with --data")
    src, tgt = _language_pair(cfg, data_dir, source_lang, target_lang)
    return data_dir, src, tgt


def export_ct2(plain: dict, out_dir: str, quantization: str = "int8", data_dir: str | None = None,
               source_lang: str | None = None, target_lang: str | None = None) -> str:
    """Convert a plain checkpoint dict to a CTranslate2 model folder; return the folder."""
    try:
        from ctranslate2.converters import FairseqConverter
    except ImportError as e:  # pragma: no cover - ctranslate2 is in requirements.txt
        raise UserError("CTranslate2 is not installed: pip install ctranslate2==4.8.5") from e
    if quantization not in QUANTIZATIONS:
        raise UserError(f"unknown CTranslate2 quantization {quantization!r}; "
                        f"use one of {', '.join(QUANTIZATIONS)}")
    data_dir, src, tgt = ct2_inputs(plain, data_dir, source_lang, target_lang)
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".ct2-") as tmp:
        # the converter wants the options as a Namespace (checkpoint["args"]); this copy never
        # leaves the temporary folder, and it loads with weights_only because importing this
        # package registered argparse.Namespace with torch
        args = argparse.Namespace(**{**plain["cfg"]["model"], "task": "translation", "data": data_dir,
                                     "source_lang": src, "target_lang": tgt})
        converter_input = os.path.join(tmp, "model.pt")
        torch.save({"args": args, "cfg": None, "model": plain["model"]}, converter_input)
        staged = os.path.join(tmp, "ct2")
        FairseqConverter(converter_input, data_dir, source_lang=src, target_lang=tgt).convert(
            staged, quantization=quantization, force=True)
        old = None
        if os.path.exists(out_dir):
            old = os.path.join(tmp, "old")
            os.replace(out_dir, old)
        os.replace(staged, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    return out_dir


def export(path: str, out: str, ct2_dir: str | None = None, quantization: str = "int8",
           data_dir: str | None = None, source_lang: str | None = None,
           target_lang: str | None = None) -> dict:
    """``fairseq-seqkd export``: the plain checkpoint, and optionally its CTranslate2 model."""
    plain = plain_checkpoint(load_checkpoint(path))
    if ct2_dir:
        ct2_inputs(plain, data_dir, source_lang, target_lang)  # fail before writing anything
    save_checkpoint(plain, out)
    result = {"checkpoint": os.path.abspath(out), **parameter_counts(plain["model"])}
    if ct2_dir:
        result["ct2"] = export_ct2(plain, ct2_dir, quantization, data_dir, source_lang, target_lang)
        result["quantization"] = quantization
    return result
