/* Many rows encoded at once, in C (hypertrace.read._rows): protobuf varints, and rows
 * joined from constants, per-row bytes and integers written as decimal text.
 *
 * Built as an optional extension: read/rows.py and formats/protobulk.py fall back to
 * numpy and pyarrow (varints with array arithmetic, integers cast to strings, rows
 * joined by pyarrow's binary_join_element_wise), the reference this file must agree
 * with byte for byte (tests/test_native_gather.py compares them; tests/test_protobulk.py
 * runs the Perfetto encoder against the protobuf library). Each step is one pass here
 * instead of several array passes.
 *
 * varints(values) -> (offsets, data, widths)
 *   values: uint64 little-endian (any buffer of n * 8 bytes; an int64 is passed as its
 *   two's complement, as protobuf encodes int64 fields). offsets: int32[n + 1] as
 *   bytes, data: the varints back to back, widths: int64[n] each varint's length.
 *
 * join(n, parts) -> (offsets, data)
 *   parts: a list, each either bytes (the same for every row), a tuple
 *   (offsets, data) of a column of n values (offsets: int32[n + 1], as a pyarrow
 *   binary array holds them; values are data[offsets[i]:offsets[i + 1]]), or a tuple
 *   (values, signed, frac) of n integers (values: 8 bytes each, little-endian, int64
 *   if signed else uint64) written in decimal with `frac` (0..18) digits after a
 *   point: value / 10**frac exactly, "-" before a negative one ("-0.005" for -5 with
 *   frac 3), no point when frac is 0.
 *   Row i of the result is the concatenation of every part's row i.
 *   Offsets are checked against their data; a result over 2 GiB is an error.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *varints(PyObject *self, PyObject *arg) {
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (v.len % 8) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "values: a multiple of 8 bytes expected");
        return NULL;
    }
    Py_ssize_t n = v.len / 8;
    const uint8_t *src = v.buf;
    PyObject *offs = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
    PyObject *data = PyBytes_FromStringAndSize(NULL, n * 10);
    PyObject *widths = PyBytes_FromStringAndSize(NULL, n * 8);
    if (offs == NULL || data == NULL || widths == NULL)
        goto fail;
    int32_t *o = (int32_t *)PyBytes_AS_STRING(offs);
    uint8_t *d = (uint8_t *)PyBytes_AS_STRING(data);
    int64_t *w = (int64_t *)PyBytes_AS_STRING(widths);
    Py_ssize_t at = 0;
    o[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t x = 0;
        for (int b = 0; b < 8; b++)
            x |= (uint64_t)src[i * 8 + b] << (8 * b);
        Py_ssize_t start = at;
        while (x >= 0x80) {
            d[at++] = (uint8_t)(x | 0x80);
            x >>= 7;
        }
        d[at++] = (uint8_t)x;
        w[i] = at - start;
        if (at > INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "over 2 GiB of varints");
            goto fail;
        }
        o[i + 1] = (int32_t)at;
    }
    PyBuffer_Release(&v);
    if (_PyBytes_Resize(&data, at) < 0) {
        Py_DECREF(offs);
        Py_DECREF(widths);
        return NULL;
    }
    return Py_BuildValue("(NNN)", offs, data, widths);
fail:
    PyBuffer_Release(&v);
    Py_XDECREF(offs);
    Py_XDECREF(data);
    Py_XDECREF(widths);
    return NULL;
}

typedef struct {
    Py_buffer offs, data;       /* a column (offs.obj != NULL) or integers (data only) */
    const char *c;              /* a constant's bytes */
    Py_ssize_t clen;
    int ints, is_signed, frac;  /* integers: signedness, digits after the point */
} Part;

#define DEC_MAX 22              /* "-", 20 digits of a u64, "." */

/* v (negative if neg) as decimal text with frac digits after a point, into out;
 * returns its length */
static int decimal(char *out, uint64_t v, int neg, int frac) {
    char tmp[DEC_MAX];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 || n <= frac);      /* at least one digit before the point */
    int len = 0;
    if (neg)
        out[len++] = '-';
    for (int i = n - 1; i >= 0; i--) {
        if (i == frac - 1)
            out[len++] = '.';
        out[len++] = tmp[i];
    }
    return len;
}

static inline int part_decimal(const Part *p, Py_ssize_t i, char *out) {
    const uint8_t *b = (const uint8_t *)p->data.buf + i * 8;
    uint64_t x = 0;
    for (int k = 0; k < 8; k++)
        x |= (uint64_t)b[k] << (8 * k);
    int neg = p->is_signed && (x >> 63);
    return decimal(out, neg ? (~x + 1) : x, neg, p->frac);
}

