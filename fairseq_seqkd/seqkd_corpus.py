"""Seq-KD and Seq-Inter corpora: ``fairseq-generate`` output merged into binarized fairseq data.

The teacher translates a split with fairseq's own generator, possibly in shards::

    fairseq-generate DATA --user-dir PLUGIN --task translation_kd --path TEACHER.pt \\
        --gen-subset train --beam 5 --nbest 1 --required-batch-size-multiple 1 \\
        [--num-shards N --shard-id I] [--seq-inter --beam 35] > GEN/shardI.txt.tmp 2> GEN/shardI.log \\
      && mv GEN/shardI.txt.tmp GEN/shardI.txt

and :func:`extract_corpus` turns the outputs into a parallel corpus in the split's original
order: the source is the original data (its binarized split, or a raw text file), the target
the first ``H-`` line of each sentence id (the 1-best; with ``--seq-inter`` the candidate
closest to the reference). It is written as text (``OUT/text/SPLIT.{src,tgt}``) and binarized
with the ORIGINAL dictionaries (fairseq's indexed-dataset builder, as fairseq-preprocess does),
next to copies of the dictionaries and of the data's other splits, so ``fairseq-train OUT``
trains on it like on any fairseq data.

What it checks, refusing with the list of what is wrong rather than dropping anything:

- the shard set: with a folder and ``num_shards``, every ``shard{i}.txt`` for i < N must
  exist (a file appears only when its shard finished, thanks to the ``.tmp``-then-``mv`` above);
  a missing shard is named, to be rerun alone;
- every sentence id of the split appears exactly once over all files: missing ids (fairseq
  drops up to 7 sentences per shard without ``--required-batch-size-multiple 1``, and skips
  over-long ones with ``--skip-invalid-size-inputs-valid-test``) and duplicated ids (e.g.
  ``--num-shards`` with ``--task translation``, which fairseq-generate ignores) are named;
- the output is in the dictionary's token space: ``H-`` lines must be generated without
  ``--post-process``/``--remove-bpe``/``--replace-unk`` (``--bpe``/``--tokenizer`` only change
  ``D-`` lines and are fine); every hypothesis token must be a dictionary symbol, and its
  token count must match its ``P-`` line (one score per token plus EOS), which also catches a
  line cut by stderr text written into the same file (keep ``2>`` separate);
- ``S-`` lines, where present, match the data's source sentences (the output belongs to
  this data and split), and a ``Translated N sentences`` line, where present (stderr merged
  into the file), matches the number of sentences in that file.

An empty hypothesis (the teacher emitted only EOS) is counted, its ids are reported, and
``empty`` decides: ``reference`` (default) keeps the pair with the original reference as
target, ``drop`` leaves the pair out, ``error`` refuses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import torch

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluation import TRANSLATED_LINE, format_ids
from fairseq_seqkd.io_utils import read_lines

EMPTY_POLICIES = ("reference", "drop", "error")
SHARD_NAME = "shard{}.txt"
_TAGGED = re.compile(r"^([A-Z])-(\d+)\t(.*)$")


@dataclass
class GenerationOutput:
    """The 1-best (first ``H-`` line) per sentence id of one ``fairseq-generate`` output file."""

    path: str
    hypotheses: dict[int, str] = field(default_factory=dict)
    sources: dict[int, str] = field(default_factory=dict)
    occurrences: Counter = field(default_factory=Counter)  # sentence blocks per id (2+: duplicated)
    translated: int | None = None  # the "Translated N sentences" line, where stderr was merged in
    bad_lines: list[str] = field(default_factory=list)


def shard_files(generated: list[str], num_shards: int | None = None) -> list[str]:
    """The generation files: ``DIR/shard{i}.txt`` for i < num_shards from a folder, or the files given.

    A missing shard is a UserError that names every missing one.
    """
    if len(generated) == 1 and os.path.isdir(generated[0]):
        folder = generated[0]
        if num_shards is None:
            found = [int(m.group(1)) for f in os.listdir(folder)
                     if (m := re.fullmatch(r"shard(\d+)\.txt", f))]
            if not found:
                raise UserError(f"{folder}: no {SHARD_NAME.format('<i>')} generation files; write each "
                                f"fairseq-generate shard's output there (or name the files)")
            num_shards = max(found) + 1
        files = [os.path.join(folder, SHARD_NAME.format(i)) for i in range(num_shards)]
        missing = [i for i, f in enumerate(files) if not os.path.isfile(f)]
        if missing:
            raise UserError(
                f"{folder}: incomplete set of shards: {len(missing)} of {num_shards} missing (shard ids "
                f"{format_ids(missing)}: {', '.join(os.path.basename(files[i]) for i in missing[:10])}). "
                "A shard's file appears only when its generation finished: rerun each missing shard alone "
                "(fairseq-generate ... --num-shards N --shard-id I), then extract again")
        return files
    missing = [f for f in generated if not os.path.isfile(f)]
    if missing:
        raise UserError(f"generation output not found: {', '.join(missing)}; rerun the generation that "
                        "writes it (a shard that died is rerun alone), or check the path")
    if num_shards is not None and num_shards != len(generated):
        raise UserError(f"--num-shards {num_shards} but {len(generated)} generation files given "
                        f"({', '.join(generated)}): name one file per shard")
    return list(generated)


def parse_generation(path: str) -> GenerationOutput:
    """Read one ``fairseq-generate`` output: first H- per id, S- lines, and line-level consistency."""
    out = GenerationOutput(path)
    previous = None  # the id of the last tagged line: a new id starts a new sentence block
    pending = None  # (id, token count) of a first H- line whose P- line is expected next
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            m = _TAGGED.match(line)
            if m is None:
                t = TRANSLATED_LINE.search(line)
                if t:
                    out.translated = int(t.group(1).replace(",", ""))
                continue
            tag, sid, rest = m.group(1), int(m.group(2)), m.group(3)
            if sid != previous:
                out.occurrences[sid] += 1
                previous = sid
            if tag == "S" and out.occurrences[sid] == 1:
                out.sources[sid] = rest
            elif tag == "H" and sid not in out.hypotheses:
                score, _, text = rest.partition("\t")  # an empty hypothesis: "H-7<tab>-1.2<tab>"
                try:
                    float(score)
                except ValueError:
                    out.bad_lines.append(f"line {number}: malformed H- line {line[:80]!r}")
                    continue
                out.hypotheses[sid] = text.strip()
                pending = (sid, len(text.split()))
            elif tag == "P" and pending is not None and pending[0] == sid:
                scores = len(rest.split())
                if scores != pending[1] + 1:
                    out.bad_lines.append(
                        f"line {number}: H-{sid} has {pending[1]} tokens but its P- line {scores} scores "
                        "(one per token plus EOS)")
                pending = None
    return out


def _language_pair_data(data: str, split: str, source_lang: str | None, target_lang: str | None):
    """(task, dataset of ``split``, data folder) loaded as fairseq-generate loads it (no combine)."""
    from fairseq import utils

    from fairseq_seqkd.fairseq_glue import setup_translation_task

    task = setup_translation_task(data, source_lang, target_lang)
    try:
        task.load_dataset(split)
    except FileNotFoundError as e:
        raise UserError(f"{data}: no binarized split '{split}' ({e})") from e
    return task, task.dataset(split), utils.split_paths(data)[0]


def _encode_hypothesis(text: str, tgt_dict) -> tuple[torch.Tensor, list[str]]:
    """Ids of a token-space hypothesis plus EOS (as fairseq-preprocess binarizes), and its unknown tokens."""
    unk = tgt_dict.unk()
    ids, unknown = [], []
    for tok in text.split():
        i = tgt_dict.indices.get(tok, unk)
        if i == unk and tok != tgt_dict.unk_word:
            unknown.append(tok)
        ids.append(i)
    ids.append(tgt_dict.eos())
    return torch.tensor(ids, dtype=torch.int32), unknown


def _other_split_files(folder: str, split: str, src: str, tgt: str) -> list[str]:
    """The data's other binarized splits (valid, test, ...), not ``split`` nor its ``split1``... parts."""
    pairs = {f"{src}-{tgt}", f"{tgt}-{src}"}
    keep = []
    for name in sorted(os.listdir(folder)):
        parts = name.split(".")
        if (len(parts) == 4 and parts[1] in pairs and parts[2] in (src, tgt) and parts[3] in ("bin", "idx")
                and not re.fullmatch(re.escape(split) + r"\d*", parts[0])):
            keep.append(name)
    return keep


