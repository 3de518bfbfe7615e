/* hypertrace native producer runtime: attach, declare, claim, slow emit paths, loss
 * counters, fork and exit (docs/abi.md; src/hypertrace/guest/ is the reference
 * behaviour). C11 + POSIX + Linux (OFD locks), libc and pthreads only.
 *
 * Never crashes nor hangs the traced program: whatever fails turns tracing off with
 * one warning on stderr; nothing here waits for another process for longer than the
 * ABI's bounds (2 ms per declaration, block_timeout_ns in block mode).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define HT_TSC_IMPLEMENTATION      /* this program's TSC clock lives here */
#include "hypertrace.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

/* --- the ABI's numbers (src/hypertrace/abi/layout.py) --- */
#define MAGIC 0x4543415254505948ull
#define ABI_MAJOR 1
#define PAGE 4096u
#define HDR_ABI_MAJOR 8
#define HDR_REGION_SIZE 16
#define HDR_N_RINGS 72
#define HDR_RING_SIZE 76
#define HDR_MAX_EVENTS 80
#define HDR_MODE 84
#define HDR_BLOCK_TIMEOUT 88
#define HDR_ENABLE_OFF 96
#define HDR_DECL_OFF 104
#define HDR_DESC_OFF 112
#define HDR_DATA_OFF 120
#define HDR_COLLECTOR 128
#define HDR_HEARTBEAT 136
#define CNT_OFF 3072u
#define CNT_SIZE 64u
#define N_CNT 16u
#define CNT_MAX (1ull << 48)
#define F_OFD_SETLK_ 37
#define F_OFD_GETLK_ 36
#define DECL_SLOT 512u
#define DECL_TEXT_MAX 504u
#define DESC_SIZE 256u
#define D_COMMIT 0
#define D_EMITTED 8
#define D_FIRST 16
#define D_DISCARDED 24
#define D_CONSUMED 64
#define D_STATE 128
#define D_GENERATION 132
#define D_PID 136
#define D_TID 140
#define D_CLAIM_TS 144
#define D_THREAD_NAME 152
#define MODE_BLOCK 1u
#define MODE_OVERWRITE 2u
#define PAD_ID 0xFFFFu

#define GUARD_NS 200000000ull     /* longest wait for another thread of this process */
#define DECL_WAIT_NS 2000000ull   /* per declaration, for slots other processes write */
#define CLAIM_RETRY_NS 1000000ull /* after a failed claim, emits are dropped (counted) */
#define COUNT_RETRY_NS 1000000ull /* every counter slot held: the emit path waits this */
#define DECL_RETRY_MIN 10000000ull
#define DECL_RETRY_MAX 1000000000ull

enum { ST_NONE, ST_ON, ST_OFF };

_Thread_local ht_writer *ht__tls_w;
static const uint8_t zeros[65536];
volatile uint8_t *ht__enable = (volatile uint8_t *)zeros;

static _Atomic int g_state = ST_NONE;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local int t_in_guard;
static int g_fork_locked;

static uint8_t *g_mm;
static size_t g_map_size;
static int g_lockfd = -1;
static char g_path[4096];
static int g_open_flags = O_RDWR | O_CLOEXEC;   /* the region file (+ O_NOFOLLOW: a BAR) */
static uint32_t g_n_rings, g_ring_size, g_max_events, g_mode;
static uint64_t g_block_timeout, g_decl_off, g_desc_off, g_data_off, g_enable_off;
static uint8_t *g_rings_held;       /* rings this process claimed (their locks are ours) */
static uint32_t g_next_ring;
static _Atomic uint64_t g_next_claim;
static uint8_t *g_skipped;          /* declaration slots left while held by another process */
static uint32_t g_nskipped, g_decl_next;
static _Atomic uint64_t g_pend_lost, g_pend_refused, g_publish_at;
static ht_event *g_busy;            /* events refused for held slots (retried) */
static pthread_key_t g_key;
static _Atomic int g_closed;

static void warn(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t r = write(2, "hypertrace: ", 12);
    r = write(2, buf, (size_t)n);
    (void)r;
}

ht_tsc_clock ht__tsc;

const char *hypertrace_clock(double *max_error_ns)
{
    int tsc = atomic_load_explicit(&ht__tsc.on, memory_order_acquire);
    if (max_error_ns) {
        *max_error_ns = 0.0;
        if (tsc) {
            while (atomic_flag_test_and_set_explicit(&ht__tsc.busy, memory_order_acquire))
                ;                      /* a correction runs: it is short */
            *max_error_ns = ht__tsc.max_err_ns;
            atomic_flag_clear_explicit(&ht__tsc.busy, memory_order_release);
        }
    }
    return tsc ? "tsc" : "monotonic";
}

uint64_t ht_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

size_t ht__cut(const char *s, size_t n)
{
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* --- region words --- */
static inline uint32_t ld32(uint64_t off)
{
    return __atomic_load_n((uint32_t *)(g_mm + off), __ATOMIC_ACQUIRE);
}
static inline uint64_t ld64(uint64_t off)
{
    return __atomic_load_n((uint64_t *)(g_mm + off), __ATOMIC_ACQUIRE);
}
static inline void st32(uint64_t off, uint32_t v)
{
    __atomic_store_n((uint32_t *)(g_mm + off), v, __ATOMIC_RELEASE);
}
static inline void st64(uint64_t off, uint64_t v)
{
    __atomic_store_n((uint64_t *)(g_mm + off), v, __ATOMIC_RELEASE);
}

/* --- exclusion: byte locks between processes, a mutex between threads --- */
static int lock_op(uint64_t off, short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)off;
    fl.l_len = 1;
    fl.l_pid = 0;
    if (g_lockfd < 0)
        return 0;
    return fcntl(g_lockfd, F_OFD_SETLK_, &fl) == 0;
}
static int try_lock(uint64_t off) { return lock_op(off, F_WRLCK); }
static void unlock(uint64_t off) { (void)lock_op(off, F_UNLCK); }

/* Take the process's guard (waiting at most GUARD_NS for another thread, not at all
 * unless `wait`, never when this thread holds it: a signal handler that traces). */
static int guard_enter(int wait)
{
    if (t_in_guard)
        return 0;
    int r;
    if (wait) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(GUARD_NS % 1000000000u);
        ts.tv_sec += (time_t)(GUARD_NS / 1000000000u) + ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
        r = pthread_mutex_timedlock(&g_lock, &ts);
    } else {
        r = pthread_mutex_trylock(&g_lock);
    }
    if (r != 0)
        return 0;
    t_in_guard = 1;
    return 1;
}
static void guard_leave(void)
{
    t_in_guard = 0;
    pthread_mutex_unlock(&g_lock);
}

/* Tracing off for good in this process (events keep their ids: their enable bytes
 * are read from a table of zeros). */
static void turn_off(const char *why)
{
    ht__enable = (volatile uint8_t *)zeros;
    atomic_store(&g_state, ST_OFF);
    if (why)
        warn("tracing disabled: %s", why);
}

/* --- shared loss counters (§11) --- */
static int publish(int wait)
{
    if (!atomic_load(&g_pend_lost) && !atomic_load(&g_pend_refused))
        return 1;
    if (atomic_load(&g_state) != ST_ON || !guard_enter(wait))
        return 0;
    int done = 0;
    uint32_t first = (uint32_t)getpid() + (uint32_t)(ht_clock_ns() >> 10);
    for (uint32_t k = 0; k < N_CNT && !done; k++) {
        uint64_t off = CNT_OFF + CNT_SIZE * ((first + k) % N_CNT);
        if (!try_lock(off))
            continue;
        uint64_t lost = ld64(off), refused = ld64(off + 8);
        if (lost < CNT_MAX && refused < CNT_MAX) {
            lost += atomic_exchange(&g_pend_lost, 0);
            refused += atomic_exchange(&g_pend_refused, 0);
            st64(off, lost);
            st64(off + 8, refused);
            done = 1;
        }
        unlock(off);
    }
    if (!done)
        atomic_store(&g_publish_at, ht_clock_ns() + COUNT_RETRY_NS);
    guard_leave();
    return done;
}

static void count(uint64_t lost, uint64_t refused)
{
    atomic_fetch_add(&g_pend_lost, lost);
    atomic_fetch_add(&g_pend_refused, refused);
    if (ht_clock_ns() >= atomic_load(&g_publish_at))
        publish(1);
}

/* --- the control channel (§9) and the clock mailboxes (§10) ---
 *
 * One connection per process (a forked child opens its own), used by ht_sync_point()
 * and by a detached clock thread: a burst of exchanges when it starts, one every
 * HYPERTRACE_SYNC_INTERVAL seconds, a last burst at exit, then BYE. Nothing here is on
 * the emit path. Every wait is bounded (CTL_TIMEOUT_NS for an answer, MBOX_WAIT_NS for
 * a mailbox); a failure only turns these features off until the next try (at most
 * every CTL_RETRY_NS), with one warning per process. The rings never depend on it.
 *
 * Locks: g_ctl_lock (the connection, the mailbox, sync ids) is never taken while the
 * guard is held, except by attach, before anyone else can use the channel. */
