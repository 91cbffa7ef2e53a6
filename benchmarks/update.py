"""Cost of one balanced multi-task update (``mtrl-bench-update``).

A multi-task SAC-critic-sized network (:class:`mtrl.nn.MultiTaskMLP`: input obs 39 + one-hot task
+ action 4, trunk 3 x 400, per-task head of width 1), ``--batch-size`` samples per task, MSE against
random targets; every variant includes its Adam step:

- ``plain``: mean of the task losses, one backward (what a multi-task SAC without balancing does);
- ``plain/compiled``: the same through ``torch.compile`` (with ``--compile-gradients``, the default);
- ``vmap/<balancer>``: :func:`mtrl.gradients.balanced_backward` (per-task gradients of the shared
  trunk from one vmapped backward, compiled by default as in the agents, the balancer, gradients
  written back) for every balancer in ``mtrl.balancers``;
- ``weights/<balancer>``: only the balancer's ``[T, T]`` problem (its share of ``vmap/<balancer>``);
- ``sac/<balancer>`` and ``sac/<balancer>/compiled``: one whole :class:`agents.sac.MultiTaskSAC`
  update (twin critics, actor and temperatures, each network balanced, observation 39 + one-hot T,
  the same trunk and batch) with eager and with compiled per-task gradients, for every balancer
  of ``--sac-balancers``;
- ``sac-plain``: the reference for the ``sac/...`` variants: an independent plain eager multi-task
  SAC update (the same networks with the one-hot task id, mean loss over tasks, one backward per
  network; :class:`PlainSAC`); every ``sac/...`` row has ``ratio_to_sac_plain``;
- ``sac-lean``: the leanest plain update a user would write: :class:`PlainSAC` with one shared
  output layer and the critic's parameters frozen during the actor loss (no gradient formed for
  them); every ``sac/...`` row has ``ratio_to_sac_lean``. ``sac-lean/heads`` is the same with the
  per-task heads of the ``sac/...`` variants: the step from ``sac-lean`` to it is what the heads
  cost, the step from it to ``sac/mean/whole`` what per-task gradients and their Gramian cost, and
  the step from there to ``sac/cagrad/whole`` what the balancer's solve costs;
- ``sac/<balancer>/whole``: the whole SAC update compiled as one function (``sac.update_graph
  compiled``), with ``ratio_to_eager`` and ``ratio_to_compiled`` (paired with ``.../compiled``);
- with ``--encoder`` (``moore``, ``softmod``, ``paco``), every ``sac...`` row, the references
  included, has that encoder's networks (its default options, the observation's one-hot given to
  them as the agents give it: :mod:`mtrl.encoders`), so the ``sac/...`` rows' ratios are to that
  encoder's own plain update; the other rows keep the MLP critic; likewise ``--critic brc`` (BRC's
  categorical critics) and ``--critic-layer-norm`` (the MLP critics with LayerNorm) change the
  critics of every ``sac...`` row, the references' too (:class:`PlainSAC` takes each critic's own
  target, loss and actor value from :class:`agents.critics.TwinQ`);
- ``loop/<balancer>``: the style of the CAGrad reference code (Liu et al. 2021,
  Cranial-XIX/CAGrad ``mtrl_files/cagrad.py``): one forward, then a Python loop of ``T``
  ``torch.autograd.grad`` calls on the shared parameters, concatenated into ``[T, D]``, then the
  same balancer.

Variants are timed round-robin (each repeat runs every variant once) so that load from other
processes spreads over all of them. Reported per variant: the seconds its warm-up calls took
(``warmup_s``: its compiling, for the compiled variants), the medians over repeats of the
wall-clock time and of the process CPU time, and the ratios to ``plain`` as the median over repeats
of the *paired* ratio (the variant's time over ``plain``'s time in the same repeat; for a
``.../compiled`` variant also ``ratio_to_eager``, paired with its eager twin): on a shared
virtual machine the speed drifts over seconds, and pairing cancels that drift where
a ratio of medians would not. With ``--threads 1`` the CPU time is the steadier of the two. On CUDA
the device is synchronised only at timing boundaries (the CPU time is then the host's time and
means little).

    mtrl-bench-update --tasks 10 50 --threads 1 --malloc-tuning --out bench.json
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor

from agents.sac import Actor, MultiTaskSAC, SACConfig, make_twin_critic
from benchmarks.report import check_report_file, emit_report
from launch.factory import resolve_device
from launch.runtime import tune_glibc_malloc
import mtrl.balancers as balancers
from mtrl.balancers import Balancer
from mtrl.compile import compile_static
from mtrl.distributions import squashed_gaussian
from mtrl.encoders import EncoderConfig
from mtrl.encoders.config import EncoderName
from mtrl.gradients import (
    balanced_backward,
    module_task_loss,
    per_task_gradients,
    write_gradients,
    write_gradients_by_name,
)
from mtrl.nn import MultiTaskMLP
from mtrl.replay import TransitionBatch

OBS_DIM = 39
ACTION_DIM = 4


@dataclasses.dataclass(frozen=True)
class Args:
    """Time one update step of a multi-task critic with every gradient balancer, and whole SAC updates."""

    tasks: tuple[int, ...] = (10, 50)
    """Task counts T to measure."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run; auto picks CUDA when available."""
    repeats: int = 20
    """Timed updates per variant (medians and paired ratios over them are reported)."""
    warmup: int = 2
    """Untimed updates per variant before timing."""
    batch_size: int = 128
    """Samples per task."""
    hidden: tuple[int, ...] = (400, 400, 400)
    """Trunk widths."""
    balancers: tuple[str, ...] = ()
    """Balancers for the vmap variant (registry names); empty: every built-in one."""
    loop_balancers: tuple[str, ...] = ("cagrad",)
    """Balancers for the loop reference (slow: T backward passes; loss-weighting ones are skipped)."""
    sac_balancers: tuple[str, ...] = ("cagrad",)
    """Balancers of the whole-SAC-update variants (eager and compiled per-task gradients)."""
    encoder: EncoderName = "mlp"
    """Networks of the sac rows (sac/..., sac-plain, sac-lean): mlp | moore | softmod | paco, with the
    encoder's default options (mtrl.encoders)."""
    critic: Literal["mlp", "brc"] = "mlp"
    """Critics of the sac rows: mlp (the encoder's networks) | brc (BRC's categorical BroNet critics,
    sac.critic brc with its default width, blocks and support; the actor keeps the encoder's network)."""
    critic_layer_norm: bool = False
    """mlp critic of the sac rows: a LayerNorm in every hidden layer (sac.critic_layer_norm; mlp encoder only)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    seed: int = 0
    """Seed for the network initialisation and the random batch."""
    compile_solver: bool = True
    """Compile the interior-point solver of CAGrad, CAGrad-Fast and MGDA (as the trainer does); the
    compiling happens during the warm-up updates."""
    compile_gradients: bool = True
    """Compile the vmapped per-task gradients (as the agents do by default) and add ``plain/compiled``,
    the plain update with its forward and backward compiled; the compiling happens during the warm-up
    updates. Ratios stay relative to the eager ``plain`` update."""
    whole_update: bool = True
    """Add ``sac/<balancer>/whole``: the SAC update compiled as one function (``sac.update_graph compiled``;
    its compiling, a minute or two on this CPU, happens during the warm-up updates)."""
    malloc_tuning: bool = False
    """glibc only: keep freed blocks up to 1 GiB in the heap instead of returning them to the OS, so the
    per-task gradients ([T, D], 72 MB at T=50) are not page-faulted and zeroed again every update."""
    out: Path | None = None
    """Also write the JSON report to this file (its directory is made when missing)."""


def make_balancer(name: str, num_tasks: int, device: torch.device, compile_solver: bool) -> Balancer:
    """The registered balancer ``name`` for ``num_tasks`` tasks, on ``device``."""
    return balancers.make_balancer(name, num_tasks, compile_solver=compile_solver).to(device)


def make_batch(num_tasks: int, batch_size: int, device: torch.device, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Critic inputs ``[T, B, obs + T + action]`` (one-hot task id) and targets ``[T, B, 1]``."""
    obs = torch.randn(num_tasks, batch_size, OBS_DIM, generator=gen)  # [T, B, obs_dim]
    one_hot = torch.eye(num_tasks)[:, None, :].expand(num_tasks, batch_size, num_tasks)  # [T, B, T]
    action = torch.rand(num_tasks, batch_size, ACTION_DIM, generator=gen) * 2 - 1  # [T, B, act_dim]
    inputs = torch.cat([obs, one_hot, action], dim=-1)  # [T, B, in]
    targets = torch.randn(num_tasks, batch_size, 1, generator=gen)  # [T, B, 1]
    return inputs.to(device), targets.to(device)


