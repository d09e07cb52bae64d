// quik_wgmma.cu -- QUIK integer GEMM with 4- or 8-bit weights on Hopper's warpgroup MMA (wgmma, sm_90a
// only), with the dequantization epilogue fused. Exact integer product: bit-identical to
// quiktool.runtime.reference.int_gemm / quik_gemm, like every kernel of quik_gemm.cu.
//
// Why this kernel: at large M the mma.sync kernels of quik_gemm.cu stop near cuBLAS FP16 speed (the
// instruction's own issue rate), and the cuBLASLt FP8 path needs a per-call unpack of the weights to one
// byte per code plus an fp32 accumulator round trip through memory (~0.3 ms of 1.0 ms on 8192 x 28672 at
// M = 2048, docs/PERF_LOG.md). Here the int4 -> int8 unpack happens on the way into shared memory and the
// int32 accumulators go straight from registers through the epilogue. For 8-bit weights the alternative was
// cuBLASLt INT8 (an sm_80 kernel on the H100) plus an int32 round trip: x0.82-0.94 of its time here.
//
// Built by nvcc for sm_90a (-gencode=arch=compute_90a,code=sm_90a -cubin), not by NVRTC, which crashes on
// wgmma with CUDA 13.0 (REFERENCE.md section 3); the loader in quiktool/runtime/cuda.py does that and
// caches the cubin by source hash. Only ever launched on compute capability 9.0.
//
// Contract
//   A   int8 [M, Kp] row-major: signed activation codes (4-bit in [-8, 7] or 8-bit)
//   W   _w4: uint8 [N, Kp/2]: packed byte i of row n = code of column 2i in the low nibble, 2i+1 in the high
//       nibble (two's complement; quiktool.format.packing), at w4_off(n, i / 64, i % 64) (quik_ptx.cuh: 8-row groups,
//       step-major), as in quik_gemm.cu; _w8: int8 [N, Kp] row-major
//   acc[m, n] = sum_k A[m, k] * W[n, k]   (exact int32)
//   Entry points quik_wgmma_EP_wB, EP = i32 | f16 | bf16, B = 4 | 8: the EP semantics of quik_gemm.cu (i32
//   writes acc, f16 / bf16 apply quik_epilogue.cuh's store_pair, y_base may be null).
//   seg (last argument): read only by the _blk entry points (quik_wgmma_EP_wB_blk, EP = f16 | bf16), whose
//   out holds N / seg blocks of [M, seg] (seg a multiple of WG_BN = 256 dividing N), column n of row m at
//   (n / seg) * M * seg + m * seg + n % seg: the members of a fused layer group (quiktool.runtime.fuse) each
//   get a contiguous output. A tile then lies in one block, found once per tile (a per-store division made
//   the kernel ~40% slower). The other entry points write [M, N] row-major with the code they had before
//   (a runtime choice between the layouts cost them 0.2-4.8%). y_base is [M, N] either way.
//   Assumptions (checked by the launcher): Kp % 64 == 0, 64 <= Kp < 2^17; M, N >= 1 (tails predicated,
//   zero-filled); tensors contiguous and 16-byte aligned; the device is sm_90.
//   Launch geometry: block 256 threads (2 warpgroups), grid = ceil(M/128) * ceil(N/256) (1-D, grouped
//   raster as in quik_gemm.cu), dynamic smem wg_smem_bytes(B) + 1024 (the kernel aligns its base to 1024 B).
//   quik_wgmma_ws_EP_wB[_blk] (warp-specialized; after wgmma_gemm): the same arguments and semantics,
//   block WS_THREADS = 384 (a producer and two consumer warpgroups), the same grid, dynamic smem
//   ws_smem_bytes() + 1024. With 8-bit weights (and in the ws_nBN_ and ws_c3_ families below) a block loops over
//   output tiles blockIdx.x, + gridDim.x, ... (thirtieth session): any grid of 1 .. the tile count is correct, and
//   the launcher gives one block per SM. Every ws entry point's producer waits (griddepcontrol.wait) before its first
//   copy: the launcher starts them as programmatic dependent launches of the quantizer on sm_90.
//   quik_wgmma_ws_sk_wB(A, W, part, M, N, Kp, splits) (split-K, wgmma_gemm_ws with SPLIT): int32 partial sums
//   part [splits, M, N], block and smem as quik_wgmma_ws_*, grid = splits * ceil(M/128) * ceil(N/256),
//   1 <= splits <= ceil(Kp / 128); quik_gemm.cu's quik_splitk_* adds the slices and applies the epilogue. On sm_90
//   the launcher starts it as a programmatic dependent launch of the quantizer: its producer copies A only after
//   griddepcontrol.wait (it reads nothing else the quantizer writes).
//   quik_wgmma_ws_[c3_]cl_EP_wB (cluster split-K, twenty-ninth session; c3_ with B = 8 only): the arguments and
//   semantics of quik_wgmma_ws_EP_wB (seg unused, the plain [M, N] output), the K tiles split in `splits` slices whose
//   CTAs form a thread-block cluster and add their int32 sums through distributed shared memory before the
//   epilogue (wgmma_gemm_ws with WS_SPLIT_CLUSTER): grid = splits * ceil(M/128) * ceil(N/256), launched with cluster
//   dims (splits, 1, 1), 2 <= splits <= min(8, ceil(Kp / 128)); block and smem as quik_wgmma_ws_*; launched as a
//   programmatic dependent launch of the quantizer like quik_wgmma_ws_sk_wB.
//   quik_wgmma_ws_nBN_EP_wB (BN = 160, 176, 224; twenty-first session): wgmma_gemm_ws on tiles of 128 tokens x BN
//   weight rows (the same arguments and semantics, the plain [M, N] output only), grid = ceil(M/128) * ceil(N/BN),
//   block and smem as quik_wgmma_ws_*. The launcher takes them where 256-row tiles would leave SMs idle in the last
//   wave (quiktool.runtime.cuda._wgmma_shape).
//   quik_wgmma_ws_c3_[nBN_]EP_w8[_blk] and quik_wgmma_ws_c3_sk_w8 (twenty-second session): the 8-bit ws, ws_nBN and
//   ws_sk kernels with three K tiles of copies in flight instead of two (wgmma_gemm_ws's CD); the same arguments,
//   semantics and geometry as their twins. The launcher takes them at few tokens (WGMMA_W8_DEEP_MAX_M).
//   quik_wgmma_rs_EP_w4[_blk] (register-operand, 4-bit weights only; at the end of this file): the same arguments
//   and semantics, block RS_THREADS = 384, grid = ceil(M/256) * ceil(N/128) (256 tokens x 128 weight rows per
//   block), dynamic smem rs_smem_bytes() + 1024.
//
// Tile: 128 tokens x 256 weight rows x 128 K bytes per stage. Warpgroup g owns tokens 64g .. 64g+63 and all
// 256 rows: one m64n256k32 wgmma per 32 K bytes, 4 per stage, 128 int32 accumulators per thread.
//   A stages: 4 x [128 rows][128 B] (16 KiB), filled by cp.async (16-byte chunks, zero-filled past M / Kp).
//   B slots:  3 x [256 rows][128 B] (32 KiB) of int8 weight codes, written by the threads: each thread
//             loads 16 packed bytes (32 codes) of 4 rows from global memory WG_B_AHEAD iterations
//             ahead (register buffers), unpacks them and stores 2 x 16 bytes per row; optionally (knob
//             WG_L2_AHEAD, off by default) it also prefetches a later weight tile into L2.
//   Both in the 128-byte swizzle of the wgmma descriptors: 16-byte chunk c of row r sits at
//   r * 128 + ((c ^ (r % 8)) * 16), inside 1024-byte-aligned atoms of 8 rows (descriptor: swizzle mode
//   128B, stride byte offset 1024 between 8-row groups, start address + 32 B per k32 step).
// 8-bit weights (_w8, tenth session): no unpack. The B tile is copied like the A tile, by cp.async into the
//   same swizzle, in A's commit group, so B has A's ring: WG_A_STAGES slots of 32 KiB (195 KiB in all); the
//   threads' only work in the main loop is issuing the copies. acc is the plain sum (no shift).
// Unpack: a nibble w becomes the int8 value 16 * w (exact), so acc is computed as 16 * acc and shifted
// right by 4 at the end (exact; |16 * acc| < 2^31 because |a| <= 128, |w| <= 8, Kp < 2^17).
//   x = 8 codes k..k+7 (one packed word): E = (x << 4) & 0xF0F0F0F0 (k, k+2, k+4, k+6),
//   O = x & 0xF0F0F0F0 (k+1, k+3, ...); byte permutes interleave them back into k order, because the
//   hardware reads the activations in natural k order.
// Pipeline, per K tile kt (one __syncthreads each):
//   wait for my cp.async of A(kt); fence.proxy.async (my generic-proxy shared writes -> the async proxy
//   of wgmma); barrier [now A(kt) and B(kt) are complete, and every warpgroup has passed
//   wgmma.wait_group 1 of iteration kt-1, so wgmma(kt-2) is done everywhere]; issue wgmma(kt) (4 steps,
//   one commit group); unpack the registers of B(kt+1) into slot (kt+1) % 3 (= the slot of kt-2: free);
//   load B(kt+2) into those registers and cp.async A(kt+2) into stage (kt+2) % 4 (= that of kt-2: free);
//   wgmma.wait_group 1 (wgmma(kt-1) done). The tensor cores thus always have wgmma(kt-1) and wgmma(kt)
//   queued while the threads unpack the next tile.
// Epilogue: from the accumulator fragment (thread = lane l of warp w in warpgroup g holds, for j < 32,
// d[4j + 2h + e] = acc[64g + 16w + l/4 + 8h][8j + 2(l%4) + e]) straight to global memory via store_pair_y,
// with w_scale / wsum of the tile's columns staged in shared memory (WG_EPI_BYTES) before the main loop and
// the y_base tile prefetched into L2 during the third-last K tile.

#include "quik_epilogue.cuh"
#include "quik_ptx.cuh"

