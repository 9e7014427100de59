#!/usr/bin/env python3
"""Offline checks of the deployment files against each other and against the Rust sources.

Dockerfile, deploy/docker-compose.yml, deploy/prometheus, deploy/grafana and the Helm chart in
deploy/helm/bitnet: flags, environment variables, metric names, labels, ports and paths are
compared with what `bitnet serve` really defines (read by scripts/deploy_common.py).
Run through scripts/check-deploy.sh, which provides the Python packages. Exit 1 on any problem.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import sys

import jsonschema
import yaml

from deploy_common import (  # noqa: E402 (scripts/ is on sys.path when run)
    ROOT,
    DEPLOY,
    CHART,
    K8S_VERSION,
    R,
    open_routes,
    FLAGS,
    ENVS,
    ROUTES,
    BINS,
    METRICS,
    SERIES,
    check_serve_argv,
    check_env_names,
    check_promql,
    promtool,
    promtool_exprs,
)


# --- Dockerfile ----------------------------------------------------------------------------


def check_dockerfile() -> str | None:
    R.section("Dockerfile")
    import dockerfile  # BuildKit's own parser

    path = ROOT / "Dockerfile"
    if not R.check(path.exists(), "Dockerfile exists", "Dockerfile missing"):
        return None
    ins = [(c.cmd.upper(), c.value, c.json) for c in dockerfile.parse_file(str(path))]
    froms = [i for i, (w, _, _) in enumerate(ins) if w == "FROM"]
    R.check(
        len(froms) >= 2,
        f"multi-stage: {len(froms)} FROM ({', '.join(ins[i][1][0] for i in froms)})",
        f"not multi-stage: {len(froms)} FROM",
    )
    final = ins[froms[-1] :] if froms else ins
    build = ins[froms[0] : froms[-1]] if len(froms) > 1 else []

    def last(word):
        return next((v for w, v, _ in reversed(final) if w == word), None)

    build_run = " ".join(" ".join(v) for w, v, _ in build if w == "RUN")
    R.check(
        re.search(r"cargo build --release --locked -p bitnet-cli", build_run) is not None,
        "build stage: cargo build --release --locked -p bitnet-cli",
        "build stage does not run `cargo build --release --locked -p bitnet-cli`",
    )
    R.check(
        bool(BINS) and f"target/release/{BINS[0]}" in build_run,
        f"build stage installs target/release/{BINS[0] if BINS else '?'} (the [[bin]] name)",
        f"build stage does not copy target/release/{BINS} (crates/bitnet-cli [[bin]] name)",
    )
    user = (last("USER") or ["root"])[0].split(":")[0]
    R.check(
        user not in ("root", "0"),
        f"final stage runs as USER {user} (non-root)",
        f"final stage USER is {user}: must be non-root",
    )
    exposed = [p.split("/")[0] for w, v, _ in final if w == "EXPOSE" for p in v]
    R.check(len(exposed) == 1, f"EXPOSE {exposed}", f"expected one EXPOSEd port, got {exposed}")
    check_env_names("ENV", {v[i]: v[i + 1] for w, v, _ in final if w == "ENV" for i in range(0, len(v), 2)})
    ep = last("ENTRYPOINT")
    R.check(
        list(ep or []) == BINS[:1],
        f"ENTRYPOINT {list(ep or [])}",
        f"ENTRYPOINT should be {BINS[:1]}, got {ep}",
    )
    cmd = next((list(v) for w, v, j in reversed(final) if w == "CMD" and j), None)
    port = None
    if R.check(cmd is not None, "CMD (exec form) present", "no exec-form CMD"):
        vals = check_serve_argv("CMD", cmd)
        port = vals.get("port")
        R.check(vals.get("host") == "0.0.0.0", "CMD listens on 0.0.0.0", "CMD must pass --host 0.0.0.0")
        R.check(exposed == [port], f"CMD --port {port} = EXPOSE", f"CMD --port {port} != EXPOSE {exposed}")
    hc = " ".join(last("HEALTHCHECK") or [])
    R.check(
        "/health" in hc and "/health" in ROUTES and port is not None and f"/{port}" in hc,
        f"HEALTHCHECK hits /health on port {port}",
        f"HEALTHCHECK must request /health on port {port} (a route: {'/health' in ROUTES})",
    )
    R.check(any(w == "VOLUME" and "/data" in v for w, v, _ in final), "VOLUME /data", "no VOLUME /data")
    di = ROOT / ".dockerignore"
    ignore = (
        [x.strip() for x in di.read_text().splitlines() if x.strip() and not x.lstrip().startswith("#")]
        if di.exists()
        else []
    )
    needed = [p for p in ignore if p.strip("/*") in ("crates", "Cargo.toml", "Cargo.lock")]
    R.check(
        {"target/", ".git/"} <= set(ignore) and not needed,
        ".dockerignore drops target/ and .git/, keeps crates/ and Cargo.*",
        f".dockerignore must drop target/ and .git/ and keep the sources (drops {needed})",
    )
    return port


# --- compose, Prometheus, Grafana ----------------------------------------------------------


def interpolate(value, env: dict[str, str]):
    """Compose variable substitution, with the defaults when a variable is unset."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m[1] == "$":
            return "$"
        body = m[2] if m[2] is not None else m[3]
        var, op, arg = re.match(r"(\w+)(:?[-?+]|)(.*)", body, re.S).groups()
        val = env.get(var)
        if op in (":-", "-"):
            return arg if val is None or (op == ":-" and val == "") else val
        if op in (":?", "?"):
            if val is None or (op == ":?" and val == ""):
                raise ValueError(f"${{{var}}} is required: {arg}")
            return val
        if op in (":+", "+"):
            return arg if val else ""
        return val or ""

    return re.sub(r"\$(?:(\$)|\{([^}]*)\}|(\w+))", sub, value)


