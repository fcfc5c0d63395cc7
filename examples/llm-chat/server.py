"""An LLM-style chat service that streams tokens from a toy n-gram model (ngram.py), instrumented
per the OpenTelemetry GenAI semantic conventions (semconv 1.37+, gen_ai_latest_experimental).

    python examples/llm-chat/server.py      # LLM_CHAT_HOST (127.0.0.1), LLM_CHAT_PORT (8100)

POST /v1/chat/completions   OpenAI-like chat completion; ``"stream": true`` answers with server-sent
                            events (``chat.completion.chunk`` objects, then ``data: [DONE]``).
GET  /v1/models             the one model.
GET  /healthz               200 once the model is trained.
GET|POST|DELETE /admin/faults   the demo's switches (header X-Admin-Token: $MLOBS_ADMIN_TOKEN; without
                            that variable the endpoint refuses every call): ``stall_seconds`` before
                            the first token, ``error_rate`` of requests refused with ``error_type``.

Environment: LLM_CHAT_TOKEN_DELAY_SECONDS (0.03, the time to generate each token after the first),
LLM_CHAT_PREFILL_SECONDS_PER_TOKEN (0.0005, per prompt token before the first), LLM_CHAT_JITTER
(0.2, relative), LLM_CHAT_STALL_SECONDS, LLM_CHAT_ERROR_RATE, LLM_CHAT_ERROR_TYPE (overloaded): the
faults at start; LLM_CHAT_CORPUS (comma-separated files, default the project's docs); the OTEL_*
variables of mlobs.telemetry.

Telemetry (names from mlobs/contract.py and genai_semconv.py):
* the server span of each chat request is named ``chat ngram-docs-3`` (``{gen_ai.operation.name}
  {gen_ai.request.model}``) and carries gen_ai.operation.name, .provider.name, .request.model,
  .response.model, .usage.input_tokens, .usage.output_tokens, .response.id, .response.finish_reasons,
  and error.type (status ERROR) when it fails;
* gen_ai.server.request.duration (every request; error.type on a failure),
  gen_ai.server.time_to_first_token (request start to the first generated token) and
  gen_ai.server.time_per_output_token (the mean time between the tokens after the first), for
  successful requests; histograms in seconds with the conventions' bucket boundaries;
* one JSON log line per request (stderr and OTLP) with the trace and span ids.
Token usage as a metric (gen_ai.client.token.usage) is the client's (client.py): the conventions
define no server-side token metric, so the server reports usage on its span and in the response.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import genai_semconv as g
import ngram
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import BaseModel, ConfigDict, Field

from mlobs import telemetry as mlobs_telemetry
from mlobs.contract import (
    ATTR_ERROR_TYPE,
    ATTR_GENAI_OPERATION_NAME,
    ATTR_GENAI_PROVIDER_NAME,
    ATTR_GENAI_REQUEST_MODEL,
    ATTR_GENAI_RESPONSE_MODEL,
    ATTR_REQUEST_ID,
    GENAI_SERVER_REQUEST_DURATION,
    GENAI_SERVER_TIME_PER_OUTPUT_TOKEN,
    GENAI_SERVER_TIME_TO_FIRST_TOKEN,
    GENAI_UNITS,
)

_log = logging.getLogger("llm_chat.server")
ERROR_TYPE_PATTERN = r"^[a-z][a-z0-9_.]{0,63}$"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


# --------------------------------------------------------------------------- settings and switches


@dataclass
class Timing:
    token_delay: float = 0.03
    prefill_per_token: float = 0.0005
    jitter: float = 0.2

    @classmethod
    def from_env(cls) -> Timing:
        return cls(_env_float("LLM_CHAT_TOKEN_DELAY_SECONDS", 0.03),
                   _env_float("LLM_CHAT_PREFILL_SECONDS_PER_TOKEN", 0.0005),
                   _env_float("LLM_CHAT_JITTER", 0.2))

    def delay(self, base: float, rng: random.Random) -> float:
        return max(0.0, base * (1 + self.jitter * (2 * rng.random() - 1)))


@dataclass
class Faults:
    stall_seconds: float = 0.0
    error_rate: float = 0.0
    error_type: str = "overloaded"

    @classmethod
    def from_env(cls) -> Faults:
        return cls(_env_float("LLM_CHAT_STALL_SECONDS", 0.0), _env_float("LLM_CHAT_ERROR_RATE", 0.0),
                   os.environ.get("LLM_CHAT_ERROR_TYPE", "overloaded"))


class FaultChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stall_seconds: float | None = Field(None, ge=0, le=600, description="Wait before the first token")
    error_rate: float | None = Field(None, ge=0, le=1, description="Share of requests refused")
    error_type: str | None = Field(None, pattern=ERROR_TYPE_PATTERN, description="error.type of a refusal")


# --------------------------------------------------------------------------- the API's shapes


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str = Field(max_length=20_000)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str = Field(g.MODEL, max_length=128)
    messages: list[Message] = Field(min_length=1, max_length=100)
    max_tokens: int = Field(64, ge=1, le=1024)
    temperature: float = Field(1.0, ge=0, le=2)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


# --------------------------------------------------------------------------- one request


@dataclass
class Call:
    """One chat completion: its span, its timing and what it produced."""

    request: ChatRequest
    request_id: str
    span: trace.Span
    start: float = field(default_factory=time.perf_counter)
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))
    input_tokens: int = 0
    words: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish_reason: str | None = None
    done: bool = False

    @property
    def base_attributes(self) -> dict[str, str]:
        return {ATTR_GENAI_OPERATION_NAME: g.OPERATION, ATTR_GENAI_PROVIDER_NAME: g.PROVIDER,
                ATTR_GENAI_REQUEST_MODEL: self.request.model}

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.input_tokens, "completion_tokens": len(self.words),
                "total_tokens": self.input_tokens + len(self.words)}


class ChatService:
    def __init__(self, model: ngram.NgramModel, tel: mlobs_telemetry.Telemetry, timing: Timing,
                 faults: Faults) -> None:
        self.model = model
        self.timing = timing
        self.faults = faults
        self._rng = random.Random()
        meter = tel.meter
        self.duration = meter.create_histogram(
            GENAI_SERVER_REQUEST_DURATION, unit=GENAI_UNITS[GENAI_SERVER_REQUEST_DURATION],
            description="Generative AI server request duration such as time-to-last byte or last output token.")
        self.ttft = meter.create_histogram(
            GENAI_SERVER_TIME_TO_FIRST_TOKEN, unit=GENAI_UNITS[GENAI_SERVER_TIME_TO_FIRST_TOKEN],
            description="Time to generate first token for successful responses.")
        self.tpot = meter.create_histogram(
            GENAI_SERVER_TIME_PER_OUTPUT_TOKEN, unit=GENAI_UNITS[GENAI_SERVER_TIME_PER_OUTPUT_TOKEN],
            description="Time per output token generated after the first token for successful responses.")

    def begin(self, request: ChatRequest, request_id: str) -> Call:
        span = trace.get_current_span()  # the server span of the FastAPI instrumentation
        call = Call(request=request, request_id=request_id, span=span)
        prompt = "\n".join(m.content for m in request.messages)
        call.input_tokens = len(ngram.tokenize(prompt))
        span.update_name(f"{g.OPERATION} {request.model}")
        attributes: dict[str, Any] = {**call.base_attributes, ATTR_REQUEST_ID: request_id,
                                      g.ATTR_REQUEST_MAX_TOKENS: request.max_tokens,
                                      g.ATTR_REQUEST_TEMPERATURE: request.temperature,
                                      g.ATTR_REQUEST_STREAM: request.stream,
                                      g.ATTR_USAGE_INPUT_TOKENS: call.input_tokens}
        if request.seed is not None:
            attributes[g.ATTR_REQUEST_SEED] = request.seed
        span.set_attributes(attributes)
        if request.model != g.MODEL:
            raise ApiError(404, "model_not_found", f"The model {request.model!r} does not exist; this server has "
                                                   f"{g.MODEL!r}.")
        if self.faults.error_rate and self._rng.random() < self.faults.error_rate:
            raise ApiError(503, self.faults.error_type, "The server is overloaded; retry later (injected fault).")
        return call

    async def tokens(self, call: Call) -> AsyncIterator[ngram.Token]:
        """The model's tokens, each after the time it takes: the prompt's prefill (and any stall)
        before the first, the per-token delay before each next one."""
        rng = random.Random(call.request.seed) if call.request.seed is not None else random.Random()
        prompt = "\n".join(m.content for m in call.request.messages)
        stall = self.faults.stall_seconds
        if stall:
            _log.warning("stalling before the first token", extra={"stall_seconds": stall,
                                                                   ATTR_REQUEST_ID: call.request_id})
        await asyncio.sleep(self.timing.delay(self.timing.prefill_per_token * call.input_tokens, rng) + stall)
        for token in self.model.generate(prompt, call.request.max_tokens, rng, call.request.temperature):
            if call.words:
                await asyncio.sleep(self.timing.delay(self.timing.token_delay, rng))
            now = time.perf_counter()
            if call.first_token_at is None:
                call.first_token_at = now
            call.last_token_at = now
            call.words.append(token.word)
            call.finish_reason = token.finish
            yield token

    def succeed(self, call: Call) -> None:
        call.done = True
        end = time.perf_counter()
        attributes = {**call.base_attributes, ATTR_GENAI_RESPONSE_MODEL: g.MODEL}
        self.duration.record(end - call.start, attributes)
        if call.first_token_at is not None:
            self.ttft.record(call.first_token_at - call.start, attributes)
            if len(call.words) > 1 and call.last_token_at is not None:
                self.tpot.record((call.last_token_at - call.first_token_at) / (len(call.words) - 1), attributes)
        call.span.set_attributes({
            ATTR_GENAI_RESPONSE_MODEL: g.MODEL,
            g.ATTR_RESPONSE_ID: call.id,
            g.ATTR_RESPONSE_FINISH_REASONS: [call.finish_reason or "stop"],
            g.ATTR_USAGE_OUTPUT_TOKENS: len(call.words),
        })
        _log.info("chat completion", extra={
            ATTR_REQUEST_ID: call.request_id, ATTR_GENAI_REQUEST_MODEL: call.request.model,
            g.ATTR_RESPONSE_ID: call.id, g.ATTR_USAGE_INPUT_TOKENS: call.input_tokens,
            g.ATTR_USAGE_OUTPUT_TOKENS: len(call.words), "finish_reason": call.finish_reason,
            "stream": call.request.stream, "duration_s": round(end - call.start, 4),
            "time_to_first_token_s": round((call.first_token_at or end) - call.start, 4)})

    def fail(self, call: Call | None, span: trace.Span, request: ChatRequest, request_id: str,
             error_type: str, message: str, start: float) -> None:
        if call is not None:
            call.done = True
        attributes = {ATTR_GENAI_OPERATION_NAME: g.OPERATION, ATTR_GENAI_PROVIDER_NAME: g.PROVIDER,
                      ATTR_GENAI_REQUEST_MODEL: request.model, ATTR_ERROR_TYPE: error_type}
        self.duration.record(time.perf_counter() - start, attributes)
        span.set_attribute(ATTR_ERROR_TYPE, error_type)
        span.set_status(Status(StatusCode.ERROR, message))
        _log.warning("chat completion failed: %s", message, extra={
            ATTR_REQUEST_ID: request_id, ATTR_GENAI_REQUEST_MODEL: request.model, ATTR_ERROR_TYPE: error_type})


# --------------------------------------------------------------------------- the app


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "code": error_type}}


def create_app(service: ChatService, tel: mlobs_telemetry.Telemetry, admin_token: str) -> FastAPI:
    app = FastAPI(title="mlobs llm-chat example", version=mlobs_telemetry.package_version(),
                  description="A toy n-gram model over the project's docs behind an OpenAI-like chat API.")

    def check_admin(x_admin_token: str | None = Header(None)) -> None:
        if not admin_token:
            raise HTTPException(403, "admin endpoint disabled: start the server with MLOBS_ADMIN_TOKEN set")
        if not x_admin_token or not hmac.compare_digest(x_admin_token.encode(), admin_token.encode()):
            raise HTTPException(401, "missing or wrong X-Admin-Token")

    admin = [Depends(check_admin)]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": g.MODEL, "vocabulary": len(service.model.vocabulary)}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": g.MODEL, "object": "model", "owned_by": g.PROVIDER}]}

    @app.get("/admin/faults", dependencies=admin)
    def get_faults() -> dict[str, Any]:
        return asdict(service.faults)

    @app.post("/admin/faults", dependencies=admin)
    def set_faults(change: FaultChange) -> dict[str, Any]:
        for key, value in change.model_dump(exclude_none=True).items():
            setattr(service.faults, key, value)
        _log.warning("faults changed", extra=asdict(service.faults))
        return asdict(service.faults)

    @app.delete("/admin/faults", dependencies=admin)
    def clear_faults() -> dict[str, Any]:
        service.faults = Faults()
        _log.warning("faults cleared")
        return asdict(service.faults)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, x_request_id: str | None = Header(None, max_length=64)) -> Any:
        start = time.perf_counter()
        request_id = x_request_id or "req-" + secrets.token_hex(8)
        headers = {"X-Request-ID": request_id}
        call: Call | None = None
        try:
            call = service.begin(body, request_id)
            if body.stream:
                return StreamingResponse(stream(call), media_type="text/event-stream",
                                         headers={**headers, "Cache-Control": "no-cache"})
            async for _ in service.tokens(call):
                pass
        except ApiError as e:
            service.fail(call, trace.get_current_span(), body, request_id, e.error_type, str(e), start)
            extra = {"Retry-After": "1"} if e.status == 503 else {}
            return JSONResponse(_error_body(e.error_type, str(e)), status_code=e.status, headers={**headers, **extra})
        except BaseException as e:  # a cancelled request: still measured, with its error.type
            service.fail(call, trace.get_current_span(), body, request_id, _error_type(e), repr(e), start)
            raise
        service.succeed(call)
        return JSONResponse({
            "id": call.id, "object": "chat.completion", "created": call.created, "model": g.MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ngram.detokenize(call.words)},
                         "finish_reason": call.finish_reason}],
            "usage": call.usage,
        }, headers=headers)

    async def stream(call: Call) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": call.id, "object": "chat.completion.chunk", "created": call.created, "model": g.MODEL,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        try:
            first = True
            async for token in service.tokens(call):
                delta = {"role": "assistant", "content": token.text} if first else {"content": token.text}
                first = False
                yield _sse(chunk(delta))
            service.succeed(call)
            yield _sse(chunk({}, call.finish_reason))
            if call.request.stream_options and call.request.stream_options.include_usage:
                yield _sse({"id": call.id, "object": "chat.completion.chunk", "created": call.created,
                            "model": g.MODEL, "choices": [], "usage": call.usage})
            yield _sse("[DONE]")
        except BaseException as e:  # the client went away mid-stream
            if not call.done:
                service.fail(call, call.span, call.request, call.request_id, _error_type(e), repr(e), call.start)
            raise

    # Server spans (named by the handler after the model), and the keep marker inside them.
    tel.instrument_fastapi(app, excluded_urls="healthz", exclude_spans=["receive", "send"])
    return app


def _error_type(e: BaseException) -> str:
    return "cancelled" if isinstance(e, (asyncio.CancelledError, GeneratorExit)) else type(e).__qualname__


def build(tel: mlobs_telemetry.Telemetry) -> tuple[FastAPI, ChatService]:
    corpus = [p.strip() for p in os.environ.get("LLM_CHAT_CORPUS", "").split(",") if p.strip()]
    started = time.perf_counter()
    model = ngram.NgramModel.train(ngram.corpus_text(corpus or ngram.DEFAULT_CORPUS), order=g.NGRAM_ORDER)
    _log.info("model trained", extra={ATTR_GENAI_REQUEST_MODEL: g.MODEL, "vocabulary": len(model.vocabulary),
                                      "contexts": len(model.counts),
                                      "seconds": round(time.perf_counter() - started, 3)})
    service = ChatService(model, tel, Timing.from_env(), Faults.from_env())
    return create_app(service, tel, os.environ.get("MLOBS_ADMIN_TOKEN", "")), service


def main() -> None:
    import uvicorn

    g.opt_in_latest_genai()
    os.environ.setdefault("OTEL_METRIC_EXPORT_INTERVAL", g.DEMO_EXPORT_INTERVAL_MS)
    tel = mlobs_telemetry.setup(g.SERVICE_SERVER, views=g.VIEWS, baggage_keys=(ATTR_REQUEST_ID,),
                                system_metrics=True)
    try:
        app, _ = build(tel)
        uvicorn.run(app, host=os.environ.get("LLM_CHAT_HOST", "127.0.0.1"),
                    port=int(os.environ.get("LLM_CHAT_PORT", "8100")), log_config=None, access_log=False)
    finally:
        tel.shutdown()


if __name__ == "__main__":
    main()
