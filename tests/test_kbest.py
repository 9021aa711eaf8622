"""Translations from another toolkit: a text file or K-best TSV lists give what fairseq-generate's output gives.

The hypotheses are the toy teacher's own (fairseq-generate --nbest 4), rewritten as another toolkit
would hand them over; the corpora are compared byte for byte with the fairseq-generate path's.
"""

import random
import re

import numpy as np
import pytest
from conftest import TINY_TRANSFORMER, generate_in_process, run_cli

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.seq_kd import kbest
from fairseq_seqkd.seq_kd.corpus import extract_corpus, extract_translations
from fairseq_seqkd.seq_kd.sentence_bleu import SentenceBLEU
from fairseq_seqkd.seq_kd.seq_inter import seq_inter_order
from fairseq_seqkd.teacher.generate_output import first_hypotheses, iter_blocks

SPLIT, N, K = "test", 61, 4
FILES = [f"{SPLIT}.en-de.{lang}.{ext}" for lang in ("en", "de") for ext in ("bin", "idx")] + \
        [f"text/{SPLIT}.en", f"text/{SPLIT}.de"]


@pytest.fixture(scope="module")
def lists(toy_data_bin, toy_teacher, tmp_path_factory):
    """The teacher's 4-best lists (beam order) and its --seq-inter choice, as fairseq-generate prints them."""
    d = tmp_path_factory.mktemp("kbest_gen")
    common = ["--gen-subset", SPLIT, "--beam", K, "--batch-size", 16]
    generate_in_process(toy_data_bin, toy_teacher, d / "nbest.txt", *common, "--nbest", K)
    generate_in_process(toy_data_bin, toy_teacher, d / "inter.txt", *common, "--nbest", 1, "--seq-inter")
    return d


def _candidates(gen_file):
    """[(id, score, text)] of every H- line, in file order (each sentence's in beam order)."""
    out = []
    for sid, lines in iter_blocks(str(gen_file)):
        out += [(sid, *rest.split("\t", 1)) for _, tag, rest in lines if tag == "H"]
    return out


def _tsv(path, rows):
    path.write_text("".join(f"{sid}\t{score}\t{text}\n" for sid, score, text in rows))
    return path


def _same(a, b):
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_text_and_kbest_lists_give_the_fairseq_generate_corpus(lists, toy_data_bin, tmp_path, monkeypatch, capsys):
    data = str(toy_data_bin)
    fairseq = tmp_path / "fairseq"
    extract_corpus([str(lists / "nbest.txt")], data, str(fairseq), split=SPLIT)  # the first H- of each id
    best = first_hypotheses(str(lists / "nbest.txt"))
    text = tmp_path / "hyp.de"
    text.write_text("".join(best[i] + "\n" for i in range(N)))

    # a text file in the student's pieces, through the command line
    from fairseq_seqkd.cli import main

    assert main(["extract", "--translations", str(text), "--pieces", "--data", data, "--split", SPLIT,
                 "--out", str(tmp_path / "pieces")]) == 0
    assert f"{N} of {N} sentence pairs from 1 file(s) (text, line); 0 of" in capsys.readouterr().out
    _same(tmp_path / "pieces", fairseq)
    # word-level data: split at whitespace; CRLF newlines read as LF
    text.write_bytes(text.read_bytes().replace(b"\n", b"\r\n"))
    report = extract_translations([str(text)], data, str(tmp_path / "words"), split=SPLIT)
    _same(tmp_path / "words", fairseq)
    assert report["encoding"] == "whitespace" and report["unknown_tokens"] == 0 and report["written"] == N

    # K-best lists, lines shuffled across two shards, read in chunks that cut sentences' lists
    rows = _candidates(lists / "nbest.txt")
    assert len(rows) == K * N
    random.Random(0).shuffle(rows)
    shards = [_tsv(tmp_path / "a.tsv", [r for r in rows if r[0] % 2]),
              _tsv(tmp_path / "b.tsv", [r for r in rows if not r[0] % 2])]
    monkeypatch.setattr(kbest, "CHUNK_LINES", 37)
    report = extract_translations([str(s) for s in shards], data, str(tmp_path / "kbest"), split=SPLIT, kbest=True)
    _same(tmp_path / "kbest", fairseq)
    assert report["selection"] == "best_score" and report["tokens_read"] > 0


