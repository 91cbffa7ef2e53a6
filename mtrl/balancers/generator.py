"""A checkpointed ``torch.Generator`` for balancers that draw random numbers (PCGrad, CAGrad-Fast)."""

from __future__ import annotations

from typing import Any

import torch


def check_seed(seed: int) -> int:
    """Return ``seed`` if it is an int in ``[0, 2**63)``, else raise a ValueError naming it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return seed


class GeneratorMixin:
    """Owns one ``torch.Generator`` on the device the balancer is called with, seeded from ``seed``.

    The generator is created on first use on the inputs' device, so ``.to(device)`` needs no special
    care. Its state is part of ``state_dict()`` (through ``get_extra_state``), so loading a state dict
    saved mid-run continues the same random sequence. A saved state is restored on the same device
    type; on another device type (a CPU checkpoint resumed on CUDA) the sequence restarts from
    ``seed``, because CPU and CUDA generators have different states. If the balancer is called on a
    new device after it has drawn numbers, the new generator is seeded from the old one, so the run
    stays deterministic. A balancer with this mixin takes ``seed`` as a run-level input (lists it in
    its ``run_inputs``) and calls :meth:`_init_generator` from its constructor.
    """

    def _init_generator(self, seed: int) -> None:
        self.seed = check_seed(seed)
        self._generator: torch.Generator | None = None
        self._saved_generator: tuple[str, torch.Tensor] | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        """The balancer's generator on ``device`` (created, restored or re-seeded when needed)."""
        device = torch.device(device)
        current = self._generator
        if current is not None and current.device == device:
            return current
        fresh = torch.Generator(device=device)
        if self._saved_generator is not None and self._saved_generator[0] == device.type:
            fresh.set_state(self._saved_generator[1])
        elif current is not None:
            fresh.manual_seed(int(torch.randint(0, 2**62, (1,), generator=current, device=current.device)))
        else:
            fresh.manual_seed(self.seed)
        self._generator, self._saved_generator = fresh, None
        return fresh

    def get_extra_state(self) -> dict[str, Any]:
        if self._generator is not None:
            return {"seed": self.seed, "device_type": self._generator.device.type, "state": self._generator.get_state()}
        if self._saved_generator is not None:
            return {"seed": self.seed, "device_type": self._saved_generator[0], "state": self._saved_generator[1]}
        return {"seed": self.seed, "device_type": None, "state": None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = check_seed(state["seed"])
        self._generator = None
        saved = state.get("state")
        self._saved_generator = None if saved is None else (state["device_type"], saved.cpu())
