"""Text to a model's subword tokens and back with fairseq's own encoders (``--tokenizer``, ``--bpe``).

fairseq-generate prints ``D-`` lines with these very objects (``--tokenizer moses --bpe subword_nmt
--bpe-codes FILE``, or ``--bpe sentencepiece --sentencepiece-model FILE``): the teacher folder's data
step encodes with them (:mod:`fairseq_seqkd.teacher.folder`), and ``ct2-translate`` detokenizes its
output with them, so both engines write the same text for the same tokens.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

TOKENIZERS = ("moses", "space", "none")
BPES = ("subword_nmt", "sentencepiece")


class TextCodec:
    """One language's text to subword tokens and back: the tokenizer (or none), then the subword model."""

    def __init__(self, bpe: str, bpe_file: str, lang: str, tokenizer: str | None = None,
                 moses_no_dash_splits: bool = False, moses_no_escape: bool = False):
        from fairseq.data.encoders import build_bpe, build_tokenizer

        self.tokenizer = None
        if tokenizer and tokenizer != "none":
            # the Moses tokenizer takes its language from source_lang (encode) and target_lang (decode)
            self.tokenizer = build_tokenizer(argparse.Namespace(
                tokenizer=tokenizer, source_lang=lang, target_lang=lang,
                moses_no_dash_splits=moses_no_dash_splits, moses_no_escape=moses_no_escape))
        self.bpe = build_bpe(argparse.Namespace(
            bpe=bpe, bpe_codes=bpe_file, bpe_separator="@@",
            sentencepiece_model=bpe_file, sentencepiece_enable_sampling=False, sentencepiece_alpha=None))

    def encode(self, line: str) -> str:
        """Tokenize, then apply the subword model (fairseq's GeneratorHubInterface.encode, before binarizing)."""
        if self.tokenizer is not None:
            line = self.tokenizer.encode(line)
        # one space between tokens: what fairseq's tokenize_line splits again
        return " ".join(self.bpe.encode(line).split())

    def encode_batch(self, lines: Sequence[str]) -> list[list[str]]:
        """The tokens of each line (an :class:`~fairseq_seqkd.data.encode.Encoder`)."""
        return [self.encode(line).split() for line in lines]

    def decode(self, line: str) -> str:
        """Undo the subword model, then detokenize (fairseq-generate's D- lines)."""
        line = self.bpe.decode(line)
        return self.tokenizer.decode(line) if self.tokenizer is not None else line
