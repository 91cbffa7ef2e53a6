"""Optimizers per network (Adam, AdamW, Lion) and gradient-norm clipping of the balanced direction.

* Adam: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015 (the default, as in
  the SAC and CAGrad papers).
* AdamW: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019
  (``torch.optim.AdamW``).
* Lion: Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, from the
  maintained ``lion-pytorch`` package (torch has no Lion). Its update is the sign of an
  interpolated momentum, so its steps are larger than Adam's: the paper uses a learning rate 3-10x
  smaller and a weight decay 3-10x larger than AdamW's.

Weight decay (AdamW's and Lion's decoupled decay, Adam's L2 penalty) is applied to weight matrices
only: see :func:`split_weight_decay` for the rule. :func:`clip_gradients` rescales the gradients
already in ``.grad`` (the balanced direction, after :func:`mtrl.gradients.balanced_backward`) and
returns the pre-clip norm, without synchronising with the host. :class:`NetworkOptimizer` keeps a
network's optimizer, its learning-rate schedule and its configured peak rate together, so that they
are checkpointed and resumed as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from lion_pytorch import Lion
from torch import Tensor, nn

from mtrl.checks import check_choice, check_non_negative, check_positive
from mtrl.schedules import ScheduleConfig, build_scheduler

OptimizerName = Literal["adam", "adamw", "lion"]
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "lion")

#: Defaults where the optimizers differ: torch's for Adam and AdamW, the Lion paper's for Lion.
DEFAULT_BETAS: dict[str, tuple[float, float]] = {"adam": (0.9, 0.999), "adamw": (0.9, 0.999), "lion": (0.9, 0.99)}
DEFAULT_WEIGHT_DECAY: dict[str, float] = {"adam": 0.0, "adamw": 0.01, "lion": 0.0}

NamedParameters = nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer of one network (actor, critic or temperature) and its gradient clipping."""

    name: OptimizerName = "adam"
    """Optimizer: adam (the papers' default) | adamw (decoupled weight decay) | lion (sign of momentum)."""
    lr: float = 3e-4
    """Peak learning rate (a schedule multiplies it); Lion usually needs 3-10x less than Adam."""
    betas: tuple[float, float] | None = None
    """Momentum coefficients (beta1, beta2); default (0.9, 0.999) for adam/adamw, (0.9, 0.99) for lion."""
    eps: float = 1e-8
    """Adam/AdamW denominator term (Lion has none)."""
    weight_decay: float | None = None
    """Decay of weight matrices, not biases or norm parameters (adam: an L2 term); default 0.01 for adamw, else 0."""
    max_grad_norm: float = 0.0
    """Clip the global norm of the network's (balanced) gradient to this value; 0 disables clipping."""

    def __post_init__(self) -> None:
        check_choice("optimizer.name", self.name, OPTIMIZERS)
        check_positive("optimizer.lr", self.lr)
        check_positive("optimizer.eps", self.eps)
        check_non_negative("optimizer.max_grad_norm", self.max_grad_norm)
        if self.weight_decay is not None:
            check_non_negative("optimizer.weight_decay", self.weight_decay)
        if self.betas is not None and not _are_betas(self.betas):
            raise ValueError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas!r}")

    def resolved_betas(self) -> tuple[float, float]:
        """``betas``, or this optimizer's default when unset."""
        return DEFAULT_BETAS[self.name] if self.betas is None else (float(self.betas[0]), float(self.betas[1]))

    def resolved_weight_decay(self) -> float:
        """``weight_decay``, or this optimizer's default when unset."""
        return DEFAULT_WEIGHT_DECAY[self.name] if self.weight_decay is None else float(self.weight_decay)


def _are_betas(betas: object) -> bool:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        return False
    return all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas)


def named_parameters(params: NamedParameters) -> list[tuple[str, Tensor]]:
    """``(name, parameter)`` pairs of a module, a mapping or an iterable of pairs, each parameter once."""
    if isinstance(params, nn.Module):
        return list(params.named_parameters())
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    seen: set[int] = set()
    unique = []
    for name, param in pairs:
        if id(param) not in seen:
            seen.add(id(param))
            unique.append((name, param))
    return unique


def is_no_decay(name: str, param: Tensor) -> bool:
    """Whether ``param`` is exempt from weight decay.

    Exempt: every parameter with at most one dimension (biases, the scales and shifts of torch's
    normalisation layers, temperatures), every parameter whose last name component is ``bias``
    (e.g. the ``[T, out]`` biases of per-task heads) and every parameter with ``norm`` in a name
    component (``layer_norm.weight``, ``norm1.weight``: per-task normalisation parameters are 2-D).
    Everything else, i.e. the weight matrices of linear layers (``[T, in, out]`` per-task weights
    included), is decayed.
    """
    parts = name.lower().split(".")
    return param.dim() <= 1 or parts[-1] == "bias" or any("norm" in part for part in parts)


def split_weight_decay(params: NamedParameters) -> tuple[list[Tensor], list[Tensor]]:
    """``(decay, no_decay)``: the parameters split by :func:`is_no_decay`, each in the given order."""
    decay, no_decay = [], []
    for name, param in named_parameters(params):
        (no_decay if is_no_decay(name, param) else decay).append(param)
    return decay, no_decay


