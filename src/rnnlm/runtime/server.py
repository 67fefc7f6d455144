"""`rnnlm serve DIR`: an exported model over HTTP, speaking OpenAI's completions API (FastAPI + uvicorn).

    GET  /healthz         {"status": "ok"} while the batching loop runs, 503 once draining (no API key needed)
    GET  /v1/models       the model served; its id is the folder's name (or --model-name)
    POST /v1/completions  what completions.py accepts; with "stream": true, server-sent events
                          `data: {chunk}` ending with `data: [DONE]`
    GET  /metrics         Prometheus text: requests, tokens, active and queued sequences, step latency

Every sequence of every request is stepped in one continuous batch (scheduler.py); with a seed s,
choice k of a request is sampled with seed s + k (completions.py). Limits bound
what the server takes on: a request with no room in the batch or the queue gets 429 with
Retry-After, one past its timeout (counted from its arrival, body upload included) is cut (504, or
in a stream an error event before [DONE]). Any request body gets a 2xx or a 4xx naming the field at
fault, never a 5xx. With an API key (--api-key or RNNLM_API_KEY) every endpoint but /healthz wants
`Authorization: Bearer KEY`; keys are compared as UTF-8 bytes. /v1/models answers from what was
loaded at start-up. Each request logs one JSON line (status, tokens, latency) on the rnnlm.access
logger. On SIGTERM or SIGINT the server stops accepting connections, gives running requests up to
--shutdown-grace seconds, cuts the rest, closes the connections of clients that stopped reading,
and exits 0.
"""

import argparse
import asyncio
import hmac
import json
import logging
import signal
import sys
import time
import unicodedata
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from rnnlm.errors import RnnlmError
from rnnlm.runtime.completions import ApiError, Responses, error_event, parse_request, start_sequences
from rnnlm.runtime.generator import Generator
from rnnlm.runtime.metrics import CONTENT_TYPE, Metrics
from rnnlm.runtime.scheduler import Job, QueueFull, Scheduler, ShuttingDown
from rnnlm.runtime.stepper import Stepper, StepProcess

API_KEY_ENV = "RNNLM_API_KEY"
ROUTES = ("/healthz", "/v1/models", "/v1/completions", "/metrics")
MAY_BE_ZERO = ("max_queued", "shutdown_grace", "stream_interval")  # the other limits must be > 0
FLOAT_MAX = sys.float_info.max  # a finite limit is at most this (NaN and infinities fail the comparison)
STALLED_AFTER = 1.0  # seconds past the shutdown grace after which connections still open are closed
log = logging.getLogger(__name__)
access = logging.getLogger("rnnlm.access")  # one JSON line per request, apart from the server's own log


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
    # seconds between writes to a stream after its first text (scheduler.py): 20 a second read as a smooth
    # stream, and a loopback write costs the event loop about 0.1 ms, so at 32 streams writes every 0.02 s
    # took a quarter of its time; --stream-interval 0 writes every step's text at once
    stream_interval: float = 0.05

    def check(self) -> "Limits":
        """Raise RnnlmError for a limit of the wrong type, not finite or out of range; return self.
        (`rnnlm serve` checks its options the same way, as argparse errors.)"""
        for field in fields(self):
            value, positive = getattr(self, field.name), field.name not in MAY_BE_ZERO
            integer = isinstance(field.default, int)
            valid = isinstance(value, int) if integer else isinstance(value, int | float) and abs(value) <= FLOAT_MAX
            if isinstance(value, bool) or not valid or value < 0 or positive and value == 0:
                raise RnnlmError(f"--{field.name.replace('_', '-')} must be {'an integer' if integer else 'a number'} "
                                 f"{'> 0' if positive else '>= 0'}, got {value!r}")
        return self


def check_api_key(key: str) -> str:
    """key, or RnnlmError: an API key is compared as UTF-8 bytes with the bearer token, so it must be
    non-empty Unicode text without whitespace or control characters (a header cannot carry them)."""
    if not isinstance(key, str) or not key:
        raise RnnlmError("the API key is empty, which would turn authentication off; give a key, or leave out "
                         f"both --api-key and {API_KEY_ENV} to serve without one")
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs") for ch in key):
        raise RnnlmError("the API key holds whitespace, control characters or bytes that are not UTF-8; "
                         "a bearer token cannot carry them: choose a key of visible characters")
    return key


def check_model_id(model_id: str) -> str:
    """model_id, or RnnlmError: the id clients send must be non-empty, printable Unicode text."""
    if not isinstance(model_id, str) or not model_id or not model_id.isprintable():  # lone surrogates are not
        raise RnnlmError(f"the model id {ascii(model_id)} is empty or not printable UTF-8 text; "
                         "choose one with --model-name")
    return model_id


