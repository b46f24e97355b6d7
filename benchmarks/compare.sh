#!/usr/bin/env bash
# Side by side on this machine, same GGUF, same prompts (same seed), same lengths, greedy:
#   1. skipdecode serve, measured by `skipdecode bench serve` at 1x/2x/3x (skip per request);
#   2. Hugging Face transformers generate(), static batch of $PARALLEL (`skipdecode bench hf`);
#   3. llama.cpp's llama-server with $PARALLEL slots (built by build_llama_cpp.sh, outside
#      the repository), measured by the same `bench serve`;
#   with GUIDELLM=path/to/guidellm, each server is also measured by that third-party client
#   (benchmarks/guidellm.sh: same lengths, CONCURRENCY's largest value, NUM_PROMPTS requests);
#   plus `bench kv` (no timing), optionally `bench throughput` and `bench latency` (OFFLINE=1),
#   then a summary table and plots. Every JSON lands in $OUT. Each step is bounded by
#   STEP_TIMEOUT seconds and the whole script by TOTAL_TIMEOUT; a failed step is logged and the
#   rest still run.
#
#   benchmarks/compare.sh                       # defaults below
#   OUT=results/cpu NUM_PROMPTS=32 SKIP_LLAMA=1 benchmarks/compare.sh
#   BENCH_FLAGS="--dataset sharegpt --max-total-len 1024 --request-rate 0.5,1,2 \
#     --slo-ttft 2000 --slo-itl 500" CTX_PER_SLOT=1024 benchmarks/compare.sh   # ShareGPT, rates
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
SD=("$PY" -m skipdecode.cli)
MODEL="${MODEL:-$("$PY" -c 'from skipdecode.model_runner.weights import default_model_path as p; print(p())')}"
OUT="${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)}"
NUM_PROMPTS="${NUM_PROMPTS:-64}"
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN="${OUTPUT_LEN:-128}"
CONCURRENCY="${CONCURRENCY:-1,4,16}"
SPEEDUPS="${SPEEDUPS:-1 2 3}"
PARALLEL="${PARALLEL:-16}"           # llama.cpp slots, HF batch size
MAX_NUM_SEQS="${MAX_NUM_SEQS:-$PARALLEL}"  # our server's max running sequences
PROMPTS_PER_CONCURRENCY="${PROMPTS_PER_CONCURRENCY:-}"  # set: K x concurrency prompts per run
HF_NUM_PROMPTS="${HF_NUM_PROMPTS:-$PARALLEL}"
DTYPE="${DTYPE:-auto}"               # ours and HF (auto = bf16); llama.cpp runs the GGUF as is
THREADS="${THREADS:-$(nproc)}"
PORT="${PORT:-18000}"
LLAMA_PORT="${LLAMA_PORT:-18001}"
SEED="${SEED:-0}"
STEP_TIMEOUT="${STEP_TIMEOUT:-1200}"
TOTAL_TIMEOUT="${TOTAL_TIMEOUT:-5400}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-300}"
SKIP_LLAMA="${SKIP_LLAMA:-0}"
GUIDELLM="${GUIDELLM:-}"             # set: a guidellm binary (PyPI guidellm, its own venv)
SKIP_HF="${SKIP_HF:-0}"
OFFLINE="${OFFLINE:-0}"
LATENCY_FLAGS="${LATENCY_FLAGS:---batch-size 1,16,64 --context-len 128,512,2048 --num-steps 16}"
SERVE_FLAGS="${SERVE_FLAGS:-}"       # more `skipdecode serve` flags (e.g. --quantization int8)
BENCH_FLAGS="${BENCH_FLAGS:-}"       # more `bench serve` flags for every system (same workload)
CTX_PER_SLOT="${CTX_PER_SLOT:-$(( INPUT_LEN + OUTPUT_LEN + 64 ))}"  # llama.cpp context per slot
# llama-server: one HTTP thread per stream and a few spare (its default in recent versions,
# stated so an older build does not queue streams behind keep-alive connections).
LLAMA_FLAGS="${LLAMA_FLAGS:---threads-http $(( PARALLEL + 4 )) --cont-batching}"

