#!/usr/bin/env bash
# GPU correctness on the lent H100 (issue 4), one call: the gpu-marked tests, the kernel exactness
# table, perplexity of a packed stories260K checkpoint through both backends, and the randomly
# initialised LLaMA-2-7B-shaped model through both backends. Needs .carry/ (see docs/RESULTS.md).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/device-check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, transformers, cupy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cupy', cupy.__version__)"
python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -4
python3 scripts/gpu_kernel_check.py --no-bench > "$OUT/kernel_check.txt" 2>&1; echo "kernel check exit $?"; tail -4 "$OUT/kernel_check.txt"
for b in cuda torch; do
  python3 -m quiktool -q eval-ppl -m .carry/s260-quik-4b --seqlen 512 --data-dir .carry/data --backend $b \
    --device cuda --json "$OUT/s260_quik4b_$b.json" 2>/dev/null | grep -E "ppl|windows|seconds"
done
python3 scripts/device_llama7b_check.py --layers 32 --windows 4 --seqlen 2048 2>&1 | grep -v Warning | tail -8
