#!/usr/bin/env bash
# Inter-token latency under load against the per-step token budget (docs/benchmarks.md):
# `bench serve` at concurrency 64, 128 in / 128 out, 1x, against `skipdecode serve
# --max-num-batched-tokens B` for each budget B. Two rounds, alternating. Resumable.
#   benchmarks/step_budget.sh [OUT]        # default docs/results/step-budget
set -euo pipefail
OUT=${1:-docs/results/step-budget}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/.venv/bin"
PORT=${PORT:-8330}
URL="http://127.0.0.1:$PORT"
BUDGETS=${BUDGETS:-"2048 256 128"}
ROUNDS=${ROUNDS:-"1 2"}
mkdir -p "$OUT"

for round in $ROUNDS; do
  for budget in $BUDGETS; do
    file="$OUT/budget$budget-r$round.json"
    [[ -s "$file" ]] && continue
    "$BIN/skipdecode" serve --port "$PORT" --log-level warning \
      --max-num-batched-tokens "$budget" > "$OUT/server.log" 2>&1 &
    SERVER=$!
    trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
    for _ in $(seq 1 300); do curl -sf "$URL/health" > /dev/null && break; sleep 1; done
    sleep 2
    "$BIN/skipdecode" bench serve --base-url "$URL" --concurrency 64 --num-prompts 64 \
      --input-len 128 --output-len 128 --num-warmup 2 --label "budget $budget" \
      --output-json "$file"
    kill -TERM "$SERVER"; wait "$SERVER" || true; trap - EXIT
  done
done
rm -f "$OUT/server.log"
echo "done: $OUT"
