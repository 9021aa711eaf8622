"""The teacher top-k cache: the teacher's k most probable tokens per target token, on disk.

Word-level KD needs the teacher's distribution at every target position. Running the teacher
in every training step costs a teacher forward per step; storing its top-k once makes Word-KD
cost about what cross-entropy costs. Layout of a cache folder (one folder may hold several
splits):

    SPLIT.header.json                   JSON: k, dtypes, split, sentence/token counts, hashes
                                        of the teacher checkpoint and the target dictionary,
                                        and the list of shards. Written once every shard is done.
    SPLIT.shardIIII-of-NNNN.bin         one shard: sentences [first, first + n) of the split.
    SPLIT.shardIIII-of-NNNN.bin.tmp     a shard being written (left behind only by a crash).

A shard file is: 8 magic bytes ``SEQKDTC1``, its own JSON header padded to 4096 bytes, then
three arrays at 64-byte aligned offsets named in that header: ``offsets`` (int64, n + 1,
token offsets of its sentences), ``ids`` (num_tokens x k; uint16 when the dictionary has at
most 65536 symbols, else int32) and ``probs`` (num_tokens x k, float16), both sorted by
decreasing probability per token. Files are read with ``np.memmap`` and never loaded whole.

A shard is written to ``.tmp`` and renamed when complete, so an interrupted build resumes by
skipping finished shards and rebuilding a partial one. The cache knows nothing of training:
:class:`TeacherCacheDataset` only adds ``teacher_topk_ids`` / ``teacher_topk_probs`` to samples.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import re
import time

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, BucketPadLengthDataset, Dictionary

from fairseq_seqkd.criterions.word_kd import TEACHER_IDS_KEY, TEACHER_PROBS_KEY, load_teacher, teacher_topk
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_write_text

logger = logging.getLogger(__name__)

FORMAT_NAME = "fairseq-seqkd teacher top-k cache"
FORMAT_VERSION = 1
MAGIC = b"SEQKDTC1"
SHARD_HEADER_BYTES = 4096
ALIGN = 64
PROBS_DTYPE = "float16"
OFFSETS_DTYPE = "int64"
# What must agree between the shards of one cache, and between a cache and a resumed build.
IDENTITY_KEYS = ("format", "version", "split", "k", "ids_dtype", "probs_dtype", "vocab_size",
                 "teacher_checkpoint_sha256", "target_dictionary_sha256", "total_sentences", "num_shards")
_SHARD_RE = re.compile(r"^(?P<split>.+)\.shard(?P<i>\d{4,})-of-(?P<n>\d{4,})\.bin(?P<tmp>\.tmp)?$")


# ----------------------------------------------------------------------------- names and hashes

def header_path(directory: str, split: str) -> str:
    """Path of the JSON header of ``split``'s cache."""
    return os.path.join(directory, f"{split}.header.json")


def shard_path(directory: str, split: str, shard_id: int, num_shards: int) -> str:
    """Path of one finished shard file."""
    return os.path.join(directory, f"{split}.shard{shard_id:04d}-of-{num_shards:04d}.bin")


def shard_range(num_sentences: int, num_shards: int, shard_id: int) -> tuple[int, int]:
    """[first, end) sentence ids of shard ``shard_id``: contiguous, sizes differing by at most one."""
    return num_sentences * shard_id // num_shards, num_sentences * (shard_id + 1) // num_shards


def ids_dtype_for(vocab_size: int) -> str:
    """uint16 where every token id fits, else int32."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"


def dictionary_hash(dictionary: Dictionary) -> str:
    """sha256 of the dictionary's symbols in id order (counts do not change token ids)."""
    return hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8")).hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _rebuild_hint(split: str, directory: str) -> str:
    return (f"`fairseq-seqkd cache DATA --path TEACHER.pt --split {split} --out {directory}` "
            "(with the options of the first run)")


# ----------------------------------------------------------------------------- shard files