def make_critic(args: Args, num_tasks: int, device: torch.device) -> tuple[MultiTaskMLP, torch.optim.Adam]:
    """A fresh critic (same seed for every variant) and its Adam optimizer."""
    torch.manual_seed(args.seed)
    net = MultiTaskMLP(OBS_DIM + num_tasks + ACTION_DIM, args.hidden, 1, num_tasks).to(device)
    return net, torch.optim.Adam(net.parameters(), lr=3e-4)


def task_mse(forward: Callable[[Tensor], Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
    """One task's critic loss: ``inputs [B, in]``, ``targets [B, 1]`` -> scalar."""
    return F.mse_loss(forward(inputs), targets)


def batched_task_mse(net: MultiTaskMLP, inputs: Tensor, targets: Tensor) -> Tensor:
    """Every task's critic loss from one batched forward: ``[T, B, in]`` -> ``[T]``."""
    return F.mse_loss(net(inputs), targets, reduction="none").mean(dim=(1, 2))


def plain_update(
    net: MultiTaskMLP, opt: torch.optim.Optimizer, inputs: Tensor, targets: Tensor, compiled: bool = False
) -> Callable[[], None]:
    """Mean of the task losses, one backward (``compiled``: forward and backward through ``torch.compile``), Adam step."""
    task_losses = compile_static(batched_task_mse) if compiled else batched_task_mse

    def step() -> None:
        opt.zero_grad()
        task_losses(net, inputs, targets).mean().backward()
        opt.step()

    return step


def vmap_update(
    net: MultiTaskMLP,
    opt: torch.optim.Optimizer,
    balancer: Balancer,
    inputs: Tensor,
    targets: Tensor,
    compiled: bool = False,
) -> Callable[[], None]:
    """Per-task gradients from one vmapped backward (``compiled``: through ``torch.compile``), balancer, write, Adam step.

    A balancer that asks for a second batch (SDMGrad) gets one (the same samples' other order: the
    cost does not depend on the values), whose per-task gradients are a second vmapped backward.
    """
    second = (inputs.flip(1), targets.flip(1)) if balancer.requires_second_batch else None  # [T, B, ...]

    def step() -> None:
        balanced_backward(net, task_mse, (inputs, targets), balancer, compiled=compiled, second_inputs=second)
        opt.step()

    return step


def loop_update(
    net: MultiTaskMLP, opt: torch.optim.Optimizer, balancer: Balancer, inputs: Tensor, targets: Tensor
) -> Callable[[], None]:
    """The reference style: one forward, ``T`` ``autograd.grad`` calls, balancer, write, Adam step."""
    shared = list(net.shared_parameters().values())
    task = net.task_parameters()

    def step() -> None:
        losses = batched_task_mse(net, inputs, targets)  # [T]
        head_grads = torch.autograd.grad(losses.sum(), list(task.values()), retain_graph=True)
        rows = []
        for t in range(losses.shape[0]):
            grads = torch.autograd.grad(losses[t], shared, retain_graph=t < losses.shape[0] - 1)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))  # [D]
        direction = balancer.combine(torch.stack(rows), losses.detach())  # [T, D] -> [D]
        write_gradients(shared, direction)
        write_gradients_by_name(task, dict(zip(task.keys(), head_grads)))
        opt.step()

    return step


