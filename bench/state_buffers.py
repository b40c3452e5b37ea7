"""A/B: the same one-token step graph with its state as tensors in and out (our packages' ``step``: the
runtime copies nothing, the binding copies the outputs once) against the state in mutable buffers inside
the program (``step_buf``: input_ids only, ``copy_`` into the buffers at the end).

    .venv/bin/python bench/state_buffers.py CKPT [--threads 2] [--calls 64] [--rounds 5]

Both methods are lowered into one .pte from the checkpoint (float32, XNNPACK; ``flat_step`` as in
packages), then timed call by call, alternating: median ms of single calls and the median ratio of
neighbouring calls (the shared machine's noise hits both alike). Prints a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn


class BufferStep(nn.Module):
    """``ExportLM.step`` with the state in buffers: input_ids (1, 1) -> logits (1, V)."""

    def __init__(self, model) -> None:
        super().__init__()
        from xlstm_edge.export.graph_model import ExportLM
        from xlstm_edge.export.runner_module import StateBuffers

        self.lm = ExportLM(model, flat_step=True)
        self.state = StateBuffers(model.config)

    def forward(self, input_ids: Tensor) -> Tensor:
        logits, new = self.lm.step(input_ids, self.state.read(torch.ones(1)))
        self.state.write(new)
        return logits


def build(ckpt: Path, path: Path) -> None:
    from xlstm_edge.export.step_module import StepModule, example_inputs
    from xlstm_edge.export.to_executorch import lower_to_pte

    from xlstm_edge.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt).requires_grad_(False)
    with torch.no_grad():
        programs = {
            "step": torch.export.export(StepModule(model, flat_step=True), example_inputs(model, 1, 1, False),
                                        strict=False),
            "step_buf": torch.export.export(BufferStep(model).eval(), (torch.zeros(1, 1, dtype=torch.int64),),
                                            strict=False),
        }
    print("delegates", lower_to_pte(programs, path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pte", type=Path, default=None, help="reuse (or keep) the lowered program here")
    args = ap.parse_args()
    from xlstm_edge.runtime.graphs import PteMethod, open_pte_program

    from xlstm_edge import xLSTMConfig
    from xlstm_edge.state import state_spec

    path = args.pte or Path(tempfile.mkdtemp()) / "ab.pte"
    if not path.is_file():
        build(args.ckpt, path)
    config = xLSTMConfig.from_dict(json.loads((args.ckpt / "config.json").read_text()))
    program = open_pte_program(path)
    io = PteMethod(path, "step", args.threads, program)
    buf = PteMethod(path, "step_buf", None, program)
    state = [torch.zeros(1, *s.shape) for s in state_spec(config)]
    ids = torch.zeros(1, 1, dtype=torch.int64)
    t_io: list[float] = []
    t_buf: list[float] = []
    for i in range(args.rounds * args.calls + 2):  # call by call, alternating: noise hits both alike
        t0 = time.perf_counter()
        state = io.run([ids, *state])[1:]
        t1 = time.perf_counter()
        buf.run([ids])
        t2 = time.perf_counter()
        if i >= 2:
            t_io.append(t1 - t0)
            t_buf.append(t2 - t1)
    ratios = sorted(b / a for a, b in zip(t_io, t_buf, strict=True))
    state_mb = sum(t.numel() for t in state) * 4 / 1e6
    print(f"{args.ckpt.name}: state {state_mb:.2f} MB, {args.threads} threads, {args.rounds} rounds x {args.calls} calls")
    print("| method | state | median ms / token | p10-p90 |")
    print("|---|---|---|---|")
    for name, how, times in (("step", "tensors in, out (today)", t_io), ("step_buf", "mutable buffers", t_buf)):
        q = statistics.quantiles([1e3 * t for t in times], n=10)
        print(f"| {name} | {how} | {1e3 * statistics.median(times):.2f} | {q[0]:.2f}-{q[-1]:.2f} |")
    print(f"step_buf / step, median of per-pair ratios: {statistics.median(ratios):.3f} "
          f"(p10-p90 {ratios[len(ratios) // 10]:.3f}-{ratios[-len(ratios) // 10 - 1]:.3f})")


if __name__ == "__main__":
    main()
