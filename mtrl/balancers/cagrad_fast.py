"""CAGrad-Fast: the sampled speed-up of CAGrad (Liu et al., "Conflict-Averse Gradient Descent for
Multi-task Learning", NeurIPS 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import SolverBalancer
from mtrl.balancers.cagrad import RESCALE_FACTORS, CAGrad, cagrad_weights
from mtrl.balancers.generator import GeneratorMixin

#: Default number of reduced gradients: the authors' MT10 setting (they used 8 for MT50).
DEFAULT_NUM_SAMPLED = 4


class CAGradFast(GeneratorMixin, SolverBalancer):
    """CAGrad on ``K`` reduced gradients per step (the paper's practical speed-up).

    Each call, ``K - 1`` tasks sampled without replacement from the balancer's generator keep their
    own gradient and the other ``T - K + 1`` tasks enter as one averaged gradient. With the
    ``[K, T]`` selection/averaging matrix ``S`` the reduced gradients are ``S G``, their Gramian is
    ``S K S^T`` and CAGrad's ``K`` weights map back to per-task weights as ``w @ S``, so this works on
    the Gramian like :class:`~mtrl.balancers.cagrad.CAGrad`.

    ``g0`` is the true mean gradient: the reduced gradients are weighted ``1/T`` for a sampled task
    and ``(T - K + 1)/T`` for the average (as in the authors' ``fast_w``), and ``phi = c ||g0||``.
    Then ``K = T`` is CAGrad on the tasks in a random order, i.e. CAGrad itself, and ``K = 1`` (one
    averaged gradient, ``w = 1``, ``lambda = c``) is ``(1 + c)`` times the mean gradient before
    rescaling: exactly the mean-gradient scale with ``rescale=2`` (``1/(1+c)``, the authors'
    rescaling in ``cagrad_fast``), ``(1 + c)/(1 + c^2)`` times it with our default ``rescale=1``.

    Deviation: the authors' code leaves one task out of the averaged remainder (its loop starts at
    index ``K`` instead of ``K - 1``); here every task is either sampled or averaged.
    ``num_sampled`` defaults to ``min(4, T)``; the other options and ``compile_solver`` as in CAGrad.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(CAGrad.Options):
        num_sampled: int | None = None
        """Tasks per step K (K-1 sampled tasks plus the average of the rest), 1 <= K <= T; None: min(4, T), the authors' MT10 setting."""

        def check_num_tasks(self, num_tasks: int) -> None:
            value = self.num_sampled
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= num_tasks):
                raise ValueError(f"num_sampled must be an integer in [1, num_tasks={num_tasks}], got {value!r}")

    run_inputs = ("seed", "compile_solver")

    def __init__(self, num_tasks: int, options: Options = Options(), *, seed: int = 0, compile_solver: bool = False) -> None:
        super().__init__(num_tasks, options, compile_solver=compile_solver)
        self.num_sampled = min(DEFAULT_NUM_SAMPLED, num_tasks) if options.num_sampled is None else options.num_sampled
        self._init_generator(seed)

    def selection(self, device: torch.device) -> Tensor:
        """A fresh random ``[K, T]`` selection/averaging matrix (float64) from the generator."""
        num, kept = self.num_tasks, self.num_sampled - 1
        order = torch.randperm(num, generator=self.generator(device), device=device)  # [T]
        position = torch.arange(num, device=device)  # [T]
        rows = position.clamp_max(kept)  # [T], the first K-1 of the order get a row each, the rest share one
        values = torch.full((num,), 1.0 / (num - kept), dtype=torch.float64, device=device)  # [T]
        values[:kept] = 1.0
        select = torch.zeros((self.num_sampled, num), dtype=torch.float64, device=device)  # [K, T]
        return select.index_put((rows, order), values)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        num, kept, c = self.num_tasks, self.num_sampled - 1, self.options.c
        select = self.selection(gram.device)  # [K, T]
        if c == 0.0:
            return torch.full((num,), 1.0 / num, dtype=gram.dtype, device=gram.device)
        reduced = select @ gram.detach().to(torch.float64) @ select.T  # [K, K]
        base = torch.full((self.num_sampled,), 1.0 / num, dtype=torch.float64, device=gram.device)  # [K]
        base[kept] = (num - kept) / num
        reduced_weights = cagrad_weights(reduced, base, c, self.options.max_iter, self.compile_solver)  # [K]
        weights = reduced_weights @ select * RESCALE_FACTORS[self.options.rescale](c)  # [T]
        return weights.to(gram.dtype)
