"""The comparison report, checked against synthetic results.json files written as docs/design.md describes."""
import base64
import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from rpe_bench.compare import ComparisonReportCallback, collect_results, main, summarize, write_report

PLOTS = ["val_acc_per_epoch.png", "acc_vs_sparsity.png", "epoch_time.png"]

# (pos, f) -> final val acc per seed. cayley_dense is clearly better than rope, cayley_sparse f=0.5 identical,
# cayley_sparse f=0.1 has a single completed seed.
VAL_ACC = {
    ("rope", None): [0.90, 0.91, 0.92],
    ("cayley_dense", None): [0.95, 0.96, 0.97],
    ("cayley_sparse", 0.5): [0.90, 0.91, 0.92],
    ("cayley_sparse", 0.1): [0.85],
}
EPOCH_SECONDS = {("rope", None): [10.0, 11.0, 12.5], ("cayley_dense", None): [14.0, 15.0, 16.5],
                 ("cayley_sparse", 0.5): [12.0, 12.5, 13.0], ("cayley_sparse", 0.1): [11.0]}
PARAMETERS = {("rope", None): 100_000, ("cayley_dense", None): 100_512, ("cayley_sparse", 0.5): 100_256,
              ("cayley_sparse", 0.1): 100_064}
FAILURE = "RuntimeError: CUDA out of memory\nTraceback continues here"


def run_record(pos, f, seed, val_acc, epoch_seconds, parameters) -> dict:
    history = [{"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": val_acc - 0.1 / epoch,
                "val_loss": 0.5 / epoch, "val_acc": val_acc - 0.05 / epoch, "epoch_seconds": epoch_seconds,
                "images_per_second": 6000.0, "data_seconds": 0.1, "step_ms": 20.0} for epoch in (1, 2)]
    history[-1]["val_acc"] = val_acc
    return {
        "config": {"dataset": "mnist", "pos_variant": pos, "img_size": 28, "patch_size": 7, "in_chans": 1,
                   "num_classes": 10, "emb_dim": 128, "depth": 4, "n_heads": 4, "batch_size": 128, "epochs": 2,
                   "lr": 3e-4, "weight_decay": 0.01, "f_sparse": f, "seed": seed},
        "resolved_config": {"seed": seed},
        "status": "completed", "error": None,
        "final_train_loss": 0.5, "final_train_acc": val_acc - 0.05, "final_val_loss": 0.25,
        "final_val_acc": val_acc, "best_val_acc": val_acc + 0.001 * seed,
        "avg_epoch_time_sec": epoch_seconds, "inference_time_ms_per_batch": epoch_seconds / 5,
        "num_parameters": parameters, "data_time_fraction": 0.01, "history": history,
        # Sizes chosen so that sorting them as text ("16" < "8") would be wrong.
        "extrapolation": {"8": {"val_loss": 2.0, "val_acc": val_acc - 0.3 - 0.02 * seed},
                          "16": {"val_loss": 1.0, "val_acc": val_acc - 0.1 + 0.01 * seed}},
    }


def write_sweep(folder: Path, variants: dict) -> Path:
    """A Hydra-like sweep folder: one numbered job folder per (variant, seed)."""
    job = 0
    for (pos, f), accuracies in variants.items():
        for seed, val_acc in enumerate(accuracies):
            run_dir = folder / str(job)
            run_dir.mkdir(parents=True)
            record = run_record(pos, f, seed, val_acc, EPOCH_SECONDS[pos, f][seed], PARAMETERS[pos, f])
            (run_dir / "results.json").write_text(json.dumps(record))
            job += 1
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    folder = write_sweep(tmp_path / "sweep", VAL_ACC)
    failed = folder / "failed_job"
    failed.mkdir()
    config = run_record("cayley_sparse", 0.1, 1, 0.0, 1.0, 1)["config"]
    (failed / "results.json").write_text(json.dumps({"config": config, "status": "failed", "error": FAILURE}))
    return folder


@pytest.fixture
def report(sweep) -> Path:
    return write_report([sweep], sweep)


