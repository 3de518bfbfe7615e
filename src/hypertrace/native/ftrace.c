/* The collector's decoder of ftrace ring-buffer pages, in C: one page of a CPU's
 * trace_pipe_raw straight into hypertrace records (header + payload as the record codec
 * lays out the event's declaration), built as the optional hypertrace.host._ftrace.
 *
 * host/kernel.py's transcode_py (over host/ftrace.py's PageDecoder) is the reference:
 * for any bytes, this function returns what it returns, or raises ValueError where it
 * raises FtraceError (tests/test_ftrace_native.py compares the two on kernel pages and on
 * hypothesis-made hostile ones). A page may come from a guest: every length, offset and
 * count is checked against the page and the plan before it is read.
 *
 * transcode(page, layout, plans, seq, last_ts, str_max, max_ts) ->
 *     (records, events, seq, first_ts, last_ts, tail, clamped, missed, unknown, bad, counts)
 *   layout:  (ts_off, commit_off, commit_size, data_off, data_size)
 *   plans:   {ftrace id: (record id, steps, fixed size)}; steps: 12 bytes per field in record order,
 *            kind u8 (0 int, 1 fixed string, 2 fixed bytes, 3 dynamic string, 4 dynamic
 *            bytes), rel u8 (__rel_loc), 2 unused, offset u32, size u32 (little-endian)
 *   last_ts: -1 for none; a time going back is clamped to it (counted)
 *   missed:  None when the page says events were lost before it but not how many
 *   counts:  {record id: events}
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_PAGE (1u << 20)
#define TS_SHIFT 27
#define T_PADDING 29
#define T_EXTEND 30
#define T_STAMP 31
#define MISSED_EVENTS (1u << 31)
#define MISSED_STORED (1u << 30)
#define COMMIT_MASK ((1u << 27) - 1)
#define TS_MSB (0xF8ull << 56)
#define REC_HDR 16
#define REC_ALIGN 8
#define REC_TRUNC 1
#define MAX_REC 65528u

/* time sums saturate (the Python reference's do too): a hostile page cannot wrap them */
static uint64_t sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

