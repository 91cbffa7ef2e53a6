"""SAC's critics (agents.critics): BRC's categorical twin critic and the LayerNorm MLP critic in the SAC update."""

from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
import pytest
import torch
from torch import nn

from agents.critics import CategoricalTwinCritic
from agents.sac import MultiTaskSAC, SACConfig, TwinCritic
from launch.train import main as train_main
from mtrl.balancers import BUILTIN_BALANCERS, Mean, make_balancer
from mtrl.distributions import squashed_gaussian
from mtrl.gradients import module_task_loss, per_task_gradients
from mtrl.replay import TransitionBatch

T, OBS, ACT, B, BINS = 3, 7, 2, 16, 11
LOW, HIGH = -np.ones(ACT, dtype=np.float32), np.ones(ACT, dtype=np.float32)
BRC = SACConfig(hidden_dims=(16, 16), compile_gradients=False, critic="brc", critic_width=16, num_bins=BINS, v_min=-3.0, v_max=3.0)
LAYER_NORM = SACConfig(hidden_dims=(16, 16), compile_gradients=False, critic_layer_norm=True)


def _agent(config: SACConfig = BRC, critic=None, actor=None, seed: int = 0) -> MultiTaskSAC:
    torch.manual_seed(seed)
    return MultiTaskSAC(OBS, LOW, HIGH, T, config, {"critic": critic or Mean(T), "actor": actor or Mean(T)}, seed=seed)


def _batch(seed: int = 0) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    return TransitionBatch(
        obs=torch.randn(T, B, OBS, generator=g),
        action=torch.rand(T, B, ACT, generator=g) * 2 - 1,
        reward=torch.randn(T, B, generator=g),
        next_obs=torch.randn(T, B, OBS, generator=g),
        done=(torch.rand(T, B, generator=g) < 0.2).float(),
    )


def test_the_brc_critic_is_two_bronets_with_a_categorical_head_per_task():
    agent = _agent()
    assert isinstance(agent.critic, CategoricalTwinCritic) and isinstance(agent.critic_target, CategoricalTwinCritic)
    logits1, logits2 = agent.critic(torch.randn(T, 5, OBS), torch.rand(T, 5, ACT))
    assert logits1.shape == logits2.shape == (T, 5, BINS)
    assert agent.critic.q1.output.head.weight.shape == (T, 16, BINS)
    assert len(agent.critic.q1.trunk.blocks) == 2
    assert not any(k.endswith("atoms") for k in agent.state_dict())  # the support comes from the config


