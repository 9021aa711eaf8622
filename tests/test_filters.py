"""Filters of the distilled corpus: each on a hand-made generation output with known answers, counted and listed."""

import json

import numpy as np
import pytest

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.seq_kd import filters as fl
from fairseq_seqkd.seq_kd.corpus import extract_corpus, extract_translations
from fairseq_seqkd.seq_kd.filters import Filters
from fairseq_seqkd.seq_kd.sentence_bleu import SentenceBLEU, sentence_bleu_plain
from fairseq_seqkd.seq_kd.sentence_chrf import PieceText

SOURCE, HYPOTHESIS = fl.DROPPED_COLUMNS.index("source"), fl.DROPPED_COLUMNS.index("hypothesis")

SPLIT, N = "test", 61
COPIES, LONG, SHORT, FAR = (3, 17), (5,), (8,), (11, 23)
FILES = [f"{SPLIT}.en-de.{lang}.{ext}" for lang in ("en", "de") for ext in ("bin", "idx")] + [
    f"text/{SPLIT}.en", f"text/{SPLIT}.de"]


def _score(i):
    return -0.05 - 0.1 * ((i * 7) % N)  # distinct, in no order the ids have


def _sentences(data_bin):
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(str(data_bin / "dict.de.txt"))
    sides = [data_utils.load_indexed_dataset(str(data_bin / f"{SPLIT}.en-de.{lang}"), d) for lang in ("en", "de")]
    return d, [[d.string(side[i]).split() for i in range(len(side))] for side in sides]


@pytest.fixture(scope="module")
def hand_made(toy_data_bin, tmp_path_factory):
    """A generation output of the test split, written by hand: (file, sources, references, hypotheses, scores)."""
    _, (src, ref) = _sentences(toy_data_bin)
    assert len(src) == N
    hyps = [list(r) for r in ref]  # the reference: BLEU 100, about the source's length
    for i in COPIES:
        hyps[i] = list(src[i])
    for i in LONG:
        hyps[i] = ref[i] * 4
    for i in SHORT:
        assert len(src[i]) >= 4
        hyps[i] = ref[i][:1]
    for i in FAR:
        other = next(w for w in ("katze", "hund", "haus") if w not in ref[i])
        hyps[i] = [other] * len(ref[i])
    lines = []
    for i in [(k * 13) % N for k in range(N)]:  # blocks in batch order, not id order
        h = " ".join(hyps[i])
        lines += [f"S-{i}\t{' '.join(src[i])}", f"T-{i}\t{' '.join(ref[i])}", f"H-{i}\t{_score(i)}\t{h}",
                  f"D-{i}\t{_score(i)}\t{h}", f"P-{i}\t" + " ".join(["-0.1000"] * (len(hyps[i]) + 1))]
    path = tmp_path_factory.mktemp("hand_made") / "shard0.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, src, ref, hyps, np.array([_score(i) for i in range(N)])


def _extract(hand_made, data_bin, out, **filters):
    return extract_corpus([str(hand_made[0])], str(data_bin), str(out), split=SPLIT, filters=Filters(**filters))


def _dropped(out):
    rows = (out / f"{SPLIT}.dropped.tsv").read_text().splitlines()
    assert rows[0].split("\t") == list(fl.DROPPED_COLUMNS)
    return {int(r.split("\t")[0]): r.split("\t") for r in rows[1:]}


def _targets(out):
    return [(out / "text" / f"{SPLIT}.{lang}").read_text().splitlines() for lang in ("de", "en")]


