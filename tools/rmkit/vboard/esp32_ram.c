/*
 * esp32_ram.c: an ESP32's internal RAM for the virtual board's MicroPython process, preloaded into it
 * (LD_PRELOAD) by rmkit/vboard/ram.py, which compiles this file on first use.
 *
 * On ESP32_GENERIC (no PSRAM) MicroPython's GC heap and ESP-IDF's heap share the chip's internal RAM:
 * the GC heap starts as a 56 KiB block malloc'd from ESP-IDF's heap and grows by taking more blocks
 * from it, and mbedtls, lwIP, Wi-Fi and NimBLE allocate from what is left. On the unix port the GC
 * heap is one big block and everything else comes from the host's malloc, so without this file a
 * virtual board could never run out where an ESP32 does. It models, in 32-bit bytes as on a board:
 *
 * 1. ESP-IDF's heap (HEAP_DATA): the regions ESP32_GENERIC boots with, each a TLSF pool as in
 *    ESP-IDF v5.2/v5.4 (espressif/tlsf): 4-byte block header, 12-byte minimum block, 4-byte
 *    alignment, a request rounded up to the next size class before the search (good fit), the
 *    reported largest free block rounded down to a class (tlsf_fit_size), free neighbours merged at
 *    once, no block across two regions; malloc tries the regions in list order (heap_caps_base.c).
 * 2. MicroPython's split GC heap (py/gc.c v1.26.1, MICROPY_GC_SPLIT_HEAP_AUTO): the first area at
 *    boot (ports/esp32/main.c), a new area when an allocation fails after a collection
 *    (gc_try_add_heap, gccollect.c gc_get_max_new_split), an area other than the first given back
 *    when a collection leaves it empty (gc_sweep_free_blocks).
 * 3. mbedtls's allocations on (1) (mbedtls_ssl_setup, _handshake_step, _handshake_wrapup, _ssl_free,
 *    x509_crt_parse/_free, pk_parse_key/_free interposed): each TLS session's record buffers and
 *    handshake, each SSLContext's certificates and key, freed when mbedtls frees them. A session that
 *    does not fit fails as on a board: MBEDTLS_ERR_SSL_ALLOC_FAILED, which MicroPython's own
 *    extmod/modtls_mbedtls.c answers with gc_collect(), one more try, then OSError(ENOMEM).
 * The simulator's Python side (sim/vb_esp32.py) charges Wi-Fi, lwIP sockets and NimBLE through the
 * protocol below. Sizes and where each comes from are next to each constant.
 *
 * How the GC heap is held to the model. The firmware's part of the unix port's GC pool is the
 * prefix [pool start, limit): what the simulator itself holds when it has booted (`base`), plus the
 * model's GC total times HEAP_RATIO (the 64-bit unix port needs that much more heap than a 32-bit
 * ESP32 for the same objects; the host passes the measured ratio). py/gc.c allocates first fit from
 * the bottom of the pool, so an allocation the real allocator places beyond the limit is one that
 * fits nowhere below it: one the board could not place in its areas either. This file interposes
 * gc_alloc (the .so calls it through its PLT) and then does what the board's gc_alloc does: collect
 * and retry, then grow the model's heap by the py/gc.c rule (the new area charged to (1)) and move
 * the limit, or free the block and return NULL (MicroPython raises MemoryError). gc_realloc is
 * interposed because it can grow a block in place past the limit; gc_collect to give back empty
 * trailing areas afterwards (read from py/gc.c's allocation table: exact); gc_info so that
 * gc.mem_free() and micropython.mem_info() report the firmware's part, not the host's heap.
 * Where it differs from a board: the firmware's part is one range, so an allocation may straddle what
 * would be two areas, and only the last area can go back (an empty one between used ones stays: less
 * RAM for ESP-IDF, stricter); the simulator's own allocations after boot count as the firmware's;
 * HEAP_RATIO is an average over the firmware's objects; TLSF's free lists are searched as a whole (same
 * class rule, most recently freed first), and the early-boot layout of each region is a snapshot.
 *
 * Protocol: the board's Python calls os.getenv("VBRAM <command>"), which this file answers (getenv is
 * interposed too; every other name goes to libc's):
 *   VBRAM ready                      the simulator has booted: what the GC heap holds now is its own
 *                                    (`base`); from here on the firmware is held to the model -> "ok"
 *   VBRAM malloc <tag> <bytes> [fd]  an ESP-IDF allocation -> handle, or "0" when nothing fits; with
 *                                    fd it is freed when that file descriptor is closed (lwIP sockets)
 *   VBRAM free <handle>              -> "ok"
 *   VBRAM region <bytes>             heap_caps_add_region(): a region at the head of the list -> "ok"
 *   VBRAM info                       esp32.idf_heap_info(HEAP_DATA): "total,free,largest,min_free"
 *                                    per region in list order, separated by ";"
 *   VBRAM stats                      "gc_total=56000 gc_peak=... ..." (board bytes; see stats_line()):
 *                                    GC total now and at its peak, areas, growths, give-backs, growths
 *                                    refused, largest free block now and its low since boot, free bytes
 *                                    now and their low, the firmware's heap in 64-bit bytes (heap64),
 *                                    blocks gc_realloc had to move off the limit
 * The host's board.take_internal_ram(n) writes n to <VBOARD_STATE>/idf_reserve; the model re-reads it
 * before each of its operations and holds that much in blocks tagged "reserve". Every operation of the
 * model is appended to <VBOARD_STATE>/ram.log, one line each.
 *
 * Threads. The GC is used by two threads (the main one and the simulated BLE host task), and the unix
 * port has no GIL. An allocation is the real one plus a comparison with the limit, no lock; one past
 * the limit takes `placement` (recursive), as does gc_collect, so decisions on the limit are taken one
 * at a time. A collection stops every other thread first, as on an ESP32 (gc_world.c); the GC's entry
 * points below tell it where a thread must not be stopped. `model` guards the model's tables and is held only briefly, never while calling into
 * MicroPython, so a finaliser that frees a TLS session during a collection cannot deadlock against a
 * thread waiting for the GC. Thread cancellation (the unix port cancels threads at exit) is off while
 * either lock is held.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gc_world.h"

/* ---- facts about the board --------------------------------------------------------------------- */

/* ESP-IDF's TLSF (espressif/tlsf tlsf_common.h, tlsf.c control_construct; multi_heap.c) */
#define TLSF_HEADER 4            /* block_header_overhead: the size field before each block */
#define TLSF_MIN_BLOCK 12        /* block_size_min */
#define TLSF_SPLIT_MIN 16        /* block_can_split: sizeof(block_header_t) + the request */
#define TLSF_POOL_OVERHEAD 8     /* tlsf_pool_overhead(): first block's offset + sentinel */
#define HEAP_T_BYTES 20          /* multi_heap's heap_t before the TLSF control structure */
#define TLSF_CONTROL_BASE 36     /* sizeof(control_t) on a 32-bit target */

/* MicroPython's GC on the ESP32 (py/gc.c v1.26.1, 32-bit: 16-byte blocks, 4 per ATB byte, 8 per FTB
 * byte; sizeof(mp_state_mem_area_t) 32 with MICROPY_GC_SPLIT_HEAP) */
#define ESP32_GC_BLOCK 16
#define ESP32_GC_AREA_STRUCT 32
#define ESP32_FIRST_AREA 57344   /* ports/esp32/mpconfigport.h MICROPY_GC_INITIAL_HEAP_SIZE (56 KiB) */
#define MP_TASK_STACK 16384      /* ports/esp32/mpconfigport.h MICROPY_TASK_STACK_SIZE, from ESP-IDF's heap */

/* mbedtls on the ESP32 port: ESP-IDF's mbedtls with CONFIG_MBEDTLS_DEFAULT_MEM_ALLOC (calloc on the
 * ESP-IDF heap) and the port's asymmetric content lengths 16384/4096 (boards/sdkconfig.base). */
