#!/usr/bin/env bash
# After training: export + evaluate the trained default, then the GPU figures that need a quiet GPU.
#
#   RUN=.runs/default_small bash scripts/gpu_final.sh        # on the device, repo root; .whl carried
#
# Installs the wheels of .whl/ (building the ffavatar wheel when none is carried: scripts/gpu_install.sh), the
# run folder with the checkpoint (whole or in parts). Each stage has its own timeout; everything
# but the exported weights comes back in all.tgz (at most 8 files return from a device call).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
RUN=${RUN:-.runs/default_small}
STAGES=${STAGES:-"eval train_step animate bench_pers personalize host long"}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0
stamp() { echo "== $(date +%T) $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch,triton;print('torch',torch.__version__,'triton',triton.__version__)" | tee -a "$OUT/gpu.txt"
GSPLAT=1 source scripts/gpu_install.sh
# gsplat (comparator) JIT-builds its CUDA backend: start it now, in the background
( cd /tmp && "$PY" -c "from gsplat.cuda._backend import _C; print('gsplat backend', _C is not None)" > "$OUT/gsplat_build.log" 2>&1 ) &
if ls "$RUN"/checkpoint.part* >/dev/null 2>&1; then
  cat "$RUN"/checkpoint.part* > "$RUN/checkpoint.safetensors" && rm -f "$RUN"/checkpoint.part*
fi
# WEIGHTS: evaluate this exported weights file (e.g. ffavatar/nn/default_small.safetensors) instead of
# exporting the run's checkpoint
W=${WEIGHTS:+$PWD/$WEIGHTS}; W=${W:-$OUT/default_small.safetensors}
R=/tmp/ffa_run; rm -rf $R; mkdir -p $R; cp -r scripts benchmarks tests pyproject.toml $R/; RUNABS=$(cd "$RUN" && pwd); cd $R

if [[ $STAGES == *eval* ]]; then
  stamp "export + evaluate"
  [ -n "${WEIGHTS:-}" ] || "$PY" scripts/export_default_weights.py "$RUNABS/checkpoint.safetensors" --out "$W" | tee "$OUT/export.log"
  timeout ${EVAL_TIMEOUT:-150} "$PY" scripts/eval_default.py --weights "$W" --identities ${IDS:-32} --personalize ${PERS:-4} \
    --json "$OUT/eval.json" 2>&1 | tee "$OUT/eval.log" | tail -12
fi
wait
if [[ $STAGES == *train_step* ]]; then
  stamp "bench: paper training step"
  timeout ${STEP_TIMEOUT:-180} "$PY" -m pytest benchmarks/bench_train_step.py -q -s -p no:cacheprovider 2>&1 | tee "$OUT/bench_train_step.log" | tail -8
fi
if [[ $STAGES == *animate* ]]; then
  stamp "bench: animate"
  timeout 90 "$PY" -m pytest benchmarks/bench_animate.py -q -p no:cacheprovider --benchmark-json="$OUT/bench_animate.json" \
    --benchmark-columns=median,iqr,rounds 2>&1 | tee "$OUT/bench_animate.log" | tail -8
  "$PY" scripts/bench_table.py "$OUT/bench_animate.json" 2>/dev/null | tail -12
fi
if [[ $STAGES == *bench_pers* ]]; then
  stamp "bench: personalize steps (ours vs PyTorch LBS + gsplat)"
  timeout 120 "$PY" -m pytest benchmarks/bench_personalize.py -q -p no:cacheprovider --benchmark-json="$OUT/bench_personalize.json" \
    --benchmark-columns=median,iqr,rounds 2>&1 | tee "$OUT/bench_personalize.log" | tail -8
  "$PY" scripts/bench_table.py "$OUT/bench_personalize.json" 2>/dev/null | tail -6
fi
if [[ $STAGES == *personalize* ]]; then
  stamp "personalize_synthetic (512 px, 4 views, 500 steps, ~80K Gaussians)"
  timeout 120 "$PY" scripts/personalize_synthetic.py --no-progress 2>&1 | tee "$OUT/personalize.log" | tail -20
fi
if [[ $STAGES == *host* ]]; then
  stamp "host overhead (eager vs graph replay)"
  timeout 90 "$PY" scripts/host_overhead.py --cuda 2>&1 | tee "$OUT/host_overhead.log" | tail -25
fi
if [[ $STAGES == *attn5k* ]]; then
  # A/B: the 5,023-query cross-attention (1 view: below the autotune threshold, a fixed config) with
  # the default policy and with FFAVATAR_ATTN_AUTOTUNE=1, each beside cuDNN SDPA in its process
  for at in default 1; do
    stamp "bench: cross_attention 5,023 queries, autotune=$at"
    ( [ $at = 1 ] && export FFAVATAR_ATTN_AUTOTUNE=1; timeout ${ATTN_TIMEOUT:-150} "$PY" -m pytest benchmarks/bench_cross_attention.py \
      -q -s -p no:cacheprovider -k "(test_cross_attention and 5023-1-) or summary" 2>&1 | tee "$OUT/attn5k_$at.log" | tail -14 )
  done
fi
if [[ $STAGES == *long* ]]; then
  stamp "long runs (engine frames, personalization steps, big renders)"
  timeout ${LONG_TIMEOUT:-200} "$PY" scripts/long_runs.py --frames ${FRAMES:-100000} --steps ${PSTEPS:-5000} \
    --json "$OUT/long_runs.json" 2>&1 | tee "$OUT/long_runs.log" | tail -6
fi
cp "$RUNABS/metrics.jsonl" "$OUT/" 2>/dev/null
( cd "$OUT" && rest=$(ls | grep -v -e '^default_small.safetensors$' -e '^all.tgz$' -e '\.part[0-9]*$') && tar czf all.tgz $rest && rm -rf $rest )
stamp "done: $(ls "$OUT" | tr '\n' ' ')"
