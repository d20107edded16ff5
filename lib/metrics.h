/* metrics.h - a process-wide registry of Prometheus metrics.
 * Updates are lock-free atomics, safe from any thread. A metric's name may
 * carry a fixed label set: metric_counter("store_requests_total{method=\"put\"}", ...);
 * series sharing the base name share one HELP/TYPE header in the output. */
#ifndef MAIL_METRICS_H
#define MAIL_METRICS_H
#include "lib/common.h"

struct evbuffer;
struct metric;

/* registration returns the existing metric if the same full name exists */
struct metric *metric_counter(const char *name, const char *help);
struct metric *metric_gauge(const char *name, const char *help);
/* metric_gauge_fn - a gauge read at scrape time from fn(arg) (disk free, ...) */
struct metric *metric_gauge_fn(const char *name, const char *help, double (*fn)(void *arg), void *arg);
/* histogram buckets are upper bounds in increasing order (+Inf is implied);
 * buckets == NULL gives latency buckets in seconds (0.0001 .. 10) */
struct metric *metric_histogram(const char *name, const char *help, const double *buckets, size_t n);

void metric_inc(struct metric *m);
void metric_add(struct metric *m, double v);
void metric_set(struct metric *m, double v);
void metric_observe(struct metric *m, double v);
double metric_value(const struct metric *m); /* counters and gauges, for tests */

/* metrics_render - the Prometheus text exposition format (version 0.0.4) */
void metrics_render(struct evbuffer *out);
#endif
