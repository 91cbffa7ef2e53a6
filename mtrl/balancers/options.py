"""A balancer's options: the one declaration of what it can be configured with.

Every balancer class declares its hyperparameters once, as a frozen dataclass ``Options`` nested in
the class (:class:`BalancerOptions` for one without any): one field per option, with its type, its
default, its docstring (what it means for this method) and its check in ``__post_init__`` (a
one-line ValueError naming the field). The constructor takes ``num_tasks``, an ``Options`` and the
run-level inputs the class lists in ``run_inputs`` (``seed``, ``compile_solver``). Everything that
asks what a balancer takes reads this declaration: :func:`mtrl.balancers.make_balancer`, the
command line's balancer section (``launch.config.BalancerConfig``, built by :func:`run_options`),
the sweep grid and the grouping of runs in reports.

An option is a *run option* (set on the command line, saved in a run's config) unless it is
declared with :func:`fixed_in_runs`: such a setting (a solver's iteration count, a numerical floor)
keeps its default in every run, and only tests and benchmarks change it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtrl.checks import check_positive_int

if TYPE_CHECKING:
    from mtrl.balancers.base import Balancer

_RUN_OPTION = "run_option"
"""Field metadata key: False for a field declared with :func:`fixed_in_runs`."""


@dataclass(frozen=True, kw_only=True)
class BalancerOptions:
    """No options: the base of every balancer's ``Options``, and the ``Options`` of a balancer without any."""

    def check_num_tasks(self, num_tasks: int) -> None:
        """The checks that need the number of tasks (none here); the balancer's constructor runs them."""

    def _set(self, name: str, value: Any) -> None:
        """Store a checked (normalised) value from ``__post_init__``, despite the dataclass being frozen."""
        object.__setattr__(self, name, value)


@dataclass(frozen=True, kw_only=True)
class SolverOptions(BalancerOptions):
    """The options of a balancer that solves for its weights with a fixed number of iterations.

    A subclass gives ``max_iter`` its default (with :func:`fixed_in_runs`) and its docstring (what an
    iteration is for that method), and calls ``super().__post_init__()`` from its own checks.
    """

    max_iter: int
    """Solver iterations per update (a fixed count: no host synchronisation to test convergence)."""

    def __post_init__(self) -> None:
        self._set("max_iter", check_positive_int("max_iter", self.max_iter))


def fixed_in_runs(default: Any) -> Any:
    """Declare an option that every run keeps at ``default``: not on the command line, not in a run's config."""
    return dataclasses.field(default=default, metadata={_RUN_OPTION: False})


def run_option_names(options: type[BalancerOptions]) -> tuple[str, ...]:
    """The fields of ``options`` that a run sets (all but those declared with :func:`fixed_in_runs`)."""
    return tuple(f.name for f in dataclasses.fields(options) if f.metadata.get(_RUN_OPTION, True))


@functools.cache
def option_docs(options: type[BalancerOptions]) -> dict[str, str]:
    """Each field's docstring (the string under it in the class body, inherited ones included), on one line.

    Empty when the source cannot be read (a class made at run time, a build without sources).
    """
    docs: dict[str, str] = {}
    for klass in reversed(options.__mro__):
        if klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in zip(body, body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


@dataclass(frozen=True)
class RunOption:
    """One run option under its name, across the balancers that declare it (one command-line field)."""

    name: str
    type: Any
    """The declared type (the same for every balancer that declares the option)."""
    default: Any
    """The declared default (the same for every balancer that declares the option)."""
    meanings: dict[str, str]
    """Balancer name -> the option's docstring in that balancer's ``Options`` (what it means there)."""

    def help(self) -> str:
        """``"famo: learning rate of ...; gradnorm: learning rate of ..."``: balancers with the same meaning share one entry."""
        by_meaning: dict[str, list[str]] = {}
        for balancer, meaning in self.meanings.items():
            by_meaning.setdefault(meaning.rstrip("."), []).append(balancer)
        entries = [" / ".join(names) + (f": {_continuing(meaning)}" if meaning else "") for meaning, names in by_meaning.items()]
        return "; ".join(entries) + "."


def run_options(balancers: Mapping[str, type[Balancer]]) -> dict[str, RunOption]:
    """Every run option of ``balancers`` (name -> class) by option name, in order of first declaration.

    Balancers may share an option name with different meanings (``lr`` is FAMO's logit rate and
    GradNorm's weight rate), but not with different types or defaults: a run's config holds one
    value for the name. A TypeError names such a conflict.
    """
    merged: dict[str, RunOption] = {}
    for balancer, cls in balancers.items():
        hints = typing.get_type_hints(cls.Options)
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        docs = option_docs(cls.Options)
        for name in run_option_names(cls.Options):
            hint, default = hints[name], fields[name].default
            known = merged.get(name, RunOption(name, hint, default, {}))
            if (known.type, known.default) != (hint, default):
                first = next(iter(known.meanings))
                raise TypeError(
                    f"balancer option {name!r}: {balancer} declares {hint} = {default!r}, "
                    f"{first} {known.type} = {known.default!r}; one run option needs one type and default"
                )
            merged[name] = dataclasses.replace(known, meanings={**known.meanings, balancer: docs.get(name, "")})
    return merged


def _continuing(sentence: str) -> str:
    """``sentence`` continuing after a colon: its first letter in lower case unless it starts a capitalised word (``FAMO``)."""
    return sentence[:1].lower() + sentence[1:] if sentence[1:2].islower() else sentence
