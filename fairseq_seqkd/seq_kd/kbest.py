"""Translations from another toolkit: 1-best text files and K-best lists, one target kept per sentence.

A teacher that is not a fairseq model (Marian, Hugging Face, CTranslate2, ...) gives its
translations of a split (the training split for Seq-KD) in one of two forms:

- a **text file**: line i is the translation of sentence i of the split, in data-bin's order
  (the order of the prepared training text);
- **K-best lists** in TSV files, one line per candidate::

      sentence_id<TAB>score<TAB>text

  ``sentence_id`` is 0-based into the split; lines come in any order, 1 to K of them per id,
  and all of one id's lines are in one file (files are shards); ``score`` is the model's
  log-probability of the candidate, higher is better: per token or not, in any base, as long as
  one set of files is consistent, because only the order of one sentence's scores is used;
  ``text`` is the translation (the rest of the line; it may be empty).

A text file is read as K-best lists with K = 1 whose ids are the line numbers.

The text is brought into the student's token space by :class:`TokenEncoder`: detokenized text
is normalized and encoded with the student's sentencepiece model, exactly as ``prepare``
encoded the training data; without a model it is split at whitespace (word-level data, or text
already in the student's pieces). :class:`KBestChoice` then keeps one candidate per sentence:

- Seq-KD: the best model score (ties: the earlier line);
- Seq-Inter: the candidate closest to the reference by the project's sentence BLEU
  (:mod:`fairseq_seqkd.seq_kd.sentence_bleu`, on token ids without EOS and padding), chosen as
  :func:`fairseq_seqkd.seq_kd.seq_inter.seq_inter_order` chooses among a beam: BLEU values within
  ``TIE_TOLERANCE`` are tied, then the higher model score wins, then the earlier line. A
  fairseq ``--nbest K`` list written in beam order gives the candidate the in-fairseq
  ``--seq-inter`` generator puts first (tested).

It streams: lines are read, encoded and compared a chunk at a time; what is kept per sentence
is a few numbers (the kept candidate's score, its BLEU for Seq-Inter, a hash of its line). The
kept candidates' token ids go to the caller (:mod:`fairseq_seqkd.seq_kd.corpus.translation_source`
stores them). Within a chunk the choice is exactly ``seq_inter_order``'s; a sentence whose
lines fall in several chunks is compared chunk by chunk with the candidate kept so far, which
gives the same choice unless two BLEU values differ by less than ``TIE_TOLERANCE`` without being
equal (equal token statistics give equal values).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice

import numpy as np

from fairseq_seqkd.data.prepare import load_sentencepiece, normalize_line
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.seq_kd.mbr import MBR, choose_in_groups
from fairseq_seqkd.seq_kd.sentence_bleu import TIE_TOLERANCE, SentenceBLEU
from fairseq_seqkd.teacher.generate_output import UNTAGGED, iter_blocks

FIELDS = ("sentence_id", "score", "text")
CHUNK_LINES = 1 << 13  # lines read, encoded and compared at a time: what is resident, whatever the file size
MAX_UNKNOWN_KINDS = 10_000  # distinct unknown tokens counted for the report (a wrong tokenization has millions)


@dataclass
class Candidates:
    """A chunk of lines of one file: each line's sentence id, score, line number, text and key."""

    ids: np.ndarray  # int64
    scores: np.ndarray  # float64; 0 for a text file
    numbers: np.ndarray  # int64, 1-based line numbers in the file
    texts: list[str]
    keys: np.ndarray  # int64 hash of the whole line: two equal lines have equal keys


def _decode(path: str, raw: list[bytes], first: int) -> list[str]:
    """UTF-8 lines; invalid UTF-8 is a UserError naming the line."""
    try:
        return b"\n".join(raw).decode("utf-8").split("\n")
    except UnicodeDecodeError:
        for k, line in enumerate(raw):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: line {first + k} is not valid UTF-8 (byte {e.start + 1} of the line): "
                                "write the translations as UTF-8 (e.g. iconv -t UTF-8)") from None
        raise


