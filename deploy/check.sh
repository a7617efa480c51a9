#!/usr/bin/env bash
# Check the deployment files without a container engine or a cluster:
#
#   1. docker-compose.yml        docker-compose config (Debian's docker-compose, or
#                                `docker compose` when that is what the machine has)
#   2. helm/fieldline            helm lint --strict, with the default values and with
#                                helm/fieldline/ci/*-values.yaml
#   3. rendered manifests        helm template | kubernetes-validate --strict, against the
#                                oldest Kubernetes the chart supports and the newest known
#   4. line documents            `fieldline config check` on deploy/examples/*.yaml and on
#                                the document the chart renders, when a fieldline binary
#                                exists (FIELDLINE_BIN, else target/{release,debug}/fieldline,
#                                else PATH); otherwise this step says it was skipped
#
#   bash deploy/check.sh
#
# Installs what it needs, idempotently, under FIELDLINE_TOOLS_DIR (default
# /var/tmp/fieldline-tools): Helm through deploy/get-helm.sh, kubernetes-validate in a
# Python venv; docker-compose with apt-get when neither compose is there. Quick when
# everything is installed; never reads standard input. Exits non-zero on the first failure.
#
#   FIELDLINE_KUBERNETES_VALIDATE_VERSION   default 1.37.0 (the PyPI package version)
#   FIELDLINE_KUBE_VERSIONS                 default "1.25.0 1.37.0", versions validated against
set -euo pipefail
exec </dev/null

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TOOLS=${FIELDLINE_TOOLS_DIR:-/var/tmp/fieldline-tools}
KV_VERSION=${FIELDLINE_KUBERNETES_VALIDATE_VERSION:-1.37.0}
KUBE_VERSIONS=${FIELDLINE_KUBE_VERSIONS:-1.25.0 1.37.0}
CHART=$ROOT/helm/fieldline
VENV=$TOOLS/venv
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
SUMMARY=()

