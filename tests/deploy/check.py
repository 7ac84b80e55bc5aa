#!/usr/bin/env python3
"""Checks of everything the project ships for operators, with real validators.

Run by scripts/test.sh with the validators scripts/tools.sh installs:

- Helm (helm-python-sdk binds Helm's own Go library): `lint --strict` and a
  client-side dry-run install of the chart with the default values and
  several non-default sets; the KEDA mode must refuse to render when KEDA's
  CRDs are missing.
- kubernetes-validate (strict, Kubernetes 1.30 schemas): every rendered
  manifest and every file under deploy/ (custom kinds: KEDA, Prometheus
  Operator, are checked here against their documented fields instead).
- What the review found, as assertions: no replica count beside an
  autoscaler, scaling on ready + unacked (KEDA's http protocol), the target
  following max_in_flight, scale-down stabilisation, a PDB that allows a
  drain, seccomp, no service-account token, options that render.
- hadolint on the Dockerfile (no finding allowed); the Dockerfile's
  dependency stage resolves (cargo metadata on its stand-in layout).
- promtool: `check rules` and `test rules` on deploy/prometheus; every metric
  named by the alert rules and the Grafana dashboard exists in README's table.
- deploy/compose parses, and uses the configuration keys and ports the
  worker and scripts use.

Exits non-zero on the first failed section, after printing every problem.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tts-worker"
KUBE_VERSION = "1.30.0"
PROBLEMS: list[str] = []

# KEDA's documented fields, KEDA 2.x: https://keda.sh/docs/latest/concepts/scaling-deployments/
# and https://keda.sh/docs/latest/scalers/rabbitmq-queue/ (trigger metadata).
KEDA_SCALEDOBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
    "triggers",
}
KEDA_ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
KEDA_RABBITMQ_METADATA = {
    "host", "hostFromEnv", "usernameFromEnv", "passwordFromEnv", "protocol", "mode", "value",
    "activationValue", "queueName", "vhostName", "useRegex", "excludeUnacknowledged",
    "pageSize", "operation", "timeout", "unsafeSsl",
}
KEDA_TRIGGER_FIELDS = {"type", "metadata", "authenticationRef", "metricType", "name", "useCachedMetrics"}
KEDA_TRIGGERAUTH_SPEC = {"secretTargetRef", "env", "configMapTargetRef", "podIdentity", "hashiCorpVault"}
SERVICEMONITOR_SPEC = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"}


def problem(msg: str) -> None:
    PROBLEMS.append(msg)
    print(f"  FAIL {msg}")


def ok(msg: str) -> None:
    print(f"  ok   {msg}")


def validate_objects(objs: list[dict], where: str) -> None:
    for obj in objs:
        kind = obj.get("kind")
        name = f"{where}: {kind}/{obj.get('metadata', {}).get('name')}"
        if kind == "ScaledObject":
            check_scaledobject(obj, name)
        elif kind == "TriggerAuthentication":
            extra = set(obj["spec"]) - KEDA_TRIGGERAUTH_SPEC
            if extra:
                problem(f"{name}: fields KEDA does not document: {sorted(extra)}")
        elif kind == "ServiceMonitor":
            extra = set(obj["spec"]) - SERVICEMONITOR_SPEC
            if extra:
                problem(f"{name}: unknown ServiceMonitor fields {sorted(extra)}")
        else:
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except Exception as e:  # ValidationError, SchemaNotFoundError
                problem(f"{name}: {e}")


def check_scaledobject(obj: dict, name: str) -> None:
    spec = obj["spec"]
    extra = set(spec) - KEDA_SCALEDOBJECT_SPEC
    if extra:
        problem(f"{name}: fields KEDA does not document: {sorted(extra)}")
    extra = set(spec.get("advanced", {})) - KEDA_ADVANCED
    if extra:
        problem(f"{name}: unknown advanced fields {sorted(extra)}")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    if not behavior.get("scaleDown", {}).get("stabilizationWindowSeconds"):
        problem(f"{name}: no scale-down stabilisation (advanced.horizontalPodAutoscalerConfig.behavior)")
    for trig in spec.get("triggers", []):
        extra = set(trig) - KEDA_TRIGGER_FIELDS
        if extra:
            problem(f"{name}: unknown trigger fields {sorted(extra)}")
        if trig.get("type") != "rabbitmq":
            continue
        md = trig.get("metadata", {})
        extra = set(md) - KEDA_RABBITMQ_METADATA
        if extra:
            problem(f"{name}: RabbitMQ scaler metadata KEDA does not document: {sorted(extra)}")
        if md.get("protocol") != "http":
            problem(f"{name}: protocol {md.get('protocol')!r}: only the management API (http) counts unacked messages")
        if md.get("mode") != "QueueLength":
            problem(f"{name}: mode {md.get('mode')!r}, want QueueLength")
        if md.get("excludeUnacknowledged") in ("true", True):
            problem(f"{name}: excludeUnacknowledged hides the jobs workers hold")
        if not isinstance(md.get("value"), str) or not md["value"].isdigit():
            problem(f"{name}: value must be a quoted integer, got {md.get('value')!r}")


def render(values: dict, name: str = "rel") -> tuple[list[dict], str]:
    """The manifests and NOTES.txt of a client-side dry-run install."""
    release = helm_python.Config(storage_driver="memory").install(
        str(CHART), name, values, dry_run="client", namespace="tts"
    )
    return [d for d in yaml.safe_load_all(release["manifest"]) if d], release.get("notes", "")


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def pod_spec(objs: list[dict]) -> dict:
    return by_kind(objs)["Deployment"][0]["spec"]["template"]["spec"]


VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "keda": {"autoscaling": {"mode": "keda", "keda": {"skipCrdCheck": True}},
             "config": {"TTS__AMQP__MAX_IN_FLIGHT": "1200"}},
    "keda-explicit-target": {"autoscaling": {"mode": "keda", "keda": {"skipCrdCheck": True, "targetPerReplica": "900"}}},
    "keda-lanes": {"autoscaling": {"mode": "keda", "keda": {"skipCrdCheck": True,
                                                           "lanes": ["tts.requests", "tts.requests.bulk"]}},
                   "config": {"TTS__AMQP__LANES": "tts.requests:10,tts.requests.bulk:1"}},
    "hpa": {"autoscaling": {"mode": "hpa", "minReplicas": 2, "maxReplicas": 8}},
    "everything-on": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "networkPolicy": {"enabled": True,
                          "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                          "egress": {"broker": {"ports": [5671], "to": [{"podSelector": {"matchLabels": {"app": "rabbitmq"}}}]},
                                     "storage": {"ports": [3900]},
                                     "extra": [{"ports": [{"port": 4318, "protocol": "TCP"}]}]}},
        "amqp": {"tls": {"caSecret": "rabbitmq-ca", "caKey": "ca.pem"}},
        "secrets": {"existingSecret": "other", "awsCredentialsFromSecret": False,
                    "keys": {"segmindApiKey": "api", "amqpUrl": "amqp"}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/tts"}},
        "imagePullSecrets": [{"name": "regcred"}],
        "image": {"digest": "sha256:" + "a" * 64},
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "tts", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["workers"]}]}}]}},
        "topologySpreadConstraints": [],
        "priorityClassName": "batch",
        "extraEnv": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel:4318"}],
        "podAnnotations": {"a": "b"},
    },
    "pdb-off": {"podDisruptionBudget": None, "serviceAccount": {"create": False, "name": "shared"}},
}


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def check_memory(spec: dict, label: str) -> None:
    """The memory the worker's settings allow fits the pod's limit (the
    worker's own Settings::memory_bound, with config/default.toml's values
    where the chart sets none)."""
    c = spec["containers"][0]
    limit = c.get("resources", {}).get("limits", {}).get("memory")
    if not limit:
        return
    env = {e["name"]: e.get("value") for e in c["env"]}
    defaults = {"TTS__JOBS__MAX_TRANSFERS": 16, "TTS__SEGMIND__MAX_AUDIO_BYTES": 104857600,
                "TTS__AMQP__MAX_BYTES_IN_FLIGHT": 67108864}
    v = {k: int(env.get(k) or d) for k, d in defaults.items()}
    bound = (v["TTS__JOBS__MAX_TRANSFERS"] * v["TTS__SEGMIND__MAX_AUDIO_BYTES"] * 3
             + v["TTS__AMQP__MAX_BYTES_IN_FLIGHT"] * 3 + (64 << 20))
    if bound > memory_bytes(limit):
        problem(f"chart[{label}]: the settings allow {bound >> 20} MiB but the memory limit is {limit}")


def check_network_policy(spec: dict, label: str) -> None:
    """Egress is restricted and never reaches the link-local metadata range."""
    if "Egress" not in spec.get("policyTypes", []):
        problem(f"chart[{label}]: the NetworkPolicy leaves egress open")
    rules = spec.get("egress", [])
    if not any({"port": 53, "protocol": "UDP"} in r.get("ports", []) for r in rules):
        problem(f"chart[{label}]: no DNS egress")
    for rule in rules:
        if not rule.get("ports"):
            problem(f"chart[{label}]: an egress rule without ports: {rule}")
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block and block["cidr"] == "0.0.0.0/0" and "169.254.0.0/16" not in block.get("except", []):
                problem(f"chart[{label}]: egress to anywhere includes the metadata address: {rule}")


def check_helm() -> None:
    print("helm: lint --strict, render, validate")
    for label, values in VALUE_SETS.items():
        lint = helm_python.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
        serious = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2] + lint.get("errors", [])
        if serious:
            problem(f"helm lint ({label}): {serious}")
        try:
            objs, notes = render(values)
        except helm_python.HelmError as e:
            problem(f"render ({label}): {e}")
            continue
        validate_objects(objs, f"chart[{label}]")
        kinds = by_kind(objs)
        dep = kinds["Deployment"][0]
        spec = pod_spec(objs)
        mode = values.get("autoscaling", {}).get("mode", "none")
        if mode != "none" and "replicas" in dep["spec"]:
            problem(f"chart[{label}]: replicas set beside an autoscaler")
        if spec.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problem(f"chart[{label}]: no RuntimeDefault seccomp profile")
        if spec.get("automountServiceAccountToken") is not False:
            problem(f"chart[{label}]: service-account token mounted")
        if not notes.strip():
            problem(f"chart[{label}]: empty NOTES.txt")
        if mode == "keda":
            so = kinds["ScaledObject"][0]
            want = values["autoscaling"]["keda"].get("targetPerReplica") or values.get("config", {}).get(
                "TTS__AMQP__MAX_IN_FLIGHT", "5000")
            got = so["spec"]["triggers"][0]["metadata"]["value"]
            if got != want:
                problem(f"chart[{label}]: KEDA target {got}, want {want} (max_in_flight unless set)")
            meta = so["spec"]["triggers"][0]["metadata"]
            lanes = values["autoscaling"]["keda"].get("lanes")
            if lanes:
                pattern = re.compile(meta["queueName"])
                summed = meta.get("useRegex") == "true" and meta.get("operation") == "sum"
                matched = all(pattern.fullmatch(q) for q in lanes)
                if not (summed and matched and not pattern.fullmatch("tts.requests.dead")
                        and not pattern.fullmatch("tts.requestsXbulk")):
                    problem(f"chart[{label}]: KEDA does not sum exactly the lanes {lanes}: {meta}")
            elif meta.get("useRegex"):
                problem(f"chart[{label}]: KEDA matches queues by regex without lanes")
        if mode == "hpa":
            hpa = kinds["HorizontalPodAutoscaler"][0]
            if not hpa["spec"].get("behavior", {}).get("scaleDown", {}).get("stabilizationWindowSeconds"):
                problem(f"chart[{label}]: HPA without scale-down stabilisation")
        if "PodDisruptionBudget" in kinds:
            pdb = kinds["PodDisruptionBudget"][0]["spec"]
            if "minAvailable" in pdb or pdb.get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
                problem(f"chart[{label}]: the PDB can block a drain: {pdb}")
        elif values.get("podDisruptionBudget", {}) is not None:
            problem(f"chart[{label}]: no PodDisruptionBudget")
        if label == "everything-on":
            c = spec["containers"][0]
            env = {e["name"]: e for e in c["env"]}
            if env.get("SSL_CERT_FILE", {}).get("value") != "/etc/tts-worker/ca/ca.pem":
                problem("chart[everything-on]: amqp CA not wired to SSL_CERT_FILE")
            if "AWS_ACCESS_KEY_ID" in env:
                problem("chart[everything-on]: AWS keys from the Secret although IRSA was chosen")
            if env["TTS__AMQP__URL"]["valueFrom"]["secretKeyRef"] != {"name": "other", "key": "amqp"}:
                problem("chart[everything-on]: existingSecret key names ignored")
            if "@sha256:" not in c["image"]:
                problem("chart[everything-on]: digest ignored")
            for k in ("ServiceMonitor", "NetworkPolicy"):
                if k not in kinds:
                    problem(f"chart[everything-on]: no {k}")
            if kinds["ServiceMonitor"][0]["metadata"]["labels"].get("release") != "kube-prometheus-stack":
                problem("chart[everything-on]: serviceMonitor.labels ignored")
            for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets", "priorityClassName"):
                if key not in spec:
                    problem(f"chart[everything-on]: {key} ignored")
            if "topologySpreadConstraints" in spec:
                problem("chart[everything-on]: topologySpreadConstraints: [] should turn spreading off")
        if "NetworkPolicy" not in kinds and values.get("networkPolicy", {}).get("enabled", True):
            problem(f"chart[{label}]: no NetworkPolicy although it is on by default")
        for policy in kinds.get("NetworkPolicy", []):
            check_network_policy(policy["spec"], label)
        if mode == "keda":
            auth = kinds["TriggerAuthentication"][0]["spec"]["secretTargetRef"][0]["name"]
            worker_secret = values.get("secrets", {}).get("existingSecret", "tts-worker-secrets")
            if auth == worker_secret:
                problem(f"chart[{label}]: KEDA reads the worker's Secret {auth}")
        check_memory(spec, label)
        if label == "pdb-off" and spec["serviceAccountName"] != "shared":
            problem("chart[pdb-off]: serviceAccount.name ignored")
        ok(f"chart[{label}]: {len(objs)} objects ({', '.join(sorted(kinds))})")
    # KEDA mode without KEDA's CRDs must say so, not render objects that fail on apply.
    try:
        render({"autoscaling": {"mode": "keda"}})
        problem("chart: autoscaling.mode=keda rendered without KEDA's CRDs")
    except helm_python.HelmError as e:
        if "KEDA" not in str(e):
            problem(f"chart: unclear error without KEDA's CRDs: {e}")
        else:
            ok("chart: keda mode without KEDA's CRDs fails with a clear message")
    # The schema rejects mistakes instead of ignoring them, and credentials
    # in plain values.
    for bad in ({"autoscaling": {"mode": "kedda"}}, {"replicaCount": "two"}, {"podDisruptionBudget": {"minAvailable": 1}},
                {"config": {"TTS__SEGMIND__API_KEY": "sk-live"}}, {"config": {"TTS__AMQP__URL": "amqp://u:p@mq/%2f"}},
                {"config": {"AWS_SECRET_ACCESS_KEY": "x"}}, {"config": {"AWS_ACCESS_KEY_ID": "AKIA"}},
                {"extraEnv": [{"name": "SEGMIND_API_KEY", "value": "sk-live"}]},
                {"networkPolicy": {"egress": [{"ports": [{"port": 443}]}]}}):
        try:
            render(bad)
            problem(f"chart: values.schema.json accepted {bad}")
        except helm_python.HelmError:
            ok(f"chart: values.schema.json rejects {bad}")


def check_deploy_dir() -> None:
    print("deploy/: kubernetes-validate --strict, KEDA fields, review findings")
    files = sorted(p for p in (ROOT / "deploy").rglob("*.yaml")
                   if "compose" not in p.parts and "prometheus" not in p.parts)
    objs_by_file = {}
    for f in files:
        objs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        objs_by_file[f] = objs
        validate_objects(objs, str(f.relative_to(ROOT)))
    everything = [o for objs in objs_by_file.values() for o in objs]
    kinds = by_kind(everything)
    if "replicas" in kinds["Deployment"][0]["spec"] and "ScaledObject" in kinds:
        problem("deploy/: the Deployment sets replicas beside a ScaledObject")
    top = [o for f, objs in objs_by_file.items() if f.parent == ROOT / "deploy" for o in objs]
    crd_kinds = {o["kind"] for o in top} & {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
    if crd_kinds:
        problem(f"deploy/*.yaml needs CRDs ({sorted(crd_kinds)}): `kubectl apply -f deploy/` would fail without them")
    max_in_flight = next(o for o in kinds["ConfigMap"])["data"]["TTS__AMQP__MAX_IN_FLIGHT"]
    keda_value = kinds["ScaledObject"][0]["spec"]["triggers"][0]["metadata"]["value"]
    if keda_value != max_in_flight:
        problem(f"deploy/: KEDA value {keda_value} != TTS__AMQP__MAX_IN_FLIGHT {max_in_flight}")
    ok(f"deploy/: {len(everything)} objects in {len(files)} files")


def check_dockerfile() -> None:
    print("Dockerfile: hadolint, dependency stage")
    out = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    if out.returncode != 0 or out.stdout.strip():
        problem(f"hadolint: {out.stdout}{out.stderr}")
    else:
        ok("hadolint: no findings")
    text = (ROOT / "Dockerfile").read_text()
    if "segmind-sim" in text.split("AS runtime", 1)[1]:
        problem("Dockerfile: the runtime stage contains the simulator")
    # The dependency stage's stand-in layout must satisfy cargo.
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        shutil.copy(ROOT / "Cargo.toml", t)
        shutil.copy(ROOT / "Cargo.lock", t)
        (t / "segmind-sim" / "src").mkdir(parents=True)
        shutil.copy(ROOT / "segmind-sim" / "Cargo.toml", t / "segmind-sim")
        # The true-peak crate is small and copied whole, as the Dockerfile does.
        shutil.copytree(ROOT / "true-peak", t / "true-peak")
        (t / "src").mkdir()
        (t / "benches").mkdir()
        for f in ("src/main.rs", "benches/fleet.rs", "segmind-sim/src/main.rs"):
            (t / f).write_text("fn main() {}\n")
        for f in ("src/lib.rs", "segmind-sim/src/lib.rs"):
            (t / f).write_text("")
        out = subprocess.run(["cargo", "metadata", "--locked", "--format-version", "1"],
                             cwd=t, capture_output=True, text=True)
        if out.returncode != 0:
            problem(f"Dockerfile deps stage: cargo rejects the stand-in layout: {out.stderr[-2000:]}")
        else:
            ok("Dockerfile deps stage: cargo accepts the stand-in layout (--locked)")


def documented_metrics() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| metric | type | labels | meaning |")
    names = set()
    for line in readme[start:].splitlines()[2:]:
        line = line.strip()
        if not line.startswith("|"):
            break
        names.add(line.split("`")[1])
    return names


def metric_names(expr: str) -> set[str]:
    base = set(re.findall(r"\b(tts_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in base}


def check_prometheus_and_grafana() -> None:
    print("deploy/prometheus and deploy/grafana: promtool, metric names")
    promtool = os.environ.get("TTS_PROMTOOL", "promtool")
    d = ROOT / "deploy" / "prometheus"
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]):
        out = subprocess.run([promtool, *args], cwd=d, capture_output=True, text=True)
        if out.returncode != 0:
            problem(f"promtool {' '.join(args)}: {out.stdout}{out.stderr}")
        else:
            ok(f"promtool {' '.join(args)}")
    known = documented_metrics()
    rules = yaml.safe_load((d / "alerts.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load((d / "alerts_test.yaml").read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    if alerts - tested:
        problem(f"alerts without a promtool unit test: {sorted(alerts - tested)}")
    used = set()
    for g in rules["groups"]:
        for r in g["rules"]:
            used |= metric_names(r["expr"])
    dash = json.loads((ROOT / "deploy" / "grafana" / "tts-worker.json").read_text())
    for p in dash["panels"]:
        for t in p.get("targets", []):
            used |= metric_names(t["expr"])
    for v in dash.get("templating", {}).get("list", []):
        used |= metric_names(str(v.get("query", "")))
    unknown = used - known
    if unknown:
        problem(f"alerts/dashboard use metrics the worker does not export: {sorted(unknown)}")
    else:
        ok(f"alerts and dashboard use {len(used)} metrics, all exported")
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("queue depth", "in flight", "throughput", "inference", "duration", "retries", "errors",
                   "calls per job", "credits", "paused"):
        if needed not in titles:
            problem(f"dashboard: no panel for {needed}")


def config_keys() -> set[str]:
    """TTS__SECTION__KEY names of config/default.toml, commented-out optional keys included."""
    keys, section = set(), None
    for line in (ROOT / "config" / "default.toml").read_text().splitlines():
        if m := re.match(r"^\[([a-z_0-9]+)\]", line):
            section = m.group(1)
        elif section and (m := re.match(r"^#?\s?([a-z_0-9]+)\s*=", line)):
            keys.add(f"TTS__{section.upper()}__{m.group(1).upper()}")
    return keys


def check_compose() -> None:
    print("deploy/compose: parses, consistent with the worker and scripts")
    path = ROOT / "deploy" / "compose" / "compose.yaml"
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services", {})
    for needed in ("rabbitmq", "garage", "garage-init", "segmind-sim", "worker-1", "worker-2", "prometheus", "grafana"):
        if needed not in services:
            problem(f"compose: no {needed} service")
    keys = config_keys() | {"TTS__SEGMIND__API_KEY"}
    stack_env = (ROOT / "scripts" / "stack.sh").read_text()
    for name, svc in services.items():
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        for k in env:
            if k.startswith("TTS__") and k not in keys:
                problem(f"compose {name}: {k} is not a configuration key")
        for dep in svc.get("depends_on", {}):
            if dep not in services:
                problem(f"compose {name}: depends on unknown {dep}")
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("./") and not (path.parent / src).exists():
                problem(f"compose {name}: missing file {src}")
    for k in ("TTS__S3__ENDPOINT", "TTS__S3__FORCE_PATH_STYLE", "TTS__S3__REGION", "TTS__AMQP__URL"):
        if k not in stack_env:
            problem(f"scripts/stack.sh does not set {k}: compose and scripts drifted")
    worker_env = services.get("worker-1", {}).get("environment", {})
    if worker_env.get("TTS__S3__REGION") != "garage" or ":3900" not in worker_env.get("TTS__S3__ENDPOINT", ""):
        problem("compose: the workers' S3 settings differ from scripts/stack.sh (region garage, port 3900)")
    prom = yaml.safe_load((path.parent / "prometheus.yml").read_text())
    targets = [t for sc in prom["scrape_configs"] for c in sc["static_configs"] for t in c["targets"]]
    if not {"worker-1:9090", "worker-2:9090"} <= set(targets):
        problem(f"compose: Prometheus does not scrape both workers: {targets}")
    if not any("alerts.yaml" in r for r in prom.get("rule_files", [])):
        problem("compose: Prometheus does not load the alert rules")
    ok(f"compose: {len(services)} services")


def main() -> int:
    for section in (check_helm, check_deploy_dir, check_dockerfile, check_prometheus_and_grafana, check_compose):
        try:
            section()
        except Exception as e:  # a crash in a check is a failure, with its cause
            problem(f"{section.__name__} crashed: {type(e).__name__}: {e}")
    if PROBLEMS:
        print(f"\n{len(PROBLEMS)} problem(s)")
        return 1
    print("\ndeploy checks: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
