"""The ONNX Runtime backend's step and prefill sessions share one mapped copy of the package's weights
(``SharedWeights``): every external initializer of both graphs comes from weights.bin mapped once, equal
tensors are one ``OrtValue``, and the logits equal those of sessions that load their own weights."""

from __future__ import annotations

import numpy as np
import pytest
from xlstm_edge.runtime import load
from xlstm_edge.runtime.graphs import SharedWeights, check_external_data
from xlstm_edge.runtime.onnx_initializers import read_graph

from tests.runtime.conftest import random_ids


def _spy(monkeypatch) -> list[tuple[str, str, int]]:
    """Record (graph name, initializer name, data address) of each ``add_initializer`` call."""
    seen: list[tuple[str, str, int]] = []
    real = SharedWeights.add_to

    def add_to(self, options, record):
        class Recorder:
            def add_initializer(self_, name, value):
                seen.append((str(len(record.initializers)), name, value.data_ptr()))
                options.add_initializer(name, value)

        return real(self, Recorder(), record)

    monkeypatch.setattr(SharedWeights, "add_to", add_to)
    return seen


def test_reader_agrees_with_onnx(packages):
    """The protobuf reader finds the initializers (name, dtype, dims, location) the onnx package finds."""
    onnx = pytest.importorskip("onnx")
    from onnx.onnx_pb import TensorProto

    for method in ("step", "prefill"):
        path = packages["onnxruntime"] / f"{method}.onnx"
        model = onnx.load(str(path), load_external_data=False)
        ours = {t.name: t for t in read_graph(path).initializers}
        assert len(ours) == len(model.graph.initializer) and read_graph(path).num_nodes == len(model.graph.node)
        for t in model.graph.initializer:
            got = ours[t.name]
            assert got.data_type == t.data_type and got.dims == tuple(t.dims)
            if t.data_location == TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                assert (got.location, got.offset, got.length) == (info["location"], int(info["offset"]),
                                                                   int(info["length"]))
            else:
                assert got.location is None


def test_both_sessions_use_one_mapped_copy(packages, monkeypatch):
    pkg = packages["onnxruntime"]
    seen = _spy(monkeypatch)
    sess = load(pkg, num_threads=1)
    weights: SharedWeights = sess.backend.weights  # type: ignore[attr-defined]
    external = {m: [t for t in check_external_data(pkg / f"{m}.onnx").initializers if t.location]
                for m in ("step", "prefill")}
    n_step, n_prefill = len(external["step"]), len(external["prefill"])
    assert n_step > 0 and n_prefill > 0 and len(seen) == n_step + n_prefill
    # every address lies inside the one mapping of weights.bin
    (mm,) = weights._maps.values()
    lo, hi = mm.ctypes.data, mm.ctypes.data + mm.nbytes
    assert all(lo <= addr < hi for _, _, addr in seen)
    # the graphs hold the same weights (under different names): one OrtValue per distinct tensor
    step_addrs = {addr for _, _, addr in seen[:n_step]}
    prefill_addrs = {addr for _, _, addr in seen[n_step:]}
    assert len(step_addrs & prefill_addrs) >= min(len(step_addrs), len(prefill_addrs)) // 2
    assert weights.num_values < n_step + n_prefill


def test_logits_equal_sessions_with_their_own_weights(packages, monkeypatch, seed):
    pkg = packages["onnxruntime"]
    shared = load(pkg, num_threads=1)
    monkeypatch.setattr(SharedWeights, "add_to", lambda self, options, record: 0)
    own = load(pkg, num_threads=1)
    assert own.backend.weights.num_values == 0  # type: ignore[attr-defined]
    prompt = random_ids(37)
    assert np.array_equal(shared.prefill(prompt), own.prefill(prompt)), f"seed {seed}"
    for tok in random_ids(8):
        assert np.array_equal(shared.step([tok]), own.step([tok])), f"seed {seed}"
    assert shared.generate_ids([], 16) == own.generate_ids([], 16)
