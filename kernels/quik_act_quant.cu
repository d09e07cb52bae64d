// quik_act_quant.cu -- per-token asymmetric activation quantization (QUIK), bit-exact with
// quiktool.runtime.reference.quantize_activations evaluated by PyTorch on a CUDA device.
//
// Contract
//   x          fp16 or bf16 [M, K], row-major, contiguous          (entry point picks the dtype)
//   keep_idx   int32 [Kq], 1 <= Kq <= Kp, the non-outlier columns (ascending by convention; any order works)
//   out_idx    int32 [n_out], the outlier columns (n_out may be 0: the pointer is then never read)
//   codes      int8  [M, Kp], Kp = Kq rounded up to 64; columns Kq..Kp-1 are written as 0
//   scale      fp32  [M]      zero  fp32 [M]
//   x_outlier  x.dtype [M, n_out] = x[:, out_idx]
//   bits       4 or 8
//   Entry points: quik_act_quant_{f16,bf16}       row staged in shared memory (K * 2 bytes rounded up
//                                                  to 16 of dynamic shared memory), for K up to ~100k
//                 quik_act_quant_{f16,bf16}_gmem  gathers straight from global memory, any K
//                 quik_act_quant_split_{f16,bf16} no keep_idx: the kept columns are the ascending
//                                                  complement of out_idx (the layers' case); faster, see
//                                                  "Split mode" below for its own contract
//                 quik_act_quant_split_cl_{f16,bf16}  split mode with one row per cluster of 8 CTAs
//                                                  (sm_90): "Cluster split mode" below
//                 quik_act_quant_rows_{f16,bf16}_c{NC}  split mode for many rows: persistent blocks, rows
//                                                  in registers ("Rows mode" below)
//   Launch: grid = (M), block = (T), T a multiple of 32 in [32, 1024]. On sm_90 every block first executes
//   griddepcontrol.launch_dependents, so that a GEMM launched after it as a programmatic dependent launch
//   can start (and wait for this grid's results with griddepcontrol.wait).
//   Pointers: x needs only its 2-byte alignment (rows are copied with 16-byte cp.async when x is 16-byte
//   aligned and K % 8 == 0, element by element otherwise); codes 4-byte aligned (rows are written as
//   32-bit words; Kp % 64 == 0 keeps every row aligned); keep_idx is read 4 at a time when 16-byte
//   aligned, one at a time otherwise. The launcher (quiktool/runtime/cuda.py) checks dtypes, shapes and
//   alignment; index VALUES are not checked on the host (that would need a sync): an index outside
//   [0, K) never reads memory, and poisons that row (scale = zero = NaN, x_outlier = NaN) so that the
//   error cannot pass silently.
//
// Arithmetic: kernels/quik_quant.cuh (shared with the small-M GEMM kernel, which quantizes in its
// prologue): IEEE fp32 operations in the reference's order, written as non-.ftz inline PTX.
//
// Work split: one block per row. The staged kernel first copies the row into shared memory with 16-byte
// cp.async (every load of the row in flight at once: gathers of 2-byte elements straight from global
// memory leave too few bytes in flight and ran at ~0.4 TB/s); pass 1 reduces min/max over the kept
// columns, pass 2 writes 4 codes per thread as one 32-bit store; both passes gather from shared memory
// through keep_idx (read 4 indices at a time; the same small array for every row, so it stays in L2).

#include "quik_quant.cuh"
#include "quik_ptx.cuh"

namespace {

using namespace quikq;

// Starts copying row xr (K values of x) into srow, by the whole block: 16-byte cp.async (one commit group)
// when every row of x is 16-byte aligned, else element by element. Returns whether it went async: then
// the caller waits (cp.async.wait_group 0) before its barrier.
QDEV bool stage_row(unsigned short* srow, const unsigned short* x, const unsigned short* xr, int K) {
    const bool async = (K & 7) == 0 && (reinterpret_cast<size_t>(x) & 15) == 0;
    if (async) {
        const unsigned sbase = smem_addr(srow);
        for (int i = threadIdx.x; i < (K >> 3); i += blockDim.x) cp_async16(sbase + 16 * i, xr + 8 * i);
        cp_async_commit();
    } else {
        for (int i = threadIdx.x; i < K; i += blockDim.x) srow[i] = xr[i];
    }
    return async;
}

// Inclusive prefix sum of v over the 32 lanes of a warp.
QDEV int warp_inclusive_sum(int v, int lane) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    return v;
}
// Outliers in bmap[i0 .. i1).
QDEV int popc_words(const unsigned* bmap, int i0, int i1) {
    int c = 0;
    for (int i = i0; i < i1; ++i) c += __popc(bmap[i]);
    return c;
}
// pref[i] = run + outliers in bmap[i0 .. i), for i in [i0, i1) (the per-word counts of the split kernels).
QDEV void word_prefix(const unsigned* bmap, int* pref, int i0, int i1, int run) {
    for (int i = i0; i < i1; ++i) {
        pref[i] = run;
        run += __popc(bmap[i]);
    }
}