def sac_config(args: Args, **fields: object) -> SACConfig:
    """The SAC config of every ``sac...`` variant: ``args``'s hidden sizes and encoder, and ``fields``."""
    networks = {"encoder": EncoderConfig(name=args.encoder), "critic": args.critic, "critic_layer_norm": args.critic_layer_norm}
    return SACConfig(hidden_dims=args.hidden, **networks, **fields)  # type: ignore[arg-type]


def sac_agent(args: Args, num_tasks: int, device: torch.device, balancer: str, compiled: bool, update_graph: str = "off", bf16: bool = False) -> MultiTaskSAC:
    """The agent of :func:`sac_update`: ``args``'s networks, obs 39 + one-hot T, ``balancer`` on both networks."""
    torch.manual_seed(args.seed)
    config = sac_config(args, compile_gradients=compiled, update_graph=update_graph, bf16=bf16)
    critic, actor = (make_balancer(balancer, num_tasks, device, args.compile_solver) for _ in range(2))
    box = np.ones(ACTION_DIM, dtype=np.float32)
    balancers_ = {"critic": critic, "actor": actor}
    return MultiTaskSAC(OBS_DIM + num_tasks, -box, box, num_tasks, config, balancers_, device=device, seed=args.seed, one_hot_in_obs=True)


