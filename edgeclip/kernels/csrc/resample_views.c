/* Antialiased crop + resize + flip + normalise of N views of one uint8 RGB frame, in one call.
 *
 * The CPU path of edgeclip.kernels.augment_views. Per view it computes the taps (window start, tap count,
 * normalised weights) as torch's antialiased interpolation does, the same rule as
 * edgeclip.kernels.view_boxes.resample_windows, then runs a vertical pass over the box's columns (long
 * contiguous multiply-adds the compiler vectorises), a horizontal pass that applies one banded weight matrix per block of 16 output columns, and
 * scale and bias per channel into planar float32 output [N, 3, S, S]. Views are shared out over
 * n_threads POSIX threads.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *frame;
    int64_t H, W, N, S;
    const int64_t *boxes;                 /* [N,5] top, left, height, width, flip */
    const int64_t *filters;               /* [N] 0 bilinear, 1 bicubic */
    const float *scale, *bias;            /* [3] out = acc * scale + bias */
    float *out;                           /* [N,3,S,S] */
    int64_t n_threads, thread;
    int status;
} job_t;

static double filter(double x, int64_t bicubic) {
    const double ax = fabs(x);
    if (!bicubic) return ax < 1.0 ? 1.0 - ax : 0.0;
    const double a = -0.5;
    if (ax < 1.0) return ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0;
    if (ax < 2.0) return (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a;
    return 0.0;
}

/* Taps of `out` samples over the span [start, start + length): first source index, count, and weights
 * (normalised to sum to one) in rows of `taps` floats. Returns the tap count per row it needed. */
static int64_t max_taps(int64_t length, int64_t out, int64_t bicubic) {
    const double sc = (double)length / (double)out;
    const double support = (bicubic ? 2.0 : 1.0) * (sc >= 1.0 ? sc : 1.0);
    return (int64_t)ceil(2.0 * support) + 2;
}

static void windows(int64_t start, int64_t length, int64_t out, int64_t bicubic, int64_t taps, int64_t *first,
                    int64_t *count, float *w) {
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
        double total = 0.0, ws[taps];
        for (int64_t t = 0; t < n; ++t) {
            ws[t] = filter(((double)(lo + t) - center + 0.5) * inv, bicubic);
            total += ws[t];
        }
        for (int64_t t = 0; t < taps; ++t) w[i * taps + t] = t < n ? (float)(total != 0.0 ? ws[t] / total : ws[t]) : 0.f;
        first[i] = start + lo;
        count[i] = n;
    }
}

#define XB 16 /* output columns per block of the horizontal pass: one 16-wide vector per source pixel */
typedef float v16f __attribute__((vector_size(XB * sizeof(float)))); /* GCC/Clang vector extension */

/* dst[k] += sum over `cnt` source rows of w[t] * src_row_t[k], four rows per sweep over dst */
static void vertical_row(float *restrict dst, const uint8_t *restrict base, int64_t stride, const float *w,
                         int64_t cnt, int64_t len) {
    memset(dst, 0, sizeof(float) * (size_t)len);
    int64_t t = 0;
    for (; t + 4 <= cnt; t += 4) {
        const uint8_t *restrict s0 = base + t * stride, *restrict s1 = s0 + stride;
        const uint8_t *restrict s2 = s1 + stride, *restrict s3 = s2 + stride;
        const float w0 = w[t], w1 = w[t + 1], w2 = w[t + 2], w3 = w[t + 3];
        for (int64_t k = 0; k < len; ++k)
            dst[k] += w0 * (float)s0[k] + w1 * (float)s1[k] + w2 * (float)s2[k] + w3 * (float)s3[k];
    }
    for (; t < cnt; ++t) {
        const uint8_t *restrict s0 = base + t * stride;
        const float w0 = w[t];
        for (int64_t k = 0; k < len; ++k) dst[k] += w0 * (float)s0[k];
    }
}

