"""`rnnlm serve DIR`: an exported model over HTTP, speaking OpenAI's completions API (FastAPI + uvicorn).

    GET  /healthz         {"status": "ok"} while the batching loop runs, 503 once draining (no API key needed)
    GET  /v1/models       the model served; its id is the folder's name (or --model-name)
    POST /v1/completions  what completions.py accepts; with "stream": true, server-sent events
                          `data: {chunk}` ending with `data: [DONE]`
    GET  /metrics         Prometheus text: requests, tokens, active and queued sequences, step latency

Every sequence of every request is stepped in one continuous batch (scheduler.py); with a seed s,
choice k of a request is sampled with seed s + k (completions.py). Limits bound
what the server takes on: a request with no room in the batch or the queue gets 429 with
Retry-After, one past its timeout is cut (504, or in a stream an error event before [DONE]). With
an API key (--api-key or RNNLM_API_KEY) every endpoint but /healthz wants `Authorization: Bearer KEY`.
Each request logs one JSON line (status, tokens, latency). On SIGTERM the server stops accepting
connections, gives running requests up to --shutdown-grace seconds, cuts the rest, and exits 0.
"""

import argparse
import asyncio
import hmac
import json
import logging
import os
import signal
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from rnnlm.errors import RnnlmError
from rnnlm.runtime.completions import ApiError, Shapes, error_event, parse_request, start_sequences
from rnnlm.runtime.generator import Generator
from rnnlm.runtime.metrics import CONTENT_TYPE, Metrics
from rnnlm.runtime.scheduler import Job, QueueFull, Scheduler, ShuttingDown

API_KEY_ENV = "RNNLM_API_KEY"
ROUTES = ("/healthz", "/v1/models", "/v1/completions", "/metrics")
MAY_BE_ZERO = ("max_queued", "shutdown_grace", "stream_interval")  # the other limits must be > 0
log = logging.getLogger("rnnlm.server")
access = logging.getLogger("rnnlm.access")


@dataclass(frozen=True)
class Limits:
    """What the server takes on; each field is set by the `rnnlm serve` option of its name."""

    max_active: int = 64  # sequences stepped together; also the most choices one request may ask
    max_queued: int = 256  # sequences waiting for a slot; a request that does not fit gets 429
    max_tokens: int = 2048  # the largest max_tokens a request may ask
    max_prompt_tokens: int = 4096
    max_body_bytes: int = 1 << 20
    timeout: float = 120.0  # seconds from a request's arrival to its last token
    shutdown_grace: float = 10.0  # seconds running requests get after SIGTERM before they are cut
    stream_interval: float = 0.02  # seconds between writes to a stream after its first text (scheduler.py)

    def check(self) -> "Limits":
        for field in fields(self):
            value, positive = getattr(self, field.name), field.name not in MAY_BE_ZERO
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or positive and value == 0:
                raise RnnlmError(f"--{field.name.replace('_', '-')} must be a number {'> 0' if positive else '>= 0'}, "
                                 f"got {value!r}")
        return self


