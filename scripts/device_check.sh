#!/usr/bin/env bash
# GPU correctness on the lent GPU (issue 4), in stages so that a large checkpoint can travel in parts:
#   bash scripts/device_check.sh [STAGE...]     (default: all of them, in this order)
#     tests    the gpu-marked tests and the kernel exactness table (no assets)
#     s260     perplexity of the packed stories260K checkpoint (.carry/s260-quik-4b) through both backends
#     smollm2  the same for the packed SmolLM2-135M checkpoint (.carry/parts/part-*, see
#              scripts/carry_pack.py; all parts must be there), then its layer-by-layer backend comparison
#     llama7b  a randomly initialised LLaMA-2-7B-shaped model through both backends
#   s260 and smollm2 need .carry/data/wikitext2/wiki.test.raw. Raw outputs go under $OUT
#   (default out/device-check).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
STAGES=${*:-tests s260 smollm2 llama7b}
has() { [[ " $STAGES " == *" $1 "* ]]; }
OUT=${OUT:-out/device-check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, transformers, cupy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cupy', cupy.__version__)"
ppl() {  # ppl NAME CHECKPOINT SEQLEN [extra eval-ppl options]
  local name=$1 ck=$2 seq=$3; shift 3
  for b in cuda torch; do
    python3 -m quiktool -q eval-ppl -m "$ck" --seqlen "$seq" --data-dir .carry/data --backend $b --device cuda \
      --json "$OUT/${name}_$b.json" "$@" 2>&1 | grep -E "ppl|Error|error" | tail -3
  done
}
if has tests; then
  python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -4
  python3 scripts/gpu_kernel_check.py --no-bench > "$OUT/kernel_check.txt" 2>&1; echo "kernel check exit $?"
  tail -5 "$OUT/kernel_check.txt"
fi
has s260 && ppl s260_quik4b .carry/s260-quik-4b 512
if has smollm2; then
  python3 scripts/carry_pack.py unpack .carry/parts /tmp/ck && ck=$(ls -d /tmp/ck/*/ | head -1)
  ppl smollm2_quik4b "$ck" 2048 --max-windows 10
  python3 scripts/device_layer_diff.py --packed "$ck" --data-dir .carry/data 2>&1 | grep -v Warning \
    | tee "$OUT/smollm2_layer_diff.txt" | tail -6
fi
if has llama7b; then
  OUT=$OUT python3 scripts/device_llama7b_check.py --layers 32 --windows 4 --seqlen 2048 2>&1 | grep -v Warning \
    | tee "$OUT/llama7b_check.txt" | tail -8
fi
