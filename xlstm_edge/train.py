"""``xlstm-edge train``: language-model training on CPU (PyTorch chunkwise form) or CUDA (bf16 autocast,
our Triton kernels), AdamW with warmup + cosine decay, gradient clipping, periodic held-out eval,
safetensors checkpoints in the Hugging Face layout, exact resume, multi-GPU through ``torchrun`` (DDP).

Layout of an output folder:
    OUT/checkpoint-000200/   config.json, model.safetensors, tokenizer.json (loads anywhere),
                             trainer_state.safetensors (optimizer moments, RNG), trainer_state.json
    OUT/train_log.jsonl      one JSON line per log/eval event
    OUT/loss.png             training and eval loss curves (written at the end)
A checkpoint folder appears only when complete (written as .checkpoint-*.partial, then renamed).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import xLSTMConfig
from .data import Corpus, WindowSampler, collect_files, default_corpus_files
from .model import xLSTMForCausalLM
from .tokenizer import byte_tokenizer, load_tokenizer

CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainConfig:
    out_dir: str
    preset: str | None = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # a checkpoint to start from (weights, config, tokenizer)
    data: list[str] = field(default_factory=list)  # empty: the embedded default corpus
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 100
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    kernels: str = "auto"  # auto (triton on CUDA, torch on CPU) | triton | torch
    val_fraction: float = 0.02
    max_minutes: float | None = None  # wall-clock budget: stop early, evaluate and save when it runs out
    compile: bool = False  # torch.compile the blocks and the loss (xLSTMForCausalLM.compile_for_training)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every", "save_every", "log_every", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}: auto, cpu or cuda")
        if self.kernels not in ("auto", "triton", "torch"):
            raise ValueError(f"unknown kernels {self.kernels!r}: auto, triton or torch")
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup must be in [0, steps), got {self.warmup}")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """1) linear warmup to lr over ``warmup`` steps; 2) cosine decay to min_lr at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def _wants_triton(device: torch.device, choice: str) -> bool:
    """--kernels: triton on CUDA for auto/triton, PyTorch otherwise; never a silent fallback."""
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        return False
    if device.type != "cuda":
        raise click.ClickException("--kernels triton needs a CUDA device")
    from .kernels import dispatch

    dispatch.resolve_backend(device, "triton")  # raises (naming the package) when Triton is missing
    return True


def pick_chunkwise_kernel(device: torch.device, choice: str):
    """The chunkwise mLSTM implementation for ``device``: Triton on CUDA, PyTorch on CPU (None)."""
    if not _wants_triton(device, choice):
        return None
    from .kernels import dispatch

    # keep_states: the kernels' backward reuses the forward's chunk-start states (one state pass less;
    # memory: one (B, NH, S / chunk, DQK, DV) tensor in the compute dtype per mLSTM layer, about 15% of
    # a layer's saved activations at the `small` preset's and the 7B model's shapes)
    return torch.compiler.disable(functools.partial(dispatch.mlstm_chunkwise, backend="triton", keep_states=True))


def pick_slstm_kernel(device: torch.device, choice: str):
    """The sLSTM scan for ``device``: the fused Triton kernels (forward and backward) on CUDA, the
    PyTorch loop on CPU (None). The loop under autocast runs its recurrent products in bfloat16; the
    kernels keep R, the gates and the state in float32 (as the model's other cells do)."""
    if not _wants_triton(device, choice):
        return None
    from .kernels import dispatch

    return torch.compiler.disable(functools.partial(dispatch.slstm_scan, backend="triton"))


# ---- checkpoint I/O -------------------------------------------------------------------------------
def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and not p.name.endswith(".partial"))


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / f"{CHECKPOINT_PREFIX}{step:06d}"


