/* Antialiased crop + resize + flip + normalise of N views of one uint8 RGB frame, in one call.
 *
 * The CPU path of edgeclip.kernels.augment_views. The taps (window start, tap count, normalised weights)
 * are computed in Python by edgeclip.kernels.view_boxes.resample_windows, exactly as torch's antialiased
 * interpolation computes them; this file only applies them. Per view: a vertical pass over the box's
 * columns (long contiguous multiply-adds the compiler vectorises), then a horizontal pass per output
 * row, then scale and bias per channel into planar float32 output [N, 3, S, S]. Views are shared out
 * over n_threads POSIX threads.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *frame;
    int64_t H, W, N, S;
    const int64_t *boxes;                 /* [N,5] top, left, height, width, flip */
    const int64_t *y0, *ny;               /* [N,S] first source row, tap count */
    const float *wy;                      /* [N,S,ty] */
    int64_t ty;
    const int64_t *x0, *nx;               /* [N,S] first source column, tap count */
    const float *wx;                      /* [N,S,tx] */
    int64_t tx;
    const float *scale, *bias;            /* [3] out = acc * scale + bias */
    float *out;                           /* [N,3,S,S] */
    int64_t n_threads, thread;
    int status;
} job_t;

#define YB 16 /* output rows per block of the horizontal pass: one 16-wide vector per tap */

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
    float *tmp = NULL, *blk = NULL;
    int64_t cap = 0;
    for (int64_t n = j->thread; n < j->N; n += j->n_threads) {
        const int64_t *box = j->boxes + n * 5;
        const int64_t left = box[1], width = box[3], flip = box[4];
        const int64_t len = width * 3;
        if (S * len > cap) {
            free(tmp);
            free(blk);
            cap = S * len;
            tmp = (float *)malloc(sizeof(float) * (size_t)cap);
            blk = (float *)malloc(sizeof(float) * (size_t)(len * YB));
            if (!tmp || !blk) { j->status = 1; free(tmp); free(blk); return NULL; }
        }
        /* vertical pass over the box's columns: tmp[y, k] = sum_t wy[y,t] * frame[y0+t, left*3 + k] */
        for (int64_t y = 0; y < S; ++y) {
            const int64_t r0 = j->y0[n * S + y];
            vertical_row(tmp + y * len, j->frame + (r0 * W + left) * 3, W * 3, j->wy + (n * S + y) * j->ty,
                         j->ny[n * S + y], len);
        }
        /* horizontal pass, YB output rows at a time on a transposed block blk[k, yy] */
        float *o = j->out + n * 3 * S * S;
        for (int64_t yb = 0; yb < S; yb += YB) {
            const int64_t rows = S - yb < YB ? S - yb : YB;
            for (int64_t k = 0; k < len; ++k)
                for (int64_t yy = 0; yy < YB; ++yy)
                    blk[k * YB + yy] = yy < rows ? tmp[(yb + yy) * len + k] : 0.f;
            for (int64_t x = 0; x < S; ++x) {
                const int64_t k0 = (j->x0[n * S + x] - left) * 3, cnt = j->nx[n * S + x];
                const float *w = j->wx + (n * S + x) * j->tx;
                const int64_t xo = flip ? S - 1 - x : x;
                for (int64_t c = 0; c < 3; ++c) {
                    float acc[YB] = {0.f};
                    for (int64_t t = 0; t < cnt; ++t) {
                        const float wt = w[t];
                        const float *src = blk + (k0 + 3 * t + c) * YB;
                        for (int64_t yy = 0; yy < YB; ++yy) acc[yy] += wt * src[yy];
                    }
                    float *dst = o + c * S * S + yb * S + xo;
                    const float sc = j->scale[c], bi = j->bias[c];
                    for (int64_t yy = 0; yy < rows; ++yy) dst[yy * S] = acc[yy] * sc + bi;
                }
            }
        }
    }
    free(tmp);
    free(blk);
    return NULL;
}

int edgeclip_resample_views(const uint8_t *frame, int64_t H, int64_t W, int64_t N, int64_t S,
                            const int64_t *boxes, const int64_t *y0, const int64_t *ny, const float *wy,
                            int64_t ty, const int64_t *x0, const int64_t *nx, const float *wx, int64_t tx,
                            const float *scale, const float *bias, float *out, int64_t n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > N) n_threads = N;
    if (n_threads > 64) n_threads = 64;
    job_t jobs[64];
    pthread_t tids[64];
    int started[64] = {0};
    for (int64_t i = 0; i < n_threads; ++i) {
        job_t j = {frame, H, W, N, S, boxes, y0, ny, wy, ty, x0, nx, wx, tx, scale, bias, out, n_threads, i, 0};
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
