#!/usr/bin/env bash
# The E2E quality table (docs/quality.md), start to finish:
#   (b) full-depth fine-tune of SmolLM2-135M-Instruct        -> $OUT/full
#   (c) skip-aware fine-tune started from (b), 2x/3x batches, self-distillation (KL) toward (b)
#       at full depth, half the rows with invented name/near values; by default a gated LoRA
#       adapter (changes only tokens that skip, so 1x stays (b) exactly)  -> $OUT/skip(/adapter)
#   eval of (a) the base model, (b) and (c) at 1x..5x on the validation MRs (split by restaurant
#   name: seen, unseen and fresh names scored apart)        -> $OUT/eval
#
# Usage:  training/recipe_e2e.sh [OUT]            (default OUT: runs/e2e)
# Resumable: rerun the same command after an interruption. A finished stage is skipped; a
# started training stage continues from its last saved state (every SAVE_EVERY steps).
# Budget on a 2-core CPU when it is otherwise idle (fp32 on AVX2, 2026-12): (b) ~12 s per step
# of 16 rows (207 steps per epoch on the name split), (c) ~12-14 s per step with the teacher;
# (b) 1 epoch ~40 min, (c) 1.5 epochs ~65 min, eval ~4 min per model; about 2 h in all. With
# AVX512-BF16 (bf16 autocast, 2026-12): (b) 18 min, (c) 31 min, eval 6 min; under 1 h.
# Knobs (environment): EPOCHS_FULL, EPOCHS_SKIP, BATCH, LR, SPEEDUPS_TRAIN, KL_WEIGHT,
# DECAY_TOKENS, WARMUP_LAYERS, DEPTH_RATIO, HORIZON_TOKENS (the presets' shape), SPEEDUPS_EVAL, DATA, VAL_PERCENT, SPLIT_BY (name | mr),
# NAME_VAL_PERCENT, SUBSTITUTE, SKIP_METHOD (gated | full), RANK, ALPHA, DEVICE, SAVE_EVERY;
# for a quick smoke run of the whole pipeline: MAX_STEPS (per training stage), MAX_MRS and
# MAX_TOKENS (eval); BASE replaces the base model (a .gguf file or an HF directory).
set -euo pipefail

OUT=${1:-runs/e2e}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -x "$ROOT/.venv/bin/skipdecode" ]]; then BIN="$ROOT/.venv/bin"; else BIN=$(dirname "$(command -v skipdecode)"); fi
SKIPDECODE="$BIN/skipdecode"

EPOCHS_FULL=${EPOCHS_FULL:-1}
EPOCHS_SKIP=${EPOCHS_SKIP:-1.5}
BATCH=${BATCH:-16}
if [[ "${SKIP_METHOD:-gated}" == gated ]]; then
  SPEEDUPS_TRAIN=${SPEEDUPS_TRAIN:-2,3}  # a gated adapter learns nothing from 1x batches
else
  SPEEDUPS_TRAIN=${SPEEDUPS_TRAIN:-1,2,2,3,3}  # 2x and 3x sampled twice as often as 1x
fi
KL_WEIGHT=${KL_WEIGHT:-1.0}
DECAY_TOKENS=${DECAY_TOKENS:-24}
WARMUP_LAYERS=${WARMUP_LAYERS:-3}  # layers 0-2 carry copying (docs/quality.md, layer ablation)
DEPTH_RATIO=${DEPTH_RATIO:-1.5}
HORIZON_TOKENS=${HORIZON_TOKENS:-}     # empty: presets meet their speedup at DECAY_TOKENS
SPEEDUPS_EVAL=${SPEEDUPS_EVAL:-1,2,3,4,5}
DEVICE=${DEVICE:-auto}
SAVE_EVERY=${SAVE_EVERY:-25}
VAL_PERCENT=${VAL_PERCENT:-15}
SPLIT_BY=${SPLIT_BY:-name}            # validation: unseen restaurant names + held-out MRs (docs/quality.md)
NAME_VAL_PERCENT=${NAME_VAL_PERCENT:-25}
SUBSTITUTE=${SUBSTITUTE:-0.5}         # (c): share of rows with invented name/near values
SKIP_METHOD=${SKIP_METHOD:-gated}     # (c): gated (LoRA changing only skipping tokens) | full
RANK=${RANK:-32}
ALPHA=${ALPHA:-64}
DATA_ARGS=(--val-percent "$VAL_PERCENT" --split-by "$SPLIT_BY" --name-val-percent "$NAME_VAL_PERCENT")
if [[ -n "${DATA:-}" ]]; then DATA_ARGS+=(--data "$DATA"); fi
TRAIN_ARGS=()
if [[ -n "${LR:-}" ]]; then TRAIN_ARGS+=(--lr "$LR"); fi
if [[ -n "${MAX_STEPS:-}" ]]; then TRAIN_ARGS+=(--max-steps "$MAX_STEPS"); fi
EVAL_ARGS=()
if [[ -n "${MAX_MRS:-}" ]]; then EVAL_ARGS+=(--max-mrs "$MAX_MRS"); fi
if [[ -n "${MAX_TOKENS:-}" ]]; then EVAL_ARGS+=(--max-tokens "$MAX_TOKENS"); fi
if [[ -z "${BASE:-}" ]]; then
  BASE=$("$BIN/python" -c 'from skipdecode.model_runner.weights import default_model_path as p; print(p())')
