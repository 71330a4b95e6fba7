#!/usr/bin/env bash
# The random checkpoint of the real Qwen3-0.6B shapes (seed 7) that the GPU scripts run on,
# converted once per machine and flat-format version by the `megakernel` package on PYTHONPATH.
#   scripts/rand_flat.sh          creates it when missing; prints its path
#   scripts/rand_flat.sh --path   prints the path only
set -euo pipefail
WORK=${WORK:-/tmp/mk_work}; mkdir -p "$WORK"
v=$(python3 -c "from megakernel.layout import FORMAT_VERSION as v; print(v)")
f="$WORK/rand06b_v$v.bin"
if [ "${1:-}" != --path ] && [ ! -f "$f" ]; then
  tmp="${f%.bin}.tmp$$"  # the HF checkpoint and its conversion; only the flat file is kept
  python3 -c "
from megakernel.fixtures import write_random_flat; import os, sys
os.replace(write_random_flat(sys.argv[1], seed=7), sys.argv[2])" "$tmp" "$f" >/dev/null
  rm -rf "$tmp"
fi
echo "$f"
