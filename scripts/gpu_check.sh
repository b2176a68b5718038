#!/usr/bin/env bash
# On a machine with a CUDA GPU, in under 8 minutes: the position-encoding benchmark on the GPU, then one short
# bf16 MNIST training per variant (variant=..., generated from conf/pos) and their comparison table. MNIST is
# read from $RPE_BENCH_DATA (else ./data). Tests and CI never run this.
#
#   RPE_BENCH_DATA=/data bash scripts/gpu_check.sh [OUTPUT_DIR]     # default outputs/gpu_check/<date>_<time>
# PYTHON names the interpreter (default: python on PATH, e.g. the activated venv's).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA GPU is visible to torch; this check needs one, nothing was run." >&2
    exit 1
fi
output=${1:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$output"
echo "gpu_check: $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name())'), data in ${RPE_BENCH_DATA:-./data}," \
     "output in $output"

timm=()
"$PYTHON" -c 'import timm' 2>/dev/null || timm=(--no-timm)
# Each stage has its own time limit, so the whole check ends within 8 minutes even if one stage hangs.
timeout 150 "$PYTHON" scripts/bench_pos.py --device cuda --rounds 5 "${timm[@]}" --output "$output/bench_pos"

# Every job writes its results.json; a failed job makes the sweep exit 1 after its report is written.
status=0
timeout 300 "$PYTHON" -m rpe_bench.train -m 'variant=glob(*)' dataset=mnist trainer.device=cuda \
    trainer.precision=bf16 trainer.epochs=1 trainer.limit_train_batches=100 trainer.limit_val_batches=10 \
    logger.mode=offline hydra.sweep.dir="$output/train" || status=$?

"$PYTHON" -m rpe_bench.compare "$output/train"
sed '/^## Plots/,$d' "$output/train/comparison.md"
exit "$status"
