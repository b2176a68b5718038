"""The comparison on the W&B dashboard: one more W&B run in the sweep's group, job type `report`, holding the
comparison table, the plots and report.html. Its mode is the jobs' (offline unless a key is configured), and its
folder is <sweep folder>/wandb/, so syncing the sweep's W&B folders brings it up beside the jobs' runs.

A sweep group has one report run id, derived from the group: the sweep's callback and every later rebuild
(`python -m rpe_bench.compare SWEEP_FOLDER`) resume it, so the dashboard holds one comparison per sweep, the
latest. Offline, each sitting leaves a folder of its own under that id, and `wandb sync` merges them."""
import hashlib
from pathlib import Path
from typing import Optional

import wandb

from rpe_bench.config import WandbMode
from rpe_bench.report_tables import flat_value
from rpe_bench.tracking import resolve_mode, sweep_group

REPORT_JOB_TYPE = "report"
TABLE_KEY, PAGE_KEY, PLOT_PREFIX = "comparison", "report", "plots/"


def report_run_id(group: str) -> str:
    """The one W&B run id of a sweep group's comparison (letters, digits and dashes, as W&B requires)."""
    return f"report-{hashlib.sha256(group.encode()).hexdigest()[:16]}"


def log_report_run(logger, sweep_dir: Path, report) -> Optional[Path]:
    """Logs `report` (rpe_bench.compare.Report) as the sweep's report run, resuming the group's one report run
    id; returns the run's local folder, or None when W&B is disabled. `logger` holds the jobs' logger settings
    (mode, project, entity, group, tags)."""
    mode = resolve_mode(WandbMode(logger["mode"]).value)
    if mode == "disabled":
        return None
    sweep_dir = Path(sweep_dir)
    group = logger.get("group") or sweep_group(sweep_dir)
    records = [row.record() for row in report.comparison.rows]
    columns = list(records[0]) if records else []
    run = wandb.init(project=logger["project"], entity=logger.get("entity"), group=group,
                     job_type=REPORT_JOB_TYPE, name="comparison", tags=list(logger.get("tags") or []),
                     dir=str(sweep_dir), mode=mode, id=report_run_id(group), resume="allow",
                     reinit="finish_previous")
    with run:
        run.log({
            TABLE_KEY: wandb.Table(columns=columns,
                                   data=[[flat_value(record[column]) for column in columns] for record in records]),
            **{f"{PLOT_PREFIX}{plot.stem}": wandb.Image(str(plot)) for plot in report.plots},
            # The page as written: W&B's own stylesheet would restyle its tables.
            PAGE_KEY: wandb.Html(report.page.read_text(), inject=False),
        })
    return Path(run.dir).parent
