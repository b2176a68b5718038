#!/usr/bin/env bash
# The GPU path, in under 8 minutes on one H100/H200, stage by stage. Each stage has its own time limit, a failed
# stage does not stop the next, and a table of what passed ends the output (also in OUTPUT_DIR/summary.md).
#
#   bench      the position-encoding benchmark on the GPU (scripts/bench_pos.py)
#   bf16       one short bf16 training per variant (variant=..., generated from conf/pos), then their report
#   resume     a run killed (SIGKILL) after its first checkpoint and started again ends on the same metrics as
#              one that never stopped
#   compile    trainer.compile=true: RoPE and LieRE train and are timed compiled; warm-up recorded apart
#   ddp        torchrun with 2 processes on 2 GPUs (skipped, saying why, when fewer are visible)
#   parallel   the parallel launcher over every visible GPU (2 jobs per GPU), each job on its own slot
#
# Data: scikit-learn's bundled digits, so nothing has to travel. Tests and CI never run this.
#
#   bash scripts/gpu_check.sh [OUTPUT_DIR]              # default outputs/gpu_check/<date>_<time>
#   WHEELS=.whl bash scripts/gpu_check.sh               # first installs the project and the wheels in .whl
#                                                       # (scripts/gpu_wheels.sh) on a machine with no registry
# PYTHON names the interpreter (default: python3). DEVICE=cpu rehearses every stage on a machine without a GPU;
# LIMIT_SCALE=N multiplies the stages' time limits (a CPU needs far longer).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
LIMIT_SCALE=${LIMIT_SCALE:-1}

if [[ $DEVICE == cuda ]] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA GPU is visible to torch; this check needs one, nothing was run." >&2
    exit 1
