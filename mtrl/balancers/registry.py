"""The balancer registry: the built-in methods, methods registered by code, and installed plugins.

:data:`BALANCERS` maps a name (``--balancer.name``) to a balancer class. The built-in methods are in
:data:`BUILTIN_BALANCERS`; :func:`register` adds one from any code, and :func:`load_plugins` adds
those that installed packages declare in the :data:`PLUGIN_GROUP` entry-point group::

    # the plugin package's pyproject.toml
    [project.entry-points."mtrl.balancers"]
    their_method = "their_package.balancer:TheirBalancer"

Everything that reads the registry (the command lines, the sweep grid, the reports) then sees the
method with its options, as it sees a built-in one. A registered class is checked like a built-in
one (its ``Options`` declaration, its run inputs, its option names against those already
registered) and wrapped so that what it returns is checked at every call: one that raises, or
returns something other than a tensor of the expected shape on the input's device, is stopped with
a :class:`BalancerPluginError` naming it. Non-finite weights from finite inputs are flagged on the
device (the diagnostic ``nonfinite_weights``, sticky); a run that stops on non-finite values reads
the flag and names the balancer when it is set: checking the weights at the call would synchronise
with the device. A
plugin that fails to load is left out and its error kept in :data:`PLUGIN_FAILURES`, so that a
broken package stops only the runs that ask for its method.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import Tensor

from mtrl.balancers.base import RUN_INPUTS, Balancer
from mtrl.balancers.options import BalancerOptions, run_options

PLUGIN_GROUP = "mtrl.balancers"
"""The entry-point group a package declares its balancers in (name -> ``module:Class``)."""

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""What a balancer's name may be: letters, digits, ``_``, ``.`` and ``-`` (it names run directories)."""

BUILTIN_BALANCERS: dict[str, type[Balancer]] = {}
"""The methods that come with mtrl, filled by :mod:`mtrl.balancers`."""

BALANCERS: dict[str, type[Balancer]] = {}
"""Every usable balancer by name: the built-in ones, then the registered and plugin ones."""

PLUGIN_SOURCES: dict[str, str] = {}
"""Where each registered (not built-in) balancer comes from: its package, or its module."""

PLUGIN_FAILURES: dict[str, str] = {}
"""Plugin name -> the one line saying why it could not be loaded or registered."""


class BalancerPluginError(RuntimeError):
    """A registered balancer raised, or returned something a balancer may not return."""


def register(name: str, cls: type[Balancer] | None = None, *, source: str | None = None) -> Any:
    """Register balancer class ``cls`` as ``name``; without ``cls``, a class decorator that does so.

    ``source`` says where it comes from in error messages (default: the class's module). A
    ValueError or TypeError names what is wrong: a name in use or not of :data:`NAME`'s form, a class
    that is not a :class:`~mtrl.balancers.base.Balancer` with a frozen ``Options`` dataclass and known
    ``run_inputs``, or an option name that another balancer declares with another type or default
    (a run's config holds one value per option name). The registry is left unchanged on an error.
    """
    if cls is None:
        return lambda decorated: register(name, decorated, source=source) and decorated
    check_balancer_class(name, cls)
    if name in BALANCERS:
        raise ValueError(f"balancer name {name!r} is taken by {BALANCERS[name].__module__}.{BALANCERS[name].__qualname__}")
    run_options({**BALANCERS, name: cls})  # a TypeError names an option that clashes
    origin = source or cls.__module__
    BALANCERS[name] = checked_class(name, cls, origin)
    PLUGIN_SOURCES[name] = origin
    return BALANCERS[name]


