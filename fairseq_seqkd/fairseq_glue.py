"""The fairseq glue shared by the cache builder, the word_kd criterion, the corpus code and benchmarks.

Task setup over a binarized folder, split loading as fairseq-train does it, loading a frozen
teacher (or an ensemble of them: ``a.pt:b.pt``, as fairseq-generate's ``--path`` takes it) checked
against the data's dictionary, running it (float32 weights, autocast in half precision on a GPU,
each member's output checked for non-finite values, an ensemble's members averaged as
probabilities) for its top-k, and a batch iterator over a range of sentences that loses none.
Nothing here knows the cache format or the KD loss.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from fairseq import checkpoint_utils, models, utils
from fairseq.data import BaseWrapperDataset, Dictionary, data_utils

from fairseq_seqkd.errors import UserError

logger = logging.getLogger(__name__)

# The sample keys through which a teacher distribution reaches the criterion: the top-k ids and
# the teacher's logits at them less the largest (log(p_i / p_1), float16, 0 first), whose softmax
# is the top-k distribution renormalised. Float16 survives fairseq's --fp16/--bf16 conversion of
# float32 sample tensors unchanged.
TEACHER_IDS_KEY = "teacher_topk_ids"
TEACHER_LOGITS_KEY = "teacher_topk_logits"
# fairseq's default --seed: the batch order of a sentence range depends only on it, so a resumed
# cache shard batches its sentences exactly as an uninterrupted build does
BATCH_ORDER_SEED = 1


# ----------------------------------------------------------------------------- data

def setup_translation_task(data: str, source_lang: str | None = None, target_lang: str | None = None):
    """fairseq's translation task over a binarized data folder, with fairseq's defaults."""
    from fairseq.tasks.translation import TranslationConfig, TranslationTask

    if not os.path.isdir(data):
        raise UserError(f"{data}: no such binarized data folder (the --destdir of fairseq-preprocess)")
    # the three fields fairseq fills from its dataset config get fairseq's defaults; no hydra
    # compose (a second of start-up) is needed for a task that only loads and batches data
    cfg = TranslationConfig(data=data, source_lang=source_lang, target_lang=target_lang, train_subset="train",
                            dataset_impl=None, required_seq_len_multiple=1)
    try:
        return TranslationTask.setup_task(cfg)
    except Exception as e:
        if "language pair" in str(e) or isinstance(e, FileNotFoundError):
            raise UserError(f"{data}: {e}; pass --source-lang and --target-lang") from e
        raise


def load_split(task, split: str):
    """Load ``split`` the way fairseq-train does (train subset combined with train1, ...)."""
    try:
        task.load_dataset(split, combine=split == task.cfg.train_subset)
    except FileNotFoundError as e:
        raise UserError(f"{task.cfg.data}: no binarized split '{split}' ({e})") from e
    return task.dataset(split)


def batch_order(dataset) -> np.ndarray:
    """The dataset's own (length-sorted) sentence order, drawn under a fixed seed: the same every run."""
    with data_utils.numpy_seed(BATCH_ORDER_SEED):
        return np.asarray(dataset.ordered_indices())


class _SentenceRange(BaseWrapperDataset):
    """The sentences [first, end) of a dataset, in the dataset's own (length-sorted) order.

    ``order`` (from :func:`batch_order`) saves sorting the whole dataset again for every range.
    """

    def __init__(self, dataset, first: int, end: int, order: np.ndarray | None = None):
        super().__init__(dataset)
        self.first, self.end, self.order = first, end, order

    def ordered_indices(self):
        indices = self.dataset.ordered_indices() if self.order is None else self.order
        return indices[(indices >= self.first) & (indices < self.end)]


def teacher_batches(task, teacher, dataset, first: int, end: int, max_tokens: int | None,
                    max_sentences: int | None, num_workers: int = 0, order: np.ndarray | None = None):
    """fairseq's batch iterator over sentences [first, end), losing none (batch multiple 1).

    ``teacher`` is one model or the members of an ensemble; sentences must fit every member.
    """
    members = teacher if isinstance(teacher, Sequence) else [teacher]
    try:
        itr = task.get_batch_iterator(
            dataset=_SentenceRange(dataset, first, end, order), max_tokens=max_tokens,
            max_sentences=max_sentences,
            max_positions=utils.resolve_max_positions(task.max_positions(),
                                                      *(m.max_positions() for m in members)),
            ignore_invalid_inputs=False, required_batch_size_multiple=1, num_workers=num_workers,
            seed=BATCH_ORDER_SEED, disable_iterator_cache=True)
    except Exception as e:
        if "invalid" in str(e) and "max_positions" in str(e):
            raise UserError(f"{task.cfg.data}: {e}. A teacher cache must cover every sentence: "
                            "drop over-long sentences from the data before binarizing it") from e
        raise
    return itr.next_epoch_itr(shuffle=False)


