"""The word_kd criterion: its math against a plain computation, and against fairseq and the teacher."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TRANSFORMER, TRAIN_COMMON, plugin_dir, run_cli
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    label_smoothed_nll_loss,
)
from fairseq.data import Dictionary
from fairseq.tasks.translation import TranslationTask
from test_teacher_cache import batches, build, kd_task, teacher_with_its_data_gone

import fairseq_seqkd
from fairseq_seqkd import cli
from fairseq_seqkd.criterions import word_kd as word_kd_module
from fairseq_seqkd.criterions.word_kd import (
    TEACHER_IDS_KEY,
    TEACHER_LOGITS_KEY,
    WordKDCriterion,
    kd_cross_entropy,
    word_kd_loss,
)
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.fairseq_glue import load_teacher

fairseq_seqkd.register()  # in-process tasks and criterions, and weights_only loads of fairseq-train's checkpoints
PAD = 1
LS_CE = ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
WORD_KD = ["--criterion", "word_kd", "--label-smoothing", "0.1"]


def reference_loss(logits, ids, probs, target, alpha, tau, eps):
    """Word-KD loss token by token, straight from the definition (float64)."""
    vocab = logits.size(-1)
    total, nll_sum, kd_sum = 0.0, 0.0, 0.0
    for b in range(logits.size(0)):
        for t in range(logits.size(1)):
            y = int(target[b, t])
            if y == PAD:
                continue
            lp = F.log_softmax(logits[b, t], dim=-1)
            eps_i = eps / (vocab - 1)
            ls = (1 - eps - eps_i) * -lp[y] + eps_i * -lp.sum()
            support = range(vocab) if ids is None else ids[b, t].tolist()
            weights = probs[b, t] ** (1.0 / tau)
            q = weights / weights.sum()
            lp_tau = F.log_softmax(logits[b, t] / tau, dim=-1)
            kd = -(tau**2) * sum(q[j] * lp_tau[v] for j, v in enumerate(support))
            total = total + (1 - alpha) * ls + alpha * kd
            nll_sum, kd_sum = nll_sum + -lp[y], kd_sum + kd
    return total, nll_sum, kd_sum


@pytest.mark.parametrize("tau,eps,topk", [(1.0, 0.0, 4), (2.0, 0.1, 4), (1.5, 0.1, None)])
def test_loss_matches_plain_reference_computation(tau, eps, topk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(2, 11, (2, 5), generator=g)
    target[0, 3:] = PAD
    teacher = torch.softmax(torch.randn(2, 5, 11, generator=g, dtype=torch.float64) * 2, dim=-1)
    if topk:
        probs, ids = teacher.topk(topk, dim=-1)  # unnormalised, like a cache
    else:
        probs, ids = teacher, None
    loss, nll, kd = word_kd_loss(F.log_softmax(logits, -1), ids, probs, target, PAD, 0.5, tau, eps)
    ref_loss, ref_nll, ref_kd = reference_loss(logits, ids, probs, target, 0.5, tau, eps)
    for got, want in [(loss, ref_loss), (nll, ref_nll), (kd, ref_kd)]:
        assert torch.allclose(got, want, rtol=1e-10), (got, want)
    (grad,) = torch.autograd.grad(loss, logits)
    (ref_grad,) = torch.autograd.grad(ref_loss, logits)
    assert torch.allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert grad[0, 3:].abs().sum() == 0, "padding positions get no gradient"
    per_token = kd_cross_entropy(F.log_softmax(logits, -1), ids, probs, tau)
    assert per_token.shape == (2, 5) and torch.allclose(per_token[target.ne(PAD)].sum(), kd)


def test_without_teacher_the_loss_is_label_smoothed_nll():
    lprobs = F.log_softmax(torch.randn(3, 7, dtype=torch.float64), -1)
    target = torch.tensor([2, 5, PAD])
    loss, nll, kd = word_kd_loss(lprobs, None, None, target, PAD, 0.5, 2.0, 0.1)
    assert kd is None
    ref, ref_nll, _ = reference_loss(lprobs[None], None, torch.ones(1, 3, 7), target[None], 0.0, 1.0, 0.1)
    assert torch.allclose(loss, ref) and torch.allclose(nll, ref_nll)


def plain_kd_cross_entropy(lprobs, ids, probs, tau):
    """The KD term by plain autograd over the whole batch: the formula before it was chunked."""
    q = probs.to(torch.promote_types(probs.dtype, torch.float32))
    if tau != 1.0:
        lprobs, q = F.log_softmax(lprobs / tau, dim=-1), q.pow(1.0 / tau)
    q = q / q.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    lp = lprobs if ids is None else lprobs.gather(-1, ids.long())
    return -(tau**2) * (q * lp).sum(dim=-1)


@pytest.mark.parametrize("tau,topk,dtype", [(1.0, None, torch.float32), (2.0, None, torch.float32),
                                            (0.5, None, torch.float64), (2.0, 6, torch.float32)])
def test_chunked_kd_equals_the_plain_formula_with_its_gradient(monkeypatch, tau, topk, dtype):
    monkeypatch.setattr(word_kd_module, "_KD_CHUNK_MIN_ELEMENTS", 1)  # 3 rows a chunk, a short last one
    monkeypatch.setattr(word_kd_module, "_KD_MAX_CHUNKS", 11)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 8, 37, generator=g, dtype=dtype, requires_grad=True)
    target = torch.randint(2, 37, (4, 8), generator=g)
    target[1, 5:], target[3, 2:] = PAD, PAD
    teacher = torch.softmax(torch.randn(4, 8, 37, generator=g) * 3, dim=-1)
    teacher[0, 0] = 0.0  # a position with no teacher mass: no KD term, no NaN
    probs, ids = teacher.topk(topk, dim=-1) if topk else (teacher, None)
    for reduce in (True, False):
        lprobs = F.log_softmax(logits, -1)
        loss, nll, kd = word_kd_loss(lprobs, ids, probs, target, PAD, 0.5, tau, 0.1, reduce=reduce)
        ref_lprobs = F.log_softmax(logits, -1).view(-1, 37)
        ref_kd = plain_kd_cross_entropy(ref_lprobs, None if ids is None else ids.view(-1, topk),
                                        probs.view(-1, probs.size(-1)), tau)
        ref_kd = ref_kd.masked_fill(target.view(-1).eq(PAD), 0.0).unsqueeze(-1)
        ls, ref_nll = label_smoothed_nll_loss(ref_lprobs, target.view(-1), 0.1, ignore_index=PAD, reduce=reduce)
        if reduce:
            ref_kd = ref_kd.sum()
        ref_loss = 0.5 * ls + 0.5 * ref_kd
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
        assert kd.shape == ref_kd.shape and loss.shape == ref_loss.shape
        assert torch.allclose(kd, ref_kd, **tol) and torch.allclose(loss, ref_loss, **tol)
        assert torch.equal(nll, ref_nll)
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        (ref_grad,) = torch.autograd.grad(ref_loss.sum(), logits)
        assert torch.allclose(grad, ref_grad, **tol)
        assert torch.isfinite(grad).all() and grad[3, 2:].abs().sum() == 0


def test_full_vocabulary_kd_keeps_no_tokens_by_vocabulary_buffer_for_backward():
    # What autograd saves between forward and backward, apart from the inputs themselves: the
    # plain formula saved the renormalised teacher probs, at tau != 1 also the tempered log-probs
    # (each N x V). Memory is measured in benchmarks/online_kd_memory.py; here only its cause.
    lprobs = F.log_softmax(torch.randn(64, 500, requires_grad=True), -1)
    teacher = torch.softmax(torch.randn(64, 500), -1)
    inputs = {lprobs.data_ptr(), teacher.data_ptr()}
    for tau in (1.0, 2.0):
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(saved.append, lambda _: None):
            kd_cross_entropy(lprobs, None, teacher, tau)
        large = [t for t in saved if t.numel() >= lprobs.numel() and t.data_ptr() not in inputs]
        assert not large, [tuple(t.shape) for t in large]


def test_alpha_zero_equals_label_smoothed_nll_bit_for_bit_with_a_full_vocabulary_teacher():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(40, 300, generator=g, requires_grad=True)
    target = torch.randint(2, 300, (40,), generator=g)
    target[-5:] = PAD
    teacher = torch.softmax(torch.randn(40, 300, generator=g), -1)
    loss, nll, _ = word_kd_loss(F.log_softmax(logits, -1), None, teacher, target, PAD, 0.0, 2.0, 0.1)
    ref, ref_nll = label_smoothed_nll_loss(F.log_softmax(logits, -1), target, 0.1, ignore_index=PAD)
    assert torch.equal(loss, ref) and torch.equal(nll, ref_nll)
    (grad,) = torch.autograd.grad(loss, logits)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert torch.equal(grad, ref_grad)


@pytest.fixture(scope="module")
def caches(toy_data_bin, toy_teacher, tmp_path_factory) -> dict[str, Path]:
    """Valid-split caches at k=8 and at k = vocabulary size."""
    out = {"k8": tmp_path_factory.mktemp("kd_cache8"), "full": tmp_path_factory.mktemp("kd_cache_full")}
    build(toy_data_bin, toy_teacher, out["k8"], topk=8)
    build(toy_data_bin, toy_teacher, out["full"], topk=100_000)  # clamped to the vocabulary
    return out


def criterion(task, data, *argv):
    """A criterion built by the task from command-line options, as fairseq-train builds it."""
    cfg, _ = kd_task(data, *argv)
    return task.build_criterion(cfg.criterion)


def word_kd(task, alpha=0.5, tau=1.0, topk=0, teacher=None, eps=0.1) -> WordKDCriterion:
    """The word_kd criterion built directly (no option parsing: faster)."""
    return WordKDCriterion(task, sentence_avg=False, label_smoothing=eps, kd_alpha=alpha, kd_temperature=tau,
                           kd_topk=topk, teacher_path=None if teacher is None else str(teacher))


def ls_ce(task) -> LabelSmoothedCrossEntropyCriterion:
    """fairseq's label_smoothed_cross_entropy, epsilon 0.1."""
    return LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)


