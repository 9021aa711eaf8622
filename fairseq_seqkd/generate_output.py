"""``fairseq-generate`` output read as a stream: the one parser every reader of it uses.

fairseq-generate prints, for each sentence, a block of tab-separated lines tagged with the
sentence id: ``S-7`` (source), ``T-7`` (reference), then for each hypothesis ``H-7`` (score,
tokens), ``D-7`` (score, detokenized) and ``P-7`` (one score per token plus EOS), and with some
options more (``A-`` with ``--print-alignment``, ``E-``, ``I-``, ``V-``). Its log, on stderr,
ends with ``Translated N sentences (T tokens) in Ss``. The blocks come in batch order, not in
id order, and a file is read line by line so that memory does not grow with its size.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from fairseq_seqkd.errors import UserError

# fairseq-generate's closing line: sentences, then (where the line is whole) tokens and seconds
TRANSLATED_LINE = re.compile(r"Translated ([\d,]+) sentences(?: \(([\d,]+) tokens\) in ([\d.]+)s)?")

UNTAGGED = -1  # the sentence id given to a line that is not ``X-<id><TAB>...`` (a log line, say)


def _tagged(line: str) -> tuple[str, int, str] | None:
    """(tag, sentence id, rest) of ``X-<id><TAB><rest>`` (X a capital letter), or None for any other line."""
    if len(line) > 3 and line[1] == "-" and "A" <= line[0] <= "Z":
        tab = line.find("\t", 2)
        if tab > 2 and line[2:tab].isdecimal():
            return line[0], int(line[2:tab]), line[tab + 1:]
    return None


def iter_blocks(path: str, errors: str = "replace") -> Iterator[tuple[int, list[tuple[int, str, str]]]]:
    """Sentence blocks of a generation output: (sentence id, [(line number, tag, rest), ...]).

    A tagged line is ``X-<id><TAB><rest>`` with X a capital letter (the regular expression
    ``^([A-Z])-(\\d+)\\t(.*)$``), its newline dropped. A block is a run of tagged lines with the
    same id (untagged lines inside it do not end it); an id seen again after another id starts a
    new block (a duplicated sentence). Untagged lines (log lines) come as they are read, each as
    (UNTAGGED, [(line number, "", line)]). ``errors``: how undecodable UTF-8 is read ("strict" refuses it).
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    sid, lines, same = UNTAGGED, [], "\0"
    with open(path, encoding="utf-8", errors=errors) as f:
        for number, line in enumerate(f, 1):
            if line[-1:] == "\n":
                line = line[:-1]
            # this runs for every line of a corpus: a line of the current block is recognised by
            # its "-<id><TAB>" alone, without parsing the id again
            if line.startswith(same, 1) and "A" <= line[0] <= "Z":
                lines.append((number, line[0], line[len(same) + 1:]))
                continue
            tagged = _tagged(line)
            if tagged is None:
                yield UNTAGGED, [(number, "", line)]
                continue
            tag, i, rest = tagged
            if i != sid:
                if lines:
                    yield sid, lines
                sid, lines = i, []
            same = line[1:len(line) - len(rest)]
            lines.append((number, tag, rest))
    if lines:
        yield sid, lines


def translated_count(line: str) -> tuple[int, int | None, float | None] | None:
    """(sentences, tokens, seconds) of a ``Translated ...`` log line (tokens and seconds where whole), or None."""
    m = TRANSLATED_LINE.search(line)
    if m is None:
        return None
    tokens = int(m.group(2).replace(",", "")) if m.group(3) else None
    return int(m.group(1).replace(",", "")), tokens, float(m.group(3)) if m.group(3) else None


def first_hypotheses(path: str, tag: str = "H", errors: str = "replace") -> dict[int, str]:
    """The text of the first ``tag`` line of each sentence id (``H``: tokens, ``D``: detokenized): the 1-best."""
    found = {}
    for sid, lines in iter_blocks(path, errors):
        for _number, t, rest in lines:
            if t == tag and sid not in found:
                found[sid] = rest.partition("\t")[2]  # after the score
    return found
