/* Antialiased crop + resize + flip + normalise of N views of one uint8 RGB frame, in one call.
 *
 * The CPU path of edgeclip.kernels.augment_views. Per view it computes the taps (window start, tap count,
 * normalised weights) as torch's antialiased interpolation does, the same rule as
 * edgeclip.kernels.view_boxes.resample_windows, then works through the output in blocks of RB rows:
 *
 *   vertical pass    tmp[r, k] = sum_t wy[y_r, t] * box[y0[y_r] + t, k] over the box's interleaved RGB
 *                    columns k: fixed-width chunks of NA vectors held in registers across the taps, with the
 *                    uint8 -> float conversion written out per instruction set (load_u8x4);
 *   horizontal pass  every block of VW output columns owns one banded weight matrix band[k, lane] over the
 *                    union of its lanes' windows (built once per view, flipped views mirrored into it), and
 *                    out[c, y_r, block] = sum_k tmp[r, 3k + c] * band[k, :] as VW-wide multiply-adds with
 *                    3 * RB accumulators: no gathers, no masks, no shuffles;
 *   then scale and bias per channel into planar float32 output [N, 3, S, S].
 *
 * Only the vector width VW (and the conversion) depends on the instruction set: 16 floats with AVX-512, 8
 * with AVX/AVX2, 4 with SSE and NEON and the compiler's generic vectors elsewhere. Column and row tails are
 * handled by overlapping the last chunk / block with the one before (the same values are written again), and
 * a box narrower than one chunk is copied into a zero-padded one, so the hot loops have no data-dependent
 * control flow. Every output is a sum over its taps in order, one fused
 * multiply-add per tap where the target has FMA, so builds for different vector widths give bit-equal views
 * (and builds without FMA agree within float rounding). Views are handed out to n_threads POSIX threads
 * largest first, one at a time, so the threads finish together.
 *
 * Speed (`edgeclip bench kernels --threads 2`, 2 cores of an AMD EPYC Zen 5 VM, 1080p -> 64 views at 224 px,
 * docs/results/kernels-{native,x86-64-v3,x86-64-v2}.json): 12.5 ms built for AVX-512, 13.1 ms for AVX2
 * (-march=x86-64-v3) and 22.9 ms for SSE4.1 (x86-64-v2), beside 166-176 ms for TPT's PIL loop and 44-55 ms for
 * torchvision v2 per view.
 * A single 16-float vector type for every target took 75 ms when built for AVX2 on the same machine (GCC
 * spills such a type through memory on 256-bit registers): hence the width per instruction set.
 *
 * The caller (edgeclip.kernels.cpu_views) checks the frame, the boxes and the output shape.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__AVX512F__)
#define VW 16
#define ISA "avx512"
#elif defined(__AVX2__)
#define VW 8
#define ISA "avx2"
#elif defined(__AVX__)
#define VW 8
#define ISA "avx"
#elif defined(__SSE4_1__)
#define VW 4
#define ISA "sse4.1"
#elif defined(__SSE2__)
#define VW 4
#define ISA "sse2"
#elif defined(__ARM_NEON)
#define VW 4
#define ISA "neon"
#else
#define VW 4
#define ISA "scalar"
#endif
#if defined(__SSE2__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#define RB 4 /* output rows per block: the horizontal pass keeps 3 * RB accumulators */
#define NA 8 /* vectors of columns per chunk of the vertical pass: NA accumulators hide the FMA latency */

typedef float vf __attribute__((vector_size(VW * sizeof(float)))); /* GCC/Clang vector extension */

/* 4 * VW uint8 values at p as 4 float vectors */
static inline void load_u8x4(const uint8_t *p, vf v[4]) {
#if defined(__AVX512F__)
    for (int i = 0; i < 4; ++i)
        v[i] = (vf)_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * i))));
#elif defined(__AVX2__)
    for (int i = 0; i < 4; ++i)
        v[i] = (vf)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * i))));
