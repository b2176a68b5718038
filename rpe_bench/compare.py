"""`python -m rpe_bench.compare DIR...`: tables, plots and one HTML page comparing the runs under DIR.

Every completed run's `results.json` (schema in docs/design.md) is grouped by (dataset, position encoding,
sparsity f, coordinates, the encoding's other options); each group is compared with the `rope` group of the same
dataset and coordinates (with several, the one with the same options), on
final val acc: paired over the seeds both ran, Welch's test where no two seeds match (rpe_bench.statistics).
Failed runs are listed, not counted. This module reads the runs and computes the rows; report_tables writes
them, report_plots draws them and report_wandb puts them on the W&B dashboard.
"""
import argparse
import functools
import logging
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from rpe_bench import cost, provenance, report_plots, report_tables, report_wandb
from rpe_bench.config import CONF_DIR
from rpe_bench.report_rows import ArmRow, Comparison, VariantRow
from rpe_bench.results import (RESULTS_FILE, RunConfigRecord, RunResult, extrapolation_label, extrapolation_order,
                               read_result)
from rpe_bench.statistics import (EQUIVALENCE_MARGIN, PAIRED, PLANNED_EFFECT, SIGNIFICANCE_LEVEL, Difference,
                                  holm_adjusted, holm_levels, mean_and_std, mean_interval,
                                  min_detectable_difference, paired_difference, sd_upper_bound,
                                  seeds_for_equivalence, seeds_to_detect, verdict, welch_difference, width_ratio)

log = logging.getLogger("rpe_bench")

REFERENCE_POS = "rope"
TABLE_NAME, REPORT_NAME = "comparison", "report.html"


class ResultsNotFoundError(FileNotFoundError):
    pass


# ---- reading -------------------------------------------------------------------------------------------------

def collect_results(dirs) -> list[RunResult]:
    """Every results.json under `dirs` (run or sweep folders, searched recursively)."""
    dirs = [Path(folder) for folder in dirs]
    missing = [str(folder) for folder in dirs if not folder.is_dir()]
    if missing:
        raise ResultsNotFoundError(f"no such folder: {', '.join(missing)}")
    # A run folder given next to the sweep that holds it must not count twice.
    paths = sorted({path.resolve(): path for folder in dirs for path in folder.rglob(RESULTS_FILE)}.values())
    if not paths:
        raise ResultsNotFoundError(f"no {RESULTS_FILE} under: {', '.join(str(folder) for folder in dirs)}")
    return [read_result(path) for path in paths]


@functools.cache
def configured_display_name(dataset: str) -> str:
    """The dataset YAML's display_name: files written before training recorded it name only the loader
    (the published CIFAR-10 runs say image_folder)."""
    path = CONF_DIR / "dataset" / f"{dataset}.yaml"
    return OmegaConf.load(path).get("display_name", dataset) if path.is_file() else dataset


def dataset_display_name(config: RunConfigRecord) -> str:
    return config.dataset_display_name or configured_display_name(config.dataset)


class VariantKey(NamedTuple):
    """What a variant's runs share: they differ in seed alone."""
    dataset_display_name: str
    encoding: str
    f: Optional[float]  # cayley_sparse's sparsity, None for every other encoding
    coordinates: str
    options: str = ""  # the encoding's options but f, as "name=value, ..."; "" where the record has none


def encoding_options(result: RunResult) -> str:
    """`pos.options` of the run's resolved config but the sparsity f (a column of its own): a sweep over, say,
    LieRE's block size gives one row per value instead of pooling them. Records without it give ""."""
    options = ((result.resolved_config or {}).get("pos") or {}).get("options") or {}
    return ", ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in sorted(options.items()) if name != "f")


def variant_key(result: RunResult) -> VariantKey:
    config = result.config
    return VariantKey(dataset_display_name(config), config.pos_variant, config.f_sparse, config.coordinates,
                      encoding_options(result))


def reference_key(key: VariantKey, keys, reference: str = REFERENCE_POS) -> Optional[VariantKey]:
    """The group of the reference encoding (rope unless --reference says otherwise) `key` is compared with: the
    one of its dataset and coordinates, or, where the reference's runs differ in options, the one whose options
    equal `key`'s (None if there is no such group)."""
    candidates = [candidate for candidate in keys if candidate.encoding == reference
                  and candidate.dataset_display_name == key.dataset_display_name
                  and candidate.coordinates == key.coordinates]
    if len(candidates) == 1:
        return candidates[0]
    return next((candidate for candidate in candidates if candidate.options == key.options), None)


