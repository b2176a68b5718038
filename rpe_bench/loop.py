"""One training epoch and one evaluation pass, with the batches and the learning-rate schedule they use."""
import hashlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rpe_bench import distributed
from rpe_bench.checkpoint import CHECKPOINT_NAME
from rpe_bench.data import (Augment, BatchIterator, ImageTensors, StreamingBatchIterator, split_subset,
                            stratified_subset)
from rpe_bench.launching import usable_cores
from rpe_bench.results import EpochRecord

log = logging.getLogger("rpe_bench")
PROGRESS_LINE_EVERY_STEPS = 100


class TrainingDiverged(RuntimeError):
    @classmethod
    def at(cls, loss: float, where: str, output_dir: Path) -> "TrainingDiverged":
        checkpoint = output_dir / CHECKPOINT_NAME
        kept = (f"the last good checkpoint is kept at {checkpoint}" if checkpoint.exists()
                else "no checkpoint was written yet")
        return cls(f"training loss is {loss} at {where}; stopped: {kept}")


def evaluation_subset(cfg, data, limit_batches: Optional[int]) -> Optional[tuple[torch.Tensor, dict]]:
    """A limited evaluation's images: (indices, their record for results.json), or None for the whole split.
    Not the first N batches: a folder lists its test images class by class, so those would be a class or two.
    A class-stratified subset of N batches' worth, drawn from trainer.evaluation_subset_seed alone, the same
    for every run."""
    count = None if limit_batches is None else limit_batches * cfg.trainer.batch_size
    if count is None or count >= len(data.labels):
        return None
    seed = cfg.trainer.evaluation_subset_seed
    indices = stratified_subset(data.labels, count, seed)
    classes, counts = torch.unique(data.labels[indices], return_counts=True)
    return indices, {"seed": seed, "images": count, "of": len(data.labels),
                     "per_class": {str(int(label)): int(number) for label, number in zip(classes, counts)},
                     "indices_sha256": hashlib.sha256(indices.numpy().tobytes()).hexdigest()}


def batches_for(cfg, data, device, split: str, image_size: int | None = None,
                shard: tuple[int, int] = (0, 1), limit_batches: int | None = None) -> BatchIterator:
    """Batches of the "train" split (shuffled and augmented from the generator set each epoch) or of the "test"
    split (in order; the notebook's val metrics are measured on it), resized to `image_size` for resolution
    extrapolation. Under DDP each process takes its `shard` (rank, world size) of
    every batch. `limit_batches` overrides the trainer's train/val limit; a limited test split is its
    class-stratified subset (evaluation_subset), recorded on the iterator as `evaluation_subset`."""
    augment, train = cfg.dataset.augment, split == "train"
    if limit_batches is None:
        limit_batches = cfg.trainer.limit_train_batches if train else cfg.trainer.limit_val_batches
    subset = None if train else evaluation_subset(cfg, data, limit_batches)
    if subset is not None:
        data, limit_batches = split_subset(data, subset[0]), None
    options = dict(batch_size=cfg.trainer.batch_size, shuffle=train, generator=None, device=device,
                   mean=list(cfg.dataset.mean), std=list(cfg.dataset.std),
                   augment=Augment(augment.random_crop_padding, augment.horizontal_flip) if train else None,
                   limit_batches=limit_batches, output_size=image_size, shard=shard)
    if not isinstance(data, ImageTensors):  # files left on disk: images or clips
        batches = StreamingBatchIterator(data, workers=streaming_workers(cfg), **options)
    else:
        batches = BatchIterator(data, **options)
    batches.evaluation_subset = None if subset is None else subset[1]
    return batches


def streaming_workers(cfg) -> int:
    """dataset.workers, else half the CPUs this process was granted (the other half trains)."""
    if cfg.dataset.workers is not None:
        return cfg.dataset.workers
    return max(1, (distributed.slurm_cpus_per_task() or usable_cores()) // 2)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Order, crops and flips of an epoch depend on (seed, epoch) alone, so a resumed run sees the same batches
    and every encoding trained at one seed sees the same batches too."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def scheduler_for(optimizer, cfg, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total_steps = steps_per_epoch * cfg.trainer.epochs
    warmup_steps = round(cfg.trainer.warmup_epochs * steps_per_epoch)
    schedule = cfg.trainer.schedule.value
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps, warmup_steps, schedule))


@dataclass
class Training:
    """What one training step needs: the module to call (compiled or DDP-wrapped) and the one that owns the
    parameters, the optimizer and schedule, the batches and the numeric context."""
    model: torch.nn.Module
    forward_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_batches: BatchIterator
    test_batches: BatchIterator
    autocast: object
    device: torch.device
    processes: distributed.Processes
    # Whether this process has trained a step yet: its first steps are timed as warm-up.
    warmed_up: bool = False


class DataTimer:
    """Seconds spent producing batches. On a GPU a batch's indexing and normalising are kernels that run later
    than the host launches them, so a host clock would time only the launches: CUDA events bracket them on the
    device's stream instead (including any time the device waits for a batch), read once at the epoch's end."""

    def __init__(self, device: torch.device):
        self.on_device = device.type == "cuda"
        self.host_seconds, self.event_pairs = 0.0, []
        self._start = None

    def start(self) -> None:
        if self.on_device:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.on_device:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.event_pairs.append((self._start, end))
        else:
            self.host_seconds += time.perf_counter() - self._start

    def seconds(self) -> float:
        """After the device has been synchronised."""
        return self.host_seconds + sum(start.elapsed_time(end) for start, end in self.event_pairs) / 1000


