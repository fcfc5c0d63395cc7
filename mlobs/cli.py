"""`mlobs`: render the stack from stack.yaml, run it with docker compose or natively, check it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from mlobs import addservice, config, envfile, exposure, render
from mlobs.runtime import docker, native

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)
ROOT = render.ROOT
SCHEMA = ROOT / "mlobs" / "stack.schema.json"

StackOpt = Annotated[Path, typer.Option("--stack", "-f", help="stack.yaml to read")]
OverlayOpt = Annotated[Path | None, typer.Option("--overlay", help="a file deep-merged over stack.yaml")]
RuntimeOpt = Annotated[str, typer.Option(help="auto (docker when an engine answers), docker or native")]


def _load(stack: Path, overlay: Path | None = None) -> config.Stack:
    try:
        return config.load(stack, overlay)
    except config.StackError as e:
        err.print(f"[red]stack.yaml is invalid; nothing was written.[/red]\n{e}", highlight=False)
        raise typer.Exit(2) from None


def _schema_text() -> str:
    return json.dumps(config.json_schema(), indent=2, sort_keys=True) + "\n"


RENDER_TARGETS = ("compose", "kubernetes")


@app.command(name="render")
def render_cmd(
    stack: StackOpt = ROOT / "stack.yaml",
    check: Annotated[bool, typer.Option("--check", help="fail if committed files differ")] = False,
    target: Annotated[str | None, typer.Option(
        help="compose or kubernetes; without it, every committed output (both, and the schema)")] = None,
    out: Annotated[Path | None, typer.Option(help="with --target kubernetes: the folder (deploy/kubernetes)")] = None,
) -> None:
    """Render every component's config (compose target), the Kubernetes manifests and the stack.yaml JSON Schema."""
    from mlobs import kubernetes

    if target is not None and target not in RENDER_TARGETS:
        err.print(f"--target: {target!r} is not allowed; allowed values: {', '.join(RENDER_TARGETS)}")
        raise typer.Exit(2)
    if out is not None and target != "kubernetes":
        err.print("--out: only with --target kubernetes")
        raise typer.Exit(2)
    s = _load(stack)
    # (files, folder, drift check, writer) of each output
    outputs: list[tuple[dict[str, str], Path, Callable[[dict[str, str], Path], list[str]],
                        Callable[[dict[str, str], Path], list[Path]]]] = []
    if target in (None, "compose"):
        files = render.render(render.compose_target(s))
        files[str(SCHEMA.relative_to(ROOT))] = _schema_text()
        outputs.append((files, ROOT, render.drift, render.write))
    if target in (None, "kubernetes"):
        try:
            manifests = kubernetes.render_files(s)
        except kubernetes.KubernetesError as e:
            err.print(f"[red]{e}[/red]", highlight=False)
            raise typer.Exit(2) from None
        outputs.append((manifests, (out or kubernetes.OUT).resolve(), kubernetes.drift, kubernetes.write))
    count = sum(len(files) for files, *_ in outputs)
    if check:
        stale = [str((folder / rel).relative_to(ROOT)) if (folder / rel).is_relative_to(ROOT) else rel
                 for files, folder, drift, _ in outputs for rel in drift(files, folder)]
        if stale:
            err.print("[red]Rendered files differ from stack.yaml and the templates:[/red] " + ", ".join(stale)
                      + "\nRun `make render` and commit the result.")
            raise typer.Exit(1)
        console.print(f"{count} rendered files match.")
        return
    changed = [p for files, folder, _, write in outputs for p in write(files, folder)]
    console.print(f"Rendered {count} files, {len(changed)} changed"
                  + (": " + ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
                                      for p in changed) if changed else "."))


@app.command()
def validate(stack: StackOpt = ROOT / "stack.yaml", overlay: OverlayOpt = None) -> None:
    """Check stack.yaml (and an overlay) without writing anything."""
    _load(stack, overlay)
    console.print(f"{stack}: valid.")


