/* Bit-packed XNOR-popcount kernels for the binarized refiner's convolutions (issue 15).
 *
 * Plain C with no Python or torch headers: built by the package's own build (setup.py, an optional extension
 * compiled with the system compiler) and loaded with ctypes by nnunetv2_hidiff/networks/packed.py.
 *
 * A binary convolution y[o, n] = sum_k sign(W)[o, k] * a[k, n] over the K = C*kh*kw taps of output pixel n, with
 * a in {-1, +1} inside the image and 0 in the zero padding, is computed exactly as
 *     y[o, n] = K - 2 * popcount(w_bits[o] XOR a_bits[n]) + corr[o, n]
 * where a bit is 1 for +1, padded taps are packed as -1 and corr[o, n] = sum of sign(W)[o, k] over the padded taps
 * of pixel n (0 inside the image; packed.py computes it once per input size). The activations are binarized
 * while they are packed: bit = x > threshold[b, c], i.e. the time-dependent threshold TB is fused into the packing.
 *
 * The popcount loop is dispatched at run time: AVX-512 VPOPCNTDQ (8 pixels of one output channel per instruction,
 * written out as they are), AVX2 (the same block layout, 4 pixels per vector, nibble-lookup popcount), or portable
 * scalar. hidiff_xnor_set_isa forces a lower level (tests).
 */
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HIDIFF_X86 1
#else
#define HIDIFF_X86 0
#endif

#define HIDIFF_XNOR_ABI 12

enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

static int forced_isa = -1;

int hidiff_xnor_abi(void) { return HIDIFF_XNOR_ABI; }

/* 1 when built with OpenMP: the *_par entry points below then split their work over OpenMP threads. Loaded into
 * a process where torch has already loaded its libgomp.so.1, the dynamic linker binds this library to that same
 * runtime (same soname), so the kernels run on torch's own intra-op thread pool instead of competing with its
 * spinning workers. Without OpenMP the *_par functions run their parts one after another. */
int hidiff_xnor_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int hidiff_xnor_best_isa(void) {
#if HIDIFF_X86 && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) return ISA_AVX512;
    if (__builtin_cpu_supports("avx2")) return ISA_AVX2;
#endif
    return ISA_SCALAR;
}

/* Use at most `isa` (-1: the best the CPU has). Returns the level now in use. */
int hidiff_xnor_set_isa(int isa) {
    int best = hidiff_xnor_best_isa();
    forced_isa = (isa < 0 || isa > best) ? -1 : isa;
    return forced_isa < 0 ? best : forced_isa;
}

int hidiff_xnor_isa(void) { return forced_isa < 0 ? hidiff_xnor_best_isa() : forced_isa; }

static inline int popcount64(uint64_t v) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_popcountll(v);
#else
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    return (int)((((v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL) * 0x0101010101010101ULL) >> 56);
#endif
}

/* Bit layout of one im2col column (K = C * kh * kw taps): CB = ceil(C / 8) bytes per tap, tap t = i * kw + j
 * at bytes [t * CB, (t + 1) * CB), channel c at bit c % 8 of byte c / 8; `words` 64-bit words in total, unused
 * bits 0. Weights use the same layout, so bits that belong to no real (tap, channel) are 0 on both sides and
 * never count as a disagreement. Taps in the zero padding are 0 ("-1") in the column: the caller adds the
 * per-pixel correction sum over those taps of sign(W) (see packed.py), which makes the result exact. */

/* Stage 1: the sign bytes of pixels [p0, p1) of every image of x (B, C, H, W), float32, contiguous, bit c % 8 of
 * byte off + c / 8 = x > threshold[b, c] (threshold may be NULL: 0). signs: (B, H * W, CBt) with CBt >= off + CB
 * bytes per pixel, so that two sources pack side by side into the bytes of their channel concatenation (the first
 * with a multiple of 8 channels) without the concatenation ever being built in float. Each byte (8 channels of one
 * pixel) is assembled in a small block buffer and written once: the channel loop streams the 8 input rows and
 * vectorises, instead of 8 read-modify-writes of one strided byte per pixel. */