log() { printf 'check: %s\n' "$*" >&2; }
die() {
    printf 'check: FAILED: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# Print a command's saved output to stderr (for failure messages).
show() {
    [[ -s $1 ]] && sed 's/^/    /' "$1" >&2
    return 0
}

mkdir -p "$TOOLS"

# ---------------------------------------------------------------- tools

APT_UPDATED=0
apt_install() {
    have apt-get || die "need to install $*, but apt-get is not available"
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >"$TOOLS/apt.log" 2>&1 ||
            { show "$TOOLS/apt.log"; die "apt-get update failed"; }
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >>"$TOOLS/apt.log" 2>&1 || { show "$TOOLS/apt.log"; die "apt-get install $* failed"; }
}

COMPOSE=()
find_compose() {
    if have docker-compose; then
        COMPOSE=(docker-compose)
    elif have docker && docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    else
        apt_install docker-compose
        have docker-compose || die "docker-compose is still missing after apt-get install docker-compose"
        COMPOSE=(docker-compose)
    fi
}

setup_kubernetes_validate() {
    local stamp=$VENV/.kubernetes-validate-version
    if [[ -x $VENV/bin/kubernetes-validate && -f $stamp && $(cat "$stamp") == "$KV_VERSION" ]]; then
        return 0
    fi
    have python3 || apt_install python3 python3-venv
    if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$VENV"
        log "creating venv $VENV"
        if ! python3 -m venv "$VENV" >"$TOOLS/venv.log" 2>&1; then
            # Debian's python3 needs python3-venv for this.
            apt_install python3-venv
            rm -rf "$VENV"
            python3 -m venv "$VENV" >"$TOOLS/venv.log" 2>&1 ||
                { show "$TOOLS/venv.log"; die "python3 -m venv $VENV failed"; }
        fi
    fi
    log "pip install kubernetes-validate==$KV_VERSION"
    rm -f "$stamp"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
        "kubernetes-validate==$KV_VERSION" >"$TOOLS/pip.log" 2>&1 ||
        { show "$TOOLS/pip.log"; die "pip install kubernetes-validate==$KV_VERSION failed"; }
    printf '%s\n' "$KV_VERSION" >"$stamp"
}

# The fieldline CLI, if one has been built; empty otherwise.
find_fieldline() {
    local candidate
    for candidate in "${FIELDLINE_BIN:-}" "$ROOT/target/release/fieldline" "$ROOT/target/debug/fieldline"; do
        if [[ -n $candidate && -x $candidate ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    command -v fieldline 2>/dev/null || true
}

# ---------------------------------------------------------------- checks

check_compose() {
    find_compose
    local out=$OUT/compose.yaml services
    (cd "$ROOT" && "${COMPOSE[@]}" -f docker-compose.yml config >"$out" 2>"$OUT/compose.err") ||
        { show "$OUT/compose.err"; die "${COMPOSE[*]} -f docker-compose.yml config"; }
    show "$OUT/compose.err"
    services=$(cd "$ROOT" && "${COMPOSE[@]}" -f docker-compose.yml config --services 2>/dev/null | sort | tr '\n' ' ')
    SUMMARY+=("compose    ${COMPOSE[*]} config: ok (services: ${services% })")
}

# values_files: "" (the defaults) and every ci/*-values.yaml of the chart.
values_files() {
    printf '%s\n' ""
    local f
    for f in "$CHART"/ci/*-values.yaml; do
        [[ -f $f ]] && printf '%s\n' "$f"
    done
    return 0
}

check_chart() {
    local helm values name args rendered k n=0
    helm=$(bash "$HERE/get-helm.sh") || die "could not install helm (deploy/get-helm.sh)"
    setup_kubernetes_validate
    while IFS= read -r values; do
        args=()
        name=defaults
        if [[ -n $values ]]; then
            args=(-f "$values")
            name=$(basename "$values")
        fi
        "$helm" lint --strict "$CHART" "${args[@]}" >"$OUT/lint.out" 2>&1 ||
            { show "$OUT/lint.out"; die "helm lint --strict helm/fieldline ($name)"; }
        rendered=$OUT/rendered-$name.yaml
        "$helm" template fieldline "$CHART" "${args[@]}" >"$rendered" 2>"$OUT/template.err" ||
            { show "$OUT/template.err"; die "helm template helm/fieldline ($name)"; }
        for k in $KUBE_VERSIONS; do
            "$VENV/bin/kubernetes-validate" --strict --quiet -k "$k" "$rendered" >"$OUT/kv.out" 2>&1 ||
                { show "$OUT/kv.out"; die "kubernetes-validate --strict -k $k on the chart rendered with $name"; }
        done
        n=$((n + 1))
    done < <(values_files)
    SUMMARY+=("chart      helm lint --strict, helm template | kubernetes-validate --strict (Kubernetes ${KUBE_VERSIONS// /, }): ok for $n values set(s) ($("$helm" version --short))")
}

check_line_documents() {
    local fieldline doc n=0
    fieldline=$(find_fieldline)
    if [[ -z $fieldline ]]; then
        SUMMARY+=("documents  SKIPPED: no fieldline binary (cargo build -p fieldline, or set FIELDLINE_BIN)")
        return 0
    fi
    # The document the chart renders into its ConfigMap.
    "$VENV/bin/python" - "$OUT/rendered-defaults.yaml" "$OUT/chart-line.yaml" <<'EOF' ||
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "ConfigMap"]
if len(docs) != 1:
    sys.exit(f"expected one ConfigMap in the rendered chart, found {len(docs)}")
open(sys.argv[2], "w").write(docs[0]["data"]["line.yaml"])
EOF
        die "could not extract the line document from the rendered chart"
    for doc in "$ROOT"/deploy/examples/*.yaml "$OUT/chart-line.yaml"; do
        "$fieldline" config check "$doc" >"$OUT/config-check.out" 2>&1 ||
            { show "$OUT/config-check.out"; die "fieldline config check $doc"; }
        n=$((n + 1))
    done
    SUMMARY+=("documents  $fieldline config check: ok for $n documents")
}

check_compose
check_chart
check_line_documents
printf '%s\n' "${SUMMARY[@]}"
