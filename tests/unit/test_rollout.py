import pytest
import torch

from mtrl.rollout import RolloutBuffer, RolloutCollector, RolloutSample, gae

T, E, OBS, ACT = 3, 2, 5, 2


# ------------------------------------------------------------------------------------- GAE
def test_gae_matches_a_hand_computed_example_with_truncation_and_termination():
    # step 1 is truncated (bootstrap from its real final observation, value 10), step 3 terminates
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    values = torch.tensor([0.5, 1.0, 1.5, 2.0])
    next_values = torch.tensor([1.0, 10.0, 2.0, 7.0])  # 7.0 follows a termination and must be ignored
    terminated = torch.tensor([0.0, 0.0, 0.0, 1.0])
    ended = torch.tensor([0.0, 1.0, 0.0, 1.0])
    advantages, returns = gae(rewards, values, next_values, terminated, ended, gamma=0.9, lam=0.8)
    # deltas: 1 + .9*1 - .5 = 1.4 ; 2 + .9*10 - 1 = 10 ; 3 + .9*2 - 1.5 = 3.3 ; 4 - 2 = 2
    # A3 = 2 ; A2 = 3.3 + .72*2 = 4.74 ; A1 = 10 (episode ended) ; A0 = 1.4 + .72*10 = 8.6
    assert torch.allclose(advantages, torch.tensor([8.6, 10.0, 4.74, 2.0]))
    assert torch.allclose(returns, torch.tensor([9.1, 11.0, 6.24, 4.0]))


def test_gae_with_lambda_one_is_the_bootstrapped_discounted_return():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(6, T, E, generator=g), torch.randn(6, T, E, generator=g)
    last = torch.randn(T, E, generator=g)
    next_values = torch.cat([values[1:], last[None]])
    zeros = torch.zeros(6, T, E)
    _, returns = gae(rewards, values, next_values, zeros, zeros, gamma=0.9, lam=1.0)
    expected = last
    for t in reversed(range(6)):
        expected = rewards[t] + 0.9 * expected
    assert torch.allclose(returns[0], expected, atol=1e-5)


# ------------------------------------------------------------------------------------- buffer
def test_rollout_bootstraps_from_the_next_value_the_final_value_or_the_last_value():
    buffer = RolloutBuffer(3, 1, 1, OBS, ACT)
    for step, (value, final, ended) in enumerate([(1.0, 0.0, 0.0), (2.0, 20.0, 1.0), (3.0, 30.0, 0.0)]):
        full = lambda x: torch.full((1, 1), x)  # noqa: E731
        buffer.add(
            obs=torch.full((1, 1, OBS), float(step)),
            action=torch.zeros(1, 1, ACT),
            log_prob=full(0.0),
            value=full(value),
            reward=full(0.0),
            terminated=full(0.0),
            ended=full(ended),
            final_value=full(final),
        )
    rollout = buffer.finish(torch.full((1, 1), 4.0))
    assert rollout.next_value.flatten().tolist() == [2.0, 20.0, 4.0]
    assert rollout.shape == (3, 1, 1) and rollout.obs[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert buffer.position == 0


# ------------------------------------------------------------------------------------- collector
class CountingPolicy:
    """A policy whose value is the first observation number plus 100; records what the critic saw."""

    def __init__(self) -> None:
        self.valued: list[torch.Tensor] = []

    def explore(self, obs: torch.Tensor) -> RolloutSample:
        action = obs[..., :ACT] * 3.0  # [T, E, A]
        return RolloutSample(action.clamp(-1.0, 1.0), action, torch.zeros(T, E), self._value(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        self.valued.append(obs)
        return self._value(obs)

    @staticmethod
    def _value(obs: torch.Tensor) -> torch.Tensor:
        return obs[..., 0] + 100.0  # [T, E]


def _collect(collector: RolloutCollector, steps: list[int], truncate_at: int) -> None:
    zeros = torch.zeros(T, E)
    for step in steps:
        collector.act(torch.full((T, E, OBS), float(step)))
        truncated = torch.full((T, E), float(step == truncate_at))
        collector.record(reward=zeros + step, terminated=zeros, truncated=truncated, final_obs=torch.full((T, E, OBS), 10.0 * step))


def test_collector_stores_the_raw_sample_returns_the_clipped_one_and_bootstraps_where_episodes_end():
    policy = CountingPolicy()
    collector = RolloutCollector(policy, RolloutBuffer(3, T, E, OBS, ACT))
    env_action = collector.act(torch.full((T, E, OBS), 0.5))
    assert torch.equal(env_action, torch.ones(T, E, ACT))  # 1.5 clipped
    collector.record(torch.zeros(T, E), torch.zeros(T, E), torch.zeros(T, E), torch.zeros(T, E, OBS))
    assert policy.valued == []  # no episode ended: the critic is not run on the final observations
    _collect(collector, [1, 2], truncate_at=1)
    assert collector.full
    rollout = collector.finish(torch.full((T, E, OBS), 7.0))
    assert rollout.action[0].eq(1.5).all()  # the raw sample, before clipping
    assert rollout.ended[:, 0, 0].tolist() == [0.0, 1.0, 0.0] and rollout.terminated.eq(0).all()
    # step 0: V(obs of step 1); step 1 ended: V(its final obs, 10); step 2: V(next obs after the rollout, 7)
    assert rollout.next_value[:, 0, 0].tolist() == [101.0, 110.0, 107.0]
    assert not collector.full


def test_collector_refuses_act_twice_and_record_without_act():
    collector = RolloutCollector(CountingPolicy(), RolloutBuffer(2, T, E, OBS, ACT))
    with pytest.raises(RuntimeError, match="record\\(\\) without act\\(\\)"):
        collector.record(torch.zeros(T, E), torch.zeros(T, E), torch.zeros(T, E), torch.zeros(T, E, OBS))
    collector.act(torch.zeros(T, E, OBS))
    with pytest.raises(RuntimeError, match="act\\(\\) twice"):
        collector.act(torch.zeros(T, E, OBS))


def test_collector_state_round_trip_continues_a_partly_filled_rollout():
    a = RolloutCollector(CountingPolicy(), RolloutBuffer(4, T, E, OBS, ACT))
    _collect(a, [0, 1], truncate_at=1)
    b = RolloutCollector(CountingPolicy(), RolloutBuffer(4, T, E, OBS, ACT))
    b.load_state_dict(a.state_dict())
    assert b.state_dict()["position"] == 2
    for collector in (a, b):
        _collect(collector, [2, 3], truncate_at=3)
    ra, rb = (c.finish(torch.zeros(T, E, OBS)) for c in (a, b))
    assert all(torch.equal(x, y) for x, y in zip(ra.__dict__.values(), rb.__dict__.values()))
