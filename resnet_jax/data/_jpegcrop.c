/* Partial JPEG decode with libjpeg(-turbo): only the rows down to a box's bottom and the iMCU
 * columns around it are decoded, and the box's exact pixels are written to a caller's buffer.
 *
 * decode_crop_into(data, out, top, left, height, width, scale=1) -> bool
 *   data: the JPEG bytes; out: a writable C-contiguous buffer of height * width * 3 bytes that
 *   receives the RGB pixels of rows top..top+height-1, columns left..left+width-1 of the image
 *   decoded at 1/scale (scale in 1, 2, 4, 8; coordinates in the scaled image).
 *   Returns False (out untouched) for colour spaces it does not decode (CMYK, YCCK, ...);
 *   raises JpegError for corrupt or truncated data, for any libjpeg warning, and for a box that
 *   does not lie inside the image. libjpeg never gets to call exit(): errors longjmp back here.
 *   The GIL is released while decoding.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

static PyObject *JpegError;

#ifndef MARGIN
#define MARGIN 2
#endif

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf env;
  char msg[JMSG_LENGTH_MAX];
} ErrorManager;

static void error_exit(j_common_ptr cinfo) {
  ErrorManager *err = (ErrorManager *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, err->msg);
  longjmp(err->env, 1);
}

/* Warnings (level < 0: corrupt entropy data, premature end of data, ...) are fatal: the caller
 * then decodes with PIL, whose verdict on damaged files stands. Trace messages are ignored. */
static void emit_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level < 0) error_exit(cinfo);
}

static void output_message(j_common_ptr cinfo) { (void)cinfo; }

/* Routes libjpeg's errors and warnings to err (longjmp to err->env) instead of exit(). */
static void use_error_manager(struct jpeg_decompress_struct *cinfo, ErrorManager *err) {
  cinfo->err = jpeg_std_error(&err->pub);
  err->pub.error_exit = error_exit;
  err->pub.emit_message = emit_message;
  err->pub.output_message = output_message;
  err->msg[0] = '\0';
}

/* The colour spaces decoded here (to RGB); others (CMYK, YCCK) are left to PIL. */
static int supported(const struct jpeg_decompress_struct *cinfo) {
  return (cinfo->jpeg_color_space == JCS_YCbCr && cinfo->num_components == 3) ||
         (cinfo->jpeg_color_space == JCS_RGB && cinfo->num_components == 3) ||
         (cinfo->jpeg_color_space == JCS_GRAYSCALE && cinfo->num_components == 1);
}

typedef struct {
  const unsigned char *data;
  size_t size;
  unsigned char *out;
  long top, left, height, width;
  int scale;
  char msg[JMSG_LENGTH_MAX + 64];
} Job;

enum { DECODED = 0, UNSUPPORTED = 1, FAILED = -1 };

/* All libjpeg work; runs without the GIL. */
static int run(Job *job) {
  struct jpeg_decompress_struct cinfo;
  ErrorManager err;

  use_error_manager(&cinfo, &err);
  if (setjmp(err.env)) {
    snprintf(job->msg, sizeof job->msg, "%s", err.msg);
    jpeg_destroy_decompress(&cinfo);
    return FAILED;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, job->data, (unsigned long)job->size);
  jpeg_read_header(&cinfo, TRUE);
  if (!supported(&cinfo)) {
    jpeg_destroy_decompress(&cinfo);
    return UNSUPPORTED;
  }
  cinfo.out_color_space = JCS_RGB;  /* Grayscale is replicated to R = G = B, like PIL's convert. */
  cinfo.scale_num = 1;
  cinfo.scale_denom = (unsigned int)job->scale;
  cinfo.dct_method = JDCT_ISLOW;  /* PIL's defaults: accurate IDCT, fancy upsampling. */
  cinfo.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&cinfo);
  if (cinfo.output_components != 3 || job->top + job->height > (long)cinfo.output_height ||
      job->left + job->width > (long)cinfo.output_width) {
    snprintf(job->msg, sizeof job->msg, "box (top %ld, left %ld, %ldx%ld) outside the %ux%u image",
             job->top, job->left, job->width, job->height, cinfo.output_width,
             cinfo.output_height);
    jpeg_destroy_decompress(&cinfo);
    return FAILED;
  }
  /* Decoded columns: the box plus MARGIN on each side (within the image), widened by libjpeg to
   * iMCU boundaries. Fancy upsampling replicates the edge chroma sample at the edges of the decoded
   * region, where a full decode would use the neighbour: the margin keeps those columns out. */
  const long margin = MARGIN;
  long first = job->left - margin < 0 ? 0 : job->left - margin;
  long last = job->left + job->width + margin;
  if (last > (long)cinfo.output_width) last = (long)cinfo.output_width;
  JDIMENSION xoffset = (JDIMENSION)first, cropped_width = (JDIMENSION)(last - first);
  if (cropped_width < cinfo.output_width)
    jpeg_crop_scanline(&cinfo, &xoffset, &cropped_width);
  else
    xoffset = 0;
  JSAMPARRAY row = (*cinfo.mem->alloc_sarray)((j_common_ptr)&cinfo, JPOOL_IMAGE,
                                              cinfo.output_width * 3, 1);
  if (job->top > 0 &&
      jpeg_skip_scanlines(&cinfo, (JDIMENSION)job->top) != (JDIMENSION)job->top) {
    snprintf(job->msg, sizeof job->msg, "could not skip %ld scanlines", job->top);
    jpeg_destroy_decompress(&cinfo);
    return FAILED;
  }
  const size_t offset = (size_t)(job->left - (long)xoffset) * 3, stride = (size_t)job->width * 3;
  for (long y = 0; y < job->height; y++) {
    if (jpeg_read_scanlines(&cinfo, row, 1) != 1) {
      snprintf(job->msg, sizeof job->msg, "no scanline %ld", job->top + y);
      jpeg_destroy_decompress(&cinfo);
      return FAILED;
    }
    memcpy(job->out + (size_t)y * stride, row[0] + offset, stride);
  }
  /* The rows below the box are never decoded (jpeg_finish_decompress would read them). */
  jpeg_destroy_decompress(&cinfo);
  return DECODED;
}

