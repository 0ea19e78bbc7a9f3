#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, on one CUDA GPU, in about 8 minutes:
#   - paper-size update time: DMC SAC+MLR in fp32, bf16-mixed and compiled; Atari Rainbow+MLR in fp32,
#     bf16-mixed and compiled with CUDA graphs; each compiled one checked against eager (the first
#     update's losses within a relative 1e-4, AGREEMENT_RTOL in benchmarks/bench_updates.py);
#   - paper-size sampling with the replay on the host and on the GPU (replay.device), and its share
#     of the update;
#   - dm_control agent/env steps per second with EGL rendering on the GPU (default and fast renderer);
#   - packing: aggregate updates/s of 1, 2 and 4 concurrent paper-config DMC update loops on the GPU;
#   - the wall time of a 10k-environment-step cartpole_swingup run with the paper's config and its
#     evaluations.
# Usage: bash benchmarks/gpu.sh [--cpu] [--wheelhouse DIR] [--out DIR]
#   --cpu            the same steps at test sizes on the CPU, in under 5 minutes: a test of this script
#                    (a second eager update run stands in for the compiled one: inductor takes minutes on a CPU)
#   --wheelhouse DIR install the suite offline from DIR (a profile of scripts/wheelhouse.sh, e.g.
#                    wheelhouse/bare) into a venv over the machine's own Python and torch, and use it
#   --out DIR        where the results go (default: a new directory under /tmp)
# Every figure is one JSON object per line in <out>/gpu.jsonl (also printed), the run's in <out>/fit.json.
set -euo pipefail
cd "$(dirname "$0")/.."
CPU=false WHEELHOUSE="" OUT=""
while (($#)); do
  case "$1" in
    --cpu) CPU=true; shift ;;
    --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "gpu.sh: unknown argument $1 (use --cpu, --wheelhouse DIR, --out DIR)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d /tmp/mlr-gpu-bench.XXXXXX)}
mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
if [ -n "$WHEELHOUSE" ]; then
  # The machine's Python keeps its torch (and whatever else it has); the venv adds only the wheelhouse.
  base=${PYTHON:-python3}
  [ -x "$OUT/venv/bin/python" ] || "$base" -m venv --system-site-packages "$OUT/venv"
  "$OUT/venv/bin/python" -m pip install -q --no-index --find-links "$WHEELHOUSE" -r "$WHEELHOUSE/requirements.txt"
  PY=$OUT/venv/bin/python
fi
export MUJOCO_GL=${MUJOCO_GL:-egl}
start_all=$(date +%s)

if $CPU; then
  bench=(--only gpu --cpu --json)
  fit=(--config conf/quickstart.yaml env.image_size=24 env.crop_size=20 env.fast_render=true encoder.num_layers=2
       encoder.num_filters=8 sac.hidden_dim=32 mlr.patch_size=6 mlr.seq_len=4 mlr.block_size=2 mlr.batch_size=3
       train.batch_size=8 train.init_steps=20 train.num_env_steps=320 replay.capacity=1000 eval.every_env_steps=320
       eval.num_episodes=1 trainer.accelerator=cpu)
  fit_name=fit/tiny_cartpole_swingup_320_env_steps
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  bench=(--only gpu --json)
  # 10k environment steps of cartpole_swingup (action repeat 8: 1,250 agent steps, 250 paper-size
  # updates after the 1,000 seed steps, evaluations of 10 episodes at 5k and 10k steps).
  fit=(--config conf/dmc/cartpole_swingup.yaml train.num_env_steps=10000)
  fit_name=fit/cartpole_swingup_10k_env_steps
fi

"$PY" benchmarks/bench_updates.py "${bench[@]}" | tee "$OUT/gpu.jsonl"

start=$(date +%s.%N)
"$PY" -m mlr_lightning fit "${fit[@]}" output_dir="$OUT/runs" run_name=fit tracking.mlflow=false tracking.video=false \
  > "$OUT/fit.log" 2>&1 || { tail -20 "$OUT/fit.log" >&2; echo "gpu.sh: the fit failed (log: $OUT/fit.log)" >&2; exit 1; }
end=$(date +%s.%N)
[ -f "$OUT/runs/fit/checkpoints/last.ckpt" ] || { echo "gpu.sh: the fit left no checkpoint" >&2; exit 1; }
"$PY" -c "import json, sys; print(json.dumps({'name': '$fit_name', 'wall_s': round($end - $start, 1)}))" \
  | tee "$OUT/fit.json" | tee -a "$OUT/gpu.jsonl"
echo "gpu.sh: done in $(( $(date +%s) - start_all )) s; results in $OUT" >&2
