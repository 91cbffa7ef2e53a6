"""RLW: Lin, Ye, Zhang, Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer
from mtrl.balancers.generator import GeneratorMixin
from mtrl.balancers.options import BalancerOptions


class RLW(GeneratorMixin, Balancer):
    """Random loss weighting (Lin et al., TMLR 2022): fresh random loss weights at every step.

    Each call draws ``z ~ N(0, I_T)`` from the balancer's own generator (seeded by ``seed``,
    checkpointed with it) and returns ``softmax(z)``. The weights sum to 1, the mean-gradient scale
    (``E[w_t] = 1/T``), as in the paper, which weights the loss sum with them. The draw is in
    float64 and the weights are returned in the dtype of the losses (or of the Gramian).

    ``requires_grads`` is False: the trainer backprops ``weights @ losses`` directly. The losses'
    values are not read (only their dtype and device), so ``requires_losses`` is False too.

    Deviation: only the standard normal draw (LibMTL's default); the paper also studies other
    distributions of the weights, which are not offered.

    No options; ``seed`` seeds the draws.
    """

    requires_grads = False
    run_inputs = ("seed",)

    def __init__(self, num_tasks: int, options: BalancerOptions = BalancerOptions(), *, seed: int = 0) -> None:
        super().__init__(num_tasks, options)
        self._init_generator(seed)

    def weights(self, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        like = gram if gram is not None else losses
        if like is None:
            raise ValueError("RLW needs the Gramian or the per-task losses (for their dtype and device)")
        draws = torch.randn(
            (self.num_tasks,), generator=self.generator(like.device), device=like.device, dtype=torch.float64
        )  # [T], z
        return torch.softmax(draws, dim=0).to(like.dtype)
