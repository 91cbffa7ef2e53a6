"""Grouping runs: one group per config, seeds aside; a group is named by the fields that differ between groups.

The grouping key is the run's flattened config (``env.max_episode_steps``, ``sac.gamma``, ...)
without the seed and without the fields that do not change results (:data:`IGNORED_FIELDS`, and
the balancer options the named balancer does not take (:func:`mtrl.balancers.balancer_takes`): a run
never passes them, so a ``mean`` run with ``balancer.c 0.9`` is the same experiment as one with ``0.5``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from experiments.runs import Run, SkippedRun
from mtrl.config_io import flatten

IGNORED_FIELDS = frozenset(
    {
        "seed",
        "run_dir",
        "progress",
        "tensorboard",
        "track",
        "wandb_project",
        "wandb_entity",
        "device",
        "torch_threads",
        "keep_checkpoints",
        "env.num_workers",
        "env.worker_timeout_s",
        "balancer.compile_solver",
    }
)
"""Config fields that are not part of a group's identity: the seed, and fields that do not change results."""
IGNORED_SUFFIXES = (".compile_gradients", ".update_graph")
BALANCER_NAME = "balancer.name"


@dataclass(frozen=True)
class Group:
    """The runs of one config, by seed, and what names the group among the others."""

    name: str
    labels: dict[str, Any]
    """The differing fields, by their short name (``balancer``, ``c``), with this group's values."""
    config: dict[str, Any]
    """The grouping key: the flattened config without the ignored fields."""
    runs: list[Run]

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.runs[0].tasks


def _unused_balancer_options(flat: dict[str, Any]) -> set[str]:
    """The ``balancer.*`` fields the named balancer does not take (none for a name mtrl does not know)."""
    name = flat.get(BALANCER_NAME)
    if not isinstance(name, str):
        return set()
    from mtrl.balancers import balancer_takes  # imports torch: only when there is a balancer to ask about

    try:
        accepted = balancer_takes(name)
    except ValueError:
        return set()
    prefix = BALANCER_NAME.split(".")[0] + "."
    return {k for k in flat if k.startswith(prefix) and k != BALANCER_NAME and k[len(prefix) :] not in accepted}


def result_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config without the seed and the fields that do not change results."""
    flat = flatten(config)
    unused = _unused_balancer_options(flat)
    dropped = unused | IGNORED_FIELDS
    return {k: v for k, v in flat.items() if k not in dropped and not k.endswith(IGNORED_SUFFIXES)}


def _key(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, default=str)


def _value(value: Any) -> str:
    return json.dumps(value, default=str)


def naming_fields(configs: list[dict[str, Any]]) -> list[str]:
    """The fields whose values differ between ``configs``, ``balancer.name`` first, then in config order.

    A field only some configs have (``sac.*`` beside ``ppo.*``) counts only if it takes two values
    among those that have it, unless the configs cannot be told apart otherwise.
    """
    keys = list(dict.fromkeys(k for config in configs for k in config))
    differing = [k for k in keys if len({_value(c[k]) for c in configs if k in c}) > 1]
    if len({_key({k: c.get(k) for k in differing}) for c in configs}) < len(configs):
        differing += [k for k in keys if k not in differing and any(k not in c for c in configs)]
    return sorted(differing, key=lambda k: (k != BALANCER_NAME, keys.index(k)))


def short_names(fields: list[str]) -> dict[str, str]:
    """Each dotted field's shortest trailing part that no other field in ``fields`` ends with.

    ``balancer.name`` is shown as ``balancer``.
    """
    names = {}
    for field in fields:
        if field == BALANCER_NAME:
            names[field] = "balancer"
            continue
        parts = field.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            if not any(other != field and (other == tail or other.endswith("." + tail)) for other in fields):
                break
        names[field] = tail
    return names


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(_format(v) for v in value)
    return str(value)


def group_runs(runs: list[Run]) -> tuple[list[Group], list[SkippedRun]]:
    """The groups of ``runs`` (runs by seed), and the runs that cannot join theirs.

    A run is skipped when its group already has a run of the same seed (a copy of the same
    experiment, which would count twice) or when its tasks differ from those of its group's first run.
    """
    by_key: dict[str, tuple[dict[str, Any], list[Run]]] = {}
    for run in sorted(runs, key=lambda r: (r.seed, str(r.path))):
        fields = result_fields(run.config)
        by_key.setdefault(_key(fields), (fields, []))[1].append(run)
    skipped: list[SkippedRun] = []
    members: list[tuple[dict[str, Any], list[Run]]] = []
    for fields, group in by_key.values():
        kept: list[Run] = []
        for run in group:
            same_seed = next((r for r in kept if r.seed == run.seed), None)
            if same_seed is not None:
                skipped.append(SkippedRun(run.path, f"same config and seed as {same_seed.path}"))
            elif kept and set(run.tasks) != set(kept[0].tasks):
                skipped.append(SkippedRun(run.path, f"its tasks differ from those of {kept[0].path} (same config)"))
            else:
                kept.append(run)
        members.append((fields, kept))
    differing = naming_fields([fields for fields, _ in members])
    short = short_names(differing)
    groups = []
    for fields, kept in members:
        labels = {short[k]: fields[k] for k in differing if k in fields}
        if not labels and BALANCER_NAME in fields:
            labels = {"balancer": fields[BALANCER_NAME]}
        name = " ".join(f"{label}={_format(value)}" for label, value in labels.items()) or "all runs"
        groups.append(Group(name, labels, fields, kept))
    return sorted(groups, key=lambda g: g.name), skipped
