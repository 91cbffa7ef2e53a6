"""mtrl-report on synthetic run directories: the report's numbers are rliable's, runs group by config
without the seed, figures are written, broken runs are skipped with their reason, bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics

from experiments.report import main
from experiments.statistics import PROFILE_TAUS, probability_of_improvement

TASKS = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3")
SEEDS = (1, 2, 3)
REPS = 50  # the report and rliable draw the same bootstrap samples for any count
BOOT_SEED = 7
PERIODIC_STEPS = (10_000, 20_000, 30_000)
PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def make_config(balancer: str, seed: int, c: float = 0.9, **top: object) -> dict:
    return {
        "algo": "sac",
        "env": {
            "benchmark": ",".join(TASKS),
            "envs_per_task": 1,
            "max_episode_steps": 500,
            "reward_function_version": "v2",
            "num_workers": seed,  # differs between seeds: not a grouping field
            "worker_timeout_s": 30.0,
        },
        "balancer": {"name": balancer, "c": c, "num_sampled": 4, "rescale": 1, "lr": 0.025, "alpha": 1.5,
                     "statistics": True, "compile_solver": True},
        "seed": seed,
        "total_steps": 40_000,
        "eval_every": 10_000,
        "device": "cpu",
        "run_dir": f"runs/{balancer}-{seed}",
        "progress": False,
        "sac": {"gamma": 0.99, "compile_gradients": seed % 2 == 0},
        **top,
    }


def success(group: int, seed: int, step: int) -> dict[str, float]:
    """Known per-task success rates, multiples of 1/50 like 50 evaluation episodes give."""
    rng = np.random.default_rng([group, seed, step])
    return {task: float(v) for task, v in zip(TASKS, rng.integers(0, 51, len(TASKS)) / 50)}


def evaluation(step: int, per_task: dict[str, float], episodes: int = 50) -> dict:
    return {"step": step, "episodes_per_task": episodes, "success_rate": float(np.mean(list(per_task.values()))),
            "per_task_success": per_task, "per_task_return": {t: 100.0 for t in per_task}}


def write_run(run_dir: Path, config: dict, final: dict | str | None, periodic: dict[int, dict[str, float]]) -> Path:
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text("")
    for step, per_task in periodic.items():
        (run_dir / "eval" / f"step_{step:012d}.json").write_text(json.dumps(evaluation(step, per_task, episodes=10)))
    if final is not None:
        (run_dir / "eval" / "final.json").write_text(final if isinstance(final, str) else json.dumps(final))
    return run_dir


def write_group(root: Path, index: int, balancer: str, c: float = 0.9, seeds: tuple[int, ...] = SEEDS) -> None:
    for seed in seeds:
        periodic = {step: success(index, seed, step) for step in PERIODIC_STEPS}
        write_run(root / "trials" / f"{balancer}-{c}-{seed}", make_config(balancer, seed, c),
                  evaluation(40_000, success(index, seed, 40_000)), periodic)


def make_sweep(root: Path) -> Path:
    for index, balancer in enumerate(("mean", "cagrad", "pcgrad")):
        write_group(root, index, balancer)
    (root / "sweep.json").write_text("{}")
    return root


def run_report(*argv: str) -> dict:
    assert main([*argv, "--reps", str(REPS), "--seed", str(BOOT_SEED)]) == 0
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path(argv[0])
    return json.loads((out / "report.json").read_text())


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path / "sweep")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One report of three groups (mean, cagrad, pcgrad) of three seeds, shared by the tests that only read it."""
    root = make_sweep(tmp_path_factory.mktemp("reported") / "sweep")
    return root, run_report(str(root))


def scores_of(index: int, step: int = 40_000) -> np.ndarray:
    return np.array([[success(index, seed, step)[t] for t in TASKS] for seed in SEEDS])  # [seeds, tasks]


def rliable_intervals(scores: np.ndarray | list[np.ndarray], func) -> tuple[np.ndarray, np.ndarray]:
    np.random.seed(BOOT_SEED)
    points, intervals = rly.get_interval_estimates({"x": scores}, func, reps=REPS)
    return np.atleast_1d(points["x"]), np.asarray(intervals["x"]).reshape(2, -1)


