/* The collector's validation of one piece of ring data, in C (hypertrace.host._walk).
 *
 * Built as an optional extension: host/walk.py falls back to its numpy walk, which is
 * the reference this file must agree with exactly (tests/test_native_walk.py compares
 * them).  The numpy walk needs pointer doubling to find record boundaries, because a
 * chain cannot be followed with array operations; here it is one linear pass that
 * follows the chain and checks every record as it goes, which is what makes the
 * collector's drain cheaper than the producers' writes.
 *
 * The piece is a private copy of committed ring bytes, but its content is whatever
 * the guest wrote: every size, id, length, sequence number and timestamp is checked
 * before use, and nothing is read outside the piece.  Records (docs/abi.md §4):
 * u16 event id, u16 size | flags, u32 seq, u64 timestamp, payload; all little-endian,
 * read byte by byte (compilers turn that into plain loads where the host is
 * little-endian).
 *
 * walk(buf, sizes, layout, seq, last_ts[, strict]) returns None for an event id not
 * loaded yet unless `strict` (the caller refreshes its table and walks again, strict:
 * such a record is then malformed), else (runs, malformed, clamped, next_seq,
 * last_ts, per_event) with
 * runs as (start, end, count, gap_before, first_ts, last_ts, last_rec) tuples and
 * per_event a dict {event id: records}, or None when no record was accepted.
 * Clamped timestamps are written into buf, and only when the result is not None.
 * A record whose seq goes backwards is malformed and the next one is expected to
 * carry the same seq, as in the reader's scalar walk: the numpy walk leaves that case
 * to the scalar walk (it cannot follow an expectation that depends on what was kept),
 * here it costs nothing more, so that a producer writing such records cannot slow
 * the drain of the others down to the scalar walk's pace.
 *
 * sizes: the EventTable's int32 table of 65536 entries (-2 beyond max_events, -1 not
 * loaded, 0 variable size, else the fixed record size).  layout: little-endian int32
 * words built by walk.var_layout(): [L, index of event 0 .. L-1, steps...], an index
 * being the word where the event's steps start (-1: no codec); a step is a fixed run
 * of n >= 0 bytes, STEP_VAR (u16 length + bytes) or STEP_END.
 *
 * Everything runs with the GIL held (the per-event counters are static for that).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PAD_ID 0xFFFFu
#define REC_HEADER 16u
#define MAX_TS (UINT64_C(1) << 62)
#define STR_MAX 1024u
#define N_IDS 65536
#define STEP_VAR (-1)
#define STEP_END (-2)

static inline uint64_t le64(const uint8_t *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
           (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
           (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

static inline void put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline int32_t le32s(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    int32_t s;
    memcpy(&s, &u, sizeof s);
    return s;
}

/* A growable array that starts in storage of the caller's (a stack array): the
 * common piece has one or two runs and no clamp, so no allocation at all. */
typedef struct {
    void *p;
    size_t n, cap, elem;
    int heap;
} vec_t;

static void *vec_push(vec_t *v) {
    if (v->n == v->cap) {
        size_t cap = v->cap * 2;
        void *q = v->heap ? realloc(v->p, cap * v->elem) : malloc(cap * v->elem);
        if (q == NULL)
            return NULL;
        if (!v->heap)
            memcpy(q, v->p, v->n * v->elem);
        v->p = q;
        v->cap = cap;
        v->heap = 1;
    }
    return (char *)v->p + v->elem * v->n++;
}

static void vec_free(vec_t *v) {
    if (v->heap)
        free(v->p);
}

typedef struct {
    uint64_t start, end, count, gap, first_ts, last_ts, last_rec;
} run_t;

typedef struct {
    uint64_t off;    /* byte offset of the timestamp to rewrite */
    uint64_t ts;
} clamp_t;

/* Per-event counts of the piece being walked, and the ids touched, so that only those
 * are read out and reset: zeroing 65536 counters per piece would cost more than a
 * small piece's walk. */
static uint64_t g_count[N_IDS];
static uint16_t g_touched[N_IDS];
static size_t g_ntouched;

static void counts_reset(void) {
    for (size_t i = 0; i < g_ntouched; i++)
        g_count[g_touched[i]] = 0;
    g_ntouched = 0;
}

