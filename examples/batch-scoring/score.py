"""A batch scoring job that carries a batch id through its traces, logs and exemplars.

It trains a regressor on the diabetes dataset that ships with scikit-learn (nothing downloaded),
reads the rows to score (a CSV with the dataset's feature columns, or by default the held-out rows
of the dataset), and scores them in batches. Every batch has an id, ``<run id>-<batch number>``:

* traces: each batch is one trace, a root span ``score batch`` with the child spans
  ``prepare features``, ``predict`` and ``write predictions``; every span carries ``ml.batch.id``;
* logs: every record written during a batch carries ``ml.batch.id`` (from the baggage) and the
  trace and span id of the span it was written in (JSON on stderr, and OTLP records);
* metrics: the histogram ``ml.batch.duration`` is recorded inside the batch's root span, so its
  exemplar names that batch's trace; the batch id is dropped from the series by a view and kept on
  the exemplar (Prometheus keeps it as the exemplar label ``ml.batch.id``). ``ml.batch.rows``
  counts the rows scored.

The exporters follow the standard ``OTEL_*`` variables (:mod:`mlobs.telemetry`). One JSON line per
batch on stdout names its id, trace id and rows, for a look-up in the trace store.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry import baggage, context, trace
from opentelemetry.metrics import Counter, Histogram
from opentelemetry.sdk.metrics.view import View
from opentelemetry.trace import Status, StatusCode
from sklearn.datasets import load_diabetes
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.model_selection import train_test_split

from mlobs import telemetry
from mlobs.contract import ATTR_BATCH_ID, ATTR_MODEL_NAME, ATTR_MODEL_VERSION, ATTR_OUTCOME

SERVICE_NAME = "batch-scoring"
MODEL_NAME = "diabetes-progression"
MODEL_VERSION = "1"
BATCH_DURATION = "ml.batch.duration"
BATCH_ROWS = "ml.batch.rows"
ATTR_BATCH_SIZE = "ml.batch.size"
ATTR_BATCH_INDEX = "ml.batch.index"
#: The series of the batch metrics keep these; the batch id lives on the exemplars only.
SERIES_ATTRIBUTES = {ATTR_MODEL_NAME, ATTR_MODEL_VERSION, ATTR_OUTCOME}

log = logging.getLogger("batch_scoring")


def train() -> tuple[GradientBoostingRegressor, list[str], np.ndarray]:
    """The model, the feature names, and the held-out rows (the default input)."""
    data = load_diabetes()
    x_train, x_test, y_train, _ = train_test_split(data.data, data.target, test_size=0.25, random_state=0)
    model = GradientBoostingRegressor(random_state=0).fit(x_train, y_train)
    return model, [str(name) for name in data.feature_names], x_test


def read_rows(path: Path | None, features: Sequence[str], default: np.ndarray) -> list[list[str]]:
    """The rows to score as text, in the model's feature order (bad values are judged per batch)."""
    if path is None:
        return [[repr(float(v)) for v in row] for row in default]
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [name for name in features if name not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{path}: missing column(s) {', '.join(missing)}")
        return [[row[name] for name in features] for row in reader]


def batches(rows: list[list[str]], size: int) -> Iterator[list[list[str]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def parse(rows: list[list[str]]) -> tuple[np.ndarray, list[int]]:
    """The rows that are all finite numbers, as a matrix, and their positions in ``rows``."""
    good, positions = [], []
    for position, row in enumerate(rows):
        try:
            values = [float(v) for v in row]
        except ValueError:
            continue
        if all(math.isfinite(v) for v in values):
            good.append(values)
            positions.append(position)
    return np.asarray(good, dtype=float).reshape(len(good), len(rows[0]) if rows else 0), positions


def score_batch(tracer: trace.Tracer, model: GradientBoostingRegressor, chunk: list[list[str]], batch_id: str,
                index: int, first_row: int, out: Any, duration: Histogram, scored: Counter) -> tuple[str, str]:
    """Score one batch in a trace of its own; returns its trace id and outcome (ok or error)."""
    model_attrs = {ATTR_MODEL_NAME: MODEL_NAME, ATTR_MODEL_VERSION: MODEL_VERSION}
    span_attrs = {ATTR_BATCH_ID: batch_id, ATTR_BATCH_INDEX: index, ATTR_BATCH_SIZE: len(chunk), **model_attrs}
    start = time.perf_counter()
    # No span is current here, so this is the root of a new trace: one trace per batch.
    with tracer.start_as_current_span("score batch", attributes=span_attrs) as span:
        outcome = "ok"
        try:
            with tracer.start_as_current_span("prepare features", attributes=span_attrs) as prep:
                matrix, positions = parse(chunk)
                bad = len(chunk) - len(positions)
                prep.set_attribute("ml.batch.invalid_rows", bad)
                if bad:
                    log.warning("%d of %d rows are not numbers: skipped", bad, len(chunk))
            with tracer.start_as_current_span("predict", attributes=span_attrs):
                predictions = model.predict(matrix) if len(matrix) else np.empty(0)
            with tracer.start_as_current_span("write predictions", attributes=span_attrs):
                if out is not None:
                    for position, value in zip(positions, predictions, strict=True):
                        out.writerow([batch_id, first_row + position, f"{value:.3f}"])
            scored.add(len(predictions), {**model_attrs, ATTR_OUTCOME: "ok", ATTR_BATCH_ID: batch_id})
            if bad:
                scored.add(bad, {**model_attrs, ATTR_OUTCOME: "invalid", ATTR_BATCH_ID: batch_id})
            mean = float(predictions.mean()) if len(predictions) else math.nan
            log.info("batch %s scored: %d rows, mean prediction %.1f", batch_id, len(predictions), mean,
                     extra={ATTR_BATCH_SIZE: len(chunk), "ml.batch.invalid_rows": bad})
        except Exception as exc:
            outcome = "error"
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            log.exception("batch %s failed", batch_id)
        finally:
            # Inside the batch's span: the exemplar carries this batch's trace and span id.
            elapsed = time.perf_counter() - start
            duration.record(elapsed, {**model_attrs, ATTR_OUTCOME: outcome, ATTR_BATCH_ID: batch_id})
        return trace.format_trace_id(span.get_span_context().trace_id), outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, help="CSV with the diabetes feature columns (default: held-out rows)")
    parser.add_argument("--output", type=Path, help="write the predictions here (CSV)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--run-id", default="", help="prefix of the batch ids (default: generated)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    run_id = args.run_id or f"run-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"

    tel = telemetry.setup(
        SERVICE_NAME,
        views=[View(instrument_name=name, attribute_keys=SERIES_ATTRIBUTES) for name in (BATCH_DURATION, BATCH_ROWS)],
        baggage_keys=(ATTR_BATCH_ID,),
        service_version=MODEL_VERSION,
    )
    duration = tel.meter.create_histogram(BATCH_DURATION, unit="s", description="Time to score one batch")
    scored = tel.meter.create_counter(BATCH_ROWS, unit="{row}", description="Rows scored, by outcome")
    failed = 0
    try:
        model, features, held_out = train()
        rows = read_rows(args.input, features, held_out)
        log.info("scoring %d rows in batches of %d", len(rows), args.batch_size, extra={"ml.batch.run_id": run_id})
        with contextlib.ExitStack() as files:
            out = csv.writer(files.enter_context(args.output.open("w", newline=""))) if args.output else None
            if out:
                out.writerow(["batch_id", "row", "prediction"])  # row: its number in the input
            for index, chunk in enumerate(batches(rows, args.batch_size)):
                batch_id = f"{run_id}-{index:04d}"
                # The id in the baggage: every log record of the batch carries it (baggage_keys above).
                token = context.attach(baggage.set_baggage(ATTR_BATCH_ID, batch_id))
                try:
                    trace_id, outcome = score_batch(
                        tel.tracer, model, chunk, batch_id, index, index * args.batch_size, out, duration, scored
                    )
                finally:
                    context.detach(token)
                failed += outcome == "error"
                print(json.dumps({"batch_id": batch_id, "trace_id": trace_id, "rows": len(chunk), "outcome": outcome}),
                      flush=True)
        log.info("run %s done: %d rows, %d failed batches", run_id, len(rows), failed,
                 extra={"ml.batch.run_id": run_id})
    finally:
        tel.shutdown()  # flushes the last spans, metrics (with their exemplars) and logs
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
