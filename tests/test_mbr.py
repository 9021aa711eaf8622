"""MBR selection: the batched choice equals a plain computation with sacrebleu's sentence BLEU or chrF, pair by pair."""

import os
import sys

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF

from fairseq_seqkd.seq_kd import mbr
from fairseq_seqkd.seq_kd.mbr import MBR
from fairseq_seqkd.seq_kd.sentence_bleu import SentenceBLEU, pack
from fairseq_seqkd.seq_kd.sentence_chrf import PieceText

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from mbr_speed import sacrebleu_choice  # noqa: E402


def _groups(seed: int, sentences: int, k_max: int, vocab: int = 12):
    """Candidates of several sentences: variants of one base sentence each (shared n-grams of every order),
    some empty, some repeated, a few groups of one."""
    rng = np.random.default_rng(seed)
    cands, sizes = [], []
    for _ in range(sentences):
        k = int(rng.integers(1, k_max + 1))
        base = rng.integers(4, vocab, int(rng.integers(1, 14)))
        group = []
        for _ in range(k):
            c = base.copy()
            swap = rng.random(len(c)) < 0.3
            c[swap] = rng.integers(4, vocab, int(swap.sum()))
            c = c[:len(c) - int(rng.integers(0, 3))]
            group.append(c.tolist() if rng.random() > 0.05 else [])
        if k > 2 and rng.random() < 0.3:
            group[-1] = list(group[0])
        cands += group
        sizes.append(k)
    scores = rng.choice([-2.0, -1.0, -0.5, -0.25, -0.1], len(cands))
    return cands, np.array(sizes), scores


def _plain_choice(cands, sizes, scores, weights: str, sacre: BLEU):
    """Expected utility by hand: sacrebleu pair by pair (benchmarks/mbr_speed.py, the benchmark's reference)."""
    return sacrebleu_choice([" ".join(map(str, c)) for c in cands], sizes, scores, sacre, weights)


@pytest.mark.parametrize("weights", ["scores", "uniform"])
@pytest.mark.parametrize("smooth", [("exp", None, True), ("floor", 0.1, True), ("add-k", 1.0, False)])
def test_choice_equals_sacrebleu_pairwise(weights, smooth, monkeypatch):
    method, value, effective = smooth
    cands, sizes, scores = _groups(seed=len(weights) + len(method), sentences=60, k_max=9)
    # small batches: groups of one batch and of several, pairs compared in pieces
    monkeypatch.setattr(mbr, "MAX_CANDIDATES", 40)
    monkeypatch.setattr(mbr, "MAX_PAIR_CELLS", 64)
    choice = MBR(weights=weights, bleu=SentenceBLEU(method, value, effective))
    tokens, lens = pack(cands)
    chosen, eu = choice.choose(tokens, lens, sizes, scores)
    sacre = BLEU(tokenize="none", smooth_method=method, smooth_value=value, effective_order=effective)
    plain, plain_eu = _plain_choice(cands, sizes, scores, weights, sacre)
    assert np.abs(eu - np.array(plain_eu)).max() < 1e-9
    assert chosen.tolist() == plain
    assert (sizes == 1).any() and (lens == 0).any()


# pieces as a sentencepiece dictionary holds them: specials, words (▁), word parts, non-ASCII, one of a space's width
SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>", "\u2581the", "\u2581cat", "s", "\u2581sa", "t", "\u2581ö", "ßé", "\u2581",
           "at", "\u2581a", ".", "\u2581Mat", "te"]


@pytest.mark.parametrize("weights", ["scores", "uniform"])
def test_chrf_choice_equals_sacrebleu_pairwise(weights, monkeypatch):
    cands, sizes, scores = _groups(seed=7 + len(weights), sentences=60, k_max=9, vocab=len(SYMBOLS))
    cands[5] = [3, 2, 1]  # unk is its symbol's text, the specials nothing (an empty text)
    monkeypatch.setattr(mbr, "MAX_CANDIDATES", 40)
    monkeypatch.setattr(mbr, "MAX_PAIR_CELLS", 64)
    text = PieceText(SYMBOLS, unk=3, skip=[0, 1, 2])
    tokens, lens = pack(cands)
    texts = text.texts(tokens, lens)
    assert texts[5] == "<unk>" and any(t.startswith("the cat") or " ö" in t for t in texts)
    chosen, eu = MBR("chrf", weights, text=text).choose(tokens, lens, sizes, scores)
    plain, plain_eu = sacrebleu_choice(texts, sizes, scores, CHRF(), weights)
    assert np.abs(eu - np.array(plain_eu)).max() < 1e-9
    assert chosen.tolist() == plain
    assert (sizes == 1).any() and (lens == 0).any()
    assert MBR("chrf", text=text).signature() == (
        "mbr|weights:scores|others-only|utility:sentence-chrf|nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|beta:2"
        "|tok:pieces-decoded")
    with pytest.raises(ValueError, match="chrF utility reads the candidates' text"):
        MBR("chrf")


def test_pairs_and_edge_cases():
    # one candidate: kept; identical candidates: the higher score; the majority wins over the best score
    tokens, lens = pack([[5, 6, 7], [5, 6, 7, 8], [5, 6, 7, 8], [9, 9, 9, 9]])
    chosen, eu = MBR(weights="uniform").choose(tokens, lens, np.array([1, 3]), np.array([0.0, -3.0, -2.0, -0.1]))
    assert chosen.tolist() == [0, 2] and eu == pytest.approx([0.0, 50.0, 50.0, 0.0])
    choice = MBR()
    # extreme weights: no overflow, no 0/0
    chosen, eu = choice.choose(tokens, lens, np.array([4]), np.array([-1e4, 0.0, 800.0, -800.0]))
    assert np.isfinite(eu).all() and chosen.tolist() == [2] and eu[1] == pytest.approx(100.0)
    # only empty candidates, and no candidates at all
    assert MBR().choose(np.zeros(0, np.int64), np.zeros(2, np.int64), np.array([2]), np.zeros(2))[0].tolist() == [0]
    with pytest.raises(ValueError, match="unknown MBR weights"):
        MBR(weights="softmax")
    assert MBR().signature().startswith("mbr|weights:scores|others-only|utility:sentence-bleu|")
