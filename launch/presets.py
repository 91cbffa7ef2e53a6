"""The presets: named training configs (``mtrl-train mt10 --seed 3``), not copied command lines.

:data:`PRESETS` maps each name to its one-line description and its config (:mod:`launch.config`);
the config's class is the preset's algorithm. The papers' presets are built by factories whose
docstrings cite the paper, say where each value comes from and list every departure from it.
"""

from __future__ import annotations

import dataclasses

from agents.ppo import PPOConfig
from agents.sac import SACConfig
from envs import EnvConfig, task_names
from launch.config import BalancerConfig, PPOTrainConfig, SACTrainConfig
from launch.replay_loop import ReplayLoopConfig
from mtrl.encoders import EncoderConfig
from mtrl.optim import OptimizerConfig


def _paper(benchmark: str, balancer: BalancerConfig, steps_per_task: int = 2_000_000) -> SACTrainConfig:
    """The CAGrad paper's multi-task SAC settings on the Meta-World v3 protocol."""
    num_tasks = len(task_names(benchmark))
    return SACTrainConfig(
        env=EnvConfig(benchmark=benchmark),
        replay=ReplayLoopConfig(warmup_steps=1500 * num_tasks),
        balancer=balancer,
        total_steps=steps_per_task * num_tasks,
        eval_every=50_000 * num_tasks,
        checkpoint_every=50_000 * num_tasks,
        log_every=1_000 * num_tasks,
    )


def _shared_network(config: SACTrainConfig) -> SACTrainConfig:
    """``config`` with the CAGrad paper's MT-SAC networks: one shared network, no task id, one temperature."""
    return dataclasses.replace(
        config,
        env=dataclasses.replace(config.env, one_hot=False),
        sac=dataclasses.replace(config.sac, per_task_heads=False, per_task_temperature=False),
    )


def _meta_world_plus_ppo(benchmark: str, balancer: BalancerConfig, steps_per_task: int = 2_000_000) -> PPOTrainConfig:
    """Meta-World+'s multi-task PPO settings (McLean et al. 2025; :class:`PPOConfig`'s defaults) on Meta-World v3.

    As their ``metaworld-algorithms`` MT10 PPO: one environment per task, rollouts of 10,000 steps
    per task (20 whole 500-step episodes, so every rollout end is an episode end and may be a
    checkpoint), 16 epochs of 32 minibatches, 3x400 actor and critic, Adam 3e-4, gamma 0.99, GAE
    lambda 0.97, clip 0.2, entropy 5e-3, gradient norm 1.0, no KL stop, 2M steps per task.
    Evaluation and checkpoints every 5 rollouts, logs after every rollout.
    """
    num_tasks = len(task_names(benchmark))
    return PPOTrainConfig(
        env=EnvConfig(benchmark=benchmark),
        ppo=PPOConfig(),
        balancer=balancer,
        total_steps=steps_per_task * num_tasks,
        eval_every=50_000 * num_tasks,
        checkpoint_every=50_000 * num_tasks,
        log_every=10_000 * num_tasks,
    )


def mt_moore(benchmark: str, num_experts: int, buffer_capacity_per_task: int) -> SACTrainConfig:
    """MOORE's multi-task SAC: Hendawy, Peters & D'Eramo, "Multi-Task Reinforcement Learning with Mixture
    of Orthogonal Experts", ICLR 2024, on the Meta-World v3 protocol of :func:`_paper`.

    Their settings (``run/metaworld/run_metaworld_mt{10,50}_mhsac_mt_moore.sh`` and ``moore/utils/argparser.py``
    of AhmedMagdyHendawy/MOORE): actor and critics each ``num_experts`` experts of 3x400 (4 on MT10, 6 on
    MT50), orthonormalised and mixed per task, per-task output heads (``MixtureMH``); 128 transitions per
    task per update, one update per step of every task's environment; ``buffer_capacity_per_task``
    transitions of replay per task (1M on MT10, 100k on MT50); 1,500 random transitions per task before
    learning; Adam 3e-4 for actor and critics, 1e-4 for the per-task temperatures, which start at 1;
    gamma 0.99, tau 0.005; the mean of the task losses (``mean``).

    Departures:

    - Episodes of 500 steps, 2M steps per task, Meta-World v3 (the protocol of every preset here, as
      Meta-World+ re-ran MOORE); the paper's runs have 150-step episodes on Meta-World v2 (20 epochs of
      100,000 steps of its vectorised environment).
    - The actor starts learning with the critics, after the warm-up; MOORE's starts after 3,000
      transitions per task (``warmup_transitions``), the critics after 1,500.
    - The policy's log standard deviation is squashed by tanh into mtrl's [-5, 2]; MOORE clamps it to
      [-10, 2]. With a tanh squash into [-10, 2] the first policies' standard deviation would be about
      e^-4 instead of about 1, so mtrl's bounds are kept.
    - The network's own deviations (task weights as per-task parameters, modified Gram-Schmidt,
      ``nn.Linear`` initialisation): :mod:`mtrl.encoders.moore`.
    - 1M transitions per task on MT10 keep about 4 GB of replay on the device and in every checkpoint.
    """
    config = _paper(benchmark, BalancerConfig("mean"))
    return dataclasses.replace(
        config,
        sac=dataclasses.replace(
            config.sac,
            encoder=EncoderConfig(name="moore", num_experts=num_experts),
            temperature_optimizer=OptimizerConfig(lr=1e-4),
        ),
        replay=dataclasses.replace(config.replay, batch_size_per_task=128, buffer_capacity_per_task=buffer_capacity_per_task),
    )


