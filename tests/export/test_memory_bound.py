"""The export's peak memory on a model of a few hundred M params: within the pipeline's bound.

Bound (the "xLSTM 7B end to end" issue): peak RSS <= 1.5 x the package's bytes + 2 GiB, for a float32
export of any model whose float32 weights fit in memory, as for the quantized exports. Measured on a
real process: a random bfloat16 checkpoint (sharded, Hugging Face layout) exported by the command
line in a subprocess, its peak RSS taken from the kernel (``os.wait4``), not sampled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xlstm_edge.checkpoint import write_random_checkpoint
from xlstm_edge.config import BYTE_SPECIALS, xLSTMConfig
from xlstm_edge.tokenizer import byte_tokenizer

GIB = 2**30


def bound(package_bytes: int) -> float:
    return 1.5 * package_bytes + 2 * GIB


@pytest.mark.slow
def test_float32_export_of_a_250m_bf16_checkpoint_stays_within_the_bound(tmp_path: Path) -> None:
    config = xLSTMConfig.from_preset("small", hidden_size=1024, num_heads=4)  # 12 blocks, 50304 ids: 254 M
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, key, BYTE_SPECIALS[key])
    ckpt = write_random_checkpoint(config, tmp_path / "ckpt", dtype=torch.bfloat16, tokenizer=byte_tokenizer(),
                                   max_shard_bytes=200 * 2**20)
    assert len(list(ckpt.glob("model-*.safetensors"))) > 1  # sharded, as published checkpoints are
    out = tmp_path / "pkg"
    exe = Path(sys.executable).with_name("xlstm-edge")
    proc = subprocess.Popen([str(exe), "export", str(ckpt), str(out), "--format", "onnx", "--parity-steps", "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    assert os.waitstatus_to_exitcode(status) == 0, err[-2000:]
    package = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    peak = usage.ru_maxrss * 1024
    assert package > 0.9e9, package  # the float32 weights, once
    assert peak <= bound(package), (
        f"peak RSS {peak / GIB:.2f} GiB > 1.5 x {package / GIB:.2f} GiB + 2 GiB = {bound(package) / GIB:.2f} GiB; "
        f"stages: {[ln for ln in err.splitlines() if 'peak RSS' in ln]}")
