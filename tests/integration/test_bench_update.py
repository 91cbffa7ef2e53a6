"""mtrl-bench-update: a tiny run reports every variant, the variants compute the same update, bad input is refused."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import mtrl.balancers as balancers
from benchmarks.update import (
    Args,
    loop_update,
    main,
    make_balancer,
    make_batch,
    make_critic,
    paired_ratio,
    run,
    vmap_update,
)

TINY = ["--hidden", "8", "8", "--batch-size", "4", "--repeats", "2", "--warmup", "1", "--no-compile-solver", "--no-compile-gradients"]


@pytest.mark.slow
def test_tiny_run_reports_every_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reports" / "bench.json"
    main(["--tasks", "2", "3", *TINY, "--sac-balancers", "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["threads"] == torch.get_num_threads() and printed["hidden"] == [8, 8] and printed["repeats"] == 2
    names = sorted(balancers.BUILTIN_BALANCERS)
    expected = {"plain", "loop/cagrad"} | {f"vmap/{n}" for n in names} | {f"weights/{n}" for n in names}
    for num_tasks in ("2", "3"):
        rows = printed["results"][num_tasks]
        assert set(rows) == expected
        assert rows["plain"]["ratio"] == 1.0 and rows["plain"]["cpu_ratio"] == 1.0
        assert all(row["median_ms"] > 0 and row["ratio"] > 0 and row["cpu_ms"] >= 0 and row["warmup_s"] >= 0 for row in rows.values())


@pytest.mark.slow
def test_compiled_run_adds_the_compiled_plain_update_and_the_sac_updates(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, aot_eager_gradients: Callable
) -> None:
    # (--no-whole-update: compiling the whole SAC update is tested in tests/unit/test_whole_update.py; the rows
    # are what is checked here, so the compiled variants run through aot_eager: tests/conftest.py)
    monkeypatch.setattr("benchmarks.update.compile_static", aot_eager_gradients)
    main(["--tasks", "2", *TINY[:-1], "--balancers", "cagrad", "--loop-balancers", "--sac-balancers", "mgda", "--no-whole-update"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["compile_gradients"] is True
    rows = printed["results"]["2"]
    sac_references = {"sac-plain", "sac-lean", "sac-lean/heads"}
    assert set(rows) == {"plain", "plain/compiled", "vmap/cagrad", "weights/cagrad", *sac_references, "sac/mgda", "sac/mgda/compiled"}
    assert rows["plain/compiled"]["ratio_to_eager"] == rows["plain/compiled"]["ratio"]  # plain is its eager twin
    assert rows["sac/mgda/compiled"]["ratio_to_eager"] > 0 and "ratio_to_eager" not in rows["sac/mgda"]
    assert rows["sac/mgda"]["ratio_to_sac_plain"] > 0 and rows["sac/mgda/compiled"]["ratio_to_sac_plain"] > 0
    assert rows["sac/mgda"]["ratio_to_sac_lean"] > 0 and rows["sac-lean/heads"]["ratio_to_sac_lean"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("critic", [["--critic", "brc"], ["--critic-layer-norm"]])
def test_the_sac_rows_take_the_chosen_critics(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, aot_eager_gradients: Callable, critic: list[str]
) -> None:
    monkeypatch.setattr("benchmarks.update.compile_static", aot_eager_gradients)  # the rows are checked, not inductor
    main(["--tasks", "2", *TINY, "--balancers", "mean", "--loop-balancers", "--sac-balancers", "cagrad", "--no-whole-update", *critic])
    printed = json.loads(capsys.readouterr().out)
    assert (printed["critic"], printed["critic_layer_norm"]) == (("brc", False) if critic[0] == "--critic" else ("mlp", True))
    rows = printed["results"]["2"]
    assert {"sac-plain", "sac-lean", "sac-lean/heads", "sac/cagrad"} <= set(rows)
    assert rows["sac/cagrad"]["ratio_to_sac_plain"] > 0


def test_the_plain_reference_trains_the_chosen_critics() -> None:
    """PlainSAC takes the critics' own target and loss: a BRC reference's critics hold categorical logits and move."""
    from benchmarks.update import PlainSAC, random_sac_batch, sac_config

    args = Args(hidden=(8, 8), critic="brc")
    reference = PlainSAC(sac_config(args), 2, torch.device("cpu"), seed=0)
    assert reference.critic.q1.output.head.weight.shape[-1] == 101  # the categorical atoms
    before = {k: v.clone() for k, v in reference.critic.state_dict().items()}
    reference.update(random_sac_batch(2, 4, torch.device("cpu"), 0))
    assert any(not torch.equal(before[k], v) for k, v in reference.critic.state_dict().items())


def test_ratio_is_paired_per_repeat() -> None:
    # the machine runs 10x slower in the second repeat: pairing cancels it, a ratio of medians would not
    times, reference = [2.0, 40.0, 6.0], [1.0, 20.0, 2.0]
    assert paired_ratio(times, reference) == 2.0
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("name", "compiled"),
    [("mean", False), ("cagrad", False), ("mgda", False), ("pcgrad", False), pytest.param("cagrad", True, marks=pytest.mark.slow)],
)
def test_vmap_and_loop_variants_make_the_same_update(name: str, compiled: bool) -> None:
    """The benchmark times equal work: the vmapped and the looped update give the same parameters."""
    num_tasks, device = 3, torch.device("cpu")
    args = Args(hidden=(16, 16), batch_size=8)
    inputs, targets = make_batch(num_tasks, args.batch_size, device, torch.Generator().manual_seed(0))
    nets = []
    for update in (functools.partial(vmap_update, compiled=compiled), loop_update):
        net, opt = make_critic(args, num_tasks, device)
        balancer = make_balancer(name, num_tasks, device, compile_solver=False)
        update(net, opt, balancer, inputs, targets)()
        nets.append(net)
    start, _ = make_critic(args, num_tasks, device)
    for (key, vmapped), looped, initial in zip(nets[0].state_dict().items(), nets[1].state_dict().values(), start.state_dict().values()):
        assert not torch.equal(vmapped, initial), key  # the step moved every parameter
        torch.testing.assert_close(vmapped, looped, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "1"], r"--tasks: every value must be >= 2, got \[1\]"),
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--hidden", "8", "0"], r"--hidden: every value must be >= 1, got \[8, 0\]"),
        (["--balancers", "mean", "cagard"], "--balancers: unknown balancer 'cagard'; allowed: aligned_mtl, cagrad, "),
        (["--loop-balancers", "foo"], "--loop-balancers: unknown balancer 'foo'"),
        (["--sac-balancers", "bar"], "--sac-balancers: unknown balancer 'bar'"),
        (["--encoder", "moore", "--critic-layer-norm"], "--encoder moore --critic mlp: sac.critic_layer_norm needs the mlp encoder"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(argv: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit, match=message):
        main([*argv, "--out", str(out)])
    assert not out.exists()


def test_output_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="is a directory"):
        run(Args(tasks=(2,), out=tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(SystemExit, match="--device: device 'cuda' was asked for but CUDA is not available"):
        run(Args(device="cuda"))
