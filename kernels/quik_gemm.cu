// quik_gemm.cu -- QUIK integer GEMM on the INT8 tensor cores (mma.sync m16n8k32 s8), with the fused
// dequantization epilogue. Exact integer product: bit-identical to quiktool.runtime.reference.int_gemm.
//
// Contract
//   A       int8 [M, Kp] row-major: signed activation codes (4-bit codes in [-8, 7] or 8-bit codes)
//   W       WBITS = 4: uint8 [N, Kp/2], packed byte i of row n = column 2i in the low nibble, 2i+1 in the
//                      high nibble, two's complement (quiktool.format.packing), at w4_off(n, i / 64, i % 64)
//                      (quik_ptx.cuh: rows interleaved in groups of 8, step-major; reference.tile_w4)
//           WBITS = 8: int8 [N, Kp]
//   acc[m, n] = sum_k A[m, k] * W[n, k]                                          (exact, int32)
//   Entry points (EP = i32 | f16 | bf16, WB = w4 | w8, CFG = big | mid, MT = m8 | m16):
//     quik_gemm_EP_WB_CFG     tiled tensor-core kernel, any M >= 1
//     quik_gemv_EP_WB_MT      small-M kernel (M <= 8 / M <= 16), weight-bandwidth bound
//     quik_gemv_EP_WB_m16*_ln the 16-token ones with whole-line weight loads (see LINES below)
//     quik_gemvo_EP_WB_MT     the same (EP = f16 | bf16) with the outlier product fused:
//                             y_base replaced by OutlierProduct (reference.outlier_sum's order)
//     quik_gemm_sk_WB_mid     the mid tiles split along K: int32 partial sums [splits, M, N] (split-K)
//     quik_splitk_EP          adds those slices, then the epilogue below (or, EP = i32, the sum itself);
//                             quik_splitk_g1_EP the same with one slice's loads at a time (few slices)
//     quik_unpack_w4_lut, quik_epilogue_{f32,i32}acc_{f16,bf16}: the library paths' helpers (end of file)
//   EP = i32 : C int32 [M, N] = acc                                (the exactness/debug path)
//   EP = f16 / bf16 : out[m, n] = acc * (a_scale[m] * w_scale[n])
//                                 + (a_zero[m] + a_shift * a_scale[m]) * wsum[n] + y_base[m, n]
//        in fp32, every operation rounded to nearest in exactly this order (no FMA contraction), then
//        rounded to the output dtype; y_base (same dtype as out) may be null. That is the operation
//        sequence of reference.quik_gemm, so outputs are bit-identical to the torch reference, not
//        merely close: the quantized model is discontinuous in its inputs (4-bit activation rounding),
//        and a 1-ulp difference in one layer grows into a visibly different perplexity downstream.
//   Assumptions (checked by the launcher in quiktool/runtime/cuda.py, not here):
//     Kp % 64 == 0 and 64 <= Kp < 2^17; M, N >= 1 (tails are predicated, any value works);
//     all tensors contiguous; A, W, out and y_base 16-byte aligned (16-byte copies and loads, paired
//     epilogue stores); offsets are 64-bit, so M * Kp and N * Kp may exceed 2^31.
//   Launch geometry (the launcher must match these constants):
//     (quik_gemm_*_big / _mid / quik_gemm_sk_*: they read nothing but W before griddepcontrol.wait, see gemm_tiled's
//      prologue; on sm_90 the launcher starts quik_gemm_sk_* as a programmatic dependent launch of the quantizer)
//     quik_gemm_*_big : block 256 threads, tile 128 x 256 (M x N), grid = ceil(M/128) * ceil(N/256),
//                       dynamic smem 4 * (128*64 + 256*(WB==4 ? 32 : 64)) bytes = 64 KiB (w4) / 96 KiB (w8)
//     quik_gemm_*_mid : block 128 threads, tile 64 x 128, grid = ceil(M/64) * ceil(N/128),
//                       dynamic smem 4 * (64*64 + 128*(WB==4 ? 32 : 64)) bytes = 32 KiB (w4) / 48 KiB (w8)
//     quik_gemm_sk_*  : as *_mid, grid = splits * ceil(M/64) * ceil(N/128), 1 <= splits <= Kp/64 (an argument);
//                       quik_splitk_*: block 256 threads, grid = ceil(M * ceil(N/2) / 256)
//     quik_gemv_*     : block 256 threads, grid = ceil(N/32) (N/16 for *_r16, N/64 for *_r64), static smem only; on sm_90
//                       the launcher starts it as a programmatic dependent launch of the quantizer: it reads
//                       nothing but W before griddepcontrol.wait (see the kernel)
//     quik_gemvo_*    : as quik_gemv_*, dynamic smem ROWS * (2 * chunk + 16) + 2 * M * n_out (OutlierProduct);
//                       before griddepcontrol.wait it also reads w_out (x_out, the quantizer's, after it)
//
// Why int4 is multiplied as int8: sm_90 has no int4 tensor-core instruction (mma .s4 is emulated at ~50
// TOPS), while m16n8k32 .s8 runs at ~1.2 POPS. A weight nibble w is unpacked into the HIGH half of a
// byte, i.e. as the int8 value 16*w (exact for w in [-8, 7]); the accumulator is then 16*acc and is
// shifted right by 4 at the end (exact). That unpack is 3 ALU ops per 32-bit packed word:
//     E = (x << 4) & 0xF0F0F0F0   -> nibbles of the even columns k, k+2, k+4, k+6
//     O =  x       & 0xF0F0F0F0   -> nibbles of the odd  columns k+1, k+3, k+5, k+7
// 16*acc fits in int32 because |a| <= 128, |w| <= 8 and Kp < 2^17.
//
// K order inside one mma. The mma sums 32 products; which physical k sits in which fragment slot only
// has to agree between the A and B fragments of the same thread. With the E/O unpack, thread (g, t)
// (g = lane/4, t = lane%4) holds the weight columns {8t + 2i} in its first B register and {8t + 2i + 1}
// in its second (i = 0..3, relative to a 32-column chunk). Its A registers must hold the same columns:
// the 4-bit path loads the 8 activation bytes 8t..8t+7 of the chunk with one 64-bit shared load and
// splits them into even and odd bytes with two byte permutes. The 8-bit weight path keeps the natural
// PTX fragment order and uses ldmatrix for both operands.
//
// Tiled kernel (large M): 8 (big) or 4 (mid) warps, warp tile 64 x 64 / 32 x 64, K tile 64, a 4-stage
// cp.async pipeline (global -> shared, zero-filled beyond M and N), XOR-swizzled shared memory so that
// the cp.async stores, ldmatrix and the 64-bit A loads are bank-conflict free (ncu: 0 conflicts), a
// grouped tile raster (16 M-tiles per group) so that the A and W slabs in flight stay in L2, and
// fragments double-buffered across the k32 steps (CUTLASS-style), one barrier per K tile.
// Measured on H100 (CUDA graph, fp16 out): 650-700 TOPS at M = 2048 for 8192 x 28672 / 28672 x 8192,
// i.e. about cuBLAS FP16 speed; 128 x 128 tiles on 4 warps and 3 stages were slower. ncu: tensor pipe
// ~52% active, 2 warps per scheduler (243-254 registers), stalls mostly fixed-latency waits of the
// mma.sync stream itself, not memory or barriers.
// Small-M kernel: the weights are the mma's A operand (16 output features per m16 tile) and the
// tokens its B operand (n8: 8 tokens, or two n8 tiles for 16), so M = 1 wastes 7/8 instead of 15/16 of
// the MMA. Weights stream straight from global memory into registers with 16-byte non-allocating loads
// (no shared memory: each byte is used once); a block covers 32 output features and its 8 warps split K
// (warp w takes the 64-byte weight steps w, w+8, ...), 2-4 steps in flight per warp; the 8 partial sums
// are reduced in shared memory (deterministic, no atomics) before the epilogue. Measured on H100: 2.6-2.75
// TB/s of weights at M = 1 (8192 x 28672 in 43 us, 3.6x cuBLAS FP16), 2.4 TB/s at M = 16.
//
// Tuning ideas for later: the prefill target (>= 1.8x FP16) is out of reach of mma.sync (its register-
// only ceiling is ~1.3 POPS, and 64 x 64 warp tiles cap a block at 8 warps): it needs wgmma + TMA with
// warp specialization (sm_90a, built with nvcc: NVRTC crashes on wgmma, see REFERENCE.md section 3).
// Split-K (quik_gemm_sk_*): at medium M on narrow layers (M = 128, N = 4096 gives 64 mid tiles for 132 SMs)
// each tile's K loop runs in slices on separate blocks, whose int32 sums a second kernel adds: exact, because
// integer addition is associative, so any slicing gives the unsplit kernel's bits (cuda._split_k: the rule).
// Smaller items: stage the epilogue through shared memory for 16-byte stores; a 4-tile-per-warp small-M
// variant at M 9..16; L2 evict-first hints on the streamed weights.

#include "quik_epilogue.cuh"
#include "quik_ptx.cuh"

namespace {

// ---------------------------------------------------------------------------------------------
// PTX helpers (the shared ones: quik_ptx.cuh)
// ---------------------------------------------------------------------------------------------
QDEV void ldmatrix_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

QDEV void lds64(unsigned addr, unsigned& lo, unsigned& hi) {
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(lo), "=r"(hi) : "r"(addr));
}

