/* The CPython accelerator: the enabled path of a Python tracepoint, in C.
 *
 * Built as hypertrace.guest._accel when a C compiler is present; optional (the pure
 * Python tracepoints of guest/tracepoint.py always work, HYPERTRACE_PURE=1 forces
 * them).  One mechanism, two speeds: a Tracepoint object holds the pure-Python
 * tracepoint generated for the same declaration and the same seven cells (_on, _id,
 * _clock, _tls, _claim, _mm, _cq).  Its vectorcall handles the common case itself:
 * positional arguments of exactly the declared types (int, float, bool, str, bytes)
 * that fit, the default clock (time.monotonic_ns, read here with clock_gettime) and
 * the channel's own commit words.  Anything else (keywords, int subclasses, a char
 * given as a str, NULL pointers as None, strings to cut, values out of range, a
 * custom clock, a commit hook) goes to the Python tracepoint, which converts it or
 * raises the error its documentation promises: the two cannot disagree on what
 * is recorded, because the slow one defines it and tests compare them.
 *
 * The record layout and the protocol are docs/abi.md §4-§5 (as guest/tracepoint.py
 * writes them): header u16 id, u16 size | truncated, u32 seq, u64 ts; fields packed
 * little-endian without alignment, a str/bytes as u16 length + bytes; size rounded
 * up to 8; the commit word stored last with release order.  The slow paths (no ring
 * yet, the ring end or the reader reached) call the Python RingWriter's methods.
 *
 * The calling thread's writer is cached in a C thread-local, valid while the
 * module's epoch is unchanged: Python bumps it (invalidate()) whenever any thread's
 * writer goes away (release, fork, a new channel), so the cache never points at a
 * freed writer.  Everything runs with the GIL held.
 */
#define _GNU_SOURCE             /* pthread_getattr_np: a thread's stack size */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define HT_TSC_IMPLEMENTATION
#include "tsc_clock.h"

/* Function tracing's frame-evaluation hook (PEP 523) reads the code object of a frame
   CPython 3.11 passes as its internal _PyInterpreterFrame: with the internal header,
   where it is installed; elsewhere the profile function is used. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && defined(__has_include)
#if __has_include("internal/pycore_frame.h")
#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE
#define HT_EVAL_FRAME 1
#endif
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the record codec stores little-endian values with memcpy: a little-endian target only"
#endif

#define MAX_FIELDS 64           /* more than any declaration's slot text can hold */

/* ---- the writer's hot state: RingWriter (guest/ring.py) derives from this ---- */
typedef struct {
    PyObject_HEAD
    long long pos, lim, delta, seq, ci;
    int busy;                   /* an emit is between reading pos and its commit */
} Writer;

static PyMemberDef writer_members[] = {
    {"pos", T_LONGLONG, offsetof(Writer, pos), 0, "next write position (stream bytes)"},
    {"lim", T_LONGLONG, offsetof(Writer, lim), 0, "furthest position writable without a check"},
    {"delta", T_LONGLONG, offsetof(Writer, delta), 0, "mapping offset of position p is p + delta"},
    {"seq", T_LONGLONG, offsetof(Writer, seq), 0, "next record's sequence number"},
    {"ci", T_LONGLONG, offsetof(Writer, ci), 0, "index of the ring's commit word (8-byte words)"},
    {"busy", T_INT, offsetof(Writer, busy), 0, "an emit is in progress on this writer"},
    {NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hypertrace.guest._accel.WriterBase",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The fields of a ring writer that the C tracepoint reads and writes.",
    .tp_members = writer_members,
    .tp_new = PyType_GenericNew,
};

/* ---- the TSC clock (tsc_clock.h): CLOCK_MONOTONIC from the time-stamp counter,
   where it can stand in for it; the default clock of an accelerated process ---- */
static ht_tsc_clock g_tsc;

static inline uint64_t tsc_now(void) { return ht_tsc_now(&g_tsc); }
static inline int64_t mono_ns(void) { return ht_mono_ns(); }

static PyObject *tsc_ns(PyObject *mod, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(tsc_now());
}

static PyObject *tsc_info(PyObject *mod, PyObject *unused) {
    ht_tsc_line l;
    ht__tsc_read(&g_tsc, &l);
    return Py_BuildValue("{s:O,s:d,s:d,s:K,s:K}", "on", g_tsc.on ? Py_True : Py_False,
                         "max_error_ns", g_tsc.max_err_ns, "ns_per_tick", l.klong,
                         "updates", g_tsc.updates, "skipped", g_tsc.skipped);
}

/* ---- per-thread writer cache ---- */
static uint64_t g_epoch = 1;
static _Thread_local __attribute__((tls_model("initial-exec"))) struct {
    uint64_t epoch;
    PyObject *tls;              /* borrowed: compared only */
    Writer *w;                  /* borrowed: alive while the epoch holds (see above) */
} t_cache;

static PyObject *g_monotonic_ns;    /* time.monotonic_ns: the clock read in C */
static PyObject *g_tsc_ns;          /* _accel.tsc_ns: the same, read from the TSC */
static PyObject *g_str_w;           /* "w" */
static PyObject *g_str_make_room;   /* "make_room" */

/* ---- the tracepoint ---- */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *dict;
    PyObject *weaklist;         /* weak references work as they do to a function */
    PyObject *py;               /* the pure-Python tracepoint: defines every other case */
    PyObject *clock, *tls, *claim, *mm, *cq;
    Py_buffer buf;              /* the region (from _mm), held while bound */
    int have_buf, on, cq_ok, clock_mono, clock_tsc;
    unsigned id;
    int nfields, has_var;
    long long fixed;            /* header + fixed fields + 2 per str/bytes */
    long long str_max, rec_max;
    char codes[MAX_FIELDS];     /* struct codes; 's' str, 'y' bytes */
} Tracepoint;

/* emits done here and calls handed to the Python tracepoint (tests, benchmarks) */
static unsigned long long g_fast, g_slow;

/* A forked child, until guest/__init__.py's at-fork hook has forgotten the parent's
   rings (fork_done): Python at-fork hooks registered before it (random's) run first,
   and a record of theirs would go into a ring the parent still writes. The C hook runs
   inside fork() itself, before any Python code: records are dropped and counted, and
   the count reaches the child's loss counter. Function tracing declares its code
   objects again in each process (g_fork_gen). */
static int g_fork_pending;
static unsigned long long g_fork_dropped;
static unsigned g_fork_gen;
static uint64_t g_prof_gen;     /* function tracing's start (and fork) generation */

static void atfork_child(void) {
    g_epoch++;
    g_fork_pending = 1;
    g_fork_dropped = 0;
    g_fork_gen++;
    g_prof_gen++;               /* a thread's call depth starts again */
}

