/* workpool.c - threads taking jobs from one mutex-protected FIFO; completions
 * go back with event_base_once, which is thread-safe once libevent's pthread
 * locking is on (daemon_new turns it on; workpool_new does too, in case). */
#include "lib/common.h"
#include "lib/workpool.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include <event2/thread.h>
#include <pthread.h>
#include <stdlib.h>

struct workpool_job {
	struct workpool_job *next;
	struct event_base *base;
	workpool_fn *work, *done;
	void *arg;
};

struct workpool {
	char name[32];
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct workpool_job *head, *tail;
	size_t queued, max_queued;
	bool stopping;
	int nthreads;
	pthread_t *threads;
};

/* job_done - on the submitter's loop: run `done` and free the job */
static void job_done(evutil_socket_t fd, short what, void *ctx)
{
	struct workpool_job *job = ctx;
	if (job->done != NULL)
		job->done(job->arg);
	free(job);
}

/* workpool_thread - take jobs until stopping and the queue is empty */
static void *workpool_thread(void *ctx)
{
	struct workpool *wp = ctx;
	log_set_thread(wp->name);
	pthread_mutex_lock(&wp->lock);
	for (;;) {
		while (wp->head == NULL && !wp->stopping)
			pthread_cond_wait(&wp->cond, &wp->lock);
		struct workpool_job *job = wp->head;
		if (job == NULL)
			break; /* stopping and drained */
		wp->head = job->next;
		if (wp->head == NULL)
			wp->tail = NULL;
		wp->queued--;
		pthread_mutex_unlock(&wp->lock);
		job->work(job->arg);
		static const struct timeval zero = { 0, 0 };
		if (event_base_once(job->base, -1, EV_TIMEOUT, job_done, job, &zero) < 0) {
			log_error("workpool cannot deliver a completion", "pool=%s", wp->name);
			free(job);
		}
		pthread_mutex_lock(&wp->lock);
	}
	pthread_mutex_unlock(&wp->lock);
	return NULL;
}

struct workpool *workpool_new(const char *name, int nthreads, size_t max_queued)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, (void (*)(void))evthread_use_pthreads);
	struct workpool *wp = XNEW(struct workpool);
	snprintf(wp->name, sizeof(wp->name), "%s", name);
	pthread_mutex_init(&wp->lock, NULL);
	pthread_cond_init(&wp->cond, NULL);
	wp->max_queued = max_queued;
	wp->nthreads = nthreads < 1 ? 1 : nthreads;
	wp->threads = xcalloc((size_t)wp->nthreads, sizeof(pthread_t));
	for (int i = 0; i < wp->nthreads; i++)
		if (pthread_create(&wp->threads[i], NULL, workpool_thread, wp) != 0)
			log_fatal("cannot start a worker thread", "pool=%s", name);
	return wp;
}

void workpool_free(struct workpool **wpp)
{
	struct workpool *wp = *wpp;
	if (wp == NULL)
		return;
	pthread_mutex_lock(&wp->lock);
	wp->stopping = true;
	pthread_cond_broadcast(&wp->cond);
	pthread_mutex_unlock(&wp->lock);
	for (int i = 0; i < wp->nthreads; i++)
		pthread_join(wp->threads[i], NULL);
	pthread_mutex_destroy(&wp->lock);
	pthread_cond_destroy(&wp->cond);
	free(wp->threads);
	free(wp);
	*wpp = NULL;
}

int workpool_submit(struct workpool *wp, struct event_base *base, workpool_fn *work,
		    workpool_fn *done, void *arg)
{
	pthread_mutex_lock(&wp->lock);
	if (wp->stopping || wp->queued >= wp->max_queued) {
		pthread_mutex_unlock(&wp->lock);
		return -1;
	}
	struct workpool_job *job = XNEW(struct workpool_job);
	job->base = base;
	job->work = work;
	job->done = done;
	job->arg = arg;
	if (wp->tail != NULL)
		wp->tail->next = job;
	else
		wp->head = job;
	wp->tail = job;
	wp->queued++;
	pthread_cond_signal(&wp->cond);
	pthread_mutex_unlock(&wp->lock);
	return 0;
}

size_t workpool_queued(struct workpool *wp)
{
	pthread_mutex_lock(&wp->lock);
	size_t n = wp->queued;
	pthread_mutex_unlock(&wp->lock);
	return n;
}
