"""The comparison report, checked against synthetic results.json files written as docs/design.md describes, and
against the results published under docs/results/."""
import base64
import csv
import itertools
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict
from scipy import stats

from rpe_bench import report_wandb, statistics, tracking
from rpe_bench.report_rows import VariantRow
from rpe_bench.compare import (ComparisonReportCallback, Decision, collect_results, main, runs_by_variant, summarize,
                               summarize_groups, write_report)
from rpe_bench.tracking import sweep_group
from tests.helpers import PROJECT, compose_config, wandb_inspect

PLOTS = ["difference_vs_rope.png", "val_acc_per_epoch.png", "acc_vs_sparsity.png", "epoch_time.png"]

# (pos, f) -> final val acc per seed 0, 1, 2. rope's seeds differ a lot; cayley_dense is rope plus about one point
# on every seed (a clear paired difference that Welch's test, blind to the pairing, misses); cayley_sparse f=0.5
# equals rope on every seed; cayley_sparse f=0.1 has a single completed seed.
VAL_ACC = {
    ("rope", None): [0.90, 0.93, 0.87],
    ("cayley_dense", None): [0.910, 0.941, 0.881],
    ("cayley_sparse", 0.5): [0.90, 0.93, 0.87],
    ("cayley_sparse", 0.1): [0.85],
}
EPOCH_SECONDS = {("rope", None): [10.0, 11.0, 12.5], ("cayley_dense", None): [14.0, 15.0, 16.5],
                 ("cayley_sparse", 0.5): [12.0, 12.5, 13.0], ("cayley_sparse", 0.1): [11.0]}
PARAMETERS = {("rope", None): 100_000, ("cayley_dense", None): 100_512, ("cayley_sparse", 0.5): 100_256,
              ("cayley_sparse", 0.1): 100_064}
FAILURE = "RuntimeError: CUDA out of memory\nTraceback continues here"
MNIST = "MNIST"  # conf/dataset/mnist.yaml's display_name, which old files without one are read with
PROVENANCE = {"code": {"commit": "abc123", "dirty": False, "package_version": "0.1.0"},
              "versions": {"python": "3.11.9", "torch": "2.14.1", "torchvision": "0.29.1", "hydra-core": "1.3.2",
                           "omegaconf": "2.3.0", "wandb": "0.31.0", "numpy": "2.4.6"},
              "device": {"type": "cpu", "name": "x86", "count": 1, "cpu_model": "x86", "cpu_cores": 2},
              "threads": 2, "world_size": 1, "parallel_jobs": 1, "started_utc": "2026-11-29T00:00:00+00:00",
              "finished_utc": "2026-11-29T00:01:00+00:00", "overrides": []}


def run_record(pos, f, seed, val_acc, epoch_seconds=10.0, parameters=100_000, epochs=2, provenance=None,
               **config) -> dict:
    """A completed run's record; `config` adds to or overrides its config, `provenance` is left out when None
    (files written before it was recorded)."""
    history = [{"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": val_acc - 0.1 / epoch,
                "val_loss": 0.5 / epoch, "val_acc": val_acc - 0.05 / epoch, "epoch_seconds": epoch_seconds,
                "images_per_second": 6000.0, "data_seconds": 0.1, "step_ms": 20.0} for epoch in range(1, epochs + 1)]
    history[-1]["val_acc"] = val_acc
    record = {
        "config": {"dataset": "mnist", "pos_variant": pos, "img_size": 28, "patch_size": 7, "in_chans": 1,
                   "num_classes": 10, "emb_dim": 128, "depth": 4, "n_heads": 4, "batch_size": 128,
                   "epochs": epochs, "lr": 3e-4, "weight_decay": 0.01, "f_sparse": f, "seed": seed, **config},
        "resolved_config": {"seed": seed},
        "status": "completed", "error": None,
        "final_train_loss": 0.5, "final_train_acc": val_acc - 0.05, "final_val_loss": 0.25,
        "final_val_acc": val_acc, "best_val_acc": val_acc + 0.001 * seed,
        "avg_epoch_time_sec": epoch_seconds, "inference_time_ms_per_batch": epoch_seconds / 5,
        "num_parameters": parameters, "data_time_fraction": 0.01, "history": history,
        # Sizes chosen so that sorting them as text ("16" < "8") would be wrong.
        "extrapolation": {"8": {"val_loss": 2.0, "val_acc": val_acc - 0.3 - 0.02 * seed, "images": 100},
                          "16": {"val_loss": 1.0, "val_acc": val_acc - 0.1 + 0.01 * seed, "images": 100}},
    }
    return record if provenance is None else {**record, "provenance": provenance}


def write_runs(folder: Path, records: list[dict]) -> Path:
    """A Hydra-like sweep folder: one numbered job folder per record."""
    for job, record in enumerate(records):
        (folder / str(job)).mkdir(parents=True)
        (folder / str(job) / "results.json").write_text(json.dumps(record))
    return folder


def write_sweep(folder: Path, variants: dict, first_seed: int = 0, **config) -> Path:
    return write_runs(folder, [
        run_record(pos, f, first_seed + index, val_acc, EPOCH_SECONDS[pos, f][index], PARAMETERS[pos, f], **config)
        for (pos, f), accuracies in variants.items() for index, val_acc in enumerate(accuracies)])


@pytest.fixture
def sweep(tmp_path) -> Path:
    folder = write_sweep(tmp_path / "sweep", VAL_ACC)
    failed = folder / "failed_job"
    failed.mkdir()
    config = run_record("cayley_sparse", 0.1, 1, 0.0)["config"]
    (failed / "results.json").write_text(json.dumps({"config": config, "status": "failed", "error": FAILURE}))
    return folder


@pytest.fixture
def report(sweep) -> Path:
    return write_report([sweep], sweep).page


def row_for(rows, pos, f=None) -> VariantRow:
    (row,) = [row for row in rows if (row.encoding, row.f) == (pos, f)]
    return row


def table_lines(markdown: str, section: str) -> dict[str, str]:
    """The rows of one section's table by their first cells after the dataset ("cayley_dense | -")."""
    text = markdown.split(f"## {section}")[1].split("\n## ")[0]
    prefix = f"| {MNIST} | "
    return {" | ".join(line[len(prefix):].split(" | ")[:2]): line for line in text.splitlines()
            if line.startswith(prefix)}


# ---- numbers -------------------------------------------------------------------------------------------------

