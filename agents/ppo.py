"""Multi-task Proximal Policy Optimization with balanced gradients on the shared trunks.

PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (clipped surrogate objective,
several epochs of minibatch updates on each rollout, entropy bonus, approximate-KL monitoring).
Advantages: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation" (GAE). Multi-task PPO on Meta-World: Yu et al. 2019; default settings from Meta-World+
(McLean et al. 2025, their ``metaworld-algorithms`` MT10 PPO: 3x400 networks, 10,000 steps per task
per rollout, 16 epochs of 32 minibatches, gamma 0.99, lambda 0.97, clip 0.2, entropy 5e-3,
gradient norm 1.0, no value clipping, no KL stop). Gradient balancing of the shared trunk as in
Liu et al. 2021 (CAGrad), one balancer per network as for SAC.

Layout. A rollout is time first, ``[S, T, E, ...]`` (S steps, T tasks, E environments per task):
that is the order it is written in, and GAE runs backwards over the first axis (:mod:`mtrl.rollout`,
which also holds the truncation bootstrap: a truncated step bootstraps from the value of the real
final observation, a terminated one from zero). :meth:`MultiTaskPPO.collector` gives the object
that fills a rollout from this agent (sampling, the action box, the bootstrap values). For the update it
is regrouped task first, ``[T, N, ...]`` with ``N = S * E`` samples per task, and every minibatch
is ``[T, M, ...]``: the same M samples count for every task, each task's drawn from its own
permutation. The per-task losses are functions of one task's ``M`` rows, so each network's
:class:`mtrl.balanced_step.BalancedStep` gets all ``T`` gradients of the shared trunk from one
vmapped backward and hands them to the balancer; per-task heads get their own task's gradient.

Deviations from the paper and from Meta-World+, on purpose:

- Separate actor and critic networks with separate Adam optimizers and balancers (as for SAC), so
  there is no value-loss coefficient: with its own optimizer the critic loss's scale only reaches
  Adam's epsilon and the gradient clipping. The global gradient norm is clipped per network, after
  balancing (the balanced direction is what the optimizer steps on).
- Gaussian policy with a state-independent log standard deviation, per task (``[T, A]``) or shared
  (``[A]``), not tanh-squashed: sampled actions are clipped to the environments' action box
  (``action_low``, ``action_high``; Meta-World's is ``[-1, 1]``) when sent to the environments and
  the log-probability is that of the unclipped sample (Meta-World+ uses a
  tanh-squashed Gaussian with a state-dependent standard deviation).
- The last layer of the policy mean starts 100x smaller than its default initialisation, so the
  first actions are near zero (Andrychowicz et al. 2021, "What Matters in On-Policy Reinforcement
  Learning?").
- Advantages are normalised per task within each minibatch (equal footing for tasks whose reward
  scales differ; the balancer then sees gradients of comparable losses).
- No value-function clipping (Andrychowicz et al. 2021 found it does not help; Meta-World+ turns
  it off).
- Observations are normalised by running statistics (float64 mean and variance over every
  observation seen, clipped to ``±obs_clip``). The statistics stay fixed while a rollout is
  collected and during its update, and take in that rollout's observations after the update, so
  the stored log-probabilities and values were computed with the statistics the update uses and
  the first probability ratio of every update is exactly 1. The first rollout sees the raw
  observations (mean 0, variance 1).
- The approximate-KL early stop (target KL) is checked once per epoch on the mean over tasks and
  minibatches of that epoch (one host synchronisation per epoch, none per minibatch); the KL
  estimator is ``E[(r - 1) - log r]`` (Schulman 2020, "Approximating KL Divergence").
- Learning-rate annealing (optional, ``schedule.name linear``) is stepped once per minibatch
  update, down to zero at the run's last update, as for SAC (:mod:`mtrl.schedules`).

Options of the value network: a LayerNorm in every hidden layer (``critic_layer_norm``) and
per-task PopArt (``value_normalization popart``, :mod:`mtrl.popart`): the statistics move once per
rollout, before its epochs, and the critic loss is the squared error of the normalised value to the
normalised target (``losses/value_loss`` is then in normalised units).

A balancer whose weights need two independent batches (SDMGrad) gets, as its second batch, the
epoch's next minibatch (the first one after the last): disjoint from the current one and drawn by
the same permutation, so it costs no random draw (the generator's sequence, and so a run with any
other balancer, is unchanged) and every sample is still the first batch of exactly one minibatch
update per epoch. The two are samples without replacement from one rollout, not fully independent
draws. With one minibatch per epoch the second batch is the first.

The minibatch update (both balanced steps) can run as one compiled function, as SAC's whole
update does (``ppo.update_graph``): the epochs, the permutations and the target-KL check stay in
Python around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor, nn

from agents.base import UPDATE_GRAPHS, MultiTaskAgent, UpdateGraph
from mtrl.balanced_step import BalancedStep
from mtrl.balancers import Balancer
from mtrl.checks import check_choice
from mtrl.distributions import gaussian_entropy, gaussian_log_prob
from mtrl.encoders import EncoderConfig, make_network, observation_width
from mtrl.gramian import GRADIENT_PATHS, GradientPath
from mtrl.nn import bf16_autocast
from mtrl.normalizer import RunningMeanStd
from mtrl.optim import OptimizerConfig
from mtrl.popart import PerTaskPopArt
from mtrl.rollout import Rollout, RolloutBuffer, RolloutCollector, RolloutSample, gae
from mtrl.schedules import ScheduleConfig

POLICY_HEAD_SCALE = 0.01
"""Factor on the initial weights of the policy mean's last layer (Andrychowicz et al. 2021)."""
ADVANTAGE_EPS = 1e-8


