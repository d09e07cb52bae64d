#!/usr/bin/env bash
# A/B of a kernel change on the GPU machine: the kernels in OLD_DIR (QUIKTOOL_KERNELS_DIR, e.g.
# `git show REV:kernels/X.cu` copies, carried to the device) against the working tree's, same points.
#   OUT=/some/dir bash scripts/device_ab.sh OLD_DIR [extra bench-layer options]
OLD=$1; shift
exec bash "$(dirname "$0")/device_env_ab.sh" "QUIKTOOL_KERNELS_DIR=$OLD" - --schemes w4a4 \
  --shapes 4096x4096,8192x28672,28672x8192 --m 1,16,2048 "$@"
