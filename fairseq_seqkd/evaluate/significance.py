"""BLEU and chrF with 95% confidence intervals and paired p-values: sacrebleu's paired bootstrap.

Every number here is sacrebleu's own (``sacrebleu.significance.PairedTest``, test ``bs``): 1,000
resamples drawn with the seed sacrebleu's command line uses by default (12345, which
``SACREBLEU_SEED`` would change there; here it is fixed), so ``sacrebleu REF -i BASE SYS
--paired-bs -m bleu chrf`` prints the same intervals and p-values. An interval is sacrebleu's:
the resamples' mean +- half the spread between their 2.5th and 97.5th percentiles.

A finding compares two systems that need not include the baseline (beam against greedy, say); its
p-value is another PairedTest on the pair, and its interval on the difference comes from the two
systems' BLEU on the same resamples (``sacrebleu.significance._bootstrap_resample`` draws the same
indices for every system of a test set, as it is seeded the same) through sacrebleu's
``estimate_ci``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

SEED = 12345  # sacrebleu's default SACREBLEU_SEED
RESAMPLES = 1000  # sacrebleu's default --paired-bs-n
P_SIGNIFICANT = 0.05
BASELINE = "baseline"


@contextmanager
def _seeded() -> Iterator[None]:
    """SACREBLEU_SEED set to SEED for the duration: sacrebleu reads its seed from there."""
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(SEED)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = old


def _interval(mean: float, half: float) -> list[float]:
    # sacrebleu's means are numpy float32: plain floats for JSON
    return [round(float(mean - half), 4), round(float(mean + half), 4)]


def metrics(tokenize: str = "13a", refs: Sequence[str] | None = None) -> dict:
    """The two metrics, as sacrebleu's command line names them (``-m bleu chrf``, its defaults); with
    ``refs``, each holds the references' statistics once instead of once per system."""
    from sacrebleu.metrics import BLEU, CHRF

    cached = None if refs is None else [list(refs)]
    return {"BLEU": BLEU(tokenize=tokenize, references=cached), "chrF": CHRF(references=cached)}


class ScoredTestSet:
    """Systems scored on one test set's references: each metric's reference statistics computed once,
    each system's BLEU resamples once (``key`` names a system's hypotheses, e.g. (name, decoding))."""

    def __init__(self, refs: Sequence[str], tokenize: str = "13a"):
        self.metrics = metrics(tokenize, refs)
        self.resampled: dict = {}

    def paired_scores(self, hypotheses: Mapping[str, Sequence[str]],
                      baseline: str | None) -> tuple[dict[str, dict], dict[str, str]]:
        """See :func:`paired_scores`."""
        from sacrebleu.significance import PairedTest

        names = list(hypotheses)
        if baseline is not None:
            names = [baseline] + [n for n in names if n != baseline]
        out: dict[str, dict] = {}
        signatures: dict[str, str] = {}
        # with no baseline, each system is a test of its own: its interval, no p-value
        groups = [names] if baseline is not None else [[n] for n in names]
        with _seeded():
            for group in groups:
                test = PairedTest([(n, list(hypotheses[n])) for n in group], self.metrics, None, test_type="bs",
                                  n_samples=RESAMPLES)
                sigs, scores = test()
                # sacrebleu names its columns by score (BLEU, chrF2), in the order of ``metrics``
                for key, metric in zip(("bleu", "chrf"), [k for k in scores if k != "System"], strict=True):
                    signatures[key] = sigs[metric].format()
                    for name, result in zip(scores["System"], scores[metric], strict=True):
                        row = out.setdefault(name, {})
                        row[key] = round(float(result.score), 2)
                        row[f"{key}_ci"] = _interval(result.mean, result.ci)
                        row[f"p_{key}"] = None if result.p_value is None else round(float(result.p_value), 4)
        return out, signatures

    def _bleu_resamples(self, key, hyps: Sequence[str]):
        from sacrebleu.significance import _bootstrap_resample

        if key not in self.resampled:
            import numpy as np

            bleu = self.metrics["BLEU"]
            with _seeded():
                _seed, samples = _bootstrap_resample(bleu._extract_corpus_statistics(list(hyps), None), bleu,
                                                     RESAMPLES)
            self.resampled[key] = np.array([s.score for s in samples])
        return self.resampled[key]

    def pair_noise(self, key_a, hyps_a: Sequence[str], key_b, hyps_b: Sequence[str]) -> dict:
        """See :func:`pair_noise`."""
        from sacrebleu.significance import PairedTest, estimate_ci

        with _seeded():
            _sigs, scores = PairedTest([("B", list(hyps_b)), ("A", list(hyps_a))], {"BLEU": self.metrics["BLEU"]},
                                       None, test_type="bs", n_samples=RESAMPLES)()
        base, mine = scores["BLEU"]
        mean, half = estimate_ci(self._bleu_resamples(key_a, hyps_a) - self._bleu_resamples(key_b, hyps_b))
        return {"diff": round(float(mine.score - base.score), 2), "p": round(float(mine.p_value), 4),
                "interval": _interval(mean, half)}


