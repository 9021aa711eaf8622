"""A fairseq teacher folder in the model zoo's layout: read, checked, its text encoding, its data translated.

The module fixture builds a teacher the way the zoo's WMT16 En-De model was built, outside this
package: Moses tokenization (sacremoses) and joint subword-nmt BPE learned on the tokenized
training text, fairseq-preprocess with a joined dictionary, a tiny transformer with shared
embeddings trained a few updates by fairseq-train; then checkpoint, dictionaries and codes are
copied into a folder named like the zoo's.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRANSFORMER, plugin_dir, run_cli, train_tiny
from recipe_runs import run_recipe

from fairseq_seqkd import cli
from fairseq_seqkd.data.encode import CleanConfig
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.teacher.folder import TeacherFolderConfig, plan_teacher_folder, read_teacher_folder
from fairseq_seqkd.teacher.teacher_data import TeacherEncoder, prepare_teacher_data

SIZES = {"train": 600, "valid": 40, "test": 13}  # 13: not a multiple of 8
ZOO = "wmt16.en-de.joined-dict.transformer"


def _decorate(line: str, i: int, lang: str) -> str:
    """A toy sentence with what Moses tokenizes: capitals, commas, quotes, a hyphen, '&', an English apostrophe."""
    words = line.split()
    words[0] = words[0].capitalize()
    if i % 4 == 1 and len(words) > 3:
        words[2] += ","
    if i % 6 == 2:
        words.insert(1, '"well-known"')
    if i % 5 == 3:
        words.append("&")
    if i % 7 == 4 and lang == "en":  # Moses detokenizes "'s" in English only
        words.insert(0, "It's")
    return " ".join(words) + ".?!"[i % 3]


class Reference:
    """The teacher's preprocessing as its author ran it: sacremoses, then subword-nmt (not fairseq's wrappers)."""

    def __init__(self, codes: Path | None = None):
        from sacremoses import MosesTokenizer
        from subword_nmt.apply_bpe import BPE

        self.moses = {lang: MosesTokenizer(lang) for lang in ("en", "de")}
        if codes is not None:
            with open(codes, encoding="utf-8") as f:
                self.bpe = BPE(f)

    def tokenize(self, line: str, lang: str) -> str:
        return self.moses[lang].tokenize(line, aggressive_dash_splits=True, escape=True, return_str=True)

    def encode(self, line: str, lang: str) -> str:
        return self.bpe.process_line(self.tokenize(line, lang))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    """Raw text, the reference encoder and a zoo-layout teacher folder (model.pt, dict.{en,de}.txt, bpecodes)."""
    from subword_nmt.learn_bpe import learn_bpe

    from fairseq_seqkd.data.toy_corpus import write_corpus

    root = tmp_path_factory.mktemp("zoo")
    toy, raw, tok = root / "toy", root / "raw", root / "tok"
    for d in (raw, tok):
        d.mkdir()
    write_corpus(str(toy), SIZES, seed=11)
    for split in SIZES:
        for lang in ("en", "de"):
            lines = (toy / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            (raw / f"{split}.{lang}").write_text("".join(_decorate(x, i, lang) + "\n" for i, x in enumerate(lines)),
                                                 encoding="utf-8")
    # joint BPE codes learned on the Moses-tokenized training text of both sides
    moses = Reference()
    text = "".join(moses.tokenize(x, lang) + "\n" for lang in ("en", "de")
                   for x in (raw / f"train.{lang}").read_text(encoding="utf-8").splitlines())
    codes = root / "bpecodes"
    with open(codes, "w", encoding="utf-8") as out:
        learn_bpe(io.StringIO(text), out, 120)
    ref = Reference(codes)
    for split in ("train", "valid"):
        for lang in ("en", "de"):
            lines = (raw / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            (tok / f"{split}.{lang}").write_text("".join(ref.encode(x, lang) + "\n" for x in lines), encoding="utf-8")
    data_bin = root / "bin"
    run_cli("fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--trainpref", tok / "train",
            "--validpref", tok / "valid", "--destdir", data_bin, "--joined-dictionary", "--workers", "1")
    assert "--share-all-embeddings" in TINY_TRANSFORMER  # as the zoo's joined-dict models
    ckpt = train_tiny(data_bin, root / "train", "--source-lang", "en", "--target-lang", "de", max_update=20)
    folder = root / ZOO
    folder.mkdir()
    shutil.copy(ckpt, folder / "model.pt")
    for lang in ("en", "de"):
        shutil.copy(data_bin / f"dict.{lang}.txt", folder / f"dict.{lang}.txt")
    shutil.copy(codes, folder / "bpecodes")
    # fairseq-preprocess pads the dictionary (to a multiple of 8): the stripped-padding test needs such lines
    assert "madeupword0000" in (folder / "dict.en.txt").read_text(encoding="utf-8")
    return {"root": root, "raw": raw, "folder": folder, "ref": ref}


def _variant(zoo: dict, tmp_path: Path) -> Path:
    """A copy of the teacher folder to break."""
    return Path(shutil.copytree(zoo["folder"], tmp_path / ZOO))


def _generate(folder: Path, data_bin: Path, generate_args: list[str], n: int) -> dict[int, str]:
    """fairseq-generate with the teacher on the test split: {id: D- line text}, every sentence present."""
    # --user-dir: the plugin lets torch's weights_only loader read the argparse.Namespace such
    # checkpoints hold (the zoo's too); --max-len-b: an undertrained teacher may repeat itself
    out = run_cli("fairseq-generate", data_bin, "--user-dir", plugin_dir(), "--path", folder / "model.pt",
                  "--task", "translation", "--source-lang", "en", "--target-lang", "de", "--gen-subset", "test",
                  "--beam", "2", "--max-len-a", "1.2", "--max-len-b", "10", "--batch-size", "8",
                  "--required-batch-size-multiple", "1", "--cpu", *generate_args).stdout
    hyps = {int(m.group(1)): m.group(2) for m in re.finditer(r"^D-(\d+)\t[^\t]*\t(.*)$", out, re.M)}
    assert sorted(hyps) == list(range(n)), out[-2000:]
    assert len(re.findall(r"^H-\d+\t", out, re.M)) == n
    return hyps


def test_zoo_folder_is_read_and_checked(zoo):
    t = read_teacher_folder(str(zoo["folder"]), "en", "de")
    assert (t.bpe, t.tokenizer, Path(t.bpe_file).name) == ("subword_nmt", "moses", "bpecodes")
    assert Path(t.checkpoint).name == "model.pt"
    assert t.joined and t.shared_embeddings
    model = torch.load(zoo["folder"] / "model.pt", map_location="cpu", weights_only=False)["model"]
    rows = model["encoder.embed_tokens.weight"].shape[0]
    assert t.symbols == t.embedding_rows == {"en": rows, "de": rows}  # madeupword lines counted, as fairseq does
    assert t.pad_to_multiple == {"en": 1, "de": 1}
    assert t.encoder_args() == ["--tokenizer", "moses", "--bpe", "subword_nmt", "--bpe-codes", t.bpe_file]


def test_encoding_is_moses_then_subword_nmt(zoo):
    """fairseq's encoders give what sacremoses and subword-nmt gave the teacher; decoding gives the text back."""
    t = read_teacher_folder(str(zoo["folder"]), "en", "de")
    for lang in ("en", "de"):
        enc = TeacherEncoder(t, lang)
        lines = (zoo["raw"] / f"valid.{lang}").read_text(encoding="utf-8").splitlines()
        encoded = [enc.encode(x) for x in lines]
        assert encoded == [zoo["ref"].encode(x, lang) for x in lines]
        assert any("@@" in x for x in encoded) and any("&quot;" in x for x in encoded)
        assert [enc.decode(x) for x in encoded] == lines