fi

mkdir -p "$OUT"
# shellcheck source=training/recipe_lib.sh
source "$ROOT/training/recipe_lib.sh"
SCHEDULE_ARGS=(--decay-tokens "$DECAY_TOKENS" --warmup-layers "$WARMUP_LAYERS")
SHAPE_ARGS=(--depth-ratio "$DEPTH_RATIO")  # recorded in (c): its {"speedup": x} presets keep it
if [[ -n "$HORIZON_TOKENS" ]]; then SHAPE_ARGS+=(--horizon-tokens "$HORIZON_TOKENS"); fi
COMMON=(--batch-size "$BATCH" --device "$DEVICE" --save-every "$SAVE_EVERY" --resume)
case "$SKIP_METHOD" in
  gated) SKIP_ARGS=(--method lora --lora-rank "$RANK" --lora-alpha "$ALPHA" --lora-apply-to skipping --default-speedup 1)
         SKIP_ADAPTER="$OUT/skip/adapter" ;;
  full) SKIP_ARGS=(--method full); SKIP_ADAPTER=none ;;
  *) echo "SKIP_METHOD must be gated or full (got $SKIP_METHOD)" >&2; exit 2 ;;
esac

say "output in $OUT; base model $BASE"
run_stage "(b) full-depth fine-tune" "$OUT/full/train_summary.json" \
  "$SKIPDECODE" train --model "$BASE" --out "$OUT/full" --method full --epochs "$EPOCHS_FULL" \
  --speedups 1 "${SCHEDULE_ARGS[@]}" "${COMMON[@]}" "${DATA_ARGS[@]}" "${TRAIN_ARGS[@]}"

run_stage "(c) skip-aware ${SPEEDUPS_TRAIN}x fine-tune, KL ${KL_WEIGHT} to (b)" \
  "$OUT/skip/train_summary.json" \
  "$SKIPDECODE" train --model "$OUT/full" --teacher "$OUT/full" --out "$OUT/skip" "${SKIP_ARGS[@]}" \
  --epochs "$EPOCHS_SKIP" --speedups "$SPEEDUPS_TRAIN" --kl-weight "$KL_WEIGHT" \
  --substitute "$SUBSTITUTE" "${SHAPE_ARGS[@]}" \
  "${SCHEDULE_ARGS[@]}" "${COMMON[@]}" "${DATA_ARGS[@]}" "${TRAIN_ARGS[@]}"

run_stage "eval (a) base, (b) full-ft, (c) skip-ft at ${SPEEDUPS_EVAL}x" "$OUT/eval/results.json" \
  "$SKIPDECODE" eval e2e --out "$OUT/eval" --speedups "$SPEEDUPS_EVAL" "${SCHEDULE_ARGS[@]}" \
  --model "$BASE" --label "(a) base" --adapter none \
  --model "$OUT/full" --label "(b) full-depth FT" --adapter none \
  --model "$OUT/skip" --label "(c) skip-aware FT" --adapter "$SKIP_ADAPTER" --device "$DEVICE" "${DATA_ARGS[@]}" "${EVAL_ARGS[@]}"

say "table: $OUT/eval/results.md, plot: $OUT/eval/quality_vs_speedup.png"
cat "$OUT/eval/results.md"
