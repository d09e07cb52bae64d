#!/usr/bin/env bash
# The 9..16-token cluster split-K kernel (kernels/quik_gemv_split.cu) on the lent H100: its GPU tests, then
# in-process layer A/Bs (scripts/device_gemv_rule_ab.py: alternating rounds, L2 flushed, same-bits column)
# against the quik_gemv_*_m16 kernels it replaces, and of each K split against the launcher's rule.
#   OUT=dir bash scripts/device_gemvs_ab.sh [tests] [ab] [sk] [ab8]    (default: all, in this order)
#     tests  the gpu-marked GEMM tests that run it (forced K splits, ragged and long rows, M = 16 shapes)
#     ab     GEMV_SPLIT=0 (the earlier kernels) against the default, W4A4 at M = 9 / 12 / 16, W4A8 at 16
#     sk     GEMV_SPLIT_SK = 1 / 2 / 4 / 8 against the rule, W4A4, M = 16
#     ab8    the same as ab for W8A8 at M = 16
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/device-gemvs}; mkdir -p "$OUT"
STAGES=${*:-tests ab sk ab8}
has() { [[ " $STAGES " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
AB=(timeout 170 python3 scripts/device_gemv_rule_ab.py)
if has tests; then
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_cuda.py \
    -k "gemvs or every_kernel or int_gemm_exact or quik_gemm_exact or chain" 2>&1 | tee "$OUT/pytest_gemvs.txt" | tail -4
fi
if has ab; then
  "${AB[@]}" --a "GEMV_SPLIT=0" --b "" --m 9,12,16 --scheme w4a4 --rounds 6 > "$OUT/split_w4a4.txt" 2>&1; tail -n 28 "$OUT/split_w4a4.txt"
  "${AB[@]}" --a "GEMV_SPLIT=0" --b "" --m 16 --scheme w4a8 --rounds 6 > "$OUT/split_w4a8.txt" 2>&1; tail -n 10 "$OUT/split_w4a8.txt"
fi
if has sk; then
  for k in 1 2 4 8; do
    "${AB[@]}" --a "" --b "GEMV_SPLIT_SK=$k" --m 16 --scheme w4a4 --rounds 4 > "$OUT/sk$k.txt" 2>&1; tail -n 10 "$OUT/sk$k.txt"
  done
fi
if has ab8; then
  "${AB[@]}" --a "GEMV_SPLIT=0" --b "" --m 16 --scheme w8a8 --rounds 6 > "$OUT/split_w8a8.txt" 2>&1; tail -n 10 "$OUT/split_w8a8.txt"
fi
