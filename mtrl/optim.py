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
only: see :func:`split_weight_decay` for the rule. :func:`clip_by_global_norm` rescales the balanced
direction and returns the pre-clip norm, without synchronising with the host.
:class:`NetworkOptimizer` keeps a network's optimizer, its learning-rate schedule and its configured
peak rate together, so that they are checkpointed and resumed as one, and steps on gradients given
as tensors (:meth:`NetworkOptimizer.apply`), the same call whether the update runs eagerly or
compiled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lion_pytorch import Lion
from torch.optim.adam import adam
from torch import Tensor, nn

from mtrl.checks import check_choice, check_non_negative, check_positive
from mtrl.schedules import LearningRateSchedule, ScheduleConfig, build_scheduler

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
    fused implementation where the parameters allow it (CPU or CUDA floating point: one kernel per
    step instead of a dozen small ones per parameter) and hold their rate as one 0-dim float32
    tensor on the parameters' device, shared by the groups: a schedule fills it in place, so a
    compiled update that reads it is not recompiled when the rate changes. Lion's rate is a float.
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
    if config.name in ("adam", "adamw"):
        lr = torch.tensor(config.lr, dtype=torch.float32, device=pairs[0][1].device)
        for group in groups:
            group["lr"] = lr  # one tensor for every group: a group's own default would be a copy
        adam = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
        return adam(groups, lr=lr, betas=betas, eps=config.eps, fused=fused)
    if config.name == "lion":
        return Lion(groups, lr=config.lr, betas=betas)
    raise ValueError(f"optimizer.name must be one of {', '.join(map(repr, OPTIMIZERS))}, got {config.name!r}")


def clip_by_global_norm(grads: list[Tensor], max_norm: float | None) -> tuple[list[Tensor], Tensor]:
    """``(grads scaled to a global L2 norm of at most max_norm, the norm before)``, as tensor ops only.

    torch's scale ``min(1, max_norm / (norm + 1e-6))``, applied unconditionally; ``max_norm`` 0 or
    ``None`` returns the gradients as they are. The same as ``torch.nn.utils.clip_grad_norm_``, on
    gradients given as tensors rather than in ``.grad``.
    """
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))  # []
    if not max_norm:
        return grads, norm
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    return [g * scale for g in grads], norm


class NetworkOptimizer:
    """One network's optimizer, its learning-rate schedule (or none) and the peak rate its config asks for.

    :meth:`apply` steps on gradients given as tensors, one per parameter of :attr:`params` (the
    optimizer's parameters, group after group), and :meth:`step_schedule` moves the schedule on,
    on the host, after the update. Run eagerly, :meth:`apply` puts the gradients in ``.grad`` and
    calls the optimizer's own ``step()`` (Adam's and AdamW's fused kernel). Traced by
    ``torch.compile`` (a whole update compiled as one function), it calls torch's functional Adam
    (``torch.optim.adam.adam``, the multi-tensor algorithm with ``capturable=True``) on the
    optimizer's own state and settings: torch's ``step()`` breaks the graph on purpose and its fused
    kernel is opaque to the compiler. Both are torch's Adam and agree to float rounding; the state
    they update is the same, so a run may change paths on resume. The state is created at
    construction, in the fused layout, so that the first traced step finds it. (torch's capturable
    single-tensor algorithm divides by the rate: a warm-up's first rate of 0 gives 0/0 where a
    gradient entry has always been 0; the multi-tensor one does not.)

    Checkpointed as a whole: ``state_dict()`` is ``{"optimizer": ..., "schedule": ...}`` (no
    ``schedule`` without one), and :meth:`load_state_dict` restores both, then makes
    :attr:`peak_lr` the peak rate again (a resumed run may have been given a new rate; an unchanged
    one leaves the rates exactly as they were).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, schedule: LearningRateSchedule | None = None) -> None:
        self.optimizer, self.peak_lr, self.schedule = optimizer, check_positive("peak_lr", peak_lr), schedule
        self.params: list[Tensor] = [param for group in optimizer.param_groups for param in group["params"]]
        self._lr = optimizer.param_groups[0]["lr"]  # Adam's shared rate tensor (a float for Lion)
        if self.compilable:
            self._create_state()

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
        return cls(optimizer, config.lr, None if schedule is None else build_scheduler(optimizer, schedule, total_updates, config.lr))

    @property
    def compilable(self) -> bool:
        """Whether :meth:`apply` can be traced into a compiled update (Adam and AdamW; not Lion)."""
        return type(self.optimizer) in (torch.optim.Adam, torch.optim.AdamW)

    @property
    def learning_rate(self) -> float:
        """The rate of the next step."""
        return self.schedule.rate if self.schedule is not None else float(self.optimizer.param_groups[0]["lr"])

    def apply(self, grads: Sequence[Tensor]) -> None:
        """One optimizer step on ``grads`` (one per parameter of :attr:`params`, same shapes), without the schedule."""
        if len(grads) != len(self.params):
            raise ValueError(f"apply needs one gradient per parameter ({len(self.params)}), got {len(grads)}")
        if torch.compiler.is_compiling():
            self._traced_adam_step(grads)
            return
        for param, grad in zip(self.params, grads):
            param.grad = grad
        self.optimizer.step()

    def step_schedule(self) -> None:
        """After an update's :meth:`apply`: one step of the schedule (none without one)."""
        if self.schedule is not None:
            self.schedule.step()

    def _create_state(self) -> None:
        """Adam's state of every parameter as torch's fused step creates it (``step`` a 0-dim float32 on the device)."""
        for param in self.params:
            state = self.optimizer.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    @torch.no_grad()
    def _traced_adam_step(self, grads: Sequence[Tensor]) -> None:
        if not self.compilable:
            raise ValueError(f"a compiled update needs Adam or AdamW, got {type(self.optimizer).__name__}")
        start = 0
        for group in self.optimizer.param_groups:
            params = group["params"]
            group_grads, start = list(grads[start : start + len(params)]), start + len(params)  # self.params is group after group
            states = [self.optimizer.state[param] for param in params]
            adam(
                params,
                group_grads,
                [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states],
                [],
                [state["step"] for state in states],
                foreach=True,
                capturable=True,
                decoupled_weight_decay=group["decoupled_weight_decay"],
                amsgrad=False,
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
            )

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict()}
        return state if self.schedule is None else state | {"schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if isinstance(self._lr, Tensor):
            for group in self.optimizer.param_groups:  # loading replaced the shared rate tensor by the saved value
                group["lr"] = self._lr
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
            self.schedule.set_peak(self.peak_lr)
        elif isinstance(self._lr, Tensor):
            self._lr.fill_(self.peak_lr)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self.peak_lr