def variant_sort_key(key: VariantKey, reference: str = REFERENCE_POS) -> tuple:
    return (key.dataset_display_name, key.encoding != reference, key.encoding, -1.0 if key.f is None else key.f,
            key.coordinates, key.options)


def runs_by_variant(results: list[RunResult], reference: str = REFERENCE_POS) -> dict[VariantKey, list[RunResult]]:
    """Completed runs grouped by variant, the reference (RoPE) first within each dataset."""
    groups = defaultdict(list)
    for result in results:
        if result.is_completed:
            groups[variant_key(result)].append(result)
    return {key: groups[key] for key in sorted(groups, key=functools.partial(variant_sort_key, reference=reference))}


def failed_runs(results: list[RunResult]) -> list[RunResult]:
    return [result for result in results if not result.is_completed]


def report_unreadable(results: list[RunResult]) -> None:
    """Names on stderr every results.json the report could not read: the report lists them too, but a sweep's
    last lines must not hide that a run is missing from its table."""
    for result in results:
        if result.is_unreadable:
            print(f"warning: left out of the report, could not read {Path(result.folder) / RESULTS_FILE} "
                  f"({result.error.removeprefix(f'unreadable {RESULTS_FILE}: ')}); rerun that job to replace it",
                  file=sys.stderr, flush=True)


def extrapolation_sizes(results: list[RunResult]) -> list[str]:
    sizes = {size for result in results if result.is_completed for size in result.extrapolation}
    return sorted(sizes, key=extrapolation_order)


def jobs_logger(results: list[RunResult]) -> Optional[dict]:
    """The W&B settings the jobs ran with (the first completed run's), or None for records without them."""
    return next((result.resolved_config["logger"] for result in results
                 if result.is_completed and (result.resolved_config or {}).get("logger")), None)


def provenance_warning(results: list[RunResult]) -> Optional[str]:
    """One line naming what differs between the compared runs' code, libraries and devices, or None."""
    differences = provenance.differences([result.provenance for result in results if result.is_completed])
    return f"Check before comparing: {'; '.join(differences)}." if differences else None


# ---- rows ----------------------------------------------------------------------------------------------------

def column(runs: list[RunResult], field: str) -> list[float]:
    return [getattr(run, field) for run in runs]


def final_val_acc(run: RunResult) -> Optional[float]:
    return run.final_val_acc


def accuracy_at(size: str):
    """The val acc a run reached at one extrapolation size (None where it did not evaluate that size)."""
    def value(run: RunResult) -> Optional[float]:
        record = run.extrapolation.get(size)
        return None if record is None else record.val_acc
    return value


def by_seed(runs: list[RunResult], value=final_val_acc) -> Optional[dict[int, float]]:
    """Seed -> compared accuracy; None when a seed repeats, as runs can then not be paired by seed."""
    values = {run.config.seed: value(run) for run in runs}
    return values if len(values) == len(runs) else None


def encoding_label(key: VariantKey, show_options: bool) -> str:
    return f"{key.encoding} ({key.options})" if show_options and key.options else key.encoding


def variant_label(key: VariantKey, show_coordinates: bool, show_options: bool) -> str:
    label = encoding_label(key, show_options)
    label = label if key.f is None else f"{label} f={key.f:g}"
    return f"{label} ({key.coordinates})" if show_coordinates else label


def accuracy_and_cost(runs: list[RunResult]) -> dict:
    accuracy = column(runs, "final_val_acc")
    interval = mean_interval(accuracy)
    accuracy_mean, accuracy_std = mean_and_std(accuracy)
    best_mean, best_std = mean_and_std(column(runs, "best_val_acc"))
    time_mean, time_std = mean_and_std(column(runs, "avg_epoch_time_sec"))
    return {
        "seeds": len(runs), "final_val_acc_mean": accuracy_mean, "final_val_acc_std": accuracy_std,
        "final_val_acc_ci95_low": interval and interval[0], "final_val_acc_ci95_high": interval and interval[1],
        "best_val_acc_mean": best_mean, "best_val_acc_std": best_std,
        "avg_epoch_time_sec_mean": time_mean, "avg_epoch_time_sec_std": time_std,
        "inference_time_ms_per_batch_mean": mean_and_std(column(runs, "inference_time_ms_per_batch"))[0],
        "num_parameters": round(mean_and_std(column(runs, "num_parameters"))[0]),
    }


