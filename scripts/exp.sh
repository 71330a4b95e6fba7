#!/usr/bin/env bash
# Timing experiments on the GPU: harness builds with -DMK_EXP=N (see src/config.cuh).
#   EXPS="0 4" CTXS="1 128" STEPS=128 scripts/exp.sh
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
WORK=${WORK:-/tmp/mk_work}; mkdir -p "$WORK/path"; ln -sfn "$PWD/host" "$WORK/path/megakernel"; export PYTHONPATH="$WORK/path"
FLAT=$(scripts/rand_flat.sh)
for exp in ${EXPS:-0 4}; do
  nvcc -O3 -std=c++17 -arch=sm_90 -Isrc -DMK_STANDALONE -DMK_EXP=$exp ${EXTRA:-} -o build/exp$exp src/megakernel.cu &
done; wait
for exp in ${EXPS:-0 4}; do
  for ctx in ${CTXS:-1}; do echo "== exp $exp ctx $ctx ${MK_RING_SLOTS:+slots $MK_RING_SLOTS}"; timeout 60 build/exp$exp "$FLAT" --steps ${STEPS:-128} --ctx $ctx 2>&1 | tail -${TAIL:-1}; done
done
