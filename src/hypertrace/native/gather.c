/* The columnar decoder's field gather, in C (hypertrace.read._gather).
 *
 * Built as an optional extension: read/columns.py falls back to its numpy gather
 * (`_numpy_fields`), the reference this file must agree with on every record it
 * keeps (tests/test_native_gather.py compares them on intact and damaged data).
 * numpy gathers a string field with an index array as long as the strings' bytes
 * (repeat + arange), several passes over memory per field; here one pass over the
 * records copies each field where it goes.
 *
 * fields(buf, off, end, size, steps) -> (good, outs)
 *   buf:   the chunk's bytes (any buffer)
 *   off:   int64 byte offset of each record (its 16-byte header) in buf
 *   end:   int64 offset after each record as its header's size says
 *   size:  int64 each record's size (header's size field)
 *   steps: tuple of ints, the declaration's payload layout (abi Codec.steps):
 *          w > 0 a fixed run of w bytes, -1 a string or bytes field
 *          (u16 length, then that many bytes, at most STR_MAX)
 *   good:  bytes, 1 per record that fits its declaration, else 0
 *   outs:  per step, bytes of n * w (fixed; row i at i * w) or a tuple
 *          (int32 offsets of n + 1 entries as bytes, the values' bytes)
 * A record that does not fit (a field past its end or past buf, a length over
 * STR_MAX, a size that is not its payload's, aligned to 8) is not good: its
 * fixed runs are zeros and its strings empty from that field on, as the numpy
 * gather leaves them (the caller cuts the stream at the first record not good).
 * Nothing is read outside buf, whatever the offsets say.
 *
 * starts(buf) -> (starts, ok): the records of a chunk, by following the size chain
 *   from byte 0 (the u16 at byte 2 of each header, masked with REC_SIZE_MASK) while
 *   a whole header fits; a size under 16 ends the walk.
 *   starts: int64 word indices (byte offset / 8) as bytes; ok: the walk ended
 *   exactly at the end of buf. This is what columns.record_starts computes.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define REC_HEADER 16
#define STR_MAX 1024
#define MAX_STEPS 4096
#define REC_SIZE_MASK 0xFFF8

typedef struct {
    Py_ssize_t width;       /* > 0 fixed, -1 variable */
    char *fixed;            /* n * width */
    int32_t *offsets;       /* n + 1 */
    char *data;             /* capacity: all records' bytes */
    Py_ssize_t used;
    PyObject *fixed_obj, *offsets_obj, *data_obj;
} Step;