def test_accuracy_and_cost_match_the_files(sweep):
    rows = summarize(collect_results([sweep]))
    assert [(row.encoding, row.f) for row in rows][0] == ("rope", None)
    assert {(row.encoding, row.f) for row in rows} == set(VAL_ACC)
    for (pos, f), accuracies in VAL_ACC.items():
        row, values = row_for(rows, pos, f), np.array(accuracies)
        assert row.dataset == "mnist" and row.dataset_display_name == MNIST and row.seeds == len(values)
        assert row.final_val_acc_mean == pytest.approx(values.mean(), abs=1e-12)
        assert row.best_val_acc_mean == pytest.approx(np.mean(values + 0.001 * np.arange(len(values))))
        assert row.avg_epoch_time_sec_mean == pytest.approx(np.mean(EPOCH_SECONDS[pos, f]))
        assert row.inference_time_ms_per_batch_mean == pytest.approx(np.mean(EPOCH_SECONDS[pos, f]) / 5)
        assert row.num_parameters == PARAMETERS[pos, f]
        # Wall time is no cost: without a measurement (cost.json) the cost columns stay empty.
        assert all(getattr(row, name) is None for name in ("train_step_ms", "train_step_vs_rope", "inference_ms",
                                                  "inference_vs_rope"))
        if len(values) == 1:
            assert row.final_val_acc_std is None and row.final_val_acc_ci95_low is None
            assert row.avg_epoch_time_sec_std is None and row.extrapolation["8"][1] is None
            continue
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert row.final_val_acc_std == pytest.approx(values.std(ddof=1))
        assert (row.final_val_acc_ci95_low, row.final_val_acc_ci95_high) == (pytest.approx(low),
                                                                                   pytest.approx(high))
        assert row.avg_epoch_time_sec_std == pytest.approx(np.std(EPOCH_SECONDS[pos, f], ddof=1))
        seeds = np.arange(len(values))
        assert row.extrapolation["8"][0] == pytest.approx(np.mean(values - 0.3 - 0.02 * seeds))
        assert row.extrapolation["16"][1] == pytest.approx(np.std(values - 0.1 + 0.01 * seeds, ddof=1))


def test_shared_seeds_give_a_paired_t_test_with_scipys_numbers(sweep):
    row = row_for(summarize(collect_results([sweep])), "cayley_dense")
    variant, rope = VAL_ACC["cayley_dense", None], VAL_ACC["rope", None]
    paired, welch = stats.ttest_rel(variant, rope), stats.ttest_ind(variant, rope, equal_var=False)
    assert row.test == "paired t" and row.test_runs == "3 pairs"
    assert row.final_val_acc_diff_per_seed == {seed: pytest.approx(variant[seed] - rope[seed]) for seed in range(3)}
    assert row.final_val_acc_diff == pytest.approx(np.mean(variant) - np.mean(rope))
    assert row.p_value == pytest.approx(paired.pvalue, rel=1e-9)
    low, high = paired.confidence_interval(0.95)
    assert (row.final_val_acc_diff_ci95_low, row.final_val_acc_diff_ci95_high) == (pytest.approx(low),
                                                                                         pytest.approx(high))
    welch_low, welch_high = welch.confidence_interval(0.95)
    assert (row.final_val_acc_diff_unpaired_ci95_low,
            row.final_val_acc_diff_unpaired_ci95_high) == (pytest.approx(welch_low), pytest.approx(welch_high))
    assert row.final_val_acc_diff_ci_width_vs_unpaired == pytest.approx((high - low) / (welch_high - welch_low))
    # The pairing is what finds it: the per-seed differences barely vary, the seeds themselves a lot.
    assert paired.pvalue < 0.01 < 0.5 < welch.pvalue
    assert row.final_val_acc_diff_min_detectable < 0.01 < row.final_val_acc_diff_unpaired_min_detectable


def test_unmatched_seeds_fall_back_to_welch(tmp_path):
    folder = write_sweep(tmp_path / "rope", {("rope", None): VAL_ACC["rope", None]})
    write_sweep(tmp_path / "dense", {("cayley_dense", None): VAL_ACC["cayley_dense", None]}, first_seed=10)
    row = row_for(summarize(collect_results([folder, tmp_path / "dense"])), "cayley_dense")
    welch = stats.ttest_ind(VAL_ACC["cayley_dense", None], VAL_ACC["rope", None], equal_var=False)
    assert row.test == "Welch t" and row.test_runs == "3 + 3"
    assert row.final_val_acc_diff_per_seed is None
    assert row.p_value == pytest.approx(welch.pvalue, rel=1e-9)
    assert row.final_val_acc_diff_ci95_low == pytest.approx(welch.confidence_interval(0.95).low)
    assert row.final_val_acc_diff_ci95_low == row.final_val_acc_diff_unpaired_ci95_low
    assert row.final_val_acc_diff_ci_width_vs_unpaired is None  # no pairing, nothing gained


def test_holm_adjusts_over_every_comparison_in_the_report(sweep):
    rows = summarize(collect_results([sweep]))
    tested = [row for row in rows if row.p_value is not None]
    assert len(tested) == 2  # cayley_dense and cayley_sparse f=0.5; f=0.1 has one seed
    ordered = sorted(tested, key=lambda row: row.p_value)
    assert ordered[0].p_value_holm == pytest.approx(min(1.0, 2 * ordered[0].p_value))
    assert ordered[1].p_value_holm == pytest.approx(max(ordered[0].p_value_holm, ordered[1].p_value))
    assert statistics.holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert statistics.holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("pairs", [3, 5])
def test_minimum_detectable_difference_is_found_80_percent_of_the_time(pairs):
    """Simulated paired studies whose true difference is the computed MDE reject at 0.05 in 80% of cases."""
    spread = 0.01
    detectable = statistics.min_detectable_difference(spread / np.sqrt(pairs), pairs - 1)
    generator = np.random.default_rng(0)
    deltas = generator.normal(detectable, spread, size=(40_000, pairs))
    rejected = stats.ttest_1samp(deltas, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)


def test_verdicts_follow_the_numbers(report):
    markdown = report.with_name("comparison.md").read_text()
    rows = summarize(collect_results([report.parent]))
    assert row_for(rows, "rope").verdict == "reference"
    assert row_for(rows, "cayley_dense").verdict == "higher than rope"
    # Identical on every seed: no spread, so each one-sided test is the exact sign-flip test's 1 / 2^3, Holm over
    # the report's two equivalence tests: three seeds cannot show equivalence, however alike.
    identical = row_for(rows, "cayley_sparse", 0.5)
    assert identical.p_value == 1.0 and identical.final_val_acc_diff_ci95_low is None
    assert identical.tost_p_value == 0.125 and identical.tost_p_value_holm == 0.25
    assert identical.verdict == "inconclusive (not significant)"
    assert row_for(rows, "cayley_sparse", 0.1).verdict == "n/a, too few seeds"
    lines = table_lines(markdown, "Difference from RoPE")
    assert set(lines) == {"cayley_dense | -", "cayley_sparse | 0.5", "cayley_sparse | 0.1"}
    assert lines["cayley_dense | -"].endswith("| higher than rope |")
    assert "| paired t | 3 pairs | 0: +1.00, 1: +1.10, 2: +1.10 | +1.07 |" in lines["cayley_dense | -"]
    assert lines["cayley_sparse | 0.1"].endswith("| n/a, too few seeds |")
    assert "no difference" not in markdown and "no difference" not in report.read_text()


