"""Which code, libraries and hardware produced a run: recorded in every results.json and W&B config, so a
published number can be tied to a commit and runs made on different machines are not silently compared."""
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from rpe_bench.launching import usable_cores
from rpe_bench.numerics import cuda_record, numerics_record

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "torchvision", "hydra-core", "omegaconf", "wandb", "numpy")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git(*arguments: str) -> Optional[str]:
    try:
        completed = subprocess.run(["git", "-C", str(PROJECT_ROOT), *arguments], capture_output=True, text=True,
                                   timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def code_version() -> Dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it; outside a checkout (an installed
    package) only the package version is known."""
    in_checkout = _git("rev-parse", "--show-toplevel") == str(PROJECT_ROOT)
    commit = _git("rev-parse", "HEAD") if in_checkout else None
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"commit": commit, "dirty": dirty, "package_version": metadata.version("rpe_bench")}


def library_versions() -> Dict[str, str]:
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in LIBRARIES}}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> Dict[str, Any]:
    described = {"type": device.type, "cpu_model": cpu_model(), "cpu_cores": usable_cores()}
    if device.type == "cuda":
        # count: the GPUs visible to the process; provenance's cuda record says how many the run used.
        described.update(name=torch.cuda.get_device_name(device), count=torch.cuda.device_count())
    else:
        described.update(name=described["cpu_model"], count=1)
    return described


def collect(device: torch.device, world_size: int, parallel_jobs: int, overrides: List[str],
            started_utc: str, trainer) -> Dict[str, Any]:
    """Everything but `finished_utc`, which the run adds when it writes its record."""
    return {
        "code": code_version(), "versions": library_versions(), "device": device_description(device),
        "threads": torch.get_num_threads(), "world_size": world_size, "parallel_jobs": parallel_jobs,
        "numerics": numerics_record(trainer),
        "started_utc": started_utc, "finished_utc": None, "overrides": list(overrides),
        **({"cuda": cuda_record(device, world_size)} if device.type == "cuda" else {}),
        **({"slurm": slurm_job()} if "SLURM_JOB_ID" in os.environ else {}),
    }


def slurm_job() -> Dict[str, Any]:
    """The SLURM job a run ran in: its id (array task included), node list, and CPUs granted per task, which
    set the threads when trainer.threads is null."""
    environment = os.environ
    array_task = environment.get("SLURM_ARRAY_TASK_ID")
    job_id = (f"{environment['SLURM_ARRAY_JOB_ID']}_{array_task}" if array_task is not None
              else environment["SLURM_JOB_ID"])
    cpus = environment.get("SLURM_CPUS_PER_TASK")
    return {"job_id": job_id, "nodes": environment.get("SLURM_JOB_NODELIST"),
            "cpus_per_task": int(cpus) if cpus else None, "tasks": int(environment.get("SLURM_NTASKS", 1))}


# What a training segment records of the process that trained it.
SEGMENT_KEYS = ("code", "versions", "device", "threads", "world_size", "parallel_jobs", "started_utc")


def training_segment(provenance: Dict[str, Any], first_epoch: int, last_epoch: int) -> Dict[str, Any]:
    """Epochs first..last of a run and the process that trained them. A run resumed elsewhere, or finished and
    then measured again by a later commit, keeps in its record which code trained each of its epochs."""
    return {"epochs": [first_epoch, last_epoch], **{key: provenance[key] for key in SEGMENT_KEYS},
            "finished_utc": utc_now()}


def unrecorded_segment(last_epoch: int) -> Dict[str, Any]:
    """Epochs 1..last_epoch of a checkpoint written before checkpoints recorded who trained them."""
    return {"epochs": [1, last_epoch], "code": None}


def _processes(item: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A run's own provenance (the process that measured it and wrote its record) and its training segments'."""
    return [item, *item.get("training", [])]


def differences(provenances: List[Optional[Dict[str, Any]]]) -> List[str]:
    """What differs between the runs' provenance (code commit, dirty tree, a library version, the device), over
    the processes that trained them as well as those that measured them, one phrase each; runs (or epochs)
    recorded without provenance are counted apart."""
    recorded = [item for item in provenances if item and item.get("code")]
    found = []
    if len(recorded) < len(provenances):
        found.append(f"provenance not recorded for {len(provenances) - len(recorded)} of {len(provenances)} runs")
    partly = sum(any(not part.get("code") for part in _processes(item)) for item in recorded)
    if partly:
        found.append(f"training provenance not recorded for some epochs of {partly} of {len(provenances)} runs")
    aspects = {
        "code commit": lambda item: item["code"]["commit"] or item["code"]["package_version"],
        "uncommitted changes": lambda item: item["code"]["dirty"],
        "device": lambda item: (item["device"]["type"], item["device"]["name"], item["device"]["count"]),
        **{f"{name} version": (lambda item, name=name: item["versions"].get(name))
           for name in ("python", *LIBRARIES)},
    }
    for aspect, value_of in aspects.items():
        values = {str(value_of(part)) for item in recorded for part in _processes(item) if part.get("code")}
        if len(values) > 1:
            found.append(f"{aspect} ({', '.join(sorted(values))})")
    # How each run computed (recorded from schema 3 on; a run without the record is not counted here).
    computed = {
        "precision": lambda item: item["numerics"]["precision"],
        "torch.compile": lambda item: item["numerics"]["compile"],
        "TF32": lambda item: "matmul {matmul}, convolution {convolution}".format(**item["numerics"]["tf32"]),
        "processes (world size)": lambda item: item.get("world_size", 1),
    }
    for aspect, value_of in computed.items():
        values = {str(value_of(item)) for item in recorded if item.get("numerics")}
        if len(values) > 1:
            found.append(f"{aspect} ({', '.join(sorted(values))})")
    return found
