"""Fault injection: what can go wrong, the switchboard the service reads, and a chaos scheduler.

Each fault produces the signals it should:

* ``latency``: one stage sleeps; its span and ``ml.stage.duration`` grow.
* ``errors``: a share of requests fail in one stage; error spans, error logs, HTTP 500.
* ``drift``: chosen features are scaled before the model sees them; PSI/KS rise, and
  accuracy from feedback falls.
* ``regression``: a genuinely worse model is trained and deployed (and rolled back when
  the fault is switched off); ``ml.model.version`` changes and accuracy falls.
* ``slow_lookup``: the downstream feature lookup slows down; its CLIENT span grows.
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from generator.model import DEFAULT_MONITORED, FEATURE_NAMES
from mlobs.contract import STAGES

FaultKind = Literal["latency", "errors", "drift", "regression", "slow_lookup"]
FAULT_KINDS: tuple[str, ...] = ("latency", "errors", "drift", "regression", "slow_lookup")
Stage = Literal[STAGES]  # type: ignore[valid-type]  # one of mlobs.contract.STAGES

_log = logging.getLogger(__name__)


class InjectedError(RuntimeError):
    """The failure the ``errors`` fault injects."""


class FaultChange(BaseModel):
    """Switch one fault on (with its parameters) or off."""

    model_config = ConfigDict(extra="forbid", strict=True)  # {"enabled": "no"} is not False

    fault: FaultKind
    enabled: bool = True
    stage: Stage | None = Field(None, description="latency, errors: the stage (default inference)")
    seconds: float | None = Field(None, gt=0, le=30, description="latency, slow_lookup: added seconds")
    rate: float | None = Field(None, gt=0, le=1, description="errors: share of requests that fail")
    features: list[str] | None = Field(None, min_length=1, description="drift: features to shift")
    scale: float | None = Field(None, gt=0, le=100, description="drift: factor applied to the features")

    @model_validator(mode="after")
    def _check(self) -> FaultChange:
        allowed = {
            "latency": {"stage", "seconds"},
            "errors": {"stage", "rate"},
            "drift": {"features", "scale"},
            "regression": set(),
            "slow_lookup": {"seconds"},
        }[self.fault]
        given = {name for name in ("stage", "seconds", "rate", "features", "scale") if getattr(self, name) is not None}
        if extra := sorted(given - allowed):
            raise ValueError(f"fault {self.fault!r} takes {sorted(allowed) or 'no parameters'}, not {extra}")
        unknown = [f for f in self.features or [] if f not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; known: {list(FEATURE_NAMES)}")
        return self

    def with_defaults(self) -> FaultChange:
        defaults = {
            "latency": {"stage": "inference", "seconds": 0.5},
            "errors": {"stage": "inference", "rate": 0.2},
            "drift": {"features": list(DEFAULT_MONITORED[:2]), "scale": 1.5},
            "regression": {},
            "slow_lookup": {"seconds": 0.3},
        }[self.fault]
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return self.model_copy(update=filled)


@dataclass(frozen=True)
class ActiveFault:
    kind: str
    stage: str | None = None
    seconds: float = 0.0
    rate: float = 0.0
    features: tuple[str, ...] = ()
    scale: float = 1.0

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"fault": self.kind, "enabled": True}
        if self.kind in ("latency", "errors"):
            out["stage"] = self.stage
        if self.kind in ("latency", "slow_lookup"):
            out["seconds"] = self.seconds
        if self.kind == "errors":
            out["rate"] = self.rate
        if self.kind == "drift":
            out["features"] = list(self.features)
            out["scale"] = self.scale
        return out


class FaultState:
    """The faults switched on now; read on every request, changed by the admin endpoint.

    ``on_regression(enabled)`` is called when the regression fault flips: it deploys a
    worse model, or rolls it back.
    """

    def __init__(
        self,
        on_regression: Callable[[bool], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._active: dict[str, ActiveFault] = {}
        self._lock = threading.Lock()
        self._on_regression = on_regression
        self._rng = rng or random.Random()

    def apply(self, change: FaultChange) -> dict[str, dict[str, object]]:
        change = change.with_defaults() if change.enabled else change
        with self._lock:
            previous = self._active.get(change.fault)
            if change.enabled:
                self._active[change.fault] = ActiveFault(
                    kind=change.fault,
                    stage=change.stage,
                    seconds=change.seconds or 0.0,
                    rate=change.rate or 0.0,
                    features=tuple(change.features or ()),
                    scale=change.scale or 1.0,
                )
            else:
                self._active.pop(change.fault, None)
        if previous is None and not change.enabled:
            return self.snapshot()
        if change.fault == "regression" and (previous is None) == change.enabled and self._on_regression:
            try:
                self._on_regression(change.enabled)
            except Exception:
                with self._lock:
                    if previous is None:
                        self._active.pop(change.fault, None)
                    else:
                        self._active[change.fault] = previous
                raise
        params = {
            f"ml.fault.{k}": (",".join(v) if isinstance(v, list) else v)
            for k, v in change.model_dump(exclude={"fault", "enabled"}, exclude_none=True).items()
        }
        _log.log(
            logging.WARNING if change.enabled else logging.INFO,
            "fault %s switched %s",
            change.fault,
            "on" if change.enabled else "off",
            extra={
                "event.name": "fault.changed",
                "ml.fault": change.fault,
                "ml.fault.enabled": change.enabled,
            }
            | params,
        )
        return self.snapshot()

    def clear(self) -> dict[str, dict[str, object]]:
        for kind in list(self.snapshot()):
            self.apply(FaultChange(fault=kind, enabled=False))  # type: ignore[arg-type]
        return self.snapshot()

    def snapshot(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return {kind: fault.describe() for kind, fault in self._active.items()}

    def is_active(self, kind: str) -> bool:
        return kind in self._active

    def stage_delay(self, stage: str) -> float:
        fault = self._active.get("latency")
        return fault.seconds if fault is not None and fault.stage == stage else 0.0

    def lookup_delay(self) -> float:
        fault = self._active.get("slow_lookup")
        return fault.seconds if fault is not None else 0.0

    def maybe_fail(self, stage: str) -> None:
        fault = self._active.get("errors")
        if fault is not None and fault.stage == stage and self._rng.random() < fault.rate:
            raise InjectedError(f"injected failure in stage {stage} (errors fault, rate {fault.rate})")

    def drift_scale(self) -> dict[str, float]:
        fault = self._active.get("drift")
        return dict.fromkeys(fault.features, fault.scale) if fault is not None else {}


class ChaosScheduler:
    """Turns faults on and off at random, reproducibly for a given seed.

    Every ``min_interval``..``max_interval`` seconds it either switches on a fault that is
    off (with random parameters) or switches off one that is on, never holding more than
    ``max_active`` at once. ``apply`` carries out each change (a call to the admin endpoint,
    or a FaultState directly); every change is logged.
    """

    def __init__(
        self,
        seed: int | None,
        kinds: Sequence[str] = FAULT_KINDS,
        min_interval: float = 15.0,
        max_interval: float = 45.0,
        max_active: int = 2,
    ) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self.kinds = tuple(kinds)
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.max_active = max_active
        self.active: set[str] = set()

    def next_change(self) -> tuple[float, FaultChange]:
        """The wait before the next change, and the change (``commit`` it once applied)."""
        delay = self._rng.uniform(self.min_interval, self.max_interval)
        inactive = [k for k in self.kinds if k not in self.active]
        switch_off = bool(self.active) and (
            len(self.active) >= self.max_active or not inactive or self._rng.random() < 0.4
        )
        if switch_off:
            kind = self._rng.choice(sorted(self.active))
            return delay, FaultChange(fault=kind, enabled=False)  # type: ignore[arg-type]
        return delay, self._random_fault(self._rng.choice(inactive))

    def commit(self, change: FaultChange) -> None:
        if change.enabled:
            self.active.add(change.fault)
        else:
            self.active.discard(change.fault)

    def _random_fault(self, kind: str) -> FaultChange:
        rng = self._rng
        params: dict[str, object] = {
            "latency": {"stage": rng.choice(STAGES), "seconds": round(rng.uniform(0.1, 0.6), 3)},
            "errors": {"stage": rng.choice(STAGES), "rate": round(rng.uniform(0.05, 0.4), 3)},
            "drift": {
                "features": sorted(rng.sample(DEFAULT_MONITORED, rng.randint(1, 2))),
                "scale": round(rng.choice([rng.uniform(0.5, 0.8), rng.uniform(1.3, 2.0)]), 3),
            },
            "regression": {},
            "slow_lookup": {"seconds": round(rng.uniform(0.1, 0.5), 3)},
        }[kind]
        return FaultChange(fault=kind, **params)  # type: ignore[arg-type]

    def run(
        self,
        apply: Callable[[FaultChange], object],
        stop: threading.Event,
    ) -> None:
        """Apply changes until ``stop`` is set; then switch off whatever is still on."""
        _log.info("chaos scheduler started", extra={"ml.chaos.seed": str(self.seed)})
        while True:
            delay, change = self.next_change()
            if stop.wait(delay):
                break
            _log.info(
                "chaos: switching %s %s",
                change.fault,
                "on" if change.enabled else "off",
                extra={"ml.fault": change.fault, "ml.fault.enabled": change.enabled},
            )
            try:
                apply(change)
            except Exception:
                _log.exception("chaos: fault change failed", extra={"ml.fault": change.fault})
            else:
                self.commit(change)
        for kind in sorted(self.active):
            _log.info("chaos: switching %s off at the end", kind, extra={"ml.fault": kind, "ml.fault.enabled": False})
            try:
                apply(FaultChange(fault=kind, enabled=False))  # type: ignore[arg-type]
            except Exception:
                _log.exception("chaos: could not switch off fault", extra={"ml.fault": kind})
        self.active.clear()
        _log.info("chaos scheduler stopped")


def parse_fault(text: str) -> FaultChange:
    """The ``--fault`` syntax, checked by the same model as the admin endpoint."""
    kind, _, rest = text.strip().partition(":")
    parts = rest.split(":") if rest else []
    try:
        if kind in ("latency", "errors"):
            params: dict[str, object] = {}
            if parts and parts[0] in STAGES:
                params["stage"] = parts.pop(0)
            if parts:
                params["seconds" if kind == "latency" else "rate"] = float(parts.pop(0))
        elif kind == "drift":
            params = {"features": parts.pop(0).split(",")} if parts else {}
            if parts:
                params["scale"] = float(parts.pop(0))
        elif kind == "slow_lookup":
            params = {"seconds": float(parts.pop(0))} if parts else {}
        elif kind == "regression":
            params = {}
        else:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
        if parts:
            raise ValueError(f"unexpected {':'.join(parts)!r}")
        return FaultChange(fault=kind, **params)  # type: ignore[arg-type]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--fault {text!r}: {exc}") from None
