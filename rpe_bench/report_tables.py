"""The comparison rows as text: the tables of comparison.md and report.html, comparison.csv, and the short table
a sweep ends with in the terminal. Numbers come from rpe_bench.compare's rows; nothing is computed here."""
import base64
import csv
import html
from pathlib import Path
from typing import Optional

from rpe_bench.report_rows import Comparison, VariantRow
from rpe_bench.results import RunResult, extrapolation_label
from rpe_bench.statistics import SIGNIFICANCE_LEVEL

EMPTY_CELL = "-"
TOO_FEW_SEEDS = "too few seeds"


def number(value, digits: int = 2, scale: float = 1.0) -> str:
    return EMPTY_CELL if value is None else f"{scale * value:.{digits}f}"


def percent(value) -> str:
    return number(value, scale=100)


def signed_points(value) -> str:
    """A difference of accuracies in percentage points."""
    return EMPTY_CELL if value is None else f"{100 * value:+.2f}"


def plus_minus(mean, std, scale: float = 1.0) -> str:
    return EMPTY_CELL if mean is None else f"{number(mean, scale=scale)} ± {number(std, scale=scale)}"


def interval(low, high, seeds_present: bool = True, signed: bool = False) -> str:
    """[low, high] in points; an interval the statistics refused (it would leave the possible range) reads
    'too few seeds'."""
    if low is None:
        return TOO_FEW_SEEDS if seeds_present else EMPTY_CELL
    show = signed_points if signed else percent
    return f"[{show(low)}, {show(high)}]"


def ratio(value) -> str:
    return EMPTY_CELL if value is None else f"{value:.2f}×"


def sparsity(f) -> str:
    return EMPTY_CELL if f is None else f"{f:g}"


def per_seed(deltas: Optional[dict]) -> str:
    return EMPTY_CELL if not deltas else ", ".join(f"{seed}: {signed_points(delta)}" for seed, delta in deltas.items())


def variant_cells(row: VariantRow, with_coordinates: bool) -> list[str]:
    cells = [row.dataset_display_name, row.encoding_label, sparsity(row.f)]
    return cells + [row.coordinates] if with_coordinates else cells


def variant_headers(with_coordinates: bool) -> list[str]:
    return ["dataset", "pos", "f"] + (["coordinates"] if with_coordinates else [])


def accuracy_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    with_coordinates = comparison.shows_coordinates
    headers = variant_headers(with_coordinates) + [
        "seeds", "val acc % (mean ± std)", "95% CI", "best val acc %", "parameters", "train step vs RoPE",
        "inference vs RoPE", "train step ms", "inference ms", "wall s/epoch", "wall inference ms/batch"]
    cells = [variant_cells(row, with_coordinates) + [
        str(row.seeds), plus_minus(row.final_val_acc_mean, row.final_val_acc_std, scale=100),
        interval(row.final_val_acc_ci95_low, row.final_val_acc_ci95_high), percent(row.best_val_acc_mean),
        f"{row.num_parameters:,}", ratio(row.train_step_vs_rope), ratio(row.inference_vs_rope),
        number(row.train_step_ms), number(row.inference_ms),
        plus_minus(row.avg_epoch_time_sec_mean, row.avg_epoch_time_sec_std),
        number(row.inference_time_ms_per_batch_mean),
    ] for row in comparison.rows]
    return headers, cells


def difference_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    with_coordinates = comparison.shows_coordinates
    headers = variant_headers(with_coordinates) + [
        "test", "runs", "Δ per seed (pp)", "mean Δ (pp)", "95% CI", "unpaired 95% CI (Welch)",
        "paired / unpaired CI width", "p", "p (Holm)", "TOST p (Holm)", "detectable Δ at Holm's α (pp)",
        "detectable Δ at 0.05, unadjusted (pp)", "unpaired detectable Δ (pp)", "verdict"]
    cells = []
    for row in comparison.rows:
        if row.is_reference:
            continue
        tested = row.test is not None
        cells.append(variant_cells(row, with_coordinates) + [
            row.test or EMPTY_CELL, row.test_runs or EMPTY_CELL, per_seed(row.final_val_acc_diff_per_seed),
            signed_points(row.final_val_acc_diff),
            interval(row.final_val_acc_diff_ci95_low, row.final_val_acc_diff_ci95_high, tested, signed=True),
            interval(row.final_val_acc_diff_unpaired_ci95_low, row.final_val_acc_diff_unpaired_ci95_high,
                     row.final_val_acc_diff_unpaired_min_detectable is not None, signed=True),
            ratio(row.final_val_acc_diff_ci_width_vs_unpaired),
            number(row.p_value, digits=3), number(row.p_value_holm, digits=3),
            number(row.tost_p_value_holm, digits=3), detectable_at_level(row),
            number(row.final_val_acc_diff_min_detectable_unadjusted, scale=100),
            number(row.final_val_acc_diff_unpaired_min_detectable, scale=100), row.verdict,
        ])
    return headers, cells