@app.command(name="add-service")
def add_service_cmd(
    name: Annotated[str, typer.Argument(help="its OTEL_SERVICE_NAME")],
    health_url: Annotated[str, typer.Option("--health-url", help="e.g. http://127.0.0.1:9000/healthz")],
    kind: Annotated[str, typer.Option(help=" | ".join(addservice.KINDS))] = addservice.DEFAULT_KIND,
    stack: StackOpt = ROOT / "stack.yaml",
) -> None:
    """Add a service of yours to stack.yaml (comments and layout kept), render, and print its OTEL_* settings."""
    try:
        added = addservice.add(stack, name, health_url, kind)
    except addservice.AddServiceError as e:
        for line in str(e).splitlines():
            err.print(f"Not added: {line}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"Added {added.service.name} (kind {added.service.kind}) to {stack}.", highlight=False)
    render_cmd(stack=stack)
    for line in addservice.report(added):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command(name="env")
def env_cmd() -> None:
    """Create the gitignored .env with generated secrets, if missing."""
    _, added = envfile.ensure(ROOT / ".env")
    console.print(f"Generated {', '.join(added)} into .env." if added else ".env already has every secret.")


def _runtime(choice: str) -> str:
    if choice not in ("auto", "docker", "native"):
        err.print(f"--runtime: {choice!r} is not allowed; allowed values: auto, docker, native")
        raise typer.Exit(2)
    if choice != "auto":
        return choice
    ok, why = docker.engine_answers()
    if ok:
        console.print(f"Runtime: docker ({why}).")
        return "docker"
    console.print(f"Runtime: native, because {why}. (Force one with RUNTIME=docker|native.)")
    return "native"


def _native_state() -> native.State:
    return native.State()


@app.command()
def up(stack: StackOpt = ROOT / "stack.yaml", overlay: OverlayOpt = None, runtime: RuntimeOpt = "auto",
       timeout: Annotated[float, typer.Option(help="seconds to wait for health")] = 180) -> None:
    """Render and start the stack; wait until every component answers its health check."""
    s = _load(stack, overlay)
    _, added = envfile.ensure(ROOT / ".env")
    if added:
        console.print(f"Generated {', '.join(added)} into .env (gitignored).")
    rt = _runtime(runtime)
    if exposure.enabled(s):
        certs, made = exposure.ensure(s, ROOT / ".stack" / "tls")
        if made:
            console.print(f"Made the TLS certificates of the exposed OTLP receivers: {', '.join(made)}. "
                          f"Clients trust {certs.ca} and send the bearer token {exposure.TOKEN_VAR} of .env.")
        if rt == "docker":
            err.print(f"otlp.expose under docker compose: the collector container runs as uid 10001 and must read "
                      f"{certs.key} (mode 0600, yours): `sudo chown 10001 {certs.key}` once.")
    if rt == "docker":
        render.write(render.render(render.compose_target(s)), ROOT)
        code = docker.up()
        if code == 0:
            # compose recreates a container only when its definition changed, not its mounted files
            for name, answer in native.reload_configs(render.native_target(s, render.BACKENDS),
                                                      set(native.RELOADABLE)).items():
                console.print(f"{name}: {answer}")
        raise typer.Exit(code)
    state = _native_state()
    _build_native(s)
    try:
        with console.status("Starting the native stack...") as status:
            def progress(pending: str, left: float) -> None:
                status.update(f"Waiting for health: {pending} ({left:.0f}s left)")
            p, health = native.start(s, state, timeout=timeout, progress=progress)
    except RuntimeError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    _print_table(s, p, health)
    if not all(h.healthy for h in health.values()):
        err.print("[red]Some components are not healthy: see `make logs`.[/red]")
        raise typer.Exit(1)


def _print_table(s: config.Stack, p: native.Plan, health: dict[str, native.Health]) -> None:
    table = Table(title="mlobs native stack")
    table.add_column("component")
    table.add_column("state")
    table.add_column("URL")
    table.add_column("detail")
    for name, h in health.items():
        table.add_row(name, "[green]healthy[/green]" if h.healthy else f"[red]{h.state}[/red]", h.url, h.detail)
    for name, why in p.missing.items():
        table.add_row(name, "[yellow]missing[/yellow]", "", why)
    console.print(table)
    if "grafana" not in p.present:
        console.print(without_grafana(s, set(p.present)))


def without_grafana(s: config.Stack, present: set[str]) -> str:
    """Where to look at each signal when Grafana does not run."""
    t = render.native_target(s, present & set(render.BACKENDS))
    lines = ["Without Grafana: `make verify` follows one request across the signals, and each store answers:",
             f"  metrics: http://{t.connect('prometheus')}/api/v1/query?query=ml_request_duration_seconds_count"
             " (Prometheus' API; the native build has no web UI)"]
    if t.store("traces") == "jaeger":
        lines.append(f"  traces:  http://{t.connect('jaeger')}/ (Jaeger UI; API /api/traces/<trace id>, /api/services)")
    if t.store("logs") == "victorialogs":
        lines.append(f"  logs:    http://{t.connect('victorialogs')}/select/vmui/ (VictoriaLogs UI; LogsQL at "
                     "/select/logsql/query?query=trace_id:<trace id>)")
    return "\n".join(lines)


@app.command()
def down(runtime: RuntimeOpt = "auto") -> None:
    """Stop the stack; data is kept."""
    if _runtime(runtime) == "docker":
        raise typer.Exit(docker.down())
    console.print("Stopped." if native.stop(_native_state()) else "Nothing was running.")


@app.command()
def clean(runtime: RuntimeOpt = "auto") -> None:
    """Stop the stack and delete its data."""
    if _runtime(runtime) == "docker":
        raise typer.Exit(docker.down(volumes=True))
    native.clean(_native_state())
    console.print("Stopped and removed .stack/ (configs, data, logs).")


@app.command()
def status(stack: StackOpt = ROOT / "stack.yaml", runtime: RuntimeOpt = "auto") -> None:
    """Show what runs and whether it answers its health check."""
    s = _load(stack)
    if _runtime(runtime) == "docker":
        raise typer.Exit(docker.status())
    state = _native_state()
    if not native.supervisord_running(state):
        console.print("The native stack is not running: `make up` starts it.")
        raise typer.Exit(3)
    health = {h.name: h for h in native.check(s, state)}
    _print_table(s, native.plan(state), health)
    if not all(h.healthy for h in health.values()):
        raise typer.Exit(1)


@app.command()
def logs(service: Annotated[str | None, typer.Argument()] = None, runtime: RuntimeOpt = "auto",
         lines: int = 50) -> None:
    """Show the last log lines of every component (or one)."""
    if _runtime(runtime) == "docker":
        raise typer.Exit(docker.logs(service))
    files = native.log_files(_native_state())
    if service:
        files = [f for f in files if f.stem == service]
    if not files:
        console.print("No logs yet: `make up` first.")
        return
    for f in files:
        console.rule(f.stem)
        subprocess.call(["tail", "-n", str(lines), str(f)])


@app.command(name="verify")
def verify_cmd(stack: StackOpt = ROOT / "stack.yaml", overlay: OverlayOpt = None,
               timeout: Annotated[float, typer.Option(help="seconds to wait for each link")] = 90) -> None:
    """Send one request and follow it across metrics, traces and logs, with Grafana Explore links."""
    from mlobs import verify

    s = _load(stack, overlay)
    ep = verify.Endpoints.from_stack(s)
    with console.status("Sending one request...") as st:
        def progress(pending: str, left: float) -> None:
            st.update(f"Waiting for: {pending} ({left:.0f}s left)")
        try:
            req, links = verify.verify(ep, timeout=timeout, progress=progress)
        except (httpx.HTTPError, RuntimeError) as e:
            err.print(f"[red]The sample service did not answer the request: {e}[/red]")
            raise typer.Exit(1) from None
    table = Table(title="mlobs verify: one request across the three signals")
    for col in ("link", "status", "detail"):
        table.add_column(col)
    colors = {verify.OK: "green", verify.MISSING: "red", verify.NOT_RUNNING: "yellow", verify.UNAVAILABLE: "yellow"}
    for link in links:
        table.add_row(link.name, f"[{colors[link.status]}]{link.status}[/]", link.detail)
    console.print(table)
    for link in links:
        if link.explore:
            console.print(f"{link.name}: {link.explore}", soft_wrap=True)
    missing = [link.name for link in links if link.status == verify.MISSING]
    if req is None:
        raise typer.Exit(3)
    if missing:
        err.print(f"[red]Missing links: {', '.join(missing)}[/red]")
        raise typer.Exit(1)


def _tool_env(s: config.Stack, service_name: str | None = None) -> dict[str, str]:
    """Environment for the training job and the load generator: OTLP to this stack's collector."""
    import os

    from mlobs import components

    place = components.Place(render.native_target(s, render.BACKENDS))
    env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}
    otlp = components.otlp_env(place, service_name or "")
    if not service_name:
        otlp.pop("OTEL_SERVICE_NAME")  # each tool names itself
    env.update(otlp)
    env["MLOBS_ADMIN_TOKEN"] = envfile.read(ROOT / ".env").get("MLOBS_ADMIN_TOKEN", "")
    return env


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context, stack: StackOpt = ROOT / "stack.yaml", runtime: RuntimeOpt = "auto") -> None:
    """Train a new model version where the running sample service picks it up (extra args go to
    `python -m generator.train`, e.g. --epochs 30 --degraded)."""
    s = _load(stack)
    if _runtime(runtime) == "docker":
        name = s.sample_service.name if s.sample_service else "mlobs-inference"
        raise typer.Exit(docker.compose("exec", "-e", "OTEL_SERVICE_NAME=mlobs-training", name,
                                        "python", "-m", "generator.train", *ctx.args))
    env = _tool_env(s) | {"MLOBS_MODEL_DIR": str(_native_state().data_dir / "models")}
    raise typer.Exit(subprocess.call([sys.executable, "-m", "generator.train", *ctx.args], env=env, cwd=ROOT))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def load(ctx: typer.Context, stack: StackOpt = ROOT / "stack.yaml") -> None:
    """Drive the sample service with the load generator (extra args go to `python -m generator.loadgen`,
    e.g. --rate 5 --duration 60s --fault latency:inference --chaos --seed 42)."""
    s = _load(stack)
    args = ["--host", f"http://127.0.0.1:{s.ports.inference}", *ctx.args]
    raise typer.Exit(subprocess.call([sys.executable, "-m", "generator.loadgen", *args], env=_tool_env(s), cwd=ROOT))