typedef struct {
    const uint8_t *w;     /* the layout's words */
    size_t nw;
    size_t nevents;       /* L: events with an index word */
} layout_t;

/* Whether a record of a variable-size event has every string and bytes length inside
 * the record and a payload that, rounded up to 8, is the record's size (as the numpy
 * walk's _var_ok and Codec.decode check it).  start + size is within the piece. */
static int var_ok(const uint8_t *b, size_t start, size_t size, unsigned eid,
                  const layout_t *lay) {
    if (eid >= lay->nevents)
        return 0;
    int32_t k = le32s(lay->w + 4 * (1 + (size_t)eid));
    if (k < 0)
        return 0;                          /* no codec for this id */
    size_t end = start + size, off = start + REC_HEADER;
    for (size_t i = (size_t)k; i < lay->nw; i++) {
        int32_t v = le32s(lay->w + 4 * i);
        if (v == STEP_END)
            return ((off - start + 7) & ~(size_t)7) == size;
        if (v >= 0) {
            off += (size_t)v;              /* a fixed run past `end` fails at the end */
            continue;
        }
        if (v != STEP_VAR || off + 2 > end)
            return 0;
        size_t ln = (size_t)b[off] | (size_t)b[off + 1] << 8;
        if (ln > STR_MAX)
            return 0;
        off += 2 + ln;
        if (off > end)
            return 0;
    }
    return 0;                              /* steps without an end: a bad layout */
}

enum { WALK_OK = 0, WALK_NONE = 1, WALK_NOMEM = -1 };

typedef struct {
    uint64_t malformed, clamped, delta_seq, last_ts, accepted;
} totals_t;

/* The walk itself: follows the chain of records from byte 0, checks each one,
 * collects runs of consecutive accepted records and the clamps to apply. */
static int walk_piece(const uint8_t *b, size_t nw, const int32_t *sizes,
                      const layout_t *lay, uint32_t seq_lo, uint64_t last_ts, int strict,
                      vec_t *runs, vec_t *clamps, totals_t *t) {
    uint64_t malformed = 0, clamped = 0, delta = 0, accepted = 0, npad = 0;
    uint64_t cur = last_ts;
    uint32_t exp = seq_lo;
    int last_pad = 0, have = 0;
    run_t run = {0, 0, 0, 0, 0, 0, 0};
    size_t p = 0;
    while (p < nw) {
        const uint8_t *r = b + 8 * p;
        uint64_t h = le64(r);
        unsigned eid = (unsigned)(h & 0xFFFF);
        uint64_t sz = (h >> 16) & 0xFFF8, szw = sz >> 3;
        /* a size that cannot be, or one past the piece: the rest of it is lost */
        if (szw < (eid == PAD_ID ? 1u : 2u) || szw > nw - p) {
            malformed++;
            break;
        }
        if (eid == PAD_ID) {
            npad++;                       /* only one that ends the piece is valid */
            last_pad = 1;
            p += szw;
            continue;
        }
        last_pad = 0;
        int32_t want = sizes[eid];
        if (want == -1 && !strict)
            return WALK_NONE;             /* the table must be refreshed first */
        uint64_t ts = le64(r + 8);
        int ok;
        if (ts > MAX_TS)
            ok = 0;
        else if (want > 0)
            ok = (uint64_t)want == sz;
        else
            ok = want == 0 && var_ok(b, 8 * p, sz, eid, lay);
        if (!ok) {
            malformed++;
            p += szw;
            continue;
        }
        uint32_t gap = (uint32_t)(h >> 32) - exp;
        if (gap >= 0x80000000u) {
            malformed++;                  /* seq went backwards: dropped, exp kept */
            p += szw;
            continue;
        }
        exp += gap + 1;
        delta += (uint64_t)gap + 1;
        if (ts < cur) {
            clamp_t *c = vec_push(clamps);
            if (c == NULL)
                return WALK_NOMEM;
            c->off = 8 * p + 8;
            c->ts = cur;
            clamped++;
        } else {
            cur = ts;
        }
        uint64_t bs = 8 * (uint64_t)p;
        if (have && bs == run.end && gap == 0) {
            run.end = bs + sz;
            run.count++;
            run.last_ts = cur;
            run.last_rec = bs;
        } else {
            if (have) {
                run_t *q = vec_push(runs);
                if (q == NULL)
                    return WALK_NOMEM;
                *q = run;
            }
            run = (run_t){bs, bs + sz, 1, gap, cur, cur, bs};
            have = 1;
        }
        uint64_t k = 1;
        p += szw;
        if (want > 0) {
            /* A hot loop emitting one event writes runs of records with the same
             * header but for seq and ts.  Each one that follows with the next seq and
             * a timestamp needing no clamp would take the general path above to the
             * same outcome: take it in this tighter loop instead. */
            uint32_t lo = (uint32_t)h;
            while (szw <= nw - p) {
                const uint8_t *q = b + 8 * p;
                uint64_t h2 = le64(q);
                if ((uint32_t)h2 != lo || (uint32_t)(h2 >> 32) != exp)
                    break;
                uint64_t t2 = le64(q + 8);
                if (t2 < cur || t2 > MAX_TS)
                    break;
                cur = t2;
                exp++;
                k++;
                p += szw;
            }
            if (k > 1) {
                run.end = 8 * (uint64_t)p;
                run.count += k - 1;
                run.last_ts = cur;
                run.last_rec = 8 * (uint64_t)(p - szw);
                delta += k - 1;
            }
        }
        if (g_count[eid] == 0)
            g_touched[g_ntouched++] = (uint16_t)eid;
        g_count[eid] += k;
        accepted += k;
    }
    if (have) {
        run_t *q = vec_push(runs);
        if (q == NULL)
            return WALK_NOMEM;
        *q = run;
    }
    t->malformed = malformed + npad - (last_pad ? 1 : 0);
    t->clamped = clamped;
    t->delta_seq = delta;
    t->last_ts = cur;
    t->accepted = accepted;
    return WALK_OK;
}