fi
if [[ -n ${WHEELS:-} ]]; then
    site=${SITE:-/tmp/rpe_bench_site}
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$WHEELS"/*.whl || { echo "gpu_check: installing the wheels in $WHEELS failed" >&2; exit 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$site" . \
        || { echo "gpu_check: installing rpe_bench from this checkout failed" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
output=${1:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$output"
gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
names=$("$PYTHON" -c 'import torch
print(", ".join(torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())) or "none")')
echo "gpu_check: device $DEVICE, $gpus GPU(s): $names, output in $output"
export PYTHON DEVICE output gpus WANDB_SILENT=true PYTHONUNBUFFERED=1
# A few seconds of training each: the digits, a 4-block model, at most 20 steps an epoch.
export RUN="dataset=digits model.depth=4 trainer.device=$DEVICE trainer.batch_size=64 trainer.limit_train_batches=20
trainer.limit_val_batches=5 trainer.inference_timing_batches=5 logger.mode=offline"

stage_bench() {
    timm=()
    "$PYTHON" -c 'import timm' 2>/dev/null || timm=(--no-timm)
    "$PYTHON" scripts/bench_pos.py --device "$DEVICE" --rounds 5 "${timm[@]}" --output "$output/bench_pos"
}

stage_bf16() {
    # Every job writes its results.json; a failed job makes the sweep exit 1 after its report is written.
    "$PYTHON" -m rpe_bench.train -m 'variant=glob(*)' $RUN trainer.precision=bf16 trainer.epochs=1 \
        hydra.sweep.dir="$output/bf16" hydra.callbacks.comparison_report.measure_cost=false || return 1
    sed '/^## Plots/,$d' "$output/bf16/comparison.md"
    echo "$(grep -l '"status": "completed"' "$output"/bf16/*/results.json | wc -l) variants completed in bf16"
}

same_history() {  # same_history A B: identical losses and accuracies, epoch by epoch
    "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
first, second = (json.load(open(f"{folder}/results.json"))["history"] for folder in sys.argv[1:])
keys = ("train_loss", "train_acc", "val_loss", "val_acc")
differences = [abs(a[key] - b[key]) for a, b in zip(first, second) for key in keys]
print(f"{len(first)} and {len(second)} epochs, largest difference {max(differences, default=0):.3g}")
sys.exit(0 if len(first) == len(second) and max(differences) == 0 else 1)
EOF
}

stage_resume() {
    local run="$RUN pos=cayley_dense trainer.epochs=4"
    "$PYTHON" -m rpe_bench.train $run hydra.run.dir="$output/resume/whole" || return 1
    "$PYTHON" -m rpe_bench.train $run hydra.run.dir="$output/resume/killed" &
    local pid=$!
    until [[ -e $output/resume/killed/checkpoint.pt ]] || ! kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    kill -9 "$pid" 2>/dev/null && echo "killed after the first checkpoint"
    wait "$pid"
    "$PYTHON" -m rpe_bench.train $run hydra.run.dir="$output/resume/killed" || return 1
    same_history "$output/resume/whole" "$output/resume/killed"
}

stage_compile() {
    "$PYTHON" -m rpe_bench.train -m pos=rope,liere $RUN trainer.compile=true trainer.epochs=2 \
        hydra.sweep.dir="$output/compile" hydra.callbacks.comparison_report.measure_cost=false || return 1
    "$PYTHON" - "$output/compile" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/results.json")):
    record = json.loads(path.read_text())
    first, second = record["history"]
    print(f"{record['config']['pos_variant']}: warm-up {first['warmup_seconds']:.1f} s, steps {first['step_ms']:.1f} "
          f"and {second['step_ms']:.1f} ms, inference {record['inference_time_ms_per_batch']:.2f} ms")
EOF
}

stage_ddp() {
    if (( gpus < 2 )); then
        echo "skipped: $gpus GPU visible, 2 needed"
        return 3
    fi
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 -m rpe_bench.train $RUN trainer.epochs=1 \
        hydra.run.dir="$output/ddp" || return 1
    "$PYTHON" -c "import json; r = json.load(open('$output/ddp/results.json')); print(r['provenance']['cuda']);
assert r['provenance']['world_size'] == 2"
}

stage_parallel() {
    "$PYTHON" -m rpe_bench.train -m hydra/launcher=parallel hydra.launcher.jobs_per_gpu=2 seed=0,1,2,3 $RUN \
        trainer.epochs=1 hydra.sweep.dir="$output/parallel" hydra.callbacks.comparison_report.measure_cost=false \
        || return 1
    "$PYTHON" - "$output/parallel" "$gpus" <<'EOF'
import collections, json, pathlib, sys
records = [json.loads(path.read_text()) for path in pathlib.Path(sys.argv[1]).glob("*/results.json")]
gpus = collections.Counter((record["provenance"].get("cuda") or {}).get("gpu_index") for record in records)
print(f"{len(records)} jobs completed, per GPU: {dict(gpus)}")
sys.exit(0 if len(records) == 4 and all(record["status"] == "completed" for record in records)
         and (int(sys.argv[2]) == 0 or len(gpus) == min(4, int(sys.argv[2]))) else 1)
EOF
}
export -f stage_bench stage_bf16 same_history stage_resume stage_compile stage_ddp stage_parallel

# name and time limit (seconds): 465 s in all, so the check ends within 8 minutes even if every stage hangs.
stages=("bench 75" "bf16 75" "resume 60" "compile 150" "ddp 45" "parallel 60")
summary="| stage | result | seconds | last line |\n| --- | --- | --- | --- |"
failed=0
for entry in "${stages[@]}"; do
    read -r name limit <<<"$entry"
    echo "=== $name (limit $((limit * LIMIT_SCALE)) s)"
    started=$SECONDS
    timeout --kill-after=5 "$((limit * LIMIT_SCALE))" bash -c "stage_$name" >"$output/$name.log" 2>&1
    status=$?
    case $status in
        0) result=passed ;;
        3) result=skipped ;;
        124|137) result="timed out"; failed=1 ;;
        *) result="failed ($status)"; failed=1 ;;
    esac
    last=$(grep -v '^\s*$' "$output/$name.log" | tail -n 1 | cut -c1-110 | tr '|' '/')
    tail -n 15 "$output/$name.log"
    summary+="\n| $name | $result | $((SECONDS - started)) | $last |"
done
echo -e "\n$summary" | tee "$output/summary.md"
exit "$failed"
