/* metrics.c - the process-wide Prometheus registry.
 * Registration takes one mutex (it happens at start-up); updates are C11
 * atomics on 64-bit words (doubles are stored as their bit pattern and
 * changed with a compare-and-swap loop), so any thread may update any metric
 * without a lock. Metrics are never unregistered: a struct metric pointer
 * stays valid for the life of the process.
 *
 * Series that share a base name ("x_total{a=\"1\"}", "x_total{a=\"2\"}")
 * form a family with one HELP/TYPE header; families render in the order they
 * were first registered. The process_* metrics are registered with the first
 * metric and read at scrape time. */
#include "lib/common.h"
#include "lib/metrics.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include <ctype.h>
#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_GAUGE_FN, METRIC_HISTOGRAM };

struct metric_family;

struct metric {
	struct metric_family *family;
	char *full_name;       /* as registered, with its labels */
	char *labels;          /* inside the braces, NULL without labels */
	_Atomic uint64_t bits; /* counter / gauge value as a double's bit pattern */
	double (*fn)(void *arg);
	void *fn_arg;
	/* histograms: counts[i] for buckets[i] (not cumulative), counts[n] for +Inf */
	double *buckets;
	size_t n_buckets;
	_Atomic uint64_t *counts;
	_Atomic uint64_t sum_bits;
	struct metric *next;   /* within the family */
};

struct metric_family {
	char *name;
	char *help;
	enum metric_type type;
	struct metric *first, **last;
	struct metric_family *next;
};

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static struct metric_family *metrics_families, **metrics_families_tail = &metrics_families;
static pthread_once_t metrics_process_once = PTHREAD_ONCE_INIT;

