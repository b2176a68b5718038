"""Which code, libraries and hardware produced a run: recorded in every results.json and W&B config, so a
published number can be tied to a commit and runs made on different machines are not silently compared."""
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from rpe_bench.launching import usable_cores

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
        described.update(name=torch.cuda.get_device_name(device), count=torch.cuda.device_count())
    else:
        described.update(name=described["cpu_model"], count=1)
    return described


def collect(device: torch.device, world_size: int, parallel_jobs: int, overrides: List[str],
            started_utc: str) -> Dict[str, Any]:
    """Everything but `finished_utc`, which the run adds when it writes its record."""
    return {
        "code": code_version(), "versions": library_versions(), "device": device_description(device),
        "threads": torch.get_num_threads(), "world_size": world_size, "parallel_jobs": parallel_jobs,
        "started_utc": started_utc, "finished_utc": None, "overrides": list(overrides),
    }


def differences(provenances: List[Optional[Dict[str, Any]]]) -> List[str]:
    """What differs between the runs' provenance (code commit, dirty tree, a library version, the device),
    one phrase each; runs recorded without provenance are counted apart."""
    recorded = [item for item in provenances if item and item.get("code")]
    found = []
    if len(recorded) < len(provenances):
        found.append(f"provenance not recorded for {len(provenances) - len(recorded)} of {len(provenances)} runs")
    aspects = {
        "code commit": lambda item: item["code"]["commit"] or item["code"]["package_version"],
        "uncommitted changes": lambda item: item["code"]["dirty"],
        "device": lambda item: (item["device"]["type"], item["device"]["name"], item["device"]["count"]),
        **{f"{name} version": (lambda item, name=name: item["versions"].get(name))
           for name in ("python", *LIBRARIES)},
    }
    for aspect, value_of in aspects.items():
        values = {str(value_of(item)) for item in recorded}
        if len(values) > 1:
            found.append(f"{aspect} ({', '.join(sorted(values))})")
    return found
