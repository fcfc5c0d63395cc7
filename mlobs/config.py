"""stack.yaml: load it into one validated model, or fail with errors that name the path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import core_schema

from mlobs import components as registry


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value from stack.yaml, cut to ``limit`` characters; an integer too long for repr
    (over 4300 digits: ValueError) is described by its size."""
    try:
        text = repr(value)
    except ValueError:  # it is, or holds, such an integer
        if isinstance(value, int):
            return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
        return f"a {type(value).__name__} holding an integer of over 4300 digits"
    return text if len(text) <= limit else text[:limit] + "..."


class Duration(str):
    """Every duration of stack.yaml, in Prometheus's form: whole numbers with units from ``y`` down
    to ``ms``, each at most once and in that order (``90s``, ``1h30m``, ``500ms``).

    It stays the text the user wrote, which is what the rendered Prometheus, Alertmanager, Loki and
    Tempo configs get; ``seconds`` is its length, fractional below a second (``500ms`` is 0.5).
    """

    _MS = {"y": 31_536_000_000, "w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
    PATTERN = "^(?!$)" + "".join(f"([0-9]+{unit})?" for unit in _MS) + "$"
    ALLOWED = "whole numbers with units in the order y, w, d, h, m, s, ms (e.g. 90s, 1h30m, 500ms)"
    # The longest Go time.Duration (int64 nanoseconds): the collector, Alertmanager, Loki and Tempo parse them.
    MAX_MS = (2**63 - 1) // 1_000_000

    def __new__(cls, text: object) -> Duration:
        if not isinstance(text, str) or not re.fullmatch(cls.PATTERN, text):
            raise ValueError(f"{_short(text)} is not a duration: write {cls.ALLOWED}")
        parts = re.findall(r"([0-9]+)(ms|[ywdhms])", text)
        # (a number of 20 digits is already too long: no int() of thousands of digits, no float overflow)
        numbers = [(n.lstrip("0") or "0", unit) for n, unit in parts]
        if any(len(n) > 19 for n, _ in numbers) or sum(int(n) * cls._MS[u] for n, u in numbers) > cls.MAX_MS:
            raise ValueError(f"{_short(text)} is too long: a duration is at most "
                             f"2562047h (about 292 years, the longest Go duration)")
        return super().__new__(cls, text)

    @property
    def seconds(self) -> float:
        return sum(int(n) * self._MS[unit] for n, unit in re.findall(r"([0-9]+)(ms|[ywdhms])", self)) / 1000

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(cls, serialization=core_schema.to_string_ser_schema())

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "pattern": cls.PATTERN}


# A Duration dumps as the plain string it is, wherever a rendered YAML file holds one.
yaml.SafeDumper.add_representer(Duration, yaml.SafeDumper.represent_str)

Port = Annotated[int, Field(ge=1, le=65535)]
Ratio = Annotated[float, Field(ge=0, le=1)]
Signal = Literal["traces", "metrics", "logs"]
SEMVER = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")

COMPONENTS = registry.pins()


class Strict(BaseModel):
    # validate_default: a default duration is a Duration too, like one written in stack.yaml.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Component(Strict):
    image: str = Field(description="Image reference run by docker compose, with its tag")
    version: str = Field(description="Release version; the native build uses it")

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not SEMVER.match(v):
            raise ValueError(f"must be a release version like 1.2.3, got {v!r}")
        return v

    @model_validator(mode="after")
    def _tag_matches(self) -> Component:
        tag = self.image.rsplit(":", 1)[-1] if ":" in self.image else ""
        if tag.lstrip("v") != self.version:
            raise ValueError(
                f"image tag {tag!r} and version {self.version!r} disagree: pin both to the same release"
            )
        return self


def _components_model() -> type[BaseModel]:
    """stack.yaml ``components``: one image + version per pin of the registry (mlobs/components.py)."""
    fields: dict[str, Any] = {
        pin.replace("-", "_"): (Component, Field(alias=pin)) for pin in registry.pins()
    }
    model = create_model("Components", __base__=Strict, **fields)

    def get(self: BaseModel, name: str) -> Component:
        return getattr(self, name.replace("-", "_"))

    model.get = get  # type: ignore[attr-defined]
    return model


