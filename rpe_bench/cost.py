"""What an encoding costs, measured: every variant's train step and inference, interleaved round by round in one
process on one batch shape, so machine noise hits them alike. A sweep's seconds per epoch are wall time beside
whatever ran next to each job, not a cost; the report's cost columns come from here.

`scripts/bench_pos.py` uses the same method on fixed shapes; the sweep's report measures its own variants once at
the sweep's end and keeps the measurement in `cost.json` beside the report, with its provenance, so that a
rebuilt report reads the same numbers (`python -m rpe_bench.compare --measure-cost` measures anew)."""
import copy
import json
import statistics
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Hashable, Optional

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from rpe_bench import provenance
from rpe_bench.files import atomic_write
from rpe_bench.launching import usable_cores

COST_FILE = "cost.json"
COST_SCHEMA_VERSION = 1
WARM_UP_STEPS = 2  # allocator, kernels, the optimizer's state


class CostFileError(ValueError):
    pass


def perturb_position_parameters(model: torch.nn.Module) -> None:
    """Move generators and vectors off their initial values, so nothing is timed at a special point (S = 0, a
    matrix exponential needing no squaring)."""
    with torch.no_grad():
        for block in model.blocks:
            for parameter in block.attention.position.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))


class Contender:
    """One model with its optimizer and a fixed batch; `train_step` and `infer` return milliseconds."""

    def __init__(self, model, images: torch.Tensor, labels: torch.Tensor, precision: str = "fp32"):
        self.device = images.device
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.images, self.labels = images, labels
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else nullcontext())
        inference = copy.deepcopy(model).eval()
        if hasattr(inference, "fold_position_bases_"):
            inference.fold_position_bases_()  # the deployment form: STRING's P inside W_q and W_k
        self.inference_model = inference

    def train_step(self) -> float:
        start = time.perf_counter()
        with self.autocast:
            logits = self.model(self.images)
        loss = F.cross_entropy(logits.float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return self.milliseconds_since(start)

    @torch.inference_mode()
    def infer(self) -> float:
        start = time.perf_counter()
        with self.autocast:
            self.inference_model(self.images)
        return self.milliseconds_since(start)

    def milliseconds_since(self, start: float) -> float:
        # CUDA kernels run asynchronously: wait for them, or the clock reads the launch time alone.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return 1000 * (time.perf_counter() - start)


def warm_up(contenders: dict) -> float:
    """Runs every contender's warm-up steps; returns the seconds one round of all of them takes."""
    for _ in range(WARM_UP_STEPS):
        start = time.perf_counter()
        for contender in contenders.values():
            contender.train_step()
            contender.infer()
    return time.perf_counter() - start


def interleaved_medians(contenders: dict, rounds: int, steps: int) -> dict:
    """Median ms per contender for train and inference; each round runs every contender `steps` times."""
    timings = {name: {"train": [], "inference": []} for name in contenders}
    for _ in range(rounds):
        for name, contender in contenders.items():
            timings[name]["train"] += [contender.train_step() for _ in range(steps)]
            timings[name]["inference"] += [contender.infer() for _ in range(steps)]
    return {name: {kind: statistics.median(values) for kind, values in kinds.items()}
            for name, kinds in timings.items()}


def model_config(resolved: dict):
    """A run's resolved config for build_model. Records written before a model or encoding option existed (the
    coordinates, their augmentation) ran with its default, which the schema supplies."""
    from rpe_bench.config import ModelConfig, PosConfig
    defaults = OmegaConf.to_container(OmegaConf.create({"model": OmegaConf.structured(ModelConfig),
                                                        "pos": OmegaConf.structured(PosConfig)}),
                                      resolve=False, enum_to_str=True)
    return OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.create(resolved))


def batch_shape(config: dict) -> tuple[int, int, int, int, str]:
    """(batch size, channels, image size, classes, precision) of a run's resolved config."""
    dataset, trainer = config["dataset"], config["trainer"]
    return (trainer["batch_size"], dataset["channels"], dataset["image_size"], dataset["num_classes"],
            trainer.get("precision", "fp32"))


def measuring_device() -> torch.device:
    """Where the cost is measured: the GPU when this process has one (a sweep's runs would have used it), else
    the CPU. cost.json records which."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def measure_variants(configs: dict[Hashable, dict], references: dict[Hashable, Optional[Hashable]],
                     seconds_per_variant: float = 3.0, min_rounds: int = 5, max_rounds: int = 50) -> dict:
    """Train-step and inference medians of one model per variant (`configs`: variant -> a run's resolved config)
    and their ratios to the variant's reference. Variants of one batch shape and precision are interleaved in one
    pool; the rounds fill about `seconds_per_variant` each."""
    from rpe_bench.model import build_model  # the model imports the encodings; measuring is rare
    pools = defaultdict(list)
    for key, config in configs.items():
        pools[batch_shape(config)].append(key)
    threads = torch.get_num_threads()
    torch.set_num_threads(usable_cores())  # every core, whatever the last job left set
    medians, rounds_run = {}, {}
    try:
        for (batch_size, channels, image_size, classes, precision), keys in pools.items():
            torch.manual_seed(0)
            device = measuring_device()
            images = torch.randn(batch_size, channels, image_size, image_size, device=device)
            labels = torch.randint(0, classes, (batch_size,), device=device)
            contenders = {}
            for key in keys:
                model = build_model(model_config(configs[key]))
                perturb_position_parameters(model)
                contenders[key] = Contender(model, images, labels, precision)
            round_seconds = warm_up(contenders)
            rounds = int(min(max_rounds, max(min_rounds, seconds_per_variant * len(keys) / max(round_seconds, 1e-9))))
            medians.update(interleaved_medians(contenders, rounds, steps=1))
            rounds_run.update({key: rounds for key in keys})
    finally:
        torch.set_num_threads(threads)
    costs = {}
    for key, median in medians.items():
        reference = medians.get(references.get(key))
        costs[key] = {"train_step_ms": median["train"], "inference_ms": median["inference"],
                      "train_step_vs_rope": reference and median["train"] / reference["train"],
                      "inference_vs_rope": reference and median["inference"] / reference["inference"],
                      "rounds": rounds_run[key], "precision": batch_shape(configs[key])[4]}
    return costs


def measurement_record(variants: list[dict]) -> dict:
    """cost.json's content: the variants' costs with how and where they were measured."""
    return {
        "schema_version": COST_SCHEMA_VERSION,
        "method": "median ms of one train step (forward, backward, AdamW) and one inference pass (eval, STRING "
                  "bases folded) per variant, on a random batch of the runs' shape, interleaved round by round "
                  "in one process; ratios to the rope variant measured beside it",
        "measured_utc": provenance.utc_now(), "threads": usable_cores(),
        "device": provenance.device_description(measuring_device()),
        "code": provenance.code_version(), "versions": provenance.library_versions(),
        "variants": variants,
    }


def write_measurement(path: Path, record: dict) -> Path:
    with atomic_write(path) as temp:
        temp.write_text(json.dumps(record, indent=2))
    return path


def read_measurement(path: Path) -> Optional[dict]:
    """cost.json, or None where there is none; a damaged one raises CostFileError naming it and what to do."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("schema_version") != COST_SCHEMA_VERSION or not isinstance(record.get("variants"), list):
            raise ValueError(f"not a cost measurement of schema {COST_SCHEMA_VERSION}")
        return record
    except (OSError, ValueError, AttributeError) as error:
        raise CostFileError(f"{path} is unreadable ({error}): move it aside and rebuild the report with "
                            f"--measure-cost to measure again") from None
