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
//   Launch: grid = (M), block = (T), T a multiple of 32 in [32, 1024].
//   Pointers: x needs only its 2-byte alignment (rows are copied with 16-byte cp.async when x is 16-byte
//   aligned and K % 8 == 0, element by element otherwise); codes 4-byte aligned (rows are written as
//   32-bit words; Kp % 64 == 0 keeps every row aligned); keep_idx is read 4 at a time when 16-byte
//   aligned, one at a time otherwise. The launcher (quiktool/runtime/cuda.py) checks dtypes, shapes and
//   alignment; index VALUES are not checked on the host (that would need a sync): an index outside
//   [0, K) never reads memory, and poisons that row (scale = zero = NaN, x_outlier = NaN) so that the
//   error cannot pass silently.
//
// Arithmetic, and why it is written with inline PTX
//   The reference (quant.py) runs in fp32 as separate PyTorch kernels:
//     mn, mx = amin, amax over the kept columns        (NaN-propagating)
//     scale  = (mx - mn) / (2^b - 1)    -- an IEEE division: the reference divides by a tensor, because
//                                          torch's CUDA division by a Python scalar is a multiply by the
//                                          reciprocal while its CPU division is exact (1 ulp apart)
//     scale  = scale if scale > 0 else 1
//     q      = clamp(round_half_even((x - mn) / scale), 0, 2^b - 1) - 2^(b-1)   (IEEE sub, IEEE div)
//   CuPy compiles RawModules with -ftz=true, which would flush subnormals in plain C arithmetic,
//   comparisons and libdevice's __fdiv_rn. Every operation that decides a bit of the result is therefore
//   an explicit non-.ftz PTX instruction (sub.rn, mul.rn, div.rn, min/max.NaN, cvt.rni), the "> 0" test
//   is done on the bit pattern, and nothing can be contracted into an FMA.
//
// Work split: one block per row. The staged kernel first copies the row into shared memory with 16-byte
// cp.async (every load of the row in flight at once: gathers of 2-byte elements straight from global
// memory leave too few bytes in flight and ran at ~0.4 TB/s); pass 1 reduces min/max over the kept
// columns, pass 2 writes 4 codes per thread as one 32-bit store; both passes gather from shared memory
// through keep_idx (read 4 indices at a time; the same small array for every row, so it stays in L2).

#define QDEV __device__ __forceinline__

namespace {

template <bool BF16> QDEV float to_f32(unsigned short h);
template <> QDEV float to_f32<false>(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
template <> QDEV float to_f32<true>(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }

template <bool BF16> QDEV unsigned short nan_bits() { return BF16 ? 0x7FC0 : 0x7E00; }

QDEV float sub_rn(float a, float b) { float r; asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
QDEV float mul_rn(float a, float b) { float r; asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
QDEV float div_rn(float a, float b) { float r; asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
QDEV float min_nan(float a, float b) { float r; asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
QDEV float max_nan(float a, float b) { float r; asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
// round half to even, saturating; NaN -> 0 (torch's int8 cast of NaN is undefined anyway)
QDEV int rint_s32(float a) { int r; asm("cvt.rni.s32.f32 %0, %1;" : "=r"(r) : "f"(a)); return r; }
// "scale > 0" on the bits: positive, nonzero, not NaN (+inf counts as > 0, like torch). Immune to -ftz.
QDEV bool positive(float a) { int b = __float_as_int(a); return b > 0 && b <= 0x7F800000; }

QDEV void cp_async16(unsigned dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}

// Four consecutive entries of keep_idx starting at j0 (j0 % 4 == 0); -1 past the end.
QDEV void load_idx4(const int* __restrict__ keep_idx, int j0, int Kq, bool vec, int (&c)[4]) {
    if (vec && j0 + 3 < Kq) {
        const int4 v = *reinterpret_cast<const int4*>(keep_idx + j0);
        c[0] = v.x; c[1] = v.y; c[2] = v.z; c[3] = v.w;
    } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) c[e] = j0 + e < Kq ? keep_idx[j0 + e] : -1;
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
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const unsigned short* xr = x + (size_t)row * K;

    if constexpr (STAGED) {
        if ((K & 7) == 0 && (reinterpret_cast<size_t>(x) & 15) == 0) {  // every row is 16-byte aligned
            const unsigned sbase = (unsigned)__cvta_generic_to_shared(srow);
            for (int i = tid; i < (K >> 3); i += blockDim.x) cp_async16(sbase + 16 * i, xr + 8 * i);
            asm volatile("cp.async.commit_group;\n" ::);
            asm volatile("cp.async.wait_group 0;\n" ::);
        } else {
            for (int i = tid; i < K; i += blockDim.x) srow[i] = xr[i];
        }
        __syncthreads();
    }
    const unsigned short* src = STAGED ? srow : xr;
    const bool vec = (reinterpret_cast<size_t>(keep_idx) & 15) == 0;

    // Pass 1: min / max over the kept columns.
    float mn = __int_as_float(0x7F800000), mx = __int_as_float(0xFF800000);  // +inf, -inf
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

    const int qmax = (1 << bits) - 1, shift = 1 << (bits - 1);
    // IEEE division, as the reference (quant.py divides by a tensor so CPU and CUDA torch agree)
    float scale = div_rn(sub_rn(mx, mn), (float)qmax);
    if (!positive(scale)) scale = 1.0f;
    if (bad) { scale = __int_as_float(0x7FC00000); mn = scale; }
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
            if (j0 + e < Kq && !bad) {
                const float v = to_f32<BF16>(src[c[e]]);
                q = rint_s32(div_rn(sub_rn(v, mn), scale));
                q = min(max(q, 0), qmax) - shift;
            }
            packed |= ((unsigned)q & 0xFFu) << (8 * e);
        }
        crow[j0 >> 2] = (int)packed;
    }

    // Outlier columns, copied bit for bit.
    unsigned short* orow = x_out + (size_t)row * n_out;
    for (int i = tid; i < n_out; i += blockDim.x) {
        const int c = out_idx[i];
        orow[i] = ((unsigned)c < (unsigned)K) ? src[c] : nan_bits<BF16>();
    }
}

}  // namespace

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