#define TLS_IN_BUFFER 16717      /* mbedtls library/ssl_misc.h MBEDTLS_SSL_IN_BUFFER_LEN: 13 + 16 + 48 + 256 + 16384 */
#define TLS_OUT_BUFFER 4429      /* MBEDTLS_SSL_OUT_BUFFER_LEN: 13 + 16 + 48 + 256 + 4096 */
/* The rest of a session, estimated; what is known: "16kiB + 4kiB per wrapped socket for buffers, plus
 * a further ~15kiB at peak" (MicroPython issue #8940), "roughly 30-32KB" per connection (esp-idf issue
 * #5022). mbedtls_ssl_setup() also allocates the handshake parameters (freed when the handshake is
 * over) and the transform and session (kept); during the handshake certificate parsing and ECDHE take
 * many blocks of a few hundred bytes to ~2 KB; the peer's certificate and the cipher contexts stay
 * (MBEDTLS_SSL_KEEP_PEER_CERTIFICATE). Together 15 KiB above the buffers at the peak. */
#define TLS_HANDSHAKE_PARAMS 1400
#define TLS_SESSION_STATE 512
#define TLS_KEPT_AFTER_HANDSHAKE 2048
#define TLS_WORKING_PIECES 10
#define TLS_WORKING_PIECE 1140
#define TLS_HANDSHAKE_PEAK 15360  /* 15 KiB */
_Static_assert(TLS_HANDSHAKE_PARAMS + TLS_SESSION_STATE + TLS_KEPT_AFTER_HANDSHAKE
               + TLS_WORKING_PIECES * TLS_WORKING_PIECE == TLS_HANDSHAKE_PEAK, "the handshake's parts");
/* a parsed certificate or key: its DER plus the parsed structure (x509_crt, pk context; estimate) */
#define TLS_PARSED_OVERHEAD 512
/* mbedtls error codes (include/mbedtls/ssl.h, x509.h, pk.h); extmod/modtls_mbedtls.c raises
 * OSError(ENOMEM) for the first, OSError(code, "MBEDTLS_ERR_...") for the others */
#define MBEDTLS_ERR_SSL_ALLOC_FAILED (-0x7F00)
#define MBEDTLS_ERR_X509_ALLOC_FAILED (-0x2880)
#define MBEDTLS_ERR_PK_ALLOC_FAILED (-0x3F80)

/* The boot region list of ESP32_GENERIC with Bluetooth enabled, in list (= address) order, and what
 * early boot already holds in each (esp-idf components/heap/port/esp32/memory_layout.c and
 * components/bt/controller/esp32/bt.c reserve the BT controller's RAM, so the list lacks it).
 * Sizes and free blocks as measured by MicroPython PR #12952 (ESP-IDF 5.0, 64 KiB first area):
 * [(240,4,0,4), (7288,244,224,52), (16648,3344,2688,3184), (87144,4344,4096,4344),
 *  (15072,14656,14336,14656), (113840,112968,110592,112968)]. "DRAM-main" (the fourth) is what .bss
 * leaves and varies by build by about 1 KB; there the snapshot's used part is the 16 KiB mp_task stack
 * and the first GC area, which this model allocates itself (56 KiB since MicroPython v1.22). */
#define MAX_FREE_AT_BOOT 2
static const struct boot_region {
    uint32_t size;
    uint32_t free_blocks[MAX_FREE_AT_BOOT];  /* TLSF free blocks early boot left; 0 ends; fresh if none */
    uint32_t min_free;                        /* lowest free since boot, as measured; 0: as now */
    bool fresh;                               /* nothing allocated at boot yet */
} BOOT_REGIONS[] = {
    {240, {0}, 4, false},          /* gap after rom_bt_data: essentially unusable */
    {7288, {236}, 52, false},      /* gap between BT EM and BT bss */
    {16648, {2700, 632}, 3184, false},
    {87144, {0}, 0, true},         /* DRAM-main: mp_task stack and the first GC area come from here */
    {15072, {0}, 0, true},         /* D/IRAM */
    {113840, {0}, 0, true},        /* D/IRAM: the first growth of the GC heap lands here */
};

/* ---- the model's tables ------------------------------------------------------------------------ */

#define MAX_REGIONS 10
#define MAX_BLOCKS 4096
#define MAX_AREAS 32
#define MAX_SESSIONS 16
#define MAX_FDS 1024

enum owner { OWN_NONE, OWN_FD, OWN_SSL, OWN_HANDSHAKE, OWN_CRT, OWN_PK, OWN_RESERVE, OWN_GC, OWN_KINDS };

typedef struct {
    uint32_t offset;     /* within its region: address order */
    uint32_t size;       /* TLSF block size: the payload, without the 4-byte header */
    int32_t prev, next;  /* neighbours in address order (-1 at the ends); free slots chain by next */
    uint32_t stamp;      /* free blocks: when they joined a TLSF free list, which is LIFO */
    uintptr_t owner;
    int8_t region;
    uint8_t used, owner_kind;
    char tag[21];
} block_t;

typedef struct {
    uint32_t size;        /* heap->end - heap->start: what idf_heap_info reports as total */
    uint32_t free_bytes;  /* multi_heap's free_bytes: blocks' sizes + headers, + the sentinel's header */
    uint32_t min_free;
    uint8_t sl_log2;      /* TLSF second-level subdivisions of this pool, log2 */
    uint8_t fl_count;     /* first-level classes */
    int32_t first;
} region_t;

static block_t blocks[MAX_BLOCKS];
static int32_t spare_block = -1;  /* chain of unused slots */
static int32_t blocks_used_slots;
static uint32_t stamp_now;
static region_t regions[MAX_REGIONS];
static int region_order[MAX_REGIONS];  /* list order, head first */
static int region_count;
static int owned_count[OWN_KINDS];
static uint8_t fd_charged[MAX_FDS];

static struct {
    int handle;           /* the area's block in the model */
    uint32_t pool;        /* its pool bytes (what gc.mem_free() counts) */
} areas[MAX_AREAS];
static int area_count;

static struct {
    uint32_t gc_peak, growths, givebacks, refused, moved, largest_min, free_min;
} stats;

static struct {
    void *ssl;
    int state;            /* 1 set up, 2 handshaking, 3 handshake over */
} sessions[MAX_SESSIONS];

/* ---- the real functions ------------------------------------------------------------------------ */

static struct {
    void *(*gc_alloc)(size_t, unsigned int);
    void *(*gc_realloc)(void *, size_t, bool);
    void (*gc_free)(void *);
    void (*gc_collect)(void);
    void (*gc_info)(void *);
    void (*gc_init)(void *, void *);
    size_t (*gc_nbytes)(const void *);
    bool (*gc_is_locked)(void);
    void (*begin_atomic)(void);
    void (*end_atomic)(void);
    int (*ssl_setup)(void *, const void *);
    int (*ssl_handshake_step)(void *);
    void (*ssl_handshake_wrapup)(void *);
    void (*ssl_free)(void *);
    int (*x509_crt_parse)(void *, const unsigned char *, size_t);
    void (*x509_crt_free)(void *);
    int (*pk_parse_key)(void *, const unsigned char *, size_t, const unsigned char *, size_t,
                        int (*)(void *, unsigned char *, size_t), void *);
    void (*pk_free)(void *);
    char *(*getenv)(const char *);
    int (*close)(int);
} real;

static void die(const char *why) {
    fprintf(stderr, "esp32_ram: %s\n", why);
    fflush(stderr);
    _exit(70);
}

static void *must_find(void *library, const char *name) {
    void *fn = dlsym(library, name);
    if (fn == NULL) {
        fprintf(stderr, "esp32_ram: %s not found in MicroPython's library: %s\n", name, dlerror());
        _exit(70);
    }
    return fn;
}

