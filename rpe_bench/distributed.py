"""DistributedDataParallel from torchrun's or SLURM's environment: one process per device, rank 0 alone writes."""
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rpe_bench.config import ConfigError


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_environment() -> Processes:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a SLURM job step of several tasks (srun, or submitit with
    tasks_per_node > 1) sets SLURM_PROCID, SLURM_STEP_NUM_TASKS and SLURM_LOCALID (a batch script that did not
    go through srun is one process, whatever its --ntasks); a plain `python -m` run is one process."""
    if "RANK" in os.environ:
        return Processes(int(os.environ["RANK"]), int(os.environ.get("WORLD_SIZE", 1)),
                         int(os.environ.get("LOCAL_RANK", 0)))
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", 1)) > 1 and "SLURM_PROCID" in os.environ:
        return Processes(int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_STEP_NUM_TASKS"]),
                         int(os.environ.get("SLURM_LOCALID", 0)))
    return Processes()


def slurm_rendezvous() -> None:
    """MASTER_ADDR and MASTER_PORT for torch's env:// rendezvous in a SLURM job: the first host of the job's node
    list, and a port derived from the job id so that two jobs on one node do not collide."""
    if "MASTER_ADDR" not in os.environ:
        hosts = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True, check=True).stdout.split()
        os.environ["MASTER_ADDR"] = hosts[0]
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", 0)) % 20000))
    os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
    os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_STEP_NUM_TASKS"])
    os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))


def slurm_cpus_per_task() -> int | None:
    """The CPUs SLURM granted each task of this job (already per task: not to be divided again), or None
    outside a SLURM job."""
    value = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(value) if value else None


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available: allowed here are auto, cpu")
    return torch.device(requested)


def start(processes: Processes, device: torch.device) -> None:
    if processes.distributed and not dist.is_initialized():
        if "RANK" not in os.environ:  # a SLURM job, not torchrun: no rendezvous variables yet
            slurm_rendezvous()
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def stop(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_processes(processes: Processes, *values: torch.Tensor) -> list[torch.Tensor]:
    if not processes.distributed:
        return list(values)
    stacked = torch.stack([value.double() for value in values])
    dist.all_reduce(stacked)
    return list(stacked.unbind())


def main_output_dir(processes: Processes, output_dir) -> str:
    """Rank 0's Hydra run folder, for every rank: checkpoints are read from there on resume."""
    if not processes.distributed:
        return str(output_dir)
    holder = [str(output_dir)]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