// pref[w] = outliers in bmap[0 .. w) for every w < W, by the whole block: each thread scans a contiguous run
// of words, then a block scan through s_cnt (32 ints of shared scratch; one barrier inside, so every thread
// must call it). Returns the total count.
QDEV int block_word_prefix(const unsigned* bmap, int* pref, int W, int* s_cnt) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int per = (W + blockDim.x - 1) / blockDim.x;
    const int w0 = min((int)threadIdx.x * per, W), w1 = min(w0 + per, W);
    const int local = popc_words(bmap, w0, w1);
    const int incl = warp_inclusive_sum(local, lane);
    if (lane == 31) s_cnt[warp] = incl;
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < nwarps; ++w) {
        if (w < warp) before += s_cnt[w];
        total += s_cnt[w];
    }
    word_prefix(bmap, pref, w0, w1, before + incl - local);
    return total;
}

// The outlier bitmap of the split kernels, by the whole block (two barriers inside): bit c % 32 of bmap[c / 32]
// for every outlier column c in [0, K); *s_bad = 1 if an index lies outside. sidx (optional): a copy of out_idx.
QDEV void build_outlier_bitmap(const int* __restrict__ out_idx, int n_out, int K, unsigned* bmap, int* s_bad,
                               int* sidx) {
    for (int i = threadIdx.x; i < ((K + 31) >> 5); i += blockDim.x) bmap[i] = 0u;
    if (threadIdx.x == 0) *s_bad = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n_out; i += blockDim.x) {
        const int c = out_idx[i];
        if (sidx) sidx[i] = c;
        if ((unsigned)c < (unsigned)K) atomicOr(&bmap[c >> 5], 1u << (c & 31));
        else *s_bad = 1;
    }
    __syncthreads();
}

// The outlier columns of one row, copied bit for bit from src (the row); NaN for an index outside [0, K).
template <bool BF16>
QDEV void copy_outliers(unsigned short* __restrict__ orow, const unsigned short* src, const int* __restrict__ out_idx,
                        int n_out, int K) {
    for (int i = threadIdx.x; i < n_out; i += blockDim.x) {
        const int c = out_idx[i];
        orow[i] = ((unsigned)c < (unsigned)K) ? src[c] : nan_bits<BF16>();
    }
}

template <bool BF16, bool STAGED>
QDEV void act_quant(const unsigned short* __restrict__ x, const int* __restrict__ keep_idx,
                    const int* __restrict__ out_idx, signed char* __restrict__ codes,
                    float* __restrict__ scale_out, float* __restrict__ zero_out,
                    unsigned short* __restrict__ x_out, int K, int Kq, int Kp, int n_out, int bits) {
    extern __shared__ __align__(16) unsigned short srow[];  // STAGED: the row, K elements
    __shared__ float s_mn[32], s_mx[32];
    __shared__ int s_bad[32];
    const int row = blockIdx.x;
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");  // the GEMM may launch now and wait for us (PDL)
#endif
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const unsigned short* xr = x + (size_t)row * K;

    if constexpr (STAGED) {
        if (stage_row(srow, x, xr, K)) cp_async_wait<0>();
        __syncthreads();
    }
    const unsigned short* src = STAGED ? srow : xr;
    const bool vec = (reinterpret_cast<size_t>(keep_idx) & 15) == 0;

    // Pass 1: min / max over the kept columns.
    float mn = plus_inf(), mx = minus_inf();
    int bad = 0;
    for (int j0 = tid * 4; j0 < Kq; j0 += blockDim.x * 4) {
        int c[4];
        load_idx4(keep_idx, j0, Kq, vec, c);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            if (j0 + e >= Kq) continue;
            if ((unsigned)c[e] >= (unsigned)K) { bad = 1; continue; }
            const float v = to_f32<BF16>(src[c[e]]);
            mn = min_nan(mn, v);
            mx = max_nan(mx, v);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        mn = min_nan(mn, __shfl_xor_sync(0xffffffffu, mn, o));
        mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        bad |= __shfl_xor_sync(0xffffffffu, bad, o);
    }
    if (lane == 0) { s_mn[warp] = mn; s_mx[warp] = mx; s_bad[warp] = bad; }
    __syncthreads();
    mn = s_mn[0]; mx = s_mx[0]; bad = s_bad[0];
    for (int w = 1; w < nwarps; ++w) {  // every thread reduces the (<= 32) partials: no second barrier
        mn = min_nan(mn, s_mn[w]);
        mx = max_nan(mx, s_mx[w]);
        bad |= s_bad[w];
    }

    float scale;
    row_params(mn, mx, bits, bad, scale, mn);  // mn becomes the row's zero (NaN when poisoned)
    if (tid == 0) { scale_out[row] = scale; zero_out[row] = mn; }

    // Pass 2: codes, 4 consecutive columns per thread, one 32-bit store (Kp % 4 == 0).
    int* crow = reinterpret_cast<int*>(codes + (size_t)row * Kp);
    for (int j0 = tid * 4; j0 < Kp; j0 += blockDim.x * 4) {
        int c[4];
        load_idx4(keep_idx, j0, Kq, vec, c);
        unsigned packed = 0;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            int q = 0;  // pad columns (j >= Kq) and poisoned rows store code 0
            if (j0 + e < Kq && !bad) q = code_of(to_f32<BF16>(src[c[e]]), mn, scale, bits);
            packed |= ((unsigned)q & 0xFFu) << (8 * e);
        }
        crow[j0 >> 2] = (int)packed;
    }

    copy_outliers<BF16>(x_out + (size_t)row * n_out, src, out_idx, n_out, K);
}

