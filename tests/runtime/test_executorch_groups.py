"""ExecuTorch methods exported for a fixed (or capped) batch: the backend runs larger batches in groups,
padding the last one; each row's result equals running it alone. Uses a stand-in method object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from xlstm_edge.runtime.executorch_backend import ExecuTorchBackend, bind_pool
from xlstm_edge.runtime.state import StateLayout

from xlstm_edge import xLSTMConfig

V = 7


class FakeMethod:
    """(ids (b, 1), *past) -> (logits (b, V), *present): present = past * 0.5 + id; logits from past."""

    def __init__(self, batch: int, static: bool):
        self.batch, self.static, self.seen = batch, static, []

    def execute(self, inputs):
        ids, *past = inputs
        b = ids.shape[0]
        self.seen.append(b)
        assert b == self.batch if self.static else b <= self.batch, (b, self.batch)
        logits = torch.stack([p.reshape(b, -1).sum(1) for p in past], 1).sum(1, keepdim=True) + ids.float()
        return [logits.expand(b, V).clone(), *(p * 0.5 + ids.float().reshape(b, *[1] * (p.dim() - 1)) for p in past)]


def _backend(cap: int, static: bool) -> ExecuTorchBackend:
    be = ExecuTorchBackend.__new__(ExecuTorchBackend)
    be.layout = StateLayout.from_config(xLSTMConfig.from_preset("tiny-ms"), "fake")
    be._methods = {"step": FakeMethod(cap, static)}
    be._max_batch = {"step": cap}
    be._static_batch = {"step": static}
    be._state = be._zeros(1)
    be._pool, be.source = bind_pool(), "fake"
    return be


@pytest.mark.parametrize("cap,static,batch", [(1, True, 3), (2, True, 5), (4, False, 3), (2, False, 5)])
def test_groups_equal_rows_alone(cap, static, batch, seed):
    be = _backend(cap, static)
    state = [torch.randn(batch, *t.shape).numpy() for t in be.layout.tensors]
    ids = torch.randint(0, V, (batch, 1)).numpy()
    be.write_state(state)
    logits = be.step(ids).copy()
    got = be.read_state()
    seen = be._methods["step"].seen
    assert all(b == cap for b in seen) if static else max(seen) <= cap
    for row in range(batch):
        alone = _backend(1, True)
        alone.write_state([t[row:row + 1] for t in state])
        assert np.array_equal(alone.step(ids[row:row + 1]), logits[row:row + 1])
        for a, b in zip(alone.read_state(), got, strict=True):
            assert np.array_equal(a, b[row:row + 1])
