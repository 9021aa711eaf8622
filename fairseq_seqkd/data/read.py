"""Reading one side of a split: plain text, WMT "fake SGML" (``<seg id=..>``), IWSLT XML or ``train.tags.*``.

Lines are what ``open(path, newline="\n")`` iterates over (a lone carriage return stays inside its
line), so :func:`fairseq_seqkd.io_utils.count_text_lines` counts them; every sentence is normalized
(:func:`normalize_line`); invalid UTF-8 or a damaged ``.gz`` is a UserError naming the file.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator

from fairseq_seqkd.errors import UserError

_SEG = re.compile(r"<seg\b[^>]*>(.*?)</seg>", re.IGNORECASE)


def normalize_line(line: str) -> str:
    """Strip and collapse all whitespace (tabs, CR, Unicode separators) to single spaces."""
    # str.split() also splits on \x85, \u2028 and friends, which str.splitlines() (and so a
    # reader of the reference file) would take for line breaks.
    return " ".join(line.split())


def _open_text(path: str):
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; check the data folder (RAW_DIR) and the file names")
    # newline="\n": a stray carriage return inside a line must not split it (commoncrawl has some)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def detect_format(path: str) -> str:
    """The format of a raw file from its name: 'sgml', 'xml', 'tags' or 'text'."""
    name = os.path.basename(path)
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".sgm"):
        return "sgml"
    if name.endswith(".xml"):
        return "xml"
    if name.startswith("train.tags."):
        return "tags"
    return "text"


# what reading a damaged .gz raises: a cut file; not gzip at all, or a bad CRC; corrupt deflate data
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _gzip_error(path: str, error: Exception, lines: int) -> UserError:
    """A UserError for the damaged ``.gz`` file ``path``, read up to line ``lines``: what is wrong and the fix."""
    if isinstance(error, EOFError):
        what = f"the gzip file is cut short (truncated; its text ends abruptly after line {lines})"
    elif isinstance(error, gzip.BadGzipFile) and str(error).startswith("Not a gzipped file"):
        what = ("not gzip data, although its name ends in .gz (if it is plain text, compress it with gzip "
                "or drop the .gz from its name)")
    else:
        what = f"damaged gzip data ({error})"  # a bad CRC shows at the end: a line number would mislead
    return UserError(f"{path}: {what}. Check it with `gzip -t {path}`, then re-download it or re-compress it "
                     "from the original text; then delete the output folder (it records its input files' "
                     "sizes) and run again")


def utf8_error(path: str) -> UserError:
    """A UserError naming the first line of ``path`` that is not valid UTF-8, its byte offset and the fix."""
    opener = gzip.open if path.endswith(".gz") else open
    offset, n = 0, 0
    with opener(path, "rb") as f:
        try:
            for n, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    where = "of the decompressed text" if path.endswith(".gz") else "of the file"
                    return UserError(
                        f"{path}: line {n} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset "
                        f"{offset + e.start} {where}, byte {e.start + 1} of the line). prepare reads UTF-8 "
                        f"text: re-encode the file (`file -i {path}` guesses its encoding; e.g. `iconv -f "
                        f"ISO-8859-1 -t UTF-8 {path} > {path}.utf8` for Latin-1), or remove the invalid bytes "
                        "(`iconv -f UTF-8 -t UTF-8 -c`) or fix that line by hand; then delete the output "
                        "folder (it records its input files' sizes) and run prepare again")
                offset += len(raw)
        except _GZIP_ERRORS as e:  # a damaged .gz that is also not UTF-8 before the damage
            return _gzip_error(path, e, n)
    return UserError(f"{path}: not valid UTF-8; re-encode it to UTF-8 (e.g. with iconv) and run prepare again")


def _numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file; invalid UTF-8 or a damaged .gz is a UserError naming the file."""
    n = 0
    with _open_text(path) as f:
        try:
            for n, line in enumerate(f, 1):
                yield n, line
        except UnicodeDecodeError:
            # the decoder reads ahead in blocks: find the line from the bytes
            raise utf8_error(path) from None
        except _GZIP_ERRORS as e:
            if not path.endswith(".gz"):
                raise
            raise _gzip_error(path, e, n) from None


def _numbered_sentences(path: str) -> Iterator[tuple[int, str]]:
    """(line number in the file, normalized sentence) of one side, in the format its name says."""
    fmt = detect_format(path)
    for n, line in _numbered_lines(path):
        if fmt in ("sgml", "xml"):
            # Both are line-oriented with one <seg> per line; WMT's "fake SGML" is not valid XML
            # (bare '&'), so no XML parser and no entity unescaping, as sacrebleu reads these files.
            m = _SEG.search(line)
            if m:
                yield n, normalize_line(m.group(1))
        elif fmt == "tags":
            # <url>, <keywords>, <speaker>, <talkid>, <title>, <description>, <reviewer>, ...:
            # talk metadata, one line each and in the same places on both sides
            if not line.lstrip().startswith("<"):
                yield n, normalize_line(line)
        else:  # plain text: empty lines kept, the caller decides
            yield n, normalize_line(line)


def iter_side(path: str) -> Iterator[str]:
    """The sentences of one side of a split, in the format its file name says."""
    return (sentence for _, sentence in _numbered_sentences(path))


def read_side(path: str) -> list[str]:
    """All sentences of one side of a (small) split as a list."""
    return list(iter_side(path))


def iter_pairs(src_path: str, tgt_path: str) -> Iterator[tuple[str, str]]:
    """Aligned (source, target) sentences; different counts are a UserError naming both files."""
    src_it, tgt_it = iter_side(src_path), iter_side(tgt_path)
    n = 0
    for s in src_it:
        t = next(tgt_it, None)
        if t is None:
            rest = 1 + sum(1 for _ in src_it)
            raise UserError(f"{src_path} has {n + rest} sentences but {tgt_path} has {n}: "
                            "the two sides of a parallel corpus must align line by line")
        n += 1
        yield s, t
    rest = sum(1 for _ in tgt_it)
    if rest:
        raise UserError(f"{src_path} has {n} sentences but {tgt_path} has {n + rest}: "
                        "the two sides of a parallel corpus must align line by line")


def read_test_pairs(src_path: str, tgt_path: str) -> list[tuple[str, str]]:
    """A test (or scored) set, strictly: every sentence present and non-empty, or a UserError."""
    src, tgt = read_side(src_path), read_side(tgt_path)
    if len(src) != len(tgt):
        raise UserError(f"test set: {src_path} has {len(src)} sentences but {tgt_path} has {len(tgt)}; "
                        "a test set must align line by line: fix or replace the files")
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        for i, line in enumerate(lines):
            if not line:
                unit = "segment" if detect_format(path) in ("sgml", "xml") else "line"
                raise UserError(f"{path}: {unit} {i + 1} is empty; a test sentence is never dropped (BLEU "
                                "would no longer be comparable): restore it or use the complete "
                                "official file")
    return list(zip(src, tgt))