namespace {

constexpr int WG_BM = 128, WG_BN = 256, WG_BK = 128;
// Tuning knobs (compile-time; scripts/device_wgmma_variants.py builds variants with -D). Defaults from
// its H100 A/B of 2026-11-26 (docs/PERF_LOG.md, fourth session): the L2 prefetch made every point slower
// (x1.04-1.49 of the time without it; the third session had measured it faster and made it the default,
// which never took effect: a second #define above this one kept it at 0); two register buffers without
// the prefetch gave x0.95 / x0.96 on the 70B MLP shapes at M = 2048, x1.01-1.03 elsewhere.
//   WG_B_AHEAD: iterations between a weight tile's global load and its unpack (1 or 2 register buffers);
//   WG_L2_AHEAD: prefetch the weight tile this many iterations ahead into L2 (0: off).
#ifndef WG_B_AHEAD
#define WG_B_AHEAD 2
#endif
#ifndef WG_L2_AHEAD
#define WG_L2_AHEAD 0
#endif
//   WG_DEPTH: wgmma groups (K tiles) left in flight at the end of an iteration. Each extra one costs an
//   A stage and a B slot (16 + 32 KiB): the ring must not reuse memory an in-flight group still reads.
#ifndef WG_DEPTH
#define WG_DEPTH 1
#endif
//   WG_DIAG (diagnostic builds only, wrong results: never shipped): 1 = no weight loads or unpacks in the
//   main loop (the wgmmas read whatever the B slots hold), 2 = no wgmma issued. They split the K-tile
//   time into its tensor and its thread parts (scripts/device_wgmma_variants.py, variants named diag*).
#ifndef WG_DIAG
#define WG_DIAG 0
#endif
static_assert(WG_B_AHEAD == 1 || WG_B_AHEAD == 2, "WG_B_AHEAD: 1 or 2");
static_assert(WG_DEPTH == 1 || WG_DEPTH == 2, "WG_DEPTH: 1 or 2");
// Ring sizes: in iteration kt the threads write B slot (kt+1) % WG_B_SLOTS and A stage (kt+2) % WG_A_STAGES
// while groups kt-WG_DEPTH .. kt may still read theirs, hence D + 2 slots and D + 3 stages.
constexpr int WG_A_STAGES = WG_DEPTH + 3, WG_B_SLOTS = WG_DEPTH + 2, WG_THREADS = 256, WG_GROUP_M = 16;
constexpr int WG_A_TILE = WG_BM * WG_BK;  // 16 KiB
constexpr int WG_B_TILE = WG_BN * WG_BK;  // 32 KiB
constexpr int WG_EPI_BYTES = 2 * WG_BN * 4;  // w_scale and wsum of the tile's 256 columns (fp32)
// 8-bit weights: B copied by cp.async with A, so it needs A's ring length.
template <int WB> __host__ __device__ constexpr int wg_b_slots() { return WB == 4 ? WG_B_SLOTS : WG_A_STAGES; }
template <int WB> __host__ __device__ constexpr int wg_smem_bytes() {
    return WG_A_STAGES * WG_A_TILE + wg_b_slots<WB>() * WG_B_TILE + WG_EPI_BYTES;  // 162 / 195 KiB (D = 1)
}
static_assert(wg_smem_bytes<4>() + 1024 <= 227 * 1024, "the launcher asks for wg_smem_bytes + 1024 bytes");
static_assert(wg_smem_bytes<8>() + 1024 <= 227 * 1024, "the launcher asks for wg_smem_bytes + 1024 bytes");

QDEV void sts16(unsigned addr, unsigned a, unsigned b, unsigned c, unsigned d) {
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}
QDEV void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
QDEV void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
QDEV void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> QDEV void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Pins the accumulators: the compiler may not move, copy or read them across this point (an empty asm
// that "writes" each register). Without it ptxas serializes the wgmmas (warning C7514).
template <int R> QDEV void fence_acc(int (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

// 16-byte chunk c of row r in a [rows][128 B] tile with the 128-byte swizzle (tile base 1024-aligned).
QDEV unsigned swz128(int r, int c) { return (unsigned)(r * 128 + ((c ^ (r & 7)) << 4)); }

// wgmma shared-memory descriptor: start address >> 4 (bits 0-13), leading byte offset (unused by swizzled
// K-major layouts; 1), stride byte offset 1024 >> 4 (bits 32-45), base offset 0, swizzle 128B (bits 62-63 = 1).
QDEV unsigned long long wg_desc(unsigned saddr) {
    return (unsigned long long)((saddr >> 4) & 0x3FFFu) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) |
           (1ull << 62);
}

// The same descriptor in two parts, for a kernel that walks a ring of operand slots: its low word at a base
// address (start address field and leading byte offset), to which a later address adds (offset >> 4) without a
// carry out of the 14-bit field (every shared address is below 2^18 = 256 KiB), and the constant high word.
// (Recomputing wg_desc per wgmma took ~15 instructions each in the warp-specialized kernel's loop, s15a.)
QDEV unsigned wg_desc_lo(unsigned saddr) { return ((saddr >> 4) & 0x3FFFu) | (1u << 16); }
QDEV unsigned long long wg_desc_from_lo(unsigned lo) {
    return (unsigned long long)lo | ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

// 8 packed codes (one word, k..k+7) -> two words of int8 16 * code in k order: (k..k+3), (k+4..k+7).
QDEV void unpack8(unsigned x, unsigned& lo, unsigned& hi) {
    const unsigned e = (x << 4) & 0xF0F0F0F0u, o = x & 0xF0F0F0F0u;
    lo = __byte_perm(e, o, 0x5140);
    hi = __byte_perm(e, o, 0x7362);
}

// 4-bit weight tile into the B slot at sl: thread t (of 256) holds, in wq[i], the packed 16 bytes t % 4 (codes
// 32 (t % 4) .. + 31 of the K tile) of tile row t / 4 + 64 i; unpacked to 2 x 16 int8 codes per row. A tile of BN
// rows takes RP = ceil(BN / 64) passes; in a last partial pass (BN = 160, 176, 224) only the threads whose row lies
// in the tile store.
template <int RP = 4, int BN = 256>
QDEV void store_w4_rows(unsigned sl, const uint4 (&wq)[RP], int t) {
    static_assert(RP == (BN + 63) / 64, "one pass per 64 rows");
    const int q = t & 3;
#pragma unroll
    for (int i = 0; i < RP; ++i) {
        const int r = (t >> 2) + 64 * i;
        if (64 * i + 64 > BN && r >= BN) continue;  // (the first test is false at compile time for whole passes)
        unsigned w[8];
        unpack8(wq[i].x, w[0], w[1]);
        unpack8(wq[i].y, w[2], w[3]);
        unpack8(wq[i].z, w[4], w[5]);
        unpack8(wq[i].w, w[6], w[7]);
        sts16(sl + swz128(r, 2 * q), w[0], w[1], w[2], w[3]);
        sts16(sl + swz128(r, 2 * q + 1), w[4], w[5], w[6], w[7]);
    }
}

// The 128 int32 accumulators of an m64n256 wgmma as inline-asm operands %0 .. %127 (shared by the wgmma wrappers).
#define WG_D128_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define WG_D128_OUT(d) \
    "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), \
    "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), \
    "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), \
    "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), \
    "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), \
    "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), \
    "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), \
    "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), \
    "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]), \
    "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]), \
    "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]), \
    "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]), \
    "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]), \
    "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]), \
    "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]), \
    "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])

// D[64 x 256] += A[64 x 32] * B[256 x 32]^T, s8 x s8 -> s32, both operands K-major in shared memory
// (descriptors). scale-d is a predicate, always true here: the caller zeroes d once before the K loop.
QDEV void wgmma_s8_m64n256k32(int (&d)[128], unsigned long long da, unsigned long long db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 " WG_D128_REGS ", "
        "%128, %129, p;\n}\n"
        : WG_D128_OUT(d)
        : "l"(da), "l"(db), "n"(1));
}

// The narrower tiles' wgmmas, m64nNk32 for N = BN = 160, 176, 224 (wgmma_gemm_ws's BN, twenty-first session): N / 2
// int32 accumulators per thread. WG_S<i> names operands 8i .. 8i+7 in the asm text, WG_O8(d, i) binds d[i .. i+7]
// to them; the two descriptors and the scale-d immediate follow the accumulators.
#define WG_S0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define WG_S1 "%8, %9, %10, %11, %12, %13, %14, %15"
#define WG_S2 "%16, %17, %18, %19, %20, %21, %22, %23"
#define WG_S3 "%24, %25, %26, %27, %28, %29, %30, %31"
#define WG_S4 "%32, %33, %34, %35, %36, %37, %38, %39"
#define WG_S5 "%40, %41, %42, %43, %44, %45, %46, %47"
#define WG_S6 "%48, %49, %50, %51, %52, %53, %54, %55"
#define WG_S7 "%56, %57, %58, %59, %60, %61, %62, %63"
#define WG_S8 "%64, %65, %66, %67, %68, %69, %70, %71"
#define WG_S9 "%72, %73, %74, %75, %76, %77, %78, %79"
#define WG_S10 "%80, %81, %82, %83, %84, %85, %86, %87"
#define WG_S11 "%88, %89, %90, %91, %92, %93, %94, %95"
#define WG_S12 "%96, %97, %98, %99, %100, %101, %102, %103"
#define WG_S13 "%104, %105, %106, %107, %108, %109, %110, %111"
#define WG_O8(d, i) "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]), \
    "+r"(d[i + 6]), "+r"(d[i + 7])
#define WG_R64 WG_S0 ", " WG_S1 ", " WG_S2 ", " WG_S3 ", " WG_S4 ", " WG_S5 ", " WG_S6 ", " WG_S7
#define WG_R80 WG_R64 ", " WG_S8 ", " WG_S9
#define WG_R88 WG_R80 ", " WG_S10
#define WG_R112 WG_R88 ", " WG_S11 ", " WG_S12 ", " WG_S13
#define WG_OUT64(d) \
    WG_O8(d, 0), WG_O8(d, 8), WG_O8(d, 16), WG_O8(d, 24), WG_O8(d, 32), WG_O8(d, 40), WG_O8(d, 48), WG_O8(d, 56)
#define WG_OUT80(d) WG_OUT64(d), WG_O8(d, 64), WG_O8(d, 72)
#define WG_OUT88(d) WG_OUT80(d), WG_O8(d, 80)
#define WG_OUT112(d) WG_OUT88(d), WG_O8(d, 88), WG_O8(d, 96), WG_O8(d, 104)
template <int BN> QDEV void wgmma_s8_n(int (&d)[BN / 2], unsigned long long da, unsigned long long db);
template <> QDEV void wgmma_s8_n<256>(int (&d)[128], unsigned long long da, unsigned long long db) {
    wgmma_s8_m64n256k32(d, da, db);
}
#define WG_NARROW(BN, REGS, OUT, DA, DB, SC)                                                                       \
    template <> QDEV void wgmma_s8_n<BN>(int (&d)[BN / 2], unsigned long long da, unsigned long long db) {         \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #SC ", 0;\n"                                            \
                     "wgmma.mma_async.sync.aligned.m64n" #BN "k32.s32.s8.s8 {" REGS "}, %" #DA ", %" #DB ", p;\n}\n" \
                     : OUT(d)                                                                                      \
                     : "l"(da), "l"(db), "n"(1));                                                                  \
    }
WG_NARROW(160, WG_R80, WG_OUT80, 80, 81, 82)
WG_NARROW(176, WG_R88, WG_OUT88, 88, 89, 90)
WG_NARROW(224, WG_R112, WG_OUT112, 112, 113, 114)

// y_base of the tile at m0, n0 into L2 two K tiles before the epilogue reads it (in K tile KT - 3, or the
// first when KT < 3): 128 rows x 2 BN bytes, up to two 128-byte lines for each of 256 threads t (row t / 2, lines
// 2 (t % 2) and 2 (t % 2) + 1 of the row, those that start inside the tile).
template <int BN = 256>
QDEV void prefetch_y_tile(const EpiArgs& ep, int M, int N, int m0, int n0, int t, int kt, int KT) {
    if (kt == KT - 3 || (KT < 3 && kt == 0)) {
        const int m = m0 + (t >> 1), c = 128 * (t & 1), nl = n0 + c;
        if (ep.y_base && m < M) {
            const unsigned short* y = reinterpret_cast<const unsigned short*>(ep.y_base) + (size_t)m * N;
            if (nl < N && (BN == WG_BN || c < BN)) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(y + nl));
            if (nl + 64 < N && (BN == WG_BN || c + 64 < BN))
                asm volatile("prefetch.global.L2 [%0];\n" ::"l"(y + nl + 64));
        }
    }
}

// The same for the register-operand kernel's 256 x 128 tile (256 rows x 256 B), by its producer warpgroup (a
// branch between the consumers' wgmmas made ptxas serialize them, C7515): thread t (of 128) prefetches the two
// 128-byte lines of rows t and t + 128.
QDEV void prefetch_y_rs(const EpiArgs& ep, int M, int N, int m0, int n0, int t, int kt, int KT) {
    if ((kt == KT - 3 || (KT < 3 && kt == 0)) && ep.y_base) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int m = m0 + t + 128 * i;
            if (m >= M) break;
            const unsigned short* y = reinterpret_cast<const unsigned short*>(ep.y_base) + (size_t)m * N;
            if (n0 < N) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(y + n0));
            if (n0 + 64 < N) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(y + n0 + 64));
        }
    }
}

// The output of the tile at column n0 as an [M, ldo] matrix whose column 0 is column nb of the layer: out itself
// (ldo = N, nb = 0), or for the _blk entry points block n0 / seg of [M, seg] (the tile lies in one block).
template <int EP, bool BLK>
QDEV void* tile_output(void* out, int M, int N, int n0, int seg, int& ldo, int& nb) {
    if constexpr (BLK) {
        const int blk = n0 / seg;
        ldo = seg;
        nb = blk * seg;
        return reinterpret_cast<char*>(out) + (size_t)blk * M * seg * (EP == 0 ? 4 : 2);
    }
    ldo = N;
    nb = 0;
    return out;
}

// The per-row epilogue factors of a thread's two fragment rows mr and mr + 8: a_scale and row_zero (0 past M or for
// EP = i32).
template <int EP>
QDEV void fragment_row_factors(const EpiArgs& ep, int M, int mr, float (&sa)[2], float (&za)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int m = mr + 8 * h;
        sa[h] = 0.f;
        za[h] = 0.f;
        if constexpr (EP != 0) {
            if (m < M) {
                sa[h] = ep.a_scale[m];
                za[h] = row_zero(ep, m);
            }
        }
    }
}

