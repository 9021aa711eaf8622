"""A CTranslate2 teacher translating a training source: K-best lists that agree with fairseq-generate.

The teacher is a small fairseq transformer (1+1 layers, d=64) trained by the test for 300 updates
on the toy corpus (about 40 s on 2 idle cores): trained, not random, because the K-best lists of a
random model are near-ties everywhere, and a tie broken the other way would say nothing about
either decoder. It is exported to CTranslate2 float32 with ``fairseq-seqkd export``, and both
decoders run with their defaults, which agree: length penalty 1 (fairseq's --lenpen, CTranslate2's
length_penalty), scores length-normalized the same way (log-probabilities summed over the tokens and
EOS, divided by the length with EOS; fairseq prints them in base 2), at least 1 token, and an
output length bound (200) that no hypothesis reaches.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TINY_TRANSFORMER, run_cli, train_tiny

from fairseq_seqkd.commands import ct2_translate as ct2_translate_cmd
from fairseq_seqkd.compress.export import export
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.teacher import ct2_translate
from fairseq_seqkd.teacher.ct2_translate import TranslateConfig, _detokenizer, translate_file
from fairseq_seqkd.teacher.generate_output import iter_blocks

# TINY_TRANSFORMER at d=64: big enough to learn the toy corpus in a few hundred updates
TEACHER_ARCH = [{"32": "64", "64": "128"}.get(a, a) for a in TINY_TRANSFORMER]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def teacher(toy_data_bin, tmp_path_factory) -> tuple[Path, Path]:
    """(plain fairseq checkpoint, its CTranslate2 float32 folder) of a teacher trained 300 updates."""
    work = tmp_path_factory.mktemp("ct2_teacher")
    ckpt = train_tiny(toy_data_bin, work / "train", "--warmup-updates", "20", max_update=300,
                      arch_args=TEACHER_ARCH)
    export(str(ckpt), str(work / "teacher.pt"), ct2_dir=str(work / "ct2_float32"), quantization="float32",
           data_dir=str(toy_data_bin))
    return work / "teacher.pt", work / "ct2_float32"


def fairseq_nbest(data_bin: Path, ckpt: Path, beam: int, nbest: int, out: Path) -> dict[int, list[tuple[float, str]]]:
    """Stock fairseq-generate --nbest on the test split: {sentence id: [(base-2 score, text), ...]}."""
    proc = run_cli("fairseq-generate", data_bin, "--path", ckpt, "--gen-subset", "test", "--beam", str(beam),
                   "--nbest", str(nbest), "--max-len-b", "200", "--batch-size", "16",
                   "--required-batch-size-multiple", "1", "--cpu", env=ONE_THREAD)
    out.write_text(proc.stdout, encoding="utf-8")
    lists: dict[int, list[tuple[float, str]]] = {}
    for sid, block in iter_blocks(str(out)):
        for _, tag, rest in block:
            if tag == "H":
                score, _, text = rest.partition("\t")
                lists.setdefault(sid, []).append((float(score), text))
    return lists


def read_kbest(path: Path) -> dict[int, list[tuple[float, str]]]:
    """A K-best TSV as {sentence id: [(natural-log score, text), ...]} in file order."""
    lists: dict[int, list[tuple[float, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        sid, score, text = line.split("\t")
        lists.setdefault(int(sid), []).append((float(score), text))
    return lists


def ct2_kbest_in_shards(ct2_dir: Path, source: Path, beam: int, nbest: int, work: Path) -> dict:
    """The ct2-translate command's ``--output-format kbest`` in 2 shards of 10-sentence chunks, joined."""
    lists: dict[int, list[tuple[float, str]]] = {}
    for shard in (0, 1):
        out = work / f"kbest.b{beam}.n{nbest}.shard{shard}.tsv"
        parser = argparse.ArgumentParser()
        ct2_translate_cmd.add_args(parser)
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert ct2_translate_cmd.run(parser.parse_args([
                str(ct2_dir), str(source), "--out", str(out), "--output-format", "kbest", "--beam", str(beam),
                "--nbest", str(nbest), "--num-shards", "2", "--shard-id", str(shard), "--chunk-sentences", "10",
                "--threads", "1"])) == 0
        assert json.loads(printed.getvalue())["sentences"] in (30, 31)
        part = read_kbest(out)
        assert not set(part) & set(lists), "a sentence id in both shards"
        lists.update(part)
    return lists


TIE = 2e-2  # scores (log2) closer than this are a tie that float kernels may break either way


