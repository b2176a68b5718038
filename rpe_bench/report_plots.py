"""The comparison's figures, one panel per dataset: the difference from RoPE with its paired and unpaired
intervals (the headline), accuracy per epoch, accuracy against sparsity, and seconds per epoch. A figure without
data is skipped, not an error."""
from collections import defaultdict
from pathlib import Path
from typing import Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rpe_bench.report_rows import Comparison, VariantRow
from rpe_bench.results import RunResult
from rpe_bench.statistics import PAIRED, mean_and_std

PAIRED_COLOR = "tab:blue"
SPARSITY_REFERENCE_LINES = {"rope": ("--", "gray"), "cayley_dense": (":", "black")}


def figure_per_dataset(datasets: list[str], title: str, panel_height: float = 4.2):
    # Figures are built without pyplot, so no GUI backend or global figure state is ever touched.
    figure = Figure(figsize=(5.5 * len(datasets), panel_height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(datasets), squeeze=False)[0]
    figure.suptitle(title)
    for axis, dataset in zip(axes, datasets):
        axis.set_title(dataset)
    return figure, dict(zip(datasets, axes))


def datasets_of(rows: list[VariantRow]) -> list[str]:
    return sorted({row.dataset_display_name for row in rows})


def draw_interval(axis, y: float, mean: float, low, high, **style) -> None:
    """Mean and 95% CI in points; a refused interval (too few seeds) leaves the mean alone."""
    error = None if low is None else [[100 * (mean - low)], [100 * (high - mean)]]
    axis.errorbar([100 * mean], [y], xerr=error, fmt="o", capsize=4, **style)


def plot_differences(rows: list[VariantRow], path: Path, reference: str = "rope") -> Optional[Path]:
    """Forest plot of Δ final val acc vs RoPE: the reported test's 95% CI per encoding (paired where seeds
    match), Welch's unpaired CI faded just below it."""
    tested = [row for row in rows if row.test is not None]
    if not tested:
        return None
    datasets = datasets_of(tested)
    most = max(sum(row.dataset_display_name == dataset for row in tested) for dataset in datasets)
    figure, axes = figure_per_dataset(datasets, f"Δ final val acc vs {reference}, points (95% CI): paired, "
                                                "unpaired faded",
                                      panel_height=1.6 + 0.5 * most)
    for dataset, axis in axes.items():
        panel = [row for row in tested if row.dataset_display_name == dataset]
        for y, row in enumerate(reversed(panel)):
            if row.test == PAIRED:
                draw_interval(axis, y, row.final_val_acc_diff, row.final_val_acc_diff_ci95_low,
                              row.final_val_acc_diff_ci95_high, color=PAIRED_COLOR)
            # Welch's Δ is the difference of the arms' means over all their runs, the paired one over shared seeds.
            draw_interval(axis, y - 0.25, row.final_val_acc_diff_unpaired,
                          row.final_val_acc_diff_unpaired_ci95_low, row.final_val_acc_diff_unpaired_ci95_high,
                          color="gray", alpha=0.4)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_yticks(range(len(panel)), [row.label for row in reversed(panel)])
        axis.set_ylim(-0.75, len(panel) - 0.5)
        axis.set_xlabel("Δ vs rope (points)")
    figure.savefig(path, dpi=110)
    return path


def plot_val_acc_per_epoch(curves: list[tuple[VariantRow, list[RunResult]]], path: Path) -> Optional[Path]:
    """Drawn only when some run has more than one epoch: one epoch is a single dot, not a curve."""
    curves = [(row, runs) for row, runs in curves if any(len(run.history) > 1 for run in runs)]
    if not curves:
        return None
    figure, axes = figure_per_dataset(datasets_of([row for row, _ in curves]),
                                      "Validation accuracy per epoch (mean ± std over seeds)")
    for row, runs in curves:
        by_epoch = defaultdict(list)
        for run in runs:
            for record in run.history:
                by_epoch[record.epoch].append(record.val_acc)
        epochs = sorted(by_epoch)
        means, stds = zip(*(mean_and_std(by_epoch[epoch]) for epoch in epochs))
        stds = [std or 0.0 for std in stds]
        axis = axes[row.dataset_display_name]
        line, = axis.plot(epochs, means, marker="o", label=row.label)
        axis.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                          color=line.get_color(), alpha=0.2)
    for axis in axes.values():
        axis.set(xlabel="epoch", ylabel="val acc")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


def plot_acc_vs_sparsity(rows: list[VariantRow], path: Path) -> Optional[Path]:
    sparse_rows = [row for row in rows if row.f is not None]
    if not sparse_rows:
        return None
    sparse = ", ".join(sorted({row.encoding for row in sparse_rows}))
    figure, axes = figure_per_dataset(datasets_of(sparse_rows),
                                      f"{sparse} val acc vs sparsity f (mean ± std over seeds)")
    for dataset, axis in axes.items():
        points = [row for row in sparse_rows if row.dataset_display_name == dataset]
        axis.errorbar([row.f for row in points], [row.final_val_acc_mean for row in points],
                      yerr=[row.final_val_acc_std or 0.0 for row in points], marker="o", capsize=4,
                      label=sparse)
        for row in rows:
            if row.dataset_display_name == dataset and row.encoding in SPARSITY_REFERENCE_LINES:
                linestyle, color = SPARSITY_REFERENCE_LINES[row.encoding]
                axis.axhline(row.final_val_acc_mean, linestyle=linestyle, color=color, label=row.label)
        axis.set(xlabel="f (fraction of free entries)", ylabel="val acc")
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


def plot_epoch_time(rows: list[VariantRow], path: Path) -> Optional[Path]:
    if not rows:
        return None
    figure, axes = figure_per_dataset(datasets_of(rows),
                                      "Wall seconds per epoch in the sweep (mean ± std over seeds: not a cost)")
    for dataset, axis in axes.items():
        bars = [row for row in rows if row.dataset_display_name == dataset]
        axis.bar([row.label for row in bars], [row.avg_epoch_time_sec_mean for row in bars],
                 yerr=[row.avg_epoch_time_sec_std or 0.0 for row in bars], capsize=4)
        axis.set_ylabel("s/epoch")
        axis.tick_params(axis="x", labelrotation=45)
    figure.savefig(path, dpi=110)
    return path


def write_plots(comparison: Comparison, curves: list[tuple[VariantRow, list[RunResult]]],
                output: Path) -> list[Path]:
    """`curves`: each row with the runs it summarises, for the per-epoch figure."""
    rows = comparison.rows
    written = [
        plot_differences(rows, output / f"difference_vs_{comparison.reference}.png", comparison.reference),
        plot_val_acc_per_epoch(curves, output / "val_acc_per_epoch.png"),
        plot_acc_vs_sparsity(rows, output / "acc_vs_sparsity.png"),
        plot_epoch_time(rows, output / "epoch_time.png"),
    ]
    return [path for path in written if path is not None]