// ---------------------------------------------------------------------------------------------
// Split mode: keep_idx is implied, the ascending complement of out_idx (the layout's convention,
// algo.outliers.keep_columns). No index array is gathered through: the kernel builds a bitmap of the
// outlier columns and the count of outliers before every 32-column word in shared memory, reads the
// staged row 8 columns (16 bytes) at a time, and places column c's code at
// c - (outliers before c). The gather kernel above reads keep_idx (4 bytes per column) twice per row and
// waits on each index before its element; here the only dependent global loads are the n_out outlier
// indices. Measured (H200, docs/PERF_LOG.md): 1-2 us less latency at M <= 16, but 1-6% slower at
// M >= 512, where both kernels are instruction bound (ncu: ~80% of issue slots), so the launcher uses it
// for decode sizes only (cuda.quantize_layer).
//   Launch: grid = (M), block = (T), T a multiple of 32 in [32, 1024] (the launcher: ~16 columns per thread).
//   Dynamic shared memory (bytes, in this order): row 2 * K8 (K8 = K rounded up to 8), bitmap 4 * W2,
//   prefix 4 * W2 (W2 = ceil(K / 32) rounded up to even, so the code row stays 16-byte aligned), codes Kp.
//   codes must be 16-byte aligned (rows are copied out with 16-byte stores). Kq = K - n_out >= 1.
//   An outlier index outside [0, K), or a repeated one (bitmap popcount != n_out), poisons every row:
//   scale = zero = NaN, codes 0 (x_outlier still copies the valid indices, NaN for the others).
// ---------------------------------------------------------------------------------------------
QDEV int split_smem_words(int K) { return (((K + 31) >> 5) + 1) & ~1; }

template <bool BF16>
QDEV void load8(const unsigned short* srow, int c0, int K, float (&v)[8]) {
    if (c0 + 8 <= K) {
        const uint4 q = *reinterpret_cast<const uint4*>(srow + c0);  // c0 % 8 == 0: 16-byte aligned
        const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = to_f32<BF16>((unsigned short)(w[e >> 1] >> (16 * (e & 1))));
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = c0 + e < K ? to_f32<BF16>(srow[c0 + e]) : 0.0f;
    }
}

// mn, mx = min.NaN / max.NaN over n warps' partials s_mn[0 .. n), s_mx[0 .. n), in warp order.
QDEV void reduce_min_max(const float* s_mn, const float* s_mx, int n, float& mn, float& mx) {
    mn = s_mn[0];
    mx = s_mx[0];
    for (int w = 1; w < n; ++w) {
        mn = min_nan(mn, s_mn[w]);
        mx = max_nan(mx, s_mx[w]);
    }
}
// The row's scale and zero from every warp's min / max (lane 0's; one barrier inside, so every thread must
// call it; s_mn / s_mx: 32 floats each of shared scratch).
QDEV void block_row_params(float mn, float mx, float* s_mn, float* s_mx, int bits, bool bad, float& scale,
                           float& zero) {
    if ((threadIdx.x & 31) == 0) { s_mn[threadIdx.x >> 5] = mn; s_mx[threadIdx.x >> 5] = mx; }
    __syncthreads();
    reduce_min_max(s_mn, s_mx, blockDim.x >> 5, mn, mx);
    row_params(mn, mx, bits, bad, scale, zero);
}

// mn / mx updated with the values f[e], e < valid, whose outlier bit (bit e of ob) is clear.
QDEV void kept_min_max8(const float (&f)[8], unsigned ob, int valid, float& mn, float& mx) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        if (e < valid && !((ob >> e) & 1u)) {
            mn = min_nan(mn, f[e]);
            mx = max_nan(mx, f[e]);
        }
    }
}
// mn / mx over the 32 lanes of the warp (min.NaN / max.NaN: the order does not change the bits).
QDEV void warp_min_max(float& mn, float& mx) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        mn = min_nan(mn, __shfl_xor_sync(0xffffffffu, mn, o));
        mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
}