#elif defined(__AVX__) && defined(__SSE4_1__)
    for (int i = 0; i < 4; ++i) {
        const __m128i b = _mm_loadl_epi64((const __m128i *)(p + 8 * i));
        const __m128 lo = _mm_cvtepi32_ps(_mm_cvtepu8_epi32(b));
        const __m128 hi = _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_srli_si128(b, 4)));
        v[i] = (vf)_mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
    }
#elif VW == 4 && defined(__SSE4_1__)
    for (int i = 0; i < 4; ++i) {
        int32_t x;
        memcpy(&x, p + 4 * i, sizeof x);
        v[i] = (vf)_mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(x)));
    }
#elif VW == 4 && defined(__SSE2__)
    const __m128i b = _mm_loadu_si128((const __m128i *)p), z = _mm_setzero_si128();
    const __m128i lo = _mm_unpacklo_epi8(b, z), hi = _mm_unpackhi_epi8(b, z);
    v[0] = (vf)_mm_cvtepi32_ps(_mm_unpacklo_epi16(lo, z));
    v[1] = (vf)_mm_cvtepi32_ps(_mm_unpackhi_epi16(lo, z));
    v[2] = (vf)_mm_cvtepi32_ps(_mm_unpacklo_epi16(hi, z));
    v[3] = (vf)_mm_cvtepi32_ps(_mm_unpackhi_epi16(hi, z));
#elif VW == 4 && defined(__ARM_NEON)
    const uint8x16_t b = vld1q_u8(p);
    const uint16x8_t lo = vmovl_u8(vget_low_u8(b)), hi = vmovl_u8(vget_high_u8(b));
    v[0] = (vf)vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
    v[1] = (vf)vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo)));
    v[2] = (vf)vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
    v[3] = (vf)vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)));
#else
    float f[4 * VW];
    for (int i = 0; i < 4 * VW; ++i) f[i] = (float)p[i];
    memcpy(v, f, sizeof f);
#endif
}

static double filter(double x, int64_t bicubic) {
    const double ax = fabs(x);
    if (!bicubic) return ax < 1.0 ? 1.0 - ax : 0.0;
    const double a = -0.5;
    if (ax < 1.0) return ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0;
    if (ax < 2.0) return (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a;
    return 0.0;
}

/* The most taps any of `out` samples over a span of `length` needs. */
static int64_t max_taps(int64_t length, int64_t out, int64_t bicubic) {
    const double sc = (double)length / (double)out;
    const double support = (bicubic ? 2.0 : 1.0) * (sc >= 1.0 ? sc : 1.0);
    return (int64_t)ceil(2.0 * support) + 2;
}

/* Taps of `out` samples over a span of `length`: first index inside the span, count, and weights (normalised
 * to sum to one) in rows of `taps` floats, zero past each window. */
static void windows(int64_t length, int64_t out, int64_t bicubic, int64_t taps, int64_t *first, int64_t *count,
                    float *w) {
    const double sc = (double)length / (double)out;
    const double support = (bicubic ? 2.0 : 1.0) * (sc >= 1.0 ? sc : 1.0);
    const double inv = sc >= 1.0 ? 1.0 / sc : 1.0;
    for (int64_t i = 0; i < out; ++i) {
        const double center = sc * ((double)i + 0.5);
        int64_t lo = (int64_t)(center - support + 0.5);
        int64_t hi = (int64_t)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > length) hi = length;
        int64_t n = hi - lo;
        if (n > taps) n = taps;
        if (n < 0) n = 0;
        double total = 0.0;
        for (int64_t t = 0; t < n; ++t) total += filter(((double)(lo + t) - center + 0.5) * inv, bicubic);
        for (int64_t t = 0; t < taps; ++t) {
            const double v = t < n ? filter(((double)(lo + t) - center + 0.5) * inv, bicubic) : 0.0;
            w[i * taps + t] = (float)(total != 0.0 ? v / total : v);
        }
        first[i] = lo;
        count[i] = n;
    }
}

