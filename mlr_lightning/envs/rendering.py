"""Headless OpenGL backend selection for MuJoCo.

MuJoCo reads ``MUJOCO_GL`` once, when dm_control/mujoco is first imported, so the backend must be
chosen before that. We prefer EGL (GPU rendering on a GPU machine, Mesa's llvmpipe on a CPU one)
and fall back to OSMesa. Each candidate is probed in a subprocess, because a failed GL load cannot
be undone inside this interpreter. The choice is exported, so child processes inherit it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

BACKENDS = ("egl", "osmesa")
DEBIAN_PACKAGES = {"egl": "libegl1 libgl1-mesa-dri libegl-mesa0", "osmesa": "libosmesa6"}

_PROBE = """
import mujoco
ctx = mujoco.GLContext(16, 16)
ctx.make_current()
model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)  # raises without a working GL
ctx.free()
"""


class RenderBackendError(RuntimeError):
    """No headless OpenGL backend works on this machine."""


def _probe(backend: str) -> str | None:
    """None if ``backend`` can create a GL context, else the error it printed."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    result = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


def select_gl_backend() -> str:
    """Set and return ``MUJOCO_GL``: the user's choice if given and working, else EGL, else OSMesa."""
    # Under DDP each rank renders on its own GPU: Lightning places local rank r on cuda:r, and the
    # ranks it launches carry LOCAL_RANK from the start. A user's MUJOCO_EGL_DEVICE_ID wins; without
    # GPUs (Mesa's software EGL has a single device) nothing is set.
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if local_rank and torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        os.environ.setdefault("MUJOCO_EGL_DEVICE_ID", str(local_rank))
    requested = os.environ.get("MUJOCO_GL")
    if requested and os.environ.get("_MLR_GL_CHECKED") == requested:
        return requested
    candidates = (requested,) if requested else BACKENDS
    errors = {}
    for backend in candidates:
        error = _probe(backend)
        if error is None:
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            os.environ["_MLR_GL_CHECKED"] = backend
            return backend
        errors[backend] = error
    tried = "; ".join(f"MUJOCO_GL={b}: {e}" for b, e in errors.items())
    fixes = " or ".join(f"`apt-get install {packages}` ({backend})" for backend, packages in DEBIAN_PACKAGES.items())
    raise RenderBackendError(
        f"no headless OpenGL backend works for MuJoCo ({tried}). Install one with {fixes}, "
        "or run scripts/setup.sh, which installs the EGL packages."
    )