#define HDR_SESSION_ID 24
#define HDR_FLAGS 132
#define FLAG_MAILBOXES 1u
#define MBOX_OFF 1024u
#define MBOX_SIZE 64u
#define N_MBOX 32u
#define M_STATE 0
#define M_PID 4
#define M_REQ 8
#define M_ANS 12
#define M_T1 16
#define M_T4 40
#define M_DONE 48
#define MSG_HELLO 1
#define MSG_HELLO_OK 2
#define MSG_SYNC 3
#define MSG_SYNC_OK 4
#define MSG_CLOCK 5
#define MSG_CLOCK_OK 6
#define MSG_SAMPLE 7
#define MSG_ERROR 8
#define MSG_BYE 9
#define CTL_MAGIC 0x5448u
#define CTL_MAX 4096u
#define CTL_TIMEOUT_NS 5000000000ull    /* an answer, as the Python library waits */
#define CTL_RETRY_NS 1000000000ull      /* a failed connection is tried again after this */
#define CTL_LOCK_NS 6000000000ull       /* longest wait for another thread's exchange */
#define PORT_OPEN_NS 5000000000ull      /* a virtio port busy in other processes */
#define MBOX_WAIT_NS 50000000ull        /* no answer in a mailbox: the host is not serving */
#define CTL_BURST 16
#define SYNC_NAME_MAX 256u              /* bytes of a sync point's name sent (as Python) */
#define SYNC_ARGS_MAX 1000u             /* bytes of its args text, sent and recorded */

enum { CTL_NONE, CTL_UNIX, CTL_PORT };

static int g_ctl_kind = CTL_NONE;
static int g_ctl_found;             /* the port was found by name (ivshmem): checked */
static char g_ctl_path[4096];
static uint8_t g_boot[16];
static pthread_mutex_t g_ctl_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_ctl_fd = -1;
static pid_t g_ctl_pid;             /* the process that opened g_ctl_fd */
static uint32_t g_ctl_req;
static uint64_t g_next_sync = 1;
static int g_ctl_down, g_ctl_warned, g_ctl_errno;
static uint64_t g_ctl_retry_at;
static char g_ctl_err[600];
static int g_use_mbox = 1;          /* HYPERTRACE_CLOCK=socket: never */
static int g_mbox = -1;             /* the mailbox slot this process holds */
static uint32_t g_mbox_req;
static uint64_t g_interval_ns = 1000000000ull;
static _Atomic int g_clk_pid;       /* the process whose clock thread runs */
static _Atomic int g_clk_stop;

static int timed_lock(pthread_mutex_t *m, uint64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t t = (uint64_t)ts.tv_nsec + ns % 1000000000u;
    ts.tv_sec += (time_t)(ns / 1000000000u + t / 1000000000u);
    ts.tv_nsec = (long)(t % 1000000000u);
    return pthread_mutex_timedlock(m, &ts) == 0;
}

static void ctl_failed(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_ctl_err, sizeof g_ctl_err, fmt, ap);
    va_end(ap);
    g_ctl_errno = err;
}

/* the boot id as the Python library reads it: 16 bytes, zeros when unknown */
static void read_boot_id(uint8_t out[16])
{
    memset(out, 0, 16);
    char buf[80];
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, 64);
    close(fd);
    if (n <= 0)
        return;
    uint8_t b[16];
    int k = 0;
    for (ssize_t i = 0; i < n; i++) {
        int c = buf[i], v;
        if (c == '-' || c == '\n' || c == ' ' || c == '\t' || c == '\r')
            continue;
        if (c >= '0' && c <= '9')
            v = c - '0';
        else if (c >= 'a' && c <= 'f')
            v = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v = c - 'A' + 10;
        else
            return;
        if (k >= 32)
            return;
        if (k % 2 == 0)
            b[k / 2] = (uint8_t)(v << 4);
        else
            b[k / 2] |= (uint8_t)v;
        k++;
    }
    if (k == 32)
        memcpy(out, b, 16);
}

static void ctl_drop(void)
{
    if (g_ctl_fd >= 0)
        close(g_ctl_fd);
    g_ctl_fd = -1;
}

/* wait for `ev` on the connection until `deadline`: 1 ready (or hung up), 0 not */
static int io_wait(short ev, uint64_t deadline)
{
    for (;;) {
        uint64_t now = ht_clock_ns();
        if (now >= deadline) {
            ctl_failed(ETIMEDOUT, "the host did not answer within %.0f s",
                       CTL_TIMEOUT_NS / 1e9);
            return 0;
        }
        struct pollfd p = { g_ctl_fd, ev, 0 };
        int r = poll(&p, 1, (int)((deadline - now + 999999) / 1000000));
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR) {
            ctl_failed(errno, "control channel %s: %s", g_ctl_path, strerror(errno));
            return 0;
        }
    }
}

/* the whole of b[0..n) written (out) or read, by `deadline`; 0 (and the channel given
   up, said once) on an error or the host's end of file */
static int io_all(int out, uint8_t *b, size_t n, uint64_t deadline)
{
    while (n) {
        if (!io_wait(out ? POLLOUT : POLLIN, deadline))
            return 0;
        ssize_t k = !out ? read(g_ctl_fd, b, n)
                  : g_ctl_kind == CTL_UNIX ? send(g_ctl_fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT)
                  : write(g_ctl_fd, b, n);
        if (k == 0 && !out) {
            ctl_failed(ECONNRESET, "the host closed the control channel");
            return 0;
        }
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            ctl_failed(errno, "control channel %s: %s", g_ctl_path, strerror(errno));
            return 0;
        }
        b += k;
        n -= (size_t)k;
    }
    return 1;
}

static int ctl_send(uint8_t type, const uint8_t *payload, uint32_t len, uint32_t *rid,
                    uint64_t deadline)
{
    uint8_t buf[12 + CTL_MAX];
    uint16_t magic = CTL_MAGIC;
    uint32_t r = ++g_ctl_req;
    memcpy(buf, &magic, 2);
    buf[2] = 1;
    buf[3] = type;
    memcpy(buf + 4, &r, 4);
    memcpy(buf + 8, &len, 4);
    memcpy(buf + 12, payload, len);
    if (rid)
        *rid = r;
    return io_all(1, buf, 12 + len, deadline);
}

static const char *msg_name(uint8_t t)
{
    static const char *names[] = { "?", "HELLO", "HELLO_OK", "SYNC", "SYNC_OK", "CLOCK",
                                    "CLOCK_OK", "SAMPLE", "ERROR", "BYE" };
    return t < 10 ? names[t] : "?";
}

/* the payload of the reply of type `expect` to request `rid` (at most `cap` bytes kept) */
static int ctl_reply(uint8_t req_type, uint32_t rid, uint8_t expect, uint8_t *body,
                     uint32_t cap, uint32_t *len, uint64_t deadline)
{
    uint8_t h[12], buf[CTL_MAX];
    for (;;) {
        if (!io_all(0, h, 12, deadline))
            return 0;
        uint16_t magic;
        uint32_t rrid, l;
        memcpy(&magic, h, 2);
        memcpy(&rrid, h + 4, 4);
        memcpy(&l, h + 8, 4);
        if (magic != CTL_MAGIC || h[2] != 1 || l > CTL_MAX) {
            ctl_failed(EPROTO, "control channel %s: bad frame from the host", g_ctl_path);
            return 0;
        }
        if (!io_all(0, buf, l, deadline))
            return 0;
        if (h[3] == MSG_ERROR) {
            uint16_t n = 0;
            if (l >= 2)
                memcpy(&n, buf, 2);
            if (n > l - 2)
                n = (uint16_t)(l - 2);
            ctl_failed(EPROTO, "host refused %s: %.*s", msg_name(req_type), (int)n,
                       (const char *)buf + 2);
            return 0;
        }
        if (rrid == rid && h[3] == expect) {
            *len = l < cap ? l : cap;
            memcpy(body, buf, *len);
            return 1;
        }
    }
}

static int ctl_open(void)
{
    if (g_ctl_kind == CTL_UNIX) {
        struct sockaddr_un a;
        memset(&a, 0, sizeof a);
        a.sun_family = AF_UNIX;
        strcpy(a.sun_path, g_ctl_path);     /* its length is checked at attach */
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            ctl_failed(errno, "socket: %s", strerror(errno));
            return 0;
        }
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            ctl_failed(errno, "cannot connect to control socket %s: %s", g_ctl_path,
                       strerror(errno));
            close(fd);
            return 0;
        }
        g_ctl_fd = fd;
        return 1;
    }
    uint64_t deadline = ht_clock_ns() + PORT_OPEN_NS;
    for (;;) {
        int fd = open(g_ctl_path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY
                                  | (g_ctl_found ? O_NOFOLLOW : 0));
        if (fd >= 0) {
            struct stat st;
            if (g_ctl_found && (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode))) {
                close(fd);          /* a port found by its name must be a port */
                ctl_failed(ENODEV, "control port %s is not a character device", g_ctl_path);
                return 0;
            }
            g_ctl_fd = fd;
            return 1;
        }
        if (errno != EBUSY || ht_clock_ns() > deadline) {
            ctl_failed(errno, "cannot open control port %s: %s", g_ctl_path, strerror(errno));
            return 0;
        }
        sleep_ns(500000);
    }
}

