#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, on one CUDA GPU, in under 10 minutes (after scripts/setup.sh):
#   - paper-size update time: DMC SAC+MLR in fp32, bf16-mixed and compiled; Atari Rainbow+MLR in fp32,
#     bf16-mixed and compiled with CUDA graphs;
#   - paper-size sampling with the replay on the host and on the GPU (replay.device), and its share
#     of the update;
#   - dm_control agent/env steps per second with EGL rendering on the GPU (default and fast renderer);
#   - the wall time of a 20k-environment-step cartpole_swingup run with the paper's config.
# Usage: bash benchmarks/gpu.sh [output directory]   (default: a new directory under /tmp)
# Prints one JSON object per line; everything is also kept in <output directory>/gpu.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-$(mktemp -d /tmp/mlr-gpu-bench.XXXXXX)}
mkdir -p "$OUT"
export MUJOCO_GL=${MUJOCO_GL:-egl}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

"$PY" benchmarks/bench_updates.py --only gpu --json | tee "$OUT/gpu.jsonl"

# 20k environment steps of cartpole_swingup (action repeat 8: 2,500 agent steps, 1,500 paper-size
# updates, evaluations at 5k, 10k, 15k and 20k steps), everything else as the paper's config.
start=$(date +%s.%N)
"$PY" -m mlr_lightning fit --config conf/dmc/cartpole_swingup.yaml train.num_env_steps=20000 \
  output_dir="$OUT/runs" run_name=cartpole-20k tracking.mlflow=false tracking.video=false > "$OUT/fit.log" 2>&1
end=$(date +%s.%N)
"$PY" -c "import json, sys; print(json.dumps({'name': 'fit/cartpole_swingup_20k_env_steps', 'wall_s': round($end - $start, 1)}))" \
  | tee -a "$OUT/gpu.jsonl"
echo "results in $OUT" >&2
