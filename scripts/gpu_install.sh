#!/usr/bin/env bash
# Sourced by the device scripts (gpu_train.sh, gpu_final.sh), repo root, with OUT and PY set: installs
# the dependency wheels carried in .whl/ and the ffavatar wheel carried there, else builds one into
# $OUT/wheel (returned, so the next call can carry it and skip the ~45 s build). GSPLAT=1 also installs
# the gsplat wheel (the comparator; it JIT-builds its CUDA code when first imported, minutes).
deps=$(ls .whl/*.whl 2>/dev/null | grep -v -e '/ffavatar-' -e '/gsplat-' || true)
[ -n "$deps" ] && "$PY" -m pip install -q --no-index --no-deps --no-compile $deps
[ "${GSPLAT:-0}" = 1 ] && ls .whl/gsplat-*.whl >/dev/null 2>&1 && "$PY" -m pip install -q --no-index --no-deps --no-compile .whl/gsplat-*.whl
if ls .whl/ffavatar-*.whl >/dev/null 2>&1; then
  echo "== $(date +%T) install the carried ffavatar wheel"; "$PY" -m pip install -q --no-index --no-deps .whl/ffavatar-*.whl
else
  echo "== $(date +%T) build a wheel"; _t0=$(date +%s)
  "$PY" -m pip wheel --no-build-isolation --no-deps -w "$OUT/wheel" . > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps "$OUT"/wheel/ffavatar-*.whl; echo "build took $(( $(date +%s) - _t0 )) s"
fi
( cd /tmp && "$PY" -c "import ffavatar_kernels as fk; print('cuda kernels:', fk.has_cuda_kernels())" )
