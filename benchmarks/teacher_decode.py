"""Teacher decoding for Seq-KD: fairseq beam search vs its CTranslate2 export (int8, float32), beam 5 and 35.

Translating the training set with the teacher is the dominant cost of Seq-KD (beam 5), and again of
Seq-Inter (beam 35, 35-best lists). This measures the recipes' teacher decoding the same sentences
in fairseq and through ``fairseq-seqkd export --ct2`` + ``fairseq-seqkd ct2-translate``'s decoding
function, one thread each.

Setup (shared with benchmarks/decode_speed.py, whose model building and batching it imports):
- teacher: fairseq ``transformer`` 6+6 layers, d=512 (ffn 2048, 8 heads), one shared 8k vocabulary,
  random weights (seeded). Random weights do not change the speed, but they would change the output
  lengths, so the length is fixed instead: every hypothesis has exactly ``--out-len`` tokens (+ EOS),
  fairseq ``min_len = max_len_b`` and CTranslate2 ``min_len = max_len_b`` with ``max_len_a`` 0 (checked
  for every hypothesis of every system): all systems do the same decoder steps. 25 tokens, about a
  WMT sentence's length in pieces, as in the measurement behind the target of 3.
- sources: 20-30 random tokens each; fairseq batches them as ``fairseq-generate`` does by default
  (``--max-tokens 12000``) and decodes them with its ``SequenceGenerator`` in fairseq-generate's timed
  loop (``task.inference_step``); CTranslate2 gets the same sentences through
  :func:`fairseq_seqkd.teacher.ct2_translate.translate_tokens` in batches of the same size. Beam 35 returns
  35 hypotheses per sentence in both (fairseq's generator always keeps the whole beam; CTranslate2
  with ``nbest`` 35), as Seq-Inter needs. Writing the output is not timed in either.
- the CTranslate2 models are the teacher exported with :func:`fairseq_seqkd.compress.export.export_ct2`,
  quantized int8 and float32.
- each system runs ``--repeats`` times, interleaved, and its fastest run counts (the machine may be
  shared; the ratios are always measured within one run). ``cpu_time`` repeats the keys with the
  process's CPU time, which other programs on the machine do not inflate.

Words per second = source tokens (without EOS) / seconds. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

import torch
from decode_speed import (
    TEACHER,
    build,
    checkpoint,
    ct2_sources,
    fairseq_decode,
    fastest_of,
    make_batches,
    write_dictionary,
)

TARGETS = {"ct2_int8_over_fairseq_beam5": 3.0}
BEAMS = (5, 35)
QUANTIZATIONS = ("int8", "float32")


def log(msg: str) -> None:
    """Progress on stderr; stdout ends with the JSON line."""
    print(f"teacher_decode: {msg}", file=sys.stderr, flush=True)


def export_teacher(cfg, model, data_dir: str, work: str) -> dict[str, str]:
    """The teacher as CTranslate2 models, one per quantization: {quantization: folder}."""
    from fairseq_seqkd.compress.export import export_ct2, plain_checkpoint

    plain = plain_checkpoint(checkpoint(cfg, model))
    return {q: export_ct2(plain, os.path.join(work, f"ct2_{q}"), q, data_dir) for q in QUANTIZATIONS}


def ct2_decode(translator, batches: list[list[list[str]]], beam: int,
               out_len: int) -> tuple[float, float, list[int]]:
    """Wall and CPU seconds for the package's CTranslate2 decoding (beam-best lists), output lengths."""
    from fairseq_seqkd.teacher.ct2_translate import translate_tokens

    lengths: list[int] = []
    start, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        out = translate_tokens(translator, batch, beam=beam, batch_size=len(batch), max_len_b=out_len,
                               min_len=out_len, nbest=beam)
        lengths += [len(h) for hyps in out.nbest for h in hyps]
    return time.perf_counter() - start, time.process_time() - cpu, lengths