def detectable_at_level(row: VariantRow) -> str:
    """'2.51 (α 0.0038, 4 df)': the Holm step's alpha and the test's degrees of freedom beside it."""
    if row.final_val_acc_diff_min_detectable is None:
        return EMPTY_CELL
    return (f"{100 * row.final_val_acc_diff_min_detectable:.2f} (α {row.holm_level:.2g}, "
            f"{row.test_df:.3g} df)")


def seeds(count: Optional[int]) -> str:
    return EMPTY_CELL if count is None else str(count)


def plan_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    with_coordinates = comparison.shows_coordinates
    headers = variant_headers(with_coordinates) + [
        "pairs", "paired SD (pp)", "SD, 80% upper bound (pp)",
        f"seeds to detect ±{100 * comparison.planned_effect:g} pp", "with the SD's upper bound",
        f"seeds to show equivalence within ±{100 * comparison.margin:g} pp", "with the SD's upper bound"]
    cells = [variant_cells(row, with_coordinates) + [
        row.test_runs or EMPTY_CELL, number(row.paired_sd, scale=100), number(row.paired_sd_upper, scale=100),
        seeds(row.seeds_to_detect), seeds(row.seeds_to_detect_upper), seeds(row.seeds_for_equivalence),
        seeds(row.seeds_for_equivalence_upper)]
        for row in comparison.rows if row.paired_sd is not None]
    return headers, cells


def extrapolation_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    with_coordinates, sizes = comparison.shows_coordinates, comparison.extrapolation_sizes
    headers = variant_headers(with_coordinates) + [extrapolation_label(size) for size in sizes]
    cells = [variant_cells(row, with_coordinates) + [plus_minus(*row.extrapolation[size], scale=100) for size in sizes]
             for row in comparison.rows]
    return headers, cells


def arm_table(rows: list, setting: str) -> tuple[list[str], list[list[str]]]:
    headers = ["dataset", "pos", setting, "versus", "test", "Δ per seed (pp)", "mean Δ (pp)", "95% CI", "p",
               "p (Holm)", "verdict"]
    cells = [[row.dataset_display_name, row.label, row.arm, row.versus, row.test or EMPTY_CELL,
              per_seed(row.final_val_acc_diff_per_seed), signed_points(row.final_val_acc_diff),
              interval(row.final_val_acc_diff_ci95_low, row.final_val_acc_diff_ci95_high, row.test is not None,
                       signed=True),
              number(row.p_value, digits=3), number(row.p_value_holm, digits=3), row.verdict]
             for row in rows]
    return headers, cells


