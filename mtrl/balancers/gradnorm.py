"""GradNorm: Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.adam import adam_direction
from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions, fixed_in_runs
from mtrl.checks import check_non_negative, check_positive


class GradNorm(Balancer):
    """Gradient normalisation (Chen et al., ICML 2018): learned loss weights that equalise training rates.

    Loss weights ``w: [T]`` (``sum w = T``, all 1 at the start) scale the task gradients. With
    ``n_i = ||g_i||`` the norm of task ``i``'s gradient, ``G_i = w_i n_i`` its weighted norm and
    ``Gbar = mean_j G_j``, the weights descend the GradNorm loss

        ``L_grad = sum_i | G_i - Gbar * r_i ** alpha |``,  ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``,

    with the target ``Gbar * r_i ** alpha`` held constant (as in the paper), so
    ``dL_grad / dw_i = sign(G_i - target_i) * n_i``. A task that trains slower than average
    (``r_i > 1``) is pushed to a larger gradient norm, a faster one to a smaller norm; the asymmetry
    ``alpha`` (the paper's 1.5 on NYUv2) sets how hard; ``alpha = 0`` just equalises the norms. After
    each step the weights are renormalised to ``sum w = T``. The direction is ``(w / T) @ G``: the
    returned weights are ``w / T`` (sum 1, the mean-gradient scale), exactly ``1/T`` each while all
    ``w_i = 1``. As in the paper's Algorithm 1 a call returns the current weights and then takes
    one step on them, so the first call gives the mean gradient.

    The initial losses ``L_i(0)`` are those of the first call, kept in a buffer (a flag buffer and
    ``torch.where`` instead of a host branch). The weights, the initial losses and Adam's moments
    are buffers: ``state_dict()`` holds all of it, and nothing synchronises with the host.

    Deviations from the paper:

    * the gradient norms are those of each task's gradient over the whole shared trunk (the
      diagonal of the Gramian the balancer is given), not only over the last shared layer. The paper
      restricts ``G_i`` to the last shared layer to save the cost of per-task gradients; here the
      per-task gradients of the whole trunk are computed anyway (one vmapped backward), so the full
      norms cost nothing, while restricting them would need a second Gramian over one block (an
      interface change in :mod:`mtrl.gradients`);
    * the weights take Adam steps (learning rate ``lr``) on ``log w`` (multiplicative updates),
      along ``dL_grad / dlog w_i = w_i dL_grad / dw_i`` divided by ``Gbar`` (held constant). The
      paper's Algorithm 1 leaves the optimiser of ``w`` open, and the public implementations
      (LibMTL's ``GradNorm``, AuxiLearn's ``weight_methods.py``) step ``w`` itself with the
      network's Adam. Additive steps move a weight of 0.01 by as much as a weight of 1, so a small
      weight jumps by a large share of its value from step to step (docs/balancers.md); relative
      steps move every weight by the same share and keep it positive. Dividing by ``Gbar`` and
      Adam's normalisation make the weights' trajectory independent of the overall gradient scale
      (1e-8 or 1e+4 gradients give the same weights). The default ``lr = 0.025`` is the rate this
      project's FAMO uses for its task logits; we found no learning rate for ``w`` stated in the
      paper;
    * each ``w_i`` is floored at ``min_weight`` before renormalisation: relative steps would shrink
      the weight of a task that is solved (loss near 0, so ``r_i`` near 0) geometrically, and it
      would need as many steps to recover when the task becomes hard again; the paper has no
      floor. The losses are floored at ``min_loss`` (they must be positive, e.g. TD losses);
    * the sub-gradient of ``|G_i - target_i|`` is taken as 0 in a relative dead zone
      ``|G_i - target_i| <= eps_rel * max(G_i, target_i)`` (``math.isclose``'s test) instead of
      ``sign(G_i - target_i)``, which is 0 only at an exact tie. With equal tasks
      ``G_i - target_i`` is rounding noise: the Gramian's diagonal is a sum over ``D`` elements
      whose order depends on the BLAS kernel of the CPU (and on how :mod:`mtrl.gradients` splits
      the trunk into blocks), and Adam's normalisation turns each rounding-level ``±1`` into a full
      step of ``lr``, so equal weights random-walk apart on one CPU and not on another.
      ``eps_rel = 4 sqrt(eps)`` of the coarser of the Gramian's and the weights' dtypes: ``1.4e-3``
      for float32 (``6e-8`` for float64). It is wider than the rounding of a sum of ``D = 1e6``
      float32 squares in the worst (sequential) order, and finer than the share a weight moves in
      one step at the default ``lr``, so the weights settle as close to the target as the sign
      steps ever could (in the dead zone they stop, Adam's moments decaying, instead of
      oscillating around it), and a ``1e-2`` relative gap still moves them (docs/balancers.md
      gives the figures).
    """

    requires_losses = True

    @dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        alpha: float = 1.5
        """Asymmetry (0 equalises the gradient norms; larger pushes slow tasks harder)."""
        lr: float = 0.025
        """Learning rate of the loss weights (Adam steps on their logarithms)."""
        min_weight: float = fixed_in_runs(1e-3)
        """Floor of each loss weight before the weights are renormalised to sum T, in (0, 1]."""
        min_loss: float = fixed_in_runs(1e-8)
        """Floor of the per-task losses (they must be positive)."""

        def __post_init__(self) -> None:
            self._set("alpha", check_non_negative("alpha", self.alpha))
            self._set("lr", check_positive("lr", self.lr))
            min_weight = check_positive("min_weight", self.min_weight)
            if min_weight > 1.0:
                raise ValueError(f"min_weight must be a finite number in (0, 1], got {self.min_weight!r}")
            self._set("min_weight", min_weight)
            self._set("min_loss", check_positive("min_loss", self.min_loss))

    def __init__(self, num_tasks: int, options: Options = Options()) -> None:
        super().__init__(num_tasks, options)
        self.register_buffer("loss_weights", torch.ones(num_tasks))  # [T], w, sum T
        self.register_buffer("exp_avg", torch.zeros(num_tasks))  # [T], Adam's first moment
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks))  # [T], Adam's second moment
        self.register_buffer("adam_steps", torch.zeros(()))
        self.register_buffer("initial_losses", torch.ones(num_tasks))  # [T], L_i(0)
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        if losses is None or losses.shape != (self.num_tasks,):
            shape = None if losses is None else tuple(losses.shape)
            raise ValueError(f"GradNorm needs per-task losses of shape [{self.num_tasks}], got {shape}")
        dtype = self.loss_weights.dtype
        norms = gram.detach().diagonal().clamp_min(0.0).sqrt().to(dtype)  # [T], ||g_i||
        losses = losses.detach().to(dtype).clamp_min(self.options.min_loss)  # [T]
        initial = torch.where(self.has_initial, self.initial_losses, losses)  # [T], L_i(0)
        self.initial_losses.copy_(initial)
        self.has_initial.fill_(True)
        current = self.loss_weights.to(gram.dtype, copy=True)  # [T], w before this step
        rounding = max(torch.finfo(dtype).eps, torch.finfo(gram.dtype).eps)  # the coarser dtype's
        self._step(norms, losses / initial, dead_zone=4.0 * rounding**0.5)
        return current / self.num_tasks

    def _step(self, norms: Tensor, loss_ratios: Tensor, dead_zone: float) -> None:
        """One Adam step of ``log w`` on the GradNorm loss, then the floor and ``sum w = T``.

        ``dead_zone`` is ``eps_rel``: where ``|G_i - target_i| <= eps_rel * max(G_i, target_i)``
        the sub-gradient of ``|G_i - target_i|`` is 0 (see the class docstring).
        """
        weighted = self.loss_weights * norms  # [T], G_i
        mean_norm = weighted.mean()  # Gbar
        inverse_rates = loss_ratios / loss_ratios.mean()  # [T], r_i (<= T: the ratios are positive)
        target = mean_norm * inverse_rates**self.options.alpha  # [T]
        gap = weighted - target  # [T], G_i - target_i
        tied = gap.abs() <= dead_zone * torch.maximum(weighted, target)  # [T], equal up to rounding
        direction = torch.where(tied, torch.zeros_like(gap), torch.sign(gap))  # [T], sub-gradient of |gap|
        # dL_grad/dlog(w_i) = w_i * sign(G_i - target_i) * n_i (0 in the dead zone), divided by Gbar (held constant)
        grad = direction * weighted / mean_norm.clamp_min(torch.finfo(norms.dtype).tiny)  # [T]
        steps = self.adam_steps + 1.0
        update = adam_direction(grad, self.exp_avg, self.exp_avg_sq, steps)  # [T]
        stepped = (self.loss_weights * torch.exp(-self.options.lr * update)).clamp_min(self.options.min_weight)  # [T]
        self.loss_weights.copy_(stepped * (self.num_tasks / stepped.sum()))
        self.adam_steps.copy_(steps)
