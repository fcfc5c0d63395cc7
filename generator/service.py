"""The sample ML inference service: FastAPI on uvicorn, instrumented as TELEMETRY.md says.

    python -m generator.service        # MLOBS_HOST (127.0.0.1), MLOBS_PORT (8000)

POST /predict (one row or a batch), POST /feedback (the true label, later), GET /healthz,
GET /readyz, GET /docs and /openapi.json, and /admin/faults to inject faults at run time.
A prediction goes through four stages, each a span and a ``ml.stage.duration`` sample:
validation, feature_extraction (with a downstream feature lookup, a CLIENT span),
inference and postprocessing. In the debug profile (``MLOBS_TRACE_DETAIL=true``), and for a
request that asks to be kept (``X-Mlobs-Debug: 1`` or the baggage entry ``mlobs.debug=1``), each
row also gets detail spans (``DETAIL_SPANS``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from opentelemetry import baggage, context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from generator.drift import DriftMonitor
from generator.faults import FaultChange, FaultState, InjectedError
from generator.feature_store import PEER_SERVICE, SimulatedFeatureStore
from generator.instruments import InferenceMetrics, model_attributes
from generator.model import (
    CLASS_NAMES,
    FAULT_ORIGIN,
    FEATURE_NAMES,
    MODEL_NAME,
    POSITIVE_CLASS,
    ModelRegistry,
    ModelVersion,
    latest_version,
    load_dataset,
    mark_rolled_back,
    model_dir,
    monitored_features,
    roll_back_fault_versions,
)
from generator.quality import Prediction, PredictionLog, RollingQuality, label_delay
from generator.telemetry import attach_baggage, setup_telemetry
from generator.train import train_version
from mlobs.contract import ATTR_BATCH_ID, ATTR_REQUEST_ID, SERVICE_INFERENCE
from mlobs.httperrors import validation_errors
from mlobs.telemetry import Telemetry, package_version

_log = logging.getLogger("generator.service")
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)
MAX_BATCH = 1000
# The largest measurement is about 4300 (worst_area); far beyond it the scaler overflows to inf and
# the model fails (a 500). A million is still accepted, and says "out of range" only to nonsense.
MAX_FEATURE_VALUE = 1e6
REGRESSION_SEED = 1
# Prometheus caps an exemplar's labels at 128 characters; trace_id and span_id take 63.
_MAX_EXEMPLAR_ID = 48

#: Detail spans, one per row: where its features came from (under ``feature_extraction``), and its
#: prediction (under ``postprocessing``). Only in the debug profile or for a request that asked to
#: be kept (``Telemetry.wants_detail``); TELEMETRY.md lists their attributes.
ROW_FEATURES_SPAN = "feature_extraction.row"
ROW_PREDICTION_SPAN = "postprocessing.row"
DETAIL_SPANS: tuple[str, ...] = (ROW_FEATURES_SPAN, ROW_PREDICTION_SPAN)
ATTR_ROW_INDEX = "ml.row.index"


# --------------------------------------------------------------------------- request models

# strict: a JSON true is not the number 1, nor "12.5" a number (the schema says number; lax mode coerced them).
Features = create_model(  # type: ignore[call-overload]
    "Features",
    __config__=ConfigDict(extra="forbid", allow_inf_nan=False, strict=True),
    **{
        name: (float | None, Field(None, ge=0, le=MAX_FEATURE_VALUE,
                                   description=f"{name.replace('_', ' ')} (0 to {MAX_FEATURE_VALUE:g})"))
        for name in FEATURE_NAMES
    },
)


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    patient_id: str | None = Field(
        None, pattern=ID_PATTERN, description="Fills the features the request leaves out from the feature store"
    )
    features: Features | None = None  # type: ignore[valid-type]


class PredictRequest(BaseModel):
    """One row (``features``, ``patient_id``) or a batch (``instances``, ``batch_id``)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"patient_id": "P00042", "features": {"mean_radius": 17.99, "mean_texture": 10.38}},
                {"batch_id": "nightly-2026-11-24", "instances": [{"patient_id": "P00001"}]},
            ]
        },
    )

    patient_id: str | None = Field(None, pattern=ID_PATTERN)
    features: Features | None = None  # type: ignore[valid-type]
    instances: list[Instance] | None = Field(None, min_length=1, max_length=MAX_BATCH)
    batch_id: str | None = Field(None, pattern=ID_PATTERN, max_length=40)


