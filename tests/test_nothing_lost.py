"""Nothing lost: a refused command removes only what it created and leaves everything that was there byte for
byte; a damaged checkpoint gets one line naming the file and what to do, and changes nothing."""
import os
from pathlib import Path

import pytest
import torch

from rpe_bench import folder_guard
from rpe_bench.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from rpe_bench.folder_guard import FolderSnapshot
from rpe_bench.results import read_result
from tests.helpers import compose_config
from tests.test_records import train_process


def contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
            for path in sorted(folder.rglob("*"))}


def one_line_refusal(completed) -> str:
    assert completed.returncode == 2, completed.stderr[-2000:]
    (line,) = completed.stderr.strip().splitlines()
    return line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A completed two-epoch run (so it also holds checkpoint-previous.pt), made once for this module."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    completed = train_process(f"hydra.run.dir={folder}", "trainer.epochs=2")
    assert completed.returncode == 0, completed.stderr[-2000:]
    return folder


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    copy.mkdir()
    for path in sorted(finished_run.rglob("*")):
        target = copy / path.relative_to(finished_run)
        target.mkdir() if path.is_dir() else target.write_bytes(path.read_bytes())
    return copy


def test_a_refused_value_leaves_a_finished_run_folder_byte_for_byte(run_copy):
    before = contents(run_copy)
    assert {".hydra/config.yaml", "train.log", "results.json", CHECKPOINT_NAME} <= before.keys()
    line = one_line_refusal(train_process(f"hydra.run.dir={run_copy}", "trainer.lr=-1"))
    assert "trainer.lr=-1" in line
    assert contents(run_copy) == before


def test_a_refusal_keeps_a_folder_the_user_made_and_removes_the_ones_it_made(tmp_path):
    made_by_user = tmp_path / "mine"
    made_by_user.mkdir()
    one_line_refusal(train_process(f"hydra.run.dir={made_by_user}", "trainer.lr=-1"))
    assert made_by_user.is_dir() and contents(made_by_user) == {}
    # A refusal found after Hydra wrote (the dataset is missing) removes the folders it made, parents too.
    line = one_line_refusal(train_process(f"hydra.run.dir={tmp_path / 'new' / 'run'}", "dataset=mnist",
                                          f"dataset.root={tmp_path / 'no-data'}", "dataset.download=false"))
    assert "MNIST" in line and str(tmp_path / "no-data") in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine"]


def test_a_refusal_found_after_hydra_wrote_puts_the_folder_back(run_copy, tmp_path):
    before = contents(run_copy)
    line = one_line_refusal(train_process(f"hydra.run.dir={run_copy}", "dataset=mnist",
                                          f"dataset.root={tmp_path / 'no-data'}", "dataset.download=false"))
    assert "MNIST" in line
    assert contents(run_copy) == before


def test_a_checkpoint_of_another_run_is_refused_and_the_folder_put_back(run_copy):
    before = contents(run_copy)
    line = one_line_refusal(train_process(f"hydra.run.dir={run_copy}", "pos=reflection", "trainer.epochs=3"))
    assert "holds a checkpoint of another run" in line
    assert contents(run_copy) == before


@pytest.mark.parametrize("damage", ["truncated", "not_a_checkpoint", "lacks_keys"])
def test_a_damaged_checkpoint_is_named_with_what_to_do_and_nothing_changes(run_copy, damage):
    checkpoint = run_copy / CHECKPOINT_NAME
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    elif damage == "not_a_checkpoint":
        checkpoint.write_text("these are not the weights you are looking for")
    else:
        torch.save({"model": {}}, checkpoint)
    before = contents(run_copy)
    line = one_line_refusal(train_process(f"hydra.run.dir={run_copy}", "trainer.epochs=3"))
    assert str(checkpoint) in line and "move it aside" in line and "restore it" in line
    assert PREVIOUS_NAME in line  # the epoch before is offered
    assert contents(run_copy) == before
    assert read_result(run_copy / "results.json").is_completed


def test_a_sweep_job_that_fails_keeps_the_completed_results_it_finds(run_copy):
    """In a sweep a refused job records its failure, but never over a completed run."""
    from rpe_bench.failures import record_failure
    cfg = compose_config("dataset=digits")
    before = (run_copy / "results.json").read_bytes()
    record_failure(cfg, run_copy, ValueError("refused"), ["trainer.lr=-1"], refused=True)
    assert (run_copy / "results.json").read_bytes() == before
    # A continuation that trained and failed is recorded, and the completed run it continued is kept beside.
    record_failure(cfg, run_copy, ValueError("diverged"), [], refused=False)
    assert "diverged" in read_result(run_copy / "results.json").error
    assert (run_copy / "results-previous.json").read_bytes() == before
    record_failure(cfg, run_copy, ValueError("this failure"), [], refused=True)
    assert "this failure" in read_result(run_copy / "results.json").error


def test_two_runs_in_sibling_folders_never_remove_each_others_parents(tmp_path):
    """The first run made the shared parent; the second made only its own folder. The first one's refusal
    cannot remove the parent while the second's folder is in it, and the second's put-back leaves the parent,
    which it did not make."""
    first = FolderSnapshot.take(tmp_path / "day" / "first")
    second = FolderSnapshot.take(tmp_path / "day" / "second")
    assert first.created_folders == [tmp_path / "day", tmp_path / "day" / "first"]
    assert second.created_folders == [tmp_path / "day" / "second"]
    first.put_back()
    assert (tmp_path / "day" / "second").is_dir()
    second.put_back()
    assert (tmp_path / "day").is_dir() and not any((tmp_path / "day").iterdir())


def test_folder_creation_survives_a_sibling_removing_the_parent_midway(tmp_path, monkeypatch):
    """A sibling's clean-up may remove the parent between our mkdir of the parent and of the run folder."""
    real_mkdir, removed = Path.mkdir, []

    def mkdir_racing_a_sibling(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if path == tmp_path / "day" and not removed:
            removed.append(path)
            os.rmdir(path)

    monkeypatch.setattr(Path, "mkdir", mkdir_racing_a_sibling)
    assert folder_guard.make_folders(tmp_path / "day" / "run")
    assert (tmp_path / "day" / "run").is_dir() and removed