def compose_schema():
    try:
        files = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
        return json.loads((files / "compose-spec.json").read_text())
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def check_compose(docker_port: str | None):
    R.section("deploy/docker-compose.yml")
    path = DEPLOY / "docker-compose.yml"
    raw = yaml.safe_load(path.read_text())
    schema = compose_schema()
    if schema is None:
        R.note("compose-spec schema not available (check-jsonschema missing): structural checks only")
    else:
        errs = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(raw), key=str)
        R.check(
            not errs,
            "valid against the Compose spec schema (check-jsonschema's vendored copy)",
            "Compose spec schema: " + "; ".join(f"{e.json_path}: {e.message[:160]}" for e in errs[:5]),
        )
    c = interpolate(raw, {})
    services = c.get("services") or {}
    R.check(
        {"bitnet", "postgres", "redis", "prometheus", "grafana"} <= set(services),
        f"services: {', '.join(services)}",
        f"missing services; have {sorted(services)}",
    )
    declared = set((c.get("volumes") or {}).keys())
    for name, s in services.items():
        probs = []
        if not (s.get("image") or s.get("build")):
            probs.append("no image or build")
        b = s.get("build")
        if b:
            ctx = (DEPLOY / (b if isinstance(b, str) else b.get("context", "."))).resolve()
            df = ctx / ("Dockerfile" if isinstance(b, str) else b.get("dockerfile", "Dockerfile"))
            if not df.exists():
                probs.append(f"build file {df} missing")
        deps = s.get("depends_on") or {}
        for d in deps:
            if d not in services:
                probs.append(f"depends_on unknown service {d}")
            elif (
                isinstance(deps, dict)
                and deps[d].get("condition") == "service_healthy"
                and not services[d].get("healthcheck")
            ):
                probs.append(f"waits for {d} healthy, which has no healthcheck")
        for v in s.get("volumes") or []:
            src = (v if isinstance(v, str) else v.get("source", "")).split(":")[0]
            if src.startswith((".", "/")):
                if not (DEPLOY / src).exists():
                    probs.append(f"bind source {src} missing")
            elif src and src not in declared:
                probs.append(f"volume {src} not declared")
        for p in s.get("ports") or []:
            if not re.fullmatch(r"(?:[\d.]+:)?(?:\d+:)?\d+(?:/(?:tcp|udp))?", str(p)):
                probs.append(f"bad port {p}")
        R.check(
            not probs,
            f"service {name}: image/build, depends_on, volumes, ports",
            f"service {name}: {'; '.join(probs)}",
        )
    bitnet = services.get("bitnet", {})
    vals = check_serve_argv("compose bitnet command", [str(a) for a in bitnet.get("command") or []])
    port = vals.get("port")
    cports = [str(p).split(":")[-1].split("/")[0] for p in bitnet.get("ports") or []]
    R.check(
        port is not None and port == docker_port and port in cports,
        f"bitnet listens on {port} = Dockerfile EXPOSE = published container port",
        f"bitnet --port {port}, Dockerfile EXPOSE {docker_port}, published {cports} disagree",
    )
    for flag, scheme, svc in (
        ("database-url", "postgres://", "postgres"),
        ("redis-url", "redis://", "redis"),
    ):
        url = vals.get(flag, "")
        host = re.sub(r"^\w+://(?:[^@/]*@)?([^:/]+).*", r"\1", url)
        R.check(
            url.startswith(scheme) and host == svc and svc in bitnet.get("depends_on", {}),
            f"--{flag} {scheme}… points at service {svc}, which bitnet waits for",
            f"--{flag} {url!r} must be {scheme}{svc}… and {svc} a dependency",
        )
    env = bitnet.get("environment") or {}
    check_env_names("compose bitnet environment", env)
    model, host = str(env.get("BITNET_MODEL") or ""), None
    for v in bitnet.get("volumes") or []:
        src, _, rest = str(v).partition(":")
        dst = rest.split(":")[0]
        if model.startswith(dst.rstrip("/") + "/") and src.startswith((".", "/")):
            host = (DEPLOY / src / model[len(dst.rstrip("/")) + 1 :]).resolve()
    R.check(
        host is not None and ((host / "config.json").exists() or host.suffix == ".gguf" and host.exists()),
        f"default model {model} is {host.relative_to(ROOT) if host else '?'} (a checkpoint)",
        f"default model {model!r} is not a checkpoint on the host ({host})",
    )
    return c, port


