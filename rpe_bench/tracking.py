"""The W&B side of a run (offline unless a key is configured): its identity, config and metrics, named as in
the run record (rpe_bench.results)."""
import dataclasses
import logging
import netrc
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from rpe_bench.results import EPOCH_FIELDS, EpochRecord, RunConfigRecord, RunResult, extrapolation_metric

log = logging.getLogger("rpe_bench")


def has_wandb_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if has_wandb_api_key() else "offline"
    return mode


def sweep_group(sweep_dir) -> str:
    """The W&B group of a sweep's runs, from its folder's last two parts (multirun/<date>/<time>)."""
    return f"sweep-{'_'.join(Path(sweep_dir).parts[-2:])}"


def run_labels(cfg) -> dict:
    """Group, name and tags: a multirun's jobs share the sweep's group; a single run is its own group."""
    hydra_cfg = HydraConfig.get()
    overrides = [item for item in hydra_cfg.overrides.task if not item.startswith("hydra")]
    name = ",".join(overrides) or "defaults"
    if hydra_cfg.mode == RunMode.MULTIRUN:
        group = sweep_group(hydra_cfg.sweep.dir)
        name = f"{hydra_cfg.job.num}:{name}"
    else:
        group = f"run-{'_'.join(Path(hydra_cfg.runtime.output_dir).parts[-2:])}"
    record = RunConfigRecord.from_cfg(cfg)
    tags = [f"pos_variant={record.pos_variant}", f"dataset={record.dataset}", f"coordinates={record.coordinates}"]
    if record.f_sparse is not None:
        tags.append(f"f_sparse={record.f_sparse}")
    return {"group": cfg.logger.group or group, "name": name, "tags": tags + list(cfg.logger.tags)}


def open_wandb_run(cfg, output_dir: Path, run_id: str | None, provenance: dict, enabled: bool = True):
    """A W&B run for this job, resumed when `run_id` names the one a checkpoint recorded; a disabled run
    (logging nothing) for processes other than rank 0. Its config's top level is the run record's `config`
    (the keys to group and filter by), with the provenance and the full resolved config beside it."""
    labels = run_labels(cfg)
    config = {**dataclasses.asdict(RunConfigRecord.from_cfg(cfg)), "provenance": provenance,
              "resolved_config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)}
    mode = resolve_mode(cfg.logger.mode.value) if enabled else "disabled"
    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=labels["group"],
                     job_type="train", name=labels["name"], tags=labels["tags"], config=config,
                     dir=str(output_dir), mode=mode, id=run_id, resume="allow" if run_id else None,
                     reinit="finish_previous")
    run.define_metric("step")
    for metric in ("step_loss", "learning_rate"):
        run.define_metric(metric, step_metric="step")
    run.define_metric("epoch")
    for metric in EPOCH_FIELDS[1:]:
        run.define_metric(metric, step_metric="epoch")
    run.define_metric("val_acc", step_metric="epoch", summary="max")
    return run


@contextmanager
def wandb_run(cfg, output_dir: Path, run_id: str | None, provenance: dict, enabled: bool = True) -> Iterator:
    """`open_wandb_run` for the block, finished when it ends. When the block ends by an exception or an exit (a
    SLURM preemption exits from inside training), a W&B service that died with the job's other processes must
    not replace what ended it: that error is logged, and the original goes on."""
    run = open_wandb_run(cfg, output_dir, run_id, provenance, enabled)
    try:
        yield run
    except BaseException:
        try:
            run.finish(exit_code=1)
        except Exception as error:
            log.warning("W&B could not finish run %s (%s: %s); its local files keep what was logged", run.id,
                        type(error).__name__, error)
        raise
    run.finish()


def log_epoch(run, record: EpochRecord, peak_memory_mb: float) -> None:
    run.log({**dataclasses.asdict(record), "peak_memory_mb": peak_memory_mb})


def log_result(run, result: RunResult) -> None:
    run.summary.update(result.summary())
    for size, record in result.extrapolation.items():
        run.summary[extrapolation_metric(size)] = record.val_acc
