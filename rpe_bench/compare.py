"""`python -m rpe_bench.compare DIR...`: tables, plots and one HTML page comparing the runs under DIR.

Every completed run's `results.json` (schema in docs/design.md) is grouped by (dataset, position encoding,
sparsity f); each group is compared with the `rope` group of the same dataset. Failed runs are listed, not counted.
"""
import argparse
import base64
import csv
import html
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from hydra.experimental.callback import Callback
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

log = logging.getLogger("rpe_bench")

REFERENCE_POS = "rope"
SIGNIFICANCE_LEVEL = 0.05
CONFIDENCE_LEVEL = 0.95
MISSING = "-"
TABLE_NAME, REPORT_NAME = "comparison", "report.html"


class ResultsNotFoundError(FileNotFoundError):
    pass


# ---- reading -------------------------------------------------------------------------------------------------

def collect_results(dirs) -> list[dict]:
    """Every results.json under `dirs` (run or sweep folders, searched recursively), each with its "run_dir"."""
    dirs = [Path(folder) for folder in dirs]
    missing = [str(folder) for folder in dirs if not folder.is_dir()]
    if missing:
        raise ResultsNotFoundError(f"no such folder: {', '.join(missing)}")
    # A run folder given next to the sweep that holds it must not count twice.
    paths = sorted({path.resolve(): path for folder in dirs for path in folder.rglob("results.json")}.values())
    if not paths:
        raise ResultsNotFoundError(f"no results.json under: {', '.join(str(folder) for folder in dirs)}")
    return [{**read_result(path), "run_dir": str(path.parent)} for path in paths]


def read_result(path: Path) -> dict:
    """An unreadable file is reported as a failed run rather than losing the whole report."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return {"config": {}, "status": "failed", "error": f"unreadable results.json: {error}"}


def variant_key(result: dict) -> tuple:
    config = result["config"]
    return config["dataset"], config["pos_variant"], config.get("f_sparse")


def variant_sort_key(key: tuple) -> tuple:
    dataset, pos, f = key
    return dataset, pos != REFERENCE_POS, pos, -1.0 if f is None else f


def runs_by_variant(results: list[dict]) -> dict[tuple, list[dict]]:
    """Completed runs grouped by (dataset, pos, f), RoPE first within each dataset."""
    groups = defaultdict(list)
    for result in results:
        if result["status"] == "completed":
            groups[variant_key(result)].append(result)
    return {key: groups[key] for key in sorted(groups, key=variant_sort_key)}


def failed_runs(results: list[dict]) -> list[dict]:
    return [result for result in results if result["status"] != "completed"]


def extrapolation_sizes(results: list[dict]) -> list[str]:
    sizes = {size for result in results if result["status"] == "completed" for size in result["extrapolation"]}
    return sorted(sizes, key=int)


# ---- statistics ----------------------------------------------------------------------------------------------

def mean_and_std(values: list[float]) -> tuple[float, float | None]:
    """Sample standard deviation (ddof=1); None for a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def confidence_interval(values: list[float]) -> tuple[float | None, float | None]:
    """Student-t interval of the mean; None without at least two values."""
    if len(values) < 2:
        return None, None
    mean, std = mean_and_std(values)
    half_width = stats.t.ppf((1 + CONFIDENCE_LEVEL) / 2, len(values) - 1) * std / math.sqrt(len(values))
    return mean - half_width, mean + half_width


def welch_p_value(values: list[float], reference: list[float]) -> float | None:
    """Welch's t-test; None when either side has fewer than two values."""
    if len(values) < 2 or len(reference) < 2:
        return None
    return float(stats.ttest_ind(values, reference, equal_var=False).pvalue)


def significance(p_value: float | None, is_reference: bool) -> str:
    if is_reference:
        return "reference"
    if p_value is None:
        return "n/a, too few seeds"
    # NaN comes from two groups of identical constant values: no difference to find.
    if math.isnan(p_value) or p_value >= SIGNIFICANCE_LEVEL:
        return "not significant"
    return "significant"


def column(runs: list[dict], field: str) -> list[float]:
    return [run[field] for run in runs]


def variant_statistics(key: tuple, runs: list[dict]) -> dict:
    dataset, pos, f = key
    val_acc = column(runs, "final_val_acc")
    val_acc_mean, val_acc_std = mean_and_std(val_acc)
    ci_low, ci_high = confidence_interval(val_acc)
    epoch_seconds_mean, epoch_seconds_std = mean_and_std(column(runs, "avg_epoch_time_sec"))
    return {
        "dataset": dataset, "pos": pos, "f": f, "seeds": len(runs),
        "val_acc_mean": val_acc_mean, "val_acc_std": val_acc_std, "val_acc_ci95_low": ci_low,
        "val_acc_ci95_high": ci_high, "best_val_acc_mean": statistics.fmean(column(runs, "best_val_acc")),
        "epoch_seconds_mean": epoch_seconds_mean, "epoch_seconds_std": epoch_seconds_std,
        "inference_ms_mean": statistics.fmean(column(runs, "inference_time_ms_per_batch")),
        "parameters": round(statistics.fmean(column(runs, "num_parameters"))),
    }