// Both split kernels' passes over a staged run of columns srow[0 .. len) whose outlier bits are bmap (bit l % 32
// of word l / 32 for column l) and, for pass 2, pref[w] = outliers before word w of the row:
// this thread's min / max over the kept columns, reduced over its warp (8 columns per thread and step) ...
template <bool BF16>
QDEV void warp_kept_min_max(const unsigned short* srow, const unsigned* bmap, int len, float& mn, float& mx) {
    mn = plus_inf();
    mx = minus_inf();
    for (int l0 = threadIdx.x * 8; l0 < len; l0 += blockDim.x * 8) {
        const unsigned ob = (bmap[l0 >> 5] >> (l0 & 31)) & 0xFFu;  // outlier bits of columns l0 .. l0 + 7
        float v[8];
        load8<BF16>(srow, l0, len, v);
        kept_min_max8(v, ob, len - l0, mn, mx);
    }
    warp_min_max(mn, mx);
}
// ... and the codes of the kept columns: column l's code goes to dst[base + l - (outliers before l)].
template <bool BF16, typename Dst>
QDEV void place_codes(const unsigned short* srow, const unsigned* bmap, const int* pref, int len, int base, float zero,
                      float scale, int bits, Dst dst) {
    for (int l0 = threadIdx.x * 8; l0 < len; l0 += blockDim.x * 8) {
        const unsigned word = bmap[l0 >> 5];
        const unsigned ob = (word >> (l0 & 31)) & 0xFFu;
        int j = base + l0 - (pref[l0 >> 5] + __popc(word & ((1u << (l0 & 31)) - 1u)));
        float v[8];
        load8<BF16>(srow, l0, len, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            if (l0 + e < len && !((ob >> e) & 1u)) dst[j++] = (signed char)code_of(v[e], zero, scale, bits);
        }
    }
}

template <bool BF16>
QDEV void act_quant_split(const unsigned short* __restrict__ x, const int* __restrict__ out_idx,
                          signed char* __restrict__ codes, float* __restrict__ scale_out,
                          float* __restrict__ zero_out, unsigned short* __restrict__ x_out, int K, int Kp,
                          int n_out, int bits) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int K8 = (K + 7) & ~7, W = (K + 31) >> 5, W2 = split_smem_words(K), Kq = K - n_out;
    unsigned short* srow = reinterpret_cast<unsigned short*>(smem);
    unsigned* bmap = reinterpret_cast<unsigned*>(smem + 2 * (size_t)K8);
    int* pref = reinterpret_cast<int*>(bmap + W2);
    signed char* scode = reinterpret_cast<signed char*>(pref + W2);
    __shared__ float s_mn[32], s_mx[32];
    __shared__ int s_cnt[32], s_bad;
    const int row = blockIdx.x;
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");  // the GEMM may launch now and wait for us (PDL)
#endif
    const int tid = threadIdx.x;
    const unsigned short* xr = x + (size_t)row * K;

    // 1. The row -> shared memory (16-byte cp.async when aligned), while the outlier bitmap is built.
    const bool async = stage_row(srow, x, xr, K);
    build_outlier_bitmap(out_idx, n_out, K, bmap, &s_bad, nullptr);

    // 2. Outliers before each word.
    const int total = block_word_prefix(bmap, pref, W, s_cnt);
    const bool bad = s_bad != 0 || total != n_out;
    if (async) cp_async_wait<0>();
    __syncthreads();

    // Pass 1: min / max over the kept columns.
    float mn, mx;
    warp_kept_min_max<BF16>(srow, bmap, K, mn, mx);
    float scale, zero;
    block_row_params(mn, mx, s_mn, s_mx, bits, bad, scale, zero);
    if (tid == 0) { scale_out[row] = scale; zero_out[row] = zero; }

    // Pass 2: codes into the shared code row at their kept positions; pad (and poisoned rows) 0.
    if (!bad) place_codes<BF16>(srow, bmap, pref, K, 0, zero, scale, bits, scode);
    for (int j = bad ? tid : Kq + tid; j < Kp; j += blockDim.x) scode[j] = 0;
    __syncthreads();
    uint4* dst = reinterpret_cast<uint4*>(codes + (size_t)row * Kp);
    for (int i = tid; i < (Kp >> 4); i += blockDim.x) dst[i] = reinterpret_cast<const uint4*>(scode)[i];

    copy_outliers<BF16>(x_out + (size_t)row * n_out, srow, out_idx, n_out, K);
}

