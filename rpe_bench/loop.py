"""One training epoch and one evaluation pass, with the batches and the learning-rate schedule they use."""
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rpe_bench import distributed
from rpe_bench.checkpoint import CHECKPOINT_NAME
from rpe_bench.data import Augment, BatchIterator, ImageFiles, StreamingBatchIterator
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


def batches_for(cfg, data, device, training: bool, image_size: int | None = None,
                shard: tuple[int, int] = (0, 1), limit_batches: int | None = None) -> BatchIterator:
    """Training batches (shuffled and augmented from the generator set each epoch) or evaluation batches, resized
    to `image_size` for resolution extrapolation. Under DDP each process takes its `shard` (rank, world size) of
    every batch. `limit_batches` overrides the trainer's train/val limit."""
    augment = cfg.dataset.augment
    if limit_batches is None:
        limit_batches = cfg.trainer.limit_train_batches if training else cfg.trainer.limit_val_batches
    options = dict(batch_size=cfg.trainer.batch_size, shuffle=training, generator=None, device=device,
                   mean=list(cfg.dataset.mean), std=list(cfg.dataset.std),
                   augment=Augment(augment.random_crop_padding, augment.horizontal_flip) if training else None,
                   limit_batches=limit_batches, output_size=image_size, shard=shard)
    if isinstance(data, ImageFiles):
        return StreamingBatchIterator(data, workers=streaming_workers(cfg), **options)
    return BatchIterator(data, **options)


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


def train_epoch(training: Training, cfg, epoch: int, run, output_dir: Path) -> EpochRecord:
    """One pass over the training batches, then evaluation; raises TrainingDiverged on a non-finite loss."""
    model, device, processes = training.forward_model, training.device, training.processes
    steps_per_epoch = len(training.train_batches)
    step = (epoch - 1) * steps_per_epoch
    model.train()
    training.train_batches.generator = epoch_generator(cfg.seed, epoch)
    progress = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}",
                    disable=not (processes.is_main and sys.stderr.isatty()), leave=False)
    loss_sum = torch.zeros((), device=device)
    correct, seen = torch.zeros((), device=device, dtype=torch.long), torch.zeros((), device=device, dtype=torch.long)
    data_seconds, epoch_start = 0.0, time.perf_counter()
    batch_iterator = iter(training.train_batches)
    while True:
        data_start = time.perf_counter()
        batch = next(batch_iterator, None)
        data_seconds += time.perf_counter() - data_start
        if batch is None:
            break
        images, labels = batch
        with training.autocast:
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.trainer.grad_clip:
            torch.nn.utils.clip_grad_norm_(training.model.parameters(), cfg.trainer.grad_clip)
        training.optimizer.step()
        training.scheduler.step()
        step += 1
        loss_sum += loss.detach() * labels.numel()
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += labels.numel()
        progress.update()
        if step % cfg.logger.log_every_steps == 0:
            step_loss = loss.item()
            if not math.isfinite(step_loss):
                raise TrainingDiverged.at(step_loss, f"epoch {epoch}, step {step}", output_dir)
            run.log({"step": step, "step_loss": step_loss, "learning_rate": training.scheduler.get_last_lr()[0]})
            progress.set_postfix(loss=f"{step_loss:.4f}")
            if progress.disable and step % PROGRESS_LINE_EVERY_STEPS == 0:
                log.info("epoch %d step %d/%d loss %.4f", epoch, step - (epoch - 1) * steps_per_epoch,
                         steps_per_epoch, step_loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    epoch_seconds = time.perf_counter() - epoch_start
    progress.close()
    loss_sum, correct, seen = (value.item() for value in
                               distributed.sum_over_processes(processes, loss_sum, correct, seen))
    if not math.isfinite(loss_sum / seen):
        raise TrainingDiverged.at(loss_sum / seen, f"epoch {epoch}", output_dir)
    val_loss, val_acc, _ = evaluate(training.model, training.test_batches, training.autocast)
    return EpochRecord(epoch=epoch, train_loss=loss_sum / seen, train_acc=correct / seen, val_loss=val_loss,
                       val_acc=val_acc, epoch_seconds=epoch_seconds, images_per_second=seen / epoch_seconds,
                       data_seconds=data_seconds, step_ms=1000 * epoch_seconds / steps_per_epoch)


@torch.inference_mode()
def evaluate(model, batches, autocast) -> tuple[float, float, int]:
    """Mean loss, accuracy and the number of images seen."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in batches:
        with autocast:
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += labels.numel()
    return loss_sum / count, correct / count, count
