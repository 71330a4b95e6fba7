#!/usr/bin/env bash
# One call on the GPU machine: build, GPU tests, validation, benchmark; a summary table last.
#   scripts/gpu_check.sh            build, harness, GPU tests, validation, benchmark
#   STAGES="build harness validate" scripts/gpu_check.sh    a subset; also "ptx", "sanitize",
#   "reliability" (determinism + soak) and "notebook", which the default leaves out
# Logs and JSON go to $OUT (the device tool brings them back) or /tmp/gpu_check.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT" results
export PYTHONUNBUFFERED=1
STAGES=${STAGES:-"build harness tests validate bench"}
WORK=${WORK:-/tmp/mk_work}
mkdir -p "$WORK"
declare -A RESULT

# the package's import name `megakernel` is the folder host/ (pyproject maps it); without an install:
if ! python3 -c "import megakernel" 2>/dev/null; then
  mkdir -p "$WORK/path"; ln -sfn "$PWD/host" "$WORK/path/megakernel"; export PYTHONPATH="$WORK/path"
fi
# the commit recorded in results/*.json; pass MK_COMMIT=... when the tree was copied without its
# history (a copied tree over a stale .git shows as "+changes")
if [ -z "${MK_COMMIT:-}" ]; then
  MK_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && MK_COMMIT="$MK_COMMIT+changes"
fi
export MK_COMMIT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used,memory.total --format=csv,noheader
has() { [[ " $STAGES " == *" $1 "* ]]; }
RAND_FLAT=$(scripts/rand_flat.sh --path)  # a random checkpoint of the real shapes (scripts/rand_flat.sh)
rand_flat() { scripts/rand_flat.sh >/dev/null || true; }

if has build; then
  make -j4 all lib 2>&1 | grep -E "error|registers|stack frame|spill" | tee "$OUT/build.log"
  [ -x build/megakernel ] && RESULT[build]=ok || RESULT[build]=FAILED
fi
if has harness; then
  rand_flat
  for ctx in 1 128 1024; do
    build/megakernel "$RAND_FLAT" --steps 512 --ctx $ctx 2>&1 | tee -a "$OUT/harness.log" | tail -1
  done
  RESULT[harness]=$(grep -o "[0-9.]* tok/s.*roofline$" "$OUT/harness.log" | head -1 | awk '{print $1" tok/s, "$(NF-2)" of roofline"}')
fi
if has tests; then
  python3 -m pytest -q -m gpu tests 2>&1 | tee "$OUT/tests.log" | tail -15
  RESULT[tests]=$(tail -1 "$OUT/tests.log")
fi
if has validate; then
  python3 -m megakernel.validate --steps ${VALIDATE_STEPS:-128} --seeds ${VALIDATE_SEEDS:-0 1 2} \
    --contexts ${VALIDATE_CONTEXTS:-0 8192 32768} \
    --json results/validate.json 2>&1 | tee "$OUT/validate.log"
  cp results/validate.json "$OUT/" 2>/dev/null
  RESULT[validate]=$(tail -1 "$OUT/validate.log")
fi
if has ptx; then  # the portable paths: PTX-only builds (JIT by the driver), validated and timed here
  rand_flat
  for cc in 75 80; do
    python3 -m megakernel.validate --seeds 0 --steps 64 --contexts 0 8192 --gencode arch=compute_$cc,code=compute_$cc \
      --json "$OUT/validate_ptx$cc.json" 2>&1 | tee -a "$OUT/ptx.log" | tail -3
    python3 - "$cc" "$RAND_FLAT" <<'PY' 2>&1 | tee -a "$OUT/ptx.log"
import sys
from megakernel.launcher import build_library
from megakernel.engine import Engine
cc, flat = sys.argv[1], sys.argv[2]
lib = build_library(gencode=f"arch=compute_{cc},code=compute_{cc}", quiet=True)
with Engine(flat, max_ctx=600, verify=False, quiet=True, lib_path=lib) as eng:
    eng.run([1], 0, 8)
    eng.run([1], 0, 512)
    print(f"ptx compute_{cc}: {512 / (eng.last_ms() / 1e3):.1f} tok/s at ctx 1 (512 tokens in one launch)")
PY
  done
  RESULT[ptx]=$(grep -E "^VALIDATION|tok/s" "$OUT/ptx.log" | tr '\n' ' ')
fi
if has bench; then
  python3 -m megakernel.benchmark --json results/bench.json --plot results/bench.png ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  cp results/bench.json results/bench.png "$OUT/" 2>/dev/null
  RESULT[bench]=$(grep -m1 "megakernel @ ctx" "$OUT/bench.log" || echo "see bench.log")
fi

if has sanitize; then  # compute-sanitizer, four tools, over an 8-token decode (scripts/sanitize.sh)
  OUT="$OUT" scripts/sanitize.sh 2>&1 | tee "$OUT/sanitize.log" | tail -6
  RESULT[sanitize]=$(grep -A4 "compute-sanitizer verdicts" "$OUT/sanitize.log" | tail -4 | cut -c1-150 | tr '\n' '|')
fi
if has reliability; then  # determinism (100 repeats, grid sizes) and the soak, JSON reports in results/
  rand_flat
  python3 -m megakernel.reliability determinism --weights "$RAND_FLAT" --json results/determinism.json 2>&1 | tee "$OUT/determinism.log" | tail -12
  python3 -m megakernel.reliability soak --weights "$RAND_FLAT" ${SOAK_ARGS:-} --json results/soak.json 2>&1 | tee "$OUT/soak.log" | tail -16
  cp results/determinism.json results/soak.json "$OUT/" 2>/dev/null
  RESULT[reliability]="$(tail -1 "$OUT/determinism.log") $(tail -1 "$OUT/soak.log")"
fi
if has notebook; then  # needs nbclient + ipykernel: carried wheels in .whl/ (see RESEARCH.md) or installed
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  fi
  MEGAKERNEL_NOTEBOOK_GPU=1 MEGAKERNEL_NOTEBOOK_OUT="$OUT/executed_notebook.ipynb" python3 -m pytest -q tests/test_notebook.py 2>&1 | tee "$OUT/notebook.log" | tail -15
  RESULT[notebook]=$(tail -1 "$OUT/notebook.log")
fi

echo
echo "==================== gpu_check summary ($(date -u +%F) commit $MK_COMMIT) ===================="
nvidia-smi --query-gpu=name --format=csv,noheader
for k in build harness tests validate ptx bench sanitize reliability notebook; do
  [ -n "${RESULT[$k]:-}" ] && printf "%-10s %s\n" "$k" "${RESULT[$k]}"
done