def _build_native(s: config.Stack, only: list[str] | None = None) -> None:
    """Build (or take from the cache) the native binaries at the versions of stack.yaml."""
    from mlobs import nativebuild

    versions = {"otelcol": s.version("otel-collector"), "prometheus": s.version("prometheus"),
                "alertmanager": s.version("alertmanager"), "jaeger": s.version("jaeger"),
                "victorialogs": s.version("victorialogs")}
    try:
        nativebuild.ensure_binaries(versions, ROOT / ".bin", only=only)
    except Exception as e:  # the message names the step and its log
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None


@app.command(name="native-deps")
def native_deps(stack: StackOpt = ROOT / "stack.yaml",
                only: Annotated[list[str] | None, typer.Option(help="build only these binaries")] = None) -> None:
    """Build the collector, Prometheus, promtool, Alertmanager, amtool, Jaeger and VictoriaLogs
    from the Go module proxy."""
    _build_native(_load(stack), only)


@app.command()
def dashboards(stack: StackOpt = ROOT / "stack.yaml",
               check: Annotated[bool, typer.Option("--check", help="fail if committed dashboards differ")] = False,
               out: Annotated[Path | None, typer.Option(help="folder (default grafana/dashboards)")] = None,
               ) -> None:
    """Generate the Grafana dashboards (grafana/dashboards/*.json) from stack.yaml, or check them."""
    from mlobs import dashboards as dash

    out_dir = out or dash.DASHBOARD_DIR
    problems = dash.render_all(_load(stack), check=check, out_dir=out_dir)
    for problem in problems:
        err.print(problem, highlight=False)
    if problems:
        err.print("[red]Run `make render`, remove the files it does not generate, and commit.[/red]")
        raise typer.Exit(1)
    console.print(f"Dashboards in {out_dir} are up to date." if check else f"Wrote the dashboards to {out_dir}.")