def sac_update(
    args: Args, num_tasks: int, device: torch.device, balancer: str, compiled: bool, update_graph: str = "off", bf16: bool = False
) -> Callable[[], None]:
    """One whole multi-task SAC update (critics, actor, temperatures) of :func:`sac_agent` on a fixed random batch
    (and a second one for a balancer that asks for it: SDMGrad's update includes its per-task gradients)."""
    agent = sac_agent(args, num_tasks, device, balancer, compiled, update_graph, bf16)
    batch = random_sac_batch(num_tasks, args.batch_size, device, args.seed)
    second = random_sac_batch(num_tasks, args.batch_size, device, args.seed + 1) if agent.needs_second_batch else None
    return lambda: agent.update(batch, second)


def random_sac_batch(num_tasks: int, batch_size: int, device: torch.device, seed: int) -> TransitionBatch:
    """Random transitions ``[T, B, ...]`` (obs 39 + one-hot T): the cost of an update does not depend on the values."""
    gen = torch.Generator().manual_seed(seed)
    shape = (num_tasks, batch_size)

    def randn(*trailing: int) -> Tensor:
        return torch.randn(*shape, *trailing, generator=gen).to(device)

    return TransitionBatch(
        obs=randn(OBS_DIM + num_tasks),  # [T, B, obs + T]
        action=randn(ACTION_DIM).tanh(),  # [T, B, act]
        reward=randn(),  # [T, B]
        next_obs=randn(OBS_DIM + num_tasks),  # [T, B, obs + T]
        done=torch.zeros(shape, device=device),  # [T, B]
    )


