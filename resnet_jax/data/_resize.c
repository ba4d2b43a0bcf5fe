/* Bilinear (antialiased) resize of a box of a uint8 image, equal to Pillow's
 * Image.resize(size, Image.BILINEAR, box=box) to the bit, optionally mirrored left-right.
 *
 * resize_into(src, height, width, channels, out, out_height, out_width, box, flip=False)
 *   src: C-contiguous uint8 buffer [height][width][channels] (channels 1 or 3);
 *   out: writable C-contiguous uint8 buffer [out_height][out_width][channels];
 *   box: (x0, y0, x1, y1) in src pixels (floats, as Pillow's box argument).
 *   The GIL is released while resizing.
 *
 * Same arithmetic as Pillow 13 (libImaging/Resample.c, re-derived here, not copied): per output
 * pixel a triangle filter stretched by the reduction factor, weights computed in double from the
 * box given as float32 and normalised to sum 1, then rounded to 22-bit fixed point; a horizontal
 * pass over the rows the vertical pass needs, rounded to uint8, then a vertical pass.
 * Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
 * pixels as the width (the order changes the rounding in between), and so does this.
 * What differs is the memory order: the horizontal pass runs on a transposed copy (RGB pixels
 * padded to 4 bytes, as Pillow keeps them, so a transpose moves one word per pixel), so that
 * both passes are sums of whole contiguous rows times one weight, which compilers vectorise
 * (Pillow's horizontal pass is a short scalar dot product per output pixel). The padding byte
 * is resampled too and dropped at the end. Mirroring is free: columns are written in reverse.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS 22 /* 32 - 8 - 2: room for 8-bit pixels times weights summing to ~1. */

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
/* Compiled for AVX-512, AVX2 and baseline SSE2; the loader picks one for the running CPU. */
#define VECTORISED __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define VECTORISED
#endif

typedef struct {
  int *first;     /* first source index of each output index */
  int *count;     /* number of source indices read */
  int32_t *kk;    /* count weights per output, ksize apart, 22-bit fixed point */
  int ksize;
} Weights;

static void free_weights(Weights *w) {
  free(w->first);
  free(w->count);
  free(w->kk);
}

