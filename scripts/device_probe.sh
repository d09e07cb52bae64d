#!/usr/bin/env bash
# Fifth-session probe of both GEMM kernels on the GPU machine, one device call (issue 5, docs/PERF_LOG.md):
#   OUT=/some/dir bash scripts/device_probe.sh [STEPS...]     steps (default: all):
#     tests   the small-M kernel's GPU tests (every rows-per-block variant on ragged shapes and long rows)
#     wgvar   kernel-level A/B of quik_wgmma.cu builds (scripts/device_wgmma_variants.py): the shipped
#             defaults, WG_DEPTH=2 (two wgmma groups in flight), and the diagnostic builds WG_DIAG=1 / 2
#             (no weight unpack / no wgmma) that split a K tile's time into its parts
#     gemvrows the small-M kernel with 32, 16 and 64 output features per block (scripts/device_gemv_rows.py)
#     ncuwg   ncu (stall reasons, shared memory, scheduler) of the wgmma kernel, 8192 x 28672 at M = 2048,
#             defaults and WG_DEPTH=2
#     ncugemv ncu of the small-M kernel on 8192 x 28672 at M = 1 and 16
#     gemvrule the layer A/B of the small-M rows-per-block rule: QUIKTOOL_GEMV_RULE=m (earlier) against the
#             defaults, W4A4, M = 1 and 16, no outliers, the LLaMA-2 7B / 13B / 70B shapes
#     gemvab  the same A/B in one process (scripts/device_gemv_rule_ab.py; $GEMV_AB_A, default the earlier rule)
#     decode  `quiktool bench layer` at M = 1 and 16 (nine shapes, W4A4 / W4A8, 0 / 256 outliers)
#     alltests every GPU test
#     outlab  sixth session: layer A/B in one process of the fused decode outlier product (B, the default)
#             against F.linear (A: ref.FUSED_OUTLIER_MAX_M=0), 256 outliers, M = 1 and 8, W4A4
#     gemvo   kernel-level probe of the fused outlier product (scripts/device_gemvo_probe.py) and ncu of
#             quik_gemvo_f16_w4_m8 and quik_gemv_f16_w4_m8 on 8192 x 8192 at M = 1 (other points: GEMVO_M,
#             GEMVO_SHAPE, GEMVO_KERNEL, e.g. 16, 8192x28672, w4_m16)
#     outlmodels `quiktool bench model` ($OUTL_ARCH, default llama2-7b) twice: QUIKTOOL_FUSED_OUTLIER_MAX_M=0 and
#             the defaults
#   WG_VARIANTS overrides the wgvar list ("name=-Dflags;...").
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
STEPS=${*:-tests wgvar gemvrows ncuwg ncugemv}
has() { [[ " $STEPS " == *" $1 "* ]]; }
OUT=${OUT:-out/probe}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
NCU="ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
  --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section Occupancy --section LaunchStats"
VARIANTS=${WG_VARIANTS:-"base=;d2=-DWG_DEPTH=2;d2b1=-DWG_DEPTH=2 -DWG_B_AHEAD=1;diag_noB=-DWG_DIAG=1;diag_noB_d2=-DWG_DIAG=1 -DWG_DEPTH=2;diag_nomma=-DWG_DIAG=2"}
if has tests; then
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_cuda.py -k "gemv or ragged" \
    > "$OUT/pytest_gemv.txt" 2>&1
  echo "pytest exit $?"; tail -3 "$OUT/pytest_gemv.txt"
fi
if has wgvar; then
  timeout 300 python3 scripts/device_wgmma_variants.py --variants "$VARIANTS" --m 2048,8192 \
    --json "$OUT/wgvar.json" 2>&1 | grep -v Deprecat | tee "$OUT/wgvar.txt"
fi
if has gemvrows; then
  timeout 240 python3 scripts/device_gemv_rows.py --rows 32,16,64 2>&1 | tee "$OUT/gemvrows.txt"
fi
if has gemvrule; then
  OUT=$OUT/gemvrule bash scripts/device_env_ab.sh 'QUIKTOOL_GEMV_RULE=m' - --schemes w4a4 --m 1,16 \
    --outliers 0 --shapes llama2-7b,llama2-13b,llama2-70b | tee "$OUT/gemvrule.txt"
fi
if has gemvab; then
  timeout 300 python3 scripts/device_gemv_rule_ab.py --a "${GEMV_AB_A:-GEMV_RULE=m}" 2>&1 | grep -v Warn \
    | tee "$OUT/gemvab.txt"
