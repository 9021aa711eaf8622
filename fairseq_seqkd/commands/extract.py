"""fairseq-seqkd extract: fairseq-generate output, or another toolkit's translations -> a binarized Seq-KD corpus."""

from __future__ import annotations

import argparse

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.seq_kd.corpus import (
    EMPTY_POLICIES,
    MAX_UNK_RATE,
    SHARD_NAME,
    Teacher,
    extract_corpus,
    extract_pooled,
    extract_translations,
    parse_teacher,
)
from fairseq_seqkd.seq_kd.filters import Filters
from fairseq_seqkd.seq_kd.kbest import ENCODINGS, SELECTIONS
from fairseq_seqkd.seq_kd.mbr import MBR, UTILITIES, WEIGHTS
from fairseq_seqkd.seq_kd.sentence_bleu import SMOOTH_METHODS, SentenceBLEU
from fairseq_seqkd.seq_kd.sentence_chrf import PieceText

# reads fairseq's binarized splits and its tokenizer in this process
NEEDS_FAIRSEQ = True
HELP = ("merge fairseq-generate outputs of a split (Seq-KD: teacher beam output; Seq-Inter: with "
        "--seq-inter), or another toolkit's translations (--translations, --kbest), or several teachers' "
        "K-best lists pooled (--teacher), into a parallel corpus in the original order, checked and binarized "
        "with the original dictionaries")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("generated", nargs="*",
                   help="a folder of shard outputs shard0000.txt, shard0001.txt, ... (the pipeline's names; "
                        f"{SHARD_NAME.format('<i>')} also, i = 0..N-1), or the output file(s) of fairseq-generate "
                        "(stdout; generated without --post-process)")
    p.add_argument("--data", required=True, help="the binarized data folder that was translated (its "
                   "dictionaries are reused)")
    p.add_argument("--out", "--destdir", dest="out", required=True,
                   help="folder for the new data: SPLIT.SRC-TGT.{SRC,TGT}.{bin,idx}, dictionaries, the "
                        "data's other splits, text/SPLIT.{SRC,TGT} and SPLIT.extract.json (the report)")
    p.add_argument("--split", default="train", help="the --gen-subset that was translated (default train)")
    p.add_argument("-s", "--source-lang", default=None, help="source language (default: from --data)")
    p.add_argument("-t", "--target-lang", default=None, help="target language (default: from --data)")
    p.add_argument("--num-shards", type=int, default=None,
                   help="number of shards expected in the folder: a missing shard file is named and refused "
                        "(default: up to the highest shard file found)")
    p.add_argument("--source-text", default=None,
                   help="take the source sentences from this text file (one per line, tokenized as "
                        "binarized) instead of the binarized split")
    p.add_argument("--empty", choices=EMPTY_POLICIES, default=None,
                   help="an empty hypothesis: use the reference as target (the default for fairseq-generate "
                        "output), drop the pair, or refuse (the default for --translations/--kbest); counted "
                        "and listed in the report either way")
    p.add_argument("--no-copy-splits", action="store_true",
                   help="do not copy the data's other splits (valid, test) next to the new one")
    p.add_argument("--no-source-check", action="store_true",
                   help="do not compare the S- lines with the data's sources (needed when generation used "
                        "--bpe/--tokenizer, which decode S- lines)")
    g = p.add_argument_group("translations from another toolkit (instead of fairseq-generate output)")
    g.add_argument("--translations", default=None, metavar="FILE",
                   help="a text file of translations, line i the translation of sentence i of --split "
                        "(data-bin's order: the prepared training text's)")
    g.add_argument("--kbest", nargs="+", default=None, metavar="TSV",
                   help="K-best lists: lines sentence_id<TAB>score<TAB>text (id 0-based, score the model's "
                        "log-probability, higher is better), any order, 1..K per id, each id in one file; "
                        "the best-scoring candidate of each sentence is kept (with --seq-inter: the closest "
                        "to the reference)")
    g.add_argument("--teacher", nargs="+", action="append", default=None, metavar="NAME[:ENCODING] FILE",
                   help="one teacher's K-best lists: fairseq-generate --nbest output or K-best TSV files (each "
                        "recognised by its lines), once per teacher: the candidates of all teachers are pooled per "
                        "sentence (equal token ids after re-encoding are one candidate), each teacher's scores "
                        "normalized per sentence (log-softmax), and one chosen by --select; ENCODING of its text: "
                        f"{', '.join(ENCODINGS)} (default: spm with --spm-model, pieces with --pieces, else words; "
                        "fairseq-generate output: pieces/words read H- lines, spm the D- lines of --post-process)")
    g.add_argument("--select", choices=SELECTIONS, default=None,
                   help="with --kbest or --teacher: the candidate kept per sentence: best (highest score; pooled: "
                        "highest pooled weight; the default), seq-inter (closest to the reference, as --seq-inter) "
                        "or mbr (highest expected utility against the other candidates: needs no reference)")
    g.add_argument("--mbr-weights", choices=WEIGHTS, default="scores",
                   help="--select mbr: weigh the other candidates by the softmax of their (pooled) scores, or "
                        "uniformly (default scores)")
    g.add_argument("--mbr-utility", choices=UTILITIES, default="bleu",
                   help="--select mbr: the utility, sentence BLEU on token ids with the --seq-inter-smooth-* "
                        "options, or sacrebleu's sentence chrF (its defaults: character 6-grams, beta 2, spaces "
                        "ignored) on the text of the student's pieces (default bleu)")
    g.add_argument("--seq-inter", action="store_true",
                   help="with --kbest: keep the candidate closest to the data's reference by smoothed "
                        "sentence BLEU on token ids (ties: higher score, then earlier line), as "
                        "fairseq-generate --task translation_kd --seq-inter chooses")
    g.add_argument("--spm-model", default=None, metavar="MODEL",
                   help="the student's sentencepiece model (prepare writes it as spm.model): the text is "
                        "detokenized and is encoded with it as prepare encoded the training data")
    g.add_argument("--pieces", action="store_true",
                   help="the text is already in the student's tokens (space-separated pieces): every token "
                        "must be in the dictionary. Without --spm-model or --pieces the text is split at "
                        "whitespace and unknown words become <unk> (word-level data)")
    g.add_argument("--max-unk-rate", type=float, default=MAX_UNK_RATE,
                   help="refuse translations with a larger share of tokens not in the dictionary (default "
                        f"{MAX_UNK_RATE}: more means a wrong or missing --spm-model)")
    g.add_argument("--seq-inter-smooth-method", choices=SMOOTH_METHODS, default="exp",
                   help="smoothing of the Seq-Inter sentence BLEU (as the task's option of the same name)")
    g.add_argument("--seq-inter-smooth-value", type=float, default=None,
                   help="value for --seq-inter-smooth-method floor (default 0.1) or add-k (default 1)")
    g.add_argument("--seq-inter-no-effective-order", action="store_true",
                   help="average the BLEU precisions over all 4 orders (as the task's option)")
    g.add_argument("--threads", type=int, default=0, help="sentencepiece encoding threads (0: all cores)")
    f = p.add_argument_group("filters of the distilled corpus (none by default; a dropped sentence leaves both sides, "
                             "is counted per reason in the report and listed in SPLIT.dropped.tsv beside it)")
    f.add_argument("--filter-score-quantile", type=float, default=None, metavar="Q",
                   help="drop sentences whose teacher score is below the Q-quantile of the whole split's (e.g. "
                        "0.05): fairseq-generate's H- score (length-normalized unless --unnormalized), or the kept "
                        "K-best candidate's score as read (--kbest)")
    f.add_argument("--filter-length-ratio", type=float, default=None, metavar="R",
                   help="drop sentences whose hypothesis/source length in tokens is outside [1/R, R] (e.g. 3.0)")
    f.add_argument("--filter-source-copies", action="store_true",
                   help="drop hypotheses that copy the source: equal to it once lowercased, subword marks removed "
                        "and only letters and digits kept (the source holding a letter)")
    f.add_argument("--filter-min-bleu", type=float, default=None, metavar="B",
                   help="drop sentences whose hypothesis has a sentence BLEU below B (0-100) against the reference "
                        "(token ids, the --seq-inter-smooth-* options' smoothing)")
    f.add_argument("--filter-min-chrf", type=float, default=None, metavar="C",
                   help="drop sentences whose hypothesis has a sentence chrF below C (0-100) against the reference "
                        "(sacrebleu's defaults, on the text of the student's pieces)")


