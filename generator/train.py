"""Train a new model version, with its own telemetry.

    python -m generator.train [--epochs 30] [--seed 7] [--degraded]

One trace per run (``training.run``), one ``training.epoch`` span per epoch, loss and
accuracy gauges per epoch, logs carrying ``ml.training.run_id``. The model is an
SGDClassifier with logistic loss behind a StandardScaler, fitted epoch by epoch with
``partial_fit`` so every epoch is real work with a real loss. ``--degraded`` trains a
genuinely worse model (few rows, many flipped labels): the ``regression`` fault uses it.
The running service notices the new file and deploys it without a restart.
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from opentelemetry import context
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from generator.drift import FeatureReference
from generator.model import (
    CLASS_NAMES,
    FEATURE_NAMES,
    MODEL_NAME,
    load_dataset,
    model_dir,
    release_version,
    reserve_version,
    save_version,
)
from generator.telemetry import attach_baggage, links_to_current, setup_telemetry
from mlobs.contract import ATTR_TRAINING_RUN_ID, SERVICE_TRAINING, TRAINING_DURATION
from mlobs.telemetry import Telemetry

_log = logging.getLogger(__name__)
_BATCH_SIZE = 32
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True)
class TrainingResult:
    version: int
    run_id: str
    accuracy: float
    f1: float
    loss: float


def _degrade(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A labelling bug: 60 % of the malignant rows labelled benign. The model that results
    misses many malignant tumours, as a model trained on a broken label join would."""
    y = y.copy()
    malignant = np.flatnonzero(y == 0)
    y[rng.choice(malignant, size=int(0.6 * len(malignant)), replace=False)] = 1
    return x, y


def train_version(
    directory: Path,
    telemetry: Telemetry,
    *,
    epochs: int = 30,
    seed: int | None = None,
    degraded: bool = False,
    origin: str = "train",
) -> TrainingResult:
    """Train, evaluate and save the next version of the model in ``directory``."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    tracer = telemetry.get_tracer(__name__)
    meter = telemetry.get_meter(__name__)
    loss_gauge = meter.create_gauge("ml.training.loss", description="Log loss on the training split, per epoch")
    accuracy_gauge = meter.create_gauge(
        "ml.training.accuracy", description="Accuracy on the validation split, per epoch"
    )
    runs = meter.create_counter("ml.training.runs", description="Training runs by outcome")
    duration = meter.create_histogram(
        TRAINING_DURATION,
        unit="s",
        description="Wall time of a training run",
        explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
    )

    run_id = uuid.uuid4().hex
    version = reserve_version(directory)
    attrs = {"ml.model.name": MODEL_NAME, "ml.model.version": str(version)}
    token = attach_baggage([(ATTR_TRAINING_RUN_ID, run_id)])
    started = time.perf_counter()
    try:
        # A new root: one trace per run, even when the service trains in a request.
        with tracer.start_as_current_span(
            "training.run",
            context=context.Context(),
            links=links_to_current(),
            attributes=attrs
            | {ATTR_TRAINING_RUN_ID: run_id, "ml.training.epochs": epochs, "ml.training.degraded": degraded},
        ) as run_span:
            _log.info(
                "training run started",
                extra=attrs | {"ml.training.epochs": epochs, "ml.training.degraded": degraded},
            )
            data = load_dataset()
            x_train, x_val, y_train, y_val = train_test_split(
                data.features, data.target, test_size=0.25, stratify=data.target, random_state=seed
            )
            reference = {
                name: FeatureReference.from_values(x_train[:, i]).to_dict() for i, name in enumerate(FEATURE_NAMES)
            }
            rng = np.random.default_rng(seed)
            if degraded:
                x_train, y_train = _degrade(x_train, y_train, rng)

            scaler = StandardScaler().fit(x_train)
            xs_train, xs_val = scaler.transform(x_train), scaler.transform(x_val)
            clf = SGDClassifier(loss="log_loss", alpha=1e-3, random_state=seed)
            classes = np.array([0, 1])
            loss = accuracy = 0.0
            for epoch in range(1, epochs + 1):
                with tracer.start_as_current_span(
                    "training.epoch", attributes={"ml.training.epoch": epoch}
                ) as epoch_span:
                    order = rng.permutation(len(y_train))
                    for start in range(0, len(order), _BATCH_SIZE):
                        batch = order[start : start + _BATCH_SIZE]
                        clf.partial_fit(xs_train[batch], y_train[batch], classes=classes)
                    loss = float(log_loss(y_train, clf.predict_proba(xs_train), labels=classes))
                    accuracy = float(accuracy_score(y_val, clf.predict(xs_val)))
                    epoch_span.set_attributes({"ml.training.loss": loss, "ml.training.accuracy": accuracy})
                    epoch_attrs = attrs | {"ml.training.epoch": str(epoch)}
                    loss_gauge.set(loss, epoch_attrs)
                    accuracy_gauge.set(accuracy, epoch_attrs)
                    _log.debug("epoch %d: loss %.4f accuracy %.4f", epoch, loss, accuracy, extra=epoch_attrs)

            pipeline = Pipeline([("scale", scaler), ("classify", clf)])
            # Positive class is malignant, encoded 0 by scikit-learn.
            f1 = float(f1_score(y_val, clf.predict(xs_val), pos_label=0))
            metadata = {
                "model_name": MODEL_NAME,
                "version": str(version),
                "trained_at": datetime.now(UTC).isoformat(),
                "run_id": run_id,
                "degraded": degraded,
                "origin": origin,
                "epochs": epochs,
                "seed": seed,
                "classes": list(CLASS_NAMES),
                "features": list(FEATURE_NAMES),
                "metrics": {"accuracy": accuracy, "f1": f1, "loss": loss},
                "reference": reference,
            }
            save_version(directory, version, pipeline, metadata)
            elapsed = time.perf_counter() - started
            run_span.set_attributes({"ml.training.accuracy": accuracy, "ml.training.loss": loss})
            duration.record(elapsed, attrs | {ATTR_TRAINING_RUN_ID: run_id})
            runs.add(1, attrs | {"outcome": "success"})
            _log.info(
                "training run finished: version %s, validation accuracy %.3f",
                version,
                accuracy,
                extra=attrs
                | {
                    "event.name": "training.finished",
                    "ml.training.accuracy": accuracy,
                    "ml.training.f1": f1,
                    "ml.training.loss": loss,
                    "ml.training.duration_seconds": elapsed,
                },
            )
            return TrainingResult(version=version, run_id=run_id, accuracy=accuracy, f1=f1, loss=loss)
    except Exception as exc:
        release_version(directory, version)
        runs.add(1, attrs | {"outcome": "failure"})
        _log.exception("training run failed", extra=attrs | {"event.name": "training.finished"})
        raise RuntimeError(f"training of version {version} failed: {exc}") from exc
    finally:
        context.detach(token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generator.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new model each run)")
    parser.add_argument("--degraded", action="store_true", help="train a deliberately worse model")
    parser.add_argument("--model-dir", type=Path, default=None, help="default: $MLOBS_MODEL_DIR or .stack/models")
    args = parser.parse_args(argv)

    telemetry = setup_telemetry(SERVICE_TRAINING)
    try:
        result = train_version(
            args.model_dir or model_dir(),
            telemetry,
            epochs=args.epochs,
            seed=args.seed,
            degraded=args.degraded,
        )
    finally:
        telemetry.shutdown()
    print(
        f"{MODEL_NAME} v{result.version}: accuracy {result.accuracy:.3f}, f1 {result.f1:.3f}, "
        f"loss {result.loss:.4f} (run {result.run_id})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