void hidiff_pack_signs(const float *x, const float *threshold, int B, int C, int H, int W, int p0, int p1,
                       uint8_t *signs, int CBt, int off) {
    enum { PB = 256 };
    const int CB = (C + 7) / 8;
    const size_t HW = (size_t)H * W;
    uint8_t acc[PB];
    for (int b = 0; b < B; ++b)
        for (int q0 = p0; q0 < p1; q0 += PB) {
            const int len = p1 - q0 < PB ? p1 - q0 : PB;
            uint8_t *dst = signs + ((size_t)b * HW + q0) * CBt + off;
            for (int g = 0; g < CB; ++g) {
                memset(acc, 0, sizeof acc);
                const int c_end = C < (g + 1) * 8 ? C : (g + 1) * 8;
                for (int c = g * 8; c < c_end; ++c) {
                    const float *xc = x + ((size_t)b * C + c) * HW + q0;
                    const float thr = threshold ? threshold[(size_t)b * C + c] : 0.0f;
                    const int shift = c & 7;
                    for (int q = 0; q < len; ++q) acc[q] |= (uint8_t)((xc[q] > thr) << shift);
                }
                if (CBt == 1) {
                    memcpy(dst, acc, (size_t)len);
                } else {
                    for (int q = 0; q < len; ++q) dst[(size_t)q * CBt + g] = acc[q];
                }
            }
        }
}

/* Stage 2: the im2col columns of output rows [r0, r1) of every image. bits: (B * Ho * Wo, words). */
void hidiff_pack_columns(const uint8_t *signs, int B, int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                         int pw, int dh, int dw, int Ho, int Wo, int words, int r0, int r1, uint64_t *bits) {
    const int CB = (C + 7) / 8;
    const size_t HW = (size_t)H * W;
    const size_t column_bytes = (size_t)words * 8;
    for (int b = 0; b < B; ++b)
        for (int ho = r0; ho < r1; ++ho)
            for (int wo = 0; wo < Wo; ++wo) {
                uint8_t *col = (uint8_t *)(bits + ((size_t)(b * Ho + ho) * Wo + wo) * words);
                memset(col, 0, column_bytes);
                const int w0 = wo * sw - pw, w_last = w0 + (kw - 1) * dw;
                for (int i = 0; i < kh; ++i) {
                    const int hi = ho * sh - ph + i * dh;
                    if (hi < 0 || hi >= H) continue;
                    const uint8_t *row = signs + ((size_t)b * HW + (size_t)hi * W) * CB;
                    if (dw == 1 && w0 >= 0 && w_last < W) {  /* the whole kernel row inside: one copy */
                        memcpy(col + (size_t)i * kw * CB, row + (size_t)w0 * CB, (size_t)kw * CB);
                        continue;
                    }
                    for (int j = 0; j < kw; ++j) {
                        const int wi = w0 + j * dw;
                        if (wi < 0 || wi >= W) continue;
                        memcpy(col + (size_t)(i * kw + j) * CB, row + (size_t)wi * CB, CB);
                    }
                }
            }
}

/* Pack the sign bits of a weight (O, C, kh, kw) float32 in the column layout, transposed: w_t (words, O_pad),
 * O_pad = O rounded up to 8; padded output channels are zero. */
void hidiff_pack_weight(const float *w, int O, int C, int kh, int kw, int words, int O_pad, uint64_t *w_t) {
    const int CB = (C + 7) / 8;
    memset(w_t, 0, sizeof(uint64_t) * (size_t)words * O_pad);
    for (int o = 0; o < O; ++o)
        for (int c = 0; c < C; ++c)
            for (int i = 0; i < kh; ++i)
                for (int j = 0; j < kw; ++j)
                    if (w[(((size_t)o * C + c) * kh + i) * kw + j] > 0.0f) {
                        const int pos = ((i * kw + j) * CB + (c >> 3)) * 8 + (c & 7);
                        w_t[(size_t)(pos >> 6) * O_pad + o] |= 1ULL << (pos & 63);
                    }
}