@app.command()
def bench(
    parts: Annotated[str, typer.Option(help="comma-separated: overhead, throughput, freshness, startup, analyzer")]
    = "overhead,throughput,freshness,startup,analyzer",
    requests: Annotated[int, typer.Option(help="overhead: measured requests per mode")] = 2000,
    warmup: Annotated[int, typer.Option(help="overhead: unmeasured requests per mode first")] = 200,
    search_steps: Annotated[int, typer.Option(help="throughput: short steps of the search per signal")] = 4,
    step_seconds: Annotated[float, typer.Option(help="throughput: seconds of each search step")] = 15,
    confirm_seconds: Annotated[float, typer.Option(help="throughput: seconds of the confirmation")] = 60,
    out: Annotated[Path, typer.Option(help="where results.json, results.md and the profiles go")] = ROOT / "bench",
    signals: Annotated[str, typer.Option(help="throughput: comma-separated traces, logs")] = "traces,logs",
    merge: Annotated[bool, typer.Option("--merge", help="keep the parts not run now from the existing results.json")]
    = False,
    deps_only: Annotated[bool, typer.Option("--deps-only", help="build telemetrygen (cached) and stop")] = False,
    port_offset: Annotated[int | None, typer.Option(help="the bench stack's ports: stack.yaml's + this, to run "
                                                         "beside other stacks on the host [default: 12000]")] = None,
) -> None:
    """Benchmark the stack on its own native stack (ports + 12000 unless --port-offset): telemetry
    overhead per request (with a profile), collector throughput, freshness, start-up and memory, the
    analyzer's cost. Writes bench/results.json and bench/results.md."""
    from generator import bench as bench_mod

    if deps_only:
        try:
            bench_mod.ensure_telemetrygen()
        except Exception as e:  # the message names the step and its log
            err.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
        return
    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(bench_mod.PARTS))
    if unknown or not chosen:
        err.print(f"--parts: {', '.join(unknown) or 'none given'}; allowed: {', '.join(bench_mod.PARTS)}")
        raise typer.Exit(2)
    if set(chosen) - {"analyzer"}:  # the bench stack's binaries (cached: a check when built)
        _build_native(_load(ROOT / "stack.yaml"))
    command = "mlobs bench" + ("" if len(chosen) == len(bench_mod.PARTS) else f" --parts {','.join(chosen)}") + (
        "" if signals == "traces,logs" else f" --signals {signals}")
    raise typer.Exit(bench_mod.run(requests=requests, warmup=warmup, parts=chosen, out_dir=out,
                                   search_steps=search_steps, step_seconds=step_seconds,
                                   confirm_seconds=confirm_seconds, command=command,
                                   signals=[x.strip() for x in signals.split(",") if x.strip()], merge=merge,
                                   port_offset=port_offset))


