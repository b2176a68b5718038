"""Hydra's joblib launcher (one loky worker process per parallel job), refusing before any job starts an
`n_jobs` whose jobs would not fit in the available memory together (rpe_bench/launching.py), and showing the
sweep as one progress bar instead of the jobs' interleaved lines: each job's log goes to its own file only."""
import logging
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher._core import execute_job, process_joblib_cfg
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from joblib import Parallel, delayed
from tqdm import tqdm

from rpe_bench.distributed import GPU_SLOT_VARIABLE
from rpe_bench.launching import gpu_slots, jobs_use_gpus, parallel_jobs_refusal

log = logging.getLogger(__name__)
# The job's log records go to its <job>.log alone: the terminal shows the sweep's progress bar.
FILE_LOG_ONLY = "hydra.job_logging.root.handlers=[file]"


@dataclass
class ParallelLauncherConf(JobLibLauncherConf):
    """Joblib's settings and how many jobs share one GPU when the jobs train on GPUs."""
    _target_: str = "hydra_plugins.rpe_bench_launcher.parallel_launcher.ParallelLauncher"
    jobs_per_gpu: int = 1


ConfigStore.instance().store(group="hydra/launcher", name="parallel_schema", node=ParallelLauncherConf,
                             provider="rpe_bench")


def indexed_job(index: int, free_gpus, *arguments) -> tuple[int, JobReturn]:
    """One job in a worker process. With GPUs, it takes a free GPU slot for its duration (jobs end in any
    order, so a fixed job-to-GPU assignment would stack jobs on one GPU while another idles)."""
    if free_gpus is None:
        return index, execute_job(index, *arguments)
    gpu = free_gpus.get()
    os.environ[GPU_SLOT_VARIABLE] = str(gpu)
    try:
        return index, execute_job(index, *arguments)
    finally:
        del os.environ[GPU_SLOT_VARIABLE]
        free_gpus.put(gpu)


def failed(job: JobReturn) -> bool:
    """A job failed when it raised, or when rpe_bench.train recorded a failure (it then returns None)."""
    return job.status == JobStatus.FAILED or job.return_value is None


class ParallelLauncher(JoblibLauncher):
    def __init__(self, jobs_per_gpu: int = 1, **joblib_settings):
        super().__init__(**joblib_settings)
        self.jobs_per_gpu = jobs_per_gpu

    def launch(self, job_overrides, initial_job_idx):
        job_configs = [self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                       for overrides in job_overrides]
        refusal = parallel_jobs_refusal(self.joblib["n_jobs"], job_configs, self.jobs_per_gpu)
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            sys.exit(2)
        # Set before the workers start, as they inherit the environment: W&B's own lines would break the bar.
        os.environ["WANDB_SILENT"] = "true"
        os.environ["PYTHONUNBUFFERED"] = "1"
        return self.run_with_progress(job_overrides, initial_job_idx, jobs_use_gpus(job_configs))

    def run_with_progress(self, job_overrides, initial_job_idx, on_gpus: bool) -> list[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        joblib_cfg = self.joblib
        joblib_cfg["backend"] = "loky"  # Hydra's state does not survive the threading backend
        process_joblib_cfg(joblib_cfg)
        log.info("launching %d jobs, %s at once, sweep output dir: %s (each job's log: <job folder>/*.log)",
                 len(job_overrides), joblib_cfg["n_jobs"], sweep_dir)
        for index, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + index, " ".join(filter_overrides(overrides)))
        singleton_state = Singleton.get_state()
        free_gpus = None
        if on_gpus:
            free_gpus, slots = multiprocessing.Manager().Queue(), gpu_slots(self.jobs_per_gpu)
            for gpu in slots:
                free_gpus.put(gpu)
            log.info("GPU slots: %s (hydra.launcher.jobs_per_gpu=%d)", slots, self.jobs_per_gpu)
        jobs = Parallel(**joblib_cfg, return_as="generator_unordered")(
            delayed(indexed_job)(initial_job_idx + index, free_gpus, [*overrides, FILE_LOG_ONLY], self.hydra_context,
                                 self.config, self.task_function, singleton_state)
            for index, overrides in enumerate(job_overrides))
        total, at_once = len(job_overrides), int(joblib_cfg["n_jobs"])
        returns, failures = {}, 0
        with tqdm(total=total, desc="jobs", unit="job", file=sys.stderr, dynamic_ncols=True) as progress:
            progress.set_postfix_str(f"running {min(at_once, total)}, failed 0")
            for index, job in jobs:
                returns[index] = job
                failures += failed(job)
                progress.set_postfix_str(f"running {min(at_once, total - len(returns))}, failed {failures}",
                                         refresh=False)
                progress.update(1)
        return [returns[initial_job_idx + index] for index in range(total)]
