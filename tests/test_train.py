"""`xlstm-edge train` on CPU: the loss goes down, and a resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


def _torchrun(out: Path, data: Path, steps: int, resume: bool = False, extra: tuple[str, ...] = ()) -> None:
    """`torchrun --standalone --nproc-per-node 2 -m xlstm_edge.train ...` on CPU (gloo)."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "xlstm_edge.train", "--out", str(out), "--data", str(data), "--steps", str(steps),
            "--batch-size", "2", "--seq-len", "32", "--warmup", "2", "--eval-every", "4", "--eval-batches", "1",
            "--save-every", "4", "--log-every", "2", "--lr", "1e-2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args + (["--resume"] if resume else []) + list(extra), capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_ddp_two_processes_resume_exactly(tmp_path, text_dir):
    """Two CPU processes under torchrun (DDP over gloo): every rank exits cleanly, each draws its own
    data, the logged loss is the ranks' mean, and a resumed run equals an uninterrupted one bit for bit
    (each rank gets its own sampler state back)."""
    _torchrun(tmp_path / "a", text_dir, steps=8)
    state = load_file(str(tmp_path / "a" / "checkpoint-000004" / "trainer_state.safetensors"))
    assert not torch.equal(state["rng.sampler.rank0"], state["rng.sampler.rank1"])
    header = json.loads((tmp_path / "a" / "train_log.jsonl").read_text().splitlines()[0])
    assert header["world_size"] == 2
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoint-000004", tmp_path / "b" / "checkpoint-000004")
    _torchrun(tmp_path / "b", text_dir, steps=8, resume=True)
    a = load_file(str(tmp_path / "a" / "checkpoint-000008" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint-000008" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_ddp_max_minutes_stops_every_rank_at_one_step(tmp_path, text_dir):
    """--max-minutes under torchrun: the ranks agree on the step to stop at (one alone would wait forever
    in the next all-reduce), so the run exits cleanly, its last checkpoint well before --steps."""
    _torchrun(tmp_path / "t", text_dir, steps=500, extra=("--max-minutes", "0.001"))
    ckpts = sorted(p.name for p in (tmp_path / "t").glob("checkpoint-*"))
    assert ckpts and ckpts[-1] < "checkpoint-000500", ckpts


def test_kernel_choice(tmp_path, text_dir):
    """--kernels picks both cells' implementations: PyTorch on CPU under auto, an error (never a silent
    fallback) for triton without CUDA; the log's header names what ran; a plugged-in sLSTM kernel is the
    one every sLSTM layer calls."""
    import click

    from xlstm_edge import xLSTMConfig, xLSTMForCausalLM
    from xlstm_edge.slstm import slstm_scan
    from xlstm_edge.train import pick_chunkwise_kernel, pick_slstm_kernel

    cpu = torch.device("cpu")
    assert pick_chunkwise_kernel(cpu, "auto") is None and pick_slstm_kernel(cpu, "auto") is None
    for pick in (pick_chunkwise_kernel, pick_slstm_kernel):
        with pytest.raises(click.ClickException, match="needs a CUDA device"):
            pick(cpu, "triton")
    train(_cfg(tmp_path / "k", text_dir, steps=2, warmup=0, preset="tiny-ms"), progress=False)
    header = json.loads((tmp_path / "k" / "train_log.jsonl").read_text().splitlines()[0])
    assert header["kernels"] == {"mlstm": "torch", "slstm": "torch"}

    calls = []

    def spy_scan(wx, R, state):
        calls.append(tuple(wx.shape))
        return slstm_scan(wx, R, state)

    model = xLSTMForCausalLM(xLSTMConfig.from_preset("tiny-ms"))
    model.set_slstm_kernel(spy_scan)
    model(torch.randint(0, 256, (2, 5)))
    assert calls == [(2, 5, 4, 2, 32)]  # one sLSTM layer (tiny-ms: 2 heads of 32)
    model.set_slstm_kernel(None)
    model(torch.randint(0, 256, (2, 5)))
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_kernels_match_torch(tmp_path, text_dir):
    """`train` on CUDA with --kernels triton (Triton mLSTM chunkwise and sLSTM kernels) against the
    PyTorch forms, same seed and data: the loss curves of an xLSTM[m:s] model (tiny-ms, a padded last
    chunk) agree step for step within bf16 autocast's noise."""
    curves = {}
    for kernels in ("triton", "torch"):
        out = tmp_path / kernels
        cfg = _cfg(out, text_dir, steps=60, batch_size=8, seq_len=72, warmup=5, eval_every=60, save_every=60,
                   log_every=5, lr=5e-3, preset="tiny-ms", device="cuda", kernels=kernels)
        train(cfg, progress=False)
        events = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        assert events[0]["kernels"] == {"mlstm": kernels, "slstm": kernels}
        curves[kernels] = [e["loss"] for e in events if e["event"] == "train"]
    a, b = curves["triton"], curves["torch"]
    print("\nloss triton:", [round(x, 4) for x in a], "\nloss torch: ", [round(x, 4) for x in b])
    assert len(a) == len(b) == 12
    assert a[-1] < a[0] - 1.0, a  # it learns
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    assert max(diffs) < 0.05, diffs


def test_labels_loss_and_regional_compile(seed):
    """model(x, labels=y) is the mean float32 cross-entropy of model(x)'s logits; compile_for_training
    (here with torch.compile's eager backend: the tracing and the graph breaks around kernels wrapped
    in torch.compiler.disable, not Inductor's code) gives the same loss and gradients."""
    import torch.nn.functional as F

    from xlstm_edge import xLSTMConfig, xLSTMForCausalLM
    from xlstm_edge.mlstm import mlstm_chunkwise
    from xlstm_edge.slstm import slstm_scan

    torch.manual_seed(0)
    model = xLSTMForCausalLM(xLSTMConfig.from_preset("tiny-ms"))
    x, y = torch.randint(0, 256, (2, 40)), torch.randint(0, 256, (2, 40))
    logits, _ = model(x)
    loss, _ = model(x, labels=y)
    assert torch.equal(loss, F.cross_entropy(logits.float().flatten(0, 1), y.flatten()))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_chunkwise_kernel(torch.compiler.disable(mlstm_chunkwise))
    model.set_slstm_kernel(torch.compiler.disable(slstm_scan))
    names = list(model.state_dict())
    model.compile_for_training(backend="eager")
    assert list(model.state_dict()) == names  # in place: checkpoints keep their names
    loss_c, _ = model(x, labels=y)
    loss_c.backward()
    assert torch.allclose(loss_c, loss, rtol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6), n
    with pytest.raises(ValueError, match="exclude"):
        model(x, labels=y, last_only=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_training_matches_eager(tmp_path, text_dir):
    """`train --compile` on CUDA (blocks and loss through torch.compile / Inductor, the Triton kernels
    between them) against the same run uncompiled: the loss curves agree within bf16 noise."""
    curves = {}
    for compiled in (False, True):
        out = tmp_path / f"compile{int(compiled)}"
        cfg = _cfg(out, text_dir, steps=40, batch_size=8, seq_len=72, warmup=5, eval_every=40, save_every=40,
                   log_every=5, lr=5e-3, preset="tiny-ms", device="cuda", kernels="triton", compile=compiled)
        train(cfg, progress=False)
        events = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        curves[compiled] = [e["loss"] for e in events if e["event"] == "train"]
    a, b = curves[True], curves[False]
    print("\nloss compiled:", [round(x, 4) for x in a], "\nloss eager:   ", [round(x, 4) for x in b])
    assert len(a) == len(b) == 8
    assert a[-1] < a[0] - 1.0, a
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.05
