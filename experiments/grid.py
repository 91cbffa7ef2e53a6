"""A sweep's grid: which trials a sweep specification expands to, each an ordinary mtrl-train run.

A trial is a preset plus ``mtrl-train`` overrides: the balancer, the seed, the benchmark and any
field, fixed for every trial (``--set FIELD=VALUE``) or varied over (``--vary FIELD=V1|V2``).
Values are written as on the mtrl-train command line, list items separated by spaces or commas
(``--set sac.hidden-dims=256,256``; a task list such as ``env.benchmark=reach-v3,drawer-close-v3``
is one string and keeps its commas), booleans as ``true`` / ``false``. Balancer options apply to
the balancers that take them (``--vary balancer.c=0.5|0.9`` varies CAGrad's c and leaves PCGrad's
trials alone), so a grid never asks a balancer for an option it does not have.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass
from typing import Any

from launch.config import TrainConfig
from launch.presets import PRESETS
from launch.replay_loop import move_loop_setting
from launch.train import check_config, parse_config
from mtrl.balancers import balancer_class, balancer_takes
from mtrl.config_io import flatten

MAX_TRIALS = 10_000


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs: a preset and the axes of its grid (saved in ``sweep.json``)."""

    preset: str
    balancers: tuple[str, ...] = ()
    """Balancer names (empty: the preset's)."""
    seeds: tuple[int, ...] = (1,)
    benchmarks: tuple[str, ...] = ()
    """Benchmarks or task lists (empty: the preset's)."""
    set: tuple[str, ...] = ()
    """``FIELD=VALUE`` for every trial."""
    vary: tuple[str, ...] = ()
    """``FIELD=V1|V2|...``: one grid axis each."""

    def to_plain(self) -> dict[str, Any]:
        return {name: list(value) if isinstance(value, tuple) else value for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> SweepSpec:
        """A spec saved in ``sweep.json``; a loop setting of SAC's former layout is read under ``replay``
        (:func:`launch.replay_loop.move_loop_setting`), so a sweep saved before it moved can continue."""
        spec = cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in data.items()})
        return dataclasses.replace(spec, set=tuple(map(move_loop_setting, spec.set)), vary=tuple(map(move_loop_setting, spec.vary)))


@dataclass(frozen=True)
class Trial:
    """One run of the grid: its name (its run directory under the sweep), mtrl-train arguments and config."""

    name: str
    argv: tuple[str, ...]
    """mtrl-train's arguments: the preset and the overrides (the sweep adds ``--run-dir``)."""
    config: TrainConfig


def parse_seeds(text: list[str]) -> tuple[int, ...]:
    """``["1-3", "7"]`` -> ``(1, 2, 3, 7)``."""
    seeds: list[int] = []
    for item in text:
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if match is None:
            raise ValueError(f"--seeds: {item!r} is not a seed or a range like 1-10")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(f"--seeds: the range {item!r} is empty")
        seeds += range(first, last + 1)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: a seed is given twice in {' '.join(text)}")
    return tuple(seeds)


def _split_assignment(option: str, text: str) -> tuple[str, str]:
    field, sep, value = text.partition("=")
    if not sep or not field.strip():
        raise ValueError(f"{option} {text!r}: expected FIELD=VALUE, e.g. {option} sac.hidden-dims=256,256")
    return field.strip().replace("-", "_"), value.strip()