/* What follows the popcounts: v = scale[o] * (K - 2 * cnt + corr) + bias[o] (the conv with BN folded in), then,
 * for a RefinerBlock at inference, optionally its residual shortcut (v += res, output channel o reading residual
 * channel o % cr: the shortcut's channel repeat) and TA, Eq. 16 (v -= gamma; v = v > 0 ? v : slope * v;
 * v += zeta), in the order and with the float operations of the unfused torch ops, so one pass writes the block's
 * output instead of four (add, sub, prelu, add). */
typedef struct {
    const float *scale, *bias;  /* (O,) */
    const float *res;           /* (B, cr, N) or NULL */
    const float *gamma, *zeta;  /* (B, O), or NULL: no TA */
    const float *slope;         /* (O,) */
    int cr;
} hidiff_epilogue;

/* A RefinerBlock's shortcut when its input has grp times the output channels (a fusion or decoder block, stride 1): the
 * mean of input channels grp*o .. grp*o+grp-1, written for the output rows [r0, r1) of out (B * O rows of H * W), where
 * the input is the concatenation [src1 (B, c1, h1, w1) nearest-upsampled by integer factors to H x W; src2 (B, c2, H,
 * W)] that is never built. Row by row, so that every source row is streamed once (the kernel's output pass would
 * read grp scattered rows per block instead). */
void hidiff_group_mean(const float *src1, const float *src2, int B, int c1, int c2, int h1, int w1, int H, int W,
                       int grp, int r0, int r1, float *out) {
    const int O = (c1 + c2) / grp, fy = H / h1, fx = W / w1;
    const size_t N = (size_t)H * W, N1 = (size_t)h1 * w1;
    for (int r = r0; r < r1; ++r) {
        const int b = r / O, o = r % O;
        float *dst = out + (size_t)r * N;
        for (size_t n = 0; n < N; ++n) dst[n] = 0.0f;
        for (int k = 0; k < grp; ++k) {
            const int c = grp * o + k;
            if (c >= c1) {
                const float *s = src2 + ((size_t)b * c2 + (c - c1)) * N;
                for (size_t n = 0; n < N; ++n) dst[n] += s[n];
            } else if (fy == 1 && fx == 1) {
                const float *s = src1 + ((size_t)b * c1 + c) * N;
                for (size_t n = 0; n < N; ++n) dst[n] += s[n];
            } else {
                const float *s = src1 + ((size_t)b * c1 + c) * N1;
                for (int y = 0; y < H; ++y) {
                    const float *low = s + (size_t)(y / fy) * w1;
                    float *d = dst + (size_t)y * W;
                    if (fx == 2)
                        for (int x = 0; x < w1; ++x) d[2 * x] += low[x], d[2 * x + 1] += low[x];
                    else
                        for (int x = 0; x < W; ++x) d[x] += low[x / fx];
                }
            }
        }
        const float g = (float)grp;
        for (size_t n = 0; n < N; ++n) dst[n] /= g;
    }
}

typedef struct {  /* one output row (image b, channel o) */
    float s, t, g, z, a;
    const float *res;
    int ta;
} row_t;

static inline row_t row_of(const hidiff_epilogue *e, int b, int o, int O, size_t N, int n0) {
    row_t r = {e->scale[o], e->bias[o], 0.0f, 0.0f, 0.0f, NULL, e->gamma != NULL};
    if (e->res) r.res = e->res + ((size_t)b * e->cr + o % e->cr) * N + n0;
    if (r.ta) {
        r.g = e->gamma[(size_t)b * O + o];
        r.z = e->zeta[(size_t)b * O + o];
        r.a = e->slope[o];
    }
    return r;
}

static inline float finish(float v, const row_t *r, int j) {
    if (r->res) v += r->res[j];
    if (r->ta) {
        v -= r->g;
        v = v > 0.0f ? v : r->a * v;
        v += r->z;
    }
    return v;
}

/* the `cols` pixels of one output row; corr is co[bidx[j]] at the border pixels (bidx[j] >= 0), 0 elsewhere; bidx
 * NULL: no border pixel among them. */