# The same CPU threads for every system: torch (ours, HF) reads OMP_NUM_THREADS, llama.cpp -t.
export OMP_NUM_THREADS="$THREADS"
mkdir -p "$OUT/logs"
deadline=$(( $(date +%s) + TOTAL_TIMEOUT ))
server_pid=""
echo -e "step\trc\tseconds" > "$OUT/steps.tsv"

stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$server_pid" 2>/dev/null
  fi
  server_pid=""
}
trap stop_server EXIT INT TERM

left() { echo $(( deadline - $(date +%s) )); }

# run_step NAME CMD...: run with the smaller of STEP_TIMEOUT and the time left; log rc and time.
run_step() {
  local name="$1"; shift
  local limit; limit=$(left); [ "$limit" -gt "$STEP_TIMEOUT" ] && limit=$STEP_TIMEOUT
  if [ "$limit" -le 10 ]; then
    echo "== $name: skipped (out of time)"; echo -e "$name\tskipped\t0" >> "$OUT/steps.tsv"; return 1
  fi
  echo "== $name"
  local start rc; start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>"$OUT/logs/$name.err" | tee "$OUT/logs/$name.txt"
  rc=${PIPESTATUS[0]}
  echo -e "$name\t$rc\t$(( $(date +%s) - start ))" >> "$OUT/steps.tsv"
  [ "$rc" -eq 0 ] || echo "   $name failed (rc=$rc), see $OUT/logs/$name.err"
  return "$rc"
}

# wait_healthy URL: poll URL/health until 200, the server dies, or STARTUP_TIMEOUT passes.
wait_healthy() {
  local end=$(( $(date +%s) + STARTUP_TIMEOUT ))
  while [ "$(date +%s)" -lt "$end" ]; do
    kill -0 "$server_pid" 2>/dev/null || return 1
    curl -s -o /dev/null -w '%{http_code}' "$1/health" 2>/dev/null | grep -q 200 && return 0
    sleep 1
  done
  return 1
}

serve_bench() {  # serve_bench NAME URL LABEL [extra bench serve flags...]
  local name="$1" url="$2" label="$3"; shift 3
  local budget; budget=$(left); [ "$budget" -gt "$STEP_TIMEOUT" ] && budget=$STEP_TIMEOUT
  budget=$(( budget > 30 ? budget - 15 : 15 ))  # bench serve stops itself before `timeout` does
  local count=(--num-prompts "$NUM_PROMPTS")
  # shellcheck disable=SC2086  # BENCH_FLAGS is a list of flags
  [ -n "$PROMPTS_PER_CONCURRENCY" ] && count=(--prompts-per-concurrency "$PROMPTS_PER_CONCURRENCY")
  run_step "$name" "${SD[@]}" bench serve --base-url "$url" --model "$MODEL" \
    "${count[@]}" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
    --concurrency "$CONCURRENCY" --seed "$SEED" --timeout "$budget" \
    --label "$label" --output-json "$OUT/$name.json" $BENCH_FLAGS "$@"
}

guidellm_run() {  # guidellm_run NAME URL [EXTRA_BODY]: the third-party client, if asked for
  [ -n "$GUIDELLM" ] || return 0
  run_step "$1" env GUIDELLM="$GUIDELLM" URL="$2" OUT="$OUT/$1.json" EXTRA_BODY="${3:-}" \
    MODEL="$MODEL" CONCURRENCY="${CONCURRENCY##*,}" MAX_REQUESTS="$NUM_PROMPTS" \
    PROMPT_TOKENS="$INPUT_LEN" OUTPUT_TOKENS="$OUTPUT_LEN" SEED="$SEED" \
    TOKENIZER_DIR="$OUT/tokenizer" benchmarks/guidellm.sh \
    && "$PY" -m skipdecode.benchmarks.guidellm_summary "$OUT/$1.json"
}

