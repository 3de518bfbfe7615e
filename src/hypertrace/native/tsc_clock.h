/* CLOCK_MONOTONIC read from the time-stamp counter: the clock of the C producer
 * (hypertrace.c) and of the Python accelerator (accel.c), C11 + libc.
 *
 * clock_gettime costs more than the rest of an emit (the vDSO reads the TSC too,
 * then scales it under the kernel's seqlock).  Where the TSC is invariant
 * (constant_tsc, nonstop_tsc) and the kernel itself keeps time with it (clocksource
 * "tsc"), ht_tsc_now() reads it and scales it by a line that tracks CLOCK_MONOTONIC,
 * so its values are CLOCK_MONOTONIC to within the tracking error: a process using
 * it shares its domain's clock mapping with every other producer of the domain.
 *
 * The line: ns = m0 + (tsc - t0) * k up to tsc `next`, then on at the rate `klong`
 * measured over the clock's whole life.  The first reader past `next` corrects it
 * (the others go on with the line they read): a (tsc, CLOCK_MONOTONIC) pair read
 * within HT_TSC_BRACKET_NS gives the error, and the new line starts where the old one
 * is (the clock never steps) with a slope that cancels the error by the next
 * correction (at 1, 2, 4 ... then every 64 ms; at most 1000 ppm, so never
 * backwards).  Readers take the line under a sequence lock; a correction never
 * waits for anybody.  The largest error a correction found once settled (after
 * the first 100 ms) is kept in max_err_ns.
 */
#ifndef HYPERTRACE_TSC_CLOCK_H
#define HYPERTRACE_TSC_CLOCK_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#ifdef HT_TSC_IMPLEMENTATION
#include <stdio.h>
#include <time.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HT_HAVE_TSC 1
static inline uint64_t ht_rdtsc(void) { return __rdtsc(); }
#else
#define HT_HAVE_TSC 0
static inline uint64_t ht_rdtsc(void) { return 0; }
#endif

#define HT_TSC_BRACKET_NS 250        /* a pair read in a longer bracket (preempted, an
                                        interrupt) is not used */
#define HT_TSC_MAX_GAP_NS 64000000   /* correction interval once settled */
#define HT_TSC_SLEW 1e-3             /* at most 1000 ppm of correction */

typedef struct {
    _Atomic int on;                  /* set once, after the first line */
    _Atomic unsigned seq;            /* odd while a correction writes the line */
    atomic_flag busy;                /* one corrector at a time */
    /* the line, written under seq (relaxed atomics: a reader may race a writer) */
    _Atomic uint64_t t0, next, k_bits, klong_bits;
    _Atomic int64_t m0;
    /* set by ht_tsc_start() (the implementation's translation unit) before `on` */
    void (*correct)(void *c, const void *line, uint64_t now);
    /* the corrector's own state (under busy) */
    uint64_t tf;
    int64_t mf, gap_ns;
    double max_err_ns;
    unsigned long long updates, skipped;
} ht_tsc_clock;

static inline double ht__dbl(uint64_t b) { double d; memcpy(&d, &b, 8); return d; }
static inline uint64_t ht__bits(double d) { uint64_t b; memcpy(&b, &d, 8); return b; }

typedef struct { uint64_t t0, next; int64_t m0; double k, klong; } ht_tsc_line;

static inline void ht__tsc_read(ht_tsc_clock *c, ht_tsc_line *l)
{
    unsigned s;
    do {
        s = atomic_load_explicit(&c->seq, memory_order_acquire);
        l->t0 = atomic_load_explicit(&c->t0, memory_order_relaxed);
        l->next = atomic_load_explicit(&c->next, memory_order_relaxed);
        l->m0 = atomic_load_explicit(&c->m0, memory_order_relaxed);
        l->k = ht__dbl(atomic_load_explicit(&c->k_bits, memory_order_relaxed));
        l->klong = ht__dbl(atomic_load_explicit(&c->klong_bits, memory_order_relaxed));
        atomic_thread_fence(memory_order_acquire);
    } while ((s & 1) || atomic_load_explicit(&c->seq, memory_order_relaxed) != s);
}

static inline int64_t ht__tsc_value(const ht_tsc_line *l, uint64_t x)
{
    if (x <= l->next)
        return l->m0 + (int64_t)((double)(int64_t)(x - l->t0) * l->k);
    int64_t at = l->m0 + (int64_t)((double)(int64_t)(l->next - l->t0) * l->k);
    return at + (int64_t)((double)(x - l->next) * l->klong);
}

/* CLOCK_MONOTONIC in ns from the TSC (only once ht_tsc_start() said yes) */
static inline uint64_t ht_tsc_now(ht_tsc_clock *c)
{
    ht_tsc_line l;
    ht__tsc_read(c, &l);
    uint64_t x = ht_rdtsc();
    if (__builtin_expect(x >= l.next, 0)
            && !atomic_flag_test_and_set_explicit(&c->busy, memory_order_acquire)) {
        ht__tsc_read(c, &l);             /* another corrector may just have been */
        if (x >= l.next)
            c->correct(c, &l, x);
        atomic_flag_clear_explicit(&c->busy, memory_order_release);
        ht__tsc_read(c, &l);
    }
    return (uint64_t)ht__tsc_value(&l, x);
}

/* The corrections and the start: in the one translation unit that owns the clock
   (hypertrace.c, accel.c: POSIX, for clock_gettime), which defines
   HT_TSC_IMPLEMENTATION before including this header. */
