"""Write two variants of kernels/quik_gemm.cu's small-M weight loads into OUT/pairs and OUT/lines (issue 5,
decode), for `scripts/device_gemv_rule_ab.py --a "SOURCE=old" --b "" --old-kernels OUT/pairs` (or lines):

  pairs  each warp takes two adjacent 64-byte steps per pair of its U steps (steps 2w, 2w + 1, 2w + 16, ...
         of an iteration) instead of steps w, w + 8, ...: the same sums in another split-K order (exact)
  lines  pairs, and each load instruction covers whole 128-byte lines: lane (r, c) = (lane / 8, lane % 8)
         reads row 4 i + r at 16 c of the pair's 128 bytes (instruction i of the pair), where the shipped
         mapping reads 8 rows x 64 bytes (half lines). DIAGNOSTIC: the MMAs then get the wrong bytes, so the
         sums are wrong; only its time means something

The question they answer: does the small-M kernel stream ~2.0 TB/s (cuBLAS's FP16 GEMV ~2.7) because each
of its load instructions touches 8 half lines? If `lines` is much faster than `pairs`, a real line-granular
mapping (the fragments rearranged by warp shuffles) is worth building.

    python3 scripts/make_gemv_load_variants.py OUT
"""
import sys
from pathlib import Path

src = (Path(__file__).resolve().parents[1] / "kernels" / "quik_gemm.cu").read_text()
STEP = "            const int s = s0 + u * WARPS;\n            const size_t wb = (size_t)s * 64 + 16 * t;  // weight byte offset within a row\n"
PAIRS = ("            const int s = (s0 - warp) + 16 * (u / 2) + 2 * warp + (u % 2);  // VARIANT pairs\n"
         "            const size_t wb = (size_t)s * 64 + 16 * t;  // weight byte offset within a row\n")
ROW = ("                    const int n = n0 + 16 * a + g + 8 * h;\n"
       "                    if (kok && n < N) {\n"
       "                        const unsigned char* p = W + (size_t)n * w_row_bytes + wb;\n")
LINES = ("                    const int n = n0 + 4 * (((u % 2) * NTW + a) * 2 + h) + (lane >> 3);  // VARIANT lines\n"
         "                    const size_t wl = (size_t)(s - (u % 2)) * 64 + 16 * (lane & 7);\n"
         "                    if (s - (u % 2) < S && wl < w_row_bytes && n < N) {\n"
         "                        const unsigned char* p = W + (size_t)n * w_row_bytes + wl;\n")
assert src.count(STEP) == 1 and src.count(ROW) == 1, "kernels/quik_gemm.cu changed: update this script"
out = Path(sys.argv[1])
for name, text in (("pairs", src.replace(STEP, PAIRS)), ("lines", src.replace(STEP, PAIRS).replace(ROW, LINES))):
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "quik_gemm.cu").write_text(text)
    print(f"{out / name / 'quik_gemm.cu'}")
