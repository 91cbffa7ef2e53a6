"""DWA: Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions, fixed_in_runs
from mtrl.checks import check_positive, check_positive_int


class DWA(Balancer):
    """Dynamic Weight Average (Liu et al., CVPR 2019): loss weights from each task's rate of descent.

    The paper weights task ``t`` by ``T softmax(r / temperature)_t`` with
    ``r_t = L_t(k-1) / L_t(k-2)``, the ratio of its mean losses over the two previous epochs, and
    weight 1 for every task during the first two epochs. A task whose loss fell less (ratio near 1
    or above) gets more weight. We return ``softmax(r / temperature)`` (the paper's weights divided
    by ``T``: they sum to 1, the mean-gradient scale, and are exactly ``1/T`` while uniform).

    RL has no epochs, so a window of ``window`` consecutive updates takes an epoch's place: the
    losses of each call are added to the current window; when it is full its mean becomes
    ``L(k-1)`` and the previous one ``L(k-2)``. The weights change once per window, from the two
    last completed windows (the current window's losses do not count), and are uniform until two
    windows are complete, as in the paper's first two epochs. The window sums, the two window means
    and the counters live in buffers (``state_dict()`` holds them); the window's end is a tensor
    condition (``torch.where``), so nothing synchronises with the host.

    ``requires_grads`` is False: the trainer backprops ``weights @ losses`` directly.

    Deviations from the paper:

    * windows of ``window`` updates in place of epochs (the default of 1000 is our choice: long
      enough to average out the noise of single batches' losses, short against a run of millions
      of updates);
    * the mean losses are floored at ``min_loss`` before the ratio (they must be positive, e.g. TD
      losses).
    """

    requires_grads = False
    requires_losses = True

    @dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        temperature: float = 2.0
        """Softmax temperature of the loss ratios (larger: weights closer to uniform)."""
        window: int = 1000
        """Updates per loss window, the stand-in for the paper's epoch (its mean loss is one L(k))."""
        min_loss: float = fixed_in_runs(1e-8)
        """Floor of the windows' mean losses (they must be positive)."""

        def __post_init__(self) -> None:
            self._set("temperature", check_positive("temperature", self.temperature))
            self._set("window", check_positive_int("window", self.window))
            self._set("min_loss", check_positive("min_loss", self.min_loss))

    def __init__(self, num_tasks: int, options: Options = Options()) -> None:
        super().__init__(num_tasks, options)
        float64 = torch.float64
        self.register_buffer("window_sum", torch.zeros(num_tasks, dtype=float64))  # [T], losses of the current window
        self.register_buffer("window_count", torch.zeros((), dtype=torch.long))  # calls in the current window
        self.register_buffer("last_mean", torch.ones(num_tasks, dtype=float64))  # [T], L(k-1)
        self.register_buffer("before_mean", torch.ones(num_tasks, dtype=float64))  # [T], L(k-2)
        self.register_buffer("windows_done", torch.zeros((), dtype=torch.long))  # completed windows, at most 2

    def weights(self, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        if losses is None or losses.shape != (self.num_tasks,):
            shape = None if losses is None else tuple(losses.shape)
            raise ValueError(f"DWA needs per-task losses of shape [{self.num_tasks}], got {shape}")
        floor = self.options.min_loss
        ratios = self.last_mean.clamp_min(floor) / self.before_mean.clamp_min(floor)  # [T], r
        balanced = torch.softmax(ratios / self.options.temperature, dim=0)  # [T]
        uniform = torch.full_like(balanced, 1.0 / self.num_tasks)
        weights = torch.where(self.windows_done >= 2, balanced, uniform)  # [T]
        self._add_to_window(losses.detach().to(torch.float64))
        return weights.to(losses.dtype if gram is None else gram.dtype)

    def _add_to_window(self, losses: Tensor) -> None:
        """Add one call's losses ``[T]`` to the window; a full window becomes ``L(k-1)`` and starts afresh."""
        window_sum = self.window_sum + losses  # [T]
        count = self.window_count + 1
        full = count >= self.options.window
        self.before_mean.copy_(torch.where(full, self.last_mean, self.before_mean))
        self.last_mean.copy_(torch.where(full, window_sum / self.options.window, self.last_mean))
        self.window_sum.copy_(torch.where(full, torch.zeros_like(window_sum), window_sum))
        self.window_count.copy_(torch.where(full, torch.zeros_like(count), count))
        self.windows_done.copy_(torch.where(full, (self.windows_done + 1).clamp_max(2), self.windows_done))