class ShardWriter:
    """Writes one shard to ``PATH.tmp`` through memory maps and renames it on :meth:`commit`."""

    def __init__(self, path: str, meta: dict, lengths: np.ndarray):
        self.path, self.tmp = path, path + ".tmp"
        lengths = np.asarray(lengths, dtype=np.int64)
        n, k = len(lengths), int(meta["k"])
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ntok = int(offsets[-1])
        ids_size = np.dtype(meta["ids_dtype"]).itemsize
        offsets_at = SHARD_HEADER_BYTES
        ids_at = _align(offsets_at + 8 * (n + 1))
        probs_at = _align(ids_at + ntok * k * ids_size)
        end = probs_at + ntok * k * np.dtype(PROBS_DTYPE).itemsize
        self.header = {**meta, "num_sentences": n, "num_tokens": ntok, "offsets_at": offsets_at,
                       "ids_at": ids_at, "probs_at": probs_at, "bytes": end}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(self.tmp, "wb") as f:
            f.write(_encode_shard_header(self.header))
            f.truncate(end)
        self.offsets = offsets
        self._offsets_map = np.memmap(self.tmp, np.int64, "r+", offset=offsets_at, shape=(n + 1,))
        self._offsets_map[:] = offsets
        self.ids = _map(self.tmp, meta["ids_dtype"], "r+", ids_at, (ntok, k))
        self.probs = _map(self.tmp, PROBS_DTYPE, "r+", probs_at, (ntok, k))
        self.written = np.zeros(n, dtype=bool)

    def write(self, local_index: int, ids: np.ndarray, probs: np.ndarray) -> None:
        """Store sentence ``first + local_index``: (length, k) ids and probs."""
        lo, hi = self.offsets[local_index], self.offsets[local_index + 1]
        if ids.shape[0] != hi - lo:
            raise UserError(f"{self.tmp}: sentence {self.header['first_sentence'] + local_index} has "
                            f"{ids.shape[0]} target tokens in the batch but {hi - lo} in the dataset sizes; "
                            "the binarized data is inconsistent: re-run fairseq-preprocess")
        if self.written[local_index]:
            raise RuntimeError(f"sentence {self.header['first_sentence'] + local_index} came twice")
        self.ids[lo:hi] = ids
        self.probs[lo:hi] = probs
        self.written[local_index] = True

    def commit(self) -> dict:
        """Check every sentence was written, flush, rename to the final name; return the shard header."""
        missing = np.flatnonzero(~self.written)
        if len(missing):
            self.abort()
            raise UserError(
                f"{self.path}: the teacher saw {len(self.written) - len(missing)} of the "
                f"{len(self.written)} sentences of this shard (first missing: sentence "
                f"{self.header['first_sentence'] + int(missing[0])}); fairseq's batching dropped "
                "sentences. Nothing was written; report this with the command you ran.")
        for m in (self._offsets_map, self.ids, self.probs):
            if isinstance(m, np.memmap):
                m.flush()
        self._offsets_map = self.ids = self.probs = None
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return self.header

    def abort(self) -> None:
        """Drop the temporary file."""
        self._offsets_map = self.ids = self.probs = None
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _map(path: str, dtype: str, mode: str, offset: int, shape: tuple) -> np.ndarray:
    if int(np.prod(shape)) == 0:  # mmap cannot map zero bytes: an empty shard
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=shape)


def _encode_shard_header(header: dict) -> bytes:
    text = json.dumps(header, sort_keys=True).encode("utf-8")
    room = SHARD_HEADER_BYTES - len(MAGIC) - 1
    if len(text) > room:
        raise ValueError(f"shard header of {len(text)} bytes exceeds {room}")
    return MAGIC + text + b" " * (room - len(text)) + b"\n"


