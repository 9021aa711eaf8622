"""The recipes' data step: raw formats, counted cleaning, strict test sets, joint sentencepiece."""

from __future__ import annotations

import argparse
import json
import os
import re
import unicodedata
from pathlib import Path

import pytest

from fairseq_seqkd.commands import prepare as prepare_cmd
from fairseq_seqkd.data.encode import CleanConfig, files_complete, token_drop_reason
from fairseq_seqkd.data.prepare import MANIFEST, SETTINGS, SpmConfig, decode_pieces, prepare_corpus
from fairseq_seqkd.data.read import detect_format, iter_pairs, read_side, read_test_pairs
from fairseq_seqkd.data.toy_corpus import write_corpus
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import count_text_lines

WMT_SGML = """<srcset setid="newstest2014" srclang="any">
<doc docid="1-news" genre="news" origlang="en">
<seg id="1">Standard & Poor's  rates   banks.</seg>
<seg id="2"> Two  spaces\tand a tab </seg>
</doc>
<doc docid="2-news" genre="news" origlang="de">
<seg id="1">Second document.</seg>
</doc>
</srcset>
"""

IWSLT_XML = """<?xml version="1.0" encoding="UTF-8"?>
<mteval>
<srcset setid="iwslt2015-tst2013" srclang="thai">
<doc docid="1518" genre="lectures">
<url>http://www.ted.com/talks/example</url>
<description>TED Talk Subtitles and Transcript: a talk</description>
<keywords>talks, design</keywords>
<talkid>1518</talkid>
<title>A title</title>
<seg id="1"> สวัสดีครับ </seg>
<seg id="2"> ขอบคุณ </seg>
</doc>
</srcset>
</mteval>
"""

TAGS = """<url>http://www.ted.com/talks/example</url>
<keywords>talks, design</keywords>
<speaker>Someone</speaker>
<talkid>1</talkid>
<title>A title</title>
<description>TED Talk Subtitles and Transcript: a talk</description>
First sentence of the talk.
  Second one, indented\r
<reviewer href="x">R</reviewer>
<translator href="y">T</translator>
Third.
"""


def test_formats_are_read_like_sacrebleu(tmp_path):
    (tmp_path / "newstest2014-deen-src.en.sgm").write_text(WMT_SGML)
    (tmp_path / "IWSLT15.TED.tst2013.th-en.th.xml").write_text(IWSLT_XML)
    (tmp_path / "train.tags.th-en.en").write_bytes(TAGS.encode())
    assert read_side(str(tmp_path / "newstest2014-deen-src.en.sgm")) == [
        "Standard & Poor's rates banks.", "Two spaces and a tab", "Second document."]  # no unescaping
    assert read_side(str(tmp_path / "IWSLT15.TED.tst2013.th-en.th.xml")) == ["สวัสดีครับ", "ขอบคุณ"]
    assert read_side(str(tmp_path / "train.tags.th-en.en")) == [
        "First sentence of the talk.", "Second one, indented", "Third."]
    assert [detect_format(n) for n in ("a.sgm", "a.xml", "train.tags.de-en.de", "train.en", "x.en.gz")] == [
        "sgml", "xml", "tags", "text", "text"]


def test_a_stray_carriage_return_or_line_separator_does_not_split_a_line(tmp_path):
    (tmp_path / "a.en").write_bytes("one\rstill one\u2028and\x85more\nsecond\r\n".encode())
    assert read_side(str(tmp_path / "a.en")) == ["one still one and more", "second"]


def test_lines_are_counted_as_they_are_read(tmp_path):
    """count_text_lines (what a manifest records and checks) counts the lines iter_side reads."""
    cases = {"last.en": "one\ntwo", "ended.en": "one\ntwo\n", "cr.en": "a\rb\u2028c\x85d\n\ne\r\n", "empty.en": ""}
    for name, text in cases.items():
        (tmp_path / name).write_bytes(text.encode())
        assert count_text_lines(str(tmp_path / name)) == len(read_side(str(tmp_path / name))), name
    assert files_complete(str(tmp_path), {"last.en": 2, "cr.en": 3})
    assert not files_complete(str(tmp_path), {"last.en": 1})


