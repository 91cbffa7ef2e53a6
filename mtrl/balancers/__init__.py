"""Gradient balancers: per-task gradients of shared parameters ``[T, D]`` -> one direction ``[D]``.

Every balancer returns weights over the task gradients (``direction = weights @ grads``) on the
mean-gradient scale, computed from the ``[T, T]`` Gramian on the gradients' device (SDMGrad: from the
cross Gramian of two independent batches, ``requires_second_batch``).

:data:`BALANCERS` is the registry (name -> class, :mod:`mtrl.balancers.registry`): the built-in
methods listed here, then those registered with :func:`register`, TorchJD's aggregators when
torchjd is installed (:mod:`mtrl.balancers.torchjd`) and the plugins of installed packages (entry
points of the ``mtrl.balancers`` group), loaded when this package is imported. Each class
declares what it takes (its ``Options`` and ``run_inputs``, :mod:`mtrl.balancers.options`), and
everything else is read from there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mtrl.balancers.aligned_mtl import AlignedMTL
from mtrl.balancers.base import RUN_INPUTS, Balancer, SolverBalancer
from mtrl.balancers.cagrad import CAGrad
from mtrl.balancers.cagrad_fast import CAGradFast
from mtrl.balancers.dbmtl import DBMTL
from mtrl.balancers.dualproj import DualProj
from mtrl.balancers.dwa import DWA
from mtrl.balancers.fairgrad import FairGrad
from mtrl.balancers.famo import FAMO
from mtrl.balancers.gradnorm import GradNorm
from mtrl.balancers.gradvac import GradVac
from mtrl.balancers.imtl_g import IMTLG
from mtrl.balancers.mean import Mean
from mtrl.balancers.mgda import MGDA
from mtrl.balancers.nashmtl import NashMTL
from mtrl.balancers.options import BalancerOptions, SolverOptions, run_option_names
from mtrl.balancers.pcgrad import PCGrad
from mtrl.balancers.registry import (
    BALANCERS,
    BUILTIN_BALANCERS,
    PLUGIN_FAILURES,
    PLUGIN_GROUP,
    PLUGIN_SOURCES,
    BalancerPluginError,
    load_plugins,
    register,
)
from mtrl.balancers.rlw import RLW
from mtrl.balancers.sdmgrad import SDMGrad
from mtrl.balancers.torchjd import HostSyncWarning, register_torchjd, torchjd_balancer
from mtrl.balancers.upgrad import UPGrad
from mtrl.balancers.uw import UncertaintyWeighting

BUILTIN_BALANCERS.update(
    {
        "mean": Mean,
        "cagrad": CAGrad,
        "cagrad_fast": CAGradFast,
        "pcgrad": PCGrad,
        "mgda": MGDA,
        "nashmtl": NashMTL,
        "famo": FAMO,
        "gradnorm": GradNorm,
        "upgrad": UPGrad,
        "dualproj": DualProj,
        "imtl_g": IMTLG,
        "aligned_mtl": AlignedMTL,
        "fairgrad": FairGrad,
        "gradvac": GradVac,
        "uw": UncertaintyWeighting,
        "dwa": DWA,
        "rlw": RLW,
        "dbmtl": DBMTL,
        "sdmgrad": SDMGrad,
    }
)
BALANCERS.update(BUILTIN_BALANCERS)


def balancer_class(name: str) -> type[Balancer]:
    """The balancer registered as ``name``; a ValueError lists the registered names otherwise (or
    says why the plugin of that name could not be loaded)."""
    if name in PLUGIN_FAILURES:
        raise ValueError(PLUGIN_FAILURES[name])
    if name not in BALANCERS:
        raise ValueError(f"unknown balancer {name!r}; valid names: {', '.join(BALANCERS)}")
    return BALANCERS[name]


def balancer_takes(name: str) -> tuple[str, ...]:
    """What a run configures the balancer ``name`` with: its run options, then the run-level inputs it takes.

    ``("c", "rescale", "compile_solver")`` for CAGrad; an option of another balancer (or one fixed
    in runs, such as ``max_iter``) is not among them.
    """
    cls = balancer_class(name)
    return run_option_names(cls.Options) + cls.run_inputs


def make_balancer(name: str, num_tasks: int, *, seed: int = 0, compile_solver: bool = False, **options: Any) -> Balancer:
    """Build the balancer registered as ``name`` for ``num_tasks`` tasks, with ``options`` by name.

    ``options`` are fields of the balancer's ``Options`` (the others keep their defaults); another
    name raises a ValueError that lists what the balancer accepts. ``seed`` and ``compile_solver``
    are passed only to the balancers that take them (``run_inputs``) and dropped for the others, so
    one call site can always pass them.
    """
    cls = balancer_class(name)
    accepted = tuple(f.name for f in dataclasses.fields(cls.Options))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"balancer {name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted + cls.run_inputs) or 'none'}"
        )
    run_inputs = {"seed": seed, "compile_solver": compile_solver}
    return cls(num_tasks, cls.Options(**options), **{key: run_inputs[key] for key in cls.run_inputs})


register_torchjd(register)
load_plugins()

__all__ = [
    "AlignedMTL",
    "BALANCERS",
    "BUILTIN_BALANCERS",
    "PLUGIN_FAILURES",
    "PLUGIN_GROUP",
    "PLUGIN_SOURCES",
    "BalancerPluginError",
    "HostSyncWarning",
    "RUN_INPUTS",
    "Balancer",
    "BalancerOptions",
    "CAGrad",
    "CAGradFast",
    "DualProj",
    "DBMTL",
    "DWA",
    "FAMO",
    "FairGrad",
    "GradNorm",
    "IMTLG",
    "GradVac",
    "MGDA",
    "Mean",
    "NashMTL",
    "PCGrad",
    "UPGrad",
    "RLW",
    "SDMGrad",
    "SolverBalancer",
    "SolverOptions",
    "UncertaintyWeighting",
    "balancer_class",
    "balancer_takes",
    "load_plugins",
    "make_balancer",
    "register",
    "torchjd_balancer",
]
