"""DistributedDataParallel from torchrun's or SLURM's environment: one process per device, rank 0 alone writes."""
import os
import subprocess
from contextlib import contextmanager
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


# The parallel launcher gives each job one GPU slot through this variable (its worker processes outlive a job,
# so CUDA_VISIBLE_DEVICES, read once when CUDA starts, cannot change between jobs).
GPU_SLOT_VARIABLE = "RPE_BENCH_GPU"


def pick_device(requested: str, local_rank: int = 0) -> tuple[torch.device, str]:
    """(the device, why it was chosen). A CUDA device is the parallel launcher's GPU slot for this job, else
    the process's local rank (one process per GPU under torchrun or srun)."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available: allowed here are auto, cpu")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = (f"trainer.device={requested}" if requested == "cpu" else
               "trainer.device=auto and torch sees no CUDA device" +
               (f" (CUDA_VISIBLE_DEVICES={hidden!r})" if hidden is not None else ""))
        return torch.device("cpu"), why
    slot = os.environ.get(GPU_SLOT_VARIABLE)
    index = int(slot) if slot is not None else local_rank
    visible = torch.cuda.device_count()
    if index >= visible:
        raise ConfigError(f"GPU {index} (local rank {local_rank}) is not one of the {visible} visible: start at most "
                          f"{visible} processes per node")
    source = "the parallel launcher's GPU slot" if slot is not None else f"local rank {local_rank}"
    return torch.device("cuda", index), (f"trainer.device={requested}, {visible} GPU(s) visible, GPU {index} from "
                                         f"{source}: {torch.cuda.get_device_name(index)}")


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


def mean_over_processes(processes: Processes, value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the processes: every process gets the same number."""
    if not processes.distributed:
        return value
    total = value.detach().double().clone()
    dist.all_reduce(total)
    return total / processes.world_size


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()


@contextmanager
def main_process_first(processes: Processes):
    """The main process runs the body first (a download, say); the others wait for it, then run it too."""
    if not processes.is_main:
        barrier(processes)
    yield
    if processes.is_main:
        barrier(processes)


def main_output_dir(processes: Processes, output_dir) -> str:
    """Rank 0's Hydra run folder, for every rank: checkpoints are read from there on resume."""
    if not processes.distributed:
        return str(output_dir)
    holder = [str(output_dir)]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
