/*
 * Part of the virtual board's preload library (rmkit.vboard.ram compiles it with esp32_ram.c): a garbage
 * collection stops every other thread of the board, as it does on an ESP32.
 *
 * Why. The ESP32 port runs MicroPython's threads under a global interpreter lock (MICROPY_PY_THREAD_GIL 1 in
 * ports/esp32/mpconfigport.h, v1.24.0, v1.26.1 and v1.28.0 alike), and a collection runs with it held: no other
 * thread runs Python or touches the heap until the collection is over (with a GIL py/gc.c does not even have a
 * GC mutex: GC_ENTER is empty). The unix port has no GIL (MICROPY_PY_THREAD_GIL = 0, ports/unix/mpconfigport.mk,
 * v1.26.1 and v1.28.0): its collector asks
 * each thread, by a signal, to scan its own stack (mp_thread_gc_others, ports/unix/mpthreadport.c), and the
 * other threads run on while it marks. A thread that, between the collector's scan of the root pointers and
 * the scan of its own stack, moves its only reference to an object into an object already scanned, has that
 * object freed while it still uses it (the port's comment on mp_thread_gc_others admits such races). Seen here
 * as a module global that resolved to another function of the module, once, while a thread collected in a
 * loop during boot. A board cannot do that; the virtual board must not either, or it fails where a board works.
 *
 * How. The collector (gc_collect, interposed by esp32_ram.c) stops every other thread of the process before
 * the collection starts, with a signal (PARK_SIGNAL) whose handler waits until the collection is over, and
 * lets them go after it. The collection itself is the unix port's: its own signal (SIGRTMIN+5) still reaches
 * each parked thread, and scans the stack the thread is parked on, with the registers it was stopped with.
 * A thread is not parked while it holds something the collector will need: the GC's mutex (inside gc_alloc,
 * gc_free, ...: esp32_ram.c brackets them), the port's atomic section (which guards the thread list the
 * collector walks), the C library's allocator (a finaliser frees memory) or the RAM model's lock; it parks as
 * it leaves (world_crit_leave). A thread about to wait for a lock holds nothing and may park while it waits
 * (world_crit_suspend). Threads are found in /proc/self/task, again after each round, so that one created
 * meanwhile is stopped too.
 *
 * Also: the collector waits for each thread's scan with sem_wait(), which a signal handler interrupts
 * (EINTR: the port's SIGINT handler is installed without SA_RESTART, ports/unix/unix_mphal.c), and
 * mp_thread_gc_others does not retry: the collection would sweep while a thread still scans. A board has no such
 * wait; sem_wait is retried here.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <linux/futex.h>
#include <semaphore.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "gc_world.h"

#define PARK_SIGNAL (SIGRTMIN + 8)  /* the unix port uses +5 (its collector) and +6 (thread exit, Android) */
#define MAX_THREADS 256
/* A thread that has not stopped after this long is reported (the board's log shows a FAULT, which fails a
 * test) and the collection goes ahead: it cannot happen unless a thread waits inside a critical part. A paced
 * board's process is stopped by the host (SIGSTOP) for a pause of about 0.1 s at a time; seconds are room. */
#define STOP_PATIENCE_S 5

static __thread volatile int crit __attribute__((tls_model("initial-exec")));
static __thread volatile sig_atomic_t park_pending __attribute__((tls_model("initial-exec")));
static __thread volatile sig_atomic_t parking __attribute__((tls_model("initial-exec")));
static __thread volatile sig_atomic_t park_again __attribute__((tls_model("initial-exec")));
static __thread volatile sig_atomic_t ctrl_c_deferred __attribute__((tls_model("initial-exec")));
static void (*kbd_handler)(int);              /* MicroPython's SIGINT handler */
static void (*schedule_kbd_interrupt)(void);  /* its mp_sched_keyboard_interrupt() */
static __thread int my_slot __attribute__((tls_model("initial-exec")));  /* index + 1; 0: none yet */

static struct {
    int epoch;                  /* odd while the world is stopped; parked threads wait for it to change */
    int acks;                   /* bumped by each thread that parks: the collector's futex word */
    int depth;                  /* world_stop() nested in the collector (a collection inside an allocation) */
    int inside;                 /* threads inside park() now: world_start() lets them out before it returns */
    int others;                 /* threads started (pthread_create) and not yet returned: none, nothing to stop */
    bool alone;                 /* this stop found no other thread */
    struct {
        int tid;                /* claimed by the thread itself (0: free); freed by the collector once it is gone */
        int acked;              /* the epoch it last parked in */
    } slots[MAX_THREADS];
    pid_t signalled[MAX_THREADS];  /* the collector's own: threads signalled in this stop (0: gone) */
    int count;
    unsigned long stops, parked;
} world;