def comparison_with_reference(runs: list[dict], reference_runs: list[dict]) -> dict:
    if not reference_runs:
        return {"epoch_seconds_vs_rope": None, "inference_ms_vs_rope": None, "val_acc_diff_vs_rope": None,
                "p_value_vs_rope": None, "significance": f"n/a, no {REFERENCE_POS} runs"}
    val_acc, reference_val_acc = column(runs, "final_val_acc"), column(reference_runs, "final_val_acc")
    is_reference = runs is reference_runs
    p_value = None if is_reference else welch_p_value(val_acc, reference_val_acc)
    return {
        "epoch_seconds_vs_rope": ratio_of_means(runs, reference_runs, "avg_epoch_time_sec"),
        "inference_ms_vs_rope": ratio_of_means(runs, reference_runs, "inference_time_ms_per_batch"),
        "val_acc_diff_vs_rope": statistics.fmean(val_acc) - statistics.fmean(reference_val_acc),
        "p_value_vs_rope": p_value, "significance": significance(p_value, is_reference),
    }


def ratio_of_means(runs: list[dict], reference_runs: list[dict], field: str) -> float:
    return statistics.fmean(column(runs, field)) / statistics.fmean(column(reference_runs, field))


def extrapolation_statistics(runs: list[dict], sizes: list[str]) -> dict:
    """Val acc mean and std at each evaluated image size, over the runs that evaluated it."""
    row = {}
    for size in sizes:
        values = [run["extrapolation"][size]["val_acc"] for run in runs if size in run["extrapolation"]]
        mean, std = mean_and_std(values) if values else (None, None)
        row[f"extrapolation_{size}_val_acc_mean"], row[f"extrapolation_{size}_val_acc_std"] = mean, std
    return row


def summarize(results: list[dict]) -> list[dict]:
    """One row per (dataset, pos, f) of completed runs; None where a number cannot be computed."""
    groups = runs_by_variant(results)
    sizes = extrapolation_sizes(results)
    rows = []
    for key, runs in groups.items():
        reference_runs = groups.get((key[0], REFERENCE_POS, None), [])
        rows.append({**variant_statistics(key, runs), **comparison_with_reference(runs, reference_runs),
                     **extrapolation_statistics(runs, sizes)})
    return rows


# ---- tables --------------------------------------------------------------------------------------------------

def number(value, digits: int = 2, scale: float = 1.0) -> str:
    return MISSING if value is None else f"{scale * value:.{digits}f}"


def plus_minus(mean, std, digits: int = 2, scale: float = 1.0) -> str:
    if mean is None:
        return MISSING
    return f"{number(mean, digits, scale)} ± {number(std, digits, scale)}"


def percent(value) -> str:
    return number(value, scale=100)


def signed_percent(value) -> str:
    return MISSING if value is None else f"{100 * value:+.2f}"


def interval(low, high) -> str:
    return MISSING if low is None else f"[{percent(low)}, {percent(high)}]"


def ratio(value) -> str:
    return MISSING if value is None else f"{value:.2f}×"


def sparsity(f) -> str:
    return MISSING if f is None else f"{f:g}"


def variant_label(pos: str, f) -> str:
    return pos if f is None else f"{pos} f={sparsity(f)}"


def comparison_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["dataset", "pos", "f", "seeds", "val acc % (mean ± std)", "95% CI", "best val acc %",
               "train s/epoch", "inference ms/batch", "parameters", "train time vs RoPE", "inference vs RoPE",
               "Δ val acc vs RoPE (pp)", "p (Welch)", "significance"]
    cells = [[
        row["dataset"], row["pos"], sparsity(row["f"]), str(row["seeds"]),
        plus_minus(row["val_acc_mean"], row["val_acc_std"], scale=100),
        interval(row["val_acc_ci95_low"], row["val_acc_ci95_high"]), percent(row["best_val_acc_mean"]),
        plus_minus(row["epoch_seconds_mean"], row["epoch_seconds_std"]), number(row["inference_ms_mean"]),
        f"{row['parameters']:,}", ratio(row["epoch_seconds_vs_rope"]), ratio(row["inference_ms_vs_rope"]),
        signed_percent(row["val_acc_diff_vs_rope"]), number(row["p_value_vs_rope"], digits=3), row["significance"],
    ] for row in rows]
    return headers, cells


