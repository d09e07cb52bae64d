#!/usr/bin/env bash
# One device call for a launcher or kernel change (issue 5): GPU tests of a selection, then the in-process
# layer A/B of two settings (scripts/device_gemv_rule_ab.py) for each scheme, then optional extra commands.
#   OUT=/some/dir TESTS="ragged or long_rows" A="GEMV_LINES=0" B="" M=1,16 SCHEMES="w4a4 w8a8" \
#     [OUTLIERS=0 | CASES="w4a4:256 w8a8:0"] [ROUNDS=6] [SHAPES=KxN,...] [OLD_KERNELS=dir] [NEW_KERNELS=dir] \
#     [EXTRA="python3 scripts/x.py ..."] bash scripts/device_setting_ab.sh
# OLD_KERNELS / NEW_KERNELS: the folders of kernel sources that SOURCE=old / SOURCE=new compile
# (device_gemv_rule_ab.py --old-kernels / --new-kernels; new defaults to the working tree's).
# CASES: scheme:outliers pairs instead of SCHEMES x OUTLIERS. TESTS empty: no tests; "all": every GPU test.
# Outputs: $OUT/pytest_gpu.txt, $OUT/ab_<scheme>.txt (with CASES: ab_<scheme>_o<outliers>.txt), $OUT/extra.txt.
# scripts/device_kernel_ab.sh is this with A="SOURCE=old" and every GPU test.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/setting_ab}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)" | tee -a "$OUT/gpu.txt"
git log -1 --format='%H %s' > "$OUT/commit.txt" 2>/dev/null
if [ -n "${TESTS:-}" ]; then
  if [ "$TESTS" = all ]; then sel=(); else sel=(-k "$TESTS"); fi
  timeout 420 python3 -m pytest -q -m gpu -p no:cacheprovider tests "${sel[@]}" > "$OUT/pytest_gpu.txt" 2>&1
  echo "pytest exit $?"; tail -2 "$OUT/pytest_gpu.txt"
fi
cases=${CASES:-}
[ -z "$cases" ] && for s in ${SCHEMES:-w4a4}; do cases+=" $s:${OUTLIERS:-0}"; done
for c in $cases; do
  s=${c%%:*} o=${c##*:}
  args=(--a "${A:-}" --b "${B:-}" --m "${M:-1,16}" --rounds "${ROUNDS:-6}" --scheme "$s" --outliers "$o")
  [ -n "${SHAPES:-}" ] && args+=(--shapes "$SHAPES")
  [ -n "${OLD_KERNELS:-}" ] && args+=(--old-kernels "$OLD_KERNELS")
  [ -n "${NEW_KERNELS:-}" ] && args+=(--new-kernels "$NEW_KERNELS")
  name=ab_$s${CASES:+_o$o}
  timeout 300 python3 scripts/device_gemv_rule_ab.py "${args[@]}" 2>&1 | grep -v Warn | tee "$OUT/$name.txt"
done
if [ -n "${EXTRA:-}" ]; then
  bash -c "$EXTRA" 2>&1 | grep -v Warn | tee "$OUT/extra.txt"
fi