class PlainSAC:
    """The reference: an independent, plain, eager multi-task SAC update, what a user would otherwise run.

    The same networks as :class:`agents.sac.MultiTaskSAC` (actor and twin critics with the one-hot
    task id in the observation and per-task heads, per-task temperatures, a Polyak target), fused
    Adam 3e-4 for each, and per update: the SAC target, the mean over tasks of the critic losses
    with one backward and a step, the mean over tasks of the actor losses with one backward and a
    step, the temperature loss with one backward and a step, the Polyak update. No balancing, no
    per-task gradients, no compiling: ``sac/<balancer>`` over this is what balancing costs.
    """

    def __init__(self, config: SACConfig, num_tasks: int, device: torch.device, seed: int, freeze_critic: bool = False) -> None:
        torch.manual_seed(seed)
        self.freeze_critic = freeze_critic
        obs_dim = OBS_DIM + num_tasks
        self.actor = Actor(obs_dim, ACTION_DIM, num_tasks, config, one_hot_in_obs=True).to(device)
        self.critic = make_twin_critic(obs_dim, ACTION_DIM, num_tasks, config, one_hot_in_obs=True).to(device)
        self.target = make_twin_critic(obs_dim, ACTION_DIM, num_tasks, config, one_hot_in_obs=True).to(device)
        self.target.load_state_dict(self.critic.state_dict())
        self.target.requires_grad_(False)
        self.log_alpha = torch.zeros(num_tasks, device=device, requires_grad=True)  # [T]
        self.optimizers = [
            torch.optim.Adam(params, lr=3e-4, fused=True)
            for params in (self.critic.parameters(), self.actor.parameters(), [self.log_alpha])
        ]
        self.gamma, self.tau, self.target_entropy = config.gamma, config.tau, -float(ACTION_DIM)
        self.generator = torch.Generator(device).manual_seed(seed)

    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn((*like.shape[:-1], ACTION_DIM), device=like.device, generator=self.generator)

    def update(self, batch: TransitionBatch) -> None:
        critic_opt, actor_opt, alpha_opt = self.optimizers
        alpha = self.log_alpha.exp().detach()  # [T]
        with torch.no_grad():
            mean, log_std = self.actor(batch.next_obs)
            next_action, next_log_prob = squashed_gaussian(mean, log_std, self._noise(batch.next_obs))  # [T, B, A], [T, B]
            continuation = self.gamma * (1.0 - batch.done)  # [T, B]
            penalty = alpha[:, None] * next_log_prob  # [T, B]
            target = self.target.bellman_target(self.target(batch.next_obs, next_action), batch.reward, continuation, penalty)
        critic_loss = self.critic.td_loss(self.critic(batch.obs, batch.action), target)  # every task has B rows: the mean over tasks
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()

        mean, log_std = self.actor(batch.obs)
        action, log_prob = squashed_gaussian(mean, log_std, self._noise(batch.obs))  # [T, B, A], [T, B]
        self.critic.requires_grad_(not self.freeze_critic)
        q_actor = self.critic.actor_value(self.critic(batch.obs, action))  # [T, B]
        actor_loss = (alpha[:, None] * log_prob - q_actor).mean(dim=1).mean()
        actor_opt.zero_grad()
        actor_loss.backward()  # unfrozen, it reaches the critic's parameters too; their gradients are cleared before its next step
        actor_opt.step()
        self.critic.requires_grad_(True)

        alpha_loss = -(self.log_alpha.exp() * (log_prob.detach().mean(dim=1) + self.target_entropy)).mean()
        alpha_opt.zero_grad()
        alpha_loss.backward()
        alpha_opt.step()
        torch._foreach_lerp_(list(self.target.parameters()), list(self.critic.parameters()), self.tau)


def plain_sac_update(args: Args, num_tasks: int, device: torch.device, lean: bool = False, heads: bool = True) -> Callable[[], None]:
    """:class:`PlainSAC`'s update on a fixed random batch (the networks of :func:`sac_update`; one
    shared head without ``heads``; the critic frozen during the actor loss with ``lean``)."""
    reference = PlainSAC(sac_config(args, per_task_heads=heads), num_tasks, device, args.seed, freeze_critic=lean)
    batch = random_sac_batch(num_tasks, args.batch_size, device, args.seed)
    return lambda: reference.update(batch)