Components = _components_model()


def _ports_model() -> type[BaseModel]:
    """stack.yaml ``ports``: one host port per endpoint of the registry, with its default."""
    fields: dict[str, Any] = {p.key: (Port, p.default) for p in registry.all_ports()}
    model = create_model("Ports", __base__=Strict, **fields)

    def _distinct(self: BaseModel) -> BaseModel:
        seen: dict[int, str] = {}
        for name, port in self.model_dump().items():
            if port in seen:
                raise ValueError(f"ports.{name} and ports.{seen[port]} are both {port}: each needs its own")
            seen[port] = name
        return self

    return create_model("Ports", __base__=model,
                        __validators__={"_distinct": model_validator(mode="after")(_distinct)})


Ports = _ports_model()


class Backends(Strict):
    """Which store holds each signal. The native runtime runs the other one of a signal when the
    chosen one's binary is absent (Tempo and Loki cannot be built here)."""

    traces: Literal["tempo", "jaeger"] = "tempo"
    logs: Literal["loki", "victorialogs"] = "loki"


class Retention(Strict):
    prometheus: Duration = "15d"
    loki: Duration = "168h"
    tempo: Duration = "48h"
    jaeger: Duration = "48h"
    victorialogs: Duration = "7d"

    @field_validator("loki", "tempo", "jaeger")
    @classmethod
    def _hours(cls, v: str) -> str:
        # Loki's and Tempo's retention are Go durations: no d, w or y units.
        if re.search(r"[dwy]", v):
            raise ValueError(f"must be a Go duration in h, m or s (e.g. 168h), got {v!r}")
        return v


class Sampling(Strict):
    """Tail sampling (the rule: mlobs/sampling.py). ``profile: debug`` keeps every trace and has
    the sample service emit its detail spans (per row of a batch)."""

    profile: Literal["default", "debug"] = "default"
    keep_errors: bool = True
    slow_threshold_ms: int = Field(500, ge=1, le=Duration.MAX_MS)  # in ns, an int64 of the collector's OTTL
    percentage: float = Field(100, ge=0, le=100, description="share of the other traces kept")
    decision_wait: Duration = "5s"
    # The decision comes this long after the trace's root span arrives, when that is sooner than
    # decision_wait (the root ends last, so its trace is complete, but for the spans of other
    # services, which export on their own clocks): the trace is stored seconds earlier. Whole
    # seconds (the tail sampler ticks once a second); 0s waits decision_wait always.
    decision_wait_after_root: Duration = "2s"

    @field_validator("decision_wait", "decision_wait_after_root")
    @classmethod
    def _after_the_export_delay(cls, v: Duration, info: Any) -> Duration:
        if info.field_name == "decision_wait_after_root":
            if v.seconds == 0:
                return v
            if v.seconds != int(v.seconds):
                raise ValueError(f"must be whole seconds (the tail sampler decides once a second), or 0s, "
                                 f"got {str(v)!r}")
        floor = 2 * registry.BSP_SCHEDULE_DELAY_MS / 1000
        if v.seconds < floor:
            raise ValueError(f"must be at least {floor:g}s, twice the services' span export delay "
                             f"(OTEL_BSP_SCHEDULE_DELAY={registry.BSP_SCHEDULE_DELAY_MS}): spans exported "
                             f"after the decision would be lost with their trace, got {str(v)!r}")
        return v

    @model_validator(mode="after")
    def _root_before_the_wait(self) -> Sampling:
        after_root, wait = self.decision_wait_after_root, self.decision_wait
        if after_root.seconds and after_root.seconds >= wait.seconds:
            raise ValueError(f"decision_wait_after_root ({after_root}) must be shorter than decision_wait "
                             f"({wait}), or 0s to always wait decision_wait")
        return self

    @property
    def effective_percentage(self) -> float:
        return 100.0 if self.profile == "debug" else float(self.percentage)


#: Constructs Python's ``re`` accepts and the collector's RE2 refuses: lookaround and backreferences.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=")


