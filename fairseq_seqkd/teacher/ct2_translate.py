"""Translate with a CTranslate2 model: a test file fairseq-generate style, or a teacher's training set.

Output formats (``TranslateConfig.output_format``):

- ``generate``: fairseq-generate's ``S-``/``H-``/``D-`` lines (``nbest`` H/D pairs per sentence) and
  its ``Translated N sentences (T tokens) in Xs`` line, so :func:`fairseq_seqkd.evaluate.scoring.evaluate_generation`
  scores a CTranslate2 run exactly as it scores a fairseq one (same BLEU, same words per second).
- ``kbest``: the K-best TSV that ``fairseq-seqkd extract`` reads, one line per hypothesis,
  ``sentence_id<TAB>score<TAB>text``, best first within a sentence: ``sentence_id`` is the 0-based
  line number of the source file (global: the same in every shard), ``score`` the hypothesis'
  log-probability as CTranslate2 returns it: natural log, summed over the output tokens and EOS,
  divided by (output length + 1) ** ``lenpen`` (length-normalized, as fairseq; fairseq-generate
  prints the same number in base 2, i.e. divided by ln 2), ``text`` the detokenized hypothesis.
- ``text``: the 1-best detokenized hypothesis of each source line, one per line (line-aligned with
  the source, or with the shard's lines).

Decoding follows fairseq-generate's options: ``beam`` 1 is greedy; the output has at most
``int(max_len_a * (S + 1) + max_len_b)`` tokens, S the longest source of the batch in pieces (+1:
fairseq counts the source's EOS), and at least ``min_len`` tokens before EOS; ``lenpen`` is
fairseq's ``--lenpen`` and CTranslate2's ``length_penalty`` (both default 1, both normalize the
scores the same way). Sentences are sorted by source length and batched, as fairseq batches them,
so a batch's bound is close to each of its sentences' own. On the same model in float32, the
1-best equals fairseq-generate's; the K-best lists can differ: fairseq keeps the first ``beam``
hypotheses that end, CTranslate2 also keeps the others that end at that same step and returns the
K best of them all, so its list scores at least as well position by position
(tests/test_ct2_teacher.py, docs/pruning-and-export.md). At the length bound the two differ too:
fairseq forces EOS there, CTranslate2 stops without it.

Tokenization: the source is pieces separated by spaces (the encoded training data), or raw text
with ``source_spm`` (a sentencepiece model: OPUS-MT's ``source.spm``, the recipes' ``spm.model``).
The output text is detokenized with ``target_spm``, else with fairseq's ``--tokenizer``/``--bpe``
options (a zoo teacher's ``--tokenizer moses --bpe subword_nmt --bpe-codes FILE``: the text of
fairseq-generate's D- lines), else with fairseq's ``post_process`` (``sentencepiece``,
``subword_nmt``, ...), else the pieces joined by spaces; ``tokenized_output``
keeps the pieces.

Sharding: shard I of N is the contiguous block of lines ``[I*L//N, (I+1)*L//N)`` of the L source
lines, so the shards' text outputs concatenated in shard order are line-aligned with the source.
A shard is translated in chunks of ``chunk_sentences`` lines, each written atomically to
``OUT.chunks/``; a killed run resumes after its last finished chunk (chunks of another model, known
by content, are deleted first), and the chunks are joined into ``OUT`` (atomically) at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_open, atomic_write_text, content_fingerprint, count_text_lines
from fairseq_seqkd.layout import shard_range

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("generate", "kbest", "text")
PROGRESS_SECONDS = 60.0  # a progress line at least this often inside a long chunk


@dataclass
class TranslateConfig:
    """How to decode, what to write, which part of the source."""

    beam: int = field(default=1, metadata={"help": "beam size (1: greedy)"})
    nbest: int = field(default=1, metadata={"help": "hypotheses per sentence, best first (at most beam)"})
    batch_size: int = field(default=64, metadata={"help": "sentences per CTranslate2 batch"})
    max_len_a: float = field(default=0.0, metadata={"help": "output length bound a * (source + 1) + b, as fairseq"})
    max_len_b: int = field(default=200, metadata={"help": "output length bound a * (source + 1) + b, as fairseq"})
    min_len: int = field(default=1, metadata={"help": "output tokens before EOS at least (fairseq's --min-len)"})
    lenpen: float = field(default=1.0, metadata={"help": "length penalty: scores / length ** lenpen, as fairseq"})
    output_format: str = field(default="generate", metadata={"help": "generate, kbest (TSV) or text"})
    num_shards: int = field(default=1, metadata={"help": "split the source into this many contiguous shards"})
    shard_id: int = field(default=0, metadata={"help": "the shard to translate (0-based)"})
    chunk_sentences: int = field(default=10000, metadata={"help": "sentences per resumable chunk (0: one)"})
    source_spm: str | None = field(default=None, metadata={"help": "sentencepiece model: the source is raw text"})
    target_spm: str | None = field(default=None, metadata={"help": "sentencepiece model that detokenizes the output"})
    post_process: str | None = field(default=None, metadata={"help": "fairseq's --post-process for the output"})
    tokenized_output: bool = field(default=False, metadata={"help": "write the output pieces, not detokenized"})
    # fairseq-generate's --tokenizer / --bpe options: the output is detokenized as its D- lines are
    tokenizer: str | None = field(default=None, metadata={"help": "fairseq's --tokenizer (moses, space)"})
    bpe: str | None = field(default=None, metadata={"help": "fairseq's --bpe (subword_nmt, sentencepiece)"})
    bpe_codes: str | None = field(default=None, metadata={"help": "fairseq's --bpe-codes (subword_nmt)"})
    sentencepiece_model: str | None = field(default=None, metadata={"help": "fairseq's --sentencepiece-model"})
    moses_no_dash_splits: bool = field(default=False, metadata={"help": "fairseq's --moses-no-dash-splits"})
    moses_no_escape: bool = field(default=False, metadata={"help": "fairseq's --moses-no-escape"})
    target_lang: str | None = field(default=None, metadata={"help": "the output's language (Moses detokenizes by it)"})
    compute_type: str = field(default="default", metadata={"help": "CTranslate2 compute type"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0: CTranslate2 chooses)"})


@dataclass
class CT2Output:
    """Per sentence, in input order, its hypotheses (token lists, best first) and scores; the decoding time."""

    nbest: list[list[list[str]]]
    nbest_scores: list[list[float]]
    seconds: float

    @property
    def hypotheses(self) -> list[list[str]]:
        """The 1-best hypothesis of each sentence."""
        return [h[0] for h in self.nbest]

    @property
    def scores(self) -> list[float]:
        """The 1-best score of each sentence."""
        return [s[0] for s in self.nbest_scores]


def load_translator(model_dir: str, compute_type: str = "default", threads: int = 0):
    """A ``ctranslate2.Translator`` on CPU; ``threads`` 0 lets CTranslate2 choose."""
    import ctranslate2

    if not os.path.isfile(os.path.join(model_dir, "model.bin")):
        raise UserError(f"{model_dir}: no model.bin; is it a CTranslate2 model folder (written by "
                        "`fairseq-seqkd export --ct2` or by one of CTranslate2's converters)?")
    return ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type,
                                  inter_threads=1, intra_threads=threads)


def max_output_length(longest_source: int, max_len_a: float, max_len_b: int) -> int:
    """fairseq's bound on output tokens for a batch whose longest source has ``longest_source`` pieces."""
    return max(1, int(max_len_a * (longest_source + 1) + max_len_b))


