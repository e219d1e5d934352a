#!/usr/bin/env bash
# Build the real control-plane and node binaries used by tierguard's integration tests:
#
#   kube-apiserver, kube-controller-manager   k8s.io/kubernetes  (see go.mod)
#   kubelet, kube-scheduler, kube-proxy,      k8s.io/kubernetes  (same version; the
#   kubectl                                   single-node cluster of tests/infra/node.py)
#   etcd                                      go.etcd.io/etcd/server/v3
#   helm                                      helm.sh/helm/v3/cmd/helm
#
# Versions are pinned in tests/k8senv/go.mod + go.sum (k8s.io staging modules are
# pinned with `replace` to the v0.x release matching k8s.io/kubernetes).
#
# Output: ${TIERGUARD_BIN_DIR:-$HOME/.cache/tierguard/bin}. A binary is rebuilt only
# when its stamp (module@version + Go version + go.sum hash) changes; the stamps
# live in $BIN_DIR/.stamps/ and a human-readable summary in $BIN_DIR/VERSIONS.
#
# Usage:  tests/k8senv/build.sh [--force] [binary ...]
#         (default: all of them; `control-plane` = etcd kube-apiserver
#         kube-controller-manager helm, `node` = kubelet kube-scheduler kube-proxy kubectl)
#
# Build time, measured on the 2-core Debian 12 dev machine with Go 1.26.8, from an
# empty Go build cache and an empty module cache (downloading the ~740 MB of
# modules took 8 s there):
#   etcd                       48s
#   kube-apiserver           3m52s
#   kube-controller-manager  2m03s   (after kube-apiserver; shares most packages)
#   helm                       27s
#   total                    7m10s   (~5.5 min when the Go build cache is partly warm)
# The node binaries, with the Go build cache warm from the above: kubelet 36s,
# kube-scheduler 8s, kube-proxy 22s, kubectl ~30s.
# A re-run with everything up to date takes about 1s. Sizes with
# -trimpath -ldflags='-s -w': kube-apiserver 101M, kube-controller-manager 92M,
# helm 57M, etcd 26M. Go's build cache grows by ~3 GB.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN_DIR="${TIERGUARD_BIN_DIR:-$HOME/.cache/tierguard/bin}"
STAMP_DIR="$BIN_DIR/.stamps"
FORCE=0
WANT=()
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}"; exit 0 ;;
    etcd|kube-apiserver|kube-controller-manager|helm|kubelet|kube-scheduler|kube-proxy|kubectl)
      WANT+=("$arg") ;;
    control-plane) WANT+=(etcd kube-apiserver kube-controller-manager helm) ;;
    node) WANT+=(kubelet kube-scheduler kube-proxy kubectl) ;;
    *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done
if [ "${#WANT[@]}" -eq 0 ]; then
  WANT=(etcd kube-apiserver kube-controller-manager helm kubelet kube-scheduler kube-proxy kubectl)
fi

log() { printf '[k8senv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: 'go' not found on PATH; Go >= 1.26 is needed (see go.mod)." >&2
  exit 1
fi

mkdir -p "$BIN_DIR" "$STAMP_DIR"

# Serialise concurrent invocations (e.g. several pytest workers) on one lock.
exec 9>"$BIN_DIR/.build.lock"
if command -v flock >/dev/null 2>&1; then
  if ! flock -n 9; then
    log "another build is running in $BIN_DIR; waiting for it"
    flock 9
  fi
fi

cd "$HERE"
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
export CGO_ENABLED="${CGO_ENABLED:-0}"
# Never try to download another toolchain (CI machines cannot): fail clearly instead.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

GO_VERSION="$(go env GOVERSION)"
SUM_HASH="$(sha256sum go.sum | cut -c1-16)"
modver() { go list -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' "$1"; }

K8S_VERSION="$(modver k8s.io/kubernetes)"
ETCD_VERSION="$(modver go.etcd.io/etcd/server/v3)"
HELM_VERSION="$(modver helm.sh/helm/v3)"
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# Version strings the official release builds inject (hack/lib/version.sh,
# helm's Makefile); without them the binaries report v0.0.0-master, which
# trips client-side version checks (e.g. helm's kubeVersion constraints).
k8s_ldflags() {
  local major minor
  major="$(echo "$K8S_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')"
  minor="$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
  local f=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
  done
  echo "$f"
}

build_one() {
  local name="$1" pkg="$2" version="$3" extra_ldflags="$4"
  local out="$BIN_DIR/$name"
  local stamp="$pkg@$version $GO_VERSION go.sum:$SUM_HASH"
  if [ "$FORCE" -eq 0 ] && [ -x "$out" ] && [ -f "$STAMP_DIR/$name" ] \
     && [ "$(cat "$STAMP_DIR/$name")" = "$stamp" ]; then
    log "$name: up to date ($pkg@$version)"
    return 0
  fi
  log "$name: building $pkg@$version with $GO_VERSION (this can take minutes)..."
  local start=$SECONDS
  local tmp="$out.tmp.$$"
  rm -f "$tmp"
  go build -trimpath -ldflags="-s -w $extra_ldflags" -o "$tmp" "$pkg"
  mv -f "$tmp" "$out"
  echo "$stamp" > "$STAMP_DIR/$name"
  log "$name: built in $((SECONDS - start))s -> $out ($(du -h "$out" | cut -f1))"
}

total_start=$SECONDS
for name in "${WANT[@]}"; do
  case "$name" in
    kube-apiserver|kube-controller-manager|kubelet|kube-scheduler|kube-proxy|kubectl)
      build_one "$name" "k8s.io/kubernetes/cmd/$name" "$K8S_VERSION" "$(k8s_ldflags)" ;;
    etcd)
      build_one etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "" ;;
    helm)
      build_one helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
        "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" ;;
  esac
done

{
  echo "# written by tests/k8senv/build.sh"
  for f in "$STAMP_DIR"/*; do
    [ -f "$f" ] && printf '%s\t%s\n' "$(basename "$f")" "$(cat "$f")"
  done
} > "$BIN_DIR/VERSIONS"
log "done in $((SECONDS - total_start))s; binaries in $BIN_DIR"
