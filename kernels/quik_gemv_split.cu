// quik_gemv_split.cu -- the 9..16-token QUIK GEMM (decode, speculative and small-batch steps) with the
// activations staged once per block in shared memory and K split over the CTAs of a thread-block cluster.
// Exact integer product: bit-identical to quiktool.runtime.reference.int_gemm / quik_gemm, like every
// kernel of quik_gemm.cu (same mma.sync instruction, same epilogue header).
//
// Why this kernel: quik_gemm.cu's small-M kernel (quik_gemv_*_m16) gives each warp its own K steps of 32
// (or 16) weight rows and loads the matching activation bytes itself, so at 16 tokens every block pulls as
// many activation bytes through L2 / L1 as weight bytes (16 tokens x K bytes per 32 rows x K / 2 bytes,
// w4), and the layer runs at ~1.8-2.2 TB/s of weights where M = 1 reaches ~2.7 (docs/PERF_LOG.md, seventh
// session). Here a block owns 128 weight rows (16 per warp) and stages the 16 activation rows of its K
// range in shared memory once, which every warp reads: a quarter of the activation traffic per weight byte
// (an eighth for w8). 128-row blocks alone would leave N / 128 blocks (32 at N = 4096) for 132 SMs, so K
// is split over SK = 1, 2, 4 or 8 CTAs of a cluster, whose int32 partial sums are added through
// distributed shared memory (exact in any order: integer addition).
//
// Contract
//   A   int8 [M, Kp] row-major activation codes, 1 <= M <= 16
//   W   WBITS = 4: uint8 [N, Kp/2] (low nibble = even column, two's complement: quiktool.format.packing)
//       WBITS = 8: int8 [N, Kp]
//   acc[m, n] = sum_k A[m, k] * W[n, k]   (exact int32; w4 computed as 16 * acc and shifted, as quik_gemm.cu)
//   Entry points quik_gemvs_EP_wWB_skSK, EP = i32 | f16 | bf16, WB = 4 | 8, SK = 1 | 2 | 4 | 8: the EP
//   semantics of quik_gemm.cu (i32 writes acc; f16 / bf16 apply quik_epilogue.cuh's epilogue_f32, then add
//   y_base when it is not null).
//   Assumptions (checked by the launcher, quiktool/runtime/cuda.py): Kp % 64 == 0, 64 <= Kp < 2^17;
//   1 <= M <= 16, N >= 1 (tails predicated); tensors contiguous, A and W 16-byte aligned; sm_90 for
//   SK > 1 (clusters; on older GPUs those entry points trap and the launcher never starts them).
//   Launch geometry: block 256 threads (8 warps), grid = ceil(N / 128) * SK (cluster dims (SK, 1, 1)
//   compiled in: CTA rank r of cluster c covers rows 128c .. 128c + 127 and the r-th of SK near-equal
//   ranges of 64-byte weight steps), dynamic smem GS_SLOTS * 16 * ROW bytes (ROW below: 49,920 for w4,
//   27,648 for w8), static smem 8.25 KiB (the partial sums). On sm_90 the launcher starts it as a
//   programmatic dependent launch of the activation quantizer: before griddepcontrol.wait it touches
//   only W.
//
// Work split. A "step" is 64 bytes of every weight row (128 codes w4, 64 codes w8), as in quik_gemm.cu's
// small-M kernel, and lane (g, t) (g = lane / 4, t = lane % 4) of warp w holds the 16 bytes at 16 t of the
// step for weight rows 16 w + g and 16 w + g + 8: the mma's A operand (m16 = 16 weight rows); the tokens are
// its B operand (two n8 tiles: tokens g and 8 + g per lane). w4 mma j (j < 4) covers columns 32 t + 8 j ..
// + 7 of the step: A = {E(row g), E(row g + 8), O(row g), O(row g + 8)} of weight word j, B = the even and
// odd bytes of the 8 activation bytes at 32 t + 8 j (quik_gemm.cu, "K order inside one mma"); w8 mma jj
// (jj < 2) uses weight words 2 jj, 2 jj + 1 and activation words 2 jj, 2 jj + 1 of the 16 bytes at 16 t.
// Every warp walks all steps of its CTA's range, U at a time, with the next U steps' weights loaded into a
// second register set before the current ones are multiplied (16-byte non-allocating loads: each weight
// byte is used once). The first U steps are loaded, the next ones up to GS_PF prefetched into L2, before
// griddepcontrol.wait.
//
// Activations: chunks of GS_CH steps (GS_CH * 128 columns w4, * 64 w8) of all 16 token rows, copied by
// cp.async into a ring of GS_SLOTS slots, two chunks ahead; rows past M and columns past the CTA's range
// are zero-filled. Slot layout [16 tokens][ROW bytes], ROW = GS_CH * step columns + PAD: a quarter warp's
// 16-byte loads (tokens g, g + 1 at 4 offsets t) then hit 32 distinct banks (PAD 16 for w4, whose lanes
// read at 32 t; 64 for w8, at 16 t). One __syncthreads per chunk: after it chunk c is visible and every
// warp is done with chunk c - 1, whose slot is then refilled with chunk c + 2.
//
// Reduction: each warp stores its 16 x 16 block of partial sums (fragment c0..c3 = rows g, g + 8, tokens
// 2 t, 2 t + 1) into red[token][row] (row stride 132 words: conflict-free stores); after the cluster
// barrier, CTA r finishes outputs r * 2048 / SK .. (r + 1) * 2048 / SK - 1 of the block (token-major, 32
// consecutive rows per warp: coalesced stores), summing the SK partials in rank order, then the epilogue;
// a second cluster barrier keeps every CTA's red alive until all have read it.