def translate_tokens(translator, sources: list[list[str]], beam: int = 1, batch_size: int = 64,
                     max_len_b: int = 200, min_len: int = 1, nbest: int = 1, max_len_a: float = 0.0,
                     lenpen: float = 1.0) -> CT2Output:
    """Decode token lists sorted by length in batches of ``batch_size``; times only the decoding."""
    if not 1 <= nbest <= beam:
        raise UserError(f"--nbest {nbest} with --beam {beam}: nbest must be between 1 and the beam size")
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    hyps: list[list[list[str]]] = [[] for _ in sources]
    scores: list[list[float]] = [[] for _ in sources]
    start = time.perf_counter()
    for b in range(0, len(order), batch_size):
        ids = order[b:b + batch_size]
        batch = [sources[i] for i in ids]
        results = translator.translate_batch(
            batch, beam_size=beam, num_hypotheses=nbest, length_penalty=lenpen, max_batch_size=len(batch),
            max_decoding_length=max_output_length(max(map(len, batch)), max_len_a, max_len_b),
            min_decoding_length=min_len, return_scores=True)
        for i, r in zip(ids, results):
            hyps[i] = list(r.hypotheses)
            scores[i] = [float(s) for s in r.scores] if r.scores else [0.0] * len(r.hypotheses)
    return CT2Output(hyps, scores, time.perf_counter() - start)


