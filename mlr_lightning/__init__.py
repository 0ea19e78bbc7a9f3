"""mlr_lightning: Mask-based Latent Reconstruction for pixel RL on Lightning and TorchRL.

torch, tensordict and torchrl are imported here, before anything can import dm_control: with
``MUJOCO_GL=egl``/``osmesa``, importing dm_control first and triton (pulled in by torch._dynamo,
tensordict and torchrl) second kills the interpreter in triton's native module. Every entry point
imports this package first.
"""

import torch  # noqa: F401  (import order matters, see above)
import tensordict  # noqa: F401
import torchrl  # noqa: F401

__version__ = "0.1.0"