/* CPython loads MicroPython's extension with RTLD_LOCAL, so dlsym(RTLD_NEXT) cannot see it; the
 * first call from it (gc_init, from the unix port's main) names the library through dladdr(). */
static void resolve_micropython(void *caller) {
    static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&once);
    if (real.gc_alloc == NULL) {
        Dl_info where;
        void *library = NULL;
        if (dladdr(caller, &where) && where.dli_fname != NULL) {
            library = dlopen(where.dli_fname, RTLD_NOLOAD | RTLD_LAZY);
        }
        if (library == NULL) {
            die("cannot find the MicroPython library that called it");
        }
        real.gc_realloc = must_find(library, "gc_realloc");
        real.gc_free = must_find(library, "gc_free");
        real.gc_collect = must_find(library, "gc_collect");
        real.gc_info = must_find(library, "gc_info");
        real.gc_init = must_find(library, "gc_init");
        real.gc_nbytes = must_find(library, "gc_nbytes");
        real.gc_is_locked = must_find(library, "gc_is_locked");
        real.begin_atomic = must_find(library, "mp_thread_unix_begin_atomic_section");
        real.end_atomic = must_find(library, "mp_thread_unix_end_atomic_section");
        real.ssl_setup = must_find(library, "mbedtls_ssl_setup");
        real.ssl_handshake_step = must_find(library, "mbedtls_ssl_handshake_step");
        real.ssl_handshake_wrapup = must_find(library, "mbedtls_ssl_handshake_wrapup");
        real.ssl_free = must_find(library, "mbedtls_ssl_free");
        real.x509_crt_parse = must_find(library, "mbedtls_x509_crt_parse");
        real.x509_crt_free = must_find(library, "mbedtls_x509_crt_free");
        real.pk_parse_key = must_find(library, "mbedtls_pk_parse_key");
        real.pk_free = must_find(library, "mbedtls_pk_free");
        __atomic_store_n(&real.gc_alloc, must_find(library, "gc_alloc"), __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&once);
}

#define NEED_MICROPYTHON() \
    do { if (__atomic_load_n(&real.gc_alloc, __ATOMIC_ACQUIRE) == NULL) \
             resolve_micropython(__builtin_return_address(0)); } while (0)

/* ---- locks ------------------------------------------------------------------------------------- */

static pthread_mutex_t placement_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static pthread_mutex_t model_lock = PTHREAD_MUTEX_INITIALIZER;

/* A thread holding either lock is not stopped for a collection (gc_world.c: a finaliser's TLS session free
 * takes the model's lock); one waiting for either holds nothing the collector needs, and may be. */
static int lock(pthread_mutex_t *m) {
    int cancel;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    int crit = world_crit_suspend();
    pthread_mutex_lock(m);
    world_crit_resume(crit);
    world_crit_enter();
    return cancel;
}

static void unlock(pthread_mutex_t *m, int cancel) {
    pthread_mutex_unlock(m);
    world_crit_leave();
    pthread_setcancelstate(cancel, NULL);
}

/* ---- settings from the host and the event log -------------------------------------------------- */

static struct {
    unsigned ratio_percent;  /* VBOARD_HEAP_RATIO: 64-bit bytes per 100 board bytes */
    size_t fixed_heap;       /* VBOARD_HEAP: a fixed GC heap in 64-bit bytes (no growth), 0: the model */
    char state_dir[512];     /* VBOARD_STATE */
    int log_fd;
    long reserve;            /* bytes take_internal_ram() holds now */
    struct timespec t0;
    bool configured;
} host = {.log_fd = -1};

static char *libc_getenv(const char *name) {
    if (real.getenv == NULL) {
        real.getenv = dlsym(RTLD_NEXT, "getenv");
    }
    return real.getenv(name);
}

static void configure(void) {
    if (host.configured) {
        return;
    }
    const char *ratio = libc_getenv("VBOARD_HEAP_RATIO");
    const char *heap = libc_getenv("VBOARD_HEAP");
    const char *state = libc_getenv("VBOARD_STATE");
    host.ratio_percent = ratio && *ratio ? (unsigned)strtoul(ratio, NULL, 10) : 140;
    if (host.ratio_percent < 100) {
        die("VBOARD_HEAP_RATIO must be a percentage of at least 100");
    }
    host.fixed_heap = heap && *heap ? strtoul(heap, NULL, 10) : 0;
    snprintf(host.state_dir, sizeof host.state_dir, "%s", state ? state : "");
    clock_gettime(CLOCK_MONOTONIC, &host.t0);
    host.configured = true;
}

static unsigned long ms_since_boot(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (unsigned long)((now.tv_sec - host.t0.tv_sec) * 1000 + (now.tv_nsec - host.t0.tv_nsec) / 1000000);
}

static uint32_t gc_total(void);
static uint32_t largest_free(void);
static uint32_t total_free(void);

/* One line per operation of the model, in the board's state directory, for people and benchmarks. */
static void event(const char *what, const char *tag, long bytes, int handle) {
    if (host.state_dir[0] == '\0') {
        return;
    }
    if (host.log_fd < 0) {
        char path[600];
        snprintf(path, sizeof path, "%s/ram.log", host.state_dir);
        host.log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (host.log_fd < 0) {
            return;
        }
    }
    const char *gen = libc_getenv("VBOARD_GEN");
    char line[200];
    int n = snprintf(line, sizeof line, "%s %lu %s %s %ld #%d gc=%u largest=%u free=%u\n", gen ? gen : "0",
                     ms_since_boot(), what, tag, bytes, handle, gc_total(), largest_free(), total_free());
    if (n > 0 && write(host.log_fd, line, (size_t)n) < 0) {
        /* nothing to do: the log is for people, the model does not depend on it */
    }
}

/* ---- TLSF regions -------------------------------------------------------------------------------- */

static int floor_log2(uint32_t x) {
    return 31 - __builtin_clz(x);
}

static uint32_t align4(uint32_t x) {
    return (x + 3u) & ~3u;
}

/* tlsf.c mapping_insert(): the size class of a block, as one ordered number */
static int size_class(const region_t *r, uint32_t size) {
    uint32_t small = 1u << (r->sl_log2 + 2);
    if (size < small) {
        return (int)(size / 4);  /* first list: small_block_size / sl_index_count == ALIGN_SIZE */
    }
    int fl = floor_log2(size);
    int sl = (int)(size >> (fl - r->sl_log2)) ^ (1 << r->sl_log2);
    fl -= r->sl_log2 + 2 - 1;
    return (fl << 8) | sl;
}

/* tlsf_fit_size(): the largest request a free block of `size` is sure to serve */
static uint32_t fit_size(const region_t *r, uint32_t size) {
    if (size == 0) {
        return 0;
    }
    uint32_t interval = (1u << floor_log2(size)) >> r->sl_log2;
    return size & ~(interval ? interval - 1 : 0);
}

static int32_t new_block(void) {
    int32_t b = spare_block;
    if (b < 0) {
        if (blocks_used_slots >= MAX_BLOCKS) {
            die("more than MAX_BLOCKS ESP-IDF blocks in the model");
        }
        b = blocks_used_slots++;
    } else {
        spare_block = blocks[b].next;
    }
    memset(&blocks[b], 0, sizeof blocks[b]);
    blocks[b].prev = blocks[b].next = -1;
    return b;
}

static void drop_block(int32_t b) {
    blocks[b].region = -1;
    blocks[b].next = spare_block;
    spare_block = b;
}

/* multi_heap_register() of a region of `size` bytes: heap_t, the TLSF control structure sized for the
 * pool (tlsf.c control_construct), then one free block (tlsf_add_pool). */
