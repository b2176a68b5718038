"""The run record: what training writes to `results.json` and W&B, and what the comparison reads back.

One name per quantity everywhere: the field names below are the keys of `results.json` (the reference notebook's
format, extended), of the W&B history and summary, and of the comparison report's columns. Files written before
`schema_version` existed (schema 1, the results published under docs/results/) are upgraded on reading.
"""
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from rpe_bench import pos
from rpe_bench.config import position_axes
from rpe_bench.files import atomic_write
from rpe_bench.pos.rotary import axis_names

SCHEMA_VERSION = 3
RESULTS_FILE = "results.json"
# A completed run that a failed continuation replaced (more epochs that diverged, say): kept, never counted.
PREVIOUS_RESULTS_FILE = "results-previous.json"
COMPLETED, FAILED = "completed", "failed"


@dataclass
class RunConfigRecord:
    """The reference notebook's flat `config`, plus the choices it made silently (coordinates)."""
    dataset: str
    pos_variant: str
    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    emb_dim: int
    depth: int
    n_heads: int
    batch_size: int
    epochs: int
    lr: float
    weight_decay: float
    f_sparse: Optional[float]  # the sparsity fraction for cayley_sparse, None for every other encoding
    seed: int
    coordinates: str = "grid"
    dataset_display_name: Optional[str] = None
    # Clips: frames per clip and per tubelet (None for images and for records made before clips existed).
    frames: Optional[int] = None
    tubelet_frames: Optional[int] = None
    # The positions' axes, ["x", "y"], ["t", "x", "y"] or ["index"], and for the axial encodings how many
    # rotation pairs each axis gets (rpe_bench.pos.rotary.axial_sections); None in records made before.
    position_axes: Optional[List[str]] = None
    rotation_pairs_per_axis: Optional[List[int]] = None

    @classmethod
    def from_cfg(cls, cfg) -> "RunConfigRecord":
        axes = position_axes(cfg.pos.coordinates, cfg.dataset.get("frames"))
        try:
            encoding = pos.build(cfg.pos.name, head_dim=cfg.model.emb_dim // cfg.model.num_heads,
                                 num_heads=cfg.model.num_heads, axes=axes, **cfg.pos.options)
        except (ValueError, ZeroDivisionError):  # a refused config's failure record still gets written
            encoding = None
        sections = getattr(encoding, "sections", None)
        frames = cfg.dataset.get("frames")
        return cls(
            dataset=cfg.dataset.name, pos_variant=cfg.pos.name, img_size=cfg.dataset.image_size,
            patch_size=cfg.model.patch_size, in_chans=cfg.dataset.channels, num_classes=cfg.dataset.num_classes,
            emb_dim=cfg.model.emb_dim, depth=cfg.model.depth, n_heads=cfg.model.num_heads,
            batch_size=cfg.trainer.batch_size, epochs=cfg.trainer.epochs, lr=cfg.trainer.lr,
            weight_decay=cfg.trainer.weight_decay, f_sparse=cfg.sparsity.f if "f" in cfg.pos.options else None,
            seed=cfg.seed, coordinates=coordinates_label(cfg.pos),
            dataset_display_name=cfg.dataset.get("display_name"), frames=frames,
            tubelet_frames=cfg.dataset.get("tubelet_frames") if frames is not None else None,
            position_axes=list(axis_names(axes)), rotation_pairs_per_axis=None if sections is None else list(sections))


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    # Schema 3 on: the epoch's steady state. The first WARMUP_STEPS (rpe_bench.loop) steps a process trains
    # (compilation, library warm-up) are timed apart as warmup_seconds, and epoch_seconds, images_per_second,
    # data_seconds and step_ms leave them out. Earlier records include them and have no warm-up fields (None).
    epoch_seconds: float
    images_per_second: float
    data_seconds: float
    step_ms: float
    warmup_seconds: Optional[float] = None
    warmup_steps: Optional[int] = None


FRAMES_PREFIX = "t"


def frames_key(frames: int) -> str:
    """The `extrapolation` key of a longer clip ("t8"); an image size's key is the size alone ("48")."""
    return f"{FRAMES_PREFIX}{frames}"


def extrapolation_order(key: str) -> tuple[bool, int]:
    """Sizes first, then clip lengths, each ascending."""
    return key.startswith(FRAMES_PREFIX), int(key.removeprefix(FRAMES_PREFIX))


def extrapolation_label(key: str) -> str:
    return f"{key.removeprefix(FRAMES_PREFIX)} frames" if key.startswith(FRAMES_PREFIX) else f"{key}px"


@dataclass
class ExtrapolationRecord:
    val_loss: float
    val_acc: float
    images: int