static int ctl_hello(void)
{
    uint8_t p[40], body[2 + 64];
    uint64_t pid = (uint64_t)getpid();
    uint32_t rid, len;
    memcpy(p, g_mm + HDR_SESSION_ID, 16);
    memcpy(p + 16, &pid, 8);
    memcpy(p + 24, g_boot, 16);
    uint64_t deadline = ht_clock_ns() + CTL_TIMEOUT_NS;
    return ctl_send(MSG_HELLO, p, sizeof p, &rid, deadline)
           && ctl_reply(MSG_HELLO, rid, MSG_HELLO_OK, body, sizeof body, &len, deadline);
}

/* The host never speaks first: a connection readable before a request is one it
 * closed (or refused with an ERROR). */
static int ctl_stale(void)
{
    if (g_ctl_kind == CTL_PORT)
        return 0;
    struct pollfd p = { g_ctl_fd, POLLIN, 0 };
    return poll(&p, 1, 0) != 0;
}

static void ctl_warn_once(void)
{
    if (!g_ctl_warned) {
        g_ctl_warned = 1;
        warn("control channel unavailable (%s): events are still recorded; clock "
             "exchanges and sync points are not", g_ctl_err);
    }
}

/* A connection of this process, said hello (the caller holds g_ctl_lock). */
static int ctl_ensure(void)
{
    pid_t me = getpid();
    if (g_ctl_fd >= 0 && g_ctl_pid == me) {
        if (!ctl_stale())
            return 1;
        ctl_drop();                 /* the host closed it: open a new one */
    }
    if (g_ctl_down && ht_clock_ns() < g_ctl_retry_at) {
        g_ctl_errno = ENOTCONN;
        return 0;
    }
    if (ctl_open()) {
        g_ctl_pid = me;
        if (ctl_hello()) {
            g_ctl_down = 0;
            return 1;
        }
        ctl_drop();
    }
    ctl_warn_once();
    g_ctl_down = 1;
    g_ctl_retry_at = ht_clock_ns() + CTL_RETRY_NS;
    return 0;
}

/* a failure in the middle of an exchange: the connection is dropped (reopened later) */
static int64_t ctl_broken(void)
{
    ctl_drop();
    ctl_warn_once();
    return -(g_ctl_errno ? g_ctl_errno : EIO);
}

/* a virtio port is open in one process at a time: handed back after each operation */
static void ctl_release(void)
{
    if (g_ctl_kind == CTL_PORT)
        ctl_drop();
}

static ht_event ht__ev_sync = HT_EVENT_INIT(
    "hypertrace_sync(const char *name, uint64_t sync_id, uint64_t t_send, const char *args)",
    "hypertrace_sync", 0);

/* the guest side of a sync point, as the Python library records it */
static void emit_sync(const char *name, uint64_t sid, uint64_t t1, const char *args,
                      size_t al)
{
    int id = ht__id(&ht__ev_sync, 1);
    if (id < 0)
        return;
    unsigned f = 0;
    const char *s0 = name;
    size_t l0 = ht__strlen(&s0, &f);
    uint32_t size = (uint32_t)((43 + l0 + al) & ~(size_t)7);
    ht_writer *w;
    uint8_t *q = ht__begin(&w, id, size, f);
    if (!q)
        return;
    q = ht__put_str(q, s0, l0);
    memcpy(q, &sid, 8);
    memcpy(q + 8, &t1, 8);
    q = ht__put_str(q + 16, args, al);
    (void)q;
    ht__end(w, size);
}

/* One timed round trip (the caller holds g_ctl_lock and has called ctl_ensure): t1,
 * the request, the reply's t2/t3, t4, then the SAMPLE with all four. Returns t4 - t1
 * in ns, or a negative errno. */
static int64_t ctl_timed(uint8_t type, uint64_t sid, const char *name, const char *args)
{
    uint8_t p[16 + 2 + SYNC_NAME_MAX + 2 + SYNC_ARGS_MAX], body[16];
    uint32_t len = 8, rid, bl;
    uint64_t t1 = ht__now();
    if (type == MSG_SYNC) {
        size_t nl = strlen(name), al = strlen(args);
        if (nl > SYNC_NAME_MAX)
            nl = ht__cut(name, SYNC_NAME_MAX);
        if (al > SYNC_ARGS_MAX)
            al = ht__cut(args, SYNC_ARGS_MAX);
        emit_sync(name, sid, t1, args, al);
        uint16_t n16 = (uint16_t)nl, a16 = (uint16_t)al;
        memcpy(p, &sid, 8);
        memcpy(p + 8, &t1, 8);
        memcpy(p + 16, &n16, 2);
        memcpy(p + 18, name, nl);
        memcpy(p + 18 + nl, &a16, 2);
        memcpy(p + 20 + nl, args, al);
        len = (uint32_t)(20 + nl + al);
    } else {
        memcpy(p, &t1, 8);
    }
    uint64_t deadline = ht_clock_ns() + CTL_TIMEOUT_NS;
    if (!ctl_send(type, p, len, &rid, deadline)
        || !ctl_reply(type, rid, type + 1, body, sizeof body, &bl, deadline))
        return ctl_broken();
    uint64_t t4 = ht__now();
    if (bl < 16) {
        ctl_failed(EPROTO, "control channel %s: short %s", g_ctl_path, msg_name(type + 1));
        return ctl_broken();
    }
    uint64_t s[5];
    s[0] = t1;
    memcpy(s + 1, body, 16);
    s[3] = t4;
    s[4] = sid;
    if (!ctl_send(MSG_SAMPLE, (const uint8_t *)s, sizeof s, NULL, ht_clock_ns() + CTL_TIMEOUT_NS))
        return ctl_broken();
    ctl_release();
    return (int64_t)(t4 - t1);
}

/* --- mailboxes: claimed under their byte lock, kept while the process exchanges --- */
static void mbox_claim(void)
{
    if (!g_use_mbox || g_mbox >= 0 || !(ld32(HDR_FLAGS) & FLAG_MAILBOXES))
        return;
    for (uint32_t i = 0; i < N_MBOX; i++) {
        uint64_t o = MBOX_OFF + MBOX_SIZE * i;
        if (!try_lock(o))
            continue;               /* claimed by a live process */
        st32(o + M_PID, (uint32_t)getpid());
        st32(o + M_STATE, 1);
        g_mbox_req = ld32(o + M_REQ);   /* continued, never reset */
        g_mbox = (int)i;
        return;
    }
}

static void mbox_release(void)
{
    if (g_mbox < 0)
        return;
    uint64_t o = MBOX_OFF + MBOX_SIZE * (uint32_t)g_mbox;
    st32(o + M_STATE, 0);
    unlock(o);                      /* after the state, as for a ring */
    g_mbox = -1;
}

/* One exchange in the mailbox: its round trip, or -1 when the host did not answer. */
static int64_t mbox_exchange(void)
{
    uint64_t o = MBOX_OFF + MBOX_SIZE * (uint32_t)g_mbox;
    uint32_t req = g_mbox_req % 0xFFFFFFFFu + 1;   /* 1..2^32-1: 0 means none */
    g_mbox_req = req;
    uint64_t t1 = ht__now(), t4;
    st64(o + M_T1, t1);
    st32(o + M_REQ, req);           /* release: t1 is visible first */
    uint64_t deadline = t1 + MBOX_WAIT_NS;
    for (unsigned n = 1;; n++) {
        t4 = ht__now();
        st64(o + M_T1, t4);         /* kept fresh while the host may read it */
        if (ld32(o + M_ANS) == req) {
            t4 = ht__now();
            break;
        }
        if (!(n & 63) && t4 > deadline)
            return -1;
    }
    st64(o + M_T4, t4);
    st32(o + M_DONE, req);          /* release: after t4 */
    return (int64_t)(t4 - t1);
}

/* One clock exchange (the caller holds g_ctl_lock): the mailbox if the host serves it,
 * else CLOCK over the connection. Its round trip, or a negative errno. */
static int64_t exchange(void)
{
    if (g_mbox >= 0) {
        if (ld32(HDR_FLAGS) & FLAG_MAILBOXES) {
            int64_t r = mbox_exchange();
            if (r >= 0)
                return r;
        }
        mbox_release();             /* the host stopped serving it: the socket from now */
    }
    if (!ctl_ensure())
        return -(g_ctl_errno ? g_ctl_errno : ENOTCONN);
    return ctl_timed(MSG_CLOCK, 0, NULL, NULL);
}

/* between the exchanges of a burst, leave a shared port free for about one round trip */
static void yield_port(int64_t rtt)
{
    if (g_ctl_kind == CTL_PORT && rtt > 0)
        sleep_ns(rtt < 50000000 ? (uint64_t)rtt : 50000000u);
}

