"""xlstm-edge: xLSTM language models from GPU training to on-device streaming."""

from .config import PRESETS, xLSTMConfig
from .model import xLSTMForCausalLM
from .state import State, init_state, state_bytes, state_spec

__all__ = ["PRESETS", "State", "init_state", "state_bytes", "state_spec", "xLSTMConfig", "xLSTMForCausalLM"]
__version__ = "0.1.0"
