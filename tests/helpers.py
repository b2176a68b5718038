"""Shared test helpers: compose the project's configs without a command line, shrink runs to seconds, run them
in this process or as a command, and read back what they wrote."""
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from rpe_bench import train as train_module
from rpe_bench.config import register_configs

PROJECT = Path(__file__).parents[1]
CONF_DIR = PROJECT / "conf"

# A run that takes seconds: scikit-learn's bundled digits, a one-block ViT, a few batches.
TINY_RUN = ["dataset=digits", "model.emb_dim=32", "model.depth=1", "model.num_heads=2",
            "trainer.epochs=1", "trainer.batch_size=64", "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2", "trainer.inference_timing_batches=2", "logger.mode=offline"]


def compose_config(*overrides: str, return_hydra_config: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def run_training(monkeypatch, *overrides: str) -> None:
    """`python -m rpe_bench.train ...` in this process (no new interpreter, so seconds, not tens)."""
    monkeypatch.setattr(sys, "argv", ["rpe_bench.train", *TINY_RUN, *overrides])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # let exceptions reach the test instead of sys.exit(1)
    train_module.main()


def own_wandb_environment() -> dict:
    """In-process runs leave WANDB_SERVICE pointing at this process's W&B service; a child must start its own,
    as a job on a cluster would."""
    return {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}


def run_command(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Runs `command` from the project folder with its own W&B environment; fails the test on a non-zero exit."""
    completed = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True,
                               env={**own_wandb_environment(), **kwargs.pop("env", {})}, **kwargs)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def wandb_inspect(offline_run: Path, *options: str) -> str:
    """`wandb leet inspect --json` of one offline W&B run, through this interpreter's wandb: the tests pass
    whether or not the venv is activated."""
    completed = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *options,
                                str(offline_run)], capture_output=True, text=True, check=True)
    return completed.stdout


def wandb_summary(run_dir: Path) -> dict:
    """The summary of the run folder's one offline W&B run: state, config, summary, tags."""
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    return json.loads(wandb_inspect(offline_run, "--summary"))
