"""One copy each way per vector step: mtrl.transfer.StepUpload and the SAC and PPO loops that use it."""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.ppo import PPOConfig
from agents.sac import SACConfig
from envs import EnvConfig
from envs.testing import make_scripted_envs
from launch.config import BalancerConfig, PPOTrainConfig, SACTrainConfig, TrainConfig
from launch.factory import make_trainer
from launch.replay_loop import ReplayLoopConfig
from mtrl.logging import Progress
from mtrl.transfer import StepUpload

REPO = str(Path(__file__).resolve().parents[2])
TESTS = str(Path(__file__).resolve().parents[1]) + "/"
TORCH = str(Path(torch.__file__).parent)
UPLOADER = str(Path(__file__).resolve().parents[2] / "mtrl" / "transfer.py")
FIELDS = {"obs": (3,), "reward": (), "done": ()}


def _arrays(rng: np.random.Generator, num_envs: int) -> dict[str, np.ndarray]:
    return {"obs": rng.normal(size=(num_envs, 3)), "reward": rng.normal(size=num_envs), "done": rng.random(num_envs) < 0.5}


def test_every_field_comes_back_task_grouped_as_float32():
    upload = StepUpload(FIELDS, num_tasks=2, envs_per_task=3, device="cpu")
    arrays = _arrays(np.random.default_rng(0), 6)
    sent = upload(**arrays)
    assert sent["obs"].shape == (2, 3, 3) and sent["reward"].shape == (2, 3) and sent["done"].shape == (2, 3)
    assert all(value.dtype == torch.float32 and value.is_contiguous() for value in sent.values())
    for name, array in arrays.items():
        expected = torch.as_tensor(np.asarray(array, dtype=np.float32)).reshape(sent[name].shape)
        assert torch.equal(sent[name], expected), name


def test_what_a_call_returned_stays_valid_after_the_next_call():
    upload = StepUpload(FIELDS, num_tasks=2, envs_per_task=1, device="cpu")
    rng = np.random.default_rng(1)
    first_arrays = _arrays(rng, 2)
    first = upload(**first_arrays)
    kept = {name: value.clone() for name, value in first.items()}
    upload(**_arrays(rng, 2))
    assert all(torch.equal(first[name], kept[name]) for name in FIELDS)


def test_the_fields_must_be_exactly_the_declared_ones():
    upload = StepUpload(FIELDS, num_tasks=1, envs_per_task=2, device="cpu")
    with pytest.raises(KeyError, match="needs exactly"):
        upload(obs=np.zeros((2, 3)), reward=np.zeros(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: pinned host buffers and an asynchronous copy")
def test_on_cuda_the_host_buffers_are_pinned_and_the_copy_lands_on_the_device():
    upload = StepUpload(FIELDS, num_tasks=2, envs_per_task=2, device="cuda")
    assert all(buffer.is_pinned() for buffer in upload._host)
    rng = np.random.default_rng(2)
    steps = [_arrays(rng, 4) for _ in range(3)]  # three calls: both host buffers, then the first again
    sent = [upload(**arrays) for arrays in steps]
    for arrays, got in zip(steps, sent):
        assert got["obs"].device.type == "cuda"
        assert torch.equal(got["obs"].cpu(), torch.as_tensor(arrays["obs"], dtype=torch.float32).reshape(2, 2, 3))


# ------------------------------------------------------------------------------------------ the loops
@contextmanager
def counted_crossings(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter]:
    """Counts what crosses between numpy and torch in the project's own code while the block runs.

    On the CPU nothing really crosses, so the count is of the calls that would copy on a GPU:
    numpy arrays made tensors (``as_tensor``, ``from_numpy``, ``tensor``), :class:`StepUpload`
    calls, and tensors read back by the project's code (``cpu``, ``item``, ``tolist``, ``bool``;
    torch's own reads, such as Adam's step count kept on the host, are not the loop's).
    """
    counts: collections.Counter = collections.Counter()

    def ours() -> bool:
        caller = sys._getframe(2).f_code.co_filename
        return caller.startswith(REPO) and not caller.startswith((TORCH, TESTS)) and caller != UPLOADER

    def to_device(name: str, original):
        def wrapper(data, *args, **kwargs):
            if isinstance(data, np.ndarray) and ours():
                counts["numpy to torch"] += 1
            return original(data, *args, **kwargs)

        monkeypatch.setattr(torch, name, wrapper)

    def to_host(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if ours():
                counts[f"tensor.{name}"] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("as_tensor", "from_numpy", "tensor"):
        to_device(name, getattr(torch, name))
    for name in ("cpu", "item", "tolist", "__bool__", "numpy"):
        to_host(name)
    upload_call = StepUpload.__call__

    def counted_upload(self, **arrays):
        counts["StepUpload"] += 1
        return upload_call(self, **arrays)

    monkeypatch.setattr(StepUpload, "__call__", counted_upload)
    yield counts


# two scripted tasks, one environment each, episodes of 5 steps; no evaluation, logging or checkpoint
# inside the loop, so what crosses is what every step needs
ENV = EnvConfig(benchmark="reach-v3,drawer-close-v3", max_episode_steps=5)
LOOP_ONLY = dict(total_steps=60, eval_every=0, checkpoint_every=0, log_every=1000, device="cpu", progress=False, tensorboard=False)
BALANCER = BalancerConfig(name="mean", statistics=True)
SAC = SACTrainConfig(
    env=ENV,
    sac=SACConfig(hidden_dims=(16,), compile_gradients=False),
    replay=ReplayLoopConfig(warmup_steps=20, batch_size_per_task=8, buffer_capacity_per_task=100),
    balancer=BALANCER,
    **LOOP_ONLY,
)
PPO = PPOTrainConfig(
    env=ENV, ppo=PPOConfig(hidden_dims=(16,), rollout_steps=5, epochs=1, minibatches=1, compile_gradients=False), balancer=BALANCER, **LOOP_ONLY
)


@pytest.mark.parametrize("config", [SAC, PPO], ids=["sac", "ppo"])
def test_each_vector_step_copies_once_to_the_device_and_once_back(tmp_path, monkeypatch, config: TrainConfig):
    run = tmp_path / "run"
    run.mkdir()
    trainer = make_trainer(config, run, build_envs=make_scripted_envs)
    try:
        with counted_crossings(monkeypatch) as counts:
            trainer._train(Progress(config.total_steps, 0, enabled=False))
    finally:
        trainer.close()
    vector_steps = config.total_steps // trainer.envs.num_envs
    acted = vector_steps
    if isinstance(config, SACTrainConfig):
        acted -= config.replay.warmup_steps // trainer.envs.num_envs  # warm-up actions are drawn on the host
    else:
        assert isinstance(config, PPOTrainConfig)
    # the reset's observations are the one conversion outside the steps
    assert counts == {"numpy to torch": 1, "StepUpload": vector_steps, "tensor.cpu": acted, "tensor.numpy": acted}, counts