def test_alpha_zero_equals_label_smoothed_cross_entropy(toy_data_bin, caches):
    cfg, task = kd_task(toy_data_bin, "--teacher-cache", caches["k8"])
    task.load_dataset("valid")
    student = task.build_model(cfg.model).eval()
    # both built from their command-line options, as fairseq-train builds them
    kd = criterion(task, toy_data_bin, *WORD_KD, "--kd-alpha", "0", "--kd-temperature", "2")
    ce = criterion(task, toy_data_bin, *LS_CE)
    for sample in batches(task, "valid")[:3]:
        assert TEACHER_LOGITS_KEY in sample
        loss, size, log = kd(student, sample)
        ref_loss, ref_size, ref_log = ce(student, sample)
        assert torch.equal(loss, ref_loss) and size == ref_size
        assert torch.equal(log["nll_loss"], ref_log["nll_loss"])
        assert log["kd_loss"] > 0  # still logged


def test_cache_with_k_equal_vocabulary_gives_the_online_teachers_loss(toy_data_bin, toy_teacher, caches):
    cfg, task = kd_task(toy_data_bin, "--teacher-cache", caches["full"])
    task.load_dataset("valid")
    assert task.dataset("valid").cache.k == len(task.target_dictionary)
    torch.manual_seed(3)
    student = task.build_model(cfg.model).eval()
    samples = batches(task, "valid")[:3]
    for tau in (1.0, 2.0):
        cached, online = word_kd(task, tau=tau), word_kd(task, tau=tau, teacher=toy_teacher)
        for sample in samples:
            plain = {k: v for k, v in sample.items() if k not in (TEACHER_IDS_KEY, TEACHER_LOGITS_KEY)}
            loss, _, log = cached(student, sample)
            ref_loss, _, ref_log = online(student, plain)
            assert torch.allclose(log["kd_loss"], ref_log["kd_loss"], rtol=1e-3)  # float16 cached logits vs float32
            assert torch.allclose(loss, ref_loss, rtol=1e-3)
            assert torch.equal(log["nll_loss"], ref_log["nll_loss"])