def create_app(generator: Generator, model_id: str, limits: Limits = Limits(), api_key: str | None = None,
               unknown: str = "error") -> FastAPI:
    """The HTTP app; its lifespan runs the batching loop. unknown: what to do with prompt characters
    a char vocabulary lacks (error: a 400 naming them; drop; replace)."""
    metrics = Metrics()
    scheduler = Scheduler(generator, metrics, limits.max_active, limits.max_queued, limits.stream_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.create_task(scheduler.run(), name="rnnlm-scheduler")
        app.state.scheduler_task = loop
        yield
        loop.cancel()
        with suppress(asyncio.CancelledError):
            await loop

    app = FastAPI(title="rnnlm", lifespan=lifespan, openapi_url=None)
    app.state.scheduler = scheduler
    app.add_middleware(AccessLog, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        request.state.error = e.code or e.kind
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:  # unknown path, wrong method
        message = f"{request.method} {request.url.path}: {e.detail}"
        return await api_error(request, ApiError(e.status_code, message, headers=e.headers))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:  # uvicorn logs the traceback
        return await api_error(request, ApiError(500, "the server failed on this request; its log says why",
                                                 kind="server_error"))

    async def authorize(request: Request) -> None:  # async: FastAPI runs a plain def in a thread pool
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        if api_key and not hmac.compare_digest(given, api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer KEY`",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    keyed = [Depends(authorize)]

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        task = app.state.scheduler_task
        status = "stopped" if task.done() else "draining" if scheduler.draining else "ok"
        return JSONResponse({"status": status}, 200 if status == "ok" else 503)

    @app.get("/v1/models", dependencies=keyed)
    async def models() -> dict:
        created = int((generator.manifest.folder / "manifest.json").stat().st_mtime)
        model = {"id": model_id, "object": "model", "created": created, "owned_by": "rnnlm"}
        return {"object": "list", "data": [model]}

    @app.get("/metrics", dependencies=keyed)
    async def prometheus() -> PlainTextResponse:
        text = metrics.render(len(scheduler.active), len(scheduler.waiting))
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(request: Request):
        try:
            body = await asyncio.wait_for(read_body(request, limits.max_body_bytes), limits.timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {limits.timeout:g} s",
                           code="request_timeout") from None
        completion = parse_request(body, generator, model_id, limits.max_tokens, limits.max_active)
        sequences = start_sequences(completion, generator, unknown, limits.max_prompt_tokens)
        try:
            job = scheduler.submit(sequences, limits.timeout, completion.stream)
        except QueueFull:
            raise ApiError(429, f"the server is full ({limits.max_active} sequences running, {limits.max_queued} "
                                "queued); retry after the seconds in Retry-After", code="rate_limit_exceeded",
                           kind="rate_limit_error", headers={"Retry-After": "1"}) from None
        except ShuttingDown:
            raise shutting_down() from None
        shapes = Shapes(model_id, completion, sequences)
        metrics.prompt_tokens += shapes.usage()["prompt_tokens"]
        request.state.log = lambda: {**shapes.usage(), **({"cut": job.error} if job.error else {}),
                                     **({"abandoned": True} if job.abandoned else {})}
        if completion.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream(job, shapes), media_type="text/event-stream", headers=headers)
        try:
            if not await ended_before_disconnect(job, request):
                raise ApiError(499, "the client closed the request", code="client_closed_request")
        finally:
            scheduler.abandon(job)
        if job.error:
            raise cut(job.error, limits)
        return JSONResponse(shapes.body())

    async def stream(job: Job, shapes: Shapes):
        """Server-sent events: per flush of the scheduler, one chunk per choice holding the text it released."""
        try:
            async for pieces, ended in job.pieces():
                events = shapes.events(pieces)
                if ended and job.error:
                    events += error_event(cut(job.error, limits))
                elif ended and shapes.request.include_usage:
                    events += shapes.usage_chunk()
                yield events + "data: [DONE]\n\n" if ended else events
        finally:  # also when the client disconnects: Starlette cancels this generator
            scheduler.abandon(job)

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed limit bytes."""
    too_large = ApiError(413, f"the request body exceeds this server's limit of {limit} bytes",
                         code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def ended_before_disconnect(job: Job, request: Request) -> bool:
    """Wait for job to end; False if the client disconnected first."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    gone = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((job.done, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return job.done.done()


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down; retry on another instance", kind="server_error",
                    code="server_shutting_down")


def cut(reason: str, limits: Limits) -> ApiError:
    """The error for a job the scheduler cut."""
    if reason == "timeout":
        return ApiError(504, f"the completion did not finish within this server's timeout of {limits.timeout:g} s; "
                             "ask for fewer max_tokens", kind="server_error", code="timeout")
    if reason == "shutdown":
        return shutting_down()
    return ApiError(500, "the model failed at a step; the server log says why", kind="server_error")


class AccessLog:
    """ASGI middleware: one JSON line per request on the rnnlm.access logger, and /metrics' request counts."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, state = time.perf_counter(), 500, scope.setdefault("state", {})

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope["path"]
            self.metrics.requests[(path if path in ROUTES else "other", status)] += 1
            record = {"time": round(time.time(), 3), "method": scope["method"], "path": path, "status": status,
                      "latency_ms": round(1000 * (time.perf_counter() - start), 1)}
            if "log" in state:
                record.update(state["log"]())
            if "error" in state:
                record["error"] = state["error"]
            access.info(json.dumps(record))


# ----------------------------------------------------------------------------- the command


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose exit signals (SIGTERM, SIGINT) first tell the scheduler to drain."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace: float) -> None:
        super().__init__(config)
        self.scheduler, self.grace = scheduler, grace

    def handle_exit(self, sig: int, frame) -> None:
        self.scheduler.drain(self.grace)
        super().handle_exit(sig, frame)


def serve_command(args: argparse.Namespace) -> None:
    """Load the model, then serve it until SIGTERM or SIGINT."""
    given = {f.name: getattr(args, f.name, None) for f in fields(Limits)}
    limits = Limits(**{name: value for name, value in given.items() if value is not None}).check()
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    generator = Generator.load(args.model, threads=args.threads, max_new_tokens_cap=limits.max_tokens)
    model_id = args.model_name or Path(args.model).resolve().name
    app = create_app(generator, model_id, limits, api_key, args.unknown)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("rnnlm").addHandler(handler)
    logging.getLogger("rnnlm").setLevel(logging.INFO)
    log.info("rnnlm serves %r from %s on http://%s:%d (%s; API key %s)", model_id, args.model, args.host, args.port,
             ", ".join(f"{k}={v}" for k, v in asdict(limits).items()), "required" if api_key else "off")
    config = uvicorn.Config(app, host=args.host, port=args.port, access_log=False, log_level="info",
                            timeout_graceful_shutdown=limits.shutdown_grace + 5)
    # uvicorn raises the signal it handled again once it has shut down; a handler that does
    # nothing makes a graceful shutdown end with exit status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    DrainingServer(config, app.state.scheduler, limits.shutdown_grace).run()
