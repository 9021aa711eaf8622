"""The batched sentence BLEU equals its plain-loop definition and sacrebleu's sentence BLEU."""

import logging
import random

import pytest
import torch
from sacrebleu.metrics import BLEU

from fairseq_seqkd.seq_kd.sentence_bleu import (
    SMOOTH_METHODS,
    SentenceBLEU,
    pack,
    sentence_bleu_packed,
    sentence_bleu_plain,
)

CONFIGS = [(m, v, e) for m in SMOOTH_METHODS for v in (None, 0.5) for e in (True, False)
           if v is None or m in ("floor", "add-k")]


def _random_pairs(seed: int, n_refs: int = 60, per_ref: int = 7, vocab: int = 6, max_len: int = 10,
                  offset: int = 0):
    rng = random.Random(seed)
    refs = [[offset + rng.randrange(vocab) for _ in range(rng.randrange(max_len))] for _ in range(n_refs)]
    hyps, index = [], []
    for r, ref in enumerate(refs):
        for _ in range(per_ref):
            if ref and rng.random() < 0.2:  # near copies: high-order matches and repeated n-grams
                hyp = ref[: rng.randrange(len(ref) + 1)] + ref[: rng.randrange(3)]
            else:
                hyp = [offset + rng.randrange(vocab) for _ in range(rng.randrange(max_len))]
            hyps.append(hyp)
            index.append(r)
    return hyps, refs, index


@pytest.mark.parametrize("method,value,effective", CONFIGS)
def test_batched_equals_plain_and_sacrebleu(method, value, effective):
    logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # it warns on effective_order=False
    bleu = SentenceBLEU(method, value, effective)
    sacre = BLEU(tokenize="none", smooth_method=method, smooth_value=value, effective_order=effective)
    hyps, refs, index = _random_pairs(seed=len(method) * 7 + effective)
    batched = bleu.score_lists(hyps, refs, index)
    for hyp, r, got in zip(hyps, index, batched):
        plain = bleu.score_plain(hyp, refs[r])
        sac = sacre.sentence_score(" ".join(map(str, hyp)), [" ".join(map(str, refs[r]))]).score
        assert abs(got - plain) <= 1e-9, (hyp, refs[r])
        assert abs(plain - sac) <= 1e-9, (hyp, refs[r])


def test_large_ids_and_long_sentences():
    # ids far beyond any vocabulary and 60-token sentences: no overflow, no n-gram aliasing
    hyps, refs, index = _random_pairs(seed=3, n_refs=20, per_ref=5, vocab=40, max_len=60, offset=10 ** 9)
    bleu = SentenceBLEU()
    got = bleu.score_lists(hyps, refs, index)
    assert max(abs(g - bleu.score_plain(h, refs[r])) for g, h, r in zip(got, hyps, index)) <= 1e-9


def test_known_values():
    bleu = SentenceBLEU()
    assert bleu.score_plain([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(100.0)
    assert bleu.score_lists([[1, 2, 3, 4], [], [9, 9]], [[1, 2, 3, 4], [1, 2], [1, 2]]) == \
        pytest.approx([100.0, 0.0, 0.0])
    # one unigram match of 2, no bigram match: exp smoothing halves the zero bigram count
    assert bleu.score_plain([1, 5], [1, 2]) == pytest.approx((50.0 * 50.0) ** 0.5)


def test_padded_packed_and_lists_agree():
    hyps, refs, index = _random_pairs(seed=5, n_refs=10, per_ref=4)
    bleu = SentenceBLEU("floor")
    lists = bleu.score_lists(hyps, refs, index)
    h, hl = pack(hyps)
    r, rl = pack(refs)
    idx = torch.tensor(index)
    packed = bleu.score_packed(h, hl, r, rl, idx).tolist()
    width = max(1, int(hl.max()))
    padded = torch.full((len(hyps), width + 2), 7)  # padding value that would match: must be ignored
    for i, hyp in enumerate(hyps):
        padded[i, :len(hyp)] = torch.tensor(hyp, dtype=torch.long)
    rpad = torch.full((len(refs), max(1, int(rl.max()))), 7)
    for i, ref in enumerate(refs):
        rpad[i, :len(ref)] = torch.tensor(ref, dtype=torch.long)
    assert bleu.score_padded(padded, hl, rpad, rl, idx).tolist() == pytest.approx(lists, abs=1e-12)
    assert packed == pytest.approx(lists, abs=1e-12)
    one_each = sentence_bleu_packed(h[: hl[0]], hl[:1], r[: rl[index[0]]], rl[index[0]:index[0] + 1])
    assert one_each.item() == pytest.approx(sentence_bleu_plain(hyps[0], refs[index[0]]), abs=1e-9)


def test_signature_and_errors():
    assert SentenceBLEU().signature() == "sentence-bleu|nrefs:1|tok:ids|smooth:exp|eff:yes|order:4"
    assert "smooth:floor[0.10]" in SentenceBLEU("floor").signature()
    with pytest.raises(ValueError, match="unknown smoothing"):
        SentenceBLEU("laplace")
    with pytest.raises(ValueError, match=">= 0"):
        SentenceBLEU().score_lists([[-3]], [[1]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_tensors_give_the_cpu_numbers():
    hyps, refs, index = _random_pairs(seed=9)
    bleu = SentenceBLEU()
    cpu = bleu.score_lists(hyps, refs, index)
    gpu = bleu.score_lists([torch.tensor(h, device="cuda") for h in hyps],
                           [torch.tensor(r, device="cuda") for r in refs], index)
    assert gpu == pytest.approx(cpu, abs=1e-12)
