#!/usr/bin/env bash
# Build kstatus-check (main.go: the kstatus library of sigs.k8s.io/cli-utils, pinned in go.mod) into
# ${TIERGUARD_BIN_DIR:-$HOME/.cache/tierguard/bin}, like ../build.sh builds the control plane. A separate
# module, so its Kubernetes libraries do not move the control plane's pins. Rebuilt only when the
# stamp (cli-utils version + Go version + go.sum hash) changes; about 2 minutes from an empty cache.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN_DIR="${TIERGUARD_BIN_DIR:-$HOME/.cache/tierguard/bin}"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || { echo "kstatus/build.sh: 'go' not found on PATH" >&2; exit 1; }
mkdir -p "$BIN_DIR/.stamps"
cd "$HERE"
export GOFLAGS="${GOFLAGS:-} -mod=readonly" CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
version="$(go list -m -f '{{.Version}}' sigs.k8s.io/cli-utils)"
stamp="sigs.k8s.io/cli-utils@$version $(go env GOVERSION) go.sum:$(sha256sum go.sum | cut -c1-16)"
out="$BIN_DIR/kstatus-check"
if [ -x "$out" ] && [ "$(cat "$BIN_DIR/.stamps/kstatus-check" 2>/dev/null)" = "$stamp" ]; then
  echo "[k8senv] kstatus-check: up to date (cli-utils $version)" >&2
  exit 0
fi
echo "[k8senv] kstatus-check: building with cli-utils $version ..." >&2
go build -trimpath -ldflags="-s -w" -o "$out.tmp.$$" .
mv -f "$out.tmp.$$" "$out"
echo "$stamp" > "$BIN_DIR/.stamps/kstatus-check"
echo "[k8senv] kstatus-check: built -> $out" >&2