def row_for(rows, pos, f=None) -> dict:
    (row,) = [row for row in rows if (row["pos"], row["f"]) == (pos, f)]
    return row


def test_table_numbers_match_the_files(sweep):
    rows = summarize(collect_results([sweep]))
    assert [(row["pos"], row["f"]) for row in rows][0] == ("rope", None)
    assert {(row["pos"], row["f"]) for row in rows} == set(VAL_ACC)
    rope_seconds = np.mean(EPOCH_SECONDS["rope", None])
    for (pos, f), accuracies in VAL_ACC.items():
        row, values = row_for(rows, pos, f), np.array(accuracies)
        assert row["dataset"] == "mnist" and row["seeds"] == len(values)
        assert row["val_acc_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert row["best_val_acc_mean"] == pytest.approx(np.mean(values + 0.001 * np.arange(len(values))))
        assert row["epoch_seconds_mean"] == pytest.approx(np.mean(EPOCH_SECONDS[pos, f]))
        assert row["inference_ms_mean"] == pytest.approx(np.mean(EPOCH_SECONDS[pos, f]) / 5)
        assert row["parameters"] == PARAMETERS[pos, f]
        assert row["epoch_seconds_vs_rope"] == pytest.approx(np.mean(EPOCH_SECONDS[pos, f]) / rope_seconds)
        assert row["inference_ms_vs_rope"] == pytest.approx(row["epoch_seconds_vs_rope"])
        assert row["val_acc_diff_vs_rope"] == pytest.approx(values.mean() - np.mean(VAL_ACC["rope", None]))
        if len(values) == 1:
            assert row["val_acc_std"] is None and row["val_acc_ci95_low"] is None
            assert row["epoch_seconds_std"] is None and row["extrapolation_8_val_acc_std"] is None
            continue
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert row["val_acc_std"] == pytest.approx(values.std(ddof=1))
        assert (row["val_acc_ci95_low"], row["val_acc_ci95_high"]) == (pytest.approx(low), pytest.approx(high))
        assert row["epoch_seconds_std"] == pytest.approx(np.std(EPOCH_SECONDS[pos, f], ddof=1))
        seeds = np.arange(len(values))
        assert row["extrapolation_8_val_acc_mean"] == pytest.approx(np.mean(values - 0.3 - 0.02 * seeds))
        assert row["extrapolation_16_val_acc_std"] == pytest.approx(np.std(values - 0.1 + 0.01 * seeds, ddof=1))


def test_p_value_is_welchs_t_test_from_scipy(sweep):
    rows = summarize(collect_results([sweep]))
    expected = stats.ttest_ind(VAL_ACC["cayley_dense", None], VAL_ACC["rope", None], equal_var=False).pvalue
    assert row_for(rows, "cayley_dense")["p_value_vs_rope"] == pytest.approx(expected, rel=1e-12)
    assert expected < 0.01


def test_significance_is_marked_in_rows_and_tables(report):
    rows = summarize(collect_results([report.parent]))
    assert row_for(rows, "rope")["significance"] == "reference"
    assert row_for(rows, "cayley_dense")["significance"] == "significant"
    assert row_for(rows, "cayley_sparse", 0.5)["p_value_vs_rope"] == pytest.approx(1.0)
    assert row_for(rows, "cayley_sparse", 0.5)["significance"] == "not significant"
    assert row_for(rows, "cayley_sparse", 0.1)["p_value_vs_rope"] is None
    assert row_for(rows, "cayley_sparse", 0.1)["significance"] == "n/a, too few seeds"
    markdown = (report.parent / "comparison.md").read_text()
    line_of = {pos_f: next(line for line in markdown.splitlines() if line.startswith(f"| mnist | {pos_f} |"))
               for pos_f in ("cayley_dense | -", "cayley_sparse | 0.5", "cayley_sparse | 0.1")}
    assert line_of["cayley_dense | -"].endswith("| significant |")
    assert line_of["cayley_sparse | 0.5"].endswith("| 1.000 | not significant |")
    assert "| 85.00 ± - |" in line_of["cayley_sparse | 0.1"]
    assert line_of["cayley_sparse | 0.1"].endswith("| - | n/a, too few seeds |")


def test_extrapolation_table_has_a_column_per_size_in_numeric_order(report):
    markdown = (report.parent / "comparison.md").read_text()
    section = markdown.split("## Resolution extrapolation")[1]
    assert "| dataset | pos | f | 8px | 16px |" in section
    assert "| mnist | rope | - | 59.00 ± 1.00 | 82.00 ± 2.00 |" in section


def test_failed_runs_are_listed_and_excluded(sweep, report):
    rows = summarize(collect_results([sweep]))
    assert row_for(rows, "cayley_sparse", 0.1)["seeds"] == 1
    for page in (report, sweep / "comparison.md"):
        failures = page.read_text().split("Failed runs")[1]
        assert str(sweep / "failed_job") in failures
        assert "RuntimeError: CUDA out of memory" in failures
        assert "Traceback continues here" not in failures


def test_unreadable_results_file_is_listed_as_a_failure(tmp_path):
    folder = write_sweep(tmp_path / "sweep", {("rope", None): [0.9]})
    (folder / "broken").mkdir()
    (folder / "broken" / "results.json").write_text('{"config": ')
    page = write_report([folder], folder).read_text()
    assert "unreadable results.json" in page.split("Failed runs")[1]


def parse_csv_value(text: str):
    if text == "-":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def test_csv_reads_back_as_the_summary_rows(sweep, report):
    with (sweep / "comparison.csv").open(newline="") as handle:
        parsed = [{key: parse_csv_value(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    assert parsed == summarize(collect_results([sweep]))


def test_plots_are_written_and_embedded_in_the_page(sweep, report):
    assert report == sweep / "report.html"
    page = report.read_text()
    assert page.count("<table>") == 3
    for name in PLOTS:
        png = (sweep / name).read_bytes()
        assert png.startswith(b"\x89PNG")
        assert f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}" in page
    assert "src=\"val_acc_per_epoch.png\"" not in page


def test_plot_without_data_is_skipped(tmp_path):
    folder = write_sweep(tmp_path / "rope_only", {("rope", None): VAL_ACC["rope", None]})
    report = write_report([folder], tmp_path / "out")
    assert not (tmp_path / "out" / "acc_vs_sparsity.png").exists()
    assert (tmp_path / "out" / "epoch_time.png").exists()
    assert report.read_text().count("data:image/png;base64,") == 2


def test_cli_reports_where_the_report_went(sweep, tmp_path, capsys):
    other = write_sweep(tmp_path / "other", {("rope", None): [0.5]})
    assert main([str(sweep), str(other), "--output", str(tmp_path / "combined")]) == 0
    assert str(tmp_path / "combined" / "report.html") in capsys.readouterr().out
    rope = row_for(summarize(collect_results([sweep, other])), "rope")
    assert rope["seeds"] == 4


def test_same_run_reached_twice_counts_once(sweep):
    assert len(collect_results([sweep, sweep / "0"])) == len(collect_results([sweep]))


def test_cli_refuses_an_empty_folder_with_exit_code_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    completed = subprocess.run([sys.executable, "-m", "rpe_bench.compare", str(empty)],
                               capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"error: no results.json under: {empty}"


def test_cli_refuses_a_missing_folder_with_exit_code_2(tmp_path, capsys):
    assert main([str(tmp_path / "absent"), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no such folder: {tmp_path / 'absent'}"


def test_callback_writes_the_report_then_fails_a_sweep_with_a_failed_job(sweep):
    with pytest.raises(SystemExit) as exit_info:
        ComparisonReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert exit_info.value.code == 1
    assert (sweep / "report.html").exists() and (sweep / "comparison.csv").exists()


def test_callback_ends_a_sweep_without_failures_normally(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", {("rope", None): [0.9, 0.91]})
    ComparisonReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "report.html").exists()


def test_callback_logs_instead_of_failing_the_sweep(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="rpe_bench"):
        ComparisonReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "could not write the comparison report" in caplog.text
