"""Score ``fairseq-generate`` output: every sentence or an error, sacrebleu with its signature.

fairseq silently drops up to 7 sentences per split unless ``--required-batch-size-multiple 1``
is given; a BLEU over fewer sentences than the test set is an error here, not a score.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_write_text, format_ids, read_lines
from fairseq_seqkd.teacher.generate_output import UNTAGGED, iter_blocks, translated_count

_PPL = re.compile(r"\|\s*ppl\s+([\d.]+)")


@dataclass
class GenerateOutput:
    """What one ``fairseq-generate`` run printed: 1-best per sentence id, and its timing."""

    path: str
    hypotheses: dict[int, str] = field(default_factory=dict)  # detokenized (D- lines)
    sources: dict[int, str] = field(default_factory=dict)
    log2_probs: dict[int, float] = field(default_factory=dict)  # the 1-best's P- scores summed (base 2, EOS too)
    seconds: float | None = None
    tokens: int | None = None


def parse_generate_output(path: str, log: str | None = None) -> GenerateOutput:
    """Read S-/D- lines (first D- line per id is the 1-best) and the 'Translated ...' line.

    fairseq-generate prints hypotheses on stdout and its timing on stderr; ``log`` is the file
    that holds stderr when it was kept apart (so no log line can land inside a hypothesis).
    """
    out = GenerateOutput(path)
    for name in [path] + ([log] if log else []):
        for sid, lines in iter_blocks(name, errors="strict"):
            for _number, tag, rest in lines:
                if tag == "S":
                    out.sources[sid] = rest
                elif tag == "D":
                    if sid not in out.hypotheses:
                        out.hypotheses[sid] = rest.partition("\t")[2]
                elif tag == "P":
                    if sid not in out.log2_probs:
                        out.log2_probs[sid] = sum(map(float, rest.split()))
                elif sid == UNTAGGED:
                    t = translated_count(rest)
                    if t is not None and t[2] is not None:
                        _sentences, out.tokens, out.seconds = t
    return out


def mean_output_probability(gen: GenerateOutput, expected: int) -> float | None:
    """The mean over sentences of the 1-best's probability under the model, p(t = y-hat) in the paper's
    Table 1 (for the greedy output: how peaked the model is); None without P- lines (CTranslate2's output)."""
    if len(gen.log2_probs) != expected:
        return None
    return sum(2.0 ** v for v in gen.log2_probs.values()) / expected


def ordered_hypotheses(gen: GenerateOutput, expected: int) -> list[str]:
    """The 1-best hypotheses in id order; a missing or extra id is an error naming the ids."""
    missing = [i for i in range(expected) if i not in gen.hypotheses]
    extra = sorted(i for i in gen.hypotheses if not 0 <= i < expected)
    if missing or extra:
        raise UserError(
            f"{gen.path}: fairseq-generate printed {len(gen.hypotheses)} hypotheses for a test set "
            f"of {expected} sentences (missing ids: {format_ids(missing)}; unexpected ids: {format_ids(extra)}). "
            "fairseq drops sentences unless told not to: rerun fairseq-generate with "
            "--required-batch-size-multiple 1, and check that the reference file matches the split."
        )
    return [gen.hypotheses[i] for i in range(expected)]


def count_parameters(checkpoint: str) -> dict[str, int]:
    """Parameters and non-zero parameters of a fairseq checkpoint's model, tied tensors once."""
    from fairseq_seqkd.checkpoints.storage import load_checkpoint
    from fairseq_seqkd.compress.export import parameter_counts

    return parameter_counts(load_checkpoint(checkpoint)["model"])


def parse_ppl(validate_log: str) -> float:
    """Perplexity from a ``fairseq-validate`` log (its last '| ppl X' entry)."""
    found = _PPL.findall("\n".join(read_lines(validate_log)))
    if not found:
        raise UserError(f"{validate_log}: no '| ppl' entry; is it the output of fairseq-validate?")
    return float(found[-1])


def evaluate_generation(gen_path: str, ref_path: str, src_path: str | None = None,
                        tokenize: str = "13a", log_path: str | None = None) -> dict:
    """BLEU (sacrebleu, with signature), sentence count, source words/s and the outputs' mean probability
    under the model (``mean_output_probability``) of one generate run."""
    from sacrebleu.metrics import BLEU

    refs = read_lines(ref_path)
    gen = parse_generate_output(gen_path, log_path)
    hyps = ordered_hypotheses(gen, len(refs))
    bleu = BLEU(tokenize=tokenize)
    score = bleu.corpus_score(hyps, [refs])
    if src_path is not None:
        src_words = sum(len(s.split()) for s in read_lines(src_path))
    else:
        src_words = sum(len(s.split()) for s in gen.sources.values())
    result = {
        "bleu": round(score.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "sentences": len(hyps),
        "seconds": gen.seconds,
        # fairseq's own timing covers decoding only, not start-up and model loading
        "words_per_s": round(src_words / gen.seconds, 1) if gen.seconds else None,
        "output_prob": mean_output_probability(gen, len(hyps)),
    }
    return result


def score_system(results_dir: str, name: str, outputs: Sequence[tuple[str, str, str | None]] = (),
                 ref: str | None = None, src: str | None = None, tokenize: str = "13a",
                 checkpoint: str | None = None, validate_log: str | None = None,
                 extra: dict | None = None) -> tuple[dict, str]:
    """Score (output, 'greedy' or 'beam', its log) runs, parameters and perplexity into RESULTS_DIR/NAME.json."""
    values: dict = {}
    for path, decoding, log in outputs:
        if not ref or decoding not in ("greedy", "beam"):
            raise UserError(f"{path}: scoring a generation output needs the reference (--ref) and its "
                            f"decoding (greedy or beam; got {decoding!r})")
        res = evaluate_generation(path, ref, src, tokenize, log)
        values.update({f"bleu_{decoding}": res["bleu"], f"words_per_s_{decoding}": res["words_per_s"],
                       f"output_prob_{decoding}": res["output_prob"],
                       "bleu_signature": res["bleu_signature"], "sentences": res["sentences"],
                       # what the report rescores for intervals and p-values, relative to the results file
                       f"output_{decoding}": _relative(path, results_dir), "reference": _relative(ref, results_dir),
                       "tokenize": tokenize})
    if checkpoint:
        values.update(count_parameters(checkpoint))
    if validate_log:
        values["ppl"] = parse_ppl(validate_log)
    values.update(extra or {})
    return values, update_system_result(results_dir, name, values)


def _relative(path: str, results_dir: str) -> str:
    """``path`` relative to ``results_dir``: a run folder moved or read from elsewhere still finds it."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(results_dir))


def scored_file(results_dir: str, rel: str) -> str:
    """A file a results JSON in ``results_dir`` records (``output_greedy``, ``reference``...), as a path."""
    return os.path.normpath(os.path.join(results_dir, rel))


def read_hypotheses(gen_path: str, expected: int) -> list[str]:
    """The 1-best detokenized hypotheses of a fairseq-generate output in id order, exactly as scored here."""
    return ordered_hypotheses(parse_generate_output(gen_path), expected)


def update_system_result(results_dir: str, name: str, values: dict) -> str:
    """Merge ``values`` into ``results_dir/NAME.json`` atomically; return the path."""
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{name}.json")
    current = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            current = json.load(f)
    current.update(values)
    atomic_write_text(path, json.dumps(current, indent=2, sort_keys=True) + "\n")
    return path