static inline void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* a[0..NA) += sum over cnt rows (row t at s + t * stride) of w[t] * the NA * VW values of the row */
static inline void accumulate(vf a[NA], const uint8_t *s, int64_t stride, const float *restrict w, int64_t cnt) {
    vf v[4];
    for (int64_t t = 0; t < cnt; ++t, s += stride) {
        const float wt = w[t];
        load_u8x4(s, v);
        a[0] += wt * v[0]; a[1] += wt * v[1]; a[2] += wt * v[2]; a[3] += wt * v[3];
        load_u8x4(s + 4 * VW, v);
        a[4] += wt * v[0]; a[5] += wt * v[1]; a[6] += wt * v[2]; a[7] += wt * v[3];
    }
}

#define PAD_ROWS 16

/* dst[0..len) = sum over cnt source rows (row t at base + t * stride) of w[t] * row_t[0..len) */
static void vertical_row(float *restrict dst, const uint8_t *restrict base, int64_t stride,
                         const float *restrict w, int64_t cnt, int64_t len) {
    const int64_t ch = NA * VW;
    vf a[NA];
    if (len >= ch) {
        for (int64_t k = 0;; k += ch) {
            if (k + ch > len) k = len - ch; /* the last chunk overlaps the one before */
            for (int i = 0; i < NA; ++i) a[i] = (vf){0.f};
            accumulate(a, base + k, stride, w, cnt);
            for (int i = 0; i < NA; ++i) storeu(dst + k + i * VW, a[i]);
            if (k + ch >= len) return;
        }
    }
    /* a box narrower than one chunk: its rows copied into a zero-padded chunk, then the same arithmetic */
    uint8_t pad[PAD_ROWS][NA * VW] = {{0}};
    for (int i = 0; i < NA; ++i) a[i] = (vf){0.f};
    for (int64_t t0 = 0; t0 < cnt; t0 += PAD_ROWS) {
        const int64_t nt = cnt - t0 < PAD_ROWS ? cnt - t0 : PAD_ROWS;
        for (int64_t r = 0; r < nt; ++r) memcpy(pad[r], base + (t0 + r) * stride, (size_t)len);
        accumulate(a, pad[0], NA * VW, w + t0, nt);
    }
    float full[NA * VW];
    memcpy(full, a, sizeof full);
    memcpy(dst, full, sizeof(float) * (size_t)len);
}

typedef struct {
    int64_t pos;  /* first output position of the block */
    int64_t lo;   /* first source column of its band */
    int64_t span; /* source columns (band rows) */
    int64_t off;  /* offset of its band in the view's pool, in vectors */
} block_t;

typedef struct {
    const uint8_t *frame;
    int64_t H, W, N, S;
    const int64_t *boxes;                 /* [N,5] top, left, height, width, flip */
    const int64_t *filters;               /* [N] 0 bilinear, 1 bicubic */
    const float *scale, *bias;            /* [3] out = acc * scale + bias */
    float *out;                           /* [N,3,S,S] */
    const int64_t *order;                 /* views, largest box first */
    int64_t *next;                        /* next position in `order` to take (shared, atomic) */
    int status;
} job_t;

/* Per-thread buffers, grown as views need. */
typedef struct {
    float *tmp, *wy, *wx;
    vf *band;
    int64_t tmp_cap, w_cap, band_cap;
} buffers_t;

static int grow(buffers_t *b, int64_t tmp_n, int64_t w_n) {
    if (tmp_n > b->tmp_cap) {
        free(b->tmp);
        b->tmp = (float *)malloc(sizeof(float) * (size_t)tmp_n);
        b->tmp_cap = b->tmp ? tmp_n : 0;
    }
    if (w_n > b->w_cap) {
        free(b->wy); free(b->wx);
        b->wy = (float *)malloc(sizeof(float) * (size_t)w_n);
        b->wx = (float *)malloc(sizeof(float) * (size_t)w_n);
        b->w_cap = b->wy && b->wx ? w_n : 0;
    }
    return b->tmp && b->wy && b->wx;
}

static int grow_band(buffers_t *b, int64_t n) {
    if (n < 1) n = 1;
    if (n > b->band_cap) {
        free(b->band);
        b->band = (vf *)aligned_alloc(sizeof(vf), sizeof(vf) * (size_t)n);
        b->band_cap = b->band ? n : 0;
    }
    return b->band != NULL;
}