static inline void store_row(float *dst, const int32_t *cnt, size_t stride, int cols, int K, const int32_t *bidx,
                             const int32_t *co, const row_t *r) {
    for (int j = 0; j < cols; ++j) {
        const int k = bidx ? bidx[j] : -1;
        dst[j] = finish(r->s * (float)(K - 2 * cnt[(size_t)j * stride] + (k >= 0 ? co[k] : 0)) + r->t, r, j);
    }
}

static inline int any_border(const int32_t *bidx, int cols) {
    int border = 0;
    for (int j = 0; j < cols; ++j) border |= bidx[j] >= 0;
    return border;
}

static void gemm_scalar(const uint64_t *w_t, int O, int O_pad, const uint64_t *bits, int words, int total,
                        int32_t *out) {
    for (int n = 0; n < total; ++n) {
        const uint64_t *a = bits + (size_t)n * words;
        int32_t *dst = out + (size_t)n * O;
        for (int o = 0; o < O; ++o) {
            int acc = 0;
            for (int k = 0; k < words; ++k) acc += popcount64(w_t[(size_t)k * O_pad + o] ^ a[k]);
            dst[o] = acc;
        }
    }
}

#if HIDIFF_X86 && (defined(__GNUC__) || defined(__clang__))
/* AVX2, channel-major: 4 output channels per vector; per-byte popcounts by nibble lookup, summed in bytes over up
 * to 31 words (at most 8 per word), then one SAD into the four 64-bit lanes. */
__attribute__((target("avx2"))) static void gemm_avx2(const uint64_t *w_t, int O, int O_pad, const uint64_t *bits,
                                                      int words, int total, int32_t *out) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (int n = 0; n < total; ++n) {
        const uint64_t *a = bits + (size_t)n * words;
        int32_t *dst = out + (size_t)n * O;
        for (int o = 0; o < O; o += 4) {
            __m256i acc = _mm256_setzero_si256();
            for (int k0 = 0; k0 < words; k0 += 31) {
                const int k1 = words < k0 + 31 ? words : k0 + 31;
                __m256i bytes = _mm256_setzero_si256();
                for (int k = k0; k < k1; ++k) {
                    __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w_t + (size_t)k * O_pad + o)),
                                                 _mm256_set1_epi64x((long long)a[k]));
                    bytes = _mm256_add_epi8(bytes, _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)));
                    bytes = _mm256_add_epi8(bytes, _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4),
                                                                                             low)));
                }
                acc = _mm256_add_epi64(acc, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
            }
            __m128i four = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(acc, pick));
            if (o + 4 <= O) {
                _mm_storeu_si128((__m128i *)(dst + o), four);
            } else {
                int32_t lanes[4];
                _mm_storeu_si128((__m128i *)lanes, four);
                for (int l = 0; o + l < O; ++l) dst[o + l] = lanes[l];
            }
        }
    }
}

/* Both SIMD kernels work on one block of up to 64 columns at a time: the block's bits are transposed to word-major
 * (tb[k * 64 + j]) so that one vector holds word k of consecutive columns; each output channel then broadcasts its
 * weight word against those vectors, and the counts of a vector are consecutive pixels of that channel's output row:
 * scaled and stored as they are, with no transposition of the counts (border columns: see store_counts). */
static inline void transpose_block(const uint64_t *block, int words, int cols, uint64_t *tb) {
    for (int k = 0; k < words; ++k) {
        uint64_t *row = tb + (size_t)k * 64;
        for (int j = 0; j < cols; ++j) row[j] = block[(size_t)j * words + k];
        for (int j = cols; j < 64; ++j) row[j] = 0;
    }
}

/* store_row for the integer part iv[j] = K - 2 * cnt + corr of `cols` pixels, 8 at a time (then a scalar tail) */
__attribute__((target("avx2"))) static inline void store_vec(float *dst, const int32_t *iv, int cols,
                                                             const row_t *r) {
    const __m256 vs = _mm256_set1_ps(r->s), vt = _mm256_set1_ps(r->t), vg = _mm256_set1_ps(r->g);
    const __m256 vz = _mm256_set1_ps(r->z), va = _mm256_set1_ps(r->a), zero = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= cols; j += 8) {
        __m256 v = _mm256_add_ps(_mm256_mul_ps(vs, _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(iv + j)))),
                                 vt);
        if (r->res) v = _mm256_add_ps(v, _mm256_loadu_ps(r->res + j));
        if (r->ta) {
            v = _mm256_sub_ps(v, vg);
            v = _mm256_blendv_ps(_mm256_mul_ps(va, v), v, _mm256_cmp_ps(v, zero, _CMP_GT_OQ));
            v = _mm256_add_ps(v, vz);
        }
        _mm256_storeu_ps(dst + j, v);
    }
    for (; j < cols; ++j) dst[j] = finish(r->s * (float)iv[j] + r->t, r, j);
}

