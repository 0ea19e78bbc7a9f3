"""Headless GL selection: a working backend is found, an unusable one is reported with the fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

from mlr_lightning.envs import rendering
from mlr_lightning.envs.rendering import EglDevice, egl_device_for, select_egl_device
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


# EGL device choice, over fake device lists (this machine has no GPU: Mesa lists one software device).
A100_17, A100_41, A100_C1 = "0000:17:00", "0000:41:00", "0000:c1:00"


def test_egl_device_is_the_one_with_the_training_gpus_pci_address():
    # EGL enumerates the GPUs in another order than CUDA: CUDA's device 0 is EGL's device 1.
    devices = [EglDevice(cuda_device=1, pci_address=A100_41), EglDevice(cuda_device=0, pci_address=A100_17)]
    assert egl_device_for(devices, cuda_device=0, cuda_pci=A100_17) == 1
    assert egl_device_for(devices, cuda_device=1, cuda_pci=A100_41) == 0


def test_ray_trial_renders_on_its_visible_gpu_not_on_egl_device_0():
    # CUDA_VISIBLE_DEVICES=2: the trial trains on cuda:0, physically the GPU at c1:00. EGL lists all
    # GPUs, and its CUDA attribute may number them as the whole machine does.
    devices = [EglDevice(0, A100_17), EglDevice(1, A100_41), EglDevice(2, A100_C1)]
    assert egl_device_for(devices, cuda_device=0, cuda_pci=A100_C1) == 2


def test_without_pci_addresses_the_cuda_attribute_decides_and_software_devices_are_left_alone():
    assert egl_device_for([EglDevice(1), EglDevice(0)], cuda_device=0, cuda_pci=None) == 1
    assert egl_device_for([EglDevice(1), EglDevice(0)], cuda_device=0, cuda_pci=A100_17) == 1
    assert egl_device_for([EglDevice()], cuda_device=0, cuda_pci=None) is None  # Mesa's llvmpipe
    assert egl_device_for([], cuda_device=0, cuda_pci=A100_17) is None


def fake_gpu_machine(monkeypatch, devices, pci_of):
    """This process sees CUDA devices whose PCI addresses ``pci_of`` gives; EGL lists ``devices``."""
    monkeypatch.setattr(rendering.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(rendering, "_list_egl_devices", lambda cuda_device: (devices, pci_of(cuda_device)))
    for key in ("MUJOCO_EGL_DEVICE_ID", rendering.EGL_CHOICE_MARKER, "LOCAL_RANK", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)


def test_each_ddp_rank_and_ray_trial_chooses_again_but_a_users_choice_wins(monkeypatch):
    devices = [EglDevice(1, A100_41), EglDevice(0, A100_17)]
    fake_gpu_machine(monkeypatch, devices, lambda cuda_device: [A100_17, A100_41][cuda_device])
    select_egl_device()  # plain run, cuda:0
    assert os.environ["MUJOCO_EGL_DEVICE_ID"] == "1"
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP rank inherits rank 0's choice, trains on cuda:1
    select_egl_device()
    assert os.environ["MUJOCO_EGL_DEVICE_ID"] == "0"
    monkeypatch.setenv("MUJOCO_EGL_DEVICE_ID", "7")  # the user's
    monkeypatch.delenv(rendering.EGL_CHOICE_MARKER)
    select_egl_device()
    assert os.environ["MUJOCO_EGL_DEVICE_ID"] == "7"


def test_a_ray_trial_chooses_again_for_the_gpu_it_was_given(monkeypatch):
    devices = [EglDevice(1, A100_41), EglDevice(0, A100_17)]
    physical = [A100_17, A100_41]  # CUDA_VISIBLE_DEVICES=k: this process's cuda:0 is physical GPU k
    fake_gpu_machine(monkeypatch, devices,
                     lambda cuda_device: physical[int(os.environ.get("CUDA_VISIBLE_DEVICES", cuda_device))])
    select_egl_device()  # the driver, every GPU visible
    assert os.environ["MUJOCO_EGL_DEVICE_ID"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # a trial on GPU 1, with the driver's environment
    select_egl_device()
    assert os.environ["MUJOCO_EGL_DEVICE_ID"] == "0"


def test_on_a_cpu_machine_nothing_is_set(monkeypatch):
    monkeypatch.delenv("MUJOCO_EGL_DEVICE_ID", raising=False)
    monkeypatch.setattr(rendering.torch.cuda, "is_available", lambda: False)
    select_egl_device()
    assert "MUJOCO_EGL_DEVICE_ID" not in os.environ


def test_egl_devices_are_listed_on_this_machine():
    """The listing script runs against the real EGL library (Mesa here: one software device, no CUDA)."""
    code = rendering._EGL_DEVICES.replace("props = torch.cuda.get_device_properties(int(sys.argv[1]))", "props = None")
    env = with_repo_on_path({k: v for k, v in os.environ.items() if k != "_MLR_GL_CHECKED"})
    result = subprocess.run([sys.executable, "-c", code, "0"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=env | {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"})
    assert result.returncode == 0, result.stderr[-2000:]
    listed = json.loads(result.stdout.strip().splitlines()[-1])
    assert listed["egl"] and all(set(device) == {"cuda_device", "pci_address"} for device in listed["egl"])
