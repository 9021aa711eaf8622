"""Read and write fairseq checkpoint files safely: ``weights_only`` loading, atomic saving."""

from __future__ import annotations

import os
import tempfile
import zipfile

import torch

from fairseq_seqkd.checkpoints.compat import register_safe_globals
from fairseq_seqkd.errors import UserError


def load_checkpoint(path: str, mmap: bool = False) -> dict:
    """A fairseq checkpoint as a dict, loaded with ``weights_only=True``; bad files are UserErrors.

    ``mmap``: map the tensors' storage instead of reading it (a GB checkpoint loads at once), where
    the file is in torch's zip format; a legacy (pre-1.6) file is read whole.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint file")
    register_safe_globals()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise UserError(f"{path}: cannot load it as a torch checkpoint with weights_only=True ({e}); "
                        "is it a fairseq checkpoint written by fairseq-train?") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path}: not a fairseq checkpoint (no 'model' state dict); pass the .pt "
                        "file that fairseq-train wrote (e.g. checkpoint_last.pt)")
    return state


def save_checkpoint(state: dict, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is an ordinary file
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
