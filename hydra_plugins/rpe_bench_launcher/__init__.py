"""rpe_bench's Hydra launcher plugin: `hydra/launcher=parallel` (conf/hydra/launcher/parallel.yaml)."""
