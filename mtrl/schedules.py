"""Learning-rate schedules stepped once per gradient update, checkpointed and resumed exactly.

Every schedule is a linear warm-up over ``warmup_updates`` updates followed by its shape:

* ``constant``: the peak learning rate from then on (the default, with no warm-up: Adam at a fixed
  rate, as in the SAC and CAGrad papers);
* ``warmup_cosine``: half a cosine from the peak down to ``final_lr_fraction`` of it at
  ``total_updates`` (Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
  ICLR 2017, one cycle and no restart; the warm-up as in Goyal et al. 2017, "Accurate, Large
  Minibatch SGD");
* ``linear``: a straight line from the peak down to ``final_lr_fraction`` at ``total_updates``.

Past ``total_updates`` the rate stays at its final value. The multiplier of update ``k`` (0-based:
the ``k``-th ``optimizer.step()``) is ``k / warmup_updates`` during the warm-up, so the first update
has rate 0 and update ``warmup_updates`` the peak. :class:`LearningRateSchedule` writes the rate into
the optimizer's groups in place (a tensor rate stays the same tensor, so a compiled update is not
recompiled when it changes) and checkpoints the update count with the multiplier's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mtrl.checks import check_choice, check_positive_int

ScheduleName = Literal["constant", "warmup_cosine", "linear"]
SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine", "linear")


@dataclass(frozen=True)
class ScheduleConfig:
    """How the learning rate of an optimizer changes over the gradient updates."""

    name: ScheduleName = "constant"
    """Schedule after the warm-up: constant | warmup_cosine (cosine decay) | linear (linear decay)."""
    warmup_updates: int = 0
    """Updates of linear warm-up from 0 to the peak learning rate (0: none)."""
    total_updates: int = 0
    """Updates at which the decay reaches its final rate (0: the trainer's total number of updates)."""
    final_lr_fraction: float = 0.0
    """Final learning rate of warmup_cosine and linear, as a fraction of the peak, in [0, 1]."""

    def __post_init__(self) -> None:
        check_choice("schedule.name", self.name, SCHEDULES)
        check_positive_int("schedule.warmup_updates", self.warmup_updates, minimum=0)
        check_positive_int("schedule.total_updates", self.total_updates, minimum=0)
        fraction = self.final_lr_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"schedule.final_lr_fraction must be a number in [0, 1], got {fraction!r}")
        if self.total_updates and self.warmup_updates > self.total_updates:
            raise ValueError(
                f"schedule.warmup_updates must be <= schedule.total_updates={self.total_updates}, got {self.warmup_updates}"
            )


class LRMultiplier:
    """The factor on the peak learning rate at update ``step``; its attributes are plain numbers (checkpointed)."""

    def __init__(self, name: str, warmup_updates: int, total_updates: int, final_lr_fraction: float) -> None:
        self.name = name
        self.warmup_updates = warmup_updates
        self.total_updates = total_updates
        self.final_lr_fraction = final_lr_fraction

    def __call__(self, step: int) -> float:
        if step < self.warmup_updates:
            return step / self.warmup_updates
        if self.name == "constant":
            return 1.0
        progress = min((step - self.warmup_updates) / max(self.total_updates - self.warmup_updates, 1), 1.0)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.name == "warmup_cosine" else 1.0 - progress
        return self.final_lr_fraction + (1.0 - self.final_lr_fraction) * shape

    def __repr__(self) -> str:
        return (
            f"LRMultiplier(name={self.name!r}, warmup_updates={self.warmup_updates}, "
            f"total_updates={self.total_updates}, final_lr_fraction={self.final_lr_fraction})"
        )


class LearningRateSchedule:
    """The learning rate of every parameter group of one optimizer: ``peak_lr * multiplier(updates)``.

    ``updates`` counts the calls of :meth:`step` (one after each gradient update). Each group's
    rate is written in place: a tensor rate (Adam and AdamW here, see :mod:`mtrl.optim`) is filled,
    so a compiled update that reads it never sees a new object or value to recompile for; a float
    rate (Lion) is replaced. ``state_dict()`` holds the update count, the peak rate and the
    multiplier's settings, so a resumed run continues the schedule it was started with;
    :meth:`set_peak` gives a resumed run a new peak rate at the same position.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: LRMultiplier, peak_lr: float) -> None:
        self.optimizer, self.multiplier, self.peak_lr = optimizer, multiplier, float(peak_lr)
        self.updates = 0
        self._write()

    @property
    def rate(self) -> float:
        """The rate of the next update."""
        return self.peak_lr * self.multiplier(self.updates)

    def step(self) -> None:
        """Move to the next update's rate."""
        self.updates += 1
        self._write()

    def set_peak(self, peak_lr: float) -> None:
        """Make ``peak_lr`` the peak rate from the current position on (an unchanged rate changes nothing)."""
        self.peak_lr = float(peak_lr)
        self._write()

    def _write(self) -> None:
        rate = self.rate
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "peak_lr": self.peak_lr, "multiplier": dict(vars(self.multiplier))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (or a ``LambdaLR`` state of earlier checkpoints: ``last_epoch``, ``base_lrs``, ``lr_lambdas``)."""
        if "last_epoch" in state:
            state = {"updates": state["last_epoch"], "peak_lr": state["base_lrs"][0], "multiplier": state["lr_lambdas"][0]}
        self.updates, self.peak_lr = int(state["updates"]), float(state["peak_lr"])
        vars(self.multiplier).update(state["multiplier"])
        self._write()


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_updates: int | None = None, peak_lr: float | None = None
) -> LearningRateSchedule:
    """The schedule ``config`` names over every parameter group of ``optimizer``, peaking at ``peak_lr`` (default: the groups' current rate).

    ``total_updates`` (the trainer's number of updates) is used when ``config.total_updates`` is 0; the
    decaying schedules need one of the two. Call ``.step()`` after each update.
    """
    total = config.total_updates or (total_updates or 0)
    if config.name != "constant":
        check_positive_int(f"schedule.total_updates (or the trainer's total) of {config.name!r}", total)
        if config.warmup_updates > total:
            raise ValueError(f"schedule.warmup_updates must be <= total_updates={total}, got {config.warmup_updates}")
    multiplier = LRMultiplier(config.name, config.warmup_updates, total, float(config.final_lr_fraction))
    return LearningRateSchedule(optimizer, multiplier, float(optimizer.param_groups[0]["lr"]) if peak_lr is None else peak_lr)
