"""Optimizers per network: configuration, weight-decay grouping, Lion, clipping, exact resume."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field

import pytest
import torch
from lion_pytorch import Lion
from torch import nn

from mtrl.nn import MultiTaskMLP
from mtrl.optim import OptimizerConfig, build_optimizer, clip_by_global_norm, is_no_decay, split_weight_decay
from mtrl.schedules import ScheduleConfig, build_scheduler


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class NormNet(nn.Module):
    """A trunk with a LayerNorm, a per-task head, a 2-D per-task norm scale and a temperature."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = MultiTaskMLP(5, (8, 8), 3, num_tasks=4)
        self.layer_norm = nn.LayerNorm(8)
        self.task_norm = nn.Parameter(torch.ones(4, 8))  # [T, hidden]
        self.log_alpha = nn.Parameter(torch.zeros(4))  # [T]
        self.scale = nn.Parameter(torch.tensor(1.0))  # []


def fill_gradients(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.grad = torch.randn(param.shape, generator=gen)


# ---------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "sgd"}, r"optimizer.name must be one of 'adam', 'adamw', 'lion', got 'sgd'"),
        ({"lr": 0.0}, r"optimizer.lr must be a finite number > 0, got 0.0"),
        ({"lr": float("nan")}, r"optimizer.lr must be a finite number > 0, got nan"),
        ({"eps": -1e-8}, r"optimizer.eps must be a finite number > 0, got -1e-08"),
        ({"weight_decay": -0.1}, r"optimizer.weight_decay must be a finite number >= 0, got -0.1"),
        ({"max_grad_norm": -1.0}, r"optimizer.max_grad_norm must be a finite number >= 0, got -1.0"),
        ({"betas": (0.9, 1.0)}, r"optimizer.betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)"),
        ({"betas": (0.9,)}, r"optimizer.betas must be two numbers in \[0, 1\), got \(0.9,\)"),
    ],
)
def test_config_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs)


def test_defaults_depend_on_the_optimizer() -> None:
    assert OptimizerConfig().resolved_betas() == (0.9, 0.999)
    assert OptimizerConfig().resolved_weight_decay() == 0.0
    assert OptimizerConfig(name="adamw").resolved_weight_decay() == 0.01
    assert OptimizerConfig(name="lion").resolved_betas() == (0.9, 0.99)
    assert OptimizerConfig(name="lion", betas=(0.95, 0.98), weight_decay=0.1).resolved_betas() == (0.95, 0.98)
    with pytest.raises(ValueError, match="no parameters"):
        build_optimizer({}, OptimizerConfig())


def test_config_from_the_command_line() -> None:
    tyro = pytest.importorskip("tyro")

    @dataclass(frozen=True)
    class Agent:
        actor_optim: OptimizerConfig = field(default_factory=OptimizerConfig)
        critic_optim: OptimizerConfig = field(default_factory=OptimizerConfig)
        schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    args = [
        "--actor-optim.name", "adamw", "--actor-optim.betas", "0.9", "0.95", "--critic-optim.name", "lion",
        "--critic-optim.max-grad-norm", "1.0", "--schedule.name", "warmup_cosine", "--schedule.warmup-updates", "10",
    ]  # fmt: skip
    agent = tyro.cli(Agent, args=args)
    assert agent.actor_optim == OptimizerConfig(name="adamw", betas=(0.9, 0.95))
    assert agent.critic_optim == OptimizerConfig(name="lion", max_grad_norm=1.0)
    assert agent.schedule == ScheduleConfig(name="warmup_cosine", warmup_updates=10)


# ---------------------------------------------------------------------------------------------
# weight-decay groups


def test_no_decay_rule() -> None:
    net = NormNet()
    decay, no_decay = split_weight_decay(net)
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in decay) == ["net.head.weight", "net.trunk.0.weight", "net.trunk.2.weight"]
    assert sorted(names[id(p)] for p in no_decay) == [
        "layer_norm.bias", "layer_norm.weight", "log_alpha", "net.head.bias", "net.trunk.0.bias",
        "net.trunk.2.bias", "scale", "task_norm",
    ]  # fmt: skip
    assert net.net.head.bias.dim() == 2  # [T, out]: caught by its name, not its shape
    assert is_no_decay("encoder.norm1.weight", torch.ones(3, 3))
    assert not is_no_decay("encoder.linear.weight", torch.ones(3, 3))


