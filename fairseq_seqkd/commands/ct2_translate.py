"""fairseq-seqkd ct2-translate: decode with a CTranslate2 model, fairseq-generate style or as a teacher."""

from __future__ import annotations

import argparse
import json
import sys

from fairseq_seqkd.teacher.ct2_translate import OUTPUT_FORMATS, TranslateConfig, translate_file

NEEDS_FAIRSEQ = False
HELP = ("translate a source file with a CTranslate2 model: fairseq-generate's output (which "
        "`fairseq-seqkd evaluate` scores), or a teacher's translations of a training set in shards, "
        "as K-best TSV (sentence_id<TAB>score<TAB>text) or one line per sentence")


def add_args(p: argparse.ArgumentParser) -> None:
    d = TranslateConfig()
    p.add_argument("model_dir", help="CTranslate2 model folder (fairseq-seqkd export --ct2, or a converter's)")
    p.add_argument("source", help="source sentences, one per line: pieces separated by spaces as the model was "
                                  "trained on, or raw text with --source-spm")
    p.add_argument("--out", required=True, help="output file (the whole shard; written atomically at the end)")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default=d.output_format,
                   help="generate: S-/H-/D- lines and the timing line; kbest: one line per hypothesis, "
                        "sentence_id<TAB>score<TAB>text (ids: 0-based source line numbers); text: the 1-best "
                        f"translation of each line (default {d.output_format})")
    p.add_argument("--beam", type=int, default=d.beam, help=f"beam size (default {d.beam}: greedy)")
    p.add_argument("--nbest", type=int, default=d.nbest,
                   help="hypotheses per sentence, best first, at most the beam (default 1)")
    p.add_argument("--lenpen", type=float, default=d.lenpen,
                   help="length penalty: scores are log-probabilities / length ** lenpen, as fairseq's --lenpen "
                        f"(default {d.lenpen})")
    p.add_argument("--max-len-a", type=float, default=d.max_len_a,
                   help="at most a * (source pieces + 1) + b output tokens, as fairseq-generate "
                        f"(default {d.max_len_a})")
    p.add_argument("--max-len-b", type=int, default=d.max_len_b, help=f"see --max-len-a (default {d.max_len_b})")
    p.add_argument("--min-len", type=int, default=d.min_len,
                   help=f"at least this many output tokens before EOS (default {d.min_len}, as fairseq)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"sentences per batch, sorted by length (default {d.batch_size})")
    p.add_argument("--num-shards", type=int, default=d.num_shards,
                   help="split the source into N contiguous blocks of lines; sentence ids stay global")
    p.add_argument("--shard-id", type=int, default=d.shard_id, help="which block to translate (0-based)")
    p.add_argument("--chunk-sentences", type=int, default=d.chunk_sentences,
                   help="sentences per resumable chunk, kept in OUT.chunks/ until the shard is done; a rerun "
                        f"with the same options resumes (default {d.chunk_sentences}; 0: one chunk)")
    p.add_argument("--source-spm", help="sentencepiece model: the source is raw text, encoded with it")
    p.add_argument("--target-spm", help="sentencepiece model that detokenizes the output")
    p.add_argument("--spm", help="one joint sentencepiece model for both (as the recipes' spm.model)")
    p.add_argument("--post-process", default=None,
                   help="without --target-spm: fairseq's --post-process to detokenize the output "
                        "(sentencepiece, subword_nmt, ...); default: the output tokens joined by spaces")
    p.add_argument("--tokenized-output", action="store_true",
                   help="kbest/text: write the output pieces, not the detokenized text")
    for name in ("tokenizer", "bpe", "bpe-codes", "sentencepiece-model"):
        p.add_argument(f"--{name}", default=None,
                       help="as fairseq-generate's option: the output is detokenized as its D- lines")
    p.add_argument("--target-lang", default=None, help="the output's language (--tokenizer moses detokenizes by it)")
    p.add_argument("--moses-no-dash-splits", action="store_true", help="as fairseq-generate's option")
    p.add_argument("--moses-no-escape", action="store_true", help="as fairseq-generate's option")
    p.add_argument("--compute-type", default=d.compute_type,
                   help="CTranslate2 compute type (default: the model's quantization)")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads (default 0: CTranslate2 chooses)")


def run(args: argparse.Namespace) -> int:
    cfg = TranslateConfig(
        beam=args.beam, nbest=args.nbest, batch_size=args.batch_size, max_len_a=args.max_len_a,
        max_len_b=args.max_len_b, min_len=args.min_len, lenpen=args.lenpen, output_format=args.output_format,
        num_shards=args.num_shards, shard_id=args.shard_id, chunk_sentences=args.chunk_sentences,
        source_spm=args.source_spm or args.spm, target_spm=args.target_spm or args.spm,
        post_process=args.post_process, tokenized_output=args.tokenized_output,
        compute_type=args.compute_type, threads=args.threads, tokenizer=args.tokenizer, bpe=args.bpe,
        bpe_codes=args.bpe_codes, sentencepiece_model=args.sentencepiece_model, target_lang=args.target_lang,
        moses_no_dash_splits=args.moses_no_dash_splits, moses_no_escape=args.moses_no_escape)
    print(json.dumps(translate_file(args.model_dir, args.source, args.out, cfg)))
    return 0


if __name__ == "__main__":
    from fairseq_seqkd.cli import main

    sys.exit(main(["ct2-translate", *sys.argv[1:]]))
