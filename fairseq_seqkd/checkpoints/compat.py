"""Let torch's ``weights_only`` loader (the default since torch 2.6) read fairseq checkpoints.

``fairseq-train`` pickles an ``argparse.Namespace`` (and numpy scalars when ``--eval-bleu``
is on) into its checkpoints. Registering exactly those types as safe globals lets
``fairseq-generate --user-dir fairseq_seqkd`` load them with no environment variable and
without turning the safety check off.

With more than one data-parallel rank, fairseq reads a checkpoint on rank 0 only and sends the
loaded state to the others (:func:`install_trusted_checkpoint_broadcast`); that message, not a
file, is what the other ranks unpickle with the trusted loader.
"""

from __future__ import annotations

import argparse
import io

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


def install_trusted_checkpoint_broadcast() -> None:
    """Let the data-parallel ranks other than 0 unpickle the checkpoint that rank 0 sends them; a second
    call does nothing.

    fairseq 0.12's ``trainer.load_checkpoint`` (every resume and ``--finetune-from-model``) loads the file
    on rank 0 and sends the state with ``distributed_utils.broadcast_object``, whose receiving half runs
    a bare ``torch.load``: since torch 2.6 that is ``weights_only=True``, and the message holds types no
    file holds (omegaconf's ``DictConfig`` and its node and metadata classes: fairseq turns the file's
    plain ``cfg`` dict into one after loading; fairseq's ``_TensorPlaceholder``), so every rank but 0
    fails with ``Unsupported global: GLOBAL omegaconf.dictconfig.DictConfig``.
    """
    # Why the trusted loader for this message rather than more safe globals: the file itself was read
    # on rank 0 with weights_only=True (that protection stays), and the bytes come from that rank of
    # the same job over the process group, a channel fairseq already trusts with plain pickle
    # (``all_gather_list`` unpickles every rank's logging outputs at every update). An allowlist here
    # would protect nothing and would have to follow whatever the state holds (fairseq makes the
    # DictConfig with allow_objects, so it may hold any object, e.g. the Namespaces of an old
    # args-style checkpoint; a sharded optimizer's or FSDP's state; another task's checkpoint dict);
    # and widening torch's global allowlist would also widen it for files on disk.
    # The seam: broadcast_object looks its module global ``_broadcast_object_slow`` up at call time.
    # The sending half stays fairseq's; the receiving half is fairseq's but for the loader.
    from fairseq.distributed import utils as dist_utils

    fairseq_slow = dist_utils._broadcast_object_slow
    if getattr(fairseq_slow, "trusted_receive", False):
        return

    def broadcast_object_slow(obj, src_rank: int, group, dist_device: torch.device):
        if dist_utils.get_rank(group) == src_rank:
            return fairseq_slow(obj, src_rank, group, dist_device)
        length = torch.LongTensor([0]).to(dist_device)
        dist_utils.broadcast(length, src=src_rank, group=group)
        buffer = torch.ByteTensor(int(length.item())).to(dist_device)
        dist_utils.broadcast(buffer, src=src_rank, group=group)
        return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=False)

    broadcast_object_slow.trusted_receive = True
    dist_utils._broadcast_object_slow = broadcast_object_slow
