"""The OpenAI-compatible HTTP app (FastAPI): routes, API-key check, error JSON, logging, metrics.

    POST /v1/chat/completions   chat, plain or `"stream": true` (server-sent events, then [DONE])
    POST /v1/completions        raw-text completion, plain or streamed
    GET  /v1/models             the served names: the base and each adapter
    GET  /health                liveness, the only route open without the API key
    GET  /metrics               Prometheus exposition (`metrics.py`)
    POST /v1/feedback           a user's rating or correction of an answer (`feedback.py`, needs --store)

`build_app(served, options)` wires one `Engine` (started and drained by the app's lifespan, so a
SIGTERM under uvicorn stops accepting, finishes what is in flight, then stops the worker), one
`ServeMetrics`, an optional `ResponseCache`, an optional `RequestLog` and an optional traffic store
(`data.store`: every answered request, PII-masked, written off the request path). Every error, from a
malformed body to a full queue, is OpenAI's error JSON with the offending field in `param`.

    app = build_app(load_served("embedded", {"support": "runs/support"}), ServeOptions(api_key="sk-1"))
    server.run_server(app, port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from domaintune.errors import UserError
from domaintune.models.decode import decode_stream
from domaintune.serve.adapters import ServedModels
from domaintune.serve.cache import ResponseCache
from domaintune.serve.engine import Engine
from domaintune.serve.handlers import ClientGone, Plan, Run, plan_chat, plan_completion, watch_disconnect
from domaintune.serve.metrics import ServeMetrics
from domaintune.serve.options import ServeOptions
from domaintune.serve.requestlog import RequestLog, now_iso
from domaintune.serve.schemas import (ApiError, ChatRequest, CompletionRequest, chat_choice, chat_delta, envelope,
                                      parse_body, text_choice, usage)

log = logging.getLogger(__name__)

OPEN_PATHS = ("/health",)
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection; logged, never sent


def build_app(served: ServedModels, options: ServeOptions | None = None, *,
              decode: Callable[..., Any] = decode_stream,
              drift_references: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> FastAPI:
    """Build the server app over loaded models.

    Args:
        served: the models (`adapters.load_served`).
        options: batching, limits, cache, log and API key (`ServeOptions()` by default).
        decode: the decoder the engine calls (`models.decode.decode_stream`; tests wrap it).
        drift_references: served name -> its training records: live drift gauges (`drift.py`).

    Returns:
        A FastAPI app; run it with `server.run_server` (or any ASGI server). Its engine starts
        with the app's lifespan, so use `with TestClient(app)` in tests.

    Example:
        >>> app = build_app(load_served("embedded"), ServeOptions(max_batch_size=8))   # doctest: +SKIP
    """
    options = options or ServeOptions()
    service = Service(served, options, decode)
    if drift_references:
        from domaintune.serve.drift import LiveDrift

        unknown = sorted(set(drift_references) - set(served.names))
        if unknown:
            raise UserError(f"--drift-reference names {', '.join(unknown)}, which is not served",
                            hint=f"use a served name: {', '.join(served.names)}")
        service.drift = LiveDrift(drift_references, service.metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        try:
            yield
        finally:  # uvicorn gets here after in-flight requests finished (graceful shutdown)
            await asyncio.to_thread(service.engine.close)
            service.prepare.shutdown(wait=False)
            if service.log is not None:
                service.log.close()
            if service.store is not None:
                await asyncio.to_thread(service.store.close)
            if service.drift is not None:
                await asyncio.to_thread(service.drift.close)
            if service.shadows is not None:
                await asyncio.to_thread(service.shadows.close)

    app = FastAPI(title="domaintune", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _add_routes(app, service)
    _add_error_handlers(app)
    if options.api_key:
        app.add_middleware(ApiKeyMiddleware, key=options.api_key, metrics=service.metrics)
    return app


class Service:
    """The state behind the routes: models, engine, metrics, cache, log."""

    def __init__(self, served: ServedModels, options: ServeOptions, decode: Callable[..., Any]) -> None:
        self.served, self.options = served, options
        self.metrics = ServeMetrics()
        self.engine = Engine(served.activate, served.codec.pad_id, max_batch_size=options.max_batch_size,
                             batch_window_s=options.batch_window_ms / 1000, max_queue=options.max_queue,
                             metrics=self.metrics, decode=decode)
        self.cache = ResponseCache(options.cache_size)
        self.log = RequestLog(options.request_log, raw=options.request_log_raw,
                              on_error=lambda _err: self.metrics.request_log_errors.inc()) \
            if options.request_log else None
        self.store = _open_store(options, self.metrics)
        self.drift: Any = None  # serve/drift.py's LiveDrift, when build_app is given references
        self.shadows: Any = None
        if served.shadows:
            from domaintune.serve.shadow import Shadows

            self.shadows = Shadows(self, options.shadow_rate, options.shadow_threshold)
        self.created = int(time.time())
        # Parsing, retrieval and tokenising run here, one request at a time (the tokenizer is not
        # shared across threads), so a long prompt never holds up the event loop.
        self.prepare = ThreadPoolExecutor(max_workers=1, thread_name_prefix="domaintune-prepare")

    def models(self) -> dict[str, Any]:
        """The /v1/models body."""
        base = self.served.base_name
        data = [{"id": name, "object": "model", "created": self.created, "owned_by": "domaintune",
                 "root": base, "parent": None if name == base else base} for name in self.served.names]
        return {"object": "list", "data": data}

    async def complete(self, request: Request, endpoint: str) -> Response:
        """Answer one completion request (chat or text), plain or streamed."""
        arrived = time.monotonic()
        self.metrics.in_flight.inc()
        plan: Plan | None = None
        try:
            raw = await _read_body(request, self.options.max_body_bytes)
            plan = await asyncio.get_running_loop().run_in_executor(self.prepare, self._plan, endpoint, raw)
            plan.arrived = arrived
            key = plan.cache_key() if self.options.cache_size else None
            cached = self.cache.get(key) if key is not None else None
            run = Run(plan, self.served, self.engine, self.options.request_timeout_s, request.is_disconnected, cached)
            run.start(self.options.retry_after_s)
        except ApiError as err:
            self._done(endpoint, arrived, plan, None, err.status, err)
            return error_response(err)
        except ClientDisconnect:  # hung up mid-upload: nobody to answer, and not the server's fault
            self._done(endpoint, arrived, plan, None, CLIENT_CLOSED, None)
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:  # noqa: BLE001 - a bug must still answer JSON and keep the counts right
            log.exception("request failed before generation")
            err = ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error")
            self._done(endpoint, arrived, plan, None, err.status, err)
            return error_response(err)
        if plan.stream:
            return StreamingResponse(self._sse(endpoint, plan, run, key), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": plan.rid})
        return await self._whole(endpoint, plan, run, key, request)

    def _plan(self, endpoint: str, raw: bytes) -> Plan:
        if endpoint == "chat.completions":
            return plan_chat(parse_body(ChatRequest, raw), self.served, self.options)
        return plan_completion(parse_body(CompletionRequest, raw), self.served, self.options)

    async def _whole(self, endpoint: str, plan: Plan, run: Run, key: Any, request: Request) -> Response:
        watcher = asyncio.create_task(watch_disconnect(request.receive, run))
        try:
            async for _ in run.deltas():
                pass
        except ApiError as err:
            self._done(endpoint, plan.arrived, plan, run, err.status, err)
            return error_response(err)
        except ClientGone:
            self._done(endpoint, plan.arrived, plan, run, CLIENT_CLOSED, None)
            return Response(status_code=CLIENT_CLOSED)
        finally:
            watcher.cancel()
            run.cancel()
        self._done(endpoint, plan.arrived, plan, run, 200, None, key)
        body = envelope(plan.rid, _object(plan), plan.model, _choices(plan, run),
                        usage=usage(plan.prompt_tokens, run.completion_tokens), **_retrieved(plan))
        return JSONResponse(body, headers={"X-Request-Id": plan.rid})

    async def _sse(self, endpoint: str, plan: Plan, run: Run, key: Any) -> AsyncIterator[str]:
        status, error = CLIENT_CLOSED, None  # what is logged if the client goes away mid-stream
        try:
            if plan.endpoint == "chat.completions":
                for row in range(len(plan.prompts)):
                    yield _event(_chunk(plan, chat_delta(row, {"role": "assistant", "content": ""})))
            async for row, text, reason in run.deltas():
                confidence = run.confidences[row] if reason else None
                yield _event(_chunk(plan, _stream_choice(plan, row, text, reason, confidence)))
            if plan.include_usage:
                yield _event(envelope(plan.rid, _object(plan, chunk=True), plan.model, [],
                                      usage=usage(plan.prompt_tokens, run.completion_tokens)))
            status = 200
        except ApiError as err:  # mid-stream: the status line is gone, so it travels as an event
            status, error = err.status, err
            yield _event(err.body())
        except ClientGone:
            return
        finally:
            run.cancel()
            self._done(endpoint, plan.arrived, plan, run, status, error, key if status == 200 else None)
        yield "data: [DONE]\n\n"

    def _done(self, endpoint: str, arrived: float, plan: Plan | None, run: Run | None, status: int,
              error: ApiError | None, cache_key: Any = None) -> None:
        """Record a finished request once: metrics, cache, request log, store; then drift and shadow."""
        seconds = time.monotonic() - arrived
        self.metrics.in_flight.dec()
        model = plan.model if plan is not None else "-"
        self.metrics.observe_request(endpoint, model, status, seconds, error.kind if error else None)
        if run is not None and run.first_token_s is not None:
            self.metrics.first_token.labels(endpoint=endpoint).observe(run.first_token_s)
        if run is not None and run.cached:
            self.metrics.cache_hits.inc()
        elif cache_key is not None and run is not None and status == 200:
            self.cache.put(cache_key, (list(run.texts), list(run.reasons), run.completion_tokens))
        if self.log is not None or self.store is not None:
            record = _log_record(endpoint, plan, run, status, error, seconds)
            if self.log is not None:
                self.log.write(record)
            if self.store is not None:
                self.store.write(record)  # queued before any shadow row that refers to it
        if status == 200 and run is not None and endpoint == "chat.completions":
            try:  # watching production must never fail production's answer
                if self.drift is not None:
                    self.drift.observe(plan.model, plan.logged_prompt, run.texts[0], run.confidences[0])
                if self.shadows is not None:
                    self.shadows.after(plan, run)
            except Exception:  # noqa: BLE001
                log.exception("drift or shadow bookkeeping failed for %s", plan.rid)

    async def feedback(self, request: Request) -> Response:
        from domaintune.serve.feedback import store_feedback

        try:
            raw = await _read_body(request, self.options.max_body_bytes)
            body = await asyncio.to_thread(store_feedback, self.store, raw)
        except ApiError as err:
            return error_response(err)
        except ClientDisconnect:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(body)


def _open_store(options: ServeOptions, metrics: ServeMetrics) -> Any:
    if not options.store:
        return None
    from domaintune.data.store import Store

    return Store(options.store, retention_days=options.store_retention_days,
                 on_error=lambda _err: metrics.store_errors.inc())


def _log_record(endpoint: str, plan: Plan | None, run: Run | None, status: int, error: ApiError | None,
                seconds: float) -> dict[str, Any]:
    ok = run is not None and status == 200
    return {"ts": now_iso(ago_s=seconds), "id": plan.rid if plan else None, "endpoint": endpoint,
            "model": plan.model if plan else None, "prompt": plan.logged_prompt if plan else None,
            "output": list(run.texts) if ok else [], "finish_reasons": list(run.reasons) if ok else [],
            "prompt_tokens": plan.prompt_tokens if plan else 0,
            "completion_tokens": run.completion_tokens if run else 0, "latency_s": round(seconds, 6),
            "status": status, "error": error.message if error else None,
            "cached": bool(run and run.cached), "stream": bool(plan and plan.stream),
            "confidences": list(run.confidences) if ok else []}


def _object(plan: Plan, chunk: bool = False) -> str:
    if plan.endpoint == "chat.completions":
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def _choices(plan: Plan, run: Run) -> list[dict[str, Any]]:
    if plan.endpoint != "chat.completions":
        return [text_choice(row, run.texts[row], run.reasons[row]) for row in range(len(plan.prompts))]
    return [chat_choice(row, run.texts[row], run.reasons[row], run.confidences[row]) for row in range(len(plan.prompts))]


def _stream_choice(plan: Plan, row: int, text: str, reason: str | None, confidence: float | None) -> dict[str, Any]:
    if plan.endpoint == "chat.completions":
        return chat_delta(row, {"content": text} if text else {}, reason, confidence)
    return text_choice(row, text, reason)


def _retrieved(plan: Plan) -> dict[str, Any]:
    """The extra response field naming the knowledge-base entries the prompt showed."""
    return {"retrieved": plan.retrieved} if plan.retrieved is not None else {}


def _chunk(plan: Plan, choice: dict[str, Any]) -> dict[str, Any]:
    return envelope(plan.rid, _object(plan, chunk=True), plan.model, [choice], **_retrieved(plan))


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = ApiError(413, f"the body is larger than {limit} bytes", code="body_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def error_response(err: ApiError) -> JSONResponse:
    """The JSON response for an `ApiError` (status, OpenAI error body, its headers)."""
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _add_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.models()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.complete(request, "chat.completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await service.complete(request, "completions")

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        return await service.feedback(request)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(exc.status_code, str(exc.detail), kind=kind, headers=exc.headers))

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)


class ApiKeyMiddleware:
    """ASGI middleware: every path but /health needs "Authorization: Bearer KEY" (else 401).

    A plain ASGI class rather than Starlette's BaseHTTPMiddleware, so streamed responses pass
    through untouched. Keys are compared in constant time.
    """

    def __init__(self, app: Any, key: str, metrics: ServeMetrics | None = None) -> None:
        self.app, self.key, self.metrics = app, key.encode(), metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if self.metrics is not None:
            self.metrics.observe_request("auth", "-", 401, 0.0, "authentication_error")
        err = ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                       kind="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error_response(err)(scope, receive, send)

    def _allowed(self, scope: dict[str, Any]) -> bool:
        value = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.key)