static void *clock_main(void *arg)
{
    (void)arg;
    pid_t me = getpid();
    if (!timed_lock(&g_ctl_lock, CTL_LOCK_NS))
        return NULL;
    if (!atomic_load(&g_clk_stop))
        mbox_claim();
    pthread_mutex_unlock(&g_ctl_lock);
    for (int k = 0; k < CTL_BURST && !atomic_load(&g_clk_stop); k++) {
        if (!timed_lock(&g_ctl_lock, CTL_LOCK_NS))
            break;
        int64_t r = atomic_load(&g_clk_stop) ? -1 : exchange();
        pthread_mutex_unlock(&g_ctl_lock);
        if (r < 0)
            break;                  /* tried again at the next interval */
        yield_port(r);
    }
    for (;;) {
        for (uint64_t slept = 0; slept < g_interval_ns;) {
            uint64_t d = g_interval_ns - slept < 50000000u ? g_interval_ns - slept : 50000000u;
            sleep_ns(d);
            slept += d;
            if (atomic_load(&g_clk_stop) || atomic_load(&g_clk_pid) != me)
                return NULL;
        }
        if (!timed_lock(&g_ctl_lock, CTL_LOCK_NS))
            continue;
        if (!atomic_load(&g_clk_stop))
            (void)exchange();
        pthread_mutex_unlock(&g_ctl_lock);
    }
}

/* The clock thread of this process, started once (lazily in a forked child). */
static void clock_start(void)
{
    if (g_ctl_kind == CTL_NONE || atomic_load(&g_clk_stop) || atomic_load(&g_closed))
        return;
    int me = (int)getpid(), old = atomic_load(&g_clk_pid);
    if (old == me || !atomic_compare_exchange_strong(&g_clk_pid, &old, me))
        return;
    pthread_attr_t at;
    pthread_t th;
    sigset_t all, prev;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &prev);  /* the program's signals: not for it */
    int r = pthread_attr_init(&at);
    if (r == 0) {
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        r = pthread_create(&th, &at, clock_main, NULL);
        pthread_attr_destroy(&at);
    }
    pthread_sigmask(SIG_SETMASK, &prev, NULL);
    if (r != 0)
        warn("no clock thread (%s): clock exchanges only at sync points and exit",
             strerror(r));
}

/* At attach (the guard held, nobody else uses the channel yet): the control address
 * of the spec, then the hello, before this process claims any ring. */
static void ctl_setup(const char *addr)
{
    if (!addr)
        return;
    const char *p = NULL;
    int kind = CTL_NONE;
    if (strncmp(addr, "unix:", 5) == 0) {
        p = addr + 5;
        kind = CTL_UNIX;
        if (strlen(p) >= sizeof ((struct sockaddr_un *)0)->sun_path) {
            warn("control channel unavailable (socket path longer than %zu bytes): events "
                 "are still recorded; clock exchanges and sync points are not",
                 sizeof ((struct sockaddr_un *)0)->sun_path - 1);
            return;
        }
    } else if (strncmp(addr, "virtio:", 7) == 0) {
        p = addr + 7;
        kind = CTL_PORT;
    } else {
        warn("control channel unavailable (%s control addresses are not supported by the C "
             "producer: unix:PATH or virtio:DEVICE): events are still recorded; clock "
             "exchanges and sync points are not",
             strncmp(addr, "vsock:", 6) == 0 ? "vsock" : "unknown");
        return;
    }
    if (strlen(p) >= sizeof g_ctl_path || !*p) {
        warn("control channel unavailable (bad control path): events are still recorded");
        return;
    }
    strcpy(g_ctl_path, p);
    g_ctl_kind = kind;
    read_boot_id(g_boot);
    const char *c = getenv("HYPERTRACE_CLOCK");
    g_use_mbox = !(c && strcmp(c, "socket") == 0);
    const char *iv = getenv("HYPERTRACE_SYNC_INTERVAL");
    if (iv && *iv) {
        char *end;
        double s = strtod(iv, &end);
        if (*end || !(s > 0) || s > 86400)
            warn("HYPERTRACE_SYNC_INTERVAL=%s is not a number of seconds: 1 s", iv);
        else
            g_interval_ns = s < 0.001 ? 1000000u : (uint64_t)(s * 1e9);
    }
    if (ctl_ensure())
        ctl_release();
}

int64_t ht_sync_point(const char *name, const char *args)
{
    if (!hypertrace_attach() || g_ctl_kind == CTL_NONE)
        return -ENOTCONN;
    if (atomic_load(&g_closed))
        return -ESHUTDOWN;
    if (!name)
        name = "(null)";
    if (!args)
        args = "[]";
    clock_start();
    if (!timed_lock(&g_ctl_lock, CTL_LOCK_NS))
        return -EBUSY;
    int64_t r;
    if (!ctl_ensure()) {
        r = -(g_ctl_errno ? g_ctl_errno : ENOTCONN);
    } else {
        uint64_t sid = g_next_sync++;
        r = ctl_timed(MSG_SYNC, sid, name, args);
    }
    pthread_mutex_unlock(&g_ctl_lock);
    return r;
}

/* At exit, after the rings: the last burst of exchanges, then BYE with the counts still
 * pending (so that they reach the host), then close. Returns whether the counts were
 * sent (1 when there were none). */
static int ctl_close(uint64_t lost, uint64_t refused)
{
    if (g_ctl_kind == CTL_NONE)
        return 0;
    atomic_store(&g_clk_stop, 1);
    if (!timed_lock(&g_ctl_lock, CTL_LOCK_NS))
        return 0;
    pid_t me = getpid();
    int counts = lost || refused, sent = 0;
    int ours = (g_ctl_kind == CTL_PORT || g_ctl_fd >= 0) && g_ctl_pid == me;
    if ((ours && !g_ctl_down) || g_mbox >= 0) {
        for (int k = 0; k < CTL_BURST / 2; k++) {
            int64_t r = exchange();
            if (r < 0)
                break;
            yield_port(r);
        }
        /* §10: the host takes a sample when it next polls the slot, and skips a slot
         * no longer claimed. An answer to one more request proves it has polled since
         * the last `done` (it looks at `done` before it answers `req`): that fence's
         * own sample is the only one that may be lost. */
        if (g_mbox >= 0 && (ld32(HDR_FLAGS) & FLAG_MAILBOXES))
            (void)mbox_exchange();
    }
    if (counts)
        (void)ctl_ensure();
    if (g_ctl_fd >= 0 && g_ctl_pid == me) {
        uint64_t c[2] = { lost < CNT_MAX - 1 ? lost : CNT_MAX - 1,
                          refused < CNT_MAX - 1 ? refused : CNT_MAX - 1 };
        sent = ctl_send(MSG_BYE, (const uint8_t *)c, counts ? 16 : 0, NULL,
                        ht_clock_ns() + CTL_TIMEOUT_NS);
    }
    ctl_drop();
    mbox_release();
    pthread_mutex_unlock(&g_ctl_lock);
    return sent || !counts;
}

/* in a forked child: the parent's connection and mailbox are not ours */
static void ctl_after_fork(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&g_ctl_lock, &fresh, sizeof fresh);
    if (g_ctl_fd >= 0)
        close(g_ctl_fd);            /* this process's descriptor only */
    g_ctl_fd = -1;
    g_mbox = -1;                    /* its lock is the parent's */
    g_next_sync = ((uint64_t)(uint32_t)getpid() << 32) + 1;   /* unique per process */
    atomic_store(&g_clk_stop, 0);   /* g_clk_pid names the parent: started on next use */
}

/* --- attaching --- */
/* HYPERTRACE_CHANNEL (§0) -> the region file in `path`, or *ivs set and the wanted
 * ivshmem region name in `path` ("" for the first one found); the control address, if
 * a control= option was given (*have_ctl), in `ctl`. */
static int parse_spec(const char *spec, char *path, size_t cap, char *ctl, size_t ctlcap,
                      int *have_ctl, int *ivs, const char **err)
{
    const char *comma = strchr(spec, ',');
    size_t hl = comma ? (size_t)(comma - spec) : strlen(spec);
    char head[4096];
    *have_ctl = 0;
    *ivs = 0;
    if (hl >= sizeof head) {
        *err = "channel spec too long";
        return 0;
    }
    memcpy(head, spec, hl);
    head[hl] = 0;
    /* options: only control=ADDRESS is known (the last one given counts, as in Python) */
    ctl[0] = 0;
    for (const char *o = comma; o; o = strchr(o + 1, ',')) {
        if (strncmp(o + 1, "control=", 8) != 0) {
            *err = "bad channel option (known: control=ADDRESS)";
            return 0;
        }
        const char *v = o + 9, *e = strchr(v, ',');
        size_t vl = e ? (size_t)(e - v) : strlen(v);
        if (vl >= ctlcap) {
            *err = "control address too long";
            return 0;
        }
        memcpy(ctl, v, vl);
        ctl[vl] = 0;
        *have_ctl = 1;
    }
    const char *p;
    if (strncmp(head, "ivshmem", 7) == 0 && (head[7] == 0 || head[7] == ':')) {
        p = head[7] ? head + 8 : "";    /* "ivshmem:" is "ivshmem", as in Python */
        *ivs = 1;
    } else if (strncmp(head, "shm:", 4) == 0) {
        p = head + 4;
        if (!strchr(p, '/')) {
            if (snprintf(path, cap, "/dev/shm/%s", p) >= (int)cap) {
                *err = "channel path too long";
                return 0;
            }
            return 1;
        }
    } else if (strncmp(head, "file:", 5) == 0) {
        p = head + 5;
    } else if (head[0] == '/') {
        p = head;
    } else {
        *err = "unknown channel spec (expected shm:/dev/shm/NAME, ivshmem[:NAME] or a path)";
        return 0;
    }
    if (strlen(p) >= cap) {
        *err = "channel path too long";
        return 0;
    }
    strcpy(path, p);
    return 1;
}

