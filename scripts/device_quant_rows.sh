#!/usr/bin/env bash
# The rows-mode activation quantizer (issue 5, ninth session) on the lent GPU, in one call: its GPU tests,
# then in-process A/Bs (scripts/device_gemv_rule_ab.py: alternating rounds, L2 flushed, same-bits column):
#   quant    cuda.quantize_layer alone: QUIKTOOL's earlier kernel choice (A: ACT_ROWS=0, the gather kernel
#            above 16 rows) against rows mode (B), W4A4, 256 and 0 outliers, M in $QM
#   threads  rows mode with ~128 and ~512 threads per row (A) against the default ~256 (B), M = 2048
#   layer    the whole layer, ACT_ROWS=0 (A) against rows mode (B), W4A4 and W4A8, 256 outliers, M in $LM
#   tests    the quantizer and layer GPU tests (TESTS=all: every GPU test)
#   OUT=dir [STEPS="tests quant threads layer"] [QM=128,512,2048,8192] [LM=2048] [ROUNDS=4] [TESTS=all]
#     bash scripts/device_quant_rows.sh
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/device-quant-rows}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)" | tee -a "$OUT/gpu.txt"
ab() {  # name, timeout, then device_gemv_rule_ab.py arguments
  local name=$1 t=$2; shift 2
  timeout "$t" python3 scripts/device_gemv_rule_ab.py --rounds "${ROUNDS:-4}" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name ($*)"; grep -v "^WARNING" "$OUT/$name.txt"
}
for step in ${STEPS:-tests quant threads layer}; do  # (ncu: below)
  case $step in
    tests)
      if [[ "${TESTS:-}" == all ]]; then sel=(tests); else sel=(tests/runtime/test_cuda.py -k "act_quant or quik_linear or logits_identical"); fi
      timeout 400 python3 -m pytest -q -m gpu -p no:cacheprovider "${sel[@]}" 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -3 ;;
    quant)
      ab quant_w4a4_o256 200 --what quant --a "ACT_ROWS=0" --b "" --m "${QM:-128,512,2048,8192}" --scheme w4a4 --outliers 256
      ab quant_w4a4_o0 100 --what quant --a "ACT_ROWS=0" --b "" --m 2048 --scheme w4a4 --outliers 0 ;;
    threads)
      ab threads128 100 --what quant --a "ACT_ROWS_THREADS=128" --b "" --m 2048 --scheme w4a4 --outliers 256
      ab threads512 100 --what quant --a "ACT_ROWS_THREADS=512" --b "" --m 2048 --scheme w4a4 --outliers 256 ;;
    layer)
      ab layer_w4a4_o256 200 --a "ACT_ROWS=0" --b "" --m "${LM:-2048}" --scheme w4a4 --outliers 256
      ab layer_w4a8_o256 200 --a "ACT_ROWS=0" --b "" --m "${LM:-2048}" --scheme w4a8 --outliers 256 ;;
  esac
done
# ncu of the gather and rows kernels (NCU_SHAPES, default 2048x4096,2048x8192): speed of light, occupancy,
# warp states, instruction mix; STEPS=ncu
if [[ " ${STEPS:-} " == *" ncu "* ]]; then
  ncu --clock-control none --kernel-name regex:quik_act_quant --section SpeedOfLight --section Occupancy \
    --section WarpStateStats --section SchedulerStats --section InstructionStats --section LaunchStats \
    --section MemoryWorkloadAnalysis python3 scripts/device_quant_profile.py --reps 1 --kernels gather,rows \
    --shapes "${NCU_SHAPES:-2048x4096,2048x8192}" > "$OUT/ncu_quant.txt" 2>&1
  echo "ncu exit $?"
  grep -E "quik_act_quant|Duration|Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Issued Warp|No Eligible|Eligible Warps|Active Warps|Executed Ipc|Stall|Block Limit|Waves Per SM|Executed Instructions  " "$OUT/ncu_quant.txt" | head -150
fi