static PyObject *fork_done(PyObject *mod, PyObject *unused) {
    unsigned long long n = g_fork_dropped;
    g_fork_pending = 0;
    g_fork_dropped = 0;
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *fallback(Tracepoint *self, PyObject *const *args, size_t nargsf,
                          PyObject *kwnames) {
    g_slow++;
    if (g_fork_pending) {
        g_fork_dropped++;
        Py_RETURN_NONE;
    }
    if (self->py == NULL) {         /* made by __new__ alone: never initialised */
        PyErr_SetString(PyExc_TypeError, "hypertrace: an uninitialised tracepoint");
        return NULL;
    }
    return PyObject_Vectorcall(self->py, args, nargsf, kwnames);
}

typedef union {
    long long i;
    unsigned long long u;
    double d;
    float f;
    struct { const char *p; Py_ssize_t n; } s;
} Value;

/* An int of one digit (|v| < 2**30, most arguments): its value without the general
   conversion's calls. */
static inline int small_int(PyObject *a, long long *v) {
#if PY_VERSION_HEX >= 0x030C0000
    if (!PyUnstable_Long_IsCompact((PyLongObject *)a))
        return 0;
    *v = (long long)PyUnstable_Long_CompactValue((PyLongObject *)a);
    return 1;
#else
    Py_ssize_t n = Py_SIZE(a);
    if (n < -1 || n > 1)
        return 0;
    *v = n * (long long)((PyLongObject *)a)->ob_digit[0];
    return 1;
#endif
}

/* A field's value if it takes the fast path: 1; 0 for the Python tracepoint. */
static int convert(char code, PyObject *a, Value *v) {
    int overflow = 0;
    switch (code) {
    case 'b': case 'B': case 'h': case 'H': case 'i': case 'I': case 'q':
        if (!PyLong_CheckExact(a))
            return 0;
        if (!small_int(a, &v->i)) {
            v->i = PyLong_AsLongLongAndOverflow(a, &overflow);
            if (overflow || (v->i == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                return 0;
            }
        }
        switch (code) {
        case 'b': return v->i >= -128 && v->i <= 127;
        case 'B': return v->i >= 0 && v->i <= 0xFF;
        case 'h': return v->i >= -32768 && v->i <= 32767;
        case 'H': return v->i >= 0 && v->i <= 0xFFFF;
        case 'i': return v->i >= INT32_MIN && v->i <= INT32_MAX;
        case 'I': return v->i >= 0 && v->i <= (long long)UINT32_MAX;
        default: return 1;
        }
    case 'Q':
        if (!PyLong_CheckExact(a))
            return 0;
        if (small_int(a, &v->i))
            return v->i >= 0;
        v->u = PyLong_AsUnsignedLongLong(a);
        if (v->u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        return 1;
    case '?':
        if (a == Py_True) { v->i = 1; return 1; }
        if (a == Py_False) { v->i = 0; return 1; }
        return 0;
    case 'd':
        if (!PyFloat_CheckExact(a))
            return 0;
        v->d = PyFloat_AS_DOUBLE(a);
        return 1;
    case 'f': {
        if (!PyFloat_CheckExact(a))
            return 0;
        double d = PyFloat_AS_DOUBLE(a);
        v->f = (float)d;
        return !(isinf(v->f) && !isinf(d));     /* struct's OverflowError: Python says */
    }
    case 's':
        if (!PyUnicode_Check(a))
            return 0;
        v->s.p = PyUnicode_AsUTF8AndSize(a, &v->s.n);
        if (v->s.p == NULL) {           /* lone surrogates: Python replaces them */
            PyErr_Clear();
            return 0;
        }
        return 1;
    case 'y':
        if (!PyBytes_CheckExact(a))
            return 0;
        v->s.p = PyBytes_AS_STRING(a);
        v->s.n = PyBytes_GET_SIZE(a);
        return 1;
    }
    return 0;
}

static Writer *writer(Tracepoint *self) {
    /* the calling thread's writer; NULL with no error: drop (the claim counted it);
       NULL with an error: raise it */
    if (g_fork_pending) {
        g_fork_dropped++;
        return NULL;
    }
    if (t_cache.epoch == g_epoch && t_cache.tls == self->tls && t_cache.w != NULL)
        return t_cache.w;
    PyObject *w = PyObject_GetAttr(self->tls, g_str_w);
    if (w == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return NULL;
        PyErr_Clear();
        w = PyObject_CallNoArgs(self->claim);
        if (w == NULL)
            return NULL;
        if (w == Py_None) {
            Py_DECREF(w);
            return NULL;
        }
    }
    if (!PyObject_TypeCheck(w, &WriterType)) {
        Py_DECREF(w);
        PyErr_SetString(PyExc_TypeError, "hypertrace: the thread's writer is not a RingWriter");
        return NULL;
    }
    /* the thread-local keeps it alive; a new writer can only follow an epoch bump,
       and the claim above may itself have bumped it */
    t_cache.epoch = g_epoch;
    t_cache.tls = self->tls;
    t_cache.w = (Writer *)w;
    Py_DECREF(w);
    return t_cache.w;
}

static inline void put(char *o, const void *p, size_t n) { memcpy(o, p, n); }

/* an emit from Python code that ran in the middle of another emit on this thread's
   writer (a signal handler, an argument's __index__, a __del__): its position is the
   outer record's, so it is dropped and counted (RingWriter.nested: a seq gap) */
static PyObject *nested(Writer *w) {
    PyObject *r = PyObject_CallMethod((PyObject *)w, "nested", NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject fallback_sentinel;
#define FALLBACK (&fallback_sentinel)
static PyObject *commit(Tracepoint *self, long long size, const uint8_t *stage,
                        const Value *vals);

static PyObject *tp_call(Tracepoint *self, PyObject *const *args, size_t nargsf,
                         PyObject *kwnames) {
    /* the arguments are bound first, as a Python function's are: a wrong call raises
       the same TypeError whether the event is enabled or not */
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != self->nfields)
        return fallback(self, args, nargsf, kwnames);
    if (!self->on)
        Py_RETURN_NONE;
    if (!self->have_buf || !self->cq_ok || !(self->clock_mono || self->clock_tsc))
        return fallback(self, args, nargsf, kwnames);
    Value vals[MAX_FIELDS];
    /* an event of fixed-size fields only (the common case): its payload is packed
       here while checked, then copied into the ring in one go */
    uint8_t stage[MAX_FIELDS * 8 + 8];
    long long var = 0;
    if (!self->has_var) {
        uint8_t *q = stage;
        memset(stage + ((self->fixed - 16) & ~7), 0, 8);    /* the last word's padding */
        for (int k = 0; k < self->nfields; k++) {
            Value v;
            if (!convert(self->codes[k], args[k], &v))
                return fallback(self, args, nargsf, kwnames);
            switch (self->codes[k]) {
            case 'b': case 'B': case '?': *q++ = (uint8_t)v.i; break;
            case 'h': case 'H': { uint16_t x = (uint16_t)v.i; memcpy(q, &x, 2); q += 2; break; }
            case 'i': case 'I': { uint32_t x = (uint32_t)v.i; memcpy(q, &x, 4); q += 4; break; }
            case 'f': memcpy(q, &v.f, 4); q += 4; break;
            default: memcpy(q, &v.u, 8); q += 8; break;             /* q Q d */
            }
        }
    } else {
        for (int k = 0; k < self->nfields; k++) {
            if (!convert(self->codes[k], args[k], &vals[k]))
                return fallback(self, args, nargsf, kwnames);
            if (self->codes[k] == 's' || self->codes[k] == 'y') {
                if (vals[k].s.n > self->str_max)
                    return fallback(self, args, nargsf, kwnames);   /* cut on a boundary */
                var += vals[k].s.n;
            }
        }
    }
    long long size = (self->fixed + var + 7) & -8;
    if (size > self->rec_max)
        return fallback(self, args, nargsf, kwnames);
    PyObject *r = commit(self, size, stage, vals);
    return r == FALLBACK ? fallback(self, args, nargsf, kwnames) : r;
}

/* Reserve, write and commit one record of `size` bytes: the payload from `stage`
   (fixed-size fields, already packed) or `vals`. FALLBACK: the Python tracepoint
   says what is wrong (the caller hands it the call). */
static PyObject *commit(Tracepoint *self, long long size, const uint8_t *stage,
                        const Value *vals) {
    /* the argument checks come first in the Python tracepoint too, but after the
       claim: a claim happens for a record that is then refused; the order only
       matters for a thread's first record, which the fallback handles the same */
    Writer *w = writer(self);
    if (w == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    if (w->busy)
        return nested(w);
    long long pos = w->pos, end = pos + size;
    if (end > w->lim) {
        /* make_room runs Python code (a signal handler may even disconnect): hold the
           writer as the Python tracepoint's local does, and look at the buffer after;
           an emit from that code finds the writer busy */
        PyObject *n = PyLong_FromLongLong(size);
        if (n == NULL)
            return NULL;
        Py_INCREF(w);
        w->busy = 1;
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)w, g_str_make_room, n);
        w->busy = 0;
        Py_DECREF(n);
        pos = r ? PyLong_AsLongLong(r) : -1;
        Py_XDECREF(r);
        int ok = r != NULL && !(pos == -1 && PyErr_Occurred());
        int alive = Py_REFCNT(w) > 1;
        Py_DECREF(w);
        if (!ok)
            return NULL;
        if (pos < 0)
            Py_RETURN_NONE;             /* dropped, counted by make_room */
        if (!alive || !self->have_buf)
            Py_RETURN_NONE;   /* released meanwhile (a signal handler disconnected):
                                 no ring to commit into, as for any emit after that */
        end = pos + size;
    }
    long long o = pos + w->delta;
    long long cw = w->ci * 8;
    if (o < 0 || o + size > (long long)self->buf.len || cw < 0
            || cw + 8 > (long long)self->buf.len)
        return FALLBACK;                /* the Python tracepoint says what is wrong */
    char *base = (char *)self->buf.buf;
    char *p = base + o;
    uint16_t h16 = (uint16_t)self->id;
    uint16_t sz = (uint16_t)size;
    uint32_t seq = (uint32_t)w->seq;
    uint64_t t = self->clock_tsc ? tsc_now() : (uint64_t)mono_ns();
    put(p + 4, &seq, 4);
    put(p + 8, &t, 8);
    char *q = p + 16;
    if (!self->has_var) {
        /* whole words, up to the record's end (its padding: zeros, set below) */
        for (long long i = 0; i < size - 16; i += 8)
            memcpy(q + i, stage + i, 8);
    } else for (int k = 0; k < self->nfields; k++) {
        const Value *v = &vals[k];
        switch (self->codes[k]) {
        case 'b': case 'B': case '?': { uint8_t x = (uint8_t)v->i; put(q, &x, 1); q += 1; break; }
        case 'h': case 'H': { uint16_t x = (uint16_t)v->i; put(q, &x, 2); q += 2; break; }
        case 'i': case 'I': { uint32_t x = (uint32_t)v->i; put(q, &x, 4); q += 4; break; }
        case 'q': case 'Q': put(q, &v->u, 8); q += 8; break;
        case 'f': put(q, &v->f, 4); q += 4; break;
        case 'd': put(q, &v->d, 8); q += 8; break;
        case 's': case 'y': {
            uint16_t n = (uint16_t)v->s.n;
            put(q, &n, 2);
            memcpy(q + 2, v->s.p, (size_t)v->s.n);
            q += 2 + v->s.n;
            break;
        }
        }
    }
    put(p, &h16, 2);
    put(p + 2, &sz, 2);
    w->pos = end;
    w->seq = w->seq + 1;
    /* the commit: every store above is visible before the new commit word (§5) */
    atomic_store_explicit((_Atomic uint64_t *)(void *)(base + cw), (uint64_t)end,
                          memory_order_release);
    g_fast++;
    Py_RETURN_NONE;
}

static size_t struct_size(const char *codes, Py_ssize_t n) {
    size_t size = 0;
    for (Py_ssize_t k = 0; k < n; k++)
        size += strchr("bB?", codes[k]) ? 1 : strchr("hH", codes[k]) ? 2
              : strchr("iIf", codes[k]) ? 4 : 8;
    return size;
}

static int tp_init(Tracepoint *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"py", "codes", "fixed", "str_max", "rec_max", NULL};
    PyObject *py;
    const char *codes;
    Py_ssize_t ncodes;
    long long fixed, str_max, rec_max;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os#LLL", names, &py, &codes, &ncodes,
                                     &fixed, &str_max, &rec_max))
        return -1;
    if (ncodes > MAX_FIELDS || !PyCallable_Check(py) || fixed < 16 || str_max < 0
            || str_max > 0xFFFF || rec_max > 0xFFF8) {
        PyErr_SetString(PyExc_ValueError, "hypertrace: tracepoint layout out of range");
        return -1;
    }
    for (Py_ssize_t k = 0; k < ncodes; k++)
        if (!strchr("bBhHiIqQ?fdsy", codes[k]) || codes[k] == 0) {
            PyErr_SetString(PyExc_ValueError, "hypertrace: unknown field code");
            return -1;
        }
    Py_INCREF(py);
    Py_XSETREF(self->py, py);
    memcpy(self->codes, codes, (size_t)ncodes);
    self->nfields = (int)ncodes;
    self->has_var = memchr(codes, 's', (size_t)ncodes) || memchr(codes, 'y', (size_t)ncodes);
    if (!self->has_var && fixed != 16 + (long long)struct_size(codes, ncodes)) {
        PyErr_SetString(PyExc_ValueError, "hypertrace: fixed size disagrees with the fields");
        return -1;
    }
    self->fixed = fixed;
    self->str_max = str_max;
    self->rec_max = rec_max;
    return 0;
}