def run(args: argparse.Namespace) -> int:
    given = [bool(args.generated), args.translations is not None, args.kbest is not None, args.teacher is not None]
    if sum(given) != 1:
        raise UserError("give one input: fairseq-generate output (positional), --translations FILE, "
                        "--kbest TSV [TSV ...] or --teacher NAME FILE [FILE ...] (once per teacher)")
    select = args.select or ("seq-inter" if args.seq_inter else "best")
    if args.seq_inter and select != "seq-inter":
        raise UserError(f"--seq-inter and --select {args.select} disagree: give one of them")
    if args.select and args.kbest is None and args.teacher is None:
        raise UserError("--select chooses among K-best candidates: give --kbest or --teacher lists")
    bleu = SentenceBLEU(args.seq_inter_smooth_method, args.seq_inter_smooth_value,
                        not args.seq_inter_no_effective_order)
    text = None
    if args.mbr_utility == "chrf" or args.filter_min_chrf is not None:  # chrF reads the text of the pieces
        from fairseq_seqkd.fairseq_glue import setup_translation_task

        text = PieceText.of(setup_translation_task(args.data, args.source_lang, args.target_lang).target_dictionary)
    filters = Filters(args.filter_score_quantile, args.filter_length_ratio, args.filter_source_copies,
                      args.filter_min_bleu, bleu, args.filter_min_chrf, text=text)
    filters.check()
    if args.teacher is not None or select == "mbr":
        default = "spm" if args.spm_model else "pieces" if args.pieces else "words"
        teachers = ([parse_teacher(spec, default) for spec in args.teacher] if args.teacher is not None
                    else [Teacher("kbest", list(args.kbest), default)])
        r = extract_pooled(teachers, args.data, args.out, split=args.split, select=select, spm_model=args.spm_model,
                           bleu=bleu, mbr=MBR(args.mbr_utility, args.mbr_weights, bleu, text=text),
                           source_lang=args.source_lang, target_lang=args.target_lang, source_text=args.source_text,
                           empty=args.empty, copy_splits=not args.no_copy_splits, max_unk_rate=args.max_unk_rate,
                           threads=args.threads, filters=filters)
        credits = ", ".join(f"{t['name']} {t['chosen']} ({t['chosen_alone']} alone)" for t in r["teachers"])
        print(f"{r['split']}: {r['written']} of {r['sentences']} sentence pairs from {len(r['teachers'])} "
              f"teacher(s), {r['pooled_candidates']} distinct of {r['candidates_read']} candidates ({r['selection']}); "
              f"chosen: {credits}; {r['chosen_from_several_teachers']} proposed by several teachers, credited to "
              f"each; {r['empty_hypotheses']} empty ({r['empty_policy']}) -> {args.out}")
        _print_filters(r)
        return 0
    if not args.generated:
        r = extract_translations(args.kbest or [args.translations], args.data, args.out, split=args.split,
                                 kbest=args.kbest is not None, seq_inter=select == "seq-inter",
                                 spm_model=args.spm_model, pieces=args.pieces, bleu=bleu,
                                 source_lang=args.source_lang, target_lang=args.target_lang,
                                 source_text=args.source_text, empty=args.empty,
                                 copy_splits=not args.no_copy_splits, max_unk_rate=args.max_unk_rate,
                                 threads=args.threads, filters=filters)
        print(f"{r['split']}: {r['written']} of {r['sentences']} sentence pairs from "
              f"{len(r['translation_files'])} file(s) ({r['format']}, {r['selection']}); {r['unknown_tokens']} of "
              f"{r['tokens_read']} tokens unknown ({r['unknown_rate']:.4%}); {r['empty_hypotheses']} empty "
              f"({r['empty_policy']}) -> {args.out}")
        _print_filters(r)
        return 0
    if args.seq_inter or args.spm_model or args.pieces:
        raise UserError("--seq-inter, --spm-model and --pieces are for --translations/--kbest; fairseq-generate "
                        "output is Seq-Inter when generated with --seq-inter")
    r = extract_corpus(args.generated, args.data, args.out, split=args.split, source_lang=args.source_lang,
                       target_lang=args.target_lang, num_shards=args.num_shards, source_text=args.source_text,
                       empty=args.empty or "reference", copy_splits=not args.no_copy_splits,
                       check_sources=not args.no_source_check, filters=filters)
    print(f"{r['split']}: {r['written']} of {r['sentences']} sentence pairs from "
          f"{len(r['generation_files'])} file(s); {r['empty_hypotheses']} empty hypotheses "
          f"({r['empty_policy']}) -> {args.out}")
    _print_filters(r)
    return 0


def _print_filters(r: dict) -> None:
    """The filters' counts, where any filter was on."""
    if "filters" in r:
        f = r["filters"]
        on = [name for name in f["dropped"] if f["options"][_OPTION[name]] not in (None, False)]
        counts = ", ".join(f"{name} {f['dropped'][name]}" for name in on)
        print(f"filtered: {f['dropped_sentences']} sentence pairs dropped ({counts}; a pair may fail several), "
              f"listed in {f['dropped_file']}")


_OPTION = {"score": "score_quantile", "length_ratio": "length_ratio", "source_copy": "source_copies",
           "bleu": "min_bleu", "chrf": "min_chrf"}