// ---------------------------------------------------------------------------------------------
// Rows mode (many rows: the launcher takes it for layer calls of at least cuda.ACT_ROWS_MIN_M = 2048 tokens):
// split mode's contract and results, for x 16-byte aligned with K % 8 == 0. Why: at M >= 512 the gather and split kernels stage each
// row in shared memory, gather it element by element (through keep_idx or the bitmap) twice, and rebuild
// nothing between rows but pay a block launch, a staging barrier and the row's full latency per row; they
// ran at ~1/3 of the DRAM bandwidth (bench layer's quant stage: 28 us for 2048 x 4096, docs/PERF_LOG.md
// ninth session). Here a block builds the outlier bitmap and the prefix counts once, then loops over the
// rows blockIdx.x, blockIdx.x + gridDim.x, ... with the row in registers:
//   thread t holds chunks (8 columns, 16 bytes) t, t + T, .., t + (NC - 1) T of the row, so every load
//   instruction of a warp reads 512 contiguous bytes; pass 1 (min / max) and pass 2 (codes) read the
//   registers; the codes go into a shared code row at their kept positions (column c -> c - outliers
//   before c), then out with 16-byte stores. The next row's loads are issued as soon as this row's codes
//   are computed, so they overlap the barrier, the code stores and the outlier copy.
//   Launch: grid = (G), any G >= 1 (the launcher: min(M, blocks resident at once)); block = (T), T a multiple
//   of 32 in [32, 512] with NC * 8 * T >= K; entry points quik_act_quant_rows_{f16,bf16}_c{NC}, NC = 1, 2, 4, 8;
//   launch bounds (512 threads, 2 blocks) cap them at 64 registers (uncapped, NVRTC gives the 4- and 8-chunk
//   kernels 80 / 73 and they took x1.12-1.16 of the capped time on K = 8192 / 28672, docs/PERF_LOG.md s9m).
//   Dynamic shared memory (bytes, in this order): bitmap 4 * W2, prefix 4 * W2 (W2 as in split mode), codes
//   Kp, outlier indices 4 * n_out.
//   x 16-byte aligned, K % 8 == 0, codes 16-byte aligned (the launcher checks; other inputs go to split
//   mode). Outlier checks as in split mode: an index outside [0, K) or a repeated one poisons every row.
// ---------------------------------------------------------------------------------------------
constexpr int ROWS_MAX_T = 512;

// Row r's chunks of this thread into v (16-byte loads; chunks past the row are not loaded).
template <int NC>
QDEV void load_row_chunks(const unsigned short* __restrict__ x, int r, int K, uint4 (&v)[NC]) {
    const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)r * K);
#pragma unroll
    for (int i = 0; i < NC; ++i) {
        const int ch = i * (int)blockDim.x + (int)threadIdx.x;
        if (8 * ch < K) v[i] = xr[ch];
    }
}

template <bool BF16>
QDEV void unpack8(const uint4& q, float (&f)[8]) {
    const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = to_f32<BF16>((unsigned short)(w[e >> 1] >> (16 * (e & 1))));
}