def create_app(generator: Generator, model_id: str, limits: Limits = Limits(), api_key: str | None = None,
               unknown: str = "error", stepper: Stepper | None = None) -> FastAPI:
    """The HTTP app; its lifespan runs the batching loop, which steps by stepper (default: on a thread of
    this process; `rnnlm serve` gives it a StepProcess), and closes it at the end. unknown: what to do
    with prompt characters a char vocabulary lacks (error: a 400 naming them; drop; replace). api_key
    None serves without a key."""
    limits.check()
    check_model_id(model_id)
    expected_key = None if api_key is None else check_api_key(api_key).encode("utf-8")
    try:  # the model's date, read once: the folder may change while it is served
        created = int((generator.manifest.folder / "manifest.json").stat().st_mtime)
    except OSError:
        created = int(time.time())
    metrics = Metrics()
    stepper = stepper or Stepper(generator)
    scheduler = Scheduler(stepper, metrics, limits.max_active, limits.max_queued, limits.stream_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.create_task(scheduler.run(), name="rnnlm-scheduler")
        app.state.scheduler_task = loop
        yield
        loop.cancel()
        with suppress(asyncio.CancelledError):
            await loop
        stepper.close()

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
                                                 kind="server_error", headers={"Connection": "close"}))

    async def authorize(request: Request) -> None:  # async: FastAPI runs a plain def in a thread pool
        if expected_key is None:
            return
        # Starlette decodes header values as latin-1: encoding them back gives the bytes sent.
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip(" \t").encode("latin-1") if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, expected_key):
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
        model = {"id": model_id, "object": "model", "created": created, "owned_by": "rnnlm"}
        return {"object": "list", "data": [model]}

    @app.get("/metrics", dependencies=keyed)
    async def prometheus() -> PlainTextResponse:
        text = metrics.render(len(scheduler.active), len(scheduler.waiting))
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(request: Request):
        deadline = request.state.arrival + limits.timeout  # the timeout counts from the request's arrival
        try:
            body = await asyncio.wait_for(read_body(request, limits.max_body_bytes), deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within this server's timeout of {limits.timeout:g} s",
                           code="request_timeout", headers={"Connection": "close"}) from None
        completion = parse_request(body, generator, model_id, limits.max_tokens, limits.max_active)
        sequences = start_sequences(completion, generator, unknown, limits.max_prompt_tokens)
        try:
            job = scheduler.submit(sequences, deadline, completion.stream)
        except QueueFull:
            raise ApiError(429, f"the server is full ({limits.max_active} sequences running, {limits.max_queued} "
                                "queued); retry after the seconds in Retry-After", code="rate_limit_exceeded",
                           kind="rate_limit_error", headers={"Retry-After": "1"}) from None
        except ShuttingDown:
            raise shutting_down() from None
        responses = Responses(model_id, completion, sequences)
        metrics.prompt_tokens += responses.usage()["prompt_tokens"]
        request.state.log = lambda: {**responses.usage(), "seed": completion.params.seed,
                                     **({"cut": job.error} if job.error else {}),
                                     **({"abandoned": True} if job.abandoned else {})}
        if completion.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream(job, responses), media_type="text/event-stream", headers=headers)
        try:
            if not await ended_before_disconnect(job, request):
                raise client_closed()
        finally:
            scheduler.abandon(job)
        if job.error:
            raise cut_error(job.error, limits)
        return JSONResponse(responses.body())

    async def stream(job: Job, responses: Responses):
        """Server-sent events: per flush of the scheduler, one chunk per choice holding the text it released."""
        try:
            async for pieces, ended in job.pieces():
                events = responses.events(pieces)
                if ended and job.error:
                    events += error_event(cut_error(job.error, limits))
                elif ended and responses.request.include_usage:
                    events += responses.usage_chunk()
                yield events + "data: [DONE]\n\n" if ended else events
        finally:  # also when the client disconnects: Starlette cancels this generator
            scheduler.abandon(job)

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed limit bytes (499 if the client leaves)."""
    too_large = ApiError(413, f"the request body exceeds this server's limit of {limit} bytes",
                         code="request_too_large", headers={"Connection": "close"})
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 20 or int(declared) > limit):
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:
        raise client_closed() from None
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


def client_closed() -> ApiError:
    return ApiError(499, "the client closed the request", code="client_closed_request")


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down; retry on another instance", kind="server_error",
                    code="server_shutting_down")


def cut_error(reason: str, limits: Limits) -> ApiError:
    """The error answered for a job the scheduler cut (reason: its Job.error)."""
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
        state["arrival"] = time.monotonic()  # the request's deadlines count from here

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
    """uvicorn's server, whose exit signals (SIGTERM, SIGINT) first tell the scheduler to drain, and
    whose shutdown closes, once the grace is over, the connections of clients that stopped reading."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace: float) -> None:
        super().__init__(config)
        self.scheduler, self.grace = scheduler, grace

    def handle_exit(self, sig: int, frame) -> None:
        self.scheduler.drain(self.grace)
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None) -> None:
        closer = asyncio.create_task(self.close_stalled(self.grace + STALLED_AFTER))
        try:
            await super().shutdown(sockets)
        finally:
            closer.cancel()

    async def close_stalled(self, delay: float) -> None:
        """After delay seconds, close the connections still open. Every stream was cut at the grace and
        its last events sent, unless its client stopped reading: the write then waits forever, and
        uvicorn would cancel it with a traceback. Closed, the response ends as a disconnect does."""
        await asyncio.sleep(delay)
        stalled = [c for c in self.server_state.connections
                   if getattr(c, "transport", None) is not None and not c.transport.is_closing()]
        if stalled:
            log.info("closing %d connection(s) whose clients stopped reading", len(stalled))
        for connection in stalled:
            connection.transport.abort()


def serve_command(args: argparse.Namespace) -> None:
    """Load the model, then serve it until SIGTERM or SIGINT. The options were checked by the parser
    (rnnlm.cli), --api-key's default being $RNNLM_API_KEY."""
    given = {f.name: getattr(args, f.name, None) for f in fields(Limits)}
    limits = Limits(**{name: value for name, value in given.items() if value is not None}).check()
    api_key = args.api_key
    model_id = check_model_id(args.model_name or Path(args.model).resolve().name)
    generator = Generator.load(args.model, threads=args.threads, max_new_tokens_cap=limits.max_tokens)
    app = create_app(generator, model_id, limits, api_key, args.unknown, StepProcess(generator, args.threads))
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