def test_not_significant_and_wide_is_inconclusive(tmp_path):
    folder = write_sweep(tmp_path / "sweep", {("rope", None): [0.90, 0.93, 0.87],
                                             ("cayley_dense", None): [0.93, 0.90, 0.89]})
    row = row_for(summarize(collect_results([folder])), "cayley_dense")
    assert row.p_value_holm > 0.05
    assert row.final_val_acc_diff_ci95_high - row.final_val_acc_diff_ci95_low > 0.02
    assert row.verdict == "inconclusive (not significant)"


@pytest.mark.parametrize("per_seed, adjusted_p, equivalence_adjusted_p, expected", [
    # Ahead on every seed, CI [+0.30, +0.87] (MNIST's LieRE): the CI excludes 0, Holm's p does not; it says both.
    ([0.0071, 0.0054, 0.0080, 0.0065, 0.0021], 0.056, 0.8, "higher than rope before Holm's correction only"),
    ([-0.0743, -0.0519, -0.0751], 0.139, 1.0, "lower than rope before Holm's correction only"),
    # A CI of [-0.10, +0.59] used to read "equivalent within ±0.59 pp": TOST against ±0.5 pp does not reject.
    ([-0.0019, 0.0050, 0.0021, 0.0024, 0.0046], 0.94, 0.31, "inconclusive (not significant)"),
    ([-0.0010, 0.0012, 0.0003, -0.0004, 0.0001], 1.0, 0.004, "equivalent within ±0.5 pp"),
    ([0.0075, 0.0113, 0.0113, 0.0060, 0.0041], 0.03, 1.0, "higher than rope"),
])
def test_equivalence_is_claimed_only_when_tost_rejects_after_holm(per_seed, adjusted_p, equivalence_adjusted_p,
                                                                  expected):
    reference = {seed: 0.95 for seed in range(len(per_seed))}
    difference = statistics.paired_difference({seed: 0.95 + delta for seed, delta in enumerate(per_seed)},
                                              reference)
    low, high = difference.interval
    assert (low > 0 or high < 0) == (difference.p_value < 0.05)
    assert statistics.verdict(difference, adjusted_p, "rope", equivalence_adjusted_p, margin=0.005) == expected


def sign_flip_p(deltas, alternative: str) -> float:
    """The exact sign-flip test by enumeration: the share of the 2^n sign assignments whose mean is as extreme."""
    observed = np.mean(deltas)
    means = [np.mean(np.multiply(signs, np.abs(deltas))) for signs in itertools.product((-1, 1), repeat=len(deltas))]
    extreme = {"two-sided": lambda mean: abs(mean) >= abs(observed) - 1e-15,
               "greater": lambda mean: mean >= observed - 1e-15}[alternative]
    return sum(map(extreme, means)) / len(means)


def permutation_p(values, reference) -> float:
    """The exact two-sided permutation test of two arms by enumeration."""
    pooled, observed = np.concatenate([values, reference]), abs(np.mean(values) - np.mean(reference))
    differences = [abs(np.mean(pooled[list(chosen)]) - np.mean(np.delete(pooled, list(chosen))))
                   for chosen in itertools.combinations(range(len(pooled)), len(values))]
    return sum(difference >= observed - 1e-15 for difference in differences) / len(differences)


def equal_differences(pairs: int, delta: float) -> statistics.Difference:
    """A paired difference of `delta` on each of `pairs` seeds: no spread at all."""
    return statistics.paired_difference({seed: 0.5 + delta for seed in range(pairs)},
                                        {seed: 0.5 for seed in range(pairs)})


@pytest.mark.parametrize("pairs", [3, 5, 7])
def test_runs_without_spread_are_judged_by_the_exact_randomization_test(pairs):
    """Every seed 2 images of 2,048 behind: t would be infinite and say "lower"; the exact sign-flip test says
    what n seeds can show. TOST likewise, at +-margin."""
    delta = -2 / 2048
    difference = equal_differences(pairs, delta)
    assert difference.p_value == pytest.approx(sign_flip_p([delta] * pairs, "two-sided"))
    assert difference.interval is None and difference.min_detectable is None
    assert difference.equivalence_p_value(0.005) == pytest.approx(sign_flip_p([delta + 0.005] * pairs, "greater"))
    assert difference.equivalence_p_value(0.0005) == 1.0  # outside this margin on every seed
    adjusted = difference.p_value
    assert statistics.verdict(difference, adjusted, "rope") == (
        "lower than rope" if adjusted < 0.05 else "inconclusive (not significant)")
    assert (pairs <= 5) == (adjusted > 0.05)  # 0.25 at 3 seeds, 0.0625 at 5: no verdict; 0.016 at 7
    for values, reference in (([0.51, 0.51, 0.51], [0.5, 0.5, 0.5]), ([0.51, 0.51], [0.5, 0.5, 0.5])):
        unpaired = statistics.welch_difference(values, reference)
        assert unpaired.p_value == pytest.approx(permutation_p(values, reference))


@pytest.mark.parametrize("alpha", [0.05, 0.05 / 11, 0.01])
def test_a_plan_from_runs_without_spread_asks_for_the_seeds_the_exact_test_needs(alpha):
    """Equal per-seed differences: the seeds a plan names are the fewest at which the report's own p (sign-flip)
    falls below alpha, for a difference and for equivalence."""
    detect = statistics.seeds_to_detect(0.0, 0.003, alpha)
    equivalent = statistics.seeds_for_equivalence(0.0, 0.005, alpha)
    assert equal_differences(detect, 0.003).p_value < alpha <= equal_differences(detect - 1, 0.003).p_value
    assert (equal_differences(equivalent, 0.0).equivalence_p_value(0.005) < alpha
            <= equal_differences(equivalent - 1, 0.0).equivalence_p_value(0.005))


def test_tost_is_the_larger_of_scipys_two_one_sided_t_tests():
    """Hand-made paired differences against scipy's one-sided one-sample t-tests at -margin and +margin."""
    deltas = np.array([0.0012, -0.0008, 0.0021, 0.0004, -0.0002, 0.0009])
    difference = statistics.paired_difference({seed: 0.9 + delta for seed, delta in enumerate(deltas)},
                                              {seed: 0.9 for seed in range(len(deltas))})
    for margin in (0.001, 0.003, 0.005):
        above = stats.ttest_1samp(deltas, -margin, alternative="greater").pvalue  # H0: Δ <= -margin
        below = stats.ttest_1samp(deltas, margin, alternative="less").pvalue  # H0: Δ >= margin
        assert difference.equivalence_p_value(margin) == pytest.approx(max(above, below), rel=1e-6)
    assert difference.equivalence_p_value(0.005) < 0.05 < difference.equivalence_p_value(0.001)


