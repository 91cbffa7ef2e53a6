"""experiments.grid: a sweep specification expands to the right trials, names and mtrl-train arguments."""

from __future__ import annotations

import pytest

from experiments.grid import SweepSpec, expand, parse_seeds


def test_seeds_take_numbers_and_ranges():
    assert parse_seeds(["1-3", "7"]) == (1, 2, 3, 7)
    with pytest.raises(ValueError, match=r"--seeds: 'x' is not a seed or a range"):
        parse_seeds(["x"])
    with pytest.raises(ValueError, match="given twice"):
        parse_seeds(["1-3", "2"])


def test_the_grid_is_balancers_by_varied_values_by_seeds_and_options_only_where_taken():
    spec = SweepSpec(
        "ppo-smoke",
        balancers=("mean", "pcgrad", "cagrad"),
        seeds=(1, 2),
        set=("ppo.hidden-dims=32,32", "progress=false"),
        vary=("balancer.c=0.5|0.9",),
    )
    trials = expand(spec)
    assert [t.name for t in trials] == [
        "mean__seed1", "mean__seed2", "pcgrad__seed1", "pcgrad__seed2",
        "cagrad__c=0.5__seed1", "cagrad__c=0.5__seed2", "cagrad__c=0.9__seed1", "cagrad__c=0.9__seed2",
    ]  # PCGrad takes no c: its trials are not doubled
    by_name = {t.name: t for t in trials}
    cagrad = by_name["cagrad__c=0.9__seed2"]
    assert (cagrad.config.balancer.name, cagrad.config.balancer.c, cagrad.config.seed) == ("cagrad", 0.9, 2)
    assert cagrad.config.ppo.hidden_dims == (32, 32) and cagrad.config.progress is False
    assert "--balancer.c" not in by_name["pcgrad__seed1"].argv
    assert cagrad.argv[0] == "ppo-smoke" and "--run-dir" not in cagrad.argv


def test_an_option_shared_by_two_balancers_is_varied_for_both_and_set_only_where_taken():
    spec = SweepSpec(
        "ppo-smoke",
        balancers=("famo", "gradnorm", "pcgrad"),
        set=("balancer.compile-solver=false", "balancer.alpha=0.5"),
        vary=("balancer.lr=0.01|0.05",),
    )
    trials = {t.name: t for t in expand(spec)}
    assert list(trials) == ["famo__lr=0.01__seed1", "famo__lr=0.05__seed1", "gradnorm__lr=0.01__seed1", "gradnorm__lr=0.05__seed1", "pcgrad__seed1"]
    assert trials["famo__lr=0.05__seed1"].config.balancer.lr == 0.05
    gradnorm = trials["gradnorm__lr=0.01__seed1"]
    assert (gradnorm.config.balancer.lr, gradnorm.config.balancer.alpha) == (0.01, 0.5)
    for trial in trials.values():  # no balancer here has a solver; alpha is GradNorm's only
        assert "--balancer.no-compile-solver" not in trial.argv
        assert ("--balancer.alpha" in trial.argv) == trial.name.startswith("gradnorm")
    assert not any(arg.startswith("--balancer.") and arg != "--balancer.name" for arg in trials["pcgrad__seed1"].argv)


def test_a_task_list_keeps_its_commas_and_names_the_trial_when_benchmarks_vary():
    trials = expand(SweepSpec("smoke", seeds=(3,), benchmarks=("reach-v3,drawer-close-v3", "MT10")))
    assert [t.config.env.benchmark for t in trials] == ["reach-v3,drawer-close-v3", "MT10"]
    assert [t.name for t in trials] == ["reach-v3+drawer-close-v3__cagrad__seed3", "MT10__cagrad__seed3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SweepSpec("nope"), "preset 'nope' is not one of"),
        (SweepSpec("smoke", set=("sac.no-such=1",)), r"--set: the preset has no field 'sac.no_such'"),
        (SweepSpec("smoke", set=("seed=3",)), "--set/--vary seed: use --seeds"),
        (SweepSpec("smoke", set=("progress=maybe",)), "progress is a boolean"),
        (SweepSpec("smoke", vary=("total-steps",)), "expected FIELD=VALUE"),
        (SweepSpec("smoke", balancers=("cagard",)), "unknown balancer 'cagard'"),
        (SweepSpec("smoke", set=("total-steps=-5",)), r"trial cagrad__seed1: mtrl-train refuses smoke .* --total-steps -5"),
    ],
)
def test_a_bad_specification_is_refused_naming_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        expand(spec)
