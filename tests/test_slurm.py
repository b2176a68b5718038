"""`hydra/launcher=slurm` against a real SLURM cluster (scripts/start_slurm.sh brings up a single-node one; CI
runs it first): the array sweep and its report, a preempted and a timed-out job resumed to identical metrics, a
killed job recorded as failed while its sibling finishes, the resource defaults and their refusal, a 2-task DDP
job. Where no cluster answers, the cluster tests skip with the reason; the resource arithmetic is tested
everywhere."""
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rpe_bench import distributed, slurm
from rpe_bench.checkpoint import CHECKPOINT_NAME
from tests.helpers import PROJECT, TINY_RUN, compose_config, own_wandb_environment, read_results


def cluster_state() -> str:
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"sinfo failed: {error}"
    if not any(state in states for state in ("idle", "mixed", "allocated")):
        return f"no node up ({states!r})"
    try:  # a node that is up but cannot run a job (munge, a daemon half started) is no cluster either
        probe = subprocess.run(["srun", "-N1", "--time=1", "true"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as error:
        return f"srun failed: {error}"
    return "up" if probe.returncode == 0 else f"srun true failed: {probe.stderr.strip()[-200:]}"


CLUSTER = cluster_state()

def needs_cluster(test):
    """Marked `slurm` (select with -m slurm) and skipped, with the reason, where no cluster answers."""
    skip = pytest.mark.skipif(CLUSTER != "up", reason=f"no SLURM cluster here ({CLUSTER}): run "
                                                      f"scripts/start_slurm.sh as root")
    return pytest.mark.slurm(skip(test))
# One thread and logging off the network: each job's numbers depend on nothing but its config.
SLURM_RUN = [*TINY_RUN, "trainer.threads=1", "hydra/launcher=slurm",
             "hydra.callbacks.comparison_report.cost_seconds_per_variant=0.2"]
METRICS = ("final_train_loss", "final_train_acc", "final_val_loss", "final_val_acc")


def slurm_sweep(sweep_dir: Path, *overrides: str, background: bool = False, env: dict | None = None):
    command = [sys.executable, "-m", "rpe_bench.train", "-m", *SLURM_RUN, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    environment = {**own_wandb_environment(), **(env or {})}
    if background:
        return subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=environment)
    return subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, env=environment, timeout=600)


def single_run(run_dir: Path, *overrides: str) -> dict:
    """The same job run locally in one process, uninterrupted: the metrics a resumed SLURM job must reach."""
    completed = subprocess.run([sys.executable, "-m", "rpe_bench.train", *TINY_RUN, "trainer.threads=1", *overrides,
                                f"hydra.run.dir={run_dir}"], cwd=PROJECT, capture_output=True, text=True,
                               env=own_wandb_environment(), timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return read_results(run_dir)


def array_task_ids(sweep_dir: Path) -> list[str]:
    """The SLURM ids of the sweep's jobs ("12_0", ...; a one-job array may be a plain "12"), from submitit's
    folders: the array's own folder ("12") holds no job when tasks ("12_0") sit beside it."""
    folders = sorted(path.name for path in (sweep_dir / ".submitit").iterdir() if path.is_dir())
    tasks = [name for name in folders if "_" in name]
    return tasks or folders


def timeouts_left(sweep_dir: Path) -> int:
    """How many time-outs submitit would still requeue the sweep's one job after: its resubmitted pickle keeps
    the countdown (a time-out lowers it, a preemption does not)."""
    (submitted,) = (sweep_dir / ".submitit").rglob("*_submitted.pkl")
    with submitted.open("rb") as handle:
        return pickle.load(handle)._timeout_countdown


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


# ---- resources, without a cluster ---------------------------------------------------------------------------

def launcher_params(*overrides: str) -> dict:
    cfg = compose_config("hydra/launcher=slurm", *overrides, return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_a_cpu_run_asks_for_no_gpu_a_modest_cpu_count_lowered_to_the_node_and_its_estimated_memory():
    job = compose_config("dataset=digits")
    request = slurm.filled_request(launcher_params(), [job])
    assert request["gpus_per_node"] == 0
    assert request["mem_gb"] <= 4, "a digits job needs about 1 GB"
    assert slurm.fit_to_nodes(request, [slurm.Node(cpus=2, memory_mb=8000, gpus=0)])["cpus_per_task"] == 2
    assert slurm.fit_to_nodes(request, [slurm.Node(cpus=64, memory_mb=8000, gpus=0)])["cpus_per_task"] == 4


def test_threads_and_cuda_set_the_request():
    job = compose_config("dataset=digits", "trainer.threads=3", "trainer.device=cuda")
    request = slurm.fit_to_nodes(slurm.filled_request(launcher_params("hydra.launcher.tasks_per_node=2"), [job]),
                                 [slurm.Node(cpus=64, memory_mb=64000, gpus=8)])
    assert (request["cpus_per_task"], request["gpus_per_node"]) == (3, 2)


def test_a_request_no_node_can_meet_is_refused_naming_the_resource_and_the_largest_node():
    request = {"cpus_per_task": 8, "tasks_per_node": 1, "mem_gb": 32, "gpus_per_node": 1}
    nodes = [slurm.Node(cpus=2, memory_mb=20000, gpus=0), slurm.Node(cpus=4, memory_mb=16000, gpus=0)]
    refusal = slurm.request_refusal(request, nodes, "debug")
    assert "cpus_per_task=8" in refusal and "8 CPUs" in refusal and "has 4" in refusal and "debug" in refusal
    refusal = slurm.request_refusal({**request, "cpus_per_task": 2}, nodes, "debug")
    assert "mem_gb=32" in refusal and "20000" in refusal
    refusal = slurm.request_refusal({**request, "cpus_per_task": 2, "mem_gb": 4}, nodes, None)
    assert "gpus_per_node=1" in refusal and "default partition" in refusal
    assert slurm.request_refusal({**request, "cpus_per_task": 2, "mem_gb": 4, "gpus_per_node": 0}, nodes, None) is None


def test_gpus_are_read_from_sinfos_gres_column():
    gres = ("(null)", "gpu:2", "gpu:a100:4(S:0-1)", "gpu:1,gpu:tesla:2")
    assert [slurm.gpus_in(item) for item in gres] == [0, 2, 4, 3]


def test_inside_a_slurm_job_the_granted_cpus_set_the_threads_and_srun_tasks_set_the_ranks(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert distributed.slurm_cpus_per_task() == 3
    # A batch script with --ntasks=2 that did not go through srun is one process.
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not distributed.from_environment().distributed
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed.from_environment() == distributed.Processes(rank=1, world_size=2, local_rank=1)


# ---- against the cluster ------------------------------------------------------------------------------------

@needs_cluster
def test_an_array_sweep_on_defaults_finishes_with_its_report_and_slurms_threads(tmp_path):
    sweep_dir = tmp_path / "sweep"
    completed = slurm_sweep(sweep_dir, "seed=1,2", "trainer.threads=null")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert len(array_task_ids(sweep_dir)) == 2
    for job in ("0", "1"):
        result = read_results(sweep_dir / job)
        assert result["status"] == "completed"
        # trainer.threads unset: the job's grant, as SLURM_CPUS_PER_TASK says, not the node's cores.
        granted = result["provenance"]["slurm"]["cpus_per_task"]
        assert granted and result["provenance"]["threads"] == granted
    assert (sweep_dir / "report.html").exists() and "report:" in completed.stdout


@needs_cluster
def test_a_request_the_partition_cannot_meet_is_refused_before_anything_is_submitted(tmp_path):
    sweep_dir = tmp_path / "sweep"
    completed = slurm_sweep(sweep_dir, "hydra.launcher.cpus_per_task=512")
    assert completed.returncode == 2
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("error: hydra.launcher.cpus_per_task=512") and "largest node" in line
    assert not (sweep_dir / ".submitit").exists()


def interrupted_job_matches_an_uninterrupted_run(tmp_path, *overrides: str) -> dict:
    """A 1-job sweep signalled with USR2 once its first checkpoint exists; returns the resumed record after
    checking it against the same config run in one go."""
    sweep_dir = tmp_path / "sweep"
    run = ["trainer.epochs=40", "trainer.limit_train_batches=null", "seed=3"]
    sweep = slurm_sweep(sweep_dir, *run, *overrides, background=True)
    try:
        wait_for(lambda: (sweep_dir / "0" / CHECKPOINT_NAME).exists(), 180, "the first checkpoint")
        (task,) = array_task_ids(sweep_dir)
        subprocess.run(["scancel", "--signal=USR2", task], check=True)
        output, _ = sweep.communicate(timeout=600)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, output[-3000:]
    resumed = read_results(sweep_dir / "0")
    log = (sweep_dir / "0" / "train.log").read_text()
    assert "resuming from" in log, "the job finished before the signal arrived"
    whole = single_run(tmp_path / "whole", *run)
    for field in METRICS:
        assert resumed[field] == whole[field], field
    assert [epoch["val_loss"] for epoch in resumed["history"]] == [epoch["val_loss"] for epoch in whole["history"]]
    return resumed


@needs_cluster
def test_a_preempted_job_is_requeued_and_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    """timeout_min stays at its default (120, above 10): submitit reads the USR2 as a preemption."""
    interrupted_job_matches_an_uninterrupted_run(tmp_path)
    assert timeouts_left(tmp_path / "sweep") == 3, "a preemption spends none of max_num_timeout"


@needs_cluster
def test_a_timed_out_job_is_requeued_and_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    """The signal SLURM sends before a time limit, sent early: at timeout_min <= 10 submitit reads any USR2 as a
    time-out (a real one that stays distinct from preemption needs timeout_min >= 11: the slow test below)."""
    interrupted_job_matches_an_uninterrupted_run(tmp_path, "hydra.launcher.timeout_min=5")
    assert timeouts_left(tmp_path / "sweep") == 2, "a time-out spends one of max_num_timeout (3)"


@needs_cluster
@pytest.mark.slow
def test_a_real_time_out_is_requeued_and_resumes(tmp_path):
    """SLURM's own time limit: 11 minutes (the shortest submitit tells from a preemption), signalled 60 s before;
    the run needs longer than that, so it is cut once and resumed."""
    sweep_dir = tmp_path / "sweep"
    completed = slurm_sweep(sweep_dir, "trainer.epochs=3000", "trainer.limit_train_batches=null",
                            "hydra.launcher.timeout_min=11", "hydra.launcher.signal_delay_s=60")
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "resuming from" in (sweep_dir / "0" / "train.log").read_text()
    assert read_results(sweep_dir / "0")["status"] == "completed"


STAND_IN_SACCT = """#!/bin/sh
# sacct for a cluster without accounting storage: the states squeue still remembers (MinJobAge).
echo "JobID|State|NodeList"
squeue --states=all -h -r -o "%i|%T|%N"
"""


@needs_cluster
@pytest.mark.parametrize("accounting", ["without sacct", "with sacct"])
def test_a_killed_job_is_recorded_as_failed_while_its_sibling_finishes_and_the_report_is_written(tmp_path,
                                                                                                  accounting):
    sweep_dir = tmp_path / "sweep"
    environment = {}
    if accounting == "with sacct":
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "sacct").write_text(STAND_IN_SACCT)
        (tmp_path / "bin" / "sacct").chmod(0o755)
        environment["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    sweep = slurm_sweep(sweep_dir, "trainer.epochs=60", "trainer.limit_train_batches=null", "seed=1,2",
                        background=True, env=environment)
    try:
        wait_for(lambda: (sweep_dir / "0" / CHECKPOINT_NAME).exists(), 180, "job 0's first checkpoint")
        killed = next(task for task in array_task_ids(sweep_dir) if task.endswith("_0"))
        # As the kernel's OOM killer would: the training process dies at once, without a word (`scancel` gives
        # it SLURM's KillWait to notice and record its own failure).
        os.kill(int((sweep_dir / "0" / ".run.lock").read_text()), signal.SIGKILL)
        output, _ = sweep.communicate(timeout=600)
    finally:
        sweep.kill()
    assert sweep.returncode == 1, output[-3000:]
    failed, finished = read_results(sweep_dir / "0"), read_results(sweep_dir / "1")
    assert failed["status"] == "failed" and killed in failed["error"]
    # squeue alone sees it vanish; sacct (where accounting works) names its state.
    assert ("without a result" if accounting == "without sacct" else "failed (") in failed["error"]
    assert finished["status"] == "completed"
    report = (sweep_dir / "comparison.md").read_text()
    assert str(sweep_dir / "0") in report.split("## Failed runs")[1]
    assert "report:" in output


@needs_cluster
def test_a_two_task_job_trains_one_model_with_ddp_and_matches_one_process(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run = ["trainer.epochs=2", "trainer.lr=1e-2", "seed=5"]
    completed = slurm_sweep(sweep_dir, *run, "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    ddp = read_results(sweep_dir / "0")
    single = single_run(tmp_path / "single", *run)
    assert (ddp["provenance"]["world_size"], ddp["provenance"]["slurm"]["tasks"]) == (2, 2)
    assert "2 process(es)" in (sweep_dir / "0" / "train.log").read_text()
    # Each rank takes a strided half of every batch and DDP averages the gradients: the single-process update up
    # to float32 summation order (tests/test_sweeps.py's torchrun test explains the bound).
    for ddp_epoch, single_epoch in zip(ddp["history"], single["history"], strict=True):
        for field in ("train_loss", "val_loss"):
            assert ddp_epoch[field] == pytest.approx(single_epoch[field], rel=1e-5), field
    # Task 1 wrote no log, no Hydra files and no W&B run of its own.
    assert len(list((sweep_dir / "0").glob("*.log"))) == 1
    assert len(list((sweep_dir / "0" / "wandb").glob("offline-run-*"))) == 1
