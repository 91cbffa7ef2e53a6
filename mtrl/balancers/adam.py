"""Adam on a balancer's own few parameters (log-variances, logits), kept in its buffers.

A balancer that learns a handful of numbers per task has no optimizer of its own: it keeps the
parameters and Adam's moments in buffers (so ``state_dict()`` holds them) and steps them here with
tensor arithmetic, on their device, without host synchronisation. The step is torch's Adam
(Kingma & Ba, ICLR 2015) with torch's default constants and no weight decay.
"""

from __future__ import annotations

from torch import Tensor

#: torch's default Adam constants.
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8


def adam_direction(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, steps: Tensor) -> Tensor:
    """Adam's step direction for ``grad`` (the bias-corrected ``m / (sqrt(v) + eps)``, before the rate),
    the moments ``exp_avg``, ``exp_avg_sq`` moved on in place; ``steps`` is the count including this step."""
    exp_avg.mul_(ADAM_BETA1).add_(grad, alpha=1.0 - ADAM_BETA1)
    exp_avg_sq.mul_(ADAM_BETA2).addcmul_(grad, grad, value=1.0 - ADAM_BETA2)
    bias1 = 1.0 - ADAM_BETA1**steps
    bias2 = 1.0 - ADAM_BETA2**steps
    return (exp_avg / bias1) / ((exp_avg_sq / bias2).sqrt() + ADAM_EPS)


def adam_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, steps: Tensor, lr: float) -> None:
    """One Adam step of ``param`` along ``grad``, in place: the moments ``exp_avg``, ``exp_avg_sq``
    (shaped like ``param``) and the 0-dim step count ``steps`` move on with it."""
    steps.add_(1.0)
    param.sub_(lr * adam_direction(grad, exp_avg, exp_avg_sq, steps))