def _id_problems(outputs: list[GenerationOutput], seen: Counter, n: int, what: str) -> list[str]:
    """Missing, repeated and out-of-range sentence ids, each named."""
    problems = []
    duplicated = sorted(sid for sid, count in seen.items() if count > 1)
    if duplicated:
        sid = duplicated[0]
        where = [g.path for g in outputs for _ in range(g.occurrences[sid])]
        hint = ""
        if len(duplicated) == n and len(outputs) > 1:
            hint = (" Every sentence is in several files: fairseq-generate ignores --num-shards/--shard-id "
                    "with --task translation; generate with --task translation_kd (which honours them).")
        problems.append(f"{len(duplicated)} sentence ids appear more than once (ids {format_ids(duplicated)}; "
                        f"id {sid} in {', '.join(where)}).{hint}")
    missing = [i for i in range(n) if i not in seen]
    if missing:
        problems.append(f"{len(missing)} of the {n} sentences of {what} are in no generation file (ids "
                        f"{format_ids(missing)}): fairseq drops sentences unless generated with "
                        "--required-batch-size-multiple 1 (and skips over-long ones with "
                        "--skip-invalid-size-inputs-valid-test); regenerate the shard(s) holding them")
    extra = sorted(i for i in seen if not 0 <= i < n)
    if extra:
        problems.append(f"ids {format_ids(extra)} are beyond the {n} sentences of {what}: the output was "
                        "generated from other data or another --gen-subset")
    return problems


