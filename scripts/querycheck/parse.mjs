// Parses LogQL, TraceQL and PromQL with the upstream lezer grammars: Grafana's own query editors use
// the LogQL and TraceQL ones, Prometheus' web UI the PromQL one (promtool, where built, checks PromQL further).
// Input: one JSON object per line on stdin, {"lang": "logql" | "traceql" | "promql", "expr": "..."}.
// Output: one JSON object per input line, {"ok": true} or {"ok": false, "pos": N, "error": "..."}.
// Lezer parsers recover from errors instead of throwing: a tree with an error node (⚠) is a failure.
import { createInterface } from "node:readline";
import { parser as logql } from "@grafana/lezer-logql";
import { parser as traceql } from "@grafana/lezer-traceql";
import { parser as promql } from "@prometheus-io/lezer-promql";

const parsers = { logql, traceql, promql };

function check(lang, expr) {
  const parser = parsers[lang];
  if (!parser) {
    return { ok: false, pos: 0, error: `unknown language ${JSON.stringify(lang)}, expected logql, traceql or promql` };
  }
  if (typeof expr !== "string" || expr.trim() === "") {
    return { ok: false, pos: 0, error: "empty expression" };
  }
  let bad = null;
  parser.parse(expr).iterate({
    enter(node) {
      if (bad === null && node.type.isError) {
        bad = node.from;
      }
      return bad === null;
    },
  });
  if (bad === null) {
    return { ok: true };
  }
  const near = expr.slice(Math.max(0, bad - 20), bad + 20);
  return { ok: false, pos: bad, error: `syntax error at position ${bad}, near ${JSON.stringify(near)}` };
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (line.trim() === "") {
    continue;
  }
  let result;
  try {
    const { lang, expr } = JSON.parse(line);
    result = check(lang, expr);
  } catch (err) {
    result = { ok: false, pos: 0, error: `bad input line: ${err.message}` };
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}