static PyObject *tp_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Tracepoint *self = (Tracepoint *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->vectorcall = (vectorcallfunc)tp_call;
    return (PyObject *)self;
}

static void release_buf(Tracepoint *self) {
    if (self->have_buf) {
        self->have_buf = 0;
        PyBuffer_Release(&self->buf);
    }
}

static int tp_traverse(Tracepoint *self, visitproc visit, void *arg) {
    Py_VISIT(self->dict);
    Py_VISIT(self->py);
    Py_VISIT(self->clock);
    Py_VISIT(self->tls);
    Py_VISIT(self->claim);
    Py_VISIT(self->mm);
    Py_VISIT(self->cq);
    return 0;
}

static int tp_clear(Tracepoint *self) {
    release_buf(self);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->py);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->tls);
    Py_CLEAR(self->claim);
    Py_CLEAR(self->mm);
    Py_CLEAR(self->cq);
    return 0;
}

static void tp_dealloc(Tracepoint *self) {
    PyObject_GC_UnTrack(self);
    if (self->weaklist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    tp_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* set(name, value): rebind one cell (guest/tracepoint.py set_cell keeps the Python
   tracepoint's copy too) */
static PyObject *tp_set(Tracepoint *self, PyObject *args) {
    const char *name;
    PyObject *v;
    if (!PyArg_ParseTuple(args, "sO", &name, &v))
        return NULL;
    if (strcmp(name, "_on") == 0) {
        int on = PyObject_IsTrue(v);
        if (on < 0)
            return NULL;
        self->on = on;
    } else if (strcmp(name, "_id") == 0) {
        long id = PyLong_AsLong(v);
        if (id == -1 && PyErr_Occurred())
            return NULL;
        if (id < 0 || id > 0xFFFF) {
            PyErr_SetString(PyExc_ValueError, "hypertrace: event id out of range");
            return NULL;
        }
        self->id = (unsigned)id;
    } else if (strcmp(name, "_clock") == 0) {
        Py_INCREF(v);
        Py_XSETREF(self->clock, v);
        self->clock_mono = v == g_monotonic_ns;
        self->clock_tsc = g_tsc_ns != NULL && v == g_tsc_ns;
    } else if (strcmp(name, "_tls") == 0) {
        Py_INCREF(v);
        Py_XSETREF(self->tls, v);
    } else if (strcmp(name, "_claim") == 0) {
        Py_INCREF(v);
        Py_XSETREF(self->claim, v);
    } else if (strcmp(name, "_mm") == 0) {
        release_buf(self);
        Py_INCREF(v);
        Py_XSETREF(self->mm, v);
        if (v != Py_None) {
            if (PyObject_GetBuffer(v, &self->buf, PyBUF_WRITABLE) == 0)
                self->have_buf = 1;
            else
                PyErr_Clear();          /* not a writable buffer: Python's path says */
        }
    } else if (strcmp(name, "_cq") == 0) {
        Py_INCREF(v);
        Py_XSETREF(self->cq, v);
        self->cq_ok = PyMemoryView_Check(v);
    } else {
        PyErr_Format(PyExc_KeyError, "no tracepoint cell %s", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *tp_get_py(Tracepoint *self, void *closure) {
    Py_INCREF(self->py);
    return self->py;
}

/* copy.copy and copy.deepcopy of a function give the function itself: the same here */
static PyObject *tp_copy(PyObject *self, PyObject *unused) {
    Py_INCREF(self);
    return self;
}

static PyMethodDef tp_methods[] = {
    {"_set", (PyCFunction)tp_set, METH_VARARGS, "rebind a cell of the C path"},
    {"__copy__", tp_copy, METH_NOARGS, "the tracepoint itself, as for a function"},
    {"__deepcopy__", tp_copy, METH_O, "the tracepoint itself, as for a function"},
    {NULL},
};

static PyGetSetDef tp_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"py", (getter)tp_get_py, NULL, "the pure-Python tracepoint of the same event", NULL},
    {NULL},
};

static PyObject *tp_descr_get(PyObject *self, PyObject *obj, PyObject *type) {
    /* as a Python function: a tracepoint kept as a class attribute binds, so both
       paths take the same arguments however it is called */
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static PyTypeObject TracepointType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hypertrace.guest._accel.Tracepoint",
    .tp_basicsize = sizeof(Tracepoint),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A tracepoint whose common case runs in C (see native/accel.c).",
    .tp_new = tp_new,
    .tp_init = (initproc)tp_init,
    .tp_dealloc = (destructor)tp_dealloc,
    .tp_traverse = (traverseproc)tp_traverse,
    .tp_clear = (inquiry)tp_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Tracepoint, vectorcall),
    .tp_dictoffset = offsetof(Tracepoint, dict),
    .tp_weaklistoffset = offsetof(Tracepoint, weaklist),
    .tp_methods = tp_methods,
    .tp_getset = tp_getset,
    .tp_descr_get = tp_descr_get,
};

/* ---- function tracing: a C profile function (record --functions, guest/functions.py)
 *
 * Each call and return of a Python function is one 24-byte record, through the
 * hypertrace_call / hypertrace_return tracepoints (uint32_t code): the code object's
 * id, kept in the code object's co_extra slot once guest/functions.py chose it (and
 * declared the code with a hypertrace_code record) at its first call; id 0 means not
 * traced (--include/--exclude). A thread's returns from frames that began before it
 * was traced are not recorded (its depth counter says), so every return recorded
 * has its call. The profile function never raises: an error (one the Python path
 * raises: no memory) is cleared and counted. */
typedef struct {
    Tracepoint *call, *ret;
    PyObject *on_code;          /* on_code(code) -> id (0: not traced) */
    Py_ssize_t extra;           /* co_extra index */
    int on;
    unsigned long long errors;
} profiler_t;

static profiler_t g_prof = {NULL, NULL, NULL, -1, 0, 0};
/* set while the hooks run Python code of their own, and for good in hypertrace's
   own threads (profile_ignore_thread): no function of theirs is traced */
static _Thread_local __attribute__((tls_model("initial-exec"))) int t_hook;
static _Thread_local __attribute__((tls_model("initial-exec"))) struct {
    uint64_t gen;               /* the profiler start this depth belongs to */
    long long depth;
} t_prof;

#if PY_VERSION_HEX >= 0x030C0000
#define CODE_GET_EXTRA PyUnstable_Code_GetExtra
#define CODE_SET_EXTRA PyUnstable_Code_SetExtra
#define REQUEST_EXTRA PyUnstable_Eval_RequestCodeExtraIndex
#else
#define CODE_GET_EXTRA _PyCode_GetExtra
#define CODE_SET_EXTRA _PyCode_SetExtra
#define REQUEST_EXTRA _PyEval_RequestCodeExtraIndex
#endif

static inline PyCodeObject *frame_code(PyFrameObject *f) {
#if PY_VERSION_HEX >= 0x03090000
    PyCodeObject *c = PyFrame_GetCode(f);       /* a new reference */
    Py_DECREF(c);                               /* the frame holds it */
    return c;
#else
    return f->f_code;
#endif
}

static void prof_error(void) {
    g_prof.errors++;
    PyErr_Clear();
}

/* co_extra holds (id << 16) | (fork generation << 1) | 1: a forked child's
   generation differs, so each process declares its codes itself (the reader names a
   call after its own process's declaration) */
#if UINTPTR_MAX >= 0xFFFFFFFFFFFFFFFFu
#define EXTRA(id) ((void *)(((uintptr_t)(id) << 16) | ((uintptr_t)(g_fork_gen & 0x7FFF) << 1) | 1))
#define EXTRA_ID(x) ((uint32_t)((uintptr_t)(x) >> 16))
#define EXTRA_CURRENT(x) ((((uintptr_t)(x) >> 1) & 0x7FFF) == (g_fork_gen & 0x7FFF))
#else
#define EXTRA(id) ((void *)(((uintptr_t)(id) << 1) | 1))
#define EXTRA_ID(x) ((uint32_t)((uintptr_t)(x) >> 1))
#define EXTRA_CURRENT(x) 1
#endif

/* the code's id: from co_extra, or chosen by on_code at its first call in this
   process. on_code answers -id when the declaring record was not written (no ring
   yet, a full one): the id is used, not kept, and the next call declares again, so
   no call is named after a declaration the session does not have. */
static uint32_t code_id(PyCodeObject *code) {
    void *extra = NULL;
    if (CODE_GET_EXTRA((PyObject *)code, g_prof.extra, &extra) < 0) {
        prof_error();
        return 0;
    }
    if (extra != NULL && EXTRA_CURRENT(extra))
        return EXTRA_ID(extra);
    PyObject *r = PyObject_CallOneArg(g_prof.on_code, (PyObject *)code);
    long long id = 0;
    if (r == NULL) {
        prof_error();
    } else {
        id = PyLong_AsLongLong(r);
        Py_DECREF(r);
        if (PyErr_Occurred() || id > (long long)UINT32_MAX || id < -(long long)UINT32_MAX) {
            prof_error();
            id = 0;
        }
    }
    if (id < 0)
        return (uint32_t)-id;
    if (CODE_SET_EXTRA((PyObject *)code, g_prof.extra, EXTRA(id)) < 0)
        prof_error();
    return (uint32_t)id;
}

static void emit_code(Tracepoint *tp, uint32_t id) {
    if (!tp->on)
        return;
    PyObject *r = FALLBACK;
    if (tp->have_buf && tp->cq_ok && (tp->clock_mono || tp->clock_tsc)) {
        uint8_t stage[8] = {0};
        memcpy(stage, &id, 4);
        r = commit(tp, 24, stage, NULL);
    }
    if (r == FALLBACK) {
        PyObject *a = PyLong_FromUnsignedLong(id);
        r = a == NULL ? NULL : fallback(tp, &a, 1, NULL);
        Py_XDECREF(a);
    }
    if (r == NULL)
        prof_error();
    Py_XDECREF(r);
}

#ifdef HT_EVAL_FRAME
/* The frame-evaluation hook: CPython calls it for every frame it runs (a call, a
   generator's resumption) instead of its own loop, which it then calls: a call
   record before, a return record after, with no frame object made (a profile
   function costs 4x an untraced recursive call, this 1.3x). Python code it runs
   itself (on_code, a ring's slow paths) is not traced (t_hook). */
static int g_eval_on;

static inline void emit_keeping_error(Tracepoint *tp, uint32_t id) {
    if (PyErr_Occurred()) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        emit_code(tp, id);
        PyErr_Restore(et, ev, tb);
    } else {
        emit_code(tp, id);
    }
}

static int prof_hook(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg);
static PyObject *eval_hook(PyThreadState *ts, struct _PyInterpreterFrame *f, int thr);
static PyObject *g_thread_boot;     /* threading.setprofile's function for new threads */

/* With the hook, every Python call recurses in C (CPython runs a call in the same C
   frame only without one): a program that raises the recursion limit past this could
   run out of C stack where it would not untraced. From then on the profile function
   traces, in every thread (calls that began in the hook end in it). */
#define EVAL_MAX_RECURSION 4000

static void eval_to_profile(void) {
    PyInterpreterState *interp = PyInterpreterState_Get();
    if (_PyInterpreterState_GetEvalFrameFunc(interp) == eval_hook)
        _PyInterpreterState_SetEvalFrameFunc(interp, _PyEval_EvalFrameDefault);
    g_eval_on = 0;
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); t != NULL;
         t = PyThreadState_Next(t))
        if (_PyEval_SetProfile(t, prof_hook, NULL) < 0)
            prof_error();
    if (g_thread_boot != NULL) {
        PyObject *th = PyImport_ImportModule("threading");
        PyObject *r = th ? PyObject_CallMethod(th, "setprofile", "O", g_thread_boot) : NULL;
        if (r == NULL)
            prof_error();
        Py_XDECREF(r);
        Py_XDECREF(th);
    }
}