static int add_region(uint32_t size, bool at_head) {
    if (region_count >= MAX_REGIONS) {
        return -1;
    }
    int r = region_count++;
    region_t *reg = &regions[r];
    uint32_t bytes = size - HEAP_T_BYTES;
    reg->size = size;
    reg->sl_log2 = bytes <= 16 * 1024 ? 3 : bytes <= 256 * 1024 ? 4 : 5;
    uint32_t fl_max = (uint32_t)floor_log2(bytes) + 1;
    reg->fl_count = (uint8_t)(fl_max - (reg->sl_log2 + 2) + 1);
    uint32_t control = TLSF_CONTROL_BASE + 4u * reg->fl_count + 4u * reg->fl_count * (1u << reg->sl_log2);
    reg->free_bytes = bytes - control;
    reg->min_free = reg->free_bytes;
    int32_t b = new_block();
    blocks[b].region = (int8_t)r;
    blocks[b].size = (reg->free_bytes - TLSF_POOL_OVERHEAD) & ~3u;
    blocks[b].stamp = ++stamp_now;
    reg->first = b;
    if (at_head) {
        memmove(&region_order[1], &region_order[0], sizeof region_order[0] * (size_t)(region_count - 1));
        region_order[0] = r;
    } else {
        region_order[region_count - 1] = r;
    }
    return r;
}

static int32_t append_block(int r, int32_t prev, uint32_t size, bool used, const char *tag) {
    int32_t b = new_block();
    blocks[b].region = (int8_t)r;
    blocks[b].size = size;
    blocks[b].used = used;
    blocks[b].stamp = ++stamp_now;
    snprintf(blocks[b].tag, sizeof blocks[b].tag, "%s", tag);
    blocks[b].prev = prev;
    if (prev < 0) {
        regions[r].first = b;
    } else {
        blocks[prev].next = b;
        blocks[b].offset = blocks[prev].offset + blocks[prev].size + TLSF_HEADER;
    }
    return b;
}

/* Early boot's state of a measured region: used blocks around the given free blocks, so that free
 * bytes, largest block and fragmentation are those of the snapshot. */
static void shape_region(int r, const uint32_t *free_sizes) {
    region_t *reg = &regions[r];
    uint32_t capacity = blocks[reg->first].size + TLSF_HEADER;  /* sum of (size + header) over blocks */
    drop_block(reg->first);
    int n = 0;
    uint32_t free_sum = 0;
    while (n < MAX_FREE_AT_BOOT && free_sizes[n]) {
        free_sum += free_sizes[n++] + TLSF_HEADER;
    }
    int used_blocks = n ? n : 1;
    uint32_t used_each = (capacity - free_sum) / (uint32_t)used_blocks;
    int32_t last = -1;
    for (int i = 0; i < used_blocks; i++) {
        uint32_t used = i < used_blocks - 1 ? used_each : capacity - free_sum - used_each * (uint32_t)i;
        last = append_block(r, last, used - TLSF_HEADER, true, "idf_boot");
        if (i < n) {
            last = append_block(r, last, free_sizes[i], false, "");
        }
    }
    reg->free_bytes = free_sum + TLSF_HEADER;
}

/* tlsf_malloc() in one region: good fit (the request rounded up to the next class, then the first
 * non-empty list at or above it; a list hands out its most recent block), split when the rest can
 * be a block of its own. */
static int32_t region_alloc(int r, uint32_t request) {
    region_t *reg = &regions[r];
    uint32_t size = align4(request);
    if (size < TLSF_MIN_BLOCK) {
        size = TLSF_MIN_BLOCK;
    }
    uint32_t search = size;
    if (search >= (1u << (reg->sl_log2 + 2))) {
        search += (1u << (floor_log2(search) - reg->sl_log2)) - 1;  /* mapping_search() */
        if (floor_log2(search) - (reg->sl_log2 + 2) + 1 >= reg->fl_count) {
            return -1;  /* larger than any class of this pool */
        }
    }
    int wanted = size_class(reg, search);
    int32_t best = -1;
    int best_class = 0;
    for (int32_t b = reg->first; b >= 0; b = blocks[b].next) {
        if (blocks[b].used) {
            continue;
        }
        int c = size_class(reg, blocks[b].size);
        if (c >= wanted && (best < 0 || c < best_class || (c == best_class && blocks[b].stamp > blocks[best].stamp))) {
            best = b;
            best_class = c;
        }
    }
    if (best < 0) {
        return -1;
    }
    if (blocks[best].size >= TLSF_SPLIT_MIN + size) {  /* block_trim_free() */
        int32_t rest = new_block();
        blocks[rest].region = (int8_t)r;
        blocks[rest].offset = blocks[best].offset + TLSF_HEADER + size;
        blocks[rest].size = blocks[best].size - size - TLSF_HEADER;
        blocks[rest].stamp = ++stamp_now;
        blocks[rest].prev = best;
        blocks[rest].next = blocks[best].next;
        if (blocks[rest].next >= 0) {
            blocks[blocks[rest].next].prev = rest;
        }
        blocks[best].next = rest;
        blocks[best].size = size;
    }
    blocks[best].used = 1;
    reg->free_bytes -= blocks[best].size + TLSF_HEADER;  /* multi_heap_malloc_impl() */
    if (reg->free_bytes < reg->min_free) {
        reg->min_free = reg->free_bytes;
    }
    return best;
}

static void absorb_next(int32_t a) {
    int32_t b = blocks[a].next;
    blocks[a].size += blocks[b].size + TLSF_HEADER;
    blocks[a].next = blocks[b].next;
    if (blocks[a].next >= 0) {
        blocks[blocks[a].next].prev = a;
    }
    drop_block(b);
}

/* tlsf_free(): merged with free neighbours at once (block_merge_prev, block_merge_next) */
static void region_free(int32_t b) {
    region_t *reg = &regions[blocks[b].region];
    reg->free_bytes += blocks[b].size + TLSF_HEADER;
    blocks[b].used = 0;
    blocks[b].owner_kind = OWN_NONE;
    blocks[b].owner = 0;
    blocks[b].tag[0] = '\0';
    if (blocks[b].prev >= 0 && !blocks[blocks[b].prev].used) {
        b = blocks[b].prev;
        absorb_next(b);
    }
    if (blocks[b].next >= 0 && !blocks[blocks[b].next].used) {
        absorb_next(b);
    }
    blocks[b].stamp = ++stamp_now;
}

static uint32_t region_largest(int r) {
    uint32_t largest = 0;
    for (int32_t b = regions[r].first; b >= 0; b = blocks[b].next) {
        if (!blocks[b].used && blocks[b].size > largest) {
            largest = blocks[b].size;
        }
    }
    return fit_size(&regions[r], largest);  /* multi_heap_get_info_impl() */
}

/* heap_caps_get_largest_free_block(MALLOC_CAP_DEFAULT): what gc_get_max_new_split() answers */
static uint32_t largest_free(void) {
    uint32_t largest = 0;
    for (int i = 0; i < region_count; i++) {
        uint32_t l = region_largest(i);
        largest = l > largest ? l : largest;
    }
    return largest;
}

static uint32_t total_free(void) {
    uint32_t sum = 0;
    for (int i = 0; i < region_count; i++) {
        sum += regions[i].free_bytes;
    }
    return sum;
}

static void note_low_water(void) {
    uint32_t largest = largest_free(), free_now = total_free();
    stats.largest_min = largest < stats.largest_min ? largest : stats.largest_min;
    stats.free_min = free_now < stats.free_min ? free_now : stats.free_min;
}

/* heap_caps_malloc(MALLOC_CAP_DEFAULT | MALLOC_CAP_INTERNAL): the regions in list order. Returns a
 * handle (block index + 1) or 0. Call with the model lock held. */
static int model_malloc(uint32_t bytes, const char *tag, enum owner kind, uintptr_t owner) {
    int32_t b = -1;
    for (int i = 0; i < region_count && b < 0; i++) {
        b = region_alloc(region_order[i], bytes);
    }
    if (b < 0) {
        event("fail", tag, (long)bytes, 0);
        return 0;
    }
    snprintf(blocks[b].tag, sizeof blocks[b].tag, "%s", tag);
    blocks[b].owner_kind = (uint8_t)kind;
    blocks[b].owner = owner;
    owned_count[kind]++;
    note_low_water();
    event("malloc", tag, (long)bytes, b + 1);
    return b + 1;
}