def test_the_functions(tmp_path):
    assert fl.score_threshold(np.arange(11.0), 0.1) == 1.0
    assert fl.score_threshold(np.arange(5.0), 0.3) == pytest.approx(1.2)  # linear between 1 and 2
    ratios = fl.length_ratios(np.array([3, 3, 10, 0]), np.array([9, 10, 3, 2]))
    assert ratios[:3].tolist() == pytest.approx([3.0, 10 / 3, 0.3]) and ratios[3] == np.inf
    assert fl.length_ratio_outliers(ratios, 3.0).tolist() == [False, True, True, True]
    sources = ["the cat sat .", "▁the ▁c at", "hel@@ lo world", "2014 .", "the cat", "a b"]
    hyps = ["The Cat sat !", "the cat", "hello world", "2014 .", "die katze", "a b c"]
    assert fl.source_copies(sources, hyps).tolist() == [True, True, True, False, False, False]
    values, low = fl.low_bleu(SentenceBLEU(), np.array([5, 6, 7, 2, 9, 9, 2]), np.array([4, 3]),
                              np.array([5, 6, 7, 2, 5, 6, 2]), np.array([4, 3]), [2], 5.0)
    assert values.tolist() == pytest.approx([100.0, 0.0]) and low.tolist() == [False, True]
    for bad, option in ((dict(score_quantile=1.0), "--filter-score-quantile"),
                        (dict(length_ratio=0.5), "--filter-length-ratio"), (dict(min_bleu=101), "--filter-min-bleu"),
                        (dict(min_chrf=-1, text=PieceText([])), "--filter-min-chrf")):
        with pytest.raises(UserError, match=option):
            Filters(**bad).check()


def test_no_filter_keeps_the_corpus_byte_identical(hand_made, toy_data_bin, tmp_path):
    plain = extract_corpus([str(hand_made[0])], str(toy_data_bin), str(tmp_path / "plain"), split=SPLIT)
    off = _extract(hand_made, toy_data_bin, tmp_path / "off")
    # every filter on, none of them failing a sentence: the filtered path writes the same bytes
    none_fail = _extract(hand_made, toy_data_bin, tmp_path / "none", length_ratio=1000.0, min_bleu=0.0)
    for name in FILES:
        data = (tmp_path / "plain" / name).read_bytes()
        assert (tmp_path / "off" / name).read_bytes() == data and (tmp_path / "none" / name).read_bytes() == data
    assert plain == off and "filters" not in plain and plain["written"] == N
    assert not (tmp_path / "plain" / f"{SPLIT}.dropped.tsv").exists()
    assert (tmp_path / "plain" / f"{SPLIT}.extract.json").read_bytes() == (
        tmp_path / "off" / f"{SPLIT}.extract.json").read_bytes()
    assert none_fail["filters"]["dropped_sentences"] == 0 and _dropped(tmp_path / "none") == {}
    assert _targets(tmp_path / "plain")[0] == [" ".join(h) for h in hand_made[3]]
    # an unfiltered extract into the folder of a filtered one leaves no list of the other corpus behind
    _extract(hand_made, toy_data_bin, tmp_path / "none")
    assert not (tmp_path / "none" / f"{SPLIT}.dropped.tsv").exists()


@pytest.mark.parametrize("option, expected", [
    (dict(source_copies=True), set(COPIES)),
    (dict(length_ratio=3.0), None),  # computed below from the token counts
    (dict(min_bleu=5.0), None),
])
def test_each_filter_drops_its_sentences_from_both_sides(hand_made, toy_data_bin, tmp_path, option, expected):
    _, src, ref, hyps, _ = hand_made
    (name, value), = option.items()
    reason = {"source_copies": "source_copy", "length_ratio": "length_ratio", "min_bleu": "bleu"}[name]
    if name == "length_ratio":
        expected = {i for i in range(N) if not 1 / value <= len(hyps[i]) / len(src[i]) <= value}
        assert set(LONG) | set(SHORT) <= expected
    if name == "min_bleu":
        d, _ = _sentences(toy_data_bin)
        ids = [[[d.index(w) for w in s] for s in side] for side in (hyps, ref)]
        expected = {i for i in range(N) if sentence_bleu_plain(ids[0][i], ids[1][i]) < value}
        assert set(FAR) | set(SHORT) <= expected and not set(LONG) & expected
    report = _extract(hand_made, toy_data_bin, tmp_path / "out", **option)
    f = report["filters"]
    assert f["dropped"][reason] == f["dropped_sentences"] == len(expected) and report["written"] == N - len(expected)
    assert sum(f["dropped"].values()) == len(expected) and f["judged_sentences"] == N
    dropped = _dropped(tmp_path / "out")
    assert set(dropped) == expected and all(row[1] == reason for row in dropped.values())
    kept = [i for i in range(N) if i not in expected]
    tgt, src_text = _targets(tmp_path / "out")
    assert tgt == [" ".join(hyps[i]) for i in kept] and src_text == [" ".join(src[i]) for i in kept]
    for i, row in dropped.items():
        assert row[SOURCE] == " ".join(src[i]) and row[HYPOTHESIS] == " ".join(hyps[i])
        if name == "length_ratio":
            assert float(row[3]) == pytest.approx(len(hyps[i]) / len(src[i]), abs=1e-3)
    on_disk = json.loads((tmp_path / "out" / f"{SPLIT}.extract.json").read_text())
    assert on_disk["filters"] == f and f["dropped_file"] == f"{SPLIT}.dropped.tsv"