/* Each call under the hook takes C stack (about 410 bytes a level measured): CPython
   runs a Python call in the same C frame only without a hook, in every thread, so a
   deep recursion that runs untraced could overflow a thread's stack under the hook (a
   small threading.stack_size(), a raised recursion limit, C code between the calls).
   When a frame begins with less than EVAL_STACK_SPARE of the calling thread's stack
   left, the profile function takes over in every thread (as past EVAL_MAX_RECURSION)
   and calls are run in one C frame again. t_stack_lo: the stack's low end (it grows
   down here), 0 not looked up yet, 1 unknown (then no hook). */
#define EVAL_STACK_SPARE (192 * 1024)
static _Thread_local __attribute__((tls_model("initial-exec"))) uintptr_t t_stack_lo;

static int eval_stack_ok(void) {
    char here;
    if (t_stack_lo == 0) {
        size_t size = 0;
        void *addr = NULL;
        pthread_attr_t at;
        t_stack_lo = 1;
        if (pthread_getattr_np(pthread_self(), &at) == 0) {
            if (pthread_attr_getstack(&at, &addr, &size) == 0 && addr != NULL)
                t_stack_lo = (uintptr_t)addr;
            pthread_attr_destroy(&at);
        }
    }
    if (t_stack_lo > 1 && (uintptr_t)&here > t_stack_lo + EVAL_STACK_SPARE)
        return 1;
    eval_to_profile();              /* (t_hook is set: eval_enter) */
    return 0;
}