static bool valid_handle(int handle) {
    return handle > 0 && handle <= blocks_used_slots && blocks[handle - 1].region >= 0 && blocks[handle - 1].used;
}

static void model_free(int handle) {
    block_t *blk = &blocks[handle - 1];
    owned_count[blk->owner_kind]--;
    char tag[sizeof blk->tag];
    memcpy(tag, blk->tag, sizeof tag);
    long size = blk->size;
    region_free(handle - 1);
    event("free", tag, size, handle);
}

/* Free every block an owner holds (a socket's fd, a TLS session, a parsed certificate, ...). */
static void release(enum owner kind, uintptr_t owner) {
    if (owned_count[kind] == 0) {
        return;
    }
    for (int32_t b = 0; b < blocks_used_slots; b++) {
        if (blocks[b].region >= 0 && blocks[b].used && blocks[b].owner_kind == kind && blocks[b].owner == owner) {
            model_free(b + 1);
        }
    }
}

/* board.take_internal_ram(n): n bytes held in the largest blocks there are, as other ESP-IDF users
 * would hold them. Re-read before each operation of the model; call with the model lock held. */
static void sync_reserve(void) {
    if (host.state_dir[0] == '\0') {
        return;
    }
    char path[600], text[32] = "";
    snprintf(path, sizeof path, "%s/idf_reserve", host.state_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, text, sizeof text - 1);
        text[n > 0 ? n : 0] = '\0';
        if (real.close == NULL) {
            real.close = dlsym(RTLD_NEXT, "close");
        }
        real.close(fd);
    }
    long want = strtol(text, NULL, 10);
    if (want == host.reserve || want < 0) {
        return;
    }
    release(OWN_RESERVE, 0);
    host.reserve = want;
    for (long left = want; left >= TLSF_MIN_BLOCK;) {
        uint32_t chunk = largest_free();
        chunk = (long)chunk < left ? chunk : (uint32_t)left;
        if (chunk < TLSF_MIN_BLOCK || !model_malloc(chunk, "reserve", OWN_RESERVE, 0)) {
            break;
        }
        left -= chunk;
    }
}

/* ---- the GC heap's areas (py/gc.c v1.26.1 on a 32-bit ESP32) ------------------------------------ */

/* gc_setup_area(): pool bytes of an area of `bytes` (ATB 1 byte per 4 blocks, FTB 1 per 8, one gap
 * byte); gc_add() first takes the area's own struct from a grown area */
static uint32_t area_pool(uint32_t bytes, bool first) {
    uint32_t total = bytes - (first ? 0 : ESP32_GC_AREA_STRUCT);
    uint32_t atb = (total - 1) * 8 / (8 + 8 * 4 / 8 + 8 * 4 * ESP32_GC_BLOCK);
    return atb * 4 * ESP32_GC_BLOCK;
}

/* the smallest area whose pool holds `pool` bytes */
static uint32_t area_bytes(uint32_t pool, bool first) {
    uint32_t atb = (pool + 4 * ESP32_GC_BLOCK - 1) / (4 * ESP32_GC_BLOCK);
    return (atb * (8 + 8 * 4 / 8 + 8 * 4 * ESP32_GC_BLOCK) + 7) / 8 + 1 + (first ? 0 : ESP32_GC_AREA_STRUCT);
}

static bool hold_area(uint32_t bytes, bool first) {
    if (area_count == MAX_AREAS) {
        return false;
    }
    int handle = model_malloc(bytes, "gc_area", OWN_GC, 0);
    if (handle) {
        areas[area_count].handle = handle;
        areas[area_count++].pool = area_pool(bytes, first);
    }
    return handle != 0;
}

static uint32_t gc_total(void) {
    uint32_t total = 0;
    for (int i = 0; i < area_count; i++) {
        total += areas[i].pool;
    }
    return total;
}

/* gc_try_add_heap(): bytes to build a heap of the current number of blocks */
static uint32_t current_heap_bytes(void) {
    uint32_t blocks_now = gc_total() / ESP32_GC_BLOCK;
    uint32_t bytes = blocks_now / 4 + blocks_now / 8 + blocks_now * ESP32_GC_BLOCK + 1 + ESP32_GC_AREA_STRUCT;
    return (bytes + ESP32_GC_BLOCK - 1) & ~(uint32_t)(ESP32_GC_BLOCK - 1);
}

/* ---- the unix port's GC pool and the firmware's part of it --------------------------------------- */

static struct {
    uintptr_t heap_start, heap_end;  /* gc_init()'s arguments */
    uintptr_t pool_start, pool_end;
    size_t block;                    /* this build's BYTES_PER_BLOCK */
    const uint8_t *atb, *ftb;        /* allocation and finaliser tables (py/gc.c gc_setup_area) */
    uintptr_t base;                  /* what the simulator held when it had booted */
    uintptr_t limit;                 /* end of the firmware's part; read without a lock */
    int armed;
} pool = {.limit = UINTPTR_MAX};     /* nothing is beyond it until the simulator has booted */

static int block_kind(size_t block) {  /* py/gc.c ATB_GET_KIND: 0 free, 1 head, 2 tail, 3 mark */
    return (pool.atb[block / 4] >> (2 * (block & 3))) & 3;
}

static bool has_finaliser(size_t block) {  /* py/gc.c FTB_GET */
    return (pool.ftb[block / 8] >> (block & 7)) & 1;
}

/* The firmware's share of the pool: the model's GC total in 64-bit bytes, or the fixed --heap. */
static uintptr_t firmware_limit(void) {
    size_t bytes = host.fixed_heap ? host.fixed_heap : (size_t)gc_total() * host.ratio_percent / 100;
    return pool.base + (bytes & ~(pool.block - 1));
}

static void set_limit(void) {
    __atomic_store_n(&pool.limit, firmware_limit(), __ATOMIC_RELEASE);
}

static bool beyond(const void *p, size_t n) {
    return (uintptr_t)p + n > __atomic_load_n(&pool.limit, __ATOMIC_ACQUIRE);
}

static bool range_is_free(uintptr_t start, uintptr_t end) {
    for (size_t b = (start - pool.pool_start) / pool.block, e = (end - pool.pool_start) / pool.block; b < e; b++) {
        if (block_kind(b) != 0) {
            return false;
        }
    }
    return true;
}

/* gc_alloc() found no room after a collection: gc_try_add_heap() with the failed request in board
 * bytes. Call with the placement lock held. */
static bool grow_for(size_t bytes64) {
    if (host.fixed_heap) {
        return false;
    }
    int cancel = lock(&model_lock);
    sync_reserve();
    uint32_t failed = (uint32_t)((bytes64 * 100 + host.ratio_percent - 1) / host.ratio_percent);
    uint32_t needed = failed + (failed * 13 / 512 > 2048 ? failed * 13 / 512 : 2048);
    uint32_t avail = largest_free();
    bool grown = false;
    if (avail < needed) {
        stats.refused++;
        event("refuse", "gc_area", (long)needed, 0);
    } else {
        uint32_t want = current_heap_bytes() > needed ? current_heap_bytes() : needed;
        grown = hold_area(avail < want ? avail : want, false);
        if (grown) {
            stats.growths++;
            stats.gc_peak = gc_total() > stats.gc_peak ? gc_total() : stats.gc_peak;
            event("grow", "gc_area", (long)gc_total(), areas[area_count - 1].handle);
        }
    }
    unlock(&model_lock, cancel);
    if (grown) {
        set_limit();
    }
    return grown;
}

/* gc_sweep_free_blocks(): an area other than the first that holds nothing goes back to ESP-IDF. Only
 * the last area can: the firmware's part here is one contiguous range, so an empty area between two
 * used ones stays (a board would free it: the model is stricter there). Call with the placement lock
 * held, so that decisions on the limit are taken one at a time. */