def test_real_wmt_sgml_and_iwslt_text(shared_data):
    wmt = shared_data / "wmt14-en-de-test"
    pairs = read_test_pairs(str(wmt / "newstest2014-deen-src.en.sgm"),
                            str(wmt / "newstest2014-deen-ref.de.sgm"))
    assert len(pairs) == 3003
    assert pairs[0] == ("Gutach: Increased safety for pedestrians",
                        "Gutach: Noch mehr Sicherheit für Fußgänger")
    iwslt = shared_data / "iwslt15-th-en-test"
    th_en = read_test_pairs(str(iwslt / "tst2010-2013_th-en.th"), str(iwslt / "tst2010-2013_th-en.en"))
    assert len(th_en) == 4242


def test_an_empty_test_line_is_an_error_naming_file_and_line(tmp_path):
    (tmp_path / "test.en").write_text("a\nb\n\nd\n")
    (tmp_path / "test.de").write_text("A\nB\nC\nD\n")
    with pytest.raises(UserError) as e:
        read_test_pairs(str(tmp_path / "test.en"), str(tmp_path / "test.de"))
    assert str(tmp_path / "test.en") in str(e.value) and "line 3 is empty" in str(e.value)

    (tmp_path / "ref.de.sgm").write_text('<seg id="1">A</seg>\n<seg id="2"> </seg>\n')
    (tmp_path / "src.en.sgm").write_text('<seg id="1">a</seg>\n<seg id="2">b</seg>\n')
    with pytest.raises(UserError, match="ref.de.sgm: segment 2 is empty"):
        read_test_pairs(str(tmp_path / "src.en.sgm"), str(tmp_path / "ref.de.sgm"))

    (tmp_path / "short.de").write_text("A\nB\n")
    with pytest.raises(UserError, match="has 4 sentences but .*short.de has 2"):
        read_test_pairs(str(tmp_path / "test.de"), str(tmp_path / "short.de"))


def test_misaligned_training_files_are_an_error(tmp_path):
    (tmp_path / "t.en").write_text("a\nb\nc\n")
    (tmp_path / "t.de").write_text("A\nB\n")
    with pytest.raises(UserError, match="t.en has 3 sentences but .*t.de has 2"):
        list(iter_pairs(str(tmp_path / "t.en"), str(tmp_path / "t.de")))


def test_ratio_rule_spares_short_pairs():
    cfg = CleanConfig(max_tokens=50, max_ratio=3.0)
    assert token_drop_reason(4, 1, cfg) is None  # "Hi ." against one piece: noise, kept
    assert token_drop_reason(40, 5, cfg) == "ratio"
    assert token_drop_reason(51, 40, cfg) == "too_long_tokens"
    assert token_drop_reason(30, 12, cfg) is None


@pytest.fixture(scope="module")
def toy_raw(tmp_path_factory) -> Path:
    """A small toy corpus with bad training and validation pairs injected."""
    out = tmp_path_factory.mktemp("raw")
    write_corpus(str(out), {"train": 300, "valid": 20, "test": 25}, seed=3)
    src = (out / "train.en").read_text().splitlines()
    tgt = (out / "train.de").read_text().splitlines()
    src += ["", "the cat", "x " * 1200, "the dog sees the cat " * 6]
    tgt += ["die katze", "", "y", "der hund"]  # empty x2, too long in chars, bad ratio
    (out / "train.en").write_text("\n".join(src) + "\n")
    (out / "train.de").write_text("\n".join(tgt) + "\n")
    (out / "valid.en").write_text((out / "valid.en").read_text() + "   \n")
    (out / "valid.de").write_text((out / "valid.de").read_text() + "ein leerer satz\n")
    return out


