"""Learning-rate schedules: validation, values at known updates, state that survives a checkpoint."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mtrl.optim import OptimizerConfig, build_optimizer
from mtrl.schedules import LRMultiplier, ScheduleConfig, build_scheduler


def lrs_over(schedule: ScheduleConfig, steps: int, total_updates: int | None = None, lr: float = 0.5) -> list[float]:
    """The learning rate of update 0, 1, ..., steps (one ``scheduler.step()`` after each)."""
    param = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = build_scheduler(optimizer, schedule, total_updates)
    lrs = []
    for _ in range(steps + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "cosine"}, r"schedule.name must be one of 'constant', 'warmup_cosine', 'linear', got 'cosine'"),
        ({"warmup_updates": -1}, r"schedule.warmup_updates must be an integer >= 0, got -1"),
        ({"warmup_updates": 2.5}, r"schedule.warmup_updates must be an integer >= 0, got 2.5"),
        ({"total_updates": -10}, r"schedule.total_updates must be an integer >= 0, got -10"),
        ({"final_lr_fraction": 1.5}, r"schedule.final_lr_fraction must be a number in \[0, 1\], got 1.5"),
        ({"warmup_updates": 20, "total_updates": 10}, r"schedule.warmup_updates must be <= schedule.total_updates=10, got 20"),
    ],
)
def test_config_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)


def test_decaying_schedules_need_a_total() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"total_updates .*'linear' must be an integer >= 1, got 0"):
        build_scheduler(optimizer, ScheduleConfig(name="linear"))
    with pytest.raises(ValueError, match=r"warmup_updates must be <= total_updates=5, got 10"):
        build_scheduler(optimizer, ScheduleConfig(name="warmup_cosine", warmup_updates=10), total_updates=5)
    build_scheduler(optimizer, ScheduleConfig(name="constant", warmup_updates=10))  # needs no total


def test_constant_is_the_default_and_never_changes() -> None:
    assert ScheduleConfig().name == "constant"
    assert lrs_over(ScheduleConfig(), 50) == [0.5] * 51


def test_warmup_cosine_at_known_steps() -> None:
    schedule = ScheduleConfig(name="warmup_cosine", warmup_updates=10, total_updates=110, final_lr_fraction=0.1)
    lrs = lrs_over(schedule, 150)
    assert lrs[0] == 0.0  # step 0: the start of the warm-up
    assert lrs[5] == pytest.approx(0.25)  # halfway through the warm-up
    assert lrs[10] == pytest.approx(0.5)  # end of the warm-up: the peak
    assert lrs[35] == pytest.approx(0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lrs[60] == pytest.approx(0.5 * 0.55)  # halfway through the cosine: (1 + final) / 2
    assert lrs[110] == pytest.approx(0.05)  # the end: final_lr_fraction of the peak
    assert lrs[150] == pytest.approx(0.05)  # and after it
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))


def test_linear_decay_at_known_steps_with_the_trainers_total() -> None:
    lrs = lrs_over(ScheduleConfig(name="linear"), 150, total_updates=100)
    assert lrs[0] == 0.5 and lrs[25] == pytest.approx(0.375) and lrs[50] == pytest.approx(0.25)
    assert lrs[100] == 0.0 and lrs[150] == 0.0
    # the config's own total wins over the trainer's
    lrs = lrs_over(ScheduleConfig(name="linear", warmup_updates=4, total_updates=20, final_lr_fraction=0.5), 30, 100)
    assert lrs[2] == pytest.approx(0.25) and lrs[4] == 0.5 and lrs[12] == pytest.approx(0.375)
    assert lrs[20] == pytest.approx(0.25) and lrs[30] == pytest.approx(0.25)


def test_constant_with_warmup() -> None:
    lrs = lrs_over(ScheduleConfig(warmup_updates=4), 10)
    assert lrs == pytest.approx([0.0, 0.125, 0.25, 0.375] + [0.5] * 7)


def test_every_parameter_group_is_scheduled() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    optimizer = build_optimizer(net, OptimizerConfig(name="adamw", lr=0.2))
    assert len(optimizer.param_groups) == 2
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="linear", total_updates=10))
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.1])


def test_state_dict_holds_the_schedule() -> None:
    """A scheduler resumed from a state dict follows the schedule it was saved with."""
    schedule = ScheduleConfig(name="warmup_cosine", warmup_updates=3, total_updates=30, final_lr_fraction=0.2)
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, schedule)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = copy.deepcopy(scheduler.state_dict())
    saved = {"name": "warmup_cosine", "warmup_updates": 3, "total_updates": 30, "final_lr_fraction": 0.2}
    assert state == {"updates": 7, "peak_lr": 1.0, "multiplier": saved}

    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    other.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    resumed = build_scheduler(other, ScheduleConfig(name="linear"), total_updates=1000)
    resumed.load_state_dict(state)
    for _ in range(30):
        for opt, sched in ((optimizer, scheduler), (other, resumed)):
            opt.step()
            sched.step()
        assert other.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_multiplier_repr_and_values() -> None:
    multiplier = LRMultiplier("linear", 0, 10, 0.0)
    assert "linear" in repr(multiplier)
    assert [multiplier(k) for k in (0, 5, 10, 11)] == [1.0, 0.5, 0.0, 0.0]


def test_a_lambda_lr_state_of_earlier_checkpoints_resumes_the_same_schedule() -> None:
    """Checkpoints written with torch's ``LambdaLR`` hold ``last_epoch`` and the multiplier's attributes in ``lr_lambdas``."""
    saved = {"name": "linear", "warmup_updates": 2, "total_updates": 20, "final_lr_fraction": 0.0}
    old_state = {"base_lrs": [1.0], "last_epoch": 5, "_step_count": 6, "_last_lr": [0.8333], "lr_lambdas": [saved]}
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = build_scheduler(optimizer, ScheduleConfig(), total_updates=1000)
    resumed.load_state_dict(old_state)
    assert resumed.updates == 5 and resumed.state_dict()["multiplier"] == saved
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0 - 3 / 18)


def test_a_tensor_rate_is_filled_in_place() -> None:
    lr = torch.tensor(0.5)
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=lr, fused=True)
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="linear", total_updates=4))
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.375)
