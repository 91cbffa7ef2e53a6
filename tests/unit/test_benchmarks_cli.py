"""The benchmarks' command lines: every console script answers ``--help``, an output path that cannot
be written is refused before any work, and nothing below :mod:`benchmarks` imports it or its extra.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[2]
BENCH_SCRIPTS = ("mtrl-bench-update", "mtrl-bench-width", "mtrl-bench-envs", "mtrl-bench-learning", "mtrl-toy")
BENCH_ONLY_IMPORTS = ("benchmarks", "stable_baselines3", "matplotlib")


def console_scripts() -> dict[str, str]:
    """``name -> module:function`` of every console script in setup.cfg."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def entry_point(script: str) -> Callable[[list[str]], object]:
    module, function = console_scripts()[script].split(":")
    return getattr(importlib.import_module(module), function)


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_console_script_lives_in_benchmarks_and_answers_help(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert console_scripts()[script].startswith("benchmarks.")
    with pytest.raises(SystemExit) as exc:
        entry_point(script)(["--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_learning_help_lists_every_part(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.learning import PARTS

    with pytest.raises(SystemExit):
        entry_point("mtrl-bench-learning")(["--help"])
    assert ", ".join(PARTS) in " ".join(capsys.readouterr().out.split())


@pytest.fixture
def unwritable_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory without write permission; where the permission bits do not bind (root), ``os.access`` says so."""
    directory = tmp_path / "read_only"
    directory.mkdir()
    directory.chmod(0o500)
    if os.access(directory, os.W_OK):
        access = os.access
        monkeypatch.setattr(report.os, "access", lambda path, mode: False if Path(path) == directory else access(path, mode))
    yield directory
    directory.chmod(0o700)


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        ("mtrl-bench-learning", ["--out", "{dir}/report.json"]),
        ("mtrl-bench-update", ["--tasks", "2", "--out", "{dir}/report.json"]),
        ("mtrl-bench-update", ["--tasks", "2", "--out", "{dir}/reports/report.json"]),  # would be made inside it
        ("mtrl-bench-width", ["--widths", "16", "--tasks", "2", "--out", "{dir}/report.json"]),
        ("mtrl-bench-envs", ["--benchmarks", "reach-v3", "--output", "{dir}/report.json"]),
        ("mtrl-toy", ["--steps", "1", "--out", "{dir}/toy"]),
    ],
)
def test_unwritable_output_directory_is_refused_before_any_work(
    script: str, argv: list[str], unwritable_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = argv[-2]
    with pytest.raises(SystemExit) as exc:
        entry_point(script)([arg.format(dir=unwritable_dir) for arg in argv])
    assert exc.value.code == f"{flag}: {unwritable_dir} is not writable"
    assert list(unwritable_dir.iterdir()) == []
    assert capsys.readouterr().out == ""


def test_unwritable_existing_report_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    existing = tmp_path / "report.json"
    existing.write_text("{}\n")
    access = os.access
    monkeypatch.setattr(report.os, "access", lambda path, mode: False if Path(path) == existing else access(path, mode))
    with pytest.raises(SystemExit, match=f"--out: {existing} is not writable"):
        report.check_report_file("--out", existing)


def _imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


PLOTTING_MODULES = {"launch/plot.py": "matplotlib"}
"""mtrl-plot draws a run's figures: matplotlib is a dependency of mtrl, but only this module below benchmarks/ imports it."""


@pytest.mark.parametrize("package", ["mtrl", "envs", "agents", "launch"])
def test_nothing_below_benchmarks_imports_them_or_their_extra(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        allowed = PLOTTING_MODULES.get(path.relative_to(ROOT).as_posix())
        for module in _imported_modules(path):
            top = module.split(".")[0]
            assert top not in BENCH_ONLY_IMPORTS or top == allowed, f"{path.relative_to(ROOT)} imports {module}"