def test_chrf_filter_equals_sacrebleu_sentence_chrf(hand_made, toy_data_bin, tmp_path, capsys):
    from sacrebleu.metrics import CHRF

    from fairseq_seqkd.cli import main

    # the function, on sentencepiece pieces: their text is what sacrebleu reads
    text = PieceText(["</s>", "\u2581die", "\u2581Kat", "ze", "\u2581schläft", ".", "\u2581Hund"], skip=[0])
    values, low = fl.low_chrf(fl.SentenceCHRF(), text, np.array([1, 2, 3, 4, 5, 0, 1, 6, 0]), np.array([6, 3]),
                              np.array([1, 2, 3, 5, 0, 2, 3, 0]), np.array([5, 3]), 50.0)
    assert text.texts(np.array([1, 2, 3, 4, 5, 0]), np.array([6])) == ["die Katze schläft."]
    chrf = CHRF()
    assert values.tolist() == [chrf.sentence_score("die Katze schläft.", ["die Katze."]).score,
                               chrf.sentence_score("die Hund", ["Katze"]).score]
    assert low.tolist() == [False, True]
    with pytest.raises(ValueError, match="chrF filter reads the text"):
        Filters(min_chrf=5.0).check()
    # the corpus, through the command line: word-level data, each sentence's words joined by spaces
    _, src, ref, hyps, _ = hand_made
    value = 40.0
    plain = [chrf.sentence_score(" ".join(hyps[i]), [" ".join(ref[i])]).score for i in range(N)]
    expected = {i for i in range(N) if plain[i] < value}
    assert set(FAR) | set(SHORT) <= expected and not set(LONG) & expected and len(expected) < N // 2
    out = tmp_path / "out"
    assert main(["extract", str(hand_made[0]), "--data", str(toy_data_bin), "--split", SPLIT, "--out", str(out),
                 "--filter-min-chrf", str(value)]) == 0
    assert f"filtered: {len(expected)} sentence pairs dropped (chrf {len(expected)};" in capsys.readouterr().out
    report = json.loads((out / f"{SPLIT}.extract.json").read_text())["filters"]
    assert report["dropped"]["chrf"] == report["dropped_sentences"] == len(expected)
    assert report["options"]["min_chrf"] == value and report["chrf"].startswith("sentence-chrf|nrefs:1|")
    dropped = _dropped(out)
    assert set(dropped) == expected and all(row[1] == "chrf" for row in dropped.values())
    at = fl.DROPPED_COLUMNS.index("chrf")
    assert all(float(row[at]) == pytest.approx(plain[i], abs=0.005) for i, row in dropped.items())
    assert _targets(out)[0] == [" ".join(hyps[i]) for i in range(N) if i not in expected]


