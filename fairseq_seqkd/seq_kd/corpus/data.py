"""The split being distilled, read as fairseq-generate reads it: its two sides by chunks of sentences.

The source and reference sides are read from their files where they are in fairseq's mmap
format (:mod:`fairseq_seqkd.data.indexed`), through fairseq's own dataset otherwise; the task
gives the languages and dictionaries. Nothing here knows where the hypotheses come from.
"""

from __future__ import annotations

import gc
import os
import re
from array import array
from collections.abc import Iterator

import numpy as np

from fairseq_seqkd.data.indexed import IndexedReader, SymbolLines
from fairseq_seqkd.errors import UserError

CHUNK = 4096  # sentences read or written at a time: what pass 2 holds in memory, whatever the corpus size


class _DatasetSide:
    """A side of a split that is not in fairseq's mmap format, read through its fairseq dataset (slower)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def tokens(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self.dataset, "supports_prefetch", False):  # fairseq's cached format reads nothing unasked
            self.dataset.prefetch(range(start, stop))
        items = [self.dataset[i].numpy() for i in range(start, stop)]
        sizes = np.array([len(x) for x in items], np.int32)
        return (np.concatenate(items) if items else np.zeros(0, np.int64)), sizes

    def num_tokens(self) -> int:
        """Token ids of the whole side."""
        return int(np.asarray(self.dataset.sizes, dtype=np.int64).sum())

    def close(self) -> None:
        pass


def _side(dataset):
    """A chunked reader of one side of the split: the files themselves where they are in fairseq's mmap format."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    if type(dataset) is MMapIndexedDataset and getattr(dataset, "_path", None):
        return IndexedReader(dataset._path)
    return _DatasetSide(dataset)


def _mmap_sides(folder: str, split: str, src: str, tgt: str) -> tuple | None:
    """(source reader, reference reader or None) of ``split`` where fairseq would load both as mmap datasets.

    The files fairseq-generate's ``load_langpair_dataset`` picks (no combine, the task's default
    options: no wrapping dataset), read from their headers without building fairseq's dataset,
    whose sizes arrays grow with the corpus. None where anything differs (another format, no
    such split, sides of different lengths): fairseq then loads it, with its own errors.
    """
    from fairseq.data.indexed_dataset import IndexedDataset, infer_dataset_impl

    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = os.path.join(folder, f"{split}.{pair}.")
        if IndexedDataset.exists(prefix + src):
            break
    else:
        return None
    if infer_dataset_impl(prefix + src) != "mmap":
        return None
    has_target = infer_dataset_impl(prefix + tgt) is not None or IndexedDataset.exists(prefix + tgt)
    if has_target and infer_dataset_impl(prefix + tgt) != "mmap":
        return None
    readers = []
    try:
        for lang in (src, tgt) if has_target else (src,):
            readers.append(IndexedReader(prefix + lang))
    except ValueError:  # a version this reader does not know: fairseq's own loader decides
        for r in readers:
            r.close()
        return None
    if has_target and len(readers[0]) != len(readers[1]):
        for r in readers:
            r.close()
        return None
    return readers[0], (readers[1] if has_target else None)


def language_pair_data(data: str, split: str, source_lang: str | None, target_lang: str | None):
    """(task, source reader, reference reader or None, data folder) of ``split`` as fairseq-generate sees it.

    The task gives the languages and dictionaries; the sides are read from their files by chunks.
    """
    from fairseq import utils

    from fairseq_seqkd.fairseq_glue import setup_translation_task

    task = setup_translation_task(data, source_lang, target_lang)
    folder = utils.split_paths(data)[0]
    sides = _mmap_sides(folder, split, task.cfg.source_lang, task.cfg.target_lang)
    if sides is None:
        try:
            task.load_dataset(split)
        except FileNotFoundError as e:
            raise UserError(f"{data}: no binarized split '{split}' ({e})") from e
        dataset = task.dataset(split)
        sides = _side(dataset.src), (_side(dataset.tgt) if dataset.tgt is not None else None)
        # fairseq's dataset (sizes arrays) is let go; a side not in the mmap format keeps its own part
        task.datasets.pop(split, None)
        del dataset
        gc.collect()  # a cycle may hold it, and pass 1 runs with the collector off
    return (task, *sides, folder)


def other_split_files(folder: str, split: str, src: str, tgt: str) -> list[str]:
    """The data's other binarized splits (valid, test, ...), not ``split`` nor its ``split1``... parts."""
    pairs = {f"{src}-{tgt}", f"{tgt}-{src}"}
    keep = []
    for name in sorted(os.listdir(folder)):
        parts = name.split(".")
        if (len(parts) == 4 and parts[1] in pairs and parts[2] in (src, tgt) and parts[3] in ("bin", "idx")
                and not re.fullmatch(re.escape(split) + r"\d*", parts[0])):
            keep.append(name)
    return keep


def text_lines(path: str) -> Iterator[str]:
    """The stripped lines of a UTF-8 text file, split as ``str.splitlines`` splits, read by blocks."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        rest = ""
        while block := f.read(1 << 20):
            lines = (rest + block).splitlines(keepends=True)
            rest = lines.pop() if lines[-1].splitlines()[0] == lines[-1] else ""
            yield from (line.strip() for line in lines)
        if rest:
            yield rest.strip()


def source_strings(reader, decoder: SymbolLines, start: int, stop: int) -> list[str]:
    """Sentences ``start``..``stop - 1`` of the source as ``src_dict.string`` writes them."""
    tokens, sizes = reader.tokens(start, stop)
    return decoder.lines(tokens, sizes).decode("utf-8").split("\n")[:-1]


def source_hashes(reader, decoder: SymbolLines, n: int) -> array:
    """``hash()`` of every source sentence as UTF-8 text, to compare S- lines read in any order with the data."""
    hashes = array("q")
    for start in range(0, n, CHUNK):
        tokens, sizes = reader.tokens(start, min(n, start + CHUNK))
        hashes.extend(map(hash, decoder.lines(tokens, sizes).split(b"\n")[:-1]))
    return hashes
