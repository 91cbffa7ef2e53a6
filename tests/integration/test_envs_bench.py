"""mtrl-bench-envs: a tiny run produces the documented report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.envs import Args, main, run


@pytest.mark.slow
def test_quick_run_reports_every_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "bench.json"
    main(
        [
            "--benchmarks",
            "reach-v3,push-v3",
            "--max-workers",
            "2",
            "--steps",
            "5",
            "--warmup",
            "1",
            "--single-env-steps",
            "5",
            "--output",
            str(output),
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text())
    result = printed["benchmarks"]["reach-v3,push-v3"]
    assert set(result["single_env_steps_per_s"]) == {"reach-v3", "push-v3"}
    assert [r["num_workers"] for r in result["runs"]] == [0, 1, 2]
    for r in result["runs"]:
        assert r["steps_per_s"] > 0 and r["ratio_to_ideal"] == pytest.approx(
            r["steps_per_s"] / r["ideal_steps_per_s"], rel=1e-2
        )
    assert result["runs"][2]["ideal_steps_per_s"] == pytest.approx(
        result["ideal_one_core_steps_per_s"] * min(2, printed["machine"]["cpu_count"]), rel=1e-3
    )


def test_bad_arguments_fail_fast() -> None:
    with pytest.raises(ValueError, match="unknown benchmark or task 'MT11'"):
        run(Args(benchmarks=("MT11",)))
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        run(Args(benchmarks=("reach-v3",), steps=0))
