"""Sweeps and scale, run as the commands a user types: multirun W&B runs and the sweep report, a failing job inside
a sweep, the submitit launchers, DDP under torchrun, and the GPU check script's guard."""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra_plugins.rpe_bench_launcher.slurm_launcher import SlurmLauncher

from rpe_bench.checkpoint import CHECKPOINT_NAME
from tests.helpers import (PROJECT, TINY_RUN, compose_config, own_wandb_environment, read_results, wandb_inspect,
                           wandb_summary)

# One thread per process: on 2 shared cores a second thread mostly waits (seconds per epoch instead of 0.1 s).
SWEEP_RUN = [*TINY_RUN, "trainer.threads=1"]
# The W&B config's top level is the run record's config, under the same names as in results.json.
WANDB_CONFIG = {"pos_variant": "rope", "dataset": "digits", "f_sparse": None, "emb_dim": 32, "depth": 1, "n_heads": 2,
                "coordinates": "grid"}
DIGITS = "Digits (scikit-learn 8x8)"  # how the report names dataset=digits (conf/dataset/digits.yaml)
SUMMARY_FIELDS = ["best_val_acc", "final_val_acc", "final_val_loss", "final_train_loss", "final_train_acc",
                  "avg_epoch_time_sec", "inference_time_ms_per_batch", "num_parameters"]


def train_command(*overrides: str, multirun: bool = False, cwd: Path = PROJECT, env: dict | None = None,
                  launcher: tuple[str, ...] = ("-m", "rpe_bench.train")) -> subprocess.CompletedProcess:
    """`python -m rpe_bench.train [-m] ...` (or under another launcher) as a new process with its own W&B service."""
    command = [sys.executable, *launcher, *(["-m"] if multirun else []), *SWEEP_RUN, *overrides]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          env={**own_wandb_environment(), **(env or {})}, timeout=300)