template <bool BF16, int NC>
QDEV void act_quant_rows(const unsigned short* __restrict__ x, const int* __restrict__ out_idx,
                         signed char* __restrict__ codes, float* __restrict__ scale_out,
                         float* __restrict__ zero_out, unsigned short* __restrict__ x_out, int M, int K, int Kp,
                         int n_out, int bits) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int W = (K + 31) >> 5, W2 = split_smem_words(K), Kq = K - n_out;
    unsigned* bmap = reinterpret_cast<unsigned*>(smem);
    int* pref = reinterpret_cast<int*>(bmap + W2);
    signed char* scode = reinterpret_cast<signed char*>(pref + W2);  // 8 * W2 bytes in: 16-byte aligned
    int* sidx = reinterpret_cast<int*>(scode + Kp);                    // Kp % 64 == 0
    __shared__ float s_mn[32], s_mx[32];
    __shared__ int s_cnt[32], s_bad;
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
    const int tid = threadIdx.x, T = blockDim.x;
    int row = blockIdx.x;
    uint4 v[NC];
    if (row < M) load_row_chunks<NC>(x, row, K, v);  // in flight while the bitmap is built

    // Once per block: the outlier bitmap, the outliers before each word, the indices, the pad codes.
    build_outlier_bitmap(out_idx, n_out, K, bmap, &s_bad, sidx);
    const int total = block_word_prefix(bmap, pref, W, s_cnt);
    const bool bad = s_bad != 0 || total != n_out;
    for (int j = (bad ? 0 : Kq) + tid; j < Kp; j += T) scode[j] = 0;  // never written by the rows below
    __syncthreads();

    for (; row < M; row += gridDim.x) {
        // Pass 1: min / max over my kept columns, then over the block.
        float mn = plus_inf(), mx = minus_inf();
#pragma unroll
        for (int i = 0; i < NC; ++i) {
            const int c = 8 * (i * T + tid);
            if (c < K) {
                float f[8];
                unpack8<BF16>(v[i], f);
                kept_min_max8(f, (bmap[c >> 5] >> (c & 31)) & 0xFFu, 8, mn, mx);
            }
        }
        warp_min_max(mn, mx);
        float scale, zero;
        block_row_params(mn, mx, s_mn, s_mx, bits, bad, scale, zero);
        if (tid == 0) { scale_out[row] = scale; zero_out[row] = zero; }

        // Pass 2: my codes into the shared code row (a poisoned row keeps the zeros written above). The
        // quotients by the reciprocal shortcut (quik_quant.cuh: exact, or flagged), a flagged chunk again by
        // quotient_of's division: the quantizer is instruction bound and the division was ~half of pass 2.
        if (!bad) {
            const bool row_slow = !recip_ok(scale);
            const float rscale = rcp_rn(scale);
#pragma unroll
            for (int i = 0; i < NC; ++i) {
                const int c = 8 * (i * T + tid);
                if (c < K) {
                    const unsigned word = bmap[c >> 5];
                    const unsigned ob = (word >> (c & 31)) & 0xFFu;
                    int j = c - (pref[c >> 5] + __popc(word & ((1u << (c & 31)) - 1u)));
                    float f[8];
                    unpack8<BF16>(v[i], f);
                    int q[8];
                    bool slow = row_slow;
#pragma unroll
                    for (int e = 0; e < 8; ++e) q[e] = quotient_fast(f[e], zero, rscale, slow);
                    if (slow) {  // rare: near a half-integer (ties included), or a row without the shortcut
#pragma unroll
                        for (int e = 0; e < 8; ++e) q[e] = quotient_of(f[e], zero, scale);
                    }
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        if (!((ob >> e) & 1u)) scode[j++] = (signed char)clamp_code(q[e], bits);
                    }
                }
            }
        }
        // The next row's loads, into v (both passes are done with it). Issuing them a row earlier into a
        // second register set was slower (s9m: x1.04-1.23 on NC = 2 / 4), so they start here.
        if (row + (int)gridDim.x < M) load_row_chunks<NC>(x, row + (int)gridDim.x, K, v);
        __syncthreads();  // the code row is complete; s_mn / s_mx are read by everyone

        uint4* dst = reinterpret_cast<uint4*>(codes + (size_t)row * Kp);
        for (int i = tid; i < (Kp >> 4); i += T) dst[i] = reinterpret_cast<const uint4*>(scode)[i];
        // the outlier columns: from L1 / L2 (the row was just loaded), through the block's copy of out_idx
        copy_outliers<BF16>(x_out + (size_t)row * n_out, x + (size_t)row * K, sidx, n_out, K);
        // The next row's pass 2 writes scode only after its pass-1 barrier, which every thread reaches
        // after its stores above; its s_mn / s_mx writes come after the barrier above, past every read.
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster split mode (sm_90; decode sizes): the split kernel's contract and results, one row per
// thread-block cluster of QC CTAs instead of one CTA. At M = 1 the single-CTA kernel runs on one SM and is
// instruction bound (~65 warp instructions per element, ncu): a 28672-column row took ~14 us, most of it
// exposed in front of the small-M GEMM. Here CTA r of the cluster owns the 32-column words
// [r * wpc, (r + 1) * wpc) of the row (wpc = ceil(ceil(K / 32) / QC)) and does everything for them; the row's
// min / max and the validity flag are combined through distributed shared memory (each CTA reads the QC
// partials, once).
//   Launch: grid = (M * QC), block = (T), T a multiple of 32 in [32, 1024]; cluster dims (QC, 1, 1) are
//   compiled in. Dynamic shared memory: 64 * wpc (the chunk) + 8 * wpc (bitmap, prefix counts) bytes.
//   codes need only their 1-byte alignment (codes are stored one byte at a time).
//   Outlier checks as in split mode: an index outside [0, K) or a repeated one poisons every row.
// ---------------------------------------------------------------------------------------------
constexpr int QC = 8;

QDEV unsigned cluster_x() { unsigned r; asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r)); return r; }
QDEV float ld_cluster_f32(const void* p, unsigned rank) {
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(cluster_addr(smem_addr(p), rank)) : "memory");
    return v;
}

