"""How a run computes: bf16 autocast or fp32, TF32 for fp32 matmuls and convolutions, torch.compile. Set once per
process and recorded, so the report can tell runs that computed differently apart."""
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional

import torch


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def autocast_off(device_type: str):
    """Autocast off for a block that must run in the tensors' own precision; a device autocast does not know
    (`meta`, where tests count host syncs) has none to turn off."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions, both on or both off. torch's own defaults differ (matmuls in
    full fp32, convolutions in TF32), so a run that leaves them mixes the two silently."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9; mixing in the old flags is refused
        precision = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_in_effect() -> Dict[str, bool]:
    """What fp32 matmuls and convolutions run in now, read back from torch."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return {"matmul": torch.backends.cuda.matmul.fp32_precision == "tf32",
                "convolution": torch.backends.cudnn.conv.fp32_precision == "tf32"}
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "convolution": torch.backends.cudnn.allow_tf32}


def numerics_record(trainer) -> Dict[str, Any]:
    """The settings that change a run's numbers on one machine, for provenance."""
    return {"precision": str(getattr(trainer.precision, "value", trainer.precision)), "compile": bool(trainer.compile),
            "tf32": tf32_in_effect()}


def nvidia_driver_version() -> Optional[str]:
    try:
        first_line = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024"
    words = first_line.split()
    return next((word for word in words if word.count(".") >= 1 and word.replace(".", "").isdigit()), None)


def cuda_record(device: torch.device, world_size: int) -> Dict[str, Any]:
    """CUDA, cuDNN and driver versions, and the GPUs this run used: one per process (this process's is named),
    out of the ones visible to it."""
    return {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "driver": nvidia_driver_version(),
            "gpu": torch.cuda.get_device_name(device), "gpu_index": device.index, "gpus_used": world_size,
            "gpus_visible": torch.cuda.device_count()}