class PredictionOut(BaseModel):
    index: int
    class_: str = Field(alias="class")
    confidence: float
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    request_id: str
    batch_id: str | None
    model_name: str
    model_version: str
    predictions: list[PredictionOut]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(pattern=ID_PATTERN, description="X-Request-ID of the prediction")
    index: int = Field(0, ge=0, lt=MAX_BATCH, strict=False, description="row of a batch (0 for one row)")
    label: Literal["malignant", "benign"]

    @field_validator("index", mode="before")
    @classmethod
    def _a_json_integer(cls, v: Any) -> Any:
        # {"index": false} is not row 0, nor "3" row 3 (lax mode coerced both); 3.0 is an integer in
        # JSON Schema, so it stays row 3 (and 3.5 is refused by the int itself)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise PydanticCustomError("int_type", "Input should be a valid integer")
        return v


class ErrorBody(BaseModel):
    detail: str


class ValidationErrorBody(BaseModel):
    detail: list[dict[str, Any]]
    request_id: str


def _upto_pattern(last: int, width: int) -> str:
    """A regular expression of the zero-padded numbers 0 to ``last``: ``_upto_pattern(568, 5)``
    matches 00000 to 00568."""
    top = f"{last:0{width}d}"
    alternatives = [top[:i] + (f"[0-{int(d) - 1}]" if d > "1" else "0") + "[0-9]" * (width - i - 1)
                    for i, d in enumerate(top) if d != "0"]
    return "(?:" + "|".join([*alternatives, top]) + ")"


def _predict_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The request body of POST /predict as validation enforces it: exactly one of a row
    (``PredictRow``) or a batch (``PredictBatch``, ``instances`` of rows); a row either has all 30
    features, or a ``patient_id`` of the feature store, which fills the features it leaves out."""
    ref = "#/components/schemas/{model}"
    schema = PredictRequest.model_json_schema(ref_template=ref)
    defs = schema.pop("$defs", {})
    props = schema["properties"]
    complete = {
        "type": "object", "additionalProperties": False, "required": list(FEATURE_NAMES),
        "description": "All 30 features (a row without a patient_id of the feature store)",
        "properties": {n: next(a for a in f["anyOf"] if a.get("type") == "number")
                       for n, f in defs["Features"]["properties"].items()},
    }
    stored_id = f"^P{_upto_pattern(len(load_dataset().features) - 1, 5)}$"  # feature_store.patient_id
    # each alternative a whole object schema (nothing to merge: generators canonicalize it as written)
    with_features = {
        "type": "object", "additionalProperties": False, "required": ["features"], "title": "RowWithFeatures",
        "description": "A row with all 30 features (its patient_id, if any, needs no stored features)",
        "properties": {"patient_id": props["patient_id"], "features": {"$ref": ref.format(model="CompleteFeatures")}},
    }
    of_stored_patient = {
        "type": "object", "additionalProperties": False, "required": ["patient_id"], "title": "RowOfStoredPatient",
        "description": "A patient of the feature store, whose stored features fill those the row leaves out",
        "properties": {"patient_id": {"type": "string", "pattern": stored_id}, "features": props["features"]},
    }
    row = {"title": "PredictRow", "description": "One row: its features, and/or a patient of the feature store",
           "anyOf": [{"$ref": ref.format(model="RowWithFeatures")}, {"$ref": ref.format(model="RowOfStoredPatient")}]}
    batch = {"type": "object", "additionalProperties": False, "title": "PredictBatch", "required": ["instances"],
             "description": "A batch of rows", "properties": {
                 "instances": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                               "items": {"$ref": ref.format(model="PredictRow")}},
                 "batch_id": props["batch_id"]}}
    defs.update({"CompleteFeatures": complete, "RowWithFeatures": with_features,
                 "RowOfStoredPatient": of_stored_patient, "PredictRow": row, "PredictBatch": batch})
    schema = {"title": schema["title"], "description": schema["description"], "examples": schema["examples"],
              "oneOf": [{"$ref": ref.format(model="PredictRow")}, {"$ref": ref.format(model="PredictBatch")}]}
    return schema, defs


_PREDICT_SCHEMA, _PREDICT_DEFS = _predict_schema()


class InvalidInput(Exception):
    """Input the service refuses with a 422; ``errors`` name each offending field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))

    @property
    def fields(self) -> list[str]:
        return [".".join(str(part) for part in e["loc"][1:]) for e in self.errors]