# VariantKey's fields under cost.json's names, which are comparison.csv's.
COST_FILE_NAMES = {"dataset_display_name": "dataset_display_name", "encoding": "pos_variant", "f": "f_sparse",
                   "coordinates": "coordinates", "options": "pos_options"}


def variant_fields(key: VariantKey) -> dict:
    """A variant as cost.json names it."""
    return {COST_FILE_NAMES[name]: value for name, value in key._asdict().items()}


def measure_cost(groups: dict[VariantKey, list[RunResult]], seconds_per_variant: float) -> dict:
    """cost.json's record for the variants whose runs recorded their resolved config (the model to build)."""
    configs = {key: runs[0].resolved_config for key, runs in groups.items()
               if (runs[0].resolved_config or {}).get("model")}
    references = {key: reference_key(key, configs) for key in configs}
    costs = cost.measure_variants(configs, references, seconds_per_variant)
    return cost.measurement_record([{**variant_fields(key), **costs[key]} for key in configs])


def costs_by_variant(measurement: Optional[dict]) -> dict[VariantKey, dict]:
    if measurement is None:
        return {}
    return {VariantKey(**{name: item[file_name] for name, file_name in COST_FILE_NAMES.items()}): item
            for item in measurement["variants"]}


def cost_fields(measured: Optional[dict]) -> dict:
    """The measured cost columns (cost.json); None where this variant was not measured."""
    measured = measured or {}
    return {name: measured.get(name) for name in ("train_step_ms", "train_step_vs_rope", "inference_ms",
                                                  "inference_vs_rope")}


def differences_from_reference(runs: list[RunResult], reference_runs: list[RunResult], value=final_val_acc
                               ) -> tuple[Optional[Difference], Optional[Difference]]:
    """(the test to report, Welch's unpaired test) of `value` (final val acc unless said otherwise), over the runs
    that have it: paired where at least two seeds match and none repeats."""
    runs = [run for run in runs if value(run) is not None]
    reference_runs = [run for run in reference_runs if value(run) is not None]
    unpaired = welch_difference([value(run) for run in runs], [value(run) for run in reference_runs])
    values, reference = by_seed(runs, value), by_seed(reference_runs, value)
    paired = paired_difference(values, reference) if values is not None and reference is not None else None
    return paired or unpaired, unpaired


@dataclass(frozen=True)
class Decision:
    """What a report decides with, declared before the runs: the equivalence margin and the effect a plan sizes
    studies for (fractions of accuracy; the command line takes points)."""
    margin: float = EQUIVALENCE_MARGIN
    planned_effect: float = PLANNED_EFFECT
    reference: str = REFERENCE_POS  # the encoding every variant is compared with (compare --reference)


@dataclass(frozen=True)
class Tested:
    """One comparison's place in the report's two Holm families (difference tests, equivalence tests)."""
    adjusted_p: Optional[float] = None
    level: Optional[float] = None  # the alpha of its Holm step
    equivalence_p: Optional[float] = None
    equivalence_adjusted_p: Optional[float] = None
    comparisons: int = 0  # m, the size of each family


def holm_families(differences: dict, decision: Decision) -> dict:
    """Holm over the difference tests, and over the TOST equivalence tests as a family of their own."""
    tested = [key for key, difference in differences.items() if difference is not None]
    p_values = [differences[key].p_value for key in tested]
    equivalence = [differences[key].equivalence_p_value(decision.margin) for key in tested]
    return {key: Tested(adjusted, level, tost, tost_adjusted, len(tested)) for key, adjusted, level, tost, tost_adjusted
            in zip(tested, holm_adjusted(p_values), holm_levels(p_values), equivalence,
                   holm_adjusted(equivalence))}