// The per-column epilogue factors of tile columns c and c + 1 from the staged s_ws / s_su (0 past N, or for EP = i32).
template <int EP>
QDEV void staged_column_factors(const float* s_ws, const float* s_su, int c, float& ws0, float& ws1, float& su0,
                                float& su1) {
    ws0 = ws1 = su0 = su1 = 0.f;
    if constexpr (EP != 0) {
        ws0 = s_ws[c];
        ws1 = s_ws[c + 1];
        su0 = s_su[c];
        su1 = s_su[c + 1];
    }
}

// A pair of a whole tile (wg_epilogue's FULL path): store_pair_y's arithmetic, in the same order, without its bounds
// and parity tests: (m, n) and (m, n + 1) lie inside, the row stride ldo is even; yy holds y_base's pair if HAS_Y.
template <int EP, bool HAS_Y>
QDEV void store_pair_full(void* out, int ldo, int m, int n, int v0, int v1, float sa, float za, float ws0, float ws1,
                          float su0, float su1, unsigned yy) {
    const size_t base = (size_t)m * ldo + n;
    if constexpr (EP == 0) {
        *reinterpret_cast<int2*>(reinterpret_cast<int*>(out) + base) = make_int2(v0, v1);
    } else {
        float f0 = epilogue_f32(v0, sa, za, ws0, su0);
        float f1 = epilogue_f32(v1, sa, za, ws1, su1);
        if constexpr (HAS_Y) {
            f0 = add_rn(f0, load_f32<EP>((unsigned short)(yy & 0xFFFFu)));
            f1 = add_rn(f1, load_f32<EP>((unsigned short)(yy >> 16)));
        }
        *reinterpret_cast<unsigned*>(reinterpret_cast<unsigned short*>(out) + base) =
            (unsigned)store_bits<EP>(f0) | ((unsigned)store_bits<EP>(f1) << 16);
    }
}

// The epilogue, straight from the accumulator fragment of warpgroup g (tokens 64g .. 64g+63 of the tile at
// m0, n0; BN columns) to global memory; s_ws / s_su: the tile's BN w_scale / wsum values in shared memory (0 past N).
// FULL (thirtieth session; 128 x 256 tiles): the tile lies inside [M, N] and N (and the blocked output's stride) is
// even, so no pair needs a bounds or parity test, and HAS_Y says once per tile whether y_base is added. Why: ncu of the
// unsplit 8-bit kernel on 4096 x 4096 at M = 2048 (s30f; scripts/ncu_sass_regions.py) put 27% of the kernel's
// stall samples (37% of the consumers') in the epilogue: ~1,700 instructions per warp and tile, ~600 of them
// branches, convergence barriers, bounds tests and predicated-off y_base loads. Edge tiles and the narrower tiles
// keep the general path (FULL false: every test at run time, as before).
template <int EP, int SHIFT, bool BLK, int BN, bool FULL, bool HAS_Y>
QDEV void wg_epilogue_tile(const int (&d)[BN / 2], void* __restrict__ out, int M, int N, const EpiArgs& ep, int seg,
                           int m0, int n0, int g, int warp, int lane, const float* s_ws, const float* s_su) {
    // Row of d[4j + 2h + e]: 64 g + 16 warp + lane/4 + 8h; column 8j + 2 (lane % 4) + e. In batches of 8
    // column pairs: the batch's y_base loads (16 per thread) are issued together before its stores
    // (quik_epilogue.cuh, load_y_pair).
    const int mr = m0 + g * 64 + warp * 16 + (lane >> 2);
    int ldo, nb;
    void* const ob = tile_output<EP, BLK>(out, M, N, n0, seg, ldo, nb);
    float sa[2], za[2];
    fragment_row_factors<EP>(ep, M, mr, sa, za);
    const unsigned short* y = reinterpret_cast<const unsigned short*>(ep.y_base);  // (FULL && HAS_Y only)
    constexpr int JB = 8, J = BN / 8;  // J column groups of 8; the last batch may be partial (BN = 160, 176, 224)
#pragma unroll
    for (int j0 = 0; j0 < J; j0 += JB) {
        unsigned yy[JB][2] = {};
#pragma unroll
        for (int j = 0; j < JB; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                if (J % JB != 0 && j0 + j >= J) continue;  // (false at compile time for whole batches)
                const int m = mr + 8 * h, n = n0 + 8 * (j0 + j) + 2 * (lane & 3);
                if constexpr (!FULL)
                    yy[j][h] = m < M ? load_y_pair<EP>(ep, N, m, n) : 0u;
                else if constexpr (HAS_Y)
                    yy[j][h] = *reinterpret_cast<const unsigned*>(y + (size_t)m * N + n);
            }
#pragma unroll
        for (int j = 0; j < JB; ++j) {
            const int c = 8 * (j0 + j) + 2 * (lane & 3), n = n0 + c;  // c: column within the tile
            if ((J % JB != 0 && j0 + j >= J) || (!FULL && n >= N)) continue;
            float ws0, ws1, su0, su1;
            staged_column_factors<EP>(s_ws, s_su, c, ws0, ws1, su0, su1);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int m = mr + 8 * h;
                const int k = 4 * (j0 + j) + 2 * h;
                if constexpr (FULL)
                    store_pair_full<EP, HAS_Y>(ob, ldo, m, n - nb, d[k] >> SHIFT, d[k + 1] >> SHIFT, sa[h], za[h],
                                               ws0, ws1, su0, su1, yy[j][h]);
                else if (m < M)
                    store_pair_y<EP>(ob, ep, ldo, m, n - nb, d[k] >> SHIFT, d[k + 1] >> SHIFT, sa[h], za[h], ws0,
                                     ws1, su0, su1, yy[j][h]);
            }
        }
    }
}
template <int EP, int SHIFT, bool BLK, int BN = WG_BN>
QDEV void wg_epilogue(const int (&d)[BN / 2], void* __restrict__ out, int M, int N, const EpiArgs& ep, int seg, int m0,
                      int n0, int g, int warp, int lane, const float* s_ws, const float* s_su) {
    // (seg: even by the launcher's contract, so a whole tile's blocked rows are even too). 128 x 256 tiles only: on the
    // narrower ones (BN = 160, 176, 224) the same path was slower, x1.01-1.11 of the layer time (s30g; not analysed).
    if (BN == WG_BN && m0 + WG_BM <= M && n0 + BN <= N && (N & 1) == 0) {
        if (EP != 0 && ep.y_base)
            wg_epilogue_tile<EP, SHIFT, BLK, BN, true, true>(d, out, M, N, ep, seg, m0, n0, g, warp, lane, s_ws, s_su);
        else
            wg_epilogue_tile<EP, SHIFT, BLK, BN, true, false>(d, out, M, N, ep, seg, m0, n0, g, warp, lane, s_ws, s_su);
    } else {
        wg_epilogue_tile<EP, SHIFT, BLK, BN, false, false>(d, out, M, N, ep, seg, m0, n0, g, warp, lane, s_ws, s_su);
    }
}

// Cluster split-K's end (wgmma_gemm_ws with WS_SPLIT_CLUSTER): every CTA of the cluster has stored its fragment
// in its own shared memory, column group j (d[4j .. 4j+3]) of consumer thread ct at mine + 4096 j (mine = ring base
// + 16 ct), and passed a cluster barrier. This CTA (rank of ncta) adds, for each of its column groups j in
// [32 rank / ncta, 32 (rank + 1) / ncta), the ncta CTAs' values of the same fragment slot (its own included, read
// through the same window) and stores them through quik_epilogue.cuh's store_pair_y: thread ct's slot j holds rows
// 64 g + 16 warp + lane / 4 + 8 h and columns 8 j + 2 (lane % 4) + e of the tile, as in wg_epilogue. A runtime loop
// over j: the first version, wg_epilogue unrolled over all 32 groups with a runtime test per group, made the kernel
// ~8,500 SASS instructions that each warp ran once, and its warps stalled mostly on instruction fetch and branch
// reconvergence (ncu s29d: x1.8 the time of the plane kernels' slicing + add kernels).
template <int EP, int SHIFT>
QDEV void cluster_epilogue(unsigned mine, unsigned rank, unsigned ncta, void* __restrict__ out, int M, int N,
                           const EpiArgs& ep, int m0, int n0, int g, int warp, int lane, const float* s_ws,
                           const float* s_su) {
    constexpr int J = WG_BN / 8;
    const int mr = m0 + g * 64 + warp * 16 + (lane >> 2);
    float sa[2], za[2];
    fragment_row_factors<EP>(ep, M, mr, sa, za);
    const int jhi = (int)(J * (rank + 1) / ncta);
#pragma unroll 1
    for (int j = (int)(J * rank / ncta); j < jhi; ++j) {
        const int c = 8 * j + 2 * (lane & 3), n = n0 + c;  // c: column within the tile
        unsigned yy[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) yy[h] = mr + 8 * h < M ? load_y_pair<EP>(ep, N, mr + 8 * h, n) : 0u;
        int v[4] = {0, 0, 0, 0};
#pragma unroll 4
        for (unsigned q = 0; q < ncta; ++q) {  // int32 sums: the same in any order
            unsigned u0, u1, u2, u3;
            asm volatile("ld.shared::cluster.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(u0), "=r"(u1), "=r"(u2), "=r"(u3)
                         : "r"(cluster_addr(mine + 4096 * j, q))
                         : "memory");
            v[0] += (int)u0;
            v[1] += (int)u1;
            v[2] += (int)u2;
            v[3] += (int)u3;
        }
        if (n >= N) continue;
        float ws0, ws1, su0, su1;
        staged_column_factors<EP>(s_ws, s_su, c, ws0, ws1, su0, su1);
#pragma unroll
        for (int h = 0; h < 2; ++h)
            if (mr + 8 * h < M)
                store_pair_y<EP>(out, ep, N, mr + 8 * h, n, v[2 * h] >> SHIFT, v[2 * h + 1] >> SHIFT, sa[h], za[h], ws0,
                                 ws1, su0, su1, yy[h]);
    }
}

template <int EP, int WB, bool BLK>
QDEV void wgmma_gemm(const signed char* __restrict__ A, const unsigned char* __restrict__ W, void* __restrict__ out,
                     int M, int N, int Kp, const EpiArgs& ep, int seg) {
    static_assert(WB == 4 || WB == 8, "weight bits: 4 or 8");
    constexpr int B_SLOTS = wg_b_slots<WB>();
    constexpr int SHIFT = WB == 4 ? 4 : 0;  // w4 computes 16 * acc (see Unpack)
    extern __shared__ __align__(1024) unsigned char wg_smem[];
    const unsigned s_a = (smem_addr(wg_smem) + 1023u) & ~1023u;  // the swizzle atoms need 1024-byte alignment
    const unsigned s_b = s_a + WG_A_STAGES * WG_A_TILE;

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;

    int m0, n0;
    grouped_tile<WG_BM, WG_BN, WG_GROUP_M>(M, N, blockIdx.x, m0, n0);  // quik_ptx.cuh, as quik_gemm.cu

    const int KT = (Kp + WG_BK - 1) / WG_BK;  // Kp % 64 == 0: the last tile may be half (zero-filled)
    const int kp2 = Kp >> 1;                  // packed bytes per weight row (w4)

    // A: thread -> rows tid/8 + 32i (i < 4), chunk tid % 8 (8 threads cover one row's 128 bytes).
    // w8: the B tile too, rows tid/8 + 32i (i < 8), into B slot kt % B_SLOTS (= A's ring position).
    auto load_a = [&](int kt) {
        const unsigned st = s_a + (kt % WG_A_STAGES) * WG_A_TILE;
        const int c = tid & 7, k = kt * WG_BK + c * 16;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = (tid >> 3) + 32 * i, m = m0 + r;
            const bool ok = m < M && k < Kp;
            cp_async16(st + swz128(r, c), ok ? A + (size_t)m * Kp + k : A, ok);
        }
        if constexpr (WB == 8) {
            const unsigned sl = s_b + (kt % B_SLOTS) * WG_B_TILE;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int r = (tid >> 3) + 32 * i, n = n0 + r;
                const bool ok = n < N && k < Kp;
                cp_async16(sl + swz128(r, c), ok ? W + (size_t)n * Kp + k : W, ok);
            }
        }
    };
    // B: thread -> rows tid/4 + 64i (i < 4), packed chunk q = tid % 4 (codes 32q .. 32q+31 of the K tile).
    auto load_b = [&](int kt, uint4 (&wq)[4]) {
        const int q = tid & 3, kb = kt * (WG_BK / 2) + q * 16;  // K tile kt = step kt of the 4-bit layout
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int n = n0 + (tid >> 2) + 64 * i;
            wq[i] = (n < N && kb < kp2) ? ldg_stream(W + w4_off(n, kt, q * 16, N, kp2)) : make_uint4(0, 0, 0, 0);
        }
