"""Typed config schemas (registered in Hydra's ConfigStore) and the range checks run once at start-up.

Hydra refuses wrong types, unknown keys and unknown group options on the command line because the primary
config extends `RunConfig`; values that are well typed but out of range are refused by `validate`.
"""
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from rpe_bench import launching, pos
from rpe_bench.coordinates import CoordinateAugmentation


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class ConfigError(ValueError):
    """A config value out of its allowed range; the message is one line naming the value and what is allowed."""


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class Loader(str, Enum):
    auto = "auto"  # memory when the decoded images take at most a quarter of the job's memory, else stream
    memory = "memory"  # decoded once into uint8 tensors, batches by indexing
    stream = "stream"  # image folders only: decoded batch by batch by DataLoader workers


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


class Coordinates(str, Enum):
    """Where the rotary encodings place the patches (rpe_bench.coordinates.patch_coordinates)."""
    grid = "grid"  # integer patch indices: a larger image puts patches beyond the trained range
    normalized = "normalized"  # the training grid's span: a larger image gets finer spacing inside it
    flat = "flat"  # one axis, the patch's row-major index: the reference notebook's 1D formulation
    # Fractions of the image, patch centres (i + 1/2) / W on a grid W wide: ComRoPE's units (and LieRE's, up to
    # its endpoints i / (W - 1)); a larger image gets finer spacing inside [0, 1].
    fraction = "fraction"


class ClsPosition(str, Enum):
    """Where the CLS token sits for the rotary encodings."""
    origin = "origin"  # the identity rotation (RoPE-ViT, LieRE; ours by default)
    centre = "centre"  # the centre of the patch grid, rotated like a patch there (ComRoPE)


class WandbMode(str, Enum):
    auto = "auto"  # online when an API key is configured, else offline
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class AugmentConfig:
    random_crop_padding: int = 0
    horizontal_flip: bool = False


@dataclass
class MovingDigitsConfig:
    """dataset=moving_mnist's clips (rpe_bench.video): how many, the digit's size and least horizontal travel in
    pixels, and the seed of the generator that draws them (fixed, so every run sees the same clips)."""
    train_clips: int = 12000
    test_clips: int = 4000
    digit_size: int = 12
    min_travel: int = 6
    generator_seed: int = 0


@dataclass
class DatasetConfig:
    name: str = MISSING  # the loader (rpe_bench.data); image_folder reads any folder of images
    # What the data is, for reports and plots ("CIFAR-10 (JPEG copy)"); the loader's name unless set.
    display_name: str = II(".name")
    root: str = "${oc.env:RPE_BENCH_DATA,./data}"
    download: bool = True
    image_size: int = MISSING
    channels: int = MISSING
    num_classes: int = MISSING
    mean: List[float] = MISSING
    std: List[float] = MISSING
    patch_size: int = MISSING
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loader: Loader = Loader.auto
    # Streaming decoder processes; null: half the CPUs granted (SLURM_CPUS_PER_TASK, else the usable cores).
    workers: Optional[int] = None
    # Evaluate the trained model at these larger input sizes (images resized, patch grid grown).
    extrapolation_sizes: List[int] = field(default_factory=list)
    # Clips: frames per clip (null: images), frames per tubelet (the patch's depth in time), and the longer
    # clips of the same scenes (more frames sampled over the same span) a trained model is evaluated on.
    frames: Optional[int] = None
    tubelet_frames: int = 1
    extrapolation_frames: List[int] = field(default_factory=list)
    moving: MovingDigitsConfig = field(default_factory=MovingDigitsConfig)


@dataclass
class ModelConfig:
    emb_dim: int = MISSING
    depth: int = MISSING
    num_heads: int = MISSING
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    patch_size: int = II("dataset.patch_size")


@dataclass
class CoordinateAugmentationConfig:
    """DINOv3's train-time coordinate augmentation, with its values and meaning (the training image spans [-1, 1]
    on each axis): a uniform shift in [-shift, shift] per axis, then log-uniform scale factors in
    [1/jitter, jitter] per axis and in [1/rescale, rescale] for both. null: off."""
    shift: Optional[float] = None
    jitter: Optional[float] = None
    rescale: Optional[float] = None


@dataclass
class PosConfig:
    name: str = MISSING
    # APE: a learned table added to the patch tokens, on top of whatever the attention does.
    absolute_table: bool = False
    # Passed to rpe_bench.pos.build; each encoding refuses options it does not know.
    options: Dict[str, Any] = field(default_factory=dict)
    coordinates: Coordinates = Coordinates.grid
    cls_position: ClsPosition = ClsPosition.origin
    coordinate_augmentation: CoordinateAugmentationConfig = field(default_factory=CoordinateAugmentationConfig)


