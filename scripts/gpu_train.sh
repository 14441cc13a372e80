#!/usr/bin/env bash
# Train the shipped default model in slices of one device call, resuming from the run folder.
#
#   RUN=.runs/default_small TRAIN_S=420 bash scripts/gpu_train.sh     # on the device, repo root
#
# Installs the wheels carried in .whl/ (a prebuilt ffavatar wheel among them, else it builds one and
# returns it in parts: scripts/gpu_install.sh), reassembles a checkpoint carried in
# parts (device calls return files up to 16 MiB), trains CONFIG for TRAIN_S seconds (the loop then
# checkpoints and exits) while EXTRA (a command, e.g. the cuda tests) runs beside it, and returns
# the checkpoint split into 15 MiB parts plus the run's metrics and evaluation grids (train.tgz).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
RUN=${RUN:-.runs/default_small}
CONFIG=${CONFIG:-configs/default_small.toml}
TRAIN_S=${TRAIN_S:-420}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} CMAKE_CUDA_ARCHITECTURES=90
stamp() { echo "== $(date +%T) $*"; }
T0=$(date +%s)   # DEADLINE: seconds after this by which the call must be done (the training shrinks to fit)

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
source scripts/gpu_install.sh

if ls "$RUN"/checkpoint.part* >/dev/null 2>&1; then
  cat "$RUN"/checkpoint.part* > "$RUN/checkpoint.safetensors" && rm -f "$RUN"/checkpoint.part*
fi
mkdir -p "$RUN"; RUN=$(cd "$RUN" && pwd)
RESERVE=$(( (${EVAL:-0} == 1 ? 90 : 0) + ${POST_S:-0} ))   # EVAL=1: export + evaluate after training; POST_S: for POST
left=$(( ${DEADLINE:-560} - ($(date +%s) - T0) - 45 - RESERVE ))
[ "$left" -lt "$TRAIN_S" ] && TRAIN_S=$left
[ "$TRAIN_S" -lt 30 ] && { echo "no time left to train"; TRAIN_S=30; }
stamp "train $CONFIG for ${TRAIN_S}s into $RUN"
# train in rounds: when a round reaches its step count with time to spare, the next one extends
# the schedule by STEP_CHUNK steps (a warm restart of the cosine) until the time is used
train_rounds() {
  local steps=${STEPS:-3000} end=$(( $(date +%s) + TRAIN_S )) left last
  while :; do
    left=$(( end - $(date +%s) )); [ "$left" -lt 45 ] && break
    ( cd /tmp && "$PY" -m ffavatar.train "$ROOT/$CONFIG" --out "$RUN" --time-limit "$left" --steps "$steps" ) || return 1
    last=$("$PY" -c "import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]['step'])" "$RUN/metrics.jsonl")
    [ "$last" -lt "$steps" ] && break                # the time ran out first
    steps=$(( steps + ${STEP_CHUNK:-3000} ))
  done
}
ROOT=$PWD
train_rounds > "$OUT/train.log" 2>&1 &
train_pid=$!
if [ -n "${EXTRA:-}" ]; then
  stamp "extra: $EXTRA"
  timeout $(( ${DEADLINE:-560} - ($(date +%s) - T0) - 25 )) bash -c "$EXTRA" > "$OUT/extra.log" 2>&1
  echo "extra rc=$?"; grep -E "passed|failed|error|ERROR SUMMARY|SANITIZER" "$OUT/extra.log" | tail -12
fi
wait $train_pid; echo "train rc=$?"; tail -3 "$OUT/train.log"; tail -2 "$RUN/metrics.jsonl"
grep '"eval/' "$RUN/metrics.jsonl" | tail -3
if [ "${EVAL:-0}" = 1 ]; then
  stamp "export + evaluate"
  R=/tmp/ffa_eval; rm -rf $R; mkdir -p $R; cp -r scripts $R/
  ( cd $R && "$PY" scripts/export_default_weights.py "$RUN/checkpoint.safetensors" --out "$OUT/default_small.safetensors" \
    && timeout $(( ${DEADLINE:-560} - ($(date +%s) - T0) - 15 )) "$PY" scripts/eval_default.py --weights "$OUT/default_small.safetensors" \
       --identities ${IDS:-16} --personalize ${PERS:-2} --json "$OUT/eval.json" ) > "$OUT/eval.log" 2>&1
  tail -8 "$OUT/eval.log"
fi
if [ -n "${POST:-}" ]; then   # POST: a command run after training (e.g. a benchmark on the quiet GPU)
  stamp "post: $POST"
  timeout $(( ${DEADLINE:-560} - ($(date +%s) - T0) - 10 )) bash -c "$POST" > "$OUT/post.log" 2>&1; echo "post rc=$?"
  tail -${POST_TAIL:-20} "$OUT/post.log"
fi
split -b 15M -d "$RUN/checkpoint.safetensors" "$OUT/checkpoint.part"
cp "$RUN/metrics.jsonl" "$OUT/"; cp $(ls "$RUN"/eval_*.png 2>/dev/null | tail -2) "$OUT/" 2>/dev/null
# at most 8 files come back: the wheel and checkpoint parts stand alone, the rest in one archive
( cd "$OUT" && rest=$(ls | grep -v -e '\.part[0-9]*$' -e '^all.tgz$' -e '^default_small.safetensors$') && tar czf all.tgz $rest && rm -rf $rest )
stamp "done: $(ls "$OUT" | tr '\n' ' ')"