def _raw_lines(path: str) -> Iterator[tuple[int, list[bytes]]]:
    """(first line number, lines without their newline) of a file, ``CHUNK_LINES`` at a time, split at ``\\n`` only."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    number = 1
    with open(path, "rb") as f:
        while raw := list(islice(f, CHUNK_LINES)):
            # a translation may hold U+2028 or a lone CR: only \n ends a line, as in `wc -l`
            yield number, [line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n") for line in raw]
            number += len(raw)


def read_text(path: str) -> Iterator[Candidates]:
    """A line-aligned translation file as candidates: line i (1-based) is sentence i - 1, score 0."""
    for first, raw in _raw_lines(path):
        m = len(raw)
        numbers = np.arange(first, first + m, dtype=np.int64)
        yield Candidates(numbers - 1, np.zeros(m), numbers, _decode(path, raw, first), np.zeros(m, np.int64))


def _bad_line(path: str, number: int, line: bytes, n: int) -> UserError:
    """The UserError for K-best line ``number``: what is wrong with it and the format."""
    fields = line.split(b"\t", 2)
    shown = line[:80].decode("utf-8", "replace")
    fmt = ("each line is sentence_id<TAB>score<TAB>text (id 0-based into the split, score the model's "
           "log-probability)")
    if len(fields) < 3:
        return UserError(f"{path}: line {number} has {len(fields)} tab-separated field(s), not 3: {shown!r}; "
                         f"{fmt}. An empty translation still needs both tabs")
    try:
        sid = int(fields[0])
    except ValueError:
        return UserError(f"{path}: line {number}: sentence id {fields[0][:20].decode('utf-8', 'replace')!r} is "
                         f"not an integer; {fmt}")
    try:
        score = float(fields[1])
    except ValueError:
        score = None
    if score is None or not np.isfinite(score):
        return UserError(f"{path}: line {number}: score {fields[1][:20].decode('utf-8', 'replace')!r} is not a "
                         f"finite number; {fmt}")
    if not 0 <= sid < n:
        return UserError(f"{path}: line {number}: sentence id {sid} is outside the split's {n} sentences "
                         "(ids 0 to n - 1): the lists belong to other data or another split, or the ids are "
                         "1-based; number the sentences from 0 in the split's order")
    return UserError(f"{path}: line {number} cannot be read: {shown!r}; {fmt}")


def read_kbest(path: str, n: int) -> Iterator[Candidates]:
    """The candidates of a K-best TSV file, checked line by line; a bad line is a UserError naming it."""
    for first, raw in _raw_lines(path):
        fields = [line.split(b"\t", 2) for line in raw]
        try:
            if any(len(f) != 3 for f in fields):
                raise ValueError
            ids = np.array([int(f[0]) for f in fields], np.int64)
            scores = np.array([float(f[1]) for f in fields], np.float64)
            bad = (ids < 0) | (ids >= n) | ~np.isfinite(scores)
            if bad.any():
                raise ValueError
        except ValueError:
            for k, line in enumerate(raw):
                error = _bad_line(path, first + k, line, n)
                if "cannot be read" not in str(error):
                    raise error from None
            raise
        keys = np.fromiter(map(hash, raw), np.int64, len(raw))
        texts = _decode(path, [f[2] for f in fields], first)
        yield Candidates(ids, scores, np.arange(first, first + len(raw), dtype=np.int64), texts, keys)


class TokenEncoder:
    """Translations to the student's token ids: sentencepiece-encoded, or split at whitespace.

    ``spm_model``: detokenized text, normalized and encoded as ``prepare`` encodes the training
    data (:func:`fairseq_seqkd.data.prepare.normalize_line`, then the model's pieces). Without it the
    text is split at whitespace. A token not in the dictionary becomes ``<unk>`` (as
    fairseq-preprocess makes it) and is counted; ``strict`` (text already in the student's pieces)
    makes it an error instead, as for fairseq's own output.
    """

    def __init__(self, dictionary, spm_model: str | None = None, strict: bool = False, threads: int = 0):
        self.dict, self.strict, self.threads = dictionary, strict, threads
        self.unk, self.eos = dictionary.unk_index, dictionary.eos_index
        self.tokens = self.unknown = 0  # over every candidate encoded
        self.unknown_kinds: Counter = Counter()
        self.sp = load_sentencepiece(spm_model) if spm_model else None
        if self.sp is not None:
            # sentencepiece's ids to the dictionary's through one table (pieces not in it: unk)
            self._pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
            self._table = np.array([dictionary.indices.get(p, self.unk) for p in self._pieces], np.int64)
            self._sp_unk = self.sp.unk_id()

    def describe(self) -> str:
        """How the text is encoded, for the report."""
        if self.sp is not None:
            return "sentencepiece"
        return "pieces" if self.strict else "whitespace"

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(token ids of every text with EOS appended, back to back; their sizes, EOS included)."""
        flat, sizes = self._encode_spm(texts) if self.sp is not None else self._encode_split(texts)
        sizes = np.asarray(sizes, np.int64)
        out = np.full(len(flat) + len(sizes), self.eos, np.int64)
        ends = np.cumsum(sizes + 1)
        keep = np.ones(len(out), bool)
        keep[ends - 1] = False
        out[keep] = flat
        return out, sizes + 1

    def _encode_split(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        split = [t.split() for t in texts]
        sizes = [len(s) for s in split]
        get = self.dict.indices.get
        flat = np.fromiter((get(w, -1) for w in chain.from_iterable(split)), np.int64, sum(sizes))
        missing = np.flatnonzero(flat < 0)
        self.tokens += len(flat)
        if len(missing):
            words = list(chain.from_iterable(split))
            if self.strict:
                line = int(np.searchsorted(np.cumsum(sizes), missing[0], side="right"))
                raise _StrictUnknown(line, words[missing[0]])
            self._count([words[k] for k in missing.tolist()])
            flat[missing] = self.unk
        return flat, sizes

    def _encode_spm(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        normalized = [normalize_line(t) for t in texts]
        encoded = self.sp.encode(normalized, out_type=int, num_threads=self.threads or -1)
        sizes = [len(e) for e in encoded]
        ids = np.fromiter(chain.from_iterable(encoded), np.int64, sum(sizes))
        flat = self._table[ids]
        starts = np.cumsum(sizes) - sizes
        # a character sentencepiece does not know is one unk piece whose text is the character
        # itself: prepare wrote that text, and fairseq-preprocess looked it up as a word
        for k in np.unique(np.searchsorted(np.cumsum(sizes), np.flatnonzero(ids == self._sp_unk),
                                           side="right")).tolist():
            pieces = self.sp.encode(normalized[k], out_type=str)
            flat[starts[k]:starts[k] + sizes[k]] = [self.dict.indices.get(p, self.unk) for p in pieces]
        self.tokens += len(flat)
        missing = np.flatnonzero(flat == self.unk)
        if len(missing):
            self._count([self._piece(ids[k], k, starts, sizes, normalized) for k in missing.tolist()])
        return flat, sizes

    def _piece(self, sp_id: int, position: int, starts: np.ndarray, sizes: list[int], normalized: list[str]) -> str:
        if sp_id != self._sp_unk:
            return self._pieces[sp_id]
        line = int(np.searchsorted(starts, position, side="right")) - 1
        return self.sp.encode(normalized[line], out_type=str)[position - starts[line]]

    def _count(self, words: list[str]) -> None:
        self.unknown += len(words)
        for w in words:
            if w in self.unknown_kinds or len(self.unknown_kinds) < MAX_UNKNOWN_KINDS:
                self.unknown_kinds[w] += 1

    def rate(self) -> float:
        """Share of the tokens encoded so far that are not in the dictionary."""
        return self.unknown / self.tokens if self.tokens else 0.0


class _StrictUnknown(Exception):
    """A token not in the dictionary where every token must be: (index of the text in its chunk, the token)."""

    def __init__(self, index: int, token: str):
        super().__init__(index, token)
        self.index, self.token = index, token


def encode_strictly(encoder: TokenEncoder, chunk: Candidates, path: str) -> tuple[np.ndarray, np.ndarray]:
    """``encoder.encode(chunk.texts)``; in ``strict`` mode an unknown token is a UserError naming its line."""
    try:
        return encoder.encode(chunk.texts)
    except _StrictUnknown as e:
        raise UserError(f"{path}: line {int(chunk.numbers[e.index])}: token {e.token!r} is not in the student's "
                        "dictionary, yet the text was said to be in its pieces: give the sentencepiece model "
                        "(--spm-model) for detokenized text, or leave out --pieces to map unknown tokens to "
                        "<unk>") from None


def candidate_bleu(bleu: SentenceBLEU, tokens: np.ndarray, sizes: np.ndarray, ref_tokens: np.ndarray,
                   ref_sizes: np.ndarray, ref_index: np.ndarray, strip: Sequence[int]) -> np.ndarray:
    """Sentence BLEU of each packed candidate against reference ``ref_index[i]``, the ids in ``strip`` left out."""
    strip_ids = np.array(sorted(set(strip)), np.int64)

    def stripped(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, np.int64)
        keep = ~np.isin(t, strip_ids)
        lens = np.bincount(np.repeat(np.arange(len(s)), s)[keep], minlength=len(s))
        return t[keep], lens

    hyp, hyp_lens = stripped(tokens, np.asarray(sizes, np.int64))
    ref, ref_lens = stripped(ref_tokens, np.asarray(ref_sizes, np.int64))
    return bleu.score_packed(hyp, hyp_lens, ref, ref_lens, ref_index)


def reference_tokens(reader, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids, sizes) of the references of the distinct ``ids`` (from ``reader.tokens(start, stop)``), and each
    id's place among them."""
    unique, place = np.unique(ids, return_inverse=True)
    if int(unique[-1] - unique[0]) < 4 * len(unique):  # the usual grouped lists: one read of the range
        tokens, sizes = reader.tokens(int(unique[0]), int(unique[-1]) + 1)
        sizes = sizes.astype(np.int64)
        parts = np.split(tokens, np.cumsum(sizes)[:-1])
        keep = unique - unique[0]
    else:  # ids from all over the split: by runs of consecutive ids
        runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)
        parts, size_parts = [], []
        for run in runs:
            t, z = reader.tokens(int(run[0]), int(run[-1]) + 1)
            size_parts.append(z.astype(np.int64))
            parts += np.split(t, np.cumsum(z.astype(np.int64))[:-1])
        sizes = np.concatenate(size_parts)
        keep = np.arange(len(unique))
    chosen = [parts[k] for k in keep.tolist()]
    return (np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)), sizes[keep], place


class KBestChoice:
    """The candidate kept so far for each sentence: the best score, or (Seq-Inter) the closest to the reference.

    For Seq-Inter, :meth:`keep` measures the candidates with ``metric`` (default: the ``--seq-inter``
    generator's BLEU) against the references read from ``reference`` (a chunked reader of the
    split's target side), the token ids in ``strip`` (EOS, padding) left out.
    """

    def __init__(self, n: int, seq_inter: bool = False, metric: SentenceBLEU | None = None, reference=None,
                 strip: Sequence[int] = ()):
        self.seq_inter = seq_inter
        self.metric = metric or (SentenceBLEU() if seq_inter else None)
        self.reference, self.strip = reference, list(strip)
        self.score = np.full(n, -np.inf)  # the kept candidate's score; -inf: no candidate yet (scores are finite)
        self.bleu = np.full(n, -np.inf) if seq_inter else None
        self.key = np.zeros(n, np.int64)  # hash of the kept candidate's line, to catch that line given again

    def choose(self, ids: np.ndarray, scores: np.ndarray, keys: np.ndarray,
               bleu: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Compare a chunk's candidates with those kept; (positions now kept, positions repeating a line).

        A repeated line (same id, score and text) is one that equals another line of this chunk
        or the line kept for its id: a file, or part of one, given twice always repeats the kept
        line. Different candidates with the same text (two segmentations that detokenize alike)
        differ in score and are not repeats.
        """
        if self.seq_inter and bleu is None:
            raise ValueError("Seq-Inter needs the candidates' BLEU")
        m = len(ids)
        if not m:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        by_key = np.argsort(keys, kind="stable")
        repeats = by_key[1:][keys[by_key][1:] == keys[by_key][:-1]]
        seen = self.score[ids] > -np.inf
        repeats = np.union1d(repeats, np.flatnonzero(seen & (self.key[ids] == keys)))

        order = np.argsort(ids, kind="stable")  # grouped by sentence, file order inside a group
        sid = ids[order]
        new = np.r_[True, sid[1:] != sid[:-1]]
        starts = np.flatnonzero(new)
        group = np.cumsum(new) - 1
        eligible = np.ones(m, bool)
        if self.seq_inter:
            b = bleu[order]
            eligible = b >= np.maximum.reduceat(b, starts)[group] - TIE_TOLERANCE
        # per group: BLEU-tied (all, for Seq-KD) first, then the higher score, then the earlier line
        ranked = np.lexsort((order, -scores[order], ~eligible, group))
        won = order[ranked[starts]]

        wid = ids[won]
        if self.seq_inter:
            gain = bleu[won] - self.bleu[wid]
            better = (gain > TIE_TOLERANCE) | ((np.abs(gain) <= TIE_TOLERANCE) & (scores[won] > self.score[wid]))
            self.bleu[wid[better]] = bleu[won][better]
        else:
            better = scores[won] > self.score[wid]
        kept = won[better]
        self.score[ids[kept]] = scores[kept]
        self.key[ids[kept]] = keys[kept]
        return kept, repeats

    def keep(self, chunk: Candidates, tokens: np.ndarray, sizes: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A chunk's candidates, encoded (``tokens`` with EOS, back to back; ``sizes``), compared with those kept:
        (sentence ids, tokens, sizes) of the candidates now kept, and the positions of lines repeating a line."""
        bleu = None
        if self.seq_inter:
            if self.reference is None:
                raise ValueError("Seq-Inter needs the references")
            refs, ref_sizes, ref_index = reference_tokens(self.reference, chunk.ids)
            bleu = candidate_bleu(self.metric, tokens, sizes, refs, ref_sizes, ref_index, self.strip)
        kept, repeats = self.choose(chunk.ids, chunk.scores, chunk.keys, bleu)
        ends = np.cumsum(sizes)
        parts = [tokens[e - z:e] for e, z in zip(ends[kept].tolist(), sizes[kept].tolist())]
        return chunk.ids[kept], (np.concatenate(parts) if parts else tokens[:0]), sizes[kept], repeats


# --- Pooled K-best lists: several teachers' candidates of a sentence, merged and chosen among ---

ENCODINGS = ("spm", "pieces", "words")  # how a teacher's text becomes the student's tokens (TokenEncoder)
SELECTIONS = ("best", "seq-inter", "mbr")
LN2 = math.log(2.0)


def is_generate_output(path: str) -> bool:
    """Whether ``path`` is fairseq-generate output (tagged ``S-``/``H-`` lines) rather than a K-best TSV."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    with open(path, "rb") as f:
        for raw in islice(f, 1000):
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            if re.match(rb"-?\d+\t", line):
                return False
            if re.match(rb"[A-Z]-\d+\t", line):
                return True
    return False  # a TSV, or a file whose first lines are neither: read_kbest names the bad line


def read_generate_kbest(path: str, n: int, detokenized: bool = False) -> Iterator[Candidates]:
    """Every hypothesis of fairseq-generate output (``--nbest K``) as K-best candidates.

    The text is the ``H-`` line's (the teacher's tokens), or with ``detokenized`` the ``D-`` line's
    (generated with ``--post-process``, for a teacher of another vocabulary); the score, which
    fairseq prints in base 2, is converted to a natural logarithm as other toolkits write it.
    """
    tag = "D" if detokenized else "H"
    ids, scores, numbers, texts, keys = [], [], [], [], []
    for sid, block in iter_blocks(path, errors="strict"):
        if sid == UNTAGGED:
            continue
        for number, t, rest in block:
            if t != tag:
                continue
            score, tab, text = rest.partition("\t")
            try:
                value = float(score)
            except ValueError:
                value = math.nan
            if not tab or not math.isfinite(value):
                raise UserError(f"{path}: line {number}: {t}-{sid} is not score<TAB>text: fairseq-generate "
                                "writes it so; the file is cut or was edited")
            if not 0 <= sid < n:
                raise UserError(f"{path}: line {number}: sentence id {sid} is outside the split's {n} sentences: "
                                "the output was generated from other data or another --gen-subset")
            ids.append(sid)
            scores.append(value * LN2)
            numbers.append(number)
            texts.append(text)
            keys.append(hash((sid, score, text)))
        if len(ids) >= CHUNK_LINES:
            yield Candidates(np.array(ids, np.int64), np.array(scores), np.array(numbers, np.int64), texts,
                             np.array(keys, np.int64))
            ids, scores, numbers, texts, keys = [], [], [], [], []
    if ids:
        yield Candidates(np.array(ids, np.int64), np.array(scores), np.array(numbers, np.int64), texts,
                         np.array(keys, np.int64))


@dataclass
class Pool:
    """The distinct candidates of some sentences, pooled from several teachers, grouped by sentence.

    ``log_weight`` is the log of the pooled weight (module of :func:`pool_candidates`);
    ``teachers`` a bit mask of the teachers that proposed the candidate; ``first`` the position
    of its first proposal in the input (teacher by teacher, file by file, line by line).
    """

    sid: np.ndarray
    group_sizes: np.ndarray
    tokens: np.ndarray  # packed, EOS included
    sizes: np.ndarray
    log_weight: np.ndarray
    teachers: np.ndarray
    first: np.ndarray


def _logsumexp_at(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """log(sum(exp(values))) over the runs of ``values`` that begin at ``starts``."""
    top = np.maximum.reduceat(values, starts)
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(values)]))
    return top + np.log(np.add.reduceat(np.exp(values - top[run]), starts))


def pool_candidates(sid: np.ndarray, teacher: np.ndarray, tokens: np.ndarray, sizes: np.ndarray,
                    scores: np.ndarray, n_teachers: int) -> Pool:
    """Merge the candidates (in input order) of several teachers per sentence.

    - Candidates with the same token ids (after re-encoding into the student's tokens) are one
      candidate; a teacher that proposed it more than once keeps its best score for it.
    - Each teacher's scores are normalized per sentence: the log-softmax over that teacher's
      distinct candidates, ``log p_t(c) = s_t(c) - log sum_c' exp(s_t(c'))`` (scores taken as
      natural-log probabilities), so that teachers whose scores are on other scales (per token or
      not, other lengths, other K) weigh the same.
    - The pooled weight is the teachers' mixture: ``w(c) = (1/T) sum_t p_t(c)``, ``p_t(c) = 0``
      where teacher t did not propose c, T = ``n_teachers`` (every teacher has every sentence).
    """
    m = len(sid)
    starts = np.cumsum(sizes) - sizes
    order = np.argsort(sid, kind="stable")
    # distinct candidates per sentence, numbered in order of first appearance
    seen: dict[tuple[int, bytes], int] = {}
    distinct = np.empty(m, np.int64)
    for k in order.tolist():
        key = (int(sid[k]), tokens[starts[k]:starts[k] + sizes[k]].tobytes())
        distinct[k] = seen.setdefault(key, len(seen))
    d = len(seen)
    # best score per (distinct candidate, teacher)
    entry = distinct * n_teachers + teacher
    by_entry = np.lexsort((-scores, entry))
    head = np.r_[True, entry[by_entry][1:] != entry[by_entry][:-1]]
    best = by_entry[head]  # one row per (candidate, teacher): its best score
    # log-softmax per (sentence, teacher) over the teacher's distinct candidates
    st = sid[best] * n_teachers + teacher[best]
    by_st = np.argsort(st, kind="stable")
    st_starts = np.flatnonzero(np.r_[True, st[by_st][1:] != st[by_st][:-1]])
    lse = _logsumexp_at(scores[best][by_st], st_starts)
    log_p = np.empty(len(best))
    log_p[by_st] = scores[best][by_st] - np.repeat(lse, np.diff(np.r_[st_starts, len(by_st)]))
    # mixture per distinct candidate (the rows of `best` are sorted by candidate)
    cand = distinct[best]
    c_starts = np.flatnonzero(np.r_[True, cand[1:] != cand[:-1]])
    log_weight = _logsumexp_at(log_p, c_starts) - math.log(n_teachers)
    mask = np.bitwise_or.reduceat(np.left_shift(1, teacher[best].astype(np.int64)), c_starts)
    # the first proposal of each distinct candidate: its sentence, its tokens, its place in the input
    first = np.full(d, m, np.int64)
    np.minimum.at(first, distinct, np.arange(m))
    group_sizes = np.bincount(sid[first], minlength=int(sid.max()) + 1 if m else 0)
    group_sizes = group_sizes[group_sizes > 0]
    out_tokens, out_sizes = _take(tokens, starts, sizes, first)
    return Pool(sid[first], group_sizes, out_tokens, out_sizes, log_weight, mask, first)


def _take(tokens: np.ndarray, starts: np.ndarray, sizes: np.ndarray, which: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    sel = sizes[which]
    offsets = np.repeat(starts[which] - (np.cumsum(sel) - sel), sel)
    return tokens[np.arange(int(sel.sum())) + offsets], sel


def choose_pooled(pool: Pool, select: str, strip: Sequence[int], mbr: MBR | None = None,
                  bleu: SentenceBLEU | None = None,
                  references: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The index into ``pool`` of each sentence's chosen candidate.

    ``best``: the highest pooled weight; ``seq-inter``: the closest to the reference by ``bleu``
    (``references``: packed token ids and sizes of the pool's sentences, in order), ties to the
    higher pooled weight; ``mbr``: :class:`fairseq_seqkd.seq_kd.mbr.MBR`, the pooled weights as
    its scores. Ties left are broken by the earlier candidate. ``strip``: ids (EOS, padding) that
    are not words.
    """
    if select == "best":
        return choose_in_groups(pool.log_weight, np.zeros(len(pool.sid)), pool.group_sizes)
    strip_ids = np.array(sorted(set(strip)), np.int64)
    keep = ~np.isin(pool.tokens, strip_ids)
    lens = np.bincount(np.repeat(np.arange(len(pool.sizes)), pool.sizes)[keep], minlength=len(pool.sizes))
    words = pool.tokens[keep]
    if select == "seq-inter":
        ref_tokens, ref_sizes = references
        ref_keep = ~np.isin(ref_tokens, strip_ids)
        ref_lens = np.bincount(np.repeat(np.arange(len(ref_sizes)), ref_sizes)[ref_keep], minlength=len(ref_sizes))
        index = np.repeat(np.arange(len(pool.group_sizes)), pool.group_sizes)
        values = (bleu or SentenceBLEU()).score_packed(words, lens, ref_tokens[ref_keep], ref_lens, index)
        return choose_in_groups(values, pool.log_weight, pool.group_sizes)
    if select == "mbr":
        chosen, _ = (mbr or MBR()).choose(words, lens, pool.group_sizes, pool.log_weight)
        return chosen
    raise ValueError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}")
