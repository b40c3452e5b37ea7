"""How much int8 costs: perplexity, KL divergence, greedy agreement (the llama.cpp way of judging quantization).

``eval_ids``          held-out token ids: a text file, or the embedded corpus's held-out split (by file)
``compare_eval``      perplexity of float32 and int8 (eager; teacher-forced, state carried across
                      segments), mean KL(p_fp32 || p_int8) of next-token distributions, top-1 agreement
``greedy_report``     the int8 GRAPH (the artifact) has generated greedily after a prompt
                      (``references.greedy_run``), float32 scores that trajectory (teacher-forced);
                      agreement = how often float32's argmax is the graph's token
The float32 side never needs the float model whole: given a ``WeightSource`` (checkpoint, package) it
runs one block at a time over whole sequences (``xlstm_edge.streamed``).
Eager int8 stands in for the graph in the perplexity pass because the graph is checked against it
(``references``: the step graph on eager steps) and eager sees all positions of a segment at once;
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

from .references import Trajectory
from .verify import Parity, rel_error

HELD_OUT_FRACTION = 0.02  # xlstm_edge.data.Corpus.from_files' default split
MIN_EVAL_TOKENS = 64
KL_ROWS = 64  # positions whose float64 log-probabilities are held at a time


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
        logits = {}
        for name, model in (("fp32", fp32), ("int8", int8)):
            if name == "fp32" and hidden is not None:
                logits[name] = streamed_head(fp32, hidden[start : start + x.shape[1]])
            else:
                out, states[name] = model(x, states[name])
                logits[name] = out[0]  # (S, V)
        for r in range(0, x.shape[1], KL_ROWS):  # float64 (rows, V) temporaries, not (S, V)
            logp = {name: F.log_softmax(v[r : r + KL_ROWS].double(), dim=-1) for name, v in logits.items()}
            for name, lp in logp.items():
                nll[name] += float(-lp.gather(1, y[r : r + KL_ROWS, None]).sum())
            kl = (logp["fp32"].exp() * (logp["fp32"] - logp["int8"])).sum(-1)  # (rows,)
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
    agreement_eager_int8: float | None  # the same for eager int8 along its own greedy trajectory (over
    # the generated steps it ran, None if none)
    parity_vs_eager_int8: dict[str, float]  # the step graph on kept eager int8 steps (their input state)
    drift_vs_fp32: dict[str, float]  # graph carrying its own state vs float32 over the same tokens (logits)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _logits_drift(got: Tensor, ref: Tensor) -> dict[str, float]:
    """got, ref (N, V): worst and median relative error per position, argmax agreement."""
    per = torch.tensor([rel_error(g, r) for g, r in zip(got, ref, strict=True)], dtype=torch.float64)
    return {"logits_rel_err": float(per.max()), "median_rel_err": float(per.median()),
            "argmax_agreement": float((got.argmax(-1) == ref.argmax(-1)).double().mean()), "calls": got.shape[0]}


@torch.no_grad()
def fp32_logits(fp32: WeightSource, run: Trajectory, prompt_tokens: int) -> Tensor:
    """float32's logits (N - P + 1, V) at the generated positions of ``run``'s tokens (one streamed pass,
    one block at a time: the float model is never held whole)."""
    return streamed_forward(fp32, run.fed[None], torch.arange(prompt_tokens - 1, run.fed.shape[0]),
                            torch.float32)[0]


def greedy_report(fp32: WeightSource, graph: Trajectory, eager: Trajectory | None, prompt_tokens: int,
                  parity: Parity) -> GreedyResult:
    """The greedy agreement of the step graph's trajectory (``references.greedy_run``) with float32 (which
    scores it afterwards, teacher-forced), that of eager int8 along its own trajectory (scored on the
    graph's float32 logits where the two trajectories share their tokens, else in a pass of its own),
    the graph's drift from float32, and ``parity``: the step graph on the kept eager steps."""
    P = prompt_tokens
    ref32 = fp32_logits(fp32, graph, P)
    agreement = float((ref32.argmax(-1) == graph.logits.argmax(-1)).double().mean())
    agree_int8 = None
    if eager is not None and eager.logits.shape[0]:
        n = eager.fed.shape[0]
        shared = n <= graph.fed.shape[0] and torch.equal(eager.fed, graph.fed[:n])
        eager32 = ref32[: eager.logits.shape[0]] if shared else fp32_logits(fp32, eager, P)
        agree_int8 = float((eager32.argmax(-1) == eager.logits.argmax(-1)).double().mean())
    return GreedyResult(P, graph.logits.shape[0], agreement, agree_int8, parity.to_dict(),
                        _logits_drift(graph.logits, ref32))
