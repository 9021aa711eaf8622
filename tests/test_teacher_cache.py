"""The teacher top-k cache: format, shards, resume, checks, and the dataset wrapper."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRANSFORMER
from fairseq.data import Dictionary

from fairseq_seqkd import cli
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.fairseq_glue import TEACHER_IDS_KEY, TEACHER_LOGITS_KEY, load_teacher
from fairseq_seqkd.io_utils import file_sha256
from fairseq_seqkd.teacher_cache.build import build_cache
from fairseq_seqkd.teacher_cache.checks import check_against_dataset
from fairseq_seqkd.teacher_cache.dataset import attach_teacher_cache
from fairseq_seqkd.teacher_cache.format import dictionary_hash, first_bad_logit_row, header_path, shard_path
from fairseq_seqkd.teacher_cache.reader import TeacherCache


def kd_task(data: Path, *argv: str):
    """(cfg, task) of ``translation_kd`` over ``data``, set up as fairseq-train does, in process."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_seqkd

    fairseq_seqkd.register()  # translation_kd, as --user-dir registers it in fairseq-train
    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [str(data), "--task", "translation_kd", *TINY_TRANSFORMER, "--cpu",
                                        *map(str, argv)])
    cfg = convert_namespace_to_omegaconf(args)
    return cfg, tasks.setup_task(cfg.task)


