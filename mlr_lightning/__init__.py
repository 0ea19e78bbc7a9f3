"""mlr_lightning: Mask-based Latent Reconstruction for pixel RL on Lightning and TorchRL.

torch, tensordict and torchrl are imported here, before anything can import dm_control: with
``MUJOCO_GL=egl``/``osmesa``, importing dm_control first and triton (pulled in by torch._dynamo,
tensordict and torchrl) second kills the interpreter in triton's native module. Every entry point
imports this package first.
"""

import sys

try:
    import torch  # noqa: F401  (import order matters, see above)
    import tensordict  # noqa: F401
    import torchrl  # noqa: F401
except KeyboardInterrupt:
    # `python -m mlr_lightning` imports this package before its __main__ runs, with sys.argv[0] == "-m"
    # meanwhile: a Ctrl-C while the libraries load ends that command in one line. Programs and
    # notebooks that import the package handle their own Ctrl-C.
    if sys.argv[:1] != ["-m"]:
        raise
    print("interrupted during start-up: nothing was started", file=sys.stderr)
    raise SystemExit(130) from None

__version__ = "0.1.0"
