#!/usr/bin/env bash
# One device call for a launcher or kernel change (issue 5): GPU tests of a selection, then the in-process
# layer A/B of two settings (scripts/device_gemv_rule_ab.py) for each scheme, then optional extra commands.
#   OUT=/some/dir TESTS="ragged or long_rows" A="GEMV_LINES=0" B="" M=1,16 SCHEMES="w4a4 w8a8" \
#     [OUTLIERS=0] [ROUNDS=6] [SHAPES=KxN,...] [OLD_KERNELS=dir] [EXTRA="python3 scripts/x.py ..."] \
#     bash scripts/device_setting_ab.sh
# OLD_KERNELS: the folder of kernel sources a setting's SOURCE=old compiles (device_gemv_rule_ab.py --old-kernels).
# TESTS empty: no tests; "all": every GPU test. Outputs: $OUT/pytest_gpu.txt, $OUT/ab_<scheme>.txt, $OUT/extra.txt.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/setting_ab}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
git log -1 --format='%H %s' > "$OUT/commit.txt" 2>/dev/null
if [ -n "${TESTS:-}" ]; then
  if [ "$TESTS" = all ]; then sel=(); else sel=(-k "$TESTS"); fi
  timeout 420 python3 -m pytest -q -m gpu -p no:cacheprovider tests "${sel[@]}" > "$OUT/pytest_gpu.txt" 2>&1
  echo "pytest exit $?"; tail -2 "$OUT/pytest_gpu.txt"
fi
for s in ${SCHEMES:-w4a4}; do
  args=(--a "${A:-}" --b "${B:-}" --m "${M:-1,16}" --rounds "${ROUNDS:-6}" --scheme "$s" --outliers "${OUTLIERS:-0}")
  [ -n "${SHAPES:-}" ] && args+=(--shapes "$SHAPES")
  [ -n "${OLD_KERNELS:-}" ] && args+=(--old-kernels "$OLD_KERNELS")
  timeout 300 python3 scripts/device_gemv_rule_ab.py "${args[@]}" 2>&1 | grep -v Warn | tee "$OUT/ab_$s.txt"
done
if [ -n "${EXTRA:-}" ]; then
  bash -c "$EXTRA" 2>&1 | grep -v Warn | tee "$OUT/extra.txt"
fi
