"""The embedded corpus is deterministic and multimodal the way real translation is."""

from __future__ import annotations

from collections import Counter

from fairseq_seqkd.data.toy_corpus import NOUNS, generate_split, write_corpus


def test_deterministic_and_parallel(tmp_path):
    a = write_corpus(str(tmp_path / "a"), {"train": 50, "test": 20}, seed=3)
    write_corpus(str(tmp_path / "b"), {"train": 50, "test": 20}, seed=3)
    assert a == {"train": 50, "test": 20}
    for name in ("train.en", "train.de", "test.en", "test.de"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    src = (tmp_path / "a" / "train.en").read_text().splitlines()
    tgt = (tmp_path / "a" / "train.de").read_text().splitlines()
    assert len(src) == len(tgt) == 50 and all(s and t for s, t in zip(src, tgt))
    assert generate_split(20, 1).source != generate_split(20, 2).source


def test_sources_have_several_valid_translations():
    data = generate_split(3000, 1)
    # synonyms: the same source word is translated both ways, the first choice more often
    seen = Counter()
    for s, t in zip(data.source, data.target):
        if "car" in s.split():
            seen.update(w for w in t.split() if w in NOUNS["car"][0])
    assert seen["auto"] > seen["wagen"] > 0
    # free word order: an adverb is sometimes fronted, sometimes after the verb
    pairs = zip(data.source, data.target)
    fronted = sum(1 for s, t in pairs if "today" in s.split() and t.startswith("heute"))
    total = sum(1 for s in data.source if "today" in s.split())
    assert 0 < fronted < total
    # optional words: 'very' is sometimes dropped in the target
    very = [(s, t) for s, t in zip(data.source, data.target) if s.split().count("very") == 1
            and "and" not in s.split()]
    dropped = sum(1 for _, t in very if not ({"sehr", "ganz"} & set(t.split())))
    assert 0 < dropped < len(very)
