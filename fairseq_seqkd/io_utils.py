"""Small file helpers shared by every stage: atomic writes, strict line reading, file hashes, free space."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from fairseq_seqkd.errors import UserError


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[TextIO]:
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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    """Write ``obj`` as indented JSON (and a newline) through a temporary file and a rename."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to a fsynced temporary file next to ``dst``, then ``os.replace`` it onto ``dst``."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)),
                               prefix=os.path.basename(dst) + ".", suffix=".tmp")
    try:
        try:
            shutil.copyfile(src, tmp)
            shutil.copymode(src, tmp)  # mkstemp makes it private; give it the mode of the file it copies
            os.fsync(fd)  # fsync flushes the file, whichever descriptor wrote it
        finally:
            os.close(fd)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


FINGERPRINT_WHOLE_BYTES = 64 << 20  # a file up to this size is hashed whole
FINGERPRINT_EDGE_BYTES = 1 << 20  # a larger one by its first and last this many bytes


def _edges_sha256(path: str, size: int) -> str:
    """sha256 of the whole file if it is at most FINGERPRINT_WHOLE_BYTES, else of its first and last MiB."""
    if size <= FINGERPRINT_WHOLE_BYTES:
        return file_sha256(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_EDGE_BYTES))
        f.seek(size - FINGERPRINT_EDGE_BYTES)
        h.update(f.read(FINGERPRINT_EDGE_BYTES))
    return h.hexdigest()


def content_fingerprint(path: str | os.PathLike) -> str:
    r"""sha256 hex digest of the content of a file or of a folder's files, in seconds even for gigabytes.

    The policy (the pipeline's too, through recipes/jobs.py): take every file ``os.walk`` lists under the
    folder, named by its path relative to the folder with ``/`` between parts (a file given alone:
    the name ``""``, so renaming it keeps its fingerprint), in ``sorted`` order of those names. For
    each, hash H = sha256 of its whole content if it has at most 64 MiB, else sha256 of its first
    MiB followed by its last MiB; the fingerprint is the sha256 of the UTF-8 lines
    ``f"{name}\t{size in bytes}\t{H hex}\n"`` joined in that order. Names, sizes and contents
    count; times and permissions do not. A change in the middle of a file over 64 MiB that keeps
    its size goes unseen: for a model, retraining changes every weight, the first MiB's included.
    A missing path is a ValueError naming it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or folder")
    if os.path.isfile(path):
        files = [("", path)]
    else:
        files = sorted((os.path.relpath(os.path.join(d, name), path).replace(os.sep, "/"), os.path.join(d, name))
                       for d, _, names in os.walk(path) for name in names if os.path.isfile(os.path.join(d, name)))
    h = hashlib.sha256()
    for name, file in files:
        size = os.path.getsize(file)
        h.update(f"{name}\t{size}\t{_edges_sha256(file, size)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse, before anything is written, a write of about ``needed`` bytes into ``folder`` that its disk cannot hold.

    A full disk is worse found late: a write through a memory map (the teacher cache) dies of
    SIGBUS with no message, and hours of work are lost. ``folder`` need not exist yet (the disk
    of its nearest existing parent is asked).
    """
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise UserError(f"{folder}: {what} needs about {_bytes(needed)} but only {_bytes(free)} are free on its "
                        "disk; free some space there or choose an output folder on a disk with more room")


def count_text_lines(path: str) -> int:
    """Lines of a file as a line-aligned text file counts them: newlines, plus a last line without one."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def format_ids(ids: Sequence[int], limit: int = 10) -> str:
    """A short list of sentence ids for an error message: the first ``limit``, then the count.

    ``ids`` may be a list or a numpy array; only the ids shown are converted (a million missing ids stay an array).
    """
    if not len(ids):
        return "none"
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")
