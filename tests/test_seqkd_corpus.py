"""Seq-KD corpus extraction: sharded generation + extract == unsharded; faults are named, never dropped."""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import generate_in_process, run_cli

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.seq_kd.corpus import extract_corpus
from fairseq_seqkd.teacher.generate_output import first_hypotheses

SPLIT, N = "test", 61  # 61 sentences: not a multiple of 8, fairseq's default would drop some


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
    shards = [first_hypotheses(str(generated / "sharded" / f"shard{i}.txt")) for i in range(2)]
    assert 0 < len(shards[0]) < N and sum(len(s) for s in shards) == N
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
    first = first_hypotheses(str(generated / "whole" / "shard0.txt"))
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


def test_the_pipelines_shard_names_are_read(generated, toy_data_bin, tmp_path, capsys):
    # the pipeline's generation folder: shard0000.txt, shard0001.txt (layout.generation_shard)
    from fairseq_seqkd.cli import main
    from fairseq_seqkd.layout import generation_shard

    gen = tmp_path / "gen"
    gen.mkdir()
    for i in range(2):
        shutil.copyfile(generated / "sharded" / f"shard{i}.txt", generation_shard(str(gen), i))
    extract_corpus([str(generated / "sharded")], str(toy_data_bin), str(tmp_path / "plain"), split=SPLIT)
    for extra in ([], ["--num-shards", 2]):
        out = tmp_path / f"padded{len(extra)}"
        assert main(["extract", str(gen), "--data", str(toy_data_bin), "--split", SPLIT, *map(str, extra),
                     "--out", str(out)]) == 0
        assert f"{N} of {N} sentence pairs from 2 file(s)" in capsys.readouterr().out
        for name in (f"{SPLIT}.en-de.en.bin", f"{SPLIT}.en-de.de.bin", f"{SPLIT}.en-de.de.idx", f"text/{SPLIT}.de"):
            assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
        report = json.loads((out / f"{SPLIT}.extract.json").read_text())
        assert report["generation_files"] == [generation_shard(str(gen), i) for i in range(2)]
    # a missing shard is named as the folder names its shards; two files for one shard are refused
    with pytest.raises(UserError, match=r"1 of 3 missing \(shard ids 2: shard0002\.txt\)"):
        extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "out"), split=SPLIT, num_shards=3)
    shutil.copyfile(gen / "shard0001.txt", gen / "shard1.txt")
    with pytest.raises(UserError, match=r"1 shards have two files \(shard ids 1: shard0001\.txt and shard1\.txt\)"):
        extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "out"), split=SPLIT)
    assert not (tmp_path / "out").exists()


def _drop_block(text, sid):
    return "\n".join(line for line in text.splitlines() if not re.match(rf"^[A-Z]-{sid}\t", line)) + "\n"


def _block(text, sid):
    return "\n".join(line for line in text.splitlines() if re.match(rf"^[A-Z]-{sid}\t", line)) + "\n"


def test_missing_and_duplicated_ids_are_named(generated, toy_data_bin, tmp_path):
    gen = _copy(generated, tmp_path)
    s0, s1 = gen / "shard0.txt", gen / "shard1.txt"
    ids0 = sorted(first_hypotheses(str(s0)))
    lost, twice = ids0[3], ids0[5]
    s1.write_text(s1.read_text() + _block(s0.read_text(), twice))
    s0.write_text(_drop_block(s0.read_text(), lost))
    with pytest.raises(UserError) as e:
        extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "out"), split=SPLIT)
    msg = str(e.value)
    assert f"1 of the {N} sentences" in msg and f"(ids {lost})" in msg
    assert "--required-batch-size-multiple 1" in msg
    assert f"1 sentence ids appear more than once (ids {twice}; id {twice} in {s0}, {s1})" in msg
    # half of the split missing: what a machine with 2 GPUs does to a stock fairseq-generate
    with pytest.raises(UserError, match="--distributed-world-size 1"):
        extract_corpus([str(generated / "sharded" / "shard0.txt")], str(toy_data_bin), str(tmp_path / "half"),
                       split=SPLIT)


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
    ids0 = sorted(first_hypotheses(str(gen / "shard0.txt")))
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