def extrapolation_table(rows: list[dict], sizes: list[str]) -> tuple[list[str], list[list[str]]]:
    headers = ["dataset", "pos", "f", *[f"{size}px" for size in sizes]]
    cells = [[
        row["dataset"], row["pos"], sparsity(row["f"]),
        *[plus_minus(row[f"extrapolation_{size}_val_acc_mean"], row[f"extrapolation_{size}_val_acc_std"], scale=100)
          for size in sizes],
    ] for row in rows]
    return headers, cells


def failure_table(failures: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["folder", "dataset", "pos", "f", "seed", "error"]
    cells = []
    for failure in failures:
        config = failure.get("config", {})
        error_line = (failure.get("error") or "no error recorded").splitlines()[0]
        cells.append([failure["run_dir"], str(config.get("dataset", MISSING)),
                      str(config.get("pos_variant", MISSING)), sparsity(config.get("f_sparse")),
                      str(config.get("seed", MISSING)), error_line])
    return headers, cells


def report_sections(results: list[dict], rows: list[dict]) -> list[tuple[str, str, tuple]]:
    """(title, note, table) for each section; a table with no rows is shown as its note alone."""
    sizes = extrapolation_sizes(results)
    failures = failed_runs(results)
    return [
        ("Validation accuracy, speed and difference from RoPE",
         f"Final val acc over seeds; 95% CI from Student's t. Δ and p compare with the {REFERENCE_POS} runs of the "
         f"same dataset (Welch's t-test); significant means p < {SIGNIFICANCE_LEVEL}.",
         comparison_table(rows)),
        ("Resolution extrapolation",
         "Val acc % (mean ± std over seeds) at each evaluated image size." if sizes
         else "No run evaluated other image sizes.",
         extrapolation_table(rows, sizes) if sizes else ([], [])),
        ("Failed runs", "Excluded from every statistic above." if failures else "None.", failure_table(failures)),
    ]


def markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells]
    return "\n".join(lines)