@dataclass
class SparsityConfig:
    f: float = MISSING  # each conf/sparsity choice sets it (dense: 1.0)


@dataclass
class TrainerConfig:
    epochs: int = 2
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.01
    schedule: Schedule = Schedule.constant
    warmup_epochs: float = 0.0
    grad_clip: Optional[float] = None
    device: Device = Device.auto
    precision: Precision = Precision.fp32
    # null: torch's default (every core); in a parallel sweep, the cores shared among the jobs running at once.
    threads: Optional[int] = II("rpe_bench.threads_per_job:")
    compile: bool = False
    # TF32 for fp32 matmuls and cuDNN convolutions on GPUs that have it: faster, about 3 significant digits.
    tf32: bool = False
    limit_train_batches: Optional[int] = None
    limit_val_batches: Optional[int] = None
    # Extrapolation (sizes and clip lengths) on the first N test batches only (the same images for every run);
    # null: as val.
    limit_extrapolation_batches: Optional[int] = None
    # A limited evaluation reads a class-stratified subset drawn from this seed alone, the same for every run.
    evaluation_subset_seed: int = 0
    inference_timing_batches: int = 10
    resume: bool = True


@dataclass
class LoggerConfig:
    mode: WandbMode = WandbMode.auto
    project: str = "rpe_bench"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    log_every_steps: int = 10


@dataclass
class RunConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    pos: PosConfig = MISSING
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 42


def register_variants() -> None:
    """`variant=<encoding>` for every conf/pos/<encoding>.yaml, and `variant=<encoding>_f<f>` for each sparsity
    level of an encoding whose options read sparsity.f: one (encoding, sparsity) pair per name, for sweeps that
    list pairs. Generated from the pos and sparsity configs, so that a new encoding's YAML is all it needs."""
    store = ConfigStore.instance()
    levels = {path.stem: OmegaConf.load(path).f for path in sorted((CONF_DIR / "sparsity").glob("*.yaml"))}
    for path in sorted((CONF_DIR / "pos").glob("*.yaml")):
        encoding = path.stem
        if "f" not in (OmegaConf.load(path).get("options") or {}):
            store.store(group="variant", name=encoding, package="_global_",
                        node={"defaults": [{"override /pos": encoding}]})
            continue
        for level, f in levels.items():
            store.store(group="variant", name=f"{encoding}_f{f}", package="_global_",
                        node={"defaults": [{"override /pos": encoding}, {"override /sparsity": level}]})


def register_configs() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    register_variants()
    # Defaults of hydra/launcher=parallel (n_jobs) and of trainer.threads, resolved on the machine that runs.
    OmegaConf.register_new_resolver("rpe_bench.usable_cores", launching.usable_cores, replace=True)
    OmegaConf.register_new_resolver("rpe_bench.visible_gpus", launching.visible_gpus, replace=True)
    OmegaConf.register_new_resolver("rpe_bench.parallel_jobs", launching.parallel_jobs, replace=True)
    OmegaConf.register_new_resolver("rpe_bench.threads_per_job", launching.threads_per_job, replace=True)


def position_axes(coordinates, frames: Optional[int] = None) -> int:
    """How many axes a token's position has under `pos.coordinates`: 1 (flat), 2 (x, y) or, for clips of
    `frames` frames, 3 (t, x, y)."""
    if Coordinates(coordinates) is Coordinates.flat:
        return 1
    return 2 if frames is None else 3


