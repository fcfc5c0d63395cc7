"""The toy n-gram model of examples/llm-chat and its chat server, without a stack: generation is
deterministic for a seed, uses only its corpus's tokens and is drawn token by token; the server
streams one event per token and measures the GenAI metrics and span of the conventions."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm-chat"
sys.path.insert(0, str(EXAMPLE))

import genai_semconv as g  # noqa: E402
import ngram  # noqa: E402

from mlobs import contract as C  # noqa: E402

PROMPT = "How do traces reach the trace store?"


@pytest.fixture(scope="module")
def corpus() -> str:
    return ngram.corpus_text(ngram.DEFAULT_CORPUS)


@pytest.fixture(scope="module")
def model(corpus: str) -> ngram.NgramModel:
    return ngram.NgramModel.train(corpus, order=g.NGRAM_ORDER)


def words(model: ngram.NgramModel, seed: int, prompt: str = PROMPT, max_tokens: int = 40) -> list[str]:
    return [t.word for t in model.generate(prompt, max_tokens, random.Random(seed))]


def test_the_corpus_is_the_projects_prose(corpus: str) -> None:
    assert "```" not in corpus and "](" not in corpus  # no code blocks, links keep only their text
    assert len(ngram.tokenize(corpus)) > 5000  # README.md, TELEMETRY.md and the analyzer's README
    assert "Alertmanager" in ngram.tokenize(corpus)


def test_same_seed_same_text_other_seeds_other_texts(model: ngram.NgramModel) -> None:
    assert words(model, 7) == words(model, 7)
    assert len({tuple(words(model, seed)) for seed in range(8)}) >= 6


def test_generates_only_words_of_its_corpus(model: ngram.NgramModel, corpus: str) -> None:
    vocabulary = set(ngram.tokenize(corpus))
    assert model.vocabulary == vocabulary
    produced = [w for seed in range(30) for w in words(model, seed, prompt=f"prompt {seed} the collector")]
    assert produced and set(produced) <= vocabulary, set(produced) - vocabulary
    assert ngram.BOS not in produced and ngram.EOS not in produced


def test_max_tokens_and_finish_reason(model: ngram.NgramModel) -> None:
    for seed in range(20):
        tokens = list(model.generate(PROMPT, 12, random.Random(seed)))
        assert 1 <= len(tokens) <= 12
        assert all(t.finish is None for t in tokens[:-1])
        last = tokens[-1]
        assert last.finish == ("length" if len(tokens) == 12 else "stop")
        if last.finish == "stop":
            assert last.word in ngram.SENTENCE_END
    assert list(model.generate(PROMPT, 0, random.Random(1))) == []


class CountingRandom(random.Random):
    calls = 0

    def choices(self, *args, **kwargs):  # type: ignore[override]
        self.calls += 1
        return super().choices(*args, **kwargs)


def test_streams_token_by_token(model: ngram.NgramModel) -> None:
    """Each token is sampled when it is asked for, not the whole answer up front."""
    rng = CountingRandom(3)
    stream = model.generate(PROMPT, 30, rng)
    first = next(stream)
    drawn_for_first = rng.calls
    assert first.finish is None and first.text == first.word  # the first token has no leading space
    assert 1 <= drawn_for_first <= 5
    second = next(stream)
    assert rng.calls > drawn_for_first
    assert second.text in (second.word, " " + second.word)
    rest = list(stream)
    assert rng.calls >= 2 + len(rest)


def test_backoff_to_shorter_contexts() -> None:
    m = ngram.NgramModel.train("the cat sat on the mat. a dog sat on the rug.", order=3)
    assert m.distribution(["on", "the"]) == {"mat": 1, "rug": 1}  # the trigram context
    assert m.distribution(["unseen", "the"]) == {"cat": 1, "mat": 1, "rug": 1}  # backs off to "the"
    # to the unigrams: 12 words, 2 periods and 2 sentence ends
    assert sum(m.distribution(["unseen", "words"]).values()) == 16
    assert ngram.detokenize(["a", "dog", "sat", ",", "then", "."]) == "a dog sat, then."


# --------------------------------------------------------------------------- the server, in process


@pytest.fixture()
def app_and_readers(model: ngram.NgramModel):
    import server
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mlobs import telemetry

    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tel = telemetry.setup(g.SERVICE_SERVER, views=g.VIEWS, span_exporter=spans, metric_readers=[reader],
                          set_global=False)
    service = server.ChatService(model, tel, server.Timing(token_delay=0.01, prefill_per_token=0.0, jitter=0.0),
                                 server.Faults())
    app = server.create_app(service, tel, admin_token="secret")
    yield app, service, spans, reader
    tel.shutdown()


def _points(reader) -> dict[str, list]:
    out: dict[str, list] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def test_server_streams_one_event_per_token_and_measures_it(app_and_readers) -> None:
    from fastapi.testclient import TestClient

    app, _, spans, reader = app_and_readers
    body = {"model": g.MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 10,
            "stream": True, "stream_options": {"include_usage": True}, "seed": 5}
    with TestClient(app) as client, client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    contents = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"] and
                "content" in c["choices"][0]["delta"]]
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == len(contents) >= 1  # one event per token
    assert usage["prompt_tokens"] == len(ngram.tokenize(PROMPT))

    (span,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert span.name == f"chat {g.MODEL}"
    a = span.attributes
    assert a[C.ATTR_GENAI_OPERATION_NAME] == "chat" and a[C.ATTR_GENAI_PROVIDER_NAME] == g.PROVIDER
    assert a[C.ATTR_GENAI_REQUEST_MODEL] == a[C.ATTR_GENAI_RESPONSE_MODEL] == g.MODEL
    assert a[g.ATTR_USAGE_OUTPUT_TOKENS] == len(contents) and a[g.ATTR_USAGE_INPUT_TOKENS] == usage["prompt_tokens"]
    assert C.ATTR_ERROR_TYPE not in a

    points = _points(reader)
    for name, buckets in g.BUCKETS.items():
        if name.startswith("gen_ai.server."):
            (point,) = points[name]
            assert tuple(point.explicit_bounds) == buckets, name
    (duration,) = points[C.GENAI_SERVER_REQUEST_DURATION]
    (ttft,) = points[C.GENAI_SERVER_TIME_TO_FIRST_TOKEN]
    assert ttft.sum < duration.sum
    if len(contents) > 1:  # real timing: the tokens after the first came 10 ms apart
        (tpot,) = points[C.GENAI_SERVER_TIME_PER_OUTPUT_TOKEN]
        assert 0.009 < tpot.sum < 0.05
        assert duration.sum >= 0.01 * (len(contents) - 1)


def test_server_refusal_and_stall_switches(app_and_readers) -> None:
    from fastapi.testclient import TestClient

    app, service, spans, reader = app_and_readers
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    with TestClient(app) as client:
        assert client.post("/admin/faults", json={"error_rate": 1}).status_code == 401
        r = client.post("/admin/faults", json={"error_rate": 1, "error_type": "overloaded"},
                        headers={"X-Admin-Token": "secret"})
        assert r.json()["error_rate"] == 1
        refused = client.post("/v1/chat/completions", json=body)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "overloaded"
        client.post("/admin/faults", json={"error_rate": 0, "stall_seconds": 0.3}, headers={"X-Admin-Token": "secret"})
        ok = client.post("/v1/chat/completions", json=body)
        assert ok.status_code == 200
        client.delete("/admin/faults", headers={"X-Admin-Token": "secret"})
    assert service.faults == type(service.faults)()

    failed = [s for s in spans.get_finished_spans() if s.attributes.get(C.ATTR_ERROR_TYPE)]
    assert len(failed) == 1 and failed[0].name == f"chat {g.MODEL}" and failed[0].status.status_code.name == "ERROR"
    points = _points(reader)
    errors = [p for p in points[C.GENAI_SERVER_REQUEST_DURATION] if p.attributes.get(C.ATTR_ERROR_TYPE)]
    assert [p.attributes[C.ATTR_ERROR_TYPE] for p in errors] == ["overloaded"]
    (ttft,) = points[C.GENAI_SERVER_TIME_TO_FIRST_TOKEN]  # successful requests only: the stalled one
    assert ttft.count == 1 and ttft.sum >= 0.3
