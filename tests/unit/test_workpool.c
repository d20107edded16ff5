/* test_workpool.c - jobs run off the loop, completions come back on it, a
 * full queue refuses at once, free waits for queued work. */
#include <stdarg.h>
#include <setjmp.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>
#include "lib/common.h"
#include "lib/workpool.h"
#include <event2/event.h>

struct job_state {
	pthread_t loop_thread;
	int worked, done, done_on_loop;
	int wanted;
	struct event_base *base;
	pthread_mutex_t lock;
};

static void job_work(void *arg)
{
	struct job_state *st = arg;
	usleep(1000);
	pthread_mutex_lock(&st->lock);
	st->worked++;
	pthread_mutex_unlock(&st->lock);
}

static void job_done(void *arg)
{
	struct job_state *st = arg;
	st->done++;
	if (pthread_equal(pthread_self(), st->loop_thread))
		st->done_on_loop++;
	if (st->done == st->wanted)
		event_base_loopbreak(st->base);
}

static void test_run_and_complete(void **state)
{
	struct workpool *wp = workpool_new("test", 4, 1000);
	struct job_state st = { .loop_thread = pthread_self(), .wanted = 200 };
	pthread_mutex_init(&st.lock, NULL);
	st.base = event_base_new();
	for (int i = 0; i < st.wanted; i++)
		assert_int_equal(workpool_submit(wp, st.base, job_work, job_done, &st), 0);
	struct timeval limit = { 10, 0 };
	event_base_loopexit(st.base, &limit);
	event_base_dispatch(st.base);
	assert_int_equal(st.worked, 200);
	assert_int_equal(st.done, 200);
	assert_int_equal(st.done_on_loop, 200);
	workpool_free(&wp);
	assert_null(wp);
	event_base_free(st.base);
	pthread_mutex_destroy(&st.lock);
}

static void slow_work(void *arg)
{
	usleep(50000);
	job_work(arg);
}

static void test_bounded_queue(void **state)
{
	struct workpool *wp = workpool_new("test", 1, 2);
	struct job_state st = { .loop_thread = pthread_self(), .wanted = 3 };
	pthread_mutex_init(&st.lock, NULL);
	st.base = event_base_new();
	/* one job runs, two wait: the fourth must be refused */
	assert_int_equal(workpool_submit(wp, st.base, slow_work, job_done, &st), 0);
	for (int i = 0; i < 5000 && workpool_queued(wp) > 0; i++)
		usleep(1000); /* until the thread took it */
	assert_int_equal(workpool_submit(wp, st.base, slow_work, job_done, &st), 0);
	assert_int_equal(workpool_submit(wp, st.base, slow_work, job_done, &st), 0);
	assert_int_equal(workpool_submit(wp, st.base, slow_work, job_done, &st), -1);
	struct timeval limit = { 10, 0 };
	event_base_loopexit(st.base, &limit);
	event_base_dispatch(st.base);
	assert_int_equal(st.done, 3);
	workpool_free(&wp);
	event_base_free(st.base);
	pthread_mutex_destroy(&st.lock);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_run_and_complete),
		cmocka_unit_test(test_bounded_queue),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
