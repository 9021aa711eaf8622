"""The teacher top-k cache: the teacher's k most probable tokens per target token, on disk.

Word-level KD needs the teacher's distribution at every target position. Running the teacher
in every training step costs a teacher forward per step; storing its top-k once makes Word-KD
cost about what cross-entropy costs. Layout of a cache folder (one folder may hold several
splits):

    SPLIT.header.json                   JSON: k, dtypes, split, sentence/token counts, hashes
                                        of the teacher checkpoint(s) and the target dictionary,
                                        the teachers (path, sha256, bytes; several for an
                                        ensemble) and the list of shards. Written once every
                                        shard is done.
    SPLIT.shardIIII-of-NNNN.bin         one shard: sentences [first, first + n) of the split.
    SPLIT.shardIIII-of-NNNN.bin.tmp     a shard being written, or left by an interrupted build.

A shard file (format version 3) is: 8 magic bytes ``SEQKDTC3``, its own JSON header padded to
4096 bytes, then three arrays at 64-byte aligned offsets named in that header: ``offsets``
(int64, n + 1, token offsets of its sentences), ``ids`` (num_tokens x k; uint16 when the
dictionary has at most 65536 symbols, else int32) and ``logits`` (num_tokens x k, float16: the
teacher's logits less the largest, log(p_i / p_1), so 0 first and <= 0 after), both sorted by
decreasing probability per token. Their softmax is the teacher's top-k renormalised, and
softmax(logits / T) its tempered form, to 2^-10 * ln(k) in L1 at any T (see :func:`topk_logits`).
Its header also holds ``target_tokens_sha256``
(sha256 of the target token ids of its sentences as little-endian int32, in sentence order: the
cache is checked against the tokens of the data, not only their lengths) and ``crc32`` (zlib
CRC-32 of each of the three arrays, written at commit). Files are read through memory maps and
never loaded whole. Versions 1 (no hash, no checksums) and 2 (float16 probabilities, whose tail
a temperature above 1 amplifies) are refused with a request to rebuild.

A shard is written to ``.tmp`` in chunks of sentences; after each chunk the data is flushed
and the chunk recorded (``done_sentences``) in the ``.tmp`` file's own header, so a build killed
partway resumes from its last completed chunk, and the file is renamed when complete. The
format knows nothing of training or of fairseq; the modules above it import it, never the other
way: ``reader`` (:class:`TeacherCache`), ``checks`` (a cache against a split of data), ``dataset``
(adds the cache to fairseq's batches), ``build`` (the driver: runs the teacher, writes shards
through this module, checks them with ``checks``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib

import numpy as np

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_write_text
from fairseq_seqkd.layout import cache_header, cache_shard, shard_range

logger = logging.getLogger(__name__)

FORMAT_NAME = "fairseq-seqkd teacher top-k cache"
FORMAT_VERSION = 3
# what each version added, for the message that refuses an older cache
VERSION_CHANGES = {2: "per-shard checksums and a hash of the target tokens",
                   3: "float16 logits relative to the most probable token instead of float16 probabilities, "
                      "whose tail (below 6e-5 inexact, below 3e-8 zero) put the top-k distribution off by up to "
                      "tens of percent at --kd-temperature 2 or 4"}
MAGIC_PREFIX = b"SEQKDTC"
MAGIC = MAGIC_PREFIX + str(FORMAT_VERSION).encode("ascii")
SHARD_HEADER_BYTES = 4096
ALIGN = 64
LOGITS_DTYPE = "float16"
OFFSETS_DTYPE = "int64"
ARRAYS = ("offsets", "ids", "logits")
# float16 bit patterns of values <= 0: 0x0000 (+0) and 0x8000 (-0) up to 0xFC00 (-inf); as int16
# every other pattern is positive (positive numbers, +inf, +NaN) or above 0xFC00 (-NaN)
_FP16_NEG_INF_BITS = 0xFC00
_BLOCK_BYTES = 16 << 20  # reads for checksums and value scans
# What must agree between the shards of one cache, and between a cache and a resumed build.
IDENTITY_KEYS = ("format", "version", "split", "k", "ids_dtype", "logits_dtype", "vocab_size",
                 "teacher_checkpoint_sha256", "target_dictionary_sha256", "total_sentences", "num_shards")
_SHARD_RE = re.compile(r"^(?P<split>.+)\.shard(?P<i>\d{4,})-of-(?P<n>\d{4,})\.bin(?P<tmp>\.tmp)?$")


# ----------------------------------------------------------------------------- names and hashes

# the file names, shared with the pipeline (fairseq_seqkd.layout)
header_path = cache_header
shard_path = cache_shard


def ids_dtype_for(vocab_size: int) -> str:
    """uint16 where every token id fits, else int32."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"


