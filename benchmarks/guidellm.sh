#!/usr/bin/env bash
# Measure one OpenAI-compatible server (ours, or llama.cpp's llama-server) with a third-party
# client, guidellm (0.8 CLI: `guidellm run --backend kind=...`), and write its JSON report.
# Synthetic prompts of PROMPT_TOKENS tokens, OUTPUT_TOKENS generated per request (guidellm sends
# max_tokens=OUTPUT_TOKENS and ignore_eos=true by itself), streamed, on
# /v1/completions; CONCURRENCY closed-loop streams, or a Poisson arrival rate of REQUEST_RATE
# requests/s; MAX_REQUESTS requests in all. EXTRA_BODY (a JSON object) is merged into every
# request body, after guidellm's own fields (it can override them).
# guidellm needs a local Hugging Face tokenizer (synthetic prompts, token counts): TOKENIZER,
# else the default model's (or MODEL's) tokenizer is exported once to TOKENIZER_DIR. Nothing
# is downloaded (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1). URL must be loopback.
# benchmarks/guidellm_summary.py prints the report's headline figures.
#
#   URL=http://127.0.0.1:18000 OUT=results/ours-2x.json \
#     EXTRA_BODY='{"skip": {"speedup": 2}}' benchmarks/guidellm.sh
#   URL=http://127.0.0.1:18001 OUT=results/llama.json REQUEST_RATE=4 benchmarks/guidellm.sh
#   benchmarks/guidellm.sh http://localhost:18000 results/ours.json   # URL and OUT as args
set -uo pipefail

cd "$(dirname "$0")/.."
URL="${URL:-${1:-}}"
OUT="${OUT:-${2:-bench-results/guidellm/$(date +%Y%m%d-%H%M%S).json}}"
PY="${PYTHON:-.venv/bin/python}"     # builds the JSON options; exports the tokenizer
GUIDELLM="${GUIDELLM:-guidellm}"
MODEL_NAME="${MODEL_NAME:-}"         # empty: guidellm takes the first id of GET /v1/models
MODEL="${MODEL:-}"                   # model whose tokenizer is exported; empty: the default
TOKENIZER="${TOKENIZER:-}"           # a local tokenizer directory; empty: export one
TOKENIZER_DIR="${TOKENIZER_DIR:-$(dirname "$OUT")/tokenizer}"
CONCURRENCY="${CONCURRENCY:-16}"
REQUEST_RATE="${REQUEST_RATE:-}"     # set: Poisson arrivals at this rate instead of CONCURRENCY
MAX_REQUESTS="${MAX_REQUESTS:-32}"
PROMPT_TOKENS="${PROMPT_TOKENS:-128}"
OUTPUT_TOKENS="${OUTPUT_TOKENS:-128}"
EXTRA_BODY="${EXTRA_BODY:-}"         # JSON object, e.g. {"skip": {"speedup": 2}}
API_KEY="${API_KEY:-}"               # sent as Authorization: Bearer when set
SEED="${SEED:-0}"
TIMEOUT="${TIMEOUT:-1800}"           # seconds for the whole guidellm run

die() { echo "guidellm.sh: $*" >&2; exit 2; }

[ -n "$URL" ] || die "set URL (or pass it as the first argument), e.g. http://127.0.0.1:18000"
# Loopback only: http(s)://HOST[:PORT][/...] with HOST 127.x.x.x, localhost or [::1].
[[ "$URL" =~ ^https?://([^/?#]*)(/.*)?$ ]] || die "URL '$URL' is not an http(s):// URL"
authority="${BASH_REMATCH[1]}"
[[ "$authority" == *@* ]] && die "URL '$URL': user info is not allowed"
if [[ "$authority" =~ ^\[([^]]*)\](:[0-9]+)?$ ]] || [[ "$authority" =~ ^([^:]*)(:[0-9]+)?$ ]]; then
  host="${BASH_REMATCH[1],,}"
else
  die "URL '$URL': cannot parse the host"
fi
loopback=0
case "$host" in
  localhost | ::1 | 0:0:0:0:0:0:0:1) loopback=1 ;;
  *)
    if [[ "$host" =~ ^127\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]]; then
      loopback=1
      for octet in "${BASH_REMATCH[@]:1}"; do [ "$((10#$octet))" -le 255 ] || loopback=0; done
    fi
    ;;
esac
[ "$loopback" -eq 1 ] || die "refusing URL '$URL': only loopback servers (127.x.x.x, localhost, ::1) may be benchmarked"
URL="${URL%/}"; URL="${URL%/v1}"   # guidellm appends /v1/completions itself

for knob in CONCURRENCY MAX_REQUESTS PROMPT_TOKENS OUTPUT_TOKENS SEED TIMEOUT; do
  [[ "${!knob}" =~ ^[0-9]+$ ]] && { [ "$knob" = SEED ] || [ "$((10#${!knob}))" -gt 0 ]; } \
    || die "$knob must be a positive integer, got '${!knob}'"
