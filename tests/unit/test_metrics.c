/* test_metrics.c - the Prometheus registry: exact text output (HELP/TYPE
 * once per family, labels, histogram buckets merged with labels, _sum,
 * _count), re-registration, process metrics, lock-free updates from threads. */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <pthread.h>
#include <cmocka.h>
#include "lib/common.h"
#include "lib/metrics.h"
#include <event2/buffer.h>

/* render - the whole exposition as a NUL-terminated string the caller frees */
static char *render(void)
{
	struct evbuffer *b = evbuffer_new();
	metrics_render(b);
	size_t len = evbuffer_get_length(b);
	char *s = malloc(len + 1);
	evbuffer_remove(b, s, len);
	s[len] = '\0';
	evbuffer_free(b);
	return s;
}

static void assert_contains(const char *hay, const char *needle)
{
	if (strstr(hay, needle) == NULL) {
		print_error("expected to find:\n%s\nin:\n%s\n", needle, hay);
		fail();
	}
}

static void test_counter_labels(void **state)
{
	struct metric *put = metric_counter("t_requests_total{method=\"put\"}", "Requests served.");
	struct metric *get = metric_counter("t_requests_total{method=\"get\",code=\"200\"}", "ignored");
	assert_ptr_equal(put, metric_counter("t_requests_total{method=\"put\"}", "Requests served."));
	metric_inc(put);
	metric_inc(put);
	metric_add(get, 40);
	metric_add(get, -5); /* counters never go down */
	assert_true(metric_value(put) == 2.0);
	assert_true(metric_value(get) == 40.0);
	char *out = render();
	assert_contains(out,
			"# HELP t_requests_total Requests served.\n"
			"# TYPE t_requests_total counter\n"
			"t_requests_total{method=\"put\"} 2\n"
			"t_requests_total{method=\"get\",code=\"200\"} 40\n");
	/* one header per family */
	assert_ptr_equal(strstr(strstr(out, "# TYPE t_requests_total") + 1, "# TYPE t_requests_total"), NULL);
	free(out);
}

static void test_gauge(void **state)
{
	struct metric *g = metric_gauge("t_temperature_celsius", "Line one\nback\\slash");
	metric_set(g, -1.5);
	metric_add(g, 0.25);
	assert_true(metric_value(g) == -1.25);
	char *out = render();
	assert_contains(out,
			"# HELP t_temperature_celsius Line one\\nback\\\\slash\n"
			"# TYPE t_temperature_celsius gauge\n"
			"t_temperature_celsius -1.25\n");
	free(out);
	metric_set(g, 1e21);
	out = render();
	assert_contains(out, "t_temperature_celsius 1e+21\n");
	free(out);
	metric_set(g, 0.1);
	out = render();
	assert_contains(out, "t_temperature_celsius 0.1\n");
	free(out);
}

static double fn_value(void *arg)
{
	return *(double *)arg;
}

static void test_gauge_fn(void **state)
{
	static double v = 42.5;
	struct metric *m = metric_gauge_fn("t_disk_free_bytes", "Free bytes.", fn_value, &v);
	assert_true(metric_value(m) == 42.5);
	v = 7;
	char *out = render();
	assert_contains(out, "# TYPE t_disk_free_bytes gauge\nt_disk_free_bytes 7\n");
	free(out);
}

static void test_histogram_labels(void **state)
{
	static const double buckets[] = { 0.25, 0.5, 1 };
	struct metric *h = metric_histogram("t_latency_seconds{op=\"put\"}", "Latency.",
					    buckets, N_ELEMENTS(buckets));
	metric_observe(h, 0.125);
	metric_observe(h, 0.25); /* le is inclusive */
	metric_observe(h, 0.75);
	metric_observe(h, 4);
	assert_true(metric_value(h) == 4.0);
	char *out = render();
	assert_contains(out,
			"# HELP t_latency_seconds Latency.\n"
			"# TYPE t_latency_seconds histogram\n"
			"t_latency_seconds_bucket{op=\"put\",le=\"0.25\"} 2\n"
			"t_latency_seconds_bucket{op=\"put\",le=\"0.5\"} 2\n"
			"t_latency_seconds_bucket{op=\"put\",le=\"1\"} 3\n"
			"t_latency_seconds_bucket{op=\"put\",le=\"+Inf\"} 4\n"
			"t_latency_seconds_sum{op=\"put\"} 5.125\n"
			"t_latency_seconds_count{op=\"put\"} 4\n");
	free(out);
}