def mt10_soft_modularization() -> SACTrainConfig:
    """Soft Modularization: Yang, Xu, Wu & Wang, "Multi-Task Reinforcement Learning with Soft
    Modularization", NeurIPS 2020, on MT10 with the Meta-World v3 protocol of :func:`_paper`.

    Their MT10 settings (``meta_config/mt10/modular_2_2_2_256_reweight.json`` of RchalYang/Soft-Module):
    a state embedding of 400, 400 (D = 400), 2 layers of 2 modules of width 256, one output layer
    shared by the tasks (``per_task_heads false``); batch 1280 (128 per task), one update per step of
    every task's environment; 1M transitions of replay (100k per task); Adam 3e-4 for actor and
    critics; per-task temperatures; gamma 0.99, tau 0.005; the mean of the task losses.

    Departures:

    - Episodes of 500 steps, 2M steps per task, Meta-World v3; the paper's runs have 200-step
      episodes (7,500 epochs of 200 steps per task: 1.5M) on Meta-World v1.
    - No re-weighting of the task losses by the temperatures (``temp_reweight``: weights
      ``softmax(-log alpha)``): mtrl has no loss weights in SAC; ``--balancer.name`` chooses how the
      tasks' gradients are combined instead.
    - Warm-up: 4,000 random steps per task (their 20 ``pretrain_epochs`` of 200 steps); their
      learning also waits for 10,000 transitions in the pool (``min_pool``), counted differently.
    - Log standard deviation bounds: mtrl's [-5, 2] (not taken from the paper's code).
    - The routing network's own deviations (no gating MLP on the embedding, the paper's equations):
      :mod:`mtrl.encoders.soft_modularization`.
    """
    config = _paper("MT10", BalancerConfig("mean"))
    encoder = EncoderConfig(name="softmod", num_modules=2, module_layers=2, module_width=256)
    return dataclasses.replace(
        config,
        sac=dataclasses.replace(config.sac, hidden_dims=(400, 400), encoder=encoder, per_task_heads=False),
        replay=dataclasses.replace(config.replay, warmup_steps=4_000 * 10, batch_size_per_task=128, buffer_capacity_per_task=100_000),
    )


def mt10_paco() -> SACTrainConfig:
    """PaCo: Sun, Zhang, Xu & Tomizuka, "PaCo: Parameter-Compositional Multi-Task Reinforcement
    Learning", NeurIPS 2022, on MT10 with the Meta-World v3 protocol of :func:`_paper`.

    Their MT10 settings (``paco/examples/metaworld_mt10_paco_conf.py`` of TToTMooN/paco-mtrl): K = 5
    parameter sets composing actor and critics, output layers included; batch 1280 (128 per task),
    one update per environment step; 1,500 random transitions per task before learning; 1M
    transitions of replay (per environment of theirs: 1M per task here); Adam 3e-4 for actor and
    critics, 1e-4 for the temperatures; gamma 0.99, tau 0.005; separate task losses averaged (``mean``).
    Hidden sizes 3x400 as in Meta-World+'s PaCo (their ``metaworld_conf.fc_hidden_layers`` was not read).

    Departures:

    - Episodes of 500 steps, 2M steps per task, Meta-World v3; the paper trains 5M steps per task.
    - No masking and reset of a task whose loss exceeds 3,000 (``mask_extreme_task``,
      ``reset_task_while_extreme``): mtrl has no such reset (:mod:`mtrl.encoders.paco`).
    - The temperatures are not clipped to ``log alpha`` in [-10, 0].
    - Log standard deviation: squashed into mtrl's [-5, 2]; PaCo clips it to [-10, 2] (see
      :func:`mt_moore` for why the squash keeps mtrl's bounds).
    - 1M transitions per task keep about 4 GB of replay on the device and in every checkpoint.
    """
    config = _paper("MT10", BalancerConfig("mean"))
    return dataclasses.replace(
        config,
        sac=dataclasses.replace(
            config.sac, encoder=EncoderConfig(name="paco", num_parameter_sets=5), temperature_optimizer=OptimizerConfig(lr=1e-4)
        ),
        replay=dataclasses.replace(config.replay, batch_size_per_task=128, buffer_capacity_per_task=1_000_000),
    )


