#!/usr/bin/env bash
# compute-sanitizer over a full decode through the megakernel (8 steps in one launch from a
# one-token prompt: no PyTorch kernels), once per tool; a verdict line per tool last.
#   scripts/sanitize.sh [memcheck racecheck synccheck initcheck]
#   LAUNCHES="0 2" scripts/sanitize.sh racecheck   one launch per step; the tool checks launches
#                                                   0..1 only (the rest run uninstrumented)
# The kernel's spin-waits get a long timeout: instrumented code runs orders of magnitude slower.
# The kernel build follows the launch's mean position (from 10,240: deep; below 1,536 short where the
# kernels are not sm_90 code, else long: megakernel.cu, launch_variant);
# MK_KERNEL=short|long|deep forces one.
#   POSITION=1024 scripts/sanitize.sh racecheck  8 steps from position 1,024 over the zeroed cache
#                                                 (split-KV chunks and the scan's staged batches)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sanitize}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/mk_work}; mkdir -p "$WORK/path"
if ! python3 -c "import megakernel" 2>/dev/null; then ln -sfn "$PWD/host" "$WORK/path/megakernel"; export PYTHONPATH="$WORK/path"; fi
export MK_TIMEOUT_MS=${MK_TIMEOUT_MS:-300000}
FLAT=$(scripts/rand_flat.sh)
python3 -c "from megakernel.launcher import build_library; build_library(quiet=True)"  # built outside the tool
declare -A VERDICT
for tool in ${*:-memcheck racecheck synccheck initcheck}; do
  extra=""
  [ "$tool" = memcheck ] && extra="--leak-check full"
  # racecheck: the default report (analysis). "--racecheck-report all" prints every hazard
  # instance, and did not finish one step of this kernel in 540 s.
  start=$(date +%s)
  driver="--steps 8"
  [ "${POSITION:-0}" -gt 0 ] && driver="$driver --position $POSITION"
  if [ -n "${LAUNCHES:-}" ]; then
    read -r skip count <<< "$LAUNCHES"
    extra="$extra --launch-skip $skip --launch-count $count"; driver="$driver --one-step-launches"
  fi
  timeout ${SANITIZE_TIMEOUT:-400} compute-sanitizer --tool "$tool" $extra --print-limit 20 \
    python3 -m megakernel.reliability decode --weights "$FLAT" $driver > "$OUT/sanitize_$tool.log" 2>&1
  rc=$?
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY" "$OUT/sanitize_$tool.log" | tr '\n' ' ')
  tokens=$(grep -o "decode: .*" "$OUT/sanitize_$tool.log" | head -1)
  VERDICT[$tool]="rc=$rc $(( $(date +%s) - start )) s; ${summary:-no summary}; ${tokens:-no tokens}"
  tail -5 "$OUT/sanitize_$tool.log"
done
echo "== compute-sanitizer verdicts, kernel build ${MK_KERNEL:-by mean position}, from position ${POSITION:-0} ($(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader))"
for tool in ${*:-memcheck racecheck synccheck initcheck}; do printf "%-10s %s\n" "$tool" "${VERDICT[$tool]}"; done