def dictionary_hash(dictionary) -> str:
    """sha256 of a fairseq dictionary's symbols in id order (counts do not change token ids)."""
    return hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8")).hexdigest()


def topk_logits(lprobs: np.ndarray) -> np.ndarray:
    """float16 log(p_i / p_1) of top-k log-probabilities sorted in decreasing order, (..., k): what a shard stores.

    The renormalised (tempered) top-k distribution depends only on these differences. float16
    rounds d = log(p_1 / p_i) to within d * 2^-11, so softmax(-d / T) is off by at most
    2^-10 * E[d / T] <= 2^-10 * ln(k) in L1 (E under the tempered distribution, which is at most
    its entropy), at every temperature: 2.0e-3 at k = 8; 3.6e-4 was the largest seen in
    ``benchmarks/cache_precision.py`` at T = 0.5 to 4. Float16 probabilities (format 2) were off
    by up to 4.4e-3 at T = 1, 0.15 at T = 2 and 0.75 at T = 4 there.
    """
    lprobs = np.asarray(lprobs, dtype=np.float32)
    return (lprobs - lprobs[..., :1]).astype(LOGITS_DTYPE)


def first_bad_logit_row(block: np.ndarray) -> int | None:
    """The first row of a (tokens, k) float16 logits block that no build writes, or None.

    A build writes 0 first and values <= 0 after, never NaN (-inf, a probability ratio below
    float16's range, is allowed). Two max-reductions over the bits answer for a sound block at
    memory speed; the rows are looked at only when one fails.
    """
    bits = np.ascontiguousarray(block).view(np.int16)
    first = bits[:, 0] & 0x7FFF  # +0 or -0
    if bits.max(initial=0) <= 0 and bits.view(np.uint16).max(initial=0) <= _FP16_NEG_INF_BITS and not first.any():
        return None
    wrong = ((bits > 0) | (bits.view(np.uint16) > _FP16_NEG_INF_BITS)).any(axis=1) | (first != 0)
    return int(np.flatnonzero(wrong)[0])


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def shard_layout(num_sentences: int, num_tokens: int, k: int, ids_dtype: str) -> dict[str, int]:
    """Where a shard file's arrays start (``offsets_at``, ``ids_at``, ``logits_at``) and its size (``bytes``)."""
    offsets_at = SHARD_HEADER_BYTES
    ids_at = _align(offsets_at + 8 * (num_sentences + 1))
    logits_at = _align(ids_at + num_tokens * k * np.dtype(ids_dtype).itemsize)
    end = logits_at + num_tokens * k * np.dtype(LOGITS_DTYPE).itemsize
    return {"offsets_at": offsets_at, "ids_at": ids_at, "logits_at": logits_at, "bytes": end}


def _rebuild_hint(split: str, directory: str) -> str:
    return (f"`fairseq-seqkd cache DATA --path TEACHER.pt --split {split} --out {directory}` "
            "(with the options of the first run)")


def _shard_fix(path: str, shard: dict) -> str:
    """What to do about one damaged shard file."""
    directory = os.path.dirname(path) or "."
    return (f"Delete {path} and rebuild that shard with `fairseq-seqkd cache DATA --path TEACHER.pt --split "
            f"{shard['split']} --out {directory} --num-shards {shard['num_shards']} --shard-id "
            f"{shard['shard_id']}` (with the options of the first run), then check the cache with "
            f"`fairseq-seqkd cache DATA --verify --split {shard['split']} --out {directory}`")


def _old_version_error(path: str, version: object) -> UserError:
    try:
        found = int(version)  # from a header's JSON, or the magic bytes' last character
    except (TypeError, ValueError):
        found = 0
    newer = [f"version {v}: {what}" for v, what in VERSION_CHANGES.items() if v > found]
    return UserError(f"{path}: a version-{version} {FORMAT_NAME}, written by an older fairseq-seqkd; this one "
                     f"reads version {FORMAT_VERSION} ({'; '.join(newer)}). Delete the split's files of that cache "
                     "(SPLIT.header.json, SPLIT.shard*) and rebuild it with `fairseq-seqkd cache`")