def paired_scores(hypotheses: Mapping[str, Sequence[str]], refs: Sequence[str], baseline: str | None,
                  tokenize: str = "13a") -> tuple[dict[str, dict], dict[str, str]]:
    """Each system's BLEU and chrF, 95% intervals and p-values against ``baseline`` (one of ``hypotheses``).

    Returns ``({name: {"bleu", "bleu_ci", "chrf", "chrf_ci", "p_bleu", "p_chrf"}}, {"bleu", "chrf"}
    signatures)``; the baseline's p-values are None, and so are all where ``baseline`` is None (the
    intervals are then each system's own, as with ``sacrebleu --confidence``).
    """
    return ScoredTestSet(refs, tokenize).paired_scores(hypotheses, baseline)


def pair_noise(hyps_a: Sequence[str], hyps_b: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> dict:
    """BLEU(A) - BLEU(B) on ``refs``: ``{"diff", "p", "interval"}``, p from sacrebleu's paired bootstrap
    (B the baseline), the interval on the difference from the two systems' scores on the same resamples."""
    return ScoredTestSet(refs, tokenize).pair_noise("A", hyps_a, "B", hyps_b)


DECODINGS = ("greedy", "beam")


def _scored_outputs(results_dir: str, systems: Mapping[str, dict]) -> tuple[dict, list[str], str] | None:
    """``({(name, decoding): hypotheses}, reference lines, tokenize)`` of the systems whose results record
    their outputs (``fairseq-seqkd evaluate`` since it records them); None where none does."""
    from fairseq_seqkd.errors import UserError
    from fairseq_seqkd.evaluate.scoring import read_hypotheses, scored_file
    from fairseq_seqkd.io_utils import read_lines

    hyps: dict[tuple[str, str], list[str]] = {}
    reference = tokenize = refs = None
    for name, r in systems.items():
        if not r.get("reference"):
            continue
        ref = scored_file(results_dir, r["reference"])
        if reference is None:
            reference, tokenize, refs = ref, r.get("tokenize", "13a"), read_lines(ref)
        elif (ref, r.get("tokenize", "13a")) != (reference, tokenize):
            raise UserError(f"{results_dir}/{name}.json: scored against {ref} (tokenize {r.get('tokenize')}), "
                            f"another system of this test set against {reference} (tokenize {tokenize}); "
                            "rerun the evaluation of the test set so that every system has the same reference")
        for decoding in DECODINGS:
            rel = r.get(f"output_{decoding}")
            if rel is None or r.get(f"bleu_{decoding}") is None:
                continue
            path = scored_file(results_dir, rel)
            if not os.path.exists(path):
                raise UserError(f"{path}: missing, but {results_dir}/{name}.json was scored from it; rerun the "
                                f"evaluation of {name} to write both again")
            hyps[(name, decoding)] = read_hypotheses(path, len(refs))
    return None if reference is None else (hyps, refs, tokenize)


def test_set_noise(results_dir: str, systems: dict[str, dict], pairs: Sequence[tuple[str, str, str, str]],
                   baseline: str = BASELINE) -> dict:
    """Add to each of ``systems`` (read from ``results_dir``) whose outputs are recorded ``bleu_D_ci``,
    ``chrf_D``, ``chrf_D_ci``, ``p_D``, ``p_chrf_D`` (D greedy and beam; p against ``baseline``, also
    the teacher's), ``chrf_signature`` and ``significance_signature``; return ``pair_noise`` of each of
    ``pairs`` (a, decoding, b, decoding) both of whose outputs are there."""
    from fairseq_seqkd.errors import UserError

    scored = _scored_outputs(results_dir, systems)
    if scored is None:
        return {}
    hyps, refs, tokenize = scored
    scorer = ScoredTestSet(refs, tokenize)
    for decoding in DECODINGS:
        mine = {name: h for (name, d), h in hyps.items() if d == decoding}
        if not mine:
            continue
        rows, signatures = scorer.paired_scores(mine, baseline if baseline in mine else None)
        for name, row in rows.items():
            recorded = systems[name][f"bleu_{decoding}"]
            if abs(row["bleu"] - recorded) > 0.01:
                raise UserError(f"{results_dir}/{name}.json records {decoding} BLEU {recorded}, but its output "
                                f"{systems[name][f'output_{decoding}']} scores {row['bleu']} now: the output changed "
                                f"after it was scored; rerun the evaluation of {name}")
            systems[name].update({
                f"bleu_{decoding}_ci": row["bleu_ci"], f"p_{decoding}": row["p_bleu"],
                f"chrf_{decoding}": row["chrf"], f"chrf_{decoding}_ci": row["chrf_ci"],
                f"p_chrf_{decoding}": row["p_chrf"], "chrf_signature": signatures["chrf"],
                "significance_signature": signatures["bleu"]})
    return {pair: scorer.pair_noise(pair[:2], hyps[pair[:2]], pair[2:], hyps[pair[2:]])
            for pair in pairs if pair[:2] in hyps and pair[2:] in hyps}
