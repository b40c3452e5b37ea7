"""`xlstm-edge serve` under load: time to first token at chat turn 1 vs turn N (state resume vs re-prefill),
tokens/s of 1 vs K concurrent streams, and a bounded load test (errors, leaked slots, server RSS).

    .venv/bin/python bench/serve.py PKG [--threads 2] [--turns 20] [--user-tokens 200] [--reply-tokens 32]
        [--streams 1,8] [--stream-tokens 128] [--load-clients 32] [--load-seconds 60] [--json out.json]

Each part starts `xlstm-edge serve PKG` in a subprocess on a free loopback port (clients run in this
process, through the official `openai` client, so the server's GIL is its own; both share the
machine's cores) and stops it with SIGTERM:

- chat: one conversation of --turns turns (each user message --user-tokens random words' bytes, each
  reply --reply-tokens tokens, ignore_eos), once with the state cache (turn k resumes from turn k-1's
  stored state and prefills only the new message) and once without it (--state-cache-mb 0: every turn
  prefills the whole conversation). TTFT = request sent -> first streamed text.
- streams: K streams started together (short prompts, --stream-tokens tokens each, ignore_eos, greedy);
  aggregate tok/s = all tokens / (last stream end - first request sent), best of --repeats; then the
  same straight into an in-process engine (no HTTP, no client on the cores).
- load: --load-clients clients loop for --load-seconds sending short streamed requests; counts errors
  by status, checks /health for leaked slots afterwards and the server's RSS before / after.
Not a test: prints a markdown table (and --json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SERVER_ARGS: list[str] = []  # --server-args
WORDS = ("the state of a recurrent model holds its whole context in a constant size so a conversation "
         "can be stored as a small file and resumed without reading its history again").split()


# ---- the server --------------------------------------------------------------------------------
@contextmanager
def server(package: Path, threads: int, *extra: str):
    extra = (*extra, *SERVER_ARGS)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-c", "from xlstm_edge.cli import main; main()", "serve", str(package), "--port",
           str(port), "--threads", str(threads), "--model-name", "bench", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # up to 60 s to load
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
        return json.loads(r.read())


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def client(url: str, sync: bool = False):
    import openai

    cls = openai.OpenAI if sync else openai.AsyncOpenAI
    return cls(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)


def words(rng: random.Random, n_bytes: int) -> str:
    out = ""
    while len(out) < n_bytes:
        out += rng.choice(WORDS) + " "
    return out[:n_bytes]


# ---- chat: TTFT by turn -------------------------------------------------------------------------
def chat_ttft(url: str, turns: int, user_tokens: int, reply_tokens: int, seed: int) -> list[dict[str, float]]:
    c = client(url, sync=True)
    rng = random.Random(seed)
    messages: list[dict[str, str]] = []
    out = []
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": words(rng, user_tokens)})
        t0 = time.perf_counter()
        first, pieces, usage = None, [], None
        for ch in c.chat.completions.create(model="bench", messages=messages, max_tokens=reply_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}):
            if ch.choices and ch.choices[0].delta.content:
                first = first or time.perf_counter()
                pieces.append(ch.choices[0].delta.content)
            if ch.usage is not None:
                usage = ch.usage
        assert usage is not None and first is not None
        messages.append({"role": "assistant", "content": "".join(pieces)})
        out.append({"turn": turn, "ttft_ms": (first - t0) * 1e3, "prompt_tokens": usage.prompt_tokens,
                    "cached_tokens": usage.prompt_tokens_details.cached_tokens})
        print(f"  turn {turn}: {out[-1]}", file=sys.stderr)
    return out


# ---- concurrent streams -------------------------------------------------------------------------
async def streams_tok_s(url: str, k: int, tokens: int, seed: int) -> dict[str, float]:
    ac = client(url)
    rng = random.Random(seed)

    async def one(prompt: str) -> tuple[int, float]:
        n = 0
        stream = await ac.completions.create(model="bench", prompt=prompt, max_tokens=tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True})
        async for ch in stream:
            if ch.usage is not None:
                n = ch.usage.completion_tokens
        return n, time.perf_counter()

    t0 = time.perf_counter()
    results = await asyncio.gather(*[one(words(rng, 16)) for _ in range(k)])
    await ac.close()
    total = sum(n for n, _ in results)
    wall = max(t for _, t in results) - t0
    return {"streams": k, "tokens": total, "wall_s": wall, "tok_s": total / wall}


def engine_tok_s(package: Path, threads: int, ks: list[int], tokens: int, repeats: int, seed: int) -> list[dict]:
    """The same K streams straight into an in-process Engine (no HTTP, no client): the decode alone."""
    import threading

    from xlstm_edge.runtime import SamplingConfig, load
    from xlstm_edge.runtime.engine import DoneEvent, Engine, GenerationRequest

    sess = load(package, num_threads=threads)
    engine = Engine(sess, None, max_batch=max(ks), max_queue=max(ks)).start()
    rng = random.Random(seed)
    out = []
    try:
        for k in [1, *ks]:  # the first: warm-up
            best = None
            for _ in range(repeats):
                left, ends = threading.Semaphore(0), []

                def emit(ev, ends=ends, left=left):
                    if isinstance(ev, DoneEvent):
                        ends.append((ev.completion_tokens, time.perf_counter()))
                        left.release()

                t0 = time.perf_counter()
                for _ in range(k):
                    ids = sess.encode(words(rng, 16))
                    engine.submit(GenerationRequest(ids, tokens, SamplingConfig(), emit))
                for _ in range(k):
                    left.acquire()
                total = sum(n for n, _ in ends)
                run = {"streams": k, "tokens": total, "wall_s": max(t for _, t in ends) - t0}
                run["tok_s"] = total / run["wall_s"]
                best = run if best is None or run["tok_s"] > best["tok_s"] else best
            out.append(best)
        return out[1:]
    finally:
        engine.close()


# ---- load test ----------------------------------------------------------------------------------
async def load_test(url: str, proc: subprocess.Popen, clients: int, seconds: float, seed: int) -> dict[str, Any]:
    import openai

    ac = client(url)
    rng = random.Random(seed)
    errors: dict[str, int] = {}
    done = 0
    rss_before = rss_mb(proc.pid)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            try:
                stream = await ac.completions.create(model="bench", prompt=words(rng, 32), max_tokens=24,
                                                     temperature=0.8, stream=True)
                async for _ in stream:
                    pass
                done += 1
            except openai.APIStatusError as e:
                errors[str(e.status_code)] = errors.get(str(e.status_code), 0) + 1
                await asyncio.sleep(0.2)
            except openai.APIError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    rss_series: list[tuple[float, float]] = []

    async def sample_rss() -> None:
        t0 = time.perf_counter()
        while time.perf_counter() < deadline:
            rss_series.append((time.perf_counter() - t0, rss_mb(proc.pid)))
            await asyncio.sleep(5)

    await asyncio.gather(sample_rss(), *[worker() for _ in range(clients)])
    await ac.close()
    for _ in range(200):
        h = health(url)
        if h["active"] == 0 and h["waiting"] == 0:
            break
        await asyncio.sleep(0.05)
    return {"clients": clients, "seconds": seconds, "completed": done, "errors": errors,
            "active_after": h["active"], "waiting_after": h["waiting"], "rss_before_mb": rss_before,
            "rss_after_mb": rss_mb(proc.pid), "rss_series_mb": rss_series}


# ---- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--user-tokens", type=int, default=200, help="bytes (byte-level tokens) per user message")
    ap.add_argument("--reply-tokens", type=int, default=32)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--stream-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--load-clients", type=int, default=32)
    ap.add_argument("--load-seconds", type=float, default=60.0)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: chat,streams,engine,load")
    ap.add_argument("--server-args", default="", help="extra options for `xlstm-edge serve`, e.g. '--decode-threads 1'")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    SERVER_ARGS.extend(args.server_args.split())
    seed = int.from_bytes(os.urandom(4), "little")
    res: dict[str, Any] = {"package": str(args.package), "threads": args.threads, "seed": seed,
                           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": " ".join(sys.argv)}
    import tempfile

    if "chat" not in skip:
        with tempfile.TemporaryDirectory() as states:
            for label, extra in (("resume", ["--state-dir", states]), ("re-prefill", ["--state-cache-mb", "0"])):
                print(f"chat, {label}", file=sys.stderr)
                with server(args.package, args.threads, *extra) as (url, _):
                    res[f"chat_{label}"] = chat_ttft(url, args.turns, args.user_tokens, args.reply_tokens, seed)
    if "streams" not in skip:
        with server(args.package, args.threads, "--state-cache-mb", "0", "--max-batch", "8") as (url, _):
            asyncio.run(streams_tok_s(url, 1, 8, seed))  # warm-up
            res["streams"] = []
            for k in (int(v) for v in args.streams.split(",")):
                runs = [asyncio.run(streams_tok_s(url, k, args.stream_tokens, seed + r)) for r in range(args.repeats)]
                res["streams"].append(max(runs, key=lambda r: r["tok_s"]))
                print(f"  streams {k}: {res['streams'][-1]}", file=sys.stderr)
    if "engine" not in skip:
        ks = [int(v) for v in args.streams.split(",")]
        res["engine_streams"] = engine_tok_s(args.package, args.threads, ks, args.stream_tokens, args.repeats, seed)
        print(f"  engine: {res['engine_streams']}", file=sys.stderr)
    if "load" not in skip:
        with tempfile.TemporaryDirectory() as states:
            with server(args.package, args.threads, "--state-dir", states, "--state-cache-mb", "64") as (url, proc):
                res["load"] = asyncio.run(load_test(url, proc, args.load_clients, args.load_seconds, seed))
                print(f"  load: {res['load']}", file=sys.stderr)
    print(table(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


def table(res: dict[str, Any]) -> str:
    lines = [f"{res['date']}, {res['machine']}, {res['threads']} threads, `{res['command']}`", ""]
    if "chat_resume" in res:
        lines += ["| turn | prompt tokens | TTFT resume (ms) | resumed tokens | TTFT re-prefill (ms) |", "|---|---|---|---|---|"]
        for a, b in zip(res["chat_resume"], res["chat_re-prefill"], strict=True):
            lines.append(f"| {a['turn']} | {a['prompt_tokens']} | {a['ttft_ms']:.0f} | {a['cached_tokens']} | "
                         f"{b['ttft_ms']:.0f} |")
        lines.append("")
    for key, label in (("streams", "HTTP (openai client)"), ("engine_streams", "engine in-process")):
        if key in res:
            lines += [f"| concurrent streams, {label} | tokens | wall (s) | aggregate tok/s |", "|---|---|---|---|"]
            lines += [f"| {s['streams']} | {s['tokens']} | {s['wall_s']:.2f} | {s['tok_s']:.1f} |" for s in res[key]]
            lines.append("")
    if "load" in res:
        ld = res["load"]
        lines.append(f"load: {ld['clients']} clients x {ld['seconds']:.0f} s: {ld['completed']} requests completed, "
                     f"errors {ld['errors'] or 'none'}, slots after: {ld['active_after']} active / "
                     f"{ld['waiting_after']} waiting, server RSS {ld['rss_before_mb']:.0f} MB idle before, then every 5 s: "
                     + ", ".join(f"{m:.0f}" for _, m in ld["rss_series_mb"]) + f", {ld['rss_after_mb']:.0f} MB after")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
