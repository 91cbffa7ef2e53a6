"""A balancer plugin installed from its own package (tests/plugin_package) works in mtrl-train, mtrl-sweep
and mtrl-report like a built-in method; a plugin that cannot load, raises or returns NaN stops its
run with one line naming it.

The package is installed with pip into a folder of its own (``--target``), put on ``PYTHONPATH`` for
the commands, which run as processes of their own: entry points are read when mtrl's balancers are
imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_runs import SWEEP_SETTINGS, TINY  # tests/integration/tiny_runs.py

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # the sweep starts a local Ray

PACKAGE = Path(__file__).parents[1] / "plugin_package"
REPO = Path(__file__).parents[2]
SOURCE = "plugin of mtrl-plugin-example 0.1.0"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process that sees the installed plugin package."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(PACKAGE)],
        check=True,
        cwd=build,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    path = os.pathsep.join(filter(None, [str(target), str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _run(env: dict[str, str], module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=600)


def _train(env: dict[str, str], run: Path, balancer: str, *more: str) -> subprocess.CompletedProcess:
    # (no --balancer.no-compile-solver: a balancer without a solver refuses it)
    return _run(env, "launch.train", *TINY, "--sac.no-compile-gradients", "--total-steps", "200", "--balancer.name", balancer, *more, "--run-dir", str(run))


def test_an_installed_plugin_is_listed_trained_with_swept_over_and_reported_on(plugin_env, tmp_path):
    listing = _run(plugin_env, "launch.train", "smoke", "--help")
    assert listing.returncode == 0 and "inverse_norm" in listing.stdout and "--balancer.power" in listing.stdout

    # one sweep trial, an mtrl-train run of the plugin with its option set: trained with and swept over at once
    out = tmp_path / "sweep"
    swept = _run(
        plugin_env, "experiments.sweep", "smoke", "--benchmarks", "reach-v3,drawer-close-v3", "--balancers", "inverse_norm",
        "--set", *SWEEP_SETTINGS, "total-steps=200", "balancer.power=1.0", "--num-cpus", "2", "--no-progress", "--out", str(out),
    )
    assert swept.returncode == 0, swept.stderr
    (trial,) = json.loads((out / "sweep.json").read_text())["trials"]
    assert trial["status"] == "finished" and trial["config"]["balancer"]["name"] == "inverse_norm"
    run = out / "trials" / trial["name"]
    assert json.loads((run / "config.json").read_text())["balancer"]["power"] == 1.0 and (run / "eval" / "final.json").is_file()

    reported = _run(plugin_env, "experiments.report", str(out))
    assert reported.returncode == 0, reported.stderr
    assert "inverse_norm" in reported.stdout and "inverse_norm" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "balancer,code,message",
    [
        ("broken_plugin", 2, "error: balancer plugin 'broken_plugin' (mtrl_plugin_example:NotDefinedHere, from mtrl-plugin-example 0.1.0) could not be loaded: AttributeError"),
        ("raises_plugin", 1, f"error: balancer 'raises_plugin' ({SOURCE}) raised FloatingPointError: the example plugin gives up; continue from"),
        ("nan_weights", 1, f"error: balancer 'nan_weights' ({SOURCE}) returned non-finite weights for finite gradients of the critic by step"),
    ],
)
def test_a_broken_plugin_stops_its_run_with_one_line_naming_it(plugin_env, tmp_path, balancer, code, message):
    result = _train(plugin_env, tmp_path / "run", balancer)
    assert result.returncode == code
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
