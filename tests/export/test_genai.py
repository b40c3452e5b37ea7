"""ONNX Runtime GenAI runs our ONNX packages unmodified (``export/genai.py``): ``onnxruntime_genai.Model(PACKAGE)``
loads ``genai.onnx`` + ``genai_config.json``, its greedy tokens equal our runtime's, and its state resets
between generations. float32, int8 (MatMulNBits) and int4 packages of an xLSTM[m:s] model (the session's
``ort_built``, whose sLSTM state fits GenAI's slots), an mLSTM-only float32 package, and the refusal of a
model whose sLSTM state does not fit.
"""

from __future__ import annotations

import json

import pytest
import torch
from xlstm_edge.export.genai import CONFIG_NAME, GRAPH_NAME, check_in_place, export_genai
from xlstm_edge.export.genai_graph import GenAIStateError, slot_shapes
from xlstm_edge.export.metadata import TokenizerEntry, read_manifest

from tests.quant.conftest import make_model

og = pytest.importorskip("onnxruntime_genai")

PROMPT = "Once upon a time, "
NEW_TOKENS = 24


def genai_greedy(model, ids: list[int], new_tokens: int, generator=None) -> list[int]:
    """Greedy ids from ORT GenAI: the prompt in one call, then one token per call (a fresh Generator, or
    ``generator`` rewound to 0)."""
    if generator is None:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + new_tokens, do_sample=False)
        generator = og.Generator(model, params)
    else:
        generator.rewind_to(0)
    generator.append_tokens(ids)
    out: list[int] = []
    while not generator.is_done() and len(out) < new_tokens:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def ours_greedy(package, ids: list[int], new_tokens: int) -> list[int]:
    from xlstm_edge.runtime import load

    sess = load(package, backend="onnxruntime", num_threads=2)
    return sess.generate_ids(ids, max_new_tokens=new_tokens, temperature=0.0)[0]


def check_package(package, check_rewind: bool = False) -> None:
    """GenAI's greedy ids (and text) equal ours; two generations in a row give the same ids."""
    manifest = read_manifest(package)
    assert manifest.genai and manifest.genai["graph"] == GRAPH_NAME, manifest.genai
    assert (package / GRAPH_NAME).is_file() and (package / CONFIG_NAME).is_file()
    model = og.Model(str(package))
    tokenizer = og.Tokenizer(model)
    ids = [int(i) for i in tokenizer.encode(PROMPT)]
    theirs = genai_greedy(model, ids, NEW_TOKENS)
    ours = ours_greedy(package, ids, NEW_TOKENS)
    assert theirs == ours, f"ORT GenAI {theirs} vs ours {ours}"
    assert tokenizer.decode(theirs) == tokenizer.decode(ours)
    assert genai_greedy(model, ids, NEW_TOKENS) == theirs  # a second Generator of the same Model
    if check_rewind:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + NEW_TOKENS, do_sample=False)
        gen = og.Generator(model, params)
        first = genai_greedy(model, ids, NEW_TOKENS, gen)
        assert genai_greedy(model, ids, NEW_TOKENS, gen) == first == theirs  # rewind_to(0) zeroes the state


def test_float32_ms_package_runs_in_ort_genai(ort_built):
    """The session's xLSTM[m:s] float32 package (an mLSTM then an sLSTM block); GenAI parity recorded at export."""
    package = ort_built.package
    parity = read_manifest(package).genai["parity"]
    assert parity["passed"] and parity["max_rel_dlogits"] <= parity["bound_rel"]
    check_package(package, check_rewind=True)
    config = json.loads((package / CONFIG_NAME).read_text())
    assert config["model"]["type"] == "decoder" and config["model"]["context_length"] == 2**31 - 1
    assert config["search"]["past_present_share_buffer"] is False


@pytest.mark.parametrize("scheme", ["int8-weight", "int8-dynamic", "int4-dynamic"])
def test_quantized_ms_packages_run_in_ort_genai(ort_built, scheme):
    """int8 / int4 (MatMulNBits) packages: the sLSTM Scan reads its float32 recurrent weights from the
    main graph (kept by the MatMulNBits pass), greedy equals ours, parity against eager int8 recorded."""
    result = next(r for (s, _), r in ort_built.int8.items() if s == scheme)
    manifest = read_manifest(result.out)
    assert "genai_vs_eager_int8" in manifest.parity["int8"]
    if scheme != "int8-weight":
        assert manifest.genai["facts"]["integer_ops"].get("MatMulNBits", 0) > 0, manifest.genai["facts"]
    check_package(result.out)


@pytest.fixture(scope="module")
def mlstm_package(tmp_path_factory):
    """An mLSTM-only model (one block, D 32), float32 ONNX package."""
    from xlstm_edge.export import export_package

    model = make_model("tiny", 7, num_hidden_layers=1, hidden_size=32, chunk_size=8)
    out = tmp_path_factory.mktemp("genai-m") / "fp32"
    export_package(model, out, "onnx", prefill_tokens=8, parity_steps=8)
    return out


def test_mlstm_only_package_runs_in_ort_genai(mlstm_package):
    assert read_manifest(mlstm_package).genai["recurrent_state"] == ["batch", 2, 8, 16]
    check_package(mlstm_package, check_rewind=True)


