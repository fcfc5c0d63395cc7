"""otlp.expose (TLS + bearer token receivers, mlobs/exposure.py) and PII masks by value
(redaction.blocked_value_patterns, render.pii_statements): config errors, certificates, render."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from mlobs import components, config, envfile, exposure, render

ROOT = render.ROOT
BASE = config._read(ROOT / "stack.yaml")


def stack_with(**over) -> config.Stack:
    return config.parse(config._merge(BASE, over))


def exposed(**expose) -> config.Stack:
    return stack_with(otlp={"expose": {"enabled": True, **expose}})


@pytest.mark.parametrize(("value", "needle"), [
    ({"address": "127.0.0.1"}, "is loopback"),
    ({"address": "::1"}, "is loopback"),
    ({"address": "my-host"}, "is not an IP address"),
    ({"cert_hostnames": ["bad host"]}, "cert_hostnames"),
    ({"enabled": "yes please"}, "otlp.expose.enabled"),
])
def test_bad_exposure_settings_name_the_path(value, needle) -> None:
    with pytest.raises(config.StackError) as e:
        stack_with(otlp={"expose": {"enabled": True, **value}})
    assert needle in str(e.value) and "otlp.expose" in str(e.value)


@pytest.mark.parametrize(("pattern", "needle"), [
    ("(?=x)abc", "no lookaround"),
    ("(a)\\1", "backreferences"),
    ("a*", "matches the empty string"),
    ("(", "is not a regular expression"),
])
def test_bad_value_patterns_are_refused(pattern, needle) -> None:
    with pytest.raises(config.StackError) as e:
        stack_with(redaction={"blocked_value_patterns": {"x": pattern}})
    assert needle in str(e.value) and "redaction.blocked_value_patterns" in str(e.value)


def test_the_token_is_one_of_the_generated_secrets(tmp_path: Path) -> None:
    values, added = envfile.ensure(tmp_path / ".env")
    assert exposure.TOKEN_VAR in added and len(values[exposure.TOKEN_VAR]) >= 24


def _san(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def test_certificates_are_made_once_private_and_chain_to_the_ca(tmp_path: Path) -> None:
    stack = exposed(cert_hostnames=["otlp.example.internal"])
    certs, made = exposure.ensure(stack, tmp_path / "tls")
    assert made == [str(certs.ca), str(certs.cert)]
    for key in (certs.key, certs.ca_key):
        assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    dns, ips = _san(certs.cert)
    assert {"localhost", "otlp.example.internal"} <= dns and "127.0.0.1" in ips
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    server = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    before = certs.cert.read_bytes()
    assert exposure.ensure(stack, tmp_path / "tls")[1] == []
    assert certs.cert.read_bytes() == before


def test_a_new_name_or_a_near_expiry_remakes_the_server_certificate_only(tmp_path: Path) -> None:
    certs, _ = exposure.ensure(exposed(), tmp_path / "tls")
    ca = certs.ca.read_bytes()
    _, made = exposure.ensure(exposed(cert_hostnames=["new.example"]), tmp_path / "tls")
    assert made == [str(certs.cert)] and certs.ca.read_bytes() == ca
    assert "new.example" in _san(certs.cert)[0]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=exposure.SERVER_DAYS - 10)
    _, made = exposure.ensure(exposed(cert_hostnames=["new.example"]), tmp_path / "tls", now=later)
    assert made == [str(certs.cert)]


def test_a_specific_address_is_in_the_certificate(tmp_path: Path) -> None:
    certs, _ = exposure.ensure(exposed(address="10.1.2.3"), tmp_path / "tls")
    assert "10.1.2.3" in _san(certs.cert)[1]


def _native(stack: config.Stack, tmp: Path) -> dict:
    target = render.native_target(stack, render.BACKENDS, tmp / "native", tmp / "data")
    return yaml.safe_load(render.render(target)["otel-collector/config.yaml"])


def test_exposure_off_renders_no_second_receiver_and_no_authenticator(tmp_path: Path) -> None:
    doc = _native(config.parse(BASE), tmp_path)
    assert set(doc["receivers"]) == {"otlp"}
    assert not any(e.startswith("bearertokenauth") for e in doc["extensions"])
    assert doc["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].startswith("127.0.0.1:")


def test_exposure_on_adds_a_tls_receiver_with_the_token_to_every_signal(tmp_path: Path) -> None:
    stack = exposed()
    doc = _native(stack, tmp_path)
    rx = doc["receivers"][exposure.RECEIVER]["protocols"]
    assert rx["grpc"]["endpoint"] == f"0.0.0.0:{stack.ports.otlp_grpc_tls}"
    assert rx["http"]["endpoint"] == f"0.0.0.0:{stack.ports.otlp_http_tls}"
    for proto in rx.values():
        assert proto["auth"] == {"authenticator": exposure.AUTHENTICATOR}
        assert proto["tls"]["cert_file"].endswith("/tls/server.crt") and proto["tls"]["key_file"].endswith(
            "/tls/server.key")
    assert doc["extensions"][exposure.AUTHENTICATOR] == {"scheme": "Bearer", "token": "${env:MLOBS_OTLP_TOKEN}"}
    assert exposure.AUTHENTICATOR in doc["service"]["extensions"]
    for signal in ("traces", "metrics", "logs"):
        assert exposure.RECEIVER in doc["service"]["pipelines"][signal]["receivers"]
    # the loopback receiver stays plain, on loopback
    assert doc["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == f"127.0.0.1:{stack.ports.otlp_http}"


def test_compose_publishes_only_the_exposed_pair_beyond_loopback() -> None:
    stack = exposed(address="192.0.2.10")
    services = components.compose_services(render.compose_target(stack))["services"]
    ports = services["otel-collector"]["ports"]
    wide = [p for p in ports if not p.startswith("127.0.0.1:")]
    assert wide == [f"192.0.2.10:{stack.ports.otlp_grpc_tls}:4319", f"192.0.2.10:{stack.ports.otlp_http_tls}:4320"]
    assert f"../.stack/tls:{exposure.CONTAINER_DIR}:ro" in services["otel-collector"]["volumes"]
    env = services["otel-collector"]["environment"]
    assert env[exposure.TOKEN_VAR].startswith("${MLOBS_OTLP_TOKEN:?")
    others = [p for name, svc in services.items() if name != "otel-collector" for p in svc.get("ports", [])]
    assert all(p.startswith("127.0.0.1:") for p in others), others


def test_pprof_is_on_loopback_everywhere_and_never_published(tmp_path: Path) -> None:
    compose = yaml.safe_load(render.render(render.compose_target(config.parse(BASE)))["otel-collector/config.yaml"])
    assert compose["extensions"]["pprof"]["endpoint"] == "127.0.0.1:1777"
    assert _native(config.parse(BASE), tmp_path)["extensions"]["pprof"]["endpoint"].startswith("127.0.0.1:")
    services = components.compose_services(render.compose_target(config.parse(BASE)))["services"]
    assert not any(":1777" in p for p in services["otel-collector"]["ports"])


# ---- PII by value --------------------------------------------------------------------------

PATTERN = "|".join(f"(?:{p})" for p in config.parse(BASE).redaction.blocked_value_patterns.values())


@pytest.mark.parametrize("text", [
    "mail carol.pii@example.org now",
    "card 4111 1111 1111 1111 ok", "card 4111-1111-1111-1111", "card 5500005555555559", "amex 378282246310005",
    "authorization: Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.Zm9v", "bearer abc.def",
])
def test_each_kind_of_pii_is_masked(text: str) -> None:
    masked = re.sub(PATTERN, render.PII_MASK, text)
    assert render.PII_MASK in masked
    assert not re.search(r"@example|4111|5500|3782|eyJ|abc\.def", masked), masked


@pytest.mark.parametrize("text", [
    "trace 4bf92f3577b34da6a3ce929d0e0e4736", "epoch ms 1733150000000", "request 7f3a9c", "POST /predict",
    "model v12 accuracy 0.93", "patient P00001", "batch 2026-12-02T18:00:00Z",
])
def test_ordinary_values_are_left_alone(text: str) -> None:
    assert re.sub(PATTERN, render.PII_MASK, text) == text


def test_pii_masks_run_on_every_signal_after_key_redaction(tmp_path: Path) -> None:
    doc = _native(config.parse(BASE), tmp_path)
    pii = doc["processors"][render.PII_PROCESSOR]
    assert set(pii) == {"error_mode", "trace_statements", "metric_statements", "log_statements"}
    contexts = {k: {g["context"] for g in v} for k, v in pii.items() if k.endswith("_statements")}
    assert contexts == {"trace_statements": {"resource", "span", "spanevent"},
                        "metric_statements": {"resource", "datapoint"}, "log_statements": {"resource", "log"}}
    log_statements = next(g["statements"] for g in pii["log_statements"] if g["context"] == "log")
    assert any(s.startswith("replace_pattern(log.body") for s in log_statements)
    for signal in ("traces", "metrics", "logs"):
        procs = doc["service"]["pipelines"][signal]["processors"]
        assert procs.index("redaction") + 1 == procs.index(render.PII_PROCESSOR), (signal, procs)


def test_no_value_patterns_no_pii_processor(tmp_path: Path) -> None:
    data = config._merge(BASE, {})
    data["redaction"] = {"blocked_key_patterns": ["^user\\.email$"]}
    stack = config.parse(data)
    doc = _native(stack, tmp_path)
    assert render.PII_PROCESSOR not in doc["processors"]
    assert all(render.PII_PROCESSOR not in p["processors"] for p in doc["service"]["pipelines"].values())