def mt50_brc() -> SACTrainConfig:
    """BRC on MT50: Nauman, Cygan, Sferrazza, Kumar & Abbeel, "Bigger, Regularized, Categorical:
    High-Capacity Value Functions are Efficient Multi-Task Learners", arXiv:2505.23150, 2025, with the
    Meta-World v3 MT50 protocol of :func:`_paper`.

    Their settings (``train.py`` and ``jaxrl/agent/brc_learner.py`` of naumix/BiggerRegularizedCategorical):
    twin BroNet critics of width 4096 with 2 residual blocks, a categorical value of 101 atoms on
    [-10, 10] trained by cross-entropy, per-task reward normalisation to that support; an actor
    reading the observation and a learned task embedding of 32 entries, one output layer for all
    tasks, log standard deviation squashed into [-10, 2]; AdamW 3e-4 (optax's weight decay 1e-4)
    for actor and critics; one temperature, starting at 0.1, Adam 3e-4 with beta1 = 0.5; gamma
    0.99, tau 0.005; 2 updates per step of every task's environment on batches of 1024 transitions;
    5,000 random steps of every environment before learning; the mean of the task losses (with no
    per-task gradients formed: ``mean`` without statistics, since 50 per-task gradients of the
    4096-wide critics are about 27 GB; ``--balancer.name cagrad`` forms them).

    Departures:

    - The critics take the task from the observation's one-hot id, not from BRC's normalised task
      embedding, and have one output layer for all tasks (:mod:`agents.critics`).
    - The actor is an MLP of 3x256 (BRC's BroNet actor of width 256 and one residual block has the
      same three layers, with LayerNorms and a skip connection).
    - Batches hold 20 transitions of every task (1,000), where BRC draws 1024 uniformly over the tasks.
    - Replay: 100k transitions per task (the MT50 protocol here); BRC keeps the whole run, which on
      MT50 would be about 37 GB on the device and in every checkpoint.
    - Target entropy ``-|A|`` (mtrl's SAC), where BRC uses ``-|A| / 2``.
    - Weight decay on weight matrices only (mtrl's rule, :mod:`mtrl.optim`); optax's AdamW decays every parameter.
    - 2M steps per task with 500-step episodes (Meta-World v3 protocol); BRC's ``train.py`` runs 1M steps.
    """
    config = _paper("MT50", BalancerConfig("mean", statistics=False))
    adamw = OptimizerConfig(name="adamw", lr=3e-4, weight_decay=1e-4)
    sac = dataclasses.replace(
        config.sac,
        hidden_dims=(256, 256, 256),
        per_task_heads=False,
        encoder=EncoderConfig(task_conditioning="embedding", task_embedding_dim=32),
        per_task_temperature=False,
        init_temperature=0.1,
        log_std_min=-10.0,
        actor_optimizer=adamw,
        critic_optimizer=adamw,
        temperature_optimizer=OptimizerConfig(lr=3e-4, betas=(0.5, 0.999)),
        critic="brc",
        critic_width=4096,
        critic_blocks=2,
        num_bins=101,
        v_min=-10.0,
        v_max=10.0,
        reward_normalization="per-task",
    )
    replay = ReplayLoopConfig(warmup_steps=5_000 * 50, updates_per_step=2.0, batch_size_per_task=20, buffer_capacity_per_task=100_000)
    return dataclasses.replace(config, sac=sac, replay=replay)


