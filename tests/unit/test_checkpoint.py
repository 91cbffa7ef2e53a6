import json
import random

import numpy as np
import pytest
import torch

from mtrl.checkpoint import (
    CheckpointError,
    capture_rng_states,
    list_checkpoints,
    load_latest,
    restore_rng_states,
    save_checkpoint,
    set_aside_newer,
)


def _payload(step: int) -> dict:
    return {"step": step, "weights": torch.full((3,), float(step))}


def test_save_load_and_rotation(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, _payload(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000000030", "step_000000000040"]
    path, payload = load_latest(tmp_path)
    assert path.name == "step_000000000040" and payload["step"] == 40
    assert torch.equal(payload["weights"], torch.full((3,), 40.0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_broken_newest_checkpoint_falls_back_to_previous(tmp_path, damage):
    save_checkpoint(tmp_path, 1, _payload(1))
    newest = save_checkpoint(tmp_path, 2, _payload(2))
    state = newest / "state.pt"
    data = state.read_bytes()
    if damage == "truncate":
        state.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        state.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        (newest / "meta.json").write_text("{not json")
    with pytest.warns(UserWarning, match="skipping checkpoint step_000000000002"):
        path, payload = load_latest(tmp_path)
    assert payload["step"] == 1 and path.name == "step_000000000001"


def test_leftover_temporary_directory_is_ignored_and_replaced(tmp_path):
    save_checkpoint(tmp_path, 1, _payload(1))
    (tmp_path / ".tmp_step_000000000002").mkdir()  # what a crash mid-write leaves
    (tmp_path / ".tmp_step_000000000002" / "state.pt").write_bytes(b"partial")
    assert load_latest(tmp_path)[1]["step"] == 1
    save_checkpoint(tmp_path, 2, _payload(2))
    assert load_latest(tmp_path)[1]["step"] == 2


def test_no_intact_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        load_latest(tmp_path)
    newest = save_checkpoint(tmp_path, 1, _payload(1))
    meta = json.loads((newest / "meta.json").read_text())
    meta["format_version"] = 999
    (newest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 999"):  # named at once, not skipped as broken
        load_latest(tmp_path)


def test_existing_checkpoint_is_never_overwritten(tmp_path):
    save_checkpoint(tmp_path, 5, _payload(5))
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path, 5, _payload(6))
    assert load_latest(tmp_path)[1]["step"] == 5


def test_rng_states_round_trip():
    states = capture_rng_states()
    first = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng_states(states)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_broken_newer_checkpoints_are_set_aside_not_deleted(tmp_path):
    older = save_checkpoint(tmp_path, 1, _payload(1))
    newer = save_checkpoint(tmp_path, 2, _payload(2))
    (newer / "state.pt").write_bytes(b"broken")
    moved = set_aside_newer(tmp_path, older)
    assert [p.name for p in moved] == ["broken_step_000000000002"] and moved[0].is_dir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000000001"]
    save_checkpoint(tmp_path, 2, _payload(2))  # the resumed run can write that step again
    assert load_latest(tmp_path)[1]["step"] == 2
