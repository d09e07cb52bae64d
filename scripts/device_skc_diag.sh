#!/usr/bin/env bash
# One device call (issue 5, twenty-fifth session): why the cluster split-K (quik_gemm_skc_*) is slower than the two
# kernels it replaces (s25b: x1.33-1.59 at M = 128, the diff's first version). Needs
# docs/device/2026-11-28/session25/split_cluster.diff applied (APPLY=1 applies it first and reverts it at the end).
# Times, in one process each, the two-kernel path (A: SPLIT_CLUSTER=0) against the cluster split-K (B): "tree" (as
# the diff has it) and the diagnostic builds of scripts/make_skc_variants.py (nox, noload, nofence: see there); with
# PDL_AB=1, then the two paths with PDL off on both sides.
#   OUT=/some/dir [APPLY=1] [VARIANTS="tree nox noload nofence"] [SHAPES=4096x4096,5120x5120,11008x4096] \
#     [POLICIES="2"] [PDL_AB=0] bash scripts/device_skc_diag.sh
# POLICIES: the cluster scheduling policies to time each build under (cuda.CLUSTER_POLICY: 0 default, 1 spread,
# 2 load balancing; default 2); PDL_AB=1 adds the last A/B.
# Each variant is compiled by NVRTC in its own process (~1 min on the device). Outputs: $OUT/variants.txt.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/skc_diag}; mkdir -p "$OUT"
SHAPES=${SHAPES:-4096x4096,5120x5120,11008x4096}
if [ "${APPLY:-0}" = 1 ]; then
  git apply docs/device/2026-11-28/session25/split_cluster.diff || { echo "split_cluster.diff does not apply"; exit 1; }
fi
python3 scripts/make_skc_variants.py /tmp/skcv || exit 1
{
for v in ${VARIANTS:-tree nox noload nofence}; do
  for p in ${POLICIES:-2}; do
    echo "== the two kernels (A) against the cluster split-K build $v (B), cluster scheduling policy $p"
    src=(); b="CLUSTER_POLICY=$p"
    if [ "$v" != tree ]; then src=(--old-kernels "/tmp/skcv/$v"); b="SOURCE=old $b"; fi
    timeout 170 python3 scripts/device_gemv_rule_ab.py "${src[@]}" --a "SPLIT_CLUSTER=0" --b "$b" --m 128 \
      --shapes "$SHAPES" --rounds 4 --scheme w4a4 2>&1 | grep -v -i "warn\|kernel source"
  done
done
if [ "${PDL_AB:-0}" = 1 ]; then
  echo "== the two kernels (A) against the tree's cluster split-K (B), both without PDL"
  timeout 90 python3 scripts/device_gemv_rule_ab.py --a "SPLIT_CLUSTER=0 PDL_TILED=0" --b "PDL_TILED=0" --m 128 \
    --shapes "$SHAPES" --rounds 4 --scheme w4a4 2>&1 | grep -v -i "warn\|kernel source"
fi
} | tee "$OUT/variants.txt"
if [ "${APPLY:-0}" = 1 ]; then git apply -R docs/device/2026-11-28/session25/split_cluster.diff; fi
