"""A small model service with no telemetry code at all.

An iris classifier (scikit-learn, trained at start on the dataset that ships with scikit-learn)
served by FastAPI. Traces, metrics and logs come from ``opentelemetry-instrument`` and the
``OTEL_*`` variables alone (see README.md): nothing in this file imports OpenTelemetry.

Endpoints
    POST /score        {"rows": [[sepal length, sepal width, petal length, petal width], ...]}
    GET  /healthz      the process is up and the model is trained
    POST /admin/fault  change the injected fault at run time (header X-Admin-Token); DELETE clears it.
                       Off unless EXAMPLE_ADMIN_TOKEN is set.

Environment
    EXAMPLE_HOST / EXAMPLE_PORT   where to listen (default 127.0.0.1:9000)
    EXAMPLE_FAIL_RATE             share of /score calls that fail with a 500 (default 0)
    EXAMPLE_DELAY_SECONDS         added to every /score call (default 0)
    EXAMPLE_ADMIN_TOKEN           enables /admin/fault; compared in constant time
"""

from __future__ import annotations

import hmac
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, Field
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MODEL_NAME = "iris-classifier"
MODEL_VERSION = "1"

log = logging.getLogger("fastapi_model")
log.setLevel(logging.INFO)  # the root logger's WARNING would drop the INFO lines


@dataclass
class Fault:
    """What goes wrong in /score: a share of failed calls, and added latency."""

    fail_rate: float = 0.0
    delay_seconds: float = 0.0


class FaultChange(BaseModel):
    fail_rate: float = Field(0.0, ge=0.0, le=1.0)
    delay_seconds: float = Field(0.0, ge=0.0, le=30.0)


Row = Annotated[list[float], Field(min_length=4, max_length=4)]


class ScoreRequest(BaseModel):
    rows: list[Row] = Field(
        min_length=1, max_length=1000, description="sepal length, sepal width, petal length, petal width (cm)"
    )


class Prediction(BaseModel):
    label: str
    probability: float


class ScoreResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction]


class ScoringError(RuntimeError):
    """The injected failure: what a broken model backend looks like to the caller."""


def _env_float(name: str) -> float:
    try:
        return float(os.environ.get(name, "0") or 0)
    except ValueError as err:
        raise SystemExit(f"{name} must be a number, got {os.environ[name]!r}") from err


def train() -> tuple[object, list[str], float]:
    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(x_train, y_train)
    return model, [str(name) for name in data.target_names], float(model.score(x_test, y_test))


def create_app() -> FastAPI:
    model, labels, accuracy = train()
    log.info("model %s v%s trained: test accuracy %.3f", MODEL_NAME, MODEL_VERSION, accuracy,
             extra={"model.name": MODEL_NAME, "model.version": MODEL_VERSION, "model.accuracy": accuracy})
    fault = Fault(_env_float("EXAMPLE_FAIL_RATE"), _env_float("EXAMPLE_DELAY_SECONDS"))
    lock = threading.Lock()
    chance = random.Random()
    admin_token = os.environ.get("EXAMPLE_ADMIN_TOKEN", "")

    app = FastAPI(title="fastapi-model", version=MODEL_VERSION)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "model": MODEL_NAME, "version": MODEL_VERSION}

    @app.post("/score", response_model=ScoreResponse)
    def score(request: ScoreRequest) -> ScoreResponse:
        with lock:
            now = Fault(**asdict(fault))
        if now.delay_seconds:
            time.sleep(now.delay_seconds)
        try:
            if now.fail_rate and chance.random() < now.fail_rate:
                raise ScoringError("model backend unavailable")
            probabilities = model.predict_proba(np.asarray(request.rows, dtype=float))
        except ScoringError:
            log.exception("scoring failed for %d rows", len(request.rows), extra={"rows": len(request.rows)})
            raise HTTPException(status_code=500, detail="scoring failed") from None
        best = probabilities.argmax(axis=1)
        predictions = [Prediction(label=labels[i], probability=round(float(p[i]), 4))
                       for i, p in zip(best, probabilities, strict=True)]
        log.info("scored %d rows", len(predictions),
                 extra={"rows": len(predictions), "model.name": MODEL_NAME, "model.version": MODEL_VERSION})
        return ScoreResponse(model=MODEL_NAME, version=MODEL_VERSION, predictions=predictions)

    def authorize(x_admin_token: Annotated[str | None, Header()] = None) -> None:
        """Before the body is read: a caller without the token learns nothing of the endpoint."""
        if not admin_token:
            raise HTTPException(status_code=404, detail="admin endpoint disabled (set EXAMPLE_ADMIN_TOKEN)")
        if not x_admin_token or not hmac.compare_digest(x_admin_token.encode(), admin_token.encode()):
            raise HTTPException(status_code=403, detail="bad or missing X-Admin-Token")

    @app.post("/admin/fault", dependencies=[Depends(authorize)])
    def set_fault(change: FaultChange) -> dict[str, float]:
        with lock:
            fault.fail_rate, fault.delay_seconds = change.fail_rate, change.delay_seconds
            current = asdict(fault)
        log.warning("fault changed: %s", current, extra={f"fault.{k}": v for k, v in current.items()})
        return current

    @app.delete("/admin/fault", dependencies=[Depends(authorize)])
    def clear_fault() -> dict[str, float]:
        with lock:
            fault.fail_rate, fault.delay_seconds = 0.0, 0.0
            current = asdict(fault)
        log.warning("fault cleared", extra={f"fault.{k}": v for k, v in current.items()})
        return current

    return app


def main() -> None:
    import uvicorn

    if not logging.getLogger().handlers:  # run without opentelemetry-instrument: plain console logs
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(), host=os.environ.get("EXAMPLE_HOST", "127.0.0.1"),
                port=int(os.environ.get("EXAMPLE_PORT", "9000")))


if __name__ == "__main__":
    main()
