"""The off-policy loop's settings (``--replay.*``), a section of a SAC run's config beside the agent's (``--sac.*``).

The SAC agent (:mod:`agents.sac`) holds its networks and its update; how the loop feeds it is the
loop's: how long it acts at random before learning, how many updates each vector step pays for,
how many transitions per task an update samples and how many the replay keeps. As
metaworld-algorithms keeps its ``OffPolicyTrainingConfig`` apart from the algorithm's config,
:class:`ReplayLoopConfig` is its own section, ``replay``, of :class:`launch.config.SACTrainConfig`,
read by :mod:`launch.sac_trainer` only.

Runs saved before the section existed hold these fields under ``sac``: :func:`move_loop_fields`
puts them where they are now when such a config is read back (``--resume``, mtrl-eval, mtrl-plot,
mtrl-report). This module imports no torch, so that reading run configs stays cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mtrl.config_io import ConfigDataError, non_finite_floats

SECTION = "replay"
"""The name of the section in a SAC run's config (``--replay.warmup-steps``, ``replay.warmup_steps`` in ``config.json``)."""
FORMER_SECTION = "sac"
"""Where runs saved before the section existed hold its fields."""


@dataclass(frozen=True)
class ReplayLoopConfig:
    """The off-policy loop around the replay: warm-up, updates per vector step, batch and replay sizes."""

    warmup_steps: int = 15_000
    """Environment steps (in total) with uniformly random actions before learning starts."""
    updates_per_step: float = 1.0
    """Gradient updates per vector step (one step of every environment); fractions allowed."""
    batch_size_per_task: int = 128
    """Transitions sampled per task for each update (the batch is [T, B, ...])."""
    buffer_capacity_per_task: int = 100_000
    """Replay capacity in transitions per task."""

    def __post_init__(self) -> None:
        non_finite = non_finite_floats(self)
        if non_finite:
            raise ValueError(f"{SECTION}.{non_finite[0]} must be a finite number, got {getattr(self, non_finite[0])!r}")
        checks = {
            "warmup_steps": (self.warmup_steps >= 0, ">= 0"),
            "updates_per_step": (self.updates_per_step >= 0, ">= 0"),
            "batch_size_per_task": (self.batch_size_per_task > 0, "> 0"),
            "buffer_capacity_per_task": (self.buffer_capacity_per_task > 0, "> 0"),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"{SECTION}.{name} must be {allowed}, got {getattr(self, name)!r}")


LOOP_FIELDS = tuple(f.name for f in dataclasses.fields(ReplayLoopConfig))
"""The fields that runs saved before the ``replay`` section held under ``sac``."""


def move_loop_fields(plain: Any) -> Any:
    """A run's plain config (``config.json``, a checkpoint's ``config``) with the loop fields of the
    former layout moved from ``sac`` to ``replay``; a copy where something moved, else ``plain`` itself.

    Only a SAC run's config changes (``algo`` ``"sac"`` with a ``sac`` mapping holding any of
    :data:`LOOP_FIELDS`). A field given in both places is refused with a :class:`ConfigDataError`
    naming it; anything else that is wrong is left for the config's own reading to name.
    """
    if not isinstance(plain, dict) or plain.get("algo") != "sac" or not isinstance(plain.get(FORMER_SECTION), dict):
        return plain
    former = dict(plain[FORMER_SECTION])
    moved = {name: former.pop(name) for name in LOOP_FIELDS if name in former}
    current = plain.get(SECTION, {})
    if not moved or not isinstance(current, dict):
        return plain
    both = [name for name in moved if name in current]
    if both:
        raise ConfigDataError(
            f"{FORMER_SECTION}.{both[0]}: the field is also given as {SECTION}.{both[0]}; "
            f"a run's config holds it under {SECTION} only"
        )
    return {**plain, FORMER_SECTION: former, SECTION: {**current, **moved}}


def move_loop_setting(setting: str) -> str:
    """A sweep's ``FIELD=VALUE`` (``--set``) or ``FIELD=V1|V2`` (``--vary``) with a loop field of the
    former layout (``sac.warmup-steps=...``, dashes or underscores) named under ``replay``; others unchanged."""
    field, sep, value = setting.partition("=")
    section, dot, name = field.partition(".")
    if section == FORMER_SECTION and dot and name.replace("-", "_") in LOOP_FIELDS:
        return f"{SECTION}.{name}{sep}{value}"
    return setting

