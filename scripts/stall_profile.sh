#!/usr/bin/env bash
# Where the short build's warps stall (experiment for RESEARCH.md): the SASS map
# (scripts/sass_profile.sh) and an Nsight Compute profile of one harness launch (64 tokens, context 1)
# with every stall reason, per-instruction stall samples and the instruction-cache counters; then
# scripts/stall_by_line.py OUT/sass_samples.csv.gz OUT/mk.sass.gz sums the samples per source line.
#   OUT=dir scripts/stall_profile.sh      (on the GPU machine)
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/out}; mkdir -p "$O"
WORK=/tmp/mk_work; mkdir -p $WORK/path build; ln -sfn "$PWD/host" $WORK/path/megakernel; export PYTHONPATH=$WORK/path
(scripts/rand_flat.sh > /tmp/flatpath) &
nvcc -O3 -std=c++17 -lineinfo -arch=sm_90 -Isrc -DMK_STANDALONE ${EXTRA:-} -o build/megakernel src/megakernel.cu &
scripts/sass_profile.sh "$O" > "$O/sass_summary.txt" 2>&1 &
wait
FLAT=$(cat /tmp/flatpath)
build/megakernel $FLAT --steps 256 --ctx 1 2>&1 | tail -1
M=sm__icc_requests.sum,sm__icc_requests_lookup_miss.sum,sm__icc_requests_lookup_miss_tag_miss.sum
timeout 400 ncu --clock-control none -k regex:qwen3 -c 1 -o /tmp/prof --import-source yes \
  --section WarpStateStats --section SourceCounters --section SchedulerStats --metrics $M \
  build/megakernel $FLAT --steps 64 --ctx 1 > /dev/null 2>&1
ncu -i /tmp/prof.ncu-rep --page details --print-details all > $O/details.txt 2>&1
ncu -i /tmp/prof.ncu-rep --page source --csv --print-source sass > /tmp/src.csv 2>&1
gzip -c /tmp/src.csv > $O/sass_samples.csv.gz
grep -i -E "stall|icc" $O/details.txt | head -60
