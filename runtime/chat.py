"""``xlstm-edge chat``: an interactive terminal chat whose conversation is its recurrent state.

    xlstm-edge chat PKG                         # type a message, Enter; Ctrl-C stops a reply; Ctrl-D quits
    xlstm-edge chat PKG --save talk.safetensors # the state + the messages, written after every reply
    xlstm-edge chat PKG --resume talk.safetensors

Each turn renders the whole conversation with the chat template (the tokenizer's own, else a plain
default) and hands it to the same engine the server runs (one slot, states kept in memory): the
turn resumes from the state after the previous reply and prefills only the new message. The saved
file is a state file whose metadata carries the messages and the tokens the state encodes.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path
from typing import Any

import click

from .cli import _decode_threads_option, _one_line_errors, _threads_option, sigint_flag
from .errors import StateMismatchError

CHAT_KEY = "xlstm_edge.chat"  # state-file metadata: {"messages": [...], "tokens": [...]}
MEMORY_CACHE_BYTES = 256 << 20
COMMANDS_HELP = "/exit quits (or Ctrl-D), /reset starts over, Ctrl-C stops a reply"


def save_chat(path: Path, state: Any, messages: list[dict[str, str]], tokens: list[int]) -> None:
    """The conversation as one state file (written atomically)."""
    state.save(path, {CHAT_KEY: json.dumps({"messages": messages, "tokens": tokens}, ensure_ascii=False)})


def load_chat(path: Path, layout: Any) -> tuple[Any, list[dict[str, str]], list[int]]:
    from .state import RecurrentState

    state, meta = RecurrentState.load_with_metadata(path, layout)
    try:
        conv = json.loads(meta[CHAT_KEY])
        messages, tokens = conv["messages"], [int(t) for t in conv["tokens"]]
    except (KeyError, ValueError, TypeError):
        raise StateMismatchError(f"{path} is a state file but not a saved chat (no messages in it)") from None
    if int(state.num_tokens[0]) + (0 if state.pending is None else 1) != len(tokens):
        raise StateMismatchError(f"{path}: its state and its token list disagree")
    return state, messages, tokens


def _read_line(prompt: str) -> str | None:
    """One line of input; None at end of input. Ctrl-C at the prompt asks again."""
    while True:
        try:
            return input(prompt)
        except EOFError:
            return None
        except KeyboardInterrupt:
            click.echo(f"\n({COMMANDS_HELP})", err=True)


@click.command("chat")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--backend", default=None, metavar="NAME", help="onnxruntime | executorch | torch (default: the package's).")
@click.option("--system", default=None, help="A system message to start the conversation with.")
@click.option("--max-tokens", type=click.IntRange(1), default=512, show_default=True, help="Longest reply.")
@click.option("--temperature", type=float, default=0.7, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=0.95, show_default=True)
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True, help="1 = off.")
@click.option("--seed", type=int, default=None, help="Seed of each reply's draws (default: random).")
@click.option("--chat-template", type=click.Path(path_type=Path), default=None,
              help="A jinja2 chat template file (default: tokenizer_config.json's chat_template, else a plain one).")
@click.option("--save", "save_path", type=click.Path(path_type=Path), default=None,
              help="Write the conversation (state + messages) here after every reply.")
@click.option("--resume", "resume_path", type=click.Path(path_type=Path), default=None,
              help="Continue a conversation written by --save.")
@_threads_option
@_decode_threads_option
@_one_line_errors
def chat_cmd(package: Path, backend: str | None, system: str | None, max_tokens: int, temperature: float,
             top_p: float, repetition_penalty: float, seed: int | None, chat_template: Path | None,
             save_path: Path | None, resume_path: Path | None, threads: int | None,
             decode_threads: int | None) -> None:
    """Chat with PACKAGE in the terminal (streaming replies; the conversation lives as state).

    \b
    Example:
      xlstm-edge chat out/demo-onnx --save talk.safetensors
      xlstm-edge chat out/demo-onnx --resume talk.safetensors
    """
    from .chat_template import ChatTemplate
    from .engine import DoneEvent, Engine, ErrorEvent, GenerationRequest, TextEvent
    from .sampling import SamplingConfig
    from .session import load
    from .state_cache import StateCache

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    if save_path is not None and save_path.is_dir():
        raise click.ClickException(f"--save {save_path} is a directory: name a file")
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    session = load(package, backend=backend, num_threads=threads, decode_threads=decode_threads)
    specials = session.tokenizer.special_tokens() if hasattr(session.tokenizer, "special_tokens") else {}
    template = ChatTemplate.for_model(package, specials, chat_template)
    cache = StateCache(None, session.layout, MEMORY_CACHE_BYTES)
    messages: list[dict[str, str]] = []
    if resume_path is not None:
        state, messages, tokens = load_chat(resume_path, session.layout)
        cache.store(tokens, state)
        click.echo(f"resumed {len(messages)} messages ({len(tokens)} tokens) from {resume_path}", err=True)
    elif system:
        messages.append({"role": "system", "content": system})
    engine = Engine(session, cache, max_batch=1, max_queue=1).start()
    click.echo(f"chat with {package} ({session.backend.describe()}, template {template.name}); {COMMANDS_HELP}",
               err=True)
    try:
        while (line := _read_line("> ")) is not None:
            if line.strip() in ("/exit", "/quit", "/bye"):
                break
            if line.strip() == "/reset":
                messages = [m for m in messages if m["role"] == "system"]
                click.echo("(conversation reset)", err=True)
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            ids = session.encode(template.render(messages), allow_special=True)
            events: queue.Queue[Any] = queue.Queue()
            req = GenerationRequest(ids, max_tokens, sampling, events.put, list(template.stop_strings),
                                    set(session.eos_token_ids), return_state=True)
            engine.submit(req)
            pieces: list[str] = []
            with sigint_flag() as interrupted:
                while True:
                    if interrupted.is_set():
                        req.cancel()  # the engine ends the reply at its next step
                    try:
                        event = events.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if isinstance(event, TextEvent):
                        pieces.append(event.text)
                        sys.stdout.write(event.text)
                        sys.stdout.flush()
                    elif isinstance(event, ErrorEvent):
                        messages.pop()
                        click.echo(f"\nerror: {event.message}", err=True)
                        break
                    elif isinstance(event, DoneEvent):
                        sys.stdout.write("\n")
                        messages.append({"role": "assistant", "content": "".join(pieces)})
                        note = " (stopped)" if event.finish_reason == "cancelled" else ""
                        click.echo(f"[{event.prompt_tokens} prompt tok, {event.cached_tokens} resumed from the "
                                   f"state, {event.completion_tokens} new; first token "
                                   f"{event.first_token_s * 1e3:.0f} ms]{note}", err=True)
                        if save_path is not None and event.state is not None and event.token_ids is not None:
                            save_chat(save_path, event.state, messages, event.token_ids)
                        break
    finally:
        engine.close(timeout=10)
