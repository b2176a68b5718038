"""What a trained model is measured on after training: inference time, resolution extrapolation, memory."""
import copy
import resource
import statistics
import time
from typing import Dict

import torch

from rpe_bench.loop import batches_for, evaluate
from rpe_bench.results import ExtrapolationRecord


@torch.inference_mode()
def inference_ms_per_batch(model, images, repeats: int, autocast, device) -> float:
    """Median over `repeats` batches after warm-up, in eval mode, with every STRING basis folded into the
    projections once (the deployment form)."""
    folded = copy.deepcopy(model).eval()
    folded.fold_position_bases_()
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
    """Test accuracy at each of the dataset's larger image sizes (images resized, patch grid grown)."""
    records = {}
    for size in cfg.dataset.extrapolation_sizes:
        batches = batches_for(cfg, test_data, device, training=False, image_size=size,
                              limit_batches=cfg.trainer.limit_extrapolation_batches)
        loss, accuracy, images = evaluate(model, batches, autocast)
        records[str(size)] = ExtrapolationRecord(val_loss=loss, val_acc=accuracy, images=images)
    return records


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