def _expected_corpus(gen_files, data_bin, empty="reference", split=SPLIT):
    """The corpus files extract must write, derived naively: fairseq's own builder, one sentence at a time,
    fed with the hypotheses parsed line by line here and the data as fairseq loads it."""
    from fairseq.data import Dictionary, data_utils, indexed_dataset

    d = Dictionary.load(str(data_bin / "dict.de.txt"))
    src = data_utils.load_indexed_dataset(str(data_bin / f"{split}.en-de.en"), d)
    tgt = data_utils.load_indexed_dataset(str(data_bin / f"{split}.en-de.de"), d)
    hyps = {}
    for f in gen_files:
        for line in f.read_text().splitlines():
            tag, _, rest = line.partition("\t")
            if tag.startswith("H-") and int(tag[2:]) not in hyps:
                hyps[int(tag[2:])] = rest.split("\t", 1)[1].strip()
    pairs = []
    for i in range(len(src)):
        if hyps[i]:
            pairs.append((src[i], d.encode_line(hyps[i], add_if_not_exist=False), d.string(src[i]), hyps[i]))
        elif empty == "reference":
            pairs.append((src[i], tgt[i], d.string(src[i]), d.string(tgt[i])))
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, lang in enumerate(("en", "de")):
            prefix = f"{tmp}/{lang}"
            builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
            for pair in pairs:
                builder.add_item(pair[k])
            builder.finalize(prefix + ".idx")
            for ext in ("bin", "idx"):
                files[f"{split}.en-de.{lang}.{ext}"] = open(f"{prefix}.{ext}", "rb").read()
            files[f"text/{split}.{lang}"] = "".join(p[2 + k] + "\n" for p in pairs).encode()
    return files


@pytest.mark.parametrize("empty", ["reference", "drop"])
def test_streamed_corpus_is_byte_identical_to_fairseqs_builder(generated, toy_data_bin, tmp_path, empty):
    gen = _copy(generated, tmp_path)
    ids0 = sorted(first_hypotheses(str(gen / "shard0.txt")))
    for sid in ids0[:2]:
        _empty_first_hypothesis(gen / "shard0.txt", sid)
    out = tmp_path / "out"
    report = extract_corpus([str(gen)], str(toy_data_bin), str(out), split=SPLIT, empty=empty)
    expected = _expected_corpus([gen / "shard0.txt", gen / "shard1.txt"], toy_data_bin, empty)
    for name, data in expected.items():
        assert (out / name).read_bytes() == data, name
    assert report["written"] == (N if empty == "reference" else N - 2)


