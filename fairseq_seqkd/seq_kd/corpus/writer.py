"""Pass 2 and the output folder: the pairs in id order, binarized and as text, made in a temporary folder
inside the output folder and moved in, file by file, when whole.

The pairs are written a chunk of sentences at a time, the source read from the split's own files
(or a text file) and the hypotheses from the store's temporary file; the output is byte for byte
what fairseq's indexed-dataset builder writes for the same pairs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from itertools import chain, repeat

import numpy as np

from fairseq_seqkd.data.indexed import IndexedWriter, SymbolLines, builder_dtype
from fairseq_seqkd.seq_kd.corpus.data import CHUNK, text_lines
from fairseq_seqkd.seq_kd.corpus.store import Hypotheses

logger = logging.getLogger(__name__)

WORK = ".work"  # the temporary files of pass 1, inside the temporary output folder
TEMPORARY_PREFIX = ".extract-"  # the temporary output folder inside the output folder
OWNER = "pid"  # in the temporary folder: "PID HOST" of the extract that made it


def dropped_name(split: str) -> str:
    """The list of the sentences the filters dropped, beside the report."""
    return f"{split}.dropped.tsv"


def remove_stale_temporaries(out: str) -> None:
    """Remove the temporary folders in ``out`` of extracts that were killed: their owner is gone from this host."""
    host = socket.gethostname()
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if not name.startswith(TEMPORARY_PREFIX) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, OWNER), encoding="utf-8") as f:
                pid_text, _, owner_host = f.read().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            logger.warning("%s: the temporary folder of an extract that does not name its process (no readable %s "
                           "file); delete it if no extract into %s is running", path, OWNER, out)
            continue
        if owner_host != host or pid <= 0 or _alive(pid):  # another host's process cannot be asked
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.info("%s: removed, the temporary folder of an extract (process %d on %s) that is gone", path, pid,
                    host)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(tmp: str) -> None:
    """Name this process as the owner of temporary folder ``tmp`` and make pass 1's folder in it."""
    with open(os.path.join(tmp, OWNER), "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {socket.gethostname()}\n")
    os.makedirs(os.path.join(tmp, WORK))


def _symbol_bytes(dictionary) -> float:
    """Bytes a token takes as text on average: its symbol (weighted by the dictionary's counts) and a separator."""
    counts = np.asarray(dictionary.count, dtype=np.float64)
    lengths = np.fromiter((len(w.encode("utf-8")) for w in dictionary.symbols), np.float64, len(dictionary.symbols))
    total = counts.sum()
    return 1.0 + float((counts * lengths).sum() / total if total > 0 else lengths.mean())


def corpus_bytes(source, reference, n: int, src_dict, tgt_dict, folder: str, copied: list[str]) -> int:
    """About the most disk space an extract takes at once, known before it reads anything.

    Both sides binarized (``.bin`` and ``.idx``) and as text, pass 1's temporary token ids of the
    target, and the files copied from ``folder``. The target is taken to be as long as the
    reference (the source where the data has none): a teacher's translation is about as long.
    """
    tgt_tokens = (reference if reference is not None else source).num_tokens()
    total = source.num_tokens() * (builder_dtype(len(src_dict)).itemsize + _symbol_bytes(src_dict))
    total += tgt_tokens * (2 * builder_dtype(len(tgt_dict)).itemsize + _symbol_bytes(tgt_dict))
    total += 2 * (26 + 12 * n)  # each index: a header, then an int32 size and an int64 pointer per sentence
    return int(total) + sum(os.path.getsize(os.path.join(folder, name)) for name in copied)


