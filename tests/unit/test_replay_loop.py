"""SAC's loop section (launch.replay_loop): its fields and checks, and runs saved with those fields under ``sac``.

Runs written before the ``replay`` section existed hold warmup_steps, updates_per_step,
batch_size_per_task and buffer_capacity_per_task in ``sac``, in ``config.json`` and in every
checkpoint's config. They load in today's layout, resume exactly, plot, and group with newer runs
in mtrl-report. mtrl-train runs here on the simulator-free environments of envs.testing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import launch.train
from agents.sac import SACConfig
from envs.testing import make_scripted_envs
from experiments.groups import group_runs
from experiments.runs import SkippedRun, load_run, load_runs
from launch.config import PPOTrainConfig, SACTrainConfig, config_from_plain
from launch.presets import PRESETS
from launch.factory import make_trainer
from launch.plot import load_run as load_plot_data
from launch.replay_loop import LOOP_FIELDS, SECTION, ReplayLoopConfig, move_loop_fields
from launch.train import main as train_main
from launch.train import parse_config
from mtrl.checkpoint import list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from mtrl.config_io import ConfigDataError

FORMER_SAC_FIELDS = ("warmup_steps", "updates_per_step", "batch_size_per_task", "buffer_capacity_per_task")

ARGS = [
    "smoke",
    "--env.benchmark", "reach-v3,drawer-close-v3",
    "--env.max-episode-steps", "5",
    "--env.num-workers", "0",
    "--sac.hidden-dims", "16",
    "--replay.warmup-steps", "20",
    "--replay.updates-per-step", "0.5",
    "--replay.batch-size-per-task", "8",
    "--replay.buffer-capacity-per-task", "200",
    "--sac.no-compile-gradients",
    "--balancer.name", "mean",
    "--balancer.no-statistics",
    "--eval-every", "40",
    "--eval-episodes", "1",
    "--final-eval-episodes", "1",
    "--checkpoint-every", "25",
    "--keep-checkpoints", "10",
    "--log-every", "30",
    "--device", "cpu",
    "--no-progress",
    "--no-tensorboard",
]


def former_layout(plain: dict[str, Any]) -> dict[str, Any]:
    """A SAC run's plain config as runs wrote it before the ``replay`` section: the loop's fields first in ``sac``."""
    former = copy.deepcopy(plain)
    loop = former.pop(SECTION)
    former["sac"] = {**loop, **former["sac"]}
    return former


# ----------------------------------------------------------------------------- the section


def test_the_section_holds_the_former_sac_fields_with_their_defaults() -> None:
    assert LOOP_FIELDS == FORMER_SAC_FIELDS
    assert {name: getattr(ReplayLoopConfig(), name) for name in LOOP_FIELDS} == {
        "warmup_steps": 15_000, "updates_per_step": 1.0, "batch_size_per_task": 128, "buffer_capacity_per_task": 100_000
    }
    assert not set(LOOP_FIELDS) & {f.name for f in dataclasses.fields(SACConfig)}
    assert isinstance(getattr(SACTrainConfig(), SECTION), ReplayLoopConfig)
    assert SECTION not in {f.name for f in dataclasses.fields(PPOTrainConfig)}


def test_the_presets_keep_their_loop_settings() -> None:
    smoke = PRESETS["smoke"][1]
    assert smoke.replay == ReplayLoopConfig(warmup_steps=1_000, batch_size_per_task=32, buffer_capacity_per_task=1_000)
    for name, tasks in (("mt10", 10), ("mt10-fast", 10), ("mt10-mean", 10), ("mt10-cagrad-paper", 10), ("mt50", 50), ("mt50-fast", 50)):
        assert PRESETS[name][1].replay == ReplayLoopConfig(warmup_steps=1500 * tasks), name


def test_the_help_lists_the_loop_flags_with_their_docstrings(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # one column of options
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        parse_config(["smoke", "--help"])
    help_text = " ".join(text.getvalue().replace("│", " ").split())
    assert "--replay.warmup-steps INT Environment steps (in total) with uniformly random actions before learning starts." in help_text
    for flag in ("--replay.updates-per-step", "--replay.batch-size-per-task", "--replay.buffer-capacity-per-task"):
        assert flag in help_text
    assert "--sac.warmup-steps" not in help_text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay.warmup-steps", "-1"], "replay.warmup_steps must be >= 0, got -1"),
        (["--replay.updates-per-step", "-0.5"], "replay.updates_per_step must be >= 0, got -0.5"),
        (["--replay.batch-size-per-task", "0"], "replay.batch_size_per_task must be > 0, got 0"),
        (["--replay.buffer-capacity-per-task", "0"], "replay.buffer_capacity_per_task must be > 0, got 0"),
        (["--sac.warmup-steps", "10"], "--sac.warmup-steps"),  # the former flag is no longer one
    ],
)
def test_a_bad_loop_value_is_refused_by_name_with_status_2_and_nothing_created(tmp_path, capsys, args, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["smoke", "--run-dir", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    assert message in " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the former layout


def test_a_former_layout_config_loads_in_todays_layout() -> None:
    config = dataclasses.replace(PRESETS["smoke"][1], run_dir=Path("runs/x"))
    saved = json.loads(json.dumps(former_layout(config.to_plain())))
    assert set(FORMER_SAC_FIELDS) <= set(saved["sac"]) and SECTION not in saved
    untouched = copy.deepcopy(saved)
    assert config_from_plain(saved) == config
    assert saved == untouched  # the caller's data is not changed
    assert config_from_plain(saved).to_plain() == config.to_plain()  # and is written back in today's layout
    partial = {"algo": "sac", "sac": {"warmup_steps": 7, "gamma": 0.9}}  # any of the fields, the others default
    assert config_from_plain(partial) == SACTrainConfig(sac=SACConfig(gamma=0.9), replay=ReplayLoopConfig(warmup_steps=7))


def test_a_former_layout_value_is_checked_under_its_new_name() -> None:
    with pytest.raises(ValueError, match=r"^replay.batch_size_per_task must be > 0, got 0$"):
        config_from_plain({"algo": "sac", "sac": {"batch_size_per_task": 0}})


def test_a_loop_field_in_both_sections_is_refused_by_name() -> None:
    both = {"algo": "sac", "sac": {"warmup_steps": 10}, "replay": {"warmup_steps": 20}}
    with pytest.raises(ConfigDataError, match=r"^sac.warmup_steps: the field is also given as replay.warmup_steps"):
        config_from_plain(both)
    assert config_from_plain({"algo": "sac", "sac": {"warmup_steps": 10}, "replay": {"batch_size_per_task": 4}}).replay == (
        ReplayLoopConfig(warmup_steps=10, batch_size_per_task=4)
    )


def test_only_a_sac_runs_loop_fields_move() -> None:
    ppo = PRESETS["ppo-smoke"][1].to_plain()
    assert move_loop_fields(ppo) is ppo
    today = PRESETS["smoke"][1].to_plain()
    assert move_loop_fields(today) is today
    for other in ([1, 2], None, {"algo": "sac", "sac": "?"}, {"algo": "ppo", "ppo": {"warmup_steps": 1}}):
        assert move_loop_fields(other) is other
    with pytest.raises(ConfigDataError, match=r"ppo.warmup_steps: no such field in PPOConfig"):
        config_from_plain({"algo": "ppo", "ppo": {"warmup_steps": 1}})


# ----------------------------------------------------------------------------- runs saved in the former layout


def _to_former_layout(run: Path) -> None:
    """Rewrite ``run``'s config.json and every checkpoint's config as runs wrote them before the ``replay`` section."""
    config_file = run / "config.json"
    config_file.write_text(json.dumps(former_layout(json.loads(config_file.read_text())), indent=2) + "\n")
    checkpoints = run / "checkpoints"
    for path in list_checkpoints(checkpoints):
        payload = load_checkpoint(path, map_location="cpu")
        payload["config"] = former_layout(payload["config"])
        step = payload["global_step"]
        for part in path.iterdir():
            part.unlink()
        path.rmdir()
        save_checkpoint(checkpoints, step, payload, keep=10)


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Nested payloads equal, tensors element for element; a schedule's length aside (a resumed run keeps its
    first part's, from that part's total_steps: the rate of the constant schedule here is the same either way)."""
    if where.endswith(".total_updates"):
        return
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def test_a_former_layout_run_plots_and_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(launch.train, "make_trainer", functools.partial(make_trainer, build_envs=make_scripted_envs))
    monkeypatch.setattr(launch.train, "_plot", lambda run_dir: None)  # matplotlib is not what is tested
    straight, former = tmp_path / "straight", tmp_path / "former"
    assert train_main([*ARGS, "--total-steps", "100", "--run-dir", str(straight)]) == 0
    assert train_main([*ARGS, "--total-steps", "50", "--run-dir", str(former)]) == 0
    _to_former_layout(former)
    assert "warmup_steps" in json.loads((former / "config.json").read_text())["sac"]
    assert load_latest(former / "checkpoints")[1]["config"]["sac"]["updates_per_step"] == 0.5
    assert load_plot_data(former).algo == "sac"  # mtrl-plot reads it
    capsys.readouterr()

    assert train_main(["--resume", str(former), "--total-steps", "100"]) == 0
    changes = [line for line in capsys.readouterr().err.splitlines() if " -> " in line]
    assert changes == ["mtrl-train: total_steps: 50 -> 100"]  # the moved fields are not changes
    saved = json.loads((former / "config.json").read_text())
    assert saved[SECTION] == {"warmup_steps": 20, "updates_per_step": 0.5, "batch_size_per_task": 8, "buffer_capacity_per_task": 200}
    assert not set(FORMER_SAC_FIELDS) & set(saved["sac"])  # written back in today's layout
    _, resumed = load_latest(former / "checkpoints")
    _, uninterrupted = load_latest(straight / "checkpoints")
    assert resumed["global_step"] == uninterrupted["global_step"] == 100
    for part in ("agent", "replay", "update_credit", "sampler", "action_rng", "envs_rng"):
        _assert_same(resumed[part], uninterrupted[part], part)


