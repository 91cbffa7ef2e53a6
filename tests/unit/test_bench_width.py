"""mtrl-bench-width: one process per case, every row measured, ratios to the plain update, bad arguments refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.width import main


@pytest.mark.slow
def test_every_case_runs_in_its_own_process_and_gets_its_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "width.json"
    main(["--widths", "16", "--tasks", "2", "--batch-size", "4", "--repeats", "1", "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    rows = {row["variant"]: row for row in report["results"]}
    assert set(rows) == {"plain", "materialised", "gramian"}
    for row in rows.values():
        assert row["width"] == 16 and row["tasks"] == 2 and row["time_s"] > 0 and row["peak_mib"] >= 0 and row["resident_peak_mib"] >= 0
    for variant in ("materialised", "gramian"):
        assert rows[variant]["cpu_ratio"] > 0 and rows[variant]["memory_ratio"] >= 0 and rows[variant]["resident_memory_ratio"] >= 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--widths", "1"], "--widths: every value must be >= 2, got [1]"),
        (["--balancer", "nope"], "--balancer: unknown balancer 'nope'; allowed: "),
        (["--memory-limit-gib", "0"], "--memory-limit-gib must be > 0, got 0.0"),
        (["--case", "16,2,fast"], "--case must be width,tasks,variant with variant one of plain, materialised, gramian, got '16,2,fast'"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert str(exc.value.code).startswith(message)
