"""ONNX Runtime GenAI: ``genai.onnx`` + ``genai_config.json`` in every ONNX package, so that
``onnxruntime_genai.Model(PACKAGE)`` loads it and generates from it unmodified.

    from xlstm_edge.export.genai import export_genai
    info = export_genai(model, package_dir)          # after the step / prefill graphs

The graph (``genai_graph.GenAIModule``) takes any number of tokens per call and keeps the state in
GenAI's generic ``RecurrentState`` slots (``past_key_values.{i}.conv_state`` rank 3,
``.recurrent_state`` rank 4, zero at the start, batch the only dynamic dim; no KV cache, no
attention mask, no position ids). Its weights go to the package's shared ``weights.bin`` with the
other graphs'. Parity: the same float64 reference and scaled bound as the package's own graphs
(``verify``), run through this graph with GenAI's calling pattern (the prompt in one call, then one
token per call, each call fed the previous ``present.*``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xlstm_edge.model import xLSTMForCausalLM
from xlstm_edge.state import init_state

from .genai_graph import (
    PAST,
    PRESENT,
    GenAIModule,
    GenAIStateError,
    example_inputs,
    input_names,
    output_names,
    pack_state,
    slot_shapes,
)
from .to_onnx import export_onnx_module

GRAPH_NAME = "genai.onnx"
CONFIG_NAME = "genai_config.json"
CONTEXT_LENGTH = 2**31 - 1  # xLSTM's context is unbounded: GenAI never stops a stream for length
DEFAULT_MAX_LENGTH = 65536  # GenAI's default max_length (prompt + new tokens) when a caller sets none
PROMPT_CHUNK = 256  # GenAI feeds a longer prompt in chunks of this many tokens (the T x T gate matrix)


@dataclass
class GenAIInfo:
    """What the manifest records under ``genai``: files, slot shapes, parity (or why there is none)."""

    graph: str | None
    config: str | None
    conv_state: list[int] | None = None
    recurrent_state: list[int] | None = None
    parity: dict[str, Any] | None = None
    refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# ---- export ---------------------------------------------------------------------------------------
def export_genai_graph(model: xLSTMForCausalLM, path: Path, lowering: Any = None, max_batch: int = 1024) -> None:
    """Export ``GenAIModule(model)`` to ``path`` (weights in a data file beside it), dynamic batch and T.

    ``lowering``: a quantized model's ``to_onnx.Lowering`` (custom ops, fold limit, after-save pass).
    Raises ``GenAIStateError`` when the state cannot be laid out in GenAI's slots."""
    module = GenAIModule(model)
    args = example_inputs(model, 2, 3)  # batch 2, 3 tokens: a size-1 dim would be specialized
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    tokens = torch.export.Dim("sequence", min=1, max=2**20)
    dynamic = ({0: batch, 1: tokens}, tuple({0: batch} for _ in args[1:]))
    export_onnx_module(module, args, path, input_names(model.config), output_names(model.config), dynamic,
                       lowering)
    check_in_place(path)


# GenAI binds a past input and its present output to one buffer: reading a past value through one of
# these ops reads that buffer (ONNX Runtime may run them without a copy)
_VIEW_OPS = {"Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"}


