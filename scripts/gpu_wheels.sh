#!/usr/bin/env bash
# Wheels of the project's dependencies that the lent GPU machine's image lacks (it has Python 3.12, torch,
# torchvision, scikit-learn, joblib, tqdm, psutil, requests, PyYAML and more, and no package registry), at the
# versions installed here, for CPython 3.12 on x86-64 Linux. scripts/gpu_check.sh installs them with WHEELS=DIR.
#
#   bash scripts/gpu_wheels.sh [DIR]        # default .whl (add it to .git/info/exclude; the device tool carries it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}  # the versions installed here
folder=${1:-.whl}
packages=(hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher hydra-submitit-launcher submitit wandb
          pydantic pydantic-core annotated-types typing-inspection platformdirs)
pinned=()
for package in "${packages[@]}"; do
    pinned+=("$package==$("$PYTHON" -c "from importlib.metadata import version; print(version('$package'))")")
done
mkdir -p "$folder"
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
# antlr4-python3-runtime 4.9.3 is published as a source archive only: built into a wheel here (pure Python).
for requirement in "${pinned[@]}"; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$folder" "$requirement" 2>/dev/null \
        || "$PYTHON" -m pip wheel -q --no-deps -w "$folder" "$requirement"
done
ls -la "$folder"