def test_holm_levels_are_alpha_over_the_comparisons_left_at_each_step():
    assert statistics.holm_levels([0.01, 0.04, 0.03]) == pytest.approx([0.05 / 3, 0.05 / 1, 0.05 / 2])


@pytest.mark.parametrize("effect, alpha", [(0.003, 0.05 / 13), (0.005, 0.05)])
def test_the_seeds_a_plan_asks_for_detect_the_effect_80_percent_of_the_time(effect, alpha):
    """Simulated paired studies of the planned size find the effect at Holm's level in about 80% of cases; one
    seed fewer, in fewer."""
    spread = 0.003
    seeds = statistics.seeds_to_detect(spread, effect, alpha)
    generator = np.random.default_rng(1)

    def found(pairs: int) -> float:
        deltas = generator.normal(effect, spread, size=(20_000, pairs))
        return (stats.ttest_1samp(deltas, 0.0, axis=1).pvalue < alpha).mean()

    assert found(seeds) >= 0.8 - 0.01 and found(seeds - 1) < 0.8 + 0.01
    detectable = statistics.min_detectable_difference(spread / np.sqrt(seeds), seeds - 1, alpha)
    assert detectable <= effect  # the same power calculation read the other way


def test_the_seeds_a_plan_asks_for_show_equivalence_80_percent_of_the_time():
    spread, margin, alpha = 0.003, 0.005, 0.05 / 10
    seeds = statistics.seeds_for_equivalence(spread, margin, alpha)
    generator = np.random.default_rng(2)
    deltas = generator.normal(0.0, spread, size=(20_000, seeds))
    mean, error = deltas.mean(axis=1), deltas.std(axis=1, ddof=1) / np.sqrt(seeds)
    critical = stats.t.ppf(1 - alpha, seeds - 1)
    shown = ((mean + margin) / error > critical) & ((mean - margin) / error < -critical)
    assert shown.mean() >= 0.8 - 0.01  # the noncentral-t calculation is a lower bound