def test_kbest_equals_fairseq_generate_nbest(teacher, toy_data_bin, toy_corpus, tmp_path, record_property, capsys):
    ckpt, ct2_dir = teacher
    n = len((toy_corpus / "test.en").read_text(encoding="utf-8").splitlines())
    # K = beam / 2: see the next test for K = beam
    fs = fairseq_nbest(toy_data_bin, ckpt, 10, 5, tmp_path / "fairseq.txt")
    ct = ct2_kbest_in_shards(ct2_dir, toy_corpus / "test.en", 10, 5, tmp_path)
    assert sorted(fs) == sorted(ct) == list(range(n))  # global ids, every sentence, nothing twice
    assert all(len(ct[i]) == 5 for i in ct)
    same = [i for i in range(n) if [t for _, t in ct[i]] == [t for _, t in fs[i]]]
    record_property("kbest_equal_sentences", f"{len(same)}/{n}")
    with capsys.disabled():
        print(f"\n[ct2 teacher] beam 10, 5-best: CTranslate2 float32 lists equal to fairseq-generate's on "
              f"{len(same)}/{n} sentences")
    # Equal up to near-ties: other float kernels (another CPU) may break a near-tie inside the beam the
    # other way, and the beam then goes on with another candidate; compare what they cannot reorder. A
    # hypothesis in both lists has the same score in both (CTranslate2's natural log is fairseq's base 2
    # times ln 2); the 1-best is the same, or scores within a tie; most candidates are in both lists.
    shared = 0
    for i in range(n):
        theirs = {t: f for f, t in fs[i]}
        for c, t in ct[i]:
            if t in theirs:
                shared += 1
                assert c / math.log(2) == pytest.approx(theirs[t], abs=1e-3), f"sentence {i}: {t!r}"
        assert ct[i][0][1] == fs[i][0][1] or ct[i][0][0] / math.log(2) == pytest.approx(fs[i][0][0], abs=TIE), i
    record_property("kbest_shared_candidates", f"{shared}/{5 * n}")
    assert shared >= 0.9 * 5 * n, f"only {shared} of {5 * n} candidates are in both lists"

def test_kbest_at_full_beam_scores_at_least_fairseqs(teacher, toy_data_bin, toy_corpus, tmp_path, capsys):
    """K = beam: fairseq keeps the first ``beam`` hypotheses that end; CTranslate2 keeps every one that
    ends at that step and returns the K best, so its lists may differ but never score lower."""
    ckpt, ct2_dir = teacher
    fs = fairseq_nbest(toy_data_bin, ckpt, 5, 5, tmp_path / "fairseq.txt")
    ct = ct2_kbest_in_shards(ct2_dir, toy_corpus / "test.en", 5, 5, tmp_path)
    assert sorted(fs) == sorted(ct)
    same = 0
    for i in fs:
        assert ct[i][0][1] == fs[i][0][1], f"sentence {i}: the 1-best differs"
        for k, ((c, _), (f, _)) in enumerate(zip(ct[i], fs[i])):
            assert c / math.log(2) >= f - 1e-3, f"sentence {i}: hypothesis {k} scores lower than fairseq's"
        same += [t for _, t in ct[i]] == [t for _, t in fs[i]]
    with capsys.disabled():
        print(f"\n[ct2 teacher] beam 5, 5-best: lists equal on {same}/{len(fs)} sentences, never lower elsewhere")


