"""The speed benchmark runs in CI-sized form (its ratio is measured, never asserted: timings are not tests)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_the_speed_benchmark_prints_both_implementations_and_their_ratio():
    cmd = [sys.executable, "benchmarks/speed.py", "--iterations", "2", "--warmup", "1", "--repeats", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| default")]
    assert [r[4].strip() for r in rows] == ["plain", "lightning"]
    assert float(rows[1][-2]) > 0  # the ratio Lightning / plain
