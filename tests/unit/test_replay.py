import pytest
import torch

from mtrl.replay import MultiTaskReplay


def _step(value: float, tasks: int = 3, per_task: int = 2, obs_dim: int = 4, action_dim: int = 2):
    """One vector step whose every entry encodes (task, env, value) so rows can be traced."""
    task = torch.arange(tasks, dtype=torch.float32)[:, None]  # [T, 1]
    env = torch.arange(per_task, dtype=torch.float32)[None, :]  # [1, E]
    tag = 1000 * task + 10 * env + value  # [T, E]
    return (
        tag[..., None].expand(tasks, per_task, obs_dim),
        tag[..., None].expand(tasks, per_task, action_dim),
        tag,
        tag[..., None].expand(tasks, per_task, obs_dim) + 0.5,
        (tag % 2 == 0).float(),
    )


def test_add_and_sample_are_task_grouped():
    replay = MultiTaskReplay(num_tasks=3, capacity=8, obs_dim=4, action_dim=2)
    for value in range(3):
        replay.add(*_step(value))
    assert len(replay) == 6
    batch = replay.sample(16, generator=torch.Generator().manual_seed(0))
    assert batch.obs.shape == (3, 16, 4) and batch.action.shape == (3, 16, 2)
    assert batch.reward.shape == (3, 16) and batch.done.shape == (3, 16)
    # every sampled row belongs to its own task, and fields of one transition stay together
    task_of_row = torch.div(batch.reward, 1000, rounding_mode="floor")
    assert torch.equal(task_of_row, torch.arange(3.0)[:, None].expand(3, 16))
    assert torch.equal(batch.obs[..., 0], batch.reward)
    assert torch.equal(batch.next_obs[..., 0], batch.reward + 0.5)
    assert torch.equal(batch.done, (batch.reward % 2 == 0).float())


def test_ring_wraps_around_and_keeps_the_newest():
    replay = MultiTaskReplay(num_tasks=3, capacity=5, obs_dim=4, action_dim=2)
    for value in range(4):  # 8 transitions per task into a ring of 5
        replay.add(*_step(value))
    assert len(replay) == 5 and replay.position == 3
    stored = replay.storage["reward"][0].sort().values
    # the oldest three (value 0 env 0/1, value 1 env 0) were overwritten
    assert torch.equal(stored, torch.tensor([1.0, 11.0, 2.0, 12.0, 3.0, 13.0]).sort().values[1:])


def test_sampling_is_seeded_and_state_dict_round_trips():
    replay = MultiTaskReplay(num_tasks=3, capacity=6, obs_dim=4, action_dim=2)
    for value in range(2):
        replay.add(*_step(value))
    copy = MultiTaskReplay(num_tasks=3, capacity=6, obs_dim=4, action_dim=2)
    copy.load_state_dict(replay.state_dict())
    a = replay.sample(7, generator=torch.Generator().manual_seed(3))
    b = copy.sample(7, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("obs", "action", "reward", "next_obs", "done"))
    replay.add(*_step(5))
    copy.add(*_step(5))
    assert torch.equal(replay.storage["obs"], copy.storage["obs"]) and replay.position == copy.position


def test_errors():
    with pytest.raises(ValueError, match="capacity"):
        MultiTaskReplay(num_tasks=2, capacity=0, obs_dim=3, action_dim=1)
    replay = MultiTaskReplay(num_tasks=3, capacity=4, obs_dim=4, action_dim=2)
    with pytest.raises(RuntimeError, match="empty"):
        replay.sample(2)
    with pytest.raises(ValueError, match="num_tasks=3"):
        replay.add(*_step(0, tasks=2))
    other = MultiTaskReplay(num_tasks=3, capacity=5, obs_dim=4, action_dim=2)
    with pytest.raises(ValueError, match="capacity"):
        other.load_state_dict(replay.state_dict())