def meta_world_plus_optimizer() -> OptimizerConfig:
    """Adam 3e-4 with epsilon 1e-5 and the balanced gradient's norm clipped to 1 (Meta-World+'s PPO)."""
    return OptimizerConfig(name="adam", lr=3e-4, eps=1e-5, max_grad_norm=1.0)


@dataclass(frozen=True)
class PPOConfig:
    """Multi-task PPO hyperparameters (defaults: the Meta-World+ MT10 PPO setup)."""

    hidden_dims: tuple[int, ...] = (400, 400, 400)
    """Hidden layer sizes of the shared trunk of the actor and of the critic."""
    per_task_heads: bool = True
    """One output layer per task (True) or one shared output layer (False)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The network of the actor and of the critic (hidden_dims are its hidden sizes) and how it is told the task."""
    log_std: Literal["per_task", "shared"] = "per_task"
    """State-independent log standard deviation of the policy: one vector per task or one for all tasks."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the policy."""
    rollout_steps: int = 10_000
    """Steps of every environment per rollout (20 episodes of 500 steps in Meta-World+)."""
    epochs: int = 16
    """Passes over each rollout."""
    minibatches: int = 32
    """Minibatches per epoch; each holds the same number of samples of every task."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.97
    """GAE lambda: 0 gives one-step TD advantages, 1 Monte-Carlo returns minus the value."""
    clip_coef: float = 0.2
    """Clipping range epsilon of the probability ratio in the surrogate objective."""
    entropy_coef: float = 5e-3
    """Weight of the entropy bonus in each task's policy loss."""
    actor_optimizer: OptimizerConfig = field(default_factory=meta_world_plus_optimizer)
    """Optimizer of the actor and its log-std (Adam 3e-4, eps 1e-5) and clipping of its balanced gradient (norm 1)."""
    critic_optimizer: OptimizerConfig = field(default_factory=meta_world_plus_optimizer)
    """Optimizer of the critic (Adam 3e-4, eps 1e-5) and clipping of its balanced gradient (norm 1)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule of the actor and the critic, stepped once per minibatch update; linear
    is PPO's annealing to zero; total_updates 0 means the run's number of updates."""
    target_kl: float | None = None
    """Stop a rollout's update after the first epoch whose mean approximate KL exceeds this (None: never)."""
    normalize_advantages: bool = True
    """Normalise the advantages of each task within each minibatch to mean 0 and standard deviation 1."""
    normalize_obs: bool = True
    """Normalise observations by running mean and standard deviation."""
    obs_clip: float = 10.0
    """Clip normalised observations to [-obs_clip, obs_clip]."""
    bf16: bool = False
    """CUDA only: run the networks' forward passes in the update under bfloat16 autocast (the
    per-task gradients, the balancer's Gramian and its solve stay float32)."""
    compile_gradients: bool = True
    """Run the per-task gradients (the vmapped forward and backward of each loss) through
    ``torch.compile``: some seconds of compiling at the first updates, then faster updates (see
    :mod:`mtrl.gradients`). Balancers without per-task gradients (FAMO, Mean without statistics or
    with one task) take an ordinary backward, which is never compiled."""
    gradient_path: GradientPath = "auto"
    """What each balanced step forms for its balancer: materialised (every task's gradient of the shared
    parameters) | gramian (only their [T, T] Gramian: a fraction of the memory at large widths, step by
    step) | auto (by size and speed). The paths and auto's rule: mtrl.gramian.GRADIENT_PATHS."""
    update_graph: UpdateGraph = "auto"
    """How one minibatch update runs: off (step by step in Python; the per-task gradients compiled
    with compile_gradients) | compiled (the minibatch update, the actor's and the critic's balanced
    steps, as one ``torch.compile`` function; the epochs and minibatches stay in Python) |
    cuda-graph (the same, replayed as CUDA graphs: torch.compile's reduce-overhead mode; CUDA only)
    | auto (off for now: the compiled PPO update has not been measured, and the CUDA-graph path has
    not run on a GPU yet). compiled and cuda-graph need Adam or AdamW."""
    critic_layer_norm: bool = False
    """A LayerNorm between every hidden layer of the critic (the value network) and its ReLU."""
    value_normalization: Literal["none", "popart"] = "none"
    """none | popart: per-task PopArt (Hessel et al. 2019): the critic learns each task's value targets
    normalised by their running mean and deviation, its per-task output layer rescaled so its values are
    preserved when the statistics move (mtrl/popart.py); needs per_task_heads."""
    popart_beta: float = 0.1
    """popart: step size of the statistics' moving averages, per rollout (they move once per rollout)."""

    def __post_init__(self) -> None:
        check_choice("ppo.update_graph", self.update_graph, UPDATE_GRAPHS)
        check_choice("ppo.gradient_path", self.gradient_path, GRADIENT_PATHS)
        check_choice("ppo.value_normalization", self.value_normalization, ("none", "popart"))
        if self.critic_layer_norm and not self.encoder.reads_one_hot:
            raise ValueError("ppo.critic_layer_norm needs the mlp encoder with one-hot task conditioning (the default ppo.encoder)")
        if self.value_normalization == "popart" and not self.per_task_heads:
            raise ValueError("ppo.value_normalization popart needs ppo.per_task_heads (one output layer per task to rescale)")
        if self.value_normalization != "popart" and self.popart_beta != PPOConfig.__dataclass_fields__["popart_beta"].default:
            raise ValueError(f"ppo.popart_beta is an option of ppo.value_normalization popart, not of {self.value_normalization!r}")
        checks = {
            "hidden_dims": len(self.hidden_dims) > 0 and all(h > 0 for h in self.hidden_dims),
            "log_std": self.log_std in ("per_task", "shared"),
            "rollout_steps": self.rollout_steps >= 1,
            "epochs": self.epochs >= 1,
            "minibatches": self.minibatches >= 1,
            "gamma": 0.0 <= self.gamma <= 1.0,
            "gae_lambda": 0.0 <= self.gae_lambda <= 1.0,
            "clip_coef": self.clip_coef > 0,
            "entropy_coef": self.entropy_coef >= 0,
            "target_kl": self.target_kl is None or self.target_kl > 0,
            "obs_clip": self.obs_clip > 0,
            "popart_beta": 0.0 < self.popart_beta <= 1.0,
        }
        allowed = {
            "hidden_dims": "a non-empty list of positive sizes",
            "log_std": "'per_task' or 'shared'",
            "rollout_steps": ">= 1",
            "epochs": ">= 1",
            "minibatches": ">= 1",
            "gamma": "in [0, 1]",
            "gae_lambda": "in [0, 1]",
            "entropy_coef": ">= 0",
            "target_kl": "> 0 or None",
            "popart_beta": "in (0, 1]",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"ppo.{name} must be {allowed.get(name, '> 0')}, got {getattr(self, name)!r}")
        self.encoder.check_hidden_dims(self.hidden_dims, "ppo")