def _source_problems(outputs: list[GenerationOutput], sources: list[str], what: str) -> list[str]:
    """S- lines that are not the data's source sentences."""
    differ = [(i, g) for g in outputs for i, text in g.sources.items()
              if i < len(sources) and text != sources[i]]
    if not differ:
        return []
    i, g = differ[0]
    return [f"{len(differ)} S- lines differ from {what} (id {i}: {g.path} has {g.sources[i]!r}, the data "
            f"{sources[i]!r}): generated from other data, or with --bpe/--tokenizer/--post-process "
            "(then pass --no-source-check)"]


def extract_corpus(generated: list[str], data: str, out: str, split: str = "train",
                   source_lang: str | None = None, target_lang: str | None = None,
                   num_shards: int | None = None, source_text: str | None = None, empty: str = "reference",
                   copy_splits: bool = True, check_sources: bool = True) -> dict:
    """Merge ``fairseq-generate`` outputs of ``split`` into a binarized corpus in ``out``; return the report.

    See the module docstring for the checks; any failure is a UserError naming the file(s) and ids.
    """
    if empty not in EMPTY_POLICIES:
        raise UserError(f"empty-hypothesis policy {empty!r}: choose one of {', '.join(EMPTY_POLICIES)}")
    files = shard_files(generated, num_shards)
    task, dataset, folder = _language_pair_data(data, split, source_lang, target_lang)
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    if os.path.realpath(out) == os.path.realpath(folder):
        raise UserError(f"--out {out} is the data folder itself: its {split} split would be overwritten; "
                        "write the distilled corpus to a new folder")
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    n = len(dataset)
    what = f"{data} split '{split}'"
    if source_text is not None:
        source_lines = [line.strip() for line in read_lines(source_text)]
        if len(source_lines) != n:
            raise UserError(f"{source_text}: {len(source_lines)} lines but {what} has {n} sentences: give "
                            "the source text the data was binarized from")
    else:
        source_lines = [src_dict.string(dataset.src[i]) for i in range(n)]

    # every id exactly once over all files, each file consistent with itself and with the data
    outputs = [parse_generation(f) for f in files]
    problems = []
    seen = Counter()
    for g in outputs:
        problems += [f"{g.path}: {b}" for b in g.bad_lines[:5]]
        if g.translated is not None and g.translated != len(g.occurrences):
            problems.append(f"{g.path}: says 'Translated {g.translated} sentences' but holds "
                            f"{len(g.occurrences)}: the file is truncated or mixed; regenerate it")
        no_hyp = sorted(sid for sid in g.occurrences if sid not in g.hypotheses)
        if no_hyp:
            problems.append(f"{g.path}: no H- line for ids {format_ids(no_hyp)} (generated with --quiet, or the "
                            "file is cut)")
        seen.update(g.occurrences)
    problems += _id_problems(outputs, seen, n, what)
    if check_sources and source_text is None:
        problems += _source_problems(outputs, source_lines, what)
    if problems:
        raise UserError("cannot extract a corpus from " + ", ".join(files) + ":\n  " + "\n  ".join(problems))
    hyps = {sid: text for g in outputs for sid, text in g.hypotheses.items()}

    # the corpus, in the data's order
    pairs, empty_ids, dropped, unknown, unknown_ids = [], [], [], Counter(), []
    for i in range(n):
        text = hyps[i]
        if text:
            ids, bad = _encode_hypothesis(text, tgt_dict)
            if bad:
                unknown.update(bad)
                unknown_ids.append(i)
                continue
        else:
            empty_ids.append(i)
            if empty != "reference":
                dropped += [i] if empty == "drop" else []
                continue
            if dataset.tgt is None:
                raise UserError(f"{what} has no target side to fall back on for its empty hypotheses: "
                                "use --empty drop")
            ids = dataset.tgt[i].to(torch.int32)
            text = tgt_dict.string(ids)
        if source_text is not None:
            src_ids = src_dict.encode_line(source_lines[i], add_if_not_exist=False, append_eos=True)
        else:
            src_ids = dataset.src[i]
        pairs.append((src_ids, ids, source_lines[i], text))
    if unknown_ids:
        raise UserError(
            f"hypotheses of {len(unknown_ids)} sentences (ids {format_ids(unknown_ids)}) hold tokens that are not "
            f"in the target dictionary {dict(unknown.most_common(5))}: the H- lines are not in the model's "
            "token space. Generate without --post-process/--remove-bpe/--replace-unk, and keep stderr out of "
            "the output file")
    if empty_ids and empty == "error":
        raise UserError(f"{len(empty_ids)} empty hypotheses (ids {format_ids(empty_ids)}); choose --empty "
                        "reference or --empty drop")

    others = _other_split_files(folder, split, src, tgt) if copy_splits else []
    report = {
        "split": split, "source_lang": src, "target_lang": tgt, "sentences": n, "written": len(pairs),
        "generation_files": files, "empty_hypotheses": len(empty_ids), "empty_policy": empty,
        "empty_ids": empty_ids[:1000], "dropped_ids": dropped[:1000],
        "source": source_text or os.path.join(folder, f"{split}.{src}-{tgt}.{src}"),
        "target_tokens": int(sum(len(p[1]) - 1 for p in pairs)),
        "copied_splits": sorted({name.split(".")[0] for name in others}),
    }
    _write_corpus(out, split, (src, src_dict), (tgt, tgt_dict), pairs, folder, others, report)
    return report