def check_balancer_class(name: str, cls: Any) -> None:
    """A one-line error unless ``cls`` can be registered as ``name`` (see :func:`register`)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"balancer name must be letters, digits, '_', '.' or '-' (starting with a letter or digit), got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Balancer)):
        raise TypeError(f"balancer {name!r} must be a subclass of mtrl.balancers.Balancer, got {cls!r}")
    options = cls.Options
    if not (dataclasses.is_dataclass(options) and issubclass(options, BalancerOptions) and options.__dataclass_params__.frozen):
        raise TypeError(f"balancer {name!r}: its Options must be a frozen dataclass subclassing mtrl.balancers.BalancerOptions")
    unknown = set(cls.run_inputs) - set(RUN_INPUTS)
    if unknown:
        raise TypeError(f"balancer {name!r}: unknown run inputs {sorted(unknown)}; a balancer may take {', '.join(RUN_INPUTS)}")


def checked_class(name: str, cls: type[Balancer], source: str) -> type[Balancer]:
    """A subclass of ``cls`` whose ``weights`` (and ``combine``, where ``cls`` overrides it) check what they return.

    Shapes, dtypes and devices are known without reading a tensor, so the checks cost no
    synchronisation. A whole update compiled as one function is not chosen by ``auto`` for it
    (``compiles_whole_update``): that is for the methods measured here.
    """
    where = f"balancer {name!r} ({source})"

    @functools.wraps(cls.__init__)
    def __init__(self: Balancer, *args: Any, **kwargs: Any) -> None:
        _call(where, lambda: cls.__init__(self, *args, **kwargs))
        self.register_buffer("nonfinite_weights", torch.zeros((), dtype=torch.bool))

    def flag(self: Balancer, inputs: tuple[Tensor | None, ...], result: Tensor) -> None:
        finite_inputs = torch.stack([x.isfinite().all() for x in inputs if x is not None]).all()
        self.nonfinite_weights |= finite_inputs & ~result.isfinite().all()

    def weights(self: Balancer, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        reference = gram if gram is not None else losses
        result = _call(where, lambda: cls.weights(self, gram, losses))
        check_result(where, "weights", result, (self.num_tasks,), reference)
        flag(self, (gram, losses), result)
        return result

    def diagnostics(self: Balancer) -> dict[str, Tensor]:
        return cls.diagnostics(self) | {"nonfinite_weights": self.nonfinite_weights}

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "weights": weights,
        "diagnostics": diagnostics,
        "compiles_whole_update": False,
        "__module__": cls.__module__,
    }
    if cls.combine is not Balancer.combine:

        def combine(self: Balancer, grads: Tensor, losses: Tensor | None = None) -> Tensor:
            result = _call(where, lambda: cls.combine(self, grads, losses))
            check_result(where, "combine", result, tuple(grads.shape[1:]), grads)
            flag(self, (grads, losses), result)
            return result

        namespace["combine"] = combine
    return type(cls.__name__, (cls,), namespace)


def check_result(where: str, method: str, result: Any, shape: tuple[int, ...], reference: Tensor | None) -> None:
    """A :class:`BalancerPluginError` unless ``result`` is a floating tensor of ``shape`` on ``reference``'s device."""
    if not isinstance(result, Tensor):
        raise BalancerPluginError(f"{where}: {method} returned a {type(result).__name__}, not a torch tensor")
    if tuple(result.shape) != shape:
        raise BalancerPluginError(f"{where}: {method} returned shape {tuple(result.shape)}, expected {shape}")
    if not result.is_floating_point():
        raise BalancerPluginError(f"{where}: {method} returned dtype {result.dtype}, expected a floating dtype")
    if reference is not None and result.device != reference.device:
        raise BalancerPluginError(
            f"{where}: {method} returned a tensor on {result.device}, but its inputs are on {reference.device} "
            "(a balancer must stay on the device, without copies to the host)"
        )


def _call(where: str, method: Callable[[], Any]) -> Any:
    try:
        return method()
    except BalancerPluginError:
        raise
    except Exception as error:
        raise BalancerPluginError(f"{where} raised {type(error).__name__}: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def load_plugins() -> None:
    """Register the balancers of every installed package's :data:`PLUGIN_GROUP` entry points, once.

    A plugin that cannot be imported or registered is left out, with its reason in
    :data:`PLUGIN_FAILURES` (a run that asks for it is refused with that line).
    """
    for entry in entry_points(group=PLUGIN_GROUP):
        if entry.name in BALANCERS or entry.name in PLUGIN_FAILURES:
            continue
        package = f"{entry.dist.name} {entry.dist.version}" if entry.dist is not None else entry.value
        try:
            register(entry.name, entry.load(), source=f"plugin of {package}")
        except Exception as error:
            PLUGIN_FAILURES[entry.name] = (
                f"balancer plugin {entry.name!r} ({entry.value}, from {package}) could not be loaded: "
                f"{type(error).__name__}: {_first_line(error)}"
            )