def test_resumes_after_a_killed_chunk(teacher, toy_corpus, tmp_path, monkeypatch):
    _, ct2_dir = teacher
    source = toy_corpus / "test.en"
    cfg = TranslateConfig(beam=4, nbest=2, output_format="kbest", num_shards=2, shard_id=1, chunk_sentences=7,
                          threads=1)
    whole = translate_file(str(ct2_dir), str(source), str(tmp_path / "whole.tsv"), cfg)
    assert (whole["first_id"], whole["end_id"], whole["chunks"]) == (30, 61, 5)

    real, calls = ct2_translate.translate_tokens, []

    def dies_on_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "resumed.tsv"
    monkeypatch.setattr(ct2_translate, "translate_tokens", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        translate_file(str(ct2_dir), str(source), str(out), cfg)
    assert not out.exists() and len(list((tmp_path / "resumed.tsv.chunks").glob("0*.json"))) == 2
    with pytest.raises(UserError, match="other settings .*beam"):
        translate_file(str(ct2_dir), str(source), str(out), replace(cfg, beam=3))
    monkeypatch.setattr(ct2_translate, "translate_tokens", real)
    resumed = translate_file(str(ct2_dir), str(source), str(out), cfg)
    assert resumed["resumed_chunks"] == 2
    assert out.read_bytes() == (tmp_path / "whole.tsv").read_bytes()
    assert not (tmp_path / "resumed.tsv.chunks").exists()


def test_a_retrained_model_of_the_same_size_starts_the_shard_afresh(teacher, toy_data_bin, toy_corpus, tmp_path,
                                                                   monkeypatch, caplog):
    """The chunks of a killed run are another model's once the teacher is retrained and exported to the same folder:
    model.bin keeps its size, so only its content tells them apart."""
    _, ct2_a = teacher
    ckpt_b = train_tiny(toy_data_bin, tmp_path / "train_b", "--seed", "2", "--warmup-updates", "20", max_update=60,
                        arch_args=TEACHER_ARCH)
    ct2_b = tmp_path / "ct2_b"
    export(str(ckpt_b), str(tmp_path / "b.pt"), ct2_dir=str(ct2_b), quantization="float32",
           data_dir=str(toy_data_bin))
    assert (ct2_a / "model.bin").stat().st_size == (ct2_b / "model.bin").stat().st_size
    source = tmp_path / "source.en"
    shutil.copyfile(toy_corpus / "test.en", source)
    cfg = TranslateConfig(beam=2, output_format="text", chunk_sentences=10, threads=1)
    for name, model in (("a", ct2_a), ("b", ct2_b)):
        translate_file(str(model), str(source), str(tmp_path / f"{name}.txt"), cfg)
    first_chunks = [(tmp_path / f"{name}.txt").read_text(encoding="utf-8").splitlines()[:20] for name in "ab"]
    assert first_chunks[0] != first_chunks[1]  # resuming the first model's chunks would show

    real, calls = ct2_translate.translate_tokens, []

    def dies_on_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) % 3 == 0:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    model, out = tmp_path / "teacher-ct2", tmp_path / "out.txt"
    chunks = tmp_path / "out.txt.chunks"
    shutil.copytree(ct2_a, model)
    monkeypatch.setattr(ct2_translate, "translate_tokens", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        translate_file(str(model), str(source), str(out), cfg)
    assert len(list(chunks.glob("0*.json"))) == 2
    shutil.rmtree(model)
    shutil.copytree(ct2_b, model)  # retrained, exported to the same folder
    monkeypatch.setattr(ct2_translate, "translate_tokens", real)
    with caplog.at_level("WARNING", logger="fairseq_seqkd.teacher.ct2_translate"):
        info = translate_file(str(model), str(source), str(out), cfg)
    assert info["resumed_chunks"] == 0 and out.read_bytes() == (tmp_path / "b.txt").read_bytes()
    assert f"{chunks}: deleted 2 finished chunk(s) of another model" in caplog.text
    assert not chunks.exists()

    # the source is known by its content too: a line edited in place (same size) is refused, not resumed
    monkeypatch.setattr(ct2_translate, "translate_tokens", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        translate_file(str(model), str(source), str(out), cfg)
    lines = source.read_text(encoding="utf-8").splitlines()
    lines[0] = " ".join(reversed(lines[0].split()))
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert source.stat().st_size == (toy_corpus / "test.en").stat().st_size
    with pytest.raises(UserError, match=r"other settings \(source_fingerprint differ\)"):
        translate_file(str(model), str(source), str(out), cfg)


def test_text_output_is_the_kbest_first_lines(teacher, toy_corpus, tmp_path):
    _, ct2_dir = teacher
    source = toy_corpus / "test.en"
    n = len(source.read_text(encoding="utf-8").splitlines())
    kbest = tmp_path / "k.tsv"
    translate_file(str(ct2_dir), str(source), str(kbest), TranslateConfig(beam=3, nbest=3, output_format="kbest"))
    text = tmp_path / "t.txt"
    info = translate_file(str(ct2_dir), str(source), str(text), TranslateConfig(beam=3, output_format="text"))
    lines = text.read_text(encoding="utf-8").splitlines()
    assert info["sentences"] == len(lines) == n
    assert lines == [hyps[0][1] for _, hyps in sorted(read_kbest(kbest).items())]


def test_sentencepiece_round_trip(toy_corpus, tmp_path):
    """--source-spm encodes raw text as recipes' prepare does; --target-spm gives the text back."""
    from fairseq_seqkd.data.prepare import SpmConfig, encode_lines, load_sentencepiece, train_sentencepiece

    model = train_sentencepiece([str(toy_corpus / "train.en")], str(tmp_path / "spm"),
                                SpmConfig(vocab_size=100, input_sentence_size=0), threads=1)
    lines = (toy_corpus / "test.en").read_text(encoding="utf-8").splitlines()
    pieces = encode_lines(load_sentencepiece(model), lines, threads=1)
    assert any(len(p) > len(t.split()) for p, t in zip(pieces, lines))  # words were split into pieces
    detok = _detokenizer(TranslateConfig(target_spm=model))
    assert [detok(p) for p in pieces] == lines


def test_errors(teacher, toy_corpus, tmp_path):
    _, ct2_dir = teacher
    source, out = str(toy_corpus / "test.en"), str(tmp_path / "o")
    for cfg, message in [(TranslateConfig(beam=2, nbest=3), "nbest between 1 and the beam"),
                         (TranslateConfig(num_shards=2, shard_id=2), "shard id must be"),
                         (TranslateConfig(beam=2, nbest=2, output_format="text"), "use kbest"),
                         (TranslateConfig(output_format="tsv"), "unknown output format")]:
        with pytest.raises(UserError, match=message):
            translate_file(str(ct2_dir), source, out, cfg)
    with pytest.raises(UserError, match="no model.bin"):
        translate_file(str(tmp_path), source, out)
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="empty source file"):
        translate_file(str(ct2_dir), str(tmp_path / "empty.txt"), out)
    proc = run_cli("fairseq-seqkd", "ct2-translate", ct2_dir, source, "--out", out, "--beam", "1", "--nbest", "2",
                   check=False)
    assert proc.returncode == 2 and "nbest between 1 and the beam" in proc.stderr
