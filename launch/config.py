"""The training configuration (frozen dataclasses, the single source of truth); the presets are in :mod:`launch.presets`.

One config class per algorithm: :class:`SACTrainConfig` and :class:`PPOTrainConfig` share
:class:`TrainConfig`'s fields and add their own section (``sac``, ``ppo``; SAC's off-policy loop
has one more, ``replay``: :mod:`launch.replay_loop`), so a run's ``config.json`` holds only what the
run uses. A preset's class is its algorithm.

``tyro`` turns these into the command line; every field's docstring is its ``--help`` (the balancer
section's come from the balancers' own declarations: :data:`BalancerConfig`). Step counts are totals of
environment steps over all environments (the global step of the logs) unless the name says
otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import tyro

from agents.ppo import PPOConfig
from agents.sac import SACConfig
from envs import EnvConfig
from launch.replay_loop import ReplayLoopConfig, move_loop_fields
from mtrl.balancers import (
    BALANCERS,
    PLUGIN_FAILURES,
    Balancer,
    balancer_class,
    balancer_takes,
    make_balancer,
)
from mtrl.balancers.options import BalancerOptions, run_option_names, run_options
from mtrl.config_io import (
    ConfigDataError,
    flatten,
    from_plain,
    non_finite_floats,
    to_plain,
)
from mtrl.tracking import WandbTarget

MAX_SEED = 2**31 - 1
"""The largest seed: the environments take the seed itself (Meta-World's entry points), and task lists ``seed + i``."""

BalancerName = Literal[(*BALANCERS, *PLUGIN_FAILURES)]  # type: ignore[valid-type]
"""A registered balancer's name (:data:`mtrl.balancers.BALANCERS`, in its order), or the name of a
plugin that failed to load: the command line takes it, and the run's checks say why it cannot run."""

BALANCER_RUN_OPTIONS = run_options(BALANCERS)
"""Every registered balancer's run options by name (each declared in the balancer's ``Options``)."""


class _BalancerConfigBase:
    """What :class:`BalancerConfig` does; its fields are made from the balancers' declarations."""

    def option_values(self) -> dict[str, Any]:
        """This config's values of the chosen balancer's run options (the other balancers' stay unused)."""
        return {option: getattr(self, option) for option in run_option_names(balancer_class(self.name).Options)}

    def options(self) -> BalancerOptions:
        """The chosen balancer's ``Options`` with this config's values (their checks raise a ValueError naming the option)."""
        return balancer_class(self.name).Options(**self.option_values())

    def build(self, num_tasks: int, seed: int) -> Balancer:
        """A balancer for ``num_tasks`` tasks, given the options its method takes, ``seed`` and ``compile_solver``
        (each where the method takes it)."""
        return make_balancer(self.name, num_tasks, seed=seed, compile_solver=self.compile_solver, **self.option_values())

    def check(self, num_tasks: int, given: list[str]) -> None:
        """A run's checks before it starts: the options ``given`` explicitly (:meth:`check_options_given`),
        then the chosen balancer's option values, for ``num_tasks`` tasks (ValueError naming the option)."""
        self.check_options_given(given)
        self.options().check_num_tasks(num_tasks)

    def check_options_given(self, given: list[str]) -> None:
        """Refuse a balancer option given explicitly (``--balancer.c``) that the chosen method does not take."""
        accepted = balancer_takes(self.name)
        for option in given:
            if option not in accepted:
                takes = ", ".join(f"--balancer.{o.replace('_', '-')}" for o in BALANCER_OPTIONS if o in accepted) or "none"
                raise ValueError(
                    f"--balancer.{option.replace('_', '-')} is not an option of balancer {self.name!r}; it takes: {takes}"
                )


def _balancer_config() -> type:
    """:class:`BalancerConfig`: ``name``, one field per run option of any balancer (its help says what it
    means for each balancer that takes it) and ``compile_solver``, the run-level switch of the solvers."""
    with_solver = " / ".join(name for name, cls in BALANCERS.items() if "compile_solver" in cls.run_inputs)
    fields: list[tuple[str, Any, Any]] = [
        ("name", Annotated[BalancerName, tyro.conf.arg(help=f"Balancing method: {' | '.join(BALANCERS)}.")], field(default="cagrad"))
    ]
    fields += [
        (option.name, Annotated[option.type, tyro.conf.arg(help=option.help())], field(default=option.default))
        for option in BALANCER_RUN_OPTIONS.values()
    ]
    compile_help = (
        f"{with_solver}: run the solver's iterations through torch.compile (some seconds of compiling at "
        "start-up, then faster: docs/benchmarks.md gives the measured figures)."
    )
    fields.append(("compile_solver", Annotated[bool, tyro.conf.arg(help=compile_help)], field(default=True)))
    namespace = {"__module__": __name__, "__doc__": "Which gradient balancer combines the per-task gradients, and its options."}
    return dataclasses.make_dataclass("BalancerConfig", fields, bases=(_BalancerConfigBase,), namespace=namespace, frozen=True)


BalancerConfig = _balancer_config()
"""The run's balancer (``--balancer.name cagrad --balancer.c 0.9``): a flat section with the name and
the options of every balancer, made from their declarations (:mod:`mtrl.balancers.options`), so
``config.json`` keeps one ``balancer`` mapping. A run passes its balancer only the options the
balancer takes; an option given on the command line for another balancer is refused."""

BALANCER_OPTIONS = tuple(f.name for f in dataclasses.fields(BalancerConfig) if f.name != "name")
"""Every option field of :class:`BalancerConfig` (each taken by some balancers only)."""


def balancer_options_given(argv: list[str]) -> list[str]:
    """The :data:`BALANCER_OPTIONS` named on a command line (``--balancer.num-sampled 3``, ``--balancer.no-statistics``).

    tyro does not tell which fields were given rather than defaulted, hence the arguments themselves.
    """
    given = []
    for arg in argv:
        if arg.startswith("--balancer."):
            option = arg[len("--balancer.") :].split("=", 1)[0].replace("-", "_")
            option = option[3:] if option.startswith("no_") and option[3:] in BALANCER_OPTIONS else option
            if option in BALANCER_OPTIONS:
                given.append(option)
    return given


@dataclass(frozen=True)
class TrainConfig:
    """What every training run has, whatever its algorithm: environments, balancer, seed and schedule.

    A run's config is one subclass per algorithm (:class:`SACTrainConfig`, :class:`PPOTrainConfig`),
    which adds the algorithm's own section under its name, ``sac`` or ``ppo`` (and SAC its
    loop's, ``replay``). ``algo`` names the algorithm in run directories and in the saved config.
    """

    algo: ClassVar[str]

    env: EnvConfig = field(default_factory=EnvConfig)
    """The benchmark and its protocol."""
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    """The gradient balancer (one instance for the critic, another for the actor)."""
    seed: int = 1
    """Seeds every source of randomness: environments, networks, replay sampling, balancers."""
    total_steps: int = 20_000_000
    """Environment steps in total over all environments (2M per task on MT10); PPO finishes the rollout it is in."""
    eval_every: int = 500_000
    """Evaluate every this many environment steps (0: only at the end)."""
    eval_episodes: int = 10
    """Evaluation episodes per task during training."""
    final_eval_episodes: int = 50
    """Evaluation episodes per task at the end (50 is Meta-World's protocol)."""
    checkpoint_every: int = 500_000
    """Checkpoint at the first episode boundary (PPO: rollout end) after every this many environment steps (0: never)."""
    keep_checkpoints: int = 3
    """How many checkpoints to keep."""
    log_every: int = 10_000
    """Write losses and charts every this many environment steps (PPO: at the next rollout end)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the networks and the replay live: auto uses CUDA when present."""
    run_dir: Path | None = None
    """Run directory; default runs/<benchmark>__<algo>__<balancer>__<seed>__<time>."""
    torch_threads: int = 0
    """torch intra-op threads on the CPU (0: torch's default)."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    track: bool = False
    """Also log the config and every scalar to a Weights & Biases run named after the run directory
    (needs pip install 'mtrl[track]'; WANDB_MODE=offline keeps it on this machine; docs/tracking.md)."""
    wandb_project: str = "mtrl"
    """W&B project of a tracked run."""
    wandb_entity: str | None = None
    """W&B user or team of a tracked run; None: the logged-in user's default entity."""

    def __post_init__(self) -> None:
        if type(self) is TrainConfig:
            raise TypeError("TrainConfig holds what every run shares; a run's config is SACTrainConfig or PPOTrainConfig")
        non_finite = non_finite_floats(self)
        if non_finite:
            raise ValueError(f"{non_finite[0]} must be a finite number, got {flatten(to_plain(self))[non_finite[0]]!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {self.seed!r}")
        for name in ("total_steps", "eval_episodes", "final_eval_episodes", "keep_checkpoints", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("eval_every", "checkpoint_every", "torch_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def algorithm(self) -> SACConfig | PPOConfig:
        """The algorithm's own section (``self.sac`` or ``self.ppo``)."""
        return getattr(self, self.algo)

    def total_updates(self, num_envs: int) -> int:
        """Gradient updates (of each network) in a run of ``total_steps`` on ``num_envs`` environments:
        where learning-rate schedules end."""
        raise NotImplementedError

    def samples_per_task(self) -> int:
        """Samples of each task in one balanced update (the rows per task its per-task losses read)."""
        raise NotImplementedError

    def to_plain(self) -> dict[str, Any]:
        """The config as plain data (``config.json``, checkpoints), its ``algo`` first."""
        return {"algo": self.algo, **to_plain(self)}

    def wandb_target(self) -> WandbTarget | None:
        """Where the run is tracked on W&B, with this config; None unless ``track``."""
        if not self.track:
            return None
        return WandbTarget(self.wandb_project, self.wandb_entity, self.to_plain())


@dataclass(frozen=True)
class SACTrainConfig(TrainConfig):
    """Multi-task SAC on Meta-World: off-policy, from a replay of every task's transitions."""

    algo: ClassVar[str] = "sac"

    sac: SACConfig = field(default_factory=SACConfig)
    """The SAC agent's networks and hyperparameters."""
    replay: ReplayLoopConfig = field(default_factory=ReplayLoopConfig)
    """The off-policy loop: warm-up, updates per vector step, batch and replay sizes."""

    def total_updates(self, num_envs: int) -> int:
        """``replay.updates_per_step`` for every vector step from the end of the warm-up on."""
        vector_steps = math.ceil(self.total_steps / num_envs)
        learning_steps = max(vector_steps - math.ceil(self.replay.warmup_steps / num_envs), 0)
        return max(int(learning_steps * self.replay.updates_per_step), 1)

    def samples_per_task(self) -> int:
        """``replay.batch_size_per_task``."""
        return self.replay.batch_size_per_task


@dataclass(frozen=True)
class PPOTrainConfig(TrainConfig):
    """Multi-task PPO on Meta-World: on-policy, from rollouts of ``ppo.rollout_steps`` steps of every environment."""

    algo: ClassVar[str] = "ppo"

    ppo: PPOConfig = field(default_factory=PPOConfig)
    """The PPO agent's networks, rollouts and hyperparameters."""

    def __post_init__(self) -> None:
        super().__post_init__()
        samples_per_task = self.ppo.rollout_steps * self.env.envs_per_task
        if samples_per_task < self.ppo.minibatches:
            raise ValueError(
                f"ppo.minibatches must be <= ppo.rollout_steps * env.envs_per_task = {samples_per_task}, "
                f"got {self.ppo.minibatches}"
            )
        if self.checkpoint_every and self.ppo.rollout_steps % self.env.max_episode_steps:
            raise ValueError(
                f"ppo.rollout_steps must be a multiple of env.max_episode_steps = {self.env.max_episode_steps} "
                f"when checkpointing (checkpoints are taken at rollout ends that are episode ends), "
                f"got {self.ppo.rollout_steps}; or set checkpoint_every 0"
            )

    def total_updates(self, num_envs: int) -> int:
        """``epochs * minibatches`` for every rollout (the last rollout may end past ``total_steps``; a
        KL early stop makes the real count smaller)."""
        vector_steps = math.ceil(self.total_steps / num_envs)
        return math.ceil(vector_steps / self.ppo.rollout_steps) * self.ppo.epochs * self.ppo.minibatches

    def samples_per_task(self) -> int:
        """A rollout's samples per task over the minibatches, rounded down (the minibatches differ by at most one sample)."""
        return self.ppo.rollout_steps * self.env.envs_per_task // self.ppo.minibatches


TRAIN_CONFIGS: dict[str, type[TrainConfig]] = {config.algo: config for config in (SACTrainConfig, PPOTrainConfig)}
"""Every algorithm's config by its ``algo`` name."""


def config_from_plain(data: Any) -> TrainConfig:
    """Rebuild a run's config from :meth:`TrainConfig.to_plain`'s output (its ``algo`` picks the class);
    a SAC run saved before the ``replay`` section existed has its loop fields moved there (:func:`move_loop_fields`)."""
    if not isinstance(data, dict):
        raise ConfigDataError(f"config: expected a mapping of fields, got {type(data).__name__}")
    fields = dict(move_loop_fields(data))
    algo = fields.pop("algo", None)
    if algo not in TRAIN_CONFIGS:
        raise ConfigDataError(f"config.algo: {algo!r} is not one of {', '.join(map(repr, TRAIN_CONFIGS))}")
    return from_plain(TRAIN_CONFIGS[algo], fields)