def test_the_critic_loss_is_each_tasks_cross_entropy_to_the_projected_target_of_the_average_target_distribution():
    agent = _agent()
    reference = copy.deepcopy(agent)  # the same networks and noise generator before the update
    batch = _batch()
    metrics = agent.update(batch)
    noise = reference._noise(batch.next_obs)  # the critic's noise is drawn first
    with torch.no_grad():
        mean, log_std = reference.actor(batch.next_obs)
        next_action, next_log_prob = squashed_gaussian(mean, log_std, noise)
        logits1, logits2 = reference.critic_target(batch.next_obs, next_action)  # [T, B, K] each
        next_probs = (logits1.softmax(-1) + logits2.softmax(-1)) / 2
        alpha = reference.alpha()[:, None]
        atoms = reference.critic.support.atoms
        shifted = batch.reward[..., None] + 0.99 * (1 - batch.done)[..., None] * (atoms - (alpha * next_log_prob)[..., None])
        target = reference.critic.support.project(next_probs, shifted)  # [T, B, K]
        online1, online2 = reference.critic(batch.obs, batch.action)
        expected = sum(-(target * torch.log_softmax(o, -1)).sum(-1).mean(-1) for o in (online1, online2))  # [T]
    torch.testing.assert_close(metrics["losses/qf_loss"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["losses/qf1_values"], (online1.softmax(-1) * atoms).sum(-1).mean(-1), atol=1e-5, rtol=1e-5)


def test_the_actors_q_is_the_mean_of_the_average_distribution():
    critic = _agent().critic
    outputs = critic(torch.randn(T, 5, OBS), torch.rand(T, 5, ACT))
    q1, q2 = critic.q_values(outputs)
    torch.testing.assert_close(critic.actor_value(outputs), (q1 + q2) / 2, atol=1e-6, rtol=1e-6)
    assert (q1.abs() <= 3.0).all()  # inside the support


def test_bfloat16_logits_give_float32_targets_values_and_losses():
    critic = _agent().critic
    logits = tuple(torch.randn(T, 5, BINS).to(torch.bfloat16) for _ in range(2))  # what autocast gives on CUDA
    reward, continuation, penalty = torch.randn(T, 5), torch.full((T, 5), 0.99), torch.randn(T, 5).to(torch.bfloat16)
    target = critic.bellman_target(logits, reward, continuation, penalty)
    assert target.dtype == torch.float32 and torch.allclose(target.sum(-1), torch.ones(T, 5))
    assert critic.actor_value(logits).dtype == torch.float32 and critic.q_values(logits)[0].dtype == torch.float32
    assert critic.td_loss((logits[0][0], logits[1][0]), target[0]).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mean", "cagrad"])
def test_bf16_training_steps_with_the_brc_critic_and_normalised_rewards_stay_finite_on_cuda(name):
    config = dataclasses.replace(BRC, critic_width=64, bf16=True, reward_normalization="per-task")
    torch.manual_seed(0)
    agent = MultiTaskSAC(OBS, LOW, HIGH, T, config, {"critic": make_balancer(name, T), "actor": make_balancer(name, T)}, device="cuda")
    agent.take_in_episode_returns(np.array([30.0, 5.0, 1.0]), np.ones(T))
    for i in range(20):
        metrics = agent.update(TransitionBatch(**{k: v.cuda() for k, v in vars(_batch(i)).items()}))
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_per_task_gradients_of_the_critic_loss_equal_a_loop_of_per_task_backward_passes():
    critic = _agent().critic
    with torch.no_grad():
        for param in critic.parameters():
            param.add_(0.2 * torch.randn_like(param))
    obs, action = torch.randn(T, B, OBS), torch.rand(T, B, ACT) * 2 - 1
    target = torch.softmax(torch.randn(T, B, BINS), -1)
    loss = module_task_loss(critic, lambda forward, o, a, y: critic.td_loss(forward(o, a), y))
    shared, task = critic.shared_parameters(), critic.task_parameters()
    grads = per_task_gradients(loss, shared, task, (obs, action, target))
    outputs = critic(obs, action)
    for t in range(T):
        task_loss = critic.td_loss((outputs[0][t], outputs[1][t]), target[t])
        reference = torch.autograd.grad(task_loss, [*shared.values(), *task.values()], retain_graph=True)
        row = torch.cat([g.reshape(-1) for g in reference[: len(shared)]])
        torch.testing.assert_close(grads.shared[t], row, atol=1e-5, rtol=1e-4)
        for name, grad in zip(task, reference[len(shared) :]):
            torch.testing.assert_close(grads.task[name][t], grad[t], atol=1e-5, rtol=1e-4)
            assert (grad[[s for s in range(T) if s != t]] == 0).all()  # a head only sees its own task's loss


@pytest.mark.parametrize("config", [BRC, LAYER_NORM], ids=["brc", "layer-norm"])
@pytest.mark.parametrize("name", sorted(BUILTIN_BALANCERS))
def test_every_balancer_trains_the_new_critics(config, name):
    kwargs = {"num_sampled": 2} if name == "cagrad_fast" else {}
    agent = _agent(config, critic=make_balancer(name, T, **kwargs), actor=make_balancer(name, T, **kwargs))
    before = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    for seed in range(2):
        metrics = agent.update(_batch(seed))
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert metrics["losses/qf_loss"].shape == (T,) and (metrics["losses/qf_loss"] > 0).all()
    assert all(not torch.equal(before[k], v) for k, v in agent.critic.state_dict().items())


def test_a_brc_head_only_changes_from_its_own_task_loss():
    a, b = _agent(seed=3), _agent(seed=3)
    batch = _batch()
    other = TransitionBatch(**{**batch.__dict__, "reward": batch.reward.clone()})
    other.reward[1] += 1.0  # only task 1's data differs
    a.update(batch)
    b.update(other)
    for name in ("q1.output.head.weight", "q2.output.head.bias"):
        ga, gb = a.critic.get_parameter(name).grad, b.critic.get_parameter(name).grad
        assert torch.equal(ga[0], gb[0]) and torch.equal(ga[2], gb[2]) and not torch.equal(ga[1], gb[1])
    assert not torch.equal(a.critic.q1.trunk.input.weight.grad, b.critic.q1.trunk.input.weight.grad)


def test_the_layer_norm_is_in_the_mlp_critic_only_and_absent_by_default():
    agent = _agent(LAYER_NORM)
    assert isinstance(agent.critic, TwinCritic)
    assert sum(isinstance(m, nn.LayerNorm) for m in agent.critic.modules()) == 2 * 2  # two hidden layers per critic
    assert not any(isinstance(m, nn.LayerNorm) for m in agent.actor.modules())
    plain = _agent(dataclasses.replace(LAYER_NORM, critic_layer_norm=False))
    assert not any(isinstance(m, nn.LayerNorm) for m in plain.modules())
    assert [k for k in plain.state_dict() if "norm" in k or k.startswith("critic.q1.trunk.1")] == []


@pytest.mark.parametrize("config", [BRC, LAYER_NORM], ids=["brc", "layer-norm"])
def test_training_state_round_trip_continues_identically(config):
    a = _agent(config, seed=1)
    a.update(_batch(0))
    saved = io.BytesIO()
    torch.save(a.training_state(), saved)
    saved.seek(0)
    b = _agent(config, seed=2)
    b.load_training_state(torch.load(saved, weights_only=True))
    ma, mb = a.update(_batch(1)), b.update(_batch(1))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"critic": "cnn"}, r"^sac\.critic must be one of 'mlp', 'brc', got 'cnn'$"),
        ({"critic": "brc", "num_bins": 1}, r"^sac\.num_bins must be an integer >= 2, got 1$"),
        ({"critic": "brc", "v_min": 5.0, "v_max": 5.0}, r"^sac\.v_min must be < sac\.v_max, got v_min=5\.0, v_max=5\.0$"),
        ({"critic": "brc", "critic_width": 0}, r"^sac\.critic_width must be an integer >= 1, got 0$"),
        ({"critic": "brc", "critic_blocks": -1}, r"^sac\.critic_blocks must be an integer >= 1, got -1$"),
        ({"critic_width": 64}, r"^sac\.critic_width is an option of the brc critic, not of sac\.critic 'mlp'; it takes: --sac\.critic-layer-norm$"),
        ({"num_bins": 51}, r"^sac\.num_bins is an option of the brc critic"),
        ({"critic": "brc", "critic_layer_norm": True}, r"^sac\.critic_layer_norm is an option of the mlp critic, not of sac\.critic 'brc'"),
    ],
)
def test_bad_critic_options_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        SACConfig(**fields)