def teacher_with_its_data_gone(toy_teacher: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a copy of the toy teacher whose checkpoint names a data folder that no longer exists, that folder)."""
    state = torch.load(toy_teacher, map_location="cpu", weights_only=False)
    gone = tmp_path / "teacher-data-gone"
    state["cfg"]["task"]["data"] = str(gone)
    moved = tmp_path / "teacher.pt"
    torch.save(state, moved)
    return moved, gone


def batches(task, split: str, max_tokens: int = 400, num_workers: int = 0, shuffle: bool = False):
    """Every batch of a loaded split, none lost (required_batch_size_multiple=1)."""
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=max_tokens, required_batch_size_multiple=1,
                                  num_workers=num_workers, disable_iterator_cache=True)
    return list(itr.next_epoch_itr(shuffle=shuffle))


def build(data, teacher, out, split="valid", **kw) -> dict:
    """build_cache with the test defaults (small batches, no progress bar)."""
    kw.setdefault("max_tokens", 300)
    return build_cache(str(data), str(teacher), str(out), split=split, progress=False, **kw)


@pytest.fixture(scope="module")
def valid_cache(toy_data_bin, toy_teacher, tmp_path_factory) -> Path:
    """The valid split cached at k=8 in 3 shards."""
    out = tmp_path_factory.mktemp("cache3")
    build(toy_data_bin, toy_teacher, out, topk=8, num_shards=3)
    return out


def test_header_records_format_counts_and_hashes(valid_cache, toy_data_bin, toy_teacher):
    header = json.loads(Path(header_path(str(valid_cache), "valid")).read_text())
    _, task = kd_task(toy_data_bin)
    task.load_dataset("valid")
    sizes = task.dataset("valid").tgt_sizes
    assert header["split"] == "valid" and header["k"] == 8 and header["num_shards"] == 3
    assert (header["ids_dtype"], header["logits_dtype"], header["version"]) == ("uint16", "float16", 3)
    assert header["num_sentences"] == len(sizes) == 64
    assert header["num_tokens"] == int(sizes.sum())
    assert header["teacher_checkpoint_sha256"] == file_sha256(str(toy_teacher))
    tgt_dict = Dictionary.load(str(toy_data_bin / "dict.de.txt"))
    assert header["target_dictionary_sha256"] == dictionary_hash(tgt_dict)
    ranges = [(s["first_sentence"], s["num_sentences"]) for s in header["shards"]]
    assert ranges == [(0, 21), (21, 21), (42, 22)]
    on_disk = sum(os.path.getsize(valid_cache / s["file"]) for s in header["shards"])
    assert on_disk == header["bytes"]
    # 8 x (2 + 2) bytes per token plus offsets and one 4 KiB header per shard
    assert header["bytes"] <= header["num_tokens"] * 32 + 3 * (4096 + 2 * 64) + 8 * (64 + 3)


def test_round_trip_across_shards_holds_the_teachers_top_k(valid_cache, toy_data_bin, toy_teacher):
    _, task = kd_task(toy_data_bin)
    task.load_dataset("valid")
    teacher = load_teacher(str(toy_teacher), task)
    cache = TeacherCache(str(valid_cache), "valid")
    pad = task.target_dictionary.pad()
    seen = 0
    for sample in batches(task, "valid"):
        with torch.no_grad():
            full = teacher.get_normalized_probs(teacher(**sample["net_input"]), log_probs=True)
        for row, sid in enumerate(sample["id"].tolist()):
            n = int(sample["target"][row].ne(pad).sum())
            ids, logits = cache[sid]
            assert ids.shape == logits.shape == (n, 8) and logits.dtype == np.float16
            ids = torch.from_numpy(ids.astype(np.int64))
            truth = full[row, :n]
            # the cached logits are the teacher's log(p_i / p_1) at those ids (float16: to 2^-11
            # relative), sorted, 0 first, and the largest k
            at_ids = truth.gather(1, ids)
            logits = torch.from_numpy(logits.astype(np.float32))
            assert torch.allclose(logits, at_ids - at_ids[:, :1], rtol=2**-11, atol=1e-6)
            assert (logits[:, 0] == 0).all() and (logits.diff(dim=1) <= 0).all()
            kth = truth.topk(8, dim=1).values[:, -1]
            assert (at_ids.min(dim=1).values >= kth - 1e-5).all()
            seen += 1
    assert seen == len(cache) == 64


def test_dataset_wrapper_aligns_with_target_under_padding_shuffle_and_workers(valid_cache, toy_data_bin):
    # (--num-batch-buckets would be the natural case, but fairseq's bucketing calls
    # np.percentile(interpolation=...), which numpy 2 removed; padding to a multiple of 8 on the
    # left exercises the same alignment rule)
    _, task = kd_task(toy_data_bin, "--teacher-cache", valid_cache, "--required-seq-len-multiple", "8",
                      "--left-pad-target")
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    cache = TeacherCache(str(valid_cache), "valid")
    pad, rows = task.target_dictionary.pad(), 0
    for sample in batches(task, "valid", max_tokens=250, num_workers=1, shuffle=True):
        target, ids, logits = sample["target"], sample[TEACHER_IDS_KEY], sample[TEACHER_LOGITS_KEY]
        assert ids.shape[:2] == logits.shape[:2] == target.shape and ids.dtype == torch.int32  # widened on the device
        assert target.size(1) % 8 == 0
        for row, sid in enumerate(sample["id"].tolist()):
            mask = target[row].ne(pad)
            assert mask[-1], "left padding: tokens end the row"
            want_ids, want_logits = cache[sid]
            assert torch.equal(ids[row][mask], torch.from_numpy(want_ids.astype(np.int32)))
            assert torch.equal(logits[row][mask], torch.from_numpy(np.array(want_logits)))
            assert logits[row][~mask].float().abs().sum() == 0
            rows += 1
    assert rows == 64
    # workers get a copy without the maps: small to pickle, reopened lazily
    blob = pickle.dumps(dataset)
    copy = pickle.loads(blob)
    assert copy.cache._maps is None
    assert np.array_equal(copy.cache[5][0], cache[5][0])
    assert len(pickle.dumps(dataset.cache)) < 16_000


def test_take_gathers_a_batch_across_shards_as_sentence_reads_do(valid_cache):
    cache = TeacherCache(str(valid_cache), "valid")
    # any order, across the 3 shards, a sentence twice, and nothing at all
    for indices in ([50, 3, 21, 63, 0, 3, 42, 20], [22], []):
        lengths, ids, logits = cache.take(np.array(indices))
        one_by_one = [cache[i] for i in indices]
        assert lengths.tolist() == [len(i) for i, _ in one_by_one]
        assert ids.shape == logits.shape == (sum(lengths), 8) and logits.dtype == np.float16
        if indices:
            assert np.array_equal(ids, np.concatenate([i for i, _ in one_by_one]))
            assert np.array_equal(logits, np.concatenate([p for _, p in one_by_one]))
    with pytest.raises(IndexError, match="sentence 64 outside the 64"):
        cache.take(np.array([1, 64]))


def test_dataset_wrapper_pads_on_the_right_and_refuses_a_length_mismatch(valid_cache, toy_data_bin):
    _, task = kd_task(toy_data_bin, "--teacher-cache", valid_cache)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    cache, pad, rows = dataset.cache, task.target_dictionary.pad(), 0
    for sample in batches(task, "valid", max_tokens=300, shuffle=True):
        target, ids, logits = sample["target"], sample[TEACHER_IDS_KEY], sample[TEACHER_LOGITS_KEY]
        assert ids.dtype == torch.int32 and logits.dtype == torch.float16
        for row, sid in enumerate(sample["id"].tolist()):
            n = int(target[row].ne(pad).sum())
            assert target[row, :n].ne(pad).all(), "right padding: tokens start the row"
            want_ids, want_logits = cache[sid]
            assert torch.equal(ids[row, :n], torch.from_numpy(want_ids.astype(np.int32)))
            assert torch.equal(logits[row, :n], torch.from_numpy(np.array(want_logits)))
            assert ids[row, n:].abs().sum() == 0 and logits[row, n:].float().abs().sum() == 0
            rows += 1
    assert rows == 64
    samples = [dataset[i] for i in (5, 6, 7)]
    samples[1]["target"] = samples[1]["target"][1:]  # one token fewer than the cache holds
    with pytest.raises(UserError, match=r"valid.header.json: sentence 6 has \d+ cached positions but \d+ "
                                        r"target tokens in the batch; rebuild the cache"):
        dataset.collater(samples)


def test_sharded_build_resumes_after_a_crash_left_a_partial_shard(toy_data_bin, toy_teacher, tmp_path,
                                                                  valid_cache):
    out = tmp_path / "cache"
    first = build(toy_data_bin, toy_teacher, out, topk=8, num_shards=3, shard_id=0)
    assert first["built"] == [0] and first["header"] is None and first["missing"] == [1, 2]
    done = Path(shard_path(str(out), "valid", 0, 3))
    stamp = (done.stat().st_ino, done.stat().st_mtime_ns)
    # a crash while writing shard 1: its .tmp holds part of a shard, no final file, no header
    partial = Path(shard_path(str(out), "valid", 1, 3) + ".tmp")
    partial.write_bytes(Path(shard_path(str(valid_cache), "valid", 1, 3)).read_bytes()[:5000])
    with pytest.raises(UserError, match=r"not finished.*1 partial"):
        TeacherCache(str(out), "valid")
    with pytest.raises(UserError, match=r"incomplete.*missing shard ids \[1, 2\].*partial"):
        cli_verify(toy_data_bin, out)
    resumed = build(toy_data_bin, toy_teacher, out, topk=8, num_shards=3)
    assert resumed["skipped"] == [0] and resumed["built"] == [1, 2] and resumed["header"] is not None
    assert (done.stat().st_ino, done.stat().st_mtime_ns) == stamp, "a finished shard was rewritten"
    assert not partial.exists()
    a, b = TeacherCache(str(out), "valid"), TeacherCache(str(valid_cache), "valid")
    for i in range(len(a)):
        assert np.allclose(a[i][1].astype(np.float32), b[i][1].astype(np.float32), atol=2e-3)
    # a rerun finds everything done; another k in the same folder is refused
    assert build(toy_data_bin, toy_teacher, out, topk=8, num_shards=3)["built"] == []
    with pytest.raises(UserError, match=r"valid.header.json: a finished cache of another build "
                                        r"\(k is 8 there but 4 here\)"):
        build(toy_data_bin, toy_teacher, out, topk=4, num_shards=3)


def test_too_little_free_space_is_refused_before_anything_is_written(toy_data_bin, toy_teacher, tmp_path,
                                                                     monkeypatch):
    """A full disk under the cache's memory maps would kill the build with SIGBUS ("exited -7"), unexplained."""
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    out = tmp_path / "cache"
    with pytest.raises(UserError) as e:
        build(toy_data_bin, toy_teacher, out, topk=8, num_shards=2)
    msg = str(e.value)
    assert msg.startswith(f"{out}: the teacher cache of split 'valid' (top-8, 2 shard(s) of 2) needs about ")
    assert "but only 4.0 KiB (4,096 bytes) are free on its disk" in msg and not out.exists()
    # what it asked for is what the build then writes
    needed = int(re.search(r"\(([\d,]+) bytes\) but", msg).group(1).replace(",", ""))
    monkeypatch.undo()
    build(toy_data_bin, toy_teacher, out, topk=8, num_shards=2)
    assert needed == sum(p.stat().st_size for p in out.glob("valid.shard*.bin"))


