#!/usr/bin/env bash
# Checks the alerting rules and what is made from them, for CI (bash scripts/check-alerts.sh
# from .ci/run) and by hand (from any folder):
#   deploy/prometheus/dicom-cache-warmer.rules.yml        promtool check rules
#   deploy/prometheus/dicom-cache-warmer.rules.test.yml   promtool test rules (unit tests)
#   deploy/kubernetes/components/prometheus-rule/         the PrometheusRule is what
#                                                         scripts/gen-prometheus-rule.sh makes
#                                                         of the rules file (no drift), and the
#                                                         component renders with kustomize
#                                                         (kustomize or kubectl kustomize, when
#                                                         there is one) with the same rules
#   deploy/grafana/dicom-cache-warmer.json                valid JSON; scripts/check-dashboard.py
#                                                         finds its metric names
#   scripts/check-alerts.sh, gen-prometheus-rule.sh       shellcheck
# Installs what is missing with apt (through sudo when not root): promtool (Debian package
# prometheus, whose server this script stops and disables again: only promtool is wanted)
# and shellcheck. When promtool cannot be installed, the promtool checks are skipped with a
# message, except under CI=true, where that fails. Exit status 0 only when every check ran
# and passed, or was skipped as said.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly RULES=deploy/prometheus/dicom-cache-warmer.rules.yml
readonly TESTS=deploy/prometheus/dicom-cache-warmer.rules.test.yml
readonly COMPONENT=deploy/kubernetes/components/prometheus-rule
readonly DASHBOARD=deploy/grafana/dicom-cache-warmer.json

checks=0
skipped=()
step() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'check-alerts: FAILED: %s\n' "$*" >&2
    exit 1
}
passed() {
    checks=$((checks + 1))
    printf 'ok: %s\n' "$*"
}
skip() {
    skipped+=("$1")
    printf 'check-alerts: SKIPPED %s\n' "$*" >&2
}