static PyObject *decode_crop_into(PyObject *self, PyObject *args, PyObject *kwargs) {
  static char *keywords[] = {"data", "out", "top", "left", "height", "width", "scale", NULL};
  Py_buffer data, out;
  Job job;
  job.scale = 1;
  (void)self;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*w*llll|i", keywords, &data, &out, &job.top,
                                   &job.left, &job.height, &job.width, &job.scale))
    return NULL;
  PyObject *result = NULL;
  if (job.scale != 1 && job.scale != 2 && job.scale != 4 && job.scale != 8) {
    PyErr_Format(PyExc_ValueError, "scale must be 1, 2, 4 or 8, not %d", job.scale);
  } else if (job.top < 0 || job.left < 0 || job.height <= 0 || job.width <= 0 ||
             job.height > 65535 || job.width > 65535) {
    PyErr_Format(PyExc_ValueError, "bad box: top %ld, left %ld, height %ld, width %ld", job.top,
                 job.left, job.height, job.width);
  } else if (out.len != (Py_ssize_t)(job.height * job.width * 3) ||
             !PyBuffer_IsContiguous(&out, 'C')) {
    PyErr_Format(PyExc_ValueError, "out must be a C-contiguous buffer of %ld bytes, not %zd",
                 job.height * job.width * 3, out.len);
  } else if (data.len == 0) {
    PyErr_SetString(JpegError, "empty data");
  } else {
    job.data = (const unsigned char *)data.buf;
    job.size = (size_t)data.len;
    job.out = (unsigned char *)out.buf;
    job.msg[0] = '\0';
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run(&job);
    Py_END_ALLOW_THREADS
    if (status == FAILED)
      PyErr_SetString(JpegError, job.msg[0] ? job.msg : "libjpeg error");
    else
      result = PyBool_FromLong(status == DECODED);
  }
  PyBuffer_Release(&data);
  PyBuffer_Release(&out);
  return result;
}

/* Header only: (width, height) of a JPEG whose colour space decode_crop_into handles, else None. */
static PyObject *size(PyObject *self, PyObject *args) {
  Py_buffer data;
  (void)self;
  if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
  struct jpeg_decompress_struct cinfo;
  ErrorManager err;
  PyObject *result = NULL;
  use_error_manager(&cinfo, &err);
  if (data.len == 0) {
    PyBuffer_Release(&data);
    PyErr_SetString(JpegError, "empty data");
    return NULL;
  }
  if (setjmp(err.env)) {
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    PyErr_SetString(JpegError, err.msg[0] ? err.msg : "libjpeg error");
    return NULL;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
  jpeg_read_header(&cinfo, TRUE);
  if (supported(&cinfo))
    result = Py_BuildValue("(II)", cinfo.image_width, cinfo.image_height);
  else
    result = Py_NewRef(Py_None);
  jpeg_destroy_decompress(&cinfo);
  PyBuffer_Release(&data);
  return result;
}

static PyMethodDef methods[] = {
  {"size", size, METH_VARARGS,
   "size(data) -> (width, height) | None\n\n"
   "Reads only the JPEG header. None: a colour space decode_crop_into does not handle (CMYK).\n"
   "Raises JpegError when the header is corrupt."},
  {"decode_crop_into", (PyCFunction)(void (*)(void))decode_crop_into,
   METH_VARARGS | METH_KEYWORDS,
   "decode_crop_into(data, out, top, left, height, width, scale=1) -> bool\n\n"
   "Decodes the RGB pixels of a box of a JPEG (at 1/scale) into `out` (height*width*3 bytes),\n"
   "decoding only the rows down to the box's bottom and the iMCU columns around it. False:\n"
   "colour space not handled (CMYK/YCCK). Raises JpegError on corrupt or truncated data."},
  {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
  PyModuleDef_HEAD_INIT, "_jpegcrop",
  "Partial (box-only) JPEG decoding with libjpeg-turbo's jpeg_skip_scanlines and "
  "jpeg_crop_scanline.", -1, methods,
};

PyMODINIT_FUNC PyInit__jpegcrop(void) {
  PyObject *m = PyModule_Create(&module);
  if (m == NULL) return NULL;
  JpegError = PyErr_NewException("resnet_jax.data._jpegcrop.JpegError", PyExc_ValueError, NULL);
  if (JpegError == NULL || PyModule_AddObjectRef(m, "JpegError", JpegError) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  if (PyModule_AddIntConstant(m, "LIBJPEG_VERSION", JPEG_LIB_VERSION) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