def test_a_cut_generation_output_is_refused(generated, toy_data_bin, tmp_path):
    # the last H- line cut at a word boundary, no D-/P- line after it and no summary: it used to
    # pass as "61 of 61" with one sentence holding half its words
    gen = _copy(generated, tmp_path, "whole")
    path = gen / "shard0.txt"
    lines = path.read_text().splitlines()
    sid = lines[max(k for k, line in enumerate(lines) if line.startswith("H-"))].split("\t")[0][2:]
    last = min(k for k, line in enumerate(lines) if line.startswith(f"H-{sid}\t"))  # its 1-best (--nbest 2)
    words = lines[last].split(" ")
    path.write_text("\n".join(lines[:last] + [" ".join(words[:max(1, len(words) // 2)])]) + "\n")
    with pytest.raises(UserError, match=rf"{path}: the hypothesis of ids {sid} has no P- line \(H-{sid} at "
                                        rf"line {last + 1}\).*file is cut.*regenerate this shard"):
        extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "out"), split=SPLIT)
    assert not (tmp_path / "out").exists()


def test_indexed_writer_and_reader_match_fairseq(tmp_path):
    from fairseq.data import Dictionary, indexed_dataset

    from fairseq_seqkd.data.indexed import IndexedReader, IndexedWriter, SymbolLines, builder_dtype

    rng = np.random.default_rng(0)
    for vocab in (100, 70000):
        sizes = rng.integers(0, 9, 50)
        sizes[:3] = 0
        tokens = rng.integers(0, vocab, int(sizes.sum()))
        ref = indexed_dataset.make_builder(str(tmp_path / "ref.bin"), impl="mmap", vocab_size=vocab)
        for part in np.split(tokens, np.cumsum(sizes)[:-1]):
            ref.add_item(torch.from_numpy(part))
        ref.finalize(str(tmp_path / "ref.idx"))
        ours = IndexedWriter(str(tmp_path / "ours"), builder_dtype(vocab))
        for cut in np.array_split(np.arange(len(sizes)), 4):  # written in chunks
            ours.add(tokens[sizes[:cut[0]].sum():sizes[:cut[-1] + 1].sum()], sizes[cut])
        ours.finalize()
        for ext in ("bin", "idx"):
            assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"ref.{ext}").read_bytes()
        reader = IndexedReader(str(tmp_path / "ours"))
        got, got_sizes = reader.tokens(10, 40)
        assert got_sizes.tolist() == sizes[10:40].tolist()
        assert got.tolist() == tokens[sizes[:10].sum():sizes[:40].sum()].tolist()
        reader.close()
    empty = IndexedWriter(str(tmp_path / "empty"), np.uint16)
    empty.finalize()
    ref = indexed_dataset.make_builder(str(tmp_path / "ref.bin"), impl="mmap", vocab_size=100)
    ref.finalize(str(tmp_path / "ref.idx"))
    assert (tmp_path / "empty.idx").read_bytes() == (tmp_path / "ref.idx").read_bytes()
    # token ids to text as Dictionary.string writes them (EOS and BOS left out, unknown ids as <unk>)
    d = Dictionary()
    for w in ("a", "b", "\u2581c"):
        d.add_symbol(w)
    sentences = [[4, 5, 2], [2], [], [0, 6, 3, 4, 2], [3]]
    text = SymbolLines(d.symbols, unk=d.unk_index, unk_word=d.unk_word, skip=[d.eos_index, d.bos_index]).lines(
        np.concatenate([np.array(s, np.int64) for s in sentences]), [len(s) for s in sentences])
    assert text.decode() == "".join(d.string(torch.tensor(s, dtype=torch.long)) + "\n" for s in sentences)


def test_bulk_parse_equals_line_by_line(tmp_path, monkeypatch):
    """fairseq's usual --nbest 1 blocks are parsed in bulk; the same files with CRLF newlines, read
    line by line, and with small pieces (blocks cut across reads) give the same corpus byte for byte."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    import synth

    from fairseq_seqkd.teacher import generate_output

    made = synth.synthesize(str(tmp_path / "s"), 3000, vocab=500, num_shards=3, seed=2, empty_hypotheses=5)
    crlf = tmp_path / "crlf"
    crlf.mkdir()
    for f in made["files"]:
        data = open(f, "rb").read()
        (crlf / f.split("/")[-1]).write_bytes(data.replace(b"\n", b"\r\n"))
        assert generate_output.regular_blocks(data[:data.rfind(b"\nS-") + 1]) is not None
    outs = {}
    outs["bulk"] = extract_corpus([made["generated"]], made["data"], str(tmp_path / "bulk"))
    outs["lines"] = extract_corpus([str(crlf)], made["data"], str(tmp_path / "lines"))
    monkeypatch.setattr(generate_output, "CHUNK_BYTES", 5000)
    outs["small"] = extract_corpus([made["generated"]], made["data"], str(tmp_path / "small"))
    for name in ("train.en-de.en.bin", "train.en-de.en.idx", "train.en-de.de.bin", "train.en-de.de.idx",
                 "text/train.en", "text/train.de"):
        ref = (tmp_path / "bulk" / name).read_bytes()
        assert ref == (tmp_path / "lines" / name).read_bytes() == (tmp_path / "small" / name).read_bytes(), name
    assert outs["bulk"]["empty_hypotheses"] == outs["lines"]["empty_hypotheses"] == 5


def test_data_in_another_fairseq_format_gives_the_same_corpus(generated, toy_data_bin, tmp_path):
    # the split in fairseq's "cached" format is read through fairseq's own dataset, not the mmap files
    from fairseq.data import Dictionary, data_utils, indexed_dataset

    data = tmp_path / "cached"
    shutil.copytree(toy_data_bin, data)
    for lang in ("en", "de"):
        prefix = data / f"{SPLIT}.en-de.{lang}"
        mmap = data_utils.load_indexed_dataset(str(prefix), Dictionary.load(str(data / f"dict.{lang}.txt")))
        items = [mmap[i] for i in range(len(mmap))]
        for ext in (".bin", ".idx"):
            os.remove(f"{prefix}{ext}")
        builder = indexed_dataset.make_builder(f"{prefix}.bin", impl="cached")
        for item in items:
            builder.add_item(item)
        builder.finalize(f"{prefix}.idx")
    gen = _copy(generated, tmp_path)
    extract_corpus([str(gen)], str(data), str(tmp_path / "from_cached"), split=SPLIT)
    extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "from_mmap"), split=SPLIT)
    for name in (f"{SPLIT}.en-de.en.bin", f"{SPLIT}.en-de.de.bin", f"text/{SPLIT}.en", f"text/{SPLIT}.de"):
        assert (tmp_path / "from_cached" / name).read_bytes() == (tmp_path / "from_mmap" / name).read_bytes(), name


def test_a_killed_extracts_temporary_folder_goes_at_the_next_extract_and_a_failing_one_leaves_none(
        generated, toy_data_bin, tmp_path, monkeypatch, caplog):
    import socket
    import subprocess
    import sys

    from fairseq_seqkd.seq_kd.corpus import writer

    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: its pid names no process
    out = tmp_path / "out"
    owners = {"killed": f"{gone.pid} {host}", "running": f"{os.getpid()} {host}",
              "elsewhere": f"{gone.pid} another-host.example"}
    for name, owner in owners.items():
        (out / f".extract-{name}" / ".work").mkdir(parents=True)
        (out / f".extract-{name}" / ".work" / "hypotheses.ids").write_bytes(b"\0" * 1000)
        (out / f".extract-{name}" / "pid").write_text(owner + "\n")
    (out / ".extract-unowned").mkdir()  # left by an older version: whose it is cannot be known
    with caplog.at_level("INFO", logger="fairseq_seqkd.seq_kd.corpus"):
        extract_corpus([str(generated / "whole" / "shard0.txt")], str(toy_data_bin), str(out), split=SPLIT)
    assert sorted(p.name for p in out.glob(".extract-*")) == [".extract-elsewhere", ".extract-running",
                                                             ".extract-unowned"]
    assert f"{out / '.extract-killed'}: removed" in caplog.text and f"process {gone.pid}" in caplog.text
    assert f"{out / '.extract-unowned'}: the temporary folder of an extract that does not name" in caplog.text
    assert not (out / "pid").exists() and (out / f"{SPLIT}.extract.json").exists()

    # a failure (here a disk that fills up while the pairs are written) leaves no temporary folder
    def disk_full(prefix, *args, **kwargs):
        temporary = os.path.dirname(prefix)
        assert (Path(temporary) / "pid").read_text().split() == [str(os.getpid()), host]
        (Path(temporary) / "text").mkdir()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "write_pairs", disk_full)
    for folder in (out, tmp_path / "new"):
        before = sorted(os.listdir(folder)) if folder.exists() else None
        with pytest.raises(OSError, match="No space left"):
            extract_corpus([str(generated / "whole" / "shard0.txt")], str(toy_data_bin), str(folder), split=SPLIT)
        assert (sorted(os.listdir(folder)) if folder.exists() else None) == before


def test_too_little_free_space_is_refused_before_anything_is_written(generated, toy_data_bin, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=50_000))
    gen = [str(generated / "whole" / "shard0.txt")]
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        extract_corpus(gen, str(toy_data_bin), str(out), split=SPLIT)
    msg = str(e.value)
    assert msg.startswith(f"{out}: extract's corpus of {toy_data_bin} split '{SPLIT}' needs about ")
    assert "but only 48.8 KiB (50,000 bytes) are free on its disk" in msg and not out.exists()
    (out / "keep").mkdir(parents=True)
    with pytest.raises(UserError, match="50,000 bytes"):
        extract_corpus(gen, str(toy_data_bin), str(out), split=SPLIT)
    assert os.listdir(out) == ["keep"]
    # the estimate bounds what is written, and not by much
    needed = int(re.search(r"\(([\d,]+) bytes\) but", msg).group(1).replace(",", ""))
    monkeypatch.undo()
    extract_corpus(gen, str(toy_data_bin), str(out), split=SPLIT)
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert written < needed < 2 * written, (written, needed)