/* The banded horizontal weights of every block of one view; returns 0 when out of memory. */
static int build_bands(buffers_t *buf, block_t *blocks, int64_t nb, int64_t S, int64_t flip, const int64_t *x0,
                       const int64_t *nx, const float *wx, int64_t tx) {
    int64_t total = 0;
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t pos = S >= VW ? (b * VW + VW <= S ? b * VW : S - VW) : 0;
        int64_t lo = INT64_MAX, hi = 0;
        for (int64_t i = 0; i < VW && pos + i < S; ++i) {
            const int64_t x = flip ? S - 1 - (pos + i) : pos + i; /* the column output position pos+i shows */
            if (x0[x] < lo) lo = x0[x];
            if (x0[x] + nx[x] > hi) hi = x0[x] + nx[x];
        }
        blocks[b] = (block_t){pos, lo, hi - lo, total};
        total += hi - lo;
    }
    if (!grow_band(buf, total)) return 0;
    memset(buf->band, 0, sizeof(vf) * (size_t)total);
    for (int64_t b = 0; b < nb; ++b) {
        float *band = (float *)(buf->band + blocks[b].off);
        for (int64_t i = 0; i < VW && blocks[b].pos + i < S; ++i) {
            const int64_t x = flip ? S - 1 - (blocks[b].pos + i) : blocks[b].pos + i;
            for (int64_t t = 0; t < nx[x]; ++t) band[(x0[x] - blocks[b].lo + t) * VW + i] = wx[x * tx + t];
        }
    }
    return 1;
}

/* Rows y .. y + RB - 1 (clamped to the last row) of one view: vertical pass into tmp, then every block. */
static void row_block(const job_t *j, const buffers_t *buf, const block_t *blocks, int64_t nb, const uint8_t *src,
                      const int64_t *y0, const int64_t *ny, int64_t ty, int64_t len, int64_t pitch, int64_t y,
                      float *o) {
    const int64_t S = j->S, stride = j->W * 3;
    int64_t rows[RB];
    for (int64_t r = 0; r < RB; ++r) {
        rows[r] = y + r < S ? y + r : S - 1;
        vertical_row(buf->tmp + r * pitch, src + y0[rows[r]] * stride, stride, buf->wy + rows[r] * ty, ny[rows[r]],
                     len);
    }
    const float sc0 = j->scale[0], sc1 = j->scale[1], sc2 = j->scale[2];
    const float bi0 = j->bias[0], bi1 = j->bias[1], bi2 = j->bias[2];
    for (int64_t b = 0; b < nb; ++b) {
        const vf *band = buf->band + blocks[b].off;
        const int64_t span = blocks[b].span;
        const float *r0 = buf->tmp + blocks[b].lo * 3, *r1 = r0 + pitch, *r2 = r1 + pitch, *r3 = r2 + pitch;
        vf a00 = {0.f}, a01 = {0.f}, a02 = {0.f}, a10 = {0.f}, a11 = {0.f}, a12 = {0.f};
        vf a20 = {0.f}, a21 = {0.f}, a22 = {0.f}, a30 = {0.f}, a31 = {0.f}, a32 = {0.f};
        for (int64_t k = 0; k < span; ++k, r0 += 3, r1 += 3, r2 += 3, r3 += 3) {
            const vf w = band[k];
            a00 += r0[0] * w; a01 += r0[1] * w; a02 += r0[2] * w;
            a10 += r1[0] * w; a11 += r1[1] * w; a12 += r1[2] * w;
            a20 += r2[0] * w; a21 += r2[1] * w; a22 += r2[2] * w;
            a30 += r3[0] * w; a31 += r3[1] * w; a32 += r3[2] * w;
        }
        const vf acc[RB][3] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
        for (int64_t r = 0; r < RB; ++r) {
            const vf v[3] = {acc[r][0] * sc0 + bi0, acc[r][1] * sc1 + bi1, acc[r][2] * sc2 + bi2};
            float *d = o + rows[r] * S + blocks[b].pos;
            for (int64_t c = 0; c < 3; ++c) {
                if (S >= VW)
                    storeu(d + c * S * S, v[c]);
                else /* views narrower than one vector */
                    memcpy(d + c * S * S, &v[c], sizeof(float) * (size_t)S);
            }
        }
    }
}

