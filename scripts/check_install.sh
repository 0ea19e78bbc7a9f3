#!/usr/bin/env bash
# A tiny real `fit` on DMC and on Atari with tracking.mlflow=false, run with the mlr_lightning
# installed for PYTHON (not this checkout: it runs from a scratch directory), e.g. after an offline
# install from scripts/wheelhouse.sh's bare profile. Exits non-zero if either fit fails or leaves
# no checkpoint.   Usage: bash scripts/check_install.sh /path/to/python [output directory]
set -euo pipefail
CONF="$(cd "$(dirname "$0")/.." && pwd)/conf"
PY=${1:?usage: check_install.sh PYTHON [OUT]}
# A relative interpreter path would break below, where this script moves to OUT (a venv's python must
# keep its path, not be resolved to the interpreter it links to).
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
OUT=${2:-$(mktemp -d /tmp/mlr-check-install.XXXXXX)}
mkdir -p "$OUT"
cd "$OUT"
"$PY" -c "import mlr_lightning, torch; print('mlr_lightning from', mlr_lightning.__file__, '| torch', torch.__version__)"
TINY_DMC=(env.image_size=24 env.crop_size=20 env.fast_render=true encoder.num_layers=2 encoder.num_filters=8
  sac.hidden_dim=32 mlr.patch_size=6 mlr.seq_len=4 mlr.block_size=2 mlr.batch_size=3 train.batch_size=8
  train.init_steps=20 train.num_env_steps=320 replay.capacity=1000 eval.every_env_steps=160 eval.num_episodes=1)
TINY_ATARI=(rainbow.hidden_dim=32 rainbow.num_atoms=11 mlr.decoder_dim=16 mlr.seq_len=4 mlr.block_size=2
  train.num_env_steps=60 train.init_steps=40 train.batch_size=4 replay.capacity=1000 eval.num_episodes=1 eval.max_steps=50)
for run in dmc atari; do
  if [ "$run" = dmc ]; then config=$CONF/quickstart.yaml; overrides=("${TINY_DMC[@]}");
  else config=$CONF/atari/quickstart.yaml; overrides=("${TINY_ATARI[@]}"); fi
  start=$(date +%s)
  "$PY" -m mlr_lightning fit --config "$config" "${overrides[@]}" trainer.accelerator=cpu tracking.mlflow=false \
    tracking.video=false output_dir="$OUT/runs" run_name="$run" > "$OUT/$run.log" 2>&1 \
    || { tail -20 "$OUT/$run.log"; echo "check_install: the $run fit failed (log: $OUT/$run.log)" >&2; exit 1; }
  [ -f "$OUT/runs/$run/checkpoints/last.ckpt" ] || { echo "check_install: no checkpoint from the $run fit" >&2; exit 1; }
  echo "check_install: $run fit ok in $(( $(date +%s) - start )) s"
done