static uint64_t rd(const uint8_t *p, unsigned n) {
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

typedef struct {
    uint8_t kind, rel;
    uint32_t off, size;
} step_t;

typedef struct {
    long id;                 /* ftrace id */
    unsigned rec_id;
    unsigned long min_size;  /* the format's fixed part: a shorter event is bad */
    Py_ssize_t n;
    step_t *steps;
    Py_ssize_t count;
} plan_t;

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

static int grow(buf_t *b, size_t need) {
    if (b->len + need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + need)
        cap *= 2;
    uint8_t *q = PyMem_Realloc(b->p, cap);
    if (!q) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = q;
    b->cap = cap;
    return 0;
}

static PyObject *fail(const char *msg) {
    PyErr_SetString(PyExc_ValueError, msg);
    return NULL;
}

/* Appends one event's record; returns 1 recorded, 0 bad (nothing appended), -1 error. */
static int event(buf_t *out, const plan_t *pl, const uint8_t *rec, size_t n, uint64_t ts,
                 uint32_t seq, size_t str_max, size_t *tail) {
    /* first pass: check every field and size the payload */
    size_t pay = 0;
    if (pl->min_size > n)
        return 0;
    for (Py_ssize_t i = 0; i < pl->n; i++) {
        const step_t *s = &pl->steps[i];
        if ((uint64_t)s->off + s->size > n)
            return 0;
        if (s->kind == 0) {
            pay += s->size;
        } else if (s->kind == 1 || s->kind == 2) {
            size_t l = s->size;
            if (s->kind == 1) {
                const uint8_t *z = memchr(rec + s->off, 0, s->size);
                if (z)
                    l = (size_t)(z - (rec + s->off));
            }
            pay += 2 + (l > str_max ? str_max : l);
        } else {
            uint32_t loc = (uint32_t)rd(rec + s->off, 4);
            size_t start = loc & 0xFFFF, l = loc >> 16;
            if (s->rel)
                start += (size_t)s->off + s->size;
            if (start + l > n)
                return 0;
            if (s->kind == 3) {
                const uint8_t *z = memchr(rec + start, 0, l);
                if (z)
                    l = (size_t)(z - (rec + start));
            }
            pay += 2 + (l > str_max ? str_max : l);
        }
    }
    size_t size = (REC_HDR + pay + REC_ALIGN - 1) & ~(size_t)(REC_ALIGN - 1);
    if (size > MAX_REC)
        return 0;
    if (grow(out, size) < 0)
        return -1;
    uint8_t *o = out->p + out->len, *w = o + REC_HDR;
    int trunc = 0;
    for (Py_ssize_t i = 0; i < pl->n; i++) {
        const step_t *s = &pl->steps[i];
        if (s->kind == 0) {
            memcpy(w, rec + s->off, s->size);
            w += s->size;
            continue;
        }
        const uint8_t *src;
        size_t l;
        if (s->kind == 1 || s->kind == 2) {
            src = rec + s->off;
            l = s->size;
            if (s->kind == 1) {
                const uint8_t *z = memchr(src, 0, l);
                if (z)
                    l = (size_t)(z - src);
            }
        } else {
            uint32_t loc = (uint32_t)rd(rec + s->off, 4);
            size_t start = loc & 0xFFFF;
            l = loc >> 16;
            if (s->rel)
                start += (size_t)s->off + s->size;
            src = rec + start;
            if (s->kind == 3) {
                const uint8_t *z = memchr(src, 0, l);
                if (z)
                    l = (size_t)(z - src);
            }
        }
        if (l > str_max) {
            l = str_max;
            trunc = 1;
        }
        w[0] = (uint8_t)l;
        w[1] = (uint8_t)(l >> 8);
        memcpy(w + 2, src, l);
        w += 2 + l;
    }
    uint32_t sf = (uint32_t)size | (trunc ? REC_TRUNC : 0);
    o[0] = (uint8_t)pl->rec_id;
    o[1] = (uint8_t)(pl->rec_id >> 8);
    o[2] = (uint8_t)sf;
    o[3] = (uint8_t)(sf >> 8);
    for (int k = 0; k < 4; k++)
        o[4 + k] = (uint8_t)(seq >> (8 * k));
    for (int k = 0; k < 8; k++)
        o[8 + k] = (uint8_t)(ts >> (8 * k));
    *tail = size - REC_HDR - pay;
    memset(w, 0, *tail);
    out->len += size;
    return 1;
}

static int load_plans(PyObject *plans, plan_t **out, Py_ssize_t *np) {
    if (!PyDict_Check(plans)) {
        PyErr_SetString(PyExc_TypeError, "plans must be a dict");
        return -1;
    }
    Py_ssize_t n = PyDict_Size(plans), pos = 0, i = 0;
    plan_t *p = PyMem_Calloc(n ? (size_t)n : 1, sizeof(plan_t));
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject *k, *v;
    while (PyDict_Next(plans, &pos, &k, &v)) {
        unsigned long rid;
        Py_buffer sb;
        PyObject *steps;
        p[i].id = PyLong_AsLong(k);
        if (p[i].id == -1 && PyErr_Occurred())
            goto bad;
        if (!PyArg_ParseTuple(v, "kOk", &rid, &steps, &p[i].min_size))
            goto bad;
        if (PyObject_GetBuffer(steps, &sb, PyBUF_SIMPLE) < 0)
            goto bad;
        if (sb.len % 12 || rid > 0xFFFF) {
            PyBuffer_Release(&sb);
            PyErr_SetString(PyExc_ValueError, "bad plan");
            goto bad;
        }
        p[i].rec_id = (unsigned)rid;
        p[i].n = sb.len / 12;
        p[i].steps = PyMem_Calloc(p[i].n ? (size_t)p[i].n : 1, sizeof(step_t));
        if (!p[i].steps) {
            PyBuffer_Release(&sb);
            PyErr_NoMemory();
            goto bad;
        }
        const uint8_t *b = sb.buf;
        for (Py_ssize_t j = 0; j < p[i].n; j++) {
            step_t *s = &p[i].steps[j];
            s->kind = b[12 * j];
            s->rel = b[12 * j + 1];
            s->off = (uint32_t)rd(b + 12 * j + 4, 4);
            s->size = (uint32_t)rd(b + 12 * j + 8, 4);
            if (s->kind > 4 || s->off > MAX_PAGE || s->size > MAX_PAGE ||
                (s->kind == 0 && (s->size == 0 || s->size > 8)) ||
                (s->kind >= 3 && s->size != 4)) {
                PyBuffer_Release(&sb);
                PyErr_SetString(PyExc_ValueError, "bad plan step");
                goto bad;
            }
        }
        PyBuffer_Release(&sb);
        i++;
    }
    *out = p;
    *np = n;
    return 0;
bad:
    for (Py_ssize_t j = 0; j <= i && j < n; j++)
        PyMem_Free(p[j].steps);
    PyMem_Free(p);
    return -1;
}

static PyObject *transcode(PyObject *self, PyObject *args) {
    Py_buffer pg;
    unsigned long ts_off, commit_off, commit_size, data_off, data_size;
    PyObject *plans;
    unsigned long long seq0;
    long long last_in;
    Py_ssize_t str_max;
    unsigned long long max_ts;
    if (!PyArg_ParseTuple(args, "y*(kkkkk)OKLnK", &pg, &ts_off, &commit_off, &commit_size,
                          &data_off, &data_size, &plans, &seq0, &last_in, &str_max, &max_ts))
        return NULL;
    PyObject *res = NULL;
    plan_t *pl = NULL;
    Py_ssize_t npl = 0;
    buf_t out = {0};
    const uint8_t *page = pg.buf;
    size_t len = (size_t)pg.len;
    if (load_plans(plans, &pl, &npl) < 0)
        goto done;
    if (len < data_off || len > MAX_PAGE || ts_off + 8 > len || commit_size > 8 ||
        commit_off + commit_size > len || str_max < 0) {
        char m[80];
        snprintf(m, sizeof m, "ftrace page of %zu bytes", len);
        fail(m);
        goto done;
    }
    uint64_t page_ts = rd(page + ts_off, 8), ts = page_ts;
    uint64_t commit = rd(page + commit_off, (unsigned)commit_size);
    size_t size = commit & COMMIT_MASK, end = data_off + size;
    if (size > data_size || end > len) {
        char m[80];
        snprintf(m, sizeof m, "ftrace page: commit %zu past the page", size);
        fail(m);
        goto done;
    }
    unsigned long long missed = 0;
    int missed_unknown = 0;
    if (commit & MISSED_EVENTS) {
        missed_unknown = 1;
        if ((commit & MISSED_STORED) && end + 8 <= len) {
            missed = rd(page + end, 8);
            missed_unknown = 0;
        }
    }
    int have_last = last_in >= 0;
    uint64_t last = have_last ? (uint64_t)last_in : 0, first = 0;
    int have_first = 0;
    uint32_t seq = (uint32_t)seq0;
    unsigned long long events = 0, clamped = 0, unknown = 0, badn = 0;
    size_t tail = 0, off = data_off;
    while (off + 4 <= end) {
        uint32_t h = (uint32_t)rd(page + off, 4), tl = h & 0x1F;
        uint64_t delta = h >> 5;
        size_t a, b, nxt;
        if (tl == T_PADDING) {
            if (delta == 0)
                break;
            if (off + 8 > end) {
                fail("ftrace page: padding past the commit");
                goto done;
            }
            size_t ln = (size_t)rd(page + off + 4, 4);
            if (ln < 4 || off + 4 + ln > end) {
                char m[80];
                snprintf(m, sizeof m, "ftrace page: padding of %zu bytes past the commit", ln);
                fail(m);
                goto done;
            }
            ts = sat(ts, delta);
            off += 4 + ln;
            continue;
        }
        if (tl == T_EXTEND || tl == T_STAMP) {
            if (off + 8 > end) {
                fail("ftrace page: time stamp past the commit");
                goto done;
            }
            uint64_t v = delta | rd(page + off + 4, 4) << TS_SHIFT;
            if (tl == T_STAMP) {
                if (page_ts & TS_MSB) {
                    v |= page_ts & TS_MSB;
                    if (v < ts)
                        v = sat(v, 1ull << 59);
                }
                ts = v;
            } else {
                ts = sat(ts, v);
            }
            off += 8;
            continue;
        }
        if (tl == 0) {
            if (off + 8 > end) {
                fail("ftrace page: event length past the commit");
                goto done;
            }
            size_t ln = (size_t)rd(page + off + 4, 4);
            if (ln < 4) {
                char m[80];
                snprintf(m, sizeof m, "ftrace page: event of length %zu", ln);
                fail(m);
                goto done;
            }
            a = off + 8;
            b = off + 4 + ln;
            nxt = off + 4 + ((ln + 3) & ~(size_t)3);
        } else {
            a = off + 4;
            b = off + 4 + 4 * (size_t)tl;
            nxt = b;
        }
        if (b > end) {
            fail("ftrace page: event past the commit");
            goto done;
        }
        ts = sat(ts, delta);
        off = nxt;
        if (b - a < 2) {
            badn++;
            continue;
        }
        long eid = page[a] | page[a + 1] << 8;
        plan_t *p = NULL;
        for (Py_ssize_t i = 0; i < npl; i++)
            if (pl[i].id == eid) {
                p = &pl[i];
                break;
            }
        if (!p) {
            unknown++;
            continue;
        }
        uint64_t t = ts;
        if (t > max_ts) {
            badn++;                 /* no reader takes a time past the ABI's bound */
            continue;
        }
        int clamp = have_last && t < last;
        if (clamp)
            t = last;
        int r = event(&out, p, page + a, b - a, t, seq, (size_t)str_max, &tail);
        if (r < 0)
            goto done;
        if (r == 0) {
            badn++;
            continue;
        }
        clamped += clamp;
        seq++;
        events++;
        p->count++;
        if (!have_first) {
            first = t;
            have_first = 1;
        }
        last = t;
        have_last = 1;
    }
    PyObject *counts = PyDict_New();
    if (!counts)
        goto done;
    for (Py_ssize_t i = 0; i < npl; i++) {
        if (!pl[i].count)
            continue;
        PyObject *k = PyLong_FromUnsignedLong(pl[i].rec_id);
        PyObject *v = PyLong_FromSsize_t(pl[i].count);
        if (!k || !v || PyDict_SetItem(counts, k, v) < 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(counts);
            goto done;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    PyObject *mo = missed_unknown ? Py_NewRef(Py_None) : PyLong_FromUnsignedLongLong(missed);
    if (!mo) {
        Py_DECREF(counts);
        goto done;
    }
    res = Py_BuildValue("(y#KkLLnKNKKN)", out.p ? (const char *)out.p : "",
                        (Py_ssize_t)out.len, events, (unsigned long)seq,
                        have_first ? (long long)first : -1LL,
                        have_last ? (long long)last : -1LL, (Py_ssize_t)tail, clamped,
                        mo, unknown, badn, counts);
done:
    for (Py_ssize_t i = 0; i < npl; i++)
        PyMem_Free(pl[i].steps);
    PyMem_Free(pl);
    PyMem_Free(out.p);
    PyBuffer_Release(&pg);
    return res;
}

static PyMethodDef methods[] = {
    {"transcode", transcode, METH_VARARGS, "One ftrace page into hypertrace records."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_ftrace", NULL, -1, methods,
                                 NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ftrace(void) { return PyModule_Create(&mod); }
