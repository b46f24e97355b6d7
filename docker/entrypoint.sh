#!/bin/sh
# Container entry point: `skipdecode serve` on 0.0.0.0:8000.
#   SKIPDECODE_MODEL  the model (an HF directory or .gguf file, usually under the /models volume);
#                     unset or empty: the server's default, SmolLM2-135M-Instruct.
#   SKIPDECODE_ARGS   extra serve flags as one string, e.g. "--speedup 2 --max-num-seqs 32".
# Arguments after the image name (`docker run IMAGE --speedup 2`) are passed on as well.
set -eu
if [ -n "${SKIPDECODE_MODEL:-}" ]; then
    set -- --model "$SKIPDECODE_MODEL" "$@"
fi
# SKIPDECODE_ARGS is split into words on purpose.
# shellcheck disable=SC2086
exec skipdecode serve --host 0.0.0.0 --port 8000 ${SKIPDECODE_ARGS:-} "$@"
