"""Learning-rate schedules fitted to a run's budget (``--steps`` and/or ``--minutes``).

``cosine`` (the default): linear warm-up over the first ``warmup`` steps, then a cosine decay from
the peak ``lr`` to ``final_lr_ratio * lr`` at the end of the budget. The end is whichever comes
first of ``steps`` and ``minutes``: progress is ``max(step / steps, elapsed / budget_seconds)``, so a
timed run decays to its floor when its time is up however many steps that turned out to be.
``constant``: ``lr`` at every step (the article's recipe).

The learning rate lives in the optimizer's state (an input of the compiled step), so setting it
between steps costs nothing and never recompiles.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")
FINAL_LR_RATIO = 0.1  # the cosine ends at 10 % of the peak
MAX_WARMUP = 100  # steps; also at most 5 % of --steps


def warmup_steps(config) -> int:
    """``config.warmup`` if set, else 5 % of ``steps`` capped at ``MAX_WARMUP``."""
    if config.warmup is not None:
        return max(int(config.warmup), 0)
    return min(MAX_WARMUP, int(0.05 * config.steps))


def progress(config, step: int, elapsed_s: float = 0.0) -> float:
    """Fraction of the budget used after ``step`` steps and ``elapsed_s`` seconds, in [0, 1]."""
    done = step / max(config.steps, 1)
    if config.minutes:
        done = max(done, elapsed_s / (60.0 * config.minutes))
    return min(done, 1.0)


def learning_rate(config, step: int, elapsed_s: float = 0.0) -> float:
    """The learning rate of update number ``step`` (1-based) of a run with ``config`` (a TrainConfig)."""
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if config.schedule == "constant":
        return config.lr
    warm = warmup_steps(config)
    if step <= warm:
        return config.lr * step / (warm + 1)
    start = warm / max(config.steps, 1)  # the decay spans the budget left after the warm-up
    decay = max(progress(config, step, elapsed_s) - start, 0.0) / max(1.0 - start, 1e-9)
    floor = FINAL_LR_RATIO * config.lr
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(decay, 1.0)))
