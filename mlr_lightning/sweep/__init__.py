"""Sweeps: many ``fit`` runs of one comparison (seeds x variants x tasks) into one MLflow experiment.

``spec`` reads a sweep file (or a ``grid`` command line) and expands it into validated trials, each a
``fit --resume auto`` command with a stable ``run_name``; ``runner`` schedules them on Ray Tune;
``progress`` reads what a trial has done from its run directory and MLflow.
"""