def plan_fields(difference: Optional[Difference], tested: Tested, decision: Decision) -> dict:
    """Paired seeds a study needs, from these runs' paired spread: to detect the planned effect at 80% power,
    and to show equivalence within the margin at 80% power when the true difference is 0, both at Holm's
    first-step level alpha / m; each for the observed SD and for its one-sided 80% upper bound."""
    empty = {name: None for name in ("paired_sd", "paired_sd_upper", "seeds_to_detect", "seeds_to_detect_upper",
                                     "seeds_for_equivalence", "seeds_for_equivalence_upper")}
    if difference is None or difference.test != PAIRED or not tested.comparisons:
        return empty
    alpha = SIGNIFICANCE_LEVEL / tested.comparisons
    sd = difference.standard_error * math.sqrt(difference.df + 1)
    upper = sd_upper_bound(sd, difference.df)
    return {"paired_sd": sd, "paired_sd_upper": upper,
            "seeds_to_detect": seeds_to_detect(sd, decision.planned_effect, alpha),
            "seeds_to_detect_upper": seeds_to_detect(upper, decision.planned_effect, alpha),
            "seeds_for_equivalence": seeds_for_equivalence(sd, decision.margin, alpha),
            "seeds_for_equivalence_upper": seeds_for_equivalence(upper, decision.margin, alpha)}


def difference_fields(difference: Optional[Difference], unpaired: Optional[Difference], tested: Tested,
                      words: str, decision: Decision) -> dict:
    """The reported test's Δ (final val acc minus rope's), with Welch's unpaired numbers beside it."""
    interval = difference and difference.interval
    unpaired_interval = unpaired and unpaired.interval
    adjusted_p = tested.adjusted_p
    return {
        "test": difference and difference.test, "test_runs": difference and difference.runs,
        "final_val_acc_diff_per_seed": (difference and difference.per_seed) or None,
        "final_val_acc_diff": difference and difference.mean,
        "final_val_acc_diff_ci95_low": interval and interval[0],
        "final_val_acc_diff_ci95_high": interval and interval[1],
        "p_value": difference and difference.p_value, "p_value_holm": adjusted_p,
        "tost_p_value": tested.equivalence_p, "tost_p_value_holm": tested.equivalence_adjusted_p,
        "holm_level": tested.level,
        "final_val_acc_diff_min_detectable": (
            min_detectable_difference(difference.standard_error, difference.df, tested.level)
            if difference and tested.level and difference.standard_error else None),
        "final_val_acc_diff_min_detectable_unadjusted": difference and difference.min_detectable,
        "test_df": difference and difference.df,
        "final_val_acc_diff_unpaired": unpaired and unpaired.mean,
        "final_val_acc_diff_unpaired_ci95_low": unpaired_interval and unpaired_interval[0],
        "final_val_acc_diff_unpaired_ci95_high": unpaired_interval and unpaired_interval[1],
        "final_val_acc_diff_unpaired_min_detectable": unpaired and unpaired.min_detectable,
        "final_val_acc_diff_ci_width_vs_unpaired": (
            width_ratio(interval, unpaired_interval) if difference is not unpaired else None),
        "verdict": words,
        **plan_fields(difference, tested, decision),
    }


def extrapolation_statistics(runs: list[RunResult], sizes: list[str]) -> dict:
    """Val acc (mean, std) at each evaluated image size, over the runs that evaluated it."""
    statistics = {}
    for size in sizes:
        values = [run.extrapolation[size].val_acc for run in runs if size in run.extrapolation]
        statistics[size] = mean_and_std(values) if values else (None, None)
    return statistics


def summarize_groups(groups: dict[VariantKey, list[RunResult]], sizes: list[str],
                     costs: Optional[dict[VariantKey, dict]] = None, decision: Decision = Decision()) -> Comparison:
    """One row per variant. Holm's correction runs over every comparison with RoPE in the report, across
    datasets. `costs`: the measured costs (costs_by_variant)."""
    costs = costs or {}
    reference = decision.reference
    references = {key: reference_key(key, groups, reference) for key in groups}
    differences = {key: differences_from_reference(runs, groups[references[key]])
                   for key, runs in groups.items()
                   if key.encoding != reference and references[key] is not None}
    tested = holm_families({key: difference for key, (difference, _) in differences.items()}, decision)
    show_coordinates = len({key.coordinates for key in groups}) > 1
    # An encoding's options are named only where its runs differ in them.
    option_sets = defaultdict(set)
    for key in groups:
        option_sets[key.dataset_display_name, key.encoding].add(key.options)
    show_options = {key: len(option_sets[key.dataset_display_name, key.encoding]) > 1 for key in groups}
    rows = []
    for key, runs in groups.items():
        if key.encoding == reference:
            words, (difference, unpaired) = "reference", (None, None)
        elif key not in differences:
            words, (difference, unpaired) = f"n/a, no {reference} runs", (None, None)
        else:
            difference, unpaired = differences[key]
            found = tested.get(key, Tested())
            words = verdict(difference, found.adjusted_p, reference, found.equivalence_adjusted_p,
                            decision.margin)
        rows.append(VariantRow(
            dataset=runs[0].config.dataset, dataset_display_name=key.dataset_display_name, encoding=key.encoding,
            f=key.f, coordinates=key.coordinates, options=key.options or None,
            encoding_label=encoding_label(key, show_options[key]),
            label=variant_label(key, show_coordinates, show_options[key]),
            **accuracy_and_cost(runs), **cost_fields(costs.get(key)),
            **difference_fields(difference, unpaired, tested.get(key, Tested()), words, decision),
            extrapolation=extrapolation_statistics(runs, sizes)))
    labels = {key: variant_label(key, show_coordinates, show_options[key]) for key in groups}
    return Comparison(rows, sizes, show_coordinates, coordinate_differences(groups, decision), decision.margin,
                      decision.planned_effect, start_differences(groups, decision), reference,
                      extrapolation_differences(groups, sizes, references, labels, decision))


