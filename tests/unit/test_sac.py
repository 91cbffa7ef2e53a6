import dataclasses
import io

import numpy as np
import pytest
import torch
from torch.nn.functional import mse_loss

from agents.sac import MultiTaskSAC, SACConfig
from mtrl.balancers import BUILTIN_BALANCERS, Mean, make_balancer
from mtrl.gradients import balanced_backward
from mtrl.optim import OptimizerConfig
from mtrl.replay import TransitionBatch
from mtrl.schedules import ScheduleConfig

T, OBS, ACT, B = 3, 7, 2, 16
LOW, HIGH = -np.ones(ACT, dtype=np.float32), np.ones(ACT, dtype=np.float32)
SMALL = SACConfig(hidden_dims=(16, 16), compile_gradients=False)  # compiling: test_compiled_update_equals_eager


def _agent(config: SACConfig = SMALL, critic=None, actor=None, seed: int = 0, **kwargs) -> MultiTaskSAC:
    torch.manual_seed(seed)
    return MultiTaskSAC(OBS, LOW, HIGH, T, config, {"critic": critic or Mean(T), "actor": actor or Mean(T)}, seed=seed, **kwargs)


def _batch(seed: int = 0) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    return TransitionBatch(
        obs=torch.randn(T, B, OBS, generator=g),
        action=torch.rand(T, B, ACT, generator=g) * 2 - 1,
        reward=torch.randn(T, B, generator=g),
        next_obs=torch.randn(T, B, OBS, generator=g),
        done=(torch.rand(T, B, generator=g) < 0.1).float(),
    )


def test_shapes_of_acting_and_metrics():
    agent = _agent()
    assert agent.act(torch.randn(T, 4, OBS)).shape == (T, 4, ACT)
    metrics = agent.update(_batch())
    assert metrics["losses/qf_loss"].shape == (T,) and metrics["losses/actor_loss"].shape == (T,)
    assert metrics["losses/alpha"].shape == (T,) and metrics["balancer/critic/weights"].shape == (T,)
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_deterministic_action_is_tanh_of_mean():
    agent = _agent()
    obs = torch.randn(T, 2, OBS)
    mean, _ = agent.actor(obs)
    assert torch.equal(agent.act(obs, deterministic=True), torch.tanh(mean))


def test_a_head_only_changes_from_its_own_task_loss():
    a, b = _agent(seed=3), _agent(seed=3)
    batch = _batch()
    other = TransitionBatch(**{**batch.__dict__, "reward": batch.reward.clone()})
    other.reward[1] += 5.0  # only task 1's data differs
    a.update(batch)
    b.update(other)
    # compare gradients, not parameters: Adam's first step is lr * sign(grad) and can hide a difference
    for name in ("q1.head.weight", "q2.head.bias"):
        ga, gb = a.critic.get_parameter(name).grad, b.critic.get_parameter(name).grad
        assert torch.equal(ga[0], gb[0]) and torch.equal(ga[2], gb[2])  # tasks 0 and 2 untouched
        assert not torch.equal(ga[1], gb[1])
    assert not torch.equal(a.critic.q1.trunk[0].weight.grad, b.critic.q1.trunk[0].weight.grad)  # the trunk is shared


