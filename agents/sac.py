"""Multi-task Soft Actor-Critic with balanced gradients on the shared trunks.

SAC: Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications" (twin critics, target
critics with Polyak averaging, automatic temperature with target entropy ``-|A|``).
Multi-task SAC: Yu et al. 2019 (Meta-World), one temperature per task as in Sodhani et al. 2021
(facebookresearch/mtrl); gradient balancing of the shared trunk as in Liu et al. 2021 (CAGrad).

Every tensor of an update is task-first (``[T, B, ...]``). The critic loss and the actor loss of
each task are computed on that task's ``B`` rows; the per-task gradients of the shared trunk go
to the balancer (one for the critic, another for the actor), each head gets its own task's
gradient, and the temperatures are fitted with an ordinary, unbalanced gradient.

The critics are chosen by ``sac.critic``: SAC's MLP twin critics (optionally with LayerNorm) or BRC's
categorical critics (:mod:`agents.critics`); with ``sac.reward_normalization per-task`` the critic's
target uses each task's rewards divided by BRC's return scale (:mod:`mtrl.reward_normalization`).

Deviation from the CAGrad authors' code: they balance every critic and actor parameter of one
shared network; with per-task heads (our default) only the trunk is balanced, the heads being
task-specific already. The ``cagrad_paper`` preset (one shared head, no task id, one
temperature) balances every parameter as they did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from agents.base import UPDATE_GRAPHS, MultiTaskAgent, Stateful, UpdateGraph
from agents.critics import CategoricalTwinCritic, TwinOutputs, TwinQ
from mtrl.balancers import Balancer
from mtrl.categorical import check_support
from mtrl.checks import check_choice, check_positive_int
from mtrl.config_io import non_finite_floats
from mtrl.distributions import squashed_gaussian
from mtrl.encoders import EncoderConfig, make_network, observation_width
from mtrl.gramian import GRADIENT_PATHS, GradientPath
from mtrl.nn import bf16_autocast
from mtrl.optim import NetworkOptimizer, OptimizerConfig
from mtrl.replay import MultiTaskReplay, TransitionBatch
from mtrl.reward_normalization import RewardScale
from mtrl.schedules import ScheduleConfig


@dataclass(frozen=True)
class SACConfig:
    """Multi-task SAC: the agent's networks and hyperparameters (defaults: the CAGrad paper's MT10 setup).

    The loop that feeds it (warm-up, updates per step, batch and replay sizes) has its own section of
    the run's config: :class:`launch.replay_loop.ReplayLoopConfig`.
    """

    hidden_dims: tuple[int, ...] = (400, 400, 400)
    """Hidden layer sizes of the shared trunk of the actor and of each critic."""
    per_task_heads: bool = True
    """One output layer per task (True) or one shared output layer (False, the CAGrad paper's MT-SAC)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The network of the actor and of each critic (hidden_dims are its hidden sizes) and how it is told the task."""
    per_task_temperature: bool = True
    """One entropy temperature per task (True) or one for all tasks (False)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak averaging rate of the target critics."""
    actor_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer of the actor (Adam 3e-4 as in the papers) and clipping of its balanced gradient."""
    critic_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer of the twin critics and clipping of their balanced gradient."""
    temperature_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer of the log-temperatures."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule of the actor and the critics, stepped once per update (the
    temperatures keep a constant rate); total_updates 0 means the run's number of updates."""
    bf16: bool = False
    """CUDA only: run the networks' forward passes under bfloat16 autocast (the per-task gradients,
    the balancer's Gramian and its solve stay float32)."""
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
    """How one update runs: off (step by step in Python; the per-task gradients compiled with
    compile_gradients) | compiled (the whole update, critic, actor, temperatures and targets, as one
    ``torch.compile`` function) | cuda-graph (the same, replayed as CUDA graphs: torch.compile's
    reduce-overhead mode; CUDA only) | auto (chosen for the run: compiled on the CPU for long runs
    whose balancers compile well, off otherwise: docs/benchmarks.md). compiled and cuda-graph need
    Adam or AdamW (auto falls back to off)."""
    init_temperature: float = 1.0
    """Initial entropy temperature."""
    log_std_min: float = -5.0
    """Lower bound of the policy's log standard deviation."""
    log_std_max: float = 2.0
    """Upper bound of the policy's log standard deviation."""
    actor_update_frequency: int = 1
    """Update the actor and temperatures every this many critic updates."""
    target_update_frequency: int = 1
    """Update the target critics every this many critic updates."""
    critic: Literal["mlp", "brc"] = "mlp"
    """The twin critics: mlp (hidden_dims, squared error to the clipped double-Q target) | brc (BRC's:
    BroNet residual blocks with LayerNorm of critic_width, a categorical value over num_bins atoms in
    [v_min, v_max] trained by cross-entropy to the projected target; agents/critics.py)."""
    critic_layer_norm: bool = False
    """mlp critic: a LayerNorm between every hidden layer and its ReLU."""
    critic_width: int = 512
    """brc critic: width of the BroNet (BRC's default 512; 4096 in its multi-task runs)."""
    critic_blocks: int = 2
    """brc critic: residual blocks of the BroNet (BRC: 2)."""
    num_bins: int = 101
    """brc critic: atoms of the categorical value's support (BRC: 101)."""
    v_min: float = -10.0
    """brc critic: lowest atom of the support (BRC: -10)."""
    v_max: float = 10.0
    """brc critic: highest atom of the support (BRC: 10); with reward_normalization per-task, the bound
    that each task's returns are scaled to (BRC's v_max)."""
    reward_normalization: Literal["none", "per-task"] = "none"
    """none | per-task: divide each task's sampled rewards by a running scale of its discounted soft
    returns, so that they lie within about +-v_max (BRC's scheme: mtrl/reward_normalization.py)."""

    def __post_init__(self) -> None:
        check_choice("sac.update_graph", self.update_graph, UPDATE_GRAPHS)
        check_choice("sac.gradient_path", self.gradient_path, GRADIENT_PATHS)
        check_choice("sac.critic", self.critic, ("mlp", "brc"))
        check_choice("sac.reward_normalization", self.reward_normalization, ("none", "per-task"))
        non_finite = non_finite_floats(self)
        if non_finite:
            raise ValueError(f"sac.{non_finite[0]} must be a finite number, got {getattr(self, non_finite[0])!r}")
        checks = {
            "gamma": 0.0 <= self.gamma <= 1.0,
            "tau": 0.0 < self.tau <= 1.0,
            "init_temperature": self.init_temperature > 0,
            "actor_update_frequency": self.actor_update_frequency >= 1,
            "target_update_frequency": self.target_update_frequency >= 1,
            "hidden_dims": len(self.hidden_dims) > 0 and all(h > 0 for h in self.hidden_dims),
            "log_std_max": self.log_std_min < self.log_std_max,
        }
        allowed = {
            "gamma": "in [0, 1]",
            "tau": "in (0, 1]",
            "hidden_dims": "a non-empty list of positive sizes",
            "log_std_max": "greater than log_std_min",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"sac.{name} must be {allowed.get(name, '> 0')}, got {getattr(self, name)!r}")
        self.encoder.check_hidden_dims(self.hidden_dims, "sac")
        self._check_critic_options()
        if self.reward_normalization == "per-task" and not (self.gamma < 1.0 and self.v_max > 0):
            raise ValueError(
                f"sac.reward_normalization per-task needs sac.gamma < 1 and sac.v_max > 0, got gamma={self.gamma!r}, v_max={self.v_max!r}"
            )
        if self.critic_layer_norm and not self.encoder.reads_one_hot:
            raise ValueError("sac.critic_layer_norm needs the mlp encoder with one-hot task conditioning (the default sac.encoder)")

    def _check_critic_options(self) -> None:
        """The critic's own options: valid for the chosen critic, and none given (other than its default)
        to a critic that does not take it."""
        if self.critic == "brc":
            check_positive_int("sac.critic_width", self.critic_width)
            check_positive_int("sac.critic_blocks", self.critic_blocks)
            check_support("sac.", self.num_bins, self.v_min, self.v_max)
        takes = {"mlp": ("critic_layer_norm",), "brc": ("critic_width", "critic_blocks", "num_bins", "v_min", "v_max")}
        if self.reward_normalization == "per-task":
            takes["mlp"] += ("v_max",)  # the bound the returns are scaled to
        defaults = SACConfig.__dataclass_fields__
        for critic, options in takes.items():
            for name in options:
                if critic != self.critic and name not in takes[self.critic] and getattr(self, name) != defaults[name].default:
                    taken = ", ".join(f"--sac.{o.replace('_', '-')}" for o in takes[self.critic])
                    raise ValueError(f"sac.{name} is an option of the {critic} critic, not of sac.critic {self.critic!r}; it takes: {taken}")


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy: the encoder's network (a shared trunk and a (per-task) head) giving mean and log-std.

    With ``one_hot_in_obs`` the last ``num_tasks`` entries of an observation are its one-hot task id,
    which only a network that reads the task from its input is given (:func:`mtrl.encoders.observation_width`).
    """

    def __init__(self, obs_dim: int, action_dim: int, num_tasks: int, config: SACConfig, one_hot_in_obs: bool = False) -> None:
        super().__init__()
        self.obs_width = observation_width(obs_dim, num_tasks, one_hot_in_obs, config.encoder)
        self.net = make_network(self.obs_width, config.hidden_dims, 2 * action_dim, num_tasks, config.per_task_heads, config.encoder)
        self.log_std_min, self.log_std_max = config.log_std_min, config.log_std_max

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs: [T, B, obs_dim] -> (mean, log_std)``, each ``[T, B, A]`` (log-std squashed into its bounds)."""
        mean, raw_log_std = self.net(obs[..., : self.obs_width]).chunk(2, dim=-1)
        span = self.log_std_max - self.log_std_min
        return mean, self.log_std_min + 0.5 * span * (torch.tanh(raw_log_std) + 1.0)

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        return {f"net.{k}": v for k, v in self.net.shared_parameters().items()}

    def task_parameters(self) -> dict[str, nn.Parameter]:
        return {f"net.{k}": v for k, v in self.net.task_parameters().items()}