def test_adamw_groups_and_decoupled_decay() -> None:
    net = NormNet()
    optimizer = build_optimizer(net, OptimizerConfig(name="adamw", lr=0.1, weight_decay=0.5))
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = split_weight_decay(net)
    assert [g["group"] for g in optimizer.param_groups] == ["decay", "no_decay"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]
    assert optimizer.param_groups[0]["params"] == decay and optimizer.param_groups[1]["params"] == no_decay
    # with zero gradients Adam's step is 0, so only the decoupled decay moves the parameters (by 5%);
    # the fused kernel may form the decay as p - lr*wd*p (or with an FMA) rather than p * (1 - lr*wd):
    # equal up to an ulp, not bitwise
    before = copy.deepcopy(net.state_dict())
    for param in net.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    after = net.state_dict()
    for name, value in before.items():
        expected = value * (1 - 0.1 * 0.5) if name.endswith("weight") and "norm" not in name else value
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-9, msg=name)


def test_adam_without_decay_is_plain_adam() -> None:
    net, reference = NormNet(), NormNet()
    optimizer = build_optimizer(net, OptimizerConfig())
    assert isinstance(optimizer, torch.optim.Adam) and len(optimizer.param_groups) == 1
    assert optimizer.defaults["fused"]
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)  # a schedule fills it in place
    expected = torch.optim.Adam(reference.parameters(), lr=torch.tensor(3e-4), fused=True)
    for seed in range(3):
        fill_gradients(net, seed)
        fill_gradients(reference, seed)
        optimizer.step()
        expected.step()
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_loose_parameters_by_name() -> None:
    log_alpha = nn.Parameter(torch.zeros(4))
    optimizer = build_optimizer({"log_alpha": log_alpha}, OptimizerConfig(name="adamw"))
    assert [g["group"] for g in optimizer.param_groups] == ["no_decay"]
    shared = nn.Linear(2, 2)
    pairs = [("a.weight", shared.weight), ("b.weight", shared.weight), ("a.bias", shared.bias)]
    assert sum(len(g["params"]) for g in build_optimizer(pairs, OptimizerConfig()).param_groups) == 2


# ---------------------------------------------------------------------------------------------
# Lion


def test_lion_builds_and_steps_by_the_sign() -> None:
    net = NormNet()
    optimizer = build_optimizer(net, OptimizerConfig(name="lion", lr=0.01, weight_decay=0.5))
    assert isinstance(optimizer, Lion)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    before = copy.deepcopy(dict(net.named_parameters()))
    fill_gradients(net)
    optimizer.step()  # first step: momentum 0, so the update is lr * sign(grad), plus the decay
    for name, param in net.named_parameters():
        decay = 0.0 if is_no_decay(name, param) else 0.5
        expected = before[name].detach() * (1 - 0.01 * decay) - 0.01 * param.grad.sign()
        torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-7)  # a few ulps; the step is 1e-2
    losses = []
    target = torch.randn(4, 16, 3, generator=torch.Generator().manual_seed(1))
    inputs = torch.randn(4, 16, 5, generator=torch.Generator().manual_seed(2))
    for _ in range(30):
        optimizer.zero_grad()
        loss = (net.net(inputs) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------
# clipping


def clip_in_place(net: nn.Module, max_norm: float | None) -> torch.Tensor:
    """:func:`clip_by_global_norm` of the gradients in ``.grad``, written back; the pre-clip norm."""
    params = [p for p in net.parameters() if p.grad is not None]
    clipped, norm = clip_by_global_norm([p.grad for p in params], max_norm)
    for param, grad in zip(params, clipped):
        param.grad = grad
    return norm


def test_clipping_bounds_the_norm_and_returns_the_pre_clip_norm() -> None:
    net = NormNet()
    fill_gradients(net)
    grads = [p.grad.clone() for p in net.parameters()]
    total = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
    norm = clip_in_place(net, 0.5)
    torch.testing.assert_close(norm, total)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    assert clipped.item() <= 0.5 + 1e-6
    for before, param in zip(grads, net.parameters()):  # same direction, torch's scale
        torch.testing.assert_close(param.grad, before * (0.5 / (total + 1e-6)))
    reference = NormNet()
    for param, grad in zip(reference.parameters(), grads):
        param.grad = grad.clone()
    torch.testing.assert_close(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5), total)
    for param, ours in zip(reference.parameters(), net.parameters()):
        torch.testing.assert_close(ours.grad, param.grad)