def build_optimizer(params: NamedParameters, config: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over a module's parameters or ``(name, parameter)`` pairs.

    Names are needed for the weight-decay rule (:func:`is_no_decay`); a mapping such as
    ``{"log_alpha": log_alpha}`` works for loose parameters. Without weight decay there is one
    parameter group (``group = "all"``); with it two, ``"decay"`` (``weight_decay`` as configured)
    then ``"no_decay"`` (``weight_decay = 0``), an empty one left out. Adam and AdamW use torch's
    fused implementation where the parameters allow it (CPU or CUDA floating point): one kernel per
    step instead of a dozen small ones per parameter, 3.4x faster for a 2 x 256 SAC critic on a CPU.
    """
    pairs = named_parameters(params)
    if not pairs:
        raise ValueError("build_optimizer got no parameters")
    weight_decay = config.resolved_weight_decay()
    if weight_decay > 0.0:
        decay, no_decay = split_weight_decay(pairs)
        groups = [
            {"params": decay, "weight_decay": weight_decay, "group": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"},
        ]
        groups = [group for group in groups if group["params"]]
    else:
        groups = [{"params": [param for _, param in pairs], "weight_decay": 0.0, "group": "all"}]
    betas = config.resolved_betas()
    fused = all(param.is_floating_point() and param.device.type in ("cpu", "cuda") for _, param in pairs)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=betas, eps=config.eps, fused=fused)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.eps, fused=fused)
    if config.name == "lion":
        return Lion(groups, lr=config.lr, betas=betas)
    raise ValueError(f"optimizer.name must be one of {', '.join(map(repr, OPTIMIZERS))}, got {config.name!r}")


def clip_by_global_norm(grads: list[Tensor], max_norm: float | None) -> tuple[list[Tensor], Tensor]:
    """``(grads scaled to a global L2 norm of at most max_norm, the norm before)``, as tensor ops only.

    torch's scale ``min(1, max_norm / (norm + 1e-6))``, applied unconditionally; ``max_norm`` 0 or
    ``None`` returns the gradients as they are. What :func:`clip_gradients` does to ``.grad``, for
    a compiled update that never writes ``.grad``.
    """
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))  # []
    if not max_norm:
        return grads, norm
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    return [g * scale for g in grads], norm


@torch.no_grad()
def clip_gradients(params: nn.Module | Iterable[Tensor], max_norm: float | None) -> Tensor:
    """Scale the gradients in ``.grad`` to a global L2 norm of at most ``max_norm``; return the pre-clip norm.

    The global norm is taken over every parameter that has a gradient, the scale is torch's
    ``min(1, max_norm / (norm + 1e-6))`` (as ``torch.nn.utils.clip_grad_norm_``) applied
    unconditionally, so nothing synchronises with the host. ``max_norm`` 0 or ``None`` leaves the
    gradients untouched and only measures them. Call it after the balanced direction has been
    written into ``.grad`` and before ``optimizer.step()``: the clipped quantity is the combined
    direction, not the per-task gradients. Returns a 0-dim tensor on the gradients' device (0 on the
    parameters' device when none has a gradient).
    """
    if max_norm is not None:
        check_non_negative("max_norm", max_norm)
    tensors = list(params.parameters() if isinstance(params, nn.Module) else params)
    grads = [p.grad for p in tensors if p.grad is not None]
    if not grads:
        return torch.zeros((), device=tensors[0].device if tensors else None)
    scaled, norm = clip_by_global_norm(grads, max_norm)
    for grad, new in zip(grads, scaled):
        if new is not grad:
            grad.copy_(new)
    return norm


def set_peak_learning_rate(
    optimizer: torch.optim.Optimizer, lr: float, scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
) -> None:
    """Make ``lr`` the peak rate of a loaded optimizer (a resumed run's new setting), keeping the schedule's position.

    Every group's rate becomes ``lr * multiplier(step)``, what ``LambdaLR`` computes itself, so an
    unchanged ``lr`` leaves the loaded rates exactly as they were.
    """
    if scheduler is None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        return
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, multiplier in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * multiplier(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


class NetworkOptimizer:
    """One network's optimizer, its learning-rate schedule (or none) and the peak rate its config asks for.

    Checkpointed as a whole: ``state_dict()`` is ``{"optimizer": ..., "schedule": ...}`` (no
    ``schedule`` without one), and :meth:`load_state_dict` restores both, optimizer first, then
    makes :attr:`peak_lr` the peak rate again with :func:`set_peak_learning_rate` (a resumed run may
    have been given a new rate; an unchanged one leaves the loaded rates exactly as they were).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, peak_lr: float, schedule: torch.optim.lr_scheduler.LambdaLR | None = None
    ) -> None:
        self.optimizer, self.peak_lr, self.schedule = optimizer, check_positive("peak_lr", peak_lr), schedule
        self._graph_lrs: dict[int, Tensor] = {}  # group index -> its rate as a device tensor (graph_groups)

    @classmethod
    def build(
        cls,
        params: NamedParameters,
        config: OptimizerConfig,
        schedule: ScheduleConfig | None = None,
        total_updates: int | None = None,
    ) -> NetworkOptimizer:
        """:func:`build_optimizer` over ``params``, with :func:`~mtrl.schedules.build_scheduler` when ``schedule`` is given."""
        optimizer = build_optimizer(params, config)
        return cls(optimizer, config.lr, None if schedule is None else build_scheduler(optimizer, schedule, total_updates))

    @property
    def learning_rate(self) -> float:
        """The rate of the next step (of the first parameter group)."""
        return self.schedule.get_last_lr()[0] if self.schedule is not None else self.optimizer.param_groups[0]["lr"]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def graph_capable(self) -> bool:
        """Whether :meth:`graph_groups` / :meth:`graph_step` can stand in for :meth:`step` (Adam and AdamW)."""
        return type(self.optimizer) in (torch.optim.Adam, torch.optim.AdamW)

    def graph_groups(self) -> list[GraphGroup]:
        """The optimizer's groups as :class:`GraphGroup` inputs of a compiled step (eager, before it).

        Creates the optimizer's state where it has none yet, in the layout of torch's fused Adam
        (what its first ``step()`` would create), and copies each group's current rate into a device
        tensor (no host synchronisation: a fill with a host number). The other settings are copied
        as host numbers: the compiled step never reads ``param_groups``, whose rate changes with the
        schedule (reading it there would make the compiler guard on it and recompile every update).
        """
        if not self.graph_capable:
            raise ValueError(f"a compiled update needs Adam or AdamW, got {type(self.optimizer).__name__}")
        groups = []
        for index, group in enumerate(self.optimizer.param_groups):
            params = list(group["params"])
            for param in params:
                state = self.optimizer.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            lr = self._graph_lrs.get(index)
            if lr is None or lr.device != params[0].device:
                lr = self._graph_lrs[index] = torch.zeros((), dtype=torch.float32, device=params[0].device)
            lr.fill_(group["lr"])
            states = [self.optimizer.state[param] for param in params]
            groups.append(
                GraphGroup(
                    params,
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [s["step"] for s in states],
                    lr,
                    tuple(group["betas"]),
                    float(group["eps"]),
                    float(group["weight_decay"]),
                    isinstance(self.optimizer, torch.optim.AdamW),
                )
            )
        return groups

    def graph_step(self, groups: list[GraphGroup], grads: list[list[Tensor]]) -> None:
        """The optimizer's step on ``grads`` (per group, in the groups' parameter order), as tensor ops (see :func:`adam_graph_step`)."""
        for group, group_grads in zip(groups, grads, strict=True):
            adam_graph_step(group, group_grads)

    def after_graph_step(self) -> None:
        """What follows a :meth:`graph_step` on the host: one step of the schedule."""
        self.optimizer._opt_called = True  # type: ignore[attr-defined]  # what torch's step() marks for its scheduler
        if self.schedule is not None:
            self.schedule.step()

    def step(self) -> None:
        """One optimizer step, then one step of the schedule."""
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict()}
        return state if self.schedule is None else state | {"schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        set_peak_learning_rate(self.optimizer, self.peak_lr, self.schedule)


class GraphGroup(NamedTuple):
    """One parameter group of an Adam/AdamW optimizer as the tensors a compiled update takes as inputs.

    The tensors are the optimizer's own (its parameters and ``state``), so what a compiled step
    changes is what the optimizer, its ``state_dict`` and an eager step see.
    """

    params: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    steps: list[Tensor]  # 0-dim float32 on the parameters' device (torch's fused layout)
    lr: Tensor  # [] the group's current rate, on the parameters' device
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    decoupled: bool  # AdamW's decay (applied to the parameters) rather than Adam's (added to the gradient)


@torch.no_grad()
def adam_graph_step(group: GraphGroup, grads: list[Tensor]) -> None:
    """One Adam step (Kingma & Ba 2015; AdamW's decoupled decay with ``group.decoupled``) of ``group`` in place.

    The arithmetic of ``torch.optim.Adam``/``AdamW`` without amsgrad, written as plain tensor ops
    with the step count and the learning rate as tensors, so the whole step can sit inside a
    compiled graph or a CUDA graph (torch's own ``step()`` breaks the graph on purpose). It agrees
    with torch's fused kernel to float rounding.
    """
    (beta1, beta2), eps, weight_decay, decoupled = group.betas, group.eps, group.weight_decay, group.decoupled
    for param, grad, exp_avg, exp_avg_sq, step in zip(group.params, grads, group.exp_avgs, group.exp_avg_sqs, group.steps, strict=True):
        step.add_(1.0)
        if weight_decay and decoupled:
            param.mul_(1.0 - group.lr * weight_decay)
        elif weight_decay:
            grad = grad + weight_decay * param
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        bias_correction1 = 1.0 - torch.pow(beta1, step)
        bias_correction2 = 1.0 - torch.pow(beta2, step)
        denom = exp_avg_sq.sqrt() / bias_correction2.sqrt() + eps
        param.sub_(group.lr / bias_correction1 * exp_avg / denom)
