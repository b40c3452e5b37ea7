"""xlstm-edge: xLSTM language models from GPU training to on-device streaming."""

from pathlib import Path

from .config import PRESETS, xLSTMConfig
from .model import xLSTMForCausalLM
from .state import State, init_state, state_bytes, state_spec

# the embedded default: a 1.35 M-param byte-level model trained on Python's standard library (H100,
# 3000 steps, bench/gpu_demo.sh); its training log and loss curve lie beside it
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo"

__all__ = [
    "DEMO_CHECKPOINT", "PRESETS", "State", "init_state", "state_bytes", "state_spec", "xLSTMConfig",
    "xLSTMForCausalLM",
]
__version__ = "0.1.0"