def _raw(d: Path, src: str = "en", tgt: str = "de") -> dict:
    return {s: [(str(d / f"{s}.{src}"), str(d / f"{s}.{tgt}"))] for s in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def toy_prepared(toy_raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    manifest = prepare_corpus(_raw(toy_raw), str(out), "en", "de", vocab_size=200)
    return out, manifest


def test_cleaning_counts_every_dropped_pair(toy_prepared):
    out, manifest = toy_prepared
    train = manifest["splits"]["train"]
    assert train["read"] == 304
    assert train["dropped"] == {"empty": 2, "too_long_chars": 1, "ratio": 1}
    assert train["kept"] == 300 == manifest["files"]["train.en"] == manifest["files"]["train.raw.de"]
    assert manifest["splits"]["valid"] == {"read": 21, "kept": 20, "dropped": {"empty": 1}}
    assert manifest["splits"]["test"] == {"read": 25, "kept": 25, "dropped": {}}
    for name in ("train.en", "train.de", "valid.en", "test.de", "test.raw.de", "test.raw.en", "spm.model"):
        assert (out / name).exists(), name
    assert not list(out.glob("[a-z]*.read.*")) and not list(out.glob("*.tmp"))  # intermediates gone


def test_encoding_round_trips_through_fairseq_post_process(toy_raw, toy_prepared):
    out, _ = toy_prepared
    for split in ("train", "test"):
        for lang in ("en", "de"):
            pieces = read_side(str(out / f"{split}.{lang}"))
            raw = read_side(str(out / f"{split}.raw.{lang}"))
            assert [decode_pieces(p) for p in pieces] == raw
    # the detokenized test set is the original, sentence for sentence
    assert read_side(str(out / "test.raw.de")) == read_side(str(toy_raw / "test.de"))


def test_prepare_resumes_and_refuses_other_settings(toy_raw, toy_prepared, caplog):
    out, manifest = toy_prepared
    mtime = os.path.getmtime(out / "train.en")
    original = (toy_raw / "train.en").read_text()
    again = prepare_corpus(_raw(toy_raw), str(out), "en", "de", vocab_size=200)
    assert again == manifest and os.path.getmtime(out / "train.en") == mtime
    with pytest.raises(UserError, match="other settings"):
        prepare_corpus(_raw(toy_raw), str(out), "en", "de", vocab_size=300)
    # an input is known by its content: the same size with other words is another input
    (toy_raw / "train.en").write_text((toy_raw / "train.en").read_text().replace("a", "e"))
    try:
        with pytest.raises(UserError, match="other settings.*inputs"):
            prepare_corpus(_raw(toy_raw), str(out), "en", "de", vocab_size=200)
    finally:
        (toy_raw / "train.en").write_text(original)
    # a folder prepared before inputs had fingerprints (name and size) is kept
    for name in (MANIFEST, SETTINGS):
        recorded = json.loads((out / name).read_text())
        settings = recorded.get("settings", recorded)
        for pairs in settings["inputs"].values():
            for pair in pairs:
                for entry in pair:
                    del entry["fingerprint"]
        (out / name).write_text(json.dumps(recorded))
    assert prepare_corpus(_raw(toy_raw), str(out), "en", "de", vocab_size=200)["files"] == manifest["files"]
    assert os.path.getmtime(out / "train.en") == mtime
    # a deleted output is noticed and the folder prepared again
    (out / "valid.de").unlink()
    redone = prepare_corpus(_raw(toy_raw), str(out), "en", "de", vocab_size=200)
    assert redone["files"] == manifest["files"] and (out / "valid.de").exists()


def test_prepare_command(toy_raw, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    prepare_cmd.add_args(parser)
    d = toy_raw
    args = parser.parse_args([str(tmp_path / "out"), "--src", "en", "--tgt", "de",
                              "--train", str(d / "train.en"), str(d / "train.de"),
                              "--train", str(d / "valid.en"), str(d / "valid.de"),  # concatenated
                              "--valid", str(d / "valid.en"), str(d / "valid.de"),
                              "--test", str(d / "test.en"), str(d / "test.de"),
                              "--vocab-size", "150", "--max-ratio", "50"])
    assert prepare_cmd.run(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["splits"]["train"]["read"] == 304 + 21
    assert summary["splits"]["train"]["dropped"] == {"empty": 3, "too_long_chars": 1}  # ratio 50 keeps it
    assert summary["pieces"] <= 150


def test_an_extra_test_set_is_encoded_with_the_runs_model_and_never_cleaned(toy_raw, toy_prepared, tmp_path, capsys):
    out, _ = toy_prepared
    parser = argparse.ArgumentParser()
    prepare_cmd.add_args(parser)
    d = toy_raw

    def prepare(dest, *extra):
        return prepare_cmd.run(parser.parse_args([str(dest), "--src", "en", "--tgt", "de", "--test-only", *extra]))

    # the main test set's files again: the same pieces and references as the run's own test split
    assert prepare(tmp_path / "a", "--test", str(d / "test.en"), str(d / "test.de"),
                   "--spm-model", str(out / "spm.model")) == 0
    for name in ("test.en", "test.de", "test.raw.en", "test.raw.de"):
        assert (tmp_path / "a" / name).read_text() == (out / name).read_text(), name
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kept"] == 25
    # word level (the toy corpus): pieces are the words, whitespace normalized
    (tmp_path / "w.en").write_text("a  b\tc\nd\n")
    (tmp_path / "w.de").write_text("x\ny z \n")
    assert prepare(tmp_path / "w", "--test", str(tmp_path / "w.en"), str(tmp_path / "w.de")) == 0
    assert (tmp_path / "w" / "test.en").read_text() == "a b c\nd\n" == (tmp_path / "w" / "test.raw.en").read_text()
    # an empty line is an error naming the file and line, and leaves nothing behind
    (tmp_path / "e.de").write_text("x\n\n")
    with pytest.raises(UserError, match=r"e\.de: line 2 is empty"):
        prepare(tmp_path / "e", "--test", str(tmp_path / "w.en"), str(tmp_path / "e.de"))
    assert not list((tmp_path / "e").iterdir())
    with pytest.raises(SystemExit, match="no --train"):
        prepare(tmp_path / "x", "--test", str(d / "test.en"), str(d / "test.de"),
                "--train", str(d / "test.en"), str(d / "test.de"))


def test_thai_sentencepiece_on_real_text(shared_data, tmp_path):
    th = shared_data / "th-en-small"
    tst = shared_data / "iwslt15-th-en-test"
    raw = {"train": [(str(th / "tatoeba-manythings.th"), str(th / "tatoeba-manythings.en"))],
           "valid": [(str(tst / "tst2010-2013_th-en.th"), str(tst / "tst2010-2013_th-en.en"))],
           "test": [(str(tst / "tst2010-2013_th-en.th"), str(tst / "tst2010-2013_th-en.en"))]}
    manifest = prepare_corpus(raw, str(tmp_path), "th", "en",
                              spm_cfg=SpmConfig(vocab_size=4000, character_coverage=1.0))
    assert manifest["splits"]["test"]["kept"] == 4242
    assert manifest["splits"]["train"]["kept"] + sum(manifest["splits"]["train"]["dropped"].values()) == 3018
    assert manifest["splits"]["train"]["kept"] > 2950  # cleaning keeps nearly all real pairs
    pieces = read_side(str(tmp_path / "test.th"))
    raw_th = read_side(str(tmp_path / "test.raw.th"))
    # Thai has no spaces between words: sentencepiece splits the space-free runs into pieces
    n_pieces = sum(len(p.split()) for p in pieces)
    assert n_pieces > 3 * sum(len(r.split()) for r in raw_th)
    # decoding gives the text back, up to sentencepiece's NFKC normalization (e.g. U+0E33 SARA AM)
    for p, r in zip(pieces, raw_th):
        assert decode_pieces(p) == unicodedata.normalize("NFKC", r)
    assert read_side(str(tmp_path / "test.raw.en")) == read_side(str(tst / "tst2010-2013_th-en.en"))


def test_invalid_utf8_is_an_error_naming_file_line_and_byte(tmp_path):
    import gzip

    text = "first line\nsecond line\ncaf\xe9 au lait\n".encode("latin-1")  # Latin-1, not UTF-8
    (tmp_path / "train.en").write_bytes(text)
    with gzip.open(tmp_path / "train.de.gz", "wb") as f:
        f.write(text)
    for name, where in (("train.en", "of the file"), ("train.de.gz", "of the decompressed text")):
        with pytest.raises(UserError) as e:
            read_side(str(tmp_path / name))
        msg = str(e.value)
        assert f"{tmp_path / name}: line 3 is not valid UTF-8 (byte 0xe9 at byte offset 26 {where}" in msg
        assert "iconv -f ISO-8859-1 -t UTF-8" in msg
    # through prepare, as the command runs it: the same error, not a bare UnicodeDecodeError
    (tmp_path / "ok.de").write_text("eins\nzwei\ndrei\n")
    raw = {s: [(str(tmp_path / "train.en"), str(tmp_path / "ok.de"))] for s in ("train", "valid", "test")}
    with pytest.raises(UserError, match=r"train.en: line 3 is not valid UTF-8"):
        prepare_corpus(raw, str(tmp_path / "out"), "en", "de", vocab_size=50)


def test_a_truncated_or_non_gzip_gz_file_is_an_error_naming_the_file_and_the_fix(tmp_path, capsys):
    import gzip

    from fairseq_seqkd import cli

    write_corpus(str(tmp_path), {"train": 3000, "valid": 10, "test": 10}, seed=4)
    packed = gzip.compress((tmp_path / "train.de").read_bytes())
    (tmp_path / "cut.de.gz").write_bytes(packed[:len(packed) // 2])  # a download that stopped halfway
    (tmp_path / "plain.de.gz").write_bytes((tmp_path / "train.de").read_bytes())  # named .gz, never compressed
    for name, what in (("cut.de.gz", r"the gzip file is cut short \(truncated; its text ends abruptly after line \d+"),
                       ("plain.de.gz", "not gzip data, although its name ends in .gz")):
        path = str(tmp_path / name)
        with pytest.raises(UserError) as e:  # not a bare EOFError / gzip.BadGzipFile
            read_side(path)
        assert re.match(re.escape(path) + ": " + what, str(e.value)), str(e.value)
        assert f"gzip -t {path}" in str(e.value) and "re-download it or re-compress it" in str(e.value)
        # through the command: the named error, exit 2, and no output file but the recorded settings
        out = tmp_path / f"out-{name}"
        argv = ["prepare", str(out), "--src", "en", "--tgt", "de", "--train", str(tmp_path / "train.en"), path,
                "--valid", str(tmp_path / "valid.en"), str(tmp_path / "valid.de"),
                "--test", str(tmp_path / "test.en"), str(tmp_path / "test.de"), "--vocab-size", "100"]
        assert cli.main(argv) == 2
        assert f"fairseq-seqkd prepare: error: {path}: " in capsys.readouterr().err
        assert os.listdir(out) == [".prepare.settings.json"]


def test_a_valid_or_test_sentence_too_long_for_fairseq_is_an_error_naming_file_and_line(tmp_path):
    write_corpus(str(tmp_path), {"train": 300, "valid": 10, "test": 10}, seed=5)
    valid_en = (tmp_path / "valid.en").read_text().splitlines()
    valid_de = (tmp_path / "valid.de").read_text().splitlines()
    valid_en[1] = ""  # dropped from valid: the line numbers after it still name the file's lines
    valid_en[4] = " ".join(["the dog sees the cat"] * 20)  # 100 words: kept verbatim, too long
    (tmp_path / "valid.en").write_text("\n".join(valid_en) + "\n")
    (tmp_path / "valid.de").write_text("\n".join(valid_de) + "\n")
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        prepare_corpus(_raw(tmp_path), str(out), "en", "de", vocab_size=200, max_positions=64)
    msg = str(e.value)
    assert re.search(rf"valid: 1 sentence pair\(s\) longer than fairseq's 64 positions .*"
                     rf"{re.escape(str(tmp_path / 'valid.en'))} line 5: \d+ pieces", msg), msg
    assert "valid.de line" not in msg and "--skip-invalid-size-inputs-valid-test" in msg
    assert "pass that value as --max-positions" in msg and not (out / "valid.en").exists()
    # the models' own limit, if larger: prepared, the long sentence kept verbatim
    manifest = prepare_corpus(_raw(tmp_path), str(out), "en", "de", vocab_size=200, max_positions=1024)
    assert manifest["splits"]["valid"] == {"read": 10, "kept": 9, "dropped": {"empty": 1}}
    assert valid_en[4] in read_side(str(out / "valid.raw.en"))