def failure_table(failures: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    headers = ["folder", "dataset", "pos", "f", "seed", "error"]
    cells = []
    for failure in failures:
        config = failure.config
        error_line = (failure.error or "no error recorded").splitlines()[0]
        described = ([config.dataset, config.pos_variant, sparsity(config.f_sparse), str(config.seed)] if config
                     else [EMPTY_CELL, EMPTY_CELL, EMPTY_CELL, EMPTY_CELL])
        cells.append([failure.folder, *described, error_line])
    return headers, cells


def report_sections(comparison: Comparison, failures: list[RunResult]) -> list[tuple[str, str, tuple]]:
    """(title, note, table) for each section; a table with no rows is shown as its note alone."""
    comparisons = sum(row.p_value_holm is not None for row in comparison.rows)
    sizes, margin = comparison.extrapolation_sizes, f"±{100 * comparison.margin:g} pp"
    differences, plan = difference_table(comparison), plan_table(comparison)
    nothing_compared = f"No encoding in these runs is compared with {comparison.reference}."
    no_spread = (" Where the per-seed Δ show no spread at all, t is undefined: p is then the exact sign-flip test's "
                 "(the permutation test's, unpaired), and no interval is given.")
    reference_name = "RoPE" if comparison.reference == "rope" else comparison.reference
    return [
        ("Validation accuracy and cost",
         "Final val acc over seeds; 95% CI from Student's t (\"too few seeds\" where it would reach outside "
         "[0, 100]). Cost: median ms of one train step and one inference pass (STRING bases folded), every "
         "variant timed round by round in one process on one batch of the runs' shape (cost.json, with where and "
         "when it was measured); \"vs RoPE\": the ratio to rope timed beside it; \"-\": not measured "
         "(python -m rpe_bench.compare DIR --measure-cost). Wall s/epoch and wall inference: mean over seeds of "
         "what each run recorded beside the other jobs of its sweep, not a cost measure.",
         accuracy_table(comparison)),
        (f"Difference from {reference_name}",
         f"Δ = final val acc minus {comparison.reference}'s, in points. Paired t over the seeds both arms ran "
         f"(their per-seed Δ are listed) where at least two match; Welch's unpaired t otherwise; the test column says "
         f"which.{no_spread} The "
         f"unpaired CI is shown beside for every variant, and for paired rows the ratio of the two widths. "
         f"p (Holm): adjusted over the {comparisons} comparisons in this report; higher or lower means p (Holm) < "
         f"{SIGNIFICANCE_LEVEL}, and \"before Holm's correction only\" that the 95% CI excludes 0 but the "
         f"adjusted p does not. Equivalence margin, declared before the runs: {margin}. TOST p: two one-sided "
         f"t-tests that |Δ| < {margin}, Holm-adjusted over the report's equivalence tests, a family of their own; "
         f"\"equivalent within {margin}\" only when it is below {SIGNIFICANCE_LEVEL}. Otherwise a difference "
         f"that is not significant is inconclusive, not absent. Detectable Δ at Holm's α: the true difference this "
         f"comparison's test, at the α of its Holm step (given with the test's degrees of freedom), finds with "
         f"80% probability given these runs' spread: what its verdict could have found; at 0.05, unadjusted, "
         f"for reference only." if differences[1] else nothing_compared,
         differences),
        ("Seeds a study needs",
         f"From each paired comparison's per-seed differences: their SD and its one-sided 80% upper bound "
         f"(chi-square), and the paired seeds at which a test at Holm's first-step α ({SIGNIFICANCE_LEVEL} / "
         f"{comparisons}) detects a true ±{100 * comparison.planned_effect:g} pp with 80% probability, or TOST shows "
         f"equivalence within {margin} with 80% probability when the true Δ is 0 (python -m rpe_bench.compare "
         f"DIR --plan POINTS --margin POINTS)." if plan[1] else nothing_compared,
         plan),
        ("Extrapolation",
         "Val acc % (mean ± std over seeds) at each evaluated image size (frames resized, patch grid grown) and "
         "clip length (more frames over the same span)." if sizes
         else "No run evaluated other image sizes or clip lengths.",
         extrapolation_table(comparison) if sizes else ([], [])),
        *([(f"Extrapolation: difference from {reference_name}",
            f"Δ = val acc at the row's size minus {comparison.reference}'s at that size, in points, paired over the "
            f"seeds both evaluated it (Welch's t where no two match); p (Holm) over these "
            f"{len(comparison.extrapolation_rows)} comparisons alone (every variant at every size), a family apart "
            f"from final val acc's; \"equivalent within {margin}\" only where TOST rejects after Holm over their "
            f"equivalence tests. What the extrapolation table shows, as a test; what it measures depends on the "
            f"images evaluated (each run's results.json, evaluation_subsets).{no_spread}",
            arm_table(comparison.extrapolation_rows, "size"))] if comparison.extrapolation_rows else []),
        *([("Coordinates",
            "Each encoding against itself under other coordinates (the reference notebook's flat patch index "
            "where present): Δ = final val acc under the row's coordinates minus under `versus`, in points, "
            "paired over the seeds both ran; p (Holm) over these comparisons alone, a family apart from the "
            f"comparisons with RoPE.{no_spread}", arm_table(comparison.coordinate_rows, "coordinates"))]
          if comparison.coordinate_rows else []),
        *([("Starts",
            "Each encoding started otherwise against itself started exactly as RoPE (pos.options.init=rope): Δ = "
            "final val acc under the row's start minus under init=rope, in points, paired over the seeds both ran; "
            f"p (Holm) over these comparisons alone. What the start gives, apart from what the encoding learns."
            f"{no_spread}",
            arm_table(comparison.start_rows, "start"))] if comparison.start_rows else []),
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


def flat_value(value):
    """A row value as one cell of a data table: the per-seed differences become "seed:value" text."""
    if isinstance(value, dict):
        return " ".join(f"{key}:{item}" for key, item in value.items())
    return value


def csv_value(value) -> str:
    return EMPTY_CELL if value is None else str(flat_value(value))


def write_csv(comparison: Comparison, path: Path) -> None:
    records = [row.record() for row in comparison.rows]
    fieldnames = list(records[0]) if records else ["dataset", "pos_variant", "f_sparse", "seeds"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({key: csv_value(value) for key, value in record.items()} for record in records)


def write_markdown(sections, dirs, warning: Optional[str], plots: list[Path], path: Path) -> None:
    parts = ["# Position-encoding comparison", f"Runs under: {', '.join(str(folder) for folder in dirs)}"]
    parts += [f"**Warning.** {warning}"] if warning else []
    for title, note, (headers, cells) in sections:
        parts += [f"## {title}", note] + ([markdown_table(headers, cells)] if cells else [])
    if plots:
        parts += ["## Plots"] + [f"![{plot.stem}]({plot.name})" for plot in plots]
    path.write_text("\n\n".join(parts) + "\n")


PAGE_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
              "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
              "td:nth-child(-n+3){text-align:left}img{max-width:100%;display:block;margin:1em 0}"
              ".warning{background:#fff3cd;border:1px solid #e0b000;padding:6px 10px}")


def write_html(sections, dirs, warning: Optional[str], plots: list[Path], path: Path) -> None:
    parts = ["<h1>Position-encoding comparison</h1>",
             f"<p>Runs under: {html.escape(', '.join(str(folder) for folder in dirs))}</p>"]
    parts += [f'<p class="warning"><b>Warning.</b> {html.escape(warning)}</p>'] if warning else []
    for title, note, (headers, cells) in sections:
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(note)}</p>"]
        parts += [html_table(headers, cells)] if cells else []
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img alt="{plot.stem}" src="data:image/png;base64,'
                  f'{base64.b64encode(plot.read_bytes()).decode("ascii")}">' for plot in plots]
    path.write_text(f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Position-encoding comparison"
                    f"</title><style>{PAGE_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def accuracy_with_interval(row: VariantRow) -> str:
    mean = percent(row.final_val_acc_mean)
    if row.final_val_acc_ci95_low is None:
        return f"{mean} ({TOO_FEW_SEEDS})"
    return f"{mean} ± {100 * (row.final_val_acc_ci95_high - row.final_val_acc_ci95_low) / 2:.2f}"


def difference_with_interval(row: VariantRow) -> str:
    if row.test is None:
        return row.verdict
    bounds = interval(row.final_val_acc_diff_ci95_low, row.final_val_acc_diff_ci95_high, signed=True)
    return f"{signed_points(row.final_val_acc_diff)} {bounds} {row.test}"


def measured_cost(row: VariantRow) -> str:
    if row.train_step_vs_rope is None:
        return "not measured"
    return f"{ratio(row.train_step_vs_rope)} / {ratio(row.inference_vs_rope)}"


def terminal_summary(comparison: Comparison, warning: Optional[str]) -> str:
    """The short table a sweep ends with: each variant's accuracy, its difference from RoPE and its time."""
    several_datasets = len(comparison.datasets) > 1
    table = [(["dataset"] if several_datasets else []) +
             ["variant", "val acc % (mean ± 95% CI)", f"Δ vs {comparison.reference}, pp (95% CI)",
              "cost vs rope (train / inference)"]]
    for row in comparison.rows:
        table.append(([row.dataset_display_name] if several_datasets else []) + [
            row.label, accuracy_with_interval(row), difference_with_interval(row), measured_cost(row)])
    widths = [max(len(line[index]) for line in table) for index in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    return "\n".join(([f"Warning: {warning}"] if warning else []) + lines)


def plan_summary(comparison: Comparison) -> str:
    """The seeds-needed table for the terminal (compare --plan)."""
    headers, cells = plan_table(comparison)
    title = (f"Paired seeds needed (80% power, Holm's first-step alpha): to detect "
             f"±{100 * comparison.planned_effect:g} pp, and to show equivalence within ±{100 * comparison.margin:g} "
             f"pp")
    return title + "\n" + (markdown_table(headers, cells) if cells else "no paired comparisons in these runs")
