import sys

try:
    import mlr_lightning  # noqa: F401  (imports torch/tensordict/torchrl before anything imports dm_control)
    from mlr_lightning.cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while the libraries load or the arguments are read: nothing has started
    print("interrupted during start-up: nothing was started", file=sys.stderr)
    code = 130

raise SystemExit(code)
