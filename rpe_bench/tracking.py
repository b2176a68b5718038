"""Where a run's numbers go: a W&B run (offline unless a key is configured) and files in the run folder."""
import json
import netrc
import os
import tempfile
from pathlib import Path

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf


def write_json_atomic(path: Path, payload) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        json.dump(payload, handle, indent=2)
        temp_name = handle.name
    os.chmod(temp_name, 0o644)  # NamedTemporaryFile creates 0600; results are meant to be shared
    os.replace(temp_name, path)


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


def notebook_config(cfg) -> dict:
    """The reference notebook's flat `config` record, so results files of both can be read side by side."""
    return {
        "dataset": cfg.dataset.name, "pos_variant": cfg.pos.name, "img_size": cfg.dataset.image_size,
        "patch_size": cfg.model.patch_size, "in_chans": cfg.dataset.channels,
        "num_classes": cfg.dataset.num_classes, "emb_dim": cfg.model.emb_dim, "depth": cfg.model.depth,
        "n_heads": cfg.model.num_heads, "batch_size": cfg.trainer.batch_size, "epochs": cfg.trainer.epochs,
        "lr": cfg.trainer.lr, "weight_decay": cfg.trainer.weight_decay,
        "f_sparse": cfg.sparsity.f if "f" in cfg.pos.options else None, "seed": cfg.seed,
    }


def run_identity(cfg) -> dict:
    """Group, name and tags: a multirun's jobs share the sweep's group; a single run is its own group."""
    hydra_cfg = HydraConfig.get()
    overrides = [item for item in hydra_cfg.overrides.task if not item.startswith("hydra")]
    name = ",".join(overrides) or "defaults"
    if hydra_cfg.mode == RunMode.MULTIRUN:
        group = f"sweep-{'_'.join(Path(hydra_cfg.sweep.dir).parts[-2:])}"
        name = f"{hydra_cfg.job.num}:{name}"
    else:
        group = f"run-{'_'.join(Path(hydra_cfg.runtime.output_dir).parts[-2:])}"
    notebook = notebook_config(cfg)
    tags = [f"pos={cfg.pos.name}", f"dataset={cfg.dataset.name}"]
    if notebook["f_sparse"] is not None:
        tags.append(f"f={notebook['f_sparse']}")
    return {"group": cfg.logger.group or group, "name": name, "tags": tags + list(cfg.logger.tags)}


def open_wandb_run(cfg, output_dir: Path, run_id: str | None, enabled: bool = True):
    """A W&B run for this job, resumed when `run_id` names the one a checkpoint recorded; a disabled run
    (logging nothing) for processes other than rank 0."""
    identity = run_identity(cfg)
    notebook = notebook_config(cfg)
    config = {"pos": cfg.pos.name, "dataset": cfg.dataset.name, "sparsity_f": notebook["f_sparse"],
              "seed": cfg.seed, "emb_dim": cfg.model.emb_dim, "depth": cfg.model.depth,
              "num_heads": cfg.model.num_heads, "patch_size": cfg.model.patch_size,
              "run": OmegaConf.to_container(cfg, resolve=True)}
    mode = resolve_mode(cfg.logger.mode.value) if enabled else "disabled"
    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=identity["group"],
                     job_type="train", name=identity["name"], tags=identity["tags"], config=config,
                     dir=str(output_dir), mode=mode, id=run_id, resume="allow" if run_id else None,
                     reinit="finish_previous")
    run.define_metric("step")
    run.define_metric("step/*", step_metric="step")
    run.define_metric("epoch")
    for metric in ("train/*", "val/*", "time/*", "memory/*", "extrapolation/*"):
        run.define_metric(metric, step_metric="epoch")
    run.define_metric("val/acc", step_metric="epoch", summary="max")
    return run
