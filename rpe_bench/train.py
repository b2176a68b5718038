"""`python -m rpe_bench.train`: the Hydra entry point and the training loop, top to bottom."""
import copy
import logging
import math
import random
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rpe_bench import distributed
from rpe_bench.checkpoint import CHECKPOINT_NAME, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from rpe_bench.config import ConfigError, register_configs, validate
from rpe_bench.data import Augment, BatchIterator, DatasetNotFoundError, load_splits
from rpe_bench.model import build_model, count_parameters, parameter_groups
from rpe_bench.tracking import notebook_config, open_wandb_run, write_json_atomic

log = logging.getLogger("rpe_bench")
PROGRESS_LINE_EVERY_STEPS = 100
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class TrainingDiverged(RuntimeError):
    @classmethod
    def at(cls, loss: float, where: str, output_dir: Path) -> "TrainingDiverged":
        checkpoint = output_dir / CHECKPOINT_NAME
        kept = (f"the last good checkpoint is kept at {checkpoint}" if checkpoint.exists()
                else "no checkpoint was written yet")
        return cls(f"training loss is {loss} at {where}; stopped: {kept}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available: allowed here are auto, cpu")
    return torch.device(requested)


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def batches_for(cfg, data, device, training: bool, image_size: int | None = None,
                shard: tuple[int, int] = (0, 1), limit_batches: int | None = None) -> BatchIterator:
    """Training batches (shuffled and augmented from the generator set each epoch) or evaluation batches, resized
    to `image_size` for resolution extrapolation. Under DDP each process takes its `shard` (rank, world size) of
    every batch. `limit_batches` overrides the trainer's train/val limit."""
    augment = cfg.dataset.augment
    if limit_batches is None:
        limit_batches = cfg.trainer.limit_train_batches if training else cfg.trainer.limit_val_batches
    return BatchIterator(
        data, batch_size=cfg.trainer.batch_size, shuffle=training, generator=None, device=device,
        mean=list(cfg.dataset.mean), std=list(cfg.dataset.std),
        augment=Augment(augment.random_crop_padding, augment.horizontal_flip) if training else None,
        limit_batches=limit_batches, output_size=image_size, shard=shard)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Order, crops and flips of an epoch depend on (seed, epoch) alone, so a resumed run sees the same batches."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


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


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: DictConfig, output_dir: Path) -> dict:
    processes = distributed.from_environment()
    seed_everything(cfg.seed)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    device = pick_device(cfg.trainer.device.value)
    if device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    distributed.start(processes, device)
    output_dir = Path(distributed.main_output_dir(processes, output_dir))
    autocast = autocast_for(device, cfg.trainer.precision.value)
    train_data, test_data = load_splits(cfg.dataset.name, cfg.dataset.root, cfg.dataset.download,
                                        cfg.dataset.image_size, cfg.dataset.channels)
    train_batches = batches_for(cfg, train_data, device, training=True,
                                shard=(processes.rank, processes.world_size))
    test_batches = batches_for(cfg, test_data, device, training=False)

    model = build_model(cfg).to(device)
    forward_model = torch.compile(model) if cfg.trainer.compile else model
    if processes.distributed:
        forward_model = DistributedDataParallel(forward_model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.trainer.weight_decay), lr=cfg.trainer.lr)
    steps_per_epoch = len(train_batches)
    total_steps = steps_per_epoch * cfg.trainer.epochs
    warmup_steps = round(cfg.trainer.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps, warmup_steps, cfg.trainer.schedule.value))

    history, start_epoch, run_id = [], 1, None
    checkpoint = load_checkpoint(output_dir, map_location=device) if cfg.trainer.resume else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        restore_rng_state(checkpoint["rng"])
        history, start_epoch, run_id = checkpoint["history"], checkpoint["epoch"] + 1, checkpoint["wandb_run_id"]
        log.info("resuming from %s after epoch %d", output_dir / CHECKPOINT_NAME, checkpoint["epoch"])

    num_parameters = count_parameters(model)
    log.info("%s on %s: %d parameters, %d steps per epoch, device %s, %d process(es)", cfg.pos.name,
             cfg.dataset.name, num_parameters, steps_per_epoch, device, processes.world_size)
    with open_wandb_run(cfg, output_dir, run_id, enabled=processes.is_main) as run:
        run.summary["num_parameters"] = num_parameters
        step = (start_epoch - 1) * steps_per_epoch
        for epoch in range(start_epoch, cfg.trainer.epochs + 1):
            forward_model.train()
            train_batches.generator = epoch_generator(cfg.seed, epoch)
            progress = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}",
                            disable=not (processes.is_main and sys.stderr.isatty()), leave=False)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen, data_seconds = torch.zeros((), device=device, dtype=torch.long), 0.0
            epoch_start = time.perf_counter()
            batch_iterator = iter(train_batches)
            while True:
                data_start = time.perf_counter()
                batch = next(batch_iterator, None)
                data_seconds += time.perf_counter() - data_start
                if batch is None:
                    break
                images, labels = batch
                with autocast:
                    logits = forward_model(images)
                loss = F.cross_entropy(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.trainer.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                loss_sum += loss.detach() * labels.numel()
                correct += (logits.detach().argmax(1) == labels).sum()
                seen += labels.numel()
                progress.update()
                if step % cfg.logger.log_every_steps == 0:
                    step_loss = loss.item()
                    if not math.isfinite(step_loss):
                        raise TrainingDiverged.at(step_loss, f"epoch {epoch}, step {step}", output_dir)
                    run.log({"step": step, "step/train_loss": step_loss, "step/lr": scheduler.get_last_lr()[0]})
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
            train_loss, train_acc = loss_sum / seen, correct / seen
            if not math.isfinite(train_loss):
                raise TrainingDiverged.at(train_loss, f"epoch {epoch}", output_dir)
            val_loss, val_acc, _ = evaluate(model, test_batches, autocast)
            record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                      "val_acc": val_acc, "epoch_seconds": epoch_seconds, "images_per_second": seen / epoch_seconds,
                      "data_seconds": data_seconds, "step_ms": 1000 * epoch_seconds / steps_per_epoch}
            history.append(record)
            run.log({"epoch": epoch, "train/loss": train_loss, "train/acc": train_acc, "val/loss": val_loss,
                     "val/acc": val_acc, "time/epoch_seconds": epoch_seconds, "time/step_ms": record["step_ms"],
                     "time/images_per_second": record["images_per_second"],
                     "time/data_fraction": data_seconds / epoch_seconds,
                     "memory/peak_mb": peak_memory_mb(device)})
            log.info("[epoch %d/%d] train_loss=%.4f train_acc=%.4f val_loss=%.4f val_acc=%.4f time=%.2fs "
                     "(data %.1f%%, %.0f images/s)", epoch, cfg.trainer.epochs, train_loss, train_acc, val_loss,
                     val_acc, epoch_seconds, 100 * data_seconds / epoch_seconds, record["images_per_second"])
            if processes.is_main:
                save_checkpoint(output_dir, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": rng_state(), "epoch": epoch, "history": history,
                    "wandb_run_id": run.id})

        timing_images, _ = next(iter(test_batches))
        inference_ms = inference_ms_per_batch(model, timing_images, cfg.trainer.inference_timing_batches,
                                              autocast, device)
        extrapolation = {}
        for size in cfg.dataset.extrapolation_sizes:
            batches = batches_for(cfg, test_data, device, training=False, image_size=size,
                                  limit_batches=cfg.trainer.limit_extrapolation_batches)
            loss, acc, images = evaluate(model, batches, autocast)
            extrapolation[str(size)] = {"val_loss": loss, "val_acc": acc, "images": images}
            run.summary[f"extrapolation/{size}/val_acc"] = acc

        last = history[-1]
        results = {
            "config": notebook_config(cfg),
            "resolved_config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            "status": "completed", "error": None,
            "final_train_loss": last["train_loss"], "final_train_acc": last["train_acc"],
            "final_val_loss": last["val_loss"], "final_val_acc": last["val_acc"],
            "best_val_acc": max(record["val_acc"] for record in history),
            "avg_epoch_time_sec": statistics.mean(record["epoch_seconds"] for record in history),
            "inference_time_ms_per_batch": inference_ms,
            "num_parameters": num_parameters,
            "data_time_fraction": sum(r["data_seconds"] for r in history) / sum(r["epoch_seconds"] for r in history),
            "peak_memory_mb": peak_memory_mb(device),
            "processes": processes.world_size,
            "history": history,
            "extrapolation": extrapolation,
        }
        run.summary.update({key: results[key] for key in (
            "final_train_loss", "final_train_acc", "final_val_loss", "final_val_acc", "best_val_acc",
            "avg_epoch_time_sec", "inference_time_ms_per_batch", "data_time_fraction", "peak_memory_mb")})
        if processes.is_main:
            write_json_atomic(output_dir / "results.json", results)
            log.info("results in %s", output_dir / "results.json")
    distributed.stop(processes)
    return results