def read_shard_header(path: str) -> dict:
    """The JSON header of a finished shard file; a truncated or foreign file is a UserError."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(SHARD_HEADER_BYTES)
    if not head.startswith(MAGIC):
        raise UserError(f"{path}: not a {FORMAT_NAME} shard (bad magic bytes); delete it and rebuild the "
                        "cache with `fairseq-seqkd cache`")
    try:
        header = json.loads(head[len(MAGIC):].decode("utf-8"))
    except ValueError as e:
        raise UserError(f"{path}: truncated or damaged: its {len(head)}-byte header is not valid JSON; "
                        "delete the file and rerun `fairseq-seqkd cache` with the same options to "
                        "rebuild that shard") from e
    if size != header["bytes"]:
        what = "truncated" if size < header["bytes"] else "longer than its header says"
        raise UserError(f"{path}: {what}: {size} bytes on disk but {header['bytes']} expected "
                        f"(shard {header['shard_id']} of {header['num_shards']}). Delete the file and rerun "
                        "`fairseq-seqkd cache` with the same options: it rebuilds only the missing shard.")
    return header


def _scan(directory: str, split: str) -> tuple[dict[int, dict[int, str]], list[str]]:
    """Finished shard files of ``split`` by num_shards then shard id, and partial (.tmp) files."""
    finished: dict[int, dict[int, str]] = {}
    partial: list[str] = []
    if not os.path.isdir(directory):
        return finished, partial
    for name in sorted(os.listdir(directory)):
        m = _SHARD_RE.match(name)
        if not m or m["split"] != split:
            continue
        if m["tmp"]:
            partial.append(os.path.join(directory, name))
        else:
            finished.setdefault(int(m["n"]), {})[int(m["i"])] = os.path.join(directory, name)
    return finished, partial


def _identity_diff(a: dict, b: dict) -> str | None:
    for key in IDENTITY_KEYS:
        if a.get(key) != b.get(key):
            return f"{key} is {b.get(key)!r} there but {a.get(key)!r} here"
    return None


def merge_shards(directory: str, split: str) -> dict:
    """Write ``SPLIT.header.json`` from the finished shards and return it; incomplete is a UserError."""
    finished, partial = _scan(directory, split)
    if not finished and not partial:
        raise _missing_cache_error(directory, split)
    if len(finished) > 1:
        raise UserError(f"{directory}: shards of builds with different --num-shards ({sorted(finished)}) "
                        f"for split {split}; delete the {split}.shard* files of the build you do not want")
    num_shards = next(iter(finished)) if finished else None
    found = finished.get(num_shards, {})
    missing = [i for i in range(num_shards)] if num_shards else []
    missing = [i for i in missing if i not in found]
    if missing or partial:
        raise UserError(
            f"{directory}: the {split} cache is incomplete: "
            f"{len(found)} of {num_shards if num_shards else '?'} shards finished, missing shard ids "
            f"{missing or 'none'}, partial (interrupted) files: "
            f"{[os.path.basename(p) for p in partial] or 'none'}. Finish it by rerunning "
            f"{_rebuild_hint(split, directory)} with --num-shards {num_shards or 'N'}: finished shards are "
            "kept, partial ones rebuilt.")
    headers = [read_shard_header(found[i]) for i in range(num_shards)]
    for i, h in enumerate(headers):
        diff = _identity_diff(headers[0], h)
        if diff:
            raise UserError(f"{found[i]} does not belong with {found[0]}: {diff}. Delete the wrong shard and "
                            f"rebuild it with {_rebuild_hint(split, directory)} --shard-id {i}")
        first, end = shard_range(h["total_sentences"], num_shards, i)
        if (h["shard_id"], h["first_sentence"], h["num_sentences"]) != (i, first, end - first):
            raise UserError(f"{found[i]}: covers sentences {h['first_sentence']}.."
                            f"{h['first_sentence'] + h['num_sentences']} but shard {i} of {num_shards} "
                            f"should cover {first}..{end}; delete it and rebuild that shard")
    header = {key: headers[0][key] for key in IDENTITY_KEYS if key != "total_sentences"}
    header.update(
        offsets_dtype=OFFSETS_DTYPE,
        teacher_checkpoint=headers[0]["teacher_checkpoint"],
        num_sentences=headers[0]["total_sentences"],
        num_tokens=sum(h["num_tokens"] for h in headers),
        bytes=sum(h["bytes"] for h in headers),
        shards=[{"file": os.path.basename(found[i]), "shard_id": i, "first_sentence": h["first_sentence"],
                 "num_sentences": h["num_sentences"], "num_tokens": h["num_tokens"], "bytes": h["bytes"]}
                for i, h in enumerate(headers)],
    )
    atomic_write_text(header_path(directory, split), json.dumps(header, indent=2) + "\n")
    return header


def _missing_cache_error(directory: str, split: str) -> UserError:
    if not os.path.isdir(directory):
        return UserError(f"{directory}: no such teacher cache folder; build one with "
                         f"{_rebuild_hint(split, directory)}")
    finished, partial = _scan(directory, split)
    if finished or partial:
        return UserError(f"{header_path(directory, split)} is missing: the {split} cache was not finished "
                         f"({sum(map(len, finished.values()))} shard files, {len(partial)} partial). Rerun "
                         f"{_rebuild_hint(split, directory)} to finish it, or "
                         f"`fairseq-seqkd cache DATA --verify --split {split} --out {directory}` if every "
                         "shard was built elsewhere")
    others = sorted(name[: -len(".header.json")] for name in os.listdir(directory)
                    if name.endswith(".header.json"))
    held = f"it holds a cache for split(s) {', '.join(others)}" if others else "it holds no teacher cache"
    return UserError(f"{directory}: no teacher cache for split '{split}' ({held}; wrong split?). "
                     f"Build it with {_rebuild_hint(split, directory)}")


# ----------------------------------------------------------------------------- reading

class TeacherCache:
    """Read-only view of one split's cache: ``cache[i]`` is (ids, probs) of sentence i, (len, k) each.

    Memory maps are opened lazily on first access and dropped when pickled, so each DataLoader
    worker (or distributed rank) maps the files itself and RAM stays flat as the cache grows.
    """

    def __init__(self, directory: str, split: str):
        self.directory, self.split = directory, split
        self.header_file = header_path(directory, split)
        if not os.path.isfile(self.header_file):
            raise _missing_cache_error(directory, split)
        try:
            with open(self.header_file, encoding="utf-8") as f:
                header = json.load(f)
        except ValueError as e:
            raise UserError(f"{self.header_file}: not valid JSON ({e}); delete it and run "
                            f"`fairseq-seqkd cache DATA --verify --split {split} --out {directory}`") from e
        if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
            raise UserError(f"{self.header_file}: not a version-{FORMAT_VERSION} {FORMAT_NAME} header; "
                            f"rebuild the cache with {_rebuild_hint(split, directory)}")
        if header["split"] != split:
            raise UserError(f"{self.header_file}: describes split '{header['split']}', not '{split}' "
                            f"(renamed file?): build the {split} cache with "
                            f"{_rebuild_hint(split, directory)}")
        self.header = header
        self.k = int(header["k"])
        self.shards: list[dict] = []
        for entry in header["shards"]:
            path = os.path.join(directory, entry["file"])
            if not os.path.isfile(path):
                raise UserError(f"{path}: listed in {self.header_file} but missing; rebuild it with "
                                f"{_rebuild_hint(split, directory)} --shard-id {entry['shard_id']}")
            shard = read_shard_header(path)
            diff = _identity_diff(header | {"total_sentences": header["num_sentences"]}, shard)
            if not diff and any(shard[key] != entry[key] for key in ("first_sentence", "bytes")):
                diff = "sentence range or size differ"
            if diff:
                raise UserError(f"{path} disagrees with {self.header_file} ({diff}): it was rebuilt after "
                                "the header was written; delete the header and run "
                                f"`fairseq-seqkd cache DATA --verify --split {split} --out {directory}`")
            self.shards.append({**shard, "path": path})
        self._first = [s["first_sentence"] for s in self.shards]
        self._maps: list | None = None

    def __len__(self) -> int:
        return int(self.header["num_sentences"])

    @property
    def num_tokens(self) -> int:
        """Target tokens in the split."""
        return int(self.header["num_tokens"])

    def _open(self) -> list:
        if self._maps is None:
            self._maps = [
                (_map(s["path"], OFFSETS_DTYPE, "r", s["offsets_at"], (s["num_sentences"] + 1,)),
                 _map(s["path"], s["ids_dtype"], "r", s["ids_at"], (s["num_tokens"], s["k"])),
                 _map(s["path"], s["probs_dtype"], "r", s["probs_at"], (s["num_tokens"], s["k"])))
                for s in self.shards]
        return self._maps

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"sentence {index} outside the {len(self)} of {self.header_file}")
        s = bisect.bisect_right(self._first, index) - 1
        offsets, ids, probs = self._open()[s]
        j = index - self._first[s]
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        return ids[lo:hi], probs[lo:hi]

    def shard_lengths(self):
        """Yield (shard header, target length of each of its sentences), one shard at a time."""
        for s, (offsets, _, _) in zip(self.shards, self._open()):
            yield s, np.diff(np.asarray(offsets))

    def close(self) -> None:
        """Drop the memory maps (reopened lazily on the next access)."""
        self._maps = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = None  # a pickled memmap would copy the data; each process maps its own
        return state


def target_lengths(dataset) -> np.ndarray:
    """True target length of each sentence of a language-pair dataset (before bucket padding)."""
    tgt, sizes = getattr(dataset, "tgt", None), getattr(dataset, "tgt_sizes", None)
    if tgt is None or sizes is None:
        raise UserError(f"a teacher cache needs a translation dataset with a target side; got "
                        f"{type(dataset).__name__}")
    if isinstance(tgt, BucketPadLengthDataset):  # --num-batch-buckets pads sizes to bucket lengths
        return np.asarray(tgt.dataset.sizes)
    return np.asarray(sizes)


def check_against_dataset(cache: TeacherCache, dataset, tgt_dict: Dictionary) -> None:
    """Stop with a UserError unless dictionary, sentence count and every target length match."""
    where, fix = cache.header_file, _rebuild_hint(cache.split, cache.directory)
    expected = dictionary_hash(tgt_dict)
    if cache.header["target_dictionary_sha256"] != expected:
        raise UserError(f"{where}: built over another target dictionary (sha256 "
                        f"{cache.header['target_dictionary_sha256'][:12]}.. with "
                        f"{cache.header['vocab_size']} symbols; this data's is {expected[:12]}.. with "
                        f"{len(tgt_dict)}). Rebuild the cache from this data: {fix}")
    if len(cache) != len(dataset):
        raise UserError(f"{where}: holds {len(cache)} sentences but split '{cache.split}' of this data has "
                        f"{len(dataset)}: it was built from other data. Rebuild it: {fix}")
    sizes = target_lengths(dataset)
    for shard, lengths in cache.shard_lengths():
        first = shard["first_sentence"]
        bad = np.flatnonzero(lengths != sizes[first:first + len(lengths)])
        if len(bad):
            i = int(bad[0])
            raise UserError(f"{shard['path']}: sentence {first + i} has {int(lengths[i])} target tokens "
                            f"in the cache but {int(sizes[first + i])} in the data ({len(bad)} sentences of "
                            f"this shard differ): the cache was built from other data. Rebuild it: {fix}")
    cache.close()  # opened for the check; workers map the files themselves


class TeacherCacheDataset(BaseWrapperDataset):
    """Adds ``teacher_topk_ids`` (long) / ``teacher_topk_probs`` (float16), (B, T, k), to each batch.

    They are aligned and padded like ``target`` (right or left padding, bucketing, any batch
    order); padded positions hold id 0 with probability 0.
    """

    def __init__(self, dataset, cache: TeacherCache, pad: int):
        super().__init__(dataset)
        self.cache = cache
        self.pad = pad
        self.left_pad_target = bool(getattr(dataset, "left_pad_target", False))

    def __getitem__(self, index):
        item = self.dataset[index]
        ids, probs = self.cache[index]
        item[TEACHER_IDS_KEY] = torch.from_numpy(ids.astype(np.int64))
        item[TEACHER_PROBS_KEY] = torch.from_numpy(np.array(probs, dtype=np.float16))
        return item

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if not batch or batch.get("target") is None:
            return batch
        target = batch["target"]
        bsz, width = target.shape
        by_id = {int(s["id"]): s for s in samples}
        rows = [by_id[sid] for sid in batch["id"].tolist()]  # the collater's (sorted) row order
        cached = torch.tensor([s[TEACHER_IDS_KEY].size(0) for s in rows])
        lengths = target.ne(self.pad).sum(dim=1)
        if not torch.equal(cached, lengths):
            row = int((cached != lengths).nonzero()[0, 0])
            raise UserError(f"{self.cache.header_file}: sentence {int(batch['id'][row])} has "
                            f"{int(cached[row])} cached positions but {int(lengths[row])} target tokens in "
                            "the batch; rebuild the cache")
        # left padding puts the tokens at the end of each row, right padding at its start;
        # a boolean mask fills row by row, in the order of the concatenation
        cols = torch.arange(width)
        mask = cols >= width - lengths[:, None] if self.left_pad_target else cols < lengths[:, None]
        ids = torch.zeros(bsz, width, self.cache.k, dtype=torch.long)
        probs = torch.zeros(bsz, width, self.cache.k, dtype=torch.float16)
        ids[mask] = torch.cat([s[TEACHER_IDS_KEY] for s in rows])
        probs[mask] = torch.cat([s[TEACHER_PROBS_KEY] for s in rows])
        batch[TEACHER_IDS_KEY] = ids
        batch[TEACHER_PROBS_KEY] = probs
        return batch

    def num_tokens_vec(self, indices):
        return self.dataset.num_tokens_vec(indices)


def attach_teacher_cache(dataset, directory: str, split: str, tgt_dict: Dictionary, required: bool):
    """Wrap ``dataset`` with ``split``'s cache from ``directory`` after checking it matches the data.

    When the folder holds nothing for ``split`` and it is not ``required`` (a validation split),
    the dataset is returned unchanged.
    """
    finished, partial = _scan(directory, split)
    if not required and not os.path.isfile(header_path(directory, split)) and not finished and not partial:
        logger.info("no teacher cache for split %s in %s: word_kd uses an online teacher there if "
                    "--teacher-path is given, else the label-smoothed NLL alone", split, directory)
        return dataset
    cache = TeacherCache(directory, split)
    check_against_dataset(cache, dataset, tgt_dict)
    logger.info("teacher cache %s: %d sentences, %d tokens, top-%d, checked against split %s",
                cache.header_file, len(cache), cache.num_tokens, cache.k, split)
    return TeacherCacheDataset(dataset, cache, tgt_dict.pad())


# ----------------------------------------------------------------------------- building

class _SentenceRange(BaseWrapperDataset):
    """The sentences [first, end) of a dataset, in the dataset's own (length-sorted) order."""

    def __init__(self, dataset, first: int, end: int):
        super().__init__(dataset)
        self.first, self.end = first, end

    def ordered_indices(self):
        indices = self.dataset.ordered_indices()
        return indices[(indices >= self.first) & (indices < self.end)]


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


