"""What `bitnet serve` really defines, read from the Rust sources (clap structs, metrics macros,
routes), and the checks shared by scripts/check_deploy.py: the report, serve command lines and
environment variables, PromQL expressions (names, labels; promtool when present).
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "bitnet"
K8S_VERSION = "1.33.0"  # Kubernetes schemas the rendered chart is validated against


class Report:
    def __init__(self):
        self.failures = 0
        self.checks = 0

    def section(self, title: str):
        print(f"== {title}")

    def ok(self, msg: str):
        self.checks += 1
        print(f"  ok    {msg}")

    def fail(self, msg: str):
        self.checks += 1
        self.failures += 1
        print(f"  FAIL  {msg}")

    def note(self, msg: str):
        print(f"  note  {msg}")

    def check(self, cond: bool, ok: str, bad: str | None = None) -> bool:
        (self.ok if cond else self.fail)(ok if cond or bad is None else bad)
        return cond


R = Report()

# --- what the Rust sources define --------------------------------------------------------


def struct_body(text: str, name: str) -> str:
    start = re.search(rf"struct\s+{name}\s*\{{", text)
    if not start:
        raise SystemExit(f"check_deploy: struct {name} not found (sources changed?)")
    depth, i = 1, start.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start.end() : i - 1]


ARG_RE = re.compile(
    r"#\[arg\((?P<attr>.*?)\)\]\s*(?:#\[[^\n]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?(?P<field>\w+)\s*:\s*(?P<ty>[^,\n]+),",
    re.S,
)


def clap_flags(path: Path, struct: str) -> dict[str, tuple[str | None, str]]:
    """Long flag -> (env var, Rust type) of the `#[arg(long …)]` fields of a clap struct."""
    flags = {}
    for m in ARG_RE.finditer(struct_body(path.read_text(), struct)):
        attr = m["attr"]
        if not re.search(r"\blong\b", attr):
            continue
        long = re.search(r'\blong\s*=\s*"([^"]+)"', attr)
        env = re.search(r'\benv\s*=\s*"([^"]+)"', attr)
        ty = re.sub(r"^Option<(.*)>$", r"\1", m["ty"].strip())
        flags[long[1] if long else m["field"].replace("_", "-")] = (env[1] if env else None, ty)
    return flags


def balanced(text: str, i: int) -> str:
    """The text inside the parenthesis opening at text[i]."""
    depth, j = 0, i
    while True:
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        j += 1
        if depth == 0:
            return text[i + 1 : j - 1]


MACRO_RE = re.compile(r"\b(?:describe_)?(counter|gauge|histogram)!\s*\(")


def rust_metrics() -> tuple[dict[str, dict], list[re.Pattern]]:
    """Metric name -> {kind, labels}; and the patterns of histograms given buckets."""
    metrics: dict[str, dict] = {}
    bucketed: list[re.Pattern] = []
    for f in sorted((ROOT / "crates/bitnet-server/src").rglob("*.rs")):
        text = f.read_text()
        for m in MACRO_RE.finditer(text):
            args = balanced(text, m.end() - 1)
            name = re.match(r'\s*"([^"]+)"', args)
            if not name:
                continue
            e = metrics.setdefault(name[1], {"kind": m[1], "labels": set()})
            e["labels"] |= set(re.findall(r'"(\w+)"\s*=>', args))
        if "set_buckets(" in text:
            bucketed.append(re.compile(".*"))
        for kind, pat in re.findall(
            r'set_buckets_for_metric\(\s*Matcher::(Full|Prefix|Suffix)\("([^"]+)"', text
        ):
            p = re.escape(pat)
            bucketed.append(re.compile({"Full": f"^{p}$", "Prefix": f"^{p}", "Suffix": f"{p}$"}[kind]))
    return metrics, bucketed


def rust_facts():
    cli = ROOT / "crates/bitnet-cli/src"
    flags = clap_flags(ROOT / "crates/bitnet-server/src/config.rs", "ServeOptions")
    flags |= clap_flags(cli / "commands/serve.rs", "Args")
    flags |= clap_flags(cli / "main.rs", "Cli")  # global flags (--threads)
    envs = {e for e, _ in flags.values() if e}
    for f in (ROOT / "crates").glob("*/src/**/*.rs"):  # variables read directly
        envs |= set(re.findall(r'env::var(?:_os)?\("(BITNET_\w+)"\)', f.read_text()))
    routes = set(re.findall(r'\.route\(\s*"([^"]+)"', (ROOT / "crates/bitnet-server/src/app.rs").read_text()))
    bins = re.findall(
        r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', (ROOT / "crates/bitnet-cli/Cargo.toml").read_text()
    )
    metrics, bucketed = rust_metrics()
    series: dict[str, str] = {"up": "up"}  # exported series name -> metric (`up`: Prometheus')
    for name, e in metrics.items():
        series[name] = name
        if e["kind"] == "histogram":
            e["buckets"] = any(p.search(name) for p in bucketed)
            for suffix in ("_bucket", "_sum", "_count") if e["buckets"] else ("_sum", "_count"):
                series[name + suffix] = name
    return flags, envs, routes, bins, metrics, series


def open_routes(paths) -> set[str] | None:
    """Which of `paths` need no API key, by tenancy.rs `fn protected` (None: not found)."""
    text = (ROOT / "crates/bitnet-server/src/tenancy.rs").read_text()
    m = re.search(r"fn protected\(path: &str\) -> bool \{(.*?)\n\}", text, re.S)
    if not m:
        return None
    prefixes = re.findall(r'path\.starts_with\("([^"]*)"\)', m[1])
    exact = re.findall(r'path\s*==\s*"([^"]*)"', m[1])
    return {p for p in paths if p not in exact and not any(p.startswith(x) for x in prefixes)}


FLAGS, ENVS, ROUTES, BINS, METRICS, SERIES = rust_facts()
TARGET_LABELS = {"instance", "job", "pod", "namespace", "service", "container", "endpoint"}
LABELS = set().union(*(e["labels"] for e in METRICS.values())) | TARGET_LABELS | {"le", "quantile"}


VALUE_RE = {
    "bool": r"(|true|false)",
    "u16": r"\d{1,5}",
    "usize": r"\d+",
    "u32": r"\d+",
    "u64": r"\d+",
    "f64": r"-?\d+(\.\d+)?",
}


def value_ok(ty: str, val: str) -> bool:
    """Whether clap would parse `val` as the field's type (bare `--flag` only for bools)."""
    return re.fullmatch(VALUE_RE[ty], val) is not None if ty in VALUE_RE else val != ""


