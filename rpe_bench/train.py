"""`python -m rpe_bench.train`: the Hydra entry point, the error policy and the run's phases, top to bottom:
processes -> set-up -> resume -> fit (rpe_bench.loop) -> measure_trained (rpe_bench.measure) -> the run record."""
import dataclasses
import logging
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from rpe_bench import distributed, folder_guard, run_folder
from rpe_bench import provenance as run_provenance
from rpe_bench.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint, restore_rng_state, rng_state,
                                  save_checkpoint)
from rpe_bench.config import CONF_DIR, ConfigError, register_configs, validate
from rpe_bench.data import DatasetError
from rpe_bench.failures import record_failure
from rpe_bench.launching import loader_choice
from rpe_bench.loop import Training, batches_for, evaluation_subset, scheduler_for, train_epoch
from rpe_bench.measure import extrapolation, inference_ms_per_batch, peak_memory_mb, reset_peak_memory
from rpe_bench.model import build_model, count_parameters, parameter_groups
from rpe_bench.numerics import autocast_for, set_tf32
from rpe_bench.results import EpochRecord, RunConfigRecord, RunResult, write_result
from rpe_bench.run_folder import RunFolderInUse, RunFolderRefused, check_same_run, run_identity
from rpe_bench.splits import load_dataset
from rpe_bench.tracking import log_epoch, log_result, wandb_run

log = logging.getLogger("rpe_bench")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_processes(cfg) -> tuple[distributed.Processes, torch.device]:
    """Seeds, threads, the device and (under torchrun) the process group."""
    processes = distributed.from_environment()
    if cfg.trainer.batch_size < processes.world_size:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is smaller than the {processes.world_size} "
                          f"processes: every process needs an image of each batch; allowed: batch_size >= "
                          f"{processes.world_size}")
    seed_everything(cfg.seed)
    set_tf32(cfg.trainer.tf32)
    # Inside a SLURM job nothing may pin the process to its CPUs (no cgroups): follow the job's grant.
    threads = cfg.trainer.threads or distributed.slurm_cpus_per_task()
    if threads:
        torch.set_num_threads(threads)
    device, why = distributed.pick_device(cfg.trainer.device.value, processes.local_rank)
    log.info("device %s: %s", device, why)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    distributed.start(processes, device)
    reset_peak_memory(device)  # a worker process may have run other jobs before this one
    return processes, device


def set_up(cfg, processes: distributed.Processes, device: torch.device):
    """Data, model, optimizer and schedule: (Training, the test split for extrapolation)."""
    loader, why = loader_choice(cfg.dataset)
    log.info("%s loader: %s", loader, why)
    with distributed.main_process_first(processes):  # one process downloads, the others then read its files
        train_data, test_data = load_dataset(cfg.dataset, loader)
    train_batches = batches_for(cfg, train_data, device, split="train",
                                shard=(processes.rank, processes.world_size))
    model = build_model(cfg).to(device)
    forward_model = torch.compile(model) if cfg.trainer.compile else model
    if processes.distributed:
        # Every buffer is a constant (frequencies, masks, entry indices): nothing to broadcast each forward pass.
        forward_model = DistributedDataParallel(forward_model, device_ids=[device] if device.type == "cuda" else None,
                                                broadcast_buffers=False)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.trainer.weight_decay), lr=cfg.trainer.lr)
    training = Training(model=model, forward_model=forward_model, optimizer=optimizer,
                        scheduler=scheduler_for(optimizer, cfg, len(train_batches)), train_batches=train_batches,
                        test_batches=batches_for(cfg, test_data, device, split="test"),
                        autocast=autocast_for(device, cfg.trainer.precision.value), device=device,
                        processes=processes)
    return training, test_data


@dataclass
class Resumed:
    history: list[EpochRecord] = field(default_factory=list)
    next_epoch: int = 1
    wandb_run_id: str | None = None
    # Who trained the epochs before next_epoch (rpe_bench.provenance.training_segment), oldest first.
    training: list[dict] = field(default_factory=list)