def _field_tokens(option: str, field: str, value: str, defaults: dict[str, Any]) -> list[str]:
    """The mtrl-train tokens that set ``field`` (dotted, underscores) to ``value``."""
    if field not in defaults:
        close = [name for name in defaults if name.endswith(field.split(".")[-1])][:3]
        hint = f"; did you mean {', '.join(close)}" if close else ""
        raise ValueError(f"{option}: the preset has no field {field!r}{hint}")
    flag = field.replace("_", "-")
    default = defaults[field]
    if isinstance(default, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{option}: {field} is a boolean, give true or false, got {value!r}")
        head, _, last = flag.rpartition(".")
        return [f"--{flag}" if value.lower() == "true" else f"--{head + '.' if head else ''}no-{last}"]
    if isinstance(default, list):
        return [f"--{flag}", *value.replace(",", " ").split()]
    return [f"--{flag}", value]


def _balancer_takes(name: str, field: str) -> bool:
    """Whether a trial of balancer ``name`` sets ``field``: every field but the options of other balancers."""
    return not field.startswith("balancer.") or field == "balancer.name" or field.split(".", 1)[1] in balancer_takes(name)


def _short(field: str) -> str:
    return field.split(".")[-1]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "+", text)


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of ``spec``, each config checked as mtrl-train checks it (a bad value raises ValueError)."""
    if spec.preset not in PRESETS:
        raise ValueError(f"preset {spec.preset!r} is not one of: {', '.join(PRESETS)}")
    if not spec.seeds:
        raise ValueError("--seeds: at least one seed")
    preset = PRESETS[spec.preset][1]
    defaults = flatten(preset.to_plain())
    fixed = [_split_assignment("--set", text) for text in spec.set]
    axes: list[tuple[str, list[str]]] = []
    for text in spec.vary:
        field, values = _split_assignment("--vary", text)
        choices = [v.strip() for v in values.split("|") if v.strip()]
        if len(choices) < 1:
            raise ValueError(f"--vary {text!r}: give the values as V1|V2|...")
        axes.append((field, choices))
    named = [field for field, _ in fixed] + [field for field, _ in axes]
    for field in ("balancer.name", "seed", "env.benchmark"):
        if field in named:
            raise ValueError(f"--set/--vary {field}: use --{'balancers' if field == 'balancer.name' else 'seeds' if field == 'seed' else 'benchmarks'}")
    if len(set(named)) != len(named):
        raise ValueError("--set/--vary: a field is given twice")
    balancers = list(spec.balancers) or [preset.balancer.name]
    for name in balancers:
        try:
            balancer_class(name)
        except ValueError as error:  # an unknown name, or a plugin that could not be loaded
            raise ValueError(f"--balancers: {error}") from None
    benchmarks = list(spec.benchmarks) or [preset.env.benchmark]
    for field, value in fixed:
        _field_tokens("--set", field, value, defaults)  # names and booleans checked before expanding
    for field, choices in axes:
        for value in choices:
            _field_tokens("--vary", field, value, defaults)

    trials: dict[tuple[str, ...], Trial] = {}
    combinations = itertools.product(benchmarks, balancers, itertools.product(*[choices for _, choices in axes]), spec.seeds)
    for benchmark, balancer, varied, seed in combinations:
        chosen = [(field, value) for (field, _), value in zip(axes, varied) if _balancer_takes(balancer, field)]
        settings = [(field, value) for field, value in fixed if _balancer_takes(balancer, field)] + chosen
        argv = [spec.preset, "--env.benchmark", benchmark, "--balancer.name", balancer, "--seed", str(seed)]
        for field, value in settings:
            argv += _field_tokens("--set", field, value, defaults)
        parts = ([_safe(benchmark)] if len(benchmarks) > 1 else []) + [balancer]
        parts += [_safe(f"{_short(field)}={value}") for field, value in chosen]
        name = "__".join([*parts, f"seed{seed}"])
        if tuple(argv) in trials:
            continue  # a balancer that does not take a varied option: its trial is there already
        try:
            config = parse_config(argv)
        except SystemExit:  # tyro has printed why
            raise ValueError(f"trial {name}: mtrl-train refuses {' '.join(argv)}") from None
        check_config(config, argv)
        trials[tuple(argv)] = Trial(name, tuple(argv), config)
        if len(trials) > MAX_TRIALS:
            raise ValueError(f"the grid has more than {MAX_TRIALS} trials; sweep fewer values")
    names = [trial.name for trial in trials.values()]
    if len(set(names)) != len(names):
        raise ValueError("two trials would share a run directory name; vary fields whose values differ in their text")
    return list(trials.values())