static double triangle(double x) {
  x = x < 0.0 ? -x : x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

/* Weights for resampling [in0, in1) of in_size source pixels to out_size pixels. */
static int make_weights(Weights *w, int in_size, float in0, float in1, int out_size) {
  double scale = (double)(in1 - in0) / out_size; /* the difference in float32, as Pillow */
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 1.0 * filterscale;
  int ksize = (int)ceil(support) * 2 + 1;
  w->ksize = ksize;
  w->first = malloc(sizeof(int) * (size_t)out_size);
  w->count = malloc(sizeof(int) * (size_t)out_size);
  w->kk = calloc((size_t)out_size * (size_t)ksize, sizeof(int32_t));
  double *k = malloc(sizeof(double) * (size_t)ksize);
  if (!w->first || !w->count || !w->kk || !k) {
    free(k);
    return 0;
  }
  for (int xx = 0; xx < out_size; xx++) {
    double center = in0 + (xx + 0.5) * scale;
    double inv = 1.0 / filterscale, total = 0.0;
    int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
    if (lo < 0) lo = 0;
    if (hi > in_size) hi = in_size;
    int n = hi - lo;
    for (int x = 0; x < n; x++) {
      k[x] = triangle((x + lo - center + 0.5) * inv);
      total += k[x];
    }
    for (int x = 0; x < n; x++) {
      double v = total != 0.0 ? k[x] / total : k[x];
      w->kk[(size_t)xx * ksize + x] =
          (int32_t)(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    w->first[xx] = lo;
    w->count[xx] = n < 0 ? 0 : n;
  }
  free(k);
  return 1;
}

static inline uint8_t clip8(int32_t v) {
  v >>= PRECISION_BITS;
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

#define HALF (1 << (PRECISION_BITS - 1))
#define TAP(t) ((int32_t)r##t[i] * k##t)
/* Local restrict copies: the compiler then knows no store to dst changes a row or weight. */
#define ROWS(n)                                                    \
  const uint8_t *restrict r0 = r[0], *restrict r1 = r[(n) > 1],    \
                *restrict r2 = r[2 * ((n) > 2)], *restrict r3 = r[3 * ((n) > 3)], \
                *restrict r4 = r[4 * ((n) > 4)], *restrict r5 = r[5 * ((n) > 5)], \
                *restrict r6 = r[6 * ((n) > 6)], *restrict r7 = r[7 * ((n) > 7)]; \
  const int32_t k0 = k[0], k1 = (n) > 1 ? k[1] : 0, k2 = (n) > 2 ? k[2] : 0,            \
                k3 = (n) > 3 ? k[3] : 0, k4 = (n) > 4 ? k[4] : 0, k5 = (n) > 5 ? k[5] : 0, \
                k6 = (n) > 6 ? k[6] : 0, k7 = (n) > 7 ? k[7] : 0;                       \
  (void)r1; (void)r2; (void)r3; (void)r4; (void)r5; (void)r6; (void)r7;                 \
  (void)k1; (void)k2; (void)k3; (void)k4; (void)k5; (void)k6; (void)k7

/* dst[i] = clip8(sum_t r[t][i] * k[t]) for i < n: one weighted sum of `count` rows. Counts up to
 * 8 (every reduction below 3.5x) get a loop with all taps in registers; more go through acc. */
VECTORISED
static void weighted_rows(const uint8_t *const *r, const int32_t *k, int count,
                          uint8_t *restrict dst, size_t n, int32_t *restrict acc) {
  switch (count) {
    case 1: {
      ROWS(1);
      for (size_t i = 0; i < n; i++) dst[i] = clip8(HALF + TAP(0));
      return;
    }
    case 2: {
      ROWS(2);
      for (size_t i = 0; i < n; i++) dst[i] = clip8(HALF + TAP(0) + TAP(1));
      return;
    }
    case 3: {
      ROWS(3);
      for (size_t i = 0; i < n; i++) dst[i] = clip8(HALF + TAP(0) + TAP(1) + TAP(2));
      return;
    }
    case 4: {
      ROWS(4);
      for (size_t i = 0; i < n; i++) dst[i] = clip8(HALF + TAP(0) + TAP(1) + TAP(2) + TAP(3));
      return;
    }
    case 5: {
      ROWS(5);
      for (size_t i = 0; i < n; i++)
        dst[i] = clip8(HALF + TAP(0) + TAP(1) + TAP(2) + TAP(3) + TAP(4));
      return;
    }
    case 6: {
      ROWS(6);
      for (size_t i = 0; i < n; i++)
        dst[i] = clip8(HALF + TAP(0) + TAP(1) + TAP(2) + TAP(3) + TAP(4) + TAP(5));
      return;
    }
    case 7: {
      ROWS(7);
      for (size_t i = 0; i < n; i++)
        dst[i] = clip8(HALF + TAP(0) + TAP(1) + TAP(2) + TAP(3) + TAP(4) + TAP(5) + TAP(6));
      return;
    }
    case 8: {
      ROWS(8);
      for (size_t i = 0; i < n; i++)
        dst[i] = clip8(HALF + TAP(0) + TAP(1) + TAP(2) + TAP(3) + TAP(4) + TAP(5) + TAP(6) +
                       TAP(7));
      return;
    }
    default:
      for (size_t i = 0; i < n; i++) acc[i] = HALF;
      for (int t = 0; t < count; t++) {
        const uint8_t *restrict row = r[t];
        const int32_t kt = k[t];
        for (size_t i = 0; i < n; i++) acc[i] += (int32_t)row[i] * kt;
      }
      for (size_t i = 0; i < n; i++) dst[i] = clip8(acc[i]);
  }
}

/* The rows first..first+count-1 of src (stride bytes apart) as pointers. */
static void row_pointers(const uint8_t **r, const uint8_t *src, size_t stride, int first,
                         int count) {
  for (int t = 0; t < count; t++) r[t] = src + (size_t)(first + t) * stride;
}

typedef struct {
  const uint8_t *src;
  int height, width, channels;
  uint8_t *out;
  int out_height, out_width;
  float box[4];
  int flip;
} Job;

/* Transposes go in tiles of TILE rows: each column then receives TILE consecutive pixels at a
 * time (a run of bytes, not TILE scattered writes), which keeps the cache lines in use few. */
#define TILE 8

/* dst[x][y] = src[y][x] for y < rows, x < cols: src pixels are `c` bytes (rows `stride` apart),
 * dst pixels `pb` bytes (4 for RGB: RGBX, as Pillow keeps them, so that later copies move one
 * word per pixel; the padding byte holds the next pixel's first byte and is never output). */
static void transpose_in(const uint8_t *src, size_t stride, int rows, int cols, int c,
                         uint8_t *dst, int pb) {
  const size_t col_len = (size_t)rows * pb;
  for (int y0 = 0; y0 < rows; y0 += TILE) {
    const int y1 = y0 + TILE < rows ? y0 + TILE : rows;
    for (int x = 0; x < cols; x++) {
      uint8_t *d = dst + (size_t)x * col_len + (size_t)y0 * pb;
      const uint8_t *s = src + (size_t)y0 * stride + (size_t)x * c;
      if (pb == 1) {
        for (int y = y0; y < y1; y++, s += stride) *d++ = *s;
      } else if (x < cols - 1) {
        for (int y = y0; y < y1; y++, s += stride, d += 4) memcpy(d, s, 4);
      } else { /* A row's last pixel: a 4-byte load could run past the end of src. */
        for (int y = y0; y < y1; y++, s += stride, d += 4) memcpy(d, s, 3);
      }
    }
  }
}

/* dst[y][x'] = src[x][y] for x < cols, y < rows, x' = cols - 1 - x when flip: src pixels `pb`
 * bytes, dst pixels `dpb` bytes (3 drops RGBX padding; dst rows `stride` apart). */
static void transpose_out(const uint8_t *src, int cols, int rows, int pb, uint8_t *dst,
                          size_t stride, int dpb, int flip) {
  const size_t col_len = (size_t)rows * pb;
  for (int x0 = 0; x0 < cols; x0 += TILE) {
    const int x1 = x0 + TILE < cols ? x0 + TILE : cols;
    for (int y = 0; y < rows; y++) {
      uint8_t *row = dst + (size_t)y * stride;
      const uint8_t *s = src + (size_t)x0 * col_len + (size_t)y * pb;
      for (int x = x0; x < x1; x++, s += col_len) {
        uint8_t *d = row + (size_t)(flip ? cols - 1 - x : x) * dpb;
        if (dpb == 1)
          *d = *s;
        else
          memcpy(d, s, (size_t)dpb);
      }
    }
  }
}

/* out[i][*] = weighted rows (w.first[i] - offset ...) of src (rows `stride` apart), n bytes each;
 * out rows out_stride apart. */
static void pass(const uint8_t *src, size_t stride, const Weights *w, int n_out, int offset,
                 const uint8_t **r, int32_t *acc, uint8_t *out, size_t out_stride, size_t n) {
  for (int i = 0; i < n_out; i++) {
    row_pointers(r, src, stride, w->first[i] - offset, w->count[i]);
    weighted_rows(r, w->kk + (size_t)i * w->ksize, w->count[i], out + (size_t)i * out_stride, n,
                  acc);
  }
}

/* 0 on success, -1 when out of memory. Runs without the GIL. */
static int run(const Job *job) {
  const int c = job->channels, pb = c == 3 ? 4 : 1, ow = job->out_width, oh = job->out_height;
  const int w = job->width, h = job->height;
  Weights wx = {0}, wy = {0};
  uint8_t *a = NULL, *b = NULL, *d = NULL, *packed = NULL;
  int32_t *acc = NULL;
  const uint8_t **r = NULL;
  int status = -1;
  if (!make_weights(&wx, w, job->box[0], job->box[2], ow) ||
      !make_weights(&wy, h, job->box[1], job->box[3], oh))
    goto done;
  /* Source rows and columns any output reads. */
  const int y0 = wy.first[0], y1 = wy.first[oh - 1] + wy.count[oh - 1];
  int x0 = w, x1 = 0;
  for (int xx = 0; xx < ow; xx++) {
    if (wx.count[xx] == 0) continue;
    if (wx.first[xx] < x0) x0 = wx.first[xx];
    if (wx.first[xx] + wx.count[xx] > x1) x1 = wx.first[xx] + wx.count[xx];
  }
  const int rows = y1 - y0 > 0 ? y1 - y0 : 0, cols = x1 - x0 > 0 ? x1 - x0 : 0;
  /* Pillow 13's choice of order (it changes the rounding in between): vertical first when the
   * height shrinks by more than twice as many pixels as the width. */
  const int vertical_first = h - oh > 0 && h - oh > (w - ow) * 2;
  const int mid = vertical_first ? oh : rows; /* rows of the horizontal pass */
  const size_t col_len = (size_t)mid * pb;
  size_t longest = col_len > (size_t)ow * pb ? col_len : (size_t)ow * pb;
  if ((size_t)cols * c > longest) longest = (size_t)cols * c;
  a = malloc(col_len * (size_t)(cols > 0 ? cols : 1) + 4);
  b = malloc(col_len * (size_t)ow + 4);
  d = malloc((vertical_first ? (size_t)oh * cols * c : (size_t)rows * ow * pb) + 4);
  acc = malloc(sizeof(int32_t) * (longest + 1));
  r = malloc(sizeof(uint8_t *) * (size_t)(wx.ksize > wy.ksize ? wx.ksize : wy.ksize));
  packed = malloc((size_t)ow * pb + 4); /* one output row as RGBX, before dropping padding */
  if (!a || !b || !d || !acc || !r || !packed) goto done;
  const size_t src_stride = (size_t)w * c, out_stride = (size_t)ow * c;
  const uint8_t *corner = job->src + (size_t)x0 * c;
  if (!vertical_first) {
    /* Horizontal pass on a transposed copy of the rows y0..y1, back to rows, vertical pass. */
    transpose_in(corner + (size_t)y0 * src_stride, src_stride, rows, cols, c, a, pb);
    pass(a, col_len, &wx, ow, x0, r, acc, b, col_len, col_len);
    transpose_out(b, ow, rows, pb, d, (size_t)ow * pb, pb, job->flip);
    for (int yy = 0; yy < oh; yy++) {
      row_pointers(r, d, (size_t)ow * pb, wy.first[yy] - y0, wy.count[yy]);
      uint8_t *dst = job->out + (size_t)yy * out_stride;
      weighted_rows(r, wy.kk + (size_t)yy * wy.ksize, wy.count[yy], pb == 4 ? packed : dst,
                    (size_t)ow * pb, acc);
      if (pb == 4)
        for (int x = 0; x < ow; x++) memcpy(dst + 3 * x, packed + 4 * x, 3);
    }
  } else {
    /* Vertical pass on the columns x0..x1, then the horizontal pass on a transposed copy. */
    pass(corner, src_stride, &wy, oh, 0, r, acc, d, (size_t)cols * c, (size_t)cols * c);
    transpose_in(d, (size_t)cols * c, oh, cols, c, a, pb);
    pass(a, col_len, &wx, ow, x0, r, acc, b, col_len, col_len);
    transpose_out(b, ow, oh, pb, job->out, out_stride, c, job->flip);
  }
  status = 0;
done:
  free_weights(&wx);
  free_weights(&wy);
  free(a);
  free(b);
  free(d);
  free(packed);
  free(acc);
  free((void *)r);
  return status;
}

static PyObject *resize_into(PyObject *self, PyObject *args, PyObject *kwargs) {
  static char *keywords[] = {"src", "height", "width", "channels", "out", "out_height",
                             "out_width", "box", "flip", NULL};
  Py_buffer src, out;
  double box[4];
  Job job;
  job.flip = 0;
  (void)self;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*iiiw*ii(dddd)|p", keywords, &src, &job.height,
                                   &job.width, &job.channels, &out, &job.out_height,
                                   &job.out_width, &box[0], &box[1], &box[2], &box[3], &job.flip))
    return NULL;
  PyObject *result = NULL;
  for (int i = 0; i < 4; i++) job.box[i] = (float)box[i]; /* Pillow takes the box as float32 */
  if (job.channels != 1 && job.channels != 3) {
    PyErr_Format(PyExc_ValueError, "channels must be 1 or 3, not %d", job.channels);
  } else if (job.height <= 0 || job.width <= 0 || job.out_height <= 0 || job.out_width <= 0) {
    PyErr_Format(PyExc_ValueError, "sizes must be positive: %dx%d -> %dx%d", job.width,
                 job.height, job.out_width, job.out_height);
  } else if (src.len != (Py_ssize_t)job.height * job.width * job.channels ||
             !PyBuffer_IsContiguous(&src, 'C')) {
    PyErr_Format(PyExc_ValueError, "src must be a C-contiguous buffer of %d x %d x %d bytes",
                 job.height, job.width, job.channels);
  } else if (out.len != (Py_ssize_t)job.out_height * job.out_width * job.channels ||
             !PyBuffer_IsContiguous(&out, 'C')) {
    PyErr_Format(PyExc_ValueError, "out must be a C-contiguous buffer of %d x %d x %d bytes",
                 job.out_height, job.out_width, job.channels);
  } else if (!(job.box[0] >= 0 && job.box[1] >= 0 && job.box[2] <= job.width &&
               job.box[3] <= job.height && job.box[0] < job.box[2] && job.box[1] < job.box[3])) {
    PyErr_Format(PyExc_ValueError, "box (%g, %g, %g, %g) is not inside the %dx%d image", box[0],
                 box[1], box[2], box[3], job.width, job.height);
  } else {
    job.src = (const uint8_t *)src.buf;
    job.out = (uint8_t *)out.buf;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run(&job);
    Py_END_ALLOW_THREADS
    if (status != 0)
      PyErr_NoMemory();
    else
      result = Py_NewRef(Py_None);
  }
  PyBuffer_Release(&src);
  PyBuffer_Release(&out);
  return result;
}

static PyMethodDef methods[] = {
  {"resize_into", (PyCFunction)(void (*)(void))resize_into, METH_VARARGS | METH_KEYWORDS,
   "resize_into(src, height, width, channels, out, out_height, out_width, box, flip=False)\n\n"
   "Pillow's BILINEAR resize of `box` of the uint8 image `src` into `out`, bit for bit;\n"
   "flip=True mirrors the output left-right."},
  {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
  PyModuleDef_HEAD_INIT, "_resize",
  "Vectorised bilinear resize equal to Pillow's, with a free horizontal flip.", -1, methods,
};

PyMODINIT_FUNC PyInit__resize(void) { return PyModule_Create(&module); }