static void *run(void *arg) {
    job_t *j = (job_t *)arg;
    const int64_t S = j->S, W = j->W;
    float *tmp = NULL, *band = NULL, *wy = NULL, *wx = NULL;
    int64_t *idx = (int64_t *)malloc(sizeof(int64_t) * (size_t)(4 * S));
    int64_t cap = 0, wcap = 0;
    if (!idx) { j->status = 1; return NULL; }
    int64_t *y0 = idx, *ny = idx + S, *x0 = idx + 2 * S, *nx = idx + 3 * S;
    for (int64_t n = j->thread; n < j->N; n += j->n_threads) {
        const int64_t *box = j->boxes + n * 5;
        const int64_t top = box[0], left = box[1], height = box[2], width = box[3], flip = box[4];
        const int64_t bicubic = j->filters[n] != 0;
        const int64_t len = width * 3;
        const int64_t ty = max_taps(height, S, bicubic), tx = max_taps(width, S, bicubic);
        if (S * len > cap || S * (ty > tx ? ty : tx) > wcap) {
            free(tmp); free(band); free(wy); free(wx);
            cap = S * len > cap ? S * len : cap;
            wcap = S * (ty > tx ? ty : tx) > wcap ? S * (ty > tx ? ty : tx) : wcap;
            tmp = (float *)malloc(sizeof(float) * (size_t)cap);
            band = (float *)aligned_alloc(sizeof(v16f), sizeof(v16f) * (size_t)(cap / S / 3 + 1));
            wy = (float *)malloc(sizeof(float) * (size_t)wcap);
            wx = (float *)malloc(sizeof(float) * (size_t)wcap);
            if (!tmp || !band || !wy || !wx) { j->status = 1; break; }
        }
        windows(top, height, S, bicubic, ty, y0, ny, wy);
        windows(left, width, S, bicubic, tx, x0, nx, wx);
        /* vertical pass over the box's columns: tmp[y, k] = sum_t wy[y,t] * frame[y0+t, left*3 + k] */
        const int64_t pitch = cap / S;
        for (int64_t y = 0; y < S; ++y)
            vertical_row(tmp + y * pitch, j->frame + (y0[y] * W + left) * 3, W * 3, wy + y * ty, ny[y], len);
        /* horizontal pass: blocks of XB outputs share one banded weight matrix band[k, i] over the union of
         * their windows, applied to every row as XB-wide multiply-adds (no gathers, no transposes) */
        float *o = j->out + n * 3 * S * S;
        for (int64_t xb = 0; xb < S; xb += XB) {
            const int64_t nv = S - xb < XB ? S - xb : XB;
            const int64_t lo = x0[xb];
            int64_t hi = lo;
            for (int64_t i = 0; i < nv; ++i)
                if (x0[xb + i] + nx[xb + i] > hi) hi = x0[xb + i] + nx[xb + i];
            const int64_t span = hi - lo;
            memset(band, 0, sizeof(float) * (size_t)(span * XB));
            for (int64_t i = 0; i < nv; ++i)
                for (int64_t t = 0; t < nx[xb + i]; ++t) band[(x0[xb + i] - lo + t) * XB + i] = wx[(xb + i) * tx + t];
            const int64_t k0 = (lo - left) * 3;
            const v16f *bv = (const v16f *)band;
            for (int64_t y = 0; y < S; ++y) {
                const float *row = tmp + y * pitch + k0;
                v16f a0 = {0.f}, a1 = {0.f}, a2 = {0.f};
                for (int64_t k = 0; k < span; ++k) {
                    const v16f b = bv[k];
                    a0 += row[3 * k] * b;
                    a1 += row[3 * k + 1] * b;
                    a2 += row[3 * k + 2] * b;
                }
                float acc[3][XB];
                memcpy(acc[0], &a0, sizeof a0);
                memcpy(acc[1], &a1, sizeof a1);
                memcpy(acc[2], &a2, sizeof a2);
                for (int64_t c = 0; c < 3; ++c) {
                    float *dst = o + c * S * S + y * S;
                    const float sc = j->scale[c], bi = j->bias[c];
                    if (flip)
                        for (int64_t i = 0; i < nv; ++i) dst[S - 1 - (xb + i)] = acc[c][i] * sc + bi;
                    else
                        for (int64_t i = 0; i < nv; ++i) dst[xb + i] = acc[c][i] * sc + bi;
                }
            }
        }
    }
    free(tmp); free(band); free(wy); free(wx); free(idx);
    return NULL;
}

int edgeclip_resample_views(const uint8_t *frame, int64_t H, int64_t W, int64_t N, int64_t S,
                            const int64_t *boxes, const int64_t *filters, const float *scale, const float *bias,
                            float *out, int64_t n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > N) n_threads = N;
    if (n_threads > 64) n_threads = 64;
    job_t jobs[64];
    pthread_t tids[64];
    int started[64] = {0};
    for (int64_t i = 0; i < n_threads; ++i) {
        job_t j = {frame, H, W, N, S, boxes, filters, scale, bias, out, n_threads, i, 0};
        jobs[i] = j;
    }
    for (int64_t i = 1; i < n_threads; ++i) started[i] = pthread_create(&tids[i], NULL, run, &jobs[i]) == 0;
    for (int64_t i = 1; i < n_threads; ++i)
        if (!started[i]) run(&jobs[i]); /* could not start a thread: do its share here */
    run(&jobs[0]);
    int status = jobs[0].status;
    for (int64_t i = 1; i < n_threads; ++i) {
        if (started[i]) pthread_join(tids[i], NULL);
        status |= jobs[i].status;
    }
    return status;
}
