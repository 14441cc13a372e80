#!/usr/bin/env bash
# Compile every CUDA kernel file (csrc/**/*.cu, torch-free) with plain nvcc for sm_80 and sm_90, and
# syntax-check every CUDA glue file (csrc/**/*_cuda.cpp) against torch's headers, on a machine with
# no GPU. Exit non-zero on the first failure. Usage: scripts/check_cuda_compile.sh [files...]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda_compile: nvcc not found, skipping CUDA compile check"; exit 0
fi
PY=${PYTHON:-python3}
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  mapfile -t files < <(find csrc -name '*.cu' -o -name '*_cuda.cpp' | sort)
fi
CUDA_INC=$(dirname "$(dirname "$(command -v "$NVCC")")")/include
[ -d "$CUDA_INC/cub" ] || CUDA_INC=/usr/local/cuda/include
TORCH_INC=$("$PY" -c "from torch.utils import cpp_extension as c; print(' '.join('-I'+p for p in c.include_paths()))")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# A CPU torch wheel lacks the one generated c10/cuda header; an empty stand-in is enough to
# syntax-check the glue (a CUDA torch has the real one).
mkdir -p "$tmp/shim/c10/cuda/impl"; echo '#pragma once' > "$tmp/shim/c10/cuda/impl/cuda_cmake_macros.h"
n=0
for f in "${files[@]}"; do
  case "$f" in
    *.cu)
      echo "nvcc sm_80+sm_90  $f"
      "$NVCC" -std=c++17 -O2 --expt-relaxed-constexpr -Icsrc \
        -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
        -Xptxas -warn-spills -c "$f" -o "$tmp/$(basename "$f").o"
      ;;
    *_cuda.cpp)
      echo "g++ -fsyntax-only $f"
      g++ -std=c++20 -fsyntax-only -DFFAVATAR_WITH_CUDA=1 -Icsrc $TORCH_INC -I"$CUDA_INC" -idirafter "$tmp/shim" "$f"
      ;;
  esac
  n=$((n + 1))
done
echo "check_cuda_compile: $n file(s) OK"
