/* Per-image and per-patch work of the loaders at C speed (preprocess.py).
 *
 * Built by the Makefile into _patchops.so, loaded with ctypes (no Python
 * headers, so the same file serves the venv and the GPU bundle).  Compile
 * with -ffp-contract=off: every float operation here rounds exactly as the
 * numpy operation it replaces, which a fused multiply-add would not, so
 *
 *   - dc_resize_u8 equals preprocess.resize_to_pixels's numpy version
 *     bit for bit (same taps, same float32 operations in the same order);
 *   - dc_prep_grid's downsampled patches equal the numpy ones bit for bit
 *     before the mean and RMS, which are summed in double here (numpy sums
 *     float32 pairwise), so the patch agrees to float32 rounding.
 *
 * tests/test_preprocess.py checks both against the numpy reference.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PATCH 96
#define PLANE (PATCH * PATCH)

/* Taps of 1-D bilinear resampling, 2015 style (preprocess._taps): output
 * pixel i samples x = (i + .5) * n_in / n_out - .5 between floor(x) and
 * floor(x) + 1; a neighbour outside the image has weight 0 and a clipped
 * index.  Weights are computed in double, times scale, then rounded to
 * float, as numpy's (w * scale).astype(float32). */
static void taps(int n_in, int n_out, double scale, int32_t *i0, float *w0,
                 int32_t *i1, float *w1)
{
    double ratio = (double)n_in / (double)n_out;
    for (int i = 0; i < n_out; i++) {
        double x = ((double)i + 0.5) * ratio - 0.5;
        double fl = floor(x);
        int64_t a = (int64_t)fl, b = a + 1;
        double f = x - fl;
        double wa = (a >= 0 && a < n_in) ? 1.0 - f : 0.0;
        double wb = (b >= 0 && b < n_in) ? f : 0.0;
        i0[i] = (int32_t)(a < 0 ? 0 : (a > n_in - 1 ? n_in - 1 : a));
        i1[i] = (int32_t)(b < 0 ? 0 : (b > n_in - 1 ? n_in - 1 : b));
        w0[i] = (float)(wa * scale);
        w1[i] = (float)(wb * scale);
    }
}

/* A whole uint8 image (h, w, 3) resized to (oh, ow, 3) float32 as
 * resize_to_pixels does: ((src - off) * scale) resized, then * mul + add.
 * cols is scratch of h * ow * 3 floats.  Returns 0, or -1 out of memory. */
int dc_resize_u8(const uint8_t *src, int h, int w, float *out, int oh,
                 int ow, float *cols, float off, double scale, float mul,
                 float add)
{
    int32_t *xa = malloc(sizeof(int32_t) * (size_t)(2 * ow + 2 * oh));
    float *wts = malloc(sizeof(float) * (size_t)(2 * ow + 2 * oh));
    if (xa == NULL || wts == NULL) {
        free(xa);
        free(wts);
        return -1;
    }
    int32_t *xb = xa + ow, *ya = xb + ow, *yb = ya + oh;
    float *wa = wts, *wb = wa + ow, *va = wb + ow, *vb = va + oh;
    taps(w, ow, scale, xa, wa, xb, wb);
    taps(h, oh, 1.0, ya, va, yb, vb);
    size_t orow = (size_t)ow * 3;
    for (int r = 0; r < h; r++) {       /* columns, every source row */
        const uint8_t *s = src + (size_t)r * w * 3;
        float *c = cols + (size_t)r * orow;
        for (int j = 0; j < ow; j++) {
            const uint8_t *pa = s + (size_t)xa[j] * 3;
            const uint8_t *pb = s + (size_t)xb[j] * 3;
            for (int k = 0; k < 3; k++) {
                float a = ((float)pa[k] - off) * wa[j];
                float b = ((float)pb[k] - off) * wb[j];
                c[3 * j + k] = a + b;
            }
        }
    }
    for (int i = 0; i < oh; i++) {      /* rows */
        const float *ca = cols + (size_t)ya[i] * orow;
        const float *cb = cols + (size_t)yb[i] * orow;
        float *o = out + (size_t)i * orow;
        float fa = va[i], fb = vb[i];
        for (size_t j = 0; j < orow; j++) {
            float v = ca[j] * fa + cb[j] * fb;
            o[j] = v * mul + add;
        }
    }
    free(xa);
    free(wts);
    return 0;
}

/* One plane (n x n floats, row stride `stride`) resized to (m x m), as
 * preprocess.resize_bilinear(dtype=float32) with offset 0 and the given
 * scale; tmp holds n * m floats. */
static void resize_plane(const float *src, int n, int stride, int m,
                         double scale, float *dst, float *tmp)
{
    int32_t xa[PATCH], xb[PATCH], ya[PATCH], yb[PATCH];
    float wa[PATCH], wb[PATCH], va[PATCH], vb[PATCH];
    taps(n, m, scale, xa, wa, xb, wb);
    taps(n, m, 1.0, ya, va, yb, vb);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < m; j++)
            tmp[r * m + j] = src[r * stride + xa[j]] * wa[j] +
                             src[r * stride + xb[j]] * wb[j];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < m; j++)
            dst[i * m + j] = tmp[ya[i] * m + j] * va[i] +
                             tmp[yb[i] * m + j] * vb[i];
}

/* The kept channel of one patch, [0, 255] floats, into chan (PATCH^2):
 * the crop (image * 255), and if side > 0 the original's downsampling:
 * through uint8 to side x side (scale 1/255) and back up, times 255. */
