"""Chat templates: messages -> prompt text, rendered with jinja2 the way transformers renders them.

The tokenizer's own template is the ``chat_template`` of the ``tokenizer_config.json`` beside the
model (a string, or a list of ``{name, template}`` of which ``default`` is taken); without one, a
plain default:

    System text
    User: Hi
    Assistant: Hello!
    User: How are you?
    Assistant:␠

whose replies stop at ``"\\nUser:"`` (``ChatTemplate.stop_strings``). As in transformers, the
template sees ``messages`` (dicts with ``role`` and ``content``), ``add_generation_prompt``,
``bos_token`` / ``eos_token``, ``raise_exception(msg)`` and the ``tojson`` filter, in a sandbox.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RuntimeInputError

DEFAULT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)
DEFAULT_STOP_STRINGS = ("\nUser:",)
ROLES = ("system", "user", "assistant", "developer", "tool")


class ChatTemplateError(RuntimeInputError):
    """A chat template that does not parse or render, or messages it cannot take."""


@dataclass
class ChatTemplate:
    """A jinja2 chat template plus the stop strings that end an assistant turn."""

    source: str
    special_tokens: dict[str, str | None] = field(default_factory=dict)  # bos_token, eos_token, ...
    stop_strings: tuple[str, ...] = ()
    name: str = "default"

    def __post_init__(self) -> None:
        try:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ModuleNotFoundError:
            raise RuntimeInputError("chat templates need jinja2: pip install 'xlstm-edge[serve]'") from None

        def raise_exception(message: str) -> None:
            raise ChatTemplateError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        try:
            self._template = env.from_string(self.source)
        except TemplateError as e:
            raise ChatTemplateError(f"chat template {self.name} does not parse: {e}") from None

    @classmethod
    def default(cls, special_tokens: dict[str, str | None] | None = None) -> ChatTemplate:
        return cls(DEFAULT_TEMPLATE, special_tokens or {}, DEFAULT_STOP_STRINGS, "default")

    @classmethod
    def for_model(cls, directory: str | os.PathLike, special_tokens: dict[str, str | None] | None = None,
                  override: str | os.PathLike | None = None) -> ChatTemplate:
        """``override`` (a jinja2 file), else the ``chat_template`` of ``directory/tokenizer_config.json``,
        else the default. A template of the tokenizer's own ends turns at the eos token."""
        specials = special_tokens or {}
        if override is not None:
            path = Path(override)
            if not path.is_file():
                raise ChatTemplateError(f"chat template file {path} does not exist")
            return cls(path.read_text(), specials, (), str(path))
        config = Path(directory) / "tokenizer_config.json"
        if config.is_file():
            try:
                raw = json.loads(config.read_text())
            except json.JSONDecodeError as e:
                raise ChatTemplateError(f"{config} is not JSON: {e}") from None
            template = raw.get("chat_template")
            if isinstance(template, list):
                named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
                template = named.get("default")
            if isinstance(template, str) and template.strip():
                return cls(template, specials, (), str(config))
        return cls.default(specials)

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of ``messages`` (each ``{"role": ..., "content": str}``)."""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ChatTemplateError(f"message {i} must have a role ({', '.join(ROLES)}) and text content")
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except TemplateError as e:
            raise ChatTemplateError(f"chat template {self.name} failed to render: {e}") from None