// Activations: re-read by every block, keep them in L1.
QDEV uint4 ldg_keep(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// D = A * B + D, 16x8x32, int8 inputs, int32 accumulators (wrap-around, never reached: see header).
QDEV void mma_s8(int* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

QDEV unsigned nib_even(unsigned x) { return (x << 4) & 0xF0F0F0F0u; }  // 16 * w[k + 2i]
QDEV unsigned nib_odd(unsigned x) { return x & 0xF0F0F0F0u; }          // 16 * w[k + 2i + 1]
QDEV unsigned bytes_even(unsigned lo, unsigned hi) { return __byte_perm(lo, hi, 0x6420); }
QDEV unsigned bytes_odd(unsigned lo, unsigned hi) { return __byte_perm(lo, hi, 0x7531); }

// ---------------------------------------------------------------------------------------------
// Tiled tensor-core kernel
// ---------------------------------------------------------------------------------------------
// Shared layouts (per stage): A tile [BM rows][64 B], W tile [BN rows][32 B] (w4) or [BN rows][64 B] (w8),
// stored in 16-byte chunks whose position is XORed with bits of the row:
//   64-byte rows: chunk' = chunk ^ (((row >> 1) & 1) << 1 | ((row >> 2) & 1))
//     - ldmatrix (8 rows, one chunk): rows 0,2,4,6 get 4 distinct chunks, rows 1,3,5,7 (other half of
//       the 128-byte line) likewise -> 32 distinct banks;
//     - 64-bit A loads of the w4 path (a half warp = rows g..g+3, chunks {2c, 2c+1}): rows g and g+2
//       land on disjoint chunk pairs -> conflict free;
//     - cp.async stores (8 consecutive rows x 4 chunks per warp): a permutation of each line.
//   32-byte rows: chunk' = chunk ^ ((row >> 2) & 1): rows 0-3 and 4-7 of an ldmatrix use opposite
//     halves of their lines -> 32 distinct banks.
QDEV unsigned swz64(int row, int chunk) {
    return (unsigned)(row * 64 + ((chunk ^ ((((row >> 1) & 1) << 1) | ((row >> 2) & 1))) << 4));
}
QDEV unsigned swz32(int row, int chunk) { return (unsigned)(row * 32 + ((chunk ^ ((row >> 2) & 1)) << 4)); }

// SPLIT (quik_gemm_sk_*, EP = i32 only): the grid is `splits` copies of the tile raster; copy s multiplies the K
// tiles [KT * s / splits, KT * (s + 1) / splits) and stores its int32 sums to out + s * M * N (quik_splitk_* adds
// the slices, exact in any order, and applies the epilogue).
template <int WBITS, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int EP, bool SPLIT = false>
QDEV void gemm_tiled(const signed char* __restrict__ A, const unsigned char* __restrict__ W, void* __restrict__ out,
                     int M, int N, int Kp, const EpiArgs& ep, int splits = 1) {
    static_assert(!SPLIT || EP == 0, "split-K blocks store int32 partial sums");
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    constexpr int MT = WM / 16, NT = WN / 8;
    constexpr int A_BYTES = BM * 64;
    constexpr int B_ROW = WBITS == 4 ? 32 : 64;
    constexpr int B_BYTES = BN * B_ROW;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    constexpr int A_ITERS = BM * 4 / THREADS;
    constexpr int B_CHUNKS = BN * B_ROW / 16;
    constexpr int B_ITERS = B_CHUNKS / THREADS;
    constexpr int SHIFT = WBITS == 4 ? 4 : 0;
    constexpr int GROUP_M = 16;
    static_assert(NT % 2 == 0, "ldmatrix.x4 loads n8 tiles in pairs");
    static_assert(A_ITERS * THREADS == BM * 4 && B_ITERS * THREADS == B_CHUNKS, "loads must tile evenly");

    extern __shared__ __align__(128) unsigned char smem[];
    const unsigned s_base = smem_addr(smem);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int mbase = wm * WM, nbase = wn * WN;

    int m0, n0, pid = blockIdx.x, kt0 = 0, KT = Kp >> 6;
    if constexpr (SPLIT)  // the slice's K tiles; its partial sums to plane sp of the temporary
        out = static_cast<int*>(out) + (size_t)split_slice<BM, BN>(M, N, splits, pid, kt0, KT) * M * N;
    grouped_tile<BM, BN, GROUP_M>(M, N, pid, m0, n0);
    const size_t w_row_bytes = WBITS == 4 ? (size_t)(Kp >> 1) : (size_t)Kp;

    // Per-thread global source rows of its cp.async chunks (fixed over k).
    // a_part / w_part: the activation and the weight halves (the prologue issues the weights' before
    // griddepcontrol.wait: they do not depend on the quantizer).
    auto load_stage = [&](int stage, int kt_rel, bool a_part = true, bool w_part = true) {  // K tile kt0 + kt_rel
        const int kt = kt0 + kt_rel;
        const unsigned sa = s_base + stage * STAGE_BYTES;
        const unsigned sb = sa + A_BYTES;
#pragma unroll
        for (int it = 0; it < A_ITERS && a_part; ++it) {
            const int q = tid + it * THREADS;
            const int row = q >> 2, c = q & 3;
            const int gm = m0 + row;
            const bool ok = gm < M;
            const signed char* src = ok ? A + (size_t)gm * Kp + (size_t)kt * 64 + c * 16 : A;
            cp_async16(sa + swz64(row, c), src, ok);
        }
#pragma unroll
        for (int it = 0; it < B_ITERS && w_part; ++it) {
            const int q = tid + it * THREADS;
            if constexpr (WBITS == 4) {
                const int row = q >> 1, c = q & 1;
                const int gn = n0 + row;
                const bool ok = gn < N;
                // K tile kt = half of 64-byte step kt / 2 (quik_ptx.cuh, w4_off)
                const unsigned char* src = ok ? W + w4_off(gn, kt >> 1, (kt & 1) * 32 + c * 16, N, (int)w_row_bytes)
                                              : W;
                cp_async16(sb + swz32(row, c), src, ok);
            } else {
                const int row = q >> 2, c = q & 3;
                const int gn = n0 + row;
                const bool ok = gn < N;
                const unsigned char* src = ok ? W + (size_t)gn * w_row_bytes + (size_t)kt * 64 + c * 16 : W;
                cp_async16(sb + swz64(row, c), src, ok);
            }
        }
    };

    // Fragments, double-buffered across the k32 steps (CUTLASS-style warp pipelining): the shared-memory
    // loads of step s+1 are issued before the MMAs of step s, and the first step of the next K tile is
    // loaded right after the barrier that publishes it, so no MMA waits on a load it just issued.
    //   w4: fa = raw activation words {row g: 8 bytes, row g+8: 8 bytes}, permuted to even/odd at use;
    //       fb = one packed weight word per n8 tile, unpacked (E/O) at use.
    //   w8: fa = the A fragment (ldmatrix), fb = the two B registers per n8 tile (ldmatrix).
    constexpr int FB = WBITS == 4 ? 1 : 2;
    unsigned fa[2][MT][4];
    unsigned fb[2][NT][FB];
    const int mat = lane >> 3;

    auto load_frags = [&](unsigned (&fa_)[MT][4], unsigned (&fb_)[NT][FB], int stage, int kc) {
        const unsigned sa = s_base + stage * STAGE_BYTES;
        const unsigned sb = sa + A_BYTES;
        if constexpr (WBITS == 4) {
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int row = mbase + 16 * i + g;
                const unsigned addr = sa + swz64(row, 2 * kc + (t >> 1)) + 8 * (t & 1);
                lds64(addr, fa_[i][0], fa_[i][1]);           // row g,     columns 32kc + 8t .. +7
                lds64(addr + 8 * 64, fa_[i][2], fa_[i][3]);  // row g + 8 (same swizzle: bits 1-2 of the row)
            }
            // ldmatrix.x4 = 4 n8 tiles of this k32 chunk: word of row (nbase + 8j + g), bytes 4t..4t+3
            // (columns 32kc + 8t .. +7).
#pragma unroll
            for (int j = 0; j < NT; j += 4) {
                const int row = nbase + 8 * (j + mat) + (lane & 7);
                ldmatrix_x4(sb + swz32(row, kc), fb_[j][0], fb_[j + 1][0], fb_[j + 2][0], fb_[j + 3][0]);
            }
        } else {
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int row = mbase + 16 * i + (lane & 7) + 8 * (mat & 1);
                ldmatrix_x4(sa + swz64(row, 2 * kc + (mat >> 1)), fa_[i][0], fa_[i][1], fa_[i][2], fa_[i][3]);
            }
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                const int row = nbase + 8 * (j + (mat >> 1)) + (lane & 7);
                ldmatrix_x4(sb + swz64(row, 2 * kc + (mat & 1)), fb_[j][0], fb_[j][1], fb_[j + 1][0], fb_[j + 1][1]);
            }
        }
    };

    int acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

    auto mma_step = [&](const unsigned (&fa_)[MT][4], const unsigned (&fb_)[NT][FB]) {
        if constexpr (WBITS == 4) {
            unsigned af[MT][4];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                af[i][0] = bytes_even(fa_[i][0], fa_[i][1]);
                af[i][1] = bytes_even(fa_[i][2], fa_[i][3]);
                af[i][2] = bytes_odd(fa_[i][0], fa_[i][1]);
                af[i][3] = bytes_odd(fa_[i][2], fa_[i][3]);
            }
            // Unpack every weight word before the MMA block, so no MMA waits on the ALU result it needs.
            unsigned eo[NT][2];
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                eo[j][0] = nib_even(fb_[j][0]);
                eo[j][1] = nib_odd(fb_[j][0]);
            }
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int i = 0; i < MT; ++i) mma_s8(acc[i][j], af[i], eo[j][0], eo[j][1]);
        } else {
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int i = 0; i < MT; ++i) mma_s8(acc[i][j], fa_[i], fb_[j][0], fb_[j][FB - 1]);
        }
    };

    // Pipeline invariant: before iteration kt, tiles kt .. kt+STAGES-2 are committed (one group each,
    // empty groups past the end), tile kt is visible to the block, and fa/fb[0] hold its first k32 step.
    // The prologue's weight halves go first, into group 0 (so waiting for group 0 waits for them too), then
    // griddepcontrol.wait: launched as a programmatic dependent launch of the quantizer (the launcher does that
    // for the split-K grids on sm_90), the block starts and fetches its weights while the quantizer runs;
    // launched plainly, the wait returns at once. Nothing the quantizer writes (A, a_scale, a_zero) is read
    // before it.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s)
        if (s < KT) load_stage(s, s, false, true);
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < KT) load_stage(s, s, true, false);
        cp_async_commit();
    }
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    load_frags(fa[0], fb[0], 0, 0);

    for (int kt = 0; kt < KT; ++kt) {
        // k32 step 0 of tile kt: prefetch step 1, refill the stage that held tile kt-1 (every thread
        // finished reading it before the barrier of the previous iteration), then the MMAs.
        load_frags(fa[1], fb[1], kt % STAGES, 1);
        {
            const int nk = kt + STAGES - 1;
            if (nk < KT) load_stage(nk % STAGES, nk);
            cp_async_commit();
        }
        mma_step(fa[0], fb[0]);
        // k32 step 1: wait for tile kt+1 (groups committed: STAGES + kt, needed: kt + 2), publish it,
        // prefetch its step 0, then the MMAs of step 1 of tile kt.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (kt + 1 < KT) load_frags(fa[0], fb[0], (kt + 1) % STAGES, 0);
        mma_step(fa[1], fb[1]);
    }
    cp_async_wait<0>();  // only empty groups can be pending; drain them before the block exits

    // Epilogue straight from the accumulator fragments: c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = row g+8.
    float ws[NT][2], su[NT][2];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int n = n0 + nbase + 8 * j + 2 * t + e;
            ws[j][e] = (EP != 0 && n < N) ? ep.w_scale[n] : 0.f;
            su[j][e] = (EP != 0 && n < N) ? ep.wsum[n] : 0.f;
        }
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + mbase + 16 * i + g + 8 * h;
            if (m >= M) continue;
            float sa = 0.f, za = 0.f;
            if (EP != 0) {
                sa = ep.a_scale[m];
                za = row_zero(ep, m);
            }
            // the row's y_base pairs first, all loads in flight together (quik_epilogue.cuh, load_y_pair)
            unsigned yy[NT];
