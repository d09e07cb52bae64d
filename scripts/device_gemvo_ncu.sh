#!/usr/bin/env bash
# ncu of the outlier-fused small-M kernel against the plain one on one shape (issue 5, thirteenth session):
#   OUT=/some/dir [SHAPE=8192x28672] [POINTS="m8_r64:1 m16_ln:16"] bash scripts/device_gemvo_ncu.sh
# For each POINTS entry (kernel suffix as the launcher picks it : M): quik_gemvo_f16_w4_<suffix> (256 outliers) and
# quik_gemv_f16_w4_<suffix> (none), from scripts/device_gemvo_probe.py's inputs. Sections: throughput, memory (L1
# hit rate), occupancy and launch statistics (the shared-memory configuration the driver chose), warp states.
# (At 911eb9a, s13a, it also ran the gemvo kernel under a shared-memory carve-out setting, removed since:
# docs/PERF_LOG.md, thirteenth session.)
# Outputs: $OUT/ncu_<gemv|gemvo>_<suffix>_m<M>.txt
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/gemvo_ncu}; mkdir -p "$OUT"
SHAPE=${SHAPE:-8192x28672}
NCU="ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
  --section LaunchStats --section WarpStateStats --launch-count 1"
# device_gemvo_probe.py times gemv, gemv+y, the outlier F.linear, gemvo with no outlier column, then gemvo (each up
# to 10 warm-up and 30 timed launches): skip 5 lands in gemv's runs, skip 45 in the second gemvo point's.
run() {  # kernel suffix M skip file [env...]
  local kernel=$1 m=$2 skip=$3 file=$4; shift 4
  env "$@" timeout 70 $NCU --kernel-name "regex:${kernel}\$" --launch-skip "$skip" \
    python3 scripts/device_gemvo_probe.py --m "$m" --shapes "$SHAPE" --reps 30 > "$OUT/$file" 2>&1
  echo "ncu $file exit $?"
}
for p in ${POINTS:-m8_r64:1 m16_ln:16}; do
  s=${p%%:*} m=${p##*:}
  run "quik_gemvo_f16_w4_$s" "$m" 45 "ncu_gemvo_${s}_m$m.txt"
  run "quik_gemv_f16_w4_$s" "$m" 5 "ncu_gemv_${s}_m$m.txt"
done
