/* workpool.h - a fixed pool of threads for blocking or CPU-heavy work
 * (password hashing, ...) that must never run on an event loop. A job's
 * `work` runs on a pool thread; its `done` runs afterwards on the event_base
 * that submitted it. The queue is bounded: a full pool refuses at once, so a
 * flood becomes "try again later" instead of unbounded memory. */
#ifndef MAIL_WORKPOOL_H
#define MAIL_WORKPOOL_H
#include "lib/common.h"
#include <event2/event.h>

struct workpool;
typedef void workpool_fn(void *arg);

/* workpool_new - nthreads >= 1; max_queued jobs waiting (running ones not counted) */
struct workpool *workpool_new(const char *name, int nthreads, size_t max_queued);
/* workpool_free - lets queued and running jobs finish (their done callbacks
 * are still delivered to their bases if those loops run), then joins */
void workpool_free(struct workpool **wpp);
/* workpool_submit - 0, or -1 when the queue is full (nothing was queued).
 * Callers whose owner may vanish before `done` runs key their state by id. */
int workpool_submit(struct workpool *wp, struct event_base *base, workpool_fn *work,
		    workpool_fn *done, void *arg);
size_t workpool_queued(struct workpool *wp);
#endif
