"""Seq-Inter: fairseq-generate with --seq-inter puts the beam candidate closest to the reference first."""

from collections import defaultdict

import pytest
import torch
from conftest import TINY_TRANSFORMER, generate_in_process, plugin_dir, run_cli

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.seq_kd.corpus import extract_corpus
from fairseq_seqkd.seq_kd.sentence_bleu import SentenceBLEU
from fairseq_seqkd.seq_kd.seq_inter import SeqInterGenerator, rerank_by_bleu, seq_inter_order

BEAM = 6
TEST_SENTENCES = 61


def _generate(data_bin, teacher, out, *extra):
    proc = run_cli("fairseq-generate", data_bin, "--user-dir", plugin_dir(), "--task", "translation_kd",
                   "--path", teacher, "--gen-subset", "test", "--beam", BEAM, "--cpu",
                   "--required-batch-size-multiple", "1", "--num-workers", "0", *extra)
    out.write_text(proc.stdout, encoding="utf-8")
    return out


def _candidates(path):
    """id -> reference, and id -> [(score, hypothesis)] in printed order."""
    refs, hyps = {}, defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        tag, _, rest = line.partition("\t")
        if tag.startswith("T-"):
            refs[int(tag[2:])] = rest
        elif tag.startswith("H-"):
            score, _, text = rest.partition("\t")
            hyps[int(tag[2:])].append((float(score), text))
    return refs, hyps


@pytest.fixture(scope="module")
def runs(toy_data_bin, toy_teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp("seq_inter")
    inter = _generate(toy_data_bin, toy_teacher, d / "inter.txt", "--nbest", BEAM, "--batch-size", 16,
                      "--seq-inter")
    one = generate_in_process(toy_data_bin, toy_teacher, d / "inter1.txt", "--gen-subset", "test",
                              "--beam", BEAM, "--nbest", 1, "--max-tokens", 200, "--seq-inter",
                              "--seq-inter-smooth-method", "floor")
    return inter, one


def _bleu_by_words(bleu, hyp, ref):
    # the words are dictionary symbols; any injective word->id map gives the same BLEU
    vocab = {}
    ids = [[vocab.setdefault(w, len(vocab)) for w in s.split()] for s in (hyp, ref)]
    return bleu.score_plain(ids[0], ids[1])


def test_generate_puts_closest_candidate_first(runs):
    inter, _ = runs
    refs, picked = _candidates(inter)
    assert sorted(picked) == sorted(refs) == list(range(TEST_SENTENCES))
    bleu = SentenceBLEU()
    changed = 0
    for sid, got in picked.items():
        assert len(got) == BEAM  # all K candidates reach the wrapper, whatever the nbest
        rest = [score for score, _ in got[1:]]
        assert rest == sorted(rest, reverse=True)  # the others stay in model-score order
        model_order = sorted(got, key=lambda c: -c[0])
        scores = [_bleu_by_words(bleu, text, refs[sid]) for _, text in model_order]
        best = max(scores)
        expect = next(i for i, s in enumerate(scores) if s >= best - 1e-9)  # ties: higher model score
        assert got[0] == model_order[expect], sid
        changed += expect != 0
    assert changed > 0, "Seq-Inter never changed the 1-best on the toy test set: nothing was tested"


def test_nbest_one_max_tokens_and_other_smoothing(runs, tmp_path, toy_data_bin):
    inter, one = runs
    refs, plain = _candidates(inter)
    _, picked = _candidates(one)
    assert sorted(picked) == list(range(TEST_SENTENCES))
    bleu = SentenceBLEU("floor")
    for sid, got in picked.items():
        assert len(got) == 1
        scores = {text: _bleu_by_words(bleu, text, refs[sid]) for _, text in plain[sid]}
        assert got[0][1] in scores and scores[got[0][1]] >= max(scores.values()) - 1e-9
    # the Seq-Inter corpus is extracted like a Seq-KD one
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "shard0.txt").write_text(one.read_text(encoding="utf-8"), encoding="utf-8")
    report = extract_corpus([str(gen)], str(toy_data_bin), str(tmp_path / "bin"), split="test", num_shards=1)
    assert report["written"] == TEST_SENTENCES
    lines = (tmp_path / "bin" / "text" / "test.de").read_text(encoding="utf-8").splitlines()
    assert lines == [picked[i][0][1] for i in range(TEST_SENTENCES)]


