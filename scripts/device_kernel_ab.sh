#!/usr/bin/env bash
# A kernel change on the lent GPU, in one call: every GPU test with the working tree's kernels, then the
# in-process layer A/B of the older kernel sources in OLD_DIR (A, e.g. `git show REV:kernels/X.cu` copies;
# files missing there are the working tree's) against the working tree's (B), per scheme / outlier count
# (scripts/device_gemv_rule_ab.py: alternating rounds, L2 flushed, same-bits column); NEW_DIR: B's sources
# from that folder instead of the working tree (the launcher is always the working tree's).
#   OUT=dir OLD_DIR=dir [NEW_DIR=dir] [M=1,4,16] [CASES="w4a4:256 w8a8:256"] [ROUNDS=6] [SKIP_TESTS=1]
#     bash scripts/device_kernel_ab.sh
# Outputs: $OUT/pytest_gpu.txt, $OUT/ab_<scheme>_o<outliers>.txt (scripts/device_setting_ab.sh does the work).
: "${OLD_DIR:?set OLD_DIR to the folder of the older kernel sources}"
export OUT=${OUT:-out/device-kernel-ab} TESTS=all A="SOURCE=old" B="" OLD_KERNELS=$OLD_DIR NEW_KERNELS=${NEW_DIR:-} \
  M=${M:-1,4,16} CASES=${CASES:-w4a4:256 w8a8:256} ROUNDS=${ROUNDS:-6} SHAPES= EXTRA=
[ -n "${SKIP_TESTS:-}" ] && TESTS=
exec bash "$(dirname "$0")/device_setting_ab.sh"