def generate_format(sources: list[str], out: CT2Output, cfg: TranslateConfig | None = None,
                    first_id: int = 0, timing: bool = True) -> str:
    """fairseq-generate's text output for these translations (S-, H-, D- and the timing line)."""
    detok = _detokenizer(cfg or TranslateConfig())
    lines = []
    for i, (src, hyps, scores) in enumerate(zip(sources, out.nbest, out.nbest_scores), start=first_id):
        lines.append(f"S-{i}\t{src}")
        for hyp, score in zip(hyps, scores):
            lines += [f"H-{i}\t{score}\t{' '.join(hyp)}", f"D-{i}\t{score}\t{detok(hyp)}"]
    if timing:
        lines.append(timing_line(len(out.nbest), sum(len(h[0]) for h in out.nbest if h), out.seconds))
    return "".join(line + "\n" for line in lines)


def timing_line(sentences: int, tokens: int, seconds: float) -> str:
    """fairseq-generate's closing ``Translated N sentences (T tokens) in Xs`` line."""
    rate = sentences / seconds if seconds > 0 else float("inf")
    return (f"Translated {sentences:,} sentences ({tokens:,} tokens) in {seconds:.4f}s "
            f"({rate:.2f} sentences/s, {tokens / max(seconds, 1e-9):.2f} tokens/s)")


def _detokenizer(cfg: TranslateConfig):
    """pieces -> text: with the target sentencepiece model, else fairseq's --tokenizer/--bpe (as
    fairseq-generate's D- lines), else fairseq's post_process, else the pieces joined by spaces."""
    from fairseq_seqkd.data.prepare import normalize_line

    if cfg.target_spm:
        from fairseq_seqkd.data.prepare import load_sentencepiece

        sp = load_sentencepiece(cfg.target_spm)
        # one line of text whatever the model decodes to: the outputs are line and tab separated
        return lambda pieces: normalize_line(sp.decode(pieces))
    if cfg.bpe or cfg.tokenizer:
        from fairseq_seqkd.data.text_codec import TextCodec

        codec = TextCodec(cfg.bpe or "", cfg.bpe_codes or cfg.sentencepiece_model or "", cfg.target_lang or "",
                          cfg.tokenizer, cfg.moses_no_dash_splits, cfg.moses_no_escape)
        return lambda pieces: normalize_line(codec.decode(" ".join(pieces)))
    if cfg.post_process:
        from fairseq.data.data_utils import post_process as fairseq_post_process

        return lambda pieces: normalize_line(fairseq_post_process(" ".join(pieces), cfg.post_process))
    return lambda pieces: " ".join(pieces)


def format_chunk(cfg: TranslateConfig, first_id: int, sources: list[str], out: CT2Output) -> str:
    """One chunk's output text in ``cfg.output_format`` (no timing line)."""
    if cfg.output_format == "generate":
        return generate_format(sources, out, cfg, first_id, timing=False)
    detok = (lambda pieces: " ".join(pieces)) if cfg.tokenized_output else _detokenizer(cfg)
    lines = []
    for i, (hyps, scores) in enumerate(zip(out.nbest, out.nbest_scores), start=first_id):
        if cfg.output_format == "text":
            lines.append(detok(hyps[0]))
        else:
            lines += [f"{i}\t{score:.6f}\t{detok(hyp)}" for hyp, score in zip(hyps, scores)]
    return "".join(line + "\n" for line in lines)