def check_serve_argv(where: str, argv: list[str]) -> dict[str, str]:
    """Checks the flags after `serve`; returns flag -> value."""
    if not argv or argv[0] != "serve":
        R.fail(f"{where}: command is not `serve …`: {argv}")
        return {}
    values, bad, i = {}, [], 1
    while i < len(argv):
        tok = str(argv[i])
        if tok.startswith("--"):
            name, eq, val = tok[2:].partition("=")
            if name in values:
                bad.append(f"--{name} (given twice)")
            if name not in FLAGS:
                bad.append("--" + name)
            if not eq and i + 1 < len(argv) and not str(argv[i + 1]).startswith("--"):
                val, i = str(argv[i + 1]), i + 1
            values[name] = val
            ty = FLAGS.get(name, (None, "String"))[1]
            if not value_ok(ty, val):
                bad.append(f"--{name}={val} (not a {ty})")
        i += 1
    R.check(
        not bad,
        f"{where}: serve flags exist, values parse ({' '.join('--' + f for f in values)})",
        f"{where}: unknown or ill-typed `bitnet serve` flags {bad}"
        + "".join(
            f" ({f}: did you mean --{close[0]}?)"
            for f in bad
            if (close := difflib.get_close_matches(f[2:], list(FLAGS), 1))
        ),
    )
    return values


