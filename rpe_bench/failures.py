"""What a failed job leaves in its folder: a failure record in results.json, written the same way whether the
job failed in its own process (rpe_bench.train) or died without a word (a SLURM job killed or cancelled: the
launcher writes it), and never over a completed run that a refusal did not touch."""
import logging
import os
from pathlib import Path

from rpe_bench import provenance as run_provenance
from rpe_bench.results import PREVIOUS_RESULTS_FILE, RESULTS_FILE, RunConfigRecord, RunResult, read_result, write_result

log = logging.getLogger("rpe_bench")


def record_failure(cfg, output_dir: Path, error: BaseException, overrides: list[str], refused: bool) -> None:
    """The job's results.json becomes a failure record. Where it held a completed run, a refusal (which trained
    nothing) leaves it as it is, and a failed continuation keeps it beside as results-previous.json."""
    output_dir = Path(output_dir)
    existing = output_dir / RESULTS_FILE
    if existing.exists() and read_result(existing).is_completed:
        if refused:
            log.error("%s keeps the completed run it holds", existing)
            return
        os.replace(existing, output_dir / PREVIOUS_RESULTS_FILE)
        log.error("the completed run this one continued is kept as %s", output_dir / PREVIOUS_RESULTS_FILE)
    output_dir.mkdir(parents=True, exist_ok=True)
    provenance = {"code": run_provenance.code_version(), "versions": run_provenance.library_versions(),
                  "overrides": overrides, "finished_utc": run_provenance.utc_now()}
    write_result(output_dir, RunResult.failed(RunConfigRecord.from_cfg(cfg), error, provenance))
