"""Seq-KD and Seq-Inter corpora: a teacher's translations of a split merged into binarized fairseq data.

One way through (docs/seq-kd.md, section 3): a *source* of hypotheses
(:mod:`.generate_source`: ``fairseq-generate`` output shards; :mod:`.translation_source`: another
toolkit's text or K-best TSV; :mod:`.pool_source`: several teachers' K-best lists, pooled) fills
the :mod:`.store` in pass 1, refusing with the list of what is wrong (:mod:`.checks`) rather than
dropping anything; :func:`.build.build_corpus` then writes the pairs in the split's order
(:mod:`.writer`), the source side read from the data (:mod:`.data`).
It streams: millions of sentences fit in a fixed amount of memory.
"""

from fairseq_seqkd.seq_kd.corpus.build import (
    EMPTY_POLICIES,
    build_corpus,
    extract_corpus,
    extract_pooled,
    extract_translations,
)
from fairseq_seqkd.seq_kd.corpus.generate_source import SHARD_NAME, GenerateSource, shard_files
from fairseq_seqkd.seq_kd.corpus.pool_source import PooledSource, Teacher, parse_teacher
from fairseq_seqkd.seq_kd.corpus.source import HypothesisSource, Split
from fairseq_seqkd.seq_kd.corpus.store import Hypotheses
from fairseq_seqkd.seq_kd.corpus.translation_source import MAX_UNK_RATE, TranslationSource

__all__ = ["EMPTY_POLICIES", "MAX_UNK_RATE", "SHARD_NAME", "GenerateSource", "HypothesisSource", "Hypotheses",
           "PooledSource", "Split", "Teacher", "TranslationSource", "build_corpus", "extract_corpus", "extract_pooled",
           "extract_translations", "parse_teacher", "shard_files"]