def load_teacher_for_data(data: str, teacher_path: str, source_lang: str | None = None,
                          target_lang: str | None = None):
    """(task over ``data``, frozen teacher checked against its dictionaries, checkpoint state)."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(teacher_path):
        raise UserError(f"{teacher_path}: no such teacher checkpoint")
    state = checkpoint_utils.load_checkpoint_to_cpu(teacher_path)
    cfg_task = state["cfg"].task
    task = setup_translation_task(data, source_lang or cfg_task.get("source_lang"),
                                  target_lang or cfg_task.get("target_lang"))
    return task, load_teacher(teacher_path, task, state), state


def teacher_batches(task, teacher, dataset, first: int, end: int, max_tokens: int | None,
                    max_sentences: int | None, num_workers: int = 0):
    """fairseq's batch iterator over sentences [first, end), losing none (batch multiple 1)."""
    from fairseq import utils

    try:
        itr = task.get_batch_iterator(
            dataset=_SentenceRange(dataset, first, end), max_tokens=max_tokens, max_sentences=max_sentences,
            max_positions=utils.resolve_max_positions(task.max_positions(), teacher.max_positions()),
            ignore_invalid_inputs=False, required_batch_size_multiple=1, num_workers=num_workers,
            disable_iterator_cache=True)
    except Exception as e:
        if "invalid" in str(e) and "max_positions" in str(e):
            raise UserError(f"{task.cfg.data}: {e}. A teacher cache must cover every sentence: "
                            "drop over-long sentences from the data before binarizing it") from e
        raise
    return itr.next_epoch_itr(shuffle=False)


