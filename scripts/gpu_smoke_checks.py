"""Two checks of scripts/gpu_smoke.sh that need fairseq in-process: half-precision losses against fp32, beam-35 memory.

losses: the loss of one fixed batch under fp32, --fp16 and --amp, each set up as fairseq's Trainer sets
it up (--fp16: model and criterion .half(), the batch's float32 tensors half; --amp: the fp32 model
under CUDA autocast, as fairseq's train_step runs its forward), in eval mode so that dropout does not
differ; fails when a half-precision loss is not finite or differs from fp32 by more than --tolerance
(relative). Without CUDA only fp32 is computed (the line says so).

beam-memory: fairseq's SequenceGenerator at beam 35 over the worst batch that the recipes'
generate_args let through (benchmarks/beam_memory.py's memory model: the padded length whose batch
costs most under --max-tokens/--batch-size), every hypothesis forced to the output bound, on a
transformer-base (benchmarks/beam_memory.build_model: random weights, 32k vocabulary) in fp16 on the
GPU; prints torch.cuda.max_memory_reserved() above what was reserved before the search beside the
model's fp16 prediction, and fails when it exceeds the prediction by more than --margin. Without
CUDA: the same search on CPU in fp32 over --sentences sentences, nothing measured.

The last line of stdout is the result in one line (gpu_smoke.sh prints it beside PASS/FAIL/SKIP).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the recipes' generate_args (every generation; Seq-Inter's beam 35 among them): the defaults, then the WMT14
# recipe's own (the transformer-base teacher the memory model is for) where it sets them
RECIPE_CONFIGS = [os.path.join(ROOT, "recipes", "config", name) for name in ("defaults.yaml", "wmt14_en_de.yaml")]
# the fit of benchmarks/beam_memory.py on its full grid (fp32, CPU; docs/scale.md, "The fitted model")
DOCS_FIT = {"c0": 8.6e6, "c_t": 26610.0, "c_s": 29525.0, "c_st": 0.0, "c_h": 394075.0}
GIB = 1024**3


# ----------------------------------------------------------------------------- losses


def fixed_batch(train_args: list[str], checkpoint: str, split: str):
    """(model, criterion, first batch of ``split`` in fairseq's order) from fairseq-train's options and a checkpoint."""
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_seqkd.checkpoints.storage import load_checkpoint

    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, train_args))
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    task.load_dataset(split, combine=False, epoch=1)
    model = task.build_model(cfg.model)
    model.load_state_dict(load_checkpoint(checkpoint)["model"], strict=True, model_cfg=cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    batches = task.get_batch_iterator(
        dataset=task.dataset(split), max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True, required_batch_size_multiple=1, seed=1, num_workers=0,
    ).next_epoch_itr(shuffle=False)
    return model, criterion, next(iter(batches))


def loss_under(model, criterion, sample, precision: str) -> dict[str, float]:
    """Per-token loss, nll_loss and kd_loss (nats) of ``sample`` with ``precision`` set up as fairseq's Trainer does."""
    import torch
    from fairseq import utils

    # the criterion is used as it is (it holds the task, which holds the data loader): it has no weights of
    # its own to convert (word_kd keeps the online teacher float32 outside its parameters)
    model = copy.deepcopy(model).eval()
    criterion.eval()
    device = torch.device("cuda" if precision != "fp32" or torch.cuda.is_available() else "cpu")
    if precision == "fp16":  # Trainer.__init__ and Trainer._fp_convert_sample under --fp16
        model, criterion = model.half(), criterion.half()
        sample = utils.apply_to_sample(lambda t: t.half() if t.dtype is torch.float32 else t, sample)
    model, criterion = model.to(device), criterion.to(device)
    sample = utils.apply_to_sample(lambda t: t.to(device), sample)
    amp = torch.autocast("cuda", dtype=torch.float16) if precision == "amp" else contextlib.nullcontext()
    with torch.no_grad(), amp:
        _, _, log = criterion(model, sample)
    ntokens = float(log["ntokens"])
    return {key: float(log[key]) / ntokens for key in ("loss", "nll_loss", "kd_loss") if key in log}


def losses(a: argparse.Namespace) -> int:
    import torch

    model, criterion, sample = fixed_batch(a.train_args, a.checkpoint, a.split)
    print(f"one batch of {a.split}: {sample['nsentences']} sentences, {sample['ntokens']} target tokens; "
          f"criterion {type(criterion).__name__}; per token, nats")
    ref = loss_under(model, criterion, sample, "fp32")
    print("fp32:", " ".join(f"{k} {v:.6f}" for k, v in ref.items()))
    if not torch.cuda.is_available():
        print(f"fp32 only (no CUDA): loss {ref['loss']:.4f}; fp16/amp not compared")
        return 0 if all(math.isfinite(v) for v in ref.values()) else 1
    worst, failed = {}, False
    for precision in ("amp", "fp16"):  # fp16 last: criterion.half() works in place
        got = loss_under(model, criterion, sample, precision)
        rel = {k: abs(got[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in ref}
        bad = [k for k in ref if not math.isfinite(got[k]) or rel[k] > a.tolerance]
        failed |= bool(bad)
        worst[precision] = max(rel.values())
        print(f"{precision}:", " ".join(f"{k} {got[k]:.6f} (rel. diff {rel[k]:.2e})" for k in ref),
              f"FAIL: {', '.join(bad)} beyond {a.tolerance:g}" if bad else "")
    print(" ".join(f"{p} vs fp32 rel. diff {w:.1e}" for p, w in worst.items()) + f" (tolerance {a.tolerance:g})")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- beam memory


def recipe_generate_args(paths: list[str] = RECIPE_CONFIGS) -> dict[str, float]:
    """--max-tokens, --batch-size, --max-len-a, --max-len-b of generate_args in the last of ``paths`` that sets it."""
    import yaml

    for path in paths:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
        if "generate_args" in config:
            args, source = [str(x) for x in config["generate_args"]], path
    found = {}
    for key in ("--max-tokens", "--batch-size", "--max-len-a", "--max-len-b"):
        if key not in args:
            raise SystemExit(f"{source}: generate_args has no {key}: this check needs all four")
        found[key] = float(args[args.index(key) + 1])
    return found


def beam_memory(a: argparse.Namespace) -> int:
    import torch
    from fairseq.sequence_generator import SequenceGenerator

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import beam_memory as bm

    gen = recipe_generate_args()
    margin = 1 / bm.GPU_USABLE - 1 if a.margin is None else a.margin
    max_tokens, cap = int(gen["--max-tokens"]), int(gen["--batch-size"])
    la, lb = gen["--max-len-a"], gen["--max-len-b"]
    model, d, args = bm.build_model(a.arch)
    if a.measurements:  # a fit of your own run of benchmarks/beam_memory.py (its last line)
        import json

        with open(a.measurements) as f:
            coef = bm.fit(json.loads(f.read().strip().splitlines()[-1])["measurements"])
    else:
        coef = dict(DOCS_FIT)
    layers, d_model = args.decoder_layers, args.decoder_embed_dim
    coef16 = bm.fp16_coefficients(coef, bm.derived_coefficients(layers, d_model, bm.VOCAB, 4),
                                  bm.derived_coefficients(layers, d_model, bm.VOCAB, 2))
    worst = bm.worst_batch(coef16, a.beam, max_tokens, la, lb, cap)
    src = worst["at_length"]
    bsz = min(max_tokens // src, cap)
    cuda = torch.cuda.is_available()
    if not cuda:
        bsz = min(bsz, a.sentences)
    max_len = min(int(la * src + lb), model.max_decoder_positions() - 1)
    predicted = bm.predict(coef16 if cuda else coef, a.beam * bsz, src, max_len)
    print(f"generate_args of the recipes: --max-tokens {max_tokens} --batch-size {cap} --max-len-a {la:g} "
          f"--max-len-b {lb:g}; worst batch by the memory model: padded length {src}, {worst['worst_gib']} GiB")
    print(f"{a.arch} ({layers}+{layers} layers, d={d_model}, {bm.VOCAB} symbols), beam {a.beam}, "
          f"{bsz} sentences of {src} tokens, every hypothesis forced to {max_len} tokens, "
          f"{'fp16 on ' + torch.cuda.get_device_name() if cuda else 'fp32 on CPU'}")

    device = torch.device("cuda" if cuda else "cpu")
    model = model.to(device)
    if cuda:
        model = model.half()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(d.nspecial, len(d), (bsz, src), generator=g)
    tokens[:, -1] = d.eos()
    sample = {"id": torch.arange(bsz, device=device),
              "net_input": {"src_tokens": tokens.to(device), "src_lengths": torch.full((bsz,), src, device=device)}}
    generator = SequenceGenerator([model], d, beam_size=a.beam, max_len_a=la, max_len_b=lb, min_len=max_len)
    with torch.no_grad():  # warm-up: kernels and cuBLAS's workspace, not the search's
        warm = {"net_input": {"src_tokens": tokens[:1, -5:].to(device),
                              "src_lengths": torch.full((1,), 5, device=device)}}
        SequenceGenerator([model], d, beam_size=2, max_len_b=4).generate([model], warm)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_reserved()
    with torch.no_grad():
        hypos = generator.generate([model], sample)
    lengths = {len(h["tokens"]) for sent in hypos for h in sent}
    if lengths != {max_len + 1}:  # the worst case only if every hypothesis ran to the bound
        print(f"hypotheses of lengths {sorted(lengths)}, expected {max_len + 1}: not the worst case")
        return 1
    if not cuda:
        print(f"no CUDA: ran {bsz} sentences on CPU (model: {predicted / GIB:.2f} GiB for them in fp32); "
              "max_memory_reserved not measured")
        return 0
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_reserved()
    used = peak - before
    limit = predicted * (1 + margin)
    print(f"max_memory_reserved {peak / GIB:.2f} GiB, {before / GIB:.2f} GiB of it before the search "
          f"(weights, warm-up); the search: {used / GIB:.2f} GiB; predicted {predicted / GIB:.2f} GiB "
          f"(measured/predicted {used / predicted:.2f}); limit {limit / GIB:.2f} GiB (+{margin:.0%})")
    print(f"beam {a.beam} x {bsz} sentences of {src}: {used / GIB:.2f} GiB reserved, predicted "
          f"{predicted / GIB:.2f} GiB ({used / predicted:.2f}x; fail above {1 + margin:.2f}x)")
    return 0 if used <= limit else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    lo = sub.add_parser("losses", help="one batch's loss in fp32, under --fp16 and --amp")
    lo.add_argument("--checkpoint", required=True, help="the model's weights (fairseq checkpoint)")
    lo.add_argument("--split", default="train", help="the batch: the first of this split in fairseq's order")
    lo.add_argument("--tolerance", type=float, default=5e-3, help="largest relative difference (default 0.005)")
    lo.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then fairseq-train's options (DATA, task, "
                    "model, criterion): the model and criterion are built from them")
    bm = sub.add_parser("beam-memory", help="beam search's max_memory_reserved beside the memory model")
    bm.add_argument("--arch", default="transformer_wmt_en_de", help="fairseq architecture (transformer-base)")
    bm.add_argument("--beam", type=int, default=35)
    bm.add_argument("--margin", type=float, default=None,
                    help="allowed excess over the prediction (default 1 / beam_memory.GPU_USABLE - 1 = 0.33: "
                         "the quarter that docs/scale.md's budget keeps free for what the model leaves out)")
    bm.add_argument("--sentences", type=int, default=2, help="without CUDA: at most this many sentences")
    bm.add_argument("--measurements", default=None, help="the JSON output of a beam_memory.py run to fit "
                    "(default: the full-grid fit in docs/scale.md)")
    a = p.parse_args()
    if a.command == "losses":
        a.train_args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
        return losses(a)
    return beam_memory(a)


if __name__ == "__main__":
    sys.exit(main())
