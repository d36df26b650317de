"""Learning-rate schedules and validation points, as pure functions of the step (exact resume)."""

import math

import numpy as np


def lr_factor(cfg, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier of optimiser step `step` (0-based).

    step: x0.1 from epoch `lr_update` on (released region recipe);
    cosine: linear warm-up over `warmup_proportion` of all steps, then half a cosine to 0
    (released ESL-CLIP recipe, transformers' get_cosine_schedule_with_warmup)."""
    if cfg.schedule == "step":
        return 0.1 if step // steps_per_epoch >= cfg.lr_update else 1.0
    total = steps_per_epoch * cfg.num_epochs
    warmup = int(cfg.warmup_proportion * total)
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def evaluation_steps(steps_per_epoch: int, evals_per_epoch: int) -> set[int]:
    """Batch indices after which to validate: evenly spread, the last one ending the epoch."""
    return set(np.linspace(0, steps_per_epoch - 1, evals_per_epoch + 1, dtype=int)[1:].tolist())