def mt10_mhsac_wide(width: int = 1024) -> SACTrainConfig:
    """A wide multi-head MT-SAC: McLean, Chatzaroulas, Terry, Woungang, Farsad & Castro, "Multi-Task
    Reinforcement Learning Enables Parameter Scaling", Reinforcement Learning Journal (RLC) 2025, on
    MT10 with the Meta-World v3 protocol of :func:`_paper`.

    Their baseline is Meta-World+'s MTMHSAC (``metaworld_algorithms``: ``MTSACConfig`` with
    ``MultiHeadConfig``): 3 hidden layers, per-task heads, per-task temperatures starting at 1,
    batch 1280 (128 per task), one update per step of every task's environment, 1M transitions of
    replay (100k per task), 4,000 random steps before learning (``warmstart_steps``, read as
    environment steps in total, the unit of its ``total_steps``), Adam 3e-4 with epsilon 1e-5 for
    every network, gamma 0.99, tau 0.005, the mean gradient; the paper scales its width, the
    critic's above all.

    Departures:

    - One width for actor and critics: ``sac.hidden_dims`` sizes both (a critic wider than the actor
      needs a second width mtrl's config does not have), so ``width`` (1024) widens both. 1024 is
      mtrl's choice, not a width taken from the paper.
    - No task-loss weights (``use_task_weights``: ``softmax(-log alpha)``) and no clipping of the Q
      values to +-5000: mtrl's SAC has neither.
    - Log standard deviation squashed into mtrl's [-5, 2]; Meta-World+ clips it to [-20, 2] (see
      :func:`mt_moore` for why the squash keeps mtrl's bounds).
    """
    config = _paper("MT10", BalancerConfig("mean"))
    adam = OptimizerConfig(lr=3e-4, eps=1e-5)
    sac = dataclasses.replace(
        config.sac,
        hidden_dims=(width, width, width),
        actor_optimizer=adam,
        critic_optimizer=adam,
        temperature_optimizer=adam,
    )
    replay = dataclasses.replace(config.replay, warmup_steps=4_000, batch_size_per_task=128, buffer_capacity_per_task=100_000)
    return dataclasses.replace(config, sac=sac, replay=replay)


def mt10_ppo_popart() -> PPOTrainConfig:
    """Multi-task PPO with per-task value normalisation and a LayerNorm critic on MT10: Meta-World+'s PPO
    settings (McLean et al., "Meta-World+: An Improved, Standardized, RL Benchmark", 2025; :func:`_meta_world_plus_ppo`)
    with per-task PopArt (Hessel, Soyer, Espeholt, Czarnecki, Schmitt & van Hasselt, "Multi-task Deep
    Reinforcement Learning with PopArt", AAAI 2019) and a LayerNorm in every hidden layer of the critic.

    Departures:

    - Meta-World+'s PPO has neither PopArt nor LayerNorm: this preset adds both, the combination
      that multi-task PPO results rely on; everything else is :func:`_meta_world_plus_ppo`'s
      (its own departures from Meta-World+: :mod:`agents.ppo`).
    - PopArt's statistics move once per rollout with step size 0.1 (``ppo.popart_beta``), not after
      every update with the paper's 3e-4 (:mod:`mtrl.popart`).
    """
    config = _meta_world_plus_ppo("MT10", BalancerConfig("mean"))
    return dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, critic_layer_norm=True, value_normalization="popart"))


QUICKSTART_TASKS = "reach-v3,drawer-close-v3,window-close-v3"
"""Three easy MT10 tasks: a free-space reach and two contact tasks, so the balancer has different gradients to combine."""