#include "quik_epilogue.cuh"
#include "quik_ptx.cuh"

namespace {

constexpr int GS_THREADS = 256, GS_WARPS = 8, GS_ROWS = 16 * GS_WARPS, GS_MTOK = 16;
constexpr int GS_CH = 8, GS_SLOTS = 3, GS_U = 4;  // steps per chunk, ring slots, steps per register set
constexpr int GS_PF = 16;  // steps of the CTA's range whose weights are requested before griddepcontrol.wait
static_assert(GS_CH % GS_U == 0, "a register set never straddles two chunks");

template <int WBITS>
struct GsGeom {
    static constexpr int STEP_COLS = WBITS == 4 ? 128 : 64;  // activation bytes per 64-byte weight step
    static constexpr int ROW = GS_CH * STEP_COLS + (WBITS == 4 ? 16 : 64);
    static constexpr int SLOT = GS_MTOK * ROW;
    static constexpr int SMEM = GS_SLOTS * SLOT;  // the launcher: cuda._GEMVS_SMEM
};

QDEV void lds128(unsigned addr, unsigned (&v)[4]) {
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3]) : "r"(addr));
}

template <int WBITS, int EP, int SK>
QDEV void gemv_split(const signed char* __restrict__ A, const unsigned char* __restrict__ W, void* __restrict__ out,
                     int M, int N, int Kp, const EpiArgs& ep) {
    using G = GsGeom<WBITS>;
    constexpr int TT = 2, SHIFT = WBITS == 4 ? 4 : 0, RED_LD = GS_ROWS + 4;
    extern __shared__ __align__(16) unsigned char gs_smem[];
    __shared__ int red[GS_MTOK][RED_LD];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    int rank = 0;
    if constexpr (SK > 1) rank = (int)cta_rank();
    const int n0 = (blockIdx.x / SK) * GS_ROWS;
    const size_t wrb = WBITS == 4 ? (size_t)(Kp >> 1) : (size_t)Kp;  // bytes per weight row
    const int S = (int)((wrb + 63) >> 6);                              // 64-byte steps per row
    const int s_beg = (int)((long long)S * rank / SK), ns = (int)((long long)S * (rank + 1) / SK) - s_beg;
    const int nr0 = n0 + 16 * warp + g, nr1 = nr0 + 8;  // this lane's two weight rows
    const unsigned s_base = smem_addr(gs_smem);
    const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);

    using WV = uint4[GS_U][2];
    auto load_w = [&](int i0, WV& wv) {  // local steps i0 .. i0 + GS_U - 1 of this lane's rows (0 past them)
#pragma unroll
        for (int u = 0; u < GS_U; ++u) {
            const int i = i0 + u;
            const size_t wb = (size_t)(s_beg + i) * 64 + 16 * t;
            const bool ok = i < ns && wb < wrb;
            wv[u][0] = ok && nr0 < N ? ldg_stream(W + (size_t)nr0 * wrb + wb) : zero4;
            wv[u][1] = ok && nr1 < N ? ldg_stream(W + (size_t)nr1 * wrb + wb) : zero4;
        }
    };
    // Chunk c of the activations (local steps c * GS_CH ..) into slot c % GS_SLOTS, by the whole block.
    auto load_a = [&](int c) {
        constexpr int PER = GS_CH * G::STEP_COLS / 16;  // 16-byte pieces per token row
        const unsigned sl = s_base + (c % GS_SLOTS) * G::SLOT;
        const size_t col0 = (size_t)(s_beg + c * GS_CH) * G::STEP_COLS;
#pragma unroll
        for (int p = tid; p < GS_MTOK * PER; p += GS_THREADS) {
            const int m = p / PER, q = p - m * PER;
            const size_t col = col0 + 16 * q;
            const bool ok = m < M && col < (size_t)Kp && c * GS_CH + (16 * q) / G::STEP_COLS < ns;
            cp_async16(sl + m * G::ROW + 16 * q, ok ? A + (size_t)m * Kp + col : A, ok);
        }
    };

    int acc[TT][4];
