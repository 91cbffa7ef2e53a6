"""mtrl-bench-gpu: refuses without CUDA in one line; on the CPU (--allow-cpu) every section is reported, CUDA-only parts skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import main

TINY = ["--tasks", "2", "--balancers", "mean", "--hidden", "8", "--batch-size", "4", "--repeats", "1", "--warmup", "1", "--train-seconds", "0"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.json"
    assert main([*TINY, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "mtrl-bench-gpu: error: no CUDA device (torch.cuda.is_available() is False); this script measures the GPU path"
    assert not out.exists()


def test_an_unknown_path_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--allow-cpu", "--paths", "warp"]) == 2
    assert "--paths: unknown path 'warp'; allowed: eager, gradients, compiled, cuda-graph" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU report")
def test_on_the_cpu_every_section_is_reported_and_cuda_only_parts_are_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.json"
    assert main([*TINY, "--allow-cpu", "--paths", "eager", "cuda-graph", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["device"]["device"] == "cpu" and report["device"]["parameters_on"] == ["cpu"]
    rows = report["updates"]["2"]
    assert rows["sac-plain"] > 0 and rows["mean/eager"] > 0
    assert rows["mean/eager/bf16"] == rows["mean/cuda-graph"] == rows["mean/cuda-graph/bf16"] == "skipped: needs CUDA"
    assert report["no_sync"] == {"eager": "skipped: needs CUDA", "cuda-graph": "skipped: needs CUDA"}
    assert report["training_mt10"] == report["training_mt50"] == {"skipped": "not asked for (0 seconds)"}
