"""fairseq's ranks found from ``srun`` or ``torchrun`` on a machine without CUDA (CPU ranks over gloo).

fairseq 0.12 finds the ranks of a distributed training from the launcher's environment: SLURM's
inside an ``srun`` step (with ``--distributed-port``), or torchrun's (MASTER_ADDR, RANK, WORLD_SIZE).
Both paths also pick each rank's CUDA device, and without CUDA both fail: under ``srun`` every rank
but the first of a node calls ``torch.cuda.set_device(SLURM_LOCALID)``, under torchrun the rank is
taken modulo ``torch.cuda.device_count()``, which is 0. Without CUDA there is no device to pick:
:func:`install_cpu_rank_init` keeps fairseq's rendezvous, ranks and world size and leaves the device
out (every task of the step is one rank). With CUDA, fairseq's own code runs unchanged.

Also, under ``srun`` without ``--distributed-port`` (fairseq would dial port -1), the port is the one
fairseq itself derives from the SLURM job id for a single node: every task of the job agrees on it,
and two jobs on one node differ.
"""

from __future__ import annotations

import os
import random


def slurm_job_port(job_id: str) -> int:
    """The rendezvous port of a SLURM job, as fairseq's single-node start-up derives it from the job id."""
    return random.Random(int(job_id)).randint(10000, 60000)


def install_cpu_rank_init() -> None:
    """Make fairseq's srun and torchrun start-up work without CUDA; a second call does nothing."""
    import torch
    from fairseq.distributed import utils as dist_utils

    # The seams: infer_init_method looks both module globals up at call time.
    fairseq_slurm = dist_utils._infer_slurm_init
    fairseq_launch = dist_utils._infer_torch_distributed_launch_init
    if getattr(fairseq_slurm, "cpu_ranks", False):
        return

    def infer_slurm_init(cfg, num_pipelines_per_node) -> bool:
        if cfg.distributed_port <= 0 and os.environ.get("SLURM_JOB_ID", "").isdecimal() \
                and "SLURM_STEP_ID" in os.environ:
            cfg.distributed_port = slurm_job_port(os.environ["SLURM_JOB_ID"])
        found = fairseq_slurm(cfg, num_pipelines_per_node)
        if found and not torch.cuda.is_available():
            # one rank per task of the step (fairseq assumes one process per node spawning one per GPU
            # when a node runs one task), and no device to select
            cfg.distributed_rank = int(os.environ["SLURM_PROCID"])
            cfg.distributed_world_size = int(os.environ["SLURM_NTASKS"])
            cfg.distributed_no_spawn = True
            cfg.device_id = 0
        return found

    def infer_torch_distributed_launch_init(cfg) -> None:
        if torch.cuda.is_available():
            return fairseq_launch(cfg)
        cfg.distributed_init_method = "env://"
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = 0
        cfg.distributed_no_spawn = True  # the launcher started the processes

    infer_slurm_init.cpu_ranks = True
    dist_utils._infer_slurm_init = infer_slurm_init
    dist_utils._infer_torch_distributed_launch_init = infer_torch_distributed_launch_init