template <bool BF16>
QDEV void act_quant_split_cluster(const unsigned short* __restrict__ x, const int* __restrict__ out_idx,
                                  signed char* __restrict__ codes, float* __restrict__ scale_out,
                                  float* __restrict__ zero_out, unsigned short* __restrict__ x_out, int K, int Kp,
                                  int n_out, int bits) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ float s_mn[32], s_mx[32];
    __shared__ int s_in, s_before, s_bad;
    __shared__ float s_part[3];  // this CTA's min, max, bad (read by every CTA of the cluster)
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");  // the GEMM may launch now and wait for us (PDL)
#endif
    const unsigned rank = cta_rank();
    const int row = (int)cluster_x();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const int W = (K + 31) >> 5, wpc = (W + QC - 1) / QC;
    const int w0 = min((int)rank * wpc, W), w1 = min(w0 + wpc, W);
    const int c_begin = min(32 * w0, K), c_end = min(32 * w1, K), len = c_end - c_begin, Kq = K - n_out;  // len may be 0
    unsigned short* srow = reinterpret_cast<unsigned short*>(smem);  // columns c_begin .. c_end - 1
    unsigned* bmap = reinterpret_cast<unsigned*>(smem + 64 * (size_t)wpc);
    int* pref = reinterpret_cast<int*>(bmap + wpc);
    const unsigned short* xr = x + (size_t)row * K;

    // 1. The chunk -> shared memory (16-byte cp.async when every row and the chunk start are aligned:
    //    K % 8 == 0 and c_begin % 32 == 0), while the outliers are sorted into before / in / out of range.
    const bool async = (K & 7) == 0 && (reinterpret_cast<size_t>(x) & 15) == 0;
    if (async) {
        const unsigned sbase = smem_addr(srow);
        for (int i = tid; i < (len >> 3); i += blockDim.x) cp_async16(sbase + 16 * i, xr + c_begin + 8 * i);
        cp_async_commit();
    } else {
        for (int i = tid; i < len; i += blockDim.x) srow[i] = xr[c_begin + i];
    }
    for (int i = tid; i < wpc; i += blockDim.x) bmap[i] = 0u;
    if (tid == 0) { s_in = 0; s_before = 0; s_bad = 0; }
    __syncthreads();
    int in = 0, before = 0;
    for (int i = tid; i < n_out; i += blockDim.x) {
        const int c = out_idx[i];
        if ((unsigned)c >= (unsigned)K) { s_bad = 1; continue; }
        if (c < c_begin) ++before;
        else if (c < c_end) { ++in; atomicOr(&bmap[(c >> 5) - w0], 1u << (c & 31)); }
    }
    if (in) atomicAdd(&s_in, in);
    if (before) atomicAdd(&s_before, before);
    __syncthreads();

    // 2. Outliers before each of my words (a scan over at most wpc words, by warp 0) and my duplicate check.
    if (warp == 0) {
        const int per = (w1 - w0 + 31) >> 5;
        const int i0 = min(lane * per, w1 - w0), i1 = min(i0 + per, w1 - w0);
        const int local = popc_words(bmap, i0, i1);
        const int incl = warp_inclusive_sum(local, lane);
        word_prefix(bmap, pref, i0, i1, s_before + incl - local);
        const int total = __shfl_sync(0xffffffffu, incl, 31);
        if (lane == 0 && total != s_in) s_bad = 1;  // a repeated index in my range
    }
    if (async) cp_async_wait<0>();
    __syncthreads();

    // 3. My min / max over the kept columns.
    float mn, mx;
    warp_kept_min_max<BF16>(srow, bmap, len, mn, mx);
    if (lane == 0) { s_mn[warp] = mn; s_mx[warp] = mx; }
    __syncthreads();
    if (tid == 0) {
        float a, b;
        reduce_min_max(s_mn, s_mx, nwarps, a, b);
        s_part[0] = a; s_part[1] = b; s_part[2] = s_bad ? 1.0f : 0.0f;
    }
    // 4. The row's min / max / bad from the QC partials (min.NaN / max.NaN: any order gives the same bits).
    cl_arrive();
    cl_wait();
    mn = plus_inf(); mx = minus_inf();
    bool bad = false;
#pragma unroll
    for (unsigned r = 0; r < QC; ++r) {
        mn = min_nan(mn, ld_cluster_f32(&s_part[0], r));
        mx = max_nan(mx, ld_cluster_f32(&s_part[1], r));
        bad = bad || ld_cluster_f32(&s_part[2], r) != 0.0f;
    }
    cl_arrive();  // done reading the others' partials: matched by the cl_wait before exit
    float scale, zero;
    row_params(mn, mx, bits, bad, scale, zero);
    if (rank == 0 && tid == 0) { scale_out[row] = scale; zero_out[row] = zero; }

    // 5. My codes at their kept positions, one byte each; the pad columns Kq .. Kp - 1 by the last CTA;
    //    a poisoned row is all zeros (each CTA clears its share of the positions).
    signed char* crow = codes + (size_t)row * Kp;
    if (!bad) {
        place_codes<BF16>(srow, bmap, pref, len, c_begin, zero, scale, bits, crow);
        if (rank == QC - 1)
            for (int j = Kq + tid; j < Kp; j += blockDim.x) crow[j] = 0;
    } else {
        const int per = (Kp + QC - 1) / QC, j0 = (int)rank * per, j1 = min(j0 + per, Kp);
        for (int j = j0 + tid; j < j1; j += blockDim.x) crow[j] = 0;
    }
    if (rank == 0) {  // the outlier columns, from global memory (they lie in every CTA's chunk)
        unsigned short* orow = x_out + (size_t)row * n_out;
        for (int i = tid; i < n_out; i += blockDim.x) {
            const int c = out_idx[i];
            orow[i] = ((unsigned)c < (unsigned)K) ? xr[c] : nan_bits<BF16>();
        }
    }
    cl_wait();  // no CTA leaves while another may still read its partials
}

}  // namespace