def validate(cfg) -> None:
    """Range checks that types alone cannot express. Raises ConfigError with one line."""

    def refuse(message: str) -> None:
        raise ConfigError(message)

    dataset, model, trainer = cfg.dataset, cfg.model, cfg.trainer
    if not 0.0 < cfg.sparsity.f <= 1.0:
        refuse(f"sparsity.f={cfg.sparsity.f} is out of range: allowed 0 < f <= 1")
    if model.patch_size < 1 or dataset.image_size % model.patch_size:
        refuse(f"patch size {model.patch_size} does not divide image size {dataset.image_size}: "
               f"allowed divisors are {[p for p in range(1, dataset.image_size + 1) if dataset.image_size % p == 0]}")
    if model.num_heads < 1 or model.emb_dim % model.num_heads:
        refuse(f"model.emb_dim={model.emb_dim} is not divisible by model.num_heads={model.num_heads}")
    try:  # each encoding checks its own options (head dim, f, k): building one is cheap
        pos.build(cfg.pos.name, head_dim=model.emb_dim // model.num_heads, num_heads=model.num_heads,
                  axes=position_axes(cfg.pos.coordinates, dataset.frames), **cfg.pos.options)
    except ValueError as error:
        refuse(f"pos={cfg.pos.name} with emb_dim {model.emb_dim} and {model.num_heads} heads: {error}")
    if model.depth < 1:
        refuse(f"model.depth={model.depth} must be >= 1")
    if trainer.lr <= 0:
        refuse(f"trainer.lr={trainer.lr} must be > 0")
    if trainer.weight_decay < 0:
        refuse(f"trainer.weight_decay={trainer.weight_decay} must be >= 0")
    if trainer.epochs < 1:
        refuse(f"trainer.epochs={trainer.epochs} must be >= 1")
    if trainer.batch_size < 1:
        refuse(f"trainer.batch_size={trainer.batch_size} must be >= 1")
    if trainer.warmup_epochs < 0:
        refuse(f"trainer.warmup_epochs={trainer.warmup_epochs} must be >= 0")
    for key in ("limit_train_batches", "limit_val_batches", "limit_extrapolation_batches", "threads"):
        value = trainer[key]
        if value is not None and value < 1:
            refuse(f"trainer.{key}={value} must be >= 1 or null")
    augmentation = cfg.pos.coordinate_augmentation
    augmented = [name for name, value in augmentation.items() if value is not None]
    axes = position_axes(cfg.pos.coordinates, dataset.frames)
    if augmented and Coordinates(cfg.pos.coordinates) is Coordinates.fraction:
        refuse(f"pos.coordinate_augmentation.{augmented[0]} moves patches in training-grid units, and "
               f"pos.coordinates=fraction measures the image in [0, 1]: allowed with pos.coordinates=grid or "
               f"normalized")
    if augmented and axes != 2:
        refuse(f"pos.coordinate_augmentation.{augmented[0]} needs (x, y) coordinates, and "
               f"pos.coordinates={Coordinates(cfg.pos.coordinates).value} on dataset={dataset.name} gives {axes} "
               f"{'axis' if axes == 1 else 'axes'}: allowed on images with pos.coordinates=grid or normalized")
    try:  # the augmentation checks its own ranges
        CoordinateAugmentation(augmentation.shift, augmentation.jitter, augmentation.rescale, torch.Generator())
    except ValueError as error:
        refuse(str(error))
    if Loader(dataset.loader) == Loader.stream and dataset.name not in launching.STREAMED_DATASETS:
        refuse(f"dataset.loader=stream reads {' and '.join(launching.STREAMED_DATASETS)} only, and "
               f"dataset={dataset.name} is loaded in memory: allowed here are auto, memory")
    if dataset.workers is not None and dataset.workers < 0:
        refuse(f"dataset.workers={dataset.workers} must be >= 0 or null")
    validate_clips(dataset, refuse)
    for size in dataset.extrapolation_sizes:
        if size % model.patch_size:
            refuse(f"dataset.extrapolation_sizes holds {size}, not a multiple of patch size {model.patch_size}")


def validate_clips(dataset, refuse) -> None:
    """Frames, tubelets and the clip generator's numbers."""
    if dataset.frames is None:
        if dataset.extrapolation_frames:
            refuse(f"dataset.extrapolation_frames={list(dataset.extrapolation_frames)} needs clips, and "
                   f"dataset={dataset.name} holds images (dataset.frames=null)")
        return
    if dataset.frames < 1 or dataset.tubelet_frames < 1 or dataset.frames % dataset.tubelet_frames:
        refuse(f"dataset.tubelet_frames={dataset.tubelet_frames} does not divide dataset.frames={dataset.frames}: "
               f"allowed {[t for t in range(1, max(dataset.frames, 0) + 1) if dataset.frames % t == 0]}")
    for frames in dataset.extrapolation_frames:
        if frames % dataset.tubelet_frames:
            refuse(f"dataset.extrapolation_frames holds {frames}, not a multiple of dataset.tubelet_frames="
                   f"{dataset.tubelet_frames}")
    moving = dataset.moving
    if dataset.name == "moving_mnist":
        travel_room = dataset.image_size - moving.digit_size
        if not 1 <= moving.digit_size <= dataset.image_size or not 1 <= moving.min_travel <= travel_room:
            refuse(f"dataset.moving.digit_size={moving.digit_size} and min_travel={moving.min_travel} do not fit "
                   f"image_size {dataset.image_size}: allowed 1 <= digit_size and 1 <= min_travel <= "
                   f"image_size - digit_size")
        for split in ("train_clips", "test_clips"):
            if moving[split] < 1:
                refuse(f"dataset.moving.{split}={moving[split]} must be >= 1")