#pragma unroll
    for (int b = 0; b < TT; ++b)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[b][r] = 0;

    // Local steps i0 .. i0 + GS_U - 1 (one chunk): B fragments from the slot, A fragments from wv.
    auto compute = [&](int i0, const WV& wv) {
#pragma unroll
        for (int u = 0; u < GS_U; ++u) {
            const int i = i0 + u;
            if (i >= ns) break;  // uniform over the block
            const unsigned st = s_base + ((i / GS_CH) % GS_SLOTS) * G::SLOT + (i % GS_CH) * G::STEP_COLS;
            const unsigned w0[4] = {wv[u][0].x, wv[u][0].y, wv[u][0].z, wv[u][0].w};
            const unsigned w1[4] = {wv[u][1].x, wv[u][1].y, wv[u][1].z, wv[u][1].w};
            if constexpr (WBITS == 4) {
                unsigned x[TT][8];
#pragma unroll
                for (int b = 0; b < TT; ++b) {
                    const unsigned a = st + (8 * b + g) * G::ROW + 32 * t;
                    unsigned lo[4], hi[4];
                    lds128(a, lo);
                    lds128(a + 16, hi);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        x[b][e] = lo[e];
                        x[b][4 + e] = hi[e];
                    }
                }
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const unsigned af[4] = {nib_even(w0[j]), nib_even(w1[j]), nib_odd(w0[j]), nib_odd(w1[j])};
#pragma unroll
                    for (int b = 0; b < TT; ++b)
                        mma_s8(acc[b], af, bytes_even(x[b][2 * j], x[b][2 * j + 1]), bytes_odd(x[b][2 * j], x[b][2 * j + 1]));
                }
            } else {
                unsigned x[TT][4];
#pragma unroll
                for (int b = 0; b < TT; ++b) lds128(st + (8 * b + g) * G::ROW + 16 * t, x[b]);
#pragma unroll
                for (int jj = 0; jj < 2; ++jj) {
                    const unsigned af[4] = {w0[2 * jj], w1[2 * jj], w0[2 * jj + 1], w1[2 * jj + 1]};
#pragma unroll
                    for (int b = 0; b < TT; ++b) mma_s8(acc[b], af, x[b][2 * jj], x[b][2 * jj + 1]);
                }
            }
        }
    };

    const int NC = (ns + GS_CH - 1) / GS_CH;  // chunks
    const int NG = (ns + GS_U - 1) / GS_U;    // register sets' worth of steps
    // Chunk boundary before register set gi: chunk c complete and visible, chunk c - 1 done by every warp,
    // chunk c + 2 into its slot. Committed groups before it: c + 2 (chunks 0, 1 and one per boundary), so
    // wait_group 1 leaves only chunk c + 1 in flight.
    auto boundary = [&](int gi) {
        if ((gi * GS_U) % GS_CH != 0) return;
        const int c = gi * GS_U / GS_CH;
        cp_async_wait<1>();
        __syncthreads();
        if (c + 2 < NC) load_a(c + 2);
        cp_async_commit();
    };

    WV wa, wb;
    load_w(0, wa);  // weights do not depend on the quantizer: in flight before the wait