def _invalid(loc: list[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def parse_predict_request(raw: bytes) -> PredictRequest:
    """The validation stage: JSON, then the schema, then the rules the schema cannot say."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput([_invalid([], f"body is not valid JSON: {exc}", "json_invalid")]) from None
    try:
        parsed = PredictRequest.model_validate(data)
    except ValidationError as exc:
        errors = [
            _invalid(list(e["loc"]), e["msg"], e["type"])
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise InvalidInput(errors) from None
    if parsed.instances is not None:
        if parsed.features is not None or parsed.patient_id is not None:
            raise InvalidInput(
                [_invalid(["instances"], "send either one row (features, patient_id) or instances, not both")]
            )
    else:
        if parsed.batch_id is not None:
            raise InvalidInput([_invalid(["batch_id"], "batch_id belongs to a batch: send instances")])
        if parsed.features is None and parsed.patient_id is None:
            raise InvalidInput([_invalid(["features"], "Field required: features, patient_id or instances")])
    return parsed


# --------------------------------------------------------------------------- the service


@dataclass
class _Row:
    patient_id: str | None
    features: dict[str, float]


class InferenceService:
    """Everything a request needs; one per app."""

    def __init__(
        self,
        telemetry: Telemetry,
        directory: Path,
        poll_seconds: float,
        admin_token: str | None,
        store: SimulatedFeatureStore,
    ) -> None:
        self.telemetry = telemetry
        self.directory = directory
        self.poll_seconds = poll_seconds
        self.admin_token = admin_token
        self.store = store
        self.tracer = telemetry.get_tracer("generator.service")
        self.drift = DriftMonitor(monitored_features())
        self.quality = RollingQuality(POSITIVE_CLASS)
        self.predictions = PredictionLog()
        self.faults = FaultState(on_regression=self._regression)
        self.registry = ModelRegistry(directory, self.tracer, on_deploy=self._deployed)
        self.metrics = InferenceMetrics(
            telemetry.get_meter("generator.service"),
            lambda: self.registry.current,
            self.drift,
            self.quality,
            self.faults,
        )
        self._regression_version: int | None = None

    # ---- lifecycle

    def start(self) -> None:
        """Serve the newest version, training version 1 first on a fresh clone."""
        if rolled_back := roll_back_fault_versions(self.directory):
            _log.info("rolled back versions %s left by a regression fault before a restart", rolled_back)
        if latest_version(self.directory) is None:
            _log.info("no model in %s: training version 1", self.directory)
            train_version(self.directory, self.telemetry, seed=0)
        self.registry.poll()
        self.registry.start_watching(self.poll_seconds)

    def stop(self) -> None:
        self.registry.stop_watching()

    def _deployed(self, model: ModelVersion, previous: ModelVersion | None) -> None:
        self.drift.set_references(model.references)
        self.metrics.deployments.add(1, model_attributes(model))

    def _regression(self, enabled: bool) -> None:
        if enabled:
            # A fixed seed makes the regression the same every time: accuracy about 0.78, F1 0.57.
            result = train_version(
                self.directory, self.telemetry, seed=REGRESSION_SEED, degraded=True, origin=FAULT_ORIGIN
            )
            self._regression_version = result.version
            self.registry.poll()  # the newest version now: deployed here or by the watcher, once
        else:
            if self._regression_version is not None:
                mark_rolled_back(self.directory, self._regression_version)
                self._regression_version = None
            self.registry.poll()

    # ---- stages

    @asynccontextmanager
    async def stage(self, name: str, exemplar: dict[str, str]) -> AsyncIterator[trace.Span]:
        started = time.perf_counter()
        with self.tracer.start_as_current_span(name, attributes={"ml.stage": name}) as span:
            try:
                delay = self.faults.stage_delay(name)
                if delay:
                    await asyncio.sleep(delay)
                self.faults.maybe_fail(name)
                yield span
            except Exception as exc:
                # Failed before the duration is recorded (the span's exit would say so only after):
                # the exemplar filter sees a failed span, whose trace the tail sampler keeps.
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                attrs = model_attributes(self.registry.current) | {"ml.stage": name} | exemplar
                self.metrics.stage_duration.record(time.perf_counter() - started, attrs)

    @contextmanager
    def detail_span(self, name: str, detail: bool, attributes: Mapping[str, Any]) -> Iterator[trace.Span]:
        """A detail span where ``detail`` says so, else a span that records nothing."""
        if not detail:
            yield trace.INVALID_SPAN
            return
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    async def extract_features(self, request: PredictRequest) -> tuple[np.ndarray, list[dict[str, float]]]:
        single = request.instances is None
        instances = (
            [Instance(patient_id=request.patient_id, features=request.features)] if single else request.instances
        )
        rows = [
            _Row(inst.patient_id, inst.features.model_dump(exclude_none=True) if inst.features else {})
            for inst in instances or []
        ]
        ids = sorted({r.patient_id for r in rows if r.patient_id})
        stored: dict[str, dict[str, float]] = {}
        if ids:
            with self.tracer.start_as_current_span(
                "feature_lookup",
                kind=SpanKind.CLIENT,
                attributes={"peer.service": PEER_SERVICE, "ml.feature_store.keys": len(ids)},
            ) as span:
                stored = await self.store.lookup(ids, extra_delay=self.faults.lookup_delay())
                span.set_attribute("ml.feature_store.hits", len(stored))

        errors = []
        complete: list[dict[str, float]] = []
        detail = self.telemetry.wants_detail()
        for i, row in enumerate(rows):
            with self.detail_span(ROW_FEATURES_SPAN, detail, {ATTR_ROW_INDEX: i}) as span:
                from_store = stored.get(row.patient_id or "", {})
                merged = {**from_store, **row.features}
                missing = [name for name in FEATURE_NAMES if name not in merged]
                where: list[str | int] = ["features"] if single else ["instances", i, "features"]
                errors += [
                    _invalid(
                        [*where, name],
                        "Field required: not in the request"
                        + (f" and not in the feature store for patient {row.patient_id}" if row.patient_id else ""),
                        "missing",
                    )
                    for name in missing
                ]
                complete.append(merged)
                span.set_attributes(
                    {
                        "ml.features.from_request": len(row.features),
                        "ml.features.from_store": len(from_store.keys() - row.features.keys()),
                        "ml.features.missing": len(missing),
                    }
                    | ({"ml.feature_store.hit": row.patient_id in stored} if row.patient_id else {})
                )
        if errors:
            raise InvalidInput(errors)

        for feature, scale in self.faults.drift_scale().items():
            for row_values in complete:
                row_values[feature] *= scale
        matrix = np.array([[row[name] for name in FEATURE_NAMES] for row in complete], dtype=float)
        return matrix, complete

    def record_features(self, rows: list[dict[str, float]], model: ModelVersion) -> None:
        attrs = model_attributes(model)
        for row in rows:
            for feature in self.drift.features:
                self.metrics.feature_value.record(row[feature], attrs | {"ml.feature": feature})
            self.drift.observe(row)

    # ---- endpoints

    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id = _current_request_id()
        server_span = trace.get_current_span()
        model = self.registry.current
        if model is None:
            return JSONResponse({"detail": "no model loaded yet", "request_id": request_id}, status_code=503)
        model_attrs = model_attributes(model)
        server_span.set_attributes(model_attrs)
        exemplar = {ATTR_REQUEST_ID: request_id} if len(request_id) <= _MAX_EXEMPLAR_ID else {}
        outcome = "success"
        token = None
        try:
            async with self.stage("validation", exemplar) as span:
                try:
                    parsed = parse_predict_request(await request.body())
                except InvalidInput as exc:
                    span.set_attribute("error.type", "invalid_input")
                    _log.warning("invalid input: %s", exc, extra={"error.fields": exc.fields})
                    raise
            if parsed.instances is not None:
                batch_id = parsed.batch_id or uuid.uuid4().hex
                server_span.set_attributes({ATTR_BATCH_ID: batch_id, "ml.batch.size": len(parsed.instances)})
                token = attach_baggage([(ATTR_BATCH_ID, batch_id)])
                exemplar = {ATTR_BATCH_ID: batch_id}
            else:
                batch_id = None

            async with self.stage("feature_extraction", exemplar) as span:
                try:
                    matrix, rows = await self.extract_features(parsed)
                except InvalidInput as exc:
                    _log.warning("invalid input: %s", exc, extra={"error.fields": exc.fields})
                    raise
                self.record_features(rows, model)

            async with self.stage("inference", exemplar) as span:
                span.set_attributes(model_attrs | {"ml.inference.rows": len(rows)})
                probabilities = model.predict_proba(matrix)

            async with self.stage("postprocessing", exemplar):
                body = self.postprocess(request_id, batch_id, model, probabilities)

            top = body["predictions"][0]
            _log.info(
                "predicted %s with confidence %.3f",
                top["class"],
                top["confidence"],
                extra=model_attrs
                | {"ml.prediction.class": top["class"], "ml.prediction.count": len(body["predictions"])},
            )
            return JSONResponse(body)
        except InvalidInput as exc:
            outcome = "invalid"
            return JSONResponse(
                {"detail": exc.errors, "request_id": request_id},
                status_code=422,
            )
        except InjectedError as exc:
            outcome = "error"
            _log.error("prediction failed: %s", exc, extra=model_attrs | {"error.type": "InjectedError"})
            return JSONResponse({"detail": str(exc), "request_id": request_id}, status_code=500)
        except Exception as exc:
            outcome = "error"
            server_span.record_exception(exc)
            _log.exception("prediction failed", extra=model_attrs | {"error.type": type(exc).__name__})
            return JSONResponse({"detail": "internal error", "request_id": request_id}, status_code=500)
        finally:
            # A 422 is the client's fault: the validation span is the error, the server span is not.
            if outcome == "error":
                server_span.set_status(Status(StatusCode.ERROR, "prediction failed"))
            self.metrics.request_duration.record(
                time.perf_counter() - started, model_attrs | {"outcome": outcome} | exemplar
            )
            if token is not None:
                context.detach(token)

    def postprocess(
        self, request_id: str, batch_id: str | None, model: ModelVersion, probabilities: np.ndarray
    ) -> dict[str, Any]:
        attrs = model_attributes(model)
        now = time.time()
        winners = probabilities.argmax(axis=1)
        out = []
        detail = self.telemetry.wants_detail()
        for index, (row, winner) in enumerate(zip(probabilities, winners, strict=True)):
            label = CLASS_NAMES[int(winner)]
            confidence = float(row[winner])
            with self.detail_span(
                ROW_PREDICTION_SPAN,
                detail,
                {ATTR_ROW_INDEX: index, "ml.prediction.class": label, "ml.prediction.confidence": confidence},
            ):
                self.metrics.predictions.add(1, attrs | {"ml.prediction.class": label})
                self.metrics.confidence.record(confidence, attrs)
                self.predictions.remember(request_id, index, Prediction(label, model.version, now))
            out.append(
                {
                    "index": index,
                    "class": label,
                    "confidence": round(confidence, 6),
                    "probabilities": {c: round(float(p), 6) for c, p in zip(CLASS_NAMES, row, strict=True)},
                }
            )
        return {
            "request_id": request_id,
            "batch_id": batch_id,
            "model_name": MODEL_NAME,
            "model_version": model.version,
            "predictions": out,
        }

    def feedback(self, body: FeedbackRequest) -> JSONResponse:
        span = trace.get_current_span()
        # The feedback span and its logs carry the id of the request the label belongs to.
        span.set_attribute(ATTR_REQUEST_ID, body.request_id)
        token = attach_baggage([(ATTR_REQUEST_ID, body.request_id)])
        try:
            prediction = self.predictions.take(body.request_id, body.index)
            if prediction is None:
                _log.warning(
                    "feedback for an unknown or already labelled prediction",
                    extra={"ml.feedback.index": body.index},
                )
                return JSONResponse(
                    {"detail": f"no prediction awaiting a label for request {body.request_id} row {body.index}"},
                    status_code=404,
                )
            delay = label_delay(prediction)
            attrs = {"ml.model.name": MODEL_NAME, "ml.model.version": prediction.model_version}
            self.quality.add(prediction.model_version, body.label, prediction.predicted)
            self.metrics.feedback_labels.add(1, attrs)
            self.metrics.feedback_delay.record(delay, attrs)
            correct = body.label == prediction.predicted
            span.set_attributes(attrs | {"ml.feedback.correct": correct})
            _log.info(
                "feedback label %s for prediction %s",
                body.label,
                prediction.predicted,
                extra=attrs | {"ml.feedback.correct": correct, "ml.feedback.delay_seconds": round(delay, 3)},
            )
            return JSONResponse(
                {
                    "request_id": body.request_id,
                    "index": body.index,
                    "label": body.label,
                    "predicted": prediction.predicted,
                    "correct": correct,
                    "model_version": prediction.model_version,
                    "delay_seconds": round(delay, 3),
                }
            )
        finally:
            context.detach(token)


def _current_request_id() -> str:
    value = baggage.get_baggage(ATTR_REQUEST_ID)
    return str(value) if value else uuid.uuid4().hex


class RequestIdMiddleware:
    """Take ``X-Request-ID`` (or make one), put it on the server span and in the baggage,
    and return it in the response header."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
                break
        if not _ID_RE.match(request_id):
            request_id = str(uuid.uuid4())
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(ATTR_REQUEST_ID, request_id)
        token = attach_baggage([(ATTR_REQUEST_ID, request_id)])
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            context.detach(token)


# --------------------------------------------------------------------------- the app


def create_app(
    telemetry: Telemetry,
    *,
    directory: Path | None = None,
    poll_seconds: float | None = None,
    admin_token: str | None = None,
    store: SimulatedFeatureStore | None = None,
) -> FastAPI:
    """Build the app. Unset arguments come from MLOBS_MODEL_DIR, MLOBS_MODEL_POLL_SECONDS (5),
    MLOBS_ADMIN_TOKEN (admin endpoints refuse every call while it is unset)."""
    service = InferenceService(
        telemetry=telemetry,
        directory=directory or model_dir(),
        poll_seconds=float(os.environ.get("MLOBS_MODEL_POLL_SECONDS", "5")) if poll_seconds is None else poll_seconds,
        admin_token=admin_token if admin_token is not None else os.environ.get("MLOBS_ADMIN_TOKEN") or None,
        store=store or SimulatedFeatureStore(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        yield
        await run_in_threadpool(service.stop)

    app = FastAPI(
        title="mlobs sample inference service",
        version=package_version(),
        description=f"Classifies breast tumour measurements with `{MODEL_NAME}`; see generator/TELEMETRY.md.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own body validation (feedback, admin): an error span and a warning, then 422."""
        errors = validation_errors(exc.errors())
        with service.tracer.start_as_current_span("validation", attributes={"ml.stage": "validation"}) as span:
            span.set_attribute("error.type", "invalid_input")
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, "invalid input"))
            fields = [".".join(str(p) for p in e.get("loc", ())[1:]) for e in errors]
            _log.warning("invalid input on %s: %s", request.url.path, fields, extra={"error.fields": fields})
        return JSONResponse({"detail": errors, "request_id": _current_request_id()}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's own errors, made to say what they are about: a body that cannot be decoded is a
        422 naming the body (FastAPI answers 400 without a field), and a 405 lists in ``Allow`` every
        method of the path (Starlette lists those of the first route that matched it only)."""
        cause = exc.__cause__
        if exc.status_code == 400 and cause is not None:
            errors = [{"loc": ["body"], "msg": f"body is not valid JSON: {type(cause).__name__}: {cause}",
                       "type": "json_invalid"}]
            return await invalid_body(request, RequestValidationError(errors))
        if exc.status_code == 405:
            allowed = sorted({m for route in app.router.routes
                              if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
                              for m in route.methods or ()})
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
        return await http_exception_handler(request, exc)

    @app.post(
        "/predict",
        tags=["inference"],
        summary="Classify one row or a batch",
        response_model=None,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _PREDICT_SCHEMA}}}},
        responses={
            200: {"model": PredictResponse, "description": "Predictions"},
            422: {"model": ValidationErrorBody, "description": "Invalid input; `detail[].loc` names the field"},
            500: {"description": "Prediction failed (an injected fault, or a bug)"},
        },
    )
    async def predict(request: Request) -> JSONResponse:
        """Features the request leaves out are looked up in the feature store by ``patient_id``."""
        return await service.predict(request)

    @app.post(
        "/feedback",
        tags=["inference"],
        summary="The true label of an earlier prediction",
        responses={404: {"model": ErrorBody, "description": "No prediction awaits a label for that id"}},
    )
    async def feedback(body: FeedbackRequest) -> JSONResponse:
        return service.feedback(body)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: a model is loaded")
    async def readyz() -> JSONResponse:
        model = service.registry.current
        if model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "model_name": MODEL_NAME, "model_version": model.version})

    def require_admin(x_admin_token: str | None = Header(None)) -> None:
        if not service.admin_token:
            raise HTTPException(
                403,
                "admin endpoints are disabled: set MLOBS_ADMIN_TOKEN in the service's environment "
                "and send the same value in the X-Admin-Token header",
            )
        # constant time, on bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500)
        if not x_admin_token or not hmac.compare_digest(x_admin_token.encode(), service.admin_token.encode()):
            raise HTTPException(401, "missing or wrong X-Admin-Token header")

    admin = [Depends(require_admin)]
    admin_errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "Missing or wrong X-Admin-Token header"},
        403: {"model": ErrorBody, "description": "Admin endpoints disabled: MLOBS_ADMIN_TOKEN is not set"},
    }

    @app.get("/admin/faults", tags=["admin"], dependencies=admin, summary="Faults switched on now",
             responses=admin_errors)
    def list_faults() -> dict[str, Any]:
        return {"active": service.faults.snapshot()}

    @app.post("/admin/faults", tags=["admin"], dependencies=admin, summary="Switch one fault on or off",
              responses=admin_errors)
    def change_fault(change: FaultChange) -> dict[str, Any]:
        return {"active": service.faults.apply(change)}

    @app.delete("/admin/faults", tags=["admin"], dependencies=admin, summary="Switch every fault off",
                responses=admin_errors)
    def clear_faults() -> dict[str, Any]:
        return {"active": service.faults.clear()}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_PREDICT_DEFS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # Server spans, and the keep marker (X-Mlobs-Debug, mlobs.debug baggage) inside them.
    telemetry.instrument_fastapi(
        app,
        excluded_urls=os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "healthz,readyz"),
        exclude_spans=["receive", "send"],
    )
    return app


def main() -> None:
    import uvicorn

    telemetry = setup_telemetry(SERVICE_INFERENCE, system_metrics=True)
    try:
        app = create_app(telemetry)
        uvicorn.run(
            app,
            host=os.environ.get("MLOBS_HOST", "127.0.0.1"),
            port=int(os.environ.get("MLOBS_PORT", "8000")),
            log_config=None,  # our JSON handlers on the root logger
            access_log=False,  # the server span already records every request
        )
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
