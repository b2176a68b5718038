"""Benchmark one sweep launched two ways on this machine: one job after another (the default launcher, every
core per job) and several at once (`hydra/launcher=parallel`: N jobs, cores // N threads each).

The sweep is the reference notebook's MNIST 2-epoch cell (`experiment=mnist_variants`) for four encodings x two
seeds. A third pass runs the jobs one after another again, with the parallel jobs' thread count: a float sum split
over another number of threads may round differently, so runs are only expected to be identical at equal thread
counts, and this pass shows that running side by side changes nothing else. Wall time is the whole command,
start-up included.

    RPE_BENCH_DATA=/path/to/data python scripts/bench_sweep.py          # writes docs/bench_sweep.md and .json
    python scripts/bench_sweep.py --limit-batches 5 --output /tmp/bench_sweep   # checks that it runs, in minutes

Run it on an otherwise idle machine: other load slows the passes unevenly. On 2 cores it takes about 50 minutes.
"""
import argparse
import json
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from rpe_bench.launching import usable_cores
from rpe_bench.provenance import cpu_model, library_versions
from rpe_bench.results import read_result

PROJECT = Path(__file__).resolve().parents[1]
VARIANTS = "rope,cayley_dense,reflection,ape"
SEEDS = "1,2"
SWEEP = ["experiment=mnist_variants", "trainer.epochs=2", f"variant={VARIANTS}", f"seed={SEEDS}",
         "logger.mode=offline", "hydra.sweep.subdir=${hydra:runtime.choices.variant}_seed${seed}"]
SEQUENTIAL, PARALLEL, SEQUENTIAL_SAME_THREADS = "sequential", "parallel", "sequential, parallel's threads"


def run_sweep(name: str, overrides: list[str], sweep_dir: Path) -> dict:
    """Runs one sweep as the user would type it; its output goes to <sweep_dir>.log."""
    command = [sys.executable, "-m", "rpe_bench.train", "-m", *SWEEP, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    print(f"{name}: python {shlex.join(command[1:])}", flush=True)
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir.with_suffix(".log"), "w") as log:
        start = time.perf_counter()
        completed = subprocess.run(command, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)
        wall_seconds = time.perf_counter() - start
    runs = {path.parent.name: read_result(path) for path in sorted(sweep_dir.glob("*/results.json"))}
    failed = [run for run, result in runs.items() if not result.is_completed]
    if completed.returncode or failed or not runs:
        sys.exit(f"bench_sweep: the {name} sweep failed (exit {completed.returncode}, failed runs {failed}); "
                 f"see {sweep_dir.with_suffix('.log')}")
    print(f"{name}: {len(runs)} runs in {wall_seconds:.1f} s", flush=True)
    (threads,) = {result.provenance["threads"] for result in runs.values()}
    (parallel_jobs,) = {result.provenance["parallel_jobs"] for result in runs.values()}
    return {
        "command": shlex.join(command[1:]), "wall_seconds": wall_seconds,
        "runs_per_hour": 3600 * len(runs) / wall_seconds,
        "parallel_jobs": parallel_jobs, "threads_per_job": threads,
        "runs": {run: {"final_val_acc": result.final_val_acc, "final_train_loss": result.final_train_loss,
                       "avg_epoch_time_sec": result.avg_epoch_time_sec} for run, result in runs.items()},
    }


def identical_runs(first: dict, second: dict) -> list[str]:
    """Runs whose final validation accuracy and training loss are bit for bit the same in both sweeps."""
    return [run for run, result in first["runs"].items()
            if all(result[key] == second["runs"][run][key] for key in ("final_val_acc", "final_train_loss"))]


