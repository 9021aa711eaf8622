"""``fairseq-generate`` output read as a stream: the one parser every reader of it uses.

fairseq-generate prints, for each sentence, a block of tab-separated lines tagged with the
sentence id: ``S-7`` (source), ``T-7`` (reference), then for each hypothesis ``H-7`` (score,
tokens), ``D-7`` (score, detokenized) and ``P-7`` (one score per token plus EOS), and with some
options more (``A-`` with ``--print-alignment``, ``E-``, ``I-``, ``V-``). Its log, on stderr,
ends with ``Translated N sentences (T tokens) in Ss``. The blocks come in batch order, not in
id order, and a file is read a piece of whole blocks at a time so that memory does not grow with
its size; pieces of fairseq's usual blocks are parsed in bulk (:func:`regular_blocks`).
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


CHUNK_BYTES = 2 << 20  # a file is read this much at a time, cut where a sentence block starts


def _newlines(data: bytes) -> bytes:
    """``\\r\\n`` and ``\\r`` as ``\\n``: what reading in text mode (universal newlines) does."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _block_start(buf: bytes) -> int:
    """Where in ``buf`` the last sentence block of its whole lines starts (0: no block boundary in it).

    That is the first line of the final run of lines tagged with one id, after a line tagged with
    another: a piece cut there holds whole blocks, which read alone give what the whole file gives.
    """
    stop = buf.rfind(b"\n")
    run, cut = None, 0
    while stop > 0:
        start = buf.rfind(b"\n", 0, stop) + 1
        tagged = _tagged(buf[start:stop].decode("utf-8", "replace"))
        if tagged is not None:
            if run is not None and tagged[1] != run:
                return cut
            run, cut = tagged[1], start
        stop = start - 1
    return 0


def read_chunks(path: str, size: int | None = None) -> Iterator[tuple[int, bytes]]:
    """A generation file in pieces of whole sentence blocks, newlines read as text mode reads them: (line, bytes).

    Only a block longer than ``size`` (default ``CHUNK_BYTES``) makes a piece longer than ``size``.
    """
    size = size or CHUNK_BYTES
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    number, pending = 1, b""
    with open(path, "rb") as f:
        while True:
            data = f.read(size)
            buf = pending + data if pending else data
            if not data:
                buf = _newlines(buf) if b"\r" in buf else buf
                if buf:
                    yield number, buf
                return
            if b"\r" in buf:  # a last \r may be the first half of \r\n: translated with what follows
                tail = b"\r" if buf.endswith(b"\r") else b""
                buf = _newlines(buf[:len(buf) - len(tail)]) + tail
            cut = _block_start(buf)
            if cut == 0:
                pending = buf
                continue
            pending = buf[cut:]
            yield number, buf[:cut]
            number += buf.count(b"\n", 0, cut)


def chunk_blocks(first: int, chunk: bytes, errors: str = "replace") -> Iterator[tuple[int, list[tuple[int, str, str]]]]:
    """The sentence blocks of a piece of :func:`read_chunks` (first line number ``first``), as :func:`iter_blocks`."""
    lines = chunk.decode("utf-8", errors).split("\n")
    if lines[-1] == "":
        lines.pop()
    sid, block, same = UNTAGGED, [], "\0"
    for number, line in enumerate(lines, first):
        # this runs for every line of a block: a line of the current block is recognised by
        # its "-<id><TAB>" alone, without parsing the id again
        if line.startswith(same, 1) and "A" <= line[0] <= "Z":
            block.append((number, line[0], line[len(same) + 1:]))
            continue
        tagged = _tagged(line)
        if tagged is None:
            yield UNTAGGED, [(number, "", line)]
            continue
        tag, i, rest = tagged
        if i != sid:
            if block:
                yield sid, block
            sid, block = i, []
        same = line[1:len(line) - len(rest)]
        block.append((number, tag, rest))
    if block:
        yield sid, block


def iter_blocks(path: str, errors: str = "replace") -> Iterator[tuple[int, list[tuple[int, str, str]]]]:
    """Sentence blocks of a generation output: (sentence id, [(line number, tag, rest), ...]).

    A tagged line is ``X-<id><TAB><rest>`` with X a capital letter (the regular expression
    ``^([A-Z])-(\\d+)\\t(.*)$``), its newline dropped. A block is a run of tagged lines with the
    same id (untagged lines inside it do not end it); an id seen again after another id starts a
    new block (a duplicated sentence). Untagged lines (log lines) come as they are read, each as
    (UNTAGGED, [(line number, "", line)]). ``errors``: how undecodable UTF-8 is read ("strict" refuses it).
    """
    for number, chunk in read_chunks(path):
        yield from chunk_blocks(number, chunk, errors)


# the blocks fairseq-generate prints with --nbest 1: S-, T- (where the data has a target), H-, D-, P-
_REGULAR = {
    True: re.compile(rb"\nS-(\d+)\t([^\n]*)\nT-\1\t[^\n]*\nH-\1\t([^\t\n]*)\t([^\t\n]*)\nD-\1\t[^\n]*\nP-\1\t([^\n]*)"),
    False: re.compile(rb"\nS-(\d+)\t([^\n]*)\nH-\1\t([^\t\n]*)\t([^\t\n]*)\nD-\1\t[^\n]*\nP-\1\t([^\n]*)"),
}
# what a P- line counted by its spaces may not hold (the newlines are those that join the lines)
_NOT_SCORES = bytes(range(10)) + bytes(range(11, 32)) + bytes(range(127, 256))


def regular_blocks(chunk: bytes) -> tuple[list[bytes], list[bytes], list[bytes], list[bytes], list[int]] | None:
    """A piece of :func:`read_chunks` parsed in bulk, where it is made only of fairseq's usual blocks.

    Every line must belong to an ``S-``, [``T-``,] ``H-``, ``D-``, ``P-`` block of one id (the
    first ``H-``, ``D-``, ``P-`` of each sentence; ``--nbest 1``), the ``H-`` line without a tab
    in its text, the ``P-`` line printable ASCII with single spaces. Returns (ids, ``S-`` texts,
    ``H-`` scores, ``H-`` texts, scores on each ``P-`` line) in file order, or None for any other
    piece, which :func:`chunk_blocks` reads line by line (it gives the same for these).
    """
    if not chunk.endswith(b"\n") or not chunk.startswith(b"S-"):
        return None
    target = chunk.startswith(b"T-", chunk.find(b"\n") + 1)
    found = _REGULAR[target].findall(b"\n" + chunk)
    # each match is whole lines from a line start: as many as the piece has, so nothing was skipped
    if len(found) * (5 if target else 4) != chunk.count(b"\n"):
        return None
    ids, sources, scores, texts, probs = zip(*found) if found else ((),) * 5
    joined = b"\n".join(probs)
    if (not all(probs) or joined.translate(None, _NOT_SCORES) != joined or b"  " in joined
            or b"\n " in joined or b" \n" in joined or joined.startswith(b" ") or joined.endswith(b" ")):
        return None
    return list(ids), list(sources), list(scores), list(texts), [p.count(b" ") + 1 for p in probs]


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