/* The counts of output channel o in one block of the SIMD kernels, stored with the epilogue: the integer part with
 * the padding correction of the border pixels first, then the float epilogue vectorised over the whole block (border
 * pixels included: every block of an image less than 64 pixels wide has some). */
__attribute__((target("avx2"))) static inline void store_counts(float *dst, const int32_t *cnt, int cols, int K,
                                                                const int32_t *bidx, const int32_t *co,
                                                                const hidiff_epilogue *e, int b, int o, int O,
                                                                size_t N, int n0) {
    int32_t iv[64];
    const row_t r = row_of(e, b, o, O, N, n0);
    for (int j = 0; j < cols; ++j) iv[j] = K - 2 * cnt[j];
    if (bidx)
        for (int j = 0; j < cols; ++j)
            if (bidx[j] >= 0) iv[j] += co[bidx[j]];
    store_vec(dst, iv, cols, &r);
}

/* AVX2: per output channel, AVX2_COLS columns per pass (AVX2_COLS / 4 vectors of 4 words, few enough to stay in
 * the 16 vector registers: 16 columns measured 0.5-1.0x the time of the channel-major gemm_avx2 above on DRIVE's
 * layers, 32 columns spill); per-byte popcounts by nibble lookup summed in bytes over up to 31 words (at most 8 per
 * word: 248 < 256), then one SAD per vector into 4 64-bit counts. Blocks of fewer than 16 columns (images of a few
 * pixels) use gemm_avx2, which wastes nothing on them. */
#define AVX2_COLS 16
__attribute__((target("avx2"))) static void block_avx2(
    const uint64_t *w_t, int O, int O_pad, const uint64_t *block, int words, int cols, int K, const int32_t *bidx,
    const int32_t *corr, int nb, const hidiff_epilogue *e, int b, int n0, uint64_t *tb, float *out, size_t N) {
    enum { NV = AVX2_COLS / 4 };
    transpose_block(block, words, cols, tb);
    const int border = any_border(bidx, cols);
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (int o = 0; o < O; ++o) {
        int32_t cnt[64];
        for (int j0 = 0; j0 < cols; j0 += AVX2_COLS) {
            __m256i sum[NV];
            for (int v = 0; v < NV; ++v) sum[v] = zero;
            for (int k0 = 0; k0 < words; k0 += 31) {
                const int k1 = words < k0 + 31 ? words : k0 + 31;
                __m256i acc[NV];
                for (int v = 0; v < NV; ++v) acc[v] = zero;
                for (int k = k0; k < k1; ++k) {
                    const __m256i w = _mm256_set1_epi64x((long long)w_t[(size_t)k * O_pad + o]);
                    const uint64_t *r = tb + (size_t)k * 64 + j0;
                    for (int v = 0; v < NV; ++v) {
                        const __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(r + 4 * v)), w);
                        const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
                        const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
                        acc[v] = _mm256_add_epi8(acc[v], _mm256_add_epi8(lo, hi));
                    }
                }
                for (int v = 0; v < NV; ++v) sum[v] = _mm256_add_epi64(sum[v], _mm256_sad_epu8(acc[v], zero));
            }
            for (int v = 0; v < NV; ++v)
                _mm_storeu_si128((__m128i *)(cnt + j0 + 4 * v),
                                 _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sum[v], pick)));
        }
        store_counts(out + (size_t)o * N, cnt, cols, K, border ? bidx : NULL, corr + (size_t)o * nb, e, b, o, O, N, n0);
    }
}