def check_in_place(path: Path) -> None:
    """Every node reading a ``past_key_values.*`` input (directly or through a view op) must be an
    ancestor of the node writing its ``present.*`` output, so that GenAI's in-place update
    (``RecurrentState``: past and present share one buffer on CPU) cannot overwrite a value still to be
    read. Raises ``GenAIStateError`` naming the first offending input."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for name in set(_node_inputs(n)):
            consumers.setdefault(name, []).append(n)

    def ancestors(node) -> set[int]:
        seen: set[int] = set()
        stack = [node]
        while stack:
            cur = stack.pop()
            for name in _node_inputs(cur):
                p = producer.get(name)
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    stack.append(p)
        return seen

    outputs = {o.name for o in g.output}
    for inp in g.input:
        if not inp.name.startswith("past_key_values."):
            continue
        out_name = inp.name.replace("past_key_values.", "present.", 1)
        if out_name not in outputs:
            raise GenAIStateError(f"{path.name}: input {inp.name} has no output {out_name}")
        writer = producer.get(out_name)
        if writer is None:
            raise GenAIStateError(f"{path.name}: output {out_name} is a graph input, not computed")
        before = ancestors(writer) | {id(writer)}
        readers, frontier = [], [inp.name]
        while frontier:
            name = frontier.pop()
            for n in consumers.get(name, []):
                if n.op_type in _VIEW_OPS and n.input[0] == name:
                    frontier.extend(n.output)
                readers.append(n)
        for n in readers:
            if n.op_type == "Shape" or n.op_type in _VIEW_OPS:  # metadata, or a view: its readers count
                continue
            if id(n) not in before:
                raise GenAIStateError(f"{path.name}: {n.op_type} node {n.name} reads {inp.name} but is not "
                                      f"computed before {out_name}, which GenAI writes into the same buffer")


def _node_inputs(node) -> list[str]:
    """A node's inputs and the outer-scope names its subgraphs (Scan / Loop / If bodies) read."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            local = {i.name for i in sub.input} | {i.name for i in sub.initializer}
            local |= {o for n in sub.node for o in n.output}
            names += [i for n in sub.node for i in _node_inputs(n) if i not in local]
    return names


def genai_config(model: xLSTMForCausalLM, tokenizer_entry: Any, threads: int | None = None) -> dict[str, Any]:
    """``genai_config.json``'s content for the graph of ``model`` (model type "decoder", no KV cache)."""
    c = model.config
    eos = tokenizer_entry.eos_token_id
    pad = tokenizer_entry.pad_token_id
    options: list[dict[str, Any]] = []
    if threads:
        options.append({"intra_op_num_threads": threads})
    decoder = {
        "filename": GRAPH_NAME,
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": [],
                            **({"intra_op_num_threads": threads} if threads else {})},
        "head_size": c.qk_head_dim if "m" in c.block_types() else c.slstm_head_dim,
        "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "inputs": {"input_ids": "input_ids", "past_key_names": PAST.format(layer="%d", slot="key"),
                   "past_value_names": PAST.format(layer="%d", slot="value")},
        "outputs": {"logits": "logits", "present_key_names": PRESENT.format(layer="%d", slot="key"),
                    "present_value_names": PRESENT.format(layer="%d", slot="value")},
    }
    return {
        "model": {
            "type": "decoder",
            "bos_token_id": tokenizer_entry.bos_token_id if tokenizer_entry.bos_token_id is not None else eos,
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else eos,
            "vocab_size": c.vocab_size,
            "context_length": CONTEXT_LENGTH,
            "decoder": decoder,
        },
        "search": {
            "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": DEFAULT_MAX_LENGTH,
            "min_length": 0, "past_present_share_buffer": False, "early_stopping": True,
            "length_penalty": 1.0, "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0,
            "no_repeat_ngram_size": 0, "diversity_penalty": 0.0, "chunk_size": PROMPT_CHUNK,
        },
    }


def write_genai_config(model: xLSTMForCausalLM, package_dir: Path, tokenizer_entry: Any) -> Path:
    path = Path(package_dir) / CONFIG_NAME
    path.write_text(json.dumps(genai_config(model, tokenizer_entry), indent=2) + "\n", encoding="utf-8")
    return path


