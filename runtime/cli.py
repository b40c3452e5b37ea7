"""``xlstm-edge generate`` and ``xlstm-edge bench`` (registered lazily by ``xlstm_edge.cli``).

    xlstm-edge generate PKG --prompt "Once upon a time" --max-new-tokens 64 --temperature 0.8 --seed 1
    xlstm-edge generate PKG --prompt " and then" --state-in chat.safetensors --state-out chat.safetensors
    xlstm-edge bench PKG --png bench.png --json bench.json

PKG is an exported package (backend from its manifest) or, with ``--backend torch``, a checkpoint
directory. Bad input ends with one line (click.ClickException, exit status 1).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import click

from .errors import RuntimeInputError


def _one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the runtime's input errors into click's one-line error exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RuntimeInputError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


_backend_option = click.option(
    "--backend", default=None, metavar="NAME",
    help="onnxruntime | executorch | torch (default: the package's own; torch takes a checkpoint directory).")
_threads_option = click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
_decode_threads_option = click.option("--decode-threads", type=int, default=None,
                                      help="Threads of one-token decode steps (default: --threads; ONNX Runtime and "
                                           "torch only; not quantized ONNX packages, which run on one session).")


@click.command("generate")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", default="", help="Text to continue (may be empty with --state-in).")
@_backend_option
@click.option("--max-new-tokens", "-n", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=0, show_default=True, help="0 = off.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="1 = off.")
@click.option("--min-p", type=float, default=0.0, show_default=True, help="0 = off.")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True, help="1 = off.")
@click.option("--seed", type=int, default=None, help="Seed of the draw (default: random, printed).")
@click.option("--stop", multiple=True, help="Stop string (repeatable); not printed.")
@click.option("--add-bos", is_flag=True, help="Put the tokenizer's bos token before the prompt.")
@click.option("--state-in", type=click.Path(path_type=Path), default=None,
              help="Continue the conversation saved in this state file.")
@click.option("--state-out", type=click.Path(path_type=Path), default=None,
              help="Save the conversation state here afterwards.")
@_threads_option
@_decode_threads_option
@_one_line_errors
def generate_cmd(package: Path, prompt: str, backend: str | None, max_new_tokens: int, temperature: float,
                 top_k: int, top_p: float, min_p: float, repetition_penalty: float, seed: int | None,
                 stop: tuple[str, ...], add_bos: bool, state_in: Path | None, state_out: Path | None, threads: int | None,
                 decode_threads: int | None) -> None:
    """Stream a continuation of --prompt to stdout; speed to stderr."""
    from .sampling import SamplingConfig
    from .session import load

    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, seed=seed)
    if state_out is not None and state_out.is_dir():
        raise click.ClickException(f"--state-out {state_out} is a directory: name a file (e.g. {state_out / 'chat.safetensors'})")
    sess = load(package, backend=backend, num_threads=threads, decode_threads=decode_threads)
    if state_in is not None:
        sess.load_state(state_in)
    stream = sess.stream(prompt, max_new_tokens=max_new_tokens, sampling=sampling, stop_strings=list(stop),
                         add_bos=add_bos)
    with sigint_flag() as interrupted:  # Ctrl-C ends the reply between tokens; the state stays whole
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
            if interrupted.is_set():
                break
    sys.stdout.write("\n")
    sys.stdout.flush()
    stats = sess.last_stats
    if state_out is not None:
        sess.save_state(state_out)
    seed_note = "" if sampling.greedy else f", seed {stats.seed}"
    stop_note = stats.stopped[0]
    if stop_note == "stop_string" and state_out is not None:
        stop_note += " (not printed; the state holds it, a resume continues after it)"
    if interrupted.is_set():
        click.echo(f"interrupted{'' if state_out is None else f'; state saved to {state_out}'}", err=True)
        sys.exit(130)
    click.echo(f"[{sess.backend.name}] {stats.summary()}, stop: {stop_note}{seed_note}", err=True)


@contextmanager
def sigint_flag() -> Iterator[threading.Event]:
    """While inside, Ctrl-C (SIGINT) sets the yielded event instead of raising KeyboardInterrupt (main
    thread only; elsewhere the event is never set)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@click.command("bench")
@click.argument("package", type=click.Path(path_type=Path))
@_backend_option
@click.option("--prompt-tokens", type=int, default=256, show_default=True)
@click.option("--decode-tokens", type=int, default=64, show_default=True)
@click.option("--contexts", default="256,1024,4096", show_default=True, callback=_int_list,
              help="Context lengths (reached by prefill) at which decode speed and RSS are measured.")
@click.option("--steps-per-point", type=int, default=16, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True, help="Repeats of prefill / first token.")
@click.option("--png", type=click.Path(path_type=Path), default=Path("bench.png"), show_default=True,
              help="Plot of decode speed and RSS against context length.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the figures here.")
@_threads_option
@_decode_threads_option
@_one_line_errors
def bench_cmd(package: Path, backend: str | None, prompt_tokens: int, decode_tokens: int, contexts: tuple[int, ...],
              steps_per_point: int, repeats: int, png: Path, json_out: Path | None, threads: int | None,
              decode_threads: int | None) -> None:
    """Prefill tok/s, time to first token, decode tok/s, peak RSS, state bytes; decode speed and RSS
    against context length (PNG)."""
    from .bench import plot_bench, run_bench
    from .session import load

    sess = load(package, backend=backend, num_threads=threads, decode_threads=decode_threads)
    result = run_bench(sess, prompt_tokens, decode_tokens, contexts, steps_per_point, repeats)
    click.echo(result.table())
    click.echo(f"plot: {plot_bench(result, png)}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        click.echo(f"figures: {json_out}")