static uint64_t align_up(uint64_t v, uint64_t to) { return (v + to - 1) & ~(to - 1); }

struct hdr {
    uint32_t n_rings, ring_size, max_events, mode;
    uint64_t block_timeout, enable_off, decl_off, desc_off, data_off;
};

/* §2's checks of a header (each field read once: the region may change under us),
 * `size` the bytes behind it (UINT64_MAX: not checked, as a look at one page is). */
static const char *parse_header(const uint8_t *m, uint64_t size, struct hdr *h)
{
    uint64_t magic, region_size, off[4];
    uint16_t major;
    uint32_t n, rs, me, mode;
    memcpy(&magic, m, 8);
    memcpy(&major, m + HDR_ABI_MAJOR, 2);
    memcpy(&region_size, m + HDR_REGION_SIZE, 8);
    memcpy(&n, m + HDR_N_RINGS, 4);
    memcpy(&rs, m + HDR_RING_SIZE, 4);
    memcpy(&me, m + HDR_MAX_EVENTS, 4);
    memcpy(&mode, m + HDR_MODE, 4);
    memcpy(off, m + HDR_ENABLE_OFF, 32);
    if (magic != MAGIC)
        return "bad magic: not a hypertrace region";
    if (major != ABI_MAJOR)
        return "unknown ABI major version";
    if (n < 1 || n > 4096 || rs < PAGE || (rs & (rs - 1)) || rs > (1u << 30) || me < 1
        || me > 65534)
        return "bad sizing fields";
    uint64_t enable_off = PAGE;
    uint64_t decl_off = align_up(enable_off + me, PAGE);
    uint64_t desc_off = align_up(decl_off + (uint64_t)me * DECL_SLOT, PAGE);
    uint64_t data_off = align_up(desc_off + (uint64_t)n * DESC_SIZE, PAGE);
    if (off[0] != enable_off || off[1] != decl_off || off[2] != desc_off || off[3] != data_off)
        return "region offsets disagree with its sizing fields";
    if (region_size < data_off + (uint64_t)n * rs)
        return "region_size too small for its rings";
    if (region_size > size)
        return "region_size exceeds the file";
    if (mode > MODE_OVERWRITE)
        return "unknown mode";
    h->n_rings = n;
    h->ring_size = rs;
    h->max_events = me;
    h->mode = mode;
    memcpy(&h->block_timeout, m + HDR_BLOCK_TIMEOUT, 8);
    h->enable_off = enable_off;
    h->decl_off = decl_off;
    h->desc_off = desc_off;
    h->data_off = data_off;
    return NULL;
}

static const char *check_header(const uint8_t *m, size_t size)
{
    struct hdr h;
    const char *err = parse_header(m, size, &h);
    if (err)
        return err;
    g_n_rings = h.n_rings;
    g_ring_size = h.ring_size;
    g_max_events = h.max_events;
    g_mode = h.mode;
    g_block_timeout = h.block_timeout;
    g_enable_off = h.enable_off;
    g_decl_off = h.decl_off;
    g_desc_off = h.desc_off;
    g_data_off = h.data_off;
    return NULL;
}

/* --- ivshmem: inside a QEMU guest the region is the BAR2 of an ivshmem-plain PCI
 * device, found as the Python library finds it (guest/devices.py): every device
 * 1af4:1110 of /sys/bus/pci/devices, in name order, is enabled if its `enable` reads 0,
 * and its `resource2` taken if its first page holds a region header (with the wanted
 * name); the control port is the virtio-serial port named org.hypertrace.NAME. The
 * guest's sysfs, /dev and the BAR are not trusted: every read is bounded, every file
 * opened with O_NOFOLLOW and checked to be what it should be, names are checked before
 * they make a path, and what is shown in a message is made printable. The roots can be
 * moved at build time (-DHT_SYSFS_PCI=DIR...: the tests' fake trees). */
#ifndef HT_SYSFS_PCI
#define HT_SYSFS_PCI "/sys/bus/pci/devices"
#endif
#ifndef HT_SYSFS_PORTS
#define HT_SYSFS_PORTS "/sys/class/virtio-ports"
#endif
#ifndef HT_DEV_DIR
#define HT_DEV_DIR "/dev"
#endif
#define IVSHMEM_VENDOR "0x1af4"
#define IVSHMEM_DEVICE "0x1110"
#define PORT_PREFIX "org.hypertrace."
#define ATTR_MAX 256            /* bytes of a sysfs attribute read, at most */
#define DIR_MAX 65536u          /* entries of a sysfs directory looked at, at most */
#define FOUND_MAX 8             /* region names listed in an error */
#define NAME_TEXT (3 * HT_NAME_LEN + 1)   /* a header name, non-ASCII bytes as U+FFFD */
#define BAR_OPEN (O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)

/* the whitespace of Python's str.strip(), in ASCII */
static int py_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* A small attribute file, stripped as Python's _read() strips it: its length (the text
 * NUL-terminated in buf), or -1: absent, a symlink, not a regular file, unreadable, or
 * longer than cap - 1 bytes. */
static ssize_t read_attr(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -1;
    struct stat st;
    size_t n = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -1;
    }
    for (;;) {
        ssize_t k = read(fd, buf + n, cap - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            close(fd);
            return -1;
        }
        if (k == 0)
            break;
        n += (size_t)k;
        if (n >= cap) {
            close(fd);
            return -1;
        }
    }
    close(fd);
    size_t a = 0;
    while (a < n && py_space((unsigned char)buf[a]))
        a++;
    while (n > a && py_space((unsigned char)buf[n - 1]))
        n--;
    memmove(buf, buf + a, n - a);
    buf[n - a] = 0;
    return (ssize_t)(n - a);
}

static int attr_is(const char *path, const char *want)
{
    char b[ATTR_MAX];
    ssize_t n = read_attr(path, b, sizeof b);
    return n >= 0 && (size_t)n == strlen(want) && memcmp(b, want, (size_t)n) == 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* The entries of `dir` as Python's sorted(glob(dir/"*")) gives them (hidden ones left
 * out, byte order), at most DIR_MAX; none when it cannot be read. */
static char **list_dir(const char *dir, size_t *count)
{
    char **v = NULL;
    size_t n = 0, cap = 0;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    struct dirent *e;
    while (n < DIR_MAX && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strlen(e->d_name) > NAME_MAX)
            continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            char **nv = realloc(v, nc * sizeof *v);
            if (!nv)
                break;
            v = nv;
            cap = nc;
        }
        if (!(v[n] = strdup(e->d_name)))
            break;
        n++;
    }
    closedir(d);
    if (n)
        qsort(v, n, sizeof *v, cmp_names);
    *count = n;
    return v;
}

/* a header's name as the Python library reads it: the bytes before the first NUL, each
 * non-ASCII one read as U+FFFD (decode("ascii", "replace")) */
static void header_name(const uint8_t *raw, char out[NAME_TEXT])
{
    size_t k = 0;
    for (size_t i = 0; i < HT_NAME_LEN && raw[i]; i++) {
        if (raw[i] < 0x80) {
            out[k++] = (char)raw[i];
        } else {
            memcpy(out + k, "\xef\xbf\xbd", 3);
            k += 3;
        }
    }
    out[k] = 0;
}

/* at most `max` characters of `s` for a one-line message: a control byte, and each
 * non-ASCII character (a lead byte and its continuation bytes), shown as one '?' */
static const char *shown(const char *s, char *out, size_t cap, size_t max)
{
    size_t k = 0;
    int in_char = 0;
    for (; *s && k + 1 < cap && k < max; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x80 && (c & 0xC0) == 0x80 && in_char)
            continue;
        in_char = c >= 0x80;
        out[k++] = c < 0x20 || c >= 0x7f ? '?' : (char)c;
    }
    if (*s && k >= 3 && k + 1 <= cap)
        memcpy(out + k - 3, "...", 3);
    out[k] = 0;
    return out;
}

/* The name of the region in the BAR file `res` (into `name`), or 0 when its first page
 * holds no hypertrace region header (or the file is not a BAR of a page at least). */
static int bar_region(const char *res, char name[NAME_TEXT])
{
    int fd = open(res, BAR_OPEN);
    if (fd < 0)
        return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < (off_t)PAGE) {
        close(fd);
        return 0;
    }
    void *m = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return 0;
    uint8_t h[HDR_HEARTBEAT];       /* a copy: the host may rewrite it meanwhile */
    memcpy(h, m, sizeof h);
    munmap(m, PAGE);
    struct hdr fields;
    if (parse_header(h, UINT64_MAX, &fields) != NULL)
        return 0;
    header_name(h + HT_HDR_NAME, name);
    return 1;
}

