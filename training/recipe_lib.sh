# Shared by the recipe scripts (source it after setting OUT): a timestamped log line, and a
# stage that is skipped when its output file exists.

say() { echo "[recipe $(date +%H:%M:%S)] $*" | tee -a "$OUT/recipe.log"; }

run_stage() {  # run_stage NAME DONE_FILE COMMAND...
  local name=$1 done_file=$2
  shift 2
  if [[ -f "$done_file" ]]; then
    say "$name: finished earlier ($done_file), skipping"
    return
  fi
  say "$name: starting"
  local began=$SECONDS
  "$@"
  say "$name: done in $(((SECONDS - began) / 60)) min $(((SECONDS - began) % 60)) s"
}
