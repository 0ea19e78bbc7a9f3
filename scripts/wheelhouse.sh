#!/usr/bin/env bash
# Wheels for an offline install into a target that already has Python and torch (a GPU image, a
# cluster node): see scripts/wheelhouse.py for the profiles and what is left out. Needs network here.
#   bash scripts/wheelhouse.sh --python 3.12 --platform manylinux_2_28_x86_64 --have target-freeze.txt --out wheelhouse
# then, on the target:
#   pip install --no-index --find-links wheelhouse/bare -r wheelhouse/bare/requirements.txt
# PYTHON: an interpreter of the target's Python version with pip (dependency markers are evaluated with it).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/wheelhouse.py "$@"
