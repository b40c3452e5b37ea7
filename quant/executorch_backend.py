"""int8 programs for ExecuTorch / XNNPACK: lower the quantized step / prefill modules, run them, inspect them.

The eager quantized model's int8 modules become torchao tensors with the same integers
(``torchao_bridge``); ``torch.export`` -> ``to_edge_transform_and_lower(XnnpackPartitioner)`` ->
``to_executorch(do_quant_fusion_and_const_prop=True)`` (the int8 embedding becomes
``quantized_decomposed::embedding_byte``, which needs ``import executorch.kernels.quantized`` at run
time). One .pte holds both methods. Only ``int8-dynamic`` exists here (see ``torchao_bridge``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from xlstm_edge.export.runner_module import FORWARD, RunnerSpec, export_runner_method
from xlstm_edge.export.step_module import PrefillModule, StepModule, example_inputs
from xlstm_edge.export.to_executorch import backend_config, quiet_lowering
from xlstm_edge.runtime.graphs import PteMethod, load_quantized_kernels  # the one .pte loader

from .handler import QuantizationError
from .torchao_bridge import to_torchao

_QUANT_TARGETS = ("quantize", "choose_qparams", "dequantize")  # substrings of activation-quantizing ops
_ET_DTYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 6: "float32"}  # ExecuTorch ScalarType codes


def check_state_float(program: torch.export.ExportedProgram, n_fixed_inputs: int) -> str:
    """The state inputs (user inputs after the first ``n_fixed_inputs``) must be float32 and feed no
    quantize / choose-qparams op directly (the state is never quantized). Raises ``QuantizationError``."""
    from torch.export.graph_signature import InputKind

    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    state = set(user[n_fixed_inputs:])
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in state:
            dtype = node.meta["val"].dtype
            if dtype != torch.float32:
                raise QuantizationError(f"state input {node.name} is {dtype} in the exported graph, not float32")
            for user_node in node.users:
                if any(t in str(user_node.target) for t in _QUANT_TARGETS):
                    raise QuantizationError(f"state input {node.name} feeds {user_node.target} directly")
    return f"{len(state)} state inputs float32, none feeds a quantize op"


def structure_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules that shares its tensors (parameters and buffers): ``to_torchao`` then
    swaps modules of the copy only, and its int8 weights wrap the same storage (``torch.export`` and the
    lowering never write to them). A deep copy held the quantized model twice (1.4 GB at 1.4 B int8)."""
    tensors = [*model.parameters(), *model.buffers()]
    return copy.deepcopy(model, memo={id(t): t for t in tensors})


def export_program(model: nn.Module, methods: dict[str, tuple[str, int]], path: Path,
                   batch: int = 1, runner: RunnerSpec | None = None) -> dict[str, Any]:
    """Lower ``methods`` ({method name: (graph kind "step" | "prefill", tokens_per_call)}) of the
    quantized model into one .pte at ``path``. The batch is static (``batch`` rows, as the float32
    package's). ``runner``: add the stock runner's ``forward`` and metadata methods (``runner_module``).

    Returns lowering facts per method: XNNPACK delegate count, the quantize ops left outside
    delegates, and the state check of the exported graph (``check_state_float``).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    load_quantized_kernels()
    ao_model = to_torchao(structure_copy(model))
    programs = {}
    facts: dict[str, Any] = {}
    with torch.no_grad(), quiet_lowering():
        for name, (kind, tokens) in methods.items():
            module = (StepModule(ao_model, flat_step=True) if kind == "step"  # as export.to_executorch
                      else PrefillModule(ao_model, tokens))
            args = example_inputs(ao_model, batch, tokens, kind == "prefill")
            programs[name] = torch.export.export(module, args, strict=False)
            facts[name] = {"state_in_graph": check_state_float(programs[name], 2 if kind == "prefill" else 1)}
        if runner is not None:
            programs[FORWARD] = export_runner_method(ao_model, runner)
            facts[FORWARD] = {"state": "mutable buffers, float32"}
        edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()],
                                           constant_methods=runner.constant_methods() if runner else None)
        for name in programs:
            delegates, outside = 0, {}
            for node in edge.exported_program(name).graph.nodes:
                if node.op != "call_function":
                    continue
                target = str(node.target)
                if "executorch_call_delegate" in target:
                    delegates += 1
                elif "quantize" in target or "choose_qparams" in target:
                    op = getattr(node.target, "__name__", target)
                    outside[op] = outside.get(op, 0) + 1
            facts[name].update(xnnpack_delegates=delegates, quant_ops_outside_delegates=outside)
        program = edge.to_executorch(backend_config(do_quant_fusion_and_const_prop=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(program.buffer)
    return facts


def io_dtypes(runner: PteMethod) -> tuple[list[str], list[str]]:
    """The dtype names of a method's inputs and outputs, as the program declares them."""
    meta = runner.method.metadata

    def name(info: Any) -> str:
        code = info.dtype()
        code = int(code) if isinstance(code, int) else int(getattr(code, "value", -1))
        return _ET_DTYPES.get(code, f"ScalarType {code}")

    ins = [name(meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
    outs = [name(meta.output_tensor_meta(i)) for i in range(meta.num_outputs())]
    return ins, outs


def inspect_method(runner: PteMethod, n_fixed_inputs: int) -> dict[str, Any]:
    """State I/O must be float32: inputs after the first ``n_fixed_inputs``, outputs after logits."""
    ins, outs = io_dtypes(runner)
    state = ins[n_fixed_inputs:] + outs[1:]
    bad = sorted({d for d in state if d != "float32"})
    if bad:
        raise QuantizationError(f"{runner.path.name}: state tensors of dtype {bad[0]} in the program, expected float32")
    return {"state_io": f"{len(state)} tensors, all float32"}


def executorch_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"executorch": version("executorch"), "torchao": version("torchao")}