class Recording(Mean):
    """Mean that records the shape of every per-task gradient matrix it combines."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.seen: list[tuple[int, int]] = []

    def combine(self, grads, losses=None):
        self.seen.append(tuple(grads.shape))
        return super().combine(grads, losses)


def test_balancers_receive_shared_trunk_gradients_of_both_losses():
    critic, actor = Recording(T), Recording(T)
    agent = _agent(critic=critic, actor=actor)
    agent.update(_batch())
    critic_trunk = sum(p.numel() for p in agent.critic.shared_parameters().values())
    actor_trunk = sum(p.numel() for p in agent.actor.shared_parameters().values())
    assert critic.seen == [(T, critic_trunk)] and actor.seen == [(T, actor_trunk)]
    head = sum(p.numel() for p in agent.critic.task_parameters().values())
    assert head > 0 and critic_trunk + head == sum(p.numel() for p in agent.critic.parameters())


def test_shared_network_balances_every_parameter_and_one_temperature():
    critic = Recording(T)
    agent = _agent(SACConfig(hidden_dims=(16,), per_task_heads=False, per_task_temperature=False, compile_gradients=False), critic=critic)
    assert agent.log_alpha.shape == (1,) and agent.alpha().shape == (T,)
    agent.update(_batch())
    assert critic.seen == [(T, sum(p.numel() for p in agent.critic.parameters()))]


def test_mean_balancer_gives_the_plain_mean_loss_gradient_to_the_trunk():
    agent = _agent()
    batch, target = _batch(), torch.randn(T, B)

    def task_loss(critic, obs, action, y):
        q1, q2 = critic(obs, action)
        return mse_loss(q1, y) + mse_loss(q2, y)

    shared = agent.critic.shared_parameters()
    balanced_backward(agent.critic, task_loss, (batch.obs, batch.action, target), Mean(T))
    balanced = {k: v.grad.clone() for k, v in shared.items()}
    agent.critic.zero_grad()
    q1, q2 = agent.critic(batch.obs, batch.action)  # [T, B] each
    (mse_loss(q1, target) + mse_loss(q2, target)).backward()
    for name, param in shared.items():
        assert torch.allclose(balanced[name], param.grad, atol=1e-6), name


@pytest.mark.parametrize("name", sorted(BUILTIN_BALANCERS))
def test_every_balancer_plugs_in_unchanged(name):
    kwargs = {"num_sampled": 2} if name == "cagrad_fast" else {}
    agent = _agent(critic=make_balancer(name, T, **kwargs), actor=make_balancer(name, T, **kwargs))
    for seed in range(2):
        metrics = agent.update(_batch(seed))
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_temperature_moves_toward_target_entropy():
    agent = _agent()
    start = agent.alpha().detach().clone()
    metrics = agent.update(_batch())
    entropy = metrics["losses/entropy"]  # [T]
    moved = agent.alpha().detach() - start
    # entropy below the target (-|A|) raises the temperature, above it lowers it
    assert torch.all(torch.sign(moved) == torch.sign(agent.target_entropy - entropy))


def test_training_state_round_trip_continues_identically():
    a = _agent(seed=1)
    a.update(_batch(0))
    saved = io.BytesIO()
    torch.save(a.training_state(), saved)  # as a checkpoint does: no tensor shared between a and b
    saved.seek(0)
    b = _agent(seed=2)
    b.load_training_state(torch.load(saved, weights_only=False))
    ma, mb = a.update(_batch(1)), b.update(_batch(1))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    "field,value", [("gamma", 1.5), ("tau", 0.0), ("hidden_dims", ()), ("log_std_max", -10.0)]
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SACConfig(**{field: value})


def test_shared_balancer_object_is_refused():
    shared = Mean(T)
    with pytest.raises(ValueError, match="separate balancer"):
        MultiTaskSAC(OBS, LOW, HIGH, T, SMALL, {"critic": shared, "actor": shared})


def test_a_missing_balancer_is_refused_in_one_line():
    with pytest.raises(ValueError, match="balancers must be keyed by critic, actor; got actor") as error:
        MultiTaskSAC(OBS, LOW, HIGH, T, SMALL, {"actor": Mean(T)})
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("low,high", [([-2.0, -1.0], [1.0, 1.0]), ([-1.0, -1.0], [1.0, 0.5]), ([0.0, 0.0], [1.0, 1.0])])
def test_an_action_box_other_than_minus_one_to_one_is_refused(low, high):
    with pytest.raises(ValueError, match=r"tanh policy acts in \[-1, 1\]; the action box is low=.*high=") as error:
        MultiTaskSAC(OBS, np.array(low), np.array(high), T, SMALL, {"critic": Mean(T), "actor": Mean(T)})
    assert len(str(error.value).splitlines()) == 1 and str(high) in str(error.value)


def test_optimizers_schedules_and_clipping_are_configured_per_network():
    config = dataclasses.replace(
        SMALL,
        critic_optimizer=OptimizerConfig(name="adamw", lr=1e-3, max_grad_norm=1e-3),
        actor_optimizer=OptimizerConfig(name="lion", lr=1e-4),
        schedule=ScheduleConfig(name="linear", warmup_updates=2),
    )
    agent = _agent(config, total_updates=10)
    critic_optimizer = agent.critic_step.optimizer.optimizer
    assert type(critic_optimizer).__name__ == "AdamW" and type(agent.actor_step.optimizer.optimizer).__name__ == "Lion"
    assert [g["group"] for g in critic_optimizer.param_groups] == ["decay", "no_decay"]
    metrics = agent.update(_batch())
    # the critic's balanced gradient was clipped after balancing; the reported norm is the one before
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in agent.critic.parameters()]))
    assert clipped <= 1e-3 * (1 + 1e-4) < metrics["losses/critic_grad_norm"]
    # warm-up of 2 updates: lr 0 at update 0, half the peak at update 1
    assert critic_optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    assert agent.temperature_optimizer.learning_rate == pytest.approx(3e-4)


def test_schedule_state_is_part_of_the_training_state():
    config = dataclasses.replace(SMALL, schedule=ScheduleConfig(name="warmup_cosine", warmup_updates=2))
    a = _agent(config, total_updates=8)
    for i in range(3):
        a.update(_batch(i))
    buffer = io.BytesIO()
    torch.save(a.training_state(), buffer)
    b = _agent(config, seed=1, total_updates=8)
    b.load_training_state(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for i in range(3, 6):
        ma, mb = a.update(_batch(i)), b.update(_batch(i))
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
    lr_a, lr_b = (agent.actor_step.optimizer.optimizer.param_groups[0]["lr"] for agent in (a, b))
    assert lr_a == lr_b < 3e-4


def test_training_state_holds_each_balanced_step_whole_and_the_modules():
    state = _agent(critic=make_balancer("pcgrad", T, seed=1)).training_state()
    assert state["modules"].keys() == _agent().state_dict().keys()
    assert not any("balancer" in key for key in state["modules"])
    for network in ("critic", "actor"):
        assert {f"{network}_optimizer", f"{network}_schedule", f"{network}_balancer"} <= state.keys()
    assert "temperature_optimizer" in state and "temperature_schedule" not in state


@pytest.mark.slow
def test_compiled_update_equals_eager():
    """The default compiled per-task gradients give the eager update (up to float rounding)."""
    compiled = dataclasses.replace(SMALL, compile_gradients=True)
    eager_agent = _agent(critic=make_balancer("cagrad", T), actor=make_balancer("cagrad", T))
    compiled_agent = _agent(compiled, critic=make_balancer("cagrad", T), actor=make_balancer("cagrad", T))
    for i in range(3):
        eager_metrics, compiled_metrics = eager_agent.update(_batch(i)), compiled_agent.update(_batch(i))
        for key, value in eager_metrics.items():
            torch.testing.assert_close(compiled_metrics[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for (name, eager), compiled_param in zip(eager_agent.state_dict().items(), compiled_agent.state_dict().values()):
        torch.testing.assert_close(compiled_param, eager, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="bf16 autocast needs a CUDA device"):
        _agent(SACConfig(hidden_dims=(16,), bf16=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mean", "cagrad"])
def test_bf16_training_steps_stay_finite_on_cuda(name):
    config = SACConfig(hidden_dims=(64, 64), bf16=True)
    agent = _agent(config, make_balancer(name, T), make_balancer(name, T), device="cuda")
    for i in range(20):
        batch = TransitionBatch(**{k: v.cuda() for k, v in vars(_batch(i)).items()})
        metrics = agent.update(batch)
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert agent.critic_step.balancer.last_weights.dtype == torch.float32
