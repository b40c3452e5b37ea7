"""How much int8 costs: perplexity, KL divergence, greedy agreement (the llama.cpp way of judging quantization).

``eval_ids``          held-out token ids: a text file, or the embedded corpus's held-out split (by file)
``compare_eval``      perplexity of float32 and int8 (eager; teacher-forced, state carried across
                      segments), mean KL(p_fp32 || p_int8) of next-token distributions, top-1 agreement
``greedy_compare``    the int8 GRAPH (the artifact) generates greedily after a prompt, float32 scores
                      that trajectory (teacher-forced); agreement = how often float32's argmax is the
                      graph's token. The same run checks the graph against eager int8 one step at a
                      time along a realistic sequence.
The float32 side never needs the float model whole: given a ``WeightSource`` (checkpoint, package) it
runs one block at a time over whole sequences (``xlstm_edge.streamed``).
Eager int8 stands in for the graph in the perplexity pass because the graph is checked against it
to float32 rounding (``greedy_compare``'s parity) and eager sees all positions of a segment at once;
the exported prefill graph returns only the last position's logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlstm_edge.state import state_spec
from xlstm_edge.streamed import streamed_forward, streamed_head, streamed_hidden
from xlstm_edge.weights import WeightSource

from .verify import EagerGraph, _Tracker

HELD_OUT_FRACTION = 0.02  # xlstm_edge.data.Corpus.from_files' default split
MIN_EVAL_TOKENS = 64


class EvalTextError(ValueError):
    """An evaluation / calibration text that is missing, unreadable or too short."""


def eval_ids(tokenizer: Any, path: Path | None, max_tokens: int) -> tuple[Tensor, str]:
    """Up to ``max_tokens`` ids (N,) int64 and a description of where they came from."""
    if path is not None:
        if not Path(path).is_file():
            raise EvalTextError(f"evaluation text {path} does not exist")
        ids = tokenizer.encode(Path(path).read_text(encoding="utf-8", errors="replace"))
        source = str(path)
    else:
        from xlstm_edge.data import default_corpus_files, is_held_out

        ids, files = [], 0
        for file in default_corpus_files():
            if not is_held_out(file, HELD_OUT_FRACTION):
                continue
            ids += tokenizer.encode(file.read_text(encoding="utf-8", errors="replace"))
            if tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
            files += 1
            if len(ids) >= max_tokens:
                break
        source = f"embedded corpus, held-out split ({files} files)"
    if len(ids) < MIN_EVAL_TOKENS:
        raise EvalTextError(f"evaluation text {source} has {len(ids)} tokens; need at least {MIN_EVAL_TOKENS}")
    return torch.tensor(ids[:max_tokens], dtype=torch.int64), source


@dataclass
class EvalResult:
    tokens: int
    ppl_fp32: float
    ppl_quantized: float
    ppl_increase: float  # relative: ppl_quantized / ppl_fp32 - 1
    kl_mean: float  # nats per token, KL(p_fp32 || p_int8)
    kl_max: float
    top1_agreement: float


@torch.no_grad()
def compare_eval(fp32: nn.Module | WeightSource, int8: nn.Module, ids: Tensor, segment: int = 256) -> EvalResult:
    """Teacher-forced over ids (N,): N - 1 predictions, segments of ``segment`` tokens, state carried.

    ``fp32``: the float model, or a ``WeightSource`` of its weights (checkpoint, package): then the
    float32 side runs once over the whole text one block at a time (``xlstm_edge.streamed``) and its
    head is applied segment by segment, so the float model is never held whole.
    """
    ids = ids[None]  # (1, N)
    N = ids.shape[1]
    states: dict[str, Any] = {"fp32": None, "int8": None}
    nll = {"fp32": 0.0, "int8": 0.0}
    kl_sum, kl_max, agree, count = 0.0, 0.0, 0, 0
    streamed = not isinstance(fp32, nn.Module)
    hidden = streamed_hidden(fp32, ids[:, : N - 1], torch.float32)[0] if streamed else None  # (N - 1, D)
    for start in range(0, N - 1, segment):
        x = ids[:, start : min(start + segment, N - 1)]
        y = ids[0, start + 1 : start + 1 + x.shape[1]]
        logp = {}
        for name, model in (("fp32", fp32), ("int8", int8)):
            if name == "fp32" and hidden is not None:
                logits = streamed_head(fp32, hidden[start : start + x.shape[1]])[None]
            else:
                logits, states[name] = model(x, states[name])
            logp[name] = F.log_softmax(logits[0].double(), dim=-1)  # (S, V)
            nll[name] += float(-logp[name].gather(1, y[:, None]).sum())
        kl = (logp["fp32"].exp() * (logp["fp32"] - logp["int8"])).sum(-1)  # (S,)
        kl_sum += float(kl.sum())
        kl_max = max(kl_max, float(kl.max()))
        agree += int((logp["fp32"].argmax(-1) == logp["int8"].argmax(-1)).sum())
        count += x.shape[1]
    ppl = {k: math.exp(v / count) for k, v in nll.items()}
    return EvalResult(count, ppl["fp32"], ppl["int8"], ppl["int8"] / ppl["fp32"] - 1, kl_sum / count, kl_max,
                      agree / count)


def zero_state(model: nn.Module, batch: int = 1) -> list[Tensor]:
    return [torch.zeros(batch, *s.shape) for s in state_spec(model.config)]


@dataclass
class GreedyResult:
    prompt_tokens: int
    generated_tokens: int
    agreement: float  # float32's argmax == the graph's greedy token, along the graph's trajectory
    agreement_eager_int8: float | None  # the same for eager int8 (its own state, the graph's tokens;
    # over the generated steps it ran, None if none)
    parity_vs_eager_int8: dict[str, float]  # per step, graph reading the eager int8 model's state
    drift_vs_fp32: dict[str, float]  # graph carrying its own state vs float32 over the same tokens (logits)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _logits_drift(got: Tensor, ref: Tensor) -> dict[str, float]:
    """got, ref (N, V): worst and median relative error per position, argmax agreement."""
    per = (got.double() - ref.double()).norm(dim=-1) / ref.double().norm(dim=-1).clamp_min(1e-30)
    return {"logits_rel_err": float(per.max()), "median_rel_err": float(per.median()),
            "argmax_agreement": float((got.argmax(-1) == ref.argmax(-1)).double().mean()), "calls": got.shape[0]}


@torch.no_grad()
def greedy_compare(graph, fp32: WeightSource, int8: nn.Module, prompt: Tensor, new_tokens: int = 256,
                   batch: int = 1, eager_steps: int | None = None) -> GreedyResult:
    """prompt (P,) ids; the graph (a step runner, its own state) generates ``new_tokens`` greedily from
    the zero state, and float32 scores that trajectory afterwards in one pass (``xlstm_edge.streamed``,
    one block at a time: the float model is never held whole).

    ``batch``: rows per call (a static-batch graph needs its own batch); every row reads the same
    tokens and row 0 counts. Each step the graph also reads the eager int8 model's state (tight
    parity, one step of computation at a time); eager int8 follows the graph's tokens with its own
    state (its agreement with float32 on the same trajectory). ``eager_steps``: run the eager int8
    model for the first that many steps only (None: all). Eager int8 emulates the backend's integer
    kernels in PyTorch, ~100x slower than the graph: a deep model checks its first steps here, and
    its tight check on its probe (``probe``).
    """
    int8_step = EagerGraph(int8, "step")
    states = {name: [torch.zeros(batch, *s.shape) for s in state_spec(int8.config)] for name in ("graph", "int8")}
    tight = _Tracker()
    P = prompt.shape[0]
    fed: list[int] = [int(prompt[0])]
    graph_logits, int8_logits = [], []
    limit = P + new_tokens - 1 if eager_steps is None else eager_steps
    for t in range(P + new_tokens - 1):
        tok = torch.full((batch, 1), fed[-1], dtype=torch.int64)
        out = graph.run([tok, *states["graph"]])
        states["graph"] = out[1:]
        if t < limit:
            ref = int8_step.run([tok, *states["int8"]])
            tight.add(graph.run([tok, *states["int8"]]), ref)
            states["int8"] = ref[1:]
        if t >= P - 1:
            graph_logits.append(out[0][0])
            if t < limit:
                int8_logits.append(ref[0][0])
            fed.append(int(out[0][0].argmax(-1)))
        else:
            fed.append(int(prompt[t + 1]))
    seq = torch.tensor(fed[:-1], dtype=torch.int64)[None]  # the P + new_tokens - 1 tokens fed
    ref32, _ = streamed_forward(fp32, seq, torch.arange(P - 1, seq.shape[1]), torch.float32)
    chosen = torch.tensor(fed[P:], dtype=torch.int64)  # the graph's greedy tokens
    g = torch.stack(graph_logits)
    i8 = torch.stack(int8_logits) if int8_logits else None
    agree_int8 = None if i8 is None else float((ref32[: len(i8)].argmax(-1) == i8.argmax(-1)).double().mean())
    return GreedyResult(P, new_tokens, float((ref32.argmax(-1) == chosen).double().mean()), agree_int8,
                        tight.result().to_dict(), _logits_drift(g, ref32))
