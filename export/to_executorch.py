"""ExecuTorch: one ``model.pte`` with methods ``step`` and ``prefill`` (and, for batch 1, ``forward`` with
the metadata methods of ExecuTorch's stock LLM runner: ``runner_module``), lowered to XNNPACK.

``torch.export`` each method, ``to_edge_transform_and_lower`` with the XNNPACK partitioner on the
dict of programs (one multi-method program), ``to_executorch``. The batch dim is static (default
1): a dynamic one made lowering several times slower here for no gain on a device that streams
one conversation; the manifest names the fixed batch in each graph's input shapes.
Packages read their inputs in place (``backend_config``); the binding returns outputs as fresh tensors.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xlstm_edge.model import xLSTMForCausalLM

from .metadata import GraphEntry
from .runner_module import FORWARD, RunnerSpec, export_runner_method
from .step_module import PrefillModule, StepModule, example_inputs, graph_entry

PTE_NAME = "model.pte"


def export_programs(
    model: xLSTMForCausalLM, tokens_per_call: int, batch: int = 1
) -> dict[str, torch.export.ExportedProgram]:
    """{"step": program, "prefill": program} for a fixed ``batch``."""
    programs = {}
    for method, module, T in (
        ("step", StepModule(model, flat_step=True), 1),  # (B, D) residual stream: fewer XNNPACK copies
        ("prefill", PrefillModule(model, tokens_per_call), tokens_per_call),
    ):
        args = example_inputs(model, batch, T, method == "prefill")
        with torch.no_grad():
            programs[method] = torch.export.export(module, args, strict=False)
    return programs


@contextlib.contextmanager
def quiet_lowering():
    """ExecuTorch's lowering prints warnings and info lines by the hundred; keep the console readable."""
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger().setLevel(level)


def backend_config(**kwargs: Any) -> Any:
    """``to_executorch``'s config for every package (``kwargs`` added): graph inputs are not memory-planned,
    so a call reads the caller's tensors where they are instead of copying them into the program's
    arena first. The state is most of the input (3.5 MB a step on the small preset): int8 step 8.0 ->
    7.4 ms on 1 thread and 10.2 -> 9.4 ms on 2 (2026-11-23, same outputs bit for bit)."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass

    return ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False), **kwargs)


def lower_to_pte(programs: dict[str, torch.export.ExportedProgram], path: Path,
                 constant_methods: dict | None = None) -> dict[str, int]:
    """Lower the programs to XNNPACK and write one ``.pte`` (with ``constant_methods``, e.g. the stock
    runner's metadata); returns {method: delegate calls}. The methods share each weight (XNNPACK keeps
    constants in the program's named data, one copy per distinct tensor)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with quiet_lowering():
        edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()],
                                           constant_methods=constant_methods)
        delegates = {
            name: sum(1 for n in edge.exported_program(name).graph.nodes if "call_delegate" in str(n.target))
            for name in programs
        }
        et_program = edge.to_executorch(backend_config())
    with open(path, "wb") as fh:
        et_program.write_to_file(fh)
    return delegates


def export_executorch(
    model: xLSTMForCausalLM, tokens_per_call: int, out_dir: Path, batch: int = 1, runner: RunnerSpec | None = None
) -> tuple[dict[str, GraphEntry], dict[str, int]]:
    """Write ``out_dir/model.pte``; return the manifest's graph entries and the delegate counts.
    ``runner``: also write the stock runner's ``forward`` and metadata methods (``runner_module``)."""
    programs = export_programs(model, tokens_per_call, batch)
    if runner is not None:
        programs[FORWARD] = export_runner_method(model, runner)
    delegates = lower_to_pte(programs, out_dir / PTE_NAME, runner.constant_methods() if runner else None)
    graphs = {
        "step": graph_entry(model, "step", 1, PTE_NAME, batch=batch),
        "prefill": graph_entry(model, "prefill", tokens_per_call, PTE_NAME, batch=batch),
    }
    return graphs, delegates


class ExecuTorchRunner:
    """A package's .pte methods (``runtime.graphs.PteMethod``): ``run(method, inputs) -> outputs``.

    Inputs are read in place (``backend_config``); the outputs are fresh tensors.
    """

    def __init__(self, package_dir: Path, graphs: dict[str, GraphEntry]):
        from xlstm_edge.runtime.graphs import PteMethod, open_pte_program

        files = {g.file for g in graphs.values()}
        if len(files) != 1:
            raise ValueError(f"an ExecuTorch package has one .pte, the manifest names {sorted(files)}")
        path = package_dir / files.pop()
        with quiet_lowering():
            program = open_pte_program(path)
            self.methods = {name: PteMethod(path, g.method, None, program) for name, g in graphs.items()}

    def run(self, method: str, inputs: list[Tensor]) -> list[Tensor]:
        return self.methods[method].run(inputs)