REFERENCE_COORDINATES = ("flat", "grid", "normalized")  # the first present is the reference
REFERENCE_START = "rope"  # pos.options.init=rope: the encoding started exactly as RoPE


def arm_differences(groups: dict[VariantKey, list[RunResult]], arm_of, references: tuple[str, ...],
                    decision: Decision, what: str) -> list[ArmRow]:
    """Arms of one variant that differ in one setting, each against the reference arm (the first of
    `references` present), on paired seeds, Holm over these comparisons alone. `arm_of(key)`: (the variant
    without that setting, the arm's name), or None for a key that has no such setting."""
    by_variant = defaultdict(dict)
    for key, runs in groups.items():
        found = arm_of(key)
        if found is not None:
            by_variant[found[0]][found[1]] = runs
    pairs = []
    for key, arms in by_variant.items():
        reference = next((name for name in references if name in arms), None)
        for arm, runs in arms.items():
            if reference is not None and arm != reference:
                pairs.append((key, arm, reference, differences_from_reference(runs, arms[reference])[0]))
    return arm_rows([(key, variant_label(key, False, bool(key.options)), arm, reference, f"{reference} {what}",
                      difference) for key, arm, reference, difference in pairs], decision)


def arm_rows(pairs: list[tuple], decision: Decision) -> list[ArmRow]:
    """One row per (key, label, arm, versus, what the verdict names as compared with, difference), Holm over
    these comparisons alone and over their equivalence tests."""
    tested = holm_families({index: pair[-1] for index, pair in enumerate(pairs)}, decision)
    rows = []
    for index, (key, label, arm, versus, compared_with, difference) in enumerate(pairs):
        interval = difference and difference.interval
        found = tested.get(index, Tested())
        rows.append(ArmRow(
            dataset_display_name=key.dataset_display_name, label=label,
            arm=arm, versus=versus, test=difference and difference.test,
            final_val_acc_diff_per_seed=(difference and difference.per_seed) or None,
            final_val_acc_diff=difference and difference.mean,
            final_val_acc_diff_ci95_low=interval and interval[0], final_val_acc_diff_ci95_high=interval and interval[1],
            p_value=difference and difference.p_value, p_value_holm=found.adjusted_p,
            verdict=verdict(difference, found.adjusted_p, compared_with, found.equivalence_adjusted_p,
                            decision.margin)))
    return rows


def extrapolation_differences(groups: dict[VariantKey, list[RunResult]], sizes: list[str],
                              references: dict[VariantKey, Optional[VariantKey]], labels: dict[VariantKey, str],
                              decision: Decision = Decision()) -> list[ArmRow]:
    """Each variant's val acc at each evaluated size against its reference's (RoPE's) at that size, paired over
    the seeds both evaluated it: the extrapolation figures as a test, Holm over these comparisons alone (every
    variant at every size), a family apart from final val acc's."""
    pairs = []
    for key, runs in groups.items():
        reference = references[key]
        if key.encoding == decision.reference or reference is None:
            continue
        for size in sizes:
            difference = differences_from_reference(runs, groups[reference], accuracy_at(size))[0]
            if difference is not None:
                label = extrapolation_label(size)
                pairs.append((key, labels[key], label, decision.reference, f"{decision.reference} at {label}",
                              difference))
    return arm_rows(pairs, decision)