def test_long_prompt_is_fed_in_chunks(mlstm_package):
    """A prompt longer than the config's ``chunk_size`` (GenAI splits it; the state carries over)."""
    model = og.Model(str(mlstm_package))
    ids = torch.randint(0, 256, (600,)).tolist()
    assert genai_greedy(model, ids, 8) == ours_greedy(mlstm_package, ids, 8)


def test_slstm_state_larger_than_mlstm_c_is_refused(tmp_path):
    """The smallest failing shape: D 32 with 4 mLSTM heads (C 4 x 4 x 8 = 128 floats) and an sLSTM block
    (y, c, n, m, conv: 7 x 32 = 224 floats): GenAI gives every layer layer 0's shapes."""
    model = make_model("tiny-ms", 0, num_hidden_layers=2, hidden_size=32, num_heads=4, slstm_at=[1])
    with pytest.raises(GenAIStateError, match="first layer only"):
        slot_shapes(model.config)
    info = export_genai(model, tmp_path, TokenizerEntry("tokenizer.json", 256, 257, 258, 260), 8)
    assert info.graph is None and "224 floats" in info.refused and "128 floats" in info.refused
    assert not any(tmp_path.iterdir())
    # two mLSTM heads (C 256 floats) fit the same sLSTM block
    slot_shapes(make_model("tiny-ms", 0, num_hidden_layers=2, hidden_size=32, slstm_at=[1]).config)


def test_in_place_check_refuses_a_late_reader(tmp_path):
    """A past value read after its present output is written (GenAI updates in place) is refused."""
    import onnx
    from onnx import TensorProto, helper

    def graph(late: bool):
        x = helper.make_tensor_value_info("past_key_values.0.recurrent_state", TensorProto.FLOAT, ["batch", 2])
        y = helper.make_tensor_value_info("present.0.recurrent_state", TensorProto.FLOAT, ["batch", 2])
        z = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
        nodes = [helper.make_node("Neg", [x.name], [y.name], name="write")]
        # late: logits read past through a view, outside the writer's ancestors
        src = "view" if late else y.name
        if late:
            nodes.append(helper.make_node("Identity", [x.name], ["view"], name="alias"))
        nodes.append(helper.make_node("Abs", [src], [z.name], name="read"))
        path = tmp_path / f"g{late}.onnx"
        onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [z, y])), str(path))
        return path

    check_in_place(graph(False))
    with pytest.raises(GenAIStateError, match="Abs node read reads past_key_values.0.recurrent_state"):
        check_in_place(graph(True))


def test_subgraph_initializers_survive_the_nbits_pass():
    """``graph_reads`` sees names read inside a Scan body, so the MatMulNBits pass keeps them."""
    from onnx import TensorProto, helper
    from xlstm_edge.quant.onnx_backend import graph_reads

    body = helper.make_graph([helper.make_node("MatMul", ["h_in", "W_outer"], ["h_out"])], "body",
                             [helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 2])],
                             [helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 2])])
    scan = helper.make_node("Scan", ["h0"], ["h"], body=body, num_scan_inputs=0)
    main = helper.make_graph([scan], "main", [], [])
    assert {"h0", "W_outer"} <= graph_reads(main)


def test_ort_genai_gives_every_layer_the_shapes_of_layer_0(tmp_path):
    """The limit behind the refusal, shown on a hand-made graph: a layer 1 recurrent_state of another
    shape than layer 0's (even with as many floats) is bound with layer 0's shape and ONNX Runtime
    rejects it (onnxruntime-genai src/models/recurrent_state.cpp: conv_shape_ / recurrent_shape_ come
    from the first layer's inputs, and every layer's buffers are allocated with them)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    V = 260
    shapes = [((2, 5), (2, 4, 8)), ((2, 5), (1, 1, 64))]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, V])]
    nodes = [helper.make_node("Cast", ["input_ids"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Slice", ["xf", "st", "en", "ax"], ["xl"]),
             helper.make_node("Unsqueeze", ["xl", "ax2"], ["xu"]),
             helper.make_node("Mul", ["xu", "cv"], ["logits"])]
    inits = [helper.make_tensor("st", TensorProto.INT64, [1], [-1]),
             helper.make_tensor("en", TensorProto.INT64, [1], [2**62]),
             helper.make_tensor("ax", TensorProto.INT64, [1], [1]), helper.make_tensor("ax2", TensorProto.INT64, [1], [2]),
             helper.make_tensor("cv", TensorProto.FLOAT, [1, 1, V], np.linspace(0, 1, V).tolist()),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    for i, (conv, rec) in enumerate(shapes):
        for slot, shape in (("conv_state", conv), ("recurrent_state", rec)):
            past, present = f"past_key_values.{i}.{slot}", f"present.{i}.{slot}"
            inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, ["batch", *shape]))
            outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT, ["batch", *shape]))
            nodes.append(helper.make_node("Add", [past, "one"], [present]))
    graph = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 20)])
    graph.ir_version = 10
    onnx.save(graph, str(tmp_path / GRAPH_NAME))
    model = make_model("tiny", 0, num_hidden_layers=2, hidden_size=32)
    from xlstm_edge.export.genai import write_genai_config

    write_genai_config(model, tmp_path, TokenizerEntry("tokenizer.json", 256, 257, 258, 260))
    params = og.GeneratorParams(og_model := og.Model(str(tmp_path)))
    params.set_search_options(max_length=12)
    gen = og.Generator(og_model, params)
    with pytest.raises(Exception, match="invalid dimensions for input: past_key_values.1.recurrent_state"):
        gen.append_tokens([1, 2, 3])