#if __CUDA_ARCH__ >= 900
    // ... and the next steps, up to GS_PF, asked of L2 (one prefetch per 32-byte sector), so that a short
    // range is in L2 when the quantizer finishes (a 4096-wide layer split 8 ways has 4 steps per CTA)
    for (int i = GS_U; i < min(ns, GS_PF); ++i) {
        const size_t wb2 = (size_t)(s_beg + i) * 64 + 32 * (t >> 1);
        if ((t & 1) == 0 && wb2 < wrb) {
            if (nr0 < N) asm volatile("prefetch.global.L2 [%0];" ::"l"(W + (size_t)nr0 * wrb + wb2));
            if (nr1 < N) asm volatile("prefetch.global.L2 [%0];" ::"l"(W + (size_t)nr1 * wrb + wb2));
        }
    }
#endif
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");  // A, a_scale, a_zero: the quantizer's (PDL)
#endif
    load_a(0);
    cp_async_commit();
    if (NC > 1) load_a(1);
    cp_async_commit();
    for (int gi = 0; gi < NG; gi += 2) {  // two register sets, unrolled by 2 so that each keeps fixed registers
        if (gi + 1 < NG) load_w((gi + 1) * GS_U, wb);
        boundary(gi);
        compute(gi * GS_U, wa);
        if (gi + 1 >= NG) break;
        if (gi + 2 < NG) load_w((gi + 2) * GS_U, wa);
        boundary(gi + 1);
        compute((gi + 1) * GS_U, wb);
    }
    cp_async_wait<0>();  // no copy (not even a zero fill) may land after the CTA has exited

    // Partial sums -> red. Fragment: c0, c1 = (row g, tokens 2t, 2t + 1), c2, c3 = row g + 8.
#pragma unroll
    for (int b = 0; b < TT; ++b)
#pragma unroll
        for (int r = 0; r < 4; ++r) red[8 * b + 2 * t + (r & 1)][16 * warp + g + 8 * (r >> 1)] = acc[b][r];
    if constexpr (SK > 1) {
        cl_arrive();
        cl_wait();
    } else {
        __syncthreads();
    }
    constexpr int OUTS = GS_MTOK * GS_ROWS / SK;  // outputs this CTA finishes (a multiple of GS_THREADS / 2)
#pragma unroll
    for (int o = rank * OUTS + tid; o < (rank + 1) * OUTS; o += GS_THREADS) {
        const int m = o / GS_ROWS, nl = o % GS_ROWS, n = n0 + nl;
        if (m >= M || n >= N) continue;
        int v = 0;
        if constexpr (SK > 1) {
#pragma unroll
            for (int q = 0; q < SK; ++q) v += ld_cluster_s32(&red[m][nl], (unsigned)q);
        } else {
            v = red[m][nl];
        }
        v >>= SHIFT;
        const size_t idx = (size_t)m * N + n;
        if constexpr (EP == 0) {
            reinterpret_cast<int*>(out)[idx] = v;
        } else {
            float f = epilogue_f32(v, ep.a_scale[m], row_zero(ep, m), ep.w_scale[n], ep.wsum[n]);
            if (ep.y_base) f = add_rn(f, load_f32<EP>(reinterpret_cast<const unsigned short*>(ep.y_base)[idx]));
            reinterpret_cast<unsigned short*>(out)[idx] = store_bits<EP>(f);
        }
    }
    if constexpr (SK > 1) {  // the other CTAs may still be reading this one's red
        cl_arrive();
        cl_wait();
    }
}

}  // namespace

