"""Headless GL selection: a working backend is found, an unusable one is reported with the fix."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import with_repo_on_path

ROOT = Path(__file__).resolve().parents[1]


def select_in_subprocess(**env):
    code = "from mlr_lightning.envs.rendering import select_gl_backend; print(select_gl_backend())"
    full_env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "_MLR_GL_CHECKED")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=with_repo_on_path(full_env | env))


def test_a_headless_backend_is_selected_automatically():
    result = select_in_subprocess()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() in ("egl", "osmesa")


def test_an_unusable_backend_names_the_packages_to_install():
    result = select_in_subprocess(MUJOCO_GL="glfw", DISPLAY="")  # a windowing backend, no display
    assert result.returncode != 0
    assert "RenderBackendError" in result.stderr
    assert "apt-get install libegl1 libgl1-mesa-dri libegl-mesa0" in result.stderr
    assert "libosmesa6" in result.stderr
