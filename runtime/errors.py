"""Errors of the runtime: each a ``ValueError`` whose message is one line naming the problem.

The CLI turns any of them into a ``click.ClickException`` (same line, exit status 1).
"""

from __future__ import annotations


class RuntimeInputError(ValueError):
    """Base class: bad input to the runtime (the message says what and, where it helps, how to fix it)."""


class UnknownBackendError(RuntimeInputError):
    """The backend name is not one of ``onnxruntime``, ``executorch``, ``torch``."""


class BackendNotInstalledError(RuntimeInputError):
    """The backend's Python package is not installed (the message names the pip package)."""


class PackageError(RuntimeInputError):
    """A package or checkpoint is missing files, or its manifest does not match its graphs."""


class StateMismatchError(RuntimeInputError):
    """A saved state belongs to another model (config hash, tensor names or shapes differ) or is malformed."""


class TokenRangeError(RuntimeInputError):
    """A token id lies outside ``0 .. vocab_size - 1``."""


class EmptyPromptError(RuntimeInputError):
    """A prompt has no tokens and there is no conversation state to continue from."""


class StaleProgramError(RuntimeInputError):
    """An ExecuTorch program was loaded before another load resized the process-wide threadpool it
    runs on (running it would crash the process): load it again, or use one thread count."""


class InvalidTextError(RuntimeInputError):
    """Text given to the tokenizer is not valid UTF-8."""


class GenerationArgumentError(RuntimeInputError):
    """An argument of a generation call is invalid (``max_new_tokens <= 0``, a bad sampling value, ...)."""