def test_top_k_cache_gives_the_online_teachers_top_k_loss(toy_data_bin, toy_teacher, caches):
    cfg, task = kd_task(toy_data_bin, "--teacher-cache", caches["k8"])
    task.load_dataset("valid")
    student = task.build_model(cfg.model).eval()
    cached, online = word_kd(task, alpha=1.0, topk=5), word_kd(task, alpha=1.0, topk=5, teacher=toy_teacher)
    sample = batches(task, "valid")[0]
    plain = {k: v for k, v in sample.items() if k not in (TEACHER_IDS_KEY, TEACHER_LOGITS_KEY)}
    assert torch.allclose(cached(student, sample)[0], online(student, plain)[0], rtol=1e-3)
    too_many = word_kd(task, topk=9)
    with pytest.raises(UserError, match="--kd-topk 9 exceeds the k=8 the teacher cache holds"):
        too_many(student, sample)


def test_training_without_a_teacher_is_an_error_validation_falls_back_to_nll(toy_data_bin):
    cfg, task = kd_task(toy_data_bin)
    task.load_dataset("valid")
    student = task.build_model(cfg.model)
    kd, ce = word_kd(task), ls_ce(task)
    sample = batches(task, "valid")[0]
    with pytest.raises(UserError, match="no teacher for this training batch.*--teacher-cache DIR"):
        kd(student.train(), sample)
    loss, _, log = kd(student.eval(), sample)
    assert torch.equal(loss, ce(student, sample)[0]) and "kd_loss" not in log


