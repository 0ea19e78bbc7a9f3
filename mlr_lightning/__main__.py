import mlr_lightning  # noqa: F401  (imports torch/tensordict/torchrl before anything imports dm_control)
from mlr_lightning.cli import main

raise SystemExit(main())