can_be_root() { [ "$(id -u)" -eq 0 ] || command -v sudo > /dev/null; }
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
apt_updated=false
apt_install() {
    command -v apt-get > /dev/null && can_be_root || return 1
    if [ "$apt_updated" = false ]; then
        as_root apt-get update -qq || return 1
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- tools -------------------------------------------------------------------------------
step "tools"
if ! command -v promtool > /dev/null; then
    echo "promtool not found: installing the Debian package prometheus with apt"
    before=$(pgrep -x prometheus || true)
    if apt_install prometheus; then
        # The package starts and enables its server where it can (systemd); stop what it
        # started, so that installing promtool leaves no Prometheus running.
        if [ -d /run/systemd/system ] && command -v systemctl > /dev/null; then
            as_root systemctl disable --now prometheus.service || true
        fi
        for pid in $(pgrep -x prometheus || true); do
            if ! grep -qx "$pid" <<< "$before"; then
                echo "stopping the prometheus server the package started (pid $pid)"
                as_root kill "$pid" || true
            fi
        done
    fi
fi
have_promtool=false
if command -v promtool > /dev/null; then
    have_promtool=true
    echo "promtool: $(promtool --version 2>&1 | head -n 1)"
elif [ "${CI:-}" = true ]; then
    fail "promtool is not installed and apt could not install it (package prometheus)"
else
    skip "promtool checks: promtool is not installed and could not be installed" \
        "(apt-get install prometheus needs apt and root or sudo)"
fi
if ! command -v shellcheck > /dev/null; then
    echo "shellcheck not found: installing it with apt"
    apt_install shellcheck || true
fi
if command -v shellcheck > /dev/null; then
    echo "shellcheck: $(shellcheck --version | sed -n 's/^version: //p')"
fi
# Python with PyYAML, for comparing YAML trees: lint-deploy.sh's venv has it, else the
# system's python3, else Debian's python3-yaml.
PY=
for candidate in .dev/venv/bin/python python3 /usr/bin/python3; do
    if command -v "$candidate" > /dev/null && "$candidate" -c 'import yaml' 2> /dev/null; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    echo "installing python3-yaml with apt"
    apt_install python3-yaml || true
    /usr/bin/python3 -c 'import yaml' 2> /dev/null && PY=/usr/bin/python3
fi
[ -n "$PY" ] || fail "no Python with PyYAML (apt-get install python3-yaml)"
echo "python with yaml: $PY"

# --- these scripts -----------------------------------------------------------------------
step "shellcheck scripts/check-alerts.sh scripts/gen-prometheus-rule.sh"
if command -v shellcheck > /dev/null; then
    shellcheck scripts/check-alerts.sh scripts/gen-prometheus-rule.sh
    passed "shellcheck: no findings"
else
    skip "shellcheck: not installed and could not be installed"
fi

# --- the rules ---------------------------------------------------------------------------
if [ "$have_promtool" = true ]; then
    step "promtool check rules $RULES"
    promtool check rules "$RULES"
    passed "promtool check rules"

    step "promtool test rules $TESTS"
    promtool test rules "$TESTS"
    passed "promtool test rules: $(grep -c '^  - name:' "$TESTS") test groups"
fi

# --- the PrometheusRule --------------------------------------------------------------------
step "PrometheusRule generated from $RULES"
bash scripts/gen-prometheus-rule.sh --check
passed "no drift: $COMPONENT/prometheusrule.yaml is the script's output"

# The YAML trees too: spec of the PrometheusRule == the rules file; namespace and labels.
# Reads one file (the committed resource, or a kustomize rendering holding it).
compare_rules() {
    "$PY" - "$RULES" "$1" "$tmp/rendered-rules.yml" << 'EOF'
import sys, yaml

rules_path, resource_path, out_path = sys.argv[1:4]
rules = yaml.safe_load(open(rules_path))
found = [d for d in yaml.safe_load_all(open(resource_path)) if d and d.get("kind") == "PrometheusRule"]
problems = []
if len(found) != 1:
    sys.exit(f"FAIL: {resource_path}: {len(found)} PrometheusRule resources, expected 1")
resource = found[0]
if resource.get("apiVersion") != "monitoring.coreos.com/v1":
    problems.append(f"apiVersion {resource.get('apiVersion')}")
meta = resource.get("metadata", {})
if meta.get("namespace") != "dicom":
    problems.append(f"namespace {meta.get('namespace')!r}, expected 'dicom'")
if meta.get("labels", {}).get("app.kubernetes.io/name") != "dicom-cache-warmer":
    problems.append("label app.kubernetes.io/name is not dicom-cache-warmer")
if resource.get("spec") != rules:
    problems.append(f"spec differs from {rules_path}")
if [g.get("name") for g in rules.get("groups", [])] != ["dicom-cache-warmer"]:
    problems.append("the rules file must hold exactly the group dicom-cache-warmer")
for problem in problems:
    print(f"FAIL: {resource_path}: {problem}")
yaml.safe_dump(resource.get("spec"), open(out_path, "w"), sort_keys=False)
sys.exit(1 if problems else 0)
EOF
}
compare_rules "$COMPONENT/prometheusrule.yaml" || fail "$COMPONENT/prometheusrule.yaml (FAIL lines above)"
passed "PrometheusRule: namespace dicom, app.kubernetes.io/name label, spec == $RULES"

step "kustomize build: $COMPONENT, alone and with deploy/kubernetes"
kustomize_cmd=()
if command -v kustomize > /dev/null; then
    kustomize_cmd=(kustomize build)
elif command -v kubectl > /dev/null && kubectl kustomize --help > /dev/null 2>&1; then
    kustomize_cmd=(kubectl kustomize)
fi
if [ "${#kustomize_cmd[@]}" -gt 0 ]; then
    echo "with: ${kustomize_cmd[*]}"
    "${kustomize_cmd[@]}" "$COMPONENT" > "$tmp/component.yaml"
    compare_rules "$tmp/component.yaml" || fail "the component alone renders other rules (FAIL lines above)"
    # An overlay as a user writes one: the base plus the component (kustomize wants
    # relative paths).
    mkdir "$tmp/overlay"
    rel=$(realpath --relative-to="$tmp/overlay" .)
    cat > "$tmp/overlay/kustomization.yaml" << EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel/deploy/kubernetes
components:
  - $rel/$COMPONENT
EOF
    "${kustomize_cmd[@]}" "$tmp/overlay" > "$tmp/overlay.yaml"
    compare_rules "$tmp/overlay.yaml" || fail "deploy/kubernetes with the component renders other rules (FAIL lines above)"
    grep -q '^kind: Deployment$' "$tmp/overlay.yaml" || fail "the overlay lost the Deployment"
    if [ "$have_promtool" = true ]; then
        promtool check rules "$tmp/rendered-rules.yml" > /dev/null
    fi
    passed "kustomize renders the PrometheusRule with the same rules, alone and with the base"
else
    echo "no kustomize and no kubectl kustomize: rendering not checked (the YAML was checked above)"
fi

# --- the dashboard -------------------------------------------------------------------------
step "$DASHBOARD"
"$PY" -m json.tool "$DASHBOARD" > /dev/null || fail "$DASHBOARD is not valid JSON"
python3 scripts/check-dashboard.py --list > "$tmp/names.txt" || fail "scripts/check-dashboard.py --list failed"
passed "dashboard is JSON; check-dashboard.py finds $(wc -l < "$tmp/names.txt") metric names in it and the rules"

if [ "${#skipped[@]}" -gt 0 ]; then
    printf '\ncheck-alerts: OK, %d checks, %d skipped: %s\n' "$checks" "${#skipped[@]}" "${skipped[*]}"
else
    printf '\ncheck-alerts: OK, %d checks\n' "$checks"
fi