@app.command()
def size(
    rps: Annotated[float, typer.Option(help="requests per second, all services together")],
    services: Annotated[int, typer.Option(help="model services sending telemetry")],
    spans_per_request: Annotated[float | None, typer.Option(help="default: the sample service's")] = None,
    log_lines_per_request: Annotated[float | None, typer.Option(help="default: the sample service's")] = None,
    retention: Annotated[str | None, typer.Option(help="one retention for every store (default: stack.yaml's)")] = None,
    stack: StackOpt = ROOT / "stack.yaml",
) -> None:
    """Size the Kubernetes target: collector agents and gateways, ingest, active series, storage per day."""
    from mlobs import sizing

    s = _load(stack)
    if rps <= 0 or services < 1:
        err.print("--rps must be above 0 and --services at least 1")
        raise typer.Exit(2)
    if retention is not None:
        try:
            config.Duration(retention)
        except ValueError as e:
            err.print(f"--retention: {e}")
            raise typer.Exit(2) from None
    load = sizing.Load(rps, services,
                       sizing.SAMPLE_SPANS_PER_REQUEST if spans_per_request is None else spans_per_request,
                       sizing.SAMPLE_LOG_LINES_PER_REQUEST if log_lines_per_request is None else log_lines_per_request,
                       s.sampling.effective_percentage / 100)
    figs, provenance = sizing.figures()
    for line in sizing.report(load, sizing.size(load, s, figs, retention), figs, provenance):
        console.print(line, highlight=False, soft_wrap=True, markup=False)


