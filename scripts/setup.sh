#!/usr/bin/env bash
# Installs mtrl, its test, benchmark, sweep, tracking and TorchJD extras, and everything they need into the current Python environment.
# torch comes first and pinned: an unpinned torch pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e '.[test,bench,sweep,track,torchjd]'
