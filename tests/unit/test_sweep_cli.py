"""mtrl-sweep's command line: an output directory that cannot be made or written is refused before anything is made.

These refusals come before Ray starts, so no test here starts Ray.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import launch.run_dir
from experiments.grid import SweepSpec
from experiments.sweep import Args, prepare
from experiments.sweep import main as sweep_main

ARGS = ["smoke", "--seeds", "1", "--no-progress"]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refused(capsys, *args: str) -> str:
    assert sweep_main([*ARGS, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_an_output_under_a_file_is_refused_in_one_line_and_nothing_is_created(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    before = _tree(tmp_path)
    out = tmp_path / "afile" / "sweep"
    assert _refused(capsys, "--out", str(out)) == f"mtrl-sweep: error: --out {out}: {tmp_path / 'afile'} is a file, not a directory"
    deeper = tmp_path / "afile" / "a" / "b"
    assert _refused(capsys, "--out", str(deeper)) == f"mtrl-sweep: error: --out {deeper}: {tmp_path / 'afile'} is a file, not a directory"
    assert _tree(tmp_path) == before


def test_an_output_that_is_a_file_is_refused_and_left_as_it_is(tmp_path, capsys):
    (tmp_path / "afile").write_text("data")
    err = _refused(capsys, "--out", str(tmp_path / "afile"))
    assert err.startswith(f"mtrl-sweep: error: --out {tmp_path / 'afile'}")
    assert (tmp_path / "afile").read_text() == "data"


def test_an_output_in_a_directory_that_cannot_be_written_is_refused(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root: the permission bits do not bind, os.access says what they say
        access = os.access
        monkeypatch.setattr(launch.run_dir.os, "access", lambda path, mode: False if Path(path) == locked else access(path, mode))
    try:
        out = locked / "sweep"
        assert _refused(capsys, "--out", str(out)) == f"mtrl-sweep: error: --out {out}: {locked} is not writable"
        assert not out.exists()
    finally:
        locked.chmod(0o755)


def test_a_sweep_saved_with_the_former_loop_fields_continues_in_todays_layout(tmp_path):
    """A sweep made when SAC's loop settings were under ``sac`` (``--set sac.warmup-steps=100``) resumes: its
    spec is read with them under ``replay`` and its trials' arguments are today's."""
    out = tmp_path / "sweep"
    today = SweepSpec("smoke", seeds=(1,), set=("replay.warmup-steps=100", "total-steps=300"), vary=("replay.batch-size-per-task=16|32",))
    _, manifest, _ = prepare(Args(preset="smoke", seeds=("1",), set=today.set, vary=today.vary, out=out))
    former = {
        "spec": {**manifest["spec"], "set": ["sac.warmup-steps=100", "total-steps=300"], "vary": ["sac.batch_size_per_task=16|32"]},
        "trials": [{**t, "argv": [a.replace("--replay.", "--sac.") for a in t["argv"]]} for t in manifest["trials"]],
    }
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(former))
    _, resumed, trials = prepare(Args(resume=out))
    assert SweepSpec.from_plain(resumed["spec"]) == dataclasses.replace(today, vary=("replay.batch_size_per_task=16|32",))
    assert [t["name"] for t in resumed["trials"]] == [t.name for t in trials] == [t["name"] for t in manifest["trials"]]
    assert all("--replay.warmup-steps" in t["argv"] and not any(a.startswith("--sac.") for a in t["argv"]) for t in resumed["trials"])
    assert [t.config.replay.batch_size_per_task for t in trials] == [16, 32]
