"""Uncertainty weighting: Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses
for Scene Geometry and Semantics", CVPR 2018."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.adam import adam_step
from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions, fixed_in_runs
from mtrl.checks import check_positive


class UncertaintyWeighting(Balancer):
    """Homoscedastic uncertainty weighting (Kendall et al., CVPR 2018): learned log-variances, no per-task gradients.

    Each task has a learned log-variance ``s_t = log sigma_t^2`` and the tasks' Gaussian likelihoods
    give the objective ``sum_t exp(-s_t) L_t / 2 + s_t / 2`` (the paper's regression form,
    ``L_t / (2 sigma_t^2) + log sigma_t``, in the variable ``s_t`` the paper trains for stability).
    Its gradient is ``exp(-s_t) / 2 * grad L_t`` for the network and, in closed form,
    ``(1 - L_t exp(-s_t)) / 2`` for ``s_t``, which is zero at ``exp(s_t) = L_t``: a task's weight
    tends to the inverse of its loss. Each call returns the loss weights of the current ``s``, then
    takes one Adam step of ``s`` along that gradient, as one optimizer stepping the network and ``s``
    together would.

    Scale: the paper's direction is ``sum_t exp(-s_t) / 2 * g_t``; we return the weights
    ``exp(-s_t) / T`` (the paper's times ``2 / T``), so at the start (``s = 0``, ``sigma = 1``)
    they are ``1/T`` each, the mean gradient, and they follow the learned precisions from there.

    ``s`` and Adam's moments live in buffers, so ``state_dict()`` holds them; the update is tensor
    arithmetic without host synchronisation. ``requires_grads`` is False: :meth:`weights` accepts
    ``gram=None`` and a trainer backprops ``weights @ losses`` directly.

    Deviations from the paper:

    * the paper trains ``s`` with the network's optimizer; a balancer has none, so ``s`` takes its
      own Adam steps (torch's constants, no weight decay) at the constant rate ``log_var_lr``,
      whose default is this project's network rate (Adam's ``3e-4``) but which follows no
      learning-rate schedule;
    * ``s`` starts at 0 (LibMTL starts it at -0.5);
    * the losses are floored at ``min_loss`` in the gradient of ``s``. A loss that is not positive
      (SAC's actor loss usually is negative) is no Gaussian likelihood, and the objective would
      have no minimum in ``s_t``: ``exp(-s_t)`` would grow without bound. Floored, ``s_t`` tends to
      ``log(min_loss)`` and the task's weight to ``1 / (T min_loss)``, large but finite: the method
      does not suit such a loss.
    """

    requires_grads = False
    requires_losses = True

    @dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        log_var_lr: float = 3e-4
        """Learning rate of the log-variances (their own Adam; the default is the networks' Adam rate)."""
        min_loss: float = fixed_in_runs(1e-8)
        """Floor of the per-task losses in the gradient of the log-variances (they must be positive)."""

        def __post_init__(self) -> None:
            self._set("log_var_lr", check_positive("log_var_lr", self.log_var_lr))
            self._set("min_loss", check_positive("min_loss", self.min_loss))

    def __init__(self, num_tasks: int, options: Options = Options()) -> None:
        super().__init__(num_tasks, options)
        self.register_buffer("log_vars", torch.zeros(num_tasks))  # [T], s = log sigma^2
        self.register_buffer("exp_avg", torch.zeros(num_tasks))  # [T], Adam's first moment
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks))  # [T], Adam's second moment
        self.register_buffer("adam_steps", torch.zeros(()))

    def weights(self, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        if losses is None or losses.shape != (self.num_tasks,):
            shape = None if losses is None else tuple(losses.shape)
            raise ValueError(f"UncertaintyWeighting needs per-task losses of shape [{self.num_tasks}], got {shape}")
        precisions = torch.exp(-self.log_vars)  # [T], 1 / sigma^2
        weights = precisions / self.num_tasks  # [T], before this step
        losses_floored = losses.detach().to(precisions.dtype).clamp_min(self.options.min_loss)  # [T]
        grad = 0.5 * (1.0 - losses_floored * precisions)  # [T], d objective / d s
        adam_step(self.log_vars, grad, self.exp_avg, self.exp_avg_sq, self.adam_steps, self.options.log_var_lr)
        return weights.to(losses.dtype if gram is None else gram.dtype)