def train_step(training: Training, images: torch.Tensor, labels: torch.Tensor,
               grad_clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step: (the loss, the number of correct predictions), both left on the device. Nothing in a
    step makes the host wait for the device (tests/test_gpu_path.py counts every such wait)."""
    coordinate_draw = training.model.draw_coordinate_augmentation(training.device)
    with training.autocast:
        logits = training.forward_model(images, coordinate_draw)
    loss = F.cross_entropy(logits.float(), labels)
    training.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(training.model.parameters(), grad_clip)
    training.optimizer.step()
    training.scheduler.step()
    return loss.detach(), (logits.detach().argmax(1) == labels).sum()


def finite_mean_loss(processes: distributed.Processes, loss: torch.Tensor, where: str, output_dir: Path) -> float:
    """The loss averaged over the processes, read once per logging interval: the one wait for the device
    between epochs. Every process gets the same number, so a non-finite loss on any of them stops them all
    with the same error instead of leaving the others to a collective's time-out."""
    step_loss = distributed.mean_over_processes(processes, loss).item()
    if not math.isfinite(step_loss):
        raise TrainingDiverged.at(step_loss, where, output_dir)
    return step_loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The first steps a process trains compile (trainer.compile) and warm up its libraries: timed apart from the
# epoch, whose times are then the steady state's.
WARMUP_STEPS = 1


def train_epoch(training: Training, cfg, epoch: int, run, output_dir: Path) -> EpochRecord:
    """One pass over the training batches, then evaluation; raises TrainingDiverged on a non-finite loss, on
    every process at once."""
    device, processes = training.device, training.processes
    steps_per_epoch = len(training.train_batches)
    step = (epoch - 1) * steps_per_epoch
    training.model.train()
    training.train_batches.generator = epoch_generator(cfg.seed, epoch)
    progress = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}",
                    disable=not (processes.is_main and sys.stderr.isatty()), leave=False)
    loss_sum = torch.zeros((), device=device)
    correct, seen = torch.zeros((), device=device, dtype=torch.long), torch.zeros((), device=device, dtype=torch.long)
    # Warm-up only where steady steps remain to be timed.
    warmup_steps = WARMUP_STEPS if not training.warmed_up and steps_per_epoch > WARMUP_STEPS else 0
    warmup_seconds, seen_in_warmup, data_timer = 0.0, torch.zeros_like(seen), DataTimer(device)
    epoch_start = time.perf_counter()
    batch_iterator = iter(training.train_batches)
    for index in range(steps_per_epoch):
        if index == warmup_steps and warmup_steps:
            synchronize(device)  # once per process, after its warm-up
            warmup_seconds, seen_in_warmup = time.perf_counter() - epoch_start, seen.clone()
            data_timer, epoch_start = DataTimer(device), time.perf_counter()
        data_timer.start()
        images, labels = next(batch_iterator)
        data_timer.stop()
        loss, step_correct = train_step(training, images, labels, cfg.trainer.grad_clip)
        step += 1
        loss_sum += loss * labels.numel()
        correct += step_correct
        seen += labels.numel()
        progress.update()
        if step % cfg.logger.log_every_steps == 0:
            step_loss = finite_mean_loss(processes, loss, f"epoch {epoch}, step {step}", output_dir)
            run.log({"step": step, "step_loss": step_loss, "learning_rate": training.scheduler.get_last_lr()[0]})
            progress.set_postfix(loss=f"{step_loss:.4f}")
            if progress.disable and step % PROGRESS_LINE_EVERY_STEPS == 0:
                log.info("epoch %d step %d/%d loss %.4f", epoch, step - (epoch - 1) * steps_per_epoch,
                         steps_per_epoch, step_loss)
    synchronize(device)
    epoch_seconds = time.perf_counter() - epoch_start
    training.warmed_up = True
    progress.close()
    steady_steps = steps_per_epoch - warmup_steps
    loss_sum, correct, seen, seen_in_warmup = (
        value.item() for value in distributed.sum_over_processes(processes, loss_sum, correct, seen, seen_in_warmup))
    if not math.isfinite(loss_sum / seen):
        raise TrainingDiverged.at(loss_sum / seen, f"epoch {epoch}", output_dir)
    val_loss, val_acc, _ = evaluate(training.model, training.test_batches, training.autocast)
    return EpochRecord(epoch=epoch, train_loss=loss_sum / seen, train_acc=correct / seen, val_loss=val_loss,
                       val_acc=val_acc, epoch_seconds=epoch_seconds,
                       images_per_second=(seen - seen_in_warmup) / epoch_seconds,
                       data_seconds=data_timer.seconds(), step_ms=1000 * epoch_seconds / steady_steps,
                       warmup_seconds=warmup_seconds, warmup_steps=warmup_steps)


@torch.inference_mode()
def evaluate(model, batches, autocast) -> tuple[float, float, int]:
    """Mean loss, accuracy and the number of images seen; the sums stay on the device until the end."""
    model.eval()
    loss_sum, correct, count = None, None, 0
    for images, labels in batches:
        with autocast:
            logits = model(images)
        # Summed in fp64, as the host's floats would: the same numbers as reading each batch's sum.
        batch_loss = F.cross_entropy(logits.float(), labels, reduction="sum").double()
        batch_correct = (logits.argmax(1) == labels).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        count += labels.numel()
    loss_sum, correct = torch.stack([loss_sum, correct.double()]).cpu().tolist()  # the one wait, at the end
    return loss_sum / count, correct / count, count
