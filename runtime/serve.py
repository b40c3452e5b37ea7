"""``xlstm-edge serve``: an OpenAI-compatible local server (FastAPI + uvicorn) over one package.

    xlstm-edge serve PKG --port 8080
    curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "PKG", "messages": [{"role": "user", "content": "Hi"}], "stream": true}'

Conversations live as state files: after each reply the state is stored under the tokens it encodes
(``--state-dir``, least recently used evicted beyond ``--state-cache-mb``), and a request whose prompt
extends a stored prefix prefills only the new tokens (``usage.prompt_tokens_details.cached_tokens``
says how many were resumed). SIGTERM (or Ctrl-C) stops taking connections, finishes the replies in
flight, and exits.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .cli import _decode_threads_option, _one_line_errors, _threads_option
from .errors import RuntimeInputError

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xlstm-edge" / "states"


@dataclass
class ServeOptions:
    """What ``build_server`` needs beyond the session (the CLI's options)."""

    model_name: str | None = None  # default: the package directory's name
    max_batch: int = 8
    max_queue: int = 64
    state_dir: Path | None = DEFAULT_STATE_DIR  # None: keep states in memory only
    state_cache_mb: float = 1024.0  # 0: no state cache
    chat_template: Path | None = None
    max_prompt_tokens: int = 32768
    default_max_tokens: int = 512
    add_bos: bool = False
    cors_origins: tuple[str, ...] = ()


def build_server(session: Any, source: str | os.PathLike, opts: ServeOptions) -> tuple[Any, Any]:
    """(FastAPI app, started Engine) for ``session`` loaded from ``source``; close the engine after use."""
    from .chat_template import ChatTemplate
    from .engine import Engine
    from .server import ServerConfig, create_app
    from .state_cache import StateCache

    if opts.max_batch < 1 or opts.max_queue < 0 or opts.state_cache_mb < 0 or opts.max_prompt_tokens < 1 \
            or opts.default_max_tokens < 1:
        raise RuntimeInputError("--max-batch, --max-prompt-tokens and --max-tokens must be >= 1, "
                                "--max-queue and --state-cache-mb >= 0")
    specials = session.tokenizer.special_tokens() if hasattr(session.tokenizer, "special_tokens") else {}
    template = ChatTemplate.for_model(source, specials, opts.chat_template)
    cache = None
    if opts.state_cache_mb > 0:
        cache = StateCache(opts.state_dir, session.layout, int(opts.state_cache_mb * 2**20))
    engine = Engine(session, cache, opts.max_batch, opts.max_queue).start()
    name = opts.model_name or Path(source).resolve().name
    config = ServerConfig(name, template, opts.max_prompt_tokens, opts.default_max_tokens, opts.add_bos,
                          tuple(opts.cors_origins))
    return create_app(config, engine), engine


@click.command("serve")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every "
              "interface; there is no authentication).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--backend", default=None, metavar="NAME",
              help="onnxruntime | executorch | torch (default: the package's own; torch takes a checkpoint).")
@click.option("--model-name", default=None, help="The model id clients name (default: PACKAGE's directory name).")
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Requests decoded together, one graph call per step for all of them.")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Requests that may wait for a slot; more get HTTP 429.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR, show_default=True,
              help="Where conversation states are stored (one subdirectory per model).")
@click.option("--state-cache-mb", type=float, default=1024.0, show_default=True,
              help="Disk budget of the stored states (least recently used evicted); 0 turns the cache off.")
@click.option("--chat-template", type=click.Path(path_type=Path), default=None,
              help="A jinja2 chat template file (default: tokenizer_config.json's chat_template, else a plain one).")
@click.option("--max-prompt-tokens", type=int, default=32768, show_default=True,
              help="Longer prompts are refused (400).")
@click.option("--max-tokens", "default_max_tokens", type=int, default=512, show_default=True,
              help="Reply length when a chat request gives no max_tokens.")
@click.option("--add-bos", is_flag=True, help="Put the tokenizer's bos token before each completion prompt.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let web pages from ORIGIN (e.g. http://localhost:3000; '*' for any) call the API from a "
                   "browser (repeatable; default: none).")
@_threads_option
@_decode_threads_option
@_one_line_errors
def serve_cmd(package: Path, host: str, port: int, backend: str | None, model_name: str | None, max_batch: int,
              max_queue: int, state_dir: Path, state_cache_mb: float, chat_template: Path | None,
              max_prompt_tokens: int, default_max_tokens: int, add_bos: bool, cors_origins: tuple[str, ...],
              threads: int | None, decode_threads: int | None) -> None:
    """Serve PACKAGE over the OpenAI API (/v1/models, /v1/completions, /v1/chat/completions, /health).

    \b
    Example:
      xlstm-edge serve out/demo-onnx-int8 --port 8080
      curl http://127.0.0.1:8080/v1/completions -H 'Content-Type: application/json' \\
           -d '{"model": "demo-onnx-int8", "prompt": "def main(", "max_tokens": 32}'
    """
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise click.ClickException("serve needs fastapi and uvicorn: pip install 'xlstm-edge[serve]'") from None
    from .session import load

    session = load(package, backend=backend, num_threads=threads, decode_threads=decode_threads)
    opts = ServeOptions(model_name, max_batch, max_queue, state_dir, state_cache_mb, chat_template,
                        max_prompt_tokens, default_max_tokens, add_bos, cors_origins)
    app, engine = build_server(session, package, opts)
    click.echo(f"serving {app.title} model {model_name or package.resolve().name} ({session.backend.describe()}) "
               f"on http://{host}:{port}/v1, {max_batch} slots", err=True)
    # the server drains on SIGTERM itself (uvicorn), then re-raises it: with the default handler back in
    # place (the command line's own removes staging directories and exits, for commands that write them)
    # the process then ends as killed by SIGTERM, as a server should
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
    finally:
        engine.close(timeout=30)
