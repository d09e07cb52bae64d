#!/usr/bin/env bash
# One device call (issue 5, after the twenty-fourth session): why the one-kernel split-K is slower than its two
# kernels. docs/device/2026-11-28/session24/split_fixup.diff (quik_gemm_skf_*: the tile's last block adds the slices)
# was exact but x1.14-1.36 slower (s24f), its kernel 34.0 us where the slicing kernel took 19.3 us and the add 3.8 us.
# This applies the diff to the copy on the device, writes three diagnostic builds of kernels/quik_gemm.cu (mkvar.py:
# v1 no fix-up loads, v2 no fences, v3 the last slice alone: no partial stores, no counter; v1 and v3 give wrong
# sums by design) and times each (A) against the diff's kernel (B) in one process, W4A4 at M = 128.
#   OUT=/some/dir [VARIANTS="3 1 2"] [SHAPES=4096x4096,5120x5120] bash scripts/device_skf_diag.sh
# Time: each process compiles quik_gemm.cu with NVRTC for its variant and (the first time) for the tree, ~1.5 min
# each (94 s on the 2-core machine), so allow ~8 minutes for three variants. Outputs: $OUT/variants.txt.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/skf_diag}; mkdir -p "$OUT"
git apply docs/device/2026-11-28/session24/split_fixup.diff || { echo "split_fixup.diff does not apply"; exit 1; }
python3 docs/device/2026-11-28/session24/mkvar.py || exit 1
for v in ${VARIANTS:-3 1 2}; do
  echo "== variant v$v (A) against the one-kernel split-K (B)"
  timeout 280 python3 scripts/device_gemv_rule_ab.py --old-kernels "/tmp/v$v" --a "SOURCE=old" --b "" --m 128 \
    --shapes "${SHAPES:-4096x4096,5120x5120}" --rounds 4 --scheme w4a4 2>&1 | grep -v -i "warn\|kernel source"
done | tee "$OUT/variants.txt"
git apply -R docs/device/2026-11-28/session24/split_fixup.diff
