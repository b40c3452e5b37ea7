"""`xlstm-edge train` on CPU: the loss goes down, and a resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from xlstm_edge.train import TrainConfig, learning_rate, train, train_cmd


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for n in range(6):  # a small, very regular corpus so that a few steps show learning
        lines = [f"def function_{n}_{i}(x):\n    return x * {i} + {n}\n" for i in range(60)]
        (data / f"part{n}.py").write_text("".join(lines))
    return data


def _cfg(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(out_dir=str(out), data=[str(data)], steps=12, batch_size=4, seq_len=32, warmup=2,
                eval_every=6, eval_batches=2, save_every=6, log_every=3, lr=1e-2, min_lr=1e-3, val_fraction=0.2)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases(tmp_path, text_dir):
    cfg = _cfg(tmp_path / "run", text_dir, steps=40, eval_every=40, save_every=40)
    train(cfg, progress=False)
    events = [__import__("json").loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < losses[0] - 1.0, losses
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_resume_is_exact(tmp_path, text_dir):
    straight = train(_cfg(tmp_path / "a", text_dir), progress=False)
    # a second run that stopped after its step-6 checkpoint, then resumed
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoint-000006", tmp_path / "b" / "checkpoint-000006")
    resumed = train(_cfg(tmp_path / "b", text_dir), resume=True, progress=False)
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    first = load_file(str(tmp_path / "a" / "checkpoint-000006" / "model.safetensors"))
    assert any(not torch.equal(first[n], a[n]) for n in a), "training did not change the weights"


def test_schedule_and_errors(tmp_path, text_dir):
    cfg = _cfg(tmp_path / "s", text_dir, steps=100, warmup=10, lr=1.0, min_lr=0.1)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(100, cfg) == pytest.approx(0.1)
    assert 0.1 < learning_rate(55, cfg) < 1.0
    with pytest.raises(ValueError, match="steps"):
        _cfg(tmp_path, text_dir, steps=0)
    runner = CliRunner()
    result = runner.invoke(train_cmd, ["--out", str(tmp_path / "x"), "--data", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "not found" in result.output
    result = runner.invoke(train_cmd, ["--out", str(tmp_path / "y"), "--resume", "--data", str(text_dir)])
    assert result.exit_code != 0 and "no complete checkpoint" in result.output
