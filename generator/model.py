"""The model: dataset, versioned files on disk, and a registry that hot-swaps versions.

A version is ``<model_dir>/breast-cancer-classifier-v<N>.joblib`` (a fitted scikit-learn
pipeline) plus ``breast-cancer-classifier-v<N>.json`` (its metadata: metrics and the
training reference distribution of every feature, used for drift). The JSON is written
last, so a version exists once its JSON does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from opentelemetry import context, trace
from sklearn.datasets import load_breast_cancer

from generator.drift import FeatureReference
from generator.telemetry import links_to_current

MODEL_NAME = "breast-cancer-classifier"
# scikit-learn encodes malignant as 0 and benign as 1; malignant is the positive class.
CLASS_NAMES = ("malignant", "benign")
POSITIVE_CLASS = "malignant"
DEFAULT_MODEL_DIR = Path(".stack/models")
# Metadata "origin" of a version trained by the regression fault rather than by `train`.
FAULT_ORIGIN = "regression-fault"

_FILE_RE = re.compile(rf"^{re.escape(MODEL_NAME)}-v(\d+)\.json$")
_log = logging.getLogger(__name__)


def _snake(name: str) -> str:
    return re.sub(r"\W+", "_", name.strip().lower())


@dataclass(frozen=True)
class Dataset:
    features: np.ndarray  # shape (rows, 30)
    target: np.ndarray  # 0 = malignant, 1 = benign
    feature_names: tuple[str, ...]


@cache
def load_dataset() -> Dataset:
    """The Wisconsin breast cancer data that ships inside scikit-learn (nothing downloaded)."""
    raw = load_breast_cancer()
    return Dataset(
        features=np.asarray(raw.data, dtype=float),
        target=np.asarray(raw.target, dtype=int),
        feature_names=tuple(_snake(n) for n in raw.feature_names),
    )


FEATURE_NAMES: tuple[str, ...] = load_dataset().feature_names
# Measured on the current image and sent by the load generator; the per-patient ``worst_*``
# aggregates come from the (simulated) feature store.
ONLINE_FEATURES = tuple(n for n in FEATURE_NAMES if not n.startswith("worst_"))
DEFAULT_MONITORED = ("mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness")


def monitored_features() -> tuple[str, ...]:
    """Features watched for drift: ``MLOBS_DRIFT_FEATURES`` (comma-separated) or the 5 ``mean_*``."""
    raw = os.environ.get("MLOBS_DRIFT_FEATURES", "")
    chosen = tuple(n.strip() for n in raw.split(",") if n.strip()) or DEFAULT_MONITORED
    unknown = [n for n in chosen if n not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"MLOBS_DRIFT_FEATURES names unknown features {unknown}; known: {list(FEATURE_NAMES)}")
    return chosen


def model_dir() -> Path:
    return Path(os.environ.get("MLOBS_MODEL_DIR") or DEFAULT_MODEL_DIR)


def model_file(directory: Path, version: int) -> Path:
    return directory / f"{MODEL_NAME}-v{version}.joblib"


def metadata_file(directory: Path, version: int) -> Path:
    return directory / f"{MODEL_NAME}-v{version}.json"


@dataclass(frozen=True)
class ModelVersion:
    version: str
    pipeline: Any
    metadata: dict[str, Any]

    @property
    def references(self) -> dict[str, FeatureReference]:
        return {name: FeatureReference.from_dict(ref) for name, ref in self.metadata.get("reference", {}).items()}

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities in ``CLASS_NAMES`` order."""
        return self.pipeline.predict_proba(rows)


def _versions_on_disk(directory: Path) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        match = _FILE_RE.match(path.name)
        if not match:
            continue
        try:
            found[int(match.group(1))] = json.loads(path.read_text())
        except (OSError, ValueError):
            _log.warning("unreadable model metadata skipped", extra={"file.path": str(path)})
    return found


def servable_versions(directory: Path) -> list[int]:
    """Versions with metadata and weights, not rolled back, oldest first."""
    return sorted(
        v
        for v, meta in _versions_on_disk(directory).items()
        if not meta.get("rolled_back") and model_file(directory, v).is_file()
    )