def save_training_checkpoint(
    out_dir: Path, step: int, model, optimizer, sampler, tokenizer, log: dict,
    rank_sampler_states: list[torch.Tensor] | None = None,
) -> Path:  # fmt: skip
    """Model (Hugging Face layout) + optimizer + RNG states, written to a .partial folder then renamed.

    rank_sampler_states: under torchrun, every rank's sampler generator state (rank order), so that a
    resume gives each rank its own data stream back; None in a single process.
    """
    final = checkpoint_dir(out_dir, step)
    partial = out_dir / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_checkpoint(model, partial, tokenizer=tokenizer)
    tensors: dict[str, torch.Tensor] = {"rng.sampler": sampler.generator.get_state(), "rng.torch": torch.get_rng_state()}
    for r, state in enumerate(rank_sampler_states or []):
        tensors[f"rng.sampler.rank{r}"] = state
    scalars: dict[str, Any] = {}
    opt_state = optimizer.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    save_file(tensors, str(partial / "trainer_state.safetensors"))
    meta = {"step": step, "param_groups": opt_state["param_groups"], "optim_scalars": scalars,
            "world_size": len(rank_sampler_states or [None]), **log}
    (partial / "trainer_state.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return final


def load_training_state(ckpt: Path, optimizer, sampler, rank: int = 0, world: int = 1) -> int:
    """Restore optimizer and RNG states; returns the step. Under torchrun each rank takes its own
    sampler state when the checkpoint was written by as many processes; otherwise the ranks' samplers
    are re-seeded from (seed, rank, step), which changes the data order from there on (said on rank 0)."""
    meta = json.loads((ckpt / "trainer_state.json").read_text())
    tensors = load_file(str(ckpt / "trainer_state.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["optim_scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    step = int(meta["step"])
    saved_world = int(meta.get("world_size", 1))
    if saved_world == world:
        sampler.generator.set_state(tensors["rng.sampler" if world == 1 else f"rng.sampler.rank{rank}"])
    else:
        sampler.generator.manual_seed(sampler.seed + 1000 * rank + 7919 * step)
        if rank == 0:
            print(f"resume: {ckpt.name} was written by {saved_world} process(es), this run has {world}: "
                  "the data samplers are re-seeded (same data, another order)")
    torch.set_rng_state(tensors["rng.torch"])
    return step


# ---- the loop -------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, corpus_ids: torch.Tensor, cfg: TrainConfig, device, autocast) -> float:
    """Mean next-token loss over ``eval_batches`` fixed held-out windows."""
    was_training = model.training
    model.eval()
    sampler = WindowSampler(corpus_ids, cfg.batch_size, min(cfg.seq_len, len(corpus_ids) - 2), seed=1234)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = (t.to(device) for t in sampler.next())
        with autocast():
            logits, _ = model(x)
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run training; returns the folder of the last checkpoint."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise click.ClickException("--device cuda but no CUDA device is visible")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    existing = _checkpoints(out_dir)
    if existing and not resume:
        raise click.ClickException(f"{out_dir} already holds checkpoints: pass --resume, or choose another --out")
    if resume and not existing:
        raise click.ClickException(f"--resume: no complete checkpoint in {out_dir}")

    if resume:
        model = load_checkpoint(existing[-1])
        tokenizer = load_tokenizer(existing[-1])
    elif cfg.init_from:
        model = load_checkpoint(cfg.init_from)
        tokenizer = load_tokenizer(cfg.init_from)
    else:
        model = xLSTMForCausalLM(xLSTMConfig.from_preset(cfg.preset or "tiny", **cfg.model_overrides))
        tokenizer = byte_tokenizer()
    if tokenizer.vocab_size > model.config.vocab_size:
        raise click.ClickException(
            f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {model.config.vocab_size}")
    model.to(device).train()
    chunkwise_kernel = pick_chunkwise_kernel(device, cfg.kernels)
    slstm_kernel = pick_slstm_kernel(device, cfg.kernels)
    model.set_chunkwise_kernel(chunkwise_kernel)
    model.set_slstm_kernel(slstm_kernel)
    kernel_names = {"mlstm": "triton" if chunkwise_kernel else "torch", "slstm": "triton" if slstm_kernel else "torch"}
    if cfg.compile:
        model.compile_for_training()

    files = collect_files(cfg.data) if cfg.data else default_corpus_files()
    corpus = Corpus.from_files(files, tokenizer, cfg.val_fraction)
    sampler = WindowSampler(corpus.train, cfg.batch_size, cfg.seq_len, seed=cfg.seed + 1000 * rank)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embeddings" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda",
    )
    start = load_training_state(existing[-1], optimizer, sampler, rank, world) if resume else 0
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def autocast():
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    is_main = rank == 0
    log_path = out_dir / "train_log.jsonl"
    if is_main and start == 0:
        log_path.write_text("")
        header = {"event": "start", "config": dataclasses.asdict(cfg), "model": model.config.to_dict(),
                  "params": model.num_params(), "train_tokens": len(corpus.train), "val_tokens": len(corpus.val),
                  "files": corpus.num_files, "device": str(device), "world_size": world,
                  "kernels": kernel_names}
        with log_path.open("a") as fh:
            fh.write(json.dumps(header) + "\n")

    def log(event: dict) -> None:
        if is_main:
            with log_path.open("a") as fh:
                fh.write(json.dumps(event) + "\n")

    tokens_per_step = cfg.batch_size * cfg.seq_len * world
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not (progress and is_main),
               desc="train", unit="step", dynamic_ncols=True)
    last_ckpt = existing[-1] if existing else None
    window_start, window_tokens, loss_value = time.perf_counter(), 0, float("nan")
    deadline = time.perf_counter() + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    for step in bar:
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = (t.to(device, non_blocking=True) for t in sampler.next())
        with autocast():
            loss, _ = train_model(x, labels=y)  # the float32 cross-entropy of the logits
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        window_tokens += tokens_per_step
        done = step + 1
        # every rank must stop at the same step (a rank left alone would wait in the next all-reduce)
        out_of_time = cfg.max_minutes is not None and _any_rank(time.perf_counter() > deadline, world, device)
        if out_of_time and is_main:
            bar.write(f"--max-minutes {cfg.max_minutes} reached at step {done}: evaluating and saving")
        last = done == cfg.steps or out_of_time
        if done % cfg.log_every == 0 or last:
            loss_value = _mean_over_ranks(loss.detach(), world)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - window_start
            tok_s = window_tokens / elapsed
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
            log({"event": "train", "step": done, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                 "tokens_per_s": tok_s})
            window_start, window_tokens = time.perf_counter(), 0
        if is_main and (done % cfg.eval_every == 0 or last):
            val = evaluate(model, corpus.val, cfg, device, autocast)
            log({"event": "eval", "step": done, "val_loss": val, "val_ppl": math.exp(min(val, 50))})
            bar.write(f"step {done}: train loss {loss_value:.4f}  val loss {val:.4f}  val ppl {math.exp(min(val, 50)):.2f}")
        if done % cfg.save_every == 0 or last:
            states = _gather_sampler_states(sampler, world)
            if is_main:
                save_training_checkpoint(out_dir, done, model, optimizer, sampler, tokenizer,
                                         {"train_loss": loss_value}, states)
            _barrier(world)  # no rank returns (or resumes) before rank 0 has written the checkpoint
            last_ckpt = checkpoint_dir(out_dir, done)
        if out_of_time:
            break
    bar.close()
    if is_main:
        plot_losses(log_path, out_dir / "loss.png")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    assert last_ckpt is not None
    return last_ckpt


def _mean_over_ranks(value: torch.Tensor, world: int) -> float:
    """The mean of a scalar over the torchrun ranks (the value itself in a single process)."""
    if world > 1:
        import torch.distributed as dist

        value = value.float().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world
    return value.item()


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True if ``flag`` is true on any torchrun rank (the flag itself in a single process)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _gather_sampler_states(sampler, world: int) -> list[torch.Tensor] | None:
    """Every rank's sampler generator state, in rank order (None in a single process)."""
    if world == 1:
        return None
    import torch.distributed as dist

    states: list[Any] = [None] * world
    dist.all_gather_object(states, sampler.generator.get_state())
    return states


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def plot_losses(log_path: Path, png_path: Path) -> None:
    """Training and eval loss against step (matplotlib, Agg)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        print("matplotlib not installed: no loss.png (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train_pts = [(e["step"], e["loss"]) for e in events if e["event"] == "train"]
    eval_pts = [(e["step"], e["val_loss"]) for e in events if e["event"] == "eval"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train_pts:
        ax.plot(*zip(*train_pts, strict=True), label="train")
    if eval_pts:
        ax.plot(*zip(*eval_pts, strict=True), "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("xlstm-edge training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# ---- CLI --------------------------------------------------------------------------------------------
def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = json.loads(value) if value[:1] in "[{0123456789-tfn" else value
    return out


@click.command("train")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--preset", default="tiny", show_default=True, help="Model preset (tiny, tiny-ms, small, ...).")
@click.option("--set", "overrides", multiple=True, help="Model config override key=value (repeatable).")
@click.option("--init-from", type=click.Path(exists=True), help="Start from this checkpoint instead of a preset.")
@click.option("--data", multiple=True, type=click.Path(), help="Text files or folders (default: Python's stdlib).")
@click.option("--steps", default=200, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--seq-len", default=128, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--min-lr", default=3e-4, show_default=True)
@click.option("--warmup", default=20, show_default=True)
@click.option("--weight-decay", default=0.1, show_default=True)
@click.option("--grad-clip", default=1.0, show_default=True)
@click.option("--eval-every", default=50, show_default=True)
@click.option("--eval-batches", default=8, show_default=True)
@click.option("--save-every", default=100, show_default=True)
@click.option("--log-every", default=10, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--kernels", type=click.Choice(["auto", "triton", "torch"]), default="auto", show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Stop (evaluate, save) after this wall time.")
@click.option("--compile", is_flag=True, help="torch.compile the blocks and the loss (faster steps after a "
              "compile of a minute or two).")
@click.option("--resume", is_flag=True, help="Continue from the latest complete checkpoint in --out.")
def train_cmd(out_dir, preset, overrides, init_from, data, resume, **opts) -> None:
    """Train an xLSTM language model.

    \b
    Examples:
      xlstm-edge train --out runs/tiny --steps 200                # tiny preset, stdlib corpus, CPU
      xlstm-edge train --out runs/tiny --steps 400 --resume       # continue the same run
      xlstm-edge train --out runs/demo --preset tiny --set hidden_size=256 --set num_hidden_layers=4
      torchrun --nproc-per-node 2 -m xlstm_edge.train --out runs/ddp ...   # multi-GPU (DDP)
    """
    try:
        cfg = TrainConfig(out_dir=out_dir, preset=preset, model_overrides=_parse_overrides(overrides),
                          init_from=init_from, data=list(data), **opts)
        last = train(cfg, resume=resume)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"saved {last}")


if __name__ == "__main__":  # torchrun -m xlstm_edge.train ...
    train_cmd()