/* AVX-512 VPOPCNTDQ: per output channel, word k of all 64 columns in 8 vectors (8 independent accumulators). */
__attribute__((target("avx512f,avx512vpopcntdq"))) static void block_avx512(
    const uint64_t *w_t, int O, int O_pad, const uint64_t *block, int words, int cols, int K, const int32_t *bidx,
    const int32_t *corr, int nb, const hidiff_epilogue *e, int b, int n0, uint64_t *tb, float *out, size_t N) {
    transpose_block(block, words, cols, tb);
    const int border = any_border(bidx, cols);
    for (int o = 0; o < O; ++o) {
        __m512i c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512(), c2 = _mm512_setzero_si512();
        __m512i c3 = _mm512_setzero_si512(), c4 = _mm512_setzero_si512(), c5 = _mm512_setzero_si512();
        __m512i c6 = _mm512_setzero_si512(), c7 = _mm512_setzero_si512();
        for (int k = 0; k < words; ++k) {
            const __m512i w = _mm512_set1_epi64((long long)w_t[(size_t)k * O_pad + o]);
            const uint64_t *r = tb + (size_t)k * 64;
            c0 = _mm512_add_epi64(c0, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(r), w)));
            c1 = _mm512_add_epi64(c1, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(r + 8), w)));
            c2 = _mm512_add_epi64(c2, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(r + 16), w)));
            c3 = _mm512_add_epi64(c3, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(r + 24), w)));
            c4 = _mm512_add_epi64(c4, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(r + 32), w)));
            c5 = _mm512_add_epi64(c5, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(r + 40), w)));
            c6 = _mm512_add_epi64(c6, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(r + 48), w)));
            c7 = _mm512_add_epi64(c7, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(r + 56), w)));
        }
        int32_t cnt[64];
        _mm256_storeu_si256((__m256i *)(cnt + 0), _mm512_cvtepi64_epi32(c0));
        _mm256_storeu_si256((__m256i *)(cnt + 8), _mm512_cvtepi64_epi32(c1));
        _mm256_storeu_si256((__m256i *)(cnt + 16), _mm512_cvtepi64_epi32(c2));
        _mm256_storeu_si256((__m256i *)(cnt + 24), _mm512_cvtepi64_epi32(c3));
        _mm256_storeu_si256((__m256i *)(cnt + 32), _mm512_cvtepi64_epi32(c4));
        _mm256_storeu_si256((__m256i *)(cnt + 40), _mm512_cvtepi64_epi32(c5));
        _mm256_storeu_si256((__m256i *)(cnt + 48), _mm512_cvtepi64_epi32(c6));
        _mm256_storeu_si256((__m256i *)(cnt + 56), _mm512_cvtepi64_epi32(c7));
        store_counts(out + (size_t)o * N, cnt, cols, K, border ? bidx : NULL, corr + (size_t)o * nb, e, b, o, O, N, n0);
    }
}
#endif

/* The convolution's output (B, O, N), float: out[b, o, n] = scale[o] * (K - 2 * popcount + corr) + bias[o] and the
 * rest of the epilogue `e` (see hidiff_epilogue), for the columns [first, last) of every image (threads split the
 * columns; scratch: see BLOCK below, per thread). corr is the padding correction, non-zero only at the few border
 * pixels: bidx[n] = -1 inside the image, else the column of pixel n in corr (O, nb), so no (O, N) table is
 * streamed. Columns are processed in blocks of 64 so that the counts of a block are written out row by row
 * (contiguous) instead of one scattered value per channel. */
