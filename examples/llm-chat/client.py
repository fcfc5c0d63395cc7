"""A load client for the chat service (server.py), instrumented as a GenAI client per the
OpenTelemetry GenAI semantic conventions (semconv 1.37+, gen_ai_latest_experimental).

    python examples/llm-chat/client.py --duration 60          # LLM_CHAT_URL or --url, default http://127.0.0.1:8100

Each request is a CLIENT span ``chat ngram-docs-3`` whose context goes to the server in the
``traceparent`` header, with gen_ai.operation.name, .provider.name, .request.model, .response.model,
.usage.input_tokens, .usage.output_tokens, server.address, server.port, and error.type when it fails.
It records gen_ai.client.operation.duration (s; error.type on a failure) and, from the usage the
server reports, gen_ai.client.token.usage ({token}, gen_ai.token.type input and output).

One JSON line per request on stdout (trace id, outcome, tokens, time to the first chunk), the logs
as JSON on stderr. SIGTERM or SIGINT stops it after the requests in flight.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import genai_semconv as g
import httpx
from opentelemetry import propagate, trace
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.trace import SpanKind, Status, StatusCode

from mlobs import telemetry as mlobs_telemetry
from mlobs.contract import (
    ATTR_ERROR_TYPE,
    ATTR_GENAI_OPERATION_NAME,
    ATTR_GENAI_PROVIDER_NAME,
    ATTR_GENAI_REQUEST_MODEL,
    ATTR_GENAI_RESPONSE_MODEL,
    ATTR_GENAI_TOKEN_TYPE,
    GENAI_CLIENT_OPERATION_DURATION,
    GENAI_CLIENT_TOKEN_USAGE,
    GENAI_TOKEN_INPUT,
    GENAI_TOKEN_OUTPUT,
    GENAI_UNITS,
)

_log = logging.getLogger("llm_chat.client")

PROMPTS = (
    "How do traces reach the trace store?",
    "What does the collector do with the span metrics",
    "Explain tail sampling and the keep mark.",
    "Which alert fires when the error ratio is high?",
    "How are logs correlated with traces",
    "What does the analyzer send to Grafana?",
    "Tell me about exemplars and the request id.",
    "How does the native runtime start the stack?",
    "What is the sample service",
    "Why would the prediction latency grow?",
)


class ChatError(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass
class Outcome:
    at: float  # time.time() when the request started
    trace_id: str
    ok: bool
    stream: bool
    status: int | None
    error_type: str | None
    input_tokens: int | None
    output_tokens: int | None
    duration_s: float
    first_chunk_s: float | None
    text: str = ""


class ChatClient:
    def __init__(self, url: str, tel: mlobs_telemetry.Telemetry, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        self.server = {SERVER_ADDRESS: parts.hostname or "", SERVER_PORT: parts.port or (443 if parts.scheme ==
                                                                                          "https" else 80)}
        self.http = httpx.Client(timeout=timeout)
        self.tracer = tel.tracer
        self.duration = tel.meter.create_histogram(
            GENAI_CLIENT_OPERATION_DURATION, unit=GENAI_UNITS[GENAI_CLIENT_OPERATION_DURATION],
            description="GenAI operation duration.")
        self.tokens = tel.meter.create_histogram(
            GENAI_CLIENT_TOKEN_USAGE, unit=GENAI_UNITS[GENAI_CLIENT_TOKEN_USAGE],
            description="Number of input and output tokens used.")

    def close(self) -> None:
        self.http.close()

    def chat(self, prompt: str, *, stream: bool, max_tokens: int = 48, model: str = g.MODEL,
             seed: int | None = None) -> Outcome:
        base = {ATTR_GENAI_OPERATION_NAME: g.OPERATION, ATTR_GENAI_PROVIDER_NAME: g.PROVIDER,
                ATTR_GENAI_REQUEST_MODEL: model, **self.server}
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                                "max_tokens": max_tokens, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if seed is not None:
            body["seed"] = seed
        with self.tracer.start_as_current_span(f"{g.OPERATION} {model}", kind=SpanKind.CLIENT,
                                               record_exception=False, set_status_on_exception=False) as span:
            span.set_attributes({**base, g.ATTR_REQUEST_MAX_TOKENS: max_tokens, g.ATTR_REQUEST_STREAM: stream})
            trace_id = trace.format_trace_id(span.get_span_context().trace_id)
            headers: dict[str, str] = {}
            propagate.inject(headers)  # traceparent: the server's span becomes a child of this one
            at, start = time.time(), time.perf_counter()
            status: int | None = None
            result: dict[str, Any] = {}
            try:
                status, result = (self._stream if stream else self._complete)(body, headers, start)
                error_type = None
            except ChatError as e:
                error_type, message = e.error_type, str(e)
            except httpx.TimeoutException as e:
                error_type, message = "timeout", repr(e)
            except httpx.HTTPError as e:
                error_type, message = type(e).__qualname__, repr(e)
            duration = time.perf_counter() - start

            usage = result.get("usage") or {}
            response_model = result.get("model")
            attributes = dict(base)
            if response_model:
                attributes[ATTR_GENAI_RESPONSE_MODEL] = response_model
                span.set_attribute(ATTR_GENAI_RESPONSE_MODEL, response_model)
            if error_type is not None:
                attributes[ATTR_ERROR_TYPE] = error_type
                span.set_attribute(ATTR_ERROR_TYPE, error_type)
                span.set_status(Status(StatusCode.ERROR, message))
                _log.warning("chat request failed: %s", message, extra={ATTR_ERROR_TYPE: error_type})
            self.duration.record(duration, attributes)
            input_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
            for kind, count in ((GENAI_TOKEN_INPUT, input_tokens), (GENAI_TOKEN_OUTPUT, output_tokens)):
                if count is not None:
                    self.tokens.record(count, {**attributes, ATTR_GENAI_TOKEN_TYPE: kind})
            if input_tokens is not None:
                span.set_attribute(g.ATTR_USAGE_INPUT_TOKENS, input_tokens)
            if output_tokens is not None:
                span.set_attribute(g.ATTR_USAGE_OUTPUT_TOKENS, output_tokens)
            if result.get("id"):
                span.set_attribute(g.ATTR_RESPONSE_ID, result["id"])
            if result.get("finish_reason"):
                span.set_attribute(g.ATTR_RESPONSE_FINISH_REASONS, [result["finish_reason"]])
            return Outcome(at=round(at, 3), trace_id=trace_id, ok=error_type is None, stream=stream, status=status,
                           error_type=error_type, input_tokens=input_tokens, output_tokens=output_tokens,
                           duration_s=round(duration, 4), first_chunk_s=result.get("first_chunk_s"),
                           text=result.get("text", ""))

    def _refusal(self, r: httpx.Response) -> ChatError:
        try:
            error = r.json().get("error") or {}
        except ValueError:
            error = {}
        # The provider's own error code where it gives one (the conventions' first choice), else the status.
        return ChatError(str(error.get("type") or r.status_code), error.get("message") or r.text[:200])

    def _complete(self, body: dict[str, Any], headers: dict[str, str], start: float) -> tuple[int, dict[str, Any]]:
        r = self.http.post(f"{self.url}/v1/chat/completions", json=body, headers=headers)
        if r.status_code != 200:
            raise self._refusal(r)
        data = r.json()
        choice = data["choices"][0]
        return r.status_code, {"id": data.get("id"), "model": data.get("model"), "usage": data.get("usage"),
                               "finish_reason": choice.get("finish_reason"), "text": choice["message"]["content"],
                               "first_chunk_s": None}

    def _stream(self, body: dict[str, Any], headers: dict[str, str], start: float) -> tuple[int, dict[str, Any]]:
        result: dict[str, Any] = {"text": "", "first_chunk_s": None}
        with self.http.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                r.read()
                raise self._refusal(r)
            done = False
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                result["id"], result["model"] = chunk.get("id"), chunk.get("model")
                if chunk.get("usage"):
                    result["usage"] = chunk["usage"]
                for choice in chunk.get("choices", []):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        if result["first_chunk_s"] is None:
                            result["first_chunk_s"] = round(time.perf_counter() - start, 4)
                        result["text"] += content
                    if choice.get("finish_reason"):
                        result["finish_reason"] = choice["finish_reason"]
            if not done:
                raise ChatError("incomplete_stream", "the stream ended before data: [DONE]")
            return r.status_code, result


def run(args: argparse.Namespace, tel: mlobs_telemetry.Telemetry, stop: threading.Event) -> int:
    client = ChatClient(args.url, tel, timeout=args.timeout)
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    lock = threading.Lock()
    counts = {"sent": 0, "failed": 0}
    out_lock = threading.Lock()

    def worker(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        interval = args.concurrency / args.rate if args.rate > 0 else 0.0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            with lock:
                if args.requests and counts["sent"] >= args.requests:
                    return
                counts["sent"] += 1
            began = time.monotonic()
            outcome = client.chat(rng.choice(PROMPTS), stream=rng.random() < args.stream_share,
                                  max_tokens=rng.randint(max(1, args.max_tokens // 2), args.max_tokens))
            if not outcome.ok:
                with lock:
                    counts["failed"] += 1
            with out_lock:
                line = asdict(outcome)
                if not args.text:
                    line.pop("text")
                print(json.dumps(line), flush=True)
            stop.wait(max(0.0, interval - (time.monotonic() - began)))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    _log.info("load finished", extra=counts)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("LLM_CHAT_URL", "http://127.0.0.1:8100"))
    p.add_argument("--duration", type=float, default=60, help="seconds; 0 runs until SIGTERM/SIGINT")
    p.add_argument("--requests", type=int, default=0, help="stop after this many requests (0: no limit)")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--rate", type=float, default=4.0, help="requests per second in all (0: as fast as it can)")
    p.add_argument("--stream-share", type=float, default=0.8, help="share of streaming requests")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--text", action="store_true", help="print the generated text in each line")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.max_tokens < 1:
        p.error("--concurrency and --max-tokens must be at least 1")

    g.opt_in_latest_genai()
    os.environ.setdefault("OTEL_METRIC_EXPORT_INTERVAL", g.DEMO_EXPORT_INTERVAL_MS)
    tel = mlobs_telemetry.setup(g.SERVICE_CLIENT, views=g.VIEWS)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        return run(args, tel, stop)
    finally:
        tel.shutdown()


if __name__ == "__main__":
    sys.exit(main())