def markdown(meta: dict, sweeps: dict, speedup: float) -> str:
    sequential, parallel, same_threads = sweeps[SEQUENTIAL], sweeps[PARALLEL], sweeps[SEQUENTIAL_SAME_THREADS]
    runs = len(parallel["runs"])
    lines = [
        "# Sweep benchmark: one job after another vs several at once", "",
        f"{meta['machine']}; {meta['cores']} usable cores; torch {meta['torch']}; {meta['date']}. The sweep: "
        f"`{' '.join(SWEEP[:4])}` ({runs} runs), W&B offline. Wall time is the whole command (start-up, every "
        "run, the report); runs per hour = runs / wall time. T = threads per job.",
    ]
    if meta["limit_batches"]:
        lines += ["", f"**Limited to {meta['limit_batches']} batches per epoch and evaluation: a check that the "
                      "script runs, not a measurement.**"]
    lines += ["", "| sweep | jobs at once | T | wall s | runs per hour | vs sequential |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, sweep in sweeps.items():
        lines.append(f"| {name} | {sweep['parallel_jobs']} | {sweep['threads_per_job']} "
                     f"| {sweep['wall_seconds']:.1f} | {sweep['runs_per_hour']:.0f} "
                     f"| {sweep['runs_per_hour'] / sequential['runs_per_hour']:.2f}x |")
    headers = [f"{name} (T={sweep['threads_per_job']})" for name, sweep in sweeps.items()]
    same_threads_identical = identical_runs(parallel, same_threads)
    other_threads_identical = identical_runs(parallel, sequential)
    lines += [
        "", f"**Speed-up: {speedup:.2f}x the runs per hour of the sequential sweep** (the target on 2 cores: at "
            "least 1.25x).", "",
        "## Per-run results", "",
        f"Final val accuracy %. At equal thread counts (T={parallel['threads_per_job']}) "
        f"{len(same_threads_identical)} of {runs} runs are bit for bit identical (final val accuracy and train "
        f"loss) whether they ran alone or side by side. The sequential sweep's runs use T="
        f"{sequential['threads_per_job']}, and {len(other_threads_identical)} of {runs} are identical to the "
        "parallel ones: a sum split over another number of threads may add in another order, which changes the "
        "last bits of a loss and can move an accuracy by an image or two.", "",
        f"| run | {' | '.join(headers)} | identical at equal T |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for run in sorted(parallel["runs"]):
        accuracies = [f"{100 * sweep['runs'][run]['final_val_acc']:.2f}" for sweep in sweeps.values()]
        lines.append(f"| {run} | {' | '.join(accuracies)} | {'yes' if run in same_threads_identical else 'no'} |")
    lines += ["", "Commands, as run (from the project folder):", ""]
    lines += [f"- {name}: `python {sweep['command']}`" for name, sweep in sweeps.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/bench_sweep"),
                        help="path stem: writes <stem>.json and <stem>.md")
    parser.add_argument("--runs", type=Path,
                        default=Path("runs/bench_sweep") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"),
                        help="folder for the three sweeps' run folders and logs (a new one: an existing sweep "
                             "folder would resume instead of training)")
    parser.add_argument("--limit-batches", type=int, default=None,
                        help="train, validation and extrapolation batches per epoch: a quick check that it runs")
    args = parser.parse_args()
    runs = args.runs.resolve()
    if runs.exists():
        sys.exit(f"bench_sweep: {runs} exists; its runs would resume instead of training: pass a new --runs")
    limit = ([f"trainer.limit_{kind}_batches={args.limit_batches}" for kind in ("train", "val", "extrapolation")]
             if args.limit_batches else [])
    sweeps = {SEQUENTIAL: run_sweep(SEQUENTIAL, limit, runs / "sequential")}
    sweeps[PARALLEL] = run_sweep(PARALLEL, [*limit, "hydra/launcher=parallel"], runs / "parallel")
    threads = sweeps[PARALLEL]["threads_per_job"]
    sweeps[SEQUENTIAL_SAME_THREADS] = run_sweep(SEQUENTIAL_SAME_THREADS, [*limit, f"trainer.threads={threads}"],
                                                runs / f"sequential_threads{threads}")
    speedup = sweeps[PARALLEL]["runs_per_hour"] / sweeps[SEQUENTIAL]["runs_per_hour"]
    meta = {"machine": cpu_model(), "cores": usable_cores(), "torch": library_versions()["torch"],
            "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
            "limit_batches": args.limit_batches, "runs_folder": str(runs)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps({"meta": meta, "speedup": speedup, "sweeps": sweeps},
                                                           indent=2))
    args.output.with_suffix(".md").write_text(markdown(meta, sweeps, speedup))
    print(f"speed-up {speedup:.2f}x; written {args.output.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