static void *run(void *arg) {
    job_t *j = (job_t *)arg;
    const int64_t S = j->S, nb = (S + VW - 1) / VW;
    buffers_t buf = {0};
    int64_t *idx = (int64_t *)malloc(sizeof(int64_t) * (size_t)(4 * S));
    block_t *blocks = (block_t *)malloc(sizeof(block_t) * (size_t)nb);
    if (!idx || !blocks) {
        j->status = 1;
        free(idx); free(blocks);
        return NULL;
    }
    int64_t *y0 = idx, *ny = idx + S, *x0 = idx + 2 * S, *nx = idx + 3 * S;
    for (;;) {
        const int64_t pos = __atomic_fetch_add(j->next, 1, __ATOMIC_RELAXED);
        if (pos >= j->N) break;
        const int64_t n = j->order[pos];
        const int64_t *box = j->boxes + n * 5;
        const int64_t top = box[0], left = box[1], height = box[2], width = box[3], flip = box[4];
        const int64_t bicubic = j->filters[n] != 0;
        const int64_t len = width * 3, pitch = (len + 15) & ~(int64_t)15;
        const int64_t ty = max_taps(height, S, bicubic), tx = max_taps(width, S, bicubic);
        if (!grow(&buf, RB * pitch, S * (ty > tx ? ty : tx))) { j->status = 1; break; }
        windows(height, S, bicubic, ty, y0, ny, buf.wy);
        windows(width, S, bicubic, tx, x0, nx, buf.wx);
        if (!build_bands(&buf, blocks, nb, S, flip, x0, nx, buf.wx, tx)) { j->status = 1; break; }
        const uint8_t *src = j->frame + (top * j->W + left) * 3;
        float *o = j->out + n * 3 * S * S;
        for (int64_t y = 0; y < S; y += RB) row_block(j, &buf, blocks, nb, src, y0, ny, ty, len, pitch, y, o);
    }
    free(buf.tmp); free(buf.wy); free(buf.wx); free(buf.band); free(idx); free(blocks);
    return NULL;
}

static int larger_first(const void *a, const void *b) {
    const int64_t *x = (const int64_t *)a, *y = (const int64_t *)b; /* (area, view) pairs */
    return x[0] != y[0] ? (x[0] < y[0]) - (x[0] > y[0]) : (x[1] > y[1]) - (x[1] < y[1]);
}

/* Ask for transparent huge pages on a large output: its first touch then faults in 2 MiB pages instead of
 * 4 KiB ones (64 views of 224² take 38.5 MB; touching them went from 13.8 ms to 2.5 ms on one core of an
 * AMD EPYC (Zen 5) VM with THP in `madvise` mode). A hint only: nothing changes where THP is off. */
static void advise_huge_pages(float *out, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21;
    const uintptr_t a = ((uintptr_t)out + huge - 1) & ~(huge - 1), e = ((uintptr_t)out + bytes) & ~(huge - 1);
    if (bytes >= 8 * huge && e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)out; (void)bytes;
#endif
}

