"""DistributedDataParallel from torchrun's environment: one process per device, rank 0 alone writes."""
import os
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
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a plain `python -m` run is one process."""
    return Processes(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available: allowed here are auto, cpu")
    return torch.device(requested)


def start(processes: Processes, device: torch.device) -> None:
    if processes.distributed and not dist.is_initialized():
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
