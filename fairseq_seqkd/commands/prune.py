"""fairseq-seqkd prune: magnitude-prune a checkpoint offline (no retraining) and report sparsity."""

from __future__ import annotations

import argparse

from fairseq_seqkd.compress.pruning import SCHEMES, PruneSpec, format_report, prune_checkpoint

# checkpoints are read and written with torch alone (fairseq_seqkd.checkpoints.storage)
NEEDS_FAIRSEQ = False
HELP = "prune a fairseq checkpoint by weight magnitude (See et al. 2016), offline; print sparsity per class"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="fairseq checkpoint to prune (e.g. student/checkpoint_best.pt)")
    p.add_argument("--out", required=True, help="where to write the pruned checkpoint (with its masks)")
    p.add_argument("--ratio", type=float, required=True,
                   help="fraction of the prunable weights to prune, e.g. 0.8")
    p.add_argument("--scheme", choices=SCHEMES, default="class-blind",
                   help="pruning scheme (default class-blind)")
    p.add_argument("--lambda", dest="lam", type=float, default=0.0,
                   help="class-distribution: prune |w| < LAMBDA * std of its class (0: solve from --ratio)")
    p.add_argument("--keep-embeddings", action="store_true", help="never prune the token embeddings")
    p.add_argument("--exclude", default=None, help="regex of parameter names never to prune")
    p.add_argument("--by-kind", action="store_true", help="sum the report over layers")


def run(args: argparse.Namespace) -> int:
    spec = PruneSpec(args.ratio, args.scheme, args.lam, args.keep_embeddings, args.exclude)
    report = prune_checkpoint(args.checkpoint, args.out, spec)
    print(format_report(report, by_kind=args.by_kind))
    print(f"wrote {args.out}: {report['nonzero_params']} of {report['params']} parameters non-zero")
    return 0