/* All N views; returns 0, or 1 when a buffer could not be allocated. */
int edgeclip_resample_views(const uint8_t *frame, int64_t H, int64_t W, int64_t N, int64_t S,
                            const int64_t *boxes, const int64_t *filters, const float *scale, const float *bias,
                            float *out, int64_t n_threads) {
    if (N < 1 || S < 1) return 0;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > N) n_threads = N;
    if (n_threads > 64) n_threads = 64;
    advise_huge_pages(out, sizeof(float) * (size_t)(N * 3 * S * S));
    int64_t *pairs = (int64_t *)malloc(sizeof(int64_t) * (size_t)(3 * N));
    if (!pairs) return 1;
    int64_t *order = pairs + 2 * N;
    for (int64_t n = 0; n < N; ++n) {
        pairs[2 * n] = boxes[5 * n + 2] * boxes[5 * n + 3];
        pairs[2 * n + 1] = n;
    }
    qsort(pairs, (size_t)N, 2 * sizeof(int64_t), larger_first);
    for (int64_t n = 0; n < N; ++n) order[n] = pairs[2 * n + 1];
    int64_t next = 0;
    job_t jobs[64];
    pthread_t tids[64];
    int started[64] = {0};
    for (int64_t i = 0; i < n_threads; ++i)
        jobs[i] = (job_t){frame, H, W, N, S, boxes, filters, scale, bias, out, order, &next, 0};
    for (int64_t i = 1; i < n_threads; ++i) started[i] = pthread_create(&tids[i], NULL, run, &jobs[i]) == 0;
    run(&jobs[0]); /* the calling thread works too; views of threads that did not start are taken by the rest */
    int status = jobs[0].status;
    for (int64_t i = 1; i < n_threads; ++i) {
        if (started[i]) pthread_join(tids[i], NULL);
        status |= jobs[i].status;
    }
    free(pairs);
    return status;
}

/* The instruction set this build vectorises for, and its vector width in floats. */
const char *edgeclip_views_isa(void) { return ISA; }
int edgeclip_views_vector_floats(void) { return VW; }

/* 1 when this CPU has every instruction-set extension the build was compiled for (a build for another CPU,
 * e.g. -march=x86-64-v4 on an AVX2-only one, returns 0 instead of dying of SIGILL in the kernel). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("arch=x86-64")))
int edgeclip_views_cpu_ok(void) {
    __builtin_cpu_init();
    int ok = 1;
#if defined(__SSE4_1__)
    ok &= __builtin_cpu_supports("sse4.1") != 0;
#endif
#if defined(__SSE4_2__)
    ok &= __builtin_cpu_supports("sse4.2") != 0;
#endif
#if defined(__POPCNT__)
    ok &= __builtin_cpu_supports("popcnt") != 0;
#endif
#if defined(__AVX__)
    ok &= __builtin_cpu_supports("avx") != 0;
#endif
#if defined(__AVX2__)
    ok &= __builtin_cpu_supports("avx2") != 0;
#endif
#if defined(__FMA__)
    ok &= __builtin_cpu_supports("fma") != 0;
#endif
#if defined(__BMI2__)
    ok &= __builtin_cpu_supports("bmi2") != 0;
#endif
#if defined(__AVX512F__)
    ok &= __builtin_cpu_supports("avx512f") != 0;
#endif
#if defined(__AVX512BW__)
    ok &= __builtin_cpu_supports("avx512bw") != 0;
#endif
#if defined(__AVX512VL__)
    ok &= __builtin_cpu_supports("avx512vl") != 0;
#endif
#if defined(__AVX512DQ__)
    ok &= __builtin_cpu_supports("avx512dq") != 0;
#endif
    return ok;
}
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
int edgeclip_views_cpu_ok(void) {
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    int ok = 1;
    (void)hw; (void)hw2;
#if defined(__ARM_FEATURE_DOTPROD)
    ok &= (hw & (1UL << 20)) != 0; /* HWCAP_ASIMDDP */
#endif
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
    ok &= (hw & (1UL << 10)) != 0; /* HWCAP_ASIMDHP */
#endif
#if defined(__ARM_FEATURE_SVE)
    ok &= (hw & (1UL << 22)) != 0; /* HWCAP_SVE */
#endif
#if defined(__ARM_FEATURE_SVE2)
    ok &= (hw2 & (1UL << 1)) != 0; /* HWCAP2_SVE2 */
#endif
#if defined(__ARM_FEATURE_MATMUL_INT8)
    ok &= (hw2 & (1UL << 13)) != 0; /* HWCAP2_I8MM */
#endif
#if defined(__ARM_FEATURE_BF16_VECTOR_ARITHMETIC)
    ok &= (hw2 & (1UL << 14)) != 0; /* HWCAP2_BF16 */
#endif
    return ok;
}
#else
int edgeclip_views_cpu_ok(void) { return 1; }
#endif
