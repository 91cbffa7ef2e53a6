"""Gradient balancers: per-task gradients of shared parameters ``[T, D]`` -> one direction ``[D]``.

Every balancer returns weights over the task gradients (``direction = weights @ grads``) on the
mean-gradient scale, computed from the ``[T, T]`` Gramian on the gradients' device.
"""

from __future__ import annotations

import inspect
from typing import Any

from mtrl.balancers.base import Balancer
from mtrl.balancers.cagrad import CAGrad
from mtrl.balancers.cagrad_fast import CAGradFast
from mtrl.balancers.famo import FAMO
from mtrl.balancers.gradnorm import GradNorm
from mtrl.balancers.mean import Mean
from mtrl.balancers.mgda import MGDA
from mtrl.balancers.nashmtl import NashMTL
from mtrl.balancers.pcgrad import PCGrad

#: Lower-case name -> balancer class.
BALANCERS: dict[str, type[Balancer]] = {
    "mean": Mean,
    "cagrad": CAGrad,
    "cagrad_fast": CAGradFast,
    "pcgrad": PCGrad,
    "mgda": MGDA,
    "nashmtl": NashMTL,
    "famo": FAMO,
    "gradnorm": GradNorm,
}


def balancer_options(name: str) -> tuple[str, ...]:
    """The keyword arguments the balancer registered as ``name`` takes (its constructor's, less ``num_tasks``)."""
    if name not in BALANCERS:
        raise ValueError(f"unknown balancer {name!r}; valid names: {', '.join(BALANCERS)}")
    return tuple(p for p in inspect.signature(BALANCERS[name].__init__).parameters if p not in ("self", "num_tasks"))


def make_balancer(name: str, num_tasks: int, **kwargs: Any) -> Balancer:
    """Build the balancer registered as ``name`` for ``num_tasks`` tasks.

    ``seed`` and ``compile_solver`` are passed only to the balancers that take them (those that draw
    random numbers, and those with an iterative solver) and dropped for the others, so one call site
    can always pass them. Any other keyword must be one the balancer accepts; otherwise a ValueError
    lists the ones it does.
    """
    accepted = balancer_options(name)
    cls = BALANCERS[name]
    if not getattr(cls, "uses_seed", False):
        kwargs.pop("seed", None)
    if "compile_solver" not in accepted:
        kwargs.pop("compile_solver", None)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"balancer {name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )
    return cls(num_tasks, **kwargs)


__all__ = [
    "BALANCERS",
    "Balancer",
    "CAGrad",
    "CAGradFast",
    "FAMO",
    "GradNorm",
    "MGDA",
    "Mean",
    "NashMTL",
    "PCGrad",
    "balancer_options",
    "make_balancer",
]