def test_compare_plan_prints_the_seeds_each_comparison_needs(sweep, capsys):
    assert main([str(sweep), "--no-wandb", "--plan", "0.3", "--margin", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "to detect ±0.3 pp, and to show equivalence within ±0.4 pp" in out
    assert "| MNIST | cayley_dense | - | 3 pairs |" in out
    markdown = (sweep / "comparison.md").read_text()
    assert "Equivalence margin, declared before the runs: ±0.4 pp" in markdown and "## Seeds a study needs" in markdown


@pytest.mark.parametrize("option", ["--margin", "--plan"])
def test_a_margin_or_effect_out_of_range_is_refused(sweep, option, capsys):
    with pytest.raises(SystemExit) as refused:
        main([str(sweep), "--no-wandb", option, "0"])
    assert refused.value.code == 2
    assert f"{option} 0 is out of range: allowed 0 <" in capsys.readouterr().err


def test_an_interval_outside_0_to_100_reads_too_few_seeds(tmp_path):
    # Two seeds far apart: the t interval of the mean, 0.5 ± 12.7 * 0.45, would reach far below 0 and above 1.
    folder = write_sweep(tmp_path / "sweep", {("rope", None): [0.05, 0.95]})
    row = row_for(summarize(collect_results([folder])), "rope")
    assert row.final_val_acc_ci95_low is None and row.final_val_acc_ci95_high is None
    markdown = (write_report([folder], folder).page.parent / "comparison.md").read_text()
    (line,) = table_lines(markdown, "Validation accuracy and cost").values()
    assert "| 50.00 ± 63.64 | too few seeds |" in line


# ---- labels and warnings -------------------------------------------------------------------------------------

def test_datasets_are_named_by_what_they_are(tmp_path):
    old = write_runs(tmp_path / "old", [run_record("rope", None, 0, 0.5, dataset="image_folder")])
    new = write_runs(tmp_path / "new", [run_record("rope", None, 0, 0.5, dataset="image_folder",
                                                   dataset_display_name="My photos")])
    names = {row.dataset_display_name for row in summarize(collect_results([old, new]))}
    assert names == {"CIFAR-10 (JPEG copy)", "My photos"}


def test_coordinates_label_the_rows_when_runs_differ_in_them(tmp_path):
    folder = write_runs(tmp_path / "sweep", [
        *[run_record("rope", None, seed, 0.90 + 0.01 * seed) for seed in range(2)],
        *[run_record("rope", None, seed, 0.80 + 0.01 * seed, coordinates="normalized") for seed in range(2)],
        *[run_record("cayley_dense", None, seed, 0.81 + 0.01 * seed, coordinates="normalized")
          for seed in range(2)]])
    rows = summarize(collect_results([folder]))
    assert [row.label for row in rows] == ["rope (grid)", "rope (normalized)", "cayley_dense (normalized)"]
    # Compared with the rope runs of its own coordinates.
    assert rows[2].final_val_acc_diff == pytest.approx(0.01)
    markdown = (write_report([folder], folder).page.parent / "comparison.md").read_text()
    assert "| dataset | pos | f | coordinates | seeds |" in markdown


def with_options(record: dict, **options) -> dict:
    return {**record, "resolved_config": {**record["resolved_config"], "pos": {"options": options}}}


def test_runs_that_differ_in_an_encodings_options_are_rows_of_their_own(tmp_path):
    # A sweep over LieRE's block size: pooled, its seeds would repeat and the two settings would read as one.
    rope = [run_record("rope", None, seed, acc) for seed, acc in enumerate([0.90, 0.93, 0.87])]
    liere = [with_options(run_record("liere", None, seed, acc), block_size=size, rope_base=10.0)
             for size, accuracies in [(4, [0.91, 0.94, 0.88]), (8, [0.92, 0.95, 0.89])]
             for seed, acc in enumerate(accuracies)]
    folder = write_runs(tmp_path / "sweep", rope + liere)
    rows = {row.label: row for row in summarize(collect_results([folder]))}
    assert set(rows) == {"rope", "liere (block_size=4, rope_base=10)", "liere (block_size=8, rope_base=10)"}
    assert rows["liere (block_size=4, rope_base=10)"].final_val_acc_diff == pytest.approx(0.01)
    assert rows["liere (block_size=8, rope_base=10)"].final_val_acc_diff == pytest.approx(0.02)
    assert rows["liere (block_size=8, rope_base=10)"].test == statistics.PAIRED
    lines = table_lines(write_report([folder], folder).page.with_name("comparison.md").read_text(),
                        "Difference from RoPE")
    assert set(lines) == {"liere (block_size=4, rope_base=10) | -", "liere (block_size=8, rope_base=10) | -"}


def test_options_that_every_run_shares_stay_out_of_the_labels(sweep):
    folder = write_runs(sweep.parent / "with_options", [
        with_options(run_record(pos, f, seed, acc), rope_base=100.0)
        for (pos, f), accuracies in VAL_ACC.items() for seed, acc in enumerate(accuracies)])
    rows = summarize(collect_results([folder]))
    assert [row.label for row in rows] == [row.label for row in summarize(collect_results([sweep]))]
    assert {row.options for row in rows} == {"rope_base=100"}


def test_with_several_rope_settings_each_variant_meets_the_one_with_its_options(tmp_path):
    records = [with_options(run_record(pos, None, seed, base_acc + offset), rope_base=base)
               for pos, offset in [("rope", 0.0), ("circulant", 0.01)]
               for base, base_acc in [(10.0, 0.80), (100.0, 0.90)] for seed in range(3)]
    records[3]["final_val_acc"] = 0.905  # rope at base 100, seed 0: the two rope settings must not be pooled
    folder = write_runs(tmp_path / "sweep", records)
    rows = {row.label: row for row in summarize(collect_results([folder]))}
    assert rows["circulant (rope_base=10)"].final_val_acc_diff == pytest.approx(0.01)
    assert rows["circulant (rope_base=100)"].final_val_acc_diff_per_seed == pytest.approx(
        {0: 0.005, 1: 0.01, 2: 0.01})


def test_provenance_differences_are_one_warning_line(tmp_path):
    newer = {**PROVENANCE, "versions": {**PROVENANCE["versions"], "torch": "2.15.0"}}
    same = write_runs(tmp_path / "same", [run_record("rope", None, seed, 0.9, provenance=PROVENANCE)
                                          for seed in range(2)])
    assert "Warning" not in (write_report([same], same).page.parent / "comparison.md").read_text()
    mixed = write_runs(tmp_path / "mixed", [run_record("rope", None, 0, 0.9, provenance=PROVENANCE),
                                            run_record("rope", None, 1, 0.9, provenance=newer),
                                            run_record("rope", None, 2, 0.9)])
    page = write_report([mixed], mixed).page
    warnings = [line for line in (page.parent / "comparison.md").read_text().splitlines() if "Warning" in line]
    assert warnings == ["**Warning.** Check before comparing: provenance not recorded for 1 of 3 runs; "
                        "torch version (2.14.1, 2.15.0)."]
    assert '<p class="warning">' in page.read_text()


def test_published_results_are_still_read():
    for runs in sorted((PROJECT / "docs" / "results").glob("*/runs")):
        rows = summarize(collect_results([runs]))
        assert rows and {row.dataset_display_name for row in rows} == {"CIFAR-10 (JPEG copy)"}
        assert all(row.test == "paired t" for row in rows if row.encoding != "rope")


# ---- files ---------------------------------------------------------------------------------------------------

def test_extrapolation_table_has_a_column_per_size_in_numeric_order(report):
    markdown = report.with_name("comparison.md").read_text()
    section = markdown.split("## Extrapolation")[1]
    assert "| dataset | pos | f | 8px | 16px |" in section
    assert f"| {MNIST} | rope | - | 58.00 ± 4.36 | 81.00 ± 2.65 |" in section


def test_extrapolation_is_tested_against_rope_at_each_size_on_paired_seeds(tmp_path):
    """Each variant's val acc at a size against rope's at that size: scipy's paired t on the seeds both evaluated
    it, Holm over these comparisons alone."""
    rope = {"40": [0.40, 0.46, 0.38, 0.44], "64": [0.20, 0.27, 0.18, None]}  # seed 3 of rope skipped 64 px
    gain = {"40": [0.002, -0.003, 0.001, 0.000], "64": [0.050, 0.061, 0.049, 0.070]}
    records = []
    for seed in range(4):
        for pos, added in (("rope", dict.fromkeys(rope, 0.0)), ("liere", {size: gain[size][seed] for size in rope})):
            record = run_record(pos, None, seed, 0.9)
            record["extrapolation"] = {size: {"val_loss": 1.0, "val_acc": accuracies[seed] + added[size], "images": 64}
                                       for size, accuracies in rope.items() if accuracies[seed] is not None}
            records.append(record)
    report = write_report([write_runs(tmp_path / "sweep", records)], tmp_path / "report")
    rows = {row.arm: row for row in report.comparison.extrapolation_rows}
    assert set(rows) == {"40px", "64px"} and {(row.label, row.versus) for row in rows.values()} == {("liere", "rope")}
    for size, label in (("40", "40px"), ("64", "64px")):
        seeds = [seed for seed in range(4) if rope[size][seed] is not None]
        ours = [rope[size][seed] + gain[size][seed] for seed in seeds]
        theirs = [rope[size][seed] for seed in seeds]
        assert rows[label].test == "paired t"
        assert rows[label].final_val_acc_diff_per_seed == pytest.approx(dict(zip(seeds, np.subtract(ours, theirs))))
        assert rows[label].p_value == pytest.approx(stats.ttest_rel(ours, theirs).pvalue)
    # A family of two: Holm doubles the smaller p and keeps the larger at least as large.
    assert rows["64px"].p_value_holm == pytest.approx(2 * rows["64px"].p_value)
    assert rows["64px"].verdict.startswith("higher than rope at 64px")
    assert rows["40px"].verdict == "equivalent within ±0.5 pp"  # within ±0.3 points on every seed
    section = (tmp_path / "report" / "comparison.md").read_text().split("## Extrapolation: difference from RoPE")[1]
    assert "over these 2 comparisons alone" in section
    assert f"| {MNIST} | liere | 64px | rope | paired t | 0: +5.00, 1: +6.10, 2: +4.90 | +5.33 |" in section


def test_a_report_without_extrapolation_has_no_extrapolation_test(tmp_path):
    records = [{**run_record(pos, None, seed, 0.9 + 0.01 * seed), "extrapolation": {}}
               for pos in ("rope", "liere") for seed in range(3)]
    report = write_report([write_runs(tmp_path / "sweep", records)], tmp_path / "report")
    assert report.comparison.extrapolation_rows == []
    assert "difference from RoPE" not in (tmp_path / "report" / "comparison.md").read_text()


def test_failed_runs_are_listed_and_excluded(sweep, report):
    rows = summarize(collect_results([sweep]))
    assert row_for(rows, "cayley_sparse", 0.1).seeds == 1
    for page in (report, sweep / "comparison.md"):
        failures = page.read_text().split("Failed runs")[1]
        assert str(sweep / "failed_job") in failures
        assert "RuntimeError: CUDA out of memory" in failures
        assert "Traceback continues here" not in failures


def test_unreadable_results_file_is_listed_as_a_failure(tmp_path):
    folder = write_sweep(tmp_path / "sweep", {("rope", None): [0.9]})
    (folder / "broken").mkdir()
    (folder / "broken" / "results.json").write_text('{"config": ')
    page = write_report([folder], folder).page.read_text()
    assert "unreadable results.json" in page.split("Failed runs")[1]


def test_every_unreadable_results_file_is_named_in_the_terminal_and_the_rest_reported(tmp_path, capsys):
    folder = write_sweep(tmp_path / "sweep", {("rope", None): [0.9, 0.91]})
    for name, text in (("cut", '{"config": {"dataset": "mn'), ("empty", "")):
        (folder / name).mkdir()
        (folder / name / "results.json").write_text(text)
    assert main([str(folder)]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2
    for name, line in zip(("cut", "empty"), warnings):
        assert str(folder / name / "results.json") in line and "left out of the report" in line
    with pytest.raises(SystemExit):  # the sweep's last lines say it too, after its table
        ComparisonReportCallback().on_multirun_end(sweep_config(folder))
    captured = capsys.readouterr()
    assert captured.out.rstrip().splitlines()[-1] == f"report: {folder / 'report.html'}"
    assert len(captured.err.strip().splitlines()) >= 2 and str(folder / "cut") in captured.err
    assert "rope" in (folder / "comparison.md").read_text()


def parse_csv_value(text: str):
    if text == "-":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if ":" in text and " | " not in text:  # per-seed differences, "seed:value" pairs
        return {int(seed): float(value) for seed, value in (pair.split(":") for pair in text.split())}
    return text


def test_csv_reads_back_as_the_summary_rows(sweep, report):
    with (sweep / "comparison.csv").open(newline="") as handle:
        parsed = [{key: parse_csv_value(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    assert parsed == [row.record() for row in summarize(collect_results([sweep]))]
    # One name per quantity: the results.json names, aggregated with a suffix.
    assert {"final_val_acc_mean", "best_val_acc_mean", "avg_epoch_time_sec_mean", "inference_time_ms_per_batch_mean",
            "num_parameters", "pos_variant", "f_sparse", "dataset"} <= set(parsed[0])


def test_plots_are_written_and_embedded_in_the_page(sweep, report):
    assert report == sweep / "report.html"
    page = report.read_text()
    # accuracy, difference, seeds needed, extrapolation and its test against RoPE, failures
    assert page.count("<table>") == 6
    for name in PLOTS:
        png = (sweep / name).read_bytes()
        assert png.startswith(b"\x89PNG")
        assert f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}" in page


def test_single_epoch_runs_get_no_per_epoch_curve_and_a_study_without_comparisons_no_forest(tmp_path):
    folder = write_runs(tmp_path / "sweep", [run_record("rope", None, seed, 0.9, epochs=1) for seed in range(2)])
    page = write_report([folder], tmp_path / "out").page
    assert sorted(path.name for path in (tmp_path / "out").glob("*.png")) == ["epoch_time.png"]
    assert page.read_text().count("data:image/png;base64,") == 1


def test_cli_reports_where_the_report_went(sweep, tmp_path, capsys):
    other = write_sweep(tmp_path / "other", {("rope", None): [0.5]})
    assert main([str(sweep), str(other), "--output", str(tmp_path / "combined")]) == 0
    assert str(tmp_path / "combined" / "report.html") in capsys.readouterr().out
    rope = row_for(summarize(collect_results([sweep, other])), "rope")
    assert rope.seeds == 4


def test_a_repeated_seed_is_not_paired(sweep, tmp_path):
    other = write_sweep(tmp_path / "other", {("rope", None): [0.5]})  # a second rope run at seed 0
    row = row_for(summarize(collect_results([sweep, other])), "cayley_dense")
    assert row.test == "Welch t"


def test_same_run_reached_twice_counts_once(sweep):
    assert len(collect_results([sweep, sweep / "0"])) == len(collect_results([sweep]))


def test_cli_refuses_an_empty_folder_with_exit_code_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    completed = subprocess.run([sys.executable, "-m", "rpe_bench.compare", str(empty)],
                               capture_output=True, text=True, cwd=PROJECT)
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"error: no results.json under: {empty}"


def test_cli_refuses_a_missing_folder_with_exit_code_2(tmp_path, capsys):
    assert main([str(tmp_path / "absent"), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no such folder: {tmp_path / 'absent'}"


# ---- the sweep callback --------------------------------------------------------------------------------------

def sweep_config(sweep_dir: Path, mode: str = "disabled"):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}},
                             "logger": {"mode": mode, "project": "rpe_bench", "entity": None, "group": None,
                                        "tags": []}})


def test_callback_writes_the_report_then_fails_a_sweep_with_a_failed_job(sweep):
    with pytest.raises(SystemExit) as exit_info:
        ComparisonReportCallback().on_multirun_end(sweep_config(sweep))
    assert exit_info.value.code == 1
    assert (sweep / "report.html").exists() and (sweep / "comparison.csv").exists()


def test_callback_ends_the_sweep_with_a_short_table_and_the_report_path(sweep, capsys):
    with pytest.raises(SystemExit):
        ComparisonReportCallback().on_multirun_end(sweep_config(sweep))
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert lines[-1] == f"report: {sweep / 'report.html'}"
    header, *variants = lines[-6:-1]
    assert header.split() == ["variant", "val", "acc", "%", "(mean", "±", "95%", "CI)", "Δ", "vs", "rope,", "pp",
                              "(95%", "CI)", "cost", "vs", "rope", "(train", "/", "inference)"]
    rope_half_width = stats.t.ppf(0.975, 2) * stats.sem(VAL_ACC["rope", None]) * 100
    # These records name no model, so nothing could be measured: the cost says so instead of showing wall time.
    assert variants[0].split() == ["rope", "90.00", "±", f"{rope_half_width:.2f}", "reference", "not", "measured"]
    assert variants[1].split()[:4] == ["cayley_dense", "91.07", "±", f"{rope_half_width:.2f}"]
    assert variants[1].split()[4] == "+1.07" and variants[1].split()[-4:-2] == ["paired", "t"]
    assert variants[2].split() == ["cayley_sparse", "f=0.1", "85.00", "(too", "few", "seeds)", "n/a,", "too", "few",
                                   "seeds", "not", "measured"]


def test_callback_ends_a_sweep_without_failures_normally(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", {("rope", None): [0.9, 0.91]})
    ComparisonReportCallback().on_multirun_end(sweep_config(sweep))
    assert (sweep / "report.html").exists()
    assert not (sweep / "wandb").exists()  # W&B disabled: no report run


def test_callback_logs_instead_of_failing_the_sweep(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="rpe_bench"):
        ComparisonReportCallback().on_multirun_end(sweep_config(tmp_path))
    assert "could not write the comparison report" in caplog.text


def test_the_report_run_sits_in_the_sweeps_group_and_holds_table_plots_and_page(sweep, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(SystemExit):
        ComparisonReportCallback().on_multirun_end(sweep_config(sweep, mode="offline"))
    (offline_run,) = (sweep / "wandb").glob("offline-run-*")
    (record,) = [json.loads(line)["run"] for line in wandb_inspect(offline_run).splitlines()
                 if '"type":"run"' in line]
    assert record["run_group"] == f"sweep-{sweep.parent.name}_sweep" and record["job_type"] == "report"
    summary = json.loads(wandb_inspect(offline_run, "--summary"))
    assert summary["state"] == "finished"
    logged = summary["summary"]
    rows = summarize(collect_results([sweep]))
    assert logged["comparison"]["_type"] == "table-file"
    assert (logged["comparison"]["nrows"], logged["comparison"]["ncols"]) == (len(rows), len(rows[0].record()))
    images = {key for key, value in logged.items() if isinstance(value, dict) and value["_type"] == "image-file"}
    assert images == {f"plots/{Path(name).stem}" for name in PLOTS}
    assert logged["report"]["_type"] == "html-file"
    page = (offline_run / "files" / logged["report"]["path"]).read_text()
    assert page == (sweep / "report.html").read_text()
    table = json.loads((offline_run / "files" / logged["comparison"]["path"]).read_text())
    assert table["columns"] == list(rows[0].record()) and table["data"][0][:5] == ["mnist", MNIST, "rope", None, "grid"]


def resolved_config(pos: str, seed: int) -> dict:
    """What a real run records as its resolved config: a small digits ViT."""
    cfg = compose_config("dataset=digits", "model.emb_dim=32", "model.depth=1", "model.num_heads=2",
                         "trainer.batch_size=16", f"pos={pos}", f"seed={seed}")
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def test_the_cost_columns_are_a_measurement_kept_in_cost_json_and_rebuilds_read_it(tmp_path, capsys):
    records = []
    for pos in ("rope", "cayley_dense", "reflection"):
        for seed in (1, 2):
            record = run_record(pos, None, seed, 0.9 + 0.01 * seed, dataset="digits")
            record["resolved_config"] = resolved_config(pos, seed)
            records.append(record)
    sweep = write_runs(tmp_path / "sweep", records)
    assert main([str(sweep), "--measure-cost", "--cost-seconds", "0.05", "--no-wandb"]) == 0
    measurement = json.loads((sweep / "cost.json").read_text())
    assert measurement["code"] and measurement["versions"]["torch"] and measurement["threads"] >= 1
    assert measurement["measured_utc"] and measurement["device"]
    measured = {item["pos_variant"]: item for item in measurement["variants"]}
    assert set(measured) == {"rope", "cayley_dense", "reflection"}
    assert measured["rope"]["train_step_vs_rope"] == 1.0 and measured["rope"]["inference_vs_rope"] == 1.0
    rows = {row["pos_variant"]: row for row in csv.DictReader((sweep / "comparison.csv").open())}
    for pos, item in measured.items():
        assert item["train_step_ms"] > 0 and item["inference_ms"] > 0 and item["rounds"] >= 5
        assert parse_csv_value(rows[pos]["train_step_vs_rope"]) == pytest.approx(item["train_step_vs_rope"])
        assert parse_csv_value(rows[pos]["inference_vs_rope"]) == pytest.approx(item["inference_vs_rope"])
    # A rebuild reads the measurement and measures nothing: every file stays byte for byte.
    written = {name: (sweep / name).read_bytes() for name in ("cost.json", "comparison.csv", "comparison.md")}
    assert main([str(sweep), "--no-wandb"]) == 0
    assert {name: (sweep / name).read_bytes() for name in written} == written


def test_a_damaged_cost_file_is_named_and_nothing_is_rewritten(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", {("rope", None): [0.9, 0.91]})
    (sweep / "cost.json").write_text('{"schema_version": 1, "vari')
    assert main([str(sweep), "--no-wandb"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(sweep / "cost.json") in line and "--measure-cost" in line
    assert not (sweep / "comparison.md").exists()


def test_a_sweep_keeps_one_report_run_id_however_often_its_report_is_rebuilt(sweep, monkeypatch):
    """The callback at the sweep's end, again when the sweep is finished in a second sitting, and a rebuild from
    the command line all resume the group's one report run id."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for path in sweep.rglob("results.json"):
        record = json.loads(path.read_text())
        if record["status"] == "completed":
            record["resolved_config"]["logger"] = {"mode": "offline", "project": "rpe_bench", "entity": None,
                                                   "group": None, "tags": []}
            path.write_text(json.dumps(record))
    for _ in range(2):
        with pytest.raises(SystemExit):
            ComparisonReportCallback().on_multirun_end(sweep_config(sweep, mode="offline"))
    assert main([str(sweep)]) == 0
    runs = sorted((sweep / "wandb").glob("offline-run-*"))  # a folder per sitting (a second's resolution)
    expected = report_wandb.report_run_id(sweep_group(sweep))
    assert runs
    assert {path.stem for run in runs for path in run.glob("run-*.wandb")} == {f"run-{expected}"}
    assert main([str(sweep), "--no-wandb"]) == 0
    assert sorted((sweep / "wandb").glob("offline-run-*")) == runs


def test_the_report_runs_group_is_the_jobs_group(tmp_path, monkeypatch):
    cfg = compose_config("dataset=digits", return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.sweep.dir = str(tmp_path / "2026-11-29" / "10-00-00")
        cfg.hydra.job.num = 0
    # What a job of this sweep sees as its Hydra config when it names its W&B run.
    monkeypatch.setattr(tracking.HydraConfig, "get", staticmethod(lambda: cfg.hydra))
    assert tracking.run_labels(cfg)["group"] == sweep_group(cfg.hydra.sweep.dir) == "sweep-2026-11-29_10-00-00"


def published_reports() -> list[Path]:
    """Every published report whose raw runs are in the repository (the first MNIST study's are not)."""
    reports = []
    for markdown in sorted((PROJECT / "docs" / "results").rglob("comparison.md")):
        dirs = published_dirs(markdown.parent)
        if all((PROJECT / folder).is_dir() for folder in dirs):
            reports.append(markdown.parent)
    return reports


def published_reference(report: Path) -> str:
    """The encoding a report compares with, as its difference section's title names it (compare --reference)."""
    title = next(line for line in (report / "comparison.md").read_text().splitlines()
                 if line.startswith("## Difference from "))
    named = title.removeprefix("## Difference from ")
    return "rope" if named == "RoPE" else named


def published_dirs(report: Path) -> list[str]:
    """The run folders a report was built from, as its first line names them (relative to the project)."""
    line = next(line for line in (report / "comparison.md").read_text().splitlines() if line.startswith("Runs under:"))
    return line.removeprefix("Runs under: ").split(", ")


@pytest.mark.parametrize("report", published_reports(), ids=lambda path: str(path.relative_to(PROJECT / "docs")))
def test_every_published_report_rebuilds_from_its_raw_runs_unchanged(report, tmp_path, monkeypatch):
    """comparison.csv and comparison.md, byte for byte, from the committed results.json files and cost.json (the
    plots' bytes follow the matplotlib version, so they are not compared)."""
    monkeypatch.chdir(PROJECT)
    if (report / "cost.json").exists():
        (tmp_path / "cost.json").write_bytes((report / "cost.json").read_bytes())
    write_report(published_dirs(report), tmp_path, decision=Decision(reference=published_reference(report)))
    for name in ("comparison.csv", "comparison.md"):
        assert (tmp_path / name).read_bytes() == (report / name).read_bytes(), name


def test_each_encoding_is_compared_with_itself_under_flat_coordinates_on_paired_seeds(tmp_path):
    """What 2D buys over the notebook's 1D: grid runs of an encoding against its flat runs at the same seeds."""
    flat = {"rope": [0.80, 0.85, 0.78], "cayley_dense": [0.81, 0.86, 0.80]}
    gain = {"rope": [0.05, 0.06, 0.05], "cayley_dense": [0.00, 0.01, -0.01]}
    records = [run_record(pos, None, seed, accuracy + dict(flat=0.0, grid=gain[pos][seed])[coordinates],
                          coordinates=coordinates)
               for pos, accuracies in flat.items() for seed, accuracy in enumerate(accuracies)
               for coordinates in ("flat", "grid")]
    report = write_report([write_runs(tmp_path / "sweep", records)], tmp_path / "report")
    rows = {row.label: row for row in report.comparison.coordinate_rows}
    assert set(rows) == {"rope", "cayley_dense"}
    rope = rows["rope"]
    assert (rope.arm, rope.versus, rope.test) == ("grid", "flat", "paired t")
    assert rope.final_val_acc_diff_per_seed == pytest.approx({0: 0.05, 1: 0.06, 2: 0.05})
    assert rope.final_val_acc_diff == pytest.approx(np.mean(gain["rope"]))
    # Two comparisons in the family: Holm doubles the smaller p.
    smaller = min(row.p_value for row in rows.values())
    assert min(row.p_value_holm for row in rows.values()) == pytest.approx(2 * smaller)
    assert rope.verdict.startswith("higher than flat coordinates")
    section = (tmp_path / "report" / "comparison.md").read_text().split("## Coordinates")[1]
    assert f"| {MNIST} | rope | grid | flat | paired t |" in section
    # The comparisons with RoPE stay within each coordinates: flat against flat, grid against grid.
    assert {(row.encoding, row.coordinates) for row in report.comparison.rows if row.is_reference} == {
        ("rope", "flat"), ("rope", "grid")}


def test_a_report_without_other_coordinates_has_no_coordinates_section(report):
    assert "## Coordinates" not in report.with_name("comparison.md").read_text()


def test_the_sweeps_report_callback_takes_the_declared_margin(sweep):
    from omegaconf import OmegaConf
    callback = ComparisonReportCallback(measure_cost=False, margin_points=0.25, plan_points=0.2)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "logger": {"mode": "disabled"}})
    with pytest.raises(SystemExit):  # the fixture's sweep holds a failed job
        callback.on_multirun_end(config)
    markdown = (sweep / "comparison.md").read_text()
    assert "Equivalence margin, declared before the runs: ±0.25 pp" in markdown
    assert "seeds to detect ±0.2 pp" in markdown
    configured = compose_config(return_hydra_config=True).hydra.callbacks.comparison_report
    assert (configured.margin_points, configured.plan_points) == (0.5, 0.3)


def test_each_encoding_started_otherwise_is_compared_with_itself_started_as_rope(tmp_path):
    """What the start gives: liere under init=spectral against liere under init=rope, at the same seeds."""
    records = []
    for seed, accuracy in enumerate([0.90, 0.93, 0.87]):
        records.append(run_record("rope", None, seed, accuracy))
        for init, base, gain in (("rope", 100.0, 0.001), ("spectral", 10.0, 0.006 + 0.001 * seed)):
            record = run_record("liere", None, seed, accuracy + gain)
            record["resolved_config"]["pos"] = {"options": {"block_size": 8, "init": init, "rope_base": base}}
            records.append(record)
    report = write_report([write_runs(tmp_path / "sweep", records)], tmp_path / "report")
    (row,) = report.comparison.start_rows
    assert (row.label, row.arm, row.versus) == ("liere (block_size=8)", "spectral", "rope")
    assert row.final_val_acc_diff_per_seed == pytest.approx({0: 0.005, 1: 0.006, 2: 0.007})
    assert row.verdict.startswith("higher than rope start")
    section = (tmp_path / "report" / "comparison.md").read_text().split("## Starts")[1]
    assert "| MNIST | liere (block_size=8) | spectral | rope | paired t |" in section


def test_every_variant_can_be_compared_with_another_encoding(sweep, tmp_path, capsys):
    """--reference none answers what each encoding's positions give; here cayley_dense stands in."""
    assert main([str(sweep), "--no-wandb", "--output", str(tmp_path / "report"), "--reference", "cayley_dense"]) == 0
    rows = summarize_groups(runs_by_variant(collect_results([sweep]), "cayley_dense"), [],
                            decision=Decision(reference="cayley_dense")).rows
    assert rows[0].encoding == "cayley_dense" and rows[0].verdict == "reference"
    rope = row_for(rows, "rope")
    assert rope.final_val_acc_diff == pytest.approx(-np.mean([0.010, 0.011, 0.011]))
    assert rope.verdict == "lower than cayley_dense"
    markdown = (tmp_path / "report" / "comparison.md").read_text()
    assert "## Difference from cayley_dense" in markdown and "minus cayley_dense's" in markdown
    assert (tmp_path / "report" / "difference_vs_cayley_dense.png").exists()
    assert main([str(sweep), "--no-wandb", "--output", str(tmp_path / "other"), "--reference", "liere"]) == 2
    assert "--reference liere: no completed runs of it under" in capsys.readouterr().err


def test_runs_without_rope_still_get_a_report(tmp_path):
    folder = write_sweep(tmp_path / "sweep", {("cayley_dense", None): [0.910, 0.941, 0.881]})
    assert main([str(folder), "--no-wandb"]) == 0
    (row,) = summarize(collect_results([folder]))
    assert row.verdict == "n/a, no rope runs"


def test_a_report_of_the_reference_alone_says_nothing_is_compared_with_it(tmp_path):
    """Runs of rope alone: no row compares with rope, so no note counts 'the 0 comparisons' or divides alpha
    by 0."""
    folder = write_runs(tmp_path / "ropes", [run_record("rope", None, seed, 0.9 + 0.01 * seed) for seed in range(3)])
    markdown = write_report([folder], folder).page.with_name("comparison.md").read_text()
    for section in ("Difference from RoPE", "Seeds a study needs"):
        text = markdown.split(f"## {section}")[1].split("\n## ")[0]
        assert text.strip() == "No encoding in these runs is compared with rope."
