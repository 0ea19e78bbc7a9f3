"""The MLR learning-rate warm-up against the run's length: a one-line note for runs shorter than it."""

from __future__ import annotations

from omegaconf import DictConfig

from mlr_lightning.mlr.schedules import inverse_sqrt_schedule


def mlr_updates(cfg: DictConfig, env_steps_per_agent_step: int) -> int:
    """MLR updates in a run: one per agent update, after the random ``train.init_steps`` agent steps.
    ``env_steps_per_agent_step`` is the domain's x-axis unit (``Domain.env_steps_per_agent_step``)."""
    agent_steps = cfg.train.num_env_steps // env_steps_per_agent_step
    return max(0, agent_steps - cfg.train.init_steps) * cfg.train.updates_per_step


def warmup_note(cfg: DictConfig, env_steps_per_agent_step: int) -> str | None:
    """A note when MLR's LR warm-up (``mlr.warmup_steps``, where the domain has one) outlasts the run;
    None otherwise (Baseline runs, domains without a warm-up, runs longer than it)."""
    mlr = cfg.mlr
    if not mlr.enabled or "warmup_steps" not in mlr:
        return None
    updates, warmup = mlr_updates(cfg, env_steps_per_agent_step), mlr.warmup_steps
    if updates >= warmup or updates == 0:
        return None
    mean, end = _mean_factor(warmup, mlr.warmup_init_factor, updates)
    shorter = max(1, updates // 2)
    return (f"note: this run makes {updates} MLR updates, fewer than the MLR learning-rate warm-up "
            f"(mlr.warmup_steps={warmup}): MLR trains at ~{_percent(mean)} of mlr.lr on average ({_percent(end)} at the end). "
            f"To change it set mlr.warmup_steps, e.g. mlr.warmup_steps={shorter} "
            f"(~{_percent(_mean_factor(shorter, mlr.warmup_init_factor, updates)[0])} on average).")


def _mean_factor(warmup: int, init_factor: float, updates: int) -> tuple[float, float]:
    """The LR factor averaged over ``updates`` updates, and its value at the last one."""
    factor = inverse_sqrt_schedule(warmup, init_factor)
    return sum(factor(step) for step in range(updates)) / updates, factor(updates - 1)


def _percent(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.01 else f"{100 * fraction:.2g}%"
