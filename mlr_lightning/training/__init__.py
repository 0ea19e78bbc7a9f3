"""Running an experiment: assembly, snapshots and resume, callbacks, evaluation, tracking."""
