// BitNet b1.58 forward-pass kernels for NVIDIA GPUs, compiled at run time by NVRTC
// (crates/bitnet-engine/src/cuda/mod.rs). No CUDA headers: f16 conversions are PTX `cvt`.
// Compiled with --fmad=false so that every float expression rounds as the CPU engine's
// (forward.rs) does; only reduction orders differ.
//
// Layouts:
// - Ternary weights: row-major [rows][words] of u32, words = ceil(cols / 16). Word j of a row
//   holds columns 16j..16j+15 as 2-bit codes c = w + 1 (0 -> -1, 1 -> 0, 2 -> +1): column
//   16j + 4k + b sits in byte b at bit shift 2k, so (word >> 2k) & 0x03030303 is four code
//   bytes lined up with the four activation bytes q[16j+4k .. 16j+4k+3] of one int32 load,
//   ready for __dp4a. Padding columns are code 1 (zero weight) against zero activations.
// - Activations: int8 [n][kp] (kp = 16 * words), per-token scale s_x and sum Σq.
//   Σ w·q = Σ c·q − Σ q (BITNET.md); out = (Σc·q − Σq) / s_x · scale_row.
// - KV cache of one sequence: [layer][kv_head][capacity][head_dim], for K and for V, in f32
//   when compiled with -DBITNET_KV_F32 (the default: the CPU engine's precision), else f16.
// - Token table: 3 u64 per token of the step: K cache address, V cache address,
//   position | (capacity << 32).

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#ifndef BITNET_CUDA_EMU
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("{cvt.f32.f16 %0, %1;}" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("{cvt.rn.f16.f32 %0, %1;}" : "=h"(h) : "f"(f));
    return h;
}
#else  // scripts/cuda-emu: the same conversions on the CPU
__device__ __forceinline__ float h2f(u16 h) { return emu_h2f(h); }
__device__ __forceinline__ u16 f2h(float f) { return emu_f2h(f); }
#endif
#ifdef BITNET_KV_F32
typedef float kv_t;
__device__ __forceinline__ float kv_load(float v) { return v; }
__device__ __forceinline__ float kv_store(float v) { return v; }
#else
typedef u16 kv_t;
__device__ __forceinline__ float kv_load(u16 v) { return h2f(v); }
__device__ __forceinline__ u16 kv_store(float v) { return f2h(v); }
#endif
__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

