"""The sample service's HTTP API against its own OpenAPI schema, with schemathesis: every check
(server errors, status codes, content types, headers, response schemas, negative data rejected,
positive data accepted, missing headers, unsupported methods, ...), positive and negative data,
at least MIN_CASES cases in all.

In process: the FastAPI app over ASGI (no network, no port), telemetry off (no-op providers:
nothing is exported anywhere), a model trained once for the session. The admin endpoints get
generated (wrong) tokens only: a fault switched on would make every later case fail by design.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from generator.feature_store import SimulatedFeatureStore
from generator.service import create_app
from mlobs.contract import SERVICE_INFERENCE
from mlobs.telemetry import disabled

MIN_CASES = 5000
# Hypothesis examples per operation: the inference endpoints get most; the admin endpoints, which
# answer every generated (wrong) token with a 401, and those without input (GET /healthz, which run
# out of distinct cases at once), fewer.
EXAMPLES = int(os.environ.get("MLOBS_SCHEMA_EXAMPLES", "2000"))
OTHER_EXAMPLES = max(EXAMPLES // 10, 1)
INFERENCE = "^/(predict|feedback)$"

pytestmark = pytest.mark.timeout(900)

TALLY: Counter[str] = Counter()
_LOCK = threading.Lock()


# The app is built at import (schemathesis reads /openapi.json when the module loads; its lazy
# `from_fixture` loader does not work with pytest 9), on an empty model folder that the fixture
# below fills with the session's trained model before starting the service.
_MODELS = Path(tempfile.mkdtemp(prefix="mlobs-schema-models-"))
atexit.register(shutil.rmtree, _MODELS, True)  # also when this module's tests are deselected
APP = create_app(disabled(SERVICE_INFERENCE), directory=_MODELS, poll_seconds=0, admin_token="schema-test-token",
                 store=SimulatedFeatureStore(latency_ms=0, seed=1))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def started_service(trained_models: Path) -> Iterator[None]:
    shutil.copytree(trained_models, _MODELS, dirs_exist_ok=True)
    service = APP.state.service
    service.start()  # what the lifespan does (the ASGI transport does not run it)
    yield
    service.stop()


def _call(case) -> None:
    with _LOCK:
        TALLY[f"{case.method} {case.path}"] += 1
    response = case.call_and_validate()  # every check schemathesis has (all are enabled by default)
    if response.status_code == 422:
        _names_the_field(response.json())


def _names_the_field(body: dict) -> None:
    """A 422 says which field is wrong: ``detail[].loc`` starts at the body, a header or the query."""
    detail = body["detail"]
    assert isinstance(detail, list) and detail, body
    for error in detail:
        assert error["loc"] and error["loc"][0] in ("body", "header", "query", "path"), error
        assert error["msg"], error


SETTINGS = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": list(HealthCheck)}


@schema.include(path_regex=INFERENCE).parametrize()
@settings(max_examples=EXAMPLES, **SETTINGS)
def test_the_inference_api_matches_its_schema(case) -> None:
    _call(case)


@schema.exclude(path_regex=INFERENCE).parametrize()
@settings(max_examples=OTHER_EXAMPLES, **SETTINGS)
def test_the_other_endpoints_match_the_schema(case) -> None:
    _call(case)


def test_enough_cases_ran() -> None:
    """Runs after the schema tests (same module, file order): the cases they sent, per operation."""
    if not TALLY:
        reason = "the schema test did not run in this session (deselected), so there is nothing to count"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    print("schemathesis cases per operation: " + ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items()))
          + f"; {sum(TALLY.values())} in all")
    assert sum(TALLY.values()) >= MIN_CASES, TALLY


# What the generated cases may miss (schemathesis rarely sends a boolean for an integer): the
# coercions lax validation used to do, each refused with a 422 naming the field.
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/feedback", {"request_id": "r-1", "label": "benign", "index": False}, ["body", "index"]),
        ("/feedback", {"request_id": "r-1", "label": "benign", "index": True}, ["body", "index"]),
        ("/feedback", {"request_id": "r-1", "label": "benign", "index": "0"}, ["body", "index"]),
        ("/feedback", {"request_id": 17, "label": "benign"}, ["body", "request_id"]),
        ("/predict", {"patient_id": "P00001", "features": {"mean_radius": True}}, ["body", "features", "mean_radius"]),
        ("/predict", {"patient_id": "P00001", "features": {"mean_area": "12.5"}}, ["body", "features", "mean_area"]),
        ("/predict", {"patient_id": "P00001", "features": {"mean_area": 1e300}}, ["body", "features", "mean_area"]),
    ],
)
def test_no_coercion_a_422_names_the_field(path: str, body: dict, field: list) -> None:
    from fastapi.testclient import TestClient

    response = TestClient(APP).post(path, json=body)
    assert response.status_code == 422, response.text
    _names_the_field(response.json())
    assert field in [e["loc"] for e in response.json()["detail"]], response.json()


def test_an_integral_float_is_still_a_row_number() -> None:
    """JSON Schema counts 3.0 as an integer, so validation does too (3.5 is refused)."""
    from generator.service import FeedbackRequest

    assert FeedbackRequest.model_validate({"request_id": "r", "label": "benign", "index": 3.0}).index == 3


def test_an_undecodable_body_is_a_422_naming_the_body() -> None:
    from fastapi.testclient import TestClient

    # not UTF-8: json.loads raises UnicodeDecodeError, which FastAPI answered with a 400 and no field
    response = TestClient(APP).post("/feedback", content=b"\x80abc", headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]


@pytest.mark.parametrize("ctype", ["application/octet-stream", "text/plain"])
def test_random_bytes_of_another_content_type_are_a_422_not_a_500(ctype: str) -> None:
    from fastapi.testclient import TestClient

    body = b"YA\xe0\xfan\xe9l" + os.urandom(2000)
    response = TestClient(APP).post("/feedback", content=body, headers={"Content-Type": ctype})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert len(response.content) < 2000, "the error body echoes the whole input"


def test_a_405_lists_every_method_of_the_path() -> None:
    from fastapi.testclient import TestClient

    response = TestClient(APP).put("/admin/faults")
    assert response.status_code == 405
    assert {"GET", "POST", "DELETE"} <= {m.strip() for m in response.headers["allow"].split(",")}