#ifdef HT_TSC_IMPLEMENTATION
static inline int64_t ht_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void ht__tsc_write(ht_tsc_clock *c, const ht_tsc_line *l)
{
    unsigned s = atomic_load_explicit(&c->seq, memory_order_relaxed);
    atomic_store_explicit(&c->seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&c->t0, l->t0, memory_order_relaxed);
    atomic_store_explicit(&c->next, l->next, memory_order_relaxed);
    atomic_store_explicit(&c->m0, l->m0, memory_order_relaxed);
    atomic_store_explicit(&c->k_bits, ht__bits(l->k), memory_order_relaxed);
    atomic_store_explicit(&c->klong_bits, ht__bits(l->klong), memory_order_relaxed);
    atomic_store_explicit(&c->seq, s + 2, memory_order_release);
}

/* a (tsc, CLOCK_MONOTONIC) pair: the narrowest of 8 tries (the midpoint is off by
   at most half the width); 0 if even that one is too wide */
static inline int ht__tsc_pair(uint64_t *t, int64_t *m)
{
    int64_t best = INT64_MAX;
    for (int i = 0; i < 8; i++) {
        int64_t a = ht_mono_ns();
        uint64_t x = ht_rdtsc();
        int64_t b = ht_mono_ns();
        if (b - a < best) {
            best = b - a;
            *t = x;
            *m = a + (b - a) / 2;
        }
    }
    return best <= HT_TSC_BRACKET_NS;
}

static void ht__tsc_correct(void *cv, const void *oldv, uint64_t now)
{
    ht_tsc_clock *c = cv;
    const ht_tsc_line *old = oldv;
    uint64_t tn;
    int64_t mn;
    ht_tsc_line l;
    if (!ht__tsc_pair(&tn, &mn) || tn <= c->tf || mn <= c->mf) {
        /* no good pair now: go on at the measured rate from here, again in ~1 ms */
        c->skipped++;
        l.t0 = now;
        l.m0 = ht__tsc_value(old, now);
        l.k = l.klong = old->klong;
        l.next = now + (uint64_t)(1e6 / old->klong);
        ht__tsc_write(c, &l);
        return;
    }
    double klong = (double)(mn - c->mf) / (double)(tn - c->tf);
    int64_t v = ht__tsc_value(old, tn);
    double err = (double)(v - mn);
    if (mn - c->mf > 100000000 && (err < 0 ? -err : err) > c->max_err_ns)
        c->max_err_ns = err < 0 ? -err : err;
    if (c->gap_ns < HT_TSC_MAX_GAP_NS)
        c->gap_ns *= 2;
    double slew = -err / (double)c->gap_ns;
    if (slew > HT_TSC_SLEW)
        slew = HT_TSC_SLEW;
    if (slew < -HT_TSC_SLEW)
        slew = -HT_TSC_SLEW;
    l.t0 = tn;
    l.m0 = v;
    l.k = klong * (1.0 + slew);
    l.klong = klong;
    l.next = tn + (uint64_t)((double)c->gap_ns / klong);
    ht__tsc_write(c, &l);
    c->updates++;
}

/* Whether the TSC can stand in for CLOCK_MONOTONIC here; if so, the first line
   (its rate over ~2 ms of busy waiting). `env` is $HYPERTRACE_TSC: "0" says no. */
static int ht_tsc_start(ht_tsc_clock *c, const char *env)
{
#if HT_HAVE_TSC
    if (env != NULL && strcmp(env, "0") == 0)
        return 0;
    char buf[64] = {0};
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "re");
    if (f == NULL)
        return 0;
    int ok = fgets(buf, sizeof buf, f) != NULL && strcmp(buf, "tsc\n") == 0;
    fclose(f);
    if (!ok)
        return 0;               /* the kernel does not trust it (kvm-clock, hpet...) */
    int constant = 0, nonstop = 0;
    f = fopen("/proc/cpuinfo", "re");
    if (f == NULL)
        return 0;
    char line[8192];
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        constant = strstr(line, " constant_tsc") != NULL;
        nonstop = strstr(line, " nonstop_tsc") != NULL;
        break;
    }
    fclose(f);
    if (!constant || !nonstop)
        return 0;               /* not invariant: its rate follows the CPU's frequency */
    uint64_t a = 0, b = 0;
    int64_t ma = 0, mb = 0;
    if (!ht__tsc_pair(&a, &ma))
        return 0;
    int tries = 0;
    do {
        if (!ht__tsc_pair(&b, &mb) && ++tries > 1000)
            return 0;
    } while (mb - ma < 2000000);
    if (b <= a)
        return 0;
    ht_tsc_line l;
    l.k = l.klong = (double)(mb - ma) / (double)(b - a);
    if (!(l.k > 0.01 && l.k < 100))
        return 0;               /* 10 MHz .. 100 GHz, or the pairs are nonsense */
    c->tf = a;
    c->mf = ma;
    c->gap_ns = 500000;
    c->correct = ht__tsc_correct;
    l.t0 = b;
    l.m0 = mb;
    l.next = b + (uint64_t)(1e6 / l.k);
    atomic_flag_clear(&c->busy);
    ht__tsc_write(c, &l);
    atomic_store_explicit(&c->on, 1, memory_order_release);
    return 1;
#else
    (void)c;
    (void)env;
    (void)ht__tsc_correct;      /* no TSC here: never used */
    return 0;
#endif
}

#endif /* HT_TSC_IMPLEMENTATION */

#endif /* HYPERTRACE_TSC_CLOCK_H */
