"""Make the copies fairseq's ``save_checkpoint`` makes (e.g. to checkpoint_last.pt) atomic, so none is ever torn."""

from __future__ import annotations

from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

from fairseq_seqkd.io_utils import atomic_copy


class AtomicCopyPathManager(PathManager):
    """fairseq's ``PathManager`` whose ``copy`` onto a local file replaces the destination atomically."""

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if not overwrite or any(map(PathManager.path_requires_pathmanager, (src_path, dst_path))):
            return PathManager.copy(src_path, dst_path, overwrite=overwrite)  # no os.replace off local disk
        atomic_copy(src_path, dst_path)
        return True


def install_atomic_checkpoint_copies() -> None:
    """Route ``checkpoint_utils``' copies through :class:`AtomicCopyPathManager`; a second call does nothing."""
    # The seam: checkpoint_utils looks its module global ``PathManager`` up at call time, and its only
    # ``PathManager.copy`` is the one in ``save_checkpoint`` that copies the interval's first file to
    # checkpoint_last.pt / checkpoint_best.pt / ... in place. Rebinding that one name to a subclass
    # that overrides only ``copy`` changes exactly those copies: fairseq.file_io.PathManager, which the
    # trainer, the tasks (audio_pretraining copies too) and the data loaders use, stays as it is, and
    # torch_persistent_save's own tmp + rename goes through the inherited methods unchanged. Patching
    # PathManager.copy itself would change every copy in fairseq; overriding save_checkpoint would
    # duplicate 150 lines of fairseq. Only fairseq's own class is replaced, so this never stacks.
    if checkpoint_utils.PathManager is PathManager:
        checkpoint_utils.PathManager = AtomicCopyPathManager