def test_intervals_are_rliables(reported: tuple[Path, dict]) -> None:
    _, report = reported
    groups = {g["labels"]["balancer"]: g for g in report["groups"]}
    for index, balancer in enumerate(("mean", "cagrad", "pcgrad")):
        group, scores = groups[balancer], scores_of(index)
        assert group["seeds"] == list(SEEDS) and group["tasks"] == list(TASKS)
        points, intervals = rliable_intervals(
            scores, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])
        )
        for k, key in enumerate(("mean", "iqm")):
            assert group[key]["value"] == pytest.approx(points[k], abs=1e-12)
            assert group[key]["ci"] == pytest.approx(intervals[:, k].tolist(), abs=1e-12)
        points, intervals = rliable_intervals(scores, lambda x: np.mean(x, axis=0))
        for j, task in enumerate(TASKS):
            assert group["per_task"][task]["value"] == pytest.approx(points[j], abs=1e-12)
            assert group["per_task"][task]["ci"] == pytest.approx(intervals[:, j].tolist(), abs=1e-12)
        np.random.seed(BOOT_SEED)
        profile, profile_ci = rly.create_performance_profile({"x": scores}, PROFILE_TAUS, reps=REPS)
        assert group["profile"]["value"] == pytest.approx(profile["x"].tolist(), abs=1e-12)
        assert group["profile"]["low"] == pytest.approx(profile_ci["x"][0].tolist(), abs=1e-12)
        assert group["profile"]["high"] == pytest.approx(profile_ci["x"][1].tolist(), abs=1e-12)


def test_curves_are_rliables_per_step(reported: tuple[Path, dict]) -> None:
    _, report = reported
    group = next(g for g in report["groups"] if g["labels"]["balancer"] == "cagrad")
    scores = np.stack([scores_of(1, step) for step in PERIODIC_STEPS], axis=-1)  # [seeds, tasks, steps]
    steps = range(len(PERIODIC_STEPS))

    def per_step(x: np.ndarray) -> np.ndarray:
        means = [metrics.aggregate_mean(x[..., k]) for k in steps]
        return np.array(means + [metrics.aggregate_iqm(x[..., k]) for k in steps])

    points, intervals = rliable_intervals(scores, per_step)
    curve = group["curve"]
    assert curve["steps"] == list(PERIODIC_STEPS) and curve["left_out_steps"] == 0
    assert curve["mean"]["value"] + curve["iqm"]["value"] == pytest.approx(points.tolist(), abs=1e-12)
    assert curve["mean"]["low"] + curve["iqm"]["low"] == pytest.approx(intervals[0].tolist(), abs=1e-12)
    assert curve["mean"]["high"] + curve["iqm"]["high"] == pytest.approx(intervals[1].tolist(), abs=1e-12)


def test_probability_of_improvement_is_rliables(reported: tuple[Path, dict]) -> None:
    _, report = reported
    pairs = {(p["x"], p["y"]): p for p in report["probability_of_improvement"]}
    assert len(pairs) == 6  # every ordered pair of 3 groups
    x, y = scores_of(1), scores_of(0)
    pair = pairs[("balancer=cagrad", "balancer=mean")]
    assert pair["value"] == pytest.approx(metrics.probability_of_improvement(x, y), abs=1e-12)
    _, intervals = rliable_intervals([x, y], metrics.probability_of_improvement)
    assert pair["ci"] == pytest.approx(intervals[:, 0].tolist(), abs=1e-12)


def test_fast_probability_of_improvement_equals_rliables() -> None:
    rng = np.random.default_rng(0)
    for n, m in ((3, 3), (5, 2), (1, 4)):
        x = rng.integers(0, 4, (n, 6)) / 3  # coarse values: many ties
        y = rng.integers(0, 4, (m, 6)) / 3
        assert probability_of_improvement(x, y)[0] == pytest.approx(metrics.probability_of_improvement(x, y), abs=1e-12)
    same = rng.random((3, 5))
    assert probability_of_improvement(same, same)[0] == pytest.approx(0.5, abs=1e-12)


