#!/usr/bin/env bash
# The CUDA 12 half of the portability check, on a machine with CUDA 13's nvcc only: nvcc 13
# writes the kernel's PTX for each architecture, and CUDA 12.4's ptxas (the nvidia-cuda-nvcc-cu12
# wheel carries ptxas, not nvcc) assembles it with the PTX ISA version lowered to 8.4, CUDA
# 12.4's. That checks every instruction the kernel uses exists in CUDA 12's PTX for each target
# (what Colab's CUDA 12 driver JIT and ptxas see); it does not run CUDA 12's C++ front end.
#   scripts/cuda12_check.sh            (CI runs it; installs the wheel into a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
if ! python3 -m pip install -q --no-deps --target "$TMP/cu12" "nvidia-cuda-nvcc-cu12==12.4.131"; then
  echo "cuda12_check: could not install nvidia-cuda-nvcc-cu12 (no network?); CUDA 12 ptxas check NOT run"
  exit 0
fi
PTXAS="$TMP/cu12/nvidia/cuda_nvcc/bin/ptxas"
"$PTXAS" --version | tail -1
for a in 75 80 86 89 90; do
  "$NVCC" -O3 -std=c++17 -Isrc -arch=compute_$a -ptx -o "$TMP/k$a.ptx" src/megakernel.cu
  sed -i 's/^\.version .*/.version 8.4/' "$TMP/k$a.ptx"
  "$PTXAS" -arch=sm_$a -O3 -o "$TMP/k$a.cubin" "$TMP/k$a.ptx"
  echo "sm_$a: PTX assembled by CUDA 12.4 ptxas ($(stat -c %s "$TMP/k$a.cubin") bytes)"
done