def _check_regex(p: str) -> None:
    shown = f"{p[:60]!r}{'...' if len(p) > 60 else ''}"
    try:
        re.compile(p)
    except (re.error, OverflowError, RecursionError) as e:  # a{4294967296}: OverflowError; ((((...: recursion
        raise ValueError(f"{shown} is not a regular expression: {e}") from None
    if _NOT_RE2.search(p):
        raise ValueError(f"{shown}: the collector's regular expressions (RE2) have no lookaround and no "
                         "backreferences")


class Redaction(Strict):
    blocked_key_patterns: list[str] = []
    #: name -> RE2 pattern of a value that looks like PII; masked wherever it appears: attribute values
    #: of any key on every signal, log bodies, span events and span status messages.
    blocked_value_patterns: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], str] = {}

    @field_validator("blocked_key_patterns")
    @classmethod
    def _regex(cls, v: list[str]) -> list[str]:
        for p in v:
            _check_regex(p)
        return v

    @field_validator("blocked_value_patterns")
    @classmethod
    def _value_regex(cls, v: dict[str, str]) -> dict[str, str]:
        for p in v.values():
            _check_regex(p)
            if re.fullmatch(p, ""):
                raise ValueError(f"{p[:60]!r} matches the empty string: it would mask every value")
        return v


