"""fairseq-seqkd cache: store a teacher's top-k distribution per target token of a binarized split."""

from __future__ import annotations

import argparse
import json

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.teacher_cache.build import DEFAULT_CHUNK_SENTENCES, build_cache, verify_cache
from fairseq_seqkd.teacher_cache.format import header_path

# runs the teacher (a fairseq model, maybe trained with translation_kd) in this process
NEEDS_FAIRSEQ = True
HELP = ("run a teacher with teacher forcing over a binarized split and store its top-k distribution per "
        "target token (for --task translation_kd --teacher-cache DIR --criterion word_kd)")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="binarized data folder (the --destdir of fairseq-preprocess)")
    p.add_argument("--path", help="teacher checkpoint (fairseq .pt), or an ensemble of checkpoints of the same "
                                  "vocabulary separated by ':' (a.pt:b.pt, as fairseq-generate takes them): the "
                                  "cache then holds the top-k of their mean probability")
    p.add_argument("--out", required=True, help="cache folder (one folder may hold several splits)")
    p.add_argument("--split", "--gen-subset", dest="split", default="train",
                   help="split to cache (default train)")
    p.add_argument("--topk", type=int, default=8, help="teacher tokens kept per position (default 8)")
    p.add_argument("--max-tokens", type=int, default=4000, help="tokens per teacher batch (default 4000)")
    p.add_argument("--batch-size", type=int, default=None, help="sentences per teacher batch (optional)")
    p.add_argument("--num-shards", type=int, default=1,
                   help="split the work into N shards, e.g. one per GPU or machine (default 1)")
    p.add_argument("--shard-id", type=int, default=None,
                   help="build only this shard (default: every unfinished shard, in turn)")
    p.add_argument("--chunk-sentences", type=int, default=DEFAULT_CHUNK_SENTENCES,
                   help="sentences per chunk: a shard records its progress after each, and a rerun of an "
                        f"interrupted shard resumes after the last one (default {DEFAULT_CHUNK_SENTENCES})")
    p.add_argument("--teacher-dict", default=None,
                   help="the teacher's target dictionary (dict.LANG.txt of the data it was trained on), "
                        "checked against DATA's; default: the one in the data folder its checkpoint names; "
                        "for an ensemble one file for every member, or one per member separated by ':'")
    p.add_argument("--teacher-dict-unchecked", action="store_true",
                   help="accept a teacher whose dictionary file is not readable after checking only the "
                        "vocabulary size (a dictionary in another order would give a permuted distribution)")
    p.add_argument("--source-lang", default=None, help="source language (default: the teacher's)")
    p.add_argument("--target-lang", default=None, help="target language (default: the teacher's)")
    p.add_argument("--num-workers", type=int, default=0, help="data loading workers (default 0)")
    p.add_argument("--cpu", action="store_true", help="run the teacher on CPU even if a GPU is there")
    p.add_argument("--fp16", action="store_true", help="run the teacher in half precision (GPU)")
    p.add_argument("--no-progress-bar", action="store_true", help="no progress bar")
    p.add_argument("--verify", action="store_true",
                   help="run no teacher: check every shard's checksums, write the header from shards built "
                        "elsewhere if it is missing, then check the cache against DATA's split (lengths, "
                        "target tokens, values)")


def run(args: argparse.Namespace) -> int:
    if args.verify:
        header = verify_cache(args.data, args.out, args.split, args.source_lang, args.target_lang)
        print(f"ok: {header_path(args.out, args.split)}: {header['num_sentences']} sentences, "
              f"{header['num_tokens']} tokens, top-{header['k']}, {header['num_shards']} shard(s) match "
              f"{args.data} split {args.split}")
        return 0
    if not args.path:
        raise UserError("--path TEACHER_CHECKPOINT (or A.pt:B.pt for an ensemble) is required (or --verify)")
    result = build_cache(
        args.data, args.path, args.out, split=args.split, topk=args.topk, max_tokens=args.max_tokens,
        max_sentences=args.batch_size, num_shards=args.num_shards, shard_id=args.shard_id,
        source_lang=args.source_lang, target_lang=args.target_lang, cpu=args.cpu, fp16=args.fp16,
        num_workers=args.num_workers, progress=not args.no_progress_bar, chunk_sentences=args.chunk_sentences,
        teacher_dict=args.teacher_dict, teacher_dict_unchecked=args.teacher_dict_unchecked)
    header = result["header"]
    summary = {"built": result["built"], "skipped": result["skipped"], "missing": result["missing"],
               "resumed": result["resumed"], "seconds": round(result["seconds"], 2)}
    if header is None:
        print(f"shards done; still missing shard ids {result['missing']} of {args.num_shards}: "
              f"the header is written when the last one finishes", json.dumps(summary))
    else:
        teachers = len(header.get("teachers", [])) or 1
        print(f"{header_path(args.out, args.split)}: {header['num_sentences']} sentences, "
              f"{header['num_tokens']} tokens, top-{header['k']}"
              f"{f' of the mean of {teachers} teachers' if teachers > 1 else ''}, {header['bytes']} bytes",
              json.dumps(summary))
    return 0