def test_seq_inter_reranking_agrees_with_the_generator(lists, toy_data_bin, tmp_path, monkeypatch):
    data = str(toy_data_bin)
    extract_corpus([str(lists / "inter.txt")], data, str(tmp_path / "generator"), split=SPLIT)
    rows = _candidates(lists / "nbest.txt")
    tsv = _tsv(tmp_path / "nbest.tsv", rows)
    report = extract_translations([str(tsv)], data, str(tmp_path / "rerank"), split=SPLIT, kbest=True,
                                  seq_inter=True)
    _same(tmp_path / "rerank", tmp_path / "generator")
    assert report["bleu"] == SentenceBLEU().signature()
    # the same with the lines in any order, compared chunk by chunk
    random.Random(1).shuffle(rows)
    monkeypatch.setattr(kbest, "CHUNK_LINES", 50)
    extract_translations([str(_tsv(tmp_path / "shuffled.tsv", rows))], data, str(tmp_path / "shuffled"),
                         split=SPLIT, kbest=True, seq_inter=True)
    _same(tmp_path / "shuffled", tmp_path / "generator")

    # the kept candidate is the closest to the reference, and not always the 1-best
    from fairseq.data import Dictionary

    d = Dictionary.load(str(toy_data_bin / "dict.de.txt"))
    kept = (tmp_path / "rerank" / f"text/{SPLIT}.de").read_text().splitlines()
    best = first_hypotheses(str(lists / "nbest.txt"))
    assert any(kept[i] != best[i] for i in range(N))
    ref_ids = _data_targets(toy_data_bin, d)
    bleu = SentenceBLEU()
    by_id = {}
    for sid, _, text in rows:
        by_id.setdefault(sid, []).append(text)
    for i in range(N):
        scores = bleu.score_lists([[d.index(w) for w in t.split()] for t in by_id[i]], [ref_ids[i]] * K)
        assert bleu.score_lists([[d.index(w) for w in kept[i].split()]], [ref_ids[i]])[0] == max(scores)


def _data_targets(data_bin, d):
    from fairseq.data import data_utils

    tgt = data_utils.load_indexed_dataset(str(data_bin / f"{SPLIT}.en-de.de"), d)
    return [tgt[i].tolist()[:-1] for i in range(len(tgt))]  # without EOS


def test_choice_is_seq_inter_order_in_any_chunking():
    """KBestChoice keeps what seq_inter_order puts first (BLEU, then score, then earlier line), however the
    lists are cut into chunks and ordered; Seq-KD keeps the best score, the earlier line on ties."""
    rng = np.random.default_rng(3)
    n = 40
    ids = np.repeat(np.arange(n), rng.integers(1, 6, n))
    bleu = rng.choice([0.0, 12.5, 30.0, 30.0 + 1e-12, 55.0], len(ids))  # ties, within the tolerance too
    scores = rng.choice([-1.0, -0.5, -0.25], len(ids))
    keys = np.arange(len(ids), dtype=np.int64) + 1000
    for seq_inter in (True, False):
        for file, cut in ((np.arange(len(ids)), len(ids)), (np.arange(len(ids)), 1), (rng.permutation(len(ids)), 7),
                          (rng.permutation(len(ids)), 1)):
            expect = {}  # each sentence's candidates in the order the file holds them
            for i in range(n):
                rows = file[ids[file] == i]
                if seq_inter:
                    expect[i] = int(rows[seq_inter_order(bleu[rows].tolist(), scores[rows].tolist())[0]])
                else:
                    expect[i] = int(rows[max(range(len(rows)), key=lambda k: (scores[rows[k]], -k))])
            choice, kept_row = kbest.KBestChoice(n, seq_inter), {}
            for lo in range(0, len(ids), cut):
                rows = file[lo:lo + cut]
                kept, repeats = choice.choose(ids[rows], scores[rows], keys[rows], bleu[rows] if seq_inter else None)
                assert not len(repeats)
                kept_row.update({int(ids[rows[k]]): int(rows[k]) for k in kept})
            assert kept_row == expect, (seq_inter, cut)
    # a line given twice is a repeat, in its chunk or against the kept line
    choice = kbest.KBestChoice(2)
    choice.choose(np.array([0, 1]), np.array([-1.0, -2.0]), np.array([5, 6]))
    _, repeats = choice.choose(np.array([0, 1, 1]), np.array([-1.0, -3.0, -3.0]), np.array([5, 8, 8]))
    assert repeats.tolist() == [0, 2]


