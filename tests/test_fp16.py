"""Precision that cannot go silent: the cached top-k at temperature, half-precision students, a teacher gone NaN."""

from __future__ import annotations

import copy
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import utils
from test_teacher_cache import batches, build, kd_task

from fairseq_seqkd.criterions.word_kd import WordKDCriterion, tempered_teacher
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.fairseq_glue import TEACHER_IDS_KEY, TEACHER_LOGITS_KEY
from fairseq_seqkd.teacher_cache.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LOGITS_DTYPE,
    ShardWriter,
    merge_shards,
    shard_path,
)
from fairseq_seqkd.teacher_cache.reader import TeacherCache

K = 8
VOCAB = 32_000
# float16 rounds d = log(p_1 / p_i) to within d * 2^-11, which puts the tempered top-k off by at most
# 2^-10 * ln(k) in L1 at any temperature (fairseq_seqkd.teacher_cache.format.topk_logits)
BOUND_L1 = 2**-10 * math.log(K)


def word_kd(task, tau: float = 1.0, teacher: Path | None = None, alpha: float = 0.5) -> WordKDCriterion:
    return WordKDCriterion(task, sentence_avg=False, label_smoothing=0.1, kd_alpha=alpha, kd_temperature=tau,
                           kd_topk=0, teacher_path=None if teacher is None else str(teacher))


def top_k_lprobs(rows: int, seed: int = 0) -> np.ndarray:
    """(rows, K) float32 top-k log-probabilities, sorted: the top anywhere from 1 down to 1/VOCAB (a
    flat teacher), the others up to e^-40 below it; the tail a temperature above 1 brings back."""
    g = torch.Generator().manual_seed(seed)
    top = -torch.rand(rows, 1, generator=g) * math.log(VOCAB)
    gaps = (torch.rand(rows, K, generator=g) * 40).sort(dim=-1).values
    gaps[:, 0] = 0
    return (top - gaps).numpy()


