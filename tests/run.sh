#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (lint, types, fast and slow tests).
#   bash tests/run.sh           everything (what CI runs)
#   bash tests/run.sh --fast    skip the slow suites (real API server, Prometheus, end to end)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${TIERGUARD_SKIP_INSTALL:-0}" != "1" ]; then
  bash .ci/install.sh                          # apt packages, Go-built kube-apiserver/etcd/helm (cached)
  python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
fi

echo "== ruff"; ruff check operator tests bench
echo "== mypy"; mypy
marker="slow or not slow"
[ "${1:-}" = "--fast" ] && marker="not slow"
echo "== pytest (-m '$marker')"
python3 -m pytest -m "$marker" -p no:cacheprovider
