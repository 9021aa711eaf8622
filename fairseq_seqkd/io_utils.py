"""Small file helpers shared by every stage: atomic writes, strict line reading, file hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from fairseq_seqkd.errors import UserError


@contextmanager
def atomic_open(path: str) -> Iterator[TextIO]:
    """A UTF-8 text handle whose content appears at ``path`` (by a rename) only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; results are ordinary files
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_open(path) as f:
        f.write(text)


def read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 text file without newlines; a missing file is a UserError."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks (a checkpoint of gigabytes never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def count_text_lines(path: str) -> int:
    """Lines of a file as a line-aligned text file counts them: newlines, plus a last line without one."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")
