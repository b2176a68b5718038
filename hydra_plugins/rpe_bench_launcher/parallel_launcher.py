"""Hydra's joblib launcher (one loky worker process per parallel job), refusing before any job starts an
`n_jobs` whose jobs would not fit in the available memory together (rpe_bench/launching.py)."""
import os
import sys

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

from rpe_bench.launching import parallel_jobs_refusal


class ParallelLauncher(JoblibLauncher):
    def launch(self, job_overrides, initial_job_idx):
        job_configs = [self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                       for overrides in job_overrides]
        refusal = parallel_jobs_refusal(self.joblib["n_jobs"], job_configs)
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            sys.exit(2)
        # The workers outlive the sweep: buffered output of a job piped to a file or `tee` would be flushed at their
        # exit, after the sweep's report. Unbuffered workers write each line when it happens.
        os.environ["PYTHONUNBUFFERED"] = "1"
        return super().launch(job_overrides, initial_job_idx)
