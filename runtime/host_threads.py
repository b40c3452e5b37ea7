"""Keep torch's OpenMP pool asleep while another runtime's thread pool runs the model.

The ONNX Runtime and ExecuTorch backends run their graphs on their own pools; the session does its
bookkeeping around each call with torch (copying the (B, V) logits, sampling over them). A torch op
over more than 32k elements runs on torch's OpenMP team, whose workers then spin-wait for the next
region for a while (libgomp's default) and so take a core from the backend's pool. On a 2-core
machine that halves the backend's second thread: small preset, ExecuTorch int8, 2 threads,
2026-11-23, ms per step through ``Session.step``: 8.6-9.0 with torch on 2 threads, 5.8-6.0 on one.
Sampling over one row of logits is cheap on one thread, so these backends run it there. The runtime's
own host work is numpy now; torch is only touched here when something else (ExecuTorch, the torch
backend) has imported it already: this module never imports torch itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op threads set to ``threads`` (None, or torch not loaded: leave
    them), then restore."""
    torch = sys.modules.get("torch")
    if torch is None or threads is None:
        yield
        return
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
