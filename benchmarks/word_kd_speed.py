"""Training-step time of Word-KD: from the teacher cache vs plain cross-entropy vs an online teacher.

The point of the cache: Word-KD from a top-k cache should cost about what
label-smoothed cross-entropy costs, while running the teacher in every step costs a teacher
forward pass per step.

Setup:
- data: the toy corpus (``fairseq_seqkd.data.toy_corpus``), binarized in process by fairseq's own
  preprocessing (joined dictionary); batches of ``--max-tokens`` as fairseq-train makes them.
- student: fairseq ``transformer`` 2+2 layers, d=64 (ffn 256, 4 heads); teacher: 4x wider and
  2x deeper, 4+4 layers, d=256 (ffn 1024, 4 heads). Random weights (seeded), saved as a fairseq
  checkpoint: step time does not depend on training.
- the cache: ``fairseq_seqkd.teacher_cache.build.build_cache`` at k=8 over the train split; batches
  come from task ``translation_kd --teacher-cache``, so they carry the cached top-k.
- one training step = criterion forward + backward + Adam step, for three students with the
  same initial weights: ``label_smoothed_cross_entropy``, ``word_kd`` from the cache,
  ``word_kd --teacher-path`` (online; its batches lack the cache keys). Alternately in one
  process on the same batches, the order rotating per batch, after warm-up steps.
- one torch thread by default (``--threads``): on shared cores, intra-op threads mostly wait
  for each other, which would measure the neighbours rather than the loss.
- data loading is reported apart (``load_ms_*``: __getitem__ + collate of one batch), since
  fairseq-train can overlap it with training through --num-workers.

Prints progress on stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch

TARGETS = {"cached_over_ce": 1.10, "online_over_cached": 3.0}
STUDENT = dict(layers=2, dim=64, ffn=256, heads=4)
TEACHER = dict(layers=4, dim=256, ffn=1024, heads=4)  # 4x wider, 2x deeper


def log(msg: str) -> None:
    """Progress on stderr; stdout ends with the JSON line."""
    print(f"{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr, flush=True)


def arch_args(size: dict) -> list[str]:
    """fairseq-train options of a transformer of ``size``."""
    return ["--arch", "transformer", "--share-all-embeddings",
            "--encoder-layers", str(size["layers"]), "--decoder-layers", str(size["layers"]),
            "--encoder-embed-dim", str(size["dim"]), "--decoder-embed-dim", str(size["dim"]),
            "--encoder-ffn-embed-dim", str(size["ffn"]), "--decoder-ffn-embed-dim", str(size["ffn"]),
            "--encoder-attention-heads", str(size["heads"]), "--decoder-attention-heads", str(size["heads"])]


def prepare_data(workdir: str, train_size: int) -> str:
    """Toy corpus binarized by fairseq's preprocessing (in process); returns the data folder."""
    from fairseq import options
    from fairseq_cli import preprocess

    from fairseq_seqkd.data.toy_corpus import write_corpus

    raw, data = os.path.join(workdir, "raw"), os.path.join(workdir, "bin")
    write_corpus(raw, {"train": train_size, "valid": 50, "test": 50}, seed=11)
    args = options.get_preprocessing_parser().parse_args([
        "--source-lang", "en", "--target-lang", "de", "--trainpref", os.path.join(raw, "train"),
        "--validpref", os.path.join(raw, "valid"), "--destdir", data, "--joined-dictionary",
        "--workers", "1"])
    preprocess.main(args)
    return data