# ---- parity -----------------------------------------------------------------------------------------
class GenAIGraphRunner:
    """``genai.onnx`` behind the ``verify.Runner`` interface, called as GenAI calls it: "prefill" takes
    (ids (B, T), valid_length (B,), *state) and runs each row's valid tokens in one call (rows one at
    a time when their lengths differ); "step" takes (ids (B, 1), *state). State in our layout."""

    def __init__(self, path: Path, config, threads: int | None = 2):
        from xlstm_edge.runtime.graphs import OrtGraph

        from .genai_graph import unpack_state

        self.graph = OrtGraph(path, threads)
        self.config = config
        self._unpack = unpack_state

    def _call(self, ids: Tensor, flat: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        from xlstm_edge.state import state_spec

        specs = state_spec(self.config)
        state: list[dict[str, Tensor]] = [{} for _ in range(self.config.num_hidden_layers)]
        for s, t in zip(specs, flat, strict=True):
            state[s.layer][s.name] = t
        outs = self.graph.run([ids, *pack_state(self.config, state)])
        new = self._unpack(self.config, outs[1:])
        return outs[0][:, 0], [new[s.layer][s.name].contiguous() for s in specs]

    def run(self, method: str, inputs: list[Tensor]) -> list[Tensor]:
        if method == "step":
            logits, state = self._call(inputs[0], inputs[1:])
            return [logits, *state]
        ids, valid, flat = inputs[0], inputs[1], inputs[2:]
        rows_logits, rows_state = [], []
        for r in range(ids.shape[0]):
            n = int(valid[r])
            row_state = [t[r:r + 1] for t in flat]
            if n == 0:  # nothing to feed: the state stays, the logits are not read
                rows_logits.append(torch.zeros(1, self.config.vocab_size))
                rows_state.append(row_state)
                continue
            logits, st = self._call(ids[r:r + 1, :n], row_state)
            rows_logits.append(logits)
            rows_state.append(st)
        return [torch.cat(rows_logits), *(torch.cat([s[i] for s in rows_state]) for i in range(len(flat)))]


def genai_parity(model: xLSTMForCausalLM, package_dir: Path, tokens_per_call: int, steps: int,
                 tolerance: float | None = None) -> Any:
    """``verify.parity_check`` through ``genai.onnx`` (GenAI's calling pattern; 2 rows of different
    prompt lengths, the longer fed in calls of ``tokens_per_call`` tokens, then ``steps`` steps)."""
    from .verify import parity_check

    runner = GenAIGraphRunner(Path(package_dir) / GRAPH_NAME, model.config)
    return parity_check(model, runner, tokens_per_call, 2, steps=steps, tolerance=tolerance)


def export_genai(model: xLSTMForCausalLM, package_dir: Path, tokenizer_entry: Any, tokens_per_call: int,
                 steps: int = 16, tolerance: float | None = None, lowering: Any = None, check: bool = True
                 ) -> GenAIInfo:
    """Write ``genai.onnx`` (its weights in a data file beside it, for ``onnx_weights.WeightsWriter``) and
    ``genai_config.json`` into ``package_dir`` and check the graph's parity (float graphs: against the
    float64 reference; ``check`` False for quantized graphs, which the caller checks against eager int8).
    A model whose state GenAI cannot carry gets no files and an info naming the limit (``refused``)."""
    from .verify import ParityError

    try:
        conv, rec = slot_shapes(model.config)
    except GenAIStateError as e:
        return GenAIInfo(graph=None, config=None, refused=str(e))
    export_genai_graph(model, Path(package_dir) / GRAPH_NAME, lowering=lowering)
    write_genai_config(model, Path(package_dir), tokenizer_entry)
    info = GenAIInfo(graph=GRAPH_NAME, config=CONFIG_NAME, conv_state=["batch", *conv],
                     recurrent_state=["batch", *rec])
    if check:
        report = genai_parity(model, Path(package_dir), tokens_per_call, steps, tolerance)
        if not report.passed:
            raise ParityError(f"the ONNX Runtime GenAI graph disagrees with the model: {report.summary()}")
        info.parity = report.to_dict()
    return info


def zero_slots(model: xLSTMForCausalLM, batch: int) -> list[Tensor]:
    """GenAI's initial state: every slot zero (= our zero state, packed)."""
    return pack_state(model.config, init_state(model.config, batch))


__all__ = ["CONFIG_NAME", "GRAPH_NAME", "GenAIInfo", "GenAIStateError", "check_in_place", "export_genai",
           "export_genai_graph", "genai_config", "genai_parity", "write_genai_config", "zero_slots"]