# ----------------------------------------------------------------------------- the teacher

def _dictionary_mismatch(expected: Dictionary, found: Dictionary) -> str | None:
    """A one-line description of how two dictionaries differ, or None when they are equal."""
    if expected.symbols == found.symbols:
        return None
    if len(expected) != len(found):
        return f"{len(found)} symbols instead of {len(expected)}"
    i = next(i for i, (a, b) in enumerate(zip(expected.symbols, found.symbols)) if a != b)
    return f"symbol {i} is {found.symbols[i]!r} instead of {expected.symbols[i]!r}"


def _teacher_vocab_size(state_dict: dict) -> int | None:
    for key in ("decoder.output_projection.weight", "decoder.embed_out", "decoder.embed_tokens.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return None


def _teacher_dict_file(cfg, data_target_lang: str | None) -> str | None:
    """The target dictionary the teacher was trained with, as its checkpoint names it (or None)."""
    teacher_data = utils.split_paths(cfg.task.data)[0] if cfg.task.get("data") else None
    tgt_lang = cfg.task.get("target_lang")
    if teacher_data and not tgt_lang and os.path.isdir(teacher_data):
        # fairseq saves the languages it inferred from the file names as None: infer them again
        tgt_lang = data_utils.infer_language_pair(teacher_data)[1]
    if not teacher_data:
        return None
    # a folder that is gone cannot tell its languages: the student's target language is the teacher's
    return os.path.join(teacher_data, f"dict.{tgt_lang or data_target_lang or '*'}.txt")


def check_teacher_dictionary(path: str, cfg, tgt_dict: Dictionary, teacher_dict: str | None = None,
                             unchecked: bool = False, target_lang: str | None = None) -> None:
    """Stop unless the teacher's target dictionary lists ``tgt_dict``'s symbols in the same order.

    A fairseq checkpoint stores neither its dictionary nor a hash of it, only the data folder it
    was trained on (``cfg.task.data``); the dictionary file is read from there, or from
    ``teacher_dict``. When neither is readable it is an error unless ``unchecked``: a teacher
    whose dictionary holds the same number of symbols in another order would teach a permuted
    distribution and no later check could notice.
    """
    if teacher_dict is not None and not os.path.isfile(teacher_dict):
        raise UserError(f"{teacher_dict}: no such file (--teacher-dict: the teacher's target dictionary, "
                        "the dict.LANG.txt of the data folder it was trained on)")
    dict_file = teacher_dict or _teacher_dict_file(cfg, target_lang)
    if dict_file and os.path.isfile(dict_file):
        diff = _dictionary_mismatch(tgt_dict, Dictionary.load(dict_file))
        if diff is not None:
            raise UserError(
                f"{path}: the teacher was trained with dictionary {dict_file}, which differs from "
                f"this data's target dictionary ({diff}). Binarize the data with the teacher's "
                "dictionary (fairseq-preprocess --tgtdict/--srcdict) or use the matching teacher.")
        return
    where = (f"its dictionary file {dict_file} (from the data folder in the checkpoint) is not readable"
             if dict_file else "the checkpoint names no data folder, so its dictionary is unknown")
    if unchecked:
        logger.warning("teacher %s: %s; only the vocabulary size was checked against the target "
                       "dictionary (--teacher-dict-unchecked)", path, where)
        return
    raise UserError(
        f"{path}: cannot check the teacher's dictionary: {where}. A teacher trained with the same number "
        "of symbols in another order would teach a permuted distribution. Pass the teacher's target "
        "dictionary with --teacher-dict PATH (the dict.LANG.txt of the folder it was trained on), or "
        "--teacher-dict-unchecked to accept it after checking only the vocabulary size.")


def load_teacher(path: str, task, state: dict | None = None, teacher_dict: str | None = None,
                 dict_unchecked: bool = False) -> torch.nn.Module:
    """Load a fairseq checkpoint as a frozen teacher (eval, no grad) over ``task``'s dictionaries.

    The teacher must have been trained with the task's target dictionary: its vocabulary size
    and its symbols are checked (see :func:`check_teacher_dictionary`).
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such teacher checkpoint; pass the teacher's checkpoint_best.pt "
                        "or checkpoint_last.pt")
    from fairseq_seqkd import register

    register()  # the teacher's checkpoint may name the plugin's task, criterion and user dir
    if state is None:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    cfg = state["cfg"]
    tgt_dict = task.target_dictionary
    size = _teacher_vocab_size(state["model"])
    if size is not None and size != len(tgt_dict):
        raise UserError(
            f"{path}: the teacher's output vocabulary has {size} entries but the target dictionary of "
            f"this data has {len(tgt_dict)}: the teacher was trained with another dictionary. "
            "Binarize the data with the teacher's dictionary (fairseq-preprocess --tgtdict/--srcdict "
            "TEACHER_DATA/dict.*.txt) or use the matching teacher.")
    check_teacher_dictionary(path, cfg, tgt_dict, teacher_dict, dict_unchecked,
                             getattr(getattr(task, "cfg", None), "target_lang", None))
    model = models.build_model(cfg.model, task)
    try:
        model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    except RuntimeError as e:
        raise UserError(f"{path}: the teacher's weights do not fit a model built over this data's "
                        f"dictionaries ({str(e).splitlines()[-1].strip()}); use the matching teacher "
                        "and data") from e
    model.eval()
    model.requires_grad_(False)
    return model


def load_teacher_for_data(data: str, teacher_path: str, source_lang: str | None = None,
                          target_lang: str | None = None, teacher_dict: str | None = None,
                          dict_unchecked: bool = False):
    """(task over ``data``, frozen teacher checked against its dictionaries, checkpoint state)."""
    if not os.path.isfile(teacher_path):
        raise UserError(f"{teacher_path}: no such teacher checkpoint")
    state = checkpoint_utils.load_checkpoint_to_cpu(teacher_path)
    cfg_task = state["cfg"].task
    task = setup_translation_task(data, source_lang or cfg_task.get("source_lang"),
                                  target_lang or cfg_task.get("target_lang"))
    return task, load_teacher(teacher_path, task, state, teacher_dict, dict_unchecked), state


# ----------------------------------------------------------------------------- an ensemble of teachers

def teacher_paths(path: str, option: str = "--path") -> list[str]:
    """The files of a ``--path``: one, or an ensemble's split on ':' as fairseq-generate splits them."""
    paths = utils.split_paths(path)
    if not path or any(not p for p in paths):
        raise UserError(f"{option} {path!r}: an empty path; give one file, or one per teacher of an ensemble "
                        "separated by ':' (a.pt:b.pt), as fairseq-generate takes them")
    return paths


def teacher_names(paths: Sequence[str], prefix: str = "") -> list[str]:
    """How errors name each teacher: its path, and for an ensemble which member it is."""
    if len(paths) == 1:
        return [f"{prefix}{paths[0]}"]
    return [f"{prefix}{p} (member {i} of the {len(paths)}-teacher ensemble)" for i, p in enumerate(paths, 1)]


def _member_dicts(teacher_dict: str | None, paths: Sequence[str]) -> list[str | None]:
    """``--teacher-dict`` per member: one file for all of them, or one per member separated by ':'."""
    if teacher_dict is None:
        return [None] * len(paths)
    given = teacher_paths(teacher_dict, "--teacher-dict")
    if len(given) not in (1, len(paths)):
        raise UserError(f"--teacher-dict {teacher_dict}: {len(given)} dictionary files for {len(paths)} teachers; "
                        "give one for all of them, or one per teacher in --path order, separated by ':'")
    return given * len(paths) if len(given) == 1 else given


def _warn_repeated(paths: Sequence[str]) -> None:
    seen = set()
    for p in paths:
        if os.path.abspath(p) in seen:
            logger.warning("teacher %s appears twice in the ensemble %s: it counts twice in the average",
                           p, ":".join(paths))
        seen.add(os.path.abspath(p))


def load_teachers(paths: Sequence[str], task, teacher_dict: str | None = None,
                  dict_unchecked: bool = False) -> list[torch.nn.Module]:
    """Each checkpoint of ``paths`` loaded by :func:`load_teacher`, so each is checked as a single teacher is.

    ``teacher_dict`` is one dictionary file for every member, or one per member separated by ':'.
    """
    dicts = _member_dicts(teacher_dict, paths)
    _warn_repeated(paths)
    return [load_teacher(p, task, teacher_dict=d, dict_unchecked=dict_unchecked) for p, d in zip(paths, dicts)]


def load_teachers_for_data(data: str, path: str, source_lang: str | None = None, target_lang: str | None = None,
                           teacher_dict: str | None = None,
                           dict_unchecked: bool = False) -> tuple[object, list[torch.nn.Module], list[str]]:
    """(task over ``data``, the frozen teachers of ``path`` (one, or ``a.pt:b.pt``), their paths).

    The languages default to the first teacher's; every member is checked against the data's
    dictionaries as a single teacher is.
    """
    paths = teacher_paths(path)
    dicts = _member_dicts(teacher_dict, paths)
    _warn_repeated(paths)
    task, first, _ = load_teacher_for_data(data, paths[0], source_lang, target_lang, dicts[0], dict_unchecked)
    rest = [load_teacher(p, task, teacher_dict=d, dict_unchecked=dict_unchecked)
            for p, d in zip(paths[1:], dicts[1:])]
    return task, [first, *rest], paths


def ensemble_log_probs(lprobs: Iterable[torch.Tensor]) -> torch.Tensor:
    """log((1/M) sum_m p_m): the log of the members' mean probability, from their log-probs.

    The mean of the probabilities, not of the log-probabilities (a renormalised geometric mean):
    it is the distribution fairseq's ensemble decoding searches (``EnsembleModel``:
    logsumexp of the members' log-probs less log M), so Word-KD from an ensemble distils the
    distribution that ``fairseq-generate --path a.pt:b.pt`` decodes for Seq-KD, and it stays a
    distribution without renormalising. The members are accumulated one at a time
    (``logaddexp``), so an iterator of them holds two tokens x vocabulary buffers, not M.
    One member is returned as it is.
    """
    it = iter(lprobs)
    try:
        total = next(it)
    except StopIteration:
        raise ValueError("ensemble_log_probs needs at least one member") from None
    members = 1
    for lp in it:
        # a new buffer once (the first member's tensor is the caller's), then in place
        total = torch.logaddexp(total, lp) if members == 1 else torch.logaddexp(total, lp, out=total)
        members += 1
    return total if members == 1 else total.sub_(math.log(members))


def teacher_autocast(device: torch.device, dtype: torch.dtype):
    """The precision a float32 teacher runs in beside a student of ``dtype``.

    On a GPU with a half-precision student (--fp16): autocast in that dtype, so matrix
    products run in half precision while softmax, log-softmax and layer norm stay in float32
    (the teacher's weights are never cast). Under --amp fairseq's own autocast is already active.
    Elsewhere (a CPU, a float32 student): float32 throughout.
    """
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def check_teacher_finite(lprobs: torch.Tensor, teacher: str, fix: str) -> None:
    """Stop with a UserError naming ``teacher`` and the ``fix`` when its log-probabilities hold NaN or +inf.

    fairseq takes a non-finite loss under --fp16 for a gradient overflow: it skips the batch and
    lowers the loss scale until "Minimum loss scale reached", never naming the teacher. -inf
    (probability 0) is allowed. One reduction and one host sync per call (a NaN or +inf is the
    maximum); the count is taken only for the message.
    """
    if lprobs.numel() == 0:
        return
    top = lprobs.amax()
    if not bool(torch.isnan(top) | torch.isposinf(top)):
        return
    bad = torch.isnan(lprobs) | torch.isposinf(lprobs)
    raise UserError(f"{teacher}: the teacher's output holds {int(bad.sum())} non-finite probabilities "
                    f"(NaN or inf) among {lprobs.numel()} in this batch (shape {tuple(lprobs.shape)}). {fix}")


@torch.no_grad()
def teacher_log_probs(teachers: Sequence[torch.nn.Module], names: Sequence[str], net_input: dict,
                      fix: str) -> torch.Tensor:
    """Teacher-forced float32 log-probs (B, T, V) of one teacher, or of an ensemble's mean probability.

    Each member's output is checked (:func:`check_teacher_finite`, naming it by ``names``) before it
    enters the average (:func:`ensemble_log_probs`), so a member gone NaN is named, not the ensemble.
    fairseq's ``get_normalized_probs`` computes log-probs in float32 from any logits.
    """
    def members():
        for teacher, name in zip(teachers, names, strict=True):
            lprobs = teacher.get_normalized_probs(teacher(**net_input), log_probs=True)
            check_teacher_finite(lprobs, name, fix)
            yield lprobs

    return ensemble_log_probs(members())


@torch.no_grad()
def teacher_topk(teachers: Sequence[torch.nn.Module], names: Sequence[str], net_input: dict, k: int,
                 fix: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(ids, log-probs) of the k most probable tokens per position, (B, T, k), sorted, of :func:`teacher_log_probs`.

    k <= 0 returns (None, log-probs over the whole vocabulary (B, T, V)).
    """
    lprobs = teacher_log_probs(teachers, names, net_input, fix)
    if k <= 0:
        return None, lprobs
    values, ids = lprobs.topk(min(k, lprobs.size(-1)), dim=-1)
    return ids, values
