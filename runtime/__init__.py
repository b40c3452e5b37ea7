"""Streaming runtime: load an exported package (onnxruntime / executorch) or the eager model (torch),
prefill, step, stream text, sample, and keep the conversation state as an object.

    from xlstm_edge.runtime import load, SamplingConfig
    sess = load("pkg/")
    for piece in sess.stream("Hello", max_new_tokens=64, sampling=SamplingConfig(temperature=0.8, seed=0)):
        print(piece, end="")

Driving ``sess.step`` from your own loop: run your torch work between steps (sampling over the logits)
inside ``with sess.host_ops():``, as ``stream`` does, so that torch's OpenMP workers leave the
backend's thread pool its cores (ExecuTorch int8 on 2 threads and 2 cores: 1.5x faster steps; see
``host_threads``).
"""

from .errors import (
    BackendNotInstalledError,
    EmptyPromptError,
    GenerationArgumentError,
    InvalidTextError,
    PackageError,
    RuntimeInputError,
    StaleProgramError,
    StateMismatchError,
    TokenRangeError,
    UnknownBackendError,
)
from .generate import GenerationStats
from .sampling import Sampler, SamplingConfig
from .session import BACKENDS, Session, load
from .state import RecurrentState, StateLayout

__all__ = [
    "BACKENDS",
    "BackendNotInstalledError",
    "EmptyPromptError",
    "GenerationArgumentError",
    "GenerationStats",
    "InvalidTextError",
    "PackageError",
    "RecurrentState",
    "RuntimeInputError",
    "Sampler",
    "SamplingConfig",
    "Session",
    "StaleProgramError",
    "StateLayout",
    "StateMismatchError",
    "TokenRangeError",
    "UnknownBackendError",
    "load",
]
