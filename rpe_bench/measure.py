"""What a trained model is measured on after training: inference time, resolution extrapolation, memory."""
import copy
import re
import resource
import statistics
import time
from pathlib import Path
from typing import Dict

import torch

from rpe_bench.launching import loader_choice
from rpe_bench.loop import batches_for, evaluate
from rpe_bench.results import ExtrapolationRecord, frames_key
from rpe_bench.splits import load_dataset


@torch.inference_mode()
def inference_ms_per_batch(model, images, repeats: int, autocast, device, compiled: bool = False) -> float:
    """Median over `repeats` batches after warm-up, in eval mode, with every STRING basis folded into the
    projections once (the deployment form), and compiled when the run trained compiled (the warm-up batches
    compile it)."""
    folded = copy.deepcopy(model).eval()
    folded.fold_position_bases_()
    if compiled:
        folded = torch.compile(folded)
    timings = []
    for index in range(repeats + 2):
        start = time.perf_counter()
        with autocast:
            folded(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= 2:
            timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def extrapolation(cfg, model, test_data, autocast, device) -> Dict[str, ExtrapolationRecord]:
    """Test accuracy at each of the dataset's larger image sizes (frames resized, patch grid grown), keyed by
    the size ("48"), and for clips at each longer clip length (more frames over the same span, more tubelets),
    keyed "t<frames>" ("t8")."""
    records = {}

    def record(key: str, data, image_size=None) -> None:
        batches = batches_for(cfg, data, device, split="test", image_size=image_size,
                              limit_batches=cfg.trainer.limit_extrapolation_batches)
        loss, accuracy, images = evaluate(model, batches, autocast)
        records[key] = ExtrapolationRecord(val_loss=loss, val_acc=accuracy, images=images)

    for size in cfg.dataset.extrapolation_sizes:
        record(str(size), test_data, size)
    for frames in cfg.dataset.get("extrapolation_frames") or []:
        record(frames_key(frames), load_dataset(cfg.dataset, loader_choice(cfg.dataset)[0], frames)[1])
    return records


PROCESS_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device) -> None:
    """Starts this job's peak afresh: a worker process that ran other jobs before would report theirs. On the
    host, Linux resets the resident-set high-water mark (VmHWM) when "5" is written to clear_refs; getrusage's
    ru_maxrss, which never resets, is the fallback elsewhere."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_memory_mb(device) -> float:
    """The peak since reset_peak_memory: device memory allocated on a GPU, the resident set on the host."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = PROCESS_STATUS.read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
