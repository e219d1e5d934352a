#!/usr/bin/env bash
# The cascade proxy on one machine: two simulators serving the synthetic customer-support workload
# (`tierguard demo --write-data`: a cheap model "support-mini" and a capable one "support-large"),
# and the proxy in front of them (examples/local-policy.yaml) on 127.0.0.1:8080. Stop with Ctrl-C.
# For the full story (operator, rollout, rollback) run `tierguard demo` instead.
#   DATA=FILE.jsonl MINI=NAME CAPABLE=NAME  serve another outcomes file (the policy's model names
#                                           must then match; see docs/outcomes-format.md)
set -euo pipefail
cd "$(dirname "$0")/.."
MINI="${MINI:-support-mini}"
CAPABLE="${CAPABLE:-support-large}"
pids=()
tmp="$(mktemp -d)"
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM
if [ -z "${DATA:-}" ]; then
  DATA="$tmp/support.jsonl"
  tierguard demo --write-data "$DATA"
fi
tierguard sim --data "$DATA" --model "$MINI" --port 9101 & pids+=($!)
tierguard sim --data "$DATA" --model "$CAPABLE" --port 9102 & pids+=($!)
for port in 9101 9102; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
done
echo "try: curl -s http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\"
echo "       -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Where is my order #123456?\"}]}'"
tierguard proxy --policy examples/local-policy.yaml --host 127.0.0.1 --port 8080 --decision-log off
