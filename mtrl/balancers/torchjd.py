"""TorchJD's aggregators as balancers (``--balancer.name torchjd.UPGrad``), when torchjd is installed.

TorchJD (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization";
https://github.com/TorchJD/torchjd) is the maintained library of Jacobian aggregators. An
aggregator maps the Jacobian ``[T, D]`` to a direction ``[D]``; most are a weighting of the
Gramian (``GramianWeightedAggregator``), which fits mtrl's balancer interface exactly: such an
adapter returns ``aggregator.gramian_weighting(gram)`` as its weights, so the per-task gradients
are never concatenated. The others (ConFIG, GradDrop, ...) receive the concatenated ``[T, D]``
matrix through ``combine``; the weights they log are those of the direction's projection on the
task gradients (least squares), as they have none of their own.

Deviations and limits, stated here once:

- The weights are on TorchJD's scale, not rescaled to mtrl's mean-gradient scale (TorchJD's
  ``Mean`` gives ``1/T`` each, as mtrl's; its ``Sum`` gives 1 each, ``T`` times the mean gradient).
- :func:`register_torchjd` registers the aggregators that take no constructor argument (or only
  the number of tasks); one with required settings (TorchJD's CAGrad, FairGrad, Krum, TrimmedMean,
  Constant) is built with :func:`torchjd_balancer` and registered under a name of the user's
  choice (``register("torchjd.CAGrad-0.5", torchjd_balancer(CAGrad, c=0.5))``).
- Several aggregators solve their problem on the host (numpy, quadprog or cvxpy) and synchronise
  with the device every step. :func:`synchronises_with_host` finds out by running the aggregator
  once on the ``meta`` device (where reading a value fails); such a balancer warns in one line when
  it is built.
- State is what the aggregator keeps in its module buffers (GradVac's targets, ExcessMTL's
  statistics): it is in the balancer's ``state_dict``. Randomness (TorchJD's ``Random``, GradDrop)
  comes from torch's global generator, which the trainer seeds and checkpoints.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions

PREFIX = "torchjd."
"""Registered names are ``torchjd.<aggregator class name>``."""


class HostSyncWarning(UserWarning):
    """A balancer that reads device values on the host every step (slow on a GPU, and not capturable)."""


def synchronises_with_host(aggregator: Any, gramian: bool) -> bool:
    """Whether ``aggregator`` reads a tensor's values on the host: it fails on the ``meta`` device, which has none.

    Give it an aggregator of its own: a stateful one keeps state made from the probe.
    """
    probe = torch.zeros(3, 5, device="meta")
    try:
        aggregator.gramian_weighting(probe @ probe.T) if gramian else aggregator(probe)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return True
    return False


def torchjd_balancer(aggregator_class: type, **arguments: Any) -> type[Balancer]:
    """A balancer class that runs ``aggregator_class(**arguments)`` (``n_tasks`` is filled in when it takes one)."""
    from torchjd.aggregation import GramianWeightedAggregator

    takes_num_tasks = "n_tasks" in inspect.signature(aggregator_class).parameters
    name = f"{PREFIX}{aggregator_class.__name__}"

    def __init__(self: Balancer, num_tasks: int, options: BalancerOptions | None = None) -> None:
        Balancer.__init__(self, num_tasks, options)
        settings = {**arguments, **({"n_tasks": num_tasks} if takes_num_tasks else {})}
        self.aggregator = aggregator_class(**settings)
        self.gramian_based = isinstance(self.aggregator, GramianWeightedAggregator)
        if synchronises_with_host(aggregator_class(**settings), self.gramian_based):
            warnings.warn(f"balancer {name}: TorchJD's {aggregator_class.__name__} synchronises with the host every step", HostSyncWarning, stacklevel=2)

    def weights(self: Balancer, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return self.aggregator.gramian_weighting(gram)

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "__doc__": f"TorchJD's ``{aggregator_class.__name__}`` aggregator (see :mod:`mtrl.balancers.torchjd`).",
        "__module__": __name__,
        "Options": BalancerOptions,
        "weights": weights,
    }
    if not issubclass(aggregator_class, GramianWeightedAggregator):

        def combine(self: Balancer, grads: Tensor, losses: Tensor | None = None) -> Tensor:
            self._check_inputs(grads, losses)
            direction = self.aggregator(grads)  # [D]
            gram = grads @ grads.T  # [T, T]
            self.record(gram, torch.linalg.pinv(gram) @ (grads @ direction))  # the weights of the direction's projection on the rows
            return direction

        namespace["combine"] = combine
        namespace["weights"] = _no_weights
    return type(aggregator_class.__name__, (Balancer,), namespace)


def _no_weights(self: Balancer, gram: Tensor, losses: Tensor | None = None) -> Tensor:
    raise TypeError(f"TorchJD's {type(self.aggregator).__name__} aggregates the Jacobian itself; it has no weights of the Gramian")


def aggregators_without_settings() -> dict[str, type]:
    """TorchJD's aggregator classes that need no constructor argument but the number of tasks, by
    class name, among those that can be checkpointed and resumed (ExcessMTL cannot: its statistics
    are made at its first call, so a fresh one has nowhere to load them) and are usable with the
    packages installed (TorchJD's NashMTL needs its ``nash_mtl`` extra, cvxpy and ecos)."""
    import torchjd.aggregation as aggregation

    found = {}
    for class_name, cls in vars(aggregation).items():
        if not (inspect.isclass(cls) and issubclass(cls, aggregation.Aggregator)) or inspect.isabstract(cls):
            continue
        parameters = inspect.signature(cls).parameters
        required = [p.name for p in parameters.values() if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if set(required) <= {"n_tasks"} and _usable(cls, {"n_tasks": 2} if "n_tasks" in parameters else {}):
            found[class_name] = cls
    return found


def _usable(cls: type, arguments: dict[str, Any]) -> bool:
    """Whether ``cls(**arguments)`` can be built (NashMTL needs torchjd's ``nash_mtl`` extra), moved to a
    device, and its state after a call loaded into a fresh one (a checkpoint resumed)."""
    try:
        used = cls(**arguments).to("cpu")
        used(torch.eye(2, 3))
        cls(**arguments).to("cpu").load_state_dict(used.state_dict())
    except Exception:
        return False
    return True


def register_torchjd(register: Any) -> list[str]:
    """Register :func:`aggregators_without_settings` with ``register`` (the registry's), if torchjd is installed; their names."""
    try:
        import torchjd.aggregation  # noqa: F401
    except ImportError:
        return []
    names = []
    for class_name, cls in sorted(aggregators_without_settings().items()):
        names.append(f"{PREFIX}{class_name}")
        register(names[-1], torchjd_balancer(cls), source=f"TorchJD {_version()}")
    return names


def _version() -> str:
    from importlib.metadata import version

    return version("torchjd")
