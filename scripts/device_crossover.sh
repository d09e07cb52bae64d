#!/usr/bin/env bash
# Where the library GEMM paths (cuBLASLt FP8 / INT8) start to beat quiktool's mma.sync kernels: the same
# layers with the library paths forced on (A: every M) and off (B), side by side.
#   OUT=/some/dir bash scripts/device_crossover.sh      (on the GPU machine, from the repository root)
exec bash "$(dirname "$0")/device_env_ab.sh" "QUIKTOOL_LIB_GEMM_MIN_M=1 QUIKTOOL_LIB_GEMM_MIN_MACS=0" \
  "QUIKTOOL_LIB_GEMM_MIN_M=0" --m 64,128,256,512,2048 --reps 50 "$@"
