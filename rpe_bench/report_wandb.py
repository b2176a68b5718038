"""The comparison on the W&B dashboard: one more W&B run in the sweep's group, job type `report`, holding the
comparison table, the plots and report.html. Its mode is the jobs' (offline unless a key is configured), and its
folder is <sweep folder>/wandb/, so syncing the sweep's W&B folders brings it up beside the jobs' runs."""
from pathlib import Path
from typing import Optional

import wandb

from rpe_bench.config import WandbMode
from rpe_bench.report_tables import flat_value
from rpe_bench.tracking import resolve_mode, sweep_group

REPORT_JOB_TYPE = "report"
TABLE_KEY, PAGE_KEY, PLOT_PREFIX = "comparison", "report", "plots/"


def log_report_run(config, report) -> Optional[Path]:
    """Logs `report` (rpe_bench.compare.Report) as the sweep's report run; returns the run's local folder, or
    None when W&B is disabled."""
    mode = resolve_mode(WandbMode(config.logger.mode).value)
    if mode == "disabled":
        return None
    sweep_dir = Path(config.hydra.sweep.dir)
    group = config.logger.group or sweep_group(sweep_dir)
    columns = list(report.rows[0]) if report.rows else []
    run = wandb.init(project=config.logger.project, entity=config.logger.entity, group=group,
                     job_type=REPORT_JOB_TYPE, name="comparison", tags=list(config.logger.tags),
                     dir=str(sweep_dir), mode=mode, reinit="finish_previous")
    with run:
        run.log({
            TABLE_KEY: wandb.Table(columns=columns,
                                   data=[[flat_value(row[column]) for column in columns] for row in report.rows]),
            **{f"{PLOT_PREFIX}{plot.stem}": wandb.Image(str(plot)) for plot in report.plots},
            # The page as written: W&B's own stylesheet would restyle its tables.
            PAGE_KEY: wandb.Html(report.page.read_text(), inject=False),
        })
    return Path(run.dir).parent
