"""W&B tracking (``--track``): offline W&B runs read back from their transaction log, on simulator-free environments.

An offline W&B run keeps its data in ``run-<id>.wandb`` alone: W&B's record log (LevelDB's
log format: 32 KiB blocks of records, each a ``wandb_internal_pb2.Record``), the file
``wandb sync`` uploads. :func:`offline_runs` reads it back with wandb's own protobuf classes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from envs.testing import make_scripted_envs
from experiments.groups import result_fields
from launch import train
from launch.factory import make_trainer
from launch.run_dir import clear_for_restart
from mtrl.checkpoint import list_checkpoints
from mtrl.logging import RunLogger, read_metrics
from mtrl.tracking import WANDB_MISSING, WandbRunRecord, WandbTarget
from test_trainer import SAC  # tests/unit/test_trainer.py: 2 scripted tasks, 5-step episodes

WANDB_KEYS = {"_step", "_runtime", "_timestamp"}
"""What W&B adds to every history row."""


@dataclasses.dataclass
class OfflineRun:
    """One offline W&B run directory, as its record log holds it."""

    run_id: str
    name: str
    started: float
    """The run's start time (seconds): offline run directories are named by the second the run started in."""
    config: dict[str, Any]
    rows: dict[int, dict[str, float]]
    """History rows by step, without W&B's own keys."""
    exit_code: int | None


def _records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B record log"
    block, pos, pending = 32 * 1024, 7, b""  # after the 7-byte file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """The offline W&B runs under ``WANDB_DIR``, oldest first (once wandb's service has written them)."""
    import wandb

    wandb.teardown()  # the service may write a finished run's last records later; its shutdown waits for them
    runs = []
    for log in wandb_dir.glob("wandb/offline-run-*/run-*.wandb"):
        run = OfflineRun("", "", math.nan, {}, {}, None)
        for record in _records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.run_id, run.name = record.run.run_id, record.run.display_name
                run.started = record.run.start_time.ToMicroseconds() / 1e6
                run.config = {item.key: json.loads(item.value_json) for item in record.run.config.update if item.key != "_wandb"}
            elif kind == "history":
                values = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                run.rows[record.history.step.num] = {k: v for k, v in values.items() if k not in WANDB_KEYS}
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        runs.append(run)
    return sorted(runs, key=lambda run: run.started)


def metric_rows(records: list[dict], after: int = -1) -> dict[int, dict[str, float]]:
    """metrics.jsonl's records merged by step (as W&B merges the records of one step into one row)."""
    rows: dict[int, dict[str, float]] = {}
    for record in records:
        if record["step"] > after:
            rows.setdefault(record["step"], {}).update({k: v for k, v in record.items() if k not in ("step", "time")})
    return rows


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """W&B offline, all its files under tmp_path, without console capture, system statistics or the
    description of the machine (for speed).

    wandb reads its environment once per process (``wandb.setup``): ``wandb.teardown`` around the
    test makes it read this one.
    """
    wandb = pytest.importorskip("wandb")
    wandb.teardown()
    root = tmp_path / "wandb_root"
    root.mkdir()
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": root,
        "WANDB_CONFIG_DIR": root / "config",
        "WANDB_CACHE_DIR": root / "cache",
        "WANDB_DATA_DIR": root / "data",
        "WANDB_CONSOLE": "off",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_META": "true",  # no git, Python or hardware description
        "WANDB_X_SAVE_REQUIREMENTS": "false",
        "WANDB_SILENT": "true",
    }.items():
        monkeypatch.setenv(name, str(value))
    yield root
    wandb.teardown()


@pytest.fixture
def scripted_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """mtrl-train on simulator-free environments, without its end-of-run figures."""
    monkeypatch.setattr(train, "make_trainer", functools.partial(make_trainer, build_envs=make_scripted_envs))
    monkeypatch.setattr(train, "_plot", lambda run_dir: None)