def write_pairs(prefix: str, sides: tuple, hyps: Hypotheses, source, reference, empty: str,
                source_text: str | None, as_string: SymbolLines, judge=None) -> tuple[int, int]:
    """Pass 2: the pairs in id order, by chunks, as ``PREFIX{lang}.{bin,idx}`` and ``text/``; (pairs, target tokens).

    The hypotheses' ids are read from the temporary file one sentence at a time (``pread``), so
    only one chunk's worth is resident. ``judge``: a :class:`~fairseq_seqkd.seq_kd.filters.CorpusFilter`
    whose dropped pairs are left out.
    """
    from fairseq.tokenizer import tokenize_line

    (src, src_dict), (tgt, tgt_dict) = sides
    folder = os.path.dirname(prefix)
    os.makedirs(os.path.join(folder, "text"), exist_ok=True)
    split = os.path.basename(prefix).split(".")[0]
    writers = [IndexedWriter(prefix + src, builder_dtype(len(src_dict))),
               IndexedWriter(prefix + tgt, builder_dtype(len(tgt_dict)))]
    texts = [open(os.path.join(folder, "text", f"{split}.{lang}"), "wb", buffering=1 << 20) for lang in (src, tgt)]
    as_symbols = SymbolLines(tgt_dict.symbols)
    tgt_string = SymbolLines(tgt_dict.symbols, unk=tgt_dict.unk_index, unk_word=tgt_dict.unk_word,
                             skip=[tgt_dict.eos_index, tgt_dict.bos_index])
    irregular = np.frombuffer(hyps.irregular, np.int64).reshape(-1, 3) if len(hyps.irregular) else None
    source_lines = text_lines(source_text) if source_text is not None else None
    get, unk, eos = src_dict.indices.get, src_dict.unk_index, src_dict.eos_index
    n, written, target_tokens = hyps.n, 0, 0
    item = hyps.dtype.itemsize
    with open(hyps.ids_path, "rb") as f, open(hyps.irregular_path, "rb") as irregular_file:
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            lengths = hyps.length[start:stop].astype(np.int64)
            # one pread per sentence, looped in C by map: a memory map would keep about the whole
            # temporary file resident (the kernel maps 64 KB around each random access)
            data = b"".join(map(os.pread, repeat(f.fileno(), stop - start), (lengths * item).tolist(),
                                (hyps.offset[start:stop] * item).tolist()))
            target = np.frombuffer(data, hyps.dtype)
            target_text = as_symbols.lines(target, lengths, drop_last=True)
            if source_lines is not None:
                chunk = [next(source_lines) for _ in range(start, stop)]
                # src_dict.encode_line(line, add_if_not_exist=False) without a torch tensor per line
                encoded = [[get(w, unk) for w in tokenize_line(line)] + [eos] for line in chunk]
                src_sizes = np.array([len(x) for x in encoded], np.int64)
                src_tokens = np.fromiter(chain.from_iterable(encoded), np.int64, count=int(src_sizes.sum()))
                src_text = "".join(line + "\n" for line in chunk).encode("utf-8")
            else:
                src_tokens, src_sizes = source.tokens(start, stop)
                src_sizes = src_sizes.astype(np.int64)
                src_text = as_string.lines(src_tokens, src_sizes)
            empties = np.flatnonzero(lengths == 1)
            special = irregular is not None and bool(np.any((irregular[:, 0] >= start)
                                                            & (irregular[:, 0] < stop)))
            dropped = None
            if judge is not None:
                dropped = judge.judge(start, src_sizes, src_text, target, lengths, target_text, reference,
                                      empties if empty == "drop" else empties[:0])
            if len(empties) or special or (dropped is not None and dropped.any()):
                (src_tokens, src_sizes, src_text, target, lengths, target_text) = _mend_chunk(
                    start, stop, empties, empty, (src_tokens, src_sizes, src_text),
                    (target, lengths, target_text), reference, tgt_string, irregular, irregular_file, dropped)
            writers[0].add(src_tokens, src_sizes)
            writers[1].add(target, lengths)
            texts[0].write(src_text)
            texts[1].write(target_text)
            written += len(lengths)
            target_tokens += int(lengths.sum()) - len(lengths)
    for w in writers:
        w.finalize()
    for t in texts:
        t.close()
    return written, target_tokens


def _mend_chunk(start: int, stop: int, empties: np.ndarray, policy: str, source: tuple, target: tuple,
                reference, as_string: SymbolLines, irregular: np.ndarray | None, irregular_file,
                dropped: np.ndarray | None = None) -> tuple:
    """A chunk with empty hypotheses (the reference stands in, or the pair is dropped), irregular texts or pairs
    that the filters drop (``dropped``, a mask)."""
    src_tokens, src_sizes, src_text = source
    tgt_tokens, lengths, tgt_text = target
    src_parts = np.split(src_tokens, np.cumsum(src_sizes)[:-1])
    tgt_parts = np.split(tgt_tokens, np.cumsum(lengths)[:-1])
    src_lines, tgt_lines = src_text.split(b"\n")[:-1], tgt_text.split(b"\n")[:-1]
    if irregular is not None:
        for sid, offset, size in irregular[(irregular[:, 0] >= start) & (irregular[:, 0] < stop)].tolist():
            irregular_file.seek(offset)
            tgt_lines[sid - start] = irregular_file.read(size)
    keep = np.ones(stop - start, bool)
    if policy == "reference" and len(empties):
        ref_tokens, ref_sizes = reference.tokens(start, stop)
        ref_parts = np.split(ref_tokens, np.cumsum(ref_sizes)[:-1])
        for k in empties.tolist():
            tgt_parts[k] = ref_parts[k]
            tgt_lines[k] = as_string.lines(ref_parts[k], [len(ref_parts[k])])[:-1]
    else:
        keep[empties] = False
    if dropped is not None:
        keep[dropped] = False
    kept = np.flatnonzero(keep).tolist()

    def joined(parts):
        return np.concatenate([parts[k] for k in kept]) if kept else np.zeros(0, np.int64)

    return (joined(src_parts), np.array([len(src_parts[k]) for k in kept], np.int64),
            b"".join(src_lines[k] + b"\n" for k in kept), joined(tgt_parts),
            np.array([len(tgt_parts[k]) for k in kept], np.int64), b"".join(tgt_lines[k] + b"\n" for k in kept))


def finish(out: str, tmp: str, split: str, sides: tuple, folder: str, others: list[str], report: dict) -> None:
    """Complete the corpus in the temporary folder inside ``out`` (dictionaries, other splits, report), move it in.

    Files are replaced one by one; the report goes last and an old report is removed first, so a
    report in ``out`` always describes the files next to it.
    """
    for lang, _ in sides:
        shutil.copyfile(os.path.join(folder, f"dict.{lang}.txt"), os.path.join(tmp, f"dict.{lang}.txt"))
    for name in others:
        shutil.copyfile(os.path.join(folder, name), os.path.join(tmp, name))
    report_name = f"{split}.extract.json"
    with open(os.path.join(tmp, report_name), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    if os.path.exists(os.path.join(out, report_name)):
        os.remove(os.path.join(out, report_name))
    stale = os.path.join(out, dropped_name(split))  # an earlier, filtered extract's list describes another corpus
    if os.path.exists(stale) and not os.path.exists(os.path.join(tmp, dropped_name(split))):
        os.remove(stale)
    os.makedirs(os.path.join(out, "text"), exist_ok=True)
    names = [os.path.join("text", x) for x in sorted(os.listdir(os.path.join(tmp, "text")))]
    names += sorted(x for x in os.listdir(tmp) if x not in ("text", report_name, WORK, OWNER))
    for name in names + [report_name]:
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