struct Add {
    template <class T>
    __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Butterfly reduction over a warp; every lane gets the result.
template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum_f(float v) { return warp_reduce(v, Add()); }
__device__ __forceinline__ int warp_sum_i(int v) { return warp_reduce(v, Add()); }

// Block-wide reduction for blockDim.x == 256 (8 warps) through `sh` (8 values of shared
// memory); every thread gets the result.
template <class T, class Op>
__device__ T block_reduce(T v, T* sh, Op op) {
    v = warp_reduce(v, op);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    T r = sh[0];
    for (int i = 1; i < 8; i++) r = op(r, sh[i]);
    return r;
}

// 1 / sqrt(mean(x²) + eps) of one row, the sum of squares in f64 as ops::rmsnorm; a block of
// 256 threads, every thread gets the result.
__device__ float rms_inv(const float* xr, int k, float eps, double* shd) {
    double ss = 0.0;
    for (int i = threadIdx.x; i < k; i += 256) {
        double v = (double)xr[i];
        ss += v * v;
    }
    ss = block_reduce(ss, shd, Add());
    float var = (float)(ss / (double)k);
    return 1.0f / sqrtf(var + eps);
}

// RMSNorm (sum of squares in f64, as ops::rmsnorm) fused with per-token absmax int8
// quantization (act.rs): s = 127 / max(max|y|, 1e-5), q = clamp(rint(y * s), -128, 127)
// (rint rounds half to even, like torch). One block of 256 threads per token row.
extern "C" __global__ void rmsnorm_quant(const float* __restrict__ x, const float* __restrict__ w,
                                         float eps, int k, int kp, signed char* __restrict__ q,
                                         float* __restrict__ sx, int* __restrict__ sumx) {
    __shared__ double shd[8];
    __shared__ float shf[8];
    __shared__ int shi[8];
    int t = blockIdx.x;
    const float* xr = x + (size_t)t * k;
    float inv = rms_inv(xr, k, eps, shd);
    float amax = 0.0f;
    for (int i = threadIdx.x; i < k; i += 256) amax = fmaxf(amax, fabsf(w[i] * (xr[i] * inv)));
    amax = block_reduce(amax, shf, Max());
    float s = 127.0f / fmaxf(amax, 1e-5f);
    signed char* qr = q + (size_t)t * kp;
    int sum = 0;
    for (int i = threadIdx.x; i < kp; i += 256) {
        int v = 0;
        if (i < k) {
            float y = w[i] * (xr[i] * inv);
            v = (int)fminf(fmaxf(rintf(y * s), -128.0f), 127.0f);
        }
        qr[i] = (signed char)v;
        sum += v;
    }
    sum = block_reduce(sum, shi, Add());
    if (threadIdx.x == 0) {
        sx[t] = s;
        sumx[t] = sum;
    }
}

// Final RMSNorm in f32 of the token rows `rows[j]` of x into out[j] (the rows whose logits
// are wanted). One block of 256 threads per output row.
extern "C" __global__ void rmsnorm_rows(const float* __restrict__ x, const int* __restrict__ rows,
                                        const float* __restrict__ w, float eps, int k,
                                        float* __restrict__ out) {
    __shared__ double shd[8];
    int j = blockIdx.x;
    const float* xr = x + (size_t)rows[j] * k;
    float inv = rms_inv(xr, k, eps, shd);
    for (int i = threadIdx.x; i < k; i += 256) out[(size_t)j * k + i] = w[i] * (xr[i] * inv);
}

#define GEMM_TOKENS 8
#define GEMM_WARPS 8

// Ternary x int8 GEMM/GEMV with dp4a: out[t][r] (+)= (Σ c·q − Σq) / s_x[t] · scale[r].
// One warp per weight row, a tile of up to GEMM_TOKENS tokens per block row (blockIdx.y), so
// a weight word is loaded once per tile; lanes stride over words (coalesced 128-byte loads).
extern "C" __global__ void ternary_gemm(const u32* __restrict__ W, const float* __restrict__ scale,
                                        const signed char* __restrict__ q,
                                        const float* __restrict__ sx, const int* __restrict__ sumx,
                                        float* __restrict__ out, int rows, int words, int n,
                                        int accumulate) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * GEMM_WARPS + warp;
    if (r >= rows) return;
    int t0 = blockIdx.y * GEMM_TOKENS;
    int nt = min(GEMM_TOKENS, n - t0);
    int kp = words * 16;
    int acc[GEMM_TOKENS];
#pragma unroll
    for (int i = 0; i < GEMM_TOKENS; i++) acc[i] = 0;
    const u32* wr = W + (size_t)r * words;
    for (int j = lane; j < words; j += 32) {
        u32 wv = wr[j];
        int c0 = (int)(wv & 0x03030303u);
        int c1 = (int)((wv >> 2) & 0x03030303u);
        int c2 = (int)((wv >> 4) & 0x03030303u);
        int c3 = (int)((wv >> 6) & 0x03030303u);
#pragma unroll
        for (int i = 0; i < GEMM_TOKENS; i++) {
            if (i < nt) {
                int4 qv = *(const int4*)(q + (size_t)(t0 + i) * kp + (size_t)j * 16);
                int a = acc[i];
                a = __dp4a(c0, qv.x, a);
                a = __dp4a(c1, qv.y, a);
                a = __dp4a(c2, qv.z, a);
                a = __dp4a(c3, qv.w, a);
                acc[i] = a;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < GEMM_TOKENS; i++) {
        if (i < nt) {
            int a = warp_sum_i(acc[i]);
            if (lane == 0) {
                int t = t0 + i;
                float v = (float)(a - sumx[t]) / sx[t] * scale[r];
                size_t o = (size_t)t * rows + r;
                out[o] = accumulate ? out[o] + v : v;
            }
        }
    }
}

// RoPE (half-split: dimension i pairs with i + hd/2) on the q and k parts of the fused qkv
// rows, then K (rotated) and V stored into each token's sequence cache (kv_t). One block per
// token. qkv row: [q: n_heads*hd | k: n_kv*hd | v: n_kv*hd].
extern "C" __global__ void rope_store(float* __restrict__ qkv, const float* __restrict__ cos_t,
                                      const float* __restrict__ sin_t, const u64* __restrict__ info,
                                      int layer, int n_heads, int n_kv, int hd) {
    int t = blockIdx.x;
    int half = hd / 2;
    int qd = n_heads * hd, kvd = n_kv * hd;
    float* row = qkv + (size_t)t * (qd + 2 * kvd);
    u64 meta = info[3 * t + 2];
    int pos = (int)(meta & 0xffffffffull);
    int cap = (int)(meta >> 32);
    kv_t* kc = (kv_t*)info[3 * t];
    kv_t* vc = (kv_t*)info[3 * t + 1];
    const float* c = cos_t + (size_t)pos * half;
    const float* s = sin_t + (size_t)pos * half;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        int h = idx / half, i = idx % half;
        float* a = row + h * hd;
        float x1 = a[i], x2 = a[i + half];
        a[i] = x1 * c[i] - x2 * s[i];
        a[i + half] = x2 * c[i] + x1 * s[i];
    }
    for (int idx = threadIdx.x; idx < n_kv * half; idx += blockDim.x) {
        int h = idx / half, i = idx % half;
        const float* a = row + qd + h * hd;
        float x1 = a[i], x2 = a[i + half];
        size_t base = (((size_t)layer * n_kv + h) * cap + pos) * hd;
        kc[base + i] = kv_store(x1 * c[i] - x2 * s[i]);
        kc[base + i + half] = kv_store(x2 * c[i] + x1 * s[i]);
    }
    for (int idx = threadIdx.x; idx < kvd; idx += blockDim.x) {
        int h = idx / hd, i = idx % hd;
        size_t base = (((size_t)layer * n_kv + h) * cap + pos) * hd;
        vc[base + i] = kv_store(row[qd + kvd + idx]);
    }
}

#ifndef ATT_WARPS  // set by the host (cuda/step.rs ATT_WARPS), which launches 32·ATT_WARPS threads
#define ATT_WARPS 8
#endif
#define ATT_MAX_E 8

// Causal attention of one (head, token) pair over its sequence's cached positions 0..=pos
// (GQA: kv head = head / group), out = softmax(q·Kᵀ·scale)·V. ATT_WARPS warps split the positions;
// each keeps a running max, sum and value accumulator (online softmax), combined at the end.
// Lane l holds dimensions l, l+32, … below head_dim (head_dim ≤ 256).
extern "C" __global__ void attention(const float* __restrict__ qkv, const u64* __restrict__ info,
                                     float* __restrict__ out, int layer, int n_heads, int n_kv,
                                     int hd, float scale) {
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
    __shared__ float sacc[ATT_WARPS][ATT_MAX_E * 32];
    int head = blockIdx.x, t = blockIdx.y;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int qd = n_heads * hd, kvd = n_kv * hd;
    int kvh = head / (n_heads / n_kv);
    u64 meta = info[3 * t + 2];
    int pos = (int)(meta & 0xffffffffull);
    int cap = (int)(meta >> 32);
    const kv_t* kc = (const kv_t*)info[3 * t] + (((size_t)layer * n_kv + kvh) * cap) * hd;
    const kv_t* vc = (const kv_t*)info[3 * t + 1] + (((size_t)layer * n_kv + kvh) * cap) * hd;
    const float* qr = qkv + (size_t)t * (qd + 2 * kvd) + head * hd;
    float qv[ATT_MAX_E], acc[ATT_MAX_E];
#pragma unroll
    for (int e = 0; e < ATT_MAX_E; e++) {
        qv[e] = lane + 32 * e < hd ? qr[lane + 32 * e] : 0.0f;
        acc[e] = 0.0f;
    }
    float m = __int_as_float(0xff800000), l = 0.0f;
    for (int p = warp; p <= pos; p += ATT_WARPS) {
        const kv_t* kr = kc + (size_t)p * hd;
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < ATT_MAX_E; e++)
            if (lane + 32 * e < hd) d += qv[e] * kv_load(kr[lane + 32 * e]);
        d = warp_sum_f(d) * scale;
        float mn = fmaxf(m, d);
        float corr = expf(m - mn);
        float pe = expf(d - mn);
        l = l * corr + pe;
        const kv_t* vr = vc + (size_t)p * hd;
#pragma unroll
        for (int e = 0; e < ATT_MAX_E; e++)
            if (lane + 32 * e < hd) acc[e] = acc[e] * corr + pe * kv_load(vr[lane + 32 * e]);
        m = mn;
    }
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < ATT_MAX_E; e++)
        if (lane + 32 * e < hd) sacc[warp][lane + 32 * e] = acc[e];
    __syncthreads();
    float mx = sm[0];
    for (int w = 1; w < ATT_WARPS; w++) mx = fmaxf(mx, sm[w]);
    float total = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++) total += sl[w] * expf(sm[w] - mx);
    float* o = out + (size_t)t * qd + head * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) v += sacc[w][i] * expf(sm[w] - mx);
        o[i] = v / total;
    }
}

