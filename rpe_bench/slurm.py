"""SLURM sweeps (`hydra/launcher=slurm`): resources asked for from what the runs need, checked against what the
partition's nodes offer before anything is submitted, and which jobs died without a result.

Requests left null in conf/hydra/launcher/slurm.yaml are filled in here: GPUs only for `trainer.device=cuda`,
CPUs per task from `trainer.threads` (else DEFAULT_CPUS_PER_TASK, lowered to what the largest node has), memory
from the memory estimate of rpe_bench/launching.py. A request no node of the partition can meet would sit
PENDING forever: it is refused with one line naming the resource, the request and the largest node."""
import math
import subprocess
from dataclasses import dataclass
from typing import Optional

from rpe_bench.launching import job_memory_bytes

DEFAULT_CPUS_PER_TASK = 4
# Memory asked for beyond the estimate: the estimate is an upper bound for one process, rounded up to whole GB.
MEMORY_MARGIN_GB = 1


class SlurmUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Node:
    cpus: int
    memory_mb: int
    gpus: int


def gpus_in(gres: str) -> int:
    """GPUs in sinfo's %G column: "gpu:2", "gpu:a100:4(S:0-1)", "(null)"."""
    total = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def partition_nodes(partition: Optional[str]) -> list[Node]:
    """The nodes of `partition` (None: the cluster's default partition), as sinfo describes them."""
    try:
        listing = subprocess.run(["sinfo", "-h", "-N", "-o", "%P %c %m %G"], capture_output=True, text=True,
                                 timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise SlurmUnavailable(f"sinfo failed ({error}): is this a SLURM cluster's login node?") from None
    nodes = []
    for line in listing.splitlines():
        name, cpus, memory, gres = line.split(maxsplit=3)
        default = name.endswith("*")
        if (partition is None and default) or name.rstrip("*") == partition:
            nodes.append(Node(int(cpus), int(memory.rstrip("+")), gpus_in(gres)))
    return nodes


def filled_request(params: dict, job_configs: list) -> dict:
    """The launcher's parameters with null GPUs, CPUs and memory replaced by what the sweep's jobs need."""
    request = dict(params)
    tasks = request.get("tasks_per_node") or 1
    if request.get("gpus_per_node") is None:
        uses_gpus = any(str(getattr(cfg.trainer.device, "value", cfg.trainer.device)) == "cuda" for cfg in job_configs)
        request["gpus_per_node"] = tasks if uses_gpus else 0
    if request.get("cpus_per_task") is None:
        threads = [cfg.trainer.threads for cfg in job_configs if cfg.trainer.get("threads")]
        request["cpus_per_task"] = max(threads) if threads else None  # lowered to the nodes below
    if request.get("mem_gb") is None:
        per_task = max(job_memory_bytes(cfg) for cfg in job_configs) / 2**30
        request["mem_gb"] = math.ceil(per_task * tasks) + MEMORY_MARGIN_GB
    return request


def fit_to_nodes(request: dict, nodes: list[Node]) -> dict:
    """CPUs per task, where neither the launcher nor trainer.threads set it: the default, lowered to the
    largest node's share per task."""
    if request["cpus_per_task"] is not None or not nodes:
        return {**request, "cpus_per_task": request["cpus_per_task"] or DEFAULT_CPUS_PER_TASK}
    tasks = request.get("tasks_per_node") or 1
    largest = max(node.cpus for node in nodes)
    return {**request, "cpus_per_task": max(1, min(DEFAULT_CPUS_PER_TASK, largest // tasks))}


def request_refusal(request: dict, nodes: list[Node], partition: Optional[str]) -> Optional[str]:
    """One line naming the first resource no node of the partition can give, or None when a node fits."""
    where = f"partition {partition}" if partition else "the default partition"
    if not nodes:
        return f"hydra.launcher.partition={partition}: {where} has no nodes (sinfo lists none)"
    tasks = request.get("tasks_per_node") or 1
    cpus, memory_mb, gpus = request["cpus_per_task"] * tasks, request["mem_gb"] * 1024, request["gpus_per_node"]
    if any(node.cpus >= cpus and node.memory_mb >= memory_mb and node.gpus >= gpus for node in nodes):
        return None
    checks = [
        ("cpus_per_task", cpus, max(node.cpus for node in nodes), "CPUs",
         f"hydra.launcher.cpus_per_task={request['cpus_per_task']} x tasks_per_node={tasks}"),
        ("mem_gb", memory_mb, max(node.memory_mb for node in nodes), "MB of memory",
         f"hydra.launcher.mem_gb={request['mem_gb']}"),
        ("gpus_per_node", gpus, max(node.gpus for node in nodes), "GPUs",
         f"hydra.launcher.gpus_per_node={gpus}"),
    ]
    for _, needed, largest, unit, setting in checks:
        if needed > largest:
            return (f"{setting} asks for {needed} {unit} per node, but the largest node of {where} has {largest}: "
                    f"no job could ever start; lower it, or choose another hydra.launcher.partition")
    return (f"no node of {where} has {cpus} CPUs, {memory_mb} MB and {gpus} GPUs at once: lower "
            f"hydra.launcher.cpus_per_task, mem_gb or gpus_per_node")


def queued_job_ids() -> Optional[set[str]]:
    """The ids SLURM still knows as pending or running, array tasks one by one ("123_4"); None when squeue
    cannot be asked (then nothing is judged dead)."""
    try:
        listing = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60,
                                 check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line.strip() for line in listing.splitlines() if line.strip()}
