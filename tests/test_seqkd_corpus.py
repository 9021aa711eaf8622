"""Seq-KD corpus extraction: sharded generation + extract == unsharded; faults are named, never dropped."""

import json
import re
import shutil

import pytest
import torch
from conftest import plugin_dir, run_cli

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.seqkd_corpus import extract_corpus, parse_generation

SPLIT, N = "test", 61  # 61 sentences: not a multiple of 8, fairseq's default would drop some


def generate_in_process(data_bin, teacher, out, *extra):
    """fairseq-generate's own main in this process (the console script minus interpreter start-up);
    only what it prints to its output file (no log lines) ends up in ``out``."""
    from fairseq import options
    from fairseq_cli import generate

    argv = [data_bin, "--user-dir", plugin_dir(), "--task", "translation_kd", "--path", teacher,
            "--required-batch-size-multiple", 1, "--cpu", "--num-workers", 0, *extra,
            "--results-path", out.parent / (out.name + ".d")]
    args = options.parse_args_and_arch(options.get_generation_parser(), [str(a) for a in argv])
    generate.main(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / (out.name + ".d") / f"generate-{args.gen_subset}.txt").rename(out)
    return out


def _generate(data_bin, teacher, out, *extra):
    return generate_in_process(data_bin, teacher, out, "--gen-subset", SPLIT, "--beam", 3, "--nbest", 2,
                               "--batch-size", 8, *extra)


@pytest.fixture(scope="module")
def generated(toy_data_bin, toy_teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp("seqkd_gen")
    _generate(toy_data_bin, toy_teacher, d / "whole" / "shard0.txt")
    for i in range(2):
        _generate(toy_data_bin, toy_teacher, d / "sharded" / f"shard{i}.txt", "--num-shards", 2,
                  "--shard-id", i)
    return d


def _copy(generated, tmp_path, name="sharded"):
    dst = tmp_path / "gen"
    shutil.copytree(generated / name, dst)
    return dst


def _load(data_bin, split=SPLIT):
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(str(data_bin / "dict.de.txt"))
    src = data_utils.load_indexed_dataset(str(data_bin / f"{split}.en-de.en"), d)
    tgt = data_utils.load_indexed_dataset(str(data_bin / f"{split}.en-de.de"), d)
    return d, [src[i].tolist() for i in range(len(src))], [tgt[i].tolist() for i in range(len(tgt))]


def test_sharded_extraction_equals_unsharded(generated, toy_data_bin, tmp_path):
    shards = [parse_generation(str(generated / "sharded" / f"shard{i}.txt")) for i in range(2)]
    assert 0 < len(shards[0].hypotheses) < N and sum(len(s.hypotheses) for s in shards) == N
    out_cli = tmp_path / "sharded"
    proc = run_cli("fairseq-seqkd", "extract", generated / "sharded", "--data", toy_data_bin,
                   "--split", SPLIT, "--num-shards", 2, "--out", out_cli)
    assert f"{N} of {N} sentence pairs from 2 file(s)" in proc.stdout
    whole = extract_corpus([str(generated / "whole" / "shard0.txt")], str(toy_data_bin),
                           str(tmp_path / "whole"), split=SPLIT)
    for name in (f"{SPLIT}.en-de.en.bin", f"{SPLIT}.en-de.en.idx", f"{SPLIT}.en-de.de.bin",
                 f"{SPLIT}.en-de.de.idx", f"text/{SPLIT}.de", f"text/{SPLIT}.en"):
        assert (out_cli / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    # the source is the original data; the target the first H- line of each id, in the data's order
    d, src, tgt = _load(out_cli)
    _, orig_src, orig_tgt = _load(toy_data_bin)
    assert src == orig_src and len(tgt) == N and tgt != orig_tgt
    first = parse_generation(str(generated / "whole" / "shard0.txt")).hypotheses
    assert [d.string(torch.tensor(t)) for t in tgt] == [first[i] for i in range(N)]
    # it loads as any fairseq data: dictionaries and the other splits are next to it
    assert (out_cli / "dict.en.txt").read_bytes() == (toy_data_bin / "dict.en.txt").read_bytes()
    assert (out_cli / "valid.en-de.de.bin").exists() and not list(out_cli.glob(".extract-*"))
    assert whole["empty_hypotheses"] == 0 and whole["written"] == N
    report = json.loads((out_cli / f"{SPLIT}.extract.json").read_text())
    assert report["copied_splits"] == ["train", "valid"]
    from fairseq_seqkd.fairseq_glue import setup_translation_task

    task = setup_translation_task(str(out_cli))
    task.load_dataset(SPLIT)
    assert len(task.dataset(SPLIT)) == N


def _extract_cli(capsys, *argv):
    """``fairseq-seqkd extract ARGV`` through its dispatcher, in this process: (exit code, stderr)."""
    from fairseq_seqkd.cli import main

    code = main(["extract", *map(str, argv)])
    return code, capsys.readouterr().err


def test_missing_shard_is_refused_with_its_name(generated, toy_data_bin, tmp_path, capsys):
    gen = _copy(generated, tmp_path)
    (gen / "shard1.txt").unlink()
    code, err = _extract_cli(capsys, gen, "--data", toy_data_bin, "--split", SPLIT, "--num-shards", 2,
                             "--out", tmp_path / "out")
    assert code == 2 and "incomplete set of shards: 1 of 2 missing (shard ids 1: shard1.txt)" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=r"2 of 3 missing \(shard ids 1, 2: shard1\.txt, shard2\.txt\)"):
        extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "out"), split=SPLIT, num_shards=3)


def _drop_block(text, sid):
    return "\n".join(line for line in text.splitlines() if not re.match(rf"^[A-Z]-{sid}\t", line)) + "\n"


