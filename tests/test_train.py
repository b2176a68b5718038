"""End-to-end runs on tiny real data (scikit-learn's digits): results files, W&B runs, seeds, resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rpe_bench import train as train_module
from rpe_bench.loop import TrainingDiverged
from rpe_bench.checkpoint import CHECKPOINT_NAME
from tests.helpers import (PROJECT, TINY_RUN, compose_config, own_wandb_environment, read_results, run_command,
                           run_training, wandb_summary)

NOTEBOOK_FIELDS = ["config", "final_train_loss", "final_train_acc", "final_val_loss", "final_val_acc",
                   "avg_epoch_time_sec", "inference_time_ms_per_batch"]


def wandb_run_ids(run_dir: Path) -> set[str]:
    return {path.stem.removeprefix("run-") for path in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")}


def test_one_epoch_run_writes_results_and_an_offline_wandb_run(monkeypatch, tmp_path):
    run_dir = tmp_path / "run"
    run_training(monkeypatch, f"hydra.run.dir={run_dir}")
    results = read_results(run_dir)
    assert all(field in results for field in NOTEBOOK_FIELDS)
    assert results["status"] == "completed"
    assert results["config"]["pos_variant"] == "rope" and results["config"]["dataset"] == "digits"
    assert len(results["history"]) == 1
    assert 0.0 <= results["final_val_acc"] <= 1.0 and results["best_val_acc"] == results["final_val_acc"]
    assert results["final_train_loss"] > 0 and results["inference_time_ms_per_batch"] > 0
    assert results["num_parameters"] > 0 and 0 < results["data_time_fraction"] < 1
    assert set(results["extrapolation"]) == {"12", "16"}
    assert (run_dir / CHECKPOINT_NAME).exists()
    run = wandb_summary(run_dir)
    assert run["state"] == "finished"
    for field in ("final_val_acc", "best_val_acc", "final_train_loss", "inference_time_ms_per_batch"):
        assert run["summary"][field] == pytest.approx(results[field]), field


def test_extrapolation_uses_the_val_batches_unless_limited_on_its_own(monkeypatch, tmp_path):
    """TINY_RUN evaluates 2 batches of 64; extrapolation follows that, or takes its own first-N-batches limit."""
    run_training(monkeypatch, f"hydra.run.dir={tmp_path / 'as_val'}")
    run_training(monkeypatch, f"hydra.run.dir={tmp_path / 'limited'}", "trainer.limit_extrapolation_batches=1")
    as_val, limited = read_results(tmp_path / "as_val"), read_results(tmp_path / "limited")
    assert {size: result["images"] for size, result in as_val["extrapolation"].items()} == {"12": 128, "16": 128}
    assert {size: result["images"] for size, result in limited["extrapolation"].items()} == {"12": 64, "16": 64}
    assert all((result["val_acc"] * 64).is_integer() for result in limited["extrapolation"].values())


def test_same_seed_gives_the_same_losses(monkeypatch, tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_training(monkeypatch, f"hydra.run.dir={first}", "seed=7", "pos=cayley_dense")
    run_training(monkeypatch, f"hydra.run.dir={second}", "seed=7", "pos=cayley_dense")
    run_training(monkeypatch, f"hydra.run.dir={other}", "seed=8", "pos=cayley_dense")
    losses = [[epoch["train_loss"] for epoch in read_results(folder)["history"]] for folder in (first, second, other)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


@pytest.mark.parametrize("name", sorted(path.stem for path in (PROJECT / "conf" / "pos").glob("*.yaml")))
def test_every_encoding_trains_from_the_command_line_config(monkeypatch, tmp_path, name):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", f"pos={name}", "sparsity=f0.5")
    results = read_results(tmp_path)
    assert results["config"]["pos_variant"] == name
    sparse = "f" in compose_config(f"pos={name}").pos.options
    assert results["config"]["f_sparse"] == (0.5 if sparse else None)


def test_rerunning_in_the_same_folder_resumes_the_same_wandb_run(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=1")
    first_run_ids = wandb_run_ids(tmp_path)
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=2")
    results = read_results(tmp_path)
    assert [epoch["epoch"] for epoch in results["history"]] == [1, 2]
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2
    assert wandb_run_ids(tmp_path) == first_run_ids


def test_a_run_killed_mid_training_resumes_to_the_same_final_metrics(tmp_path):
    """SIGKILL after the first checkpoint, rerun the same command: the metrics equal an uninterrupted run's."""
    # About 90 steps an epoch, so that the kill lands mid-epoch.
    command = [sys.executable, "-m", "rpe_bench.train", *TINY_RUN, "trainer.epochs=3", "trainer.batch_size=16",
               "trainer.limit_train_batches=null", "trainer.threads=1"]
    run_command([*command, f"hydra.run.dir={tmp_path / 'whole'}"])
    killed_dir = tmp_path / "killed"
    # Its own process group, killed whole as a scheduler kills a job (W&B's service process included).
    process = subprocess.Popen([*command, f"hydra.run.dir={killed_dir}"], cwd=PROJECT, start_new_session=True,
                               env=own_wandb_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed_dir / CHECKPOINT_NAME).exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "results.json").exists(), "the run finished before it could be killed"
    run_command([*command, f"hydra.run.dir={killed_dir}"])
    whole, resumed = read_results(tmp_path / "whole"), read_results(killed_dir)
    for field in ("final_train_loss", "final_train_acc", "final_val_loss", "final_val_acc"):
        assert resumed[field] == pytest.approx(whole[field], abs=1e-6)


def test_a_corrupt_checkpoint_gets_a_clear_error_and_the_previous_one_is_kept(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=2", "trainer.resume=false")
    previous = (tmp_path / "checkpoint-previous.pt").read_bytes()
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"truncated")
    with pytest.raises(SystemExit) as refused:  # one line and exit 2 (tests/test_nothing_lost.py)
        run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=3")
    assert refused.value.code == 2
    assert (tmp_path / "checkpoint-previous.pt").read_bytes() == previous


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_its_checkpoint(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=1")
    checkpoint = (tmp_path / CHECKPOINT_NAME).read_bytes()
    build_model = train_module.build_model

    def diverging_model(cfg):
        model = build_model(cfg)
        model.head.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        return model

    monkeypatch.setattr(train_module, "build_model", diverging_model)
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=2", "logger.log_every_steps=1")
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == checkpoint
    assert read_results(tmp_path)["status"] == "failed"
    assert json.loads((tmp_path / "results-previous.json").read_text())["status"] == "completed"