static int get_i64(PyObject *o, Py_buffer *v, Py_ssize_t n, const char *what) {
    if (PyObject_GetBuffer(o, v, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (v->len != n * 8) {
        PyErr_Format(PyExc_ValueError, "%s: %zd int64 values expected", what, n);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static PyObject *fields(PyObject *self, PyObject *args) {
    PyObject *bo, *offo, *endo, *sizeo, *stepso;
    if (!PyArg_ParseTuple(args, "OOOOO!", &bo, &offo, &endo, &sizeo, &PyTuple_Type, &stepso))
        return NULL;
    Py_buffer b = {0}, vo = {0}, ve = {0}, vs = {0};
    PyObject *result = NULL, *good_obj = NULL;
    Py_ssize_t nsteps = PyTuple_GET_SIZE(stepso);
    Step *st = NULL;
    if (nsteps > MAX_STEPS) {
        PyErr_SetString(PyExc_ValueError, "too many fields");
        return NULL;
    }
    if (PyObject_GetBuffer(bo, &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    Py_ssize_t n = 0;
    {
        Py_buffer t;
        if (PyObject_GetBuffer(offo, &t, PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        n = t.len / 8;
        PyBuffer_Release(&t);
    }
    if (get_i64(offo, &vo, n, "off") < 0 || get_i64(endo, &ve, n, "end") < 0 ||
        get_i64(sizeo, &vs, n, "size") < 0)
        goto done;
    const int64_t *off = vo.buf, *end = ve.buf, *size = vs.buf;
    const uint8_t *buf = b.buf;
    const int64_t blen = b.len;
    /* every value of a record lies within it and within buf: the records' bytes, and
     * buf's, bound any column (records that overlap, as none written do, are cut) */
    int64_t room = 0;
    for (Py_ssize_t i = 0; i < n && room < blen; i++)
        if (size[i] > 0)
            room += size[i];
    if (room > blen)
        room = blen;
    st = PyMem_Calloc(nsteps ? nsteps : 1, sizeof(Step));
    if (st == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < nsteps; j++) {
        Py_ssize_t w = PyLong_AsSsize_t(PyTuple_GET_ITEM(stepso, j));
        if (w == -1 && PyErr_Occurred())
            goto done;
        if (w == 0 || w < -1 || w > (1 << 16)) {
            PyErr_SetString(PyExc_ValueError, "bad step");
            goto done;
        }
        st[j].width = w;
        if (w > 0) {
            st[j].fixed_obj = PyBytes_FromStringAndSize(NULL, n * w);
            if (st[j].fixed_obj == NULL)
                goto done;
            st[j].fixed = PyBytes_AS_STRING(st[j].fixed_obj);
        } else {
            st[j].offsets_obj = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
            st[j].data_obj = PyBytes_FromStringAndSize(NULL, room);
            if (st[j].offsets_obj == NULL || st[j].data_obj == NULL)
                goto done;
            st[j].offsets = (int32_t *)PyBytes_AS_STRING(st[j].offsets_obj);
            st[j].data = PyBytes_AS_STRING(st[j].data_obj);
            st[j].offsets[0] = 0;
        }
    }
    good_obj = PyBytes_FromStringAndSize(NULL, n);
    if (good_obj == NULL)
        goto done;
    char *good = PyBytes_AS_STRING(good_obj);
    for (Py_ssize_t i = 0; i < n; i++) {
        int ok = off[i] >= 0 && end[i] <= blen && off[i] <= end[i];
        int64_t p = off[i] + REC_HEADER;
        for (Py_ssize_t j = 0; j < nsteps; j++) {
            Step *s = &st[j];
            if (s->width > 0) {
                char *dst = s->fixed + i * s->width;
                if (ok && p + s->width <= end[i]) {
                    memcpy(dst, buf + p, (size_t)s->width);
                } else {
                    ok = 0;
                    memset(dst, 0, (size_t)s->width);
                }
                p += s->width;
                continue;
            }
            int64_t ln = 0;
            if (ok && p + 2 <= end[i]) {
                ln = (int64_t)buf[p] | (int64_t)buf[p + 1] << 8;
                if (ln > STR_MAX || p + 2 + ln > end[i] || s->used + ln > room)
                    ok = 0;
            } else {
                ok = 0;
            }
            if (!ok)
                ln = 0;
            memcpy(s->data + s->used, buf + p + 2, (size_t)ln);
            s->used += ln;
            s->offsets[i + 1] = (int32_t)s->used;
            p += 2 + ln;
        }
        if (ok && ((p - off[i] + 7) & ~(int64_t)7) != size[i])
            ok = 0;
        good[i] = (char)ok;
    }
    PyObject *outs = PyList_New(nsteps);
    if (outs == NULL)
        goto done;
    for (Py_ssize_t j = 0; j < nsteps; j++) {
        PyObject *o;
        if (st[j].width > 0) {
            o = st[j].fixed_obj;
            st[j].fixed_obj = NULL;
        } else {
            if (_PyBytes_Resize(&st[j].data_obj, st[j].used) < 0) {
                Py_DECREF(outs);
                goto done;
            }
            o = PyTuple_Pack(2, st[j].offsets_obj, st[j].data_obj);
            if (o == NULL) {
                Py_DECREF(outs);
                goto done;
            }
        }
        PyList_SET_ITEM(outs, j, o);
    }
    result = PyTuple_Pack(2, good_obj, outs);
    Py_DECREF(outs);
done:
    if (st != NULL) {
        for (Py_ssize_t j = 0; j < nsteps; j++) {
            Py_XDECREF(st[j].fixed_obj);
            Py_XDECREF(st[j].offsets_obj);
            Py_XDECREF(st[j].data_obj);
        }
        PyMem_Free(st);
    }
    Py_XDECREF(good_obj);
    PyBuffer_Release(&b);
    if (vo.obj) PyBuffer_Release(&vo);
    if (ve.obj) PyBuffer_Release(&ve);
    if (vs.obj) PyBuffer_Release(&vs);
    return result;
}

static PyObject *starts(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    const uint8_t *buf = b.buf;
    const Py_ssize_t n = b.len;
    /* at most one record per 16 bytes */
    PyObject *out = PyBytes_FromStringAndSize(NULL, (n / REC_HEADER + 1) * 8);
    if (out == NULL) {
        PyBuffer_Release(&b);
        return NULL;
    }
    int64_t *w = (int64_t *)PyBytes_AS_STRING(out);
    Py_ssize_t k = 0, off = 0;
    while (off + REC_HEADER <= n) {
        Py_ssize_t size = ((Py_ssize_t)buf[off + 2] | (Py_ssize_t)buf[off + 3] << 8) &
                          REC_SIZE_MASK;
        if (size < REC_HEADER)
            break;
        w[k++] = off >> 3;
        off += size;
    }
    PyBuffer_Release(&b);
    if (_PyBytes_Resize(&out, k * 8) < 0)
        return NULL;
    PyObject *r = Py_BuildValue("(NO)", out, off == n ? Py_True : Py_False);
    return r;
}

static PyMethodDef methods[] = {
    {"starts", starts, METH_O, "The records of a chunk, by their size chain (see gather.c)."},
    {"fields", fields, METH_VARARGS, "Gather one event type's fields (see gather.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_gather", "The columnar decoder's field gather, in C.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__gather(void) { return PyModule_Create(&module); }