def check_prometheus(compose: dict, port: str | None):
    R.section("deploy/prometheus/prometheus.yml")
    p = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = p.get("scrape_configs") or []
    targets = [
        (j.get("metrics_path", "/metrics"), t)
        for j in jobs
        for sc in j.get("static_configs") or []
        for t in sc.get("targets") or []
    ]
    R.check(
        ("/metrics", f"bitnet:{port}") in targets and "/metrics" in ROUTES,
        f"scrapes bitnet:{port}/metrics (service and port of the compose file)",
        f"no scrape target bitnet:{port} with path /metrics: {targets}",
    )
    promtool("prometheus.yml", "check", "config", str(DEPLOY / "prometheus/prometheus.yml"))
    mounts = compose["services"]["prometheus"].get("volumes") or []
    R.check(
        any(str(v).startswith("./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml") for v in mounts),
        "mounted at /etc/prometheus/prometheus.yml",
        "prometheus.yml is not mounted in the compose file",
    )


def check_grafana(compose: dict):
    R.section("deploy/grafana")
    g = DEPLOY / "grafana"
    ds = yaml.safe_load((g / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    uids = {d.get("uid") for d in ds}
    urls = [d.get("url", "") for d in ds]
    R.check(
        any(re.match(r"http://prometheus:9090/?$", u) for u in urls) and "prometheus" in compose["services"],
        "datasource http://prometheus:9090 (the compose service)",
        f"datasource urls {urls}",
    )
    prov = yaml.safe_load((g / "provisioning/dashboards/bitnet.yml").read_text())["providers"]
    paths = [pv.get("options", {}).get("path") for pv in prov]
    mounts = [str(v) for v in compose["services"]["grafana"].get("volumes") or []]
    R.check(
        any(f"./grafana/dashboards:{p}" in m for p in paths for m in mounts),
        f"dashboard provider path {paths} is where compose mounts grafana/dashboards",
        f"dashboard provider paths {paths} not mounted ({mounts})",
    )
    try:
        d = json.loads((g / "dashboards/bitnet-serve.json").read_text())
    except json.JSONDecodeError as e:
        R.fail(f"bitnet-serve.json does not parse: {e}")
        return
    panels = d.get("panels") or []
    ids = [p.get("id") for p in panels]
    R.check(
        d.get("uid") and d.get("title") and len(ids) == len(set(ids)) and all("gridPos" in p for p in panels),
        f"bitnet-serve.json parses: {len(panels)} panels, uid {d.get('uid')}",
        "dashboard needs uid, title, unique panel ids and gridPos",
    )
    used, before, exprs = set(), R.failures, []
    for p in panels:
        for t in p.get("targets") or []:
            exprs.append(t.get("expr", ""))
            uid = (t.get("datasource") or p.get("datasource") or {}).get("uid")
            if uid not in uids | {"${datasource}", "$datasource"}:
                R.fail(f"panel {p.get('title')!r}: datasource uid {uid} not provisioned")
            used |= check_promql(f"panel {p.get('title')!r}", t.get("expr", ""), t.get("legendFormat", ""))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"label_values\((.*),\s*(\w+)\)\s*$", q or "")
        if m:
            exprs.append(m[1])
            used |= check_promql(f"variable {v['name']}", m[1], "{{%s}}" % m[2])
    if R.failures == before:
        R.ok(f"every PromQL series and label is exported by bitnet serve ({len(used)} series)")
    promtool_exprs("dashboard PromQL syntax", exprs)
    quantiles = {SERIES[n] for n in used if n.endswith("_bucket")}
    hists = {n for n, e in METRICS.items() if e["kind"] == "histogram"}
    missing = sorted(
        n
        for n in (
            "bitnet_time_to_first_token_seconds",
            "bitnet_inter_token_latency_seconds",
            "bitnet_e2e_request_latency_seconds",
            "bitnet_request_queue_time_seconds",
        )
        if n not in quantiles
    )
    R.check(
        not missing,
        f"quantiles of {len(quantiles)}/{len(hists)} histograms (TTFT, ITL, e2e, queue, …)",
        f"no histogram_quantile panels for {missing}",
    )
    unused = sorted(n for n in METRICS if n not in {SERIES.get(u) for u in used})
    if unused:
        R.note(f"metrics not charted: {unused}")


# --- Helm ----------------------------------------------------------------------------------

VALUE_SETS = {
    "defaults": ({}, {"Deployment", "Service"}),
    "hpa+servicemonitor+webhook+pvc": (
        {
            "database": {"url": "postgres://bitnet:pw@postgres:5432/bitnet"},
            "redis": {"url": "redis://redis:6379"},
            "webhook": {"url": "http://hooks.example:8000/bitnet", "secret": "s3cret"},
            "autoscaling": {"enabled": True, "cpu": {"enabled": True}},
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "persistence": {"enabled": True, "accessModes": ["ReadWriteMany"]},
            "serveFlags": {"max-batch": 32, "queue-timeout": 12.5, "max-queue-tokens": 1000000},
        },
        {
            "Deployment",
            "Service",
            "Secret",
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
            "PersistentVolumeClaim",
        },
    ),
    "existingSecret+model-image": (
        {
            "replicaCount": 3,
            "database": {"existingSecret": "bitnet-db", "existingSecretKey": "url"},
            "redis": {"existingSecret": "bitnet-db"},
            "webhook": {"url": "http://hooks:8000/x", "existingSecret": "bitnet-hooks"},
            "model": {
                "source": "image",
                "path": "tiny",
                "name": "tiny",
                "image": {"repository": "registry.example/models/tiny", "tag": "1"},
            },
        },
        {"Deployment", "Service"},
    ),
    "sqlite+pvc+hostPath": (
        {
            "auth": False,
            "model": {"source": "hostPath", "path": "m.gguf"},
            "persistence": {"enabled": True, "existingClaim": "bitnet-data"},
        },
        {"Deployment", "Service"},
    ),
}
MUST_FAIL = {  # values -> a piece of the expected error
    'replicaCount: "x" (schema)': ({"replicaCount": "x"}, "/replicaCount"),
    "model.source: s3 (schema)": ({"model": {"source": "s3"}}, "/model/source"),
    "replicaCount 2 without database (template)": ({"replicaCount": 2}, "shared database"),
    "webhook.url without a secret (template)": ({"webhook": {"url": "http://h/x"}}, "webhook.secret"),
    "serveFlags.port (schema)": ({"serveFlags": {"port": 9000}}, "propertyName 'port'"),
}


def check_servicemonitor(obj: dict, services: list[dict]) -> list[str]:
    """ServiceMonitor has no schema in kubernetes-validate: its structure, checked here."""
    probs, spec = [], obj.get("spec") or {}
    if obj.get("apiVersion") != "monitoring.coreos.com/v1" or not obj.get("metadata", {}).get("name"):
        probs.append("apiVersion/metadata.name")
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    match = [s for s in services if sel and sel.items() <= (s["metadata"].get("labels") or {}).items()]
    if not match:
        probs.append(f"selector {sel} matches no Service")
    ports = {p.get("name") for s in match for p in s["spec"].get("ports", [])}
    for ep in spec.get("endpoints") or [{}]:
        if ep.get("port") not in ports:
            probs.append(f"endpoint port {ep.get('port')} not a Service port {ports}")
        if ep.get("path", "/metrics") not in ROUTES:
            probs.append(f"endpoint path {ep.get('path')} is not a route")
        if not re.fullmatch(r"\d+(ms|s|m|h)", str(ep.get("interval", "30s"))):
            probs.append(f"interval {ep.get('interval')}")
    return probs


def check_rendered(label: str, values: dict, objs: list[dict], kinds: set[str]):
    """Validates the objects of one render; `values` are the merged values."""
    import kubernetes_validate as kv

    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o.get("kind"), []).append(o)
    R.check(
        set(by_kind) == kinds,
        f"[{label}] renders {', '.join(sorted(by_kind))}",
        f"[{label}] renders {sorted(by_kind)}, expected {sorted(kinds)}",
    )
    probs = []
    for o in objs:
        if o.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            probs += [f"ServiceMonitor: {p}" for p in check_servicemonitor(o, by_kind.get("Service", []))]
            continue
        try:
            kv.validate(o, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            probs.append(
                f"{o['kind']}/{o['metadata']['name']}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            )
        except kv.SchemaNotFoundError as e:
            probs.append(e.message)
    R.check(
        not probs,
        f"[{label}] {len(objs)} objects valid for Kubernetes {K8S_VERSION} (strict schemas"
        + ("; ServiceMonitor: structure checked here)" if "ServiceMonitor" in by_kind else ")"),
        f"[{label}] " + "; ".join(probs),
    )
    dep = by_kind["Deployment"][0]
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    vals = check_serve_argv(f"[{label}] container args", c.get("args") or [])
    env = {e["name"]: e for e in c.get("env") or []}
    check_env_names(f"[{label}] container env", {n: e.get("value") for n, e in env.items()})
    probs = []
    if any("e+" in str(a) for a in c.get("args") or []):
        probs.append(f"number printed in float notation: {c['args']}")
    cport = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if vals.get("port") != str(cport.get("http")):
        probs.append(f"--port {vals.get('port')} != containerPort {cport}")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        g = (c.get(probe) or {}).get("httpGet") or {}
        if g.get("path") != path or path not in ROUTES or g.get("port") not in cport:
            probs.append(f"{probe} must GET {path} on a container port: {g}")
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for ct in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        probs += [
            f"mount {m['name']} has no volume" for m in ct.get("volumeMounts", []) if m["name"] not in volumes
        ]
    sc, psc = c.get("securityContext", {}), pod["spec"].get("securityContext", {})
    if not (
        psc.get("runAsNonRoot")
        and sc.get("readOnlyRootFilesystem")
        and sc.get("allowPrivilegeEscalation") is False
    ):
        probs.append("needs runAsNonRoot, readOnlyRootFilesystem, allowPrivilegeEscalation: false")
    if not dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items():
        probs.append("Deployment selector does not match its pod labels")
    for s in by_kind.get("Service", []):
        if not s["spec"]["selector"].items() <= pod["metadata"]["labels"].items():
            probs.append(f"Service {s['metadata']['name']} selects no pod")
        if any(
            p.get("targetPort") not in cport and p.get("targetPort") not in cport.values()
            for p in s["spec"]["ports"]
        ):
            probs.append("Service targetPort is not a container port")
    secrets = {
        s["metadata"]["name"]: s.get("stringData", {}) | s.get("data", {}) for s in by_kind.get("Secret", [])
    }
    existing = {values[k]["existingSecret"] for k in ("database", "redis", "webhook")} - {""}
    for name, e in env.items():
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ref["name"] not in existing and ref["key"] not in secrets.get(ref["name"], {}):
            probs.append(f"{name}: secret {ref['name']}/{ref['key']} not rendered and not an existingSecret")
    for pvc in (v.get("persistentVolumeClaim", {}).get("claimName") for v in volumes.values()):
        rendered = {p["metadata"]["name"] for p in by_kind.get("PersistentVolumeClaim", [])}
        given = {values["persistence"]["existingClaim"], values["model"]["pvc"]["claimName"]}
        if pvc and pvc not in rendered | given:
            probs.append(f"claim {pvc} neither rendered nor configured")
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        if h["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"] or "replicas" in dep["spec"]:
            probs.append("HPA must target the Deployment, which then has no replicas field")
        for m in h["spec"]["metrics"]:
            if m["type"] == "Pods":
                n = m["pods"]["metric"]["name"]
                if METRICS.get(n, {}).get("kind") != "gauge":
                    probs.append(f"HPA Pods metric {n} is not a gauge bitnet exports")
    R.check(
        not probs,
        f"[{label}] args, env, probes, ports, volumes, selectors, secrets, HPA agree",
        f"[{label}] " + "; ".join(probs),
    )


def check_helm():
    R.section("deploy/helm/bitnet")
    try:
        import helm_python as helm
        import kubernetes_validate as kv
    except ImportError as e:
        R.fail(f"{e}: run through scripts/check-deploy.sh (it installs helm-python-sdk, kubernetes-validate)")
        return
    # Each validate() call would re-read the schema files: cache them.
    kv.utils.schema_contents = functools.lru_cache(maxsize=None)(kv.utils.schema_contents)
    report = helm.lint(str(CHART), strict=True, kube_version=f"v{K8S_VERSION}")
    bad = [f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    bad += report.get("errors") or []
    R.check(
        not bad,
        f"helm lint --strict (Helm SDK {helm.helm_sdk_version()}): no warnings or errors",
        "helm lint: " + "; ".join(bad),
    )
    with helm.Chart.load(str(CHART)) as chart:
        R.check(
            chart.metadata.get("apiVersion") == "v2",
            "Chart.yaml apiVersion v2",
            "Chart.yaml must be apiVersion v2",
        )
        for label, (values, kinds) in VALUE_SETS.items():
            try:
                chart.validate_schema(values)
                out = chart.render(values, name="demo", namespace="ai", is_install=True)
            except helm.HelmError as e:
                R.fail(f"[{label}] does not render: {e}")
                continue
            objs = [
                o
                for path, text in sorted(out.items())
                if path.endswith((".yaml", ".yml"))
                for o in yaml.safe_load_all(text)
                if o
            ]
            check_rendered(label, chart.merge_values(values), objs, kinds)
        for label, (values, expected) in MUST_FAIL.items():
            try:
                chart.validate_schema(values)
                chart.render(values, name="demo", namespace="ai")
                R.fail(f"accepted bad values: {label}")
            except helm.HelmError as e:
                msg = re.sub(r"\s+", " ", str(e)).strip()
                R.check(
                    expected in msg,
                    f"rejects {label}: …{msg[max(0, msg.find(expected) - 24) :][:110]}",
                    f"{label}: failed, but not with {expected!r}: {msg}",
                )


def main() -> int:
    n_hist = sum(1 for e in METRICS.values() if e.get("buckets"))
    need = {"/health", "/ready", "/metrics"}
    free = open_routes(need)
    print(
        f"[check-deploy] from the Rust sources: {len(FLAGS)} serve flags, {len(ENVS)} BITNET_* "
        f"variables, {len(METRICS)} metrics ({n_hist} histograms with buckets), routes "
        f"{', '.join(sorted(need & ROUTES))} (open without a key: {', '.join(sorted(free or [])) or '?'})"
    )
    if free is None:
        print("  note  tenancy.rs `fn protected` not found: not checking that probes need no key")
    elif free != need or not need <= ROUTES:
        R.fail(f"/health, /ready, /metrics must be routes open without a key (open: {sorted(free)})")
    port = check_dockerfile()
    compose, _ = check_compose(port)
    check_prometheus(compose, port)
    check_grafana(compose)
    check_helm()
    verdict = "PASS" if R.failures == 0 else "FAIL"
    print(f"[check-deploy] {verdict}: {R.checks - R.failures} passed, {R.failures} failed")
    return 1 if R.failures else 0


if __name__ == "__main__":
    sys.exit(main())