def build_cache(data: str, teacher_path: str, out_dir: str, split: str = "train", topk: int = 8,
                max_tokens: int | None = 4000, max_sentences: int | None = None, num_shards: int = 1,
                shard_id: int | None = None, source_lang: str | None = None, target_lang: str | None = None,
                cpu: bool = False, fp16: bool = False, num_workers: int = 0, progress: bool = True) -> dict:
    """Build (or resume) the teacher top-k cache of ``data``'s ``split`` into ``out_dir``.

    Runs the teacher with teacher forcing over the shards asked for (``shard_id`` None: all of
    them), skipping finished shards and rebuilding partial ones, and writes the split header
    once every shard exists. Returns {"header": dict or None, "built": [...], "skipped": [...],
    "missing": [...], "seconds": float}.
    """
    from fairseq import utils
    from tqdm import tqdm

    if topk < 1:
        raise UserError(f"--topk must be >= 1, got {topk}")
    if num_shards < 1 or (shard_id is not None and not 0 <= shard_id < num_shards):
        raise UserError(f"--shard-id must lie in [0, --num-shards={num_shards}), got {shard_id}")
    use_cuda = torch.cuda.is_available() and not cpu
    if fp16 and not use_cuda:
        raise UserError("--fp16 needs a GPU; drop --fp16 (or --cpu)")
    start = time.perf_counter()
    task, teacher, _ = load_teacher_for_data(data, teacher_path, source_lang, target_lang)
    dataset = load_split(task, split)
    tgt_dict = task.target_dictionary
    lengths = target_lengths(dataset)
    k = min(topk, len(tgt_dict))
    identity = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "split": split, "k": k,
                "ids_dtype": ids_dtype_for(len(tgt_dict)), "probs_dtype": PROBS_DTYPE,
                "vocab_size": len(tgt_dict),
                "teacher_checkpoint_sha256": file_sha256(teacher_path),
                "target_dictionary_sha256": dictionary_hash(tgt_dict), "total_sentences": len(dataset),
                "num_shards": num_shards}
    _check_existing(out_dir, split, identity)
    if use_cuda:
        teacher.cuda()
    if fp16:
        teacher.half()
    pad, left_pad = tgt_dict.pad(), bool(getattr(dataset, "left_pad_target", False))
    built, skipped = [], []
    for i in range(num_shards) if shard_id is None else [shard_id]:
        path = shard_path(out_dir, split, i, num_shards)
        if os.path.exists(path):
            diff = _identity_diff(identity, read_shard_header(path))
            if diff:
                raise UserError(f"{path}: a finished shard of another build ({diff}); delete the {split}.* "
                                f"files in {out_dir} or choose another --out")
            logger.info("shard %d of %d already complete: %s", i, num_shards, path)
            skipped.append(i)
            continue
        if os.path.exists(path + ".tmp"):
            logger.warning("%s.tmp: partial shard left by an interrupted run; rebuilding it", path)
            os.unlink(path + ".tmp")
        first, end = shard_range(len(dataset), num_shards, i)
        writer = ShardWriter(path, {**identity, "teacher_checkpoint": os.path.abspath(teacher_path),
                                    "shard_id": i, "first_sentence": first}, lengths[first:end])
        try:
            itr = teacher_batches(task, teacher, dataset, first, end, max_tokens, max_sentences, num_workers)
            bar = tqdm(itr, total=len(itr), desc=f"{split} shard {i + 1}/{num_shards}", unit="batch",
                       disable=not progress, mininterval=1.0)
            for sample in bar:
                if use_cuda:
                    sample = utils.move_to_cuda(sample)
                ids, probs = teacher_topk(teacher, sample["net_input"], k)
                target = sample["target"]
                ids_np = ids.cpu().numpy().astype(identity["ids_dtype"])
                probs_np = probs.to(torch.float16).cpu().numpy()
                width = target.size(1)
                for row, (sid, n) in enumerate(zip(sample["id"].tolist(), target.ne(pad).sum(1).tolist())):
                    cols = slice(width - n, width) if left_pad else slice(0, n)
                    writer.write(sid - first, ids_np[row, cols], probs_np[row, cols])
            header = writer.commit()
        except BaseException:
            writer.abort()
            raise
        logger.info("shard %d of %d: %d sentences, %d tokens -> %s", i, num_shards, header["num_sentences"],
                    header["num_tokens"], path)
        built.append(i)
    finished, _ = _scan(out_dir, split)
    missing = [i for i in range(num_shards) if i not in finished.get(num_shards, {})]
    header = merge_shards(out_dir, split) if not missing else None
    if header is not None and header["num_tokens"] != int(lengths.sum()):
        raise UserError(f"{header_path(out_dir, split)}: {header['num_tokens']} tokens cached but the split "
                        f"has {int(lengths.sum())}; delete the cache and rebuild it")
    return {"header": header, "built": built, "skipped": skipped, "missing": missing,
            "seconds": time.perf_counter() - start}