static long futex(int *word, int op, int value, const struct timespec *timeout) {
    return syscall(SYS_futex, word, op, value, timeout, NULL, 0);
}

static pid_t my_tid(void) {
    return (pid_t)syscall(SYS_gettid);
}

/* ---- the stopped thread's side ------------------------------------------------------------------- */

/* Records that this thread is parked in `epoch`, in a slot of its own that it claims the first time. */
static void ack(int epoch, pid_t me) {
    int slot = my_slot - 1;
    if (slot < 0 || __atomic_load_n(&world.slots[slot].tid, __ATOMIC_ACQUIRE) != me) {
        slot = -1;
        for (int i = 0; i < MAX_THREADS && slot < 0; i++) {
            int free_tid = 0;
            if (__atomic_compare_exchange_n(&world.slots[i].tid, &free_tid, me, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                slot = i;
            }
        }
        if (slot < 0) {
            return;  /* more threads than slots: the collector reports it */
        }
        my_slot = slot + 1;
    }
    __atomic_store_n(&world.slots[slot].acked, epoch, __ATOMIC_RELEASE);
    __atomic_add_fetch(&world.acks, 1, __ATOMIC_ACQ_REL);
    futex(&world.acks, FUTEX_WAKE_PRIVATE, 1, NULL);
}

/* Parks the calling thread until the world runs again. Re-entered from a signal handler (the collector's scan
 * signal arrives while the thread is parked; the next stop's signal may arrive just as it leaves), it only
 * says so: the outer call parks again for a stop that began meanwhile. */
static void park(void) {
    if (parking) {
        park_again = 1;
        return;
    }
    parking = 1;
    __atomic_add_fetch(&world.inside, 1, __ATOMIC_ACQ_REL);
    pid_t me = my_tid();
    for (;;) {
        park_again = 0;
        int epoch = __atomic_load_n(&world.epoch, __ATOMIC_ACQUIRE);
        if ((epoch & 1) == 0) {
            parking = 0;  /* from here on a stop's signal parks in a call of its own */
            if (!park_again) {
                break;
            }
            parking = 1;  /* one came while the epoch was read: its stop began after that */
            continue;
        }
        ack(epoch, me);
        while (__atomic_load_n(&world.epoch, __ATOMIC_ACQUIRE) == epoch) {
            futex(&world.epoch, FUTEX_WAIT_PRIVATE, epoch, NULL);  /* EINTR: the collector's scan signal */
        }
    }
    if (__atomic_sub_fetch(&world.inside, 1, __ATOMIC_ACQ_REL) == 0) {
        futex(&world.inside, FUTEX_WAKE_PRIVATE, 1, NULL);
    }
}

static void deliver_deferred_ctrl_c(void);

static void on_park_signal(int signo) {
    (void)signo;
    int saved = errno;
    if (crit > 0) {
        park_pending = 1;  /* parks in world_crit_leave() */
    } else {
        park();
        deliver_deferred_ctrl_c();
    }
    errno = saved;
}

/* The unix port's SIGINT handler raises KeyboardInterrupt by a longjmp out of wherever the thread is
 * (MICROPY_ASYNC_KBD_INTR, ports/unix/unix_mphal.c sighandler): out of a park, which would leave the thread
 * running while the collector counts it stopped, or out of a critical part, with its lock held. There it
 * waits until the thread is out (deliver_deferred_ctrl_c); everywhere else it is the port's. */
static void on_sigint(int signo) {
    if (crit > 0 || parking) {
        ctrl_c_deferred = 1;
        return;
    }
    kbd_handler(signo);
}

/* A Ctrl-C that arrived inside a critical part or while parked: raised at the main thread's next bytecode, as
 * an ESP32 raises every Ctrl-C (mp_sched_keyboard_interrupt from the UART's handler). */
static void deliver_deferred_ctrl_c(void) {
    if (ctrl_c_deferred && crit == 0 && !parking) {
        ctrl_c_deferred = 0;
        if (schedule_kbd_interrupt != NULL) {
            schedule_kbd_interrupt();
        } else {
            syscall(SYS_tgkill, getpid(), my_tid(), SIGINT);
        }
    }
}

void world_crit_enter(void) {
    crit = crit + 1;
}

void world_crit_leave(void) {
    crit = crit - 1;
    if (crit == 0 && park_pending) {
        park_pending = 0;
        park();
    }
    deliver_deferred_ctrl_c();
}

int world_crit_suspend(void) {
    int saved = crit;
    crit = 0;
    if (park_pending) {
        park_pending = 0;
        park();
    }
    return saved;
}

void world_crit_resume(int saved) {
    crit = saved;
}

/* ---- the collector's side ------------------------------------------------------------------------ */

static bool signalled(pid_t tid) {
    for (int i = 0; i < world.count; i++) {
        if (world.signalled[i] == tid) {
            return true;
        }
    }
    return false;
}

static bool gone(pid_t tid) {
    return syscall(SYS_tgkill, getpid(), tid, 0) != 0 && errno == ESRCH;
}

static bool parked_in(pid_t tid, int epoch) {
    for (int i = 0; i < MAX_THREADS; i++) {
        if (__atomic_load_n(&world.slots[i].tid, __ATOMIC_ACQUIRE) == tid) {
            return __atomic_load_n(&world.slots[i].acked, __ATOMIC_ACQUIRE) == epoch;
        }
    }
    return false;
}

/* Slots of threads that ended are free again (a thread id the kernel gives out again finds its slot). */
static void free_slots_of_gone_threads(void) {
    for (int i = 0; i < MAX_THREADS; i++) {
        int tid = __atomic_load_n(&world.slots[i].tid, __ATOMIC_ACQUIRE);
        if (tid != 0 && gone(tid)) {
            __atomic_compare_exchange_n(&world.slots[i].tid, &tid, 0, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        }
    }
}

/* Signals every thread of the process not yet signalled in this stop; how many it signalled. */
static int signal_new_threads(pid_t me) {
    int fd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    int added = 0;
    char buf[4096] __attribute__((aligned(8)));
    long n;
    while ((n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0) {
        for (long at = 0; at < n;) {
            struct {
                uint64_t ino;
                int64_t off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *entry = (void *)(buf + at);
            at += entry->reclen;
            if (entry->name[0] < '0' || entry->name[0] > '9') {
                continue;
            }
            pid_t tid = (pid_t)strtol(entry->name, NULL, 10);
            if (tid == me || signalled(tid) || world.count == MAX_THREADS) {
                continue;
            }
            world.signalled[world.count++] = tid;
            if (syscall(SYS_tgkill, getpid(), tid, PARK_SIGNAL) != 0) {
                world.signalled[world.count - 1] = 0;  /* gone meanwhile */
            }
            added++;
        }
    }
    close(fd);
    return added;
}

static double seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec + now.tv_nsec / 1e9;
}

static void wait_for_parked(int epoch) {
    double deadline = seconds() + STOP_PATIENCE_S;
    const struct timespec tick = {0, 1000000};
    for (;;) {
        int seen = __atomic_load_n(&world.acks, __ATOMIC_ACQUIRE);
        pid_t late = 0;
        for (int i = 0; i < world.count; i++) {
            pid_t tid = world.signalled[i];
            if (tid == 0 || parked_in(tid, epoch)) {
                continue;
            }
            if (gone(tid)) {
                world.signalled[i] = 0;  /* it ended (or was ending, with signals blocked) */
                continue;
            }
            late = tid;
        }
        if (late == 0) {
            return;
        }
        if (seconds() > deadline) {
            char path[64], where[64] = "?";
            snprintf(path, sizeof path, "/proc/self/task/%d/wchan", (int)late);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                ssize_t n = read(fd, where, sizeof where - 1);
                where[n > 0 ? n : 0] = '\0';
                close(fd);
            }
            char line[256];
            int len = snprintf(line, sizeof line, "vboard FAULT: thread %d did not stop for a garbage collection "
                               "in %d s (it waits in %s); collecting anyway (gc_world.c)\r\n", (int)late,
                               STOP_PATIENCE_S, where);
            if (write(2, line, (size_t)len) < 0) {
                /* nowhere to say it */
            }
            return;
        }
        futex(&world.acks, FUTEX_WAIT_PRIVATE, seen, &tick);
    }
}

void world_stop(void) {
    if (world.depth++ > 0) {
        return;
    }
    world.alone = __atomic_load_n(&world.others, __ATOMIC_ACQUIRE) == 0;
    if (world.alone) {
        world.stops++;  /* only this thread, which could start another: nothing to stop, no /proc to read */
        return;
    }
    world.count = 0;
    free_slots_of_gone_threads();
    int epoch = __atomic_add_fetch(&world.epoch, 1, __ATOMIC_ACQ_REL);  /* odd: stopped */
    pid_t me = my_tid();
    while (signal_new_threads(me) > 0) {
        wait_for_parked(epoch);
    }
    world.stops++;
    world.parked += (unsigned long)world.count;
}

void world_start(void) {
    if (--world.depth > 0 || world.alone) {
        return;
    }
    __atomic_add_fetch(&world.epoch, 1, __ATOMIC_ACQ_REL);  /* even: running */
    futex(&world.epoch, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
    /* Fairness: the stopped threads get going before the collector goes on. A thread that collects in a loop
     * would otherwise stop the world again before they ever ran: they would starve, where on a board the GIL
     * is handed over between two collections. (Bounded: a thread the host does not schedule soon is left.) */
    const struct timespec tick = {0, 1000000};
    for (int waited = 0; waited < 10; waited++) {
        int inside = __atomic_load_n(&world.inside, __ATOMIC_ACQUIRE);
        if (inside == 0) {
            break;
        }
        futex(&world.inside, FUTEX_WAIT_PRIVATE, inside, &tick);
    }
}

void world_counts(unsigned long *stops, unsigned long *parked) {
    *stops = world.stops;
    *parked = world.parked;
}

__attribute__((constructor)) static void install_park_handler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_park_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);  /* the collector's scan signal must reach a parked thread */
    sigaction(PARK_SIGNAL, &sa, NULL);
}

/* ---- the C library, interposed ------------------------------------------------------------------- */

/* A thread inside the allocator holds its arena's lock, which a finaliser's free() may need. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

void *malloc(size_t n) {
    world_crit_enter();
    void *p = __libc_malloc(n);
    world_crit_leave();
    return p;
}

void *calloc(size_t n, size_t size) {
    world_crit_enter();
    void *p = __libc_calloc(n, size);
    world_crit_leave();
    return p;
}

void *realloc(void *old, size_t n) {
    world_crit_enter();
    void *p = __libc_realloc(old, n);
    world_crit_leave();
    return p;
}

void free(void *p) {
    world_crit_enter();
    __libc_free(p);
    world_crit_leave();
}

int sigaction(int signum, const struct sigaction *act, struct sigaction *old) {
    static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
    if (real_sigaction == NULL) {
        real_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    }
    if (signum != SIGINT || act == NULL || (act->sa_flags & SA_SIGINFO) || act->sa_handler == SIG_DFL ||
        act->sa_handler == SIG_IGN || act->sa_handler == on_sigint) {
        return real_sigaction(signum, act, old);
    }
    if (act->sa_handler != kbd_handler) {
        Dl_info where;
        void *library = NULL;
        if (dladdr((void *)act->sa_handler, &where) && where.dli_fname != NULL) {
            library = dlopen(where.dli_fname, RTLD_NOLOAD | RTLD_LAZY);
        }
        schedule_kbd_interrupt = library ? (void (*)(void))dlsym(library, "mp_sched_keyboard_interrupt") : NULL;
        kbd_handler = act->sa_handler;
    }
    struct sigaction wrapped = *act;
    wrapped.sa_handler = on_sigint;
    return real_sigaction(signum, &wrapped, old);
}

/* Threads are counted from their start to the return of their function; one that ends otherwise
 * (pthread_exit, cancellation) stays counted, and collections then look in /proc for nothing: never unsafe. */
struct counted_start {
    void *(*fn)(void *);
    void *arg;
};

static void *run_counted(void *start) {
    struct counted_start what = *(struct counted_start *)start;
    __libc_free(start);
    void *result = what.fn(what.arg);
    __atomic_sub_fetch(&world.others, 1, __ATOMIC_ACQ_REL);
    return result;
}

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) {
    static int (*real_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
    if (real_create == NULL) {
        real_create = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))dlsym(
            RTLD_NEXT, "pthread_create");
    }
    struct counted_start *start = __libc_malloc(sizeof *start);
    if (start == NULL) {
        return EAGAIN;
    }
    start->fn = fn;
    start->arg = arg;
    __atomic_add_fetch(&world.others, 1, __ATOMIC_ACQ_REL);
    int r = real_create(thread, attr, run_counted, start);
    if (r != 0) {
        __atomic_sub_fetch(&world.others, 1, __ATOMIC_ACQ_REL);
        __libc_free(start);
    }
    return r;
}

int sem_wait(sem_t *sem) {
    static int (*real_sem_wait)(sem_t *);
    if (real_sem_wait == NULL) {
        real_sem_wait = (int (*)(sem_t *))dlsym(RTLD_NEXT, "sem_wait");
    }
    int r;
    while ((r = real_sem_wait(sem)) != 0 && errno == EINTR) {
    }
    return r;
}