static void give_back_empty_areas(void) {
    while (!host.fixed_heap && area_count > 1) {
        uint32_t before = gc_total() - areas[area_count - 1].pool;
        uintptr_t start = pool.base + (((size_t)before * host.ratio_percent / 100) & ~(pool.block - 1));
        uintptr_t end = pool.limit;
        if (!range_is_free(start, end)) {
            return;
        }
        /* Allocations do not take the placement lock: one may be landing there now. Its thread reads
         * the limit after py/gc.c marked its block (and released the GC's mutex, a full barrier on
         * x86), so: lower the limit, then look again; what the second look misses sees the new limit
         * and comes to place_within(). */
        __atomic_store_n(&pool.limit, start, __ATOMIC_SEQ_CST);
        if (!range_is_free(start, end)) {
            __atomic_store_n(&pool.limit, end, __ATOMIC_SEQ_CST);
            return;
        }
        int cancel = lock(&model_lock);
        model_free(areas[--area_count].handle);
        stats.givebacks++;
        event("giveback", "gc_area", (long)gc_total(), 0);
        unlock(&model_lock, cancel);
        set_limit();
    }
}

void gc_collect(void);

/* The real allocator placed `p` beyond the firmware's part: what gc_alloc() does on a board when it
 * finds no room: collect, look again, then grow the heap once or give up. */
static void *place_within(void *p, size_t n, unsigned int flags) {
    if (!beyond(p, n)) {
        return p;  /* another thread grew the heap meanwhile */
    }
    real.gc_free(p);
    gc_collect();
    p = real.gc_alloc(n, flags);
    if (p == NULL || !beyond(p, n)) {
        return p;
    }
    real.gc_free(p);
    if (!grow_for(n)) {
        return NULL;
    }
    p = real.gc_alloc(n, flags);
    if (p != NULL && beyond(p, n)) {
        real.gc_free(p);
        p = NULL;
    }
    return p;
}

/* ---- the model at power-on ------------------------------------------------------------------------ */

/* Called from gc_init(), before MicroPython runs any thread: no lock needed yet. */
static void model_boot(void) {
    configure();
    for (size_t i = 0; i < sizeof BOOT_REGIONS / sizeof BOOT_REGIONS[0]; i++) {
        int r = add_region(BOOT_REGIONS[i].size, false);
        if (!BOOT_REGIONS[i].fresh) {
            shape_region(r, BOOT_REGIONS[i].free_blocks);
        }
        if (BOOT_REGIONS[i].min_free) {
            regions[r].min_free = BOOT_REGIONS[i].min_free;
        }
    }
    /* ports/esp32/main.c: the mp_task's stack (xTaskCreatePinnedToCore in app_main), then the first GC
     * area with MP_PLAT_ALLOC_HEAP = malloc. A fixed --heap of H 64-bit bytes, H/RATIO on a board, is
     * held where a board holds that much: the first area (smaller if H/RATIO is), then one grown area
     * for the rest. */
    stats.largest_min = stats.free_min = UINT32_MAX;
    model_malloc(MP_TASK_STACK, "mp_task_stack", OWN_NONE, 0);
    uint32_t wanted = host.fixed_heap ? (uint32_t)(host.fixed_heap * 100 / host.ratio_percent)
                                      : area_pool(ESP32_FIRST_AREA, true);
    uint32_t first = wanted < area_pool(ESP32_FIRST_AREA, true) ? area_bytes(wanted, true) : ESP32_FIRST_AREA;
    if (!hold_area(first, true)) {
        printf("mp_task_heap allocation failed!\r\n");  /* ports/esp32/main.c, then esp_restart() */
        fflush(stdout);
        _exit(1);
    }
    if (wanted > gc_total() + 4 * ESP32_GC_BLOCK && !hold_area(area_bytes(wanted - gc_total(), false), false)) {
        /* no ESP32 holds that much: a memory investigation; ESP-IDF's heap keeps what a growth into its
         * largest block would leave, and the firmware still gets the whole fixed heap */
        printf("esp32_ram: a fixed heap of %zu bytes is %u on an ESP32, more than its internal RAM holds\r\n",
               host.fixed_heap, wanted);
        hold_area(largest_free(), false);
    }
    stats.gc_peak = gc_total();
    note_low_water();
}

/* The simulator has booted (sim/vb_boot.py, after a collection): what the GC pool holds now is its
 * own; the firmware gets the model's GC heap above it. Checks that this MicroPython build lays out its
 * GC pool as py/gc.c did when this file was written. */
static void arm(void) {
    int cancel = lock(&placement_lock);
    size_t info[16] = {0};  /* gc_info_t: total, used, free, max_free, ... (a few more in some builds) */
    real.gc_info(info);
    void *probe = real.gc_alloc(1, 1);  /* GC_ALLOC_FLAG_HAS_FINALISER */
    pool.block = real.gc_nbytes(probe);
    if (pool.block == 0 || (pool.block & (pool.block - 1)) != 0) {
        die("the GC's block size of this MicroPython build is not a power of two");
    }
    pool.pool_end = pool.heap_end & ~(uintptr_t)(pool.block - 1);
    pool.pool_start = pool.pool_end - info[0];
    pool.atb = (const uint8_t *)pool.heap_start;
    pool.ftb = pool.atb + info[0] / pool.block / 4 + 1;
    size_t probe_block = ((uintptr_t)probe - pool.pool_start) / pool.block;
    if ((uintptr_t)probe < pool.pool_start || block_kind(probe_block) != 1 || !has_finaliser(probe_block)) {
        die("this MicroPython build's GC pool is not laid out as py/gc.c's gc_setup_area() lays it out");
    }
    real.gc_free(probe);
    real.gc_info(info);
    pool.base = pool.pool_start + info[1];
    set_limit();
    if (pool.limit > pool.pool_end) {
        fprintf(stderr, "esp32_ram: the unix port's GC pool (-X heapsize) has %zu bytes; the simulator holds %zu "
                "and the firmware's heap is %zu\n", (size_t)(pool.pool_end - pool.pool_start),
                (size_t)(pool.base - pool.pool_start), (size_t)(pool.limit - pool.base));
        die("the unix port's heap is too small for the simulator and the firmware's heap");
    }
    __atomic_store_n(&pool.armed, 1, __ATOMIC_RELEASE);
    int model = lock(&model_lock);
    event("simulator", "gc_heap", (long)(pool.base - pool.pool_start), 0);
    event("ready", "gc_heap", (long)(pool.limit - pool.base), 0);
    unlock(&model_lock, model);
    unlock(&placement_lock, cancel);
}

/* ---- MicroPython's GC, interposed ------------------------------------------------------------------ */

void gc_init(void *start, void *end) {
    NEED_MICROPYTHON();
    pool.heap_start = (uintptr_t)start;
    pool.heap_end = (uintptr_t)end;
    real.gc_init(start, end);
    if (area_count == 0) {
        model_boot();
    }
}

/* The hot path is the real allocation and one comparison; only an allocation past the limit (a
 * board's full heap) takes the placement lock. */
void *gc_alloc(size_t n_bytes, unsigned int alloc_flags) {
    NEED_MICROPYTHON();
    world_crit_enter();  /* the GC's mutex, in each of these */
    void *p = real.gc_alloc(n_bytes, alloc_flags);
    if (p != NULL && beyond(p, n_bytes)) {
        int cancel = lock(&placement_lock);
        p = place_within(p, n_bytes, alloc_flags);
        unlock(&placement_lock, cancel);
    }
    world_crit_leave();
    return p;
}

void gc_free(void *ptr) {
    NEED_MICROPYTHON();
    world_crit_enter();
    real.gc_free(ptr);
    world_crit_leave();
}

size_t gc_nbytes(const void *ptr) {
    NEED_MICROPYTHON();
    world_crit_enter();
    size_t n = real.gc_nbytes(ptr);
    world_crit_leave();
    return n;
}