def _write_run(run_dir: Path, config: dict[str, Any]) -> Path:
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    final = {"step": 100, "episodes_per_task": 1, "success_rate": 0.5, "per_task_success": {"reach-v3": 1.0, "drawer-close-v3": 0.0},
             "per_task_return": {"reach-v3": 1.0, "drawer-close-v3": 0.0}}
    (run_dir / "eval" / "final.json").write_text(json.dumps(final))
    return run_dir


def test_former_and_new_layout_runs_group_together_in_the_report(tmp_path) -> None:
    def plain(seed: int, warmup: int) -> dict[str, Any]:
        config = PRESETS["smoke"][1]
        return dataclasses.replace(config, seed=seed, replay=dataclasses.replace(config.replay, warmup_steps=warmup)).to_plain()

    dirs = [
        _write_run(tmp_path / "former-1", former_layout(plain(1, 1_000))),
        _write_run(tmp_path / "new-2", plain(2, 1_000)),
        _write_run(tmp_path / "former-3", former_layout(plain(3, 500))),
        _write_run(tmp_path / "new-4", plain(4, 500)),
    ]
    runs, skipped = load_runs(dirs, "final")
    assert skipped == []
    groups, left_out = group_runs(runs)
    assert left_out == []
    assert {group.name: group.seeds for group in groups} == {"warmup_steps=500": [3, 4], "warmup_steps=1000": [1, 2]}
    both = _write_run(tmp_path / "both", {**plain(5, 1_000), "sac": {**plain(5, 1_000)["sac"], "warmup_steps": 3}})
    reason = load_run(both, "final")
    assert isinstance(reason, SkippedRun) and reason.reason.startswith("config.json: sac.warmup_steps: the field is also given")
