"""Local parallel sweeps (`hydra/launcher=parallel`), run as the commands a user types: the README's first command
shrunk, a failing job beside a healthy one, the memory refusal; and the defaults of n_jobs and trainer.threads."""
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from rpe_bench.launching import job_memory_bytes, parallel_jobs_refusal, usable_cores
from tests.helpers import PROJECT, TINY_RUN, compose_config, own_wandb_environment, read_results, wandb_summary

FIRST_COMMAND_VARIANTS = ["rope", "cayley_dense", "reflection", "ape"]  # conf/experiment/digits_compare.yaml


def sweep(*overrides: str, sweep_dir: Path) -> subprocess.CompletedProcess:
    """`python -m rpe_bench.train -m ...` shrunk to seconds per job, as a new process with its own W&B service;
    stdout and stderr in one stream, in the order a terminal shows them."""
    return subprocess.run([sys.executable, "-m", "rpe_bench.train", "-m", *TINY_RUN, *overrides,
                           f"hydra.sweep.dir={sweep_dir}"], cwd=PROJECT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=own_wandb_environment(), timeout=300)


@pytest.fixture
def hydra_config(monkeypatch):
    """Sets Hydra's run-time config, as Hydra does for a job, for this test only."""
    instance = HydraConfig.instance()
    monkeypatch.setattr(instance, "cfg", instance.cfg)
    return instance.set_config


def test_the_parallel_launcher_runs_as_many_jobs_at_once_as_there_are_usable_cores_by_default():
    cfg = compose_config("hydra/launcher=parallel", return_hydra_config=True)
    assert cfg.hydra.launcher.n_jobs == usable_cores()


@pytest.mark.parametrize("overrides, threads", [
    (["hydra/launcher=parallel"], 1),  # as many jobs as cores, one thread each
    (["hydra/launcher=parallel", "hydra.launcher.n_jobs=1"], usable_cores()),
    (["hydra/launcher=parallel", "trainer.threads=3"], 3),
    ([], None),  # the default launcher runs one job at a time: torch's default, every core
])
def test_a_sweeps_threads_per_job_default_to_the_cores_shared_among_the_jobs_running_at_once(overrides, threads,
                                                                                             hydra_config):
    cfg = compose_config("hydra.mode=MULTIRUN", *overrides, return_hydra_config=True)
    hydra_config(cfg)
    assert cfg.trainer.threads == threads


def test_a_single_run_of_a_config_that_names_the_parallel_launcher_uses_every_core(hydra_config):
    cfg = compose_config("hydra.mode=RUN", "experiment=digits_compare", return_hydra_config=True)
    hydra_config(cfg)
    assert cfg.trainer.threads is None


def test_the_first_command_runs_its_jobs_side_by_side_and_ends_with_the_comparison_and_the_report_path(tmp_path):
    sweep_dir = tmp_path / "compare"
    completed = sweep("experiment=digits_compare", "seed=1", "hydra.launcher.n_jobs=2", sweep_dir=sweep_dir)
    assert completed.returncode == 0, completed.stdout[-3000:]

    jobs = [sweep_dir / str(job) for job in range(len(FIRST_COMMAND_VARIANTS))]
    results = [read_results(job) for job in jobs]
    assert [result["config"]["pos_variant"] for result in results] == FIRST_COMMAND_VARIANTS
    threads = max(1, usable_cores() // 2)
    run_ids = set()
    for job, result in zip(jobs, results):
        assert result["status"] == "completed"
        assert (job / "train.log").stat().st_size > 0
        run = wandb_summary(job)
        assert run["state"] == "finished"
        run_ids.add(run["run_id"])
        assert result["resolved_config"]["trainer"]["threads"] == threads
        assert (result["provenance"]["threads"], result["provenance"]["parallel_jobs"]) == (threads, 2)
        # The estimate that refuses too many jobs at once bounds what a job really used.
        assert result["peak_memory_mb"] * 2**20 < job_memory_bytes(OmegaConf.load(job / ".hydra" / "config.yaml"))
    assert len(run_ids) == len(jobs)
    # Side by side: some job started before another had finished (times to the second, in ISO form).
    spans = sorted((result["provenance"]["started_utc"], result["provenance"]["finished_utc"]) for result in results)
    assert any(later[0] <= earlier[1] for earlier, later in itertools.pairwise(spans))

    (report,) = sweep_dir.rglob("report.html")
    assert report == sweep_dir / "report.html"
    assert report.stat().st_mtime >= max((job / "results.json").stat().st_mtime for job in jobs)
    # The jobs' lines go to their own logs; the terminal shows one progress bar, then the table and the path.
    lines = completed.stdout.replace("\r", "\n").splitlines()
    assert not any("[epoch" in line or line.startswith("wandb:") for line in lines)
    assert any(line.startswith("jobs: 100%") and "4/4" in line and "failed 0" in line for line in lines)
    tail = [line for line in lines if line.strip()][-(len(FIRST_COMMAND_VARIANTS) + 2):]
    assert {line.split()[0] for line in tail[1:-1]} == set(FIRST_COMMAND_VARIANTS)
    assert tail[-1].endswith(str(report))
    assert "[epoch 1/1]" in (jobs[0] / "train.log").read_text()


def test_a_failing_job_does_not_stop_the_job_running_beside_it(tmp_path):
    sweep_dir = tmp_path / "sweep"
    completed = sweep("hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "trainer.lr=1e30,3e-4",
                      sweep_dir=sweep_dir)
    diverged, healthy = sweep_dir / "0", sweep_dir / "1"

    assert completed.returncode == 1
    assert read_results(healthy)["status"] == "completed" and wandb_summary(healthy)["state"] == "finished"
    assert read_results(diverged)["status"] == "failed" and wandb_summary(diverged)["state"] == "failed"
    assert "1 of 2 jobs failed" in completed.stdout
    assert any("2/2" in line and "failed 1" in line for line in completed.stdout.replace("\r", "\n").splitlines())
    assert str(diverged) in (sweep_dir / "comparison.md").read_text().split("## Failed runs")[1]


def test_a_parallel_launcher_needs_at_least_one_job_at_once():
    assert parallel_jobs_refusal(0, []) == "hydra.launcher.n_jobs=0 must be >= 1"


def test_jobs_that_would_not_fit_in_memory_side_by_side_are_refused_with_one_line_before_any_starts(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # A batch of 10^8 images: terabytes of activations per job.
    completed = sweep("hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=1,2", "trainer.batch_size=100000000",
                      sweep_dir=sweep_dir)
    assert completed.returncode == 2
    (line,) = completed.stdout.splitlines()
    assert line.startswith("error: hydra.launcher.n_jobs=2 needs about ") and line.endswith("allowed here n_jobs <= 1")
    assert [path.name for path in sweep_dir.iterdir()] == ["multirun.yaml"]