def _block(text, sid):
    return "\n".join(line for line in text.splitlines() if re.match(rf"^[A-Z]-{sid}\t", line)) + "\n"


def test_missing_and_duplicated_ids_are_named(generated, toy_data_bin, tmp_path):
    gen = _copy(generated, tmp_path)
    s0, s1 = gen / "shard0.txt", gen / "shard1.txt"
    ids0 = sorted(parse_generation(str(s0)).hypotheses)
    lost, twice = ids0[3], ids0[5]
    s1.write_text(s1.read_text() + _block(s0.read_text(), twice))
    s0.write_text(_drop_block(s0.read_text(), lost))
    with pytest.raises(UserError) as e:
        extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "out"), split=SPLIT)
    msg = str(e.value)
    assert f"1 of the {N} sentences" in msg and f"(ids {lost})" in msg
    assert "--required-batch-size-multiple 1" in msg
    assert f"1 sentence ids appear more than once (ids {twice}; id {twice} in {s0}, {s1})" in msg


def test_unsharded_output_given_as_every_shard(generated, toy_data_bin, tmp_path):
    # what --num-shards with --task translation gives: each "shard" holds the whole set
    files = [str(generated / "whole" / "shard0.txt")] * 2
    with pytest.raises(UserError, match=f"{N} sentence ids appear more than once.*--task translation_kd"):
        extract_corpus(files, str(toy_data_bin), str(tmp_path / "out"), split=SPLIT, num_shards=2)


def _empty_first_hypothesis(path, sid):
    """Turn sentence sid's 1-best into an empty hypothesis (EOS only), as a teacher can emit."""
    lines, done = path.read_text().splitlines(), False
    for k, line in enumerate(lines):
        if not done and line.startswith(f"H-{sid}\t"):
            score = line.split("\t")[1]
            lines[k] = f"H-{sid}\t{score}\t"
            lines[k + 2] = f"P-{sid}\t-0.5000"  # H, D, P: one score, for EOS
            done = True
    path.write_text("\n".join(lines) + "\n")


def test_empty_hypotheses_counted_with_fallback(generated, toy_data_bin, tmp_path, capsys):
    gen = _copy(generated, tmp_path)
    ids0 = sorted(parse_generation(str(gen / "shard0.txt")).hypotheses)
    _empty_first_hypothesis(gen / "shard0.txt", ids0[0])
    _empty_first_hypothesis(gen / "shard0.txt", ids0[1])
    empty = sorted(ids0[:2])
    _, _, orig_tgt = _load(toy_data_bin)

    ref = extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "ref"), split=SPLIT)
    assert ref["empty_hypotheses"] == 2 and ref["empty_ids"] == empty and ref["written"] == N
    _, _, tgt = _load(tmp_path / "ref")
    assert all(tgt[i] == orig_tgt[i] for i in empty)  # the reference stands in

    drop = extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "drop"), split=SPLIT, empty="drop")
    assert drop["written"] == N - 2 and drop["dropped_ids"] == empty
    _, src, tgt = _load(tmp_path / "drop")
    assert len(src) == len(tgt) == N - 2

    code, err = _extract_cli(capsys, gen, "--data", toy_data_bin, "--split", SPLIT, "--empty", "error",
                             "--out", tmp_path / "err")
    assert code == 2 and f"2 empty hypotheses (ids {empty[0]}, {empty[1]})" in err


def test_output_not_in_token_space_or_not_of_this_data(generated, toy_data_bin, tmp_path):
    gen = _copy(generated, tmp_path, "whole")
    path = gen / "shard0.txt"
    good = path.read_text()
    out = str(tmp_path / "out")

    # a --post-process'ed hypothesis (tokens not in the dictionary, same count as its P- line)
    path.write_text(re.sub(r"^(H-7\t[^\t]*\t)(\S+)", r"\1\2@@xyz", good, count=1, flags=re.M))
    with pytest.raises(UserError, match=r"ids 7\).*not in the target dictionary.*--post-process"):
        extract_corpus([str(gen)], str(toy_data_bin), out, split=SPLIT)

    # stderr text written into the middle of an H- line (2>&1 with buffered stdout)
    path.write_text(re.sub(r"^(H-9\t[^\t]*\t.*)$", r"\1 INFO:fairseq_cli.generate: 3 / 8", good, count=1,
                           flags=re.M))
    with pytest.raises(UserError, match=r"H-9 has \d+ tokens but its P- line"):
        extract_corpus([str(gen)], str(toy_data_bin), out, split=SPLIT)

    # a stderr log merged in that disagrees with the file, and sources of other data
    path.write_text(good + "2026-01-01 | INFO | fairseq_cli.generate | Translated 62 sentences (5 tokens)\n")
    with pytest.raises(UserError, match="says 'Translated 62 sentences' but holds 61"):
        extract_corpus([str(gen)], str(toy_data_bin), out, split=SPLIT)
    path.write_text(re.sub(r"^S-4\t.*$", "S-4\tthe cat sees the dog", good, count=1, flags=re.M))
    with pytest.raises(UserError, match="1 S- lines differ"):
        extract_corpus([str(gen)], str(toy_data_bin), out, split=SPLIT)
    report = extract_corpus([str(gen)], str(toy_data_bin), out, split=SPLIT, check_sources=False)
    assert report["written"] == N

    # the wrong split: sentences missing, sources that differ
    with pytest.raises(UserError, match=r"(?s)3 of the 64 sentences.*ids 61, 62, 63.*61 S- lines differ"):
        extract_corpus([str(gen)], str(toy_data_bin), out, split="valid")