/* The work before a frame runs, out of line: eval_hook's own frame, which stays on
   the C stack for as long as the Python frame runs, is kept small. The id of the
   call recorded, 0 for none. A frame may begin with an exception set (a generator
   thrown into: throw(), close(), its finalizer): the Python code run here (on_code,
   the switch to the profile function) must not see or clear it. */
static __attribute__((noinline)) uint32_t eval_enter(PyThreadState *ts,
                                                     struct _PyInterpreterFrame *f) {
    PyObject *et, *ev, *tb;
    uint32_t id = 0;
    PyErr_Fetch(&et, &ev, &tb);
    t_hook = 1;
    PyCodeObject *code = f->f_code;
    if (Py_GetRecursionLimit() > EVAL_MAX_RECURSION) {
        eval_to_profile();
    } else if (ts->recursion_remaining <= 0 || !eval_stack_ok() || !PyCode_Check(code)) {
        /* refused by the recursion check (runs no code: not a call), or given way */
    } else if ((code->co_flags & (CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR))
               && f->prev_instr == _PyCode_CODE(code) - 1) {
        /* calling a generator or coroutine function runs its frame only to make the
           object (RETURN_GENERATOR): not a call, as for the profile function; each
           resumption is one */
    } else {
        id = code_id(code);
        if (id != 0)
            emit_code(g_prof.call, id);
    }
    t_hook = 0;
    PyErr_Restore(et, ev, tb);
    return id;
}

static __attribute__((noinline)) void eval_leave(uint32_t id) {
    int h = t_hook;                 /* set meanwhile for good: one of our threads */
    t_hook = 1;
    emit_keeping_error(g_prof.ret, id);
    t_hook = h;
}

static PyObject *eval_hook(PyThreadState *ts, struct _PyInterpreterFrame *f, int thr) {
    if (!g_prof.on || t_hook)
        return _PyEval_EvalFrameDefault(ts, f, thr);
    uint32_t id = eval_enter(ts, f);
    if (id == 0)
        return _PyEval_EvalFrameDefault(ts, f, thr);
    uint64_t gen = g_prof_gen;
    PyObject *r = _PyEval_EvalFrameDefault(ts, f, thr);
    if (gen == g_prof_gen)          /* not a frame a forked child inherited */
        eval_leave(id);
    return r;
}
#endif

static int prof_hook(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg) {
    if ((what != PyTrace_CALL && what != PyTrace_RETURN) || !g_prof.on || t_hook)
        return 0;
    if (t_prof.gen != g_prof_gen) {
        t_prof.gen = g_prof_gen;
        t_prof.depth = 0;
    }
    if (what == PyTrace_RETURN && t_prof.depth == 0)
        return 0;          /* a frame that began before this thread was traced */
    /* an error already set (an exception being raised) stays as it was */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    uint32_t id = code_id(frame_code(frame));
    if (id != 0) {
        if (what == PyTrace_CALL) {
            t_prof.depth++;
            emit_code(g_prof.call, id);
        } else {
            t_prof.depth--;
            emit_code(g_prof.ret, id);
        }
    }
    PyErr_Restore(et, ev, tb);
    return 0;
}

/* profile_start(call, ret, on_code): trace the calling thread from now on (others:
   profile_thread, from threading.setprofile's first call in each new thread) */