def torchrun(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m rpe_bench.train ...`: two CPU processes (gloo), one thread each."""
    return train_command(*overrides, cwd=cwd, env={"OMP_NUM_THREADS": "1"},
                         launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                   "-m", "rpe_bench.train"))


def wandb_run_record(run_dir: Path) -> dict:
    """The `run` record of the job's W&B transaction log: group and job type live there, not in the summary."""
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    (record,) = [json.loads(line)["run"] for line in wandb_inspect(offline_run).splitlines() if '"type":"run"' in line]
    return record


def table_row(markdown: str, first_cells: str) -> list[str]:
    """The cells of the one markdown table row that starts with `first_cells` (e.g. f"{DIGITS} | rope"); pass one
    section of the report, as every table starts its rows with dataset and encoding."""
    (line,) = [line for line in markdown.splitlines() if line.startswith(f"| {first_cells} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_seed_sweep_gives_one_wandb_run_per_job_in_the_sweeps_group_and_a_matching_report(tmp_path):
    sweep_dir = tmp_path / "seeds"
    completed = train_command("seed=1,2", f"hydra.sweep.dir={sweep_dir}", multirun=True)
    assert completed.returncode == 0, completed.stderr[-3000:]

    jobs = {1: sweep_dir / "0", 2: sweep_dir / "1"}
    results = {seed: read_results(job) for seed, job in jobs.items()}
    run_ids = set()
    for seed, job in jobs.items():
        assert results[seed]["status"] == "completed" and results[seed]["config"]["seed"] == seed
        summary, record = wandb_summary(job), wandb_run_record(job)
        run_ids.add(summary["run_id"])
        assert summary["state"] == "finished"
        assert {key: summary["config"][key] for key in WANDB_CONFIG} == WANDB_CONFIG
        assert summary["config"]["seed"] == seed
        for field in SUMMARY_FIELDS:
            assert summary["summary"][field] == pytest.approx(results[seed][field]), field
        assert summary["tags"] == ["pos_variant=rope", "dataset=digits", "coordinates=grid"]
        # The W&B config is written before training; the record adds when it finished and who trained it.
        recorded = {key: value for key, value in results[seed]["provenance"].items() if key != "training"}
        assert summary["config"]["provenance"] == recorded | {"finished_utc": None}
        # Shared by the sweep's jobs and named after its folder (the last two parts of the path).
        assert record["run_group"] == f"sweep-{tmp_path.name}_seeds"
        assert record["job_type"] == "train"
    assert len(run_ids) == 2

    comparison = (sweep_dir / "comparison.md").read_text().split("## Extrapolation")[0]
    page = (sweep_dir / "report.html").read_text()
    final_val_acc = [results[seed]["final_val_acc"] for seed in (1, 2)]
    cells = table_row(comparison, f"{DIGITS} | rope")
    assert cells[3] == "2"
    expected = {4: f"{100 * statistics.fmean(final_val_acc):.2f} ± {100 * statistics.stdev(final_val_acc):.2f}",
                6: f"{100 * statistics.fmean(results[seed]['best_val_acc'] for seed in (1, 2)):.2f}",
                7: f"{results[1]['num_parameters']:,}", 8: "1.00×", 9: "1.00×"}
    for index, text in expected.items():
        assert cells[index] == text
        assert f"<td>{text}</td>" in page
    # The cost columns are the measurement the sweep made at its end, kept beside the report.
    measurement = json.loads((sweep_dir / "cost.json").read_text())
    (measured,) = measurement["variants"]
    assert measured["pos_variant"] == "rope" and measured["train_step_ms"] > 0


def test_a_failed_job_is_logged_recorded_and_reported_and_fails_the_sweep_after_the_others_ran(tmp_path):
    """Job 0 diverges at run time (lr 1e30), job 1 is refused before it starts (lr < 0), job 2 completes."""
    sweep_dir = tmp_path / "sweep"
    completed = train_command("trainer.lr=1e30,-1,3e-4", f"hydra.sweep.dir={sweep_dir}", multirun=True)
    diverged, refused, healthy = (sweep_dir / str(job) for job in range(3))

    assert completed.returncode == 1
    assert "2 of 3 jobs failed" in completed.stdout + completed.stderr
    assert read_results(healthy)["status"] == "completed"

    failure = read_results(diverged)
    assert failure["status"] == "failed" and failure["error"].startswith("TrainingDiverged: training loss is ")
    job_log = (diverged / "train.log").read_text()
    assert "run failed\nTraceback (most recent call last):" in job_log
    assert "raise TrainingDiverged.at(" in job_log and job_log.rstrip().endswith(failure["error"])
    run = wandb_summary(diverged)
    assert run["state"] == "failed" and run["exit_code"] == 1

    refusal = read_results(refused)
    assert refusal["status"] == "failed" and refusal["error"] == "ConfigError: trainer.lr=-1.0 must be > 0"
    assert "job refused: trainer.lr=-1.0 must be > 0" in (refused / "train.log").read_text()
    assert not (refused / "wandb").exists()

    failed_runs_section = (sweep_dir / "comparison.md").read_text().split("## Failed runs")[1]
    assert sum(line.startswith(f"| {sweep_dir}") for line in failed_runs_section.splitlines()) == 2
    assert table_row(failed_runs_section, str(diverged))[-1] == failure["error"]
    assert table_row(failed_runs_section, str(refused))[-1] == refusal["error"]
    assert "<h2>Failed runs</h2>" in (sweep_dir / "report.html").read_text()


def test_the_local_launcher_runs_each_job_as_its_own_submitit_process(tmp_path):
    sweep_dir = tmp_path / "local"
    completed = train_command("hydra/launcher=local", "seed=1,2", f"hydra.sweep.dir={sweep_dir}", multirun=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in completed.stdout + completed.stderr
    for seed, job in ((1, sweep_dir / "0"), (2, sweep_dir / "1")):
        results = read_results(job)
        assert results["status"] == "completed" and results["config"]["seed"] == seed
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2
    comparison = (sweep_dir / "comparison.md").read_text().split("## Extrapolation")[0]
    assert table_row(comparison, f"{DIGITS} | rope")[3] == "2"


def test_the_slurm_launcher_composes_and_requeues_the_same_job_on_preemption():
    cfg = compose_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == f"{SlurmLauncher.__module__}.SlurmLauncher"
    # Null resources are filled in from the runs at launch (tests/test_slurm.py); limits keep preemption and
    # time-out apart (submitit counts a USR2 as a time-out at timeout_min <= 10).
    assert (launcher.partition, launcher.gpus_per_node, launcher.max_num_timeout) == ("gpu", None, 3)
    assert launcher.timeout_min > 10
    # submitit calls `checkpoint` on SLURM's preemption/time-out signal and requeues what it returns: the same
    # launcher with the same job arguments, so the same run folder, which resumes from its checkpoint.pt.
    slurm = SlurmLauncher()
    job_arguments = (["seed=1"], "hydra.sweep.dir", 0, "job_id_for_0", {})
    requeued = slurm.checkpoint(*job_arguments)
    assert requeued.function is slurm and requeued.args == job_arguments


def test_torchrun_with_two_processes_writes_one_run_folder_and_matches_one_process(tmp_path):
    """Each rank takes a strided half of every batch of 64 and DDP averages the two half-batch gradients, so each
    update is the single-process one up to float32 summation order: about 1e-7 relative, grown a little by 8 AdamW
    steps; 1e-5 leaves room for that, and none for shards that miss part of the batch (their losses move by
    1e-3 or more). An accuracy may differ only by one image whose top two logits tie within that noise."""
    workdir, ddp_dir, single_dir = tmp_path / "workdir", tmp_path / "ddp", tmp_path / "single"
    workdir.mkdir()
    run = ["trainer.epochs=2", "trainer.lr=1e-2"]
    completed = torchrun(*run, f"hydra.run.dir={ddp_dir}", cwd=workdir)
    assert completed.returncode == 0, completed.stderr[-3000:]
    completed = train_command(*run, f"hydra.run.dir={single_dir}")
    assert completed.returncode == 0, completed.stderr[-3000:]

    assert list(workdir.iterdir()) == [], "a rank wrote into the working directory"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ddp", "single", "workdir"]
    assert (ddp_dir / CHECKPOINT_NAME).exists() and len(list((ddp_dir / "wandb").glob("offline-run-*"))) == 1
    assert "2 process(es)" in (ddp_dir / "train.log").read_text()
    ddp, single = read_results(ddp_dir), read_results(single_dir)
    assert (ddp["provenance"]["world_size"], single["provenance"]["world_size"]) == (2, 1)
    for ddp_epoch, single_epoch in zip(ddp["history"], single["history"], strict=True):
        for field in ("train_loss", "val_loss"):
            assert ddp_epoch[field] == pytest.approx(single_epoch[field], rel=1e-5), field
    first, last = single["history"]
    assert abs(last["val_loss"] - first["val_loss"]) > 100 * 1e-5 * first["val_loss"], "updates too small to compare"
    images = {"final_train_acc": 4 * 64, "final_val_acc": 2 * 64}
    for field, count in images.items():
        assert ddp[field] == pytest.approx(single[field], abs=1.01 / count), field


def test_two_torchrun_agents_as_two_nodes_match_one_process(tmp_path):
    """`--nnodes=2` with a c10d rendezvous on localhost, one agent per "node", each in its own folder: the same
    update as one process, as with one agent and two processes above."""
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    run = ["trainer.epochs=2", "trainer.lr=1e-2", f"hydra.run.dir={ddp_dir}"]
    endpoint = f"localhost:{29500 + os.getpid() % 1000}"
    agents = []
    for node in range(2):
        workdir = tmp_path / f"node{node}"
        workdir.mkdir()
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", f"--rdzv_id=test{os.getpid()}",
                   "-m", "rpe_bench.train", *SWEEP_RUN, *run]
        agents.append(subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, env={**own_wandb_environment(), "OMP_NUM_THREADS": "1"}))
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(output[-2000:] for output in outputs)
    completed = train_command("trainer.epochs=2", "trainer.lr=1e-2", f"hydra.run.dir={single_dir}")
    assert completed.returncode == 0, completed.stderr[-3000:]
    ddp, single = read_results(ddp_dir), read_results(single_dir)
    assert ddp["provenance"]["world_size"] == 2
    for ddp_epoch, single_epoch in zip(ddp["history"], single["history"], strict=True):
        for field in ("train_loss", "val_loss"):
            assert ddp_epoch[field] == pytest.approx(single_epoch[field], rel=1e-5), field
    assert [list((tmp_path / f"node{node}").iterdir()) for node in range(2)] == [[], []]


def test_a_failing_torchrun_leaves_no_files_outside_its_run_folder(tmp_path):
    workdir, run_dir = tmp_path / "workdir", tmp_path / "ddp"
    workdir.mkdir()
    completed = torchrun("trainer.lr=1e30", f"hydra.run.dir={run_dir}", cwd=workdir)
    assert completed.returncode != 0
    assert read_results(run_dir)["status"] == "failed"
    assert list(workdir.iterdir()) == [], "a rank wrote into the working directory"


def test_gpu_check_parses_and_refuses_to_run_without_a_gpu(tmp_path):
    script = PROJECT / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    completed = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True,
                               env={**own_wandb_environment(), "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable})
    assert completed.returncode == 1
    assert completed.stderr.strip() == ("gpu_check: no CUDA GPU is visible to torch; this check needs one, "
                                        "nothing was run.")
    assert not (tmp_path / "out").exists()
