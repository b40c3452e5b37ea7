"""How much int8 costs: perplexity, KL divergence, greedy agreement (the llama.cpp way of judging quantization).

``eval_ids``          held-out token ids: a text file, or the embedded corpus's held-out split (by file)
``compare_eval``      perplexity of float32 and int8 (eager; teacher-forced, state carried across
                      segments), mean KL(p_fp32 || p_int8) of next-token distributions, top-1 agreement
``greedy_compare``    float32 generates greedily after a prompt; the int8 GRAPH (the artifact) and
                      the int8 eager reference read the same tokens (teacher-forced); agreement = how
                      often the graph's argmax equals float32's next token. The same run checks the
                      graph against eager int8 one step at a time along a realistic sequence.
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
def compare_eval(fp32: nn.Module, int8: nn.Module, ids: Tensor, segment: int = 256) -> EvalResult:
    """Teacher-forced over ids (N,): N - 1 predictions, segments of ``segment`` tokens, state carried."""
    ids = ids[None]  # (1, N)
    N = ids.shape[1]
    states: dict[str, Any] = {"fp32": None, "int8": None}
    nll = {"fp32": 0.0, "int8": 0.0}
    kl_sum, kl_max, agree, count = 0.0, 0.0, 0, 0
    for start in range(0, N - 1, segment):
        x = ids[:, start : min(start + segment, N - 1)]
        y = ids[0, start + 1 : start + 1 + x.shape[1]]
        logp = {}
        for name, model in (("fp32", fp32), ("int8", int8)):
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
    agreement: float  # graph (own state) argmax == float32's greedy token
    agreement_eager_int8: float
    parity_vs_eager_int8: dict[str, float]  # per step, graph reading the eager int8 model's state
    drift_vs_fp32: dict[str, float]  # graph carrying its own state vs float32 carrying its own

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def greedy_compare(graph, fp32: nn.Module, int8: nn.Module, prompt: Tensor, new_tokens: int = 256,
                   batch: int = 1) -> GreedyResult:
    """prompt (P,) ids; float32 (eager, step form) generates ``new_tokens`` greedily from the zero state.

    ``batch``: rows per call (a static-batch graph needs its own batch); every row reads the same
    tokens and agreement counts row 0.

    The graph (a step runner) reads the same tokens twice per step: with its own state (greedy
    agreement, drift against float32) and with the eager int8 model's state (tight parity, one step
    of computation at a time).
    """
    runners = {"fp32": EagerGraph(fp32, "step"), "int8": EagerGraph(int8, "step")}
    states = {name: zero_state(fp32, batch) for name in ("graph", "fp32", "int8")}
    tight, drift = _Tracker(), _Tracker()
    P = prompt.shape[0]
    agree = {"graph": 0, "int8": 0}
    tok = prompt[:1].view(1, 1).expand(batch, 1).contiguous()
    for t in range(P + new_tokens - 1):
        out = graph.run([tok, *states["graph"]])
        refs = {name: runner.run([tok, *states[name]]) for name, runner in runners.items()}
        tight.add(graph.run([tok, *states["int8"]]), refs["int8"])
        drift.add(out, refs["fp32"])
        states["graph"] = out[1:]
        for name in runners:
            states[name] = refs[name][1:]
        if t >= P - 1:
            nxt = int(refs["fp32"][0][0].argmax(-1))
            agree["graph"] += int(int(out[0][0].argmax(-1)) == nxt)
            agree["int8"] += int(int(refs["int8"][0][0].argmax(-1)) == nxt)
            tok = torch.full((batch, 1), nxt, dtype=torch.int64)
        else:
            tok = prompt[t + 1 : t + 2].view(1, 1).expand(batch, 1).contiguous()
    return GreedyResult(P, new_tokens, agree["graph"] / new_tokens, agree["int8"] / new_tokens,
                        tight.result().to_dict(), drift.result().to_dict())
