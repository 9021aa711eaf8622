"""The fairseq glue shared by the cache builder, the word_kd criterion, the corpus code and benchmarks.

Task setup over a binarized folder, split loading as fairseq-train does it, loading a frozen
teacher checked against the data's dictionary, running it (float32 weights, autocast in half
precision on a GPU, its output checked for non-finite values) for its top-k, and a batch
iterator over a range of sentences that loses none. Nothing here knows the cache format or the
KD loss.
"""

from __future__ import annotations

import contextlib
import logging
import os

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
    """fairseq's batch iterator over sentences [first, end), losing none (batch multiple 1)."""
    try:
        itr = task.get_batch_iterator(
            dataset=_SentenceRange(dataset, first, end, order), max_tokens=max_tokens,
            max_sentences=max_sentences,
            max_positions=utils.resolve_max_positions(task.max_positions(), teacher.max_positions()),
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
    (probability 0) is allowed. One host sync per call.
    """
    bad = torch.isnan(lprobs) | torch.isposinf(lprobs)
    if bool(bad.any()):
        raise UserError(f"{teacher}: the teacher's output holds {int(bad.sum())} non-finite probabilities "
                        f"(NaN or inf) among {lprobs.numel()} in this batch (shape {tuple(lprobs.shape)}). {fix}")


@torch.no_grad()
def teacher_topk(teacher: torch.nn.Module, net_input: dict,
                 k: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Teacher-forced (ids, log-probs) of the k most probable tokens per position, (B, T, k), sorted.

    The log-probs are float32 (fairseq's ``get_normalized_probs`` computes them in float32 from
    any logits). k <= 0 returns (None, log-probs over the whole vocabulary (B, T, V)).
    """
    net_output = teacher(**net_input)
    lprobs = teacher.get_normalized_probs(net_output, log_probs=True)
    if k <= 0:
        return None, lprobs
    values, ids = lprobs.topk(min(k, lprobs.size(-1)), dim=-1)
    return ids, values
