"""xlstm-edge: xLSTM language models from GPU training to on-device streaming.

The torch-backed names (``xLSTMForCausalLM``, ``init_state``, ...) load on first use, so that
``import xlstm_edge.runtime`` (ONNX Runtime + numpy) never imports torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import PRESETS, xLSTMConfig
from .state_spec import state_bytes, state_spec

if TYPE_CHECKING:
    from .model import xLSTMForCausalLM
    from .state import State, init_state

# the embedded default: a 1.35 M-param byte-level model trained on Python's standard library (H100,
# 3000 steps, bench/gpu_demo.sh); its training log and loss curve lie beside it
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo"

_LAZY = {"xLSTMForCausalLM": ".model", "State": ".state", "init_state": ".state"}


def __getattr__(name: str) -> Any:
    """Load the torch-backed names on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEMO_CHECKPOINT", "PRESETS", "State", "init_state", "state_bytes", "state_spec", "xLSTMConfig",
    "xLSTMForCausalLM",
]
__version__ = "0.1.0"
