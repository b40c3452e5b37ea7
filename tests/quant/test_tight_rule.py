"""The tight check's rule (``quant.verify.require_tight``): it passes a graph whose calls are either within
float32 noise or off by a rounding flip, as long as ``TIGHT_CLEAN_CALLS`` are clean, and refuses one that
differs in every call. ``prefill_parity`` makes more calls, up to ``max_calls``, until that many are clean."""

from __future__ import annotations

import pytest
import torch
from xlstm_edge.quant.handler import QuantizationError
from xlstm_edge.quant.verify import TIGHT_CLEAN_CALLS, EagerGraph, prefill_parity, require_tight

from xlstm_edge import xLSTMConfig, xLSTMForCausalLM


class FlippingGraph:
    """The eager prefill with a relative error of ``flip`` on the calls that ``flips(call)`` names (a
    rounding flip), float32-noise-free on the others."""

    def __init__(self, reference: EagerGraph, flips, flip: float = 3e-3):
        self.reference, self.flips, self.flip, self.call = reference, flips, flip, 0

    def run(self, inputs):
        out = self.reference.run(inputs)
        if self.flips(self.call):
            out = [t * (1 + self.flip) for t in out]
        self.call += 1
        return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return xLSTMForCausalLM(xLSTMConfig.from_preset("tiny")).eval()


def _parity(model, graph, calls, max_calls=None):
    ref = EagerGraph(model, "prefill", 8)
    return prefill_parity(graph(ref), {"int8": ref}, model, 8, batch=2, valid_lengths=[1, 2], calls=calls,
                          generator=torch.Generator().manual_seed(1), max_calls=max_calls)["int8"]


def test_mostly_flipping_calls_pass_with_enough_clean_ones(model, seed):
    # the 7B probe's pattern: two of three calls flipped; the median call is a flip
    parity = _parity(model, lambda ref: FlippingGraph(ref, lambda call: call % 3 != 2), calls=6)
    assert parity.median_rel_err > 1e-3 and parity.clean_calls == 2
    require_tight(parity, "graph")


def test_a_difference_in_every_call_is_refused(model, seed):
    parity = _parity(model, lambda ref: FlippingGraph(ref, lambda call: True, flip=2e-4), calls=6, max_calls=12)
    assert parity.clean_calls == 0 and parity.calls == 12  # it looked for clean calls up to max_calls
    with pytest.raises(QuantizationError, match=f"0 of 12 calls within float32 noise.*{TIGHT_CLEAN_CALLS} needed"):
        require_tight(parity, "graph")


def test_more_calls_until_enough_are_clean(model, seed):
    # clean only from the 9th call on: 6 calls would refuse, max_calls finds the two clean ones
    parity = _parity(model, lambda ref: FlippingGraph(ref, lambda call: call < 8), calls=6, max_calls=24)
    assert parity.calls == 10 and parity.clean_calls == 2
    require_tight(parity, "graph")


def test_garbage_stops_at_once(model, seed):
    parity = _parity(model, lambda ref: FlippingGraph(ref, lambda call: True, flip=1.0), calls=2, max_calls=24)
    assert parity.calls == 2  # past TIGHT_MAX_REL_ERR: no number of calls would pass
    with pytest.raises(QuantizationError):
        require_tight(parity, "graph")