def coordinate_differences(groups: dict[VariantKey, list[RunResult]],
                           decision: Decision = Decision()) -> list[ArmRow]:
    """Each variant under other coordinates against the same variant (dataset, encoding, f, options) under the
    reference coordinates: what 2D positions buy over the notebook's flat index, on paired seeds."""
    return arm_differences(groups, lambda key: (key._replace(coordinates=""), key.coordinates),
                           REFERENCE_COORDINATES, decision, "coordinates")


def start_of(key: VariantKey) -> Optional[tuple[VariantKey, str]]:
    """(the variant without its start, its pos.options.init), or None for an encoding without one. The start's
    own settings (rope_base) go with it."""
    options = dict(option.split("=", 1) for option in key.options.split(", ")) if key.options else {}
    if "init" not in options:
        return None
    rest = ", ".join(f"{name}={value}" for name, value in options.items() if name not in ("init", "rope_base"))
    return key._replace(options=rest), options["init"]


def start_differences(groups: dict[VariantKey, list[RunResult]], decision: Decision = Decision()) -> list[ArmRow]:
    """Each encoding's other starts against its start as RoPE (init=rope): what the start gives, paired."""
    return arm_differences(groups, start_of, (REFERENCE_START,), decision, "start")


def summarize(results: list[RunResult]) -> list[VariantRow]:
    return summarize_groups(runs_by_variant(results), extrapolation_sizes(results)).rows


# ---- entry points --------------------------------------------------------------------------------------------

@dataclass
class Report:
    page: Path
    comparison: Comparison
    plots: list[Path]
    warning: Optional[str]


