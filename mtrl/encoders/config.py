"""The encoder section of an agent's config: which network the actor and the critics are, and its options.

One :class:`EncoderConfig` per agent (``sac.encoder``, ``ppo.encoder``) chooses the network of every
actor and critic: ``mlp`` (the shared MLP trunk, the default, unchanged), ``moore``, ``softmod`` or
``paco`` (:mod:`mtrl.encoders`), and how each network learns which task it serves
(``task_conditioning``). Each encoder's own options are fields that stay ``None`` until given; a
value given for an encoder that does not take it is refused in one line naming the field, so a
config never carries a setting that is silently unused. Unset options take the encoder's default
(:data:`ENCODER_DEFAULTS`, the papers' MT10 values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

from mtrl.checks import check_choice, check_positive_int

EncoderName = Literal["mlp", "moore", "softmod", "paco"]
ENCODERS: tuple[str, ...] = ("mlp", "moore", "softmod", "paco")
TaskConditioning = Literal["onehot", "embedding"]
TASK_CONDITIONINGS: tuple[str, ...] = ("onehot", "embedding")

ENCODER_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": (),
    "moore": ("num_experts",),
    "softmod": ("num_modules", "module_layers", "module_width"),
    "paco": ("num_parameter_sets",),
}
"""The options each encoder takes (besides ``task_embedding_dim``, taken with embedding conditioning)."""

ENCODER_DEFAULTS: dict[str, int] = {
    "num_experts": 4,  # MOORE on MT10 (6 on MT50): Hendawy et al. 2024
    "num_modules": 2,  # Soft Modularization on MT10 (4 on MT50): Yang et al. 2020
    "module_layers": 2,  # Soft Modularization on MT10 (4 on MT50)
    "module_width": 256,  # Soft Modularization's module width in Meta-World+
    "num_parameter_sets": 5,  # PaCo's K on MT10 (Meta-World+'s setting)
    "task_embedding_dim": 32,
}
"""The value an option takes when it is not given."""


@dataclass(frozen=True)
class EncoderConfig:
    """The network of the actor and of the critics, and how it is told the task.

    Options of one encoder (e.g. ``num_experts``) may only be given with that encoder; unset ones
    take :data:`ENCODER_DEFAULTS`. :meth:`option` reads an option's value.
    """

    name: EncoderName = "mlp"
    """Network of the actor and of each critic: mlp (a shared MLP trunk) | moore (mixture of orthogonal
    experts, Hendawy et al. 2024) | softmod (soft modularization, Yang et al. 2020) | paco (parameter
    composition, Sun et al. 2022). Each ends with the (per-task) output layer."""
    task_conditioning: TaskConditioning = "onehot"
    """How a network knows its task: onehot (the one-hot task id: read from the observation by the mlp, a
    per-task vector equal to a linear map of the one-hot elsewhere) | embedding (a learned embedding per
    task, of task_embedding_dim entries, in place of the one-hot)."""
    task_embedding_dim: int | None = None
    """Entries of the learned task embedding (task_conditioning embedding only; default 32)."""
    num_experts: int | None = None
    """moore: shared experts k, at most the last hidden width (default 4: the paper's MT10; 6 on MT50)."""
    num_modules: int | None = None
    """softmod: modules per layer (default 2: the paper's MT10; 4 on MT50)."""
    module_layers: int | None = None
    """softmod: layers of modules (default 2: the paper's MT10; 4 on MT50)."""
    module_width: int | None = None
    """softmod: outputs of every module (default 256)."""
    num_parameter_sets: int | None = None
    """paco: parameter sets K that each task's parameters are composed from (default 5)."""

    def __post_init__(self) -> None:
        check_choice("encoder.name", self.name, ENCODERS)
        check_choice("encoder.task_conditioning", self.task_conditioning, TASK_CONDITIONINGS)
        for option in OPTION_FIELDS:
            value = getattr(self, option)
            if value is None:
                continue
            if option == "task_embedding_dim" and self.task_conditioning != "embedding":
                raise ValueError(f"encoder.task_embedding_dim is only taken with encoder.task_conditioning embedding, not {self.task_conditioning!r}")
            if option not in self.accepted_options():
                takers = " or ".join(repr(name) for name, options in ENCODER_OPTIONS.items() if option in options)
                raise ValueError(
                    f"encoder.{option} is not an option of {self.describe()} (it takes: {self._accepted_text()}); "
                    f"encoder {takers} takes it"
                )
            check_positive_int(f"encoder.{option}", value)

    def accepted_options(self) -> tuple[str, ...]:
        """The option fields this encoder, with this task conditioning, takes."""
        embedding = ("task_embedding_dim",) if self.task_conditioning == "embedding" else ()
        return ENCODER_OPTIONS[self.name] + embedding

    def option(self, name: str) -> int:
        """The value of option ``name``: the given one, or its default."""
        if name not in self.accepted_options():
            raise KeyError(f"{self.describe()} has no option {name!r}")
        value = getattr(self, name)
        return ENCODER_DEFAULTS[name] if value is None else value

    @property
    def reads_one_hot(self) -> bool:
        """Whether the network reads the one-hot task id from its input (the mlp with one-hot conditioning).

        Every other network takes the task from per-task parameters, and is given the observation
        without the one-hot (see :func:`mtrl.encoders.observation_width`).
        """
        return self.name == "mlp" and self.task_conditioning == "onehot"

    def check_hidden_dims(self, hidden_dims: Sequence[int], section: str) -> None:
        """What the options need of the hidden sizes ``hidden_dims`` (the field ``{section}.hidden_dims``)."""
        if self.name == "moore" and self.option("num_experts") > hidden_dims[-1]:
            raise ValueError(
                f"{section}.encoder.num_experts must be <= the last of {section}.hidden_dims ({hidden_dims[-1]}): "
                f"Gram-Schmidt makes at most that many orthonormal expert outputs; got {self.option('num_experts')}"
            )

    def describe(self) -> str:
        return f"encoder {self.name!r}" + (" with task_conditioning embedding" if self.task_conditioning == "embedding" else "")

    def _accepted_text(self) -> str:
        accepted = self.accepted_options()
        return ", ".join(f"encoder.{option}" for option in accepted) if accepted else "none"


OPTION_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(EncoderConfig) if f.name not in ("name", "task_conditioning"))
"""The encoder option fields (each taken by some encoders only)."""
