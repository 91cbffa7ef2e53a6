"""Checkpoints that cannot be written, of another version, or with non-finite values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mtrl.checkpoint
from mtrl.checkpoint import (
    FORMAT_VERSION,
    CheckpointVersionError,
    CheckpointWriteError,
    capture_rng_states,
    list_checkpoints,
    load_latest,
    non_finite_tensors,
    restore_rng_states,
    save_checkpoint,
)
from mtrl.schedules import ScheduleConfig, build_scheduler


def test_a_failed_write_leaves_no_partial_directory_and_keeps_the_rest(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"x": torch.ones(2)})

    def disk_full(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(mtrl.checkpoint.torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match="cannot write checkpoint step_000000000002 .*PytorchStreamWriter") as error:
        save_checkpoint(tmp_path, 2, {"x": torch.ones(2)})
    assert "\n" not in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000000001"]
    monkeypatch.undo()
    assert load_latest(tmp_path)[1]["x"].tolist() == [1.0, 1.0]


def test_another_format_version_is_named_and_never_set_aside(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"x": 1})
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": FORMAT_VERSION - 1}))
    with pytest.raises(CheckpointVersionError, match=f"format version {FORMAT_VERSION - 1}, but this mtrl reads version {FORMAT_VERSION}"):
        load_latest(tmp_path)
    assert list_checkpoints(tmp_path) == [path]


def test_rng_states_are_plain_data_and_restore_exactly(tmp_path):
    np.random.seed(5)
    states = capture_rng_states()
    save_checkpoint(tmp_path, 1, {"rng": states})
    expected = np.random.rand(3), torch.rand(3)
    restore_rng_states(load_latest(tmp_path)[1]["rng"])  # loaded with weights_only=True
    np.testing.assert_array_equal(np.random.rand(3), expected[0])
    assert torch.equal(torch.rand(3), expected[1])


def test_non_finite_tensors_names_them_by_path():
    payload = {"a": {"w": torch.ones(3), "b": torch.tensor([1.0, float("nan")])}, "c": [torch.zeros(1), torch.tensor([float("inf")])], "i": torch.ones(2, dtype=torch.long)}
    assert non_finite_tensors(payload) == ["a.b", "c[1]"]
    assert non_finite_tensors({"a": torch.ones(1)}) == []


def test_an_unchanged_peak_rate_leaves_the_loaded_rates_exactly_and_a_new_one_keeps_the_schedule():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.Adam([param], lr=1e-3)
    schedule = build_scheduler(optimizer, ScheduleConfig(name="warmup_cosine", warmup_updates=3), total_updates=10)
    for _ in range(5):
        optimizer.step()
        schedule.step()
    loaded = optimizer.param_groups[0]["lr"]
    schedule.set_peak(1e-3)
    assert optimizer.param_groups[0]["lr"] == loaded
    schedule.set_peak(1e-4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(loaded / 10, rel=1e-12)
    assert schedule.rate == optimizer.param_groups[0]["lr"]
    optimizer.step()
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * schedule.multiplier(6), rel=1e-12)


def test_an_interrupted_write_leaves_no_partial_directory(tmp_path, monkeypatch):
    def interrupted(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(mtrl.checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 1, {"x": torch.ones(2)})
    assert list(tmp_path.iterdir()) == []