def setup(data: str, argv: list[str], seed: int = 1):
    """(cfg, task) as fairseq-train sets them up from ``argv``."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [data, "--cpu", "--seed", str(seed), *argv])
    cfg = convert_namespace_to_omegaconf(args)
    return cfg, tasks.setup_task(cfg.task)


def save_random_checkpoint(data: str, size: dict, path: str, seed: int = 2) -> str:
    """A seeded random-weight transformer of ``size`` saved as a fairseq checkpoint."""
    from omegaconf import OmegaConf

    cfg, task = setup(data, ["--task", "translation", *arch_args(size)], seed)
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    state = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion",
                               "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": None},
                               "num_updates": 0}],
        "extra_state": {},
        "last_optimizer_state": None,
    }
    torch.save(state, path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small run, under 60 s on 2 cores")
    p.add_argument("--train-size", type=int, default=None, help="toy training pairs")
    p.add_argument("--max-tokens", type=int, default=2000, help="tokens per batch (default 2000)")
    p.add_argument("--batches", type=int, default=None, help="distinct batches timed")
    p.add_argument("--rounds", type=int, default=None, help="passes over those batches")
    p.add_argument("--topk", type=int, default=8, help="k of the cache (default 8)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on shared cores more threads only add contention)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    train_size = a.train_size or (1000 if a.quick else 6000)
    n_batches = a.batches or (6 if a.quick else 24)
    rounds = a.rounds or (2 if a.quick else 3)
    start = time.perf_counter()

    import fairseq_seqkd
    from fairseq_seqkd.criterions.word_kd import TEACHER_IDS_KEY, TEACHER_LOGITS_KEY
    from fairseq_seqkd.teacher_cache.build import build_cache

    fairseq_seqkd.register()  # translation_kd and word_kd

    with tempfile.TemporaryDirectory(prefix="word_kd_speed.") as work:
        data = prepare_data(work, train_size)
        teacher = save_random_checkpoint(data, TEACHER, os.path.join(work, "teacher.pt"))
        cache = os.path.join(work, "cache")
        built = build_cache(data, teacher, cache, split="train", topk=a.topk, max_tokens=4000, progress=False)
        log(f"data, teacher and cache ready after {time.perf_counter() - start:.1f}s")

        common = ["--task", "translation_kd", "--teacher-cache", cache, *arch_args(STUDENT),
                  "--max-tokens", str(a.max_tokens), "--required-batch-size-multiple", "1"]
        cfg, task = setup(data, common)
        criteria = {
            "ce": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
            "kd_cached": ["--criterion", "word_kd", "--kd-alpha", "0.5", "--label-smoothing", "0.1"],
            "kd_online": ["--criterion", "word_kd", "--kd-alpha", "0.5", "--label-smoothing", "0.1",
                          "--teacher-path", teacher],
        }
        crit = {name: task.build_criterion(setup(data, common + argv)[0].criterion)
                for name, argv in criteria.items()}
        task.load_dataset("train")
        dataset = task.dataset("train")
        itr = task.get_batch_iterator(dataset, max_tokens=a.max_tokens, required_batch_size_multiple=1,
                                      seed=1, disable_iterator_cache=True)
        batch_ids = list(itr.frozen_batches)[:n_batches]
        torch.manual_seed(1)
        student = task.build_model(cfg.model)
        models = {name: copy.deepcopy(student).train() for name in crit}
        optims = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in models.items()}

        load_ms = {"plain": [], "cached": []}
        batches = []
        for ids in batch_ids:
            t0 = time.perf_counter()
            dataset.dataset.collater([dataset.dataset[i] for i in ids])
            t1 = time.perf_counter()
            batch = dataset.collater([dataset[i] for i in ids])
            t2 = time.perf_counter()
            load_ms["plain"].append(1000 * (t1 - t0))
            load_ms["cached"].append(1000 * (t2 - t1))
            batches.append(batch)
        cache_keys = (TEACHER_IDS_KEY, TEACHER_LOGITS_KEY)
        plain = [{k: v for k, v in b.items() if k not in cache_keys} for b in batches]

        def step(name: str, i: int) -> float:
            sample = plain[i] if name == "kd_online" else batches[i]
            t0 = time.perf_counter()
            optims[name].zero_grad(set_to_none=True)
            loss, _, _ = crit[name](models[name], sample)
            loss.backward()
            optims[name].step()
            return 1000 * (time.perf_counter() - t0)

        names = list(crit)
        for i in range(min(2, len(batches))):  # warm-up
            for name in names:
                step(name, i)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for i in range(len(batches)):
                shift = (r * len(batches) + i) % len(names)
                for name in names[shift:] + names[:shift]:
                    times[name].append(step(name, i))
            log(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {statistics.fmean(t):.1f} ms" for n, t in times.items()))

    mean = {name: statistics.fmean(t) for name, t in times.items()}
    result = {
        "ce_step_ms": round(mean["ce"], 2),
        "kd_cached_step_ms": round(mean["kd_cached"], 2),
        "kd_online_step_ms": round(mean["kd_online"], 2),
        "cached_over_ce": round(mean["kd_cached"] / mean["ce"], 3),
        "online_over_cached": round(mean["kd_online"] / mean["kd_cached"], 3),
        "targets": {"cached_over_ce": f"<= {TARGETS['cached_over_ce']}",
                    "online_over_cached": f">= {TARGETS['online_over_cached']}"},
        "load_ms_plain": round(statistics.fmean(load_ms["plain"]), 2),
        "load_ms_cached": round(statistics.fmean(load_ms["cached"]), 2),
        "batches": len(batches),
        "steps_per_criterion": len(times["ce"]),
        "tokens_per_batch": round(statistics.fmean(b["ntokens"] for b in batches), 1),
        "topk": built["header"]["k"],
        "vocab": len(task.target_dictionary),
        "student": STUDENT,
        "teacher": TEACHER,
        "threads": torch.get_num_threads(),
        "quick": a.quick,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
