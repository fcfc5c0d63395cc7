"""Load generator: Locust, headless, with feedback labels and fault switches.

    python -m generator.loadgen --host http://127.0.0.1:8000 --rate 10 --duration 60s \\
        --feedback-share 0.3 --feedback-delay 5s \\
        [--fault drift:mean_radius,mean_texture] [--chaos --seed 42]

Sends realistic feature vectors (real patients of the dataset, with measurement noise),
a few batches, and the true label for ``--feedback-share`` of the rows after about
``--feedback-delay``. ``--fault`` switches faults on through the admin endpoint for the run
(and off at the end); ``--chaos`` lets a seeded scheduler switch faults on and off at random.
The admin calls need MLOBS_ADMIN_TOKEN, the same value the service has.

Fault syntax: ``latency[:STAGE]:SECONDS``, ``errors[:STAGE]:RATE``,
``drift:FEATURE[,FEATURE...][:SCALE]``, ``regression``, ``slow_lookup:SECONDS``.
Telemetry (service.name ``mlobs-loadgen``) goes wherever the ``OTEL_*`` variables say;
its HTTP client spans give the service graph its loadgen -> inference edge.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
import time
import uuid

import gevent

# Locust monkey-patches the standard library for gevent when imported: it must come before requests.
import locust
import requests
from locust.env import Environment
from opentelemetry.instrumentation.requests import RequestsInstrumentor

from generator.faults import ChaosScheduler, FaultChange, parse_fault
from generator.telemetry import setup_telemetry
from generator.workload import Workload, parse_duration
from mlobs.contract import SERVICE_LOADGEN
from mlobs.telemetry import Telemetry

_log = logging.getLogger("generator.loadgen")


class AdminClient:
    """Calls the service's admin endpoint (traced, like every other call)."""

    def __init__(self, host: str, token: str) -> None:
        self.host = host.rstrip("/")
        self.session = requests.Session()
        self.session.headers["X-Admin-Token"] = token

    def apply(self, change: FaultChange) -> None:
        response = self.session.post(
            f"{self.host}/admin/faults", json=change.model_dump(exclude_none=True), timeout=120
        )
        if response.status_code != 200:
            raise RuntimeError(f"admin endpoint answered {response.status_code}: {response.text}")

    def clear(self) -> None:
        self.session.delete(f"{self.host}/admin/faults", timeout=120).raise_for_status()


def make_user_class(
    workload: Workload, per_user_rate: float, feedback_share: float, feedback_delay: float
) -> type[locust.HttpUser]:
    class InferenceUser(locust.HttpUser):
        wait_time = locust.constant_throughput(per_user_rate)

        @locust.task
        def predict(self) -> None:
            sample = workload.next()
            request_id = str(uuid.uuid4())
            name = "/predict [batch]" if sample.is_batch else "/predict"
            with self.client.post(
                "/predict",
                json=sample.body,
                headers={"X-Request-ID": request_id},
                name=name,
                catch_response=True,
            ) as response:
                if response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}")
                    return
                response.success()
            for index, label in enumerate(sample.labels):
                if workload.chance(feedback_share):
                    gevent.spawn_later(workload.jitter(feedback_delay), self.send_feedback, request_id, index, label)

        def send_feedback(self, request_id: str, index: int, label: str) -> None:
            body = {"request_id": request_id, "index": index, "label": label}
            with self.client.post("/feedback", json=body, name="/feedback", catch_response=True) as response:
                if response.status_code == 200:
                    response.success()
                else:
                    response.failure(f"HTTP {response.status_code}")

    return InferenceUser


