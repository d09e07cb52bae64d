#!/usr/bin/env bash
# ncu of the large-M kernels with per-instruction stall samples (issue 5, fifteenth session):
#   OUT=/some/dir [POINTS="w4a8:quik_wgmma_ws_f16_w4:8192x28672 ..."] [M=2048] [NCU_CACHE=all|none] \
#     bash scripts/device_wgmma_ncu.sh
# NCU_CACHE: ncu's --cache-control; "all" (the default) flushes the caches before each profiled pass, "none" keeps
# them, e.g. for a kernel that reads what the kernel before it just wrote (split-K's add kernel and its slices).
# Each POINTS entry is scheme:kernel-regex:shape. One process first builds every cubin (the sm_90a wgmma build takes
# 60-90 s on a fresh machine and must not fall inside ncu's run), then one ncu run per point profiles the first
# matching launch of `quiktool bench layer` with: throughput (and its breakdown), compute pipes, scheduler and warp
# states, instruction statistics, shared-memory tables and the source counters (stall samples per SASS instruction).
# Outputs: $OUT/ncu_<kernel>_<scheme>_<shape>_m<M>.txt (sections, every detail), $OUT/sass_<same>.csv (the source
# page: one line per SASS instruction with its samples), when this ncu can print it.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/wgmma_ncu}; mkdir -p "$OUT"
M=${M:-2048}
NCU_CACHE=${NCU_CACHE:-all}
POINTS=${POINTS:-"w4a8:quik_wgmma_ws_f16_w4:8192x28672 w8a8:quik_wgmma_ws_f16_w8:8192x28672 w4a8:quik_act_quant_rows_f16:4096x4096"}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
ncu --version | tail -1 | tee -a "$OUT/gpu.txt"
bench() {  # scheme shape: the command of one short point of bench layer
  echo python3 -m quiktool bench layer --device cuda --backend cuda --schemes "$1" --outliers 0 --shapes "$2" \
    --m "$M" --no-peers --reps 3 --warmup 1 --max-point-s 0.05
}
for p in $POINTS; do  # build (and cache) every cubin the points need, outside ncu
  IFS=: read -r s k shape <<< "$p"
  timeout 200 $(bench "$s" "$shape") > /dev/null 2>&1; echo "warm $s $shape exit $?"
done
for p in $POINTS; do
  IFS=: read -r s k shape <<< "$p"
  k_file=${k}_${s}_${shape}_m$M  # a kernel may appear at several points: one file each
  rep=/tmp/ncu_$k_file
  timeout 150 ncu --clock-control none --cache-control "$NCU_CACHE" \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats --section WarpStateStats \
    --section InstructionStats --section SourceCounters \
    --section MemoryWorkloadAnalysis_Tables --kernel-name "regex:$k" --launch-count 1 -f -o "$rep" \
    $(bench "$s" "$shape") > "/tmp/run_$k_file.log" 2>&1
  rc=$?; echo "ncu $k_file exit $rc"; [ $rc = 0 ] || tail -5 "/tmp/run_$k_file.log"
  ncu -i "$rep.ncu-rep" --print-details all > "$OUT/ncu_$k_file.txt" 2>&1
  ncu -i "$rep.ncu-rep" --page source --csv --print-source sass > "$OUT/sass_$k_file.csv" 2>&1 || echo "no source page"
  wc -l "$OUT/sass_$k_file.csv"
done