/* The resource2 of the ivshmem device holding the region named `want` (NULL: the first
 * one), into `path`; else 0 and the reason in `why`. Every device is looked at (and
 * enabled) before one is chosen, as guest/devices.py does. */
static int find_ivshmem(const char *want, char *path, size_t cap, char *why, size_t wcap)
{
    size_t n, nfound = 0;
    char **devs = list_dir(HT_SYSFS_PCI, &n);
    char found[FOUND_MAX][NAME_TEXT], nm[NAME_TEXT], p[PATH_MAX];
    int chosen = 0;
    for (size_t i = 0; i < n; i++) {
        const char *d = devs[i];
        if (snprintf(p, sizeof p, "%s/%s/vendor", HT_SYSFS_PCI, d) >= (int)sizeof p
            || !attr_is(p, IVSHMEM_VENDOR))
            continue;
        snprintf(p, sizeof p, "%s/%s/device", HT_SYSFS_PCI, d);
        if (!attr_is(p, IVSHMEM_DEVICE))
            continue;
        snprintf(p, sizeof p, "%s/%s/enable", HT_SYSFS_PCI, d);
        if (attr_is(p, "0")) {
            int fd = open(p, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
            struct stat st;
            if (fd >= 0) {
                if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
                    ssize_t r = write(fd, "1", 1);
                    (void)r;        /* not allowed: the mapping below says */
                }
                close(fd);
            }
        }
        snprintf(p, sizeof p, "%s/%s/resource2", HT_SYSFS_PCI, d);
        if (!bar_region(p, nm))
            continue;
        if (!chosen && (!want || strcmp(nm, want) == 0) && strlen(p) < cap) {
            strcpy(path, p);
            chosen = 1;
        }
        if (nfound < FOUND_MAX)
            strcpy(found[nfound], nm);
        nfound++;
    }
    free_names(devs, n);
    if (chosen)
        return 1;
    if (!nfound) {
        snprintf(why, wcap, "no ivshmem-plain device (1af4:1110) with a hypertrace region; "
                 "start QEMU with the options of `hypertrace qemu-args --name NAME`");
        return 0;
    }
    char list[FOUND_MAX * (HT_NAME_LEN + 2) + 8], w[HT_NAME_LEN + 8], s[HT_NAME_LEN + 8];
    size_t k = 0;
    list[0] = 0;
    for (size_t i = 0; i < nfound && i < FOUND_MAX && k < sizeof list; i++)
        k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", i ? ", " : "",
                              shown(found[i], s, sizeof s, HT_NAME_LEN));
    if (nfound > FOUND_MAX && k < sizeof list)
        snprintf(list + k, sizeof list - k, ", ...");
    snprintf(why, wcap, "no hypertrace region named '%s' among ivshmem devices (found: %s)",
             shown(want, w, sizeof w, HT_NAME_LEN + 4), list);
    return 0;
}

/* `p` with every symlink resolved, into `out`: 0 if it does not exist */
static int resolved(const char *p, char *out, size_t cap)
{
    char *r = realpath(p, NULL);
    if (!r)
        return 0;
    size_t l = strlen(r);
    int ok = l < cap;
    if (ok)
        memcpy(out, r, l + 1);
    free(r);
    return ok;
}

/* The device of the virtio-serial port named `name`, as guest/devices.py find_port
 * finds it (/dev/virtio-ports/NAME, else the /dev node of the /sys/class/virtio-ports
 * entry whose `name` it is), resolved: ctl_open opens it without following links and
 * checks it is a character device. 0 if there is none. */
static int find_port(const char *name, char *out, size_t cap)
{
    char p[PATH_MAX], b[ATTR_MAX];
    if (snprintf(p, sizeof p, "%s/virtio-ports/%s", HT_DEV_DIR, name) < (int)sizeof p
        && resolved(p, out, cap))
        return 1;
    size_t n;
    int ok = 0;
    char **ports = list_dir(HT_SYSFS_PORTS, &n);
    for (size_t i = 0; i < n && !ok; i++) {
        ssize_t l = snprintf(p, sizeof p, "%s/%s/name", HT_SYSFS_PORTS, ports[i]) < (int)sizeof p
                    ? read_attr(p, b, sizeof b) : -1;
        if (l < 0 || (size_t)l != strlen(name) || memcmp(b, name, (size_t)l) != 0)
            continue;
        ok = snprintf(p, sizeof p, "%s/%s", HT_DEV_DIR, ports[i]) < (int)sizeof p
             && resolved(p, out, cap);
    }
    free_names(ports, n);
    return ok;
}

/* An ivshmem region's default control address (no control= given): "virtio:" and its
 * port, into ctl; left empty when there is none (as in Python: no control, silently). */
static void ivshmem_control(char *ctl, size_t cap)
{
    uint8_t raw[HT_NAME_LEN];
    char port[sizeof PORT_PREFIX + HT_NAME_LEN], dev[PATH_MAX];
    memcpy(raw, g_mm + HT_HDR_NAME, sizeof raw);    /* read once */
    ctl[0] = 0;
    size_t l = 0;
    for (; l < sizeof raw && raw[l]; l++) {
        unsigned char c = raw[l];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || c == '_' || c == '.' || c == '-')) {
            warn("control channel unavailable (the region's name is not [A-Za-z0-9_.-]: "
                 "no port to look for): events are still recorded; clock exchanges and "
                 "sync points are not");
            return;
        }
    }
    memcpy(port, PORT_PREFIX, sizeof PORT_PREFIX - 1);
    memcpy(port + sizeof PORT_PREFIX - 1, raw, l);
    port[sizeof PORT_PREFIX - 1 + l] = 0;
    if (find_port(port, dev, sizeof dev) && strlen(dev) + 8 <= cap) {
        snprintf(ctl, cap, "virtio:%s", dev);
        g_ctl_found = 1;
    }
}

static void at_exit(void);
static void thread_exit(void *p);
static void fork_prepare(void);
static void fork_parent(void);
static void fork_child(void);

static void attach_locked(void)
{
    const char *spec = getenv("HYPERTRACE_CHANNEL");
    const char *err = NULL;
    char why[4400], ctl[4200];
    int have_ctl, ivs;
    if (!spec || !*spec) {
        turn_off(NULL);                 /* no channel: silently off */
        return;
    }
    ht_tsc_start(&ht__tsc, getenv("HYPERTRACE_TSC"));    /* else clock_gettime */
    if (!parse_spec(spec, g_path, sizeof g_path, ctl, sizeof ctl, &have_ctl, &ivs, &err)) {
        turn_off(err);
        return;
    }
    if (ivs) {
        char want[sizeof g_path];
        strcpy(want, g_path);
        if (!find_ivshmem(want[0] ? want : NULL, g_path, sizeof g_path, why, sizeof why)) {
            turn_off(why);
            return;
        }
        g_open_flags = BAR_OPEN;        /* the BAR file, and the lock descriptors */
    }
    int fd = open(g_path, g_open_flags);
    if (fd < 0) {
        snprintf(why, sizeof why, "cannot open channel %s: %s", g_path, strerror(errno));
        turn_off(why);
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || (ivs && !S_ISREG(st.st_mode)) || st.st_size < (off_t)PAGE
        || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        snprintf(why, sizeof why, "%s is too small to be a hypertrace region", g_path);
        turn_off(why);
        return;
    }
    g_map_size = (size_t)st.st_size;
    /* no MAP_POPULATE: a file that is not a region (a sparse 8 GB one) would be read
       in whole before its header is refused; the pages the producer touches fault in */
    void *m = mmap(NULL, g_map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        snprintf(why, sizeof why, "cannot map channel %s: %s", g_path, strerror(errno));
        turn_off(why);
        return;
    }
    if ((err = check_header(m, g_map_size)) != NULL) {
        munmap(m, g_map_size);
        snprintf(why, sizeof why, "%s: %s", g_path, err);
        turn_off(why);
        return;
    }
    g_mm = m;
    /* an open file description of our own for the locks (a forked child opens its own) */
    g_lockfd = open(g_path, g_open_flags);
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_len = 1;
    if (g_lockfd < 0 || fcntl(g_lockfd, F_OFD_GETLK_, &fl) != 0) {
        snprintf(why, sizeof why, "cannot lock channel %s: %s (no OFD byte locks?)", g_path,
                 strerror(errno));
        turn_off(why);
        return;
    }
    g_rings_held = calloc(g_n_rings, 1);
    g_skipped = calloc(g_max_events, 1);
    if (!g_rings_held || !g_skipped || pthread_key_create(&g_key, thread_exit) != 0) {
        turn_off("out of memory");
        return;
    }
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    atexit(at_exit);
    /* in a QEMU guest, with no control= given: the port named after the region */
    if (ivs && !have_ctl)
        ivshmem_control(ctl, sizeof ctl);
    /* the hello before this process claims any ring (§9) */
    ctl_setup(ctl[0] ? ctl : NULL);
    ht__enable = g_mm + g_enable_off;
    atomic_store(&g_state, ST_ON);
    clock_start();
}

