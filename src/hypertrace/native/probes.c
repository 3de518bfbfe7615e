/* USDT probes of the collector (hypertrace.host._probes): bpftrace or SystemTap on the
 * host attach to guest events as the collector takes them from the rings.
 *
 * Probes (provider "hypertrace"; docs: README "USDT probes", `hypertrace usdt`):
 *   event(domain, name, timestamp, payload, payload length, tid, ring, event id)
 *       per record taken from a ring: validated, in the collector's private copy
 *   sync(domain, name, sync id, guest time, host time)   per sync point answered
 *   lost(domain, kind, count, tid, ring)     records discarded, counted as lost
 *   declare(domain, event id, name, signature)   an event declaration accepted
 * Strings are NUL-terminated; timestamps are nanoseconds; ring and tid are -1 where
 * no ring is concerned.  The order puts what a script needs most in arg0..arg5:
 * bpftrace before 0.24 (Debian 12 has 0.17) reads no USDT argument past arg5 on
 * x86-64; SystemTap and newer bpftrace read all eight.
 *
 * Each probe has a semaphore (sys/sdt.h's _SDT_HAS_SEMAPHORES): the kernel (uprobe
 * reference counters) or the tracer raises it while a probe is attached, and every
 * function here returns at once while it is zero, before looking at its arguments,
 * so an unattached probe costs one call per run of records, not per record.
 *
 * The probes only expose what the collector took from the guest (a record's bytes,
 * in the private copy, valid during the probe): nothing they carry reaches back into
 * the guest, and what to do with an event is the host script's decision.
 *
 * Built without sys/sdt.h (or with HT_NO_SDT) the functions are the same and fire
 * nothing: built() tells which.  Everything runs with the GIL held.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if !defined(HT_NO_SDT) && defined(__has_include)
#if __has_include(<sys/sdt.h>)
#define HT_SDT 1
#endif
#endif

#ifdef HT_SDT
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
/* the semaphores: named provider_probe_semaphore, in the .probes section (sdt.h) */
__extension__ unsigned short hypertrace_event_semaphore
    __attribute__((unused, section(".probes")));
__extension__ unsigned short hypertrace_sync_semaphore
    __attribute__((unused, section(".probes")));
__extension__ unsigned short hypertrace_lost_semaphore
    __attribute__((unused, section(".probes")));
__extension__ unsigned short hypertrace_declare_semaphore
    __attribute__((unused, section(".probes")));
#define ON(p) (__builtin_expect(hypertrace_##p##_semaphore != 0, 0))
#else
#define ON(p) 0
#endif

#define PAD_ID 0xFFFFu
#define REC_HEADER 16u

static inline uint64_t le64(const uint8_t *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
           (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
           (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

/* events(domain, ring, tid, run, names, offset) -> records fired
 * run: validated records (a buffer); names: a list of bytes indexed by event id (an id
 * past it, or an entry that is not bytes, is named ""); offset: ns added to each
 * record's timestamp to put it on the host's clock (the live estimate). */
static PyObject *events(PyObject *self, PyObject *args) {
    if (!ON(event))
        return PyLong_FromLong(0);
    const char *domain;
    long long ring, tid, offset;
    Py_buffer run;
    PyObject *names;
    if (!PyArg_ParseTuple(args, "yLLy*O!L", &domain, &ring, &tid, &run, &PyList_Type, &names,
                          &offset))
        return NULL;
    const uint8_t *p = run.buf;
    size_t n = (size_t)run.len, off = 0;
    Py_ssize_t nn = PyList_GET_SIZE(names);
    long fired = 0;
    while (n - off >= REC_HEADER) {
        unsigned id = p[off] | p[off + 1] << 8;
        size_t size = (size_t)((p[off + 2] | p[off + 3] << 8) & 0xFFF8u);
        if (size < REC_HEADER || size > n - off)
            break;                      /* the run is validated: only a caller's mistake */
        if (id != PAD_ID) {
            const char *name = "";
            if ((Py_ssize_t)id < nn) {
                PyObject *o = PyList_GET_ITEM(names, id);
                if (PyBytes_Check(o))
                    name = PyBytes_AS_STRING(o);
            }
            uint64_t ts = le64(p + off + 8) + (uint64_t)offset;
            const uint8_t *payload = p + off + REC_HEADER;
            uint64_t len = size - REC_HEADER;
#ifdef HT_SDT
            STAP_PROBE8(hypertrace, event, domain, name, ts, payload, len, tid, ring, id);
#else
            (void)name; (void)ts; (void)payload; (void)len;
#endif
            fired++;
        }
        off += size;
    }
    PyBuffer_Release(&run);
    return PyLong_FromLong(fired);
}

/* sync(domain, name, sync_id, guest_ns, host_ns) -> fired */
static PyObject *sync_(PyObject *self, PyObject *args) {
    if (!ON(sync))
        Py_RETURN_FALSE;
    const char *domain, *name;
    unsigned long long sid, guest, host;
    if (!PyArg_ParseTuple(args, "yyKKK", &domain, &name, &sid, &guest, &host))
        return NULL;
#ifdef HT_SDT
    STAP_PROBE5(hypertrace, sync, domain, name, sid, guest, host);
#endif
    Py_RETURN_TRUE;
}

/* lost(domain, kind, count, tid, ring) -> fired */
static PyObject *lost(PyObject *self, PyObject *args) {
    if (!ON(lost))
        Py_RETURN_FALSE;
    const char *domain, *kind;
    long long ring, tid;
    unsigned long long count;
    if (!PyArg_ParseTuple(args, "yyKLL", &domain, &kind, &count, &tid, &ring))
        return NULL;
#ifdef HT_SDT
    STAP_PROBE5(hypertrace, lost, domain, kind, count, tid, ring);
#endif
    Py_RETURN_TRUE;
}

/* declare(domain, id, name, signature) -> fired */
static PyObject *declare(PyObject *self, PyObject *args) {
    if (!ON(declare))
        Py_RETURN_FALSE;
    const char *domain, *name, *sig;
    unsigned int id;
    if (!PyArg_ParseTuple(args, "yIyy", &domain, &id, &name, &sig))
        return NULL;
#ifdef HT_SDT
    STAP_PROBE4(hypertrace, declare, domain, id, name, sig);
#endif
    Py_RETURN_TRUE;
}

/* attached() -> {probe: semaphore value}: nonzero while a tracer is attached */
static PyObject *attached(PyObject *self, PyObject *unused) {
#ifdef HT_SDT
    return Py_BuildValue("{sHsHsHsH}", "event", hypertrace_event_semaphore,
                         "sync", hypertrace_sync_semaphore, "lost", hypertrace_lost_semaphore,
                         "declare", hypertrace_declare_semaphore);
#else
    return PyDict_New();
#endif
}

static PyObject *built(PyObject *self, PyObject *unused) {
#ifdef HT_SDT
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"events", events, METH_VARARGS, "fire hypertrace:event for each record of a run"},
    {"sync", sync_, METH_VARARGS, "fire hypertrace:sync"},
    {"lost", lost, METH_VARARGS, "fire hypertrace:lost"},
    {"declare", declare, METH_VARARGS, "fire hypertrace:declare"},
    {"attached", attached, METH_NOARGS, "the probes' semaphores"},
    {"built", built, METH_NOARGS, "whether the probes were compiled in (sys/sdt.h)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_probes", NULL, -1, methods};

PyMODINIT_FUNC PyInit__probes(void) { return PyModule_Create(&module); }
