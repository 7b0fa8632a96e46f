/*
 * Part of the virtual board's preload library (rmkit.vboard.ram compiles it with esp32_ram.c): C stack room for
 * the unix port's own work in MicroPython threads, beyond what Python may use.
 *
 * MicroPython sizes a thread's Python stack from the size it asked pthreads for (mp_thread_create,
 * ports/unix/mpthreadport.c: the limit is that size less an 8 KiB margin), and the virtual board uses that limit to
 * give a BLE IRQ handler no more stack than an ESP32 does (sim/vb_bluetooth.py). What runs in C underneath is the
 * host's business, not the board's: the collector's signal handler, which another thread's gc.collect() runs on
 * this thread's stack (with the CPU's saved register state, several KiB on x86-64), the simulator's flash, written
 * in Python where a board has littlefs in C. An 8 KiB margin was not always enough for that (a SIGSEGV in a
 * handler while another thread collected in a loop). So every thread gets HEADROOM more stack than it asked for;
 * MicroPython, which computed its limit from the size it asked, never lets Python use it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

#define HEADROOM (256 * 1024)

int pthread_attr_setstacksize(pthread_attr_t *attr, size_t stacksize) {
    static int (*real)(pthread_attr_t *, size_t);
    if (real == NULL) {
        real = (int (*)(pthread_attr_t *, size_t))dlsym(RTLD_NEXT, "pthread_attr_setstacksize");
        if (real == NULL) {
            return 22; /* EINVAL: cannot happen with a C library that has threads */
        }
    }
    return real(attr, stacksize + HEADROOM);
}
