"""Save and stop on a cluster's warning signal: a training ended at its time limit loses nothing.

A SLURM job asks for a signal some minutes before its time limit (``sbatch --signal=URG@300``).
fairseq-train saves nothing on a signal, so a job killed at its limit loses every update since its
last interval checkpoint. Here the translation_kd task hangs on that signal: at the next update
every rank stops together, fairseq validates and saves ``checkpoint_last.pt`` as it does at the end
of a training (its own ``--stop-time-hours`` path), and the task writes ``stopped_on_signal.json``
into the save folder (:func:`fairseq_seqkd.layout.stopped_on_signal`), so that whoever ran the
training (the pipeline's jobs.train) knows it is not finished and fails the job: Snakemake's retry
resubmits it and it resumes from that checkpoint.

SIGURG, because its default action is to be ignored: SLURM signals every process of a job's steps
(the Snakemake process that runs the job, the data-loading workers), and only fairseq-train acts on
it. By hand: ``kill -URG <pid of fairseq-train>`` saves and stops a training the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import torch

from fairseq_seqkd.io_utils import atomic_write_json
from fairseq_seqkd.layout import stopped_on_signal

logger = logging.getLogger(__name__)

STOP_SIGNAL = signal.SIGURG

_requested = threading.Event()
_installed = False


def _on_signal(signum, frame) -> None:
    _requested.set()


def install() -> None:
    """Handle :data:`STOP_SIGNAL` in this process and stop fairseq-train's loop on it (once; only from
    the main thread, where Python can handle signals, and only inside fairseq-train)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    # fairseq-train's module: imported by the console script, or run as python -m fairseq_cli.train
    loops = [m for m in (sys.modules.get("fairseq_cli.train"), sys.modules.get("__main__"))
             if m is not None and hasattr(m, "validate_and_save") and hasattr(m, "train")]
    if not loops:
        return  # not fairseq-train (fairseq-generate, a test building a task)
    _installed = True
    signal.signal(STOP_SIGNAL, _on_signal)
    for module in loops:
        module.validate_and_save = _stopping(module.validate_and_save)


def stop_requested(trainer) -> bool:
    """Whether any rank got the signal: one all-reduce of a flag, so all ranks stop at the same update."""
    flag = _requested.is_set()
    if getattr(trainer, "data_parallel_world_size", 1) > 1:
        from fairseq.distributed import utils as distributed_utils

        t = torch.tensor([float(flag)], device=trainer.device)
        flag = bool(distributed_utils.all_reduce(t, group=trainer.data_parallel_process_group).item() > 0)
    return flag


def _stopping(validate_and_save):
    def wrapped(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch):
        stop = stop_requested(trainer)
        if stop:
            # fairseq's own early stop: validate, save checkpoint_last.pt, leave the training loop
            logger.warning(f"got SIG{STOP_SIGNAL.name[3:]} (a cluster's warning before its time limit): saving "
                           f"a checkpoint at update {trainer.get_num_updates()} and stopping; resume to go on")
            cfg.optimization.stop_time_hours = 1e-12
        valid_losses, should_stop = validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch)
        if stop and trainer.is_data_parallel_master:
            atomic_write_json(stopped_on_signal(cfg.checkpoint.save_dir), {
                "signal": STOP_SIGNAL.name, "num_updates": trainer.get_num_updates(),
                "checkpoint": os.path.join(cfg.checkpoint.save_dir, "checkpoint_last.pt")})
        return valid_losses, should_stop or stop

    return wrapped


class StopSignalMixin:
    """Task mixin: fairseq-train saves and stops on :data:`STOP_SIGNAL` (installed at the first epoch)."""

    def begin_epoch(self, epoch, model):
        """fairseq hook: hang on the signal before the first update of this run."""
        super().begin_epoch(epoch, model)
        install()