int hypertrace_attach(void)
{
    if (atomic_load(&g_state) == ST_NONE && guard_enter(1)) {
        if (atomic_load(&g_state) == ST_NONE)
            attach_locked();
        guard_leave();
    }
    return atomic_load(&g_state) == ST_ON;
}

/* --- declarations (§3) --- */
enum { D_NONE = -1 };

/* slot j's text into buf (NUL ended); 1 valid, 0 empty, -1 unusable */
static int slot_text(uint32_t j, char *buf, uint32_t *len)
{
    uint64_t off = g_decl_off + (uint64_t)DECL_SLOT * j;
    uint32_t state = ld32(off);
    if (state == 0)
        return 0;
    uint32_t ln = ld32(off + 4);
    if (state != 1 || ln > DECL_TEXT_MAX)
        return -1;
    memcpy(buf, g_mm + off + 8, ln);
    buf[ln] = 0;
    *len = ln;
    return 1;
}

/* the signature part of a declaration text: before the first '"', trailing spaces cut */
static size_t sig_len(const char *t, size_t n)
{
    const char *q = memchr(t, '"', n);
    if (q)
        n = (size_t)(q - t);
    while (n > 0 && t[n - 1] == ' ')
        n--;
    return n;
}

/* the name in a signature: before '(', after the last space (a `counter` property) */
static void sig_name(const char *t, size_t n, const char **name, size_t *nl)
{
    const char *par = memchr(t, '(', n);
    size_t e = par ? (size_t)(par - t) : n;
    size_t b = e;
    while (b > 0 && t[b - 1] != ' ')
        b--;
    *name = t + b;
    *nl = e - b;
}

/* -1 not declared, -3 declared otherwise, else the id: `text` against slot j's */
static int match(const char *slot, uint32_t ln, const char *name, size_t nl, const char *sig,
                 size_t sl)
{
    size_t s2 = sig_len(slot, ln);
    const char *n2;
    size_t nl2;
    sig_name(slot, s2, &n2, &nl2);
    if (nl2 != nl || memcmp(n2, name, nl) != 0)
        return D_NONE;
    return s2 == sl && memcmp(slot, sig, sl) == 0 ? 1 : HT_REFUSED;
}

static void learn_new(void)
{
    char buf[DECL_TEXT_MAX + 1];
    uint32_t ln;
    while (g_decl_next < g_max_events && slot_text(g_decl_next, buf, &ln) != 0)
        g_decl_next++;
}

static int lookup(const char *name, size_t nl, const char *sig, size_t sl)
{
    char buf[DECL_TEXT_MAX + 1];
    uint32_t ln;
    for (uint32_t j = 0; j < g_decl_next; j++) {
        if (slot_text(j, buf, &ln) != 1)
            continue;
        int r = match(buf, ln, name, nl, sig, sl);
        if (r == 1)
            return (int)j;
        if (r == HT_REFUSED)
            return HT_REFUSED;
    }
    return D_NONE;
}

/* slot j for the event: its id, D_NONE to go on with the next slot, HT_REFUSED */
static int try_slot(uint32_t j, const ht_event *ev, size_t tl, const char *name, size_t nl,
                    const char *sig, size_t sl, uint64_t deadline)
{
    uint64_t off = g_decl_off + (uint64_t)DECL_SLOT * j;
    char buf[DECL_TEXT_MAX + 1];
    uint32_t ln;
    for (;;) {
        int st = slot_text(j, buf, &ln);
        if (st == 0 && try_lock(off)) {
            int r = D_NONE;
            if (ld32(off) == 0) {
                memcpy(g_mm + off + 8, ev->text, tl);
                st32(off + 4, (uint32_t)tl);
                g_mm[g_enable_off + j] = ev->disabled ? 0 : 1;
                st32(off, 1);           /* last, release: the text is visible first */
                r = (int)j;
            }
            unlock(off);
            if (r >= 0) {
                if (g_skipped[j]) {
                    g_skipped[j] = 0;
                    g_nskipped--;
                }
                return r;
            }
            continue;                   /* written meanwhile: read it again */
        }
        if (st != 0) {
            if (g_skipped[j]) {
                g_skipped[j] = 0;
                g_nskipped--;
            }
            if (st < 0)
                return D_NONE;
            int r = match(buf, ln, name, nl, sig, sl);
            return r == 1 ? (int)j : r;
        }
        if (ht_clock_ns() >= deadline) {    /* held by another process */
            if (!g_skipped[j]) {
                g_skipped[j] = 1;
                g_nskipped++;
            }
            return D_NONE;
        }
        sleep_ns(200000);
    }
}

static const char *g_why;

static int declare_locked(ht_event *ev)
{
    size_t tl = strlen(ev->text);
    if (tl > DECL_TEXT_MAX) {
        g_why = "declaration longer than 504 bytes";
        return HT_REFUSED;
    }
    size_t sl = sig_len(ev->text, tl);
    const char *name;
    size_t nl;
    sig_name(ev->text, sl, &name, &nl);
    learn_new();
    int r = lookup(name, nl, ev->text, sl);
    if (r == HT_REFUSED) {
        g_why = "the name is already declared in this channel with another signature";
        return r;
    }
    if (r >= 0)
        return r;
    uint64_t deadline = ht_clock_ns() + DECL_WAIT_NS;
    /* slots left earlier because they were held: first */
    for (uint32_t j = 0; g_nskipped && j < g_max_events; j++) {
        if (!g_skipped[j])
            continue;
        r = try_slot(j, ev, tl, name, nl, ev->text, sl, deadline);
        if (r != D_NONE)
            goto out;
    }
    while (g_decl_next < g_max_events) {
        uint32_t j = g_decl_next;
        r = try_slot(j, ev, tl, name, nl, ev->text, sl, deadline);
        g_decl_next = j + 1;
        if (r != D_NONE)
            goto out;
    }
    if (g_nskipped) {
        g_why = "the empty declaration slots left are held by other processes (tried again "
                "later; its records are counted as lost meanwhile)";
        return HT_BUSY;
    }
    g_why = "the declaration table is full";
    return HT_REFUSED;
out:
    if (r == HT_REFUSED)
        g_why = "the name is already declared in this channel with another signature";
    return r;
}

int ht__declare(ht_event *ev, int emitting)
{
    if (atomic_load(&g_state) == ST_NONE)
        hypertrace_attach();
    if (atomic_load(&g_state) != ST_ON) {
        atomic_store(&ev->id, HT_OFF);
        return -1;
    }
    int id = atomic_load(&ev->id);
    if (id >= 0)
        return id;
    uint64_t now = ht_clock_ns();
    if (id == HT_BUSY && now < ev->retry_ns) {
        if (emitting && !ev->disabled)
            count(1, 0);
        return -1;
    }
    if (!guard_enter(1)) {
        if (emitting && !ev->disabled)
            count(1, 0);
        return -1;
    }
    id = atomic_load(&ev->id);
    if (id < 0 && id >= HT_BUSY) {
        int was_busy = id == HT_BUSY;
        id = declare_locked(ev);
        if (id == HT_BUSY) {
            if (!ev->backoff_ns) {
                ev->next = g_busy;
                g_busy = ev;
                ev->backoff_ns = DECL_RETRY_MIN;
                warn("event %s not declared yet: %s", ev->name, g_why);
            } else if (ev->backoff_ns < DECL_RETRY_MAX) {
                ev->backoff_ns *= 2;
            }
            ev->retry_ns = now + ev->backoff_ns;
            atomic_store(&ev->id, HT_BUSY);
        } else if (id == HT_REFUSED) {
            atomic_store(&ev->id, HT_REFUSED);
            warn("event %s disabled: %s", ev->name, g_why);
        } else {
            atomic_store_explicit(&ev->id, id, memory_order_release);
        }
        (void)was_busy;
    }
    guard_leave();
    if (id == HT_REFUSED)
        count(0, 1);
    else if (id == HT_BUSY && emitting && !ev->disabled)
        count(1, 0);
    return id >= 0 ? id : -1;
}

/* --- rings (§5) --- */
static ht_writer *claim_free(void)
{
    uint32_t n = g_n_rings;
    uint32_t first = g_next_ring % n;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = (first + k) % n;
        uint64_t d = g_desc_off + (uint64_t)DESC_SIZE * i;
        if (g_rings_held[i] || ld32(d + D_STATE) != 0 || ld64(d + D_CONSUMED) != 0)
            continue;
        if (!try_lock(d))
            continue;                   /* another process is claiming it, or holds it */
        if (ld32(d + D_STATE) != 0 || ld64(d + D_CONSUMED) != 0) {
            unlock(d);
            continue;
        }
        ht_writer *w = calloc(1, sizeof *w);
        if (!w) {
            unlock(d);
            return NULL;
        }
        uint32_t gen = ld32(d + D_GENERATION) + 1;
        char name[16] = { 0 };
        prctl(PR_GET_NAME, (unsigned long)name, 0, 0, 0);
        st64(d + D_COMMIT, 0);
        st64(d + D_EMITTED, 0);
        st64(d + D_FIRST, 0);
        st64(d + D_DISCARDED, 0);
        st64(d + D_CONSUMED, 0);
        st32(d + D_GENERATION, gen);
        st32(d + D_PID, (uint32_t)getpid());
        st32(d + D_TID, (uint32_t)syscall(SYS_gettid));
        st64(d + D_CLAIM_TS, ht__now());
        memcpy(g_mm + d + D_THREAD_NAME, name, 16);
        st32(d + D_STATE, 1);           /* last (release) */
        g_rings_held[i] = 1;            /* the lock stays ours while the claim lasts */
        g_next_ring = i + 1;
        w->data = g_mm + g_data_off + (uint64_t)g_ring_size * i;
        w->pos = 0;
        w->size = g_ring_size;
        w->lim = g_ring_size;
        w->mask = g_ring_size - 1;
        w->commit = (_Atomic uint64_t *)(void *)(g_mm + d + D_COMMIT);
        w->desc = g_mm + d;
        w->index = i;
        w->generation = gen;
        w->pid = (uint32_t)getpid();
        w->mode = g_mode;
        w->blocked_heartbeat = UINT64_MAX;
        return w;
    }
    return NULL;
}

