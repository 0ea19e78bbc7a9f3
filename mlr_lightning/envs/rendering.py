"""Headless OpenGL backend selection for MuJoCo.

MuJoCo reads ``MUJOCO_GL`` once, when dm_control/mujoco is first imported, so the backend must be
chosen before that. We prefer EGL (GPU rendering on a GPU machine, Mesa's llvmpipe on a CPU one)
and fall back to OSMesa. Each candidate is probed in a subprocess, because a failed GL load cannot
be undone inside this interpreter. The choice is exported, so child processes inherit it.

With EGL on a GPU machine, each process renders on the GPU it trains on: the EGL device (MuJoCo's
``MUJOCO_EGL_DEVICE_ID`` indexes EGL's device list) whose PCI address, or else whose CUDA device
(EGL_NV_device_cuda), is the process's CUDA device. EGL's order need not be CUDA's, and under Ray
each trial sees its one GPU as ``cuda:0`` through ``CUDA_VISIBLE_DEVICES``, so neither "device 0"
nor ``LOCAL_RANK`` is right in general. A user's ``MUJOCO_EGL_DEVICE_ID`` wins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BACKENDS = ("egl", "osmesa")
EGL_CHOICE_MARKER = "_MLR_EGL_DEVICE_FOR"  # CUDA_VISIBLE_DEVICES|cuda device a MUJOCO_EGL_DEVICE_ID of ours is for
DEBIAN_PACKAGES = {"egl": "libegl1 libgl1-mesa-dri libegl-mesa0", "osmesa": "libosmesa6"}

_PROBE = """
import mujoco
ctx = mujoco.GLContext(16, 16)
ctx.make_current()
model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)  # raises without a working GL
ctx.free()
"""


# Lists EGL's devices (in MuJoCo's order) with their CUDA device and PCI address, and the PCI address
# of CUDA device argv[1] as this process sees it (CUDA_VISIBLE_DEVICES applies). torch first: see
# mlr_lightning/__init__.py.
_EGL_DEVICES = """
import ctypes, json, os, sys
import torch
props = torch.cuda.get_device_properties(int(sys.argv[1]))
cuda_pci = None
if getattr(props, "pci_bus_id", None) is not None:
    cuda_pci = f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}"
from mujoco.egl import egl_ext as EGL
query_attrib = ctypes.CFUNCTYPE(EGL.EGLBoolean, EGL.EGLDeviceEXT, EGL.EGLint, ctypes.POINTER(EGL.EGLAttrib))(
    EGL.eglGetProcAddress("eglQueryDeviceAttribEXT"))
query_string = ctypes.CFUNCTYPE(ctypes.c_char_p, EGL.EGLDeviceEXT, EGL.EGLint)(
    EGL.eglGetProcAddress("eglQueryDeviceStringEXT"))
devices = []
for device in EGL.eglQueryDevicesEXT(64):
    cuda = EGL.EGLAttrib()
    cuda_device = int(cuda.value) if query_attrib(device, 0x323A, ctypes.byref(cuda)) else None  # EGL_CUDA_DEVICE_NV
    drm = query_string(device, 0x3233)  # EGL_DRM_DEVICE_FILE_EXT, e.g. /dev/dri/card1
    pci = None
    if drm:
        link = f"/sys/class/drm/{os.path.basename(drm.decode())}/device"
        pci = os.path.basename(os.path.realpath(link)).rsplit(".", 1)[0].lower() if os.path.exists(link) else None
    devices.append({"cuda_device": cuda_device, "pci_address": pci})
print(json.dumps({"cuda_pci": cuda_pci, "egl": devices}))
"""


@dataclass(frozen=True)
class EglDevice:
    """One entry of EGL's device list: the CUDA device it drives (None: not an NVIDIA GPU, e.g.
    Mesa's software device) and its PCI address ``domain:bus:device`` (None if unknown)."""

    cuda_device: int | None = None
    pci_address: str | None = None


def egl_device_for(devices: Sequence[EglDevice], cuda_device: int, cuda_pci: str | None) -> int | None:
    """The index in EGL's device list of the GPU that is CUDA device ``cuda_device`` (PCI address
    ``cuda_pci``) of this process: matched by PCI address, else by EGL's CUDA device; None when no
    entry matches (then EGL's default is left alone)."""
    if cuda_pci is not None:
        for index, device in enumerate(devices):
            if device.pci_address == cuda_pci.lower():
                return index
    for index, device in enumerate(devices):
        if device.cuda_device == cuda_device:
            return index
    return None


def training_cuda_device() -> int:
    """The CUDA device this process trains on: Lightning places local rank r on ``cuda:r`` (ranks it
    launches carry LOCAL_RANK from the start); a plain run and a Ray trial (its GPU visible as the
    only one) use ``cuda:0``."""
    return int(os.environ.get("LOCAL_RANK", 0))


def _list_egl_devices(cuda_device: int) -> tuple[list[EglDevice], str | None] | None:
    """EGL's devices and the PCI address of ``cuda_device``, from a subprocess (None if that fails)."""
    env = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl")
    result = subprocess.run([sys.executable, "-c", _EGL_DEVICES, str(cuda_device)], env=env, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        return None
    listed = json.loads(result.stdout.strip().splitlines()[-1])
    return [EglDevice(**device) for device in listed["egl"]], listed["cuda_pci"]


def select_egl_device() -> None:
    """Set ``MUJOCO_EGL_DEVICE_ID`` to the EGL device of this process's training GPU, unless the user
    set it; without CUDA nothing is set (Mesa's software EGL has a single device)."""
    # A choice of ours is marked with the GPU it was made for: processes started from this one (Ray
    # trials, DDP ranks) inherit it but may train on another GPU, and then choose again.
    cuda_device = training_cuda_device()
    made_for = f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')}|{cuda_device}"
    marker = os.environ.get(EGL_CHOICE_MARKER)
    if not torch.cuda.is_available() or marker == made_for:  # no GPU, or chosen for this one already
        return
    if "MUJOCO_EGL_DEVICE_ID" in os.environ and marker is None:  # the user's
        return
    os.environ.pop("MUJOCO_EGL_DEVICE_ID", None)
    listed = _list_egl_devices(cuda_device)
    index = None if listed is None else egl_device_for(listed[0], cuda_device, listed[1])
    if index is not None:
        os.environ["MUJOCO_EGL_DEVICE_ID"] = str(index)
    os.environ[EGL_CHOICE_MARKER] = made_for  # also when none matched: EGL's default, not asked again


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
    """Set and return ``MUJOCO_GL``: the user's choice if given and working, else EGL, else OSMesa;
    with EGL, also the EGL device of this process's training GPU (:func:`select_egl_device`)."""
    requested = os.environ.get("MUJOCO_GL")
    if requested and os.environ.get("_MLR_GL_CHECKED") == requested:
        if requested == "egl":
            select_egl_device()
        return requested
    candidates = (requested,) if requested else BACKENDS
    errors = {}
    for backend in candidates:
        error = _probe(backend)
        if error is None:
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            os.environ["_MLR_GL_CHECKED"] = backend
            if backend == "egl":
                select_egl_device()
            return backend
        errors[backend] = error
    tried = "; ".join(f"MUJOCO_GL={b}: {e}" for b, e in errors.items())
    fixes = " or ".join(f"`apt-get install {packages}` ({backend})" for backend, packages in DEBIAN_PACKAGES.items())
    raise RenderBackendError(
        f"no headless OpenGL backend works for MuJoCo ({tried}). Install one with {fixes}, "
        "or run scripts/setup.sh, which installs the EGL packages."
    )
