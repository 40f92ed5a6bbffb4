/* Runs edgeclip's CPU view kernel (edgeclip/kernels/csrc/resample_views.c, compiled in beside this file) on
 * inputs read from a file and writes the views to another, so a build for another architecture can be checked
 * under an emulator (tests/kernels/test_views_cross.py runs an aarch64 build under qemu-aarch64).
 *
 * usage: views_driver IN OUT
 *   IN:  int64 H, W, N, S, n_threads; uint8 frame [H, W, 3]; int64 boxes [N, 5]; int64 filters [N];
 *        float32 scale [3], bias [3]   (native byte order)
 *   OUT: float32 views [N, 3, S, S]
 * Prints "isa=<name> vector_floats=<n> cpu_ok=<0|1>" and exits 0, or names what failed and exits 1.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int edgeclip_resample_views(const uint8_t *frame, int64_t H, int64_t W, int64_t N, int64_t S,
                            const int64_t *boxes, const int64_t *filters, const float *scale, const float *bias,
                            float *out, int64_t n_threads);
const char *edgeclip_views_isa(void);
int edgeclip_views_vector_floats(void);
int edgeclip_views_cpu_ok(void);

static int read_all(FILE *f, void *dst, size_t size, size_t n) { return fread(dst, size, n, f) == n; }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
        return 1;
    }
    FILE *in = fopen(argv[1], "rb");
    int64_t hdr[5];
    if (!in || !read_all(in, hdr, sizeof(int64_t), 5)) {
        fprintf(stderr, "cannot read the header of %s\n", argv[1]);
        return 1;
    }
    const int64_t H = hdr[0], W = hdr[1], N = hdr[2], S = hdr[3], threads = hdr[4];
    uint8_t *frame = malloc((size_t)(H * W * 3));
    int64_t *boxes = malloc(sizeof(int64_t) * (size_t)(N * 5)), *filters = malloc(sizeof(int64_t) * (size_t)N);
    float scale[3], bias[3], *out = malloc(sizeof(float) * (size_t)(N * 3 * S * S));
    if (!frame || !boxes || !filters || !out) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    if (!read_all(in, frame, 1, (size_t)(H * W * 3)) || !read_all(in, boxes, sizeof(int64_t), (size_t)(N * 5)) ||
        !read_all(in, filters, sizeof(int64_t), (size_t)N) || !read_all(in, scale, sizeof(float), 3) ||
        !read_all(in, bias, sizeof(float), 3)) {
        fprintf(stderr, "%s is shorter than its header says\n", argv[1]);
        return 1;
    }
    fclose(in);
    if (edgeclip_resample_views(frame, H, W, N, S, boxes, filters, scale, bias, out, threads) != 0) {
        fprintf(stderr, "the kernel failed\n");
        return 1;
    }
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(out, sizeof(float), (size_t)(N * 3 * S * S), o) != (size_t)(N * 3 * S * S) || fclose(o) != 0) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 1;
    }
    printf("isa=%s vector_floats=%d cpu_ok=%d\n", edgeclip_views_isa(), edgeclip_views_vector_floats(),
           edgeclip_views_cpu_ok());
    free(frame); free(boxes); free(filters); free(out);
    return 0;
}