int hidiff_xnor_conv(const uint64_t *w_t, int O, int O_pad, const uint64_t *bits, int words, int B, int N,
                     int first, int last, int K, const int32_t *bidx, const int32_t *corr, int nb,
                     const hidiff_epilogue *e, int32_t *scratch, float *out) {
    enum { BLOCK = 64 };  /* scratch: max(64 * O int32, 64 * words uint64) per thread */
    int isa = hidiff_xnor_isa();
    for (int b = 0; b < B; ++b)
        for (int n0 = first; n0 < last; n0 += BLOCK) {
            const int cols = last - n0 < BLOCK ? last - n0 : BLOCK;
            const uint64_t *block = bits + ((size_t)b * N + n0) * words;
#if HIDIFF_X86 && (defined(__GNUC__) || defined(__clang__))
            if (isa == ISA_AVX512) {
                block_avx512(w_t, O, O_pad, block, words, cols, K, bidx + n0, corr, nb, e, b, n0,
                             (uint64_t *)scratch, out + (size_t)b * O * N + n0, (size_t)N);
                continue;
            }
            if (isa == ISA_AVX2 && cols >= AVX2_COLS) {
                block_avx2(w_t, O, O_pad, block, words, cols, K, bidx + n0, corr, nb, e, b, n0,
                           (uint64_t *)scratch, out + (size_t)b * O * N + n0, (size_t)N);
                continue;
            }
            if (isa == ISA_AVX2) gemm_avx2(w_t, O, O_pad, block, words, cols, scratch);
            else
#endif
                gemm_scalar(w_t, O, O_pad, block, words, cols, scratch);
            const int32_t *row_bidx = any_border(bidx + n0, cols) ? bidx + n0 : NULL;
            for (int o = 0; o < O; ++o) {
                const row_t r = row_of(e, b, o, O, (size_t)N, n0);
                store_row(out + ((size_t)b * O + o) * N + n0, scratch + o, (size_t)O, cols, K, row_bidx,
                          corr + (size_t)o * nb, &r);
            }
        }
    return isa;
}

/* The three stages split into `parts` contiguous slices (pixels, output rows, columns), one OpenMP thread each. */
void hidiff_pack_signs_par(const float *x, const float *threshold, int B, int C, int H, int W, int parts,
                           uint8_t *signs, int CBt, int off) {
    const long total = (long)H * W;
#pragma omp parallel for num_threads(parts) schedule(static)
    for (int i = 0; i < parts; ++i)
        hidiff_pack_signs(x, threshold, B, C, H, W, (int)(total * i / parts), (int)(total * (i + 1) / parts), signs,
                          CBt, off);
}

void hidiff_pack_columns_par(const uint8_t *signs, int B, int C, int H, int W, int kh, int kw, int sh, int sw,
                             int ph, int pw, int dh, int dw, int Ho, int Wo, int words, int parts, uint64_t *bits) {
#pragma omp parallel for num_threads(parts) schedule(static)
    for (int i = 0; i < parts; ++i)
        hidiff_pack_columns(signs, B, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, words,
                            (int)((long)Ho * i / parts), (int)((long)Ho * (i + 1) / parts), bits);
}

void hidiff_group_mean_par(const float *src1, const float *src2, int B, int c1, int c2, int h1, int w1, int H, int W,
                           int grp, int parts, float *out) {
    const long rows = (long)B * ((c1 + c2) / grp);
#pragma omp parallel for num_threads(parts) schedule(static)
    for (int i = 0; i < parts; ++i)
        hidiff_group_mean(src1, src2, B, c1, c2, h1, w1, H, W, grp, (int)(rows * i / parts),
                          (int)(rows * (i + 1) / parts), out);
}

/* scratch: parts rows of scratch_stride int32 each. Returns the instruction set used. */
int hidiff_xnor_conv_par(const uint64_t *w_t, int O, int O_pad, const uint64_t *bits, int words, int B, int N, int K,
                         const int32_t *bidx, const int32_t *corr, int nb, const hidiff_epilogue *e,
                         int parts, int32_t *scratch, long scratch_stride, float *out) {
#pragma omp parallel for num_threads(parts) schedule(static)
    for (int i = 0; i < parts; ++i) {
        /* slices of whole 64-column blocks, so that every thread but the last runs full blocks */
        const long blocks = ((long)N + 63) / 64;
        const int first = (int)(64 * (blocks * i / parts)), last_block = (int)(64 * (blocks * (i + 1) / parts));
        const int last = last_block < N ? last_block : N;
        if (first < last)
            hidiff_xnor_conv(w_t, O, O_pad, bits, words, B, N, first, last, K, bidx, corr, nb, e,
                             scratch + scratch_stride * i, out);
    }
    return hidiff_xnor_isa();
}