def latest_version(directory: Path) -> int | None:
    versions = servable_versions(directory)
    return versions[-1] if versions else None


def reserve_version(directory: Path) -> int:
    """Claim the next version number by creating its weights file exclusively."""
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in directory.iterdir() if (m := re.search(r"-v(\d+)\.", p.name))]
        candidate = max(taken, default=0) + 1
        try:
            with open(model_file(directory, candidate), "xb"):
                return candidate
        except FileExistsError:
            continue


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users (a container) read the models too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_version(directory: Path, version: int, pipeline: Any, metadata: dict[str, Any]) -> None:
    _atomic_write(model_file(directory, version), lambda p: joblib.dump(pipeline, p))
    _atomic_write(metadata_file(directory, version), lambda p: p.write_text(json.dumps(metadata)))


def release_version(directory: Path, version: int) -> None:
    """Give back a reserved number whose training failed."""
    if not metadata_file(directory, version).exists():
        model_file(directory, version).unlink(missing_ok=True)


def mark_rolled_back(directory: Path, version: int) -> None:
    """Keep the files (an audit trail) but never serve this version again."""
    path = metadata_file(directory, version)
    meta = json.loads(path.read_text())
    meta["rolled_back"] = True
    _atomic_write(path, lambda p: p.write_text(json.dumps(meta)))


def roll_back_fault_versions(directory: Path) -> list[int]:
    """Roll back the versions the regression fault left behind (a restart forgets the fault)."""
    left = sorted(
        v
        for v, meta in _versions_on_disk(directory).items()
        if meta.get("origin") == FAULT_ORIGIN and not meta.get("rolled_back")
    )
    for version in left:
        mark_rolled_back(directory, version)
    return left


def load_version(directory: Path, version: int) -> ModelVersion:
    meta = json.loads(metadata_file(directory, version).read_text())
    pipeline = joblib.load(model_file(directory, version))
    return ModelVersion(version=str(version), pipeline=pipeline, metadata=meta)


class ModelRegistry:
    """Serves the newest servable version of one directory and swaps it in without restart.

    Every swap is a deployment: a ``model.deploy`` span (a trace of its own), a log record
    with ``event.name=model.deployed`` and one increment of ``ml.model.deployments``.
    """

    def __init__(
        self,
        directory: Path,
        tracer: trace.Tracer,
        on_deploy: Callable[[ModelVersion, ModelVersion | None], None] | None = None,
    ) -> None:
        self.directory = directory
        self._tracer = tracer
        self._on_deploy = on_deploy
        self._current: ModelVersion | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> ModelVersion | None:
        return self._current

    def poll(self) -> ModelVersion | None:
        """Deploy the newest servable version if it is not the one served; return it if so."""
        with self._lock:
            newest = latest_version(self.directory)
            if newest is None:
                return None
            current = self._current
            if current is not None and current.version == str(newest):
                return None
            return self.deploy(newest)

    def deploy(self, version: int) -> ModelVersion:
        with self._lock:
            previous = self._current
            # A deployment is its own trace, not part of whatever request happened to trigger it.
            with self._tracer.start_as_current_span(
                "model.deploy",
                context=context.Context(),
                links=links_to_current(),
                attributes={"ml.model.name": MODEL_NAME, "ml.model.version": str(version)},
            ) as span:
                loaded = load_version(self.directory, version)
                if previous is not None:
                    span.set_attribute("ml.model.previous_version", previous.version)
                self._current = loaded
                if self._on_deploy is not None:
                    self._on_deploy(loaded, previous)
                _log.info(
                    "model version %s deployed",
                    loaded.version,
                    extra={
                        "event.name": "model.deployed",
                        "ml.model.name": MODEL_NAME,
                        "ml.model.version": loaded.version,
                        "ml.model.previous_version": previous.version if previous else "",
                        "ml.model.validation_accuracy": float(loaded.metadata.get("metrics", {}).get("accuracy", 0)),
                    },
                )
            return loaded

    def start_watching(self, interval_seconds: float) -> None:
        if interval_seconds <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, args=(interval_seconds,), name="model-watcher", daemon=True)
        self._thread.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.poll()
            except Exception:
                _log.exception("model directory poll failed", extra={"file.path": str(self.directory)})