def test_groups_are_named_by_differing_fields_not_seeds(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    write_group(root, 0, "cagrad", c=0.5)
    write_group(root, 1, "cagrad", c=0.9)
    write_group(root, 2, "mean", c=0.7)  # mean does not take c: not part of its identity
    write_group(root, 3, "mean", c=0.2)
    report = run_report(str(root))
    names = sorted(g["name"] for g in report["groups"])
    assert names == ["balancer=cagrad c=0.5", "balancer=cagrad c=0.9", "balancer=mean"]
    mean = next(g for g in report["groups"] if g["name"] == "balancer=mean")
    assert mean["seeds"] == list(SEEDS)  # the two mean 'groups' are one experiment: a seed twice is skipped
    assert sum("same config and seed" in s["reason"] for s in report["skipped"]) == len(SEEDS)
    assert all(len(g["seeds"]) == len(SEEDS) for g in report["groups"])  # seeds, workers, device, run_dir do not split


def test_every_figure_is_a_png(reported: tuple[Path, dict]) -> None:
    sweep, report = reported
    assert sorted(report["figures"]) == sorted(
        f"figures/{n}" for n in ("aggregate.png", "curves.png", "per_task.png", "profiles.png", "improvement.png")
    )
    for name in report["figures"]:
        data = (sweep / name).read_bytes()
        assert len(data) > len(PNG_HEADER) and data.startswith(PNG_HEADER)
    markdown = (sweep / "report.md").read_text()
    assert all(f"]({name})" in markdown for name in report["figures"])


def test_broken_runs_are_skipped_and_one_seed_has_no_interval(sweep: Path) -> None:
    config = make_config("mgda", 5)
    write_run(sweep / "trials" / "no-final", make_config("cagrad", 4), None, {10_000: success(9, 4, 10_000)})
    write_run(sweep / "trials" / "corrupt", make_config("cagrad", 5), '{"step": 40000, "per_task', {})
    write_run(sweep / "trials" / "alone", config, evaluation(40_000, success(8, 5, 40_000)), {})
    write_run(sweep / "trials" / "bad-config", config, evaluation(40_000, success(8, 6, 40_000)), {})
    (sweep / "trials" / "bad-config" / "config.json").write_text("[1, 2")
    report = run_report(str(sweep))
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons["no-final"].startswith("eval/final.json: missing")
    assert reasons["corrupt"].startswith("eval/final.json: not valid JSON")
    assert reasons["bad-config"].startswith("config.json: not valid JSON")
    assert len(reasons) == 3
    alone = next(g for g in report["groups"] if g["labels"]["balancer"] == "mgda")
    assert alone["seeds"] == [5] and alone["interval_note"] == "one seed: no interval is possible"
    assert alone["mean"]["ci"] is None and alone["iqm"]["ci"] is None and alone["profile"]["low"] is None
    assert alone["mean"]["value"] == pytest.approx(np.mean(list(success(8, 5, 40_000).values())))
    assert alone["curve"] is None
    assert all(p["ci"] is None for p in report["probability_of_improvement"] if "balancer=mgda" in (p["x"], p["y"]))
    cagrad = next(g for g in report["groups"] if g["labels"]["balancer"] == "cagrad")
    assert cagrad["seeds"] == list(SEEDS)
    markdown = (sweep / "report.md").read_text()
    assert "no-final" in markdown and "not valid JSON" in markdown
    assert "[n/a]" in markdown and "one seed: no interval is possible" in markdown


def test_best_score_and_unshared_steps(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    per_step = {1: {10_000: 0.2, 20_000: 0.9, 30_000: 0.5}, 2: {10_000: 0.4, 30_000: 0.6}}
    for seed, curve in per_step.items():
        write_run(root / f"run{seed}", make_config("cagrad", seed), None,
                  {step: dict.fromkeys(TASKS, value) for step, value in curve.items()})
    report = run_report(str(root), "--score", "best")
    (group,) = report["groups"]
    assert report["score"]["kind"] == "best" and "best" in report["score"]["label"]
    assert [r["step"] for r in group["runs"]] == [20_000, 30_000]
    assert group["mean"]["value"] == pytest.approx(0.75)
    assert group["curve"]["steps"] == [10_000, 30_000] and group["curve"]["left_out_steps"] == 1
    markdown = (root / "report.md").read_text()
    assert "best success over training" in markdown
    assert "left out: 1 evaluated steps not shared by every run" in markdown


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("mtrl-report: error: ")
    return err


def test_cli_refusals_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "sweep"
    write_group(root, 0, "cagrad", seeds=(1,))
    assert "no such directory" in _error(capsys, str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no run directories" in _error(capsys, str(empty))
    assert list(empty.iterdir()) == []
    assert "--out is needed" in _error(capsys, str(root), str(empty))
    (tmp_path / "file").write_text("")
    assert "not a directory" in _error(capsys, str(root), "--out", str(tmp_path / "file" / "out"))
    assert "--reps" in _error(capsys, str(root), "--reps", "0")
    assert sorted(p.name for p in root.iterdir()) == ["trials"]

    run_report(str(root))
    written = {name: (root / name).read_bytes() for name in ("report.md", "report.json")}
    assert "already holds a report" in _error(capsys, str(root))
    assert {name: (root / name).read_bytes() for name in written} == written


def test_same_seed_same_report_on_overwrite(reported: tuple[Path, dict]) -> None:
    sweep, report = reported
    assert run_report(str(sweep), "--overwrite") == report


@pytest.mark.parametrize("preset", ["smoke", "ppo-smoke"])
def test_a_run_saved_before_fields_were_added_groups_with_a_new_run_of_the_same_settings(preset):
    """config.json of an older run lacks the sections added since (encoders, critics, normalisation):
    read with their defaults, it has the grouping key of a new run with the same settings."""
    from experiments.groups import result_fields
    from experiments.runs import current_layout
    from launch.presets import PRESETS

    new = PRESETS[preset][1].to_plain()  # (description, config)
    section = new["algo"]
    added = ("encoder", "critic", "critic_layer_norm", "critic_width", "critic_blocks", "num_bins", "v_min", "v_max",
             "reward_normalization", "value_normalization", "popart_beta")
    old = {**new, section: {key: value for key, value in new[section].items() if key not in added}}
    assert old != new
    assert result_fields(current_layout(old)) == result_fields(current_layout(new))
    other = {**new, section: {**new[section], "gamma": 0.5}}
    assert result_fields(current_layout(other)) != result_fields(current_layout(new))