#pragma unroll
            for (int j = 0; j < NT; ++j) yy[j] = load_y_pair<EP>(ep, N, m, n0 + nbase + 8 * j + 2 * t);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const int n = n0 + nbase + 8 * j + 2 * t;
                store_pair_y<EP>(out, ep, N, m, n, acc[i][j][2 * h] >> SHIFT, acc[i][j][2 * h + 1] >> SHIFT, sa, za,
                                 ws[j][0], ws[j][1], su[j][0], su[j][1], yy[j]);
            }
        }
}

// ---------------------------------------------------------------------------------------------
// The decode outlier product, fused into the small-M kernel (quik_gemvo_*; reference.outlier_sum):
//   s_l[m, n] = 0 (l < 4);  s_l = s_l + x[m, idx[j]] * w_out[n, j]  for j = 0 .. n_out - 1, l = j % 4;
//   s = (s_0 + s_1) + (s_2 + s_3);  s = s + bias[n]   (fp32)
// each product and each sum rounded to nearest, in that order, so every thread of any launch geometry
// gives the reference's bits. Four lanes, not one chain: the sums of a thread are dependent, and a 256-step
// chain at every block's end cost up to ~18% of a decode layer (docs/PERF_LOG.md, eighth session).
// fp16 inputs: the product of two fp16 values is exact in fp32 (11 + 11 significand bits, exponents within
// 2^-48 .. 2^32), so one fma.rn equals mul.rn then add.rn and saves an instruction; bf16 products can leave
// the fp32 range, so they keep the two roundings.
// ---------------------------------------------------------------------------------------------
struct OutlArgs {
    const unsigned short* x_out;  // [M, n_out] the tokens' outlier values (the quantizer's x_outlier)
    const unsigned short* w_out;  // [N, n_out] the outlier weights
    const unsigned short* bias;   // [N] or null
    int n_out;
    int chunk;                    // outlier columns of the weight tile staged at a time (launcher: all of
                                  // them when they fit; a multiple of 8 when n_out is)
};

// Dynamic shared memory of a quik_gemvo_* block (the launcher computes the same, cuda._gemvo_smem):
//   tile [ROWS][2 * chunk + 16 bytes]: the block's weight rows, `chunk` outlier columns at a time (the
//        16-byte pad spreads the rows that neighbouring lanes read over the banks);
//   xs   [M][n_out] 16-bit: a copy of x_out.
constexpr int OUTL_THREADS = 256;
// Independent partial sums per output (reference.outlier_sum, OUTLIER_LANES): column j goes to lane j % 4.
constexpr int OUTL_LANES = 4;
static_assert(OUTL_LANES == 4, "sums combines the lanes as (s0 + s1) + (s2 + s3)");

template <int EP>
QDEV float outl_step(float s, float x, float w) {
    if constexpr (EP == 1) {
        float r;
        asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(x), "f"(w), "f"(s));
        return r;
    } else {
        return add_rn(s, mul_rn(x, w));
    }
}

// Where the time goes (H100, docs/PERF_LOG.md sixth session): a sequential chain of n_out dependent fp32
// operations per output is short (~4 cycles each), but loads on the way are not. The first version walked
// each weight row with dependent 16-byte global loads before the main loop (decode layers x1.0-1.3 slower
// than cuBLAS's separate product); the second staged the tile but kept a bounds check per column in the
// chain (serialised shared-memory latency) and gathered x through the outlier indices before the main loop
// (a dependent load at every block's start). Now: the weight tile is copied by cp.async before
// griddepcontrol.wait (weights do not depend on the quantizer), the quantizer's own copy of the outlier
// values (x_out) by cp.async right after it, both land during the main loop, and the chains run on 8 columns at
// a time whose operands are loaded together: inside the main loop where gemvo_inter says so (thirteenth session:
// after it they cost 4 of 66 us at M = 1 and 13 of 79 us at M = 16 on 8192 x 28672), else after it.
// Tried and removed (thirteenth session, docs/PERF_LOG.md v14b, v14c): one lane's chain per thread over x
// converted to fp32 once per block; exact, not faster.
template <int EP, int MTOK, int ROWS>
struct OutlierProduct {
    static constexpr int PAIRS = (MTOK * ROWS + OUTL_THREADS - 1) / OUTL_THREADS;
    static_assert(PAIRS <= 4, "sums dispatches on up to 4 chains per thread");
    bool vec;  // 16-byte copies and reads (n_out % 8 == 0, w_out and x_out 16-byte aligned)

    QDEV static int row_bytes(const OutlArgs& ol) { return 2 * ol.chunk + 16; }

    // Before griddepcontrol.wait: the first chunk of the weight tile (cp.async, when vec).
    QDEV void issue_weights(const OutlArgs& ol, int N, int n0, unsigned char* smem) {
        vec = (ol.n_out & 7) == 0 && ((reinterpret_cast<size_t>(ol.w_out) | reinterpret_cast<size_t>(ol.x_out)) & 15) == 0;
        if (vec) load_tile(ol, N, n0, 0, smem);
    }

    // After griddepcontrol.wait (x_out is the quantizer's output): x_out into xs (cp.async, when vec).
    QDEV void issue_x(const OutlArgs& ol, int M, unsigned char* smem) const {
        if (!vec) return;
        unsigned char* xs = smem + ROWS * row_bytes(ol);
        for (int p = threadIdx.x; p < (M * ol.n_out) >> 3; p += OUTL_THREADS)
            cp_async16(smem_addr(xs + 16 * p), ol.x_out + 8 * p);
        cp_async_commit();
    }

    // One chunk of the weight tile into shared memory: cp.async when vec (completes later), else plain copies.
    QDEV void load_tile(const OutlArgs& ol, int N, int n0, int j0, unsigned char* tile) const {
        const int nj = min(ol.chunk, ol.n_out - j0), rb = row_bytes(ol);
        if (vec) {
            const int per_row = nj >> 3;  // 16-byte pieces per row
            for (int p = threadIdx.x; p < ROWS * per_row; p += OUTL_THREADS) {
                const int r = p / per_row, q = p - r * per_row;
                const bool in = n0 + r < N;
                const unsigned short* src = ol.w_out + (size_t)(in ? n0 + r : 0) * ol.n_out + j0 + 8 * q;
                cp_async16(smem_addr(tile + r * rb + 16 * q), src, in);
            }
            cp_async_commit();
        } else {
            for (int p = threadIdx.x; p < ROWS * nj; p += OUTL_THREADS) {
                const int r = p / nj, j = p - r * nj;
                reinterpret_cast<unsigned short*>(tile + r * rb)[j] =
                    n0 + r < N ? ol.w_out[(size_t)(n0 + r) * ol.n_out + j0 + j] : (unsigned short)0;
            }
        }
    }

