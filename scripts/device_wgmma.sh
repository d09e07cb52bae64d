#!/usr/bin/env bash
# The sm_90a wgmma kernel on the GPU machine, one device call: build (nvcc) and SASS check, its GPU
# tests, then an A/B of the layer with and without it (QUIKTOOL_WGMMA=0 = the cuBLASLt / mma.sync paths).
#   OUT=/some/dir bash scripts/device_wgmma.sh [STEPS...]   steps: build tests ab (default: all three),
#     and on request: alltests (every gpu test), kab (kernel A/B: the kernel sources in $OLD_KERNELS, e.g.
#     `git show REV:kernels/...` copies carried to the device, against the working tree's; scripts/device_ab.sh)
#   AB_ARGS: extra `bench layer` options for ab and kab (default: --m 128,256,512,2048,8192)
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
STEPS=${*:-build tests ab}
has() { [[ " $STEPS " == *" $1 "* ]]; }
OUT=${OUT:-out/wgmma}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if has build; then
  python3 -c "from quiktool.runtime import cuda; print(cuda.compile_wgmma())" > "$OUT/build.txt" 2>&1
  cat "$OUT/build.txt"
  CUBIN=$(tail -1 "$OUT/build.txt")
  if command -v cuobjdump > /dev/null && [ -f "$CUBIN" ]; then
    cuobjdump -sass "$CUBIN" > "$OUT/wgmma.sass" 2>&1
    echo "SASS: $(grep -c 'IGMMA' "$OUT/wgmma.sass") IGMMA, $(grep -c 'WARPSYNC\|WARPGROUP' "$OUT/wgmma.sass") warpgroup sync lines"
  fi
fi
if has tests; then
  timeout ${TEST_LIMIT:-400} python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/runtime/test_cuda.py -k "wgmma or library" \
    > "$OUT/pytest_wgmma.txt" 2>&1
  echo "pytest exit $?"; tail -4 "$OUT/pytest_wgmma.txt"
  grep -q " failed\|error" "$OUT/pytest_wgmma.txt" && STEPS=${STEPS/ab/}  # no timing of a wrong kernel
fi
if has alltests; then
  timeout ${TEST_LIMIT:-400} python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/pytest_gpu_h100.txt" 2>&1
  echo "pytest (all gpu tests) exit $?"; tail -3 "$OUT/pytest_gpu_h100.txt"
  grep -q " failed\|error" "$OUT/pytest_gpu_h100.txt" && STEPS=${STEPS/kab/} && STEPS=${STEPS/ab/}
fi
if has kab; then
  # shellcheck disable=SC2086
  OUT=$OUT/kab bash scripts/device_ab.sh "${OLD_KERNELS:?set OLD_KERNELS}" ${AB_ARGS:---m 128,256,512,2048,8192} \
    | tee "$OUT/kab.txt"
fi
if has ab; then
  # shellcheck disable=SC2086
  OUT=$OUT/ab bash scripts/device_env_ab.sh 'QUIKTOOL_WGMMA=0' - ${AB_ARGS:---m 128,256,512,2048,8192} | tee "$OUT/ab.txt"
fi
