"""Runs the interp_*.py kernel checks under Triton's CPU interpreter, each in a subprocess with
TRITON_INTERPRET=1 so the setting never reaches this process (see conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.parametrize("module", sorted(p.name for p in HERE.glob("interp_*.py")))
def test_under_interpreter(module):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / module)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (
        f"{module} failed under the interpreter:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    )
