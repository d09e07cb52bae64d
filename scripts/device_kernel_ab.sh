#!/usr/bin/env bash
# A kernel change on the lent GPU, in one call: every GPU test with the working tree's kernels, then the
# in-process layer A/B of the older kernel sources in OLD_DIR (A, e.g. `git show REV:kernels/X.cu` copies;
# files missing there are the working tree's) against the working tree's (B), per scheme / outlier count
# (scripts/device_gemv_rule_ab.py: alternating rounds, L2 flushed, same-bits column); NEW_DIR: B's sources
# from that folder instead of the working tree (the launcher is always the working tree's).
#   OUT=dir OLD_DIR=dir [NEW_DIR=dir] [M=1,4,16] [CASES="w4a4:256 w8a8:256"] [ROUNDS=6] [SKIP_TESTS=1]
#     bash scripts/device_kernel_ab.sh
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/device-kernel-ab}; mkdir -p "$OUT"
: "${OLD_DIR:?set OLD_DIR to the folder of the older kernel sources}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)" | tee -a "$OUT/gpu.txt"
if [[ -z "${SKIP_TESTS:-}" ]]; then
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -3
fi
for c in ${CASES:-w4a4:256 w8a8:256}; do
  s=${c%%:*} o=${c##*:}
  timeout 200 python3 scripts/device_gemv_rule_ab.py --a "SOURCE=old" --b "" --old-kernels "$OLD_DIR" \
    ${NEW_DIR:+--new-kernels "$NEW_DIR"} \
    --m "${M:-1,4,16}" --scheme "$s" --outliers "$o" --rounds "${ROUNDS:-6}" > "$OUT/ab_${s}_o$o.txt" 2>&1
  grep -v "^WARNING\|kernel source" "$OUT/ab_${s}_o$o.txt"
done
