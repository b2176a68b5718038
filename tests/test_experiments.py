"""Every experiment config runs once, shrunk to a few batches, on tiny files in its dataset's real format."""
import sys

import pytest

from rpe_bench import train as train_module
from tests.helpers import CONF_DIR, read_results
from tests.dataset_files import write_cifar10, write_mnist

WRITERS = {"mnist": write_mnist, "moving_mnist": write_mnist, "cifar10": write_cifar10}
SHRINK = ["model.depth=1", "trainer.epochs=1", "trainer.batch_size=4", "trainer.limit_train_batches=2",
          "trainer.limit_val_batches=1", "trainer.inference_timing_batches=1", "logger.mode=offline"]


@pytest.mark.parametrize("experiment", sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml")))
def test_experiment_runs_once_shrunk(experiment, tmp_path, monkeypatch, cifar_without_md5):
    dataset = next((name for name in WRITERS if experiment.startswith(name)), None)
    (tmp_path / "data").mkdir()
    if dataset:
        WRITERS[dataset](tmp_path / "data")
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["rpe_bench.train", f"experiment={experiment}", *SHRINK,
                                      f"dataset.root={tmp_path / 'data'}", f"hydra.run.dir={run_dir}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    train_module.main()
    results = read_results(run_dir)
    assert results["status"] == "completed"
    assert results["config"]["dataset"] == (dataset or "digits")
