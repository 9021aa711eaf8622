"""Translate a tokenized source file with a CTranslate2 model, printing what fairseq-generate prints.

The output has fairseq-generate's ``S-``/``H-``/``D-`` lines and its ``Translated N sentences
(T tokens) in Xs`` line, so :func:`fairseq_seqkd.evaluation.evaluate_generation` scores a
CTranslate2 run exactly as it scores a fairseq one (same BLEU, same words per second).
Decoding options follow fairseq-generate's: ``beam`` 1 is greedy, lengths are capped at
``max_len_b`` tokens (fairseq's default 200, its ``--max-len-a`` being 0) and at least
``min_len`` tokens come before EOS (fairseq's ``--min-len``, default 1: never an empty output).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_write_text, read_lines


@dataclass
class CT2Output:
    """Hypotheses (token lists) in input order, with their scores and the decoding time."""

    hypotheses: list[list[str]]
    scores: list[float]
    seconds: float


def load_translator(model_dir: str, compute_type: str = "default", threads: int = 0):
    """A ``ctranslate2.Translator`` on CPU; ``threads`` 0 lets CTranslate2 choose."""
    import ctranslate2

    if not os.path.isfile(os.path.join(model_dir, "model.bin")):
        raise UserError(f"{model_dir}: no model.bin; is it a CTranslate2 model folder written by "
                        "`fairseq-seqkd export --ct2`?")
    return ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type,
                                  inter_threads=1, intra_threads=threads)


def translate_tokens(translator, sources: list[list[str]], beam: int = 1, batch_size: int = 64,
                     max_len_b: int = 200, min_len: int = 1) -> CT2Output:
    """Decode token lists in batches of ``batch_size``; times only the decoding."""
    hyps: list[list[str]] = []
    scores: list[float] = []
    start = time.perf_counter()
    for i in range(0, len(sources), batch_size):
        results = translator.translate_batch(
            sources[i:i + batch_size], beam_size=beam, max_batch_size=batch_size,
            max_decoding_length=max_len_b, min_decoding_length=min_len, return_scores=True)
        for r in results:
            hyps.append(r.hypotheses[0])
            scores.append(float(r.scores[0]) if r.scores else 0.0)
    return CT2Output(hyps, scores, time.perf_counter() - start)


def generate_format(sources: list[str], out: CT2Output, post_process: str | None = None) -> str:
    """fairseq-generate's text output for these translations (S-, H-, D- and the timing line)."""
    from fairseq.data.data_utils import post_process as fairseq_post_process

    lines = []
    for i, (src, hyp, score) in enumerate(zip(sources, out.hypotheses, out.scores)):
        text = " ".join(hyp)
        detok = fairseq_post_process(text, post_process) if post_process else text
        lines += [f"S-{i}\t{src}", f"H-{i}\t{score}\t{text}", f"D-{i}\t{score}\t{detok}"]
    tokens = sum(len(h) for h in out.hypotheses)
    n = len(out.hypotheses)
    rate = n / out.seconds if out.seconds > 0 else float("inf")
    lines.append(f"Translated {n:,} sentences ({tokens:,} tokens) in {out.seconds:.4f}s "
                 f"({rate:.2f} sentences/s, {tokens / max(out.seconds, 1e-9):.2f} tokens/s)")
    return "\n".join(lines) + "\n"


def translate_file(model_dir: str, source_file: str, out_file: str, beam: int = 1, batch_size: int = 64,
                   max_len_b: int = 200, compute_type: str = "default", threads: int = 0,
                   post_process: str | None = None) -> dict:
    """Translate ``source_file`` (one tokenized sentence per line) into fairseq-generate format."""
    sources = read_lines(source_file)
    if not sources:
        raise UserError(f"{source_file}: empty source file")
    translator = load_translator(model_dir, compute_type, threads)
    out = translate_tokens(translator, [s.split() for s in sources], beam, batch_size, max_len_b)
    atomic_write_text(out_file, generate_format(sources, out, post_process))
    return {"sentences": len(sources), "seconds": round(out.seconds, 4),
            "words_per_s": round(sum(len(s.split()) for s in sources) / max(out.seconds, 1e-9), 1)}
