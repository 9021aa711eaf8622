"""A synthetic WMT-shaped corpus, binarized, with its teacher's translation as fairseq-generate shard files.

For measuring ``fairseq-seqkd extract`` (and whatever else reads these files) at WMT14 scale
without a model: numpy only, no Python loop over tokens, so 4.5M sentences synthesize in a
minute or two.

- vocabulary: ``vocab`` sentencepiece-like pieces (``▁`` word starts and inner pieces, 1-8
  letters), one joined dictionary (``dict.{src,tgt}.txt``, most frequent first, as fairseq writes it);
- sentences: tokens drawn Zipf-like over the pieces; lengths log-normal, mean about 28
  tokens with a long tail (up to 250), target and hypothesis lengths near the source's;
- data folder: ``train.SRC-TGT.{SRC,TGT}.{bin,idx}`` (fairseq's mmap format, the bytes of its
  builder; tokens plus EOS) and a 1,000-sentence ``valid`` split;
- generation: ``num_shards`` files ``shard{i}.txt`` as ``fairseq-generate`` prints them to stdout
  (``S-``, ``T-``, ``H-``, ``D-``, ``P-`` per sentence, no log lines): sentences sorted by
  length, cut into batches of about 4,096 tokens, the batches shuffled and dealt to the shards.

Import it with ``benchmarks/`` on ``sys.path`` (``import synth``); ``synthesize`` does it all.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_seqkd.data.indexed import IndexedWriter, SymbolLines, builder_dtype  # noqa: E402

SPECIALS = 4  # <s> <pad> </s> <unk>: fairseq's dictionary puts them before the file's symbols
EOS = 2
_CHUNK = 1 << 16  # sentences formatted at a time


def piece_vocabulary(size: int, seed: int = 0) -> list[str]:
    """``size`` distinct sentencepiece-like pieces, shortest first (the frequent ones are short)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    pieces: dict[str, None] = {}
    while len(pieces) < size:
        m = 2 * size
        lengths = np.minimum(rng.geometric(0.3, m), 8)
        chars = letters[rng.integers(0, 26, (m, 8))]
        starts = rng.random(m) < 0.65
        for row, k, word in zip(chars, lengths, starts):
            pieces.setdefault(("\u2581" if word else "") + "".join(row[:k]), None)
    return sorted(list(pieces)[:size], key=len)


def sentence_lengths(n: int, rng: np.random.Generator, mean: float = 28.0, longest: int = 250) -> np.ndarray:
    """``n`` sentence lengths in tokens (without EOS): log-normal, about ``mean``, a long tail cut at ``longest``."""
    sigma = 0.6
    lengths = rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, n)
    return np.clip(np.rint(lengths), 1, longest).astype(np.int64)