class OtlpExposure(Strict):
    """The collector's second OTLP receiver, for other hosts: TLS (a local CA and server
    certificate made by ``mlobs``) and a bearer token (``MLOBS_OTLP_TOKEN`` in .env) on every call.
    The loopback receiver stays as it is, for the services on this host."""

    enabled: bool = False
    address: str = Field("0.0.0.0", description="interface the TLS receivers bind (ports otlp_grpc_tls, otlp_http_tls)")
    cert_hostnames: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")]] = Field(
        [], description="DNS names of this host that clients dial, added to the server certificate")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        import ipaddress

        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{_short(v)} is not an IP address (e.g. 0.0.0.0, or this host's address)") from None
        if ip.is_loopback:
            raise ValueError(f"{v} is loopback: the plain receivers already listen there; expose an interface "
                             "other hosts reach (e.g. 0.0.0.0)")
        return v


class Otlp(Strict):
    expose: OtlpExposure = OtlpExposure()


def _mib(docker: str) -> int:
    """A compose memory limit (512m, 1g) in MiB."""
    m = re.fullmatch(r"([0-9]+)([kmg])", docker.lower())
    if not m:
        raise ValueError(f"memory limit {docker!r}: expected a number and k, m or g")
    return int(m[1]) * {"k": 1, "m": 1024, "g": 1024 * 1024}[m[2]] // 1024


class MemoryLimiter(Strict):
    """The collector's memory_limiter processor, first in every pipeline. Once its Go heap reaches
    ``limit_mib - spike_limit_mib`` (the soft limit) it refuses data with a retryable status
    (OTLP/HTTP 503, gRPC UNAVAILABLE; the senders retry) until a GC brings it back under; at
    ``limit_mib`` (the hard limit) it forces a GC. The rest of the container's memory limit
    (mlobs/components.py) is for what the Go heap does not count."""

    #: below this the collector's own idle heap (~20-30 MiB) leaves no room: it would refuse always
    MIN_MIB: ClassVar[int] = 32
    #: at most 80% (the upstream advice) of the collector's container memory limit
    CONTAINER: ClassVar[str] = registry.get("otel-collector").mem_limit
    MAX_MIB: ClassVar[int] = _mib(CONTAINER) * 4 // 5

    limit_mib: int = Field(400, description="hard limit of the collector's Go heap, MiB",
                           json_schema_extra={"minimum": MIN_MIB, "maximum": MAX_MIB})
    spike_limit_mib: int = Field(100, description="headroom under limit_mib: refusing starts at "
                                 "limit_mib - spike_limit_mib", json_schema_extra={"minimum": 1})

    @field_validator("limit_mib")
    @classmethod
    def _under_the_container_limit(cls, v: int) -> int:
        if not cls.MIN_MIB <= v <= cls.MAX_MIB:
            raise ValueError(f"must be between {cls.MIN_MIB} and {cls.MAX_MIB} MiB (at most 80% of the "
                             f"collector's container memory limit {cls.CONTAINER}, mlobs/components.py), got {v}")
        return v

    @field_validator("spike_limit_mib")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1 MiB and smaller than limit_mib, got {v}")
        return v

    @model_validator(mode="after")
    def _spike_under_the_limit(self) -> MemoryLimiter:
        if self.spike_limit_mib >= self.limit_mib:
            raise ValueError(f"spike_limit_mib ({self.spike_limit_mib}) must be smaller than limit_mib "
                             f"({self.limit_mib}): refusing starts at limit_mib - spike_limit_mib")
        return self


class CollectorSettings(Strict):
    memory_limiter: MemoryLimiter = MemoryLimiter()


class Anomaly(Strict):
    window: Duration = "1h"
    k_mad: float = Field(5, gt=0)
    k_sigma: float = Field(4, gt=0)
    season: Duration = "1d"
    for_: Duration = Field("5m", alias="for")


class Routing(Strict):
    group_wait: Duration = Field("30s", description="Wait before the first notification of a new group")
    group_interval: Duration = Field("5m", description="Wait before notifying a group of new or resolved alerts")
    repeat_interval: Duration = Field("4h", description="Resend a still-firing group after this long")


class Alerts(Strict):
    error_ratio: Ratio = 0.05
    latency_p99_seconds: float = Field(0.5, gt=0)
    accuracy_floor: Ratio = 0.85
    f1_floor: Ratio = 0.85
    drift_psi: float = Field(0.2, gt=0)
    feedback_silence: Duration = "10m"
    collector_refused_ratio: Ratio = 0.01
    rate_window: Duration = Field("5m", description="Window of the rates and ratios the model alerts use")
    genai_ttft_p95_seconds: float = Field(2.0, gt=0, description="p95 time to first token of an LLM service "
                                          "(GenAITimeToFirstTokenHigh)")
    for_: Duration = Field("2m", alias="for")
    anomaly: Anomaly = Anomaly()
    routing: Routing = Routing()


class ServiceAlerts(Strict):
    """One service's own thresholds for the alerts on its span metrics (prometheus/rules/services.yml);
    what is not set here is the global alerts.error_ratio or alerts.latency_p99_seconds."""

    error_ratio: Ratio | None = Field(None, description="Share of failing calls of an operation it serves")
    latency_p99_seconds: float | None = Field(None, gt=0, description="p99 of an operation it serves")


class Service(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Its OTEL_SERVICE_NAME")
    sample: bool = False
    kind: Literal["generic", "ml", "llm"] = Field(
        "generic", description="generic: RED alerts from span metrics; ml: also the alerts on the ml_* metrics of "
        "generator/TELEMETRY.md (the sample service always is); llm: a GenAI service")
    health_path: str | None = None
    health_url: str | None = None
    env: dict[str, str] = Field({}, description="Extra environment of the sample service (e.g. MLOBS_DRIFT_WINDOW)")
    alerts: ServiceAlerts = ServiceAlerts()

    @property
    def emits_ml(self) -> bool:
        """It sends the ml_* metrics: the ML alerts (MLServiceDown among them) watch it."""
        return self.sample or self.kind == "ml"

    def limit(self, alerts: Alerts, key: Literal["error_ratio", "latency_p99_seconds"]) -> float:
        """Its threshold ``key`` for the span-metric alerts: its own (``alerts:``), else the global one."""
        own = getattr(self.alerts, key)
        return getattr(alerts, key) if own is None else own

    @field_validator("health_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        allowed = "an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000/healthz"
        try:
            parts = urlsplit(v)
            _ = parts.port  # a port out of range or not a number raises ValueError
        except ValueError:
            raise ValueError(f"{v!r} is not a URL: write {allowed}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not a URL: write {allowed}")
        return v

    @model_validator(mode="after")
    def _health(self) -> Service:
        if self.sample and self.health_url:
            raise ValueError("the sample service is found by the stack: give health_path, not health_url")
        if not self.sample and self.health_path:
            raise ValueError("a service of yours needs a full health_url, not a health_path")
        if self.env and not self.sample:
            raise ValueError("env applies to the sample service only: set your service's environment yourself")
        if self.sample and self.kind not in ("generic", "ml"):
            raise ValueError("the sample service is an ml service: leave kind out or write kind: ml")
        return self


class ExtraExporter(Strict):
    name: str = Field(pattern=r"^[a-z_]+(/[A-Za-z0-9_.-]+)?$")
    signals: list[Signal] = Field(min_length=1)
    config: dict[str, Any] = {}

    MAX_CONFIG_NODES: ClassVar[int] = 10_000

    @field_validator("config")
    @classmethod
    def _plain_data(cls, v: dict[str, Any]) -> dict[str, Any]:
        # YAML aliases can make a cycle (&a [*a]) or a "billion laughs" that renders to gigabytes.
        seen = 0

        def walk(node: Any, path: tuple[int, ...]) -> None:
            nonlocal seen
            seen += 1
            if seen > cls.MAX_CONFIG_NODES:
                raise ValueError(f"has more than {cls.MAX_CONFIG_NODES} values (YAML aliases expanded): "
                                 "an exporter config is a few keys")
            if isinstance(node, dict | list):
                if id(node) in path:
                    raise ValueError("refers to itself (a YAML alias inside its own anchor): write plain values")
                for child in node.values() if isinstance(node, dict) else node:
                    walk(child, (*path, id(node)))

        walk(v, ())
        return v


class AnalyzerSettings(Strict):
    recent_window: Duration = Field("5m", description="The window whose movement the RCA scores")
    baseline_window: Duration = Field("1h", description="What the recent window is compared with")
    step: Duration = Field("60s", description="Resolution of the RCA's range queries")

    @field_validator("recent_window", "baseline_window", "step")
    @classmethod
    def _positive(cls, v: Duration) -> Duration:
        if not v.seconds:
            raise ValueError(f"must be longer than 0, got {v!r}")
        return v


class TokenPrice(Strict):
    input_per_1k: float = Field(ge=0, description="Price of 1000 input (prompt) tokens")
    output_per_1k: float = Field(ge=0, description="Price of 1000 output (completion) tokens")


class GenAI(Strict):
    """LLM services (the OpenTelemetry GenAI conventions): the prices that turn their token usage
    into a cost (prometheus/rules/genai.yml), per gen_ai.request.model, in one currency of yours."""

    prices: dict[str, TokenPrice] = Field({}, description="gen_ai.request.model -> its token prices")

    @field_validator("prices")
    @classmethod
    def _models(cls, v: dict[str, TokenPrice]) -> dict[str, TokenPrice]:
        for model in v:
            if not model.strip():
                raise ValueError("a model name of genai.prices is empty")
        return v


def seconds(duration: str) -> float:
    """A duration of stack.yaml (e.g. 1h30m, 500ms) in seconds: ``Duration(duration).seconds``."""
    return Duration(duration).seconds


class GrafanaSettings(Strict):
    anonymous_viewer: bool = False


class Buckets(Strict):
    loki_chunks: str = Field("mlobs-loki", description="Loki's chunks and index")
    tempo: str = "mlobs-tempo"


class ObjectStorage(Strict):
    """The S3-compatible object storage of Loki and Tempo on Kubernetes. The credentials are a
    Secret of yours (keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): only its name is written."""

    endpoint: str = Field("minio.minio.svc:9000", description="host:port of the S3-compatible endpoint")
    region: str = "us-east-1"
    insecure: bool = Field(False, description="plain HTTP to the endpoint")
    buckets: Buckets = Buckets()
    credentials_secret: str = Field("mlobs-object-storage", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class LongTermStore(Strict):
    """Where Prometheus remote-writes: Mimir (a tenant header) or any remote-write endpoint."""

    kind: Literal["mimir", "remote_write"] = "mimir"
    url: str = Field("http://mimir-distributor.mimir.svc:8080/api/v1/push", pattern=r"^https?://")
    tenant: str | None = Field(None, description="Mimir's X-Scope-OrgID")
    credentials_secret: str | None = Field(None, description="Secret with keys username and password (basic auth)")


class Kafka(Strict):
    """Tempo 3's microservices mode writes through a Kafka-compatible log that you run."""

    address: str = "kafka.kafka.svc:9092"
    topic: str = "mlobs-tempo"


class KubernetesSettings(Strict):
    """`mlobs render --target kubernetes` (mlobs/kubernetes.py). Every field has a default."""

    namespace: str = Field("mlobs", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image_registry: str = Field("", description="prefix of the images built here (the sample service, the analyzer)")
    storage_class: str | None = Field(None, description="of every PersistentVolumeClaim; the cluster default otherwise")
    secret: str = Field("mlobs-secrets", description="Secret with GRAFANA_ADMIN_PASSWORD and MLOBS_ADMIN_TOKEN")
    object_storage: ObjectStorage = ObjectStorage()
    long_term_store: LongTermStore = LongTermStore()
    kafka: Kafka = Kafka()


# ---- destinations: vendors and stores outside the stack (the exporters: mlobs/destinations.py) ----

EnvVar = Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$",
                              description="Name of a variable of .env (or of the environment) that holds the secret")]


def _http_url(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        parts = urlsplit(v)
        _ = parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
        raise ValueError(f"{v!r} is not a URL: write an http:// or https:// URL with a host, e.g. https://host:9200")
    return v


class DestinationAuth(Strict):
    """Basic auth (user and the .env variable of its password) or an API key's .env variable."""

    user: str | None = None
    password_env: EnvVar | None = None
    api_key_env: EnvVar | None = None

    @model_validator(mode="after")
    def _one_way(self) -> DestinationAuth:
        basic = self.user is not None or self.password_env is not None
        if basic and (self.user is None or self.password_env is None):
            raise ValueError("basic auth needs both user and password_env")
        if basic and self.api_key_env:
            raise ValueError("give either user + password_env or api_key_env, not both")
        return self


class DatadogDestination(Strict):
    site: Literal["datadoghq.com", "us3.datadoghq.com", "us5.datadoghq.com", "datadoghq.eu",
                  "ap1.datadoghq.com", "ap2.datadoghq.com", "ddog-gov.com"] = "datadoghq.com"
    api_key_env: EnvVar = "DD_API_KEY"
    signals: list[Signal] = Field(["traces", "metrics", "logs"], min_length=1)


class NewRelicDestination(Strict):
    region: Literal["us", "eu", "fedramp"] = Field("us", description="us: otlp.nr-data.net, eu: "
                                                   "otlp.eu01.nr-data.net, fedramp: gov-otlp.nr-data.net")
    endpoint: str | None = Field(None, description="another OTLP/HTTP endpoint of New Relic (overrides region)")
    license_key_env: EnvVar = Field("NEW_RELIC_LICENSE_KEY", description="sent as the api-key header")
    signals: list[Signal] = Field(["traces", "metrics", "logs"], min_length=1)

    _url = field_validator("endpoint")(classmethod(lambda cls, v: _http_url(v)))


class SplunkHecDestination(Strict):
    endpoint: str = Field(description="the HTTP Event Collector, e.g. https://splunk.example.com:8088/services/collector")
    token_env: EnvVar = "SPLUNK_HEC_TOKEN"
    index: str | None = Field(None, description="Splunk index (the token's default index when absent)")
    source: str | None = None
    sourcetype: str | None = None
    signals: list[Signal] = Field(["logs", "traces"], min_length=1)

    _url = field_validator("endpoint")(classmethod(lambda cls, v: _http_url(v)))


class SplunkObservabilityDestination(Strict):
    """Splunk Observability Cloud over OTLP/HTTP (traces and metrics; its logs go through HEC)."""

    realm: str = Field(pattern=r"^[a-z]{2,3}[0-9]+$", description="e.g. us0, us1, eu0, jp0, au0")
    token_env: EnvVar = Field("SPLUNK_ACCESS_TOKEN", description="an ingest token, sent as X-SF-Token")
    signals: list[Literal["traces", "metrics"]] = Field(["traces", "metrics"], min_length=1)


class SplunkDestination(Strict):
    hec: SplunkHecDestination | None = None
    observability: SplunkObservabilityDestination | None = None

    @model_validator(mode="after")
    def _some(self) -> SplunkDestination:
        if self.hec is None and self.observability is None:
            raise ValueError("give hec, observability or both")
        return self


class ElasticsearchIndices(Strict):
    """Index, alias or data stream name per signal; absent: the exporter's own data stream routing."""

    logs: str | None = None
    traces: str | None = None
    metrics: str | None = None


class ElasticsearchDestination(Strict):
    endpoint: str = Field(description="e.g. https://elasticsearch.example.com:9200")
    indices: ElasticsearchIndices = ElasticsearchIndices()
    auth: DestinationAuth = DestinationAuth()
    signals: list[Signal] = Field(["logs"], min_length=1)

    _url = field_validator("endpoint")(classmethod(lambda cls, v: _http_url(v)))


class OpenSearchDestination(Strict):
    endpoint: str = Field(description="e.g. https://opensearch.example.com:9200; http://opensearch:9200 is the "
                          "elk compose profile's")
    logs_index: str | None = Field(None, description="index, alias or data stream of the logs; absent: "
                                   "ss4o_logs-<dataset>-<namespace>")
    dataset: str = "mlobs"
    namespace: str = "default"
    auth: DestinationAuth = DestinationAuth()
    signals: list[Literal["traces", "logs"]] = Field(["logs"], min_length=1)

    _url = field_validator("endpoint")(classmethod(lambda cls, v: _http_url(v)))

    @field_validator("auth")
    @classmethod
    def _basic_only(cls, v: DestinationAuth) -> DestinationAuth:
        if v.api_key_env:
            raise ValueError("OpenSearch takes basic auth (user + password_env), not api_key_env")
        return v


class OtlpDestination(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="names the exporter otlp_grpc/<name> or "
                      "otlp_http/<name>")
    endpoint: str = Field(description="grpc: https://host:4317; http: the base URL (/v1/traces etc. are added)")
    protocol: Literal["grpc", "http"] = "grpc"
    headers: dict[str, str] = Field({}, description="header -> plain value (not secret)")
    secret_headers: dict[str, EnvVar] = Field({}, description="header -> .env variable holding its value")
    insecure: bool = Field(False, description="plain text to an http:// endpoint (a local test double, say)")
    signals: list[Signal] = Field(["traces", "metrics", "logs"], min_length=1)

    _url = field_validator("endpoint")(classmethod(lambda cls, v: _http_url(v)))

    @field_validator("name")
    @classmethod
    def _free(cls, v: str) -> str:
        taken = ("tempo", "jaeger", "prometheus", "loki", "victorialogs", "newrelic", "splunk_observability")
        if v in taken:
            raise ValueError(f"{v!r} is a name the stack's own exporters use; take another than {', '.join(taken)}")
        return v

    @model_validator(mode="after")
    def _headers(self) -> OtlpDestination:
        both = set(self.headers) & set(self.secret_headers)
        if both:
            raise ValueError(f"headers {sorted(both)} are given twice (headers and secret_headers)")
        if self.endpoint.startswith("http://") and not self.insecure:
            raise ValueError(f"{self.endpoint!r} is plain http: use https, or set insecure: true for a local endpoint")
        return self


class Destinations(Strict):
    """Copies of the telemetry for a vendor or a store outside the stack: each preset renders its
    collector exporter (mlobs/destinations.py), after span metrics, tail sampling and redaction.
    Secrets are never written: each is named by its .env variable and read as ${env:VAR}."""

    datadog: DatadogDestination | None = None
    newrelic: NewRelicDestination | None = None
    splunk: SplunkDestination | None = None
    elasticsearch: ElasticsearchDestination | None = None
    opensearch: OpenSearchDestination | None = None
    otlp: list[OtlpDestination] = []

    @field_validator("otlp")
    @classmethod
    def _names(cls, v: list[OtlpDestination]) -> list[OtlpDestination]:
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"names {dup} are used more than once")
        return v


class Stack(Strict):
    components: Components  # type: ignore[valid-type]
    backends: Backends = Backends()
    ports: Ports = Ports()  # type: ignore[valid-type]
    retention: Retention = Retention()
    sampling: Sampling = Sampling()
    redaction: Redaction = Redaction()
    otlp: Otlp = Otlp()
    collector: CollectorSettings = CollectorSettings()
    alerts: Alerts = Alerts()
    services: list[Service] = Field(min_length=1)
    extra_exporters: list[ExtraExporter] = []
    grafana: GrafanaSettings = GrafanaSettings()
    analyzer: AnalyzerSettings = AnalyzerSettings()
    genai: GenAI = GenAI()
    kubernetes: KubernetesSettings | None = None
    destinations: Destinations = Destinations()

    @model_validator(mode="after")
    def _unique(self) -> Stack:
        names = [s.name for s in self.services]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"services: {sorted(dup)} listed more than once")
        if sum(s.sample for s in self.services) > 1:
            raise ValueError("services: only one entry can be the sample service")
        ex = [e.name for e in self.extra_exporters]
        if len(set(ex)) != len(ex):
            raise ValueError("extra_exporters: names must be unique")
        return self

    @property
    def sample_service(self) -> Service | None:
        return next((s for s in self.services if s.sample), None)

    def version(self, component: str) -> str:
        return self.components.get(component).version


class StackError(Exception):
    """stack.yaml is missing, unreadable or invalid; the message says where and what is allowed."""


def dotted(loc: tuple[Any, ...] | list[Any]) -> str:
    """A path for a message: ``ports.grafana``; a key that is empty or holds a space or a control
    character (a line break would split the message) is quoted: ``services.0.env.'\\r'``."""
    def part(p: Any) -> str:
        plain = isinstance(p, int) or (isinstance(p, str) and p.isprintable() and p and not any(c.isspace() for c in p))
        return str(p) if plain else repr(p)

    return ".".join(part(p) for p in loc) or "(top level)"


def _describe(err: dict[str, Any], source: str) -> str:
    path = dotted(err["loc"])
    kind = err["type"]
    given = err.get("input")
    msg = err["msg"]
    if kind == "extra_forbidden":
        return f"{source}: {path}: unknown key (check the spelling; see stack.schema.json for the keys)"
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{source}: {path}: {_short(given)} is not allowed; allowed values: {allowed}"
    if kind == "missing":
        return f"{source}: {path}: required but missing"
    if kind == "string_pattern_mismatch":
        return f"{source}: {path}: {_short(given)} does not match {err['ctx']['pattern']}"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    if isinstance(given, dict | list) or _short(given, 40).removesuffix("...") in msg:
        return f"{source}: {path}: {msg}"
    return f"{source}: {path}: {msg} (got {_short(given)})"


def parse(data: Any, source: str = "stack.yaml") -> Stack:
    if not isinstance(data, dict):
        raise StackError(f"{source}: must be a mapping of sections (components, ports, ...)")
    try:
        return Stack.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err, source) for err in e.errors(include_url=False)]
        raise StackError("\n".join(lines)) from None


def load(path: Path | str = "stack.yaml", overlay: Path | str | None = None) -> Stack:
    """Load stack.yaml, optionally deep-merging an overlay file (e.g. the fast test profile)."""
    data = _read(Path(path))
    if overlay is not None:
        data = _merge(data, _read(Path(overlay)))
    return parse(data, str(path) if overlay is None else f"{path} + {overlay}")


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise StackError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise StackError(f"{path}: not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise StackError(f"{path}: not valid YAML: {e}") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise StackError(f"{path}: not valid YAML for a stack: {str(e).split(';')[0]}") from None
    except RecursionError:
        raise StackError(f"{path}: not valid YAML for a stack: nested too deeply") from None


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return over


def json_schema() -> dict[str, Any]:
    schema = Stack.model_json_schema(by_alias=True)
    schema["title"] = "mlobs stack.yaml"
    return schema