#if WG_L2_AHEAD > 0
        // pull tile kt + WG_L2_AHEAD of the weights into L2 now (one 64-byte row segment per 4 threads), so
        // that the register loads, one iteration before their use, hit L2 rather than DRAM
        const int kf = (kt + WG_L2_AHEAD) * (WG_BK / 2);
        if (q == 0 && kf < kp2) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int n = n0 + (tid >> 2) + 64 * i;
                if (n < N) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(W + w4_off(n, kf >> 6, 0, N, kp2)));
            }
        }
#endif
    };
    auto store_b = [&](int kt, const uint4 (&wq)[4]) { store_w4_rows(s_b + (kt % WG_B_SLOTS) * WG_B_TILE, wq, tid); };

    // The epilogue's per-column factors, staged once while the main loop runs (visible after its first
    // barrier): reading them from global memory per column pair in the epilogue put one load round trip
    // in front of every store.
    float* s_ws = reinterpret_cast<float*>(wg_smem + (s_b + B_SLOTS * WG_B_TILE - smem_addr(wg_smem)));
    float* s_su = s_ws + WG_BN;
    if constexpr (EP != 0) {
        const int n = n0 + tid;  // WG_THREADS == WG_BN: one column per thread
        s_ws[tid] = n < N ? ep.w_scale[n] : 0.f;
        s_su[tid] = n < N ? ep.wsum[n] : 0.f;
    }

    int d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0;

    // Weight registers: WG_B_AHEAD buffers; the one unpacked in iteration kt (tile kt+1) is refilled with
    // tile kt+1+WG_B_AHEAD, so each global load has WG_B_AHEAD iterations to arrive.
    uint4 wq0[4], wq1[4];
    // Prologue: A(0), A(1) in flight (one commit group each), B(0) in its slot, B(1 .. WG_B_AHEAD) in registers
    // (w8: B(0), B(1) in A's groups).
    load_a(0);
    cp_async_commit();
    if (KT > 1) load_a(1);
    cp_async_commit();
    if constexpr (WB == 4) {
        load_b(0, wq0);
        store_b(0, wq0);
        if (KT > 1) load_b(1, WG_B_AHEAD == 1 ? wq0 : wq1);
        if (WG_B_AHEAD == 2 && KT > 2) load_b(2, wq0);
    }

    auto step = [&](int kt, uint4 (&wq)[4]) {
        cp_async_wait<1>();  // groups committed: kt + 2; A(kt) is the older of the two newest
        fence_proxy_async();
        __syncthreads();
        fence_acc(d);
        wgmma_fence();
        if (WG_DIAG != 2) {
            const unsigned a = s_a + (kt % WG_A_STAGES) * WG_A_TILE + wg * (64 * 128);
            const unsigned b = s_b + (kt % B_SLOTS) * WG_B_TILE;
#pragma unroll
            for (int s = 0; s < WG_BK / 32; ++s) wgmma_s8_m64n256k32(d, wg_desc(a + 32 * s), wg_desc(b + 32 * s));
        }
        wgmma_commit();
        fence_acc(d);
        if constexpr (WB == 4) {
            if (WG_DIAG != 1 && kt + 1 < KT) store_b(kt + 1, wq);
            if (WG_DIAG != 1 && kt + 1 + WG_B_AHEAD < KT) load_b(kt + 1 + WG_B_AHEAD, wq);
        }
        if (kt + 2 < KT) load_a(kt + 2);
        cp_async_commit();
        if constexpr (EP != 0) prefetch_y_tile(ep, M, N, m0, n0, tid, kt, KT);
        wgmma_wait<WG_DEPTH>();
        fence_acc(d);
    };
    if (WB == 8 || WG_B_AHEAD == 1) {
        for (int kt = 0; kt < KT; ++kt) step(kt, wq0);
    } else {  // buffers alternate: tile kt+1 sits in wq1 when kt is even (unrolled by 2: registers need fixed indices)
        for (int kt = 0; kt < KT; kt += 2) {
            step(kt, wq1);
            if (kt + 1 < KT) step(kt + 1, wq0);
        }
    }
    wgmma_wait<0>();
    fence_acc(d);

    wg_epilogue<EP, SHIFT, BLK>(d, out, M, N, ep, seg, m0, n0, wg, warp, lane, s_ws, s_su);
}


// ---------------------------------------------------------------------------------------------------------
// Warp-specialized version (quik_wgmma_ws_*; fourteenth session). Same contract, tile, operand layouts,
// swizzle, unpack and epilogue as wgmma_gemm above; what differs is who does what and how they meet:
//   block 384 threads = 3 warpgroups. Warpgroup 0, the producer, only issues the cp.async copies of the
//   activation tile (and of the 8-bit weight tile). Warpgroups 1 and 2, the consumers (consumer g: tokens
//   64 g .. + 63), issue the wgmmas, unpack the 4-bit weight tile WS_LEAD tiles ahead while their wgmmas run,
//   and run the epilogue. No block-wide barrier in the K loop: WS_STAGES ring slots of [A 16 KiB | B 32 KiB],
//   each with a "full" mbarrier (one arrival per thread that writes the slot: 128, or 384 with 4-bit
//   weights) and an "empty" one (one arrival per consumer warp).
// Why: in wgmma_gemm all threads issue copies and wgmmas and meet at one __syncthreads per K tile, so any
// slow warp stalls the tensor cores. In one process on the H100 this kernel took x0.75-0.89 of wgmma_gemm's
// W8A8 layer time at M = 512 .. 8192 on the LLaMA-2 shapes (s14a, s14c), and x0.94-0.985 of the W4A4 / W4A8
// time at M = 2048 / 8192 except on K = 28672 (x1.00-1.03; s14e). Fifteenth session (ncu source counters, s15a):
// the producer's copy plan and the consumers' fence-ordered weight loads below took x0.89-0.97 (4-bit) and
// x0.90-0.97 (8-bit) of that layer time (s15b).
// The 4-bit unpack (global load, 5 instructions per 8 codes, shared stores) is thread work: on the producer
// alone the layer took x1.16-1.22 of wgmma_gemm's time (s14a: one warp per scheduler cannot hide its own
// latencies), split 128 / 128 rows between producer and consumers x1.05-1.08 (s14b; commit 1917703 has that
// version), so the consumers do all of it, as wgmma_gemm's 8 warps did.
// Producer, iteration s (slot s % S; the ring's first S slots start free):
//   wait empty[s % S] (s >= S: the consumers' wgmmas of tile s - S are done); cp.async A(s) (w8: and B(s)),
//   commit; then, one iteration behind: cp.async.wait_group 1 (my copies of tile s - 1 have landed),
//   fence.proxy.async (my generic-proxy shared writes -> the async proxy that wgmma reads through), arrive
//   full[(s - 1) % S]. The deep-copy entry points (quik_wgmma_ws_c3_*, 8-bit weights, template CD = 3) keep three
//   tiles' copies in flight instead: cp.async.wait_group 2, arrive full[(s - 2) % S] (twenty-second session; why:
//   at M = 512 the 8-bit consumers spent ~30% of their stall samples waiting for full stages and the producer 11%
//   waiting for its copies to land, ncu s21k; measured W8A8 x0.92-0.99 at M = 256 / 512 but ~x1.00-1.03 at 2048,
//   and x1.01-1.07 for the 4-bit kernel, s21l: so a separate set of entry points that the launcher picks for 8-bit
//   weights at few tokens, quiktool.runtime.cuda.WGMMA_W8_DEEP_MAX_M).
// Consumer, iteration s: wait full[s % S]; 4 wgmmas (one commit group); w4: wait empty[t % S] for t = s +
//   WS_LEAD (tile t - S <= s - 2 done), unpack my rows of B(t) from registers into its slot,
//   fence.proxy.async, arrive full[t % S], load my rows of B(t + 1); wgmma.wait_group 1 (tile s - 1's
//   wgmmas done); one arrival per warp on empty[(s - 1) % S].
// Registers: setmaxnreg gives the producer P and the consumers C (WS_PREGS / WS_CREGS, w4: WS_W4_PREGS /
// WS_W4_CREGS; 128 P + 256 C <= 384 * 168, the block's registers at launch: setmaxnreg only moves registers
// within the block, and an increase past them waits forever: a 64 / 224 split of the rs kernel hung, s16c); ptxas
// allocates each role's code within its count. Spill bytes
// (nvcc 13.0 --resource-usage): none at the defaults; w8 without setmaxnreg (168 each) 16-64, at 88 / 208 20
// (the producer's 24 copy addresses). (ptxas refuses a wgmma below ~154 registers, so a block of 512
// threads, 128 each at launch, cannot hold two consumer warpgroups.)
#ifndef WS_STAGES
#define WS_STAGES 4
#endif
#ifndef WS_PREGS
#define WS_PREGS 136
#endif
#ifndef WS_CREGS
#define WS_CREGS 184
#endif
#ifndef WS_W4_PREGS
#define WS_W4_PREGS 88
#endif
#ifndef WS_W4_CREGS
#define WS_W4_CREGS 208
#endif
#ifndef WS_LEAD
#define WS_LEAD 2
#endif
//   WS_DIAG (diagnostic builds only, wrong results: never shipped; scripts/device_wgmma_variants.py --kernel ws):
//   the 4-bit consumers' weight work split into its parts. 1 = none (publish only arrives: the wgmmas read
//   whatever the B slots hold), 2 = loads and unpack kept, no shared stores and no proxy fence (the unpacked
//   words folded into a sink register), 3 = no global loads (register-made words), unpack, stores and fence kept.
#ifndef WS_DIAG
#define WS_DIAG 0
#endif
static_assert(WS_LEAD >= 1 && WS_LEAD <= WS_STAGES - 2, "WS_LEAD: the slot of tile s + LEAD must be free of s - 1");
// The block's registers at launch: 65536 / 384 per thread, rounded down to a multiple of 8 (168).
constexpr int WS_BLOCK_REGS = 384 * ((65536 / 384) & ~7);
static_assert(128 * WS_W4_PREGS + 256 * WS_W4_CREGS <= WS_BLOCK_REGS, "setmaxnreg: the block's launch registers");
static_assert(WS_STAGES >= 2, "WS_STAGES: at least 2");
static_assert(128 * WS_PREGS + 256 * WS_CREGS <= WS_BLOCK_REGS, "setmaxnreg: the block's launch registers");
constexpr int WS_THREADS = 384;
constexpr int WS_SLOT = WG_A_TILE + WG_B_TILE;  // 48 KiB
__host__ __device__ constexpr int ws_smem_bytes() { return WS_STAGES * WS_SLOT + WG_EPI_BYTES + 2 * WS_STAGES * 8; }
static_assert(ws_smem_bytes() + 1024 <= 227 * 1024, "the launcher asks for ws_smem_bytes + 1024 bytes");