// FFN activation: g[t][i] = act(gate[t][i]) · up[t][i], from the fused [gate | up] rows.
// relu2: max(g, 0)²; silu: g / (1 + e^−g).
extern "C" __global__ void act_mul(const float* __restrict__ gu, float* __restrict__ g, int inter,
                                   int n, int relu2) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * inter) return;
    size_t t = idx / inter, i = idx % inter;
    float a = gu[t * 2 * inter + i], u = gu[t * 2 * inter + inter + i];
    if (relu2) {
        float r = fmaxf(a, 0.0f);
        g[idx] = r * r * u;
    } else {
        g[idx] = a / (1.0f + expf(-a)) * u;
    }
}

#define HEAD_TOKENS 16

// The output head in its stored float type: out[j][r] = Σ_c W[r][c] · x[j][c] for m rows of x.
// One warp per vocabulary row, tokens in tiles of HEAD_TOKENS (a weight row is read once per
// tile). T is decoded by LOAD (f32, f16, bf16).
#define HEAD_KERNEL(NAME, T, LOAD)                                                              \
    extern "C" __global__ void NAME(const T* __restrict__ W, const float* __restrict__ x,      \
                                    float* __restrict__ out, int rows, int cols, int m) {      \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                  \
        int r = blockIdx.x * 8 + warp;                                                         \
        if (r >= rows) return;                                                                 \
        const T* wr = W + (size_t)r * cols;                                                    \
        for (int j0 = 0; j0 < m; j0 += HEAD_TOKENS) {                                          \
            float acc[HEAD_TOKENS];                                                            \
            for (int i = 0; i < HEAD_TOKENS; i++) acc[i] = 0.0f;                               \
            for (int c = lane; c < cols; c += 32) {                                            \
                float wv = LOAD(wr[c]);                                                        \
                for (int i = 0; i < HEAD_TOKENS; i++)                                          \
                    if (j0 + i < m) acc[i] += wv * x[(size_t)(j0 + i) * cols + c];             \
            }                                                                                  \
            for (int i = 0; i < HEAD_TOKENS; i++) {                                            \
                if (j0 + i < m) {                                                              \
                    float s = warp_sum_f(acc[i]);                                              \
                    if (lane == 0) out[(size_t)(j0 + i) * rows + r] = s;                       \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

__device__ __forceinline__ float load_f32(float v) { return v; }
__device__ __forceinline__ float load_f16(u16 v) { return h2f(v); }
__device__ __forceinline__ float load_bf16(u16 v) { return bf2f(v); }
HEAD_KERNEL(head_f32, float, load_f32)
HEAD_KERNEL(head_f16, u16, load_f16)
HEAD_KERNEL(head_bf16, u16, load_bf16)

// The output head stored as GGUF Q6_K (the default embedding of llama.cpp's TQ2_0 files), read
// in place: 210-byte blocks of 256 weights (ql[128] low 4 bits, qh[64] high 2 bits, scales[16]
// int8, d f16), w = d · scale · (q − 32), exactly as the CPU's dequantization (same products,
// so the weights are bit-identical to an f32 expansion) at 6.56 bits instead of 32 per weight.
// One warp per row; lane l decodes positions l, l+32, l+64, l+96 of each 128-half of a block.
extern "C" __global__ void head_q6k(const unsigned char* __restrict__ W, const float* __restrict__ x,
                                    float* __restrict__ out, int rows, int cols, int m) {
    int warp = threadIdx.x >> 5, l = threadIdx.x & 31;
    int r = blockIdx.x * 8 + warp;
    if (r >= rows) return;
    int nb = cols / 256;
    const unsigned char* wr = W + (size_t)r * nb * 210;
    int is = l / 16;
    for (int j0 = 0; j0 < m; j0 += HEAD_TOKENS) {
        float acc[HEAD_TOKENS];
        for (int i = 0; i < HEAD_TOKENS; i++) acc[i] = 0.0f;
        for (int b = 0; b < nb; b++) {
            const unsigned char* blk = wr + (size_t)b * 210;
            float d = h2f((u16)(blk[208] | (blk[209] << 8)));
            for (int half = 0; half < 2; half++) {
                const unsigned char* ql = blk + 64 * half;
                int qh = blk[128 + 32 * half + l];
                const signed char* sc = (const signed char*)(blk + 192 + 8 * half);
                int qa = ql[l], qb = ql[l + 32];
                float w0 = d * (float)sc[is] * (float)(((qa & 0xF) | ((qh & 3) << 4)) - 32);
                float w1 = d * (float)sc[is + 2] * (float)(((qb & 0xF) | (((qh >> 2) & 3) << 4)) - 32);
                float w2 = d * (float)sc[is + 4] * (float)(((qa >> 4) | (((qh >> 4) & 3) << 4)) - 32);
                float w3 = d * (float)sc[is + 6] * (float)(((qb >> 4) | (((qh >> 6) & 3) << 4)) - 32);
                int c0 = b * 256 + 128 * half + l;
                for (int i = 0; i < HEAD_TOKENS; i++) {
                    if (j0 + i < m) {
                        const float* xr = x + (size_t)(j0 + i) * cols + c0;
                        acc[i] += w0 * xr[0];
                        acc[i] += w1 * xr[32];
                        acc[i] += w2 * xr[64];
                        acc[i] += w3 * xr[96];
                    }
                }
            }
        }
        for (int i = 0; i < HEAD_TOKENS; i++) {
            if (j0 + i < m) {
                float s = warp_sum_f(acc[i]);
                if (l == 0) out[(size_t)(j0 + i) * rows + r] = s;
            }
        }
    }
}
