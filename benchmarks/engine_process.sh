#!/usr/bin/env bash
# The server against its own engine at 16 streams (docs/benchmarks.md, "The online path"):
#   offline: `bench throughput`, 32 requests of 128 in / 128 out, at most 16 running (batch 16);
#   online:  `bench serve` at concurrency 16, the same lengths, against `skipdecode serve` with
#            the engine in its own process (the default) and on a thread (--no-engine-process).
# 1x and 2x each; two rounds, alternating, so that drift shows. Resumable: a result that exists
# is kept.   benchmarks/engine_process.sh [OUT]        # default docs/results/engine-process
set -euo pipefail
OUT=${1:-docs/results/engine-process}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/.venv/bin"
PORT=${PORT:-8320}
URL="http://127.0.0.1:$PORT"
N=${N:-32}
mkdir -p "$OUT"

start() {  # start the server with the given flags; wait until /health answers
  "$BIN/skipdecode" serve --port "$PORT" --log-level warning "$@" > "$OUT/server.log" 2>&1 &
  SERVER=$!
  trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 1 300); do
    if curl -sf "$URL/health" > /dev/null; then sleep 2; return 0; fi
    sleep 1
  done
  echo "server did not start" >&2; exit 1
}
stop() { kill -TERM "$SERVER"; wait "$SERVER" || true; trap - EXIT; }
online() {  # label
  for speedup in 1 2; do
    local file="$OUT/$1-${speedup}x.json"
    [[ -s "$file" ]] && continue
    "$BIN/skipdecode" bench serve --base-url "$URL" --concurrency 16 --num-prompts "$N" \
      --input-len 128 --output-len 128 --num-warmup 2 --skip "{\"speedup\": $speedup}" \
      --label "$1 ${speedup}x" --output-json "$file"
  done
}
need() { for f in "$@"; do [[ -s "$OUT/$f" ]] || return 0; done; return 1; }

for round in 1 2; do
  if need "offline-r$round.json"; then
    "$BIN/skipdecode" bench throughput --num-prompts "$N" --input-len 128 --output-len 128 \
      --speedups 1,2 --max-num-seqs 16 --output-json "$OUT/offline-r$round.json"
  fi
  if need "process-r$round-1x.json" "process-r$round-2x.json"; then
    start; online "process-r$round"; stop
  fi
  if need "thread-r$round-1x.json" "thread-r$round-2x.json"; then
    start --no-engine-process; online "thread-r$round"; stop
  fi
done
rm -f "$OUT/server.log"
echo "done: $OUT"