QDEV void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
QDEV void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Thread 0 sets up the S stages' barriers, then the whole block waits: full (s_full + 8 i) completes when its
// full_count producer threads' copies of stage i landed, empty (s_empty + 8 i) when the 8 consumer warps are done
// reading it.
QDEV void init_stage_barriers(unsigned s_full, unsigned s_empty, int S, unsigned full_count) {
    if (threadIdx.x == 0) {
        for (int i = 0; i < S; ++i) {
            mbar_init(s_full + 8 * i, full_count);
            mbar_init(s_empty + 8 * i, 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
}
// Wait until the barrier's phase of this parity has completed (phase j has parity j & 1).
QDEV void mbar_wait(unsigned bar, unsigned parity) {
    asm volatile(
        "{\n.reg .pred p;\nWS_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra WS_WAIT;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
// A 16-byte weight load that the compiler keeps after the preceding proxy fence: a coherent load with a memory
// clobber. The read-only form (ldg_stream) was hoisted above the fence by ptxas, and the fence (MEMBAR.ALL.CTA)
// then waited for the load's full latency every K tile (s15a: the consumers' largest stall).
QDEV uint4 ldg_after_fence(const void* p) {
    uint4 v;
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
}
// The producers' copy plan (wgmma_gemm_ws, wgmma_gemm_rs), fixed for the K loop (fifteenth session: worked out per
// copy it took ~12 instructions a copy, and the producer was the w8 kernel's critical path, s15a). Thread p copies
// 16-byte chunk p % 8 of rows r0 + p / 8 + 16 i (i < R) of X [rows, Kp] in every K tile: one pointer per row (a
// row past `rows` points at row 0 and copies 0 bytes: zero fill). Returns the rows inside as a bit mask.
template <int R, typename T>
QDEV unsigned copy_plan(const T* X, int r0, int rows, int Kp, int p, const T* (&ptr)[R]) {
    unsigned v = 0;
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int r = r0 + (p >> 3) + 16 * i;
        ptr[i] = X + (r < rows ? (size_t)r * Kp : 0) + (p & 7) * 16;
        v |= (r < rows ? 1u : 0u) << i;
    }
    return v;
}
// One K tile's copies of a plan's first R rows, byte koff of each chunk, to s + 2048 i (row p / 8 + 16 i of the
// 128-byte swizzle: r & 7 is the same for every i): without bounds (every row inside, the chunk inside the row) or
// with them (kin: the chunk lies inside the row; bit i of v: row i inside).
template <int R, typename T, int N>
QDEV void copy_rows(unsigned s, const T* const (&ptr)[N], int koff) {
#pragma unroll
    for (int i = 0; i < R; ++i) cp_async16(s + 2048 * i, ptr[i] + koff);
}
template <int R, typename T, int N>
QDEV void copy_rows(unsigned s, const T* const (&ptr)[N], int koff, bool kin, unsigned v) {
#pragma unroll
    for (int i = 0; i < R; ++i) cp_async16(s + 2048 * i, ptr[i] + koff, kin && ((v >> i) & 1u));
}
// After committing tile kt's copies, with D commit groups in flight (D = 2: the register-operand kernel and the
// warp-specialized one's default; D = 3: its deep-copy entry points, wgmma_gemm_ws's CD): tile kt - D + 1's group
// (the oldest in flight) has landed; it goes to the async proxy and its stage is marked full. publish_last does the
// same for the last D - 1 tiles after the loop.
template <int S, int D = 2> QDEV void publish_previous(unsigned s_full, int kt) {
    static_assert(D == 2 || D == 3, "copy groups in flight: 2 or 3");
    if (kt >= D - 1) {
        cp_async_wait<D - 1>();
        fence_proxy_async();
        mbar_arrive(s_full + 8 * ((kt - D + 1) % S));
    }
}
template <int S, int D = 2> QDEV void publish_last(unsigned s_full, int KT) {
    if constexpr (D == 3) {
        if (KT >= 2) {
            cp_async_wait<1>();
            fence_proxy_async();
            mbar_arrive(s_full + 8 * ((KT - 2) % S));
        }
    }
    cp_async_wait<0>();
    fence_proxy_async();
    mbar_arrive(s_full + 8 * ((KT - 1) % S));
}
template <int R> QDEV void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R)); }
template <int R> QDEV void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R)); }

// SPLIT = WS_SPLIT_PLANES (quik_wgmma_ws_sk_w*, EP = i32 only): split-K, as quik_gemm.cu's gemm_tiled: the grid is
// `splits` copies of the tile raster, copy s multiplies the K tiles [KT * s / splits, KT * (s + 1) / splits) and
// stores its int32 sums to out + s * M * N (quik_gemm.cu's quik_splitk_* adds the slices and applies the epilogue).
// Only the K tiles' addresses move: the stage ring and its barrier phases count the slice's own tiles from 0.
// SPLIT = WS_SPLIT_CLUSTER (quik_wgmma_ws_[c3_]cl_*, twenty-ninth session): the same slices, but the `splits` CTAs of
// a tile form one thread-block cluster (cluster dims (splits, 1, 1), set at launch: CTA rank r of cluster c is slice
// r of tile c) and add their sums through distributed shared memory, then apply the epilogue themselves: after the
// K loop each CTA writes its 128 x 256 int32 sums into its own (now idle) stage ring, the cluster meets at a
// barrier, CTA r adds the cluster's sums of column groups [32 r / splits, 32 (r + 1) / splits) (cluster_epilogue) and
// stores those columns of the output, and no CTA leaves before every CTA has read what it needs. Why: the plane
// version wrote and re-read [splits, M, N] int32 through L2 (16 MB for 4096 x 4096 at M = 128, 8 slices) and its
// slicing kernel spent 25% of its stall samples on those stores (LG throttle, ncu s28f), then a second kernel added
// them (4.8 us of 22.1, s28a).
constexpr int WS_SPLIT_NONE = 0, WS_SPLIT_PLANES = 1, WS_SPLIT_CLUSTER = 2;
// A persistent block's next output tile (wgmma_gemm_ws with 8-bit weights, unsplit): pid + gridDim.x while there is
// one -> whether there is (m0, n0 then its corner). Without PERSIST a block has one tile: false.
template <bool PERSIST, int BN>
QDEV bool next_tile(int M, int N, int tiles, int& pid, int& m0, int& n0) {
    if constexpr (PERSIST) {
        pid += gridDim.x;
        if (pid >= tiles) return false;
        grouped_tile<WG_BM, BN, WG_GROUP_M>(M, N, pid, m0, n0);
        return true;
    } else {
        return false;
    }
}
template <int EP, int WB, bool BLK, int SPLIT = WS_SPLIT_NONE, int BN = WG_BN, int CD = 2>
QDEV void wgmma_gemm_ws(const signed char* __restrict__ A, const unsigned char* __restrict__ W,
                        void* __restrict__ out, int M, int N, int Kp, const EpiArgs& ep, int seg, int splits = 1) {
    static_assert(SPLIT != WS_SPLIT_PLANES || (EP == 0 && !BLK), "split-K blocks store int32 partial sums [M, N]");
    static_assert(SPLIT != WS_SPLIT_CLUSTER || (!BLK && BN == WG_BN), "cluster split-K: 128 x 256 tiles, [M, N] out");
    static_assert(WG_BM * WG_BN * 4 <= WS_STAGES * WS_SLOT, "cluster split-K: the int32 tile fits in the ring");
    static_assert(BN == 160 || BN == 176 || BN == 224 || BN == WG_BN, "BN: a width with a wgmma_s8_n wrapper");
    static_assert(CD == 2 || (CD == 3 && WB == 8 && CD <= WS_STAGES), "CD: 3 K tiles of copies in flight, 8-bit only");
    constexpr int S = WS_STAGES;
    extern __shared__ __align__(1024) unsigned char wg_smem[];
    const unsigned base = (smem_addr(wg_smem) + 1023u) & ~1023u;  // the swizzle atoms need 1024-byte alignment
    // slot i: A at base + i * WS_SLOT, B 16 KiB later; then the epilogue factors, then the barriers
    const unsigned s_epi = base + S * WS_SLOT, s_full = s_epi + WG_EPI_BYTES, s_empty = s_full + 8 * S;
    float* s_ws = reinterpret_cast<float*>(wg_smem + (s_epi - smem_addr(wg_smem)));
    float* s_su = s_ws + WG_BN;

    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31;
    int m0, n0, pid = blockIdx.x, kt0 = 0;                    // kt0: the slice's first K tile (SPLIT)
    int KT = (Kp + WG_BK - 1) / WG_BK;  // Kp % 64 == 0: the last tile may be half (zero-filled)
    if constexpr (SPLIT == WS_SPLIT_PLANES)  // the slice's K tiles, counted from 0 below
        out = static_cast<int*>(out) + (size_t)split_slice<WG_BM, BN>(M, N, splits, pid, kt0, KT) * M * N;
    unsigned rank = 0, ncta = 1;  // WS_SPLIT_CLUSTER: this CTA's slice and the slice count
    if constexpr (SPLIT == WS_SPLIT_CLUSTER) {
        rank = cta_rank();
        ncta = cluster_ncta();
        pid = blockIdx.x / ncta;  // cluster dims (ncta, 1, 1): the CTAs of a cluster are consecutive blocks
        kt0 = (int)((long long)KT * rank / ncta);
        KT = (int)((long long)KT * (rank + 1) / ncta) - kt0;
    }
    grouped_tile<WG_BM, BN, WG_GROUP_M>(M, N, pid, m0, n0);
    // PERSIST: the grid may have fewer blocks than there are tiles (the launcher's QUIKTOOL_WGMMA_PERSIST); block b
    // runs tiles b, b + gridDim.x, ... with one stage ring, so its producer copies the next tile's first K tiles while
    // its consumers run the epilogue of the last one, and no block launches or fills its pipeline again. 8-bit
    // weights only: the 4-bit consumers unpack WS_LEAD tiles ahead, which would cross the tile boundary.
    constexpr bool PERSIST = WB == 8 && SPLIT == WS_SPLIT_NONE;
    const int tiles = ((M + WG_BM - 1) / WG_BM) * ((N + BN - 1) / BN);

    init_stage_barriers(s_full, s_empty, S, WB == 8 ? 128 : 384);  // full: every thread that writes the slot

    if (wg == 0) {  // ---- producer ----
        setmaxnreg_dec<WB == 8 ? WS_PREGS : WS_W4_PREGS>();
        // Thread -> 16-byte chunk c of rows p/8 + 16i (A: i < 8, w8 B: i < 16) of every K tile (copy_plan), one
        // swizzled offset, and a path without bounds for whole tiles.
        constexpr int RA = WG_BM / 16, RB_ = WB == 8 ? BN / 16 : 0;
        const int p = tid, c = p & 7;
        const unsigned dst = swz128(p >> 3, c);
        // Launched as a programmatic dependent launch of the quantizer (on sm_90), the block starts while the
        // quantizer runs; the activations only after this wait (a no-op in a plain launch). The consumers read
        // what the quantizer wrote (its scales, y_base) only after they saw this producer's first copies land.
        asm volatile("griddepcontrol.wait;\n" ::: "memory");
        int it = 0;  // K tiles copied so far, over all of this block's output tiles: the stage ring's count
        for (;;) {   // output tiles: one, or (PERSIST) every gridDim.x-th from blockIdx.x
            const signed char* pa[RA];
            const unsigned char* pb[RB_ > 0 ? RB_ : 1];
            const unsigned va = copy_plan(A, m0, M, Kp, p, pa);
            const unsigned vb = RB_ > 0 ? copy_plan(W, n0, N, Kp, p, pb) : 0u;
            const bool all_rows = va == (1u << RA) - 1 && (RB_ == 0 || vb == (1u << RB_) - 1);
            for (int kt = 0; kt < KT; ++kt, ++it) {
                if (it >= S) mbar_wait(s_empty + 8 * (it % S), ((it / S) - 1) & 1);
                const unsigned sa = base + (it % S) * WS_SLOT + dst, sb = sa + WG_A_TILE;
                const int koff = (kt0 + kt) * WG_BK;
                const bool kin = koff + c * 16 < Kp;  // false only for chunks 4..7 of a half last tile
                if (all_rows && kin) {
                    copy_rows<RA>(sa, pa, koff);
                    copy_rows<RB_>(sb, pb, koff);
                } else {
                    const int ko = kin ? koff : 0;
                    copy_rows<RA>(sa, pa, ko, kin, va);
                    copy_rows<RB_>(sb, pb, ko, kin, vb);
                }
                cp_async_commit();
                publish_previous<S, CD>(s_full, it);
            }
            if (!next_tile<PERSIST, BN>(M, N, tiles, pid, m0, n0)) break;
        }
        publish_last<S, CD>(s_full, it);
        if constexpr (SPLIT == WS_SPLIT_CLUSTER) {  // the consumers' two cluster barriers (below)
            __syncwarp();
            cl_arrive();
            cl_wait();
            cl_arrive();
            cl_wait();
        }
        return;
    }

    // ---- consumers ----
    setmaxnreg_inc<WB == 8 ? WS_CREGS : WS_W4_CREGS>();
    const int ct = tid - 128, g = wg - 1, warp = (ct >> 5) & 3;
    int it = 0;  // K tiles consumed so far, over all of this block's output tiles (the producer's count)
    for (;;) {   // output tiles: one, or (PERSIST) every gridDim.x-th from blockIdx.x
        if constexpr (EP != 0) {
            const int n = n0 + ct;  // 256 consumer threads >= BN: one column each
            if (BN == WG_BN || ct < BN) {  // (BN == 256: every thread; stated so that the code stays as before)
                s_ws[ct] = n < N ? ep.w_scale[n] : 0.f;
                s_su[ct] = n < N ? ep.wsum[n] : 0.f;
            }
        }
        // w4: the consumers unpack the weight tile, WS_LEAD tiles ahead: thread -> rows ct/4 + 64i (i < 4),
        // packed chunk ct % 4 (codes 32 (ct % 4) .. + 31 of the K tile), one register buffer loaded one iteration
        // before its unpack; a warp's load instruction reads one 512-byte block of the tiled layout. Row i's chunk
        // of whole 64-byte steps lies ws[i] bytes further each step (w4_off with the step's width fixed): wb[i]
        // walks them; a 32-byte last step goes through w4_off. The loads are ordered (ldg_after_fence): issued
        // after publish_b's proxy fence, which would otherwise wait for them (s15a).
        constexpr int RP = (BN + 63) / 64;  // passes of 64 rows (the last one partial for BN = 160, 176, 224)
        const int kp2 = Kp >> 1, q = ct & 3;
        uint4 wq[RP];
        const unsigned char* wb[RP];
        int ws[RP];
        unsigned vn = 0;
        if constexpr (WB == 4) {
#pragma unroll
            for (int i = 0; i < RP; ++i) {
                const int n = n0 + (ct >> 2) + 64 * i, g0 = n & ~7;
                // a row past N or past the tile is never loaded (its pointer stays on W)
                const bool ok = n < N && (BN == WG_BN || (ct >> 2) + 64 * i < BN);
                ws[i] = ok ? min(8, N - g0) << 6 : 0;
                wb[i] = ok ? W + (size_t)g0 * kp2 + ((n & 7) << 6) + q * 16 + (size_t)kt0 * ws[i] : W;  // step kt0
                vn |= (ok ? 1u : 0u) << i;
            }
        }
        auto load_b = [&](int t) {  // called for t = 0, 1, 2, ... in order: wb[i] walks the whole steps
            const int ta = kt0 + t;  // the K tile (= 64-byte step) in the whole row
            if (t < KT && (ta << 6) + 64 <= kp2) {
#pragma unroll
                for (int i = 0; i < RP; ++i) {
                    wq[i] = ((vn >> i) & 1u) ? ldg_after_fence(wb[i]) : make_uint4(0, 0, 0, 0);
                    wb[i] += ws[i];
                }
            } else {  // past the last tile, or a 32-byte last step
#pragma unroll
                for (int i = 0; i < RP; ++i) {
                    const bool in = t < KT && (ta << 6) + q * 16 < kp2 && ((vn >> i) & 1u);
                    wq[i] = in ? ldg_after_fence(W + w4_off(n0 + (ct >> 2) + 64 * i, ta, q * 16, N, kp2))
                               : make_uint4(0, 0, 0, 0);
                }
            }
        };
        unsigned sink = 0;  // WS_DIAG == 2 only
        auto publish_b = [&](int t) {  // B(t) from wq into its slot (free), then the next tile into wq
#if WS_DIAG == 0
            store_w4_rows<RP, BN>(base + (t % S) * WS_SLOT + WG_A_TILE, wq, ct);
            fence_proxy_async();
            mbar_arrive(s_full + 8 * (t % S));
            load_b(t + 1);
#elif WS_DIAG == 1
            mbar_arrive(s_full + 8 * (t % S));
#elif WS_DIAG == 2
#pragma unroll
            for (int i = 0; i < RP; ++i) {
                const unsigned x[4] = {wq[i].x, wq[i].y, wq[i].z, wq[i].w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    unsigned lo, hi;
                    unpack8(x[j], lo, hi);
                    sink += lo ^ hi;
                }
            }
            mbar_arrive(s_full + 8 * (t % S));
            load_b(t + 1);
#else
            store_w4_rows<RP, BN>(base + (t % S) * WS_SLOT + WG_A_TILE, wq, ct);
            fence_proxy_async();
            mbar_arrive(s_full + 8 * (t % S));
#pragma unroll
            for (int i = 0; i < RP; ++i) {
                const unsigned v = (unsigned)(t + 1) * 0x01010101u + (unsigned)(ct + 64 * i);
                wq[i] = make_uint4(v, v ^ 0x5A5A5A5Au, v + 0x33333333u, ~v);
            }
#endif
        };
        if constexpr (WB == 4) {
            load_b(0);
            for (int t = 0; t < WS_LEAD && t < KT; ++t) publish_b(t);
        }
        int d[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) d[i] = 0;
        // The descriptors' low words at slot 0 (wg_desc_lo); slot i and k32 step s add (i * WS_SLOT + 32 s) >> 4.
        const unsigned da0 = wg_desc_lo(base + g * (64 * 128)), db0 = wg_desc_lo(base + WG_A_TILE);
        for (int kt = 0; kt < KT; ++kt, ++it) {
            mbar_wait(s_full + 8 * (it % S), (it / S) & 1);
            fence_acc(d);
            wgmma_fence();
            const unsigned so = (it % S) * (WS_SLOT >> 4);
#pragma unroll
            for (int s = 0; s < WG_BK / 32; ++s)
                wgmma_s8_n<BN>(d, wg_desc_from_lo(da0 + so + 2 * s), wg_desc_from_lo(db0 + so + 2 * s));
            wgmma_commit();
            fence_acc(d);
            if constexpr (WB == 4) {  // while the wgmmas run: tile kt + WS_LEAD, whose slot tile kt + LEAD - S left
                const int t = kt + WS_LEAD;
                if (t < KT) {
                    if (t >= S) mbar_wait(s_empty + 8 * (t % S), ((t / S) - 1) & 1);
                    publish_b(t);
                }
            }
            if constexpr (EP != 0) prefetch_y_tile<BN>(ep, M, N, m0, n0, ct, kt, KT);
            wgmma_wait<1>();
            fence_acc(d);
            if (kt > 0) {
                __syncwarp();
                if (lane == 0) mbar_arrive(s_empty + 8 * ((it - 1) % S));
            }
        }
        wgmma_wait<0>();
        fence_acc(d);
        if constexpr (PERSIST) {  // the tile's last stage is free too: the producer refills it during the epilogue
            __syncwarp();
            if (lane == 0) mbar_arrive(s_empty + 8 * ((it - 1) % S));
        }
        if (WS_DIAG == 2 && sink == 0x9E3779B9u) d[0] += 1;  // keeps the diagnostic unpack alive
        // the epilogue factors written by the other consumer threads (named barrier 1: consumers only); with cluster
        // split-K also: both consumer warpgroups' wgmmas are done, so the stage ring is free
        asm volatile("bar.sync 1, 256;\n" ::: "memory");
        if constexpr (SPLIT == WS_SPLIT_CLUSTER) {
            // my sums into my ring: column group j (d[4j .. 4j+3]) of consumer thread ct at 16 (256 j + ct), so that
            // a warp's 16-byte loads of one group, here or from another CTA, are 512 contiguous bytes
            constexpr int J = BN / 8;
            const unsigned mine = base + 16 * ct;
#pragma unroll
            for (int j = 0; j < J; ++j) sts16(mine + 4096 * j, d[4 * j], d[4 * j + 1], d[4 * j + 2], d[4 * j + 3]);
            __syncwarp();
            cl_arrive();  // every CTA's sums are in its shared memory after this barrier
            cl_wait();
            cluster_epilogue<EP, WB == 4 ? 4 : 0>(mine, rank, ncta, out, M, N, ep, m0, n0, g, warp, lane, s_ws, s_su);
            __syncwarp();
            cl_arrive();  // done reading the cluster's sums; no CTA leaves while another may still read its own
            cl_wait();
            return;
        }
        wg_epilogue<EP, WB == 4 ? 4 : 0, BLK, BN>(d, out, M, N, ep, seg, m0, n0, g, warp, lane, s_ws, s_su);
        if (!next_tile<PERSIST, BN>(M, N, tiles, pid, m0, n0)) break;
        asm volatile("bar.sync 1, 256;\n" ::: "memory");  // every consumer is done with s_ws / s_su before they change
    }
}