def cli_verify(data, out, split="valid") -> None:
    """`fairseq-seqkd cache DATA --verify` in process; UserError propagates as the CLI would print it."""
    args = cli.build_parser().parse_args(["cache", str(data), "--verify", "--split", split,
                                          "--out", str(out)])
    args._run(args)


def test_verify_merges_shards_built_elsewhere_and_checks_the_data(valid_cache, toy_data_bin, tmp_path,
                                                                  capsys):
    out = tmp_path / "copy"
    shutil.copytree(valid_cache, out)
    os.unlink(header_path(str(out), "valid"))  # as if each shard came from another machine
    assert cli.main(["cache", str(toy_data_bin), "--verify", "--split", "valid", "--out", str(out)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert json.loads(Path(header_path(str(out), "valid")).read_text())["num_sentences"] == 64


def test_truncated_shard_is_a_clear_error(valid_cache, tmp_path, capsys, toy_data_bin):
    out = tmp_path / "copy"
    shutil.copytree(valid_cache, out)
    victim = Path(shard_path(str(out), "valid", 2, 3))
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(UserError) as e:
        TeacherCache(str(out), "valid")
    msg = str(e.value)
    assert str(victim) in msg and "truncated" in msg and f"{size - 100} bytes" in msg and str(size) in msg
    assert "rerun `fairseq-seqkd cache`" in msg
    # the command line reports it and exits 2
    assert cli.main(["cache", str(toy_data_bin), "--verify", "--split", "valid", "--out", str(out)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_wrong_split_is_a_clear_error(valid_cache, toy_data_bin, tmp_path):
    _, task = kd_task(toy_data_bin)
    task.load_dataset("test")
    task.load_dataset("train")
    # a folder without the training split's cache
    with pytest.raises(UserError, match=r"no teacher cache for split 'train' \(it holds a cache for "
                                        r"split\(s\) valid; wrong split\?\).*--split train"):
        attach_teacher_cache(task.dataset("train"), str(valid_cache), "train", task.target_dictionary, True)
    # a validation split without a cache is left unwrapped
    assert attach_teacher_cache(task.dataset("test"), str(valid_cache), "test", task.target_dictionary,
                                False) is task.dataset("test")
    # a renamed header
    out = tmp_path / "copy"
    shutil.copytree(valid_cache, out)
    os.rename(header_path(str(out), "valid"), header_path(str(out), "test"))
    with pytest.raises(UserError, match=r"test.header.json: describes split 'valid', not 'test'"):
        TeacherCache(str(out), "test")
    # the valid cache checked against the test split: 64 vs 61 sentences
    with pytest.raises(UserError, match=r"valid.header.json: holds 64 sentences but split 'valid' of this "
                                        r"data has 61"):
        check_against_dataset(TeacherCache(str(valid_cache), "valid"), task.dataset("test"),
                              task.target_dictionary)


def test_wrong_dictionary_and_wrong_lengths_are_clear_errors(valid_cache, toy_data_bin):
    _, task = kd_task(toy_data_bin)
    task.load_dataset("valid")
    dataset, cache = task.dataset("valid"), TeacherCache(str(valid_cache), "valid")
    other = Dictionary.load(str(toy_data_bin / "dict.de.txt"))
    other.add_symbol("zzz-new-word")
    with pytest.raises(UserError, match=r"valid.header.json: built over another target dictionary.*"
                                        rf"with {len(other) - 1} symbols.*with {len(other)}\)"):
        check_against_dataset(cache, dataset, other)
    dataset.tgt_sizes = dataset.tgt_sizes.copy()
    dataset.tgt_sizes[30] += 1
    with pytest.raises(UserError, match=r"shard0001-of-0003.bin: sentence 30 has \d+ target tokens in the "
                                        r"cache but \d+ in the data \(1 sentences"):
        check_against_dataset(cache, dataset, task.target_dictionary)


def cache_files(folder: Path, split: str = "valid") -> dict[str, bytes]:
    """Every file of ``split``'s cache in ``folder``, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith(split + ".")}


def test_a_shard_killed_partway_resumes_after_its_last_chunk_byte_for_byte(toy_data_bin, toy_teacher, tmp_path,
                                                                           monkeypatch, caplog):
    import fairseq_seqkd.teacher_cache.build as builder

    whole = build(toy_data_bin, toy_teacher, tmp_path / "whole", topk=8, chunk_sentences=8)
    calls = {"n": 0, "kill_at": whole["batches"] // 2}
    real_topk = builder.teacher_topk

    def counting_topk(*args):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise KeyboardInterrupt("killed")  # as a kill would: mid-chunk, nothing cleaned up
        return real_topk(*args)

    monkeypatch.setattr(builder, "teacher_topk", counting_topk)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        build(toy_data_bin, toy_teacher, out, topk=8, chunk_sentences=8)
    tmp = Path(shard_path(str(out), "valid", 0, 1) + ".tmp")
    done = json.loads(tmp.read_bytes()[8:4096])["done_sentences"]
    assert 0 < done < 64 and done % 8 == 0, done
    with pytest.raises(UserError, match=r"not finished.*1 partial"):
        TeacherCache(str(out), "valid")
    calls["n"], calls["kill_at"] = 0, -1
    with caplog.at_level("INFO"):
        resumed = build(toy_data_bin, toy_teacher, out, topk=8, chunk_sentences=8)
    assert f"resuming {tmp} after sentence {done} of 64" in caplog.text
    assert resumed["resumed"] == {0: done} and resumed["built"] == [0]
    assert 0 < resumed["batches"] == calls["n"] < whole["batches"]
    assert not tmp.exists()
    assert cache_files(out) == cache_files(tmp_path / "whole")


def test_three_shard_jobs_equal_one_job_byte_for_byte_and_the_unsharded_cache(valid_cache, toy_data_bin,
                                                                              toy_teacher, tmp_path):
    out = tmp_path / "jobs"
    for i in range(3):  # the pipeline's cache_shard jobs, one process each
        assert build(toy_data_bin, toy_teacher, out, topk=8, num_shards=3, shard_id=i)["built"] == [i]
    os.unlink(header_path(str(out), "valid"))  # the shard jobs leave the header to cache_merge
    cli_verify(toy_data_bin, out)  # cache_merge
    assert cache_files(out) == cache_files(valid_cache)
    single = tmp_path / "single"
    build(toy_data_bin, toy_teacher, single, topk=8)
    a, b = TeacherCache(str(single), "valid"), TeacherCache(str(valid_cache), "valid")
    assert len(a) == len(b) == 64
    for i in range(len(a)):
        assert np.array_equal(a[i][0], b[i][0]), f"sentence {i}: other top-k ids"
        assert np.allclose(a[i][1].astype(np.float32), b[i][1].astype(np.float32), atol=1e-3)


def test_a_cache_of_other_words_with_the_same_lengths_is_refused(valid_cache, toy_data_bin, tmp_path):
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    # the data re-binarized with the target words shuffled within each sentence (EOS kept last)
    data = tmp_path / "shuffled"
    shutil.copytree(toy_data_bin, data)
    stem = str(data / "valid.en-de.de")
    index = MMapIndexedDataset(stem)._index
    sizes, pointers, dtype = index.sizes.copy(), index._pointers.copy(), index.dtype
    del index
    tokens = np.fromfile(stem + ".bin", dtype=dtype)
    rng = np.random.default_rng(0)
    for at, n in zip(pointers // np.dtype(dtype).itemsize, sizes):
        words = tokens[at:at + n - 1].copy()
        while n > 3 and np.array_equal(words, tokens[at:at + n - 1]):
            rng.shuffle(words)
        tokens[at:at + n - 1] = words
    tokens.tofile(stem + ".bin")
    _, task = kd_task(data)
    task.load_dataset("valid")
    with pytest.raises(UserError, match=r"shard0000-of-0003.bin: built from other target tokens than sentences "
                                        r"0..21 of split 'valid' of this data \(same lengths, other words"):
        check_against_dataset(TeacherCache(str(valid_cache), "valid"), task.dataset("valid"),
                              task.target_dictionary)
    with pytest.raises(UserError, match="other target tokens"):
        cli_verify(data, valid_cache)
    cli_verify(toy_data_bin, valid_cache)  # the data it was built from passes


def test_damaged_shards_are_refused_by_verify_and_training_and_fixed_by_rebuilding_one(
        valid_cache, toy_data_bin, toy_teacher, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(valid_cache, out)
    victim = Path(shard_path(str(out), "valid", 1, 3))
    header = json.loads(victim.read_bytes()[8:4096])
    intact = victim.read_bytes()
    _, task = kd_task(toy_data_bin)
    task.load_dataset("valid")
    fix = rf"Delete {re.escape(str(victim))} and rebuild that shard with .*--num-shards 3 --shard-id 1"
    # 4 KB of 0xFF mid-shard: ids 65535 and NaN probabilities
    middle = header["bytes"] // 2
    with open(victim, "r+b") as f:
        f.seek(middle)
        f.write(b"\xff" * 4096)
    with pytest.raises(UserError, match=r"CRC-32 of its (ids|logits) array is [0-9a-f]{8} but .*" + fix):
        cli_verify(toy_data_bin, out)
    with pytest.raises(UserError, match=rf"{re.escape(str(victim))}: damaged: token \d+ of the shard holds "
                                        r"(id 65535, outside the vocabulary|logits no build writes).*" + fix):
        attach_teacher_cache(task.dataset("valid"), str(out), "valid", task.target_dictionary, True)
    # plausible values (zeros) in the logits pass the cheap scan at training load, not the checksum
    victim.write_bytes(intact)
    with open(victim, "r+b") as f:
        f.seek(header["logits_at"] + 64)
        f.write(b"\0" * 256)
    attach_teacher_cache(task.dataset("valid"), str(out), "valid", task.target_dictionary, True)
    with pytest.raises(UserError, match=r"CRC-32 of its logits array.*" + fix):
        cli_verify(toy_data_bin, out)
    # the fix the message gives
    victim.unlink()
    assert build(toy_data_bin, toy_teacher, out, topk=8, num_shards=3, shard_id=1)["built"] == [1]
    cli_verify(toy_data_bin, out)
    assert victim.read_bytes() == intact


def test_the_value_scan_refuses_logits_no_build_writes():
    good = np.array([[0.0, -0.5, -30.0, -np.inf], [-0.0, -0.0, -1e-7, -65504.0]], dtype=np.float16)
    assert first_bad_logit_row(good) is None
    for value, at in ((0.25, 1), (np.nan, 2), (-np.nan, 3), (np.inf, 1), (-1.0, 0), (1e-7, 0)):
        bad = np.repeat(good, 3, axis=0)
        bad[4, at] = value
        assert first_bad_logit_row(bad) == 4, (value, at)
    nan_bits = good.copy()
    nan_bits.view(np.uint16)[1, 2] = 0xFFFF  # a NaN with the sign bit: what 0xFF bytes read as
    assert first_bad_logit_row(nan_bits) == 1


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_cache_asks_for_a_rebuild(valid_cache, toy_data_bin, tmp_path, version):
    out = tmp_path / f"v{version}"
    shutil.copytree(valid_cache, out)
    head = Path(header_path(str(out), "valid"))
    head.write_text(head.read_text().replace('"version": 3', f'"version": {version}'))
    # what changed since says why: version 2's float16 probabilities lost the tail a temperature needs
    with pytest.raises(UserError, match=rf"valid.header.json: a version-{version} fairseq-seqkd teacher top-k "
                                        r"cache, written by an older fairseq-seqkd; this one reads version 3 \("
                                        + ("version 2: per-shard checksums.*; " if version == 1 else "")
                                        + r"version 3: float16 logits relative to the most probable token.*"
                                        r"rebuild it with `fairseq-seqkd cache`"):
        TeacherCache(str(out), "valid")
    shard = Path(shard_path(str(out), "valid", 0, 3))
    with open(shard, "r+b") as f:
        f.write(f"SEQKDTC{version}".encode())
    os.unlink(head)
    with pytest.raises(UserError, match=rf"shard0000-of-0003.bin: a version-{version} .*rebuild it"):
        cli_verify(toy_data_bin, out)


def test_cache_of_a_teacher_whose_data_is_gone_needs_its_dictionary_or_an_opt_out(toy_data_bin, toy_teacher,
                                                                                  tmp_path, capsys):
    moved, gone = teacher_with_its_data_gone(toy_teacher, tmp_path)
    argv = ["cache", str(toy_data_bin), "--path", str(moved), "--split", "valid", "--out", str(tmp_path / "c"),
            "--no-progress-bar"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(gone / "dict.de.txt") in err and "--teacher-dict PATH" in err and "--teacher-dict-unchecked" in err
    assert cli.main(argv + ["--teacher-dict", str(toy_data_bin / "dict.de.txt")]) == 0
    assert cli.main(argv + ["--out", str(tmp_path / "d"), "--teacher-dict-unchecked"]) == 0