def test_a_tracked_run_and_its_resume_are_one_wandb_run_with_every_scalar_once(tmp_path, wandb_dir, scripted_train, monkeypatch):
    run_dir = tmp_path / "run"
    config = dataclasses.replace(SAC, total_steps=50, track=True, wandb_project="mtrl-test", run_dir=run_dir)
    monkeypatch.setattr(train, "parse_config", lambda argv: config)
    assert train.main([]) == 0
    first_config = json.loads((run_dir / "config.json").read_text())
    first_records = read_metrics(run_dir / "metrics.jsonl")
    # as if the run had died after step 50 before its checkpoint there was written: it resumes from step 30
    last_checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    assert last_checkpoint.name.endswith("50")
    shutil.rmtree(last_checkpoint)
    assert train.main(["--resume", str(run_dir), "--total-steps", "100"]) == 0

    first, resumed = offline_runs(wandb_dir)
    assert first.run_id == resumed.run_id == WandbRunRecord.load(run_dir).id
    assert first.name == resumed.name == run_dir.name
    assert first.config == first_config and first_config["total_steps"] == 50
    assert resumed.config == json.loads((run_dir / "config.json").read_text()) and resumed.config["total_steps"] == 100
    assert first.exit_code == resumed.exit_code == 0

    # every scalar of metrics.jsonl at its step; the resumed run sends nothing at or before step 50, which W&B has
    final_records = read_metrics(run_dir / "metrics.jsonl")
    assert {"losses/qf_loss", "eval/success_rate", "charts/episodic_return"} <= first.rows[30].keys() | first.rows[40].keys()
    assert any("/reach-v3" in key for row in first.rows.values() for key in row)  # per-task values, flattened
    for logged, records, after in ((first, first_records, -1), (resumed, final_records, 50)):
        expected = metric_rows(records, after)
        assert sorted(logged.rows) == sorted(expected)
        for step, row in expected.items():
            assert logged.rows[step] == pytest.approx(row, rel=1e-12), step
    assert sorted(first.rows) == [10, 20, 30, 40, 50] and sorted(resumed.rows) == [60, 70, 80, 90, 100]


def test_a_resumed_logger_sends_wandb_only_records_it_does_not_hold(tmp_path, wandb_dir):
    target = WandbTarget(project="mtrl-test", config={"seed": 1})
    with RunLogger(tmp_path, tensorboard=False, wandb=target) as logger:
        for step in (10, 20, 30):
            logger.log(step, {"x": step})
    with RunLogger(tmp_path, tensorboard=False, resume_step=10, wandb=target) as logger:
        logger.log(20, {"x": 21})  # interrupted again before step 30
    with RunLogger(tmp_path, tensorboard=False, resume_step=10, wandb=target) as logger:
        for step in (20, 30, 40):
            logger.log(step, {"x": step + 2})
    first, second, third = offline_runs(wandb_dir)
    assert first.run_id == second.run_id == third.run_id == WandbRunRecord.load(tmp_path).id
    assert first.rows == {10: {"x": 10}, 20: {"x": 20}, 30: {"x": 30}}
    assert second.rows == {}
    assert third.rows == {40: {"x": 42}}  # step 30 is W&B's already, though metrics.jsonl lost it twice
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(10, 10), (20, 22), (30, 32), (40, 42)]
    clear_for_restart(tmp_path)  # a run started again from the beginning gets a new W&B run
    assert WandbRunRecord.load(tmp_path) is None


def test_a_first_tracked_resume_sends_every_record(tmp_path, wandb_dir):
    with RunLogger(tmp_path, tensorboard=False) as logger:  # not tracked before
        logger.log(30, {"x": 30})
    with RunLogger(tmp_path, tensorboard=False, resume_step=20, wandb=WandbTarget(project="mtrl-test")) as logger:
        logger.log(30, {"x": 31})
    [run] = offline_runs(wandb_dir)
    assert run.rows == {30: {"x": 31}}


def test_a_run_that_ends_on_an_error_is_a_failed_wandb_run(tmp_path, wandb_dir):
    with pytest.raises(RuntimeError, match="boom"):
        with RunLogger(tmp_path, tensorboard=False, wandb=WandbTarget(project="mtrl-test")) as logger:
            logger.log(10, {"x": 1.0})
            raise RuntimeError("boom")
    [run] = offline_runs(wandb_dir)
    assert run.exit_code == 1 and run.rows == {10: {"x": 1.0}}


def test_track_without_wandb_is_one_line_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    run_dir = tmp_path / "run"
    assert train.main(["smoke", "--track", "--run-dir", str(run_dir)]) == 2
    assert capsys.readouterr().err.strip() == f"mtrl-train: error: {WANDB_MISSING}"
    assert not run_dir.exists()


def test_a_project_name_wandb_refuses_is_one_line_and_creates_nothing(tmp_path, capsys):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    assert train.main(["smoke", "--track", "--wandb-project", "a/b", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtrl-train: error: wandb_project: Invalid project name 'a/b'") and len(err.splitlines()) == 1
    assert not run_dir.exists()


@pytest.mark.slow  # a fresh Python importing torch and the environments
def test_mtrl_and_launch_import_without_wandb():
    code = (
        "import sys; sys.modules['wandb'] = None\n"  # `import wandb` anywhere raises ImportError
        "import mtrl.logging, mtrl.tracking, launch.config, launch.trainer, launch.train, launch.evaluate\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr


def test_tracking_can_change_on_resume_and_does_not_split_a_report_group():
    tracked = dataclasses.replace(SAC, track=True, wandb_project="p", wandb_entity="e")
    changes = train.changed_fields(SAC, tracked)
    assert set(changes) == {"track", "wandb_project", "wandb_entity"}
    train.check_resumable(changes)
    assert result_fields(SAC.to_plain()) == result_fields(tracked.to_plain())