def weights_only(balancer: Balancer, net: MultiTaskMLP, inputs: Tensor, targets: Tensor) -> Callable[[], None]:
    """Only the balancer's ``[T, T]`` problem (``weights(gram, losses)``) on the critic's real Gramian."""
    grads = per_task_gradients(
        module_task_loss(net, task_mse), net.shared_parameters(), net.task_parameters(), (inputs, targets)
    )
    gram = grads.gram() if balancer.requires_grads else None  # [T, T]

    def step() -> None:
        balancer.weights(gram, grads.losses)

    return step


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only), so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass(frozen=True)
class Samples:
    """Per-repeat milliseconds of one variant (wall clock and process CPU time) and its warm-up's seconds."""

    wall: list[float]
    cpu: list[float]
    warmup_s: float = 0.0


def time_round_robin(
    variants: dict[str, Callable[[], None]], warmup: int, repeats: int, device: torch.device
) -> dict[str, Samples]:
    """Wall-clock and process-CPU milliseconds of every call of every variant, timed in turns.

    On a machine shared with other jobs the wall clock includes time the process waited for a
    core; with one thread (``--threads 1``) the CPU time does not, so it is the steadier number.
    The warm-up calls of each variant are timed as a whole (``warmup_s``): its compiling, as fast
    as inductor's on-disk cache allows (a fresh ``TORCHINDUCTOR_CACHE_DIR`` measures a cold start).
    """
    samples = {}
    for name, step in variants.items():
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        synchronize(device)
        samples[name] = Samples([], [], time.perf_counter() - start)
    for _ in range(repeats):
        for name, step in variants.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            synchronize(device)
            samples[name].wall.append((time.perf_counter() - start) * 1e3)
            samples[name].cpu.append((time.process_time() - start_cpu) * 1e3)
    return samples


def paired_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    """Median over repeats of ``times[r] / reference[r]`` (both timed in the same repeat ``r``)."""
    return statistics.median(t / max(ref, 1e-9) for t, ref in zip(times, reference, strict=True))


def summarize(samples: dict[str, Samples]) -> dict[str, dict[str, float]]:
    """Median times and paired ratios to ``plain`` of every variant (the JSON rows)."""
    plain = samples["plain"]
    rows = {
        name: {
            "median_ms": round(statistics.median(s.wall), 3),
            "ratio": round(paired_ratio(s.wall, plain.wall), 3),
            "cpu_ms": round(statistics.median(s.cpu), 3),
            "cpu_ratio": round(paired_ratio(s.cpu, plain.cpu), 3),
            "warmup_s": round(s.warmup_s, 2),
        }
        for name, s in samples.items()
    }
    for name, row in rows.items():
        eager = name.removesuffix("/compiled").removesuffix("/whole")
        if eager != name and eager in samples:
            row["ratio_to_eager"] = round(paired_ratio(samples[name].wall, samples[eager].wall), 3)
        for reference in ("sac-plain", "sac-lean"):
            if name.startswith("sac") and name != reference and reference in samples:
                row[f"ratio_to_{reference.replace('-', '_')}"] = round(paired_ratio(samples[name].wall, samples[reference].wall), 3)
        if name.endswith("/whole") and f"{eager}/compiled" in samples:
            row["ratio_to_compiled"] = round(paired_ratio(samples[name].wall, samples[f"{eager}/compiled"].wall), 3)
    return rows