def through_the_cache(lprobs: np.ndarray, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, logits) of the rows ``lprobs`` written as one 1-token-per-sentence shard and read back."""
    n = len(lprobs)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "split": "train", "k": K, "ids_dtype": "uint16",
            "logits_dtype": LOGITS_DTYPE, "vocab_size": VOCAB, "teacher_checkpoint_sha256": "0" * 64,
            "target_dictionary_sha256": "0" * 64, "total_sentences": n, "num_shards": 1,
            "teacher_checkpoint": "synthetic", "shard_id": 0, "first_sentence": 0, "target_tokens_sha256": "0" * 64}
    from fairseq_seqkd.teacher_cache.format import topk_logits

    writer = ShardWriter(shard_path(str(folder), "train", 0, 1), meta, np.ones(n, dtype=np.int64))
    ids = np.tile(np.arange(K, dtype=np.uint16), (n, 1))
    stored = topk_logits(lprobs)  # what the build writes from the teacher's top-k log-probs
    for i in range(n):
        writer.write(i, ids[i:i + 1], stored[i:i + 1])
    writer.commit()
    merge_shards(str(folder), "train")
    cache = TeacherCache(str(folder), "train")
    cache.check_values()
    _, ids, logits = cache.take(np.arange(n))
    return ids, logits


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_cached_top_k_at_temperature_stays_within_the_bound_of_float32(tau, tmp_path):
    lprobs = top_k_lprobs(20_000)
    ids, logits = through_the_cache(lprobs, tmp_path)
    # the sample as translation_kd's collater makes it, through fairseq's --fp16 conversion of float32 tensors
    sample = {TEACHER_IDS_KEY: torch.from_numpy(ids.astype(np.int64))[None],
              TEACHER_LOGITS_KEY: torch.from_numpy(logits)[None], "target": torch.zeros(1, len(ids))}
    sample = utils.apply_to_sample(lambda t: t.half() if t.dtype is torch.float32 else t, sample)
    assert torch.equal(sample[TEACHER_LOGITS_KEY][0], torch.from_numpy(logits)), "float16 logits pass unchanged"
    criterion = word_kd(types.SimpleNamespace(target_dictionary=None), tau=tau)
    _, probs = criterion.teacher_distribution(None, sample)
    assert probs.dtype == torch.float32
    exact = torch.softmax(torch.from_numpy(lprobs).double() / tau, dim=-1)  # from the float32 log-probs
    l1 = (tempered_teacher(probs[0], tau).double() - exact).abs().sum(dim=-1)
    assert l1.max() <= BOUND_L1, (float(l1.max()), BOUND_L1)
    # format 2's float16 probabilities, as the criterion read them: off by up to 0.15 (T=2), 0.75 (T=4)
    old = (tempered_teacher(torch.from_numpy(lprobs).exp().half(), tau).double() - exact).abs().sum(dim=-1)
    if tau >= 2:
        assert old.max() > 30 * BOUND_L1, float(old.max())


@pytest.fixture(scope="module")
def cache8(toy_data_bin, toy_teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fp16_cache8")
    build(toy_data_bin, toy_teacher, out, topk=K)
    return out


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 2e-4), (torch.bfloat16, 2e-3)])
def test_half_precision_students_lose_what_float32_loses_with_the_cache_and_the_online_teacher(
        toy_data_bin, toy_teacher, cache8, dtype, rtol):
    # --fp16 / --bf16 turn the student into half precision (and the criterion with it); fairseq
    # computes its log-probs in float32, so the losses differ by the student's rounding only
    cfg, task = kd_task(toy_data_bin, "--teacher-cache", cache8)
    task.load_dataset("valid")
    torch.manual_seed(4)
    student = task.build_model(cfg.model).eval()
    half = copy.deepcopy(student).to(dtype)
    samples = batches(task, "valid")[:2]
    for tau in (1.0, 2.0):
        cached, online = word_kd(task, tau), word_kd(task, tau, teacher=toy_teacher)
        online_half = word_kd(task, tau, teacher=toy_teacher).to(dtype)
        for sample in samples:
            plain = {k: v for k, v in sample.items() if k not in (TEACHER_IDS_KEY, TEACHER_LOGITS_KEY)}
            for criterion, crit_half, batch in ((cached, word_kd(task, tau).to(dtype), sample),
                                                (online, online_half, plain)):
                loss, _, log = criterion(student, batch)
                loss_h, _, log_h = crit_half(half, batch)
                assert torch.isfinite(loss_h) and loss_h.dtype == torch.float32
                assert torch.allclose(loss_h, loss, rtol=rtol), (dtype, tau, float(loss_h), float(loss))
                assert torch.allclose(log_h["kd_loss"], log["kd_loss"], rtol=rtol)
            # the online teacher stays float32 beside a half-precision student: the same distribution
            teacher = online_half._teacher[0]
            assert all(p.dtype == torch.float32 for p in teacher.parameters())
            ids_h, probs_h = online_half.teacher_distribution(half, plain)
            ids, probs = online.teacher_distribution(student, plain)
            assert ids is None and probs_h.dtype == torch.float32 and torch.equal(probs_h, probs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="--amp is CUDA autocast (torch.cuda.amp) and --fp16 "
                                                           "runs the teacher under CUDA autocast: no GPU here")
def test_amp_and_fp16_on_a_gpu_match_float32(toy_data_bin, toy_teacher, cache8):
    cfg, task = kd_task(toy_data_bin, "--teacher-cache", cache8)
    task.load_dataset("valid")
    torch.manual_seed(4)
    student = task.build_model(cfg.model).eval().cuda()
    half = copy.deepcopy(student).half()
    sample = utils.move_to_cuda(batches(task, "valid")[0])
    plain = {k: v for k, v in sample.items() if k not in (TEACHER_IDS_KEY, TEACHER_LOGITS_KEY)}
    for tau in (1.0, 2.0):
        for batch, teacher in ((sample, None), (plain, toy_teacher)):
            criterion = word_kd(task, tau, teacher=teacher)
            loss = criterion(student, batch)[0]
            with torch.autocast("cuda", dtype=torch.float16):  # what fairseq's --amp wraps the criterion in
                loss_amp = criterion(student, batch)[0]
            loss_fp16 = word_kd(task, tau, teacher=teacher).half()(half, batch)[0]
            for got in (loss_amp, loss_fp16):
                assert torch.isfinite(got) and torch.allclose(got.float(), loss, rtol=5e-3), (float(got), float(loss))


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_an_online_teacher_with_non_finite_output_stops_training_naming_it(toy_data_bin, toy_teacher, bad):
    cfg, task = kd_task(toy_data_bin)
    task.load_dataset("valid")
    student = task.build_model(cfg.model).train()
    criterion = word_kd(task, teacher=toy_teacher)
    teacher = criterion._teacher[0]
    if bad == "nan":  # a damaged weight: every position's log-probs NaN
        with torch.no_grad():
            teacher.decoder.layers[0].fc1.weight[0, 0] = float("nan")
    else:  # an overflow to +inf somewhere in the output
        normalized = teacher.get_normalized_probs

        def overflowing(*args, **kwargs):
            lprobs = normalized(*args, **kwargs).clone()
            lprobs[0, 0, 5] = float("inf")
            return lprobs

        teacher.get_normalized_probs = overflowing
    sample = batches(task, "valid")[0]
    with pytest.raises(UserError, match=rf"word_kd's online teacher {re.escape(str(toy_teacher))}: the teacher's "
                                        r"output holds \d+ non-finite probabilities \(NaN or inf\) among \d+ in "
                                        r"this batch.*Check that the checkpoint translates.*overflow float16: "
                                        r"build a teacher cache in float32.*--teacher-cache DIR"):
        criterion(student, sample)


def test_a_cache_build_stops_on_a_teacher_with_non_finite_output(toy_data_bin, toy_teacher, tmp_path):
    state = torch.load(toy_teacher, map_location="cpu", weights_only=False)
    state["model"]["decoder.layers.0.fc1.weight"][0, 0] = float("nan")
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(UserError, match=rf"{re.escape(str(broken))}: the teacher's output holds \d+ non-finite "
                                        r"probabilities.*Check that the checkpoint translates.*then rebuild: "
                                        r"`fairseq-seqkd cache DATA --path TEACHER.pt --split valid"):
        build(toy_data_bin, broken, tmp_path / "cache", topk=K)
    assert not list((tmp_path / "cache").glob("valid.shard*.bin")), "no finished shard of NaN"