def speeds(words: int, seconds: dict[str, float]) -> dict:
    """words/s per system and CTranslate2 over fairseq at each beam."""
    out = {f"{name}_wps": round(words / s, 1) for name, s in seconds.items()}
    for beam in BEAMS:
        for q in QUANTIZATIONS:
            out[f"ct2_{q}_over_fairseq_beam{beam}"] = round(seconds[f"fairseq_beam{beam}"]
                                                            / seconds[f"ct2_{q}_beam{beam}"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="8 sentences, 15 output tokens, one run each (< 60 s on 2 idle cores; indicative only)")
    p.add_argument("--sentences", type=int, default=None, help="sentences (default 64; quick 8)")
    p.add_argument("--repeats", type=int, default=None, help="runs per system (default 2; quick 1)")
    p.add_argument("--vocab", type=int, default=8000, help="shared vocabulary size (default 8000)")
    p.add_argument("--out-len", type=int, default=None, help="output tokens per hypothesis (default 25; quick 15)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and CTranslate2 alike (default 1)")
    args = p.parse_args(argv)
    n = args.sentences or (8 if args.quick else 64)
    args.out_len = args.out_len or (15 if args.quick else 25)
    repeats = args.repeats or (1 if args.quick else 2)
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)

    import ctranslate2

    import fairseq_seqkd
    from fairseq_seqkd.teacher.ct2_translate import load_translator

    fairseq_seqkd.register()  # safe globals for the export's weights_only loading

    with tempfile.TemporaryDirectory(prefix="teacher_decode.") as work:
        data_dir = os.path.join(work, "data")
        os.makedirs(data_dir)
        write_dictionary(data_dir, args.vocab)
        cfg, task, teacher = build(data_dir, TEACHER, seed=1)
        batches = make_batches(task, teacher, n, seed=3)
        warm = make_batches(task, teacher, 2, seed=4)
        words = sum(int(s["net_input"]["src_lengths"].sum()) - len(s["id"]) for s in batches)
        translators = {q: load_translator(d, threads=args.threads)
                       for q, d in export_teacher(cfg, teacher, data_dir, work).items()}
        ct2_batches, ct2_warm = ct2_sources(task, batches), ct2_sources(task, warm)

        systems = {}
        for beam in BEAMS:
            systems[f"fairseq_beam{beam}"] = (lambda b: lambda bs: fairseq_decode(task, teacher, bs[0], b,
                                                                                   args.out_len))(beam)
            for q, tr in translators.items():
                systems[f"ct2_{q}_beam{beam}"] = (lambda t, b: lambda bs: ct2_decode(t, bs[1], b,
                                                                                     args.out_len))(tr, beam)
        with torch.no_grad():
            # warm-up on 2 other sentences at beam 5: first-call allocations are not decoding speed
            for name, run in systems.items():
                if name.endswith("beam5"):
                    run((warm, ct2_warm))
            log(f"set up in {time.perf_counter() - t0:.1f}s; decoding {n} sentences, {repeats} run(s) each")
            timed = {name: functools.partial(run, (batches, ct2_batches)) for name, run in systems.items()}
            wall, cpu = fastest_of(timed, repeats, args.out_len, say=log)

    result = speeds(words, wall)
    result["targets_met"] = {k: result[k] >= v for k, v in TARGETS.items()}
    result.update({
        "targets": TARGETS,
        "seconds": {k: round(v, 3) for k, v in wall.items()},
        "cpu_time": {**speeds(words, cpu), "seconds": {k: round(v, 3) for k, v in cpu.items()}},
        "sentences": n, "source_words": words, "output_tokens_per_hypothesis": args.out_len,
        "batches": len(batches), "vocab": args.vocab, "threads": args.threads, "repeats": repeats,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "ct2": f"ctranslate2 {ctranslate2.__version__}", "torch": torch.__version__,
        "quick": args.quick, "wall_s": round(time.perf_counter() - t0, 1),
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