@app.command()
def pins(stack: StackOpt = ROOT / "stack.yaml") -> None:
    """Print every pinned component version."""
    s = _load(stack)
    for name in config.COMPONENTS:
        c = s.components.get(name)  # every pin of the component registry
        console.print(f"{name:15} {c.version:10} {c.image}")


def incidents_table(items: list[dict]) -> Table:
    """The analyzer's incidents (GET /incidents) as a table, newest first."""
    table = Table(title="incidents (newest first)")
    for col in ("id", "status", "source", "service", "started", "alerts", "suspects"):
        table.add_column(col, overflow="fold")
    for i in items:
        suspects = i.get("suspects") or [i.get("top_suspect") or {}]
        shown = "\n".join(f"{f.get('kind')} {f.get('subject')} ({f.get('score', 0):.2f})" for f in suspects if f)
        alerts = ", ".join(sorted({a.get("alertname", "") for a in i.get("alerts", [])})) or "-"
        status_style = "red" if i.get("status") == "firing" else "green"
        table.add_row(i.get("fingerprint", ""), f"[{status_style}]{i.get('status', '')}[/{status_style}]",
                      i.get("source", "alert"), i.get("service") or "", str(i.get("starts_at", ""))[:19],
                      alerts, shown)
    return table


@app.command(name="incidents")
def incidents_cmd(stack: StackOpt = ROOT / "stack.yaml", overlay: OverlayOpt = None,
                  limit: Annotated[int, typer.Option(help="how many, newest first")] = 20,
                  url: Annotated[str | None, typer.Option(help="the analyzer's URL (default: stack.yaml's)")] = None,
                  as_json: Annotated[bool, typer.Option("--json", help="print the JSON instead")] = False) -> None:
    """The analyzer's incidents: what broke, where, and the top suspects."""
    if url is None:
        s = _load(stack, overlay)
        url = f"http://127.0.0.1:{s.ports.analyzer}"
    try:
        r = httpx.get(f"{url.rstrip('/')}/incidents", params={"limit": limit}, timeout=10)
        r.raise_for_status()
    except httpx.HTTPError as e:
        err.print(f"[red]the analyzer at {url} did not answer: {e}[/red]", highlight=False)
        raise typer.Exit(1) from e
    items = r.json()
    if as_json:
        console.print_json(json.dumps(items))
        return
    if not items:
        console.print("No incidents.")
        return
    console.print(incidents_table(items))
    console.print(f"Report of one: {url.rstrip('/')}/incidents/<id>/report.html", highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
