"""The run record (results.json and W&B under one set of names), its provenance, and a run folder that belongs
to one config and one process."""
import json
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from rpe_bench import provenance
from rpe_bench.checkpoint import CHECKPOINT_NAME
from rpe_bench.launching import usable_cores
from rpe_bench.results import SCHEMA_VERSION, SUMMARY_FIELDS, RunResult, read_result
from tests.helpers import PROJECT, TINY_RUN, read_results, run_training, wandb_summary

PUBLISHED = sorted((PROJECT / "docs" / "results").rglob("results.json"))


def test_a_run_records_its_code_libraries_device_and_times(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.threads=1")
    results = read_results(tmp_path)
    recorded = results["provenance"]
    head = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert results["schema_version"] == SCHEMA_VERSION
    assert recorded["code"]["commit"] == head.stdout.strip()
    assert isinstance(recorded["code"]["dirty"], bool)
    assert recorded["versions"]["torch"] == metadata.version("torch")
    assert set(recorded["versions"]) == {"python", "torch", "torchvision", "hydra-core", "omegaconf", "wandb", "numpy"}
    assert recorded["device"]["type"] == "cpu" and recorded["device"]["cpu_cores"] == usable_cores()
    assert (recorded["threads"], recorded["world_size"], recorded["parallel_jobs"]) == (1, 1, 1)
    assert recorded["started_utc"] <= recorded["finished_utc"]
    assert "trainer.threads=1" in recorded["overrides"]
    assert wandb_summary(tmp_path)["config"]["provenance"]["code"] == recorded["code"]


def test_the_record_round_trips_and_its_wandb_summary_uses_the_same_names(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}")
    result = read_result(tmp_path / "results.json")
    assert result.to_json() == read_results(tmp_path)
    assert RunResult.from_json(result.to_json()) == result
    summary = wandb_summary(tmp_path)["summary"]
    for name in SUMMARY_FIELDS:
        assert summary[name] == pytest.approx(getattr(result, name)), name
    assert summary["extrapolation/16/val_acc"] == pytest.approx(result.extrapolation["16"].val_acc)


@pytest.mark.parametrize("path", PUBLISHED, ids=[str(path.relative_to(PROJECT)) for path in PUBLISHED])
def test_every_published_results_file_reads_under_the_current_schema(path):
    raw = json.loads(path.read_text())
    result = read_result(path)
    assert result.is_completed and result.schema_version == SCHEMA_VERSION
    # Records older than pos.coordinates had only the grid.
    assert result.config.pos_variant == raw["config"]["pos_variant"]
    assert result.config.coordinates == raw["config"].get("coordinates", "grid")
    assert result.best_val_acc == raw["best_val_acc"] and len(result.history) == len(raw["history"])


def test_an_unreadable_results_file_reads_as_a_failed_run(tmp_path):
    (tmp_path / "results.json").write_text('{"config": ')
    result = read_result(tmp_path / "results.json")
    assert not result.is_completed and "unreadable" in result.error


def test_provenance_differences_name_what_differs():
    base = {"code": {"commit": "a", "dirty": False, "package_version": "0.1.0"},
            "versions": {"python": "3.11", "torch": "2.14.1", "torchvision": "0.29.1", "hydra-core": "1.3.8",
                         "omegaconf": "2.3.1", "wandb": "0.31.0", "numpy": "2.4"},
            "device": {"type": "cpu", "name": "Xeon", "count": 1}}
    assert provenance.differences([base, base]) == []
    other = {**base, "code": {**base["code"], "commit": "b"}, "versions": {**base["versions"], "torch": "2.13.0"}}
    assert provenance.differences([base, other, None]) == [
        "provenance not recorded for 1 of 3 runs", "code commit (a, b)", "torch version (2.13.0, 2.14.1)"]


def test_differences_count_the_code_that_trained_a_run_as_well_as_the_code_that_measured_it():
    base = {"code": {"commit": "a", "dirty": False, "package_version": "0.1.0"}, "versions": {"torch": "2.14.1"},
            "device": {"type": "cpu", "name": "Xeon", "count": 1}}
    trained_by = lambda commit: {**base, "code": {**base["code"], "commit": commit}, "epochs": [1, 2]}
    assert provenance.differences([{**base, "training": [trained_by("a")]}] * 2) == []
    remeasured = {**base, "training": [trained_by("b")]}
    assert provenance.differences([base, remeasured]) == ["code commit (a, b)"]
    assert provenance.differences([remeasured]) == ["code commit (a, b)"]
    assert provenance.differences([{**base, "training": [provenance.unrecorded_segment(1), trained_by("a")]}]) == [
        "training provenance not recorded for some epochs of 1 of 1 runs"]


def edit_checkpoint(folder: Path, edit) -> None:
    checkpoint = torch.load(folder / CHECKPOINT_NAME, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, folder / CHECKPOINT_NAME)


def test_the_record_names_the_code_that_trained_each_epoch_when_a_run_is_resumed_or_measured_again(
        monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=1")
    first = read_results(tmp_path)["provenance"]
    (segment,) = first["training"]
    assert segment["epochs"] == [1, 1]
    assert all(segment[key] == first[key] for key in provenance.SEGMENT_KEYS)
    # As if epoch 1 had been trained by another commit: a second epoch, then the finished run measured again.
    edit_checkpoint(tmp_path, lambda checkpoint: checkpoint["training"][0]["code"].update(commit="0123abc"))
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=2")
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=2")
    record = read_results(tmp_path)["provenance"]
    assert [(item["epochs"], item["code"]["commit"]) for item in record["training"]] == [
        ([1, 1], "0123abc"), ([2, 2], first["code"]["commit"])]
    assert f"code commit (0123abc, {first['code']['commit']})" in provenance.differences([record])


def test_a_checkpoint_from_before_training_provenance_is_marked_unrecorded(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=1")
    edit_checkpoint(tmp_path, lambda checkpoint: checkpoint.pop("training"))
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=2")
    record = read_results(tmp_path)["provenance"]
    assert [item["epochs"] for item in record["training"]] == [[1, 1], [2, 2]]
    assert record["training"][0]["code"] is None
    assert provenance.differences([record]) == ["training provenance not recorded for some epochs of 1 of 1 runs"]


def train_process(*overrides: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rpe_bench.train", *TINY_RUN, "logger.mode=disabled", *overrides],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300, **kwargs)


def test_a_checkpoint_of_another_config_is_refused_and_left_untouched(tmp_path):
    assert train_process(f"hydra.run.dir={tmp_path}").returncode == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("results.json", CHECKPOINT_NAME)}
    refused = train_process(f"hydra.run.dir={tmp_path}", "pos=reflection", "trainer.epochs=2")
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "another run" in line and "pos.name is 'rope' there and 'reflection' here" in line
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    # The same config resumes, and a larger epoch count extends the finished run.
    extended = train_process(f"hydra.run.dir={tmp_path}", "trainer.epochs=2")
    assert extended.returncode == 0, extended.stderr[-2000:]
    assert [epoch["epoch"] for epoch in read_results(tmp_path)["history"]] == [1, 2]


def hold_run_folder(folder: Path) -> subprocess.Popen:
    """A process that claims `folder` as a live run does, and keeps it until killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom rpe_bench.run_folder import claimed\n"
         "with claimed(sys.argv[1]):\n    print('claimed', flush=True)\n    time.sleep(600)", str(folder)],
        cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "claimed"
    return holder


def test_a_second_process_on_a_live_run_folder_is_refused_and_a_killed_ones_lock_does_not_block(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    holder = hold_run_folder(tmp_path)
    try:
        refused = train_process(f"hydra.run.dir={tmp_path}")
        assert refused.returncode == 2
        (line,) = refused.stderr.strip().splitlines()
        assert f"in use by a live run (process {holder.pid})" in line
        assert holder.poll() is None and not (tmp_path / "results.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    resumed = train_process(f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_results(tmp_path)["status"] == "completed"