# ----------------------------------------------------------------------------- shard files

class ShardWriter:
    """Writes one shard to ``PATH.tmp`` through memory maps, chunk by chunk; renamed on :meth:`commit`.

    A ``.tmp`` left by an interrupted build of the same shard (same identity, sentence range,
    target tokens and layout) is reopened and its recorded sentences kept (``self.done``); any
    other ``.tmp`` is started afresh.
    """

    def __init__(self, path: str, meta: dict, lengths: np.ndarray):
        self.path, self.tmp = path, path + ".tmp"
        lengths = np.asarray(lengths, dtype=np.int64)
        n, k = len(lengths), int(meta["k"])
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ntok = int(offsets[-1])
        layout = shard_layout(n, ntok, k, meta["ids_dtype"])
        self.header = {**meta, "num_sentences": n, "num_tokens": ntok, **layout}
        self.offsets = offsets
        self.done, why = (None, "none") if not os.path.exists(self.tmp) else _progress(self.tmp, self.header,
                                                                                      offsets)
        if self.done is None:
            if why != "none":
                logger.warning("%s: a partial shard that cannot be resumed (%s); starting it afresh", self.tmp,
                               why)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(self.tmp, "wb") as f:
                f.write(_encode_shard_header({**self.header, "done_sentences": 0}))
                f.truncate(layout["bytes"])
            offsets_map = np.memmap(self.tmp, np.int64, "r+", offset=layout["offsets_at"], shape=(n + 1,))
            offsets_map[:] = offsets
            offsets_map.flush()
            del offsets_map
            self.done = 0
        self.ids = _map(self.tmp, meta["ids_dtype"], "r+", layout["ids_at"], (ntok, k))
        self.logits = _map(self.tmp, LOGITS_DTYPE, "r+", layout["logits_at"], (ntok, k))
        self.written = np.zeros(n, dtype=bool)
        self.written[:self.done] = True

    def write(self, local_index: int, ids: np.ndarray, logits: np.ndarray) -> None:
        """Store sentence ``first + local_index``: (length, k) ids and logits (:func:`topk_logits`)."""
        lo, hi = self.offsets[local_index], self.offsets[local_index + 1]
        if ids.shape[0] != hi - lo:
            raise UserError(f"{self.tmp}: sentence {self.header['first_sentence'] + local_index} has "
                            f"{ids.shape[0]} target tokens in the batch but {hi - lo} in the dataset sizes; "
                            "the binarized data is inconsistent: re-run fairseq-preprocess")
        if self.written[local_index]:
            raise RuntimeError(f"sentence {self.header['first_sentence'] + local_index} came twice")
        self.ids[lo:hi] = ids
        self.logits[lo:hi] = logits
        self.written[local_index] = True

    def _check_written(self, lo: int, hi: int) -> None:
        missing = lo + np.flatnonzero(~self.written[lo:hi])
        if len(missing):
            self.abort()
            raise UserError(
                f"{self.path}: the teacher saw {hi - lo - len(missing)} of the {hi - lo} sentences "
                f"{self.header['first_sentence'] + lo}..{self.header['first_sentence'] + hi} of this shard "
                f"(first missing: sentence {self.header['first_sentence'] + int(missing[0])}); fairseq's "
                "batching dropped sentences. Nothing was kept; report this with the command you ran.")

    def _flush(self) -> None:
        for m in (self.ids, self.logits):
            if isinstance(m, np.memmap):
                m.flush()

    def _write_header(self, header: dict) -> None:
        # one 4096-byte write at offset 0, synced: the data it describes was flushed before
        with open(self.tmp, "r+b") as f:
            f.write(_encode_shard_header(header))
            f.flush()
            os.fsync(f.fileno())

    def record_progress(self, done: int) -> None:
        """Flush the shard's sentences [0, done) and record them as done, so a rerun resumes after them."""
        self._check_written(self.done, done)
        self._flush()
        self._write_header({**self.header, "done_sentences": done})
        self.done = done

    def commit(self) -> dict:
        """Check every sentence was written, flush, checksum, rename to the final name; return the header."""
        self._check_written(self.done, len(self.written))
        self._flush()
        self.ids = self.logits = None
        self.header = {**self.header, "crc32": data_checksums(self.tmp, self.header)}
        self._write_header(self.header)
        os.replace(self.tmp, self.path)
        return self.header

    def close(self) -> None:
        """Drop the memory maps and keep the ``.tmp`` with its recorded progress (an interrupted build)."""
        self.ids = self.logits = None

    def abort(self) -> None:
        """Drop the temporary file."""
        self.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _progress(tmp: str, header: dict, offsets: np.ndarray) -> tuple[int | None, str]:
    """(sentences recorded as done in the partial shard ``tmp`` that ``header`` describes, "") or (None, why)."""
    try:
        size = os.path.getsize(tmp)
        with open(tmp, "rb") as f:
            head = f.read(SHARD_HEADER_BYTES)
        if not head.startswith(MAGIC):
            return None, "another format version, or a damaged header"
        found = json.loads(head[len(MAGIC):].decode("utf-8"))
    except (OSError, ValueError):
        return None, "its header is unreadable"
    if size != header["bytes"]:
        return None, f"{size} bytes on disk but {header['bytes']} expected"
    # the checkpoints' paths may change between runs; their sha256 says whether it is the same teacher
    for key, value in header.items():
        if key not in ("teacher_checkpoint", "teachers") and found.get(key) != value:
            return None, f"{key} is {found.get(key)!r} there but {value!r} here"
    # a header with checksums: the build died between its final header and the rename
    done = found.get("done_sentences", header["num_sentences"] if "crc32" in found else None)
    if not isinstance(done, int) or not 0 <= done <= header["num_sentences"]:
        return None, "no progress recorded"
    if not np.array_equal(_map(tmp, OFFSETS_DTYPE, "r", header["offsets_at"], offsets.shape), offsets):
        return None, "its sentence offsets differ"
    return done, ""


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