static PyObject *profile_start(PyObject *mod, PyObject *args) {
    PyObject *call, *ret, *on_code, *thread_boot;
    int eval = 1;
    if (!PyArg_ParseTuple(args, "O!O!OO|p", &TracepointType, &call, &TracepointType, &ret,
                          &on_code, &thread_boot, &eval))
        return NULL;
    if (!PyCallable_Check(on_code)) {
        PyErr_SetString(PyExc_TypeError, "on_code must be callable");
        return NULL;
    }
    if (g_prof.extra < 0) {
        g_prof.extra = REQUEST_EXTRA(NULL);
        if (g_prof.extra < 0) {
            PyErr_SetString(PyExc_RuntimeError, "no co_extra index left");
            return NULL;
        }
    }
    Py_INCREF(call);
    Py_INCREF(ret);
    Py_INCREF(on_code);
    Py_XSETREF(g_prof.call, (Tracepoint *)call);
    Py_XSETREF(g_prof.ret, (Tracepoint *)ret);
    Py_XSETREF(g_prof.on_code, on_code);
    g_prof_gen++;
    g_prof.on = 1;
#ifdef HT_EVAL_FRAME
    Py_INCREF(thread_boot);
    Py_XSETREF(g_thread_boot, thread_boot);
    /* every thread at once, unless another tool (a debugger) has its own hook */
    PyInterpreterState *interp = PyInterpreterState_Get();
    _PyFrameEvalFunction cur = _PyInterpreterState_GetEvalFrameFunc(interp);
    if (eval && Py_GetRecursionLimit() <= EVAL_MAX_RECURSION
            && (cur == eval_hook || cur == _PyEval_EvalFrameDefault)) {
        _PyInterpreterState_SetEvalFrameFunc(interp, eval_hook);
        g_eval_on = 1;
        return PyUnicode_FromString("eval");
    }
#endif
    PyEval_SetProfile(prof_hook, NULL);
    return PyUnicode_FromString("profile");
}

static PyObject *profile_ignore_thread(PyObject *mod, PyObject *unused) {
    t_hook = 1;
    PyEval_SetProfile(NULL, NULL);
    Py_RETURN_NONE;
}

/* profile_pause(flag) -> the previous flag: the calling thread's calls untraced while
   set (guest/functions.py: across a fork, whose at-fork hooks run before the child
   has rings of its own) */
static PyObject *profile_pause(PyObject *mod, PyObject *arg) {
    int old = t_hook, on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    t_hook = on;
    return PyBool_FromLong(old);
}

static PyObject *profile_mode(PyObject *mod, PyObject *unused) {
#ifdef HT_EVAL_FRAME
    if (g_eval_on)
        return PyUnicode_FromString("eval");
#endif
    return PyUnicode_FromString(g_prof.on ? "profile" : "");
}

static PyObject *profile_thread(PyObject *mod, PyObject *unused) {
    if (g_prof.on)
        PyEval_SetProfile(prof_hook, NULL);
    else
        PyEval_SetProfile(NULL, NULL);
    Py_RETURN_NONE;
}

/* profile_stop(): no more records from any thread; the calling thread's hook goes */
static PyObject *profile_stop(PyObject *mod, PyObject *unused) {
    g_prof.on = 0;
#ifdef HT_EVAL_FRAME
    if (g_eval_on) {
        /* frames running in the hook still record their returns */
        PyInterpreterState *interp = PyInterpreterState_Get();
        if (_PyInterpreterState_GetEvalFrameFunc(interp) == eval_hook)
            _PyInterpreterState_SetEvalFrameFunc(interp, _PyEval_EvalFrameDefault);
        g_eval_on = 0;
        Py_RETURN_NONE;
    }
#endif
    PyEval_SetProfile(NULL, NULL);
    Py_RETURN_NONE;
}

/* profile_installed(): whether the calling thread is still traced: the program can
   put its own profile function in place (sys.setprofile, cProfile), which ends ours */
static PyObject *profile_installed(PyObject *mod, PyObject *unused) {
    if (!g_prof.on)
        Py_RETURN_FALSE;
    PyThreadState *ts = PyThreadState_Get();
#ifdef HT_EVAL_FRAME
    if (g_eval_on && !t_hook)
        return PyBool_FromLong(
            _PyInterpreterState_GetEvalFrameFunc(PyInterpreterState_Get()) == eval_hook);
#endif
    return PyBool_FromLong(ts->c_profilefunc == prof_hook);
}

static PyObject *profile_errors(PyObject *mod, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(g_prof.errors);
}

/* ---- spans (guest/spans.py): the context manager of `with sp(values...):` in C ----
 *
 * SpanCall(begin, end, values, decorate) is one use of a span: __enter__ emits
 * begin(span, task, *values), __exit__ emits end(span, task, error), span a process-wide
 * id and task the running asyncio task's id (0 outside one); called with a function,
 * it returns decorate(self, function) (the Python wrapper). The same records as the
 * Python SpanCall, at the cost of its two tracepoints and little more. */
#define SPAN_NEST 8             /* one SpanCall entered again inside itself, at most */
static uint64_t g_span_id;
static PyObject *g_get_running_loop, *g_current_task;   /* from _asyncio, once imported */
static PyObject *g_str_asyncio, *g_str_qualname;

typedef struct {
    PyObject_HEAD
    PyObject *begin, *end, *values, *decorate;
    int depth;
    uint64_t sid[SPAN_NEST], task[SPAN_NEST];
    unsigned long tid[SPAN_NEST];   /* the thread that entered: one use shared by
                                       threads ends each thread's own span */
} SpanCall;

/* the running asyncio task's id(), 0 outside one; -1 with an error */
static int span_task(uint64_t *task) {
    *task = 0;
    if (g_get_running_loop == NULL) {
        PyObject *mods = PyImport_GetModuleDict();
        if (PyDict_GetItemWithError(mods, g_str_asyncio) == NULL)
            return PyErr_Occurred() ? -1 : 0;     /* no asyncio: no task */
        /* asyncio's own (C where _asyncio is): the task table itself where it is a
           dict keyed by loop (3.11), else current_task(loop) */
        PyObject *m = PyImport_ImportModule("asyncio");
        if (m == NULL)
            return -1;
        g_get_running_loop = PyObject_GetAttrString(m, "_get_running_loop");
        PyObject *tasks = PyObject_GetAttrString(m, "tasks");
        PyObject *table = tasks ? PyObject_GetAttrString(tasks, "_current_tasks") : NULL;
        Py_XDECREF(tasks);
        if (table != NULL && PyDict_CheckExact(table)) {
            g_current_task = table;
        } else {
            Py_XDECREF(table);
            PyErr_Clear();
            g_current_task = PyObject_GetAttrString(m, "current_task");
        }
        Py_DECREF(m);
        if (g_get_running_loop == NULL || g_current_task == NULL) {
            Py_CLEAR(g_get_running_loop);
            Py_CLEAR(g_current_task);
            return -1;
        }
    }
    PyObject *loop = PyObject_CallNoArgs(g_get_running_loop);
    if (loop == NULL)
        return -1;
    if (loop != Py_None && PyDict_CheckExact(g_current_task)) {
        PyObject *t = PyDict_GetItemWithError(g_current_task, loop);     /* borrowed */
        if (t == NULL && PyErr_Occurred()) {
            Py_DECREF(loop);
            return -1;
        }
        if (t != NULL && t != Py_None)
            *task = (uint64_t)(uintptr_t)t;      /* id(t), as the Python span takes it */
    } else if (loop != Py_None) {
        PyObject *t = PyObject_CallOneArg(g_current_task, loop);
        if (t == NULL) {
            Py_DECREF(loop);
            return -1;
        }
        if (t != Py_None)
            *task = (uint64_t)(uintptr_t)t;
        Py_DECREF(t);
    }
    Py_DECREF(loop);
    return 0;
}

