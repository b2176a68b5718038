"""Tiny 2D runs of every configured encoding, recorded once as the numbers later code must reproduce: positions
with any number of axes (issue 25) keep 2D runs what they were. `python -m tests.golden_runs` records them anew
into tests/golden/two_axes.json, with the commit and versions that made them; only do that on purpose."""
import json
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from rpe_bench import provenance
from rpe_bench import train as train_module
from tests.helpers import CONF_DIR, TINY_RUN, read_results

GOLDEN_FILE = Path(__file__).parent / "golden" / "two_axes.json"
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
# Two epochs of the tiny run, with the coordinate augmentation on, so that its draws are covered too, and val on
# the whole test split: a limited evaluation reads a stratified subset since issue 26, the first batches before.
OVERRIDES = ["trainer.epochs=2", "pos.coordinate_augmentation.shift=0.1", "pos.coordinate_augmentation.rescale=1.5",
             "trainer.limit_val_batches=null"]


def encodings() -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / "pos").glob("*.yaml"))


def tiny_run(name: str, folder: Path) -> dict:
    """Trains `name` in this process; its per-epoch metrics."""
    arguments = [*TINY_RUN, *OVERRIDES, f"pos={name}", f"hydra.run.dir={folder}", "logger.mode=disabled"]
    if "f" in (OmegaConf.load(CONF_DIR / "pos" / f"{name}.yaml").get("options") or {}):  # reads sparsity.f
        arguments.append("sparsity=f0.5")
    saved_argv = sys.argv
    sys.argv = ["rpe_bench.train", *arguments]
    try:
        train_module.main()
    finally:
        sys.argv = saved_argv
    return {"history": [{key: epoch[key] for key in METRICS} for epoch in read_results(folder)["history"]]}


def record() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        runs = {name: tiny_run(name, Path(folder) / name) for name in encodings()}
    return {"made_by": {"code": provenance.code_version(), "versions": provenance.library_versions(),
                        "cpu": provenance.cpu_model()}, "overrides": OVERRIDES, "runs": runs}


if __name__ == "__main__":
    GOLDEN_FILE.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"recorded {GOLDEN_FILE}")