def _array_spans(header: dict) -> dict[str, tuple[int, int]]:
    """(byte offset, byte length) of each data array of a shard."""
    n, ntok, k = header["num_sentences"], header["num_tokens"], header["k"]
    return {"offsets": (header["offsets_at"], 8 * (n + 1)),
            "ids": (header["ids_at"], ntok * k * np.dtype(header["ids_dtype"]).itemsize),
            "logits": (header["logits_at"], ntok * k * np.dtype(header["logits_dtype"]).itemsize)}


def data_checksums(path: str, header: dict) -> dict[str, int]:
    """zlib CRC-32 of each data array (offsets, ids, logits) of the shard file ``path``."""
    buf = bytearray(_BLOCK_BYTES)
    view = memoryview(buf)
    out = {}
    with open(path, "rb", buffering=0) as f:
        for name, (at, nbytes) in _array_spans(header).items():
            f.seek(at)
            crc = 0
            while nbytes > 0:
                got = f.readinto(view[:min(_BLOCK_BYTES, nbytes)])
                if not got:
                    break  # a short file: read_shard_header reports the size
                crc = zlib.crc32(view[:got], crc)
                nbytes -= got
            out[name] = crc
    return out


def verify_checksums(path: str, shard: dict) -> None:
    """Stop with a UserError naming the shard file unless its arrays have the CRC-32s recorded at commit."""
    found = data_checksums(path, shard)
    for name in ARRAYS:
        if found[name] != shard["crc32"][name]:
            raise UserError(f"{path}: damaged: the CRC-32 of its {name} array is {found[name]:08x} but "
                            f"{shard['crc32'][name]:08x} was recorded when the shard was written. "
                            + _shard_fix(path, shard))


def read_shard_header(path: str) -> dict:
    """The JSON header of a finished shard file; a truncated, foreign or old file is a UserError."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(SHARD_HEADER_BYTES)
    if head.startswith(MAGIC_PREFIX) and not head.startswith(MAGIC):
        raise _old_version_error(path, head[len(MAGIC_PREFIX):len(MAGIC)].decode("ascii", "replace"))
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
    if "crc32" not in header:
        raise UserError(f"{path}: its header has no checksums (a partial shard renamed by hand?). "
                        + _shard_fix(path, header))
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
    """Check every shard (checksums included), write ``SPLIT.header.json`` and return it.

    An incomplete or inconsistent set of shards, or a damaged shard, is a UserError.
    """
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
            "kept, partial ones resumed.")
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
    for i, h in enumerate(headers):
        verify_checksums(found[i], h)
    header = {key: headers[0][key] for key in IDENTITY_KEYS if key != "total_sentences"}
    header.update(
        offsets_dtype=OFFSETS_DTYPE,
        teacher_checkpoint=headers[0]["teacher_checkpoint"],
        **({"teachers": headers[0]["teachers"]} if "teachers" in headers[0] else {}),
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
