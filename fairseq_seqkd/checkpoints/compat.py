"""Let torch's ``weights_only`` loader (the default since torch 2.6) read fairseq checkpoints.

``fairseq-train`` pickles an ``argparse.Namespace`` (and numpy scalars when ``--eval-bleu``
is on) into its checkpoints. Registering exactly those types as safe globals lets
``fairseq-generate --user-dir fairseq_seqkd`` load them with no environment variable and
without turning the safety check off.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def safe_globals() -> list:
    """The non-tensor types a fairseq checkpoint may hold."""
    types: list = [argparse.Namespace, np.ndarray, np.dtype]
    try:  # numpy >= 1.25 keeps it under numpy._core, older under numpy.core
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import _reconstruct, scalar
    types += [_reconstruct, scalar]
    # np.dtype subclasses, e.g. numpy.dtypes.Int64DType, appear when numpy scalars are pickled
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        types += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return types


def register_safe_globals() -> None:
    """Register :func:`safe_globals` with torch (a no-op on torch without the allowlist)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add(safe_globals())