static int native_int32(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (v->itemsize != 4)
        return 0;
    if (!strcmp(f, "i") || !strcmp(f, "@i") || !strcmp(f, "=i"))
        return 1;
    const uint16_t one = 1;
    int little = *(const uint8_t *)&one == 1;
    return !strcmp(f, little ? "<i" : ">i");
}

static PyObject *build_result(const vec_t *runs, const totals_t *t, PyObject *seq,
                              PyObject *last_ts) {
    PyObject *lst = PyList_New((Py_ssize_t)runs->n);
    if (lst == NULL)
        return NULL;
    const run_t *rv = runs->p;
    for (size_t i = 0; i < runs->n; i++) {
        const run_t *r = &rv[i];
        PyObject *tup = Py_BuildValue("(KKKKKKK)", (unsigned long long)r->start,
                                      (unsigned long long)r->end,
                                      (unsigned long long)r->count,
                                      (unsigned long long)r->gap,
                                      (unsigned long long)r->first_ts,
                                      (unsigned long long)r->last_ts,
                                      (unsigned long long)r->last_rec);
        if (tup == NULL) {
            Py_DECREF(lst);
            return NULL;
        }
        PyList_SET_ITEM(lst, (Py_ssize_t)i, tup);
    }
    PyObject *per = Py_None, *nseq = seq, *lts = last_ts;
    Py_INCREF(per);
    Py_INCREF(nseq);
    Py_INCREF(lts);
    if (t->accepted) {
        Py_DECREF(per);
        Py_DECREF(lts);
        lts = PyLong_FromUnsignedLongLong(t->last_ts);
        per = PyDict_New();
        if (per == NULL || lts == NULL)
            goto fail;
        for (size_t i = 0; i < g_ntouched; i++) {
            PyObject *k = PyLong_FromLong(g_touched[i]);
            PyObject *v = PyLong_FromUnsignedLongLong(g_count[g_touched[i]]);
            int rc = (k && v) ? PyDict_SetItem(per, k, v) : -1;
            Py_XDECREF(k);
            Py_XDECREF(v);
            if (rc < 0)
                goto fail;
        }
    }
    if (t->delta_seq) {
        /* seq is the collector's 64-bit count, kept as a Python int: add in Python */
        PyObject *d = PyLong_FromUnsignedLongLong(t->delta_seq);
        if (d == NULL)
            goto fail;
        Py_DECREF(nseq);
        nseq = PyNumber_Add(seq, d);
        Py_DECREF(d);
        if (nseq == NULL)
            goto fail;
    }
    PyObject *res = Py_BuildValue("(NKKNNN)", lst, (unsigned long long)t->malformed,
                                  (unsigned long long)t->clamped, nseq, lts, per);
    return res;
fail:
    Py_DECREF(lst);
    Py_XDECREF(per);
    Py_XDECREF(nseq);
    Py_XDECREF(lts);
    return NULL;
}

