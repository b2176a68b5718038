"""End-of-epoch checkpoints: written atomically, loaded with `weights_only=True`, the previous one kept."""
import os
import random
from pathlib import Path

import numpy as np
import torch

from rpe_bench.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint-previous.pt"


class CheckpointError(RuntimeError):
    pass


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # weights_only loading accepts tensors and primitives, not numpy arrays.
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Every generator state is a host byte tensor, whichever device the run trains on: load checkpoints with
    map_location="cpu" (load_checkpoint's default)."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, state: dict) -> Path:
    """Temp file, then rename; the checkpoint it replaces stays as checkpoint-previous.pt."""
    folder = Path(folder)
    path = folder / CHECKPOINT_NAME
    with atomic_write(path) as temp:
        torch.save(state, temp)
        if path.exists():
            os.replace(path, folder / PREVIOUS_NAME)
    return path


# What resuming reads from a checkpoint; a file without them is as unusable as a truncated one.
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "history", "wandb_run_id")


def load_checkpoint(folder: Path) -> dict | None:
    """The latest checkpoint in `folder`, on the host, or None when there is none. A damaged one raises
    CheckpointError with one line saying what to do; nothing in the folder is changed.

    Always the host: the generator states must be host tensors, and load_state_dict moves weights and optimizer
    moments to their parameters' device while AdamW's step counters stay on the host, where reading them each
    step costs no device sync."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        problem = None if isinstance(checkpoint, dict) else f"holds a {type(checkpoint).__name__}, not a checkpoint"
        missing = [] if problem else [key for key in REQUIRED_KEYS if key not in checkpoint]
        problem = problem or (f"lacks {', '.join(missing)}" if missing else None)
    except Exception as error:  # torch raises several types for truncated or foreign files
        problem = f"is truncated or not a checkpoint ({type(error).__name__})"
    if problem is None:
        return checkpoint
    previous = Path(folder) / PREVIOUS_NAME
    earlier = (f", or move it aside and rename {previous.name} (the epoch before) to {path.name} to resume from "
               f"there" if previous.exists() else "")
    raise CheckpointError(f"checkpoint {path} {problem}: restore it, or move it aside (mv {path} "
                          f"{path}.damaged) to start this run over{earlier}")
