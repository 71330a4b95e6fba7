#!/usr/bin/env bash
# Same-machine A/B of kernel versions and tuning knobs (code generation alone moves this kernel by
# ~13%: compare only within one call). Builds the harness of commit $BASE (default HEAD) and of
# the working tree (BASE_DIR=dir: the src/ and host/ in dir instead of a commit), then runs
# alternating rounds:
#   BASE=HEAD CTXS="1 1024" STEPS=512 ROUNDS=2 VARIANTS="inflight4:MK_INFLIGHT=4 pf0:MK_PREFETCH_SLOTS=0" scripts/ab.sh
# Each variant is "name:VAR=value,VAR=value" and runs the working tree's build with those
# environment variables ("name@b:..." runs the BUILDS build b with them); "base" and "new" (no
# variables) always run. BUILDS="name:-DX=1,-DY=2 ..." adds builds of the working tree with those
# compiler flags (compile-time knobs, config.cuh), run in the same rounds (a -arch=... among them
# replaces sm_90: BUILDS="p80:-arch=compute_80" is a PTX-only build, JIT by the driver); DIRS="name:dir ..."
# builds of the src/ in each dir (untracked copies). EXP=4 adds the per-stage breakdown (MK_EXP=4
# builds) of base and new at the first context; EXP=260 EXTRA=-DMK_STAMP_STEP=200 EXP_STEPS=256
# the sub-stage clocks of step 200 (RESEARCH.md section 12).
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/mk_work}; mkdir -p "$WORK/path" build
ln -sfn "$PWD/host" "$WORK/path/megakernel"; export PYTHONPATH="$WORK/path"
BASE=${BASE:-HEAD}
rm -rf "$WORK/base" && mkdir -p "$WORK/base/path"
if [ -n "${BASE_DIR:-}" ]; then  # a copy of src/ and host/ (the device's .git can be stale)
  cp -r "$BASE_DIR/src" "$BASE_DIR/host" "$WORK/base/"
else
  git archive "$BASE" src host | tar -x -C "$WORK/base"
fi
ln -sfn "$WORK/base/host" "$WORK/base/path/megakernel"
# One random checkpoint (seed 7) per flat-format version, converted by that side's own package
# (scripts/rand_flat.sh), in the background while nvcc builds.
NEW_FLAT=$(PYTHONPATH="$WORK/path" scripts/rand_flat.sh --path)
BASE_FLAT=$(PYTHONPATH="$WORK/base/path" scripts/rand_flat.sh --path)
PYTHONPATH="$WORK/path" scripts/rand_flat.sh >/dev/null &
[ "$BASE_FLAT" = "$NEW_FLAT" ] || PYTHONPATH="$WORK/base/path" scripts/rand_flat.sh >/dev/null &
NV="nvcc -O3 -std=c++17 -arch=sm_90 -DMK_STANDALONE"
$NV -I"$WORK/base/src" -o build/ab_base "$WORK/base/src/megakernel.cu" &
$NV -Isrc -o build/ab_new src/megakernel.cu &
for v in ${BUILDS:-}; do
  IFS=, read -ra flags <<< "${v#*:}"
  nv=$NV; [[ " ${flags[*]}" == *" -arch="* ]] && nv=${NV/-arch=sm_90/}
  $nv -Isrc "${flags[@]}" -o "build/ab_b_${v%%:*}" src/megakernel.cu &
done
for v in ${DIRS:-}; do  # "name:dir": the src/ in dir (same flat format as the working tree)
  $NV -I"${v#*:}/src" -o "build/ab_d_${v%%:*}" "${v#*:}/src/megakernel.cu" &
done
if [ -n "${EXP:-}" ]; then
  $NV -I"$WORK/base/src" -DMK_EXP=$EXP ${EXTRA:-} -o build/ab_base_exp "$WORK/base/src/megakernel.cu" &
  $NV -Isrc -DMK_EXP=$EXP ${EXTRA:-} -o build/ab_new_exp src/megakernel.cu &
fi
wait
run() {  # name binary env... ; prints "name ctx tok/s pct"
  local name=$1 bin=$2 ctx=$3; shift 3
  local flat=$NEW_FLAT; [ "$name" = base ] && flat=$BASE_FLAT
  env "$@" timeout 120 "$bin" "$flat" --steps ${STEPS:-512} --ctx "$ctx" 2>&1 | tail -1 |
    awk -v n="$name" -v c="$ctx" '/tok\/s/ {for (i = 1; i <= NF; i++) if ($i == "tok/s," && t == "") t = $(i-1); print n, "ctx", c, t, $(NF-2); next} {print n, "ctx", c, "FAILED:", $0}'
}
for round in $(seq ${ROUNDS:-2}); do
  for ctx in ${CTXS:-1 1024}; do
    run base build/ab_base "$ctx"
    run new build/ab_new "$ctx"
    for v in ${VARIANTS:-}; do  # "name:ENV=v,..." (the working tree's build) or "name@build:..." (a BUILDS one)
      IFS=, read -ra envs <<< "${v#*:}"
      name=${v%%:*}; bin=build/ab_new
      [[ $name == *@* ]] && bin=build/ab_b_${name#*@}
      run "$name" "$bin" "$ctx" "${envs[@]}"
    done
    for v in ${BUILDS:-}; do run "${v%%:*}" "build/ab_b_${v%%:*}" "$ctx"; done
    for v in ${DIRS:-}; do run "${v%%:*}" "build/ab_d_${v%%:*}" "$ctx"; done
  done
done
if [ -n "${EXP:-}" ]; then
  ctx=$(echo ${CTXS:-1} | awk '{print $1}')
  for b in base new; do
    flat=$NEW_FLAT; [ $b = base ] && flat=$BASE_FLAT
    echo "== breakdown $b ctx $ctx"; timeout 120 build/ab_${b}_exp "$flat" --steps ${EXP_STEPS:-128} --ctx "$ctx" 2>&1 | tail -${TAIL:-24}
  done
  for v in ${EXP_VARIANTS:-}; do
    IFS=, read -ra envs <<< "${v#*:}"
    echo "== breakdown ${v%%:*} ctx $ctx"; env "${envs[@]}" timeout 120 build/ab_new_exp "$NEW_FLAT" --steps ${EXP_STEPS:-128} --ctx "$ctx" 2>&1 | tail -${TAIL:-24}
  done
fi