PRESETS: dict[str, tuple[str, SACTrainConfig | PPOTrainConfig]] = {
    "smoke": (
        "A few-minute MT10 run on CPU: tiny networks, short episodes, CAGrad (c=0.5).",
        SACTrainConfig(
            env=EnvConfig(benchmark="MT10", max_episode_steps=100),
            sac=SACConfig(hidden_dims=(64, 64)),
            replay=ReplayLoopConfig(warmup_steps=1_000, batch_size_per_task=32, buffer_capacity_per_task=1_000),
            balancer=BalancerConfig(name="cagrad", c=0.5),
            total_steps=4_000,
            eval_every=0,
            final_eval_episodes=1,
            checkpoint_every=2_000,
            log_every=500,
        ),
    ),
    "mt10": ("CAGrad paper, MT10: CAGrad c=0.9, 3x400, 2M steps per task.", _paper("MT10", BalancerConfig("cagrad", c=0.9))),
    "mt10-fast": (
        "CAGrad paper, MT10: CAGrad-Fast c=0.9 with 4 sampled tasks.",
        _paper("MT10", BalancerConfig("cagrad_fast", c=0.9, num_sampled=4)),
    ),
    "mt50": ("CAGrad paper, MT50: CAGrad c=0.5, 3x400, 2M steps per task.", _paper("MT50", BalancerConfig("cagrad", c=0.5))),
    "mt50-fast": (
        "CAGrad paper, MT50: CAGrad-Fast c=0.5 with 8 sampled tasks.",
        _paper("MT50", BalancerConfig("cagrad_fast", c=0.5, num_sampled=8)),
    ),
    "mt10-mean": ("MT10 with the plain mean gradient (the multi-task SAC baseline).", _paper("MT10", BalancerConfig("mean"))),
    "mt10-cagrad-paper": (
        "The CAGrad paper's exact MT-SAC on MT10: one shared network, no task id, one temperature.",
        _shared_network(_paper("MT10", BalancerConfig("cagrad", c=0.9))),
    ),
    "ppo-smoke": (
        "A one-minute MT10 PPO run on CPU: tiny networks, 100-step episodes, one episode per rollout, CAGrad (c=0.5).",
        PPOTrainConfig(
            env=EnvConfig(benchmark="MT10", max_episode_steps=100),
            ppo=PPOConfig(hidden_dims=(64, 64), rollout_steps=100, epochs=4, minibatches=4),
            balancer=BalancerConfig(name="cagrad", c=0.5),
            total_steps=20_000,
            eval_every=0,
            final_eval_episodes=1,
            checkpoint_every=10_000,
            log_every=2_000,
        ),
    ),
    "quickstart": (
        "The first run to try: multi-task PPO on three easy MT10 tasks (reach, drawer-close, window-close), "
        "2x256 networks, 4 environments per task in two worker processes, CAGrad (c=0.5); minutes on a CPU, and it learns.",
        PPOTrainConfig(
            env=EnvConfig(benchmark=QUICKSTART_TASKS, envs_per_task=4, num_workers=2),
            ppo=PPOConfig(hidden_dims=(256, 256), rollout_steps=500, epochs=10, minibatches=16),
            balancer=BalancerConfig(name="cagrad", c=0.5),
            total_steps=114_000,
            eval_every=18_000,
            eval_episodes=5,
            final_eval_episodes=20,
            checkpoint_every=36_000,
            log_every=6_000,
            torch_threads=1,
        ),
    ),
    "mt10-ppo": (
        "Meta-World+ multi-task PPO settings on MT10 (3x400, 10k-step rollouts per task, 16x32 minibatches), "
        "balanced by CAGrad c=0.9 (the CAGrad paper's MT10 value); --balancer.name mean is Meta-World+'s MT-PPO.",
        _meta_world_plus_ppo("MT10", BalancerConfig("cagrad", c=0.9)),
    ),
    "mt50-ppo": (
        "Meta-World+ multi-task PPO settings on MT50, 2M steps per task, balanced by CAGrad c=0.5 "
        "(the CAGrad paper's MT50 value); --balancer.name mean is Meta-World+'s MT-PPO.",
        _meta_world_plus_ppo("MT50", BalancerConfig("cagrad", c=0.5)),
    ),
    "mt10-moore": (
        "MOORE (Hendawy et al., ICLR 2024) on MT10: 4 orthogonal experts of 3x400 in actor and critics, per-task heads, mean gradient.",
        mt_moore("MT10", num_experts=4, buffer_capacity_per_task=1_000_000),
    ),
    "mt50-moore": (
        "MOORE (Hendawy et al., ICLR 2024) on MT50: 6 orthogonal experts of 3x400 in actor and critics, per-task heads, mean gradient.",
        mt_moore("MT50", num_experts=6, buffer_capacity_per_task=100_000),
    ),
    "mt10-sm": (
        "Soft Modularization (Yang et al., NeurIPS 2020) on MT10: 2 layers of 2 routed modules of 256, "
        "one shared output layer, mean gradient.",
        mt10_soft_modularization(),
    ),
    "mt10-paco": (
        "PaCo (Sun et al., NeurIPS 2022) on MT10: 3x400 networks composed from 5 parameter sets per task, mean gradient.",
        mt10_paco(),
    ),
    "mt50-brc": (
        "BRC (Nauman et al. 2025) on MT50: 4096-wide categorical BroNet critics, task embeddings, per-task reward "
        "normalisation, 2 updates per step, mean gradient.",
        mt50_brc(),
    ),
    "mt10-mhsac-wide": (
        "Wide multi-head MT-SAC (McLean et al., RLJ 2025) on MT10: 3x1024 actor and critics, per-task heads, mean gradient.",
        mt10_mhsac_wide(),
    ),
    "mt10-ppo-popart": (
        "Meta-World+ multi-task PPO on MT10 with per-task PopArt value normalisation and a LayerNorm critic, mean gradient.",
        mt10_ppo_popart(),
    ),
}