def sample_tokens(count: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` dictionary ids (after the specials), Zipf-like over ``vocab`` pieces, as uint32."""
    ranks = np.arange(vocab, dtype=np.float64)
    cdf = np.cumsum(1.0 / (ranks + 10.0))
    cdf /= cdf[-1]
    out = np.empty(count, np.uint32)
    for start in range(0, count, 1 << 24):
        stop = min(count, start + (1 << 24))
        out[start:stop] = np.searchsorted(cdf, rng.random(stop - start)) + SPECIALS
    return np.minimum(out, SPECIALS + vocab - 1)


def with_eos(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sentences as fairseq binarizes them: each sentence's tokens followed by EOS; (tokens, sizes)."""
    sizes = lengths + 1
    out = np.full(int(sizes.sum()), EOS, tokens.dtype)
    ends = np.cumsum(sizes)
    mask = np.ones(len(out), bool)
    mask[ends - 1] = False
    out[mask] = tokens
    return out, sizes


def write_dictionary(path: str, pieces: list[str]) -> None:
    """A fairseq ``dict.*.txt``: one ``piece count`` line per piece, most frequent first."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{p} {len(pieces) - k}\n" for k, p in enumerate(pieces))


def write_split(prefix: str, tokens: np.ndarray, sizes: np.ndarray, vocab_size: int) -> None:
    """``PREFIX.bin``/``.idx`` in fairseq's mmap format (the dtype ``make_builder`` picks for the vocabulary)."""
    writer = IndexedWriter(prefix, builder_dtype(vocab_size))
    writer.add(tokens, sizes)
    writer.finalize()


def generation_order(src_lengths: np.ndarray, num_shards: int, rng: np.random.Generator,
                     batch_tokens: int = 4096) -> list[np.ndarray]:
    """Sentence ids of each shard in the order fairseq-generate prints them: length-sorted batches, shuffled."""
    order = np.argsort(src_lengths, kind="stable")
    batch = np.cumsum(src_lengths[order] + 1) // batch_tokens
    cuts = np.flatnonzero(np.diff(batch)) + 1
    batches = np.split(order, cuts)
    perm = rng.permutation(len(batches))
    return [np.concatenate([batches[b][::-1] for b in perm[s::num_shards]] or [np.zeros(0, np.int64)])
            for s in range(num_shards)]


def _lines(table: SymbolLines, tokens: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
           ids: np.ndarray) -> list[bytes]:
    """The text of sentences ``ids`` (tokens at ``offsets``, ``lengths`` long), one bytes object each."""
    n = lengths[ids]
    idx = np.arange(int(n.sum())) + np.repeat(offsets[ids] - (np.cumsum(n) - n), n)
    return table.lines(tokens[idx], n).split(b"\n")[:-1]


def write_generation(path: str, ids: np.ndarray, pieces: list[str], sides: dict, rng: np.random.Generator) -> None:
    """One shard's fairseq-generate stdout for sentences ``ids`` in that order.

    ``sides`` maps "S", "T", "H" to (tokens without EOS, offsets, lengths) over all sentence ids.
    """
    words = SymbolLines(["<s>", "<pad>", "</s>", "<unk>"] + pieces)
    scores = SymbolLines([f"-{x:.4f}" for x in rng.uniform(0.0, 3.0, 997)])
    with open(path, "wb") as f:
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            s, t, h = (_lines(words, *sides[k], chunk) for k in ("S", "T", "H"))
            hyp_lengths = sides["H"][2][chunk] + 1
            p = scores.lines(rng.integers(0, 997, int(hyp_lengths.sum())), hyp_lengths).split(b"\n")[:-1]
            score = (b"%.4f" % -x for x in rng.uniform(0.05, 1.5, len(chunk)))
            block = b"S-%d\t%s\nT-%d\t%s\nH-%d\t%s\t%s\nD-%d\t%s\t%s\nP-%d\t%s\n"
            f.write(b"".join(block % (i, si, i, ti, i, sc, hi, i, sc, hi, i, pi)
                             for i, si, ti, hi, pi, sc in zip(chunk.tolist(), s, t, h, p, score)))


def synthesize(folder: str, n: int, vocab: int = 32000, num_shards: int = 8, seed: int = 0,
               empty_hypotheses: int = 0, langs: tuple[str, str] = ("en", "de")) -> dict:
    """Write ``folder/data`` (binarized train + valid, dictionaries) and ``folder/generated/shard{i}.txt``.

    ``empty_hypotheses``: that many sentences (random ids) get an empty hypothesis (EOS only).
    Returns {"data", "generated", "files", "sentences", "tokens"} (tokens: target tokens of the hypotheses).
    """
    rng = np.random.default_rng(seed)
    src, tgt = langs
    data, generated = os.path.join(folder, "data"), os.path.join(folder, "generated")
    os.makedirs(data, exist_ok=True)
    os.makedirs(generated, exist_ok=True)
    pieces = piece_vocabulary(vocab, seed)
    for lang in langs:
        write_dictionary(os.path.join(data, f"dict.{lang}.txt"), pieces)
    size = SPECIALS + vocab
    src_len = sentence_lengths(n, rng)
    tgt_len = np.maximum(1, np.rint(src_len * rng.uniform(0.85, 1.25, n))).astype(np.int64)
    hyp_len = np.maximum(1, np.rint(tgt_len * rng.uniform(0.8, 1.2, n))).astype(np.int64)
    if empty_hypotheses:
        hyp_len[rng.choice(n, empty_hypotheses, replace=False)] = 0
    sides = {}
    for key, lengths in (("S", src_len), ("T", tgt_len), ("H", hyp_len)):
        tokens = sample_tokens(int(lengths.sum()), vocab, rng).astype(builder_dtype(size))
        sides[key] = (tokens, np.cumsum(lengths) - lengths, lengths)
    for key, lang in (("S", src), ("T", tgt)):
        write_split(os.path.join(data, f"train.{src}-{tgt}.{lang}"), *with_eos(sides[key][0], sides[key][2]), size)
    valid = min(n, 1000)
    for key, lang in (("S", src), ("T", tgt)):
        tokens, offsets, lengths = sides[key]
        end = int(offsets[valid - 1] + lengths[valid - 1]) if valid else 0
        write_split(os.path.join(data, f"valid.{src}-{tgt}.{lang}"), *with_eos(tokens[:end], lengths[:valid]), size)
    files = []
    for i, ids in enumerate(generation_order(src_len, num_shards, rng)):
        files.append(os.path.join(generated, f"shard{i}.txt"))
        write_generation(files[-1], ids, pieces, sides, rng)
    return {"data": data, "generated": generated, "files": files, "sentences": n, "tokens": int(hyp_len.sum())}
