#!/usr/bin/env bash
# Where the kernel's code is (experiment for RESEARCH.md): instructions per source line and the
# long loops of each megakernel build (scripts/sass_agg.py), from nvdisasm's line info; leaves
# OUTDIR/mk.sass.gz for scripts/stall_by_line.py. Run where the CUDA toolkit has nvdisasm (the GPU
# machine; EXTRA= adds nvcc flags).   scripts/sass_profile.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/sass}; mkdir -p "$out"
nvcc -O3 -std=c++17 -lineinfo -Isrc -arch=sm_90 -cubin -o "$out/mk.cubin" ${EXTRA:-} src/megakernel.cu
nvdisasm -g -c "$out/mk.cubin" > "$out/mk.sass"
python3 scripts/sass_agg.py "$out/mk.sass"
gzip -f "$out/mk.sass"
rm -f "$out/mk.cubin"
