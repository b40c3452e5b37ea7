"""``xlstm-edge serve`` over real HTTP on 127.0.0.1, driven by the official ``openai`` client.

One server per module: the embedded demo model on the torch backend, uvicorn on a thread with a socket
bound to a free loopback port. Every wait is a bounded loop.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from xlstm_edge.runtime import load  # noqa: E402
from xlstm_edge.runtime.serve import ServeOptions, build_server  # noqa: E402

from xlstm_edge import DEMO_CHECKPOINT  # noqa: E402

MAX_BATCH, MAX_QUEUE, MAX_PROMPT = 4, 2, 600
WORDS = ["import", "def", "class", "return", "self", "path", "os", "sys", "data", "value", "for", "in"]


def random_prompt(n_words: int = 6) -> str:
    import random

    rng = random.Random()  # fresh each run
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


class RunningServer:
    def __init__(self, tmp_path):
        self.session = load(DEMO_CHECKPOINT, num_threads=1)
        opts = ServeOptions(model_name="demo", max_batch=MAX_BATCH, max_queue=MAX_QUEUE, state_dir=tmp_path,
                            max_prompt_tokens=MAX_PROMPT, default_max_tokens=64,
                            cors_origins=("http://localhost:3000",))
        self.app, self.engine = build_server(self.session, DEMO_CHECKPOINT, opts)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        for _ in range(400):
            if self.server.started:
                break
            time.sleep(0.025)
        assert self.server.started, "uvicorn did not start within 10 s"
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def client(self):
        return openai.OpenAI(base_url=self.url, api_key="none", max_retries=0, timeout=60)

    def raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = json.loads(r.read())
        conn.close()
        return r.status, data

    def health(self) -> dict:
        return self.raw("GET", "/health")[1]

    def wait_idle(self, timeout_s: float = 20.0) -> dict:
        for _ in range(int(timeout_s / 0.05)):
            h = self.health()
            if h["active"] == 0 and h["waiting"] == 0:
                return h
            time.sleep(0.05)
        raise AssertionError(f"slots not freed: {self.health()}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.engine.close(15)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = RunningServer(tmp_path_factory.mktemp("states"))
    yield s
    s.stop()


def test_cors_for_the_named_origin_only(srv):
    def preflight(origin: str) -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("OPTIONS", "/v1/chat/completions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.getheader("access-control-allow-origin")

    assert preflight("http://localhost:3000") == "http://localhost:3000"
    assert preflight("http://evil.example") is None


def test_models_and_health(srv):
    c = srv.client()
    assert [m.id for m in c.models.list().data] == ["demo"]
    assert c.models.retrieve("demo").id == "demo"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4")
    h = srv.health()
    assert h["status"] == "ok" and h["slots"] == MAX_BATCH


def test_completion_matches_the_session_and_counts_usage(srv):
    prompt = random_prompt()
    ref = load(DEMO_CHECKPOINT, num_threads=1)
    want = ref.generate(prompt, max_new_tokens=24, stop_tokens=[])
    r = srv.client().completions.create(model="demo", prompt=prompt, max_tokens=24, temperature=0)
    assert r.object == "text_completion"
    n_prompt = len(ref.encode(prompt))
    assert r.usage.prompt_tokens == n_prompt and r.usage.total_tokens == n_prompt + r.usage.completion_tokens
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 24 and r.choices[0].text == want
    else:  # stopped at eos: a prefix of the reference run (which ignores eos)
        assert want.startswith(r.choices[0].text)


def test_streamed_equals_unstreamed_with_a_seed(srv):
    c = srv.client()
    prompt = random_prompt()
    args = dict(model="demo", prompt=prompt, max_tokens=32, temperature=0.9, top_p=0.95, seed=1234,
                presence_penalty=0.5, frequency_penalty=0.3)
    whole = c.completions.create(**args)
    chunks = list(c.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason


def test_chat_turns_resume_from_the_stored_state(srv):
    c = srv.client()
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": random_prompt()}]
    first = c.chat.completions.create(model="demo", messages=messages, max_tokens=20, temperature=0)
    assert first.object == "chat.completion" and first.choices[0].message.role == "assistant"
    reply = first.choices[0].message.content
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": random_prompt()}]
    chunks = list(c.chat.completions.create(model="demo", messages=messages, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    usage = chunks[-1].usage
    # turn 2 resumed at least the whole turn-1 prompt from a stored state, prefilling only what is new
    assert usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    assert srv.health()["state_cache"]["hits"] >= 1


@pytest.mark.parametrize("body,status,words", [
    (b'{"model": "demo", ', 400, ["not valid JSON"]),
    (b'{"model": "demo", "prompt": "\xff\xfe"}', 400, ["UTF-8"]),
    (json.dumps({"model": "demo", "prompt": "\ud800x"}).encode(), 400, ["not valid UTF-8"]),
    (json.dumps({"model": "demo", "prompt": "a", "max_tokens": 0}).encode(), 400, ["max_tokens"]),
    (json.dumps({"model": "demo", "prompt": "a", "max_tokens": -3}).encode(), 400, ["max_tokens"]),
    (json.dumps({"model": "nope", "prompt": "a"}).encode(), 404, ["'nope' does not exist"]),
    (json.dumps({"model": "demo", "prompt": "x" * (MAX_PROMPT + 1)}).encode(), 400, ["at most 600"]),
    (json.dumps({"model": "demo", "prompt": ""}).encode(), 400, ["empty"]),
    (json.dumps({"model": "demo", "prompt": "a", "n": 2}).encode(), 400, ["n > 1"]),
    (json.dumps({"model": "demo", "prompt": "a", "temperature": -1}).encode(), 400, ["temperature"]),
    (json.dumps({"model": "demo", "prompt": [1, 2, 999]}).encode(), 400, ["999"]),
])
def test_bad_requests_are_openai_errors(srv, body, status, words):
    got, data = srv.raw("POST", "/v1/completions", body)
    assert got == status, data
    err = data["error"]
    assert set(err) == {"message", "type", "param", "code"} and "\n" not in err["message"]
    for w in words:
        assert w in err["message"], err
    assert srv.health()["status"] == "ok"


def test_bad_chat_requests(srv):
    c = srv.client()
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="demo", messages=[], max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="demo", messages=[{"role": "wizard", "content": "x"}], max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])


def test_concurrent_requests_batch_and_match_sequential(srv):
    """4 greedy requests at once decode as one batch; each equals its run alone."""
    c = srv.client()
    prompts = [random_prompt() for _ in range(MAX_BATCH)]
    alone = [c.completions.create(model="demo", prompt=p, max_tokens=48, temperature=0).choices[0].text
             for p in prompts]
    before = srv.health()

    async def together():
        ac = openai.AsyncOpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=60)
        rs = await asyncio.gather(*[ac.completions.create(model="demo", prompt=p, max_tokens=48, temperature=0)
                                    for p in prompts])
        await ac.close()
        return [r.choices[0].text for r in rs]

    assert asyncio.run(together()) == alone
    after = srv.health()
    assert after["batched_steps"] > before["batched_steps"], (before, after)  # rows shared graph calls
    srv.wait_idle()


def test_full_queue_is_429_and_disconnects_free_their_slots(srv):
    srv.wait_idle()

    async def scenario():
        ac = openai.AsyncOpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=60)
        opened: list = []

        async def hold():
            stream = await ac.completions.create(model="demo", prompt=random_prompt(), max_tokens=100000,
                                                 temperature=0.8, stream=True)
            opened.append(stream)
            async for _ in stream:
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(hold()) for _ in range(MAX_BATCH + MAX_QUEUE)]
        for _ in range(400):  # every slot taken and the queue full
            h = srv.health()
            if h["active"] == MAX_BATCH and h["waiting"] == MAX_QUEUE:
                break
            await asyncio.sleep(0.025)
        assert (h["active"], h["waiting"]) == (MAX_BATCH, MAX_QUEUE), h
        with pytest.raises(openai.RateLimitError):
            await ac.completions.create(model="demo", prompt="x", max_tokens=2)
        for t in tasks:  # every client goes away mid-stream (or while waiting)
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in opened:
            await s.close()
        await ac.close()

    asyncio.run(scenario())
    srv.wait_idle()
    r = srv.client().completions.create(model="demo", prompt="import", max_tokens=3)
    assert r.usage.completion_tokens >= 1


def test_sigterm_drains_the_reply_in_flight_and_exits(tmp_path):
    """`xlstm-edge serve` in a subprocess: SIGTERM mid-stream lets the stream finish, then the server exits 0."""
    import os
    import signal
    import subprocess
    import sys

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from xlstm_edge.cli import main; main()", "serve", str(DEMO_CHECKPOINT), "--port", str(port), "--threads", "1",
         "--state-dir", str(tmp_path), "--model-name", "demo"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):  # up to 30 s to import and load
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.05)
            assert proc.poll() is None, proc.stdout.read()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = json.dumps({"model": "demo", "prompt": "import", "max_tokens": 300, "stream": True,
                           "temperature": 0})
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.readline()
        assert first.startswith(b"data: ")
        os.kill(proc.pid, signal.SIGTERM)
        rest = resp.read().decode()
        assert rest.rstrip().endswith("data: [DONE]")
        chunks = [json.loads(line[6:]) for line in (first.decode() + rest).splitlines()
                  if line.startswith("data: {")]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
        # uvicorn exits by re-raising the signal it caught, after the app's shutdown closed the engine
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Finished server process" in proc.stdout.read()
        assert list(tmp_path.glob("*/*.safetensors")), "the drained reply's state was not stored"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_unstreamed_client_that_leaves_frees_its_slot(srv):
    srv.wait_idle()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    body = json.dumps({"model": "demo", "prompt": random_prompt(), "max_tokens": 100000, "ignore_eos": True})
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    for _ in range(400):
        if srv.health()["active"] == 1:
            break
        time.sleep(0.025)
    assert srv.health()["active"] == 1
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    srv.wait_idle()