    // The chains of this thread's first NI tokens (xo: their rows of xs) over columns j0 .. j0 + nj of the
    // tile row `row`: column j goes to lane j % OUTL_LANES of its token (reference.outlier_sum's order).
    // LOOP: called inside the main loop (gemv, interleaved: vec holds; one 8-column group at a time, to keep the
    // main loop's registers).
    template <int NI, bool LOOP>
    QDEV void chains(const OutlArgs& ol, const unsigned char* row, const unsigned short* xs, const int (&xo)[PAIRS],
                     int j0, int nj, float (&acc)[PAIRS][OUTL_LANES]) const {
        // vec: nj % 8 == 0, j0 % 8 == 0: column j0 + j + q is in lane q % 4; rows and xs rows 16-byte aligned
        if (LOOP || vec) {
#pragma unroll(LOOP ? 1 : 2)
            for (int j = 0; j < nj; j += 8) {
                const uint4 wv = *reinterpret_cast<const uint4*>(row + 2 * j);
                uint4 xv[NI];
#pragma unroll
                for (int i = 0; i < NI; ++i) xv[i] = *reinterpret_cast<const uint4*>(xs + xo[i] + j0 + j);
                const unsigned wu[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
                for (int q = 0; q < 8; ++q) {
                    const float wf = load_f32<EP>((unsigned short)(wu[q / 2] >> (16 * (q & 1))));
#pragma unroll
                    for (int i = 0; i < NI; ++i) {
                        const unsigned xu[4] = {xv[i].x, xv[i].y, xv[i].z, xv[i].w};
                        const float xf = load_f32<EP>((unsigned short)(xu[q / 2] >> (16 * (q & 1))));
                        acc[i][q % OUTL_LANES] = outl_step<EP>(acc[i][q % OUTL_LANES], xf, wf);
                    }
                }
            }
        } else {
            const unsigned short* r16 = reinterpret_cast<const unsigned short*>(row);
            for (int j = 0; j < nj; ++j) {
                const float wf = load_f32<EP>(r16[j]);
                const int lj = (j0 + j) % OUTL_LANES;
#pragma unroll
                for (int i = 0; i < NI; ++i) {
                    const float xf = load_f32<EP>(xs[xo[i] + j0 + j]);
#pragma unroll
                    for (int l = 0; l < OUTL_LANES; ++l)  // a select per lane: a runtime index would put acc in local memory
                        if (l == lj) acc[i][l] = outl_step<EP>(acc[i][l], xf, wf);
                }
            }
        }
    }

    // The chains' state: acc (lane sums of this thread's tokens), xo (their rows of xs), ni (how many are < M).
    float acc[PAIRS][OUTL_LANES];
    int xo[PAIRS];
    int ni;

    // Output i of this thread: token tid / ROWS + i * (OUTL_THREADS / ROWS), feature n0 + tid % ROWS. Only the
    // chains of tokens < M run (a prefix of i, ni of them; whole warps skip when ROWS >= 32): at M = 1 the 8-token
    // kernels used to run all 8 chains and store one.
    QDEV void begin(const OutlArgs& ol, int M) {
        constexpr int MSTEP = OUTL_THREADS / ROWS;
        const int m0 = threadIdx.x / ROWS;
        ni = m0 < M ? min(PAIRS, (M - m0 + MSTEP - 1) / MSTEP) : 0;
#pragma unroll
        for (int i = 0; i < PAIRS; ++i) {
            xo[i] = min(m0 + i * MSTEP, M - 1) * ol.n_out;
#pragma unroll
            for (int l = 0; l < OUTL_LANES; ++l) acc[i][l] = 0.f;
        }
    }

    // The chains over columns j0 .. j0 + nj, held in the tile chunk that starts at column c0 (j0 - c0 and, when
    // vec, nj multiples of 8).
    template <bool LOOP>
    QDEV void part(const OutlArgs& ol, int N, int n0, const unsigned char* smem, int c0, int j0, int nj) {
        const int nl = threadIdx.x % ROWS, rb = row_bytes(ol);
        if (n0 + nl >= N || ni == 0 || nj <= 0) return;
        const unsigned short* xs = reinterpret_cast<const unsigned short*>(smem + ROWS * rb);  // [M][n_out]
        const unsigned char* row = smem + nl * rb + 2 * (j0 - c0);
        if (ni == PAIRS) {
            chains<PAIRS, LOOP>(ol, row, xs, xo, j0, nj, acc);
        } else if constexpr (PAIRS > 1) {
            if (ni == 1) {
                chains<1, LOOP>(ol, row, xs, xo, j0, nj, acc);
            } else if constexpr (PAIRS > 2) {
                if (ni == 2) chains<2, LOOP>(ol, row, xs, xo, j0, nj, acc);
                else if constexpr (PAIRS > 3) chains<3, LOOP>(ol, row, xs, xo, j0, nj, acc);  // PAIRS <= 4
            }
        }
    }

    // os[i] = the sum of output i, the value this thread adds in the epilogue.
    QDEV void finish(const OutlArgs& ol, int N, int n0, float (&os)[PAIRS]) const {
        const int n = n0 + threadIdx.x % ROWS;
        const float b = ol.bias && n < N ? load_f32<EP>(ol.bias[n]) : 0.f;
#pragma unroll
        for (int i = 0; i < PAIRS; ++i) {
            os[i] = add_rn(add_rn(acc[i][0], acc[i][1]), add_rn(acc[i][2], acc[i][3]));  // (s0 + s1) + (s2 + s3)
            if (ol.bias) os[i] = add_rn(os[i], b);
        }
    }

    // All of it after the main loop, chunk by chunk (the path when the chains are not interleaved with the main
    // loop: see gemv). All threads call it (block barriers).
    QDEV void sums(const OutlArgs& ol, int M, int N, int n0, unsigned char* smem, float (&os)[PAIRS]) {
        begin(ol, M);
        if (!vec) {
            unsigned short* xs = reinterpret_cast<unsigned short*>(smem + ROWS * row_bytes(ol));
            for (int e = threadIdx.x; e < M * ol.n_out; e += OUTL_THREADS) xs[e] = ol.x_out[e];
        }
        for (int j0 = 0; j0 < ol.n_out; j0 += ol.chunk) {
            const int nj = min(ol.chunk, ol.n_out - j0);
            if (j0 > 0 || !vec) {
                __syncthreads();  // the previous chunk's readers are done with the tile
                load_tile(ol, N, n0, j0, smem);
            }
            cp_async_wait<0>();
            __syncthreads();
            part<false>(ol, N, n0, smem, j0, j0, nj);
        }
        finish(ol, N, n0, os);
    }
};

// ---------------------------------------------------------------------------------------------
// Small-M kernel (M <= MTOK, MTOK = 8 or 16)
// ---------------------------------------------------------------------------------------------
// LINES (the *_m16*_ln entry points): the weights are loaded as whole 128-byte lines (4 rows x 128 bytes per
// load instruction) and put into the fragment layout by warp shuffles, rather than loaded where the fragment
// needs them (8 rows x 64 bytes per instruction: half of 8 lines). A diagnostic build that loaded whole lines
// without the shuffles (wrong sums) took x0.78-0.97 of the time on the 70B shapes at M = 1 / 16; with the
// shuffles the 16-token kernels took x0.82-0.90 there and the 8-token ones x1.06-1.09 (2 -> 1 blocks per SM),
// so only the 16-token kernels have it (docs/PERF_LOG.md, eleventh session). It costs registers (2 blocks
// per SM where the fragment kernels fit 3 or more): the launcher keeps the fragment kernel where that makes
// a one-wave grid two waves (cuda._gemv_lines).
// Since the twelfth session 4-bit weights are stored in the tiled layout (quik_ptx.cuh, w4_off), where the
// fragment kernels' loads are whole lines too (one 512-byte block per instruction); for them LINES now only
// changes the split of the steps over the warps and the register count. The rule's A/B (s12d, W4A4 at M = 16,
// where the choice differs): x0.95-1.05 without outliers, x0.93-0.98 with 256 (identical kernels differed by
// x0.93-1.05 in that run). 8-bit weights stay row-major, where it matters (x0.76-0.93 at M = 16, s12c).
QDEV uint4 shfl4(const uint4& v, int src) {
    return make_uint4(__shfl_sync(0xffffffffu, v.x, src), __shfl_sync(0xffffffffu, v.y, src),
                      __shfl_sync(0xffffffffu, v.z, src), __shfl_sync(0xffffffffu, v.w, src));
}
// A "step" is 64 bytes of every weight row: 128 columns (w4) or 64 columns (w8). Lane (g, t) loads the
// 16 bytes at 16t of the step for feature rows g and g + 8 of each of the warp's two 16-row tiles, and
// the matching activation bytes of token rows g (and g + 8 when MTOK == 16):
//   w4: weight word j (j = 0..3) covers columns c = 128s + 32t + 8j .. +7 -> mma j uses
//       A = {E(row g), E(row g+8), O(row g), O(row g+8)}, B = {even bytes, odd bytes} of act[c .. c+7]
//       (act bytes 128s + 32t .. +31: two 16-byte loads per token row)
//   w8: mma jj (jj = 0, 1) uses weight words 2jj, 2jj+1 = columns 64s + 16t + 8jj .. +7, natural order,
//       B = act words 2jj, 2jj+1 of the 16 bytes at 64s + 16t
// For w4 the last step may be half (Kp % 128 == 64): lanes t = 2, 3 then have no columns and load zeros.
template <int WBITS, int MTOK, int EP, int NTW, int U, bool PIPE, bool OUTL = false, bool LINES = false,
          bool INTER = false>
QDEV void gemv(const signed char* __restrict__ A, const unsigned char* __restrict__ W, void* __restrict__ out,
               int M, int N, int Kp, const EpiArgs& ep, const OutlArgs& ol = OutlArgs{}) {
    // NTW = 16-row weight tiles per block (ROWS = 16 * NTW output features), U = steps in flight per warp.
    // PIPE: software pipeline across iterations (two register sets: the next U steps' loads are issued
    // before this iteration's MMAs, so a warp always has loads in flight); otherwise load, then compute.
    // Measured on H100 (8192 x 28672, w4, NTW = 2): U = 4 streams 2.75 TB/s at M <= 8 (2.44 with U = 2);
    // at M <= 16 the extra activation registers make U = 4 no better. NTW = 1 halves the block's rows
    // (twice the blocks: a smaller last wave) and doubles U to keep the bytes in flight.
    // OUTL: the outlier product (OutlierProduct): loads issued before griddepcontrol.wait, sums in or after the loop.
    constexpr int WARPS = 8, TT = MTOK / 8;
    constexpr int AW = WBITS == 4 ? 2 : 1;  // 16-byte activation loads per token row per step
    constexpr int SHIFT = WBITS == 4 ? 4 : 0;
    constexpr int ROWS = 16 * NTW;          // output features per block
    constexpr int PAIRS = (MTOK * ROWS + WARPS * 32 - 1) / (WARPS * 32);  // epilogue outputs per thread
    // Row stride ROWS + 4: a fragment store (lanes g, t -> token 2t (+1), row g) then hits banks g + 8t, all 32
    // distinct (with ROWS + 1 they were g + 2t: 4-way conflicts, 75% of the stores' wavefronts in ncu, s8d).
    __shared__ int red[WARPS][MTOK][ROWS + 4];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * ROWS;
    const size_t w_row_bytes = WBITS == 4 ? (size_t)(Kp >> 1) : (size_t)Kp;
    const int S = (int)((w_row_bytes + 63) >> 6);  // steps of 64 weight bytes
    // The 256-byte L2 prefetch hint on the weight loads of long rows (quik_ptx.cuh, ldg_stream_l2), for
    // M <= 8 only. H100 layer A/B (docs/PERF_LOG.md, fourth session): the hint on every load was x0.93-0.97
    // with 14336-byte rows (K = 28672, w4) and x1.00-1.03 with 5504 bytes or fewer; this form (a uniform
    // branch per launch) gave M = 1 x0.90-1.01 on the nine LLaMA-2 shapes but M = 16 up to x1.2, so the
    // MTOK = 16 kernels keep the plain loads (the branch folds away).
    const bool long_rows = MTOK == 8 && w_row_bytes >= 6144;
    // byte o (< 64) of step s of weight row n (wb = 64 s + o): the 4-bit layout of quik_ptx.cuh (w4_off), 8-bit
    // row-major
    auto wptr = [&](int n, int s, int o, size_t wb) -> const unsigned char* {
        if constexpr (WBITS == 4) return W + w4_off(n, s, o, N, (int)w_row_bytes);
        else return W + (size_t)n * w_row_bytes + wb;
    };

    int acc[NTW][TT][4];
#pragma unroll
    for (int a = 0; a < NTW; ++a)
#pragma unroll
        for (int b = 0; b < TT; ++b)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[a][b][r] = 0;

    // Programmatic dependent launch (sm_90): the launcher may start this grid while the activation
    // quantizer that produces A, a_scale and a_zero is still running. Before waiting for it, ask L2 for
    // the first weight steps (they do not depend on it); griddepcontrol.wait then blocks until the
    // quantizer's grid has completed and its writes are visible. Launched normally, the wait is a no-op.
#if __CUDA_ARCH__ >= 900
#pragma unroll
    for (int u = 0; u < 2 * U; ++u) {
        const int s = warp + u * WARPS;
        const size_t wb = (size_t)s * 64 + 32 * (t >> 1);  // one prefetch per 32-byte sector
        if (s < S && wb < w_row_bytes && (t & 1) == 0) {
#pragma unroll
            for (int a = 0; a < NTW; ++a)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int n = n0 + 16 * a + g + 8 * h;
                    if (n < N) asm volatile("prefetch.global.L2 [%0];" ::"l"(wptr(n, s, 32 * (t >> 1), wb)));
                }
        }
    }
#endif
    extern __shared__ __align__(16) unsigned char outl_smem[];  // OUTL only (OutlierProduct)
    OutlierProduct<EP, MTOK, ROWS> outl;
    if constexpr (OUTL) outl.issue_weights(ol, N, n0, outl_smem);
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    if constexpr (OUTL) outl.issue_x(ol, M, outl_smem);
    const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);
    using WV = uint4[U][NTW][2];
    using AV = uint4[U][TT][AW];
    // LINES: the 16-token kernels only (the 8-token ones were slower with it); the outlier-fused ones with it
    // are built for 2 blocks per SM (under their fragment kernels' bounds of 3-4 they spilled).
    static_assert(!LINES || (U % 2 == 0 && MTOK == 16 && !PIPE), "LINES: 16 tokens, steps in pairs");
    // LINES: the weights of the adjacent steps s, s + 1 (128 bytes of each of the block's rows) go to the
    // fragments w0 (step s) and w1 (step s + 1) in two phases. lines_load: for tile a and half h, two loads of
    // whole lines; lane (r, c) = (lane / 8, lane % 8) reads chunk c (16 bytes at 64 s + 16 c) of row 16 a + 8 h
    // + r into w0[a][h] (L0) and of that row + 4 into w1[a][h] (L1). lines_frag, once all loads of the
    // iteration are issued (a shuffle waits for its operand): fragment lane (g, t) needs chunk t (w0) and chunk
    // 4 + t (w1) of row 16 a + 8 h + g, i.e. from lane 8 (g % 4) + t (+ 4) of L0 (g < 4) or L1 (g >= 4). Lanes
    // c >= 4 first swap L0 and L1, so that each of two shuffles serves every lane: M0 gives g < 4 its w0 and
    // g >= 4 its w1, M1 the other halves.
    auto lines_load = [&](int s, uint4 (&w0)[NTW][2], uint4 (&w1)[NTW][2]) {
        const int r = lane >> 3, c = lane & 7;
        const size_t wb = (size_t)s * 64 + 16 * c;
        const bool kok = s < S && wb < w_row_bytes;  // covers a half last step and an odd step count
#pragma unroll
        for (int a = 0; a < NTW; ++a)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int q = 0; q < 2; ++q) {
                    const int n = n0 + 16 * a + 8 * h + 4 * q + r;
                    const unsigned char* p = wptr(n, s + (c >> 2), 16 * (c & 3), wb);  // chunk c: step s or s + 1
                    (q ? w1 : w0)[a][h] = kok && n < N ? (long_rows ? ldg_stream_l2(p) : ldg_stream(p)) : zero4;
                }
    };
    auto lines_frag = [&](uint4 (&w0)[NTW][2], uint4 (&w1)[NTW][2]) {
        const int c = lane & 7;
        const int src0 = 8 * (g & 3) + t + (g < 4 ? 0 : 4), src1 = 8 * (g & 3) + t + (g < 4 ? 4 : 0);
#pragma unroll
        for (int a = 0; a < NTW; ++a)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const uint4 m0 = c < 4 ? w0[a][h] : w1[a][h], m1 = c < 4 ? w1[a][h] : w0[a][h];
                const uint4 x0 = shfl4(m0, src0), x1 = shfl4(m1, src1);
                w0[a][h] = g < 4 ? x0 : x1;
                w1[a][h] = g < 4 ? x1 : x0;
            }
    };
    // The weight and activation registers of the warp's U steps of the iteration that starts at step s0 - warp
    // (zeros past S). LINES: steps in pairs of adjacent steps, 2 warp + {0, 1} + 16 j, whose weights are
    // loaded as whole 128-byte lines (lines_frag then moves them into the fragment layout by warp shuffles);
    // otherwise steps warp + WARPS u, each lane's 16 bytes loaded where the fragment needs them.
    auto load = [&](int s0, WV& wv, AV& av) {
        if constexpr (LINES) {
#pragma unroll
            for (int j = 0; j < U / 2; ++j) lines_load((s0 - warp) + 16 * j + 2 * warp, wv[2 * j], wv[2 * j + 1]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int s = LINES ? (s0 - warp) + 16 * (u / 2) + 2 * warp + (u % 2) : s0 + u * WARPS;
            const size_t wb = (size_t)s * 64 + 16 * t;  // weight byte offset within a row
            const bool kok = s < S && wb < w_row_bytes;
#pragma unroll
            for (int a = 0; a < (LINES ? 0 : NTW); ++a)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int n = n0 + 16 * a + g + 8 * h;
                    if (kok && n < N) {
                        const unsigned char* p = wptr(n, s, 16 * t, wb);
                        wv[u][a][h] = long_rows ? ldg_stream_l2(p) : ldg_stream(p);
                    } else {
                        wv[u][a][h] = zero4;
                    }
                }
            const size_t ab = WBITS == 4 ? (size_t)s * 128 + 32 * t : (size_t)s * 64 + 16 * t;  // act column
#pragma unroll
            for (int b = 0; b < TT; ++b) {
                const int m = 8 * b + g;
#pragma unroll
                for (int q = 0; q < AW; ++q)
                    av[u][b][q] = (kok && m < M) ? ldg_keep(A + (size_t)m * Kp + ab + 16 * q) : zero4;
            }
        }
    };
    auto compute_u = [&](const WV& wv, const AV& av, int u) {  // the MMAs of step u of the iteration
        if constexpr (WBITS == 4) {
            unsigned bfr[TT][4][2];
#pragma unroll
            for (int b = 0; b < TT; ++b) {
                const unsigned x[8] = {av[u][b][0].x, av[u][b][0].y, av[u][b][0].z, av[u][b][0].w,
                                       av[u][b][1].x, av[u][b][1].y, av[u][b][1].z, av[u][b][1].w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    bfr[b][j][0] = bytes_even(x[2 * j], x[2 * j + 1]);
                    bfr[b][j][1] = bytes_odd(x[2 * j], x[2 * j + 1]);
                }
            }
#pragma unroll
            for (int a = 0; a < NTW; ++a) {
                const unsigned w0[4] = {wv[u][a][0].x, wv[u][a][0].y, wv[u][a][0].z, wv[u][a][0].w};
                const unsigned w1[4] = {wv[u][a][1].x, wv[u][a][1].y, wv[u][a][1].z, wv[u][a][1].w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const unsigned af[4] = {nib_even(w0[j]), nib_even(w1[j]), nib_odd(w0[j]), nib_odd(w1[j])};
#pragma unroll
                    for (int b = 0; b < TT; ++b) mma_s8(acc[a][b], af, bfr[b][j][0], bfr[b][j][1]);
                }
            }
        } else {
#pragma unroll
            for (int a = 0; a < NTW; ++a) {
                const unsigned w0[4] = {wv[u][a][0].x, wv[u][a][0].y, wv[u][a][0].z, wv[u][a][0].w};
                const unsigned w1[4] = {wv[u][a][1].x, wv[u][a][1].y, wv[u][a][1].z, wv[u][a][1].w};
#pragma unroll
                for (int jj = 0; jj < 2; ++jj) {
                    const unsigned af[4] = {w0[2 * jj], w1[2 * jj], w0[2 * jj + 1], w1[2 * jj + 1]};
#pragma unroll
                    for (int b = 0; b < TT; ++b) {
                        const unsigned x[4] = {av[u][b][0].x, av[u][b][0].y, av[u][b][0].z, av[u][b][0].w};
                        mma_s8(acc[a][b], af, x[2 * jj], x[2 * jj + 1]);
                    }
                }
            }
        }
    };
    auto compute = [&](const WV& wv, const AV& av) {
#pragma unroll
        for (int u = 0; u < U; ++u) compute_u(wv, av, u);
    };
    constexpr int STRIDE = WARPS * U;  // steps per iteration of the whole block
    auto mmas = [&](WV& wv, const AV& av) {  // the MMAs of one iteration, once its loads are issued
        if constexpr (LINES) {  // pair by pair: a pair's shuffles wait only for its own loads
#pragma unroll
            for (int j = 0; j < U / 2; ++j) {
                lines_frag(wv[2 * j], wv[2 * j + 1]);
                compute_u(wv, av, 2 * j);
                compute_u(wv, av, 2 * j + 1);
            }
        } else {
            compute(wv, av);
        }
    };
    // OUTL, interleaved: the outlier chains run inside the main loop, a slice of the columns per iteration from the
    // second one on, while that iteration's weight loads are in flight (after the main loop they cost 4 us of 66 at
    // M = 1 and 13 of 79 at M = 16 on 8192 x 28672: docs/PERF_LOG.md, thirteenth session). The trip count is then
    // the same for every warp (a warp past S loads zeros, which add nothing), because the first iteration ends with
    // a block barrier that makes every thread's cp.async copies (tile, x_out) visible. Only with 16-byte copies and
    // the whole tile in one chunk; otherwise the chains run after the loop (OutlierProduct::sums).
    bool inter = false;
    if constexpr (OUTL && INTER) inter = outl.vec && ol.chunk >= ol.n_out && ol.n_out > 0;
    if constexpr (!PIPE) {
        if (!inter) {
            for (int s0 = warp; s0 < S; s0 += STRIDE) {
                WV wv;
                AV av;
                load(s0, wv, av);
                mmas(wv, av);
            }
        } else if constexpr (OUTL && INTER) {
            outl.begin(ol, M);
            const int nit = (S + STRIDE - 1) / STRIDE, g8 = ol.n_out >> 3;
            const int per = nit > 1 ? (g8 + nit - 2) / (nit - 1) : 0;  // 8-column groups per iteration
            for (int it = 0; it < nit; ++it) {
                WV wv;
                AV av;
                load(warp + it * STRIDE, wv, av);
                if (it > 0) {  // while this iteration's loads are in flight
                    const int j0 = 8 * min(g8, (it - 1) * per);
                    outl.template part<true>(ol, N, n0, outl_smem, 0, j0, 8 * min(g8, it * per) - j0);
                }
                mmas(wv, av);
                if (it == 0) {
                    cp_async_wait<0>();
                    __syncthreads();
                }
            }
            const int done = 8 * min(g8, (nit - 1) * per);
            outl.template part<false>(ol, N, n0, outl_smem, 0, done, ol.n_out - done);
        }
    } else {  // two register sets, unrolled by 2 so that each keeps fixed registers
        WV w0, w1;
        AV a0, a1;
        if (warp < S) load(warp, w0, a0);
        for (int s0 = warp; s0 < S; s0 += 2 * STRIDE) {
            if (s0 + STRIDE < S) load(s0 + STRIDE, w1, a1);
            compute(w0, a0);
            if (s0 + STRIDE >= S) break;
            if (s0 + 2 * STRIDE < S) load(s0 + 2 * STRIDE, w0, a0);
            compute(w1, a1);
        }
    }

    float osum[PAIRS];
    if constexpr (OUTL) {
        static_assert(WARPS * 32 == OUTL_THREADS && PAIRS == OutlierProduct<EP, MTOK, ROWS>::PAIRS);
        if (inter) outl.finish(ol, N, n0, osum);
        else outl.sums(ol, M, N, n0, outl_smem, osum);
    }

    // Split-K reduction over the 8 warps. Fragment: c0, c1 = (feature g, tokens 2t, 2t+1), c2, c3 = g + 8.
