"""What a quantized package's graphs are checked against, computed while the eager int8 model is alive.

The package's graph sessions are opened only after the eager model is freed: each holds the
weights once (ONNX Runtime's MatMulNBits keeps its own packed copy), so both together would be two
packages, over the pipeline's bound of 1.5 x the package + 2 GiB as soon as the package passes
4 GiB (xLSTM 7B int8 is 7 GB). Hence two phases:

1. eager (``prefill_records``, ``eager_greedy``): the eager int8 model's outputs for given inputs,
   kept as ``Record``s; its greedy trajectory after the prompt, a few of its steps kept whole (input
   state and outputs) within ``STEP_RECORD_BYTES`` (a 7B state is 128 MiB)
2. graphs (``replay``, ``greedy_run``): each graph run on the recorded inputs against the recorded
   outputs (``verify.Parity``), and the step graph's own greedy trajectory

Shapes: ids (B, T) int64, states flat in ``state_spec`` order (B, *shape) float32, logits (B, V).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from xlstm_edge.export.step_module import random_state

from xlstm_edge.state import state_spec
from xlstm_edge.state_spec import state_bytes

from .verify import EagerGraph, Parity, _Tracker

STEP_RECORD_BYTES = 512 * 2**20  # eager steps kept whole for the step graph's check (at least 2)


@dataclass
class Record:
    """One call: the inputs in the package contract's order and the eager int8 model's outputs."""

    inputs: list[Tensor]
    outputs: list[Tensor]


@torch.no_grad()
def prefill_records(int8: nn.Module, tokens_per_call: int, batch: int, generator: torch.Generator,
                    calls: int = 1) -> list[Record]:
    """``calls`` prefill calls of the eager model on ``batch`` rows from random states; row b has
    T valid tokens when b is even, T // 2 + 1 when odd (``verify.prefill_parity``'s default)."""
    T, eager = tokens_per_call, EagerGraph(int8, "prefill", tokens_per_call)
    records = []
    for _ in range(calls):
        ids = torch.randint(0, int8.config.vocab_size, (batch, T), generator=generator)
        valid = torch.tensor([T if b % 2 == 0 else T // 2 + 1 for b in range(batch)], dtype=torch.int64)
        inputs = [ids, valid, *random_state(int8, batch, generator)]
        records.append(Record(inputs, eager.run(inputs)))
    return records


@dataclass
class Trajectory:
    """A greedy run: ``fed`` (N,) the tokens fed (the prompt, then the runner's own argmax), ``logits``
    (N - P + 1, V) of row 0 at the generated positions (their argmax are the chosen tokens), ``steps``
    the calls kept whole."""

    fed: Tensor
    logits: Tensor
    steps: list[Record]


def kept_steps(total: int, record_bytes: int, budget: int = STEP_RECORD_BYTES) -> list[int]:
    """Which of ``total`` steps to keep whole: all when they fit ``budget``, else evenly spaced (at
    least 2: the first and the last)."""
    keep = max(2, budget // max(record_bytes, 1))
    if keep >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


@torch.no_grad()
def greedy_run(runner, config, prompt: Tensor, steps: int, batch: int = 1, keep: set[int] | None = None
               ) -> Trajectory:
    """prompt (P,) ids; ``steps`` calls of the step ``runner`` from the zero state, teacher-forced over
    the prompt, then fed its own argmax; every row of a ``batch`` reads the same tokens (a static-batch
    graph's own batch), row 0 counts. The calls numbered in ``keep`` are kept as ``Record``s."""
    state = [torch.zeros(batch, *s.shape) for s in state_spec(config)]
    P = prompt.shape[0]
    fed, logits, records = [int(prompt[0])], [], []
    for t in range(steps):
        inputs = [torch.full((batch, 1), fed[-1], dtype=torch.int64), *state]
        out = runner.run(inputs)
        if keep and t in keep:
            records.append(Record(inputs, out))
        state = out[1:]
        if t >= P - 1:
            logits.append(out[0][0])
        fed.append(int(prompt[t + 1]) if t + 1 < P else int(out[0][0].argmax(-1)))
    return Trajectory(torch.tensor(fed[:-1], dtype=torch.int64), torch.stack(logits), records)


def eager_greedy(int8: nn.Module, prompt: Tensor, steps: int, batch: int = 1,
                 budget: int = STEP_RECORD_BYTES) -> Trajectory:
    """``greedy_run`` of the eager model, keeping the steps ``kept_steps`` picks within ``budget``."""
    keep = set(kept_steps(steps, 2 * state_bytes(int8.config, batch), budget))
    return greedy_run(EagerGraph(int8, "step"), int8.config, prompt, steps, batch, keep)


@torch.no_grad()
def replay(graph, records: list[Record]) -> Parity:
    """``graph`` (``run(inputs) -> outputs``) on each record's inputs against its outputs."""
    tracker = _Tracker()
    for r in records:
        tracker.add(graph.run(r.inputs), r.outputs)
    return tracker.result()
