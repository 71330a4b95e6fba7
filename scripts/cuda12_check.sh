#!/usr/bin/env bash
# The CUDA 12 half of the portability check (Colab ships CUDA 12), on a machine with CUDA 13's
# nvcc only: CUDA 12.4's own tools compile the kernel's device code. NVRTC (the
# nvidia-cuda-nvrtc-cu12 wheel: CUDA 12's C++ front end and NVVM) writes PTX for each of the
# Makefile's architectures (scripts/nvrtc12_check.py), and CUDA 12.4's ptxas (the
# nvidia-cuda-nvcc-cu12 wheel carries ptxas, not nvcc) assembles it for that sm_XX. This
# replaces assembling nvcc 13's PTX with its version lowered to 8.4: that PTX is not what a
# CUDA 12 build makes, and this PTX is. Not checked: host code under CUDA 12's nvcc (NVRTC
# compiles device code only). Prints the CUDA 12 build's registers and spills per kernel build.
#   scripts/cuda12_check.sh            (CI runs it; installs the wheels into a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
if ! python3 -m pip install -q --no-deps --target "$TMP/cu12" "nvidia-cuda-nvcc-cu12==12.4.131" \
    "nvidia-cuda-nvrtc-cu12==12.4.127"; then
  echo "cuda12_check: could not install the CUDA 12.4 wheels (no network?); CUDA 12 check NOT run"
  exit 0
fi
PTXAS="$TMP/cu12/nvidia/cuda_nvcc/bin/ptxas"
"$PTXAS" --version | tail -1
python3 scripts/nvrtc12_check.py --target "$TMP/cu12" --out "$TMP/ptx"
for ptx in "$TMP"/ptx/megakernel.compute_*.ptx; do
  a=${ptx##*compute_}; a=${a%.ptx}
  if ! "$PTXAS" -arch=sm_$a -O3 -v -o "$TMP/k$a.cubin" "$ptx" 2>"$TMP/ptxas$a.log"; then
    cat "$TMP/ptxas$a.log"; echo "sm_$a: CUDA 12.4 ptxas FAILED"; exit 1
  fi
  # ptxas -v says "Compiling entry function '<mangled name>'", then "... N bytes spill stores, M
  # bytes spill loads" of the kernel (later ones: functions it calls) and "Used R registers";
  # keep every build of qwen3_megakernel
  regs=$(awk '/Compiling entry function/ { k = match($0, /qwen3_megakernelILi[0-9]/) ? substr($0, RSTART + 19, 1) : "" }
              k != "" && /spill stores/ && !(k in spill) { spill[k] = $5 "/" $9 }
              k != "" && /Used [0-9]+ registers/ { regs[k] = $5 }
              END { for (k = 0; k in regs; ++k)
                      printf "; qwen3_megakernel<%d>: %s registers, spills %s B (st/ld)", k, regs[k], spill[k] }' \
         "$TMP/ptxas$a.log")
  echo "sm_$a: assembled by CUDA 12.4 ptxas ($(stat -c %s "$TMP/k$a.cubin") bytes)$regs"
done