// ============================================================================================================
// The register-operand warp-specialized kernel (entry points quik_wgmma_rs_EP_w4[_blk], sixteenth session): the
// product computed transposed, the 4-bit weights as wgmma's A operand straight from registers, the activations
// as its B operand from shared memory.
//
// Why: the diagnostic builds of wgmma_gemm_ws (WS_DIAG, s16a) put the 4-bit consumers' weight work at 28-33% of
// the kernel's time on the 70B shapes at M = 2048, and its global loads at 12-14% of it: the proxy fence that
// the unpacked codes' shared stores need (MEMBAR.ALL.CTA) waits for every load the thread has in flight, so the
// loads' latency is exposed once per K tile wherever they are issued (PERF_LOG v16d). Here the unpacked codes
// never touch shared memory: no stores, no proxy fence, and the packed weights are loaded two K tiles ahead into
// registers that nothing waits for but their own use. The tensor cores read only the activations from shared
// memory (64 KiB per K tile instead of 80, plus 32 KiB of copies instead of 48). The seventh session's version
// of this product (3585c64, one barrier per K tile, no producer) was no faster than the kernel of its day; its
// wgmmas alone ran ~15% slower than the shared-memory ones (not explained).
//
// Tile: 256 tokens x 128 weight rows x 128 K bytes per stage. Consumer warpgroup g (1, 2; c = g - 1) owns weight
// rows 64c .. 64c+63 and all 256 tokens: one m64n256k32 wgmma (A = registers, B = the activation stage) per 32
// K bytes, 4 per stage, 128 int32 accumulators per thread.
//   Activation stages: RS_STAGES x [256 rows][128 B] (32 KiB), cp.async by the producer warpgroup (the copy plan
//   of wgmma_gemm_ws: 16 rows per thread), in the 128-byte swizzle; full barrier: 128 producer arrivals, empty
//   barrier: the 8 consumer warps, as in wgmma_gemm_ws. The producer also prefetches the tile's y_base rows into L2
//   during the third-last K tile (prefetch_y_rs). Registers: setmaxnreg RS_PREGS / RS_CREGS (72 / 216, no spills).
//   Epilogue factors: a_scale and a_zero + a_shift * a_scale of the 256 tokens, w_scale and wsum of the 128
//   weight rows (fp32, RS_EPI_BYTES), staged before the main loop.
// Weight fragment (the register A operand, 8-bit, per warp 16 rows x 32 codes = mma.m16n8k32's A): lane
// l = 4 gid + t holds a0 = row gid, codes 4t..4t+3; a1 = row gid+8, same codes; a2 / a3 = the same rows, codes
// 16+4t..16+4t+3, of each 32-code step s. Lane t of a quad loads the packed bytes of step t (codes 32t..32t+31 of
// the K tile, 16 bytes; in the tiled layout, w4_off, a warp's load reads one 512-byte block per 8 rows) for rows
// gid and gid+8; "piece" p of a step is its codes 4p..4p+3 (2 packed bytes). Lane t needs pieces t and t+4 of
// every step: a 4 x 4 transpose of 32-bit messages within the quad (round i: lane t sends the pieces that lane
// t^i needs, __shfl_xor_sync by i), then a permutation by selects (what arrives in round i is step t^i). unpack8
// of a message gives (a0, a2) or (a1, a3), 16 * code as in the kernels above (acc >> 4 at the end).
// Consumer, iteration kt (two fragment buffers, two packed buffers; the loop unrolled by 2 so that they keep
// fixed registers): wait full[kt % S]; 4 wgmmas from fragment kt % 2 (one commit group); wgmma.wait_group 1
// (tile kt-1's wgmmas done: fragment (kt+1) % 2 is free, and so is stage (kt-1) % S: one arrival per warp on
// its empty barrier); build fragment kt+1 from its packed registers; load the packed weights of tile kt+3 into
// them. The wgmmas of kt run while the fragment of kt+1 is built.
// Accumulators: lane l of warp w holds d[4j + 2h + e] = acc[token 8j + 2t + e][weight row 64c + 16w + gid + 8h].
// Epilogue: lanes l and l ^ 4 (rows r, r ^ 1) swap one value per pair, so that each holds two adjacent output
// columns of one token, then store_pair_y as everywhere else (BLK: the tile lies in one block, seg % 128 == 0).
// Launch geometry: block RS_THREADS = 384, grid = ceil(M/256) * ceil(N/128) (1-D, grouped raster), dynamic smem
// rs_smem_bytes() + 1024. Assumptions as for the kernels above.
#ifndef RS_STAGES
#define RS_STAGES 5
#endif
#ifndef RS_PREGS
#define RS_PREGS 72
#endif
#ifndef RS_CREGS
#define RS_CREGS 216
#endif
//   RS_DIAG (diagnostic builds only, wrong results): 1 = no weight loads or fragment builds (the wgmmas read
//   whatever the fragment registers hold): the tensor half of the kernel.
#ifndef RS_DIAG
#define RS_DIAG 0
#endif
//   RS_GROUP_M: token tiles per band of the grouped raster (quik_ptx.cuh grouped_tile); a band of 256-token tiles
//   holds twice the activations of wgmma_gemm's at the same count. 8 against 16: x0.90-1.00 of the kernel time at
//   M = 1024 .. 8192 on five LLaMA-2 shapes (H100, s16e).
#ifndef RS_GROUP_M
#define RS_GROUP_M 8
#endif
// (Two wgmma groups in flight while a fragment is built, with three fragment and three packed buffers, gave wrong
// sums on the H100, s16d: ptxas gave the third buffer the second one's registers and rebuilt them while that group
// ran. The empty-asm pins (fence_frag) act before ptxas only; tests/runtime/test_kernel_compile.py reads the SASS
// for such writes. The loop below keeps one group in flight, as wgmma_gemm_ws does.)
static_assert(RS_STAGES >= 3, "RS_STAGES: the producer refills a stage only after its release");
constexpr int RS_BT = 256, RS_BW = 128, RS_THREADS = 384;
constexpr int RS_A_TILE = RS_BT * WG_BK;                     // 32 KiB
constexpr int RS_EPI_BYTES = 2 * RS_BT * 4 + 2 * RS_BW * 4;  // token and weight-row factors (fp32)
__host__ __device__ constexpr int rs_smem_bytes() { return RS_STAGES * RS_A_TILE + RS_EPI_BYTES + 2 * RS_STAGES * 8; }
static_assert(rs_smem_bytes() + 1024 <= 227 * 1024, "the launcher asks for rs_smem_bytes + 1024 bytes");
static_assert(128 * RS_PREGS + 256 * RS_CREGS <= WS_BLOCK_REGS, "setmaxnreg: the block's launch registers");

