"""hydra-submitit-launcher's SLURM launcher, made safe for a sweep (rpe_bench/slurm.py):
- the resources left null are filled in from what the runs need, and a request no node of the partition can
  meet is refused with one line before anything is submitted;
- every job is waited for, and one that dies without a result (killed, cancelled, out of memory; seen through
  sacct where accounting works, through squeue where it does not) is recorded as failed in its results.json,
  as a local failure is, while the others finish; the comparison report then lists it and the sweep exits 1;
- in a job of several tasks (DistributedDataParallel), only task 0 writes Hydra's files and log."""
import logging
import sys
import time
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf, open_dict

from rpe_bench import distributed, slurm
from rpe_bench.failures import record_failure

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0
# squeue may lag a moment behind a job's requeue: a job is dead only when missing this long with no result.
GRACE_SECONDS = 15.0
# Task 0 of a multi-task job writes the run folder; the others write no Hydra files and no log.
WORKER_TASK_OVERRIDES = ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


class SacctWarnedOnce(logging.Filter):
    """Without accounting storage submitit warns at every poll that sacct failed; once says it."""

    def __init__(self) -> None:
        super().__init__()
        self.warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.warned:
            return False
        self.warned = True
        record.msg, record.args = ("sacct is unavailable here (no accounting storage?): jobs that die without a "
                                   "result are found through squeue instead"), ()
        return True


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        logging.getLogger("submitit").addFilter(SacctWarnedOnce())
        job_configs = [self.job_config(overrides, initial_job_idx + index)
                       for index, overrides in enumerate(job_overrides)]
        partition = self.params.get("partition")
        try:
            nodes = slurm.partition_nodes(partition)
        except slurm.SlurmUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        request = slurm.fit_to_nodes(slurm.filled_request(self.params, job_configs), nodes)
        refusal = slurm.request_refusal(request, nodes, partition)
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            sys.exit(2)
        self.params = request
        log.info("each job asks for %d task(s) x %d CPU(s), %d GB, %d GPU(s) per node, %d min",
                 request.get("tasks_per_node") or 1, request["cpus_per_task"], request["mem_gb"],
                 request["gpus_per_node"], request["timeout_min"])
        jobs = self.submit(job_overrides, initial_job_idx)
        return self.wait_for(jobs, job_overrides, job_configs)

    def job_config(self, overrides, job_num: int):
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = job_num
        return config

    def submit(self, job_overrides, initial_job_idx):
        """hydra-submitit-launcher's submission: one array job, one task per Hydra job."""
        import submitit
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in base else f"{self._EXECUTOR}_{key}": value
                                      for key, value in self.params.items()
                                      if key not in {"submitit_folder", "max_num_timeout"}})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("SLURM sweep output dir: %s", self.config.hydra.sweep.dir)
        arguments = []
        for index, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + index, " ".join(filter_overrides(overrides)))
            arguments.append((list(overrides), "hydra.sweep.dir", initial_job_idx + index,
                              f"job_id_for_{initial_job_idx + index}", Singleton.get_state()))
        return executor.map_array(self, *zip(*arguments))

    def wait_for(self, jobs, job_overrides, job_configs) -> list[JobReturn]:
        returns, missing_since = {}, {}
        while len(returns) < len(jobs):
            queued = slurm.queued_job_ids()
            for index, job in enumerate(jobs):
                if index in returns:
                    continue
                if job.paths.result_pickle.exists() or job.done():
                    try:
                        returns[index] = job.results()[0]
                    except Exception as error:  # submitit's FailedJobError, UncompletedJobError
                        returns[index] = self.record_dead(job, job_overrides[index], job_configs[index],
                                                          f"SLURM job {job.job_id} failed ({job.state})", error)
                elif queued is not None and job.job_id not in queued:
                    since = missing_since.setdefault(index, time.monotonic())
                    if time.monotonic() - since > GRACE_SECONDS and not job.paths.result_pickle.exists():
                        returns[index] = self.record_dead(
                            job, job_overrides[index], job_configs[index],
                            f"SLURM job {job.job_id} ended without a result (killed, cancelled or out of memory)")
                else:
                    missing_since.pop(index, None)
            if len(returns) < len(jobs):
                time.sleep(POLL_SECONDS)
        return [returns[index] for index in range(len(jobs))]

    def record_dead(self, job, overrides, config, message: str, error: Exception = None) -> JobReturn:
        """A failure record in the job's folder, as a failure inside the job writes one; a completed record
        (a job that finished before SLURM signalled it) is kept."""
        folder = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        detail = f": {str(error).splitlines()[0]}" if error is not None and str(error) else ""
        failure = RuntimeError(f"{message}{detail}; its log: {job.paths.stderr}")
        log.error("job #%s: %s", config.hydra.job.num, failure)
        record_failure(config, folder, failure, list(overrides), refused=True)
        return JobReturn(overrides=list(overrides), cfg=config, working_dir=str(folder), status=JobStatus.COMPLETED,
                         _return_value=None)

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state):
        if distributed.from_environment().rank > 0:
            sweep_overrides = [*sweep_overrides, *WORKER_TASK_OVERRIDES]
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