def resume(cfg, training: Training, output_dir: Path) -> Resumed:
    """Continues from the folder's last checkpoint, if it was written by this run's config."""
    checkpoint = load_checkpoint(output_dir) if cfg.trainer.resume else None
    if checkpoint is None:
        return Resumed()
    check_same_run(output_dir, checkpoint.get("run_identity"), run_identity(cfg))
    training.model.load_state_dict(checkpoint["model"])
    training.optimizer.load_state_dict(checkpoint["optimizer"])
    training.scheduler.load_state_dict(checkpoint["scheduler"])
    restore_rng_state(checkpoint["rng"])
    log.info("resuming from %s after epoch %d", output_dir / CHECKPOINT_NAME, checkpoint["epoch"])
    return Resumed([EpochRecord(**record) for record in checkpoint["history"]], checkpoint["epoch"] + 1,
                   checkpoint["wandb_run_id"],
                   checkpoint.get("training") or [run_provenance.unrecorded_segment(checkpoint["epoch"])])


def fit(cfg, training: Training, resumed: Resumed, run, output_dir: Path,
        provenance: dict) -> tuple[list[EpochRecord], list[dict]]:
    """The epoch loop from where the folder's checkpoint left off, one checkpoint per epoch: (the history, who
    trained its epochs)."""
    history, trained_by = list(resumed.history), list(resumed.training)
    for epoch in range(resumed.next_epoch, cfg.trainer.epochs + 1):
        record = train_epoch(training, cfg, epoch, run, output_dir)
        history.append(record)
        log_epoch(run, record, peak_memory_mb(training.device))
        log.info("[epoch %d/%d] train_loss=%.4f train_acc=%.4f val_loss=%.4f val_acc=%.4f time=%.2fs "
                 "(data %.1f%%, %.0f images/s)", epoch, cfg.trainer.epochs, record.train_loss, record.train_acc,
                 record.val_loss, record.val_acc, record.epoch_seconds,
                 100 * record.data_seconds / record.epoch_seconds, record.images_per_second)
        trained_by = [*resumed.training, run_provenance.training_segment(provenance, resumed.next_epoch, epoch)]
        if training.processes.is_main:
            save_checkpoint(output_dir, {
                "model": training.model.state_dict(), "optimizer": training.optimizer.state_dict(),
                "scheduler": training.scheduler.state_dict(), "rng": rng_state(), "epoch": epoch,
                "history": [dataclasses.asdict(item) for item in history], "wandb_run_id": run.id,
                "run_identity": run_identity(cfg), "training": trained_by})
    return history, trained_by


def measure_trained(cfg, training: Training, test_data, history: list[EpochRecord], provenance: dict,
                    trained_by: list[dict]) -> RunResult:
    """After training, on the main process alone: inference time of the folded model (compiled when the run
    trained compiled), resolution extrapolation, the run record."""
    timing_images, _ = next(iter(training.test_batches))
    return RunResult.completed(
        RunConfigRecord.from_cfg(cfg), history,
        provenance={**provenance, "finished_utc": run_provenance.utc_now(), "training": trained_by},
        resolved_config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        inference_time_ms_per_batch=inference_ms_per_batch(training.model, timing_images,
                                                           cfg.trainer.inference_timing_batches,
                                                           training.autocast, training.device,
                                                           compiled=cfg.trainer.compile),
        extrapolation=extrapolation(cfg, training.model, test_data, training.autocast, training.device),
        num_parameters=count_parameters(training.model), peak_memory_mb=peak_memory_mb(training.device),
        evaluation_subsets=evaluation_subsets(cfg, training, test_data))