static PyObject *span_emit(PyObject *tp, uint64_t sid, uint64_t task, PyObject *const *rest,
                           Py_ssize_t nrest) {
    PyObject *argv[MAX_FIELDS + 1];
    if (nrest > MAX_FIELDS - 2) {
        PyErr_SetString(PyExc_TypeError, "hypertrace: too many span fields");
        return NULL;
    }
    argv[1] = PyLong_FromUnsignedLongLong(sid);
    argv[2] = PyLong_FromUnsignedLongLong(task);
    PyObject *r = NULL;
    if (argv[1] != NULL && argv[2] != NULL) {
        for (Py_ssize_t i = 0; i < nrest; i++)
            argv[3 + i] = rest[i];
        r = PyObject_Vectorcall(tp, argv + 1, (size_t)(2 + nrest) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                NULL);
    }
    Py_XDECREF(argv[1]);
    Py_XDECREF(argv[2]);
    return r;
}

static PyObject *sc_enter(SpanCall *self, PyObject *unused) {
    if (self->depth >= SPAN_NEST) {
        PyErr_SetString(PyExc_RuntimeError, "hypertrace: a span use entered again 8 deep "
                        "(make one per use: `with sp(...)`)");
        return NULL;
    }
    uint64_t task;
    if (span_task(&task) < 0)
        return NULL;
    uint64_t sid = ++g_span_id;
    PyObject *r = span_emit(self->begin, sid, task, &PyTuple_GET_ITEM(self->values, 0),
                            PyTuple_GET_SIZE(self->values));
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    self->sid[self->depth] = sid;
    self->task[self->depth] = task;
    self->tid[self->depth] = PyThread_get_thread_ident();
    self->depth++;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *sc_exit(SpanCall *self, PyObject *const *args, Py_ssize_t nargs) {
    if (self->depth == 0) {
        PyErr_SetString(PyExc_RuntimeError, "hypertrace: a span left that was not entered");
        return NULL;
    }
    /* this thread's newest, else the newest (a generator's, closed by another thread) */
    unsigned long me = PyThread_get_thread_ident();
    int k = self->depth - 1;
    while (k >= 0 && self->tid[k] != me)
        k--;
    if (k < 0)
        k = self->depth - 1;
    uint64_t sid = self->sid[k], task = self->task[k];
    for (int j = k; j + 1 < self->depth; j++) {
        self->sid[j] = self->sid[j + 1];
        self->task[j] = self->task[j + 1];
        self->tid[j] = self->tid[j + 1];
    }
    self->depth--;
    PyObject *err;
    if (nargs < 1 || args[0] == Py_None) {
        err = PyUnicode_FromStringAndSize("", 0);
    } else {
        err = PyObject_GetAttr(args[0], g_str_qualname);
        if (err != NULL && !PyUnicode_Check(err)) {
            Py_DECREF(err);
            err = PyUnicode_FromString("?");
        }
    }
    if (err == NULL)
        return NULL;
    PyObject *r = span_emit(self->end, sid, task, &err, 1);
    Py_DECREF(err);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;                /* an exception goes on */
}

static PyObject *sc_call(SpanCall *self, PyObject *args, PyObject *kw) {
    if ((kw != NULL && PyDict_GET_SIZE(kw)) || PyTuple_GET_SIZE(args) != 1
            || !PyCallable_Check(PyTuple_GET_ITEM(args, 0))) {
        PyErr_SetString(PyExc_TypeError, "a span use decorates one function: @sp(values...)");
        return NULL;
    }
    return PyObject_CallFunctionObjArgs(self->decorate, (PyObject *)self,
                                        PyTuple_GET_ITEM(args, 0), NULL);
}

static int sc_traverse(SpanCall *self, visitproc visit, void *arg) {
    Py_VISIT(self->begin);
    Py_VISIT(self->end);
    Py_VISIT(self->values);
    Py_VISIT(self->decorate);
    return 0;
}

static int sc_clear(SpanCall *self) {
    Py_CLEAR(self->begin);
    Py_CLEAR(self->end);
    Py_CLEAR(self->values);
    Py_CLEAR(self->decorate);
    return 0;
}

static void sc_dealloc(SpanCall *self) {
    PyObject_GC_UnTrack(self);
    sc_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef sc_members[] = {
    {"begin", T_OBJECT, offsetof(SpanCall, begin), READONLY, "the begin tracepoint"},
    {"end", T_OBJECT, offsetof(SpanCall, end), READONLY, "the end tracepoint"},
    {"values", T_OBJECT, offsetof(SpanCall, values), READONLY, "the span's field values"},
    {NULL},
};

static PyMethodDef sc_methods[] = {
    {"__enter__", (PyCFunction)sc_enter, METH_NOARGS, "emit the begin"},
    {"__exit__", (PyCFunction)(void (*)(void))sc_exit, METH_FASTCALL, "emit the end"},
    {NULL},
};

static PyTypeObject SpanCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hypertrace.guest._accel.SpanCall",
    .tp_basicsize = sizeof(SpanCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One use of a span: a context manager, and a decorator (see guest/spans.py).",
    .tp_dealloc = (destructor)sc_dealloc,
    .tp_traverse = (traverseproc)sc_traverse,
    .tp_clear = (inquiry)sc_clear,
    .tp_call = (ternaryfunc)sc_call,
    .tp_members = sc_members,
    .tp_methods = sc_methods,
};

static SpanCall *spancall_new(PyObject *begin, PyObject *end, PyObject *values,
                              PyObject *decorate) {
    SpanCall *c = PyObject_GC_New(SpanCall, &SpanCallType);
    if (c == NULL)
        return NULL;
    Py_INCREF(begin);
    Py_INCREF(end);
    Py_INCREF(values);
    Py_INCREF(decorate);
    c->begin = begin;
    c->end = end;
    c->values = values;
    c->decorate = decorate;
    c->depth = 0;
    PyObject_GC_Track(c);
    return c;
}

/* Span(name, begin, end, nfields, decorate): `sp(values...)` makes a SpanCall; a span
   without fields given one callable decorates it */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *name, *begin, *end, *decorate;
    Py_ssize_t nfields;
} Span;

static PyObject *span_vcall(Span *self, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        PyErr_SetString(PyExc_TypeError, "span values are positional");
        return NULL;
    }
    if (self->nfields == 0 && n == 1 && PyCallable_Check(args[0])) {
        PyObject *empty = PyTuple_New(0);
        if (empty == NULL)
            return NULL;
        SpanCall *c = spancall_new(self->begin, self->end, empty, self->decorate);
        Py_DECREF(empty);
        if (c == NULL)
            return NULL;
        PyObject *r = PyObject_CallFunctionObjArgs(self->decorate, (PyObject *)c, args[0],
                                                   NULL);
        Py_DECREF(c);
        return r;
    }
    if (n != self->nfields) {
        PyErr_Format(PyExc_TypeError, "span %U takes %zd values (%zd given)", self->name,
                     self->nfields, n);
        return NULL;
    }
    PyObject *values = PyTuple_New(n);
    if (values == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(args[i]);
        PyTuple_SET_ITEM(values, i, args[i]);
    }
    SpanCall *c = spancall_new(self->begin, self->end, values, self->decorate);
    Py_DECREF(values);
    return (PyObject *)c;
}