def check_env_names(where: str, env: dict) -> None:
    """BITNET_* names bitnet reads, with values of the flag's type (None: not known here)."""
    names = sorted(n for n in env if n.startswith("BITNET_"))
    types = {e: ty for e, ty in FLAGS.values() if e}
    bad = [n for n in names if n not in ENVS]
    bad += [
        f"{n}={env[n]} (not a {types[n]})"
        for n in names
        if n in types and isinstance(env[n], str) and not value_ok(types[n], env[n])
    ]
    R.check(
        not bad,
        f"{where}: BITNET_* variables are read by bitnet ({', '.join(names) or 'none'})",
        f"{where}: variables bitnet does not read, or bad values: {bad}",
    )


# --- PromQL --------------------------------------------------------------------------------

PROMQL_FUNCS = set(
    "abs absent absent_over_time avg avg_over_time ceil changes clamp clamp_max clamp_min count "
    "count_over_time count_values delta deriv exp floor group histogram_quantile holt_winters "
    "idelta increase irate label_join label_replace last_over_time ln log2 log10 max "
    "max_over_time min min_over_time predict_linear quantile quantile_over_time rate resets "
    "round scalar sgn sort sort_desc sqrt stddev stdvar sum sum_over_time time timestamp topk "
    "bottomk vector".split()
)
PROMQL_WORDS = set("by without on ignoring group_left group_right bool and or unless offset inf nan".split())


def promql_refs(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(series names, label names, unknown functions) used in a PromQL expression."""
    labels: set[str] = set()
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    e = re.sub(r"\$\{[^}]*\}|\$\w+", "", e)  # Grafana variables
    for body in re.findall(r"\{([^}]*)\}", e):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
    e = re.sub(r"\{[^}]*\}", " ", e)
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        labels |= set(re.findall(r"\w+", body))
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\boffset\s+-?\w+", " ", e)
    e = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", e)
    names, funcs = set(), set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", e):
        word, rest = m[0], e[m.end() :].lstrip()
        if rest.startswith("("):
            if word not in PROMQL_FUNCS:
                funcs.add(word)
        elif word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names, labels, funcs


def check_promql(where: str, expr: str, legend: str = "") -> set[str]:
    names, labels, funcs = promql_refs(expr)
    labels |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    bad_names = sorted(n for n in names if n not in SERIES)
    bad_labels = sorted(labels - LABELS)
    problems = []
    if bad_names:
        problems.append(f"unknown series {bad_names}")
    if bad_labels:
        problems.append(f"unknown labels {bad_labels}")
    if funcs:
        problems.append(f"unknown functions {sorted(funcs)}")
    for n in names:
        base = SERIES.get(n)
        if base and n.endswith("_bucket") and not METRICS[base].get("buckets"):
            problems.append(f"{n}: {base} has no buckets (a summary)")
    if problems:
        R.fail(f"{where}: {'; '.join(problems)} in `{expr}`")
    return names


def promtool(where: str, *args: str) -> None:
    """Runs Prometheus' own checker when installed (Debian: apt-get install prometheus)."""
    if not shutil.which("promtool"):
        R.note(f"{where}: promtool not installed, skipped (Debian package `prometheus` has it)")
        return
    r = subprocess.run(["promtool", *args], capture_output=True, text=True)
    out = " ".join((r.stdout + r.stderr).split())
    R.check(r.returncode == 0, f"{where}: promtool {args[0]} {args[1]}: OK", f"{where}: promtool: {out}")


def promtool_exprs(where: str, exprs: list[str]) -> None:
    """PromQL syntax by Prometheus' parser: the expressions as recording rules."""
    sub = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
    rules = []
    for i, e in enumerate(exprs):
        for k, v in sub.items():
            e = e.replace(k, v)
        e = re.sub(r"\$\{\w+\}|\$\w+", ".*", e)
        rules.append({"record": f"dashboard:expr_{i}", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        promtool(f"{where} ({len(exprs)} exprs)", "check", "rules", f.name)