def _check_existing(out_dir: str, split: str, identity: dict) -> None:
    """Refuse to mix this build with a finished cache or shards of another build."""
    finished, _ = _scan(out_dir, split)
    other = sorted(n for n in finished if n != identity["num_shards"])
    if other:
        raise UserError(f"{out_dir}: holds {split} shards of a build with --num-shards {other[0]}; rerun "
                        f"with --num-shards {other[0]} to resume it, or delete its {split}.shard* files")
    path = header_path(out_dir, split)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            header = json.load(f)
        diff = _identity_diff(identity, header | {"total_sentences": header.get("num_sentences")})
        if diff:
            raise UserError(f"{path}: a finished cache of another build ({diff}); delete the {split}.* files "
                            f"in {out_dir} or choose another --out")


def verify_cache(data: str, out_dir: str, split: str = "train", source_lang: str | None = None,
                 target_lang: str | None = None) -> dict:
    """Merge finished shards into the header if it is missing, then check the cache against ``data``."""
    if not os.path.isfile(header_path(out_dir, split)):
        merge_shards(out_dir, split)
    cache = TeacherCache(out_dir, split)
    task = setup_translation_task(data, source_lang, target_lang)
    check_against_dataset(cache, load_split(task, split), task.target_dictionary)
    return cache.header