static const double metrics_default_buckets[] = {
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

static inline uint64_t dbl_bits(double v)
{
	uint64_t u;
	memcpy(&u, &v, sizeof(u));
	return u;
}

static inline double bits_dbl(uint64_t u)
{
	double v;
	memcpy(&v, &u, sizeof(v));
	return v;
}

/* atomic_add_double - lock-free v += delta on a double stored as bits */
static inline void atomic_add_double(_Atomic uint64_t *p, double delta)
{
	uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
	uint64_t new;
	do {
		new = dbl_bits(bits_dbl(old) + delta);
	} while (!atomic_compare_exchange_weak_explicit(p, &old, new, memory_order_relaxed,
							memory_order_relaxed));
}

static const char *type_name(enum metric_type t)
{
	switch (t) {
	case METRIC_COUNTER: return "counter";
	case METRIC_GAUGE:
	case METRIC_GAUGE_FN: return "gauge";
	case METRIC_HISTOGRAM: return "histogram";
	}
	return "untyped";
}

/* split_name - "base{labels}" -> base length and label text; panics on a bad name
 * (names are fixed strings in the code: a bad one is a bug) */
static void split_name(const char *name, size_t *base_len_r, const char **labels_r,
		       size_t *labels_len_r)
{
	size_t i = 0;
	if (!(isalpha((unsigned char)name[0]) || name[0] == '_' || name[0] == ':'))
		log_panic("bad metric name", "name=%s", name);
	while (isalnum((unsigned char)name[i]) || name[i] == '_' || name[i] == ':')
		i++;
	*base_len_r = i;
	*labels_r = NULL;
	*labels_len_r = 0;
	if (name[i] == '\0')
		return;
	size_t len = strlen(name);
	if (name[i] != '{' || name[len - 1] != '}' || len - i < 2)
		log_panic("bad metric name", "name=%s", name);
	if (len - i > 2) {
		*labels_r = name + i + 1;
		*labels_len_r = len - i - 2;
	}
}

static void metrics_register_process(void);

/* metric_register - finds or creates the series `name` of the given type */
static struct metric *metric_register(const char *name, const char *help, enum metric_type type,
				      const double *buckets, size_t n)
{
	size_t base_len, labels_len;
	const char *labels;
	struct metric_family *f;
	struct metric *m;

	if (type != METRIC_GAUGE_FN)
		pthread_once(&metrics_process_once, metrics_register_process);
	split_name(name, &base_len, &labels, &labels_len);
	if (type == METRIC_HISTOGRAM) {
		if (buckets == NULL) {
			buckets = metrics_default_buckets;
			n = N_ELEMENTS(metrics_default_buckets);
		}
		for (size_t i = 0; i < n; i++) {
			if (isnan(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
				log_panic("histogram buckets not increasing", "name=%s", name);
		}
		if (n > 0 && isinf(buckets[n - 1]) && buckets[n - 1] > 0)
			n--; /* +Inf is implied */
	}

	pthread_mutex_lock(&metrics_lock);
	for (f = metrics_families; f != NULL; f = f->next) {
		if (strlen(f->name) == base_len && memcmp(f->name, name, base_len) == 0)
			break;
	}
	if (f != NULL) {
		enum metric_type ft = f->type == METRIC_GAUGE_FN ? METRIC_GAUGE : f->type;
		enum metric_type nt = type == METRIC_GAUGE_FN ? METRIC_GAUGE : type;
		if (ft != nt)
			log_panic("metric registered with two types", "name=%s", name);
		for (m = f->first; m != NULL; m = m->next) {
			if (strcmp(m->full_name, name) == 0) {
				pthread_mutex_unlock(&metrics_lock);
				return m;
			}
		}
	} else {
		f = XNEW(struct metric_family);
		f->name = xstrndup(name, base_len);
		f->help = xstrdup(help != NULL ? help : "");
		f->type = type;
		f->last = &f->first;
		*metrics_families_tail = f;
		metrics_families_tail = &f->next;
	}
	m = XNEW(struct metric);
	m->family = f;
	m->full_name = xstrdup(name);
	if (labels != NULL)
		m->labels = xstrndup(labels, labels_len);
	atomic_init(&m->bits, dbl_bits(0.0));
	atomic_init(&m->sum_bits, dbl_bits(0.0));
	if (type == METRIC_GAUGE_FN)
		m->fn = NULL; /* set by the caller before it is published */
	if (type == METRIC_HISTOGRAM) {
		m->n_buckets = n;
		m->buckets = n > 0 ? xmemdup(buckets, n * sizeof(*buckets)) : NULL;
		m->counts = xcalloc(n + 1, sizeof(*m->counts));
		for (size_t i = 0; i <= n; i++)
			atomic_init(&m->counts[i], 0);
	}
	*f->last = m;
	f->last = &m->next;
	pthread_mutex_unlock(&metrics_lock);
	return m;
}

struct metric *metric_counter(const char *name, const char *help)
{
	return metric_register(name, help, METRIC_COUNTER, NULL, 0);
}

struct metric *metric_gauge(const char *name, const char *help)
{
	return metric_register(name, help, METRIC_GAUGE, NULL, 0);
}

/* gauge_fn_register - metric_gauge_fn without the process-metrics once */
static struct metric *gauge_fn_register(const char *name, const char *help,
					double (*fn)(void *arg), void *arg)
{
	/* set fn under the lock so a concurrent scrape never sees it half-made */
	struct metric *m = metric_register(name, help, METRIC_GAUGE_FN, NULL, 0);
	pthread_mutex_lock(&metrics_lock);
	if (m->fn == NULL && m->family->type == METRIC_GAUGE_FN) {
		m->fn = fn;
		m->fn_arg = arg;
	}
	pthread_mutex_unlock(&metrics_lock);
	return m;
}

struct metric *metric_gauge_fn(const char *name, const char *help, double (*fn)(void *arg), void *arg)
{
	pthread_once(&metrics_process_once, metrics_register_process);
	return gauge_fn_register(name, help, fn, arg);
}

struct metric *metric_histogram(const char *name, const char *help, const double *buckets, size_t n)
{
	return metric_register(name, help, METRIC_HISTOGRAM, buckets, n);
}

void metric_inc(struct metric *m)
{
	metric_add(m, 1.0);
}

void metric_add(struct metric *m, double v)
{
	switch (m->family->type) {
	case METRIC_COUNTER:
		if (!(v >= 0))
			return; /* a counter never goes down; a NaN is ignored too */
		/* fall through */
	case METRIC_GAUGE:
		atomic_add_double(&m->bits, v);
		return;
	case METRIC_HISTOGRAM:
		metric_observe(m, v);
		return;
	case METRIC_GAUGE_FN:
		return;
	}
}

void metric_set(struct metric *m, double v)
{
	if (m->family->type == METRIC_GAUGE || m->family->type == METRIC_COUNTER)
		atomic_store_explicit(&m->bits, dbl_bits(v), memory_order_relaxed);
}

void metric_observe(struct metric *m, double v)
{
	if (m->family->type != METRIC_HISTOGRAM) {
		metric_add(m, v);
		return;
	}
	if (isnan(v))
		return;
	size_t i = 0;
	/* buckets are few (~16): a linear scan beats a binary search here */
	while (i < m->n_buckets && v > m->buckets[i])
		i++;
	atomic_fetch_add_explicit(&m->counts[i], 1, memory_order_relaxed);
	atomic_add_double(&m->sum_bits, v);
}

double metric_value(const struct metric *m)
{
	switch (m->family->type) {
	case METRIC_COUNTER:
	case METRIC_GAUGE:
		return bits_dbl(atomic_load_explicit(&((struct metric *)m)->bits, memory_order_relaxed));
	case METRIC_GAUGE_FN:
		return m->fn != NULL ? m->fn(m->fn_arg) : 0.0;
	case METRIC_HISTOGRAM: {
		uint64_t total = 0;
		for (size_t i = 0; i <= m->n_buckets; i++)
			total += atomic_load_explicit(&m->counts[i], memory_order_relaxed);
		return (double)total;
	}
	}
	return 0.0;
}

/* fmt_double - shortest text that reads back as the same double; Prometheus
 * spellings for the infinities and NaN */
static const char *fmt_double(char *buf, size_t size, double v)
{
	if (isnan(v))
		return "NaN";
	if (isinf(v))
		return v > 0 ? "+Inf" : "-Inf";
	if (v == 0)
		return "0"; /* also for -0 */
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, size, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			break;
	}
	return buf;
}

/* render_help - HELP text escaped as the format asks: backslash and newline */
static void render_help(struct evbuffer *out, const struct metric_family *f)
{
	evbuffer_add_printf(out, "# HELP %s ", f->name);
	for (const char *p = f->help; *p != '\0'; p++) {
		if (*p == '\\')
			evbuffer_add(out, "\\\\", 2);
		else if (*p == '\n')
			evbuffer_add(out, "\\n", 2);
		else
			evbuffer_add(out, p, 1);
	}
	evbuffer_add_printf(out, "\n# TYPE %s %s\n", f->name, type_name(f->type));
}

static void render_histogram(struct evbuffer *out, const struct metric *m)
{
	const char *name = m->family->name;
	const char *sep = m->labels != NULL ? "," : "";
	const char *labels = m->labels != NULL ? m->labels : "";
	char num[64];
	uint64_t cum = 0;

	for (size_t i = 0; i <= m->n_buckets; i++) {
		cum += atomic_load_explicit(&m->counts[i], memory_order_relaxed);
		const char *le = i < m->n_buckets ? fmt_double(num, sizeof(num), m->buckets[i]) : "+Inf";
		evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n",
				    name, labels, sep, le, cum);
	}
	double sum = bits_dbl(atomic_load_explicit(&((struct metric *)m)->sum_bits,
						   memory_order_relaxed));
	/* _count is the +Inf bucket, so the two always agree even mid-update */
	if (m->labels != NULL) {
		evbuffer_add_printf(out, "%s_sum{%s} %s\n", name, labels,
				    fmt_double(num, sizeof(num), sum));
		evbuffer_add_printf(out, "%s_count{%s} %" PRIu64 "\n", name, labels, cum);
	} else {
		evbuffer_add_printf(out, "%s_sum %s\n", name, fmt_double(num, sizeof(num), sum));
		evbuffer_add_printf(out, "%s_count %" PRIu64 "\n", name, cum);
	}
}

void metrics_render(struct evbuffer *out)
{
	char num[64];
	pthread_once(&metrics_process_once, metrics_register_process);
	/* gauge functions run under the lock: they must not register metrics */
	pthread_mutex_lock(&metrics_lock);
	for (const struct metric_family *f = metrics_families; f != NULL; f = f->next) {
		render_help(out, f);
		for (const struct metric *m = f->first; m != NULL; m = m->next) {
			if (f->type == METRIC_HISTOGRAM) {
				render_histogram(out, m);
				continue;
			}
			double v = metric_value(m);
			evbuffer_add_printf(out, "%s %s\n", m->full_name, fmt_double(num, sizeof(num), v));
		}
	}
	pthread_mutex_unlock(&metrics_lock);
}

/* ------------------------------------------------------------ process metrics */

static double process_start_time;

/* process_start_from_proc - start time from /proc/self/stat (ticks since boot)
 * and btime from /proc/stat; -1 when unreadable */
static double process_start_from_proc(void)
{
	char buf[1024];
	FILE *fp = fopen("/proc/self/stat", "r");
	if (fp == NULL)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	/* the command name may hold spaces and ')': fields restart after the last ')' */
	char *p = strrchr(buf, ')');
	if (p == NULL)
		return -1;
	unsigned long long start_ticks = 0;
	int field = 2;
	char *save = NULL;
	for (char *tok = strtok_r(p + 1, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
		if (++field == 22) {
			start_ticks = strtoull(tok, NULL, 10);
			break;
		}
	}
	if (field != 22)
		return -1;
	fp = fopen("/proc/stat", "r");
	if (fp == NULL)
		return -1;
	unsigned long long btime = 0;
	bool found = false;
	while (fgets(buf, sizeof(buf), fp) != NULL) {
		if (strncmp(buf, "btime ", 6) == 0) {
			btime = strtoull(buf + 6, NULL, 10);
			found = true;
			break;
		}
	}
	fclose(fp);
	long hz = sysconf(_SC_CLK_TCK);
	if (!found || hz <= 0)
		return -1;
	return (double)btime + (double)start_ticks / (double)hz;
}

static double process_start_time_fn(void *arg)
{
	return process_start_time;
}

static double process_rss_fn(void *arg)
{
	unsigned long size = 0, resident = 0;
	FILE *fp = fopen("/proc/self/statm", "r");
	if (fp == NULL)
		return 0;
	if (fscanf(fp, "%lu %lu", &size, &resident) != 2)
		resident = 0;
	fclose(fp);
	return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

static double process_open_fds_fn(void *arg)
{
	DIR *dir = opendir("/proc/self/fd");
	if (dir == NULL)
		return 0;
	double n = 0;
	struct dirent *de;
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] != '.')
			n++;
	}
	closedir(dir);
	return n - 1; /* the directory stream's own fd */
}

/* metrics_register_process - the process_* family, registered once before any other */
static void metrics_register_process(void)
{
	process_start_time = process_start_from_proc();
	if (process_start_time < 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		process_start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
	}
	gauge_fn_register("process_start_time_seconds",
			  "Start time of the process since unix epoch in seconds.",
			  process_start_time_fn, NULL);
	gauge_fn_register("process_resident_memory_bytes", "Resident memory size in bytes.",
			  process_rss_fn, NULL);
	gauge_fn_register("process_open_fds", "Number of open file descriptors.",
			  process_open_fds_fn, NULL);
}
