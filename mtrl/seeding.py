"""Every seed of a run, derived from the config's one seed by a single ``numpy.random.SeedSequence`` spawn.

Each component that draws random numbers gets its own child of ``SeedSequence(seed)``, so their
streams are independent (no ``seed + 101`` offsets that can collide across runs) and a component's
seed never depends on which other components exist. The names are spawned in the fixed order of
:data:`COMPONENTS`; a new component is appended at the end, so the others keep their seeds.

The one exception is the environments: they take the config's seed itself, as Meta-World v3's
entry points do (``gymnasium.make_vec("Meta-World/MT10", seed=seed)``), so that a run's goals and
its evaluation are Meta-World's own for that seed (training and evaluation share the goals).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMPONENTS = (
    "global",  # Python's, NumPy's and torch's global generators (network initialisation)
    "agent",  # the agent's own generator (policy noise, minibatch permutations)
    "balancer/critic",
    "balancer/actor",
    "replay",  # SAC: the replay sampler
    "warmup",  # SAC: the uniformly random actions of the warm-up
)


@dataclass(frozen=True)
class RunSeeds:
    """The seed of every component of a run (each an integer in ``[0, 2**32)``)."""

    seed: int
    children: dict[str, int]

    @classmethod
    def from_seed(cls, seed: int) -> RunSeeds:
        spawned = np.random.SeedSequence(seed).spawn(len(COMPONENTS))
        return cls(seed, {name: int(child.generate_state(1)[0]) for name, child in zip(COMPONENTS, spawned)})

    @property
    def envs(self) -> int:
        """The environments' seed: the config's seed itself (see the module docstring)."""
        return self.seed

    def __getitem__(self, component: str) -> int:
        if component not in self.children:
            raise KeyError(f"no seed for {component!r}; the components are: {', '.join(COMPONENTS)}")
        return self.children[component]

    def balancer(self, network: str) -> int:
        """The seed of the balancer of ``network`` (``"critic"``, ``"actor"``)."""
        return self[f"balancer/{network}"]