# --------------------------------------------------------------------------------- networks
class GaussianActor(nn.Module):
    """Policy ``N(mean(obs), exp(log_std)^2)``: the encoder's network for the mean, state-independent log-std.

    With ``one_hot_in_obs`` the last ``num_tasks`` entries of an observation are its one-hot task id,
    which only a network that reads the task from its input is given (:func:`mtrl.encoders.observation_width`).
    """

    def __init__(self, obs_dim: int, action_dim: int, num_tasks: int, config: PPOConfig, one_hot_in_obs: bool = False) -> None:
        super().__init__()
        self.obs_width = observation_width(obs_dim, num_tasks, one_hot_in_obs, config.encoder)
        self.net = make_network(self.obs_width, config.hidden_dims, action_dim, num_tasks, config.per_task_heads, config.encoder)
        with torch.no_grad():
            self.net.head.weight.mul_(POLICY_HEAD_SCALE)
            self.net.head.bias.zero_()
        self.per_task_log_std = config.log_std == "per_task"
        shape = (num_tasks, action_dim) if self.per_task_log_std else (action_dim,)
        self.log_std = nn.Parameter(torch.full(shape, config.init_log_std))  # [T, A] or [A]

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``[T, B, obs_dim] -> (mean, log_std)``, each ``[T, B, A]``.

        Under ``vmap`` over tasks (one task's slice) ``[B, obs_dim] -> ([B, A], [B, A])``: the
        log-std slice is ``[A]`` and ``unsqueeze(-2)`` broadcasts it in both cases.
        """
        mean = self.net(obs[..., : self.obs_width])
        return mean, self.log_std.unsqueeze(-2).expand_as(mean)

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        shared = {f"net.{k}": v for k, v in self.net.shared_parameters().items()}
        return shared if self.per_task_log_std else shared | {"log_std": self.log_std}

    def task_parameters(self) -> dict[str, nn.Parameter]:
        task = {f"net.{k}": v for k, v in self.net.task_parameters().items()}
        return task | {"log_std": self.log_std} if self.per_task_log_std else task


class Critic(nn.Module):
    """State value: the encoder's network (a shared trunk and a (per-task) head), ``[T, B, obs_dim] -> [T, B]``.

    ``critic_layer_norm`` puts a LayerNorm in every hidden layer of the trunk (:class:`mtrl.nn.MLP`).
    With ``value_normalization popart`` the head predicts each task's normalised value and
    :attr:`popart` holds the statistics that turn it into the value (:mod:`mtrl.popart`).
    ``one_hot_in_obs`` as for :class:`GaussianActor`.
    """

    def __init__(self, obs_dim: int, num_tasks: int, config: PPOConfig, one_hot_in_obs: bool = False) -> None:
        super().__init__()
        self.obs_width = observation_width(obs_dim, num_tasks, one_hot_in_obs, config.encoder)
        self.net = make_network(
            self.obs_width, config.hidden_dims, 1, num_tasks, config.per_task_heads, config.encoder, layer_norm=config.critic_layer_norm
        )
        self.popart = PerTaskPopArt(num_tasks, config.popart_beta) if config.value_normalization == "popart" else None

    def forward(self, obs: Tensor, normalized: bool = False) -> Tensor:
        """``V(obs)``: ``[T, B, obs_dim] -> [T, B]``; ``normalized``: the head's output as it is (PopArt's
        normalised value, what the critic loss is taken on; the value itself without PopArt). Under
        ``vmap`` over tasks (one task's slice) only ``normalized=True`` applies."""
        output = self.net(obs[..., : self.obs_width]).squeeze(-1)
        if normalized or self.popart is None:
            return output
        return self.popart.unnormalize(output)

    def update_value_statistics(self, targets: Tensor) -> Tensor:
        """PopArt: move the statistics towards the value targets ``[T, N]``, preserving the values; the
        targets normalised by the new statistics, ``[T, N]`` (without PopArt: the targets)."""
        if self.popart is None:
            return targets
        self.popart.update(targets, self.net.head)
        return self.popart.normalize(targets)

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        return {f"net.{k}": v for k, v in self.net.shared_parameters().items()}

    def task_parameters(self) -> dict[str, nn.Parameter]:
        return {f"net.{k}": v for k, v in self.net.task_parameters().items()}


# --------------------------------------------------------------------------------- the agent
class MultiTaskPPO(MultiTaskAgent):
    """Actor, critic, observation normaliser and the balanced step of each network.

    :meth:`collector` gives the object that collects a rollout with :meth:`explore` and
    :meth:`value`; ``update(rollout)`` runs the PPO epochs on it and returns its metrics as device
    tensors (nothing is read back to the host except one number per epoch when ``target_kl`` is
    set). ``balancers`` holds one balancer per network of :attr:`BALANCED_NETWORKS`.
    ``total_updates`` (minibatch updates in the run) ends a decaying learning-rate schedule whose
    own ``total_updates`` is 0. All randomness (action noise, minibatch permutations) comes from
    :attr:`generator`, whose state is part of :meth:`training_state`. Actions are clipped to the
    environments' box ``[action_low, action_high]`` (``[A]`` each). ``one_hot_in_obs``: the last
    ``num_tasks`` entries of every observation are its one-hot task id (:class:`GaussianActor`).
    ``samples_per_task``: the minibatch per task of one update, which ``gradient_path auto`` weighs.
    """

    CONFIG_SECTION = "ppo"
    BALANCED_NETWORKS = ("critic", "actor")

    def __init__(
        self,
        obs_dim: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        num_tasks: int,
        config: PPOConfig,
        balancers: Mapping[str, Balancer],
        device: torch.device | str = "cpu",
        seed: int = 0,
        total_updates: int | None = None,
        auto_update_graph: str = "off",
        one_hot_in_obs: bool = False,
        samples_per_task: int | None = None,
    ) -> None:
        super().__init__(num_tasks, action_low, action_high, config, balancers, device, samples_per_task)
        self.obs_dim = obs_dim
        self.actor = GaussianActor(obs_dim, self.action_dim, num_tasks, config, one_hot_in_obs)
        self.critic = Critic(obs_dim, num_tasks, config, one_hot_in_obs)
        self.obs_normalizer = RunningMeanStd(obs_dim, config.obs_clip)
        self.to(self.device)
        self.actor_step = self._balanced_step("actor", self.actor, config.actor_optimizer, config.schedule, total_updates)
        self.critic_step = self._balanced_step("critic", self.critic, config.critic_optimizer, config.schedule, total_updates)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.num_updates = 0
        self.update_graph = self._resolve_update_graph(config.update_graph, auto_update_graph)
        self._run_minibatch_step = self._update_function(self._minibatch_step)

    # ----------------------------------------------------------------------------- acting
    def normalize(self, obs: Tensor) -> Tensor:
        """Observations as the networks see them (``[..., obs_dim]``)."""
        return self.obs_normalizer(obs) if self.config.normalize_obs else obs

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions ``[T, E, A]`` in the action box for task-grouped observations ``[T, E, obs_dim]``."""
        mean, log_std = self.actor(self.normalize(obs))
        if deterministic:
            return self.clip_action(mean)
        return self.clip_action(mean + log_std.exp() * self._noise(mean))

    @torch.no_grad()
    def explore(self, obs: Tensor) -> RolloutSample:
        """Sample for a rollout: ``[T, E, obs_dim] -> (env_action, action [T, E, A], log_prob [T, E], value [T, E])``.

        ``action`` is the raw Gaussian sample (its log-probability is ``log_prob``), ``env_action``
        the same clipped to the action box for the environments.
        """
        normalized = self.normalize(obs)
        mean, log_std = self.actor(normalized)
        action = mean + log_std.exp() * self._noise(mean)
        return RolloutSample(self.clip_action(action), action, gaussian_log_prob(action, mean, log_std), self.critic(normalized))

    @torch.no_grad()
    def value(self, obs: Tensor) -> Tensor:
        """``V(obs)``: ``[T, E, obs_dim] -> [T, E]``."""
        return self.critic(self.normalize(obs))

    def collector(self, envs_per_task: int) -> RolloutCollector:
        """An empty collector of one rollout of ``config.rollout_steps`` steps of ``envs_per_task`` environments per task."""
        buffer = RolloutBuffer(self.config.rollout_steps, self.num_tasks, envs_per_task, self.obs_dim, self.action_dim, self.device)
        return RolloutCollector(self, buffer)

    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, device=self.device, generator=self.generator)

    # ----------------------------------------------------------------------------- learning
    def update(self, rollout: Rollout) -> dict[str, Tensor]:
        """PPO epochs over ``rollout``; then the observation statistics take in its observations.

        Returns per-task ``[T]`` and scalar metrics, averaged over every minibatch.
        """
        steps, num_tasks, envs_per_task = rollout.shape
        samples = steps * envs_per_task
        if samples < self.config.minibatches:
            raise ValueError(f"a rollout of {samples} samples per task cannot fill {self.config.minibatches} minibatches")
        learning_rate = self.actor_step.optimizer.learning_rate
        batch = self._task_major_batch(rollout)  # [T, N, ...] each
        returns = batch["returns"]  # [T, N]
        batch["returns"] = self.critic.update_value_statistics(returns)  # the critic's targets (PopArt: normalised)
        totals: dict[str, Tensor] = {}
        minibatches_done, epochs_done = 0, 0
        for _ in range(self.config.epochs):
            epoch_kl = torch.zeros(num_tasks, device=self.device)  # [T]
            order = torch.rand(num_tasks, samples, device=self.device, generator=self.generator).argsort(dim=1)  # [T, N]
            splits = order.tensor_split(self.config.minibatches, dim=1)  # [T, M] each
            for position, indices in enumerate(splits):
                minibatch = {name: _take_per_task(value, indices) for name, value in batch.items()}  # [T, M, ...]
                if self.needs_second_batch:  # the epoch's next minibatch (the first after the last)
                    following = splits[(position + 1) % len(splits)]  # [T, M]
                    second = {name: _take_per_task(value, following) for name, value in batch.items()}  # [T, M, ...]
                    stats = self._update_minibatch(minibatch, second)
                else:
                    stats = self._update_minibatch(minibatch)
                epoch_kl += stats["losses/approx_kl"]
                for tag, value in stats.items():
                    totals[tag] = totals.get(tag, 0.0) + value  # a new tensor: never aliases a balancer's buffer
                minibatches_done += 1
            epochs_done += 1
            target_kl = self.config.target_kl
            if target_kl is not None and (epoch_kl.mean() / self.config.minibatches).item() > target_kl:
                break
        if self.config.normalize_obs:
            self.obs_normalizer.update(rollout.obs)
        self.num_updates += 1
        metrics = {tag: total / minibatches_done for tag, total in totals.items()}
        return metrics | {
            "losses/explained_variance": _explained_variance(batch["value"], returns),
            "losses/log_std": self.actor.log_std.detach().mean(-1),
            "losses/epochs": torch.tensor(float(epochs_done), device=self.device),
            "charts/learning_rate": torch.tensor(learning_rate, device=self.device),
        }

    def _task_major_batch(self, rollout: Rollout) -> dict[str, Tensor]:
        """Advantages and returns, then every field regrouped ``[S, T, E, ...] -> [T, S * E, ...]``."""
        config = self.config
        advantages, returns = gae(
            rollout.reward, rollout.value, rollout.next_value, rollout.terminated, rollout.ended, config.gamma, config.gae_lambda
        )  # [S, T, E] each
        fields = {
            "obs": self.normalize(rollout.obs),
            "action": rollout.action,
            "log_prob": rollout.log_prob,
            "value": rollout.value,
            "advantages": advantages,
            "returns": returns,
        }
        return {name: _task_major(value) for name, value in fields.items()}

    def _update_minibatch(self, minibatch: dict[str, Tensor], second: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """One balanced actor step and one balanced critic step on a ``[T, M, ...]`` minibatch, then both schedules.

        ``second``: another minibatch, for a balancer that asks for a second batch (SDMGrad).
        """
        metrics = self._run_minibatch_step(minibatch, second)
        self.actor_step.optimizer.step_schedule()
        self.critic_step.optimizer.step_schedule()
        return metrics

    def _minibatch_step(self, minibatch: dict[str, Tensor], second: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The minibatch update as tensor operations (run as :attr:`update_graph` says); ``second`` only
        enters the weights of a balancer that asks for a second batch."""
        config = self.config

        def actor_task_loss(
            actor: Callable, obs: Tensor, action: Tensor, old_log_prob: Tensor, advantages: Tensor
        ) -> tuple[Tensor, tuple[Tensor, ...]]:
            with bf16_autocast(config.bf16, self.device):
                mean, log_std = actor(obs)  # [M, A] each
            mean, log_std = mean.float(), log_std.float()
            log_ratio = gaussian_log_prob(action, mean, log_std) - old_log_prob  # [M]
            ratio = log_ratio.exp()  # [M]
            if config.normalize_advantages:
                advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + ADVANTAGE_EPS)
            clipped_ratio = ratio.clamp(1.0 - config.clip_coef, 1.0 + config.clip_coef)
            policy_loss = -torch.minimum(ratio * advantages, clipped_ratio * advantages).mean()
            entropy = gaussian_entropy(log_std).mean()
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
            clip_fraction = ((ratio - 1.0).abs() > config.clip_coef).float().mean()
            return policy_loss - config.entropy_coef * entropy, (policy_loss, entropy, approx_kl, clip_fraction)

        def critic_task_loss(critic: Callable, obs: Tensor, returns: Tensor) -> Tensor:
            with bf16_autocast(config.bf16, self.device):
                values = critic(obs, normalized=True)  # [M]
            return 0.5 * (values.float() - returns).pow(2).mean()

        actor_fields, critic_fields = ("obs", "action", "log_prob", "advantages"), ("obs", "returns")

        def second_inputs(step: BalancedStep, fields: tuple[str, ...]) -> tuple[Tensor, ...] | None:
            return tuple(second[name] for name in fields) if second is not None and step.needs_second_batch else None

        actor = self.actor_step.step(
            actor_task_loss,
            tuple(minibatch[name] for name in actor_fields),
            has_aux=True,
            second_inputs=second_inputs(self.actor_step, actor_fields),
        )
        policy_loss, entropy, approx_kl, clip_fraction = actor.aux
        critic = self.critic_step.step(
            critic_task_loss, tuple(minibatch[name] for name in critic_fields), second_inputs=second_inputs(self.critic_step, critic_fields)
        )
        return {
            "losses/policy_loss": policy_loss,
            "losses/value_loss": critic.losses,
            "losses/entropy": entropy,
            "losses/approx_kl": approx_kl,
            "losses/clip_fraction": clip_fraction,
            "losses/actor_grad_norm": actor.grad_norm,
            "losses/critic_grad_norm": critic.grad_norm,
        } | self.actor_step.metrics() | self.critic_step.metrics()


def _task_major(x: Tensor) -> Tensor:
    """``[S, T, E, ...] -> [T, S * E, ...]``."""
    steps, num_tasks, envs_per_task = x.shape[:3]
    return x.transpose(0, 1).reshape(num_tasks, steps * envs_per_task, *x.shape[3:])


def _take_per_task(x: Tensor, indices: Tensor) -> Tensor:
    """``x: [T, N, ...]``, ``indices: [T, M]`` -> ``[T, M, ...]`` (row ``t`` from task ``t``'s samples)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], indices]


def _explained_variance(values: Tensor, returns: Tensor) -> Tensor:
    """Per task, ``1 - Var(returns - values) / Var(returns)``: ``[T, N], [T, N] -> [T]``."""
    residual = (returns - values).var(dim=1, correction=0)  # [T]
    return 1.0 - residual / returns.var(dim=1, correction=0).clamp_min(1e-8)

