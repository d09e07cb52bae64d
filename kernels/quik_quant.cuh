// quik_quant.cuh -- the per-token activation quantizer's arithmetic, shared by quik_act_quant.cu (the
// stand-alone quantizer) and quik_gemm.cu (the small-M kernel that quantizes in its prologue), so that
// both produce the same codes, scales and zeros by construction.
//
// Included textually: the runtime (quiktool/runtime/cuda.py, _source) replaces the line
// `#include "quik_quant.cuh"` with this file before NVRTC sees the source, so no include path is needed.
//
// The reference (quiktool.algo.quant, evaluated by PyTorch) runs in fp32 as separate kernels:
//     mn, mx = amin, amax over the kept columns        (NaN-propagating)
//     scale  = (mx - mn) / (2^b - 1)    -- an IEEE division: the reference divides by a tensor, because
//                                          torch's CUDA division by a Python scalar is a multiply by the
//                                          reciprocal while its CPU division is exact (1 ulp apart)
//     scale  = scale if scale > 0 else 1
//     q      = clamp(round_half_even((x - mn) / scale), 0, 2^b - 1) - 2^(b-1)   (IEEE sub, IEEE div)
// CuPy compiles RawModules with -ftz=true, which would flush subnormals in plain C arithmetic,
// comparisons and libdevice's __fdiv_rn. Every operation that decides a bit of the result is therefore an
// explicit non-.ftz PTX instruction (sub.rn, mul.rn, add.rn, div.rn, min/max.NaN, cvt.rni), the "> 0"
// test is done on the bit pattern, and nothing can be contracted into an FMA.
#ifndef QUIK_QUANT_CUH
#define QUIK_QUANT_CUH

#ifndef QDEV
#define QDEV __device__ __forceinline__
#endif

namespace quikq {

template <bool BF16> QDEV float to_f32(unsigned short h);
template <> QDEV float to_f32<false>(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
template <> QDEV float to_f32<true>(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }

template <bool BF16> QDEV unsigned short nan_bits() { return BF16 ? 0x7FC0 : 0x7E00; }

QDEV float sub_rn(float a, float b) { float r; asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
QDEV float add_rn(float a, float b) { float r; asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
QDEV float mul_rn(float a, float b) { float r; asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
QDEV float div_rn(float a, float b) { float r; asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
QDEV float min_nan(float a, float b) { float r; asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
QDEV float max_nan(float a, float b) { float r; asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
// round half to even, saturating; NaN -> 0 (torch's int8 cast of NaN is undefined anyway)
QDEV int rint_s32(float a) { int r; asm("cvt.rni.s32.f32 %0, %1;" : "=r"(r) : "f"(a)); return r; }
// "scale > 0" on the bits: positive, nonzero, not NaN (+inf counts as > 0, like torch). Immune to -ftz.
QDEV bool positive(float a) { int b = __float_as_int(a); return b > 0 && b <= 0x7F800000; }

QDEV float plus_inf() { return __int_as_float(0x7F800000); }
QDEV float minus_inf() { return __int_as_float(0xFF800000); }

// Four consecutive entries of keep_idx starting at j0 (j0 % 4 == 0); -1 past the end (j >= Kq).
QDEV void load_idx4(const int* __restrict__ keep_idx, int j0, int Kq, bool vec, int (&c)[4]) {
    if (vec && j0 + 3 < Kq) {
        const int4 v = *reinterpret_cast<const int4*>(keep_idx + j0);
        c[0] = v.x; c[1] = v.y; c[2] = v.z; c[3] = v.w;
    } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) c[e] = j0 + e < Kq ? keep_idx[j0 + e] : -1;
    }
}

// The row's scale from its min / max over the kept columns; a row with an index outside [0, K) ("bad") is
// poisoned: scale = zero = NaN (and its codes are 0), so that the error cannot pass silently.
QDEV void row_params(float mn, float mx, int bits, bool bad, float& scale, float& zero) {
    scale = div_rn(sub_rn(mx, mn), (float)((1 << bits) - 1));
    if (!positive(scale)) scale = 1.0f;
    zero = mn;
    if (bad) { scale = __int_as_float(0x7FC00000); zero = scale; }
}

// rint((v - zero) / scale), unclamped (IEEE sub and div, round half to even).
QDEV int quotient_of(float v, float zero, float scale) { return rint_s32(div_rn(sub_rn(v, zero), scale)); }
// A quotient's signed code: clamp(q, 0, 2^b - 1) - 2^(b-1).
QDEV int clamp_code(int q, int bits) { return min(max(q, 0), (1 << bits) - 1) - (1 << (bits - 1)); }
// The signed code of one value: clamp(rint((v - zero) / scale), 0, 2^b - 1) - 2^(b-1).
QDEV int code_of(float v, float zero, float scale, int bits) { return clamp_code(quotient_of(v, zero, scale), bits); }

// The reciprocal shortcut for code_of (rows-mode quantizer): per row, rscale = RN(1 / scale) once; per value
// t = RN(RN(v - zero) * rscale) and n = t rounded to the nearest integer (add / subtract 1.5 * 2^23). Exact
// with respect to code_of, because for a kept value the quotient Q = (v - zero) / scale lies in
// [0, (2^b - 1)(1 + 2^-24)] < 256 (zero = min, v <= max, scale = RN((max - min) / (2^b - 1))), and for a
// normal scale t carries three roundings (v - zero, which need not be exact for 16-bit inputs far apart; 1 / scale;
// the product), so |t - Q| <= |Q| (3 * 2^-24 + 4 * 2^-48), and |RN(Q) - Q| <= |Q| 2^-24: |t - RN(Q)| <= 1021 * 2^-24
// < 2^-14. When |t - n| < 0.5 - 2^-12, RN(Q) is strictly within 0.5 of n and code_of's rint gives n too. Otherwise
// (near a half-integer; ties; a row whose scale is not in [2^-126, 2^126), NaN or inf), the caller takes
// quotient_of. 0 <= t < 2^22 makes the add-and-subtract rounding exact (round half to even, unused at ties).
QDEV bool recip_ok(float scale) {  // positive, normal, and 1 / scale normal
    const unsigned b = __float_as_uint(scale);
    return b >= 0x00800000u && b < 0x7E800000u;
}
QDEV float rcp_rn(float a) { float r; asm("rcp.rn.f32 %0, %1;" : "=f"(r) : "f"(a)); return r; }
// q = the candidate quotient_of(v, zero, scale); slow |= whether it needs quotient_of's division instead.
QDEV int quotient_fast(float v, float zero, float rscale, bool& slow) {
    const float t = mul_rn(sub_rn(v, zero), rscale);
    const float a = add_rn(t, 12582912.0f);  // 1.5 * 2^23: the integer part lands in the low mantissa bits
    const float n = sub_rn(a, 12582912.0f);
    const float diff = sub_rn(t, n);
    slow |= !(diff < 0.499755859375f && diff > -0.499755859375f);  // 0.5 - 2^-12; NaN -> slow
    return (int)(__float_as_uint(a) - 0x4B400000u);
}
}  // namespace quikq

#endif  // QUIK_QUANT_CUH
