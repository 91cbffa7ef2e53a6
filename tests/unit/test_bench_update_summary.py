"""mtrl-bench-update's SAC reference: ``sac-plain`` is timed with the others, every ``sac/...`` row is paired with it,
and its update is a real SAC update (every network steps, the target moves by tau)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agents.sac import SACConfig
from benchmarks.update import Args, PlainSAC, Samples, build_variants, random_sac_batch, run, sac_agent, summarize

TINY = Args(
    tasks=(2,),
    device="cpu",
    repeats=2,
    warmup=1,
    batch_size=4,
    hidden=(8,),
    balancers=("mean",),
    loop_balancers=(),
    sac_balancers=("mean",),
    compile_solver=False,
    compile_gradients=False,
    whole_update=False,
)


@pytest.mark.slow
def test_sac_plain_is_timed_and_every_sac_row_has_its_paired_ratio(aot_eager_gradients) -> None:
    # sac/mean/compiled through aot_eager (tests/conftest.py): the rows are checked, not inductor's code
    rows = run(TINY)["results"]["2"]
    assert rows["sac-plain"]["median_ms"] > 0 and rows["sac-plain"]["cpu_ms"] > 0
    assert "ratio_to_sac_plain" not in rows["sac-plain"]
    for name in ("sac/mean", "sac/mean/compiled"):
        assert rows[name]["ratio_to_sac_plain"] > 0
    assert "ratio_to_sac_plain" not in rows["vmap/mean"]


def test_sac_plain_and_whole_come_with_the_sac_balancers() -> None:
    with_whole = build_variants(dataclasses.replace(TINY, whole_update=True), 2, torch.device("cpu"))
    assert {"sac-plain", "sac/mean", "sac/mean/compiled", "sac/mean/whole"} <= set(with_whole)
    without_sac = build_variants(dataclasses.replace(TINY, sac_balancers=()), 2, torch.device("cpu"))
    assert not [name for name in without_sac if name.startswith("sac")]


def test_the_eager_and_compiled_sac_variants_keep_the_update_graph_off() -> None:
    cpu = torch.device("cpu")
    assert sac_agent(TINY, 2, cpu, "mean", compiled=False).update_graph == "off"
    assert sac_agent(TINY, 2, cpu, "mean", compiled=True, update_graph="compiled").update_graph == "compiled"


def test_whole_is_paired_with_eager_compiled_and_sac_plain() -> None:
    def samples(*wall: float) -> Samples:
        return Samples(list(wall), list(wall))

    rows = summarize(
        {
            "plain": samples(1.0, 1.0),
            "sac-plain": samples(10.0, 20.0),
            "sac/mean": samples(20.0, 40.0),
            "sac/mean/compiled": samples(15.0, 30.0),
            "sac/mean/whole": samples(10.0, 10.0),
        }
    )
    whole = rows["sac/mean/whole"]
    assert whole["ratio_to_eager"] == 0.375  # median of 10/20 and 10/40
    assert whole["ratio_to_compiled"] == 0.5  # median of 10/15 and 10/30
    assert whole["ratio_to_sac_plain"] == 0.75  # median of 10/10 and 10/20
    assert rows["sac/mean"]["ratio_to_sac_plain"] == 2.0
    assert "ratio_to_sac_plain" not in summarize({"plain": samples(1.0), "sac/mean": samples(2.0)})["sac/mean"]


def test_a_plain_sac_update_steps_every_network_and_moves_the_target_by_tau() -> None:
    config = SACConfig(hidden_dims=(8, 8))
    reference = PlainSAC(config, num_tasks=2, device=torch.device("cpu"), seed=0)
    batch = random_sac_batch(2, 4, torch.device("cpu"), seed=0)
    before = {
        "critic": [p.detach().clone() for p in reference.critic.parameters()],
        "actor": [p.detach().clone() for p in reference.actor.parameters()],
        "target": [p.detach().clone() for p in reference.target.parameters()],
    }
    alpha_before = reference.log_alpha.detach().clone()  # [T]
    reference.update(batch)
    for network in ("critic", "actor"):
        for old, new in zip(before[network], getattr(reference, network).parameters(), strict=True):
            assert not torch.equal(old, new), f"a {network} parameter did not change"
    assert (reference.log_alpha.detach() != alpha_before).all()  # every task's temperature
    for old, new, critic in zip(before["target"], reference.target.parameters(), reference.critic.parameters(), strict=True):
        torch.testing.assert_close(new, old + config.tau * (critic.detach() - old))
        assert not torch.equal(new, old)
    assert config.tau == 0.005
