"""The OpenAI-compatible HTTP server: FastAPI routes over one :class:`dlm.engine.Engine`.

    app = create_app(dlm.load(), "smol-idlm")      # what `dlm serve` runs under uvicorn

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (JSON or SSE with ``stream``),
``GET /v1/models``, ``/health``, ``/metrics`` (Prometheus) and the web page at ``/``. Every error is
a JSON body ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for bad input
(400 invalid, 404 unknown model or route, 413 body too large, 429 queue full) and 500 only for a
failure of the model itself. A client that disconnects cancels its request.
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from dlm.engine import Engine, EngineConfig, EngineFull
from dlm.errors import DLMError
from dlm.server.http_errors import BodyLimit, BodyTooLarge, error, json_safe, validation_message
from dlm.server.metrics import ServerMetrics
from dlm.server.prompts import encode_chat, encode_text
from dlm.server import MAX_BODY_BYTES
from dlm.server.protocol import ChatRequest, CompletionRequest
from dlm.server.streaming import CanvasView, TextTracker, chunk, sse

def create_app(model, model_name: str, config: EngineConfig | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    metrics = ServerMetrics()
    engine = Engine(model, config, metrics=metrics)

    @asynccontextmanager
    async def lifespan(_app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="dlm", description="OpenAI-compatible diffusion LM server", lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.model_name = engine, metrics, model_name
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, exc: RequestValidationError):
        message, param = validation_message(exc)
        return error(400, message, param=param)

    @app.exception_handler(HTTPException)
    async def _http(_req, exc: HTTPException):
        if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI turns a failed body read into a 400
            return error(413, f"the request body is over {max_body_bytes} bytes", code="body_too_large")
        if isinstance(exc.__cause__, UnicodeDecodeError):  # ... and a body that is not UTF-8 too
            return error(400, "the body is not valid UTF-8 (JSON must be UTF-8)")
        return error(exc.status_code, str(exc.detail), kind="not_found_error" if exc.status_code == 404
                     else "invalid_request_error")

    @app.exception_handler(DLMError)
    async def _dlm(_req, exc: DLMError):
        if isinstance(exc, EngineFull):
            return error(429, str(exc), kind="rate_limit_error", code="engine_full")
        return error(400, str(exc))

    @app.exception_handler(Exception)
    async def _crash(_req, exc: Exception):
        return error(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return resources.files("dlm.server").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "running": len(engine.running), "waiting": engine.queue_depth,
                "pid": os.getpid()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "dlm"}]}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        prompt = body.prompt[0] if isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], str) \
            else body.prompt
        return await serve(body, http, "completion", lambda: encode_text(model, prompt))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: Request):
        return await serve(body, http, "chat", lambda: encode_chat(model, body.chat()))

    async def serve(body, http: Request, kind: str, encode):
        from dlm.sampling import default_sampler, sampler_class, sampler_options

        body.check_supported()
        if body.model not in (None, "", model_name):
            return error(404, f"model {body.model!r} is not served here (this server serves {model_name!r})",
                         kind="not_found_error", param="model", code="model_not_found")
        ids = encode()
        sampler = body.dlm.sampler or default_sampler(model)
        options = body.engine_options(set(sampler_options(sampler)))
        request = engine.submit(ids, sampler=sampler, seed=body.seed, stream_steps=body.stream, **options)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request.id}"
        mask_id = model.facts.resolve_mask_id(options.get("mask_id"))
        tracker = TextTracker(model, mask_id, body.stops(), final_only=getattr(sampler_class(sampler), "revises", False))
        if body.stream:
            canvas = CanvasView(model, mask_id) if body.dlm.canvas else None
            return StreamingResponse(stream(request, kind, rid, tracker, canvas, body, len(ids)),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        event = await next_event(request, http, final_only=True)
        if event is None:  # the client went away
            metrics.requests.labels("cancelled").inc()
            return Response(status_code=499)
        if event.kind == "error":
            metrics.requests.labels("failed").inc()
            return error(500, f"generation failed: {event.error}", kind="server_error")
        done = event.result
        text, cut = tracker.final(done.answer)
        finish = "stop" if cut else done.finish_reason
        metrics.requests.labels("ok").inc()
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                   "logprobs": None} if kind == "chat" else
                  {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
        return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()), "model": model_name, "choices": [choice],
                "usage": usage(len(ids), done), "dlm": report(done, sampler)}

    async def stream(request, kind, rid, tracker, canvas, body, prompt_tokens):
        finished = False
        try:
            if kind == "chat":
                yield sse(chunk(kind, rid, model_name, role=True))
            while True:
                event = await next_event(request, None)
                if event.kind == "step":
                    if canvas is not None:
                        yield sse(chunk(kind, rid, model_name, extra={
                            "dlm_canvas": canvas.record(event.step, event.nfe, event.canvas)}))
                    delta = tracker.update(event.canvas)
                    if delta:
                        yield sse(chunk(kind, rid, model_name, text=delta))
                    continue
                finished = True
                if event.kind == "error":
                    metrics.requests.labels("failed").inc()
                    yield sse({"error": {"message": f"generation failed: {event.error}", "type": "server_error",
                                         "param": None, "code": None}})
                    break
                done = event.result
                delta, cut = tracker.final(done.answer)
                if delta:
                    yield sse(chunk(kind, rid, model_name, text=delta))
                info = {"usage": usage(prompt_tokens, done), "dlm": report(done, request.sampler)}
                yield sse(chunk(kind, rid, model_name, finish="stop" if cut else done.finish_reason, extra=info))
                if body.stream_options is not None and body.stream_options.include_usage:
                    yield sse(chunk(kind, rid, model_name, extra={"usage": info["usage"]}))
                metrics.requests.labels("ok").inc()
                break
            yield sse("[DONE]")
        finally:
            if not finished:  # the client went away mid-stream
                request.cancel()
                metrics.requests.labels("cancelled").inc()

    return app


async def next_event(request, http: Request | None, final_only: bool = False):
    """The request's next event (its last one with ``final_only``); None if the client disconnects.
    The engine's threads wake this coroutine through the request's listener; no busy polling."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    request.listener = lambda: loop.call_soon_threadsafe(wake.set)
    while True:
        while not request.events.empty():
            event = request.events.get_nowait()
            if not final_only or event.kind != "step":
                return event
        wake.clear()
        if not request.events.empty():
            continue
        try:
            await asyncio.wait_for(wake.wait(), timeout=0.25)
        except asyncio.TimeoutError:
            if http is not None and await http.is_disconnected():
                request.cancel()
                return None


def usage(prompt_tokens: int, done) -> dict:
    n = len(done.answer)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}


def report(done, sampler: str) -> dict:
    return {"sampler": sampler, "nfe": done.nfe, "steps": done.steps, "seconds": round(done.seconds, 4),
            "queued_seconds": round(done.queued_seconds, 4), "stats": json_safe(done.stats)}