@pytest.mark.parametrize("max_norm", [0.0, None, 1e6])
def test_no_clipping_leaves_the_gradients_and_measures_them(max_norm: float | None) -> None:
    net = NormNet()
    fill_gradients(net)
    grads = [p.grad.clone() for p in net.parameters()]
    norm = clip_in_place(net, max_norm)
    assert norm.item() == pytest.approx(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])).item())
    for before, param in zip(grads, net.parameters()):
        assert torch.equal(param.grad, before)


def test_clipping_zero_gradients_gives_zero() -> None:
    clipped, norm = clip_by_global_norm([torch.zeros(2, 3)], 1.0)
    assert norm.item() == 0.0 and torch.equal(clipped[0], torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------
# optimizer + schedule state through a checkpoint


def make_training(config: OptimizerConfig, schedule: ScheduleConfig):
    net = NormNet()
    optimizer = build_optimizer(net, config)
    scheduler = build_scheduler(optimizer, schedule, total_updates=40)
    return net, optimizer, scheduler


def train(net: NormNet, optimizer, scheduler, steps: range, max_norm: float) -> list[list[float]]:
    lrs = []
    for step in steps:
        gen = torch.Generator().manual_seed(step)
        inputs, target = torch.randn(4, 8, 5, generator=gen), torch.randn(4, 8, 3, generator=gen)
        optimizer.zero_grad()
        loss = (net.layer_norm(net.net.trunk(inputs)) * net.task_norm[:, None]).sum() * net.scale
        loss = loss + (net.net(inputs) - target).pow(2).mean() + net.log_alpha.exp().sum()
        loss.backward()
        clip_in_place(net, max_norm)
        optimizer.step()
        scheduler.step()
        lrs.append([float(group["lr"]) for group in optimizer.param_groups])
    return lrs


@pytest.mark.parametrize("name", ["adam", "adamw", "lion"])
@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine", "linear"])
def test_optimizer_and_schedule_resume_exactly(name: str, schedule: str) -> None:
    config = OptimizerConfig(name=name, lr=1e-2, weight_decay=0.1 if name != "adam" else None, max_grad_norm=1.0)
    schedule_config = ScheduleConfig(name=schedule, warmup_updates=5, final_lr_fraction=0.1)

    net, optimizer, scheduler = make_training(config, schedule_config)
    uninterrupted = train(net, optimizer, scheduler, range(0, 25), config.max_grad_norm)

    first, first_opt, first_sched = make_training(config, schedule_config)
    train(first, first_opt, first_sched, range(0, 12), config.max_grad_norm)
    buffer = io.BytesIO()
    torch.save({"net": first.state_dict(), "opt": first_opt.state_dict(), "sched": first_sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer)  # weights_only: the states hold only tensors and plain values
    resumed, resumed_opt, resumed_sched = make_training(config, schedule_config)
    resumed.load_state_dict(state["net"])
    resumed_opt.load_state_dict(state["opt"])
    resumed_sched.load_state_dict(state["sched"])
    assert resumed_sched.updates == 12
    assert [float(g["lr"]) for g in resumed_opt.param_groups] == uninterrupted[11]
    lrs = train(resumed, resumed_opt, resumed_sched, range(12, 25), config.max_grad_norm)

    assert lrs == uninterrupted[12:]
    for a, b in zip(resumed.parameters(), net.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["adam", "adamw", "lion"])
def test_cuda_clip_step_and_schedule_without_host_sync(name: str) -> None:
    net = NormNet().cuda()
    optimizer = build_optimizer(net, OptimizerConfig(name=name, weight_decay=0.1))
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="warmup_cosine", warmup_updates=2), total_updates=10)
    fill_gradients(net)
    for param in net.parameters():
        param.grad = param.grad.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        norms = []
        for _ in range(3):
            norms.append(clip_in_place(net, 0.5))
            optimizer.step()
            scheduler.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert norms[0].device.type == "cuda"
