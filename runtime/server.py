"""The OpenAI-compatible HTTP API on FastAPI: /v1/models, /v1/completions, /v1/chat/completions, /health.

    app = create_app(ServerConfig(...), engine)       # engine: runtime.engine.Engine, started
    uvicorn.run(app, host="127.0.0.1", port=8080)

Handlers tokenize (and render the chat template) on the event loop, hand a ``GenerationRequest`` to
the engine thread and read its events from an ``asyncio.Queue``. A streamed reply is sent as
server-sent events (``data: {chunk}`` ... ``data: [DONE]``), as the OpenAI API does; a client that
goes away cancels its request, which frees its slot at the engine's next step. Every error is the
API's JSON ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status (5xx only for a
failure of the server itself).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .chat_template import ChatTemplate
from .engine import (
    DoneEvent,
    Engine,
    EngineClosedError,
    ErrorEvent,
    Event,
    GenerationRequest,
    QueueFullError,
    TextEvent,
)
from .errors import RuntimeInputError
from .openai_schema import ChatRequest, CompletionRequest, UnsupportedFieldError

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there


@dataclass
class ServerConfig:
    model_name: str
    template: ChatTemplate
    max_prompt_tokens: int = 32768  # longer prompts are refused (400, context_length_exceeded)
    default_max_tokens: int = 512  # chat replies without max_tokens stop here
    add_bos: bool = False  # put the tokenizer's bos before every completion prompt
    cors_origins: tuple[str, ...] = ()  # web pages (origins) allowed to call the API from a browser; "*": any


class APIError(Exception):
    """An error answered as the API's JSON error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error",
          503: "server_error", 500: "server_error"}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(config: ServerConfig, engine: Engine) -> FastAPI:
    """The FastAPI app serving ``engine`` (started by the caller; closed when the app shuts down)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has drained the connections (SIGTERM, Ctrl-C): finish the engine, flush stored states
        await asyncio.get_running_loop().run_in_executor(None, engine.close)

    app = FastAPI(title="xlstm-edge", docs_url=None, redoc_url=None, lifespan=lifespan)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    session = engine.session
    created = int(time.time())
    last_check: dict[int, float] = {}  # id(request) -> when its client was last seen connected

    # ---- errors ---------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return error_response(exc.status, exc.message, exc.param, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {first.get('msg')}", None, "invalid_json")
        param = ".".join(loc) or None
        where = f"{param}: " if param else ""
        return error_response(400, f"{where}{first.get('msg')}", param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # FastAPI's word for bad bytes
            return error_response(400, "the body could not be read as JSON (is it valid UTF-8?)", None,
                                  "invalid_json")
        return error_response(exc.status_code, str(exc.detail), None, None)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:  # logged by uvicorn; the server goes on
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0], None, None)

    # ---- plain endpoints --------------------------------------------------------------------------
    def model_card() -> dict[str, Any]:
        return {"id": config.model_name, "object": "model", "created": created, "owned_by": "xlstm-edge"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        cache = engine.cache
        return {"status": "ok", "model": config.model_name, "backend": session.backend.name, **engine.stats(),
                "state_cache": None if cache is None else {"entries": len(cache), "bytes": cache.nbytes,
                                                           "hits": cache.hits, "misses": cache.misses}}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return model_card()

    def check_model(name: str) -> None:
        if name != config.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {config.model_name!r}",
                           "model", "model_not_found")

    # ---- shared request handling ------------------------------------------------------------------
    def encode(text: str, allow_special: bool, param: str) -> list[int]:
        try:
            return session.encode(text, allow_special=allow_special)
        except RuntimeInputError as e:
            raise APIError(400, str(e), param, "invalid_text") from None

    def check_ids(ids: list[int], param: str) -> list[int]:
        if not ids:
            raise APIError(400, "the prompt is empty: give at least one token", param, "empty_prompt")
        if len(ids) > config.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens; this server takes at most "
                                f"{config.max_prompt_tokens} (--max-prompt-tokens)", param, "context_length_exceeded")
        bad = [t for t in ids if not 0 <= t < session.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside 0..{session.vocab_size - 1}", param, "invalid_value")
        return ids

    def make_request(body: CompletionRequest | ChatRequest, ids: list[int], max_tokens: int,
                     extra_stops: tuple[str, ...], queue: asyncio.Queue[Event]) -> GenerationRequest:
        try:
            body.check_supported()
            sampling = body.sampling()
            stops = body.stop_strings() + [s for s in extra_stops if s not in (body.stop_strings())]
        except UnsupportedFieldError as e:
            raise APIError(400, str(e), e.param, "unsupported") from None
        except RuntimeInputError as e:
            raise APIError(400, str(e), None, "invalid_value") from None
        loop = asyncio.get_running_loop()

        def emit(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the event loop is gone (server stopped): nobody listens
                pass

        req = GenerationRequest(ids, max_tokens, sampling, emit, stops,
                                set() if body.ignore_eos else set(session.eos_token_ids))
        try:
            engine.submit(req)
        except QueueFullError as e:
            raise APIError(429, str(e), None, "queue_full") from None
        except EngineClosedError as e:
            raise APIError(503, str(e), None, "shutting_down") from None
        except RuntimeInputError as e:
            raise APIError(400, str(e), None, "invalid_value") from None
        return req

    async def first_event(req: GenerationRequest, queue: asyncio.Queue[Event], request: Request) -> Event:
        """Wait for the first event; an engine error becomes the response's status."""
        try:
            event = await wait_event(req, queue, request)
        finally:
            last_check.pop(id(req), None)
        if isinstance(event, ErrorEvent):
            raise APIError(event.status, event.message, None, "generation_failed" if event.status >= 500 else None)
        return event

    async def wait_event(req: GenerationRequest, queue: asyncio.Queue[Event], request: Request) -> Event:
        """The next event; every DISCONNECT_POLL_S, busy or not, checks that the client is still there
        (a gone client cancels ``req``, which frees its slot)."""
        while True:
            now = time.monotonic()
            if now - last_check.setdefault(id(req), now) >= DISCONNECT_POLL_S:
                last_check[id(req)] = now
                if await request.is_disconnected():
                    req.cancel()
                    raise asyncio.CancelledError
            try:
                return await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                continue

    def usage(done: DoneEvent) -> dict[str, Any]:
        return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}

    def finish_reason(done: DoneEvent) -> str:
        return "length" if done.finish_reason == "length" else "stop"

    async def collect(req: GenerationRequest, queue: asyncio.Queue[Event], request: Request,
                      event: Event) -> tuple[str, DoneEvent]:
        pieces = []
        try:
            while not isinstance(event, DoneEvent):
                if isinstance(event, ErrorEvent):
                    raise APIError(event.status, event.message, None, "generation_failed")
                pieces.append(event.text)
                event = await wait_event(req, queue, request)
        finally:
            req.cancel()  # a no-op once done; frees the slot if this handler is cancelled
            last_check.pop(id(req), None)
        return "".join(pieces), event

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    async def stream_events(req: GenerationRequest, queue: asyncio.Queue[Event], event: Event,
                            chunk: Any, include_usage: bool) -> AsyncIterator[str]:
        """SSE lines: one chunk per text event, a last chunk with the finish reason, usage, [DONE]."""
        try:
            if (head := chunk(None, None, True)) is not None:
                yield sse(head)
            while True:
                if isinstance(event, ErrorEvent):
                    yield sse({"error": {"message": event.message, "type": "server_error", "param": None,
                                         "code": "generation_failed"}})
                    return
                if isinstance(event, DoneEvent):
                    yield sse(chunk(None, finish_reason(event), False))
                    if include_usage:
                        yield sse({**chunk(None, None, False), "choices": [], "usage": usage(event)})
                    yield "data: [DONE]\n\n"
                    return
                assert isinstance(event, TextEvent)
                yield sse(chunk(event.text, None, False))
                event = await queue.get()
        finally:
            req.cancel()  # the client went away (or we are done): free the slot

    # ---- /v1/completions ------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
            if len(prompt) != 1:
                raise APIError(400, "a batch of prompts is not supported: send one request per prompt", "prompt",
                               "unsupported")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = encode(prompt, False, "prompt")
            bos = session.tokenizer.bos_token_id
            if config.add_bos and bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
        else:
            ids = [int(t) for t in prompt]  # type: ignore[union-attr]
        check_ids(ids, "prompt")
        queue: asyncio.Queue[Event] = asyncio.Queue()
        req = make_request(body, ids, body.max_new_tokens(config.default_max_tokens), (), queue)
        event = await first_event(req, queue, request)
        rid, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text: str | None, reason: str | None, head: bool) -> dict[str, Any] | None:
            if head:
                return None
            return {"id": rid, "object": "text_completion", "created": now, "model": config.model_name,
                    "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}]}

        if body.stream:
            return StreamingResponse(stream_events(req, queue, event, chunk, body.include_usage),
                                     media_type="text/event-stream")
        text, done = await collect(req, queue, request, event)
        out = chunk(text, finish_reason(done), False)
        assert out is not None
        return {**out, "usage": usage(done)}

    # ---- /v1/chat/completions -------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        check_model(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = config.template.render(messages, add_generation_prompt=True)
        except RuntimeInputError as e:
            raise APIError(400, str(e), "messages", "invalid_messages") from None
        ids = check_ids(encode(text, True, "messages"), "messages")
        queue: asyncio.Queue[Event] = asyncio.Queue()
        req = make_request(body, ids, body.max_new_tokens(config.default_max_tokens), config.template.stop_strings,
                           queue)
        event = await first_event(req, queue, request)
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text: str | None, reason: str | None, head: bool) -> dict[str, Any]:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if head else \
                ({} if text is None else {"content": text})
            return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": config.model_name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

        if body.stream:
            return StreamingResponse(stream_events(req, queue, event, chunk, body.include_usage),
                                     media_type="text/event-stream")
        reply, done = await collect(req, queue, request, event)
        return {"id": rid, "object": "chat.completion", "created": now, "model": config.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                             "logprobs": None, "finish_reason": finish_reason(done)}],
                "usage": usage(done)}

    return app
