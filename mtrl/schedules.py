"""Learning-rate schedules stepped once per gradient update, checkpointed and resumed exactly.

Every schedule is a linear warm-up over ``warmup_steps`` updates followed by its shape:

* ``constant``: the peak learning rate from then on (the default, with no warm-up: Adam at a fixed
  rate, as in the SAC and CAGrad papers);
* ``warmup_cosine``: half a cosine from the peak down to ``final_lr_fraction`` of it at
  ``total_steps`` (Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
  ICLR 2017, one cycle and no restart; the warm-up as in Goyal et al. 2017, "Accurate, Large
  Minibatch SGD");
* ``linear``: a straight line from the peak down to ``final_lr_fraction`` at ``total_steps``.

Past ``total_steps`` the rate stays at its final value. The multiplier of update ``k`` (0-based:
the ``k``-th ``optimizer.step()``) is ``k / warmup_steps`` during the warm-up, so the first update
has rate 0 and update ``warmup_steps`` the peak. The scheduler is a ``torch.optim.lr_scheduler.LambdaLR``
whose multiplier is a :class:`LRMultiplier` object rather than a function, so ``state_dict()``
records it along with the step count (``LambdaLR`` drops plain functions); with the optimizer's own
``state_dict()`` (which holds the current and initial rates) a resumed run gets the same rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from mtrl.balancers.base import check_choice, check_positive_int

ScheduleName = Literal["constant", "warmup_cosine", "linear"]
SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine", "linear")


@dataclass(frozen=True)
class ScheduleConfig:
    """How the learning rate of an optimizer changes over the gradient updates."""

    name: ScheduleName = "constant"
    """Schedule after the warm-up: constant | warmup_cosine (cosine decay) | linear (linear decay)."""
    warmup_steps: int = 0
    """Updates of linear warm-up from 0 to the peak learning rate (0: none)."""
    total_steps: int = 0
    """Updates at which the decay reaches its final rate (0: the trainer's total number of updates)."""
    final_lr_fraction: float = 0.0
    """Final learning rate of warmup_cosine and linear, as a fraction of the peak, in [0, 1]."""

    def __post_init__(self) -> None:
        check_choice("schedule.name", self.name, SCHEDULES)
        check_positive_int("schedule.warmup_steps", self.warmup_steps, minimum=0)
        check_positive_int("schedule.total_steps", self.total_steps, minimum=0)
        fraction = self.final_lr_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"schedule.final_lr_fraction must be a number in [0, 1], got {fraction!r}")
        if self.total_steps and self.warmup_steps > self.total_steps:
            raise ValueError(
                f"schedule.warmup_steps must be <= schedule.total_steps={self.total_steps}, got {self.warmup_steps}"
            )


class LRMultiplier:
    """The factor on the peak learning rate at update ``step``; its attributes are plain numbers.

    ``LambdaLR.state_dict()`` saves the attributes of a callable object (not of a function) and
    ``load_state_dict`` restores them, so the schedule a run was started with is the one it resumes.
    """

    def __init__(self, name: str, warmup_steps: int, total_steps: int, final_lr_fraction: float) -> None:
        self.name = name
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.final_lr_fraction = final_lr_fraction

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.name == "constant":
            return 1.0
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.name == "warmup_cosine" else 1.0 - progress
        return self.final_lr_fraction + (1.0 - self.final_lr_fraction) * shape

    def __repr__(self) -> str:
        return (
            f"LRMultiplier(name={self.name!r}, warmup_steps={self.warmup_steps}, "
            f"total_steps={self.total_steps}, final_lr_fraction={self.final_lr_fraction})"
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_steps: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over every parameter group of ``optimizer``; call ``.step()`` after each update.

    ``total_steps`` (the trainer's number of updates) is used when ``config.total_steps`` is 0; the
    decaying schedules need one of the two. Build it right after the optimizer and before loading
    either's state: the optimizer's ``state_dict()`` then the scheduler's restore the rates exactly.
    """
    total = config.total_steps or (total_steps or 0)
    if config.name != "constant":
        check_positive_int(f"schedule.total_steps (or the trainer's total) of {config.name!r}", total)
        if config.warmup_steps > total:
            raise ValueError(f"schedule.warmup_steps must be <= total_steps={total}, got {config.warmup_steps}")
    multiplier = LRMultiplier(config.name, config.warmup_steps, total, float(config.final_lr_fraction))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