/* No ring free: hand the rings of vanished producers (lock free) to the collector. */
static void reap_dead(void)
{
    for (uint32_t i = 0; i < g_n_rings; i++) {
        uint64_t d = g_desc_off + (uint64_t)DESC_SIZE * i;
        if (g_rings_held[i] || ld32(d + D_STATE) != 1)
            continue;
        if (try_lock(d)) {
            if (ld32(d + D_STATE) == 1)
                st32(d + D_STATE, 2);
            unlock(d);
        }
    }
}

ht_writer *ht__claim(void)
{
    uint64_t now = ht_clock_ns();
    ht_writer *w = NULL;
    if (atomic_load(&g_state) != ST_ON)
        return NULL;
    if (!atomic_load(&g_closed) && now >= atomic_load(&g_next_claim) && guard_enter(1)) {
        w = claim_free();
        if (!w)
            reap_dead();
        guard_leave();
    }
    if (g_ctl_kind != CTL_NONE && atomic_load(&g_clk_pid) != (int)getpid())
        clock_start();              /* a forked child's own clock thread */
    if (!w) {
        atomic_store(&g_next_claim, now + CLAIM_RETRY_NS);
        count(1, 0);
        return NULL;
    }
    ht__tls_w = w;
    pthread_setspecific(g_key, w);
    return w;
}

static void set_lim(ht_writer *w)
{
    uint64_t lap_end = (w->pos | w->mask) + 1;
    uint64_t t = w->tail + w->size;
    w->lim = lap_end < t ? lap_end : t;
}

static uint64_t consumed(ht_writer *w, uint64_t pos)
{
    uint64_t c = __atomic_load_n((uint64_t *)(w->desc + D_CONSUMED), __ATOMIC_ACQUIRE);
    /* outside [pos - size, pos] is nonsense: treat the ring as full (wrapping arithmetic) */
    return c <= pos && pos - c <= w->size ? c : pos - w->size;
}

static void block(ht_writer *w, uint64_t end)
{
    uint64_t deadline = ht_clock_ns() + g_block_timeout;
    uint64_t delay = 20000;
    while (end - w->tail > w->size) {
        uint64_t hb = ld64(HDR_HEARTBEAT);
        if (ld32(HDR_COLLECTOR) != 1 || hb == w->blocked_heartbeat)
            return;         /* no collector, or it stalled through our whole last wait */
        if (ht_clock_ns() >= deadline) {
            w->blocked_heartbeat = hb;
            return;
        }
        sleep_ns(delay);
        delay = delay * 2 < 1000000 ? delay * 2 : 1000000;
        w->tail = consumed(w, w->pos);
    }
    w->blocked_heartbeat = UINT64_MAX;
}

static void overwrite(ht_writer *w, uint64_t end)
{
    uint64_t first = w->tail;
    if (end - first <= w->size)
        return;
    uint64_t goal = end + (w->size >> 3);   /* an eighth more: this path runs rarely */
    while (goal - first > w->size && first < w->pos) {
        const uint8_t *o = w->data + (first & w->mask);
        uint32_t sz = (uint32_t)(o[2] | o[3] << 8) & 0xFFF8u;
        first += sz ? sz : w->size;
    }
    if (first > w->pos)
        first = w->pos;
    w->tail = first;
    __atomic_store_n((uint64_t *)(w->desc + D_FIRST), first, __ATOMIC_RELEASE);
    /* `first` before the new bytes (§6): a release store does not order later stores
     * (ARM may show them first), the fence does (dmb ish; nothing on x86) */
    atomic_thread_fence(memory_order_release);
}

static uint8_t *drop(ht_writer *w)
{
    w->seq++;
    w->discarded++;
    __atomic_store_n((uint64_t *)(w->desc + D_EMITTED), w->seq, __ATOMIC_RELAXED);
    __atomic_store_n((uint64_t *)(w->desc + D_DISCARDED), w->discarded, __ATOMIC_RELAXED);
    return NULL;
}

uint8_t *ht__make_room(ht_writer *w, uint32_t size)
{
    uint64_t pos = w->pos;
    uint64_t off = pos & w->mask;
    uint64_t pad = off + size > w->size ? w->size - off : 0;
    uint64_t need = pad + size;
    if (size > w->size >> 1)
        return drop(w);             /* a record larger than half the ring never fits */
    if (w->mode == MODE_OVERWRITE) {
        overwrite(w, pos + need);
    } else if (pos + need - w->tail > w->size) {
        w->tail = consumed(w, pos);
        if (pos + need - w->tail > w->size && w->mode == MODE_BLOCK)
            block(w, pos + need);
        if (pos + need - w->tail > w->size)
            return drop(w);
    }
    if (pad) {
        uint16_t h[2] = { PAD_ID, (uint16_t)pad };
        memcpy(w->data + off, h, 4);
        pos += pad;
        w->pos = pos;
    }
    set_lim(w);
    return w->data + (pos & w->mask);
}

static void release(ht_writer *w)
{
    if (w->released || w->pid != (uint32_t)getpid() || atomic_load(&g_state) != ST_ON)
        return;                     /* a forked child: the parent's ring, not ours */
    w->released = 1;
    uint64_t d = (uint64_t)(w->desc - g_mm);
    st64(d + D_EMITTED, w->seq);
    if (ld32(d + D_STATE) == 1 && ld32(d + D_GENERATION) == w->generation)
        st32(d + D_STATE, 2);
    int g = guard_enter(1);
    unlock(d);                      /* after the state: the lock says "owner alive" */
    g_rings_held[w->index] = 0;
    if (g)
        guard_leave();
}

static void thread_exit(void *p)
{
    ht_writer *w = p;
    release(w);
    if (ht__tls_w == w)
        ht__tls_w = NULL;
    free(w);
}

void hypertrace_release_thread(void)
{
    ht_writer *w = ht__tls_w;
    if (!w)
        return;
    ht__tls_w = NULL;
    pthread_setspecific(g_key, NULL);
    release(w);
    free(w);
}

static void at_exit(void)
{
    if (atomic_load(&g_state) != ST_ON)
        return;
    hypertrace_release_thread();
    atomic_store(&g_closed, 1);     /* later emits of this thread are counted lost */
    /* declarations still waiting for a held slot: one last try, then refused */
    for (ht_event *ev = g_busy; ev; ev = ev->next) {
        if (atomic_load(&ev->id) == HT_BUSY) {
            ev->retry_ns = 0;
            ht__declare(ev, 0);
            if (atomic_load(&ev->id) == HT_BUSY) {
                atomic_store(&ev->id, HT_REFUSED);
                count(0, 1);
            }
        }
    }
    /* counts every counter slot refused: in the BYE, else tried again for 10 ms */
    publish(1);
    uint64_t lost = atomic_exchange(&g_pend_lost, 0);
    uint64_t refused = atomic_exchange(&g_pend_refused, 0);
    if (!ctl_close(lost, refused)) {
        atomic_fetch_add(&g_pend_lost, lost);
        atomic_fetch_add(&g_pend_refused, refused);
    }
    for (int k = 0; k < 10 && !publish(1); k++)
        sleep_ns(1000000);
}

/* --- fork: the child forgets the parent's rings and locks --- */
static void fork_prepare(void) { g_fork_locked = guard_enter(1); }

static void fork_parent(void)
{
    if (g_fork_locked)
        guard_leave();
}

static void fork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&g_lock, &fresh, sizeof fresh);
    t_in_guard = 0;
    ht__tls_w = NULL;               /* the parent's, released by the parent */
    ctl_after_fork();
    if (atomic_load(&g_state) != ST_ON)
        return;
    pthread_setspecific(g_key, NULL);
    memset(g_rings_held, 0, g_n_rings);
    atomic_store(&g_pend_lost, 0);  /* the parent's counts: the parent publishes them */
    atomic_store(&g_pend_refused, 0);
    atomic_store(&g_next_claim, 0);
    atomic_store(&g_closed, 0);
    int old = g_lockfd;
    g_lockfd = -1;
    close(old);                     /* the parent's locks must die with the parent */
    g_lockfd = open(g_path, g_open_flags);
    if (g_lockfd < 0)
        turn_off("forked child: cannot reopen the channel for its locks");
}