#define QUIK_ACT_QUANT_SPLIT(NAME, BF16)                                                                         \
    extern "C" __global__ void __launch_bounds__(1024)                                                             \
    NAME(const unsigned short* x, const int* out_idx, signed char* codes, float* scale, float* zero,               \
         unsigned short* x_out, int K, int Kp, int n_out, int bits) {                                              \
        act_quant_split<BF16>(x, out_idx, codes, scale, zero, x_out, K, Kp, n_out, bits);                          \
    }

QUIK_ACT_QUANT_SPLIT(quik_act_quant_split_f16, false)
QUIK_ACT_QUANT_SPLIT(quik_act_quant_split_bf16, true)

#define QUIK_ACT_QUANT_ROWS(NAME, BF16, NC)                                                                     \
    extern "C" __global__ void __launch_bounds__(ROWS_MAX_T, 2)                                                    \
    NAME(const unsigned short* x, const int* out_idx, signed char* codes, float* scale, float* zero,               \
         unsigned short* x_out, int M, int K, int Kp, int n_out, int bits) {                                       \
        act_quant_rows<BF16, NC>(x, out_idx, codes, scale, zero, x_out, M, K, Kp, n_out, bits);                    \
    }

QUIK_ACT_QUANT_ROWS(quik_act_quant_rows_f16_c1, false, 1)
QUIK_ACT_QUANT_ROWS(quik_act_quant_rows_f16_c2, false, 2)
QUIK_ACT_QUANT_ROWS(quik_act_quant_rows_f16_c4, false, 4)
QUIK_ACT_QUANT_ROWS(quik_act_quant_rows_f16_c8, false, 8)
QUIK_ACT_QUANT_ROWS(quik_act_quant_rows_bf16_c1, true, 1)
QUIK_ACT_QUANT_ROWS(quik_act_quant_rows_bf16_c2, true, 2)
QUIK_ACT_QUANT_ROWS(quik_act_quant_rows_bf16_c4, true, 4)
QUIK_ACT_QUANT_ROWS(quik_act_quant_rows_bf16_c8, true, 8)

// The cluster kernels exist only for sm_90 and later (the launcher uses them there); elsewhere the entry
// points are kept, trapping, so that every build has the same names.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define QUIK_HAS_CLUSTERS
#endif
#ifdef QUIK_HAS_CLUSTERS
extern "C" __global__ void __launch_bounds__(1024) __cluster_dims__(QC, 1, 1)
quik_act_quant_split_cl_f16(const unsigned short* x, const int* out_idx, signed char* codes, float* scale, float* zero,
                            unsigned short* x_out, int K, int Kp, int n_out, int bits) {
    act_quant_split_cluster<false>(x, out_idx, codes, scale, zero, x_out, K, Kp, n_out, bits);
}
extern "C" __global__ void __launch_bounds__(1024) __cluster_dims__(QC, 1, 1)
quik_act_quant_split_cl_bf16(const unsigned short* x, const int* out_idx, signed char* codes, float* scale,
                             float* zero, unsigned short* x_out, int K, int Kp, int n_out, int bits) {
    act_quant_split_cluster<true>(x, out_idx, codes, scale, zero, x_out, K, Kp, n_out, bits);
}
#else
extern "C" __global__ void quik_act_quant_split_cl_f16(const unsigned short*, const int*, signed char*, float*, float*,
                                                       unsigned short*, int, int, int, int) { __trap(); }
extern "C" __global__ void quik_act_quant_split_cl_bf16(const unsigned short*, const int*, signed char*, float*, float*,
                                                        unsigned short*, int, int, int, int) { __trap(); }
#endif

#define QUIK_ACT_QUANT(NAME, BF16, STAGED)                                                                      \
    extern "C" __global__ void __launch_bounds__(1024)                                                             \
    NAME(const unsigned short* x, const int* keep_idx, const int* out_idx, signed char* codes, float* scale,       \
         float* zero, unsigned short* x_out, int K, int Kq, int Kp, int n_out, int bits) {                         \
        act_quant<BF16, STAGED>(x, keep_idx, out_idx, codes, scale, zero, x_out, K, Kq, Kp, n_out, bits);          \
    }

QUIK_ACT_QUANT(quik_act_quant_f16, false, true)
QUIK_ACT_QUANT(quik_act_quant_bf16, true, true)
QUIK_ACT_QUANT(quik_act_quant_f16_gmem, false, false)
QUIK_ACT_QUANT(quik_act_quant_bf16_gmem, true, false)