def discard_hydra_files(output_dir: Path) -> None:
    """A refused config must leave nothing behind: remove what Hydra wrote before the task started."""
    for path in (output_dir / ".hydra").glob("*"):
        path.unlink()
    for path in [output_dir / ".hydra", *output_dir.glob("*.log")]:
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
    for folder in (output_dir, output_dir.parent):
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()


def record_failure(cfg, output_dir: Path, error: BaseException) -> None:
    write_json_atomic(output_dir / "results.json", {
        "config": notebook_config(cfg), "status": "failed", "error": f"{type(error).__name__}: {error}"})


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    # Under torchrun the other ranks' output_dir is the working directory (see __main__): they write nothing.
    owns_output_dir = distributed.from_environment().is_main
    try:
        validate(cfg)
        pick_device(cfg.trainer.device.value)
        return train(cfg, output_dir)["best_val_acc"]
    except (ConfigError, DatasetNotFoundError) as error:
        if not multirun:
            if owns_output_dir:
                discard_hydra_files(output_dir)
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        log.error("job refused: %s", error)
        if owns_output_dir:
            record_failure(cfg, output_dir, error)
    except Exception as error:
        # The whole traceback goes to this job's log; in a multirun the other jobs go on.
        log.exception("run failed")
        if owns_output_dir:
            record_failure(cfg, output_dir, error)
        if not multirun:
            raise
    return None


if __name__ == "__main__":
    if not distributed.from_environment().is_main:
        # Under torchrun only rank 0 writes a run folder; the others learn its path from rank 0.
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                     "hydra/hydra_logging=disabled"]
    main()