def test_score_quantile_is_over_the_whole_split_read_in_pieces(hand_made, toy_data_bin, tmp_path, monkeypatch):
    from fairseq_seqkd.seq_kd.corpus import writer
    from fairseq_seqkd.teacher import generate_output

    scores = hand_made[4]
    threshold = float(np.quantile(scores, 0.1))  # 61 scores: the 7th lowest; the 6 below it go
    lowest = set(np.argsort(scores)[:6].tolist())
    whole = _extract(hand_made, toy_data_bin, tmp_path / "whole", score_quantile=0.1)
    monkeypatch.setattr(writer, "CHUNK", 7)  # pass 2 in 9 chunks
    monkeypatch.setattr(generate_output, "CHUNK_BYTES", 300)  # pass 1 in pieces of a few blocks
    pieces = _extract(hand_made, toy_data_bin, tmp_path / "pieces", score_quantile=0.1)
    for r, out in ((whole, tmp_path / "whole"), (pieces, tmp_path / "pieces")):
        f = r["filters"]
        assert f["score_threshold"] == pytest.approx(threshold) and "base 2" in f["score"]
        assert f["dropped"]["score"] == 6 and r["written"] == N - 6
        dropped = _dropped(out)
        assert set(dropped) == lowest
        assert all(float(row[2]) == pytest.approx(scores[i], abs=1e-4) for i, row in dropped.items())
    for name in FILES:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "pieces" / name).read_bytes()


def test_all_filters_counted_per_reason_and_the_cli(hand_made, toy_data_bin, tmp_path, capsys):
    from fairseq_seqkd.cli import main

    out = tmp_path / "out"
    assert main(["extract", str(hand_made[0]), "--data", str(toy_data_bin), "--split", SPLIT, "--out", str(out),
                 "--filter-score-quantile", "0.1", "--filter-length-ratio", "3", "--filter-source-copies",
                 "--filter-min-bleu", "5"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / f"{SPLIT}.extract.json").read_text())["filters"]
    dropped = _dropped(out)
    counts = {reason: sum(reason in row[1].split(",") for row in dropped.values()) for reason in fl.REASONS}
    assert counts == report["dropped"] and len(dropped) == report["dropped_sentences"]
    assert sum(counts.values()) > len(dropped)  # the copies also fail BLEU: one line, two reasons
    assert dropped[3][1] == "source_copy,bleu" and dropped[17][1] == "score,source_copy,bleu"  # 17 scores low too
    assert f"filtered: {len(dropped)} sentence pairs dropped (score {counts['score']}," in stdout
    assert main(["extract", str(hand_made[0]), "--data", str(toy_data_bin), "--split", SPLIT, "--out",
                 str(tmp_path / "bad"), "--filter-length-ratio", "0.5"]) == 2
    assert "--filter-length-ratio 0.5: give a ratio of at least 1" in capsys.readouterr().err


def test_kbest_scores_and_empty_drops_are_listed(hand_made, toy_data_bin, tmp_path):
    _, src, ref, hyps, scores = hand_made
    tsv = tmp_path / "kbest.tsv"
    lines = [f"{i}\t{scores[i]}\t{' '.join(hyps[i])}" for i in range(N)]
    lines += [f"{i}\t{scores[i] - 5}\t{' '.join(ref[i])}" for i in range(N)]  # worse candidates, never kept
    lines[40] = f"40\t{scores[40]}\t"  # an empty translation, dropped by --empty drop
    tsv.write_text("\n".join(lines) + "\n")
    r = extract_translations([str(tsv)], str(toy_data_bin), str(tmp_path / "out"), split=SPLIT, kbest=True,
                             pieces=True, empty="drop", filters=Filters(score_quantile=0.1))
    f = r["filters"]
    assert f["score_threshold"] == pytest.approx(np.quantile(scores, 0.1)) and "K-best" in f["score"]
    dropped = _dropped(tmp_path / "out")
    lowest = set(np.argsort(scores)[:6].tolist())
    assert set(dropped) == lowest | {40} and dropped[40][1] == "empty" and f["dropped_empty"] == 1
    assert r["written"] == N - len(lowest | {40}) and f["judged_sentences"] == N - 1
    with pytest.raises(UserError, match="--filter-score-quantile needs the teacher's score"):
        text = tmp_path / "text.txt"
        text.write_text("".join(" ".join(h) + "\n" for h in hyps))
        extract_translations([str(text)], str(toy_data_bin), str(tmp_path / "text"), split=SPLIT, pieces=True,
                             filters=Filters(score_quantile=0.1))