fi
if has decode; then
  timeout 300 python3 -m quiktool bench layer --device cuda --backend cuda --schemes w4a4,w4a8 --outliers 0,256 \
    --m 1,16 --reps 100 --warmup 10 --max-point-s 0.25 --json "$OUT/decode.json" > "$OUT/decode.txt" 2>&1
  echo "bench decode exit $?"; tail -40 "$OUT/decode.txt"
fi
if has alltests; then
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/pytest_gpu_h100.txt" 2>&1
  echo "pytest (all gpu tests) exit $?"; tail -2 "$OUT/pytest_gpu_h100.txt"
fi
if has outlab; then
  timeout 300 python3 scripts/device_gemv_rule_ab.py --a "ref.FUSED_OUTLIER_MAX_M=0" --outliers 256 --m 1,8,16 \
    --rounds 4 2>&1 | grep -v Warn | tee "$OUT/outlab.txt"
fi
if has gemvo; then
  timeout 200 python3 scripts/device_gemvo_probe.py 2>&1 | grep -v Warn | tee "$OUT/gemvo_probe.txt"
  # GEMVO_M / GEMVO_SHAPE / GEMVO_KERNEL: the point profiled (kernel suffix as the launcher picks it there)
  GM=${GEMVO_M:-1} GS=${GEMVO_SHAPE:-8192x8192} GK=${GEMVO_KERNEL:-w4_m8}
  timeout 120 $NCU --section SourceCounters --kernel-name "regex:quik_gemvo_f16_${GK}$" --launch-skip 45 \
    --launch-count 1 python3 scripts/device_gemvo_probe.py --m "$GM" --shapes "$GS" --reps 30 \
    > "$OUT/ncu_gemvo.txt" 2>&1
  echo "ncu gemvo exit $?"
  timeout 120 $NCU --section SourceCounters --kernel-name "regex:quik_gemv_f16_${GK}$" --launch-skip 45 \
    --launch-count 1 python3 scripts/device_gemvo_probe.py --m "$GM" --shapes "$GS" --reps 30 \
    > "$OUT/ncu_gemv.txt" 2>&1
  echo "ncu gemv exit $?"
fi
if has outlmodels; then
  A=${OUTL_ARCH:-llama2-7b}
  # model_run NAME [VAR=VALUE ...]: `bench model` of $A under those environment settings -> $OUT/model_NAME.*
  model_run() {
    local name=$1; shift
    env "$@" timeout 200 python3 -m quiktool bench model --device cuda --backend cuda --arch "$A" --batch 1 \
      --seqlen 2048 --decode-tokens 64 --reps 5 --warmup 2 --json "$OUT/model_$name.json" > "$OUT/model_$name.txt" 2>&1
    echo "model $name (${*:-defaults}) exit $?"; tail -4 "$OUT/model_$name.txt"
  }
  model_run "${A}_linear_outl" QUIKTOOL_FUSED_OUTLIER_MAX_M=0
  model_run "$A"
  # the fused kernels with a smaller shared-memory attribute (carve-out)
  [ -n "${OUTL_SMEM:-}" ] && model_run "${A}_smem${OUTL_SMEM}" QUIKTOOL_GEMVO_SMEM_MAX="$OUTL_SMEM"
fi
if has ncuwg; then
  for v in "base=" "d2=-DWG_DEPTH=2"; do
    timeout 120 $NCU --kernel-name regex:quik_wgmma_f16 --launch-count 1 \
      python3 scripts/device_wgmma_variants.py --variants "$v" --m 2048 --shapes 8192x28672 --ksweep '' --reps 1 \
      > "$OUT/ncu_wg_${v%%=*}.txt" 2>&1
    echo "ncu wgmma ${v%%=*}: exit $?"
  done
fi
if has ncugemv; then
  for k in "quik_gemv_f16_w4_m8$ 1" "quik_gemv_f16_w4_m16_r16$ 16"; do
    set -- $k
    timeout 120 $NCU --kernel-name "regex:$1" --launch-count 1 \
      python3 scripts/device_gemv_rows.py --shapes 8192x28672 --m "$2" --rows 32,16 --reps 3 \
      > "$OUT/ncu_gemv_m$2.txt" 2>&1
    echo "ncu gemv M=$2: exit $?"
  done
fi
