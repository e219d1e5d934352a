#!/usr/bin/env bash
# Idempotent system setup for tierguard's integration tests on a fresh Debian 12
# machine (CI or a developer box). Safe to re-run; a no-op re-run takes a few
# seconds. Python packages are NOT installed here.
#
#   - Debian packages: prometheus (server binary, /usr/bin/prometheus), openssl
#     (test PKI), plus small helpers (ca-certificates, curl, util-linux's flock).
#   - Real control-plane and node binaries built from pinned Go modules by
#     tests/k8senv/build.sh (kube-apiserver, kube-controller-manager, etcd, helm,
#     kubelet, kube-scheduler, kube-proxy, kubectl)
#     into ${TIERGUARD_BIN_DIR:-$HOME/.cache/tierguard/bin}; cached per version.
#
# Works non-interactively (CI=true, no stdin).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[install] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    log "not root and no sudo: cannot install Debian packages"; exit 1
  fi
fi

# ---------------------------------------------------------------- apt packages
# chromium: headless rendering check of the replay HTML report and the reviewer's page
# lua5.4: runs the shipped Argo CD health check on real objects (tests/test_gitops_health.py)
# containerd, runc, CNI plugins, iptables, conntrack: the single-node cluster with a kubelet
#   (tests/infra/node.py); buildah, mmdebstrap, gcc + libc6-dev: its images, built locally from
#   the Dockerfile with no registry (tests/infra/images.py); iproute2: the node's bridge
# postgresql: the review store's PostgreSQL tests start their own server (initdb/postgres from
#   /usr/lib/postgresql/*/bin, as the unprivileged 'postgres' user the package creates)
PKGS=(prometheus openssl ca-certificates curl util-linux chromium
      containerd runc containernetworking-plugins iptables conntrack iproute2
      buildah mmdebstrap gcc libc6-dev lua5.4 postgresql)
need=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    need+=("$p")
  fi
done

if [ "${#need[@]}" -gt 0 ]; then
  prometheus_was_installed=1
  [[ " ${need[*]} " == *" prometheus "* ]] && prometheus_was_installed=0

  # Keep package maintainer scripts from starting services (Debian's prometheus
  # package would otherwise start a server on :9090 where an init system runs, and
  # containerd's a host-wide containerd, and postgresql one on :5432; the tests start
  # their own).
  # Tests never use that service: they start their own Prometheus on a free
  # loopback port. Only add the policy file if none exists, and remove it after.
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    added_policy=1
  fi
  trap '[ "$added_policy" = 1 ] && $SUDO rm -f "$policy"' EXIT

  log "apt-get update"
  $SUDO apt-get update -q
  log "apt-get install ${need[*]}"
  # --no-install-recommends: prometheus recommends prometheus-node-exporter,
  # another service (on :9100) the tests do not need.
  $SUDO apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}"

  if [ "$added_policy" = 1 ]; then $SUDO rm -f "$policy"; added_policy=0; fi

  # If we installed prometheus just now, make sure its packaged service is not
  # running or enabled (it is not needed and would hold :9090).
  if [ "$prometheus_was_installed" = 0 ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
      $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
  fi
  # Likewise a host-wide containerd (the node tests run their own, on their own socket).
  if [[ " ${need[*]} " == *" containerd "* ]] && [ -d /run/systemd/system ] \
     && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now containerd.service >/dev/null 2>&1 || true
  fi
else
  log "Debian packages already installed: ${PKGS[*]}"
fi

if [ ! -x /usr/bin/prometheus ]; then
  log "/usr/bin/prometheus missing after install"; exit 1
fi
log "$(/usr/bin/prometheus --version 2>&1 | head -n1)"

# ---------------------------------------------------------------- Go binaries
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
  log "Go toolchain not found (need Go >= 1.26 on PATH or in /usr/local/go) to build the test binaries"
  exit 1
fi
log "building test binaries with $(go version) (cached; slow only the first time)"
bash "$ROOT/tests/k8senv/build.sh"
bash "$ROOT/tests/k8senv/kstatus/build.sh"   # the kstatus library, for tests/test_gitops_health.py
log "done"