def _write_corpus(out: str, split: str, source: tuple, target: tuple, pairs: list, folder: str,
                  others: list[str], report: dict) -> None:
    """Binarize and write the corpus in a temporary folder inside ``out``, then move it into place.

    Files are replaced one by one; the report goes last and an old report is removed first, so a
    report in ``out`` always describes the files next to it.
    """
    from fairseq.data import indexed_dataset

    (src, src_dict), (tgt, tgt_dict) = source, target
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out, prefix=".extract-")
    try:
        for k, (lang, d) in enumerate(((src, src_dict), (tgt, tgt_dict))):
            prefix = os.path.join(tmp, f"{split}.{src}-{tgt}.{lang}")
            builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
            for pair in pairs:
                builder.add_item(pair[k])
            builder.finalize(prefix + ".idx")
            os.makedirs(os.path.join(tmp, "text"), exist_ok=True)
            with open(os.path.join(tmp, "text", f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(pair[2 + k] + "\n" for pair in pairs)
            shutil.copyfile(os.path.join(folder, f"dict.{lang}.txt"), os.path.join(tmp, f"dict.{lang}.txt"))
        for name in others:
            shutil.copyfile(os.path.join(folder, name), os.path.join(tmp, name))
        report_name = f"{split}.extract.json"
        with open(os.path.join(tmp, report_name), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        if os.path.exists(os.path.join(out, report_name)):
            os.remove(os.path.join(out, report_name))
        os.makedirs(os.path.join(out, "text"), exist_ok=True)
        names = [os.path.join("text", x) for x in sorted(os.listdir(os.path.join(tmp, "text")))]
        names += sorted(x for x in os.listdir(tmp) if x not in ("text", report_name))
        for name in names + [report_name]:
            os.replace(os.path.join(tmp, name), os.path.join(out, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
