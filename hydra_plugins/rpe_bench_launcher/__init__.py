"""rpe_bench's Hydra launcher plugins: `hydra/launcher=parallel` and `hydra/launcher=slurm`
(conf/hydra/launcher/parallel.yaml, slurm.yaml)."""