/* The unix port's atomic section guards its thread list, which the collector walks. */
void mp_thread_unix_begin_atomic_section(void) {
    NEED_MICROPYTHON();
    real.begin_atomic();
    world_crit_enter();
}

void mp_thread_unix_end_atomic_section(void) {
    NEED_MICROPYTHON();
    real.end_atomic();
    world_crit_leave();
}

/* py/gc.c gc_realloc() grows a block in place when the blocks after it are free, which can cross the
 * firmware's limit: then the block is shrunk back and moved, as gc_realloc() moves it on a board
 * whose area ends there. */
static void *moving_realloc(void *ptr, size_t n_bytes, bool allow_move);

void *gc_realloc(void *ptr, size_t n_bytes, bool allow_move) {
    NEED_MICROPYTHON();
    world_crit_enter();
    void *p = moving_realloc(ptr, n_bytes, allow_move);
    world_crit_leave();
    return p;
}

static void *moving_realloc(void *ptr, size_t n_bytes, bool allow_move) {
    if (ptr == NULL || n_bytes == 0 || !beyond(ptr, n_bytes) || real.gc_is_locked()) {
        return real.gc_realloc(ptr, n_bytes, allow_move);  /* cannot end past the limit in place */
    }
    int cancel = lock(&placement_lock);
    size_t old = real.gc_nbytes(ptr);
    void *p = real.gc_realloc(ptr, n_bytes, allow_move);
    if (p == ptr && n_bytes > old && beyond(p, n_bytes)) {
        stats.moved++;
        real.gc_realloc(ptr, old, false);
        p = NULL;
        if (allow_move) {
            bool finaliser = has_finaliser(((uintptr_t)ptr - pool.pool_start) / pool.block);
            p = gc_alloc(n_bytes, finaliser ? 1 : 0);
            if (p != NULL) {
                memcpy(p, ptr, old);
                real.gc_free(ptr);
            }
        }
    }
    unlock(&placement_lock, cancel);
    return p;
}

/* Every other thread is stopped for the collection, as on an ESP32 (gc_world.c); a thread that called it
 * from inside an allocation holds nothing the collection needs (py/gc.c gc_alloc leaves the GC's mutex first). */
void gc_collect(void) {
    NEED_MICROPYTHON();
    int crit = world_crit_suspend();
    int cancel = lock(&placement_lock);
    world_stop();
    real.gc_collect();
    if (__atomic_load_n(&pool.armed, __ATOMIC_ACQUIRE)) {
        give_back_empty_areas();
    }
    world_start();
    unlock(&placement_lock, cancel);
    world_crit_resume(crit);
}

/* gc.mem_free(), gc.mem_alloc(), micropython.mem_info(): the firmware's part of the pool. (On a board
 * gc.mem_free() adds the max new split; the unix port's gc module does not.) */
void gc_info(void *out) {
    NEED_MICROPYTHON();
    world_crit_enter();
    real.gc_info(out);
    world_crit_leave();
    if (!__atomic_load_n(&pool.armed, __ATOMIC_ACQUIRE)) {
        return;
    }
    size_t *info = out;
    uintptr_t limit = __atomic_load_n(&pool.limit, __ATOMIC_ACQUIRE);
    size_t free_blocks = 0, run = 0, longest = 0;
    for (size_t b = 0, end = (limit - pool.pool_start) / pool.block; b < end; b++) {
        if (block_kind(b) == 0) {
            free_blocks++;
            run++;
            longest = run > longest ? run : longest;
        } else {
            run = 0;
        }
    }
    info[0] = limit - pool.pool_start;   /* total */
    info[2] = free_blocks * pool.block;  /* free */
    info[1] = info[0] - info[2];         /* used */
    info[3] = longest;                   /* max_free, in blocks */
}

/* ---- mbedtls, interposed: each TLS session and each parsed certificate and key ------------------------ */

static int session_index(void *ssl, bool create) {
    int spare = -1;
    for (int i = 0; i < MAX_SESSIONS; i++) {
        if (sessions[i].ssl == ssl) {
            return i;
        }
        if (sessions[i].ssl == NULL && spare < 0) {
            spare = i;
        }
    }
    if (create && spare >= 0) {
        sessions[spare].ssl = ssl;
        sessions[spare].state = 0;
    }
    return create ? spare : -1;
}

/* Take `count` blocks for an owner, all or none; the handles go to `taken`. */
static bool take_all(const uint32_t *sizes, const char *const *tags, int count, enum owner *kinds, uintptr_t owner,
                     int *taken) {
    for (int i = 0; i < count; i++) {
        taken[i] = model_malloc(sizes[i], tags[i], kinds[i], owner);
        if (!taken[i]) {
            while (i-- > 0) {
                model_free(taken[i]);
            }
            return false;
        }
    }
    return true;
}

/* mbedtls_ssl_setup() callocs the record buffers, in then out (ssl_tls.c), then the handshake
 * parameters, transform and session (ssl_handshake_init). On a board a failure is
 * MBEDTLS_ERR_SSL_ALLOC_FAILED, which extmod/modtls_mbedtls.c turns into OSError(ENOMEM) after a
 * gc_collect() and one more try (v1.25+): the library here does both itself. */
int mbedtls_ssl_setup(void *ssl, const void *conf) {
    NEED_MICROPYTHON();
    static const uint32_t sizes[] = {TLS_IN_BUFFER, TLS_OUT_BUFFER, TLS_HANDSHAKE_PARAMS, TLS_SESSION_STATE};
    static const char *const tags[] = {"tls_in", "tls_out", "tls_handshake", "tls_session"};
    enum owner kinds[] = {OWN_SSL, OWN_SSL, OWN_HANDSHAKE, OWN_SSL};
    int taken[4];
    int cancel = lock(&model_lock);
    sync_reserve();
    release(OWN_SSL, (uintptr_t)ssl);
    release(OWN_HANDSHAKE, (uintptr_t)ssl);
    int s = session_index(ssl, true);
    bool fits = s >= 0 && take_all(sizes, tags, 4, kinds, (uintptr_t)ssl, taken);
    if (s >= 0) {
        sessions[s].state = fits ? 1 : 0;
        sessions[s].ssl = fits ? ssl : NULL;
    }
    unlock(&model_lock, cancel);
    if (!fits) {
        return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    }
    int ret = real.ssl_setup(ssl, conf);
    if (ret != 0) {
        cancel = lock(&model_lock);
        release(OWN_SSL, (uintptr_t)ssl);
        release(OWN_HANDSHAKE, (uintptr_t)ssl);
        sessions[s].ssl = NULL;
        unlock(&model_lock, cancel);
    }
    return ret;
}

/* The handshake's first step takes its working set (certificates, ECDHE) and what stays after it
 * (the peer's certificate, the cipher contexts); mbedtls_ssl_handshake_wrapup() ends it. */
int mbedtls_ssl_handshake_step(void *ssl) {
    NEED_MICROPYTHON();
    int cancel = lock(&model_lock);
    int s = session_index(ssl, false);
    bool fits = true;
    if (s >= 0 && sessions[s].state == 1) {
        uint32_t sizes[1 + TLS_WORKING_PIECES];
        const char *tags[1 + TLS_WORKING_PIECES];
        enum owner kinds[1 + TLS_WORKING_PIECES];
        int taken[1 + TLS_WORKING_PIECES];
        sizes[0] = TLS_KEPT_AFTER_HANDSHAKE;
        tags[0] = "tls_peer_keys";
        kinds[0] = OWN_SSL;
        for (int i = 1; i <= TLS_WORKING_PIECES; i++) {
            sizes[i] = TLS_WORKING_PIECE;
            tags[i] = "tls_handshake_work";
            kinds[i] = OWN_HANDSHAKE;
        }
        sync_reserve();
        fits = take_all(sizes, tags, 1 + TLS_WORKING_PIECES, kinds, (uintptr_t)ssl, taken);
        if (fits) {
            sessions[s].state = 2;
        }
    }
    unlock(&model_lock, cancel);
    return fits ? real.ssl_handshake_step(ssl) : MBEDTLS_ERR_SSL_ALLOC_FAILED;
}