static void test_histogram_default_buckets(void **state)
{
	struct metric *h = metric_histogram("t_plain_seconds", "Plain.", NULL, 0);
	metric_observe(h, 0.003);
	char *out = render();
	assert_contains(out,
			"# TYPE t_plain_seconds histogram\n"
			"t_plain_seconds_bucket{le=\"0.0001\"} 0\n");
	assert_contains(out, "t_plain_seconds_bucket{le=\"0.0025\"} 0\n"
			     "t_plain_seconds_bucket{le=\"0.005\"} 1\n");
	assert_contains(out, "t_plain_seconds_bucket{le=\"10\"} 1\n"
			     "t_plain_seconds_bucket{le=\"+Inf\"} 1\n"
			     "t_plain_seconds_sum 0.003\n"
			     "t_plain_seconds_count 1\n");
	free(out);
}

static void test_process_metrics(void **state)
{
	char *out = render();
	assert_contains(out, "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds ");
	assert_contains(out, "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes ");
	assert_contains(out, "# TYPE process_open_fds gauge\nprocess_open_fds ");
	double fds = strtod(strstr(out, "\nprocess_open_fds ") + 18, NULL);
	double rss = strtod(strstr(out, "\nprocess_resident_memory_bytes ") + 31, NULL);
	double start = strtod(strstr(out, "\nprocess_start_time_seconds ") + 28, NULL);
	assert_true(fds >= 3);
	assert_true(rss > 1024 * 1024);
	assert_true(start > 1.5e9);
	/* every line is a comment or "name[{labels}] value" */
	for (char *line = out; *line != '\0';) {
		char *nl = strchr(line, '\n');
		assert_non_null(nl);
		if (line[0] != '#')
			assert_non_null(memchr(line, ' ', (size_t)(nl - line)));
		line = nl + 1;
	}
	free(out);
}

#define THREADS 4
#define ROUNDS 100000

struct hammer {
	struct metric *counter, *gauge, *hist;
};

static void *hammer_thread(void *arg)
{
	struct hammer *h = arg;
	for (int i = 0; i < ROUNDS; i++) {
		metric_inc(h->counter);
		metric_add(h->gauge, 0.5);
		metric_observe(h->hist, (i & 1) ? 0.5 : 2.0);
	}
	return NULL;
}

static void test_concurrent(void **state)
{
	static const double buckets[] = { 1 };
	struct hammer h = {
		metric_counter("t_hammer_total", "Hammered."),
		metric_gauge("t_hammer_gauge", "Hammered."),
		metric_histogram("t_hammer_seconds", "Hammered.", buckets, 1),
	};
	pthread_t th[THREADS];
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, hammer_thread, &h), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	assert_true(metric_value(h.counter) == (double)THREADS * ROUNDS);
	assert_true(metric_value(h.gauge) == (double)THREADS * ROUNDS * 0.5);
	assert_true(metric_value(h.hist) == (double)THREADS * ROUNDS);
	char *out = render();
	char expect[512];
	snprintf(expect, sizeof(expect),
		 "t_hammer_seconds_bucket{le=\"1\"} %d\n"
		 "t_hammer_seconds_bucket{le=\"+Inf\"} %d\n"
		 "t_hammer_seconds_sum %d\n"
		 "t_hammer_seconds_count %d\n",
		 THREADS * ROUNDS / 2, THREADS * ROUNDS, THREADS * ROUNDS / 2 * 5 / 2, THREADS * ROUNDS);
	assert_contains(out, expect);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counter_labels),
		cmocka_unit_test(test_gauge),
		cmocka_unit_test(test_gauge_fn),
		cmocka_unit_test(test_histogram_labels),
		cmocka_unit_test(test_histogram_default_buckets),
		cmocka_unit_test(test_process_metrics),
		cmocka_unit_test(test_concurrent),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