def render_report(results: list[RunResult], dirs, output, measure_cost_seconds: Optional[float] = None,
                  decision: Decision = Decision()) -> Report:
    """comparison.md, comparison.csv, the plots and report.html in `output`. The cost columns come from
    `output`/cost.json, measured anew first when `measure_cost_seconds` (per variant) is given."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    groups = runs_by_variant(results, decision.reference)
    sizes = extrapolation_sizes(results)
    cost_path = output / cost.COST_FILE
    if measure_cost_seconds is not None and groups:
        cost.write_measurement(cost_path, measure_cost(groups, measure_cost_seconds))
    comparison = summarize_groups(groups, sizes, costs_by_variant(cost.read_measurement(cost_path)), decision)
    curves = list(zip(comparison.rows, groups.values()))
    plots = report_plots.write_plots(comparison, curves, output)
    warning = provenance_warning(results)
    sections = report_tables.report_sections(comparison, failed_runs(results))
    report_tables.write_csv(comparison, output / f"{TABLE_NAME}.csv")
    report_tables.write_markdown(sections, dirs, warning, plots, output / f"{TABLE_NAME}.md")
    report_tables.write_html(sections, dirs, warning, plots, output / REPORT_NAME)
    return Report(output / REPORT_NAME, comparison, plots, warning)


def write_report(dirs, output, measure_cost_seconds: Optional[float] = None,
                 decision: Decision = Decision()) -> Report:
    return render_report(collect_results(dirs), dirs, output, measure_cost_seconds, decision)


def decision_from_points(margin: float, planned_effect: float, reference: str = REFERENCE_POS) -> Decision:
    """Decision from points, refusing values that cannot be a margin or an effect."""
    for name, value in (("margin", margin), ("plan", planned_effect)):
        if not 0 < value < 100:
            raise ValueError(f"--{name} {value:g} is out of range: allowed 0 < {name} < 100 (points of accuracy)")
    return Decision(margin / 100, planned_effect / 100, reference)


class ComparisonReportCallback(Callback):
    """When a multirun ends: writes the comparison report into the sweep folder, logs it as one more W&B run
    in the sweep's group, and prints a short table and the report's path as the sweep's last lines; then, if any
    job failed, ends the sweep with exit status 1, so that a shell, CI or scheduler sees the failure the report
    lists."""

    def __init__(self, measure_cost: bool = True, cost_seconds_per_variant: float = 3.0,
                 margin_points: float = 100 * EQUIVALENCE_MARGIN, plan_points: float = 100 * PLANNED_EFFECT) -> None:
        self.cost_seconds = cost_seconds_per_variant if measure_cost else None
        self.decision = decision_from_points(margin_points, plan_points)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results, report = [], None
        # A report problem must never fail a sweep whose runs are already done.
        try:
            results = collect_results([sweep_dir])
            try:
                report = render_report(results, [sweep_dir], sweep_dir, self.cost_seconds, self.decision)
            except Exception:
                log.exception("could not measure the encodings' cost; the report is written without it")
                report = render_report(results, [sweep_dir], sweep_dir, decision=self.decision)
        except Exception:
            log.exception("could not write the comparison report")
        if report is not None:
            try:
                run_dir = report_wandb.log_report_run(config.logger, sweep_dir, report)
                if run_dir is not None:
                    log.info("comparison on W&B: run %s", run_dir)
            except Exception:
                log.exception("could not log the comparison report to W&B")
        failures = failed_runs(results)
        if failures:
            log.error("%d of %d jobs failed: %s", len(failures), len(results),
                      ", ".join(failure.folder for failure in failures))
        if report is not None:
            print(report_tables.terminal_summary(report.comparison, report.warning))
            print(f"report: {report.page}", flush=True)
        report_unreadable(results)
        if failures:
            # Hydra turns a callback's exceptions into warnings; SystemExit is no Exception and reaches the shell.
            sys.exit(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpe_bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run or sweep folders holding results.json files")
    parser.add_argument("--output", type=Path, help="report folder (default: the single DIR given)")
    parser.add_argument("--measure-cost", action="store_true",
                        help="measure every variant's train step and inference anew (interleaved in this process) "
                             "and rewrite cost.json; otherwise the report reads the cost.json it finds")
    parser.add_argument("--cost-seconds", type=float, default=3.0, metavar="S",
                        help="with --measure-cost: about S seconds of timing per variant (default 3)")
    parser.add_argument("--no-wandb", action="store_true",
                        help="leave W&B alone (by default a single sweep folder's report run is resumed, in the "
                             "jobs' W&B mode)")
    parser.add_argument("--margin", type=float, default=100 * EQUIVALENCE_MARGIN, metavar="POINTS",
                        help=f"the equivalence margin declared before the runs, in points of accuracy (default "
                             f"{100 * EQUIVALENCE_MARGIN:g}): TOST decides 'equivalent within ±POINTS'")
    parser.add_argument("--plan", type=float, default=None, metavar="POINTS",
                        help=f"print, per comparison, the paired seeds needed to detect POINTS (and to show "
                             f"equivalence within the margin) at 80%% power after Holm; the report's table uses "
                             f"POINTS too (default {100 * PLANNED_EFFECT:g})")
    parser.add_argument("--reference", default=None, metavar="ENCODING",
                        help=f"compare every variant with this encoding's runs (default {REFERENCE_POS}; e.g. none: "
                             f"what each encoding's positions give)")
    args = parser.parse_args(argv)
    if args.output is None and len(args.dirs) > 1:
        parser.error("--output is required with more than one DIR")
    try:
        decision = decision_from_points(args.margin, 100 * PLANNED_EFFECT if args.plan is None else args.plan,
                                        args.reference or REFERENCE_POS)
    except ValueError as error:
        parser.error(str(error))
    try:
        results = collect_results(args.dirs)
    except ResultsNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    encodings = sorted({result.config.pos_variant for result in results if result.is_completed})
    # Without rope's runs the default report still shows every variant (its differences read "no rope runs").
    if args.reference is not None and args.reference not in encodings:
        print(f"error: --reference {args.reference}: no completed runs of it under {', '.join(args.dirs)}; "
              f"encodings there: {', '.join(encodings)}", file=sys.stderr)
        return 2
    try:
        report = render_report(results, args.dirs, args.output or args.dirs[0],
                               args.cost_seconds if args.measure_cost else None, decision)
    except cost.CostFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The report run belongs in a sweep folder whose report this is, not beside runs reported elsewhere.
    sweep_report = len(args.dirs) == 1 and (args.output is None
                                            or args.output.resolve() == Path(args.dirs[0]).resolve())
    logger = jobs_logger(results) if sweep_report and not args.no_wandb else None
    if logger is not None:
        run_dir = report_wandb.log_report_run(logger, Path(args.dirs[0]), report)
        if run_dir is not None:
            print(f"comparison on W&B: run {run_dir}")
    if args.plan is not None:
        print(report_tables.plan_summary(report.comparison))
    print(f"report: {report.page} (tables and plots in {report.page.parent})")
    report_unreadable(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
