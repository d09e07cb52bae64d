"""Write a DIAGNOSTIC variant of kernels/quik_gemm.cu's small-M weight loads into OUT/tiled (issue 5, decode), for
`scripts/device_gemv_rule_ab.py --a "SOURCE=old GEMV_LINES=0" --b "GEMV_LINES=0" --old-kernels OUT/tiled`:

  tiled  the fragment kernels (not _ln) read their weights as if W were stored 8 rows interleaved per 64-byte
         step, [N / 8][steps][8 rows][64 B]: lane (g, t) of a load instruction then reads bytes 64 g + 16 t of
         one contiguous 512-byte block (4 whole lines, one DRAM stream per warp), where the row-major layout
         makes the same instruction touch 8 rows 4 KiB or more apart (8 half lines). The L2 prefetch before
         griddepcontrol.wait follows the same addresses. The MMAs then get other bytes than the row-major
         sums need, so the results are WRONG ("same" False in the A/B); only the time means something, and only
         where N % 8 == 0 and every row is whole 64-byte steps (the nine LLaMA-2 shapes: all bytes read once).

The question it answers: is the row-major access pattern (many concurrent row streams, each advancing 64 bytes
at a time) what holds the small-M kernel's weight stream at ~2.4 TB/s marginal where cuBLAS's FP16 GEMV gets
~2.8 (s12a)? If `tiled` is much faster, a runtime weight layout interleaved that way is worth building.
The earlier variants of this script (pairs, lines; s11f) are at commit 69af217. This one ran at fb0ecc8 (s12b): it
patches the row-major addressing, which 68eb46f replaced by that layout, so run it from a checkout of fb0ecc8.

    python3 scripts/make_gemv_load_variants.py OUT
"""
import sys
from pathlib import Path

src = (Path(__file__).resolve().parents[1] / "kernels" / "quik_gemm.cu").read_text()
LOAD = ("                    if (kok && n < N) {\n"
        "                        const unsigned char* p = W + (size_t)n * w_row_bytes + wb;\n")
TILED_LOAD = ("                    if (kok && n < N) {  // VARIANT tiled\n"
              "                        const unsigned char* p = W + ((((size_t)(n >> 3) * S + s) << 9) | ((n & 7) << 6) | (16 * t));\n")
PREFETCH = '"l"(W + (size_t)n * w_row_bytes + wb)'
TILED_PREFETCH = '"l"(W + ((((size_t)(n >> 3) * S + s) << 9) | ((n & 7) << 6) | (32 * (t >> 1))))'
assert src.count(LOAD) == 1 and src.count(PREFETCH) == 1, "kernels/quik_gemm.cu changed: update this script"
out = Path(sys.argv[1])
(out / "tiled").mkdir(parents=True, exist_ok=True)
(out / "tiled" / "quik_gemm.cu").write_text(src.replace(LOAD, TILED_LOAD).replace(PREFETCH, TILED_PREFETCH))
print(out / "tiled" / "quik_gemm.cu")