#pragma unroll
    for (int a = 0; a < NTW; ++a)
#pragma unroll
        for (int b = 0; b < TT; ++b)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int m = 8 * b + 2 * t + (r & 1);
                const int nl = 16 * a + g + 8 * (r >> 1);
                red[warp][m][nl] = acc[a][b][r];
            }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < PAIRS; ++i) {
        const int o = tid + i * WARPS * 32;
        if (o >= MTOK * ROWS) break;
        const int m = o / ROWS, nl = o % ROWS;  // a warp writes 32 consecutive features of one token
        const int n = n0 + nl;
        if (m >= M || n >= N) continue;
        int v = 0;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) v += red[w][m][nl];
        v >>= SHIFT;
        const size_t idx = (size_t)m * N + n;
        if constexpr (EP == 0) {
            reinterpret_cast<int*>(out)[idx] = v;
        } else {
            float f = epilogue_f32(v, ep.a_scale[m], row_zero(ep, m), ep.w_scale[n], ep.wsum[n]);
            if constexpr (OUTL) f = add_rn(f, osum[i]);
            if (ep.y_base) f = add_rn(f, load_f32<EP>(reinterpret_cast<const unsigned short*>(ep.y_base)[idx]));
            reinterpret_cast<unsigned short*>(out)[idx] = store_bits<EP>(f);
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points. Tile configurations (the launcher mirrors them):
//   big: BM 128, BN 256, warps 2 x 4 (warp tile 64 x 64), 4 stages, 256 threads
//   mid: BM  64, BN 128, warps 2 x 2 (warp tile 32 x 64), 4 stages, 128 threads
// ---------------------------------------------------------------------------------------------
#define QUIK_TILED(NAME, WB, EP, BM, BN, WMW, WNW, THREADS)                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS, 1)                                                       \
    NAME(const signed char* A, const unsigned char* W, void* out, int M, int N, int Kp, const float* a_scale,      \
         const float* a_zero, float a_shift, const float* w_scale, const float* wsum, const void* y_base) {        \
        const EpiArgs ep = {a_scale, a_zero, w_scale, wsum, y_base, a_shift};                                      \
        gemm_tiled<WB, BM, BN, WMW, WNW, 4, EP>(A, W, out, M, N, Kp, ep);                                          \
    }

#define QUIK_TILED_ALL(EPNAME, EP)                                      \
    QUIK_TILED(quik_gemm_##EPNAME##_w4_big, 4, EP, 128, 256, 2, 4, 256) \
    QUIK_TILED(quik_gemm_##EPNAME##_w8_big, 8, EP, 128, 256, 2, 4, 256) \
    QUIK_TILED(quik_gemm_##EPNAME##_w4_mid, 4, EP, 64, 128, 2, 2, 128)  \
    QUIK_TILED(quik_gemm_##EPNAME##_w8_mid, 8, EP, 64, 128, 2, 2, 128)

QUIK_TILED_ALL(i32, 0)
QUIK_TILED_ALL(f16, 1)
QUIK_TILED_ALL(bf16, 2)

// quik_gemm_sk_*: the mid tiles split along K (gemm_tiled, SPLIT): grid = splits * ceil(M/64) * ceil(N/128),
// part int32 [splits, M, N] (every element written), 1 <= splits <= Kp / 64; quik_splitk_* finishes the product.
#define QUIK_TILED_SK(NAME, WB)                                                                                    \
    extern "C" __global__ void __launch_bounds__(128, 1)                                                           \
    NAME(const signed char* A, const unsigned char* W, int* part, int M, int N, int Kp, int splits) {             \
        const EpiArgs ep = {nullptr, nullptr, nullptr, nullptr, nullptr, 0.f};                                    \
        gemm_tiled<WB, 64, 128, 2, 2, 4, 0, true>(A, W, part, M, N, Kp, ep, splits);                               \
    }
QUIK_TILED_SK(quik_gemm_sk_w4_mid, 4)
QUIK_TILED_SK(quik_gemm_sk_w8_mid, 8)

#define QUIK_GEMV_PL(NAME, WB, MTOK, EP, NTW, U, PIPE, LINES)                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                                              \
    NAME(const signed char* A, const unsigned char* W, void* out, int M, int N, int Kp, const float* a_scale,      \
         const float* a_zero, float a_shift, const float* w_scale, const float* wsum, const void* y_base) {        \
        const EpiArgs ep = {a_scale, a_zero, w_scale, wsum, y_base, a_shift};                                      \
        gemv<WB, MTOK, EP, NTW, U, PIPE, false, LINES>(A, W, out, M, N, Kp, ep);                                   \
    }
#define QUIK_GEMV_P(NAME, WB, MTOK, EP, NTW, U, PIPE) QUIK_GEMV_PL(NAME, WB, MTOK, EP, NTW, U, PIPE, false)
#define QUIK_GEMV(NAME, WB, MTOK, EP, NTW, U) QUIK_GEMV_P(NAME, WB, MTOK, EP, NTW, U, false)

// quik_gemv_*_mT: 32 output features per block (NTW 2); *_mT_r16: 16 per block (NTW 1), twice the U;
// *_mT_r64: 64 per block (NTW 4), half the U at M <= 8, the same U (2) at M <= 16 (with one step in flight
// the 16-token r64 kernel was slower than r32 on every shape: docs/PERF_LOG.md, seventh session, s7t): every
// block reads all M x Kp activation bytes once, so at M = 16 the r16 blocks pull twice as many activation
// bytes through L2 as there are weight bytes.
// QUIK_GEMV_CONFIGS(X, PREFIX, EP) calls X(name, WB, MTOK, EP, NTW, U) for each of the 12 configurations
// (the plain and the outlier-fused entry points share them).
#define QUIK_GEMV_CONFIGS(X, PREFIX, EP)              \
    X(PREFIX##_w4_m8, 4, 8, EP, 2, 4)                 \
    X(PREFIX##_w4_m16, 4, 16, EP, 2, 2)               \
    X(PREFIX##_w8_m8, 8, 8, EP, 2, 4)                 \
    X(PREFIX##_w8_m16, 8, 16, EP, 2, 2)               \
    X(PREFIX##_w4_m8_r16, 4, 8, EP, 1, 8)             \
    X(PREFIX##_w4_m16_r16, 4, 16, EP, 1, 4)           \
    X(PREFIX##_w8_m8_r16, 8, 8, EP, 1, 8)             \
    X(PREFIX##_w8_m16_r16, 8, 16, EP, 1, 4)           \
    X(PREFIX##_w4_m8_r64, 4, 8, EP, 4, 2)             \
    X(PREFIX##_w4_m16_r64, 4, 16, EP, 4, 2)           \
    X(PREFIX##_w8_m8_r64, 8, 8, EP, 4, 2)             \
    X(PREFIX##_w8_m16_r64, 8, 16, EP, 4, 2)
#define QUIK_GEMV_ALL(EPNAME, EP) QUIK_GEMV_CONFIGS(QUIK_GEMV, quik_gemv_##EPNAME, EP)

QUIK_GEMV_ALL(i32, 0)
QUIK_GEMV_ALL(f16, 1)
QUIK_GEMV_ALL(bf16, 2)

// quik_gemv_*_m16*_ln: the 16-token configurations with LINES (whole-line weight loads, see gemv).
#define QUIK_GEMV_LN(NAME, WB, MTOK, EP, NTW, U) QUIK_GEMV_PL(NAME, WB, MTOK, EP, NTW, U, false, true)
#define QUIK_GEMV_LN_ALL(EPNAME, EP)                              \
    QUIK_GEMV_LN(quik_gemv_##EPNAME##_w4_m16_ln, 4, 16, EP, 2, 2)     \
    QUIK_GEMV_LN(quik_gemv_##EPNAME##_w8_m16_ln, 8, 16, EP, 2, 2)     \
    QUIK_GEMV_LN(quik_gemv_##EPNAME##_w4_m16_r16_ln, 4, 16, EP, 1, 4) \
    QUIK_GEMV_LN(quik_gemv_##EPNAME##_w8_m16_r16_ln, 8, 16, EP, 1, 4) \
    QUIK_GEMV_LN(quik_gemv_##EPNAME##_w4_m16_r64_ln, 4, 16, EP, 4, 2) \
    QUIK_GEMV_LN(quik_gemv_##EPNAME##_w8_m16_r64_ln, 8, 16, EP, 4, 2)
QUIK_GEMV_LN_ALL(i32, 0)
QUIK_GEMV_LN_ALL(f16, 1)
QUIK_GEMV_LN_ALL(bf16, 2)

// quik_gemvo_*: the small-M kernels with the outlier product fused (OutlierProduct; the launcher is
// cuda.quik_gemm_outliers): dynamic smem ROWS * (2 * chunk + 16) + 2 * M * n_out bytes (16-byte aligned
// parts); y_base is not taken.
// The fused kernels keep the blocks per SM they had with one chain per output (ptxas gave them a few registers
// more with the four-lane outlier sums, which cost a block per SM: up to x1.14 at M = 16 and x1.20 at M = 1,
// docs/PERF_LOG.md, eighth session).
constexpr int gemvo_min_blocks(int wb, int mtok, int ntw) {
    return mtok == 16 ? (ntw == 4 ? 2 : (ntw == 1 && wb == 4 ? 4 : 3)) : (ntw == 1 && wb == 4 ? 1 : 2);
}
// INTER (the outlier chains interleaved with the main loop, see gemv) only in the kernels of the large decode
// shapes, 64 rows at M <= 8 and the 32-row whole-line ones at M <= 16, where ptxas fits it (no spills, except the
// 4-bit 64-row kernel: 36 -> 64 bytes). Under the launch bounds of the others it spilled 36-440 bytes (the 32-row
// 8-token kernel 152, the 16-token fragment kernels 300-380 at 64-80 registers). H100, 256 outliers, in one
// process against the kernels without it (s13e): x0.90-0.97 where it runs (W4A4 8192 x 28672 x0.948 / x0.937 at
// M = 1 / 16), except 5120 x 13824 at M = 16, W4A4 x1.04.
__host__ __device__ constexpr bool gemvo_inter(int mtok, int ntw, bool lines) {
    return mtok == 8 ? ntw == 4 : lines && ntw == 2;
}
// MINB: the launch bound's blocks per SM; LINES: whole-line weight loads; INTER: see gemvo_inter.
#define QUIK_GEMVO_B(NAME, WB, MTOK, EP, NTW, U, MINB, LINES, INTER)                                               \
    extern "C" __global__ void __launch_bounds__(256, MINB)                                                        \
    NAME(const signed char* A, const unsigned char* W, void* out, int M, int N, int Kp, const float* a_scale,      \
         const float* a_zero, float a_shift, const float* w_scale, const float* wsum, const void* x_out,           \
         const void* w_out, int n_out, int chunk, const void* bias) {                                              \
        const EpiArgs ep = {a_scale, a_zero, w_scale, wsum, nullptr, a_shift};                                     \
        const OutlArgs ol = {static_cast<const unsigned short*>(x_out), static_cast<const unsigned short*>(w_out), \
                             static_cast<const unsigned short*>(bias), n_out, chunk};                              \
        gemv<WB, MTOK, EP, NTW, U, false, true, LINES, INTER>(A, W, out, M, N, Kp, ep, ol);                        \
    }
#define QUIK_GEMVO(NAME, WB, MTOK, EP, NTW, U) \
    QUIK_GEMVO_B(NAME, WB, MTOK, EP, NTW, U, gemvo_min_blocks(WB, MTOK, NTW), false, gemvo_inter(MTOK, NTW, false))
#define QUIK_GEMVO_ALL(EPNAME, EP) QUIK_GEMV_CONFIGS(QUIK_GEMVO, quik_gemvo_##EPNAME, EP)
// quik_gemvo_*_m16*_ln: the 16-token fused kernels with whole-line weight loads, 2 blocks per SM (no spills,
// except the 64-row ones, 104-448 bytes; the launcher's rule never picks 64 rows at M > 8).
#define QUIK_GEMVO_LN(NAME, WB, EP, NTW, U) \
    QUIK_GEMVO_B(NAME, WB, 16, EP, NTW, U, 2, true, gemvo_inter(16, NTW, true))
#define QUIK_GEMVO_LN_ALL(EPNAME, EP)                                   \
    QUIK_GEMVO_LN(quik_gemvo_##EPNAME##_w4_m16_ln, 4, EP, 2, 2)         \
    QUIK_GEMVO_LN(quik_gemvo_##EPNAME##_w8_m16_ln, 8, EP, 2, 2)         \
    QUIK_GEMVO_LN(quik_gemvo_##EPNAME##_w4_m16_r16_ln, 4, EP, 1, 4)     \
    QUIK_GEMVO_LN(quik_gemvo_##EPNAME##_w8_m16_r16_ln, 8, EP, 1, 4)     \
    QUIK_GEMVO_LN(quik_gemvo_##EPNAME##_w4_m16_r64_ln, 4, EP, 4, 2)     \
    QUIK_GEMVO_LN(quik_gemvo_##EPNAME##_w8_m16_r64_ln, 8, EP, 4, 2)

QUIK_GEMVO_ALL(f16, 1)
QUIK_GEMVO_ALL(bf16, 2)
QUIK_GEMVO_LN_ALL(f16, 1)
QUIK_GEMVO_LN_ALL(bf16, 2)

// ---------------------------------------------------------------------------------------------
// The library paths for large M (launcher: cuda.quik_gemm via gemm_path and _library_int_gemm). mma.sync s8 stops near cuBLAS FP16 speed
// at M >= 512 (see above), while cuBLASLt's FP8 and INT8 GEMMs (wgmma) run faster. The integer sums stay
// exact: W4A4 goes through FP8 e4m3 (every 4-bit code in [-8, 7] is exact in e4m3, products are <= 64,
// and fp32 sums of such integers are exact while |acc| < 2^24, i.e. 64 * Kp with Kp <= 32768; the
// library must also accumulate in real fp32, which it does with use_fast_accum=False: the launcher
// proves it per device on adversarial codes before using the path, and the GPU tests check it on every
// shape); W4A8 and W8A8 go through INT8 with int32 accumulation (exact by definition). These kernels
// surround the library call: the weight codes unpacked before, the fused epilogue (bit-identical to the
// GEMM kernels' one) after.
//
// quik_unpack_w4_lut: W uint8 [N, Kp/2] (the w4 layout above, w4_off) -> Wb uint8 [N, Kp] row-major, one byte
//   per code: lut[nibble] with lut uint8 [16] indexed by the nibble (codes 0..7, then -8..-1): the e4m3
//   bytes of the codes (FP8 path, built by torch so the encoding is torch's) or their int8 bytes.
//   One thread per 16 packed bytes (32 codes); block 256, grid below the helpers. W and Wb 16-byte aligned.
// quik_epilogue_{f32,i32}acc_{f16,bf16}: acc [M, N] (fp32 holding exact integers, or int32) -> out
//   [M, N], the epilogue of the GEMM kernels through store_pair. One thread per output pair (n, n + 1),
//   n even: n_pairs = M * ceil(N/2); block 256, grid ceil(n_pairs / 256). acc 8-byte aligned; out and
//   y_base as for the GEMM kernels.
// ---------------------------------------------------------------------------------------------
namespace {
QDEV unsigned lut_pair_word(unsigned x, const unsigned char* t, int j) {  // packed bytes 2j, 2j+1 of x
    const unsigned b0 = (x >> (16 * j)) & 0xFFu, b1 = (x >> (16 * j + 8)) & 0xFFu;
    return (unsigned)t[b0 & 0xF] | ((unsigned)t[b0 >> 4] << 8) | ((unsigned)t[b1 & 0xF] << 16) |
           ((unsigned)t[b1 >> 4] << 24);
}

QDEV int acc_int(float v) { return __float2int_rn(v); }  // exact: v is an integer below 2^24
QDEV int acc_int(int v) { return v; }
QDEV void load_acc_pair(const float* a, int& v0, int& v1) {
    const float2 p = *reinterpret_cast<const float2*>(a);
    v0 = acc_int(p.x);
    v1 = acc_int(p.y);
}
QDEV void load_acc_pair(const int* a, int& v0, int& v1) {
    const int2 p = *reinterpret_cast<const int2*>(a);
    v0 = p.x;
    v1 = p.y;
}

// The pair of plane s at p (N even: one 8-byte load; odd: two, the second only where n + 1 < N).
template <typename ACC>
QDEV void load_slice_pair(const ACC* p, int N, int n, int& u0, int& u1) {
    if ((N & 1) == 0) {  // then n + 1 < N and p is 8-byte aligned (plane and n even)
        load_acc_pair(p, u0, u1);
    } else {
        u0 = acc_int(p[0]);
        u1 = n + 1 < N ? acc_int(p[1]) : 0;
    }
}

// The epilogue factors of the pair (m, n), (m, n + 1): a_scale, row_zero, and w_scale / wsum of both columns (the
// second only where n + 1 < N).
QDEV void pair_factors(const EpiArgs& ep, int N, int m, int n, float& sa, float& za, float& ws0, float& ws1,
                       float& su0, float& su1) {
    sa = ep.a_scale[m];
    za = row_zero(ep, m);
    ws0 = ep.w_scale[n];
    su0 = ep.wsum[n];
    if (n + 1 < N) {
        ws1 = ep.w_scale[n + 1];
        su1 = ep.wsum[n + 1];
    }
}

// One pair (m, n), (m, n + 1) per thread: the sum of `slices` [M, N] planes of acc (one: the library paths'
// accumulators, quik_epilogue_*acc_*; `splits`: split-K's int32 partial sums, quik_splitk_*, exact in any order, and
// every partial sum is bounded by the whole product's bound), then quik_gemm's epilogue (EP = f16 / bf16) or the
// sum itself (EP = i32).
// G > 1 (quik_splitk_*, twenty-eighth session): the planes in groups of G whose loads are all issued before their
// adds, and the epilogue factors loaded first. Why: with one plane per loop step each step waited for its load
// before the next was issued, a chain of `slices` L2 round trips per thread: ncu of 4096 x 4096 at M = 128 (8
// slices, all in L2, 99% hit rate) had the add kernel at 27% of the memory throughput and 18.8 cycles per issued
// instruction (docs/PERF_LOG.md, s28f). G = 1 is the earlier loop (quik_splitk_g1_*), which the launcher keeps below
// cuda.SPLITK_GROUP_MIN slices (with 2 slices the grouped kernel was x1.01-1.03 slower, s28g).
template <int EP, typename ACC, int G = 1>
QDEV void epilogue_acc(const ACC* acc, void* out, int M, int N, const EpiArgs& ep, int slices = 1) {
    const int half = (N + 1) >> 1;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)M * half) return;
    const int m = (int)(i / half), n = 2 * (int)(i % half);
    const size_t plane = (size_t)M * N;
    const ACC* p = acc + (size_t)m * N + n;
    float sa = 0.f, za = 0.f, ws0 = 0.f, ws1 = 0.f, su0 = 0.f, su1 = 0.f;
    if constexpr (G > 1 && EP != 0) {  // independent of the sums: in flight with their loads
        pair_factors(ep, N, m, n, sa, za, ws0, ws1, su0, su1);
    }
    int v0 = 0, v1 = 0;
    if constexpr (G == 1) {
        for (int s = 0; s < slices; ++s, p += plane) {
            int u0, u1;
            load_slice_pair(p, N, n, u0, u1);
            v0 += u0;
            v1 += u1;
        }
    } else {
        for (int s0 = 0; s0 < slices; s0 += G, p += G * plane) {
            int u0[G], u1[G];
#pragma unroll
            for (int j = 0; j < G; ++j) {  // every load of the group first
                u0[j] = u1[j] = 0;
                if (s0 + j < slices) load_slice_pair(p + j * plane, N, n, u0[j], u1[j]);
            }
#pragma unroll
            for (int j = 0; j < G; ++j) {  // int32 sums: the same in any order
                v0 += u0[j];
                v1 += u1[j];
            }
        }
    }
    if constexpr (G == 1 && EP != 0) {
        pair_factors(ep, N, m, n, sa, za, ws0, ws1, su0, su1);
    }
    store_pair<EP>(out, ep, N, m, n, v0, v1, sa, za, ws0, ws1, su0, su1);
}
}  // namespace

// Wb [N, Kp] row-major bytes (lut of each code) from W (the 4-bit layout, w4_off); rb = Kp / 2 (a multiple of 32).
// Grid: ceil(N / 8) * ceil(rb / 512) blocks of 256 threads, a group of 8 rows per
// ceil(rb / 512) blocks, each thread one 16-byte vector in W's order: the reads are contiguous and each row's
// 128 output bytes of a step are written by 4 adjacent threads (in the rows' order, the reads of a warp were 8
// pieces 512 bytes apart).
extern "C" __global__ void __launch_bounds__(256)
quik_unpack_w4_lut(const unsigned char* W, uint4* Wb, const unsigned char* lut, int N, int rb) {
    __shared__ unsigned char t[16];
    if (threadIdx.x < 16) t[threadIdx.x] = lut[threadIdx.x];
    __syncthreads();
    const int vr = rb >> 4, bpg = (vr + 31) >> 5;  // 16-byte vectors per row, blocks per 8-row group
    const int grp = blockIdx.x / bpg, j = (blockIdx.x - grp * bpg) * 256 + threadIdx.x;  // vector j of the group
    const int g0 = grp * 8, gs = min(8, N - g0), full = (rb >> 6) * 4 * gs;  // vectors in whole 64-byte steps
    if (g0 >= N || j >= gs * vr) return;
    int r, v;  // row in the group, vector in the row
    if (j < full) {
        const int s = j / (4 * gs), w = j - s * 4 * gs;  // step s: gs rows of 4 vectors
        r = w >> 2;
        v = 4 * s + (w & 3);
    } else {  // the 32-byte last step: gs rows of 2 vectors
        const int w = j - full;
        r = w >> 1;
        v = 4 * (rb >> 6) + (w & 1);
    }
    const long long i = (long long)(g0 + r) * vr + v;  // row-major vector index: output vectors 2i, 2i + 1
    // packed bytes 16 v .. 16 v + 15 of row g0 + r -> its codes 32 v .. 32 v + 31, low nibble first
    const uint4 x = *reinterpret_cast<const uint4*>(W + (size_t)g0 * rb + 16 * (size_t)j);
    Wb[2 * i] = make_uint4(lut_pair_word(x.x, t, 0), lut_pair_word(x.x, t, 1), lut_pair_word(x.y, t, 0),
                           lut_pair_word(x.y, t, 1));
    Wb[2 * i + 1] = make_uint4(lut_pair_word(x.z, t, 0), lut_pair_word(x.z, t, 1), lut_pair_word(x.w, t, 0),
                               lut_pair_word(x.w, t, 1));
}

#define QUIK_EPI_ACC(NAME, ACC, EP)                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                              \
    NAME(const ACC* acc, void* out, int M, int N, const float* a_scale, const float* a_zero, float a_shift,        \
         const float* w_scale, const float* wsum, const void* y_base) {                                             \
        const EpiArgs ep = {a_scale, a_zero, w_scale, wsum, y_base, a_shift};                                      \
        epilogue_acc<EP, ACC>(acc, out, M, N, ep);                                                                 \
    }

QUIK_EPI_ACC(quik_epilogue_f32acc_f16, float, 1)
QUIK_EPI_ACC(quik_epilogue_f32acc_bf16, float, 2)
QUIK_EPI_ACC(quik_epilogue_i32acc_f16, int, 1)
QUIK_EPI_ACC(quik_epilogue_i32acc_bf16, int, 2)

// quik_splitk_EP(part int32 [splits, M, N], out [M, N], ...): grid ceil(M * ceil(N/2) / 256) x 256 threads; the
// slices in groups of 8 (epilogue_acc's G). quik_splitk_g1_EP: the same, one slice at a time.
#define QUIK_SPLITK(NAME, EP, G)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                              \
    NAME(const int* part, void* out, int M, int N, int splits, const float* a_scale, const float* a_zero,          \
         float a_shift, const float* w_scale, const float* wsum, const void* y_base) {                              \
        const EpiArgs ep = {a_scale, a_zero, w_scale, wsum, y_base, a_shift};                                      \
        epilogue_acc<EP, int, G>(part, out, M, N, ep, splits);                                                     \
    }
QUIK_SPLITK(quik_splitk_i32, 0, 8)
QUIK_SPLITK(quik_splitk_f16, 1, 8)
QUIK_SPLITK(quik_splitk_bf16, 2, 8)
QUIK_SPLITK(quik_splitk_g1_i32, 0, 1)
QUIK_SPLITK(quik_splitk_g1_f16, 1, 1)
QUIK_SPLITK(quik_splitk_g1_bf16, 2, 1)