def html_table(headers: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def csv_value(value) -> str:
    return MISSING if value is None else str(value)


def write_csv(rows: list[dict], path: Path) -> None:
    fieldnames = list(rows[0]) if rows else ["dataset", "pos", "f", "seeds"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({key: csv_value(value) for key, value in row.items()} for row in rows)


def write_markdown(sections, dirs, plots: list[Path], path: Path) -> None:
    parts = ["# Position-encoding comparison", f"Runs under: {', '.join(str(folder) for folder in dirs)}"]
    for title, note, (headers, cells) in sections:
        parts += [f"## {title}", note] + ([markdown_table(headers, cells)] if cells else [])
    if plots:
        parts += ["## Plots"] + [f"![{plot.stem}]({plot.name})" for plot in plots]
    path.write_text("\n\n".join(parts) + "\n")


PAGE_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
              "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
              "td:nth-child(-n+3){text-align:left}img{max-width:100%;display:block;margin:1em 0}")


def write_html(sections, dirs, plots: list[Path], path: Path) -> None:
    parts = ["<h1>Position-encoding comparison</h1>",
             f"<p>Runs under: {html.escape(', '.join(str(folder) for folder in dirs))}</p>"]
    for title, note, (headers, cells) in sections:
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(note)}</p>"]
        parts += [html_table(headers, cells)] if cells else []
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img alt="{plot.stem}" src="data:image/png;base64,'
                  f'{base64.b64encode(plot.read_bytes()).decode("ascii")}">' for plot in plots]
    path.write_text(f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Position-encoding comparison"
                    f"</title><style>{PAGE_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


# ---- plots ---------------------------------------------------------------------------------------------------

def figure_per_dataset(datasets: list[str], title: str):
    # Figures are built without pyplot, so no GUI backend or global figure state is ever touched.
    figure = Figure(figsize=(5.5 * len(datasets), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(datasets), squeeze=False)[0]
    figure.suptitle(title)
    for axis, dataset in zip(axes, datasets):
        axis.set_title(dataset)
    return figure, dict(zip(datasets, axes))


def plot_val_acc_per_epoch(groups: dict[tuple, list[dict]], path: Path) -> Path | None:
    if not groups:
        return None
    datasets = sorted({dataset for dataset, _, _ in groups})
    figure, axes = figure_per_dataset(datasets, "Validation accuracy per epoch (mean ± std over seeds)")
    for (dataset, pos, f), runs in groups.items():
        by_epoch = defaultdict(list)
        for run in runs:
            for record in run["history"]:
                by_epoch[record["epoch"]].append(record["val_acc"])
        epochs = sorted(by_epoch)
        means = [statistics.fmean(by_epoch[epoch]) for epoch in epochs]
        stds = [mean_and_std(by_epoch[epoch])[1] or 0.0 for epoch in epochs]
        line, = axes[dataset].plot(epochs, means, marker="o", label=variant_label(pos, f))
        axes[dataset].fill_between(epochs, [m - s for m, s in zip(means, stds)],
                                   [m + s for m, s in zip(means, stds)], color=line.get_color(), alpha=0.2)
    for axis in axes.values():
        axis.set(xlabel="epoch", ylabel="val acc")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


SPARSITY_REFERENCE_LINES = {REFERENCE_POS: ("--", "gray"), "cayley_dense": (":", "black")}


def plot_acc_vs_sparsity(rows: list[dict], path: Path) -> Path | None:
    sparse_rows = [row for row in rows if row["pos"] == "cayley_sparse" and row["f"] is not None]
    if not sparse_rows:
        return None
    datasets = sorted({row["dataset"] for row in sparse_rows})
    figure, axes = figure_per_dataset(datasets, "cayley_sparse val acc vs sparsity f (mean ± std over seeds)")
    for dataset, axis in axes.items():
        points = [row for row in sparse_rows if row["dataset"] == dataset]
        axis.errorbar([row["f"] for row in points], [row["val_acc_mean"] for row in points],
                      yerr=[row["val_acc_std"] or 0.0 for row in points], marker="o", capsize=4,
                      label="cayley_sparse")
        for row in rows:
            if row["dataset"] == dataset and row["pos"] in SPARSITY_REFERENCE_LINES:
                linestyle, color = SPARSITY_REFERENCE_LINES[row["pos"]]
                axis.axhline(row["val_acc_mean"], linestyle=linestyle, color=color, label=row["pos"])
        axis.set(xlabel="f (fraction of free entries)", ylabel="val acc")
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


def plot_epoch_time(rows: list[dict], path: Path) -> Path | None:
    if not rows:
        return None
    datasets = sorted({row["dataset"] for row in rows})
    figure, axes = figure_per_dataset(datasets, "Training seconds per epoch (mean ± std over seeds)")
    for dataset, axis in axes.items():
        bars = [row for row in rows if row["dataset"] == dataset]
        labels = [variant_label(row["pos"], row["f"]) for row in bars]
        axis.bar(labels, [row["epoch_seconds_mean"] for row in bars],
                 yerr=[row["epoch_seconds_std"] or 0.0 for row in bars], capsize=4)
        axis.set_ylabel("s/epoch")
        axis.tick_params(axis="x", labelrotation=45)
    figure.savefig(path, dpi=110)
    return path


def write_plots(results: list[dict], rows: list[dict], output: Path) -> list[Path]:
    """The plots that have data; a missing one (e.g. no cayley_sparse runs) is skipped, not an error."""
    written = [
        plot_val_acc_per_epoch(runs_by_variant(results), output / "val_acc_per_epoch.png"),
        plot_acc_vs_sparsity(rows, output / "acc_vs_sparsity.png"),
        plot_epoch_time(rows, output / "epoch_time.png"),
    ]
    return [path for path in written if path is not None]


# ---- entry points --------------------------------------------------------------------------------------------

def write_report(dirs, output) -> Path:
    """comparison.md, comparison.csv, the plots and report.html in `output`; returns the report.html path."""
    results = collect_results(dirs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    write_csv(rows, output / f"{TABLE_NAME}.csv")
    sections = report_sections(results, rows)
    plots = write_plots(results, rows, output)
    write_markdown(sections, dirs, plots, output / f"{TABLE_NAME}.md")
    write_html(sections, dirs, plots, output / REPORT_NAME)
    return output / REPORT_NAME


class ComparisonReportCallback(Callback):
    """Writes the comparison report into the sweep folder when a multirun ends; then, if any job failed, ends the
    sweep with exit status 1, so that a shell, CI or scheduler sees the failure the report lists."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = []
        # A report problem must never fail a sweep whose runs are already done.
        try:
            results = collect_results([sweep_dir])
            log.info("comparison report: %s", write_report([sweep_dir], sweep_dir))
        except Exception:
            log.exception("could not write the comparison report")
        failures = failed_runs(results)
        if failures:
            log.error("%d of %d jobs failed: %s", len(failures), len(results),
                      ", ".join(failure["run_dir"] for failure in failures))
            # Hydra turns a callback's exceptions into warnings; SystemExit is no Exception and reaches the shell.
            sys.exit(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpe_bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run or sweep folders holding results.json files")
    parser.add_argument("--output", type=Path, help="report folder (default: the single DIR given)")
    args = parser.parse_args(argv)
    if args.output is None and len(args.dirs) > 1:
        parser.error("--output is required with more than one DIR")
    try:
        report = write_report(args.dirs, args.output or args.dirs[0])
    except ResultsNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {report} (tables and plots in {report.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