static void release(Part *p, Py_ssize_t np) {
    for (Py_ssize_t j = 0; j < np; j++) {
        if (p[j].offs.obj != NULL)
            PyBuffer_Release(&p[j].offs);
        if (p[j].data.obj != NULL)
            PyBuffer_Release(&p[j].data);
    }
    PyMem_Free(p);
}

static PyObject *join(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "nO!", &n, &PyList_Type, &list))
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "n < 0");
        return NULL;
    }
    Py_ssize_t np = PyList_GET_SIZE(list);
    Part *p = PyMem_Calloc(np ? np : 1, sizeof(Part));
    PyObject *offs = NULL, *data = NULL;
    if (p == NULL)
        return PyErr_NoMemory();
    Py_ssize_t constant = 0, total = 0;
    for (Py_ssize_t j = 0; j < np; j++) {
        PyObject *it = PyList_GET_ITEM(list, j);
        if (PyBytes_Check(it)) {
            p[j].c = PyBytes_AS_STRING(it);
            p[j].clen = PyBytes_GET_SIZE(it);
            constant += p[j].clen;
            continue;
        }
        PyObject *a, *b;
        if (PyTuple_Check(it) && PyTuple_GET_SIZE(it) == 3) {
            int sg, fr;
            if (!PyArg_ParseTuple(it, "Opi", &a, &sg, &fr))
                goto done;
            if (fr < 0 || fr > 18) {
                PyErr_SetString(PyExc_ValueError, "frac: 0..18 digits");
                goto done;
            }
            if (PyObject_GetBuffer(a, &p[j].data, PyBUF_C_CONTIGUOUS) < 0)
                goto done;
            if (p[j].data.len != n * 8) {
                PyErr_SetString(PyExc_ValueError, "integers: n values of 8 bytes expected");
                goto done;
            }
            p[j].ints = 1;
            p[j].is_signed = sg;
            p[j].frac = fr;
            /* measured exactly below, once the row count is known to be sane */
            for (Py_ssize_t i = 0; i < n; i++) {
                char tmp[DEC_MAX];
                total += part_decimal(&p[j], i, tmp);
            }
            continue;
        }
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) {
            PyErr_SetString(PyExc_TypeError,
                            "a part is bytes, (offsets, data) or (integers, signed, frac)");
            goto done;
        }
        a = PyTuple_GET_ITEM(it, 0);
        b = PyTuple_GET_ITEM(it, 1);
        if (PyObject_GetBuffer(a, &p[j].offs, PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        if (PyObject_GetBuffer(b, &p[j].data, PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        if (p[j].offs.len != (n + 1) * 4) {
            PyErr_SetString(PyExc_ValueError, "offsets: n + 1 int32 expected");
            goto done;
        }
        const int32_t *o = p[j].offs.buf;
        for (Py_ssize_t i = 0; i < n; i++)
            if (o[i] < 0 || o[i] > o[i + 1] || o[i + 1] > p[j].data.len) {
                PyErr_SetString(PyExc_ValueError, "offsets outside their data");
                goto done;
            }
        total += o[n] - o[0];
    }
    if (constant > 0 && n > (INT32_MAX - total) / constant) {
        PyErr_SetString(PyExc_OverflowError, "over 2 GiB of rows");
        goto done;
    }
    total += constant * n;
    if (total > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "over 2 GiB of rows");
        goto done;
    }
    offs = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
    data = PyBytes_FromStringAndSize(NULL, total);
    if (offs == NULL || data == NULL)
        goto done;
    int32_t *ro = (int32_t *)PyBytes_AS_STRING(offs);
    char *d = PyBytes_AS_STRING(data);
    Py_ssize_t at = 0;
    ro[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        for (Py_ssize_t j = 0; j < np; j++) {
            if (p[j].ints) {
                at += part_decimal(&p[j], i, d + at);
            } else if (p[j].offs.obj == NULL) {
                memcpy(d + at, p[j].c, (size_t)p[j].clen);
                at += p[j].clen;
            } else {
                const int32_t *o = p[j].offs.buf;
                Py_ssize_t len = o[i + 1] - o[i];
                memcpy(d + at, (const char *)p[j].data.buf + o[i], (size_t)len);
                at += len;
            }
        }
        ro[i + 1] = (int32_t)at;
    }
    release(p, np);
    return Py_BuildValue("(NN)", offs, data);
done:
    release(p, np);
    Py_XDECREF(offs);
    Py_XDECREF(data);
    return NULL;
}

static PyMethodDef methods[] = {
    {"varints", varints, METH_O, "One varint per uint64 value (see rows.c)."},
    {"join", join, METH_VARARGS, "Rows joined from constant and per-row parts (see rows.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rows", "Many rows encoded at once (varints, decimals, joins), in C.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rows(void) { return PyModule_Create(&module); }
