"""Magnitude pruning: the three schemes, the prunable set, and masks that hold through real retraining.

The retraining tests run the real ``fairseq-train --task translation_kd --prune-ratio 0.8``
from a trained checkpoint, then resume it, and read the checkpoints it wrote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRANSFORMER, TRAIN_COMMON, plugin_dir, run_cli

from fairseq_seqkd.checkpoints.storage import load_checkpoint
from fairseq_seqkd.cli import main as cli_main
from fairseq_seqkd.compress.pruning import (
    PruneSpec,
    class_kind,
    compute_masks,
    find_checkpoint_masks,
    format_report,
    gradual_ratio,
    pack_mask,
    parameter_class,
    prunable_parameters,
    prune_checkpoint,
    solve_lambda,
    sparsity_report,
    unpack_mask,
)
from fairseq_seqkd.errors import UserError

# one thread per process: on shared cores torch's thread pool stalls (see docs/pruning-and-export.md)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
RETRAIN_UPDATES = 30


def retrain_pruned(data_bin: Path, start: Path, save_dir: Path, *extra: str, max_update: int,
                   restore: bool = True) -> tuple[Path, str]:
    """fairseq-train --task translation_kd with pruning; return checkpoint_last.pt and the log."""
    restore_args = ["--restore-file", str(start), "--reset-optimizer"] if restore else []
    proc = run_cli("fairseq-train", data_bin, "--user-dir", plugin_dir(), "--task", "translation_kd",
                   *TINY_TRANSFORMER, *TRAIN_COMMON, "--max-update", str(max_update), "--save-dir", save_dir,
                   *restore_args, *extra, env=ONE_THREAD)
    return save_dir / "checkpoint_last.pt", proc.stdout + proc.stderr


def retrained_student(tmp_path_factory, data_bin: Path, teacher: Path) -> Path:
    """The toy teacher pruned 80% class-blind and retrained; made once per session (test_export uses it)."""
    save_dir = Path(tmp_path_factory.getbasetemp()) / "pruned_student"
    ckpt = save_dir / "checkpoint_last.pt"
    if not ckpt.exists():
        retrain_pruned(data_bin, teacher, save_dir, "--prune-ratio", "0.8", "--prune-scheme", "class-blind",
                       max_update=RETRAIN_UPDATES)
    return ckpt


def _params(ckpt: Path) -> dict[str, torch.Tensor]:
    return prunable_parameters(load_checkpoint(str(ckpt))["model"].items())


def _synthetic() -> dict[str, torch.Tensor]:
    """Three classes on very different scales, so the schemes disagree visibly."""
    g = torch.Generator().manual_seed(0)
    return {
        "encoder.layers.0.fc1.weight": torch.randn(40, 30, generator=g) * 1.0,
        "encoder.layers.1.fc1.weight": torch.randn(40, 30, generator=g) * 0.5,
        "decoder.output_projection.weight": torch.randn(50, 20, generator=g) * 0.01,
    }


# ---- the math, on synthetic weights ----

def test_class_blind_prunes_one_global_fraction():
    params = _synthetic()
    masks = compute_masks(params, PruneSpec(0.6, "class-blind"))
    n = sum(t.numel() for t in params.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * n)
    # one threshold: every pruned magnitude is below every kept one
    pruned = torch.cat([params[k][~m].abs() for k, m in masks.items()])
    kept = torch.cat([params[k][m].abs() for k, m in masks.items()])
    assert pruned.max() <= kept.min()
    assert not masks["decoder.output_projection.weight"].any()  # the small-scale class goes first


def test_class_uniform_prunes_the_same_fraction_of_every_class():
    params = _synthetic()
    masks = compute_masks(params, PruneSpec(0.6, "class-uniform"))
    for name, m in masks.items():
        assert int((~m).sum()) == round(0.6 * m.numel()), name
        assert params[name][~m].abs().max() <= params[name][m].abs().min()


def test_class_distribution_thresholds_lambda_times_class_std():
    params = _synthetic()
    spec = PruneSpec(0.6, "class-distribution")
    masks = compute_masks(params, spec)
    n = sum(t.numel() for t in params.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * n)
    lam = solve_lambda(params, 0.6)
    for name, m in masks.items():
        std = float(params[name].std())
        assert params[name][~m].abs().max() <= lam * std + 1e-6, name
        assert params[name][m].abs().min() >= lam * std - 1e-6, name
    # a fixed lambda prunes exactly |w| < lambda * std_c, whatever the ratio
    fixed = compute_masks(params, PruneSpec(0.0, "class-distribution", lam=1.0))
    for name, m in fixed.items():
        assert torch.equal(m, params[name].abs() >= params[name].std()), name


def test_exact_count_with_ties_and_bad_options():
    zeros = {"a.weight": torch.zeros(10, 10)}
    masks = compute_masks(zeros, PruneSpec(0.3, "class-blind"))
    assert int((~masks["a.weight"]).sum()) == 30
    with pytest.raises(UserError, match="must be in"):
        compute_masks(zeros, PruneSpec(1.5))
    with pytest.raises(UserError, match="unknown pruning scheme"):
        compute_masks(zeros, PruneSpec(0.5, "random"))
    with pytest.raises(UserError, match="only applies"):
        compute_masks(zeros, PruneSpec(0.5, "class-blind", lam=1.0))


def test_gradual_schedule_is_cubic_in_steps():
    ratios = [gradual_ratio(0.8, t, ramp=100, interval=10) for t in range(0, 131)]
    assert ratios[0] == ratios[9] == 0.0
    assert ratios[10] == pytest.approx(0.8 * (1 - 0.9 ** 3)) and ratios[19] == ratios[10]
    assert ratios[50] == pytest.approx(0.8 * (1 - 0.5 ** 3))  # 7/8 of the way at half the ramp
    assert ratios[100] == ratios[130] == 0.8
    assert all(a <= b for a, b in zip(ratios, ratios[1:]))
    assert gradual_ratio(0.8, 0, ramp=0) == 0.8  # no ramp: everything at once


def test_classes_and_mask_packing():
    name = "decoder.layers.1.encoder_attn.q_proj"
    assert parameter_class(name + ".weight") == name
    assert parameter_class("encoder.lstm.weight_ih_l1") == parameter_class("encoder.lstm.weight_hh_l1") \
        == "encoder.lstm.l1"
    assert parameter_class("decoder.layers.0.weight_hh") == "decoder.layers.0"  # LSTMCell
    assert class_kind("decoder.layers.3.fc2") == "decoder.layers.*.fc2"
    mask = torch.rand(7, 13, generator=torch.Generator().manual_seed(1)) > 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (7 * 13 + 7) // 8
    assert torch.equal(unpack_mask(packed, [7, 13]), mask)


# ---- the default prunable set, on a real fairseq checkpoint ----

def test_default_prunable_set(toy_teacher):
    state = load_checkpoint(str(toy_teacher))["model"]
    params = prunable_parameters(state.items())
    assert params and all(t.dim() == 2 for t in params.values())
    assert not any(n.endswith(".bias") or "layer_norm" in n or "embed_positions" in n for n in params)
    # --share-all-embeddings: one tensor under three names, pruned (and counted) once
    assert "encoder.embed_tokens.weight" in params
    assert "decoder.embed_tokens.weight" not in params and "decoder.output_projection.weight" not in params
    kept = prunable_parameters(state.items(), keep_embeddings=True)
    assert "encoder.embed_tokens.weight" not in kept and len(kept) == len(params) - 1
    excluded = prunable_parameters(state.items(), exclude=r"\.fc[12]\.")
    assert not any(".fc" in n for n in excluded)
    report = sparsity_report(state.items())
    naive = sum(t.numel() for n, t in state.items() if t.is_floating_point() and not n.endswith(".version"))
    emb = state["encoder.embed_tokens.weight"].numel()
    assert report["params"] == naive - 2 * emb  # the tied embedding counted once, not three times
    assert "tied: decoder.embed_tokens, decoder.output_projection" in format_report(report)


# ---- retraining with masks: real fairseq-train, resume ----

def test_masks_hold_through_retraining_and_resume(toy_data_bin, toy_teacher, tmp_path_factory, tmp_path):
    ckpt = retrained_student(tmp_path_factory, toy_data_bin, toy_teacher)
    state = load_checkpoint(str(ckpt))
    assert state["optimizer_history"][-1]["num_updates"] == RETRAIN_UPDATES
    masks, spec = find_checkpoint_masks(state)
    assert spec["ratio"] == 0.8 and spec["scheme"] == "class-blind"

    # the masks were made once, from the restored checkpoint's weights
    teacher = _params(toy_teacher)
    expected = compute_masks(teacher, PruneSpec(0.8, "class-blind"))
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[n], expected[n]) for n in masks)

    params = _params(ckpt)
    n_params = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.8 * n_params)
    for name, m in masks.items():
        assert torch.count_nonzero(params[name][~m]) == 0, f"{name}: a pruned weight is not exactly 0"
    # retraining moved the surviving weights
    assert any(not torch.equal(params[n][m], teacher[n][m]) for n, m in masks.items())

    # resume: the masks come back from the checkpoint and still hold after more updates
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(ckpt.parent, resumed_dir)
    resumed, log = retrain_pruned(toy_data_bin, toy_teacher, resumed_dir, "--prune-ratio", "0.8",
                                  max_update=RETRAIN_UPDATES + 15, restore=False)
    assert "masks restored from the checkpoint" in log
    state2 = load_checkpoint(str(resumed))
    assert state2["optimizer_history"][-1]["num_updates"] == RETRAIN_UPDATES + 15
    masks2, _ = find_checkpoint_masks(state2)
    assert all(torch.equal(masks2[n], masks[n]) for n in masks)
    params2 = _params(resumed)
    for name, m in masks.items():
        assert torch.count_nonzero(params2[name][~m]) == 0, f"{name}: not exactly 0 after resume"
    assert any(not torch.equal(params2[n][m], params[n][m]) for n, m in masks.items())


def test_gradual_pruning_grows_nested_masks_and_resumes(toy_data_bin, toy_teacher, tmp_path):
    gradual = ("--prune-ratio", "0.8", "--prune-scheme", "class-uniform", "--prune-ramp-updates", "20",
               "--prune-interval", "5")
    # stopped mid-ramp: after update 12 the masks are those of update 10, 0.8 * (1 - 0.5^3) = 0.7
    mid, log = retrain_pruned(toy_data_bin, toy_teacher, tmp_path, *gradual, max_update=12)
    assert "ratio 0.4625" in log and "ratio 0.7" in log and "sparsity per class" not in log
    masks_mid, spec_mid = find_checkpoint_masks(load_checkpoint(str(mid)))
    assert spec_mid["ratio"] == pytest.approx(0.7)
    for name, m in masks_mid.items():
        assert int((~m).sum()) == round(0.7 * m.numel()), name
    # resumed to the end of the ramp and past it: the final ratio, and what was pruned stays pruned
    last, log = retrain_pruned(toy_data_bin, toy_teacher, tmp_path, *gradual, max_update=30, restore=False)
    assert "masks restored from the checkpoint" in log and "sparsity per class" in log
    masks, spec = find_checkpoint_masks(load_checkpoint(str(last)))
    assert spec["ratio"] == 0.8
    params = _params(last)
    for name, m in masks.items():
        assert int((~m).sum()) == round(0.8 * m.numel()), name
        assert not (m & ~masks_mid[name]).any(), f"{name}: a weight pruned at 70% came back"
        assert torch.count_nonzero(params[name][~m]) == 0, name


def test_gradual_pruning_options():
    from types import SimpleNamespace

    from fairseq_seqkd.tasks.pruning_hooks import scheduled_spec

    cfg = dict(prune_ratio=0.8, prune_scheme="class-uniform", prune_lambda=0.0, prune_keep_embeddings=False,
               prune_exclude=None, prune_ramp_updates=100, prune_interval=10)
    assert scheduled_spec(SimpleNamespace(**cfg), 50).ratio == pytest.approx(0.7)
    assert scheduled_spec(SimpleNamespace(**{**cfg, "prune_ramp_updates": 0}), 0).ratio == 0.8
    with pytest.raises(UserError, match="--prune-interval 0"):
        scheduled_spec(SimpleNamespace(**{**cfg, "prune_interval": 0}), 5)
    with pytest.raises(UserError, match="fixed --prune-lambda"):
        scheduled_spec(SimpleNamespace(**{**cfg, "prune_scheme": "class-distribution", "prune_lambda": 1.0}), 5)


def test_prune_command(toy_teacher, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    # the console script's own entry point, in-process (a new interpreter costs seconds on busy cores)
    assert cli_main(["prune", str(toy_teacher), "--ratio", "0.5", "--scheme", "class-uniform",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "encoder.layers.0.fc1" in printed and "all parameters" in printed
    state = load_checkpoint(str(out))
    masks, spec = find_checkpoint_masks(state)
    assert spec["scheme"] == "class-uniform"
    report = sparsity_report(state["model"].items())
    for row in report["classes"]:
        assert row["zeros"] == round(0.5 * row["params"]), row
    with pytest.raises(UserError, match=r"pruned.pt: prune ratio 1.5 must be in \[0, 1\)"):
        prune_checkpoint(str(out), str(tmp_path / "x.pt"), PruneSpec(1.5))
    with pytest.raises(UserError, match="no such checkpoint"):
        prune_checkpoint(str(tmp_path / "missing.pt"), str(tmp_path / "x.pt"), PruneSpec(0.5))
    assert not (tmp_path / "x.pt").exists()


# ---- distributed: every rank ends up with rank 0's masks ----

def _broadcast_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from fairseq_seqkd.tasks.pruning_hooks import broadcast_masks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(rank)  # each rank starts from different masks
    masks = {"a.weight": torch.rand(5, 7, generator=g) > 0.5, "b.weight": torch.rand(3, 3, generator=g) > 0.5}
    torch.save({"before": masks, "after": broadcast_masks(masks)}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_masks_identical_on_all_ranks(tmp_path):
    torch.multiprocessing.spawn(_broadcast_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert not torch.equal(r0["before"]["a.weight"], r1["before"]["a.weight"])
    for name in ("a.weight", "b.weight"):
        assert torch.equal(r0["after"][name], r0["before"][name])
        assert torch.equal(r1["after"][name], r0["before"][name])


# ---- the training hook: masks made once, reused at every step ----

def test_optimizer_step_reuses_the_stored_masks_and_allocates_none(monkeypatch):
    from types import SimpleNamespace

    from fairseq_seqkd.tasks.pruning_hooks import PruningMixin

    class Base:
        def __init__(self, cfg):
            self.cfg = cfg

        def begin_epoch(self, epoch, model):
            pass

        def optimizer_step(self, optimizer, model, update_num):
            optimizer.step()

    class Task(PruningMixin, Base):
        pass

    cfg = SimpleNamespace(prune_ratio=0.5, prune_scheme="class-blind", prune_lambda=0.0,
                          prune_keep_embeddings=False, prune_exclude=None, prune_ramp_updates=0, prune_interval=100)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Linear(30, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    task = Task(cfg)
    task.begin_epoch(1, model)
    pruned = dict(task._prune_pruned)
    keep = compute_masks(prunable_parameters(model.named_parameters()), PruneSpec(0.5))
    assert all(torch.equal(pruned[n], ~keep[n]) for n in keep)

    def no_new_masks(self):
        raise AssertionError("a mask was inverted during a step")

    monkeypatch.setattr(torch.Tensor, "__invert__", no_new_masks)
    for update in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 20)).pow(2).sum().backward()
        task.optimizer_step(optimizer, model, update)
        weights = dict(model.named_parameters())
        for name, m in pruned.items():
            assert task._prune_pruned[name] is m  # the same tensor, step after step
            assert torch.count_nonzero(weights[name].detach()[m]) == 0
    monkeypatch.undo()
    stored, _ = find_checkpoint_masks({"extra_state": task.get_checkpoint_dict()})
    assert all(torch.equal(stored[n], keep[n]) for n in keep)