// D[64 x 256] += A[64 x 32] (registers: this thread's fragment a0..a3) * B[256 x 32]^T (shared, descriptor).
QDEV void wgmma_s8_m64n256k32_rs(int (&d)[128], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                 unsigned long long db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 " WG_D128_REGS ", "
        "{%128, %129, %130, %131}, %132, p;\n}\n"
        : WG_D128_OUT(d)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db), "n"(1));
}

// Pins a fragment buffer (as fence_acc): its registers stay put while a wgmma that reads them is in flight.
QDEV void fence_frag(unsigned (&f)[16]) {
#pragma unroll
    for (int i = 0; i < 16; ++i) asm volatile("" : "+r"(f[i])::"memory");
}

// One weight row's packed K tile as this lane holds it (q: the 16 bytes of step t, t = lane % 4) -> r[s] =
// pieces t (low half) and t+4 (high half) of step s, packed (see the contract above).
QDEV void quad_transpose(const uint4& q, int t, unsigned (&r)[4]) {
    unsigned v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int u = t ^ i;  // the lane this round's message is for
        const unsigned lo = (u & 2) ? q.y : q.x, hi = (u & 2) ? q.w : q.z;
        const unsigned x = __byte_perm(lo, hi, (u & 1) ? 0x7632 : 0x5410);
        v[i] = i ? __shfl_xor_sync(0xFFFFFFFFu, x, i) : x;  // from lane t^i: step t^i
    }
    // r[s] = v[s ^ t], by selects (a register array indexed at run time would live in local memory)
    const bool b0 = t & 1, b1 = t & 2;
    const unsigned w0 = b0 ? v[1] : v[0], w1 = b0 ? v[0] : v[1], w2 = b0 ? v[3] : v[2], w3 = b0 ? v[2] : v[3];
    r[0] = b1 ? w2 : w0;
    r[1] = b1 ? w3 : w1;
    r[2] = b1 ? w0 : w2;
    r[3] = b1 ? w1 : w3;
}

// Packed rows gid (q[0]) and gid+8 (q[1]) of one K tile -> the 16 fragment registers: f[4s + i] = a_i of step s.
QDEV void build_frag(const uint4 (&q)[2], int t, unsigned (&f)[16]) {
    unsigned ra[4], rb[4];
    quad_transpose(q[0], t, ra);
    quad_transpose(q[1], t, rb);
#pragma unroll
    for (int s = 0; s < 4; ++s) {
        unpack8(ra[s], f[4 * s + 0], f[4 * s + 2]);
        unpack8(rb[s], f[4 * s + 1], f[4 * s + 3]);
    }
}

template <int EP, int WB, bool BLK>
QDEV void wgmma_gemm_rs(const signed char* __restrict__ A, const unsigned char* __restrict__ W,
                        void* __restrict__ out, int M, int N, int Kp, const EpiArgs& ep, int seg) {
    static_assert(WB == 4, "the register-operand kernel is for 4-bit weights");
    constexpr int S = RS_STAGES;
    extern __shared__ __align__(1024) unsigned char wg_smem[];
    const unsigned base = (smem_addr(wg_smem) + 1023u) & ~1023u;  // the swizzle atoms need 1024-byte alignment
    // stage i at base + i * RS_A_TILE; then the epilogue factors, then the barriers
    const unsigned s_epi = base + S * RS_A_TILE, s_full = s_epi + RS_EPI_BYTES, s_empty = s_full + 8 * S;
    float* s_sa = reinterpret_cast<float*>(wg_smem + (s_epi - smem_addr(wg_smem)));
    float* s_za = s_sa + RS_BT;
    float* s_ws = s_za + RS_BT;
    float* s_su = s_ws + RS_BW;

    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31;
    int m0, n0;
    grouped_tile<RS_BT, RS_BW, RS_GROUP_M>(M, N, blockIdx.x, m0, n0);
    const int KT = (Kp + WG_BK - 1) / WG_BK;  // Kp % 64 == 0: the last tile may be half (zero-filled)

    init_stage_barriers(s_full, s_empty, S, 128);  // full: every producer thread

    if (wg == 0) {  // ---- producer: the activation tiles (wgmma_gemm_ws's copy plan, 16 rows per thread) ----
        setmaxnreg_dec<RS_PREGS>();
        constexpr int RA = RS_BT / 16;
        const int p = tid, c = p & 7;
        const unsigned dst = swz128(p >> 3, c);
        const signed char* pa[RA];
        const unsigned va = copy_plan(A, m0, M, Kp, p, pa);
        const bool all_rows = va == (1u << RA) - 1;
        for (int kt = 0; kt < KT; ++kt) {
            if (kt >= S) mbar_wait(s_empty + 8 * (kt % S), ((kt / S) - 1) & 1);
            const unsigned sa = base + (kt % S) * RS_A_TILE + dst;
            const int koff = kt * WG_BK;
            const bool kin = koff + c * 16 < Kp;  // false only for chunks 4..7 of a half last tile
            if (all_rows && kin) {
                copy_rows<RA>(sa, pa, koff);
            } else {
                copy_rows<RA>(sa, pa, kin ? koff : 0, kin, va);
            }
            cp_async_commit();
            if constexpr (EP != 0) prefetch_y_rs(ep, M, N, m0, n0, p, kt, KT);
            publish_previous<S>(s_full, kt);
        }
        publish_last<S>(s_full, KT);
        return;
    }

    // ---- consumers ----
    setmaxnreg_inc<RS_CREGS>();
    const int ct = tid - 128, c = wg - 1, warp = (ct >> 5) & 3, t = lane & 3, gid = lane >> 2;
    if constexpr (EP != 0) {  // staged for the epilogue (visible after the named barrier below)
        const int m = m0 + ct;  // 256 consumer threads == RS_BT: one token each
        s_sa[ct] = m < M ? ep.a_scale[m] : 0.f;
        s_za[ct] = m < M ? row_zero(ep, m) : 0.f;
        if (ct < RS_BW) {
            const int n = n0 + ct;
            s_ws[ct] = n < N ? ep.w_scale[n] : 0.f;
            s_su[ct] = n < N ? ep.wsum[n] : 0.f;
        }
    }
    // Weights: rows n0 + 64c + 16 warp + gid + 8h (h < 2), the 16 packed bytes of step t of each K tile. Whole
    // 64-byte layout steps lie ws[h] bytes apart (w4_off with the step's width fixed): wb[h] walks them; a 32-byte
    // last step goes through w4_off. A row past N is never loaded (its pointer stays on W).
    const int kp2 = Kp >> 1;
    const unsigned char* wb[2];
    int ws[2];
    unsigned vn = 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int n = n0 + 64 * c + 16 * warp + gid + 8 * h, g0 = n & ~7;
        const bool ok = n < N;
        wb[h] = ok ? W + (size_t)g0 * kp2 + ((n & 7) << 6) + t * 16 : W;
        ws[h] = ok ? min(8, N - g0) << 6 : 0;
        vn |= (ok ? 1u : 0u) << h;
    }
    auto load_w = [&](int kt, uint4 (&q)[2]) {  // called for kt = 0, 1, 2, ... in order: wb[h] walks the steps
        if ((kt << 6) + 64 <= kp2) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                q[h] = ((vn >> h) & 1u) ? ldg_stream(wb[h]) : make_uint4(0, 0, 0, 0);
                wb[h] += ws[h];
            }
        } else {  // a 32-byte last step
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int n = n0 + 64 * c + 16 * warp + gid + 8 * h;
                q[h] = (t < 2 && ((vn >> h) & 1u)) ? ldg_stream(W + w4_off(n, kt, t * 16, N, kp2)) : make_uint4(0, 0, 0, 0);
            }
        }
    };

    int d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0;
    // Prologue: fragment 0 built; packed tiles 1 and 2 in registers.
    unsigned f0[16], f1[16];
    uint4 qa[2], qb[2];
#if RS_DIAG == 0
    load_w(0, qa);
    build_frag(qa, t, f0);
    if (KT > 1) load_w(1, qa);
    if (KT > 2) load_w(2, qb);
#else
#pragma unroll
    for (int i = 0; i < 16; ++i) f0[i] = f1[i] = 0x10101010u * (unsigned)(i + lane);
#endif
    const unsigned db0 = wg_desc_lo(base);  // stage i and k32 step s add (i * RS_A_TILE + 32 s) >> 4
    // Iteration kt: fcur = fragment kt, fnext <- fragment kt+1 from q (packed tile kt+1), q <- packed tile kt+3.
    auto step = [&](int kt, unsigned (&fcur)[16], unsigned (&fnext)[16], uint4 (&q)[2]) {
        mbar_wait(s_full + 8 * (kt % S), (kt / S) & 1);
        fence_acc(d);
        fence_frag(fcur);
        wgmma_fence();
        const unsigned so = (kt % S) * (RS_A_TILE >> 4);
#pragma unroll
        for (int s = 0; s < WG_BK / 32; ++s)
            wgmma_s8_m64n256k32_rs(d, fcur[4 * s], fcur[4 * s + 1], fcur[4 * s + 2], fcur[4 * s + 3],
                                   wg_desc_from_lo(db0 + so + 2 * s));
        wgmma_commit();
        fence_acc(d);
        fence_frag(fcur);
        wgmma_wait<1>();  // tile kt-1's wgmmas done: fnext and stage (kt-1) % S are free
        fence_acc(d);
        fence_frag(fnext);
        if (kt > 0) {
            __syncwarp();
            if (lane == 0) mbar_arrive(s_empty + 8 * ((kt - 1) % S));
        }
#if RS_DIAG == 0
        if (kt + 1 < KT) build_frag(q, t, fnext);
        if (kt + 3 < KT) load_w(kt + 3, q);
#endif
        fence_frag(fnext);
    };
    for (int kt = 0; kt < KT; kt += 2) {  // unrolled by 2: the buffers need fixed register names
        step(kt, f0, f1, qa);
        if (kt + 1 < KT) step(kt + 1, f1, f0, qb);
    }
    wgmma_wait<0>();
    fence_acc(d);
    // the epilogue factors written by the other consumer threads (named barrier 1: consumers only)
    asm volatile("bar.sync 1, 256;\n" ::: "memory");

    // Epilogue. This lane: weight rows r_h = 64c + 16 warp + gid + 8h, tokens 8j + 2t + e. Lanes l and l ^ 4 hold
    // rows r and r ^ 1; after one exchange per pair the even-row lane holds columns (r, r+1) of token 8j + 2t, the
    // odd-row lane those of token 8j + 2t + 1.
    int ldo, nb;
    void* const ob = tile_output<EP, BLK>(out, M, N, n0, seg, ldo, nb);
    const int odd = gid & 1;
    const int cl = 64 * c + 16 * warp + (gid & ~1);  // first column (within the tile) of this lane's pairs, h = 0
    float fws[2][2], fsu[2][2];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            fws[h][e] = EP != 0 ? s_ws[cl + 8 * h + e] : 0.f;
            fsu[h][e] = EP != 0 ? s_su[cl + 8 * h + e] : 0.f;
        }
    constexpr int JB = 8;
