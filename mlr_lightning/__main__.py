import sys

try:
    import mlr_lightning  # noqa: F401  (imports torch/tensordict/torchrl before anything imports dm_control)
    from mlr_lightning.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: nothing has started
    print("interrupted during start-up: nothing was started", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