def test_online_teacher_with_another_dictionary_is_a_clear_error(toy_data_bin, toy_teacher):
    _, task = kd_task(toy_data_bin)
    dict_file = str(toy_data_bin / "dict.de.txt")
    swapped = Dictionary.load(dict_file)
    a, b = swapped.symbols[10], swapped.symbols[11]
    swapped.symbols[10], swapped.symbols[11] = b, a
    swapped.indices[a], swapped.indices[b] = 11, 10
    with pytest.raises(UserError, match=rf"trained with dictionary {re.escape(dict_file)}, which differs "
                                        rf"from this data's target dictionary \(symbol 10 is '{a}' instead "
                                        rf"of '{b}'\)"):
        load_teacher(str(toy_teacher), TranslationTask(task.cfg, swapped, swapped))
    bigger = Dictionary.load(dict_file)
    bigger.add_symbol("zzz-new-word")
    with pytest.raises(UserError, match=rf"output vocabulary has {len(bigger) - 1} entries but the target "
                                        rf"dictionary of this data has {len(bigger)}"):
        load_teacher(str(toy_teacher), TranslationTask(task.cfg, bigger, bigger))


def test_online_teacher_whose_data_is_gone_needs_its_dictionary_or_an_opt_out(toy_data_bin, toy_teacher,
                                                                              tmp_path, caplog):
    moved, gone = teacher_with_its_data_gone(toy_teacher, tmp_path)
    _, task = kd_task(toy_data_bin)
    with pytest.raises(UserError, match=rf"{re.escape(str(moved))}: cannot check the teacher's dictionary: its "
                                        rf"dictionary file {re.escape(str(gone / 'dict.de.txt'))} .*not readable.*"
                                        r"--teacher-dict PATH.*or --teacher-dict-unchecked"):
        load_teacher(str(moved), task)
    # its dictionary named explicitly: checked symbol by symbol
    dict_file = toy_data_bin / "dict.de.txt"
    assert load_teacher(str(moved), task, teacher_dict=str(dict_file)) is not None
    lines = dict_file.read_text().splitlines()
    lines[10], lines[11] = lines[11], lines[10]
    swapped = tmp_path / "dict.swapped.txt"
    swapped.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"trained with dictionary {re.escape(str(swapped))}, which differs from "
                                        r"this data's target dictionary \(symbol \d+ is"):
        load_teacher(str(moved), task, teacher_dict=str(swapped))
    with pytest.raises(UserError, match=r"nope.txt: no such file \(--teacher-dict"):
        load_teacher(str(moved), task, teacher_dict=str(tmp_path / "nope.txt"))
    # the explicit opt-out: a warning, and the criterion gets its teacher
    with caplog.at_level("WARNING"):
        kd = WordKDCriterion(task, sentence_avg=False, label_smoothing=0.1, kd_alpha=0.5, kd_temperature=1.0,
                             kd_topk=0, teacher_path=str(moved), teacher_dict_unchecked=True)
    assert "only the vocabulary size was checked" in caplog.text and len(kd._teacher) == 1


def test_fairseq_train_word_kd_from_the_cache_with_a_data_worker(toy_data_bin, toy_teacher, tmp_path):
    cache, save = tmp_path / "cache", tmp_path / "student"
    # the command a recipe runs (in process here); valid gets no cache, so the online teacher
    # serves validation
    assert cli.main(["cache", str(toy_data_bin), "--path", str(toy_teacher), "--split", "train",
                     "--out", str(cache), "--topk", "8", "--max-tokens", "2000", "--no-progress-bar"]) == 0
    common = [a for a in TRAIN_COMMON if a != "--disable-validation"]
    common[common.index("--num-workers") + 1] = "1"
    proc = run_cli("fairseq-train", toy_data_bin, "--user-dir", plugin_dir(), "--task", "translation_kd",
                   "--teacher-cache", cache, "--criterion", "word_kd", "--kd-alpha", "0.5",
                   "--label-smoothing", "0.1", "--teacher-path", toy_teacher, *TINY_TRANSFORMER, *common,
                   "--max-update", "4", "--log-interval", "2", "--save-dir", save)
    log = proc.stdout + proc.stderr
    assert "teacher cache" in log and "800 sentences" in log
    train = [line for line in log.splitlines() if "| train |" in line or "train_inner" in line]
    valid = [line for line in log.splitlines() if "valid on 'valid' subset" in line]
    assert train and all(re.search(r"nll_loss.*kd_loss.*ppl", line) for line in train), log[-3000:]
    assert valid and re.search(r"nll_loss [\d.]+ \| kd_loss [\d.]+ \| ppl", valid[-1]), valid
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert not state.get("criterion"), "the teacher must not be saved with the student"
    teacher_state = torch.load(toy_teacher, map_location="cpu", weights_only=True)
    assert state["model"].keys() == teacher_state["model"].keys()