class TwinCritic(TwinQ):
    """Two independent Q-networks, each the encoder's network (a shared trunk and a (per-task) head) over ``[obs, action]``.

    SAC's clipped double-Q rules (:mod:`agents.critics`); ``critic_layer_norm`` puts a LayerNorm
    in every hidden layer of the MLP (:class:`mtrl.nn.MLP`). ``one_hot_in_obs`` as for :class:`Actor`.
    """

    def __init__(self, obs_dim: int, action_dim: int, num_tasks: int, config: SACConfig, one_hot_in_obs: bool = False) -> None:
        super().__init__()
        self.obs_width = observation_width(obs_dim, num_tasks, one_hot_in_obs, config.encoder)
        shape = (self.obs_width + action_dim, config.hidden_dims, 1, num_tasks, config.per_task_heads, config.encoder)
        self.q1 = make_network(*shape, layer_norm=config.critic_layer_norm)
        self.q2 = make_network(*shape, layer_norm=config.critic_layer_norm)

    def forward(self, obs: Tensor, action: Tensor) -> TwinOutputs:
        """``[T, B, obs_dim], [T, B, A] -> (q1, q2)``, each ``[T, B]``."""
        q1, q2 = super().forward(obs[..., : self.obs_width], action)
        return q1.squeeze(-1), q2.squeeze(-1)

    def q_values(self, outputs: TwinOutputs) -> TwinOutputs:
        return outputs

    def actor_value(self, outputs: TwinOutputs) -> Tensor:
        return torch.minimum(*outputs)

    def bellman_target(self, next_outputs: TwinOutputs, reward: Tensor, continuation: Tensor, penalty: Tensor) -> Tensor:
        """``r + c * (min(Q1', Q2') - alpha log pi)``: ``[...]``."""
        return reward + continuation * (torch.minimum(*next_outputs) - penalty)

    def td_loss(self, outputs: TwinOutputs, target: Tensor) -> Tensor:
        q1, q2 = outputs[0].float(), outputs[1].float()
        return F.mse_loss(q1, target) + F.mse_loss(q2, target)


