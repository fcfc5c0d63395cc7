"""What the project's HTTP services (the sample service, the analyzer, the examples) answer on a
body that fails validation: FastAPI's errors made safe to encode as JSON."""

from __future__ import annotations

from typing import Any

from fastapi.encoders import jsonable_encoder


def show_bytes(raw: bytes, limit: int = 64) -> str:
    """Raw input bytes in an error body: decoded with replacement, the first ``limit`` only."""
    text = raw[:limit].decode("utf-8", "replace")
    return text + (f"... ({len(raw)} bytes)" if len(raw) > limit else "")


def validation_errors(errors: Any) -> Any:
    """FastAPI's validation errors as JSON. A body that is not JSON comes back as its raw bytes in
    ``input``, and jsonable_encoder's own bytes.decode() raises on non-UTF-8 bytes (a 500 instead
    of the 422): they are shown cut and decoded with replacement."""
    return jsonable_encoder(errors, custom_encoder={bytes: show_bytes})
