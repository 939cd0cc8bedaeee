"""Step schedules shared by every method (lr, weight decay, teacher momentum, temperatures)."""

import math


def warmup_then_cosine(
    step: int,
    base_value: float,
    final_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup_value: float = 0.0,
    truncate_cos: float = 1.0,
    linspace_warmup: bool = False,
) -> float:
    """Linear warmup from `start_warmup_value` to `base_value`, then a cosine from `base_value` towards
    `final_value` over the remaining steps; `truncate_cos < 1` stops the cosine early (CAPI uses 0.8, so the lr
    ends at ~9.6% of its peak and the momentum at ~0.9999). Past `total_steps` the last value is held.

    The warmup is `start + (base - start) * step / warmup_steps` (I-JEPA, timm: the peak comes at the first cosine
    step), or with `linspace_warmup` CAPI's `np.linspace(start, base, warmup_steps)`: its last step already reaches
    the peak, which the first cosine step then repeats."""
    if warmup_steps > 0 and step < warmup_steps:
        span = warmup_steps - 1 if linspace_warmup else warmup_steps
        if span == 0:
            return start_warmup_value
        return start_warmup_value + (base_value - start_warmup_value) * step / span
    cosine_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0), cosine_steps) / cosine_steps
    return final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * truncate_cos * progress))


def linear(step: int, start: float, end: float, total_steps: int) -> float:
    """Linear ramp (I-JEPA's momentum and weight decay use linear or cosine ramps over the run)."""
    progress = min(max(step, 0), max(total_steps, 1)) / max(total_steps, 1)
    return start + (end - start) * progress