def make_twin_critic(obs_dim: int, action_dim: int, num_tasks: int, config: SACConfig, one_hot_in_obs: bool = False) -> TwinQ:
    """The twin critic ``config.critic`` names: :class:`TwinCritic` (mlp, over the encoder's networks) or
    :class:`agents.critics.CategoricalTwinCritic` (brc, its own BroNets over the whole observation)."""
    if config.critic == "brc":
        return CategoricalTwinCritic(
            obs_dim + action_dim,
            num_tasks,
            config.critic_width,
            config.critic_blocks,
            config.num_bins,
            config.v_min,
            config.v_max,
            config.per_task_heads,
        )
    return TwinCritic(obs_dim, action_dim, num_tasks, config, one_hot_in_obs)


class SecondBatch(NamedTuple):
    """The second, independent batch of an update whose balancer asks for one, with its own policy noise."""

    batch: TransitionBatch
    next_noise: Tensor  # [T, B, A] for the critic target's next actions
    actor_noise: Tensor | None  # [T, B, A] for the actor's actions; None when the actor does not update


class MultiTaskSAC(MultiTaskAgent):
    """Actor, twin critics, target critics, temperatures, the balanced step of the critic and of the actor.

    ``update(batch)`` performs one SAC update on a task-grouped batch and returns its metrics as
    device tensors (nothing is read back to the host). ``balancers`` holds one balancer per network
    of :attr:`BALANCED_NETWORKS`. All randomness (policy noise) comes from :attr:`generator`, whose
    state is part of :meth:`training_state`. The tanh policy acts in ``[-1, 1]``: an action box
    ``[action_low, action_high]`` other than that is refused. ``one_hot_in_obs``: the last
    ``num_tasks`` entries of every observation are its one-hot task id (:class:`Actor`).
    ``samples_per_task``: the batch per task of one update, which ``gradient_path auto`` weighs.
    """

    CONFIG_SECTION = "sac"
    BALANCED_NETWORKS = ("critic", "actor")

    def __init__(
        self,
        obs_dim: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        num_tasks: int,
        config: SACConfig,
        balancers: Mapping[str, Balancer],
        device: torch.device | str = "cpu",
        seed: int = 0,
        total_updates: int | None = None,
        auto_update_graph: str = "off",
        one_hot_in_obs: bool = False,
        samples_per_task: int | None = None,
    ) -> None:
        super().__init__(num_tasks, action_low, action_high, config, balancers, device, samples_per_task)
        low, high = np.asarray(action_low).tolist(), np.asarray(action_high).tolist()
        if not (all(x == -1.0 for x in low) and all(x == 1.0 for x in high)):
            raise ValueError(f"MultiTaskSAC's tanh policy acts in [-1, 1]; the action box is low={low}, high={high}")
        action_dim = self.action_dim
        self.actor = Actor(obs_dim, action_dim, num_tasks, config, one_hot_in_obs)
        self.critic = make_twin_critic(obs_dim, action_dim, num_tasks, config, one_hot_in_obs)
        self.critic_target = make_twin_critic(obs_dim, action_dim, num_tasks, config, one_hot_in_obs)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        num_temperatures = num_tasks if config.per_task_temperature else 1
        self.log_alpha = nn.Parameter(torch.full((num_temperatures,), math.log(config.init_temperature)))  # [T] or [1]
        self.target_entropy = -float(action_dim)
        self.reward_scale = (
            RewardScale(num_tasks, config.gamma, self.target_entropy, config.v_max) if config.reward_normalization == "per-task" else None
        )
        self.to(self.device)
        self.critic_step = self._balanced_step("critic", self.critic, config.critic_optimizer, config.schedule, total_updates)
        self.actor_step = self._balanced_step("actor", self.actor, config.actor_optimizer, config.schedule, total_updates)
        self.temperature_optimizer = NetworkOptimizer.build({"log_alpha": self.log_alpha}, config.temperature_optimizer)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.num_updates = 0
        self.update_graph = self._resolve_update_graph(config.update_graph, auto_update_graph)
        self._run_update = self._update_function(self._update)

    # ----------------------------------------------------------------------------- acting
    def alpha(self) -> Tensor:
        """Temperatures per task ``[T]`` (one shared temperature broadcast when not per task)."""
        return self.log_alpha.exp().expand(self.num_tasks)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions ``[T, E, A]`` in ``[-1, 1]`` for task-grouped observations ``[T, E, obs_dim]``."""
        mean, log_std = self.actor(obs)
        if deterministic:
            return torch.tanh(mean)
        noise = torch.randn(mean.shape, device=self.device, generator=self.generator)
        return squashed_gaussian(mean, log_std, noise)[0]

    # ----------------------------------------------------------------------------- learning
    def sample_batches(
        self, replay: MultiTaskReplay, batch_size: int, generator: torch.Generator
    ) -> tuple[TransitionBatch, TransitionBatch | None]:
        """An update's batch from ``replay``, and a second, independent one when a balancer asks for it.

        The second batch (:attr:`needs_second_batch`: SDMGrad) is drawn after the first from the same
        ``generator``; with other balancers nothing more is drawn, so their runs are unchanged.
        """
        batch = replay.sample(batch_size, generator)
        return batch, replay.sample(batch_size, generator) if self.needs_second_batch else None

    def update(self, batch: TransitionBatch, second_batch: TransitionBatch | None = None) -> dict[str, Tensor]:
        """One critic update (and actor/temperature/target updates at their frequencies).

        The policy noise is drawn first (critic target, then actor), from :attr:`generator`, then
        :meth:`_update` runs as :attr:`update_graph` says (eagerly or compiled as one function) and
        the learning-rate schedules of the optimizers it stepped move on. ``second_batch`` (from
        :meth:`sample_batches`) is used by the networks whose balancer asks for a second batch
        (:attr:`needs_second_batch`), its policy noise drawn after the first batch's; without one
        such a balancer sees ``batch`` twice.
        """
        self.num_updates += 1
        update_actor = self.num_updates % self.config.actor_update_frequency == 0
        update_target = self.num_updates % self.config.target_update_frequency == 0
        next_noise = self._noise(batch.next_obs)  # [T, B, A]
        actor_noise = self._noise(batch.obs) if update_actor else None  # [T, B, A]
        second = None
        if second_batch is not None and self.needs_second_batch:
            second_next_noise = self._noise(second_batch.next_obs)  # [T, B, A]
            second_actor_noise = self._noise(second_batch.obs) if update_actor else None  # [T, B, A]
            second = SecondBatch(second_batch, second_next_noise, second_actor_noise)
        metrics = self._run_update(batch, next_noise, actor_noise, update_target, second)
        self.critic_step.optimizer.step_schedule()
        if update_actor:
            self.actor_step.optimizer.step_schedule()
            self.temperature_optimizer.step_schedule()
        return metrics

    def _update(
        self, batch: TransitionBatch, next_noise: Tensor, actor_noise: Tensor | None, update_target: bool, second: SecondBatch | None = None
    ) -> dict[str, Tensor]:
        """The update as tensor operations: critic, then actor and temperatures (given their noise), then targets."""
        metrics = self._update_critic(batch, next_noise, second)
        if actor_noise is not None:
            second_actor = None if second is None or second.actor_noise is None else (second.batch.obs, second.actor_noise)
            metrics |= self._update_actor_and_temperature(batch.obs, actor_noise, second_actor)
        if update_target:
            target, online = list(self.critic_target.parameters()), list(self.critic.parameters())
            with torch.no_grad():
                torch._foreach_lerp_(target, online, self.config.tau)
        return metrics

    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn((*like.shape[:-1], self.action_dim), device=self.device, generator=self.generator)

    def _critic_target(self, batch: TransitionBatch, noise: Tensor) -> Tensor:
        """The critic's Bellman target for ``batch`` given the next actions' policy noise: ``[T, B]`` (``[T, B, K]``)."""
        alpha = self.alpha().detach()[:, None]  # [T, 1]
        reward = batch.reward if self.reward_scale is None else self.reward_scale(batch.reward, alpha[:, 0])  # [T, B]
        with torch.no_grad(), bf16_autocast(self.config.bf16, self.device):
            mean, log_std = self.actor(batch.next_obs)
            next_action, next_log_prob = squashed_gaussian(mean, log_std, noise)  # [T, B, A], [T, B]
            next_q = self.critic_target(batch.next_obs, next_action)  # [T, B] each ([T, B, K]: categorical)
            continuation = self.config.gamma * (1.0 - batch.done)  # [T, B]
            return self.critic.bellman_target(next_q, reward, continuation, alpha * next_log_prob)  # [T, B] ([T, B, K])

    def _update_critic(self, batch: TransitionBatch, noise: Tensor, second: SecondBatch | None = None) -> dict[str, Tensor]:
        target = self._critic_target(batch, noise)
        rules = self.critic

        def task_loss(critic: Callable, obs: Tensor, action: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
            with bf16_autocast(self.config.bf16, self.device):
                q = critic(obs, action)  # [B] each ([B, K]: categorical)
            return rules.td_loss(q, target), rules.q_values(q)[0].float().mean()

        second_inputs = None
        if second is not None and self.critic_step.needs_second_batch:
            other = second.batch
            second_inputs = (other.obs, other.action, self._critic_target(other, second.next_noise).float())
        critic = self.critic_step.step(task_loss, (batch.obs, batch.action, target.float()), has_aux=True, second_inputs=second_inputs)
        return {
            "losses/qf_loss": critic.losses,
            "losses/qf1_values": critic.aux,
            "losses/critic_grad_norm": critic.grad_norm,
        } | self.critic_step.metrics()

    def take_in_episode_returns(self, max_abs_return: np.ndarray, episodes: np.ndarray) -> None:
        """Per-task reward normalisation: merge finished episodes' largest ``|G_k|`` per task (``[T]``) and
        their count per task (``[T]``), as :class:`mtrl.reward_normalization.EpisodeReturns` gives them."""
        if self.reward_scale is None:
            raise RuntimeError("take_in_episode_returns needs sac.reward_normalization per-task")
        self.reward_scale.update(torch.as_tensor(max_abs_return, device=self.device), torch.as_tensor(episodes, device=self.device))

    def _update_actor_and_temperature(self, obs: Tensor, noise: Tensor, second: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        alpha = self.alpha().detach()  # [T]
        critic = self.critic
        critic_shared = {k: v.detach() for k, v in critic.shared_parameters().items()}
        critic_task = {k: v.detach() for k, v in critic.task_parameters().items()}  # [T, ...] each

        def task_loss(
            actor: Callable, obs: Tensor, noise: Tensor, alpha: Tensor, critic_task: dict[str, Tensor]
        ) -> tuple[Tensor, Tensor]:
            with bf16_autocast(self.config.bf16, self.device):
                mean, log_std = actor(obs)
                action, log_prob = squashed_gaussian(mean.float(), log_std.float(), noise)  # [B, A], [B]
                q = functional_call(critic, {**critic_shared, **critic_task}, (obs, action))  # [B] each ([B, K])
            q_value = critic.actor_value(q).float()  # [B]
            return (alpha * log_prob - q_value).mean(), log_prob.detach().mean()

        second_inputs = None
        if second is not None and self.actor_step.needs_second_batch:
            second_inputs = (*second, alpha, critic_task)  # the second batch's observations and policy noise
        actor = self.actor_step.step(task_loss, (obs, noise, alpha, critic_task), has_aux=True, second_inputs=second_inputs)
        log_prob = actor.aux  # [T]

        # temperature: never balanced; one ordinary gradient step on  E[-alpha (log_pi + target_entropy)]
        entropy_gap = (log_prob + self.target_entropy).detach()  # [T]

        def temperature_loss(log_alpha: Tensor) -> Tensor:
            return -(log_alpha.exp().expand(self.num_tasks) * entropy_gap).mean()

        grad, alpha_loss = grad_and_value(temperature_loss)(self.log_alpha.detach())  # [T] or [1], []
        self.temperature_optimizer.apply([grad])
        return {
            "losses/actor_loss": actor.losses,
            "losses/alpha_loss": alpha_loss.detach(),
            "losses/alpha": self.alpha().detach(),
            "losses/entropy": -log_prob,
            "losses/actor_grad_norm": actor.grad_norm,
        } | self.actor_step.metrics()

    # ----------------------------------------------------------------------------- state
    def optimizers(self) -> dict[str, Stateful]:
        return super().optimizers() | {"temperature": self.temperature_optimizer}