def build_variants(args: Args, num_tasks: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """Every variant's update step (see the module docstring), each with its own network and optimizer."""
    inputs, targets = make_batch(num_tasks, args.batch_size, device, torch.Generator().manual_seed(args.seed))
    names = list(args.balancers) or sorted(balancers.BUILTIN_BALANCERS)
    variants = {"plain": plain_update(*make_critic(args, num_tasks, device), inputs, targets)}
    if args.compile_gradients:
        variants["plain/compiled"] = plain_update(*make_critic(args, num_tasks, device), inputs, targets, compiled=True)
    for name in names:
        variants[f"vmap/{name}"] = vmap_update(
            *make_critic(args, num_tasks, device),
            make_balancer(name, num_tasks, device, args.compile_solver),
            inputs,
            targets,
            args.compile_gradients,
        )
    for name in names:
        variants[f"weights/{name}"] = weights_only(
            make_balancer(name, num_tasks, device, args.compile_solver),
            make_critic(args, num_tasks, device)[0],
            inputs,
            targets,
        )
    if args.sac_balancers:
        variants["sac-plain"] = plain_sac_update(args, num_tasks, device)
        variants["sac-lean"] = plain_sac_update(args, num_tasks, device, lean=True, heads=False)
        variants["sac-lean/heads"] = plain_sac_update(args, num_tasks, device, lean=True, heads=True)
    for name in args.sac_balancers:
        variants[f"sac/{name}"] = sac_update(args, num_tasks, device, name, compiled=False, update_graph="off")
        variants[f"sac/{name}/compiled"] = sac_update(args, num_tasks, device, name, compiled=True, update_graph="off")
        if args.whole_update:
            variants[f"sac/{name}/whole"] = sac_update(args, num_tasks, device, name, compiled=True, update_graph="compiled")
    for name in args.loop_balancers:
        balancer = make_balancer(name, num_tasks, device, args.compile_solver)
        if not balancer.requires_grads:
            print(f"loop/{name}: skipped, {name} does not use per-task gradients", file=sys.stderr)
            continue
        variants[f"loop/{name}"] = loop_update(*make_critic(args, num_tasks, device), balancer, inputs, targets)
    return variants


def check_args(args: Args) -> None:
    """Refuse bad arguments before anything runs: ``SystemExit`` naming the value and what is allowed."""
    for field, smallest in (("repeats", 1), ("warmup", 0), ("batch_size", 1), ("threads", 1)):
        value = getattr(args, field)
        if value is not None and value < smallest:
            raise SystemExit(f"--{field.replace('_', '-')} must be >= {smallest}, got {value}")
    for field, smallest in (("tasks", 2), ("hidden", 1)):
        values = getattr(args, field)
        if not values or min(values) < smallest:
            raise SystemExit(f"--{field}: every value must be >= {smallest}, got {list(values)}")
    for field in ("balancers", "loop_balancers", "sac_balancers"):
        unknown = [name for name in getattr(args, field) if name not in balancers.BALANCERS]
        if unknown:
            allowed = ", ".join(sorted(balancers.BALANCERS))
            raise SystemExit(f"--{field.replace('_', '-')}: unknown balancer {unknown[0]!r}; allowed: {allowed}")
    try:
        resolve_device(args.device)
    except ValueError as error:
        raise SystemExit(f"--device: {error}") from None
    try:
        sac_config(args)
    except ValueError as error:
        raise SystemExit(f"--encoder {args.encoder} --critic {args.critic}: {error}") from None
    if args.out is not None:
        check_report_file("--out", args.out, create_parents=True)


def run(args: Args) -> dict:
    """Measure every variant at every task count; the JSON-ready report."""
    check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    malloc_tuned = tune_glibc_malloc() if args.malloc_tuning else False
    device = resolve_device(args.device)
    report: dict = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "malloc_tuning": malloc_tuned,
        "compile_solver": args.compile_solver,
        "compile_gradients": args.compile_gradients,
        "batch_size": args.batch_size,
        "hidden": list(args.hidden),
        "encoder": args.encoder,
        "critic": args.critic,
        "critic_layer_norm": args.critic_layer_norm,
        "repeats": args.repeats,
        "results": {},
    }
    for num_tasks in args.tasks:
        samples = time_round_robin(build_variants(args, num_tasks, device), args.warmup, args.repeats, device)
        report["results"][str(num_tasks)] = summarize(samples)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv)
    emit_report(run(args), args.out)


if __name__ == "__main__":
    main()
