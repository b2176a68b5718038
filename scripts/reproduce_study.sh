#!/usr/bin/env bash
# Reproduce the reference study on the real data (docs/results.md): MNIST and the JPEG copy of CIFAR-10.
#   RUNS=/path/for/run/folders DATA=/path/to/shared/data bash scripts/reproduce_study.sh [mnist|cifar10|cifar10_long|all]
# Every sweep can be interrupted and rerun with the same command: finished jobs are only re-evaluated, and
# unfinished ones resume from their last end-of-epoch checkpoint.
set -euo pipefail
RUNS=${RUNS:-runs}
DATA=${DATA:-../shared/data}
CIFAR_JPEG=${CIFAR_JPEG:-$RUNS/cifar10-jpeg}
ALL_MNIST=rope,cayley_dense,reflection,cayley_sparse_f1.0,cayley_sparse_f0.5,cayley_sparse_f0.2,cayley_sparse_f0.1,rope_mixed,circulant,ape
ALL_CIFAR=rope,cayley_dense,reflection,cayley_sparse_f1.0,cayley_sparse_f0.3,cayley_sparse_f0.1,rope_mixed,circulant,ape

cifar_data() {
  if [ ! -d "$CIFAR_JPEG/train" ]; then
    mkdir -p "$CIFAR_JPEG" && tar -xf "$DATA/cifar10-jpeg.tar" -C "$CIFAR_JPEG"
  fi
}

case "${1:-all}" in
  mnist|all)
    RPE_BENCH_DATA=$DATA python -m rpe_bench.train -m experiment=mnist_variants seed=1,2,3 variant=$ALL_MNIST \
      logger.mode=offline hydra.sweep.dir=$RUNS/mnist ;;&
  cifar10|all)
    cifar_data
    python -m rpe_bench.train -m experiment=cifar10_variants dataset=image_folder dataset.root=$CIFAR_JPEG \
      seed=1,2,3 variant=$ALL_CIFAR logger.mode=offline hydra.sweep.dir=$RUNS/cifar10 ;;&
  cifar10_long|all)
    cifar_data
    python -m rpe_bench.train -m experiment=cifar10_variants dataset=image_folder dataset.root=$CIFAR_JPEG \
      seed=1,2 variant=rope,cayley_dense,reflection trainer.epochs=10 trainer.schedule=cosine \
      trainer.warmup_epochs=1 logger.mode=offline hydra.sweep.dir=$RUNS/cifar10_long ;;
esac
python scripts/notebook_formulation.py --output docs/notebook_formulation.md