@dataclass
class RunResult:
    config: RunConfigRecord
    status: str = COMPLETED
    error: Optional[str] = None
    provenance: Optional[Dict[str, Any]] = None
    resolved_config: Optional[Dict[str, Any]] = None
    final_train_loss: Optional[float] = None
    final_train_acc: Optional[float] = None
    final_val_loss: Optional[float] = None
    final_val_acc: Optional[float] = None
    best_val_acc: Optional[float] = None
    avg_epoch_time_sec: Optional[float] = None
    inference_time_ms_per_batch: Optional[float] = None
    num_parameters: Optional[int] = None
    data_time_fraction: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    history: List[EpochRecord] = field(default_factory=list)
    extrapolation: Dict[str, ExtrapolationRecord] = field(default_factory=dict)
    # The class-stratified subsets a limited evaluation read ("val", "extrapolation": seed, images, of, per_class,
    # indices_sha256); empty where the whole test split was read, and in records made before subsets existed
    # (those read the first N test batches).
    evaluation_subsets: Dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # Where the record was read from; not part of the file.
    folder: Optional[str] = field(default=None, compare=False, repr=False)

    @classmethod
    def completed(cls, config: RunConfigRecord, history: List[EpochRecord], **measurements) -> "RunResult":
        """The summary fields follow from the history; `measurements` are the ones measured after training."""
        last = history[-1]
        return cls(
            config=config, history=history, final_train_loss=last.train_loss, final_train_acc=last.train_acc,
            final_val_loss=last.val_loss, final_val_acc=last.val_acc,
            best_val_acc=max(record.val_acc for record in history),
            avg_epoch_time_sec=sum(record.epoch_seconds for record in history) / len(history),
            data_time_fraction=(sum(record.data_seconds for record in history)
                                / sum(record.epoch_seconds for record in history)),
            **measurements)

    @classmethod
    def failed(cls, config: RunConfigRecord, error: BaseException, provenance=None) -> "RunResult":
        return cls(config=config, status=FAILED, error=f"{type(error).__name__}: {error}", provenance=provenance)

    @property
    def is_completed(self) -> bool:
        return self.status == COMPLETED

    @property
    def is_unreadable(self) -> bool:
        """Read from a damaged file (cut off mid-write, not JSON, not a record): only its folder is known."""
        return self.config is None

    def summary(self) -> Dict[str, Any]:
        """The W&B summary: the scalar fields under their results.json names."""
        return {name: getattr(self, name) for name in SUMMARY_FIELDS if getattr(self, name) is not None}

    def to_json(self) -> Dict[str, Any]:
        payload = dataclasses.asdict(self)
        del payload["folder"]
        return payload

    @classmethod
    def from_json(cls, payload: Dict[str, Any]) -> "RunResult":
        payload = _upgrade(payload)
        known = {item.name for item in dataclasses.fields(cls)}
        return cls(**{
            **{key: value for key, value in payload.items() if key in known},
            "config": _record(RunConfigRecord, payload["config"]),
            "history": [_record(EpochRecord, record) for record in payload.get("history", [])],
            "extrapolation": {size: _record(ExtrapolationRecord, record)
                              for size, record in payload.get("extrapolation", {}).items()},
        })


SUMMARY_FIELDS = ("final_train_loss", "final_train_acc", "final_val_loss", "final_val_acc", "best_val_acc",
                  "avg_epoch_time_sec", "inference_time_ms_per_batch", "num_parameters", "data_time_fraction",
                  "peak_memory_mb")
EPOCH_FIELDS = tuple(item.name for item in dataclasses.fields(EpochRecord))


def extrapolation_metric(size: str) -> str:
    """The W&B summary key of the accuracy at one extrapolation size: results.json's path to it."""
    return f"extrapolation/{size}/val_acc"


def coordinates_label(position) -> str:
    """pos.coordinates, and where CLS sits when not at the origin ("fraction, CLS at centre"): runs that differ
    in either are different variants in a report."""
    label = str(_enum_value(position.get("coordinates", "grid")))
    cls_position = str(_enum_value(position.get("cls_position", "origin")))
    return label if cls_position == "origin" else f"{label}, CLS at {cls_position}"


def _enum_value(value):
    return getattr(value, "value", value)


def _record(record_type, payload: Dict[str, Any]):
    known = {item.name for item in dataclasses.fields(record_type)}
    return record_type(**{key: value for key, value in payload.items() if key in known})


def _upgrade(payload: Dict[str, Any]) -> Dict[str, Any]:
    """Schema 1 (no schema_version) had the world size at the top level as `processes` and no provenance;
    schema 2 timed the warm-up steps inside its epochs (EpochRecord), which reads as warm-up fields of None."""
    if payload.get("schema_version", 1) >= SCHEMA_VERSION:
        return payload
    payload = dict(payload)
    processes = payload.pop("processes", None)
    if "provenance" not in payload:
        payload["provenance"] = None if processes is None else {"world_size": processes}
    payload["schema_version"] = SCHEMA_VERSION
    return payload


def write_result(folder: Path, result: RunResult) -> Path:
    path = Path(folder) / RESULTS_FILE
    with atomic_write(path) as temp:
        temp.write_text(json.dumps(result.to_json(), indent=2))
    return path


def read_result(path: Path) -> RunResult:
    """An unreadable or malformed file is read as a failed run rather than losing the whole report."""
    path = Path(path)
    try:
        result = RunResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        result = RunResult(config=None, status=FAILED, error=f"unreadable {RESULTS_FILE}: {error}")
    result.folder = str(path.parent)
    return result