echo "model: $MODEL"; echo "results: $OUT"
run_step kv "${SD[@]}" bench kv --model "$MODEL" --dtype "$DTYPE" --budget-mib 64 \
  --input-len "$INPUT_LEN" --output-len 512 --speedups "${SPEEDUPS// /,}" --output-json "$OUT/kv.json"

# 1. our server, one process for all speedups (each request carries its skip field).
# shellcheck disable=SC2086  # SERVE_FLAGS is a list of flags
"${SD[@]}" serve --model "$MODEL" --dtype "$DTYPE" --port "$PORT" --max-num-seqs "$MAX_NUM_SEQS" \
  --log-level warning $SERVE_FLAGS > "$OUT/logs/skipdecode-serve.log" 2>&1 &
server_pid=$!
if wait_healthy "http://127.0.0.1:$PORT"; then
  for s in $SPEEDUPS; do
    serve_bench "serve_skipdecode_${s}x" "http://127.0.0.1:$PORT" "skipdecode ${s}x" \
      --skip "{\"speedup\": $s}"
    guidellm_run "guidellm_skipdecode_${s}x" "http://127.0.0.1:$PORT" "{\"skip\": {\"speedup\": $s}}"
  done
else
  echo "skipdecode serve did not become healthy; see $OUT/logs/skipdecode-serve.log"
fi
stop_server

# 2. the naive anchor.
if [ "$SKIP_HF" != 1 ]; then
  run_step hf "${SD[@]}" bench hf --model "$MODEL" --dtype "$DTYPE" --batch-size "$PARALLEL" \
    --num-prompts "$HF_NUM_PROMPTS" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
    --seed "$SEED" --output-json "$OUT/hf.json"
fi

# 3. llama.cpp on the same GGUF.
if [ "$SKIP_LLAMA" != 1 ]; then
  if llama_server=$(JOBS="${JOBS:-$THREADS}" PIP="$PY -m pip" timeout "$(left)" \
      benchmarks/build_llama_cpp.sh 2>"$OUT/logs/llama-build.log"); then
    # shellcheck disable=SC2086  # LLAMA_FLAGS is a list of flags
    "$llama_server" -m "$MODEL" --host 127.0.0.1 --port "$LLAMA_PORT" -np "$PARALLEL" \
      -c $(( PARALLEL * CTX_PER_SLOT )) -t "$THREADS" $LLAMA_FLAGS \
      > "$OUT/logs/llama-server.log" 2>&1 &
    server_pid=$!
    if wait_healthy "http://127.0.0.1:$LLAMA_PORT"; then
      serve_bench serve_llama_cpp "http://127.0.0.1:$LLAMA_PORT" "llama.cpp ($PARALLEL slots)"
      guidellm_run guidellm_llama_cpp "http://127.0.0.1:$LLAMA_PORT"
    else
      echo "llama-server did not become healthy; see $OUT/logs/llama-server.log"
    fi
    stop_server
  else
    echo "llama.cpp build failed; see $OUT/logs/llama-build.log"
  fi
fi

if [ "$OFFLINE" = 1 ]; then
  run_step throughput "${SD[@]}" bench throughput --model "$MODEL" --dtype "$DTYPE" \
    --num-prompts "$NUM_PROMPTS" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
    --speedups "${SPEEDUPS// /,}" --seed "$SEED" --output-json "$OUT/throughput.json"
  # shellcheck disable=SC2086  # LATENCY_FLAGS is a list of flags
  run_step latency "${SD[@]}" bench latency --model "$MODEL" --dtype "$DTYPE" $LATENCY_FLAGS \
    --output-json "$OUT/latency.json"
fi

"$PY" -m skipdecode.benchmarks.summary "$OUT"
"$PY" -m skipdecode.benchmarks.plots "$OUT"
echo "steps:"; column -t "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