def wait_until_ready(host: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{host}/readyz", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False


def _summary(env: Environment) -> str:
    lines = [f"{'request':<20} {'reqs':>7} {'fails':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'req/s':>7}"]
    entries = sorted(env.stats.entries.values(), key=lambda e: e.name) + [env.stats.total]
    for entry in entries:
        lines.append(
            f"{entry.name:<20} {entry.num_requests:>7} {entry.num_failures:>6} "
            f"{entry.get_response_time_percentile(0.5):>7} {entry.get_response_time_percentile(0.95):>7} "
            f"{entry.get_response_time_percentile(0.99):>7} {entry.total_rps:>7.1f}"
        )
    return "\n".join(lines)


def _report_every(env: Environment, seconds: float) -> None:
    while True:
        gevent.sleep(seconds)
        total = env.stats.total
        _log.info(
            "load: %d requests, %d failures, %.1f req/s, p50 %s ms, p99 %s ms",
            total.num_requests,
            total.num_failures,
            total.current_rps,
            total.get_current_response_time_percentile(0.5),
            total.get_current_response_time_percentile(0.99),
        )


def run(args: argparse.Namespace, telemetry: Telemetry) -> int:
    host = args.host.rstrip("/")
    if not wait_until_ready(host, args.ready_timeout):
        _log.error("the service at %s is not ready (GET /readyz) after %ss", host, args.ready_timeout)
        return 1

    admin: AdminClient | None = None
    if args.fault or args.chaos:
        token = os.environ.get("MLOBS_ADMIN_TOKEN")
        if not token:
            _log.error("--fault and --chaos need MLOBS_ADMIN_TOKEN (the same value the service has)")
            return 2
        admin = AdminClient(host, token)
        for change in args.fault:
            admin.apply(change)
            _log.info("fault %s switched on for this run", change.fault, extra={"ml.fault": change.fault})

    users = args.users or max(1, min(math.ceil(args.rate), 200))
    workload = Workload(seed=args.seed)
    user_class = make_user_class(workload, args.rate / users, args.feedback_share, args.feedback_delay)
    env = Environment(user_classes=[user_class], host=host)
    runner = env.create_local_runner()

    stop_chaos = threading.Event()
    chaos = None
    if args.chaos and admin is not None:
        scheduler = ChaosScheduler(seed=args.seed, min_interval=args.chaos_min, max_interval=args.chaos_max)
        chaos = gevent.spawn(scheduler.run, admin.apply, stop_chaos)

    _log.info(
        "load: %.1f req/s from %d users for %.0fs against %s, feedback for %.0f%% after ~%.1fs",
        args.rate,
        users,
        args.duration,
        host,
        args.feedback_share * 100,
        args.feedback_delay,
    )
    reporter = gevent.spawn(_report_every, env, 10)
    runner.start(users, spawn_rate=users)
    gevent.spawn_later(args.duration, runner.quit)
    try:
        runner.greenlet.join()
    finally:
        reporter.kill()
        stop_chaos.set()
        if chaos is not None:
            chaos.join(timeout=120)
        if admin is not None and args.fault and not args.keep_faults:
            for change in args.fault:
                admin.apply(FaultChange(fault=change.fault, enabled=False))
                _log.info("fault %s switched off at the end of the run", change.fault, extra={"ml.fault": change.fault})
    print(_summary(env), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m generator.loadgen",
        description="Headless Locust load against the sample inference service.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="service base URL")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second (default 10)")
    parser.add_argument("--duration", type=parse_duration, default=60.0, help="e.g. 60s, 10m (default 60s)")
    parser.add_argument("--users", type=int, default=0, help="concurrent users (default: one per req/s)")
    parser.add_argument("--feedback-share", type=float, default=0.3, help="share of rows labelled later")
    parser.add_argument("--feedback-delay", type=parse_duration, default=5.0, help="mean label delay")
    parser.add_argument("--fault", type=parse_fault, action="append", default=[], help="repeatable")
    parser.add_argument("--keep-faults", action="store_true", help="leave --fault faults on at the end")
    parser.add_argument("--chaos", action="store_true", help="switch faults on and off at random")
    parser.add_argument("--seed", type=int, default=None, help="seed for the workload and the chaos")
    parser.add_argument("--chaos-min", type=parse_duration, default=15.0, help="shortest chaos step")
    parser.add_argument("--chaos-max", type=parse_duration, default=45.0, help="longest chaos step")
    parser.add_argument("--ready-timeout", type=parse_duration, default=60.0, help="wait for /readyz")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.feedback_share <= 1:
        build_parser().error("--feedback-share must be between 0 and 1")
    if args.rate <= 0:
        build_parser().error("--rate must be positive")
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip() == "grpc":
        # gRPC's own threads must cooperate with gevent's monkey-patching.
        from grpc.experimental import gevent as grpc_gevent

        grpc_gevent.init_gevent()
    telemetry = setup_telemetry(SERVICE_LOADGEN)
    telemetry.instrument(RequestsInstrumentor())
    try:
        return run(args, telemetry)
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