def _hypo(tokens, score):
    return {"tokens": torch.tensor(tokens), "score": torch.tensor(score)}


def test_order_ties_and_rerank_strip_padding():
    # equal BLEU: the higher model score wins, then the earlier candidate
    assert seq_inter_order([10.0, 50.0, 50.0 + 1e-12, 3.0], [-1.0, -3.0, -2.0, -0.5]) == [2, 0, 1, 3]
    assert seq_inter_order([5.0, 5.0], [-1.0, -1.0]) == [0, 1]
    assert seq_inter_order([], []) == []
    eos, pad = 2, 1
    hypos = [[_hypo([7, 8, eos], -0.1), _hypo([5, 6, 7, eos], -0.2), _hypo([5, 6, 7, 8, eos], -0.3)],
             [_hypo([9, eos], -0.5), _hypo([4, eos], -0.9)]]
    target = torch.tensor([[5, 6, 7, 8, eos], [pad, pad, pad, 4, eos]])  # one left-padded row
    out = rerank_by_bleu(hypos, target, SentenceBLEU(), strip={eos, pad})
    assert [h["tokens"].tolist() for h in out[0]] == [[5, 6, 7, 8, eos], [7, 8, eos], [5, 6, 7, eos]]
    assert [h["tokens"].tolist() for h in out[1]] == [[4, eos], [9, eos]]


def test_task_hooks_in_process(toy_data_bin, toy_teacher):
    """build_generator wraps; build_model (--eval-bleu's generator) does not; no target is a UserError."""
    from fairseq import checkpoint_utils, options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_seqkd

    fairseq_seqkd.register()  # --user-dir below finds the package imported already
    argv = [str(toy_data_bin), "--user-dir", plugin_dir(), "--task", "translation_kd", "--seq-inter",
            "--eval-bleu", *TINY_TRANSFORMER, "--cpu"]
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, argv))
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    assert not isinstance(task.sequence_generator, SeqInterGenerator)  # validation BLEU: own 1-best

    models, _ = checkpoint_utils.load_model_ensemble([str(toy_teacher)], task=task)
    gen_args = options.parse_args_and_arch(options.get_generation_parser(),
                                           [str(toy_data_bin), "--beam", "4"])
    generator = task.build_generator(models, convert_namespace_to_omegaconf(gen_args).generation)
    assert isinstance(generator, SeqInterGenerator) and generator.eos == task.target_dictionary.eos()
    task.load_dataset("valid")
    ds = task.dataset("valid")
    sample = ds.collater([ds[i] for i in range(3)])
    hypos = task.inference_step(generator, models, sample)
    plain = task.inference_step(generator.generator, models, sample)  # fairseq's own beam search
    assert [len(h) for h in hypos] == [4, 4, 4]
    for mine, theirs in zip(hypos, plain):  # the same candidates, reordered
        key = sorted((h["tokens"].tolist(), float(h["score"])) for h in mine)
        assert key == sorted((h["tokens"].tolist(), float(h["score"])) for h in theirs)
    sample["target"] = None
    with pytest.raises(UserError, match="no target side"):
        task.inference_step(generator, models, sample)
    del model


def test_generation_outside_distributed_translates_everything(toy_data_bin, toy_teacher, tmp_path):
    # --distributed-world-size 2 is what fairseq-generate defaults to on a machine with 2 GPUs;
    # it runs one process, so sharding by it would translate half of the split
    out = _generate(toy_data_bin, toy_teacher, tmp_path / "ws2.txt", "--seq-inter", "--nbest", 1,
                    "--max-tokens", 300, "--distributed-world-size", 2)
    refs, hyps = _candidates(out)
    assert sorted(hyps) == sorted(refs) == list(range(TEST_SENTENCES))
    # shards of a sharded run still split the set between them
    halves = [_candidates(_generate(toy_data_bin, toy_teacher, tmp_path / f"s{i}.txt", "--nbest", 1,
                                    "--max-tokens", 300, "--distributed-world-size", 2,
                                    "--num-shards", 2, "--shard-id", i))[1] for i in range(2)]
    assert not set(halves[0]) & set(halves[1]) and sorted([*halves[0], *halves[1]]) == list(range(TEST_SENTENCES))