def _check_config(cfg: TranslateConfig) -> None:
    if cfg.output_format not in OUTPUT_FORMATS:
        raise UserError(f"unknown output format {cfg.output_format!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    if cfg.beam < 1 or not 1 <= cfg.nbest <= cfg.beam:
        raise UserError(f"--beam {cfg.beam} --nbest {cfg.nbest}: the beam must be >= 1 and nbest between 1 "
                        "and the beam")
    if cfg.output_format == "text" and cfg.nbest != 1:
        raise UserError("--output-format text writes one translation per line; use kbest for --nbest > 1")
    if cfg.bpe is not None and cfg.bpe not in ("subword_nmt", "sentencepiece"):
        raise UserError(f"--bpe {cfg.bpe}: CTranslate2 output is detokenized with subword_nmt or sentencepiece")
    if cfg.bpe and not (cfg.bpe_codes if cfg.bpe == "subword_nmt" else cfg.sentencepiece_model):
        raise UserError(f"--bpe {cfg.bpe} needs its model: "
                        f"{'--bpe-codes' if cfg.bpe == 'subword_nmt' else '--sentencepiece-model'} FILE")
    if cfg.tokenizer == "moses" and not cfg.target_lang:
        raise UserError("--tokenizer moses detokenizes by language: give --target-lang")
    if not 0 <= cfg.shard_id < cfg.num_shards:
        raise UserError(f"--shard-id {cfg.shard_id} with --num-shards {cfg.num_shards}: "
                        "the shard id must be 0 .. num_shards - 1")
    if cfg.batch_size < 1 or cfg.chunk_sentences < 0:
        raise UserError("--batch-size must be >= 1 and --chunk-sentences >= 0")


def _source_lines(path: str) -> Iterator[str]:
    """The source file's lines without their newline (only ``\\n`` ends a line, as in fairseq-preprocess)."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such source file")
    with open(path, encoding="utf-8", newline="\n") as f:
        try:
            for line in f:
                yield line.rstrip("\n").rstrip("\r")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e}); convert it with iconv") from e


def count_source_lines(path: str) -> int:
    """Lines of the source file, as :func:`_source_lines` reads them."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such source file")
    return count_text_lines(path)


def _settings(model_dir: str, source_file: str, lines: int, cfg: TranslateConfig) -> dict:
    """What a finished chunk depends on: resuming with anything else would mix two runs.

    The model and the source are known by their content (:func:`content_fingerprint`), not by their
    paths or sizes: a retrained teacher of the same shape has a model.bin of the same size.
    """
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "threads", "chunk_sentences")}
    return {"model_fingerprint": content_fingerprint(model_dir), "source": os.path.basename(source_file),
            "source_fingerprint": content_fingerprint(source_file), "source_lines": lines, **keep}