static int span_init(Span *self, PyObject *args, PyObject *kw) {
    PyObject *name, *begin, *end, *decorate;
    Py_ssize_t nfields;
    if (!PyArg_ParseTuple(args, "UOOnO", &name, &begin, &end, &nfields, &decorate))
        return -1;
    if (nfields < 0 || nfields > MAX_FIELDS - 2) {
        PyErr_SetString(PyExc_ValueError, "hypertrace: span field count out of range");
        return -1;
    }
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
    Py_INCREF(begin);
    Py_XSETREF(self->begin, begin);
    Py_INCREF(end);
    Py_XSETREF(self->end, end);
    Py_INCREF(decorate);
    Py_XSETREF(self->decorate, decorate);
    self->nfields = nfields;
    return 0;
}

static PyObject *span_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Span *self = (Span *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->vectorcall = (vectorcallfunc)span_vcall;
    return (PyObject *)self;
}

static int span_traverse(Span *self, visitproc visit, void *arg) {
    Py_VISIT(self->name);
    Py_VISIT(self->begin);
    Py_VISIT(self->end);
    Py_VISIT(self->decorate);
    return 0;
}

static int span_clear(Span *self) {
    Py_CLEAR(self->name);
    Py_CLEAR(self->begin);
    Py_CLEAR(self->end);
    Py_CLEAR(self->decorate);
    return 0;
}

static void span_dealloc(Span *self) {
    PyObject_GC_UnTrack(self);
    span_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *span_repr(Span *self) {
    PyObject *sig = self->begin ? PyObject_GetAttrString(self->begin, "signature") : NULL;
    if (sig == NULL) {
        PyErr_Clear();
        return PyUnicode_FromFormat("<span %U>", self->name);
    }
    PyObject *r = PyUnicode_FromFormat("<span %U: %S>", self->name, sig);
    Py_DECREF(sig);
    return r;
}

static PyMemberDef span_members[] = {
    {"name", T_OBJECT, offsetof(Span, name), READONLY, "the span's name"},
    {"begin", T_OBJECT, offsetof(Span, begin), READONLY, "its begin tracepoint"},
    {"end", T_OBJECT, offsetof(Span, end), READONLY, "its end tracepoint"},
    {NULL},
};

static PyTypeObject SpanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hypertrace.guest._accel.Span",
    .tp_basicsize = sizeof(Span),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A span's two tracepoints; calling it makes one use (see guest/spans.py).",
    .tp_new = span_new,
    .tp_init = (initproc)span_init,
    .tp_dealloc = (destructor)span_dealloc,
    .tp_traverse = (traverseproc)span_traverse,
    .tp_clear = (inquiry)span_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Span, vectorcall),
    .tp_members = span_members,
    .tp_repr = (reprfunc)span_repr,
};

static PyObject *next_span_id(PyObject *mod, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(++g_span_id);
}

static PyObject *invalidate(PyObject *mod, PyObject *unused) {
    g_epoch++;
    Py_RETURN_NONE;
}

static PyObject *counts(PyObject *mod, PyObject *unused) {
    return Py_BuildValue("KK", g_fast, g_slow);
}

static PyMethodDef module_methods[] = {
    {"tsc_ns", tsc_ns, METH_NOARGS,
     "CLOCK_MONOTONIC in ns, read from the invariant TSC (absent where it cannot be)"},
    {"tsc_info", tsc_info, METH_NOARGS,
     "the TSC clock's state: on, max_error_ns (vs CLOCK_MONOTONIC), ns_per_tick, ..."},
    {"counts", counts, METH_NOARGS,
     "(records written by the C path, calls handed to the Python tracepoint)"},
    {"profile_start", profile_start, METH_VARARGS,
     "profile_start(call, ret, on_code, thread_boot[, eval]): trace Python calls and "
     "returns; returns how: 'eval' (every thread, a frame-evaluation hook) or 'profile' "
     "(this thread; thread_boot goes to threading.setprofile)"},
    {"next_span_id", next_span_id, METH_NOARGS,
     "the next span id (the C spans and the Python decorators share them)"},
    {"profile_ignore_thread", profile_ignore_thread, METH_NOARGS,
     "never trace the calling thread's functions (hypertrace's own threads)"},
    {"profile_mode", profile_mode, METH_NOARGS,
     "how functions are traced now: 'eval', 'profile' or '' (not)"},
    {"profile_thread", profile_thread, METH_NOARGS,
     "trace the calling thread too (while tracing is on)"},
    {"profile_stop", profile_stop, METH_NOARGS, "stop function tracing"},
    {"profile_pause", profile_pause, METH_O,
     "profile_pause(flag) -> previous: the calling thread's calls untraced while set"},
    {"profile_installed", profile_installed, METH_NOARGS,
     "whether the calling thread is still traced (its profile function not replaced)"},
    {"fork_done", fork_done, METH_NOARGS,
     "a forked child's rings are its own now: records go out again; returns the "
     "count dropped since the fork"},
    {"profile_errors", profile_errors, METH_NOARGS,
     "errors the profile function cleared (each one a record not written)"},
    {"invalidate", invalidate, METH_NOARGS,
     "forget every thread's cached writer (one went away)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_accel",
    "hypertrace's optional C tracepoints (source: hypertrace/native/accel.c)", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__accel(void) {
    PyObject *time = PyImport_ImportModule("time");
    if (time == NULL)
        return NULL;
    g_monotonic_ns = PyObject_GetAttrString(time, "monotonic_ns");
    Py_DECREF(time);
    g_str_w = PyUnicode_InternFromString("w");
    g_str_make_room = PyUnicode_InternFromString("make_room");
    if (g_monotonic_ns == NULL || g_str_w == NULL || g_str_make_room == NULL)
        return NULL;
    g_str_asyncio = PyUnicode_InternFromString("asyncio");
    g_str_qualname = PyUnicode_InternFromString("__qualname__");
    if (g_str_asyncio == NULL || g_str_qualname == NULL)
        return NULL;
    if (PyType_Ready(&WriterType) < 0 || PyType_Ready(&TracepointType) < 0
            || PyType_Ready(&SpanCallType) < 0 || PyType_Ready(&SpanType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    static int atfork_set;
    if (!atfork_set && pthread_atfork(NULL, NULL, atfork_child) == 0)
        atfork_set = 1;
    Py_INCREF(&WriterType);
    Py_INCREF(&TracepointType);
    Py_INCREF(&SpanCallType);
    Py_INCREF(&SpanType);
    if (PyModule_AddObject(m, "WriterBase", (PyObject *)&WriterType) < 0
            || PyModule_AddObject(m, "Tracepoint", (PyObject *)&TracepointType) < 0
            || PyModule_AddObject(m, "SpanCall", (PyObject *)&SpanCallType) < 0
            || PyModule_AddObject(m, "Span", (PyObject *)&SpanType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* the TSC clock exists only where it can stand in for CLOCK_MONOTONIC, and
       HYPERTRACE_TSC=0 keeps clock_gettime */
    if (ht_tsc_start(&g_tsc, getenv("HYPERTRACE_TSC"))) {
        g_tsc_ns = PyObject_GetAttrString(m, "tsc_ns");
        if (g_tsc_ns == NULL) {
            Py_DECREF(m);
            return NULL;
        }
    } else if (PyObject_DelAttrString(m, "tsc_ns") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
