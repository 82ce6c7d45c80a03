"""The speed benchmark runs in CI-sized form (its ratio is measured, never asserted: timings are not tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_the_speed_benchmark_prints_both_implementations_and_their_ratio():
    cmd = [sys.executable, "benchmarks/speed.py", "--iterations", "2", "--warmup", "1", "--repeats", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| default")]
    assert [r[4].strip() for r in rows] == ["plain", "lightning"]
    assert float(rows[1][-2]) > 0  # the ratio Lightning / plain


@pytest.mark.slow
def test_every_command_of_the_gpu_checks_composes(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DRY": "1", "PY": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    composed = [line for line in done.stdout.splitlines() if line.startswith("composes: ")]
    assert len(composed) == 4, done.stdout[-2000:]