static void kept_channel(const float *img, int width, int x, int y, int keep,
                         int side, float *chan)
{
    const float *base = img + ((size_t)y * width + x) * 3 + keep;
    for (int r = 0; r < PATCH; r++) {
        const float *s = base + (size_t)r * width * 3;
        for (int c = 0; c < PATCH; c++)
            chan[r * PATCH + c] = s[3 * c] * 255.0f;
    }
    if (side <= 0)
        return;
    float u8[PLANE], small[PLANE], tmp[PLANE];
    for (int i = 0; i < PLANE; i++)
        u8[i] = (float)(uint8_t)chan[i];    /* numpy's astype(uint8) */
    resize_plane(u8, PATCH, PATCH, side, 1.0 / 255.0, small, tmp);
    /* back up: side x side -> PATCH x PATCH, scale 1 */
    int32_t xa[PATCH], xb[PATCH];
    float wa[PATCH], wb[PATCH];
    taps(side, PATCH, 1.0, xa, wa, xb, wb);
    for (int r = 0; r < side; r++)
        for (int j = 0; j < PATCH; j++)
            tmp[r * PATCH + j] = small[r * side + xa[j]] * wa[j] +
                                 small[r * side + xb[j]] * wb[j];
    for (int i = 0; i < PATCH; i++)     /* rows use the same taps */
        for (int j = 0; j < PATCH; j++) {
            float v = tmp[xa[i] * PATCH + j] * wa[i] +
                      tmp[xb[i] * PATCH + j] * wb[i];
            chan[i * PATCH + j] = v * 255.0f;
        }
}

/* numpy's SFC64 (Generator(SFC64).random(dtype=float32)) drawn here, the
 * same numbers: state s = (a, b, c, counter); each 64-bit output gives two
 * 32-bit words, low first, the high one kept for the next draw
 * (has32, u32); a float is the word's top 24 bits times 2^-24. */
static inline uint64_t sfc64_next(uint64_t *s)
{
    uint64_t out = s[0] + s[1] + s[3]++;
    s[0] = s[1] ^ (s[1] >> 11);
    s[1] = s[2] + (s[2] << 3);
    s[2] = ((s[2] << 24) | (s[2] >> 40)) + out;
    return out;
}

#define WORD_TO_FLOAT(w) ((float)((uint32_t)(w) >> 8) * (1.0f / 16777216.0f))

void dc_uniform_f32(uint64_t *s, uint32_t *extra, float *out, int64_t n)
{
    int64_t i = 0;
    if (n > 0 && extra[0]) {
        out[i++] = WORD_TO_FLOAT(extra[1]);
        extra[0] = 0;
    }
    for (; i + 1 < n; i += 2) {
        uint64_t r = sfc64_next(s);
        out[i] = WORD_TO_FLOAT(r);
        out[i + 1] = WORD_TO_FLOAT(r >> 32);
        extra[1] = (uint32_t)(r >> 32);     /* numpy keeps it, used */
    }
    if (i < n) {
        uint64_t r = sfc64_next(s);
        out[i] = WORD_TO_FLOAT(r);
        extra[0] = 1;
        extra[1] = (uint32_t)(r >> 32);
    }
}

/* Sum and sum of squares of n floats (n a multiple of 8) in double, in
 * eight interleaved accumulators: the sums do not wait on each other. */
static double sum8(const float *a, int n)
{
    double acc[8] = {0};
    for (int i = 0; i < n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += a[i + k];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
           ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static double sumsq8(const float *a, int n)
{
    double acc[8] = {0};
    for (int i = 0; i < n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += (double)a[i + k] * a[i + k];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
           ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* n patches of one grid, colour-dropped and RMS-normalised, as
 * preprocess.prep_patch_reference with projection off:
 *   img      (height, width, 3) float32 in [0, 1], the resized image
 *   xy       n (x, y) corners
 *   keep     n kept channels, 0..2
 *   side     n downsampled sides, 0 for a patch not downsampled
 *   noise    n x 2 planes of U[0, 1) float32: the two dropped channels,
 *            in channel order
 *   out      n x 3 planes, written
 *   target   RMS of each patch after normalisation
 * The mean and the RMS are summed in double (numpy: float32, pairwise) and
 * the patch is scaled by one factor target / rms (numpy divides, then
 * multiplies): both agree with numpy to float32 rounding. */
void dc_prep_grid(const float *img, int width, int n, const int32_t *xy,
                  const int32_t *keep, const int32_t *side,
                  const float *noise, float *out, float target)
{
    for (int p = 0; p < n; p++) {
        float *o = out + (size_t)p * 3 * PLANE;
        const float *u = noise + (size_t)p * 2 * PLANE;
        float *chan = o + (size_t)keep[p] * PLANE;
        kept_channel(img, width, xy[2 * p], xy[2 * p + 1], keep[p], side[p],
                     chan);
        float mean = (float)(sum8(chan, PLANE) / PLANE);
        for (int i = 0; i < PLANE; i++)
            chan[i] -= mean;
        for (int c = 0, d = 0; c < 3; c++) {
            if (c == keep[p])
                continue;
            float *q = o + (size_t)c * PLANE;
            const float *s = u + (size_t)d++ * PLANE;
            for (int i = 0; i < PLANE; i++)
                q[i] = s[i] - 0.5f;
        }
        float rms = (float)sqrt(sumsq8(o, 3 * PLANE) / (3.0 * PLANE));
        if (rms > 0.0f) {
            float k = (float)((double)target / rms);
            for (int i = 0; i < 3 * PLANE; i++)
                o[i] *= k;
        }
    }
}
