"""What ``update_graph auto`` means for a run: the update path chosen where the run is composed.

A whole update compiled as one function runs faster than the step-by-step update with the
balancers that say they compile well (:attr:`mtrl.balancers.Balancer.compiles_well`), but compiling
it takes longer; on the CPU it pays within some thousands of updates, so ``auto`` compiles SAC's
update for runs of at least :data:`AUTO_COMPILED_MIN_UPDATES` updates (docs/benchmarks.md has the
measurements). On CUDA it is off until the CUDA-graph path has been measured on a GPU, and PPO's
is off (its compiled minibatch update has not been measured).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mtrl.balancers import Balancer

AUTO_COMPILED_MIN_UPDATES = 50_000
"""A SAC run of at least this many updates compiles its whole update on the CPU under ``auto``."""


def auto_update_graph(algo: str, device: torch.device, total_updates: int, balancers: Iterable[Balancer]) -> str:
    """``compiled`` for a SAC run on the CPU of at least :data:`AUTO_COMPILED_MIN_UPDATES` updates whose balancers all compile well, else ``off``."""
    long_run = total_updates >= AUTO_COMPILED_MIN_UPDATES
    pays = all(balancer.compiles_well for balancer in balancers)
    return "compiled" if algo == "sac" and device.type == "cpu" and long_run and pays else "off"