def test_a_missing_extra_or_empty_line_is_refused(lists, toy_data_bin, tmp_path, capsys):
    data = str(toy_data_bin)
    best = first_hypotheses(str(lists / "nbest.txt"))
    lines = [best[i] for i in range(N)]
    text = tmp_path / "hyp.de"
    text.write_text("".join(t + "\n" for t in lines[:-1]))
    from fairseq_seqkd.cli import main

    code = main(["extract", "--translations", str(text), "--data", data, "--split", SPLIT, "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"{text}: {N - 1} lines but {data} split '{SPLIT}' has {N} sentences (1 missing)" in err
    assert "line i must be the translation of sentence i" in err and not (tmp_path / "out").exists()
    text.write_text("".join(t + "\n" for t in lines + ["one more"]))
    with pytest.raises(UserError, match=f"{N + 1} lines .* has {N} sentences \\(1 too many\\)"):
        extract_translations([str(text)], data, str(tmp_path / "out"), split=SPLIT)
    lines[6] = "  "
    text.write_text("".join(t + "\n" for t in lines))
    with pytest.raises(UserError, match=rf"1 sentences have an empty translation \(ids 6; {text} line 7\)"):
        extract_translations([str(text)], data, str(tmp_path / "out"), split=SPLIT)
    report = extract_translations([str(text)], data, str(tmp_path / "ref"), split=SPLIT, empty="reference")
    assert report["empty_ids"] == [6] and report["written"] == N


def test_a_last_line_without_newline_is_a_line(lists, toy_data_bin, tmp_path):
    # counted as read_text reads it (io_utils.count_text_lines): the file is whole, not one line short
    data = str(toy_data_bin)
    best = first_hypotheses(str(lists / "nbest.txt"))
    text = tmp_path / "hyp.de"
    text.write_text("\n".join(best[i] for i in range(N)))
    assert not text.read_bytes().endswith(b"\n")
    report = extract_translations([str(text)], data, str(tmp_path / "cut"), split=SPLIT)
    text.write_text("".join(best[i] + "\n" for i in range(N)))
    extract_translations([str(text)], data, str(tmp_path / "whole"), split=SPLIT)
    _same(tmp_path / "cut", tmp_path / "whole")
    assert report["written"] == N
    text.write_text("\n".join(best[i] for i in range(N - 1)))  # one line short, the last without a newline
    with pytest.raises(UserError, match=f"{N - 1} lines but .* has {N} sentences \\(1 missing\\)"):
        extract_translations([str(text)], data, str(tmp_path / "short"), split=SPLIT)


def test_kbest_faults_are_named_with_file_and_line(lists, toy_data_bin, tmp_path):
    data = str(toy_data_bin)
    rows = sorted(_candidates(lists / "nbest.txt"), key=lambda r: r[0])  # id 3's lines are lines 13 to 16
    good = "".join(f"{sid}\t{score}\t{text}\n" for sid, score, text in rows)
    tsv = tmp_path / "k.tsv"
    out = str(tmp_path / "out")

    def refused(text, pattern, files=None):
        tsv.write_text(text)
        with pytest.raises(UserError, match=pattern):
            extract_translations(files or [str(tsv)], data, out, split=SPLIT, kbest=True)
        assert not (tmp_path / "out").exists()

    kept = [line for line in good.splitlines(keepends=True) if not line.startswith("17\t")]
    refused("".join(kept), rf"1 of the {N} sentences .* have no candidate in {tsv} \(ids 17\)")
    refused(good.replace("\t", " ", 1), rf"{tsv}: line 1 has 2 tab-separated field\(s\), not 3.*sentence_id<TAB>")
    refused(re.sub(r"^(3\t)[^\t]+", r"\1-inf", good, count=1, flags=re.M),
            rf"{tsv}: line {4 * 3 + 1}: score '-inf' is not a finite number")
    refused(re.sub(r"^3\t[^\t]+", "3\tabc", good, count=1, flags=re.M), r"line 13: score 'abc' is not a finite")
    refused(good + f"{N}\t-1.0\tfoo\n", rf"line {K * N + 1}: sentence id {N} is outside the split's {N} sentences")
    refused(re.sub(r"^\d+", "x", good, count=1), r"line 1: sentence id 'x' is not an integer")
    # the same file given twice: every line repeats; two shards that share a sentence
    refused(good + good, rf"{K * N} lines repeat an earlier line .*{tsv} line {K * N + 1} \(id 0\).*given twice")
    other = tmp_path / "other.tsv"
    # other scores: not a repeated line, a repeated id
    _tsv(other, [(sid, float(score) - 1, text) for sid, score, text in rows if sid == 5])
    refused(good, rf"1 sentence ids appear more than once \(ids 5; id 5 in {tsv}, {other}\).*one file",
            [str(tsv), str(other)])
    # unknown tokens: fine as <unk> at a low rate, refused when the text is not in the student's tokens
    sid, score, text = rows[0]
    _tsv(tsv, [(sid, score, "zzz " + text)] + rows[1:])
    report = extract_translations([str(tsv)], data, out, split=SPLIT, kbest=True)
    assert report["unknown_tokens"] >= 1 and report["most_unknown"].get("zzz", 0) >= 1
    with pytest.raises(UserError, match=rf"{tsv}: line 1: token 'zzz' is not in the student's dictionary"):
        extract_translations([str(tsv)], data, str(tmp_path / "strict"), split=SPLIT, kbest=True, pieces=True)
    tsv.write_text(good.upper())
    with pytest.raises(UserError, match=r"tokens \(\d+\.\d%\) are not in the student's dictionary.*--spm-model"):
        extract_translations([str(tsv)], data, str(tmp_path / "upper"), split=SPLIT, kbest=True)


@pytest.fixture(scope="module")
def spm_data(tmp_path_factory):
    """A sentencepiece-encoded toy corpus (prepare) and its fairseq-preprocess'ed data."""
    from fairseq_seqkd.data.prepare import prepare_corpus
    from fairseq_seqkd.data.toy_corpus import write_corpus

    root = tmp_path_factory.mktemp("kbest_spm")
    write_corpus(str(root / "raw"), {"train": 300, "valid": 20, "test": 20}, seed=5)
    raw = {s: [(str(root / "raw" / f"{s}.en"), str(root / "raw" / f"{s}.de"))] for s in ("train", "valid", "test")}
    prepare_corpus(raw, str(root / "prepared"), "en", "de", vocab_size=200)
    p = root / "prepared"
    run_cli("fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--trainpref", p / "train",
            "--validpref", p / "valid", "--testpref", p / "test", "--destdir", root / "bin",
            "--joined-dictionary", "--workers", "1")
    return root


def test_detokenized_text_is_encoded_with_the_students_spm_model(spm_data, tmp_path):
    from fairseq.data import Dictionary, indexed_dataset

    from fairseq_seqkd.data.prepare import load_sentencepiece, normalize_line

    prepared, data = spm_data / "prepared", str(spm_data / "bin")
    # the references, detokenized, as a teacher's output: the corpus is the data itself
    refs = (prepared / "train.raw.de").read_text().splitlines()
    text = tmp_path / "hyp.de"
    text.write_text("".join(r + "\n" for r in refs))
    report = extract_translations([str(text)], data, str(tmp_path / "same"), spm_model=str(prepared / "spm.model"))
    for ext in ("bin", "idx"):
        assert (tmp_path / "same" / f"train.en-de.de.{ext}").read_bytes() == \
            (spm_data / "bin" / f"train.en-de.de.{ext}").read_bytes()
    assert report["encoding"] == "sentencepiece" and report["unknown_tokens"] == 0
    # characters sentencepiece never saw, extra spaces: as prepare + fairseq-preprocess would encode them
    refs[0], refs[3] = "  Grüße\tan " + refs[0] + "  ", refs[3] + " ∑"
    text.write_text("".join(r + "\n" for r in refs))
    report = extract_translations([str(text)], data, str(tmp_path / "odd"), spm_model=str(prepared / "spm.model"))
    sp, d = load_sentencepiece(str(prepared / "spm.model")), Dictionary.load(str(spm_data / "bin" / "dict.de.txt"))
    builder = indexed_dataset.make_builder(str(tmp_path / "ref.bin"), impl="mmap", vocab_size=len(d))
    for r in refs:
        pieces = " ".join(sp.encode(normalize_line(r), out_type=str))
        builder.add_item(d.encode_line(pieces, add_if_not_exist=False))
    builder.finalize(str(tmp_path / "ref.idx"))
    for ext in ("bin", "idx"):
        assert (tmp_path / "odd" / f"train.en-de.de.{ext}").read_bytes() == (tmp_path / f"ref.{ext}").read_bytes()
    assert report["unknown_tokens"] > 0 and "∑" in "".join(report["most_unknown"])
    # detokenized text without the model: not the student's tokens, refused with the fix
    with pytest.raises(UserError, match=r"not in the student's dictionary.*--spm-model, e\.g\. prepared/spm\.model"):
        extract_translations([str(text)], data, str(tmp_path / "nomodel"))


# a teacher that has learnt something (d=64, 150 updates: about 15 s each on 2 busy cores): with the 40-update
# toy teacher's repetitions, one teacher's cluster of near-equal candidates wins every sentence
POOL_ARCH = [{"32": "64", "64": "128"}.get(a, a) for a in TINY_TRANSFORMER]


@pytest.fixture(scope="module")
def pooled_teachers(spm_data, toy_data_bin, tmp_path_factory):
    """Two teachers of the sentencepiece student's test split: a fairseq model of the student's vocabulary
    (fairseq-generate --nbest 4, its pieces) and a CTranslate2 model of another vocabulary (a word-level model
    trained on the toy corpus and exported, 4-best TSV of detokenized words)."""
    from conftest import train_tiny

    from fairseq_seqkd.compress.export import export
    from fairseq_seqkd.teacher.ct2_translate import TranslateConfig, translate_file

    work = tmp_path_factory.mktemp("pooled")
    data = spm_data / "bin"
    common = ["--warmup-updates", "20"]
    fs_ckpt = train_tiny(data, work / "fs_teacher", *common, max_update=150, arch_args=POOL_ARCH)
    generate_in_process(data, fs_ckpt, work / "fs.txt", "--gen-subset", SPLIT, "--beam", K, "--nbest", K,
                        "--batch-size", 8)
    words_ckpt = train_tiny(toy_data_bin, work / "words_teacher", *common, max_update=150, arch_args=POOL_ARCH)
    export(str(words_ckpt), str(work / "words.pt"), ct2_dir=str(work / "ct2"), quantization="float32",
           data_dir=str(toy_data_bin))
    translate_file(str(work / "ct2"), str(spm_data / "prepared" / f"{SPLIT}.raw.en"), str(work / "ct2.tsv"),
                   TranslateConfig(beam=K, nbest=K, output_format="kbest", threads=1))
    return work


def _hand_pool(lists, n, select_mbr: bool = True, uniform: bool = False):
    """The pooled choice written out: distinct candidates in order of first appearance, each teacher's
    log-softmax over its distinct candidates (best score of a repeat), the mean of the teachers'
    probabilities, then MBR by sacrebleu pair by pair (expected BLEU against the others) or the best weight."""
    from sacrebleu.metrics import BLEU

    sacre = BLEU(tokenize="none", smooth_method="exp", effective_order=True)
    chosen = []
    for sid in range(n):
        order, per_teacher = [], []
        for rows in lists:
            best = {}
            for score, ids in rows[sid]:
                if ids not in order:
                    order.append(ids)
                best[ids] = max(best.get(ids, -np.inf), score)
            top = max(best.values())
            lse = top + np.log(sum(np.exp(s - top) for s in best.values()))
            per_teacher.append({ids: np.exp(s - lse) for ids, s in best.items()})
        w = [sum(p.get(ids, 0.0) for p in per_teacher) / len(lists) for ids in order]
        if select_mbr and len(order) > 1:
            strings = [" ".join(map(str, ids)) for ids in order]
            eu = []
            for a in range(len(order)):
                others = [b for b in range(len(order)) if b != a]
                weight = [1.0 if uniform else w[b] for b in others]
                eu.append(sum(x * sacre.sentence_score(strings[a], [strings[b]]).score for x, b in zip(weight, others))
                          / sum(weight))
        else:
            eu = [0.0] * len(order)
        top = max(eu)
        best = max((a for a in range(len(order)) if eu[a] >= top - 1e-9), key=lambda a: (w[a], -a))
        chosen.append((order[best], [t for t, p in enumerate(per_teacher) if order[best] in p]))
    return chosen


def test_pooled_kbest_lists_of_a_fairseq_and_a_ctranslate2_teacher_chosen_by_mbr(pooled_teachers, spm_data,
                                                                                  tmp_path, capsys):
    from fairseq.data import Dictionary

    from fairseq_seqkd.cli import main
    from fairseq_seqkd.data.prepare import load_sentencepiece, normalize_line

    work, data, spm = pooled_teachers, str(spm_data / "bin"), str(spm_data / "prepared" / "spm.model")
    d = Dictionary.load(str(spm_data / "bin" / "dict.de.txt"))
    sp = load_sentencepiece(spm)
    n = len((spm_data / "prepared" / f"{SPLIT}.raw.en").read_text().splitlines())
    fs = {}
    for sid, score, text in _candidates(work / "fs.txt"):
        fs.setdefault(sid, []).append((float(score) * np.log(2), tuple(d.index(p) for p in text.split())))
    ct = {}
    for line in (work / "ct2.tsv").read_text().splitlines():
        sid, score, text = line.split("\t")
        pieces = sp.encode(normalize_line(text), out_type=str)
        ct.setdefault(int(sid), []).append((float(score), tuple(d.index(p) for p in pieces)))
    # another vocabulary: the CTranslate2 teacher's words are several student pieces
    assert sum(len(ids) for rows in ct.values() for _, ids in rows) > sum(
        len(text.split()) for line in (work / "ct2.tsv").read_text().splitlines() for text in [line.split("\t")[2]])

    out = tmp_path / "mbr"
    assert main(["extract", "--teacher", "fairseq:pieces", str(work / "fs.txt"), "--teacher", "ct2",
                 str(work / "ct2.tsv"), "--spm-model", spm, "--select", "mbr", "--data", data, "--split", SPLIT,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = __import__("json").loads((out / f"{SPLIT}.extract.json").read_text())
    expect = _hand_pool([fs, ct], n)
    kept = (out / f"text/{SPLIT}.de").read_text().splitlines()
    assert kept == [d.string(list(ids)) for ids, _ in expect]
    credit = [sum(t in teachers for _, teachers in expect) for t in (0, 1)]
    assert [t["chosen"] for t in report["teachers"]] == credit and min(credit) > 0
    assert [t["chosen_alone"] for t in report["teachers"]] == [
        sum(teachers == [t] for _, teachers in expect) for t in (0, 1)]
    assert report["chosen_from_several_teachers"] == sum(len(teachers) > 1 for _, teachers in expect)
    assert report["selection"] == "mbr" and report["mbr"].startswith("mbr|weights:scores")
    assert [t["format"] for t in report["teachers"]] == ["fairseq-generate", "kbest-tsv"]
    assert [t["encoding"] for t in report["teachers"]] == ["pieces", "sentencepiece"]
    distinct = sum(len({ids for rows in (fs, ct) for _, ids in rows[sid]}) for sid in range(n))
    assert report["candidates_read"] == 2 * K * n and report["pooled_candidates"] == distinct
    assert f"chosen: fairseq {credit[0]}" in printed and "credited to each" in printed

    # the best pooled weight; Seq-Inter still refuses nothing here (the split has references)
    report = extract_pooled_cli(main, work, data, spm, tmp_path / "best", "best")
    kept = (tmp_path / "best" / f"text/{SPLIT}.de").read_text().splitlines()
    assert kept == [d.string(list(ids)) for ids, _ in _hand_pool([fs, ct], n, select_mbr=False)]
    assert extract_pooled_cli(main, work, data, spm, tmp_path / "inter", "seq-inter")["bleu"] == \
        SentenceBLEU().signature()

    # a third teacher: the fairseq teacher's lists detokenized, its scores shifted by 7 (normalized away):
    # re-encoded, most of its candidates are the fairseq teacher's own, one candidate credited to both
    rows = _candidates(work / "fs.txt")
    detok = _tsv(tmp_path / "detok.tsv", [(sid, float(score) * np.log(2) + 7, sp.decode(text.split()))
                                          for sid, score, text in rows])
    again = {}
    for sid, score, text in rows:
        pieces = sp.encode(normalize_line(sp.decode(text.split())), out_type=str)
        again.setdefault(sid, []).append((float(score) * np.log(2) + 7, tuple(d.index(p) for p in pieces)))
    assert main(["extract", "--teacher", "fairseq:pieces", str(work / "fs.txt"), "--teacher", "ct2",
                 str(work / "ct2.tsv"), "--teacher", "detok", str(detok), "--spm-model", spm, "--select", "mbr",
                 "--mbr-weights", "uniform", "--data", data, "--split", SPLIT, "--out", str(tmp_path / "three")]) == 0
    report = __import__("json").loads((tmp_path / "three" / f"{SPLIT}.extract.json").read_text())
    expect = _hand_pool([fs, ct, again], n, uniform=True)
    assert (tmp_path / "three" / f"text/{SPLIT}.de").read_text().splitlines() == [
        d.string(list(ids)) for ids, _ in expect]
    assert [t["chosen"] for t in report["teachers"]] == [sum(t in ts for _, ts in expect) for t in range(3)]
    several = sum(len(ts) > 1 for _, ts in expect)
    assert report["chosen_from_several_teachers"] == several > 0 and report["duplicates_merged"] >= K * n // 2


def extract_pooled_cli(main, work, data, spm, out, select):
    assert main(["extract", "--teacher", "fairseq:pieces", str(work / "fs.txt"), "--teacher", "ct2:spm",
                 str(work / "ct2.tsv"), "--spm-model", spm, "--select", select, "--data", data, "--split", SPLIT,
                 "--out", str(out)]) == 0
    return __import__("json").loads((out / f"{SPLIT}.extract.json").read_text())


def test_pooled_lists_in_ranges_and_their_faults(lists, toy_data_bin, tmp_path, monkeypatch):
    """One teacher given as fairseq-generate output and as TSV: read in ranges of sentence ids, the same corpus;
    --kbest with --select mbr is a pool of one; a sentence one teacher lacks, a line given twice are refused."""
    from fairseq_seqkd.seq_kd.corpus import Teacher, extract_pooled, pool_source

    data = str(toy_data_bin)
    rows = _candidates(lists / "nbest.txt")
    tsv = _tsv(tmp_path / "k.tsv", [(sid, float(score) * np.log(2), text) for sid, score, text in rows])
    teachers = [Teacher("gen", [str(lists / "nbest.txt")], "words"), Teacher("tsv", [str(tsv)], "words")]
    whole = extract_pooled(teachers, data, str(tmp_path / "whole"), split=SPLIT, select="mbr")
    monkeypatch.setattr(pool_source, "BUCKET_SENTENCES", 7)
    monkeypatch.setattr(kbest, "CHUNK_LINES", 30)
    ranged = extract_pooled(teachers, data, str(tmp_path / "ranged"), split=SPLIT, select="mbr")
    _same(tmp_path / "whole", tmp_path / "ranged")
    # the two teachers propose the same candidates with the same scores: every choice credits both
    assert [t["chosen"] for t in ranged["teachers"]] == [N, N] and ranged["chosen_from_several_teachers"] == N
    assert ranged["duplicates_merged"] == K * N == whole["duplicates_merged"]
    from fairseq_seqkd.cli import main

    assert main(["extract", "--kbest", str(tsv), "--select", "mbr", "--data", data, "--split", SPLIT,
                 "--out", str(tmp_path / "one")]) == 0
    _same(tmp_path / "one", tmp_path / "whole")

    # a split without its target side (monolingual source): MBR needs no reference, Seq-Inter is refused
    import shutil

    mono = tmp_path / "mono"
    mono.mkdir()
    for name in ("dict.en.txt", "dict.de.txt", f"{SPLIT}.en-de.en.bin", f"{SPLIT}.en-de.en.idx"):
        shutil.copyfile(toy_data_bin / name, mono / name)
    report = extract_pooled(teachers, str(mono), str(tmp_path / "mono_out"), split=SPLIT, select="mbr",
                            source_lang="en", target_lang="de")
    assert report["written"] == N
    assert (tmp_path / "mono_out" / f"text/{SPLIT}.de").read_bytes() == \
        (tmp_path / "whole" / f"text/{SPLIT}.de").read_bytes()
    with pytest.raises(UserError, match="no target side: Seq-Inter needs the references.*--select mbr"):
        extract_pooled(teachers, str(mono), str(tmp_path / "o"), split=SPLIT, select="seq-inter",
                       source_lang="en", target_lang="de")

    short = _tsv(tmp_path / "short.tsv", [r for r in rows if r[0] != 9])
    with pytest.raises(UserError, match=rf"have no candidate in {short} \(ids 9\)"):
        extract_pooled([teachers[0], Teacher("short", [str(short)], "words")], data, str(tmp_path / "o"),
                       split=SPLIT, select="mbr")
    twice = _tsv(tmp_path / "twice.tsv", rows + rows[:3])
    with pytest.raises(UserError, match=r"3 lines repeat an earlier line of the same teacher and sentence"):
        extract_pooled([Teacher("twice", [str(twice)], "words")], data, str(tmp_path / "o"), split=SPLIT)
    with pytest.raises(UserError, match="given more than once"):
        extract_pooled([teachers[1], Teacher("again", [str(tsv)], "words")], data, str(tmp_path / "o"), split=SPLIT)
    with pytest.raises(UserError, match="encoding spm needs the student's sentencepiece model"):
        extract_pooled([Teacher("a", [str(tsv)], "spm")], data, str(tmp_path / "o"), split=SPLIT)
    with pytest.raises(UserError, match="unknown encoding 'bpe'"):
        pool_source.parse_teacher(["a:bpe", str(tsv)], "words")
    assert not (tmp_path / "o").exists()