// Entry points. SK > 1 needs clusters (sm_90; NVRTC rejects __cluster_dims__ below): elsewhere those
// entry points are kept, trapping, so that every build has the same names (as quik_act_quant.cu's cluster
// kernels). QUIK_GEMVS_LIST(X, EPNAME, EP) calls X(name, WB, EP, SK) for the clustered configurations.
#define QUIK_GEMVS_SIG                                                                                              \
    (const signed char* A, const unsigned char* W, void* out, int M, int N, int Kp, const float* a_scale,          \
     const float* a_zero, float a_shift, const float* w_scale, const float* wsum, const void* y_base)
#define QUIK_GEMVS_BODY(WB, EP, SK)                                                                                 \
    {                                                                                                              \
        const EpiArgs ep = {a_scale, a_zero, w_scale, wsum, y_base, a_shift};                                      \
        gemv_split<WB, EP, SK>(A, W, out, M, N, Kp, ep);                                                           \
    }
#define QUIK_GEMVS1(NAME, WB, EP) \
    extern "C" __global__ void __launch_bounds__(GS_THREADS, 2) NAME QUIK_GEMVS_SIG QUIK_GEMVS_BODY(WB, EP, 1)
#define QUIK_GEMVS_CL(NAME, WB, EP, SK)                                                                \
    extern "C" __global__ void __launch_bounds__(GS_THREADS, 2) __cluster_dims__(SK, 1, 1) NAME     \
        QUIK_GEMVS_SIG QUIK_GEMVS_BODY(WB, EP, SK)
#define QUIK_GEMVS_TRAP(NAME, WB, EP, SK) extern "C" __global__ void NAME QUIK_GEMVS_SIG { __trap(); }
#define QUIK_GEMVS_LIST(X, EPNAME, EP)             \
    X(quik_gemvs_##EPNAME##_w4_sk2, 4, EP, 2)      \
    X(quik_gemvs_##EPNAME##_w4_sk4, 4, EP, 4)      \
    X(quik_gemvs_##EPNAME##_w4_sk8, 4, EP, 8)      \
    X(quik_gemvs_##EPNAME##_w8_sk2, 8, EP, 2)      \
    X(quik_gemvs_##EPNAME##_w8_sk4, 8, EP, 4)      \
    X(quik_gemvs_##EPNAME##_w8_sk8, 8, EP, 8)

QUIK_GEMVS1(quik_gemvs_i32_w4_sk1, 4, 0)
QUIK_GEMVS1(quik_gemvs_f16_w4_sk1, 4, 1)
QUIK_GEMVS1(quik_gemvs_bf16_w4_sk1, 4, 2)
QUIK_GEMVS1(quik_gemvs_i32_w8_sk1, 8, 0)
QUIK_GEMVS1(quik_gemvs_f16_w8_sk1, 8, 1)
QUIK_GEMVS1(quik_gemvs_bf16_w8_sk1, 8, 2)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
QUIK_GEMVS_LIST(QUIK_GEMVS_CL, i32, 0)
QUIK_GEMVS_LIST(QUIK_GEMVS_CL, f16, 1)
QUIK_GEMVS_LIST(QUIK_GEMVS_CL, bf16, 2)
#else
QUIK_GEMVS_LIST(QUIK_GEMVS_TRAP, i32, 0)
QUIK_GEMVS_LIST(QUIK_GEMVS_TRAP, f16, 1)
QUIK_GEMVS_LIST(QUIK_GEMVS_TRAP, bf16, 2)
#endif