static PyObject *py_walk(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *bufo, *sizeso, *layo, *seqo, *lasto;
    int strict = 0;
    if (!PyArg_ParseTuple(args, "OOOOO|p:walk", &bufo, &sizeso, &layo, &seqo, &lasto,
                          &strict))
        return NULL;
    if (!PyLong_Check(seqo) || !PyLong_Check(lasto)) {
        PyErr_SetString(PyExc_TypeError, "walk: seq and last_ts must be ints");
        return NULL;
    }
    /* seq is only needed modulo 2^32 here (records hold its low 32 bits) */
    unsigned long long seq_full = PyLong_AsUnsignedLongLongMask(seqo);
    if (seq_full == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    unsigned long long last_ts = PyLong_AsUnsignedLongLong(lasto);
    if (last_ts == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;

    Py_buffer buf, sizes, lay;
    int writable = 1;
    if (PyObject_GetBuffer(bufo, &buf, PyBUF_WRITABLE) < 0) {
        /* a read-only piece can still be walked; only a clamp needs to write */
        PyErr_Clear();
        writable = 0;
        if (PyObject_GetBuffer(bufo, &buf, PyBUF_SIMPLE) < 0)
            return NULL;
    }
    if (PyObject_GetBuffer(sizeso, &sizes, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (!native_int32(&sizes) || sizes.len < (Py_ssize_t)(N_IDS * 4)) {
        PyErr_SetString(PyExc_ValueError, "walk: sizes must be 65536 native int32");
        PyBuffer_Release(&sizes);
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (PyObject_GetBuffer(layo, &lay, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&sizes);
        PyBuffer_Release(&buf);
        return NULL;
    }
    PyObject *res = NULL;
    size_t nbytes = (size_t)buf.len;
    layout_t layout = {lay.buf, (size_t)lay.len / 4, 0};
    if (layout.nw > 0) {
        int32_t l = le32s(layout.w);
        /* an index word per event, all inside the layout */
        if (l > 0 && (size_t)l < layout.nw)
            layout.nevents = (size_t)l;
    }
    run_t run_store[8];
    clamp_t clamp_store[8];
    vec_t runs = {run_store, 0, 8, sizeof(run_t), 0};
    vec_t clamps = {clamp_store, 0, 8, sizeof(clamp_t), 0};
    totals_t t = {0, 0, 0, last_ts, 0};
    int rc;
    if (nbytes % 8) {
        rc = WALK_NONE;                    /* never a ring piece: the scalar walk says why */
    } else {
        rc = walk_piece(buf.buf, nbytes / 8, sizes.buf, &layout, (uint32_t)seq_full,
                        last_ts, strict, &runs, &clamps, &t);
    }
    if (rc == WALK_NONE) {
        res = Py_None;
        Py_INCREF(res);
    } else if (rc == WALK_NOMEM) {
        PyErr_NoMemory();
    } else if (clamps.n && !writable) {
        PyErr_SetString(PyExc_ValueError, "walk: a timestamp to clamp in a read-only buffer");
    } else {
        const clamp_t *cv = clamps.p;
        for (size_t i = 0; i < clamps.n; i++)
            put_le64((uint8_t *)buf.buf + cv[i].off, cv[i].ts);
        res = build_result(&runs, &t, seqo, lasto);
    }
    counts_reset();
    vec_free(&runs);
    vec_free(&clamps);
    PyBuffer_Release(&lay);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&buf);
    return res;
}

static PyMethodDef methods[] = {
    {"walk", py_walk, METH_VARARGS,
     "walk(buf, sizes, layout, seq, last_ts): validate one piece of ring data"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_walk",
    "hypertrace's optional C walk of ring data (source: hypertrace/native/walk.c)", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__walk(void) {
    return PyModule_Create(&module);
}
