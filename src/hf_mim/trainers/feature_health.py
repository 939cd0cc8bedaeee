"""Collapse monitor for the training logs: a warning when pooled features lose their spread.

Every method logs `effective_rank` (exp of the entropy of the singular values of the centred batch of pooled
features: min(batch, width) when isotropic, 1 when every image maps to one direction) and `feature_std` (mean
per-dimension std). A self-supervised objective can be minimised by a constant representation; these two numbers are
how that shows in a log. The thresholds are deliberately loose (a warning, not a stop): a healthy run of the tiny CPU
recipes keeps its rank above about 5 and its std well above 1e-3.
"""

import logging

logger = logging.getLogger(__name__)

RANK_FRACTION = 0.05  # warn below 5 % of the largest possible rank...
MIN_RANK = 1.5  # ...or below 1.5 dimensions whatever the batch
MIN_STD = 1e-4  # per-dimension std of pooled features


def collapse_warning(effective_rank: float, feature_std: float, batch_size: int, width: int) -> str | None:
    """A message if the logged feature health looks like collapse, else None."""
    ceiling = max(1, min(batch_size, width))
    problems = []
    if effective_rank < max(MIN_RANK, RANK_FRACTION * ceiling):
        problems.append(f"effective rank {effective_rank:.2f} of at most {ceiling}")
    if feature_std < MIN_STD:
        problems.append(f"feature std {feature_std:.2e}")
    if not problems:
        return None
    return (
        "Representation collapse? Pooled features have " + " and ".join(problems) + ": the objective may be "
        "reaching a constant output (check the learning rate, teacher momentum / temperatures, and the loss parts)."
    )


def warn_if_collapsing(logs: dict, batch_size: int, width: int, step: int) -> str | None:
    message = collapse_warning(logs["effective_rank"], logs["feature_std"], batch_size, width)
    if message is not None:
        logger.warning("step %d: %s", step, message)
        logs["collapse_warning"] = 1.0
    return message
