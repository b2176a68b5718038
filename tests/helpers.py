"""Shared test helpers: compose the project's configs without a command line, and shrink runs to seconds."""
from pathlib import Path

from hydra import compose, initialize_config_dir

from rpe_bench.config import register_configs

CONF_DIR = Path(__file__).parents[1] / "conf"

# A run that takes seconds: scikit-learn's bundled digits, a one-block ViT, a few batches.
TINY_RUN = ["dataset=digits", "model.emb_dim=32", "model.depth=1", "model.num_heads=2",
            "trainer.epochs=1", "trainer.batch_size=64", "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2", "trainer.inference_timing_batches=2", "logger.mode=offline"]


def compose_config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
