#!/usr/bin/env bash
# The Ray Serve path against the single process on this machine (docs/deploy.md, "Measured"):
#   1. overhead: one process vs Ray with one replica on the same 2 threads, c=1 and c=16;
#   2. scaling: Ray with two 1-thread replicas at c=16;
#   3. failover: kill one of two replicas under load (skipdecode bench failover);
#   4. autoscaling: --autoscale 1:2 under c=16, the replica count every 2 s.
# Two rounds of (1), alternating, so that drift shows. Resumable: a result that exists is kept.
#   benchmarks/ray_overhead.sh [OUT]        # default docs/results/ray
set -euo pipefail
OUT=${1:-docs/results/ray}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/.venv/bin"
PORT=${PORT:-8310}
URL="http://127.0.0.1:$PORT"
IN=${IN:-128}
OUTLEN=${OUTLEN:-128}
mkdir -p "$OUT"

start() {  # start the server with the given flags; wait until /health answers
  "$BIN/skipdecode" serve --port "$PORT" --log-level warning "$@" > "$OUT/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 300); do
    if curl -sf "$URL/health" > /dev/null; then sleep 2; return 0; fi
    sleep 1
  done
  echo "server did not start" >&2; exit 1
}
stop() { kill -TERM "$SERVER"; wait "$SERVER" || true; }
bench() {  # label concurrency prompts
  local file="$OUT/$1-c$2.json"
  [[ -s "$file" ]] && return 0
  "$BIN/skipdecode" bench serve --base-url "$URL" --concurrency "$2" --num-prompts "$3" \
    --input-len "$IN" --output-len "$OUTLEN" --num-warmup 2 --label "$1" --output-json "$file"
}
need() { for f in "$@"; do [[ -s "$OUT/$f" ]] || return 0; done; return 1; }

for round in 1 2; do
  if need "single-r$round-c1.json" "single-r$round-c16.json"; then
    start; bench "single-r$round" 1 8; bench "single-r$round" 16 64; stop
  fi
  if need "ray1-r$round-c1.json" "ray1-r$round-c16.json"; then
    start --replicas 1 --num-cpus-per-replica 2; bench "ray1-r$round" 1 8; bench "ray1-r$round" 16 64; stop
  fi
done
if need "ray2-c16.json" "failover.json"; then
  start --replicas 2 --num-cpus-per-replica 1
  bench ray2 16 64
  [[ -s "$OUT/failover.json" ]] || "$BIN/skipdecode" bench failover --base-url "$URL" \
    --workers 8 --max-tokens 32 --kill-after 10 --duration 120 --output-json "$OUT/failover.json"
  stop
fi
if [[ ! -s "$OUT/autoscale.tsv" ]]; then  # 4. autoscaling: 1 replica at rest, up to 2 under load
  start --autoscale 1:2 --num-cpus-per-replica 1 --target-ongoing-requests 4
  ( t0=$(date +%s); while true; do
      n=$(curl -s "$URL/internal/stats" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["replicas"]))' 2>/dev/null || echo "?")
      echo -e "$(( $(date +%s) - t0 ))\t$n"; sleep 2
    done ) > "$OUT/autoscale.tmp" &
  POLL=$!
  bench autoscale 16 128
  kill "$POLL"; mv "$OUT/autoscale.tmp" "$OUT/autoscale.tsv"
  stop
fi
rm -f "$OUT/server.log"
echo "done: $OUT"