void mbedtls_ssl_handshake_wrapup(void *ssl) {
    NEED_MICROPYTHON();
    real.ssl_handshake_wrapup(ssl);
    int cancel = lock(&model_lock);
    int s = session_index(ssl, false);
    if (s >= 0) {
        sessions[s].state = 3;
    }
    release(OWN_HANDSHAKE, (uintptr_t)ssl);
    unlock(&model_lock, cancel);
}

void mbedtls_ssl_free(void *ssl) {
    NEED_MICROPYTHON();
    real.ssl_free(ssl);
    int cancel = lock(&model_lock);
    int s = session_index(ssl, false);
    if (s >= 0) {
        sessions[s].ssl = NULL;
    }
    release(OWN_SSL, (uintptr_t)ssl);
    release(OWN_HANDSHAKE, (uintptr_t)ssl);
    unlock(&model_lock, cancel);
}

/* SSLContext.load_cert_chain() / load_verify_locations(): a parsed certificate (or key) lives on
 * ESP-IDF's heap until the context's finaliser frees it (extmod/modtls_mbedtls.c ssl_context___del__). */
static int charge_parsed(const char *tag, size_t der_bytes, enum owner kind, void *owner) {
    int cancel = lock(&model_lock);
    sync_reserve();
    int handle = model_malloc((uint32_t)(der_bytes + TLS_PARSED_OVERHEAD), tag, kind, (uintptr_t)owner);
    unlock(&model_lock, cancel);
    return handle;
}

/* Undo a charge unless mbedtls's own clean-up (x509_crt_free of the chain) already released it. */
static void uncharge(int handle, enum owner kind, void *owner) {
    int cancel = lock(&model_lock);
    if (valid_handle(handle) && blocks[handle - 1].owner_kind == kind && blocks[handle - 1].owner == (uintptr_t)owner) {
        model_free(handle);
    }
    unlock(&model_lock, cancel);
}

static void release_owner(enum owner kind, void *owner) {
    if (__atomic_load_n(&owned_count[kind], __ATOMIC_RELAXED) == 0) {
        return;
    }
    int cancel = lock(&model_lock);
    release(kind, (uintptr_t)owner);
    unlock(&model_lock, cancel);
}

int mbedtls_x509_crt_parse(void *chain, const unsigned char *buf, size_t buflen) {
    NEED_MICROPYTHON();
    int handle = charge_parsed("tls_cert", buflen, OWN_CRT, chain);
    if (!handle) {
        return MBEDTLS_ERR_X509_ALLOC_FAILED;
    }
    int ret = real.x509_crt_parse(chain, buf, buflen);
    if (ret < 0) {
        uncharge(handle, OWN_CRT, chain);
    }
    return ret;
}

void mbedtls_x509_crt_free(void *chain) {
    NEED_MICROPYTHON();
    real.x509_crt_free(chain);
    release_owner(OWN_CRT, chain);
}

/* Charged once parsed: mbedtls_pk_parse_key() tries one key format after another and calls
 * mbedtls_pk_free() on the context between them. */
int mbedtls_pk_parse_key(void *ctx, const unsigned char *key, size_t keylen, const unsigned char *pwd,
                         size_t pwdlen, int (*f_rng)(void *, unsigned char *, size_t), void *p_rng) {
    NEED_MICROPYTHON();
    int ret = real.pk_parse_key(ctx, key, keylen, pwd, pwdlen, f_rng, p_rng);
    if (ret == 0 && !charge_parsed("tls_key", keylen, OWN_PK, ctx)) {
        real.pk_free(ctx);  /* leaves it as mbedtls_pk_init() does */
        ret = MBEDTLS_ERR_PK_ALLOC_FAILED;
    }
    return ret;
}

void mbedtls_pk_free(void *ctx) {
    NEED_MICROPYTHON();
    real.pk_free(ctx);
    release_owner(OWN_PK, ctx);
}

/* ---- libc, interposed: sockets' charges go with their descriptor; the protocol ------------------- */

int close(int fd) {
    if (fd >= 0 && fd < MAX_FDS && __atomic_load_n(&fd_charged[fd], __ATOMIC_RELAXED)) {
        int cancel = lock(&model_lock);
        fd_charged[fd] = 0;  /* before the number can be reused */
        release(OWN_FD, (uintptr_t)fd);
        unlock(&model_lock, cancel);
    }
    if (real.close == NULL) {
        real.close = dlsym(RTLD_NEXT, "close");
    }
    return real.close(fd);
}

static __thread char answer[1024];

static void stats_line(void) {
    unsigned long stops, parked;
    world_counts(&stops, &parked);
    snprintf(answer, sizeof answer,
             "gc_total=%u gc_peak=%u gc_areas=%d growths=%u givebacks=%u refused=%u largest=%u largest_min=%u "
             "free=%u free_min=%u heap64=%lu moved=%u world_stops=%lu threads_stopped=%lu",
             gc_total(), stats.gc_peak, area_count, stats.growths, stats.givebacks, stats.refused, largest_free(),
             stats.largest_min, total_free(), stats.free_min,
             (unsigned long)(pool.armed ? pool.limit - pool.base : 0), stats.moved, stops, parked);
}

static void info_line(void) {
    size_t used = 0;
    answer[0] = '\0';
    for (int i = 0; i < region_count && used < sizeof answer; i++) {
        const region_t *reg = &regions[region_order[i]];
        used += (size_t)snprintf(answer + used, sizeof answer - used, "%s%u,%u,%u,%u", i ? ";" : "", reg->size,
                                 reg->free_bytes, region_largest(region_order[i]), reg->min_free);
    }
}

static const char *command(const char *line) {
    char tag[sizeof blocks[0].tag];
    unsigned long bytes = 0;
    int number = -1;
    if (strcmp(line, "ready") == 0) {
        arm();
        return "ok";
    }
    int cancel = lock(&model_lock);
    sync_reserve();
    if (sscanf(line, "malloc %20s %lu %d", tag, &bytes, &number) >= 2 && bytes > 0 && bytes < (1ul << 24)) {
        bool by_fd = number >= 0 && number < MAX_FDS;
        int handle = model_malloc((uint32_t)bytes, tag, by_fd ? OWN_FD : OWN_NONE, by_fd ? (uintptr_t)number : 0);
        if (handle && by_fd) {
            fd_charged[number] = 1;
        }
        snprintf(answer, sizeof answer, "%d", handle);
    } else if (sscanf(line, "free %d", &number) == 1) {
        snprintf(answer, sizeof answer, "%s", valid_handle(number) ? "ok" : "no such block");
        if (valid_handle(number)) {
            model_free(number);
        }
    } else if (sscanf(line, "region %lu", &bytes) == 1 && bytes > 64 && bytes < (1ul << 24)) {
        snprintf(answer, sizeof answer, "%s", add_region((uint32_t)bytes, true) >= 0 ? "ok" : "too many regions");
        event("region", "heap_caps_add_region", (long)bytes, 0);
        note_low_water();
    } else if (strcmp(line, "info") == 0) {
        info_line();
    } else if (strcmp(line, "stats") == 0) {
        stats_line();
    } else {
        snprintf(answer, sizeof answer, "unknown command: %.60s", line);
    }
    unlock(&model_lock, cancel);
    return answer;
}

char *getenv(const char *name) {
    if (strncmp(name, "VBRAM ", 6) == 0) {
        if (area_count == 0) {
            return NULL;  /* not in MicroPython's process, or before gc_init(): no model */
        }
        return (char *)command(name + 6);
    }
    return libc_getenv(name);
}