done
[ -z "$REQUEST_RATE" ] || { [[ "$REQUEST_RATE" =~ ^[0-9]*\.?[0-9]+$ ]] && [[ "$REQUEST_RATE" =~ [1-9] ]]; } \
  || die "REQUEST_RATE must be a positive number, got '$REQUEST_RATE'"
[ -x "$PY" ] || PY=python3
command -v "$GUIDELLM" >/dev/null || die "guidellm not found ('$GUIDELLM'); set GUIDELLM"
if [ -n "$EXTRA_BODY" ]; then
  EXTRA_BODY="$EXTRA_BODY" "$PY" -c 'import json, os; assert isinstance(json.loads(os.environ["EXTRA_BODY"]), dict)' \
    2>/dev/null || die "EXTRA_BODY must be a JSON object, got '$EXTRA_BODY'"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$(dirname "$OUT")" || die "cannot create $(dirname "$OUT")"

if [ -z "$TOKENIZER" ]; then
  TOKENIZER="$TOKENIZER_DIR"
  if [ ! -f "$TOKENIZER/tokenizer_config.json" ]; then
    echo "== exporting the tokenizer to $TOKENIZER"
    TOKENIZER_DIR="$TOKENIZER" MODEL="$MODEL" "$PY" -c '
import os
from skipdecode.model_runner.weights import default_model_path, load_tokenizer
tok = load_tokenizer(os.environ["MODEL"] or default_model_path())
tok.save_pretrained(os.environ["TOKENIZER_DIR"])
' || die "tokenizer export failed; set TOKENIZER to a local tokenizer directory"
  fi
fi
[ -d "$TOKENIZER" ] || die "TOKENIZER '$TOKENIZER' is not a directory"

# The option values as JSON objects (guidellm takes JSON as well as key=value,...), so paths
# and EXTRA_BODY need no escaping. One object per line: backend, profile, data, tokenizer, json.
mapfile -t opts < <(
  URL="$URL" MODEL_NAME="$MODEL_NAME" API_KEY="$API_KEY" EXTRA_BODY="$EXTRA_BODY" \
  CONCURRENCY="$CONCURRENCY" REQUEST_RATE="$REQUEST_RATE" PROMPT_TOKENS="$PROMPT_TOKENS" \
  OUTPUT_TOKENS="$OUTPUT_TOKENS" TOKENIZER="$(cd "$TOKENIZER" && pwd)" OUT="$OUT" "$PY" -c '
import json, os, sys
e = os.environ
backend = {"kind": "openai_http", "target": e["URL"], "request_format": "/v1/completions",
           "stream": True}
if e["MODEL_NAME"]:
    backend["model"] = e["MODEL_NAME"]
if e["API_KEY"]:
    backend["api_key"] = e["API_KEY"]
if e["EXTRA_BODY"]:
    try:
        body = json.loads(e["EXTRA_BODY"])
    except ValueError as exc:
        sys.exit(f"EXTRA_BODY is not valid JSON: {exc}")
    if not isinstance(body, dict):
        sys.exit("EXTRA_BODY must be a JSON object")
    backend["extras"] = {"body": body}
if e["REQUEST_RATE"]:
    profile = {"kind": "poisson", "rate": float(e["REQUEST_RATE"])}
else:
    profile = {"kind": "concurrent", "streams": int(e["CONCURRENCY"])}
data = {"kind": "synthetic_text", "prompt_tokens": int(e["PROMPT_TOKENS"]),
        "output_tokens": int(e["OUTPUT_TOKENS"])}
tokenizer = {"kind": "huggingface_auto", "model": e["TOKENIZER"]}
report = {"kind": "json", "path": os.path.abspath(e["OUT"])}
for obj in (backend, profile, data, tokenizer, report):
    print(json.dumps(obj, separators=(",", ":")))
'
)
[ "${#opts[@]}" -eq 5 ] || die "could not build the guidellm options"

cmd=("$GUIDELLM" run
  --backend "${opts[0]}"
  --profile "${opts[1]}"
  --constraint "kind=max_requests,count=$MAX_REQUESTS"
  --data "${opts[2]}"
  --tokenizer "${opts[3]}"
  --seed "kind=static,value=$SEED"
  --output kind=console
  --output "${opts[4]}"
  --disable-console-interactive)
# Echo the command, shell-quoted ('...' around anything unusual), the API key masked.
line="=="
for arg in "${cmd[@]}"; do
  [ -z "$API_KEY" ] || arg="${arg//"$API_KEY"/***}"
  if [[ "$arg" =~ ^[A-Za-z0-9_./:=,+-]+$ ]]; then line+=" $arg"; else line+=" '${arg//"'"/"'\\''"}'"; fi
done
echo "$line"
rm -f "$OUT"
timeout --kill-after=10 "$TIMEOUT" "${cmd[@]}"
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "guidellm.sh: guidellm failed (rc=$rc)" >&2
  exit "$rc"
fi
[ -s "$OUT" ] || die "guidellm exited 0 but wrote no report at $OUT"
echo "== report: $OUT"