def _open_chunks(chunk_dir: str, settings: dict) -> None:
    """Make ``chunk_dir`` hold only chunks made with ``settings``: an earlier run's are kept if it had the same.

    Chunks of another model are the old model's translations, of no use to this run: they are
    deleted and the shard starts afresh. Any other difference is refused (a mistaken option
    would otherwise throw away a run's work).
    """
    settings_path = os.path.join(chunk_dir, "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("model_fingerprint") != settings["model_fingerprint"]:
            chunks = len([n for n in os.listdir(chunk_dir) if n.endswith(".json") and n != "settings.json"])
            shutil.rmtree(chunk_dir)
            logger.warning("ct2-translate: %s: deleted %d finished chunk(s) of another model (fingerprint %s, now "
                           "%s): the shard starts afresh", chunk_dir, chunks,
                           (old.get("model_fingerprint") or "not recorded")[:12], settings["model_fingerprint"][:12])
        else:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if changed:
                raise UserError(f"{chunk_dir}: chunks of an unfinished run with other settings ({', '.join(changed)} "
                                "differ); rerun with the same options to resume it, or delete the folder")
            return
    atomic_write_text(settings_path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _chunk_paths(chunk_dir: str, first: int) -> tuple[str, str]:
    return os.path.join(chunk_dir, f"{first:012d}.out"), os.path.join(chunk_dir, f"{first:012d}.json")


def translate_file(model_dir: str, source_file: str, out_file: str, cfg: TranslateConfig | None = None) -> dict:
    """Translate ``source_file`` (or its shard ``cfg.shard_id``) into ``out_file`` in ``cfg.output_format``.

    Returns {"sentences", "first_id", "end_id", "hypotheses", "seconds" (decoding only, resumed chunks
    included), "words_per_s" (source pieces per second), "chunks", "resumed_chunks"}.
    """
    cfg = cfg or TranslateConfig()
    _check_config(cfg)
    lines = count_source_lines(source_file)
    if lines == 0:
        raise UserError(f"{source_file}: empty source file")
    first, end = shard_range(lines, cfg.num_shards, cfg.shard_id)
    translator = load_translator(model_dir, cfg.compute_type, cfg.threads)
    encode = None
    if cfg.source_spm:
        from fairseq_seqkd.data.prepare import encode_lines, load_sentencepiece

        sp = load_sentencepiece(cfg.source_spm)
        encode = lambda texts: encode_lines(sp, texts, threads=cfg.threads)  # noqa: E731
    chunk = cfg.chunk_sentences or max(end - first, 1)
    chunk_dir = out_file + ".chunks"
    _open_chunks(chunk_dir, _settings(model_dir, source_file, lines, cfg))

    stats = {"seconds": 0.0, "words": 0, "tokens": 0, "hypotheses": 0}
    resumed, started, last_log = 0, time.perf_counter(), 0.0
    reader = _source_lines(source_file)
    line_id = 0
    starts = list(range(first, end, chunk))
    for c, c_first in enumerate(starts):
        c_end = min(c_first + chunk, end)
        out_path, stats_path = _chunk_paths(chunk_dir, c_first)
        texts = []
        for text in reader:  # read on to this chunk's lines (the reader never goes back)
            if line_id >= c_first:
                texts.append(text)
            line_id += 1
            if line_id >= c_end:
                break
        if os.path.exists(stats_path):  # finished by an earlier run
            with open(stats_path, encoding="utf-8") as f:
                done = json.load(f)
            resumed += 1
        else:
            pieces = encode(texts) if encode else [t.split() for t in texts]
            out = translate_tokens(translator, pieces, cfg.beam, cfg.batch_size, cfg.max_len_b, cfg.min_len,
                                   cfg.nbest, cfg.max_len_a, cfg.lenpen)
            shown = [" ".join(p) for p in pieces] if encode else texts
            atomic_write_text(out_path, format_chunk(cfg, c_first, shown, out))
            done = {"seconds": out.seconds, "words": sum(map(len, pieces)),
                    "tokens": sum(len(h[0]) for h in out.nbest if h),
                    "hypotheses": sum(map(len, out.nbest))}
            atomic_write_text(stats_path, json.dumps(done) + "\n")  # the chunk counts as done from here
        for k in stats:
            stats[k] += done[k]
        now = time.perf_counter()
        if c + 1 == len(starts) or now - last_log >= PROGRESS_SECONDS or c == 0:
            last_log = now
            n_done, n_all = c_end - first, end - first
            rate = stats["words"] / max(stats["seconds"], 1e-9)
            eta = (n_all - n_done) * stats["seconds"] / max(n_done, 1)
            logger.info("ct2-translate: shard %d of %d: %d of %d sentences (%.1f%%), chunk %d of %d%s, "
                        "%.1f source words/s, about %.0f s left", cfg.shard_id, cfg.num_shards, n_done, n_all,
                        100.0 * n_done / max(n_all, 1), c + 1, len(starts),
                        f" ({resumed} resumed)" if resumed else "", rate, eta)
    with atomic_open(out_file) as f:
        for c_first in starts:
            with open(_chunk_paths(chunk_dir, c_first)[0], encoding="utf-8") as part:
                shutil.copyfileobj(part, f)
        if cfg.output_format == "generate":
            f.write(timing_line(end - first, stats["tokens"], stats["seconds"]) + "\n")
    shutil.rmtree(chunk_dir, ignore_errors=True)
    logger.info("ct2-translate: wrote %s (%d sentences) in %.1f s", out_file, end - first,
                time.perf_counter() - started)
    return {"sentences": end - first, "first_id": first, "end_id": end, "hypotheses": stats["hypotheses"],
            "seconds": round(stats["seconds"], 4),
            "words_per_s": round(stats["words"] / max(stats["seconds"], 1e-9), 1),
            "chunks": len(starts), "resumed_chunks": resumed}
