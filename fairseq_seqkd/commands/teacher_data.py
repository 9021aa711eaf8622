"""fairseq-seqkd teacher-data: check a fairseq teacher folder, encode text as its data, binarize it."""

from __future__ import annotations

import argparse
import json

from fairseq_seqkd.commands._options import add_config, config_from
from fairseq_seqkd.data.encode import CleanConfig
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.teacher.folder import TeacherFolderConfig, read_teacher_folder
from fairseq_seqkd.teacher.teacher_data import prepare_teacher_data

# runs fairseq-preprocess in this process
NEEDS_FAIRSEQ = True
HELP = ("check a fairseq teacher folder (the model zoo's layout: checkpoint, dict.SRC.txt, dict.TGT.txt, BPE "
        "codes or a sentencepiece model), encode parallel text with its tokenization and subword model, and "
        "binarize it with its dictionaries; without split files, only check the folder")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", nargs="?",
                   help="output folder: {split}.{SRC,TGT} (teacher tokens), {split}.raw.{SRC,TGT} (the sentences "
                        "kept), dict.{SRC,TGT}.txt (the teacher's), teacher.json")
    p.add_argument("--teacher-dir", required=True, help="the teacher folder (e.g. wmt16.en-de.joined-dict.transformer)")
    p.add_argument("--src", required=True, help="source language: the teacher's and the files' suffix")
    p.add_argument("--tgt", required=True, help="target language")
    for split in ("train", "valid", "test"):
        p.add_argument(f"--{split}", nargs=2, action="append", default=[], metavar=("SRC_FILE", "TGT_FILE"),
                       help=f"a {split} pair of detokenized text files (plain, *.sgm, *.xml; .gz read as is); "
                            "repeat to concatenate")
    p.add_argument("--destdir", default=None,
                   help="also binarize into this folder with fairseq-preprocess and the teacher's dictionaries")
    p.add_argument("--workers", type=int, default=1, help="encoding and binarizing processes (default 1)")
    add_config(p, TeacherFolderConfig)
    add_config(p, CleanConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args, TeacherFolderConfig)
    teacher = read_teacher_folder(args.teacher_dir, args.src, args.tgt, cfg)
    raw = {split: [tuple(pair) for pair in getattr(args, split)] for split in ("train", "valid", "test")}
    if not any(raw.values()):
        print(json.dumps({"teacher": teacher.checkpoint, "ok": True, "encoder_args": teacher.encoder_args(),
                          "joined": teacher.joined, "embedding_rows": teacher.embedding_rows}))
        return 0
    if not args.out_dir:
        raise UserError("teacher-data: give the output folder (OUT) to encode the split files into")
    clean = config_from(args, CleanConfig)
    manifest = prepare_teacher_data(teacher, raw, args.out_dir, clean=clean, workers=args.workers,
                                    destdir=args.destdir)
    splits = {s: {k: v[k] for k in ("read", "kept", "dropped")} for s, v in manifest["splits"].items()}
    print(json.dumps({"out_dir": manifest["out_dir"], "destdir": args.destdir, "splits": splits,
                      "preprocess_args": manifest["preprocess_args"], "generate_args": manifest["generate_args"]}))
    return 0