def evaluation_subsets(cfg, training: Training, test_data) -> dict:
    """What the limited evaluations read, for the record (rpe_bench.loop.evaluation_subset)."""
    subsets = {"val": training.test_batches.evaluation_subset}
    if cfg.dataset.extrapolation_sizes or cfg.dataset.get("extrapolation_frames"):
        found = evaluation_subset(cfg, test_data, cfg.trainer.limit_extrapolation_batches
                                  or cfg.trainer.limit_val_batches)
        subsets["extrapolation"] = found and found[1]
    return {name: subset for name, subset in subsets.items() if subset is not None}


def parallel_jobs() -> int:
    """How many jobs the sweep's launcher runs at once (1 for a single run or a sequential sweep)."""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.launcher.get("n_jobs", 1) if hydra_cfg.mode == RunMode.MULTIRUN else 1


def train(cfg: DictConfig, output_dir: Path) -> RunResult | None:
    """The run record on the main process, None on the others."""
    started = run_provenance.utc_now()
    processes, device = start_processes(cfg)
    output_dir = Path(distributed.main_output_dir(processes, output_dir))
    # Only rank 0 owns the folder; the other ranks read its checkpoint and write nothing.
    with run_folder.claimed(output_dir) if processes.is_main else nullcontext():
        training, test_data = set_up(cfg, processes, device)
        resumed = resume(cfg, training, output_dir)
        provenance = run_provenance.collect(device, processes.world_size, parallel_jobs(),
                                            list(HydraConfig.get().overrides.task), started, cfg.trainer)
        log.info("%s on %s: %d parameters, %d steps per epoch, device %s, %d process(es), %d thread(s)",
                 cfg.pos.name, cfg.dataset.name, count_parameters(training.model), len(training.train_batches),
                 device, processes.world_size, provenance["threads"])
        with wandb_run(cfg, output_dir, resumed.wandb_run_id, provenance, enabled=processes.is_main) as run:
            history, trained_by = fit(cfg, training, resumed, run, output_dir, provenance)
            result = None
            if processes.is_main:  # the others wait: their models are the same
                result = measure_trained(cfg, training, test_data, history, provenance, trained_by)
                log_result(run, result)
            distributed.barrier(processes)
        if processes.is_main:
            log.info("results in %s", write_result(output_dir, result))
    distributed.stop(processes)
    return result


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    # Under torchrun the other ranks' output_dir is the working directory (see __main__): they write nothing.
    owns_output_dir = distributed.from_environment().is_main
    try:
        validate(cfg)  # a single run was checked before Hydra wrote (folder_guard); a sweep's jobs are not
        distributed.pick_device(cfg.trainer.device.value)
        result = train(cfg, output_dir)
        if result is None:  # another process of a distributed run: rank 0 reports
            return None
    except RunFolderRefused as error:
        # The folder belongs to another run (a live one, or another config's checkpoint): no failure record there.
        # A single run puts back what Hydra wrote, except beside a live run, which is writing there.
        if not multirun:
            if not isinstance(error, RunFolderInUse):
                folder_guard.put_back()
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        log.error("job refused: %s", error)
    except (ConfigError, DatasetError, CheckpointError) as error:
        if not multirun:
            folder_guard.put_back()
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        log.error("job refused: %s", error)
        if owns_output_dir:
            record_failure(cfg, output_dir, error, list(HydraConfig.get().overrides.task), refused=True)
    except Exception as error:
        # The whole traceback goes to this job's log; in a multirun the other jobs go on.
        log.exception("run failed")
        if owns_output_dir:
            record_failure(cfg, output_dir, error, list(HydraConfig.get().overrides.task), refused=False)
        if not multirun:
            raise
    else:
        if not multirun:
            print(f"results in {output_dir}: final val acc {result.final_val_acc:.2%} "
                  f"(best {result.best_val_acc:.2%})")
        return result.best_val_acc
    return None


if __name__ == "__main__":
    if not distributed.from_environment().is_main:
        # Under torchrun only rank 0 writes a run folder; the others learn its path from rank 0.
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                     "hydra/hydra_logging=disabled"]
    main()
