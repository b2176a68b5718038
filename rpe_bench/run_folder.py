"""A run folder belongs to one config and one process: a lock held while a run is live, and a check that a
checkpoint found there was written by the same model, dataset and encoding before it is resumed."""
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from omegaconf import OmegaConf

from rpe_bench.config import ConfigError

LOCK_NAME = ".run.lock"


class RunFolderRefused(ConfigError):
    """The folder holds another run: nothing in it may be touched (no failure record, no clean-up)."""


class RunFolderInUse(RunFolderRefused):
    """A live run holds the folder: not even a snapshot of it may be put back, as that run is writing there."""


def live_run_refusal(folder: Path, holder: str) -> RunFolderInUse:
    return RunFolderInUse(f"run folder {folder} is in use by a live run (process {holder or 'unknown'}); "
                            f"wait for it to finish or choose another hydra.run.dir")


def refuse_if_live(folder: Path) -> None:
    """Raises RunFolderRefused when a live run holds `folder`'s lock; creates nothing."""
    path = Path(folder) / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise live_run_refusal(folder, os.pread(descriptor, 32, 0).decode(errors="replace").strip()) from None
    finally:
        os.close(descriptor)


@contextmanager
def claimed(folder: Path) -> Iterator[None]:
    """Holds an exclusive lock on the folder for the block. The kernel drops a flock when its process dies, so
    a run killed by SIGKILL or a scheduler leaves nothing that blocks the resume."""
    path = Path(folder) / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise live_run_refusal(folder, os.pread(descriptor, 32, 0).decode(errors="replace").strip()) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def run_identity(cfg) -> Dict[str, Any]:
    """What a checkpoint's weights mean: the data they were trained on, the model shape and the encoding.
    Training settings (epochs, lr, batch limits) may change between sittings; these may not."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    dataset, model, position = container["dataset"], container["model"], container["pos"]
    # Clips add their shape in time (and moving_mnist the clips drawn); an image run's identity is what it was, so
    # folders made before clips existed still resume.
    clip_keys = ("frames", "tubelet_frames") if dataset.get("frames") is not None else ()
    clip_keys += ("moving",) if dataset["name"] == "moving_mnist" else ()
    return {
        "dataset": {key: dataset[key] for key in ("name", "image_size", "channels", "num_classes", *clip_keys)},
        "model": model,
        "pos": {key: value for key, value in position.items() if key != "coordinate_augmentation"},
        "seed": container["seed"],
    }


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_run(folder: Path, saved: Optional[Dict[str, Any]], current: Dict[str, Any]) -> None:
    """Refuses to resume a checkpoint written by another config, naming what differs. Only what the checkpoint
    recorded is compared: a key the identity gained later (a clip's frames) is absent from folders made before,
    which still resume."""
    if saved is None:
        return
    before, now = _flatten(saved), _flatten(current)
    differing = [key for key in sorted(before) if before[key] != now.get(key)]
    if differing:
        described = "; ".join(f"{key} is {before.get(key)!r} there and {now.get(key)!r} here"
                              for key in differing[:3])
        more = f" (and {len(differing) - 3} more)" if len(differing) > 3 else ""
        raise RunFolderRefused(f"run folder {folder} holds a checkpoint of another run: {described}{more}; "
                               f"choose another hydra.run.dir")