def test_wrong_size_dictionary_is_refused(zoo, tmp_path):
    folder = _variant(zoo, tmp_path)
    with open(folder / "dict.de.txt", "a", encoding="utf-8") as f:
        f.write("".join(f"extraword{i} 1\n" for i in range(10)))
    with pytest.raises(UserError, match=r"dict\.de\.txt: .* but the decoder embedding of .*model\.pt has \d+ rows"):
        read_teacher_folder(str(folder), "en", "de")


def test_wrong_language_pair_is_refused(zoo, tmp_path):
    with pytest.raises(UserError, match=r"this teacher translates en-de .* but de-en was asked for"):
        read_teacher_folder(str(zoo["folder"]), "de", "en")
    # a checkpoint that does not name its languages: the dictionaries' names decide
    folder = _variant(zoo, tmp_path)
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)
    state["cfg"]["task"]["source_lang"] = state["cfg"]["task"]["target_lang"] = None
    torch.save(state, folder / "model.pt")
    with pytest.raises(UserError, match=r"dict\.fr\.txt: no such dictionary; it has dictionaries for de, en, so "
                                        r"its language pair is not en-fr"):
        read_teacher_folder(str(folder), "en", "fr")


def test_shared_embeddings_over_two_dictionaries_are_refused(zoo, tmp_path):
    folder = _variant(zoo, tmp_path)
    lines = (folder / "dict.de.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]
    (folder / "dict.de.txt").write_text("".join(lines), encoding="utf-8")
    with pytest.raises(UserError, match=r"shares one embedding .* differ \(line 4: "):
        read_teacher_folder(str(folder), "en", "de")


def test_subword_model_missing_ambiguous_or_foreign(zoo, tmp_path):
    import sentencepiece as spm

    folder = _variant(zoo, tmp_path)
    (folder / "bpecodes").unlink()
    with pytest.raises(UserError, match=r"no subword model: expected bpecodes or code .*--bpe-codes"):
        read_teacher_folder(str(folder), "en", "de")
    (folder / "code").write_text("#version: 0.2\nt h 1200\nth e</w> 900\n", encoding="utf-8")  # fastBPE's layout
    with pytest.raises(UserError, match=r"code: fastBPE codes"):
        read_teacher_folder(str(folder), "en", "de")
    (folder / "code").unlink()
    spm.SentencePieceTrainer.train(input=str(zoo["raw"] / "train.en"), model_prefix=str(folder / "sentencepiece.bpe"),
                                   vocab_size=60, model_type="bpe", minloglevel=2)
    t = read_teacher_folder(str(folder), "en", "de")
    assert (t.bpe, t.tokenizer, Path(t.bpe_file).name) == ("sentencepiece", None, "sentencepiece.bpe.model")
    assert t.encoder_args() == ["--bpe", "sentencepiece", "--sentencepiece-model", t.bpe_file]
    shutil.copy(zoo["folder"] / "bpecodes", folder / "bpecodes")
    with pytest.raises(UserError, match=r"both BPE codes .* and a sentencepiece model .*--bpe subword_nmt"):
        read_teacher_folder(str(folder), "en", "de")
    assert read_teacher_folder(str(folder), "en", "de", TeacherFolderConfig(bpe="subword_nmt")).tokenizer == "moses"


def test_teacher_data_command_gives_data_the_teacher_translates(zoo, tmp_path, caplog, capsys):
    """The command encodes and binarizes raw text; fairseq-generate translates every sentence with the teacher."""
    out, data_bin, raw = tmp_path / "teacher-data", tmp_path / "data-bin", zoo["raw"]
    proc = run_cli("fairseq-seqkd", "teacher-data", out, "--teacher-dir", zoo["folder"], "--src", "en", "--tgt", "de",
                   "--valid", raw / "valid.en", raw / "valid.de", "--test", raw / "test.en", raw / "test.de",
                   "--destdir", data_bin)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["splits"]["test"] == {"read": SIZES["test"], "kept": SIZES["test"], "dropped": {}}
    assert "--joined-dictionary" in summary["preprocess_args"]
    for lang in ("en", "de"):
        lines = (raw / f"test.{lang}").read_text(encoding="utf-8").splitlines()
        assert (out / f"test.{lang}").read_text(encoding="utf-8").splitlines() == [zoo["ref"].encode(x, lang)
                                                                                  for x in lines]
        assert (out / f"test.raw.{lang}").read_text(encoding="utf-8").splitlines() == lines
        assert (data_bin / f"dict.{lang}.txt").read_bytes() == (zoo["folder"] / f"dict.{lang}.txt").read_bytes()
    manifest = json.loads((out / "teacher.json").read_text(encoding="utf-8"))
    assert manifest["splits"]["test"]["unknown_tokens"] == {"en": 0, "de": 0}
    hyps = _generate(zoo["folder"], data_bin, summary["generate_args"], SIZES["test"])
    assert not any("@@" in h or "&quot;" in h or "&amp;" in h for h in hyps.values())
    # a second run finds the folder complete and keeps it
    teacher = read_teacher_folder(str(zoo["folder"]), "en", "de")
    splits = {"valid": [(str(raw / "valid.en"), str(raw / "valid.de"))],
              "test": [(str(raw / "test.en"), str(raw / "test.de"))]}
    with caplog.at_level(logging.INFO, logger="fairseq_seqkd.teacher.teacher_data"):
        assert prepare_teacher_data(teacher, splits, str(out)) == manifest
    assert "encoded before with this teacher" in caplog.text
    # without split files the command only checks the folder; a fault is exit status 2 and its message
    assert cli.main(["teacher-data", "--teacher-dir", str(zoo["folder"]), "--src", "de", "--tgt", "en"]) == 2
    assert "this teacher translates en-de" in capsys.readouterr().err


def test_dictionaries_without_padding_lines(zoo, tmp_path):
    """Files short of fairseq's madeupword padding: refused unless --pad-to-multiple says so; then padded back."""
    folder = _variant(zoo, tmp_path)
    for lang in ("en", "de"):
        path = folder / f"dict.{lang}.txt"
        path.write_text("".join(x for x in path.read_text(encoding="utf-8").splitlines(keepends=True)
                                if not x.startswith("madeupword")), encoding="utf-8")
    with pytest.raises(UserError, match=r"dict\.en\.txt: .*pass --pad-to-multiple 8 to put them back"):
        read_teacher_folder(str(folder), "en", "de")
    t = read_teacher_folder(str(folder), "en", "de", TeacherFolderConfig(pad_to_multiple=8))
    assert t.pad_to_multiple == {"en": 8, "de": 8} and t.symbols["en"] < t.embedding_rows["en"]
    data_bin = tmp_path / "data-bin"
    manifest = prepare_teacher_data(t, {"test": [(str(zoo["raw"] / "test.en"), str(zoo["raw"] / "test.de"))]},
                                    str(tmp_path / "out"), destdir=str(data_bin))
    for lang in ("en", "de"):  # the padding fairseq-preprocess wrote, back in place
        assert (data_bin / f"dict.{lang}.txt").read_bytes() == (zoo["folder"] / f"dict.{lang}.txt").read_bytes()
    _generate(folder, data_bin, manifest["generate_args"], SIZES["test"])


def test_training_split_streamed_by_workers(zoo, tmp_path):
    """Training pairs too long in teacher tokens are dropped and counted; 2 workers write what 1 writes."""
    t = read_teacher_folder(str(zoo["folder"]), "en", "de")
    raw = {"train": [(str(zoo["raw"] / "train.en"), str(zoo["raw"] / "train.de"))]}
    clean = CleanConfig(max_tokens=30)
    one = prepare_teacher_data(t, raw, str(tmp_path / "one"), clean=clean, workers=1)
    two = prepare_teacher_data(t, raw, str(tmp_path / "two"), clean=clean, workers=2)
    stats = one["splits"]["train"]
    assert stats["read"] == SIZES["train"] and stats["dropped"].get("too_long_tokens", 0) > 0
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["read"]
    for name in ("train.en", "train.de", "train.raw.en", "train.raw.de"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert max(len(x.split()) for x in (tmp_path / "one" / "train.de").read_text(encoding="utf-8").splitlines()) <= 30
    assert two["splits"]["train"] == stats


@pytest.mark.recipes
def test_recipe_distills_the_zoo_teacher_with_ctranslate2(zoo, tmp_path):
    """The WMT14 recipe (SMOKE) with TEACHER_DIR and TEACHER_ENGINE=ct2: the zoo teacher is not trained;
    the data are its Moses + BPE tokens over its dictionaries; its CTranslate2 export translates the
    training set; every student, Word-KD included, learns from it; each system is scored on detokenized text.
    The pruning, export and report jobs, which do not depend on where the teacher came from, are left out
    (the SMOKE run of test_recipes_smoke.py runs them)."""
    layer = tmp_path / "zoo.yaml"
    layer.write_text(f"data_script: null\nraw_dir: '{zoo['raw']}'\n"
                     + "".join(f"{split}_files: [[{split}.en, {split}.de]]\n" for split in ("train", "valid", "test")),
                     encoding="utf-8")
    run = tmp_path / "run"
    students = ("baseline", "word_kd", "seq_kd", "seq_inter", "seq_kd_word_kd", "seq_kd_seq_inter_word_kd")
    proc = run_recipe("wmt14_en_de.sh", run, "-j", "2", "results/teacher.json",
                      *(f"results/{name}.json" for name in students), CONFIGFILE=str(layer),
                      TEACHER_DIR=str(zoo["folder"]), TEACHER_ENGINE="ct2")
    assert not (run / "teacher" / "checkpoint_best.pt").exists()  # not trained
    done = json.loads((run / "teacher" / "train.done").read_text())
    assert done["checkpoint"] == str((zoo["folder"] / "model.pt").resolve())
    for lang in ("en", "de"):  # the teacher's dictionaries, and its encoding of the text
        assert (run / "data-bin" / f"dict.{lang}.txt").read_bytes() == (zoo["folder"] / f"dict.{lang}.txt").read_bytes()
        lines = (zoo["raw"] / f"valid.{lang}").read_text(encoding="utf-8").splitlines()
        assert (run / "prepared" / f"valid.{lang}").read_text(encoding="utf-8").splitlines() == \
            [zoo["ref"].encode(x, lang) for x in lines]
    assert (run / "teacher-export" / "ct2" / "model.bin").exists()
    assert "ct2-translate" in proc.stderr and "generate_shard" in proc.stderr
    for name in ("teacher", *students):
        result = json.loads((run / "results" / f"{name}.json").read_text())
        assert result["sentences"] == SIZES["test"] and isinstance(result["bleu_beam"], float), name
    # D- lines detokenized by Moses, as the references are: no BPE joints, no escaped quotes
    output = (run / "eval" / "teacher.beam.txt").read_text(encoding="utf-8")
    hyps = re.findall(r"^D-\d+\t[^\t]*\t(.*)$", output, re.M)
    assert len(hyps) == SIZES["test"] and not any("@@" in h or "&quot;" in h for h in hyps)
    for corpus in ("seqkd", "seqinter"):  # every training sentence has the teacher's translation
        extract = json.loads((run / f"data-bin-{corpus}" / "train.extract.json").read_text())
        assert extract["written"] == extract["sentences"] == done_pairs(run)


def done_pairs(run: Path) -> int:
    """The training pairs the data step kept (prepared/teacher.json)."""
    return json.loads((run / "prepared" / "teacher.json").read_text())["splits"]["train"]["kept"]


def test_plan_time_check_agrees_with_the_full_check(zoo, tmp_path):
    """plan_teacher_folder (the run's plan, no fairseq) gives what read_teacher_folder gives; fairseq stays out."""
    import subprocess
    import sys

    separate = _variant(zoo, tmp_path)  # two dictionaries: same symbols, another order (no shared embeddings)
    state = torch.load(separate / "model.pt", map_location="cpu", weights_only=False)
    state["cfg"]["model"].share_all_embeddings = False
    torch.save(state, separate / "model.pt")
    lines = (separate / "dict.de.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]
    (separate / "dict.de.txt").write_text("".join(lines), encoding="utf-8")
    for folder in (zoo["folder"], separate):
        full = read_teacher_folder(str(folder), "en", "de")
        plan = plan_teacher_folder(str(folder), "en", "de")
        assert (plan["teacher"], plan["encoder_args"], plan["joined"], plan["embedding_rows"]) == \
            (full.checkpoint, full.encoder_args(), full.joined, full.embedding_rows)
    assert not read_teacher_folder(str(separate), "en", "de").joined
    with pytest.raises(UserError, match=r"this teacher translates en-de .* but de-en was asked for"):
        plan_teacher_folder(str(zoo["folder"]), "de", "en")
    code = ("import sys\n"
            "from fairseq_seqkd.teacher.folder import plan_teacher_folder\n"
            "plan_teacher_folder(sys.argv[1], 'en', 'de')\n"
            "sys.exit('fairseq' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(zoo["folder"])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