#pragma unroll
    for (int j0 = 0; j0 < 32; j0 += JB) {
        int v[JB][2][2];
        unsigned yy[JB][2];
#pragma unroll
        for (int j = 0; j < JB; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int k = 4 * (j0 + j) + 2 * h;
                const int send = odd ? d[k] : d[k + 1];
                const int recv = __shfl_xor_sync(0xFFFFFFFFu, send, 4);
                v[j][h][0] = (odd ? recv : d[k]) >> 4;
                v[j][h][1] = (odd ? d[k + 1] : recv) >> 4;
                const int m = m0 + 8 * (j0 + j) + 2 * t + odd;
                yy[j][h] = m < M ? load_y_pair<EP>(ep, N, m, n0 + cl + 8 * h) : 0u;
            }
#pragma unroll
        for (int j = 0; j < JB; ++j) {
            const int ml = 8 * (j0 + j) + 2 * t + odd, m = m0 + ml;
            if (m >= M) continue;
            const float sa = EP != 0 ? s_sa[ml] : 0.f, za = EP != 0 ? s_za[ml] : 0.f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int n = n0 + cl + 8 * h;
                if (n < N)
                    store_pair_y<EP>(ob, ep, ldo, m, n - nb, v[j][h][0], v[j][h][1], sa, za, fws[h][0], fws[h][1],
                                     fsu[h][0], fsu[h][1], yy[j][h]);
            }
        }
    }
}

}  // namespace

// Entry points: FN = wgmma_gemm (block WG_THREADS) or wgmma_gemm_ws (block WS_THREADS).
#define QUIK_WGMMA_ENTRY(NAME, FN, THREADS, EP, WB, BLK)                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS, 1)                                                       \
    NAME(const signed char* A, const unsigned char* W, void* out, int M, int N, int Kp, const float* a_scale,      \
         const float* a_zero, float a_shift, const float* w_scale, const float* wsum, const void* y_base,          \
         int seg) {                                                                                                 \
        const EpiArgs ep = {a_scale, a_zero, w_scale, wsum, y_base, a_shift};                                      \
        FN<EP, WB, BLK>(A, W, out, M, N, Kp, ep, seg);                                                             \
    }
#define QUIK_WGMMA(NAME, EP, WB, BLK) QUIK_WGMMA_ENTRY(NAME, wgmma_gemm, WG_THREADS, EP, WB, BLK)
#define QUIK_WGMMA_WS(NAME, EP, WB, BLK) QUIK_WGMMA_ENTRY(NAME, wgmma_gemm_ws, WS_THREADS, EP, WB, BLK)

QUIK_WGMMA(quik_wgmma_i32_w4, 0, 4, false)
QUIK_WGMMA(quik_wgmma_f16_w4, 1, 4, false)
QUIK_WGMMA(quik_wgmma_bf16_w4, 2, 4, false)
QUIK_WGMMA(quik_wgmma_i32_w8, 0, 8, false)
QUIK_WGMMA(quik_wgmma_f16_w8, 1, 8, false)
QUIK_WGMMA(quik_wgmma_bf16_w8, 2, 8, false)
QUIK_WGMMA(quik_wgmma_f16_w4_blk, 1, 4, true)
QUIK_WGMMA(quik_wgmma_bf16_w4_blk, 2, 4, true)
QUIK_WGMMA(quik_wgmma_f16_w8_blk, 1, 8, true)
QUIK_WGMMA(quik_wgmma_bf16_w8_blk, 2, 8, true)

QUIK_WGMMA_WS(quik_wgmma_ws_i32_w8, 0, 8, false)
QUIK_WGMMA_WS(quik_wgmma_ws_f16_w8, 1, 8, false)
QUIK_WGMMA_WS(quik_wgmma_ws_bf16_w8, 2, 8, false)
QUIK_WGMMA_WS(quik_wgmma_ws_f16_w8_blk, 1, 8, true)
QUIK_WGMMA_WS(quik_wgmma_ws_bf16_w8_blk, 2, 8, true)
QUIK_WGMMA_WS(quik_wgmma_ws_i32_w4, 0, 4, false)
QUIK_WGMMA_WS(quik_wgmma_ws_f16_w4, 1, 4, false)
QUIK_WGMMA_WS(quik_wgmma_ws_bf16_w4, 2, 4, false)
QUIK_WGMMA_WS(quik_wgmma_ws_f16_w4_blk, 1, 4, true)
QUIK_WGMMA_WS(quik_wgmma_ws_bf16_w4_blk, 2, 4, true)

// WsTile<BN, CD, SPLIT>::gemm is wgmma_gemm_ws with the tile width, copy depth and split kind bound, in the form
// QUIK_WGMMA_ENTRY calls; WsNarrow<BN> / WsDeep<BN> / WsCluster<CD> name its uses below (a macro argument cannot hold
// the comma).
template <int BN, int CD, int SPLIT = WS_SPLIT_NONE> struct WsTile {
    template <int EP, int WB, bool BLK>
    static QDEV void gemm(const signed char* A, const unsigned char* W, void* out, int M, int N, int Kp,
                          const EpiArgs& ep, int seg) {
        wgmma_gemm_ws<EP, WB, BLK, SPLIT, BN, CD>(A, W, out, M, N, Kp, ep, seg);
    }
};
template <int BN> using WsNarrow = WsTile<BN, 2>;
template <int BN> using WsDeep = WsTile<BN, 3>;
template <int CD> using WsCluster = WsTile<WG_BN, CD, WS_SPLIT_CLUSTER>;

// quik_wgmma_ws_nBN_EP_wB (BN = 160, 176, 224): wgmma_gemm_ws on 128 x BN tiles, grid = ceil(M/128) * ceil(N/BN),
// block and smem as quik_wgmma_ws_*; the plain [M, N] output only (a fused group's segment need not divide by BN).
#define QUIK_WGMMA_WS_N(NAME, EP, WB, BN) QUIK_WGMMA_ENTRY(NAME, WsNarrow<BN>::gemm, WS_THREADS, EP, WB, false)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n160_i32_w4, 0, 4, 160)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n160_f16_w4, 1, 4, 160)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n160_bf16_w4, 2, 4, 160)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n160_i32_w8, 0, 8, 160)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n160_f16_w8, 1, 8, 160)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n160_bf16_w8, 2, 8, 160)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n176_i32_w4, 0, 4, 176)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n176_f16_w4, 1, 4, 176)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n176_bf16_w4, 2, 4, 176)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n176_i32_w8, 0, 8, 176)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n176_f16_w8, 1, 8, 176)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n176_bf16_w8, 2, 8, 176)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n224_i32_w4, 0, 4, 224)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n224_f16_w4, 1, 4, 224)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n224_bf16_w4, 2, 4, 224)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n224_i32_w8, 0, 8, 224)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n224_f16_w8, 1, 8, 224)
QUIK_WGMMA_WS_N(quik_wgmma_ws_n224_bf16_w8, 2, 8, 224)

// quik_wgmma_ws_c3_[n<BN>_]EP_w8[_blk] (8-bit weights): the same kernels with three K tiles of copies in flight
// (wgmma_gemm_ws's CD = 3; see the producer above). Same contract, grid, block and smem as their ws / ws_n<BN> twins.
#define QUIK_WGMMA_WS_C3(NAME, EP, BN, BLK) QUIK_WGMMA_ENTRY(NAME, WsDeep<BN>::gemm, WS_THREADS, EP, 8, BLK)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_i32_w8, 0, 256, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_f16_w8, 1, 256, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_bf16_w8, 2, 256, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_f16_w8_blk, 1, 256, true)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_bf16_w8_blk, 2, 256, true)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_n160_i32_w8, 0, 160, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_n160_f16_w8, 1, 160, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_n160_bf16_w8, 2, 160, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_n176_i32_w8, 0, 176, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_n176_f16_w8, 1, 176, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_n176_bf16_w8, 2, 176, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_n224_i32_w8, 0, 224, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_n224_f16_w8, 1, 224, false)
QUIK_WGMMA_WS_C3(quik_wgmma_ws_c3_n224_bf16_w8, 2, 224, false)

// quik_wgmma_ws_sk_w*: split-K (wgmma_gemm_ws, SPLIT): grid = splits * the tile count, part int32 [splits, M, N]
// (every element written), 1 <= splits <= ceil(Kp / 128); quik_gemm.cu's quik_splitk_* finishes the product.
// quik_wgmma_ws_c3_sk_w8: the same with three K tiles of copies in flight (CD = 3, above).
#define QUIK_WGMMA_WS_SK(NAME, WB, CD)                                                                             \
    extern "C" __global__ void __launch_bounds__(WS_THREADS, 1)                                                    \
    NAME(const signed char* A, const unsigned char* W, int* part, int M, int N, int Kp, int splits) {             \
        const EpiArgs ep = {nullptr, nullptr, nullptr, nullptr, nullptr, 0.f};                                    \
        wgmma_gemm_ws<0, WB, false, WS_SPLIT_PLANES, WG_BN, CD>(A, W, part, M, N, Kp, ep, 0, splits);              \
    }
QUIK_WGMMA_WS_SK(quik_wgmma_ws_sk_w4, 4, 2)
QUIK_WGMMA_WS_SK(quik_wgmma_ws_sk_w8, 8, 2)
QUIK_WGMMA_WS_SK(quik_wgmma_ws_c3_sk_w8, 8, 3)

// quik_wgmma_ws_[c3_]cl_EP_wB (cluster split-K, wgmma_gemm_ws with WS_SPLIT_CLUSTER): the arguments and semantics of
// quik_wgmma_ws_EP_wB (seg unused: the plain [M, N] output), grid = splits * ceil(M/128) * ceil(N/256) launched with
// cluster dims (splits, 1, 1), 2 <= splits <= min(8, ceil(Kp / 128)); block and smem as quik_wgmma_ws_*.
#define QUIK_WGMMA_WS_CL(NAME, EP, WB, CD) QUIK_WGMMA_ENTRY(NAME, WsCluster<CD>::gemm, WS_THREADS, EP, WB, false)
QUIK_WGMMA_WS_CL(quik_wgmma_ws_cl_i32_w4, 0, 4, 2)
QUIK_WGMMA_WS_CL(quik_wgmma_ws_cl_f16_w4, 1, 4, 2)
QUIK_WGMMA_WS_CL(quik_wgmma_ws_cl_bf16_w4, 2, 4, 2)
QUIK_WGMMA_WS_CL(quik_wgmma_ws_cl_i32_w8, 0, 8, 2)
QUIK_WGMMA_WS_CL(quik_wgmma_ws_cl_f16_w8, 1, 8, 2)
QUIK_WGMMA_WS_CL(quik_wgmma_ws_cl_bf16_w8, 2, 8, 2)
QUIK_WGMMA_WS_CL(quik_wgmma_ws_c3_cl_i32_w8, 0, 8, 3)
QUIK_WGMMA_WS_CL(quik_wgmma_ws_c3_cl_f16_w8, 1, 8, 3)
QUIK_WGMMA_WS_CL(quik_wgmma_ws_c3_cl_bf16_w8, 2, 8, 3)

#define QUIK_WGMMA_RS(NAME, EP, BLK) QUIK_WGMMA_ENTRY(NAME, wgmma_gemm_rs, RS_THREADS, EP, 4, BLK)
QUIK_WGMMA_RS(quik_wgmma_rs_i32_w4, 0, false)
QUIK_WGMMA_RS(quik_wgmma_rs_f16_w4, 1, false)
QUIK_WGMMA_RS(quik_wgmma_rs_bf16_w4, 2, false)
QUIK_WGMMA_RS(quik_wgmma_rs_f16_w4_blk, 1, true)
QUIK_WGMMA_RS(quik_wgmma_rs_bf16_w4_blk, 2, true)
