#!/usr/bin/env bash
# One call on the lent H200: build the package against the torch there, run the `cuda` tests and the
# benchmarks, print a short table last. Under $OUT (default ./gpu_out): gpu.txt, tests.log, bench.json,
# table.md, and logs.tgz (build, gsplat build, junit XML, sanitizer and benchmark logs).
#
#   scripts/gpu_check.sh                    # everything
#   STAGES="build tests" scripts/gpu_check.sh
#   STAGES="build profile" scripts/gpu_check.sh   # per-kernel device times -> profile.log
#   PYTEST_K="lbs" BENCH="benchmarks/bench_lbs.py" scripts/gpu_check.sh
#
# gsplat (comparator): put gsplat-1.5.3-py3-none-any.whl in .whl/ (pip download --no-deps
# gsplat==1.5.3 -d .whl) and carry .whl; it is JIT-built here (TORCH_CUDA_ARCH_LIST=9.0).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
STAGES=${STAGES:-"build tests sanitize bench"}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} CMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-90}
export FFAVATAR_COMMIT=${FFAVATAR_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
status=0
stamp() { echo "== $(date +%T) $*"; }

stamp "device"; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch,triton;print('torch',torch.__version__,'cuda',torch.version.cuda,'triton',triton.__version__)" | tee -a "$OUT/gpu.txt"

# NO_GSPLAT=1: leave the gsplat wheel out (its JIT build takes minutes; its comparisons then skip).
# A carried ffavatar wheel is never installed here (scripts/gpu_install.sh installs it).
wheels=$(ls .whl/*.whl 2>/dev/null | grep -v '/ffavatar-' | { [ "${NO_GSPLAT:-0}" = 1 ] && grep -v '/gsplat-' || cat; })
if [ -n "$wheels" ]; then
  stamp "install carried wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  if echo "$wheels" | grep -q '/gsplat-'; then
    # JIT-build gsplat's CUDA backend in the background while we build ours.
    ( "$PY" -c "from gsplat.cuda._backend import _C; print('gsplat backend', _C is not None)" > "$OUT/gsplat_build.log" 2>&1 ) &
    gsplat_pid=$!
  fi
fi

if [[ $STAGES == *build* ]]; then
  stamp "build (arch $CMAKE_CUDA_ARCHITECTURES)"
  t0=$(date +%s)
  if ! "$PY" -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  grep -E "ffavatar:|warning" "$OUT/build.log" | grep -v "^ *$" | head -20
  echo "build took $(( $(date +%s) - t0 )) s"
  cd /tmp && "$PY" -c "import ffavatar_kernels as fk, torch; print('ops:', sorted(n for n in dir(torch.ops.ffavatar) if not n.startswith('_'))); print('cuda kernels:', fk.has_cuda_kernels())"; cd - >/dev/null
fi
[ -n "${gsplat_pid:-}" ] && { wait "$gsplat_pid"; tail -2 "$OUT/gsplat_build.log"; }

# Run tests and benchmarks from a copy without the source packages, so the installed build is used.
# CHECK_DIR: another folder for a second gpu_check.sh running beside this one.
RUN=${CHECK_DIR:-/tmp/ffa_run}; rm -rf "$RUN"; mkdir -p "$RUN"; cp -r tests benchmarks pyproject.toml "$RUN"/
[ -d scripts ] && cp -r scripts "$RUN"/
cd "$RUN"

if [[ $STAGES == *tests* ]]; then
  stamp "cuda tests"
  timeout ${TEST_TIMEOUT:-300} "$PY" -m pytest tests -m cuda -v -rfE -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"} \
    --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [[ $STAGES == *profile* ]]; then
  stamp "profile (per-kernel device time)"
  { [[ ${PROFILE:-lbs,raster} == *lbs* ]] && "$PY" scripts/profile_lbs.py
    [[ ${PROFILE:-lbs,raster} == *raster* ]] && { "$PY" scripts/profile_rasterize.py 1; "$PY" scripts/profile_rasterize.py 8; }
    true; } > "$OUT/profile.log" 2>&1 || status=1
  grep -E "^====|wall per call" "$OUT/profile.log"
fi

if [[ $STAGES == *ncu* ]]; then
  stamp "ncu (one launch of each hot kernel)"
  timeout ${NCU_TIMEOUT:-240} ncu --clock-control none --section SpeedOfLight --section WarpStateStats \
    --section Occupancy --section LaunchStats --section SourceCounters -k "regex:${NCU_KERNELS:-render|vertices|gaussians|joints}" \
    "$PY" scripts/ncu_targets.py > "$OUT/ncu.log" 2>&1 || status=1
  grep -cE "^  [a-z_:<>]+.*\(" "$OUT/ncu.log"; tail -3 "$OUT/ncu.log"
fi

if [[ $STAGES == *sanitize* ]]; then
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}; do
    stamp "compute-sanitizer $tool"
    what=${SANITIZE_WHAT:-cuda-only}  # "attention" adds the Triton kernels (slow under the sanitizer)
    timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool $tool --error-exitcode 9 --print-limit 20 "$PY" scripts/sanitize_smoke.py $what \
      > "$OUT/sanitize_$tool.log" 2>&1; rc=$?
    tail -4 "$OUT/sanitize_$tool.log"; [ $rc -eq 0 ] || { echo "SANITIZER $tool rc=$rc"; status=1; }
  done
fi

if [[ $STAGES == *bench* ]]; then
  stamp "benchmarks"
  timeout ${BENCH_TIMEOUT:-360} "$PY" -m pytest ${BENCH:-benchmarks} -q -p no:cacheprovider ${BENCH_K:+-k "$BENCH_K"} \
    --benchmark-json="$OUT/bench.json" --benchmark-columns=median,iqr,rounds 2>&1 | tee "$OUT/bench.log" | tail -15
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  stamp "table"
  "$PY" scripts/bench_table.py "$OUT/bench.json" | tee "$OUT/table.md"
fi
# The device call returns at most 8 files: keep the four read first, pack the other logs.
( cd "$OUT" && rest=() && for f in build.log gsplat_build.log tests.xml sanitize_*.log bench.log; do
    [ -f "$f" ] && rest+=("$f"); done
  [ ${#rest[@]} -eq 0 ] || { tar czf logs.tgz "${rest[@]}" && rm -f "${rest[@]}"; } )
stamp "done (status $status); results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit $status
