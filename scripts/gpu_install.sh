#!/usr/bin/env bash
# Sourced by the device scripts (gpu_train.sh, gpu_final.sh), repo root, with OUT and PY set: installs
# the dependency wheels carried in .whl/ and an ffavatar wheel, else builds one.
#
# The built wheel (over the 16 MiB a device call returns per file) comes back in 15 MiB parts named
# <wheel>.<src>.partNN, <src> a hash of the compiled sources (csrc/, cmake/, CMakeLists.txt): carry
# them in .whl/ and the next call reassembles and installs the wheel instead of building (~3 min),
# then copies the tree's Python files over the installed ones, so Python edits need no rebuild. Parts
# of another <src> are ignored (the extension changed: build). GSPLAT=1 also installs the gsplat wheel
# (the comparator; it JIT-builds its CUDA code when first imported, minutes).
deps=$(ls .whl/*.whl 2>/dev/null | grep -v -e '/ffavatar-' -e '/gsplat-' || true)
[ -n "$deps" ] && "$PY" -m pip install -q --no-index --no-deps --no-compile $deps
[ "${GSPLAT:-0}" = 1 ] && ls .whl/gsplat-*.whl >/dev/null 2>&1 && "$PY" -m pip install -q --no-index --no-deps --no-compile .whl/gsplat-*.whl
SRC_HASH=$(cat CMakeLists.txt $(find csrc cmake -type f | LC_ALL=C sort) | md5sum | cut -c1-12)
part0=$(ls .whl/ffavatar-*.whl."$SRC_HASH".part00 2>/dev/null | head -1)
if [ -n "$part0" ]; then
  whl=/tmp/ffa_wheel/$(basename "${part0%.$SRC_HASH.part00}"); mkdir -p /tmp/ffa_wheel
  cat "${part0%00}"* > "$whl"
  echo "== $(date +%T) install the carried ffavatar wheel ($SRC_HASH) + the tree's Python files"
  "$PY" -m pip install -q --no-index --no-deps --force-reinstall "$whl"
  site=$(cd /tmp && "$PY" -c "import ffavatar, os; print(os.path.dirname(os.path.dirname(ffavatar.__file__)))")
  for pkg in ffavatar ffavatar_kernels; do
    ( cd "$pkg" && find . -type f ! -name '*.so' ! -path '*__pycache__*' -exec cp --parents {} "$site/$pkg/" \; )
  done
elif ls .whl/ffavatar-*.whl >/dev/null 2>&1; then
  echo "== $(date +%T) install the carried ffavatar wheel"; "$PY" -m pip install -q --no-index --no-deps .whl/ffavatar-*.whl
else
  echo "== $(date +%T) build a wheel ($SRC_HASH)"; _t0=$(date +%s)
  "$PY" -m pip wheel --no-build-isolation --no-deps -w "$OUT/wheel" . > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps "$OUT"/wheel/ffavatar-*.whl; echo "build took $(( $(date +%s) - _t0 )) s"
  for w in "$OUT"/wheel/ffavatar-*.whl; do split -b 15M -d "$w" "$OUT/$(basename "$w").$SRC_HASH.part"; done
  rm -rf "$OUT/wheel"
fi
( cd /tmp && "$PY" -c "import ffavatar_kernels as fk; print('cuda kernels:', fk.has_cuda_kernels())" )