def test_the_command_line_refuses_a_bad_support_before_creating_anything(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:  # tyro's box for a value __post_init__ refuses
        train_main(["smoke", "--run-dir", str(run_dir), "--sac.critic", "brc", "--sac.v-min", "1", "--sac.v-max", "0"])
    assert exit_info.value.code == 2
    assert "sac.v_min must be < sac.v_max" in " ".join(capsys.readouterr().err.split()).replace("│", "")
    assert not run_dir.exists()


@pytest.mark.slow
def test_the_compiled_update_with_the_brc_critic_equals_the_eager_one():
    compiled = dataclasses.replace(BRC, update_graph="compiled")
    eager, whole = _agent(seed=4), _agent(compiled, seed=4)
    for seed in range(2):
        me, mc = eager.update(_batch(seed)), whole.update(_batch(seed))
    for key in me:
        torch.testing.assert_close(mc[key], me[key], atol=1e-4, rtol=1e-4)


def test_a_config_saved_before_the_critic_options_existed_loads_with_todays_critic():
    from launch.config import config_from_plain

    old_sac = {"hidden_dims": [400, 400, 400], "per_task_heads": True, "gamma": 0.99, "tau": 0.005}
    config = config_from_plain({"algo": "sac", "sac": old_sac})
    assert config.sac.critic == "mlp" and config.sac.critic_layer_norm is False
