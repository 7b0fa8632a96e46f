/* gc_world.c: a garbage collection stops every other thread of the board, as the ESP32 port's GIL does. */
#ifndef GC_WORLD_H
#define GC_WORLD_H

/* Around what the collector needs and a thread must not be stopped inside (the GC's mutex, the port's
 * atomic section, the RAM model's lock): a stop asked for meanwhile waits until the thread leaves. */
void world_crit_enter(void);
void world_crit_leave(void);
/* Before waiting for a lock: the thread holds nothing the collector needs, and may be stopped while it waits. */
int world_crit_suspend(void);
void world_crit_resume(int saved);

/* The collector: every other thread stopped (parked) until world_start(); nests. */
void world_stop(void);
void world_start(void);
void world_counts(unsigned long *stops, unsigned long *parked);

#endif
