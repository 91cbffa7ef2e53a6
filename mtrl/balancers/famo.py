"""FAMO: Liu, Feng, Stone, Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.adam import ADAM_BETA1, ADAM_BETA2, ADAM_EPS
from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions, fixed_in_runs
from mtrl.checks import check_non_negative, check_positive


class FAMO(Balancer):
    """Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023): loss weights, no per-task gradients.

    Task logits ``xi`` (``z = softmax(xi)``) weight the log-losses; the gradient of
    ``sum_i z_i log L_i`` divided by ``sum_j z_j / L_j`` gives the loss weights
    ``w_i = z_i / (L_i sum_j z_j / L_j)``. They sum to 1 (the mean-gradient scale, ``1/T`` each for
    equal logits and equal losses), so no further normalisation is needed. After each step the logits
    move by Adam (learning rate ``lr``, L2 ``weight_decay`` as in the authors' ``torch.optim.Adam``) along
    ``J_softmax^T delta``, ``delta_i = log L_i(before) - log L_i(after)``: a task whose loss fell faster
    loses weight, one whose loss fell slower gains it.

    The logits and Adam's moments live in buffers, so ``state_dict()`` holds them; the update is
    tensor arithmetic without host synchronisation. ``requires_grads`` is False: :meth:`weights`
    accepts ``gram=None`` and a trainer may backprop ``weights @ losses`` directly. Through
    :meth:`combine` the gradients are only used for the diagnostics.

    Deviations from the paper:

    * the paper recomputes the losses on the same batch after the parameter step to get ``delta``.
      A trainer cannot afford the extra forward pass, so we keep the previous call's log-losses in a
      buffer and update the logits at the next call, with the next batch's losses (the first call
      makes no update);
    * the losses must be positive (e.g. a TD loss): values below ``min_loss`` are clamped to it, in
      place of the authors' ``+1e-8``.
    """

    requires_grads = False
    requires_losses = True

    @dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        lr: float = 0.025
        """Learning rate of the task logits (Adam)."""
        weight_decay: float = fixed_in_runs(0.001)
        """L2 weight decay of the task logits (the authors' Adam setting)."""
        min_loss: float = fixed_in_runs(1e-8)
        """Floor of the per-task losses (they must be positive)."""

        def __post_init__(self) -> None:
            self._set("lr", check_positive("lr", self.lr))
            self._set("weight_decay", check_non_negative("weight_decay", self.weight_decay))
            self._set("min_loss", check_positive("min_loss", self.min_loss))

    def __init__(self, num_tasks: int, options: Options = Options()) -> None:
        super().__init__(num_tasks, options)
        self.register_buffer("logits", torch.zeros(num_tasks))  # [T], xi
        self.register_buffer("exp_avg", torch.zeros(num_tasks))  # [T], Adam's first moment
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks))  # [T], Adam's second moment
        self.register_buffer("adam_steps", torch.zeros(()))
        self.register_buffer("prev_log_losses", torch.zeros(num_tasks))  # [T]
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))

    def task_weights(self) -> Tensor:
        """The current softmax of the logits, ``z: [T]``."""
        return torch.softmax(self.logits, dim=0)

    def weights(self, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        if losses is None or losses.shape != (self.num_tasks,):
            shape = None if losses is None else tuple(losses.shape)
            raise ValueError(f"FAMO needs per-task losses of shape [{self.num_tasks}], got {shape}")
        losses = losses.detach().to(self.logits.dtype).clamp_min(self.options.min_loss)  # [T]
        log_losses = losses.log()  # [T]
        self._update_logits(self.prev_log_losses - log_losses)
        self.prev_log_losses.copy_(log_losses)
        self.has_prev.fill_(True)
        inverse = self.task_weights() / losses  # [T]
        weights = inverse / inverse.sum()
        return weights.to(losses.dtype if gram is None else gram.dtype)

    def _update_logits(self, delta: Tensor) -> None:
        """One Adam step on the logits along ``J_softmax^T delta`` (skipped on the first call)."""
        z = self.task_weights()  # [T]
        grad = z * (delta - z @ delta) + self.options.weight_decay * self.logits  # [T]
        steps = self.adam_steps + self.has_prev.to(self.adam_steps.dtype)
        exp_avg = ADAM_BETA1 * self.exp_avg + (1.0 - ADAM_BETA1) * grad
        exp_avg_sq = ADAM_BETA2 * self.exp_avg_sq + (1.0 - ADAM_BETA2) * grad**2
        bias1 = 1.0 - ADAM_BETA1 ** steps.clamp_min(1.0)
        bias2 = 1.0 - ADAM_BETA2 ** steps.clamp_min(1.0)
        logits = self.logits - self.options.lr * (exp_avg / bias1) / ((exp_avg_sq / bias2).sqrt() + ADAM_EPS)
        update = self.has_prev
        self.logits.copy_(torch.where(update, logits, self.logits))
        self.exp_avg.copy_(torch.where(update, exp_avg, self.exp_avg))
        self.exp_avg_sq.copy_(torch.where(update, exp_avg_sq, self.exp_avg_sq))
        self.adam_steps.copy_(steps)
