#!/usr/bin/env bash
# The main job on one machine: two simulators replaying recorded gpt-4o-mini and gpt-4o outcomes,
# and the cascade proxy in front of them (examples/local-policy.yaml), on 127.0.0.1:8080.
# Stop with Ctrl-C. DATA overrides the outcomes file.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data/zellinger_llm_cascades/cascade_outcomes.jsonl}"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
tierguard sim --data "$DATA" --model gpt-4o-mini --port 9101 & pids+=($!)
tierguard sim --data "$DATA" --model gpt-4o --port 9102 & pids+=($!)
for port in 9101 9102; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
done
echo "try: curl -s http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\"
echo "       -d '{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}'"
tierguard proxy --policy examples/local-policy.yaml --host 127.0.0.1 --port 8080 --decision-log off
