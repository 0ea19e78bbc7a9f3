#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: the GL packages MuJoCo renders with, a virtual
# environment in .venv (override with MLR_VENV) and the exact tested set of requirements.lock
# (Linux x86_64, Python 3.11; pyproject.toml holds the ranges). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MLR_VENV:-.venv}
PYTHON=${PYTHON:-python3}

# Headless rendering: EGL through Mesa (llvmpipe on CPU, the NVIDIA driver's EGL on GPU machines),
# OSMesa as fallback. python3-venv provides ensurepip on Debian.
packages=(libegl1 libgl1-mesa-dri libegl-mesa0 libosmesa6)
"$PYTHON" -c "import ensurepip" 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "Installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.lock
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -c "import mlr_lightning; from mlr_lightning.envs.rendering import select_gl_backend; print('mlr_lightning ready; MuJoCo GL backend:', select_gl_backend())"
