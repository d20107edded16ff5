/* daemon.c - the process runtime: worker threads with their own event_base
 * and SO_REUSEPORT listeners, the main thread's signals and health endpoint,
 * and the graceful drain.
 *
 * Ownership and threads:
 * - struct daemon belongs to the thread that called daemon_new; daemon_on_*,
 *   daemon_listen and daemon_httpd are used before daemon_run only.
 * - Each worker's base is created in daemon_new (so services can look at it
 *   early) and touched, once daemon_run started the thread, only from that
 *   thread. Cross-thread requests (drain, immediate stop, "holds reached
 *   zero") are events made active with event_active(), which libevent makes
 *   thread-safe once evthread_use_pthreads() ran.
 * - The listening sockets are made in daemon_listen (so bind errors surface
 *   early) and handed to the worker's evconnlistener when its thread starts.
 *
 * Drain: the main thread sets `draining` and activates every worker's drain
 * event; each worker closes its listeners, runs the drain callbacks and leaves
 * its loop when its holds reach zero or shutdown_timeout passes; it then runs
 * the worker_stop callbacks and tells main, which joins it. */
#include "lib/common.h"
#include "lib/daemon.h"
#include "lib/config.h"
#include "lib/httpd.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/stat.h>
#include <event2/listener.h>
#include <event2/thread.h>

#define DAEMON_LISTEN_BACKLOG 1024
#define DAEMON_MAX_WORKERS 256
#define DAEMON_ACCEPT_BACKOFF_MS 100

struct daemon_cb {
	union {
		daemon_worker_cb *worker;
		daemon_main_cb *main;
	} fn;
	void *arg;
};

struct daemon_cb_list {
	struct daemon_cb *items;
	size_t count;
};

/* one daemon_listen: an address and one bound socket per worker */
struct daemon_listener {
	char *addr;       /* as given */
	char *bound;      /* "host:port" with the real port */
	int port;
	daemon_accept_cb *cb;
	void *arg;
	evutil_socket_t *fds; /* per worker; -1 once handed to the evconnlistener */
};

/* a listener as one worker runs it */
struct worker_listener {
	struct worker *w;
	struct daemon_listener *dl;
	struct evconnlistener *lev;
	struct event *backoff; /* re-enables accepting after EMFILE and friends */
};

struct worker {
	struct daemon_worker pub; /* first: the services see only this */
	pthread_t thread;
	bool thread_started;
	struct event *drain_ev;   /* main -> worker: start draining */
	struct event *stop_ev;    /* main -> worker: stop now */
	struct event *check_ev;   /* "holds may have reached zero" */
	struct event *timeout_ev; /* shutdown_timeout */
	struct worker_listener *listeners;
	size_t n_listeners;
	atomic_int holds;
	atomic_bool draining;
	bool loop_exiting;
};

struct daemon {
	int n_workers;
	int64_t shutdown_ms;
	char *pid_file;
	bool pid_written;
	char *metrics_listen;

	struct event_base *main_base;
	struct httpd *httpd;
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *stop_ev;      /* any thread -> main: daemon_stop */
	struct event *worker_done_ev; /* worker -> main: a worker finished */

	struct worker *workers;
	struct daemon_listener *listeners;
	size_t n_listeners;

	struct daemon_cb_list on_start, on_stop, on_drain, on_reload;

	atomic_bool draining;
	int stop_requests;          /* main thread only */
	atomic_int workers_done;
	bool running;

	pthread_mutex_t start_lock;
	pthread_cond_t start_cond;
	int workers_started;
};

static pthread_once_t daemon_evthread_once = PTHREAD_ONCE_INIT;
/* the worker this thread runs (daemon_worker_current); NULL off the workers */
static _Thread_local struct worker *daemon_current_worker;

/* daemon_evthread_init - libevent locking must exist before any base is made */
static void daemon_evthread_init(void)
{
	if (evthread_use_pthreads() < 0)
		log_fatal("evthread_use_pthreads failed", "lib=%s", "libevent");
}

static void cb_list_add(struct daemon_cb_list *l, struct daemon_cb cb)
{
	l->items = xrealloc(l->items, (l->count + 1) * sizeof(*l->items));
	l->items[l->count++] = cb;
}

static void run_worker_cbs(const struct daemon_cb_list *l, struct worker *w)
{
	for (size_t i = 0; i < l->count; i++)
		l->items[i].fn.worker(&w->pub, l->items[i].arg);
}

/* ------------------------------------------------------------------ workers */

/* worker_close_listeners - frees this worker's evconnlisteners (closing the fds) */
static void worker_close_listeners(struct worker *w)
{
	for (size_t i = 0; i < w->n_listeners; i++) {
		struct worker_listener *wl = &w->listeners[i];
		if (wl->lev != NULL)
			evconnlistener_free(wl->lev);
		wl->lev = NULL;
		if (wl->backoff != NULL)
			event_free(wl->backoff);
		wl->backoff = NULL;
	}
}

/* worker_exit_loop - ends the worker's loop once (on its own thread) */
static void worker_exit_loop(struct worker *w, const char *why)
{
	if (w->loop_exiting)
		return;
	w->loop_exiting = true;
	log_debug("worker loop ends", "why=%s holds=%d", why, atomic_load(&w->holds));
	event_base_loopexit(w->pub.base, NULL);
}

static void worker_check_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	if (atomic_load(&w->draining) && atomic_load(&w->holds) <= 0)
		worker_exit_loop(w, "drained");
}

static void worker_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	if (!w->loop_exiting)
		log_warn("drain timed out", "holds=%d", atomic_load(&w->holds));
	worker_exit_loop(w, "timeout");
}

static void worker_drain_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct daemon *d = w->pub.daemon;
	if (atomic_exchange(&w->draining, true))
		return;
	worker_close_listeners(w);
	run_worker_cbs(&d->on_drain, w);
	struct timeval tv = { (time_t)(d->shutdown_ms / 1000), (suseconds_t)(d->shutdown_ms % 1000) * 1000 };
	evtimer_add(w->timeout_ev, &tv);
	worker_check_cb(-1, 0, w);
}

static void worker_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	w->loop_exiting = true;
	event_base_loopbreak(w->pub.base);
}

static void worker_backoff_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker_listener *wl = arg;
	if (wl->lev != NULL)
		evconnlistener_enable(wl->lev);
}

/* worker_accept_error_cb - accept() failed for real (EMFILE, ENOBUFS...):
 * pause this listener briefly instead of spinning on a ready socket */
static void worker_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct worker_listener *wl = arg;
	int err = EVUTIL_SOCKET_ERROR();
	log_warn("accept failed", "addr=%s error=\"%s\"", wl->dl->bound,
		 evutil_socket_error_to_string(err));
	evconnlistener_disable(lev);
	struct timeval tv = { 0, DAEMON_ACCEPT_BACKOFF_MS * 1000 };
	evtimer_add(wl->backoff, &tv);
}

static void worker_accept_cb(struct evconnlistener *lev, evutil_socket_t fd,
			     struct sockaddr *peer, int peer_len, void *arg)
{
	struct worker_listener *wl = arg;
	wl->dl->cb(&wl->w->pub, fd, peer, peer_len, wl->dl->arg);
}

/* worker_open_listeners - wraps this worker's sockets in evconnlisteners */
static void worker_open_listeners(struct worker *w)
{
	struct daemon *d = w->pub.daemon;
	w->n_listeners = d->n_listeners;
	w->listeners = xcalloc(d->n_listeners > 0 ? d->n_listeners : 1, sizeof(*w->listeners));
	for (size_t i = 0; i < d->n_listeners; i++) {
		struct daemon_listener *dl = &d->listeners[i];
		struct worker_listener *wl = &w->listeners[i];
		wl->w = w;
		wl->dl = dl;
		evutil_socket_t fd = dl->fds[w->pub.index];
		dl->fds[w->pub.index] = -1;
		/* backlog 0: the socket is already listening */
		wl->lev = evconnlistener_new(w->pub.base, worker_accept_cb, wl,
					     LEV_OPT_CLOSE_ON_FREE, 0, fd);
		if (wl->lev == NULL)
			log_fatal("evconnlistener_new failed", "addr=%s", dl->bound);
		evconnlistener_set_error_cb(wl->lev, worker_accept_error_cb);
		wl->backoff = evtimer_new(w->pub.base, worker_backoff_cb, wl);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct daemon *d = w->pub.daemon;
	char name[16];

	snprintf(name, sizeof(name), "w%d", w->pub.index);
	log_set_thread(name);
	pthread_setname_np(pthread_self(), name);
	daemon_current_worker = w;

	run_worker_cbs(&d->on_start, w);
	worker_open_listeners(w);

	pthread_mutex_lock(&d->start_lock);
	d->workers_started++;
	pthread_cond_broadcast(&d->start_cond);
	pthread_mutex_unlock(&d->start_lock);

	if (event_base_loop(w->pub.base, EVLOOP_NO_EXIT_ON_EMPTY) < 0)
		log_error("worker loop failed", "worker=%d", w->pub.index);

	worker_close_listeners(w);
	event_del(w->timeout_ev);
	run_worker_cbs(&d->on_stop, w);
	daemon_current_worker = NULL;
	log_debug("worker stopped", "worker=%d", w->pub.index);

	atomic_fetch_add(&d->workers_done, 1);
	event_active(d->worker_done_ev, EV_READ, 0);
	return NULL;
}

void daemon_worker_hold(struct daemon_worker *pub)
{
	struct worker *w = (struct worker *)pub;
	atomic_fetch_add(&w->holds, 1);
}

void daemon_worker_release(struct daemon_worker *pub)
{
	struct worker *w = (struct worker *)pub;
	int left = atomic_fetch_sub(&w->holds, 1) - 1;
	if (left < 0)
		log_panic("daemon_worker_release without hold", "worker=%d", pub->index);
	if (left == 0 && atomic_load(&w->draining))
		event_active(w->check_ev, EV_READ, 0);
}

struct daemon_worker *daemon_worker_current(void)
{
	return daemon_current_worker != NULL ? &daemon_current_worker->pub : NULL;
}

/* --------------------------------------------------------------- main thread */

/* daemon_begin_drain - first stop request: every worker drains (main thread) */
static void daemon_begin_drain(struct daemon *d, const char *why)
{
	d->stop_requests++;
	if (d->stop_requests == 1) {
		atomic_store(&d->draining, true);
		log_info("draining", "why=%s timeout_ms=%" PRId64, why, d->shutdown_ms);
		for (int i = 0; i < d->n_workers; i++)
			event_active(d->workers[i].drain_ev, EV_READ, 0);
	} else if (d->stop_requests == 2) {
		log_info("stopping now", "why=%s", why);
		for (int i = 0; i < d->n_workers; i++)
			event_active(d->workers[i].stop_ev, EV_READ, 0);
	}
}

static void daemon_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	if (sig == SIGHUP) {
		log_info("reloading", "signal=%s", "SIGHUP");
		for (size_t i = 0; i < d->on_reload.count; i++)
			d->on_reload.items[i].fn.main(d, d->on_reload.items[i].arg);
		return;
	}
	daemon_begin_drain(d, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void daemon_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	if (!atomic_load(&d->draining))
		daemon_begin_drain(d, "stop");
}

static void daemon_worker_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	if (atomic_load(&d->workers_done) >= d->n_workers) {
		event_base_loopbreak(d->main_base);
		return;
	}
	/* a worker left its loop on its own (a loop error): take the rest down too */
	if (!atomic_load(&d->draining))
		daemon_begin_drain(d, "worker exited");
}

static bool daemon_ready_check(void *arg, const char **why_r)
{
	struct daemon *d = arg;
	if (atomic_load(&d->draining)) {
		*why_r = "draining";
		return false;
	}
	return true;
}

void daemon_stop(struct daemon *d)
{
	event_active(d->stop_ev, EV_READ, 0);
}

bool daemon_draining(const struct daemon *d)
{
	return atomic_load(&((struct daemon *)d)->draining);
}

/* ------------------------------------------------------------------ set-up */

struct daemon *daemon_new(const struct config *cfg)
{
	pthread_once(&daemon_evthread_once, daemon_evthread_init);
	/* a peer closing a socket we write to must not kill the process */
	signal(SIGPIPE, SIG_IGN);

	struct daemon *d = XNEW(struct daemon);
	int64_t n = config_int(cfg, "workers");
	if (n <= 0) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);
		n = cpus > 0 ? cpus : 1;
	}
	if (n > DAEMON_MAX_WORKERS)
		n = DAEMON_MAX_WORKERS;
	d->n_workers = (int)n;
	d->shutdown_ms = config_duration_ms(cfg, "shutdown_timeout");
	d->pid_file = xstrdup(config_str(cfg, "pid_file"));
	d->metrics_listen = xstrdup(config_str(cfg, "metrics_listen"));
	pthread_mutex_init(&d->start_lock, NULL);
	pthread_cond_init(&d->start_cond, NULL);
	atomic_init(&d->draining, false);
	atomic_init(&d->workers_done, 0);

	d->main_base = event_base_new();
	if (d->main_base == NULL)
		log_fatal("event_base_new failed", "base=%s", "main");
	d->stop_ev = event_new(d->main_base, -1, 0, daemon_stop_cb, d);
	d->worker_done_ev = event_new(d->main_base, -1, 0, daemon_worker_done_cb, d);

	d->workers = xcalloc((size_t)d->n_workers, sizeof(*d->workers));
	for (int i = 0; i < d->n_workers; i++) {
		struct worker *w = &d->workers[i];
		w->pub.index = i;
		w->pub.daemon = d;
		w->pub.base = event_base_new();
		if (w->pub.base == NULL)
			log_fatal("event_base_new failed", "worker=%d", i);
		atomic_init(&w->holds, 0);
		atomic_init(&w->draining, false);
		w->drain_ev = event_new(w->pub.base, -1, 0, worker_drain_cb, w);
		w->stop_ev = event_new(w->pub.base, -1, 0, worker_stop_cb, w);
		w->check_ev = event_new(w->pub.base, -1, 0, worker_check_cb, w);
		w->timeout_ev = evtimer_new(w->pub.base, worker_timeout_cb, w);
	}

	if (d->metrics_listen[0] != '\0') {
		const char *error;
		d->httpd = httpd_new(d->main_base, d->metrics_listen, &error);
		if (d->httpd == NULL)
			log_fatal("cannot start the metrics endpoint", "addr=%s error=\"%s\"",
				  d->metrics_listen, error);
		httpd_add_ready_check(d->httpd, "draining", daemon_ready_check, d);
	}
	return d;
}

int daemon_worker_count(const struct daemon *d)
{
	return d->n_workers;
}

struct daemon_worker *daemon_worker_get(struct daemon *d, int index)
{
	if (index < 0 || index >= d->n_workers)
		return NULL;
	return &d->workers[index].pub;
}

struct event_base *daemon_main_base(struct daemon *d)
{
	return d->main_base;
}

struct httpd *daemon_httpd(struct daemon *d)
{
	return d->httpd;
}

void daemon_on_worker_start(struct daemon *d, daemon_worker_cb *cb, void *arg)
{
	cb_list_add(&d->on_start, (struct daemon_cb){ .fn.worker = cb, .arg = arg });
}

void daemon_on_worker_stop(struct daemon *d, daemon_worker_cb *cb, void *arg)
{
	cb_list_add(&d->on_stop, (struct daemon_cb){ .fn.worker = cb, .arg = arg });
}

void daemon_on_drain(struct daemon *d, daemon_worker_cb *cb, void *arg)
{
	cb_list_add(&d->on_drain, (struct daemon_cb){ .fn.worker = cb, .arg = arg });
}

void daemon_on_reload(struct daemon *d, daemon_main_cb *cb, void *arg)
{
	cb_list_add(&d->on_reload, (struct daemon_cb){ .fn.main = cb, .arg = arg });
}

/* sockaddr_port - the port of an IPv4/IPv6 address */
static int sockaddr_port(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)ss)->sin_port);
	if (ss->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	return -1;
}

static void sockaddr_set_port(struct sockaddr_storage *ss, int port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
	else if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

/* bind_socket - one nonblocking socket bound to sa; reuseport = share it
 * with the other workers. Returns the fd or -1 with errno set. */
static int bind_socket(const struct sockaddr_storage *sa, socklen_t len, bool reuseport,
		       bool do_listen)
{
	int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
	    (sa->ss_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(fd, (const struct sockaddr *)sa, len) < 0 ||
	    (do_listen && listen(fd, DAEMON_LISTEN_BACKLOG) < 0)) {
		int err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

int daemon_listen(struct daemon *d, const char *addr, daemon_accept_cb *cb, void *arg,
		  const char **error_r)
{
	static _Thread_local char errbuf[512];
	char host[256];
	uint16_t port;
	struct addrinfo hints, *res = NULL;

	if (d->running)
		log_panic("daemon_listen after daemon_run", "addr=%s", addr);
	if (config_parse_addr(addr, host, sizeof(host), &port) < 0) {
		snprintf(errbuf, sizeof(errbuf), "bad address '%s' (want host:port)", addr);
		*error_r = errbuf;
		return -1;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	int gai = getaddrinfo(strcmp(host, "*") == 0 ? NULL : host, "0", &hints, &res);
	if (gai != 0 || res == NULL) {
		snprintf(errbuf, sizeof(errbuf), "cannot resolve '%s': %s", host, gai_strerror(gai));
		*error_r = errbuf;
		return -1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = (socklen_t)res->ai_addrlen;
	memset(&ss, 0, sizeof(ss));
	memcpy(&ss, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	sockaddr_set_port(&ss, port);

	/* SO_REUSEPORT would let us share the port with another process of
	 * the same user without a word: probe it without the option first */
	if (port != 0) {
		int probe = bind_socket(&ss, sl, false, false);
		if (probe < 0) {
			snprintf(errbuf, sizeof(errbuf), "cannot listen on %s: %s", addr,
				 strerror(errno));
			*error_r = errbuf;
			return -1;
		}
		close(probe);
	}

	evutil_socket_t *fds = xcalloc((size_t)d->n_workers, sizeof(*fds));
	for (int i = 0; i < d->n_workers; i++) {
		fds[i] = bind_socket(&ss, sl, true, true);
		if (fds[i] < 0) {
			snprintf(errbuf, sizeof(errbuf), "cannot listen on %s: %s", addr,
				 strerror(errno));
			for (int j = 0; j < i; j++)
				close(fds[j]);
			free(fds);
			*error_r = errbuf;
			return -1;
		}
		if (i == 0) {
			/* port 0: the others bind the port the kernel picked */
			struct sockaddr_storage got;
			socklen_t gl = sizeof(got);
			if (getsockname(fds[0], (struct sockaddr *)&got, &gl) == 0)
				sockaddr_set_port(&ss, sockaddr_port(&got));
		}
	}

	d->listeners = xrealloc(d->listeners, (d->n_listeners + 1) * sizeof(*d->listeners));
	struct daemon_listener *dl = &d->listeners[d->n_listeners++];
	dl->addr = xstrdup(addr);
	dl->port = sockaddr_port(&ss);
	dl->bound = ss.ss_family == AF_INET6 ? xasprintf("[%s]:%d", host, dl->port)
					     : xasprintf("%s:%d", host, dl->port);
	dl->cb = cb;
	dl->arg = arg;
	dl->fds = fds;
	return 0;
}

int daemon_bound_port(const struct daemon *d, int n)
{
	if (n < 0 || (size_t)n >= d->n_listeners)
		return -1;
	return d->listeners[n].port;
}

/* daemon_write_pid - "pid\n" into pid_file via a temporary file and rename */
static void daemon_write_pid(struct daemon *d)
{
	if (d->pid_file[0] == '\0')
		return;
	char *tmp = xasprintf("%s.tmp.%d", d->pid_file, (int)getpid());
	char text[32];
	int len = snprintf(text, sizeof(text), "%d\n", (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, text, (size_t)len) != len || close(fd) < 0 ||
	    rename(tmp, d->pid_file) < 0) {
		log_error("cannot write pid file", "path=%s error=\"%s\"", d->pid_file,
			  strerror(errno));
		if (fd >= 0)
			unlink(tmp);
	} else {
		d->pid_written = true;
	}
	free(tmp);
}

/* daemon_log_ready - "ready" with every bound address */
static void daemon_log_ready(struct daemon *d)
{
	char addrs[1024];
	size_t len = 0;
	addrs[0] = '\0';
	for (size_t i = 0; i < d->n_listeners && len < sizeof(addrs); i++) {
		int m = snprintf(addrs + len, sizeof(addrs) - len, "%s%s", i > 0 ? "," : "",
				 d->listeners[i].bound);
		if (m > 0)
			len += (size_t)m;
	}
	if (d->httpd != NULL)
		log_info("ready", "listen=%s metrics_port=%d workers=%d pid=%d", addrs,
			 httpd_port(d->httpd), d->n_workers, (int)getpid());
	else
		log_info("ready", "listen=%s workers=%d pid=%d", addrs, d->n_workers,
			 (int)getpid());
}

int daemon_run(struct daemon *d)
{
	if (d->running)
		log_panic("daemon_run called twice", "workers=%d", d->n_workers);
	d->running = true;
	log_set_thread("main");

	d->sig_term = evsignal_new(d->main_base, SIGTERM, daemon_signal_cb, d);
	d->sig_int = evsignal_new(d->main_base, SIGINT, daemon_signal_cb, d);
	d->sig_hup = evsignal_new(d->main_base, SIGHUP, daemon_signal_cb, d);
	evsignal_add(d->sig_term, NULL);
	evsignal_add(d->sig_int, NULL);
	evsignal_add(d->sig_hup, NULL);

	/* workers never take the process signals: they go to the main loop */
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	for (int i = 0; i < d->n_workers; i++) {
		struct worker *w = &d->workers[i];
		int err = pthread_create(&w->thread, NULL, worker_main, w);
		if (err != 0)
			log_fatal("cannot start a worker thread", "error=\"%s\"", strerror(err));
		w->thread_started = true;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	pthread_mutex_lock(&d->start_lock);
	while (d->workers_started < d->n_workers)
		pthread_cond_wait(&d->start_cond, &d->start_lock);
	pthread_mutex_unlock(&d->start_lock);

	daemon_write_pid(d);
	daemon_log_ready(d);

	event_base_loop(d->main_base, EVLOOP_NO_EXIT_ON_EMPTY);

	for (int i = 0; i < d->n_workers; i++) {
		pthread_join(d->workers[i].thread, NULL);
		d->workers[i].thread_started = false;
	}
	evsignal_del(d->sig_term);
	evsignal_del(d->sig_int);
	evsignal_del(d->sig_hup);
	if (d->pid_written && unlink(d->pid_file) < 0)
		log_warn("cannot remove pid file", "path=%s error=\"%s\"", d->pid_file,
			 strerror(errno));
	d->pid_written = false;
	log_info("stopped", "workers=%d", d->n_workers);
	return 0;
}

/* daemon_base_free - run what is still queued on a loop whose owners are all
 * gone, then free it. A bufferevent with deferred callbacks that was freed while
 * one of them was queued is only released when that callback runs (it holds a
 * reference); event_base_free() would drop the callback unrun and the
 * bufferevent, its buffers and, with CLOSE_ON_FREE, its socket would leak. */
static void daemon_base_free(struct event_base *base)
{
	/* two passes: the deferred callbacks, then the finalizers they schedule
	 * (event_base_free runs finalizers, but not callbacks) */
	for (int i = 0; i < 2; i++)
		if (event_base_loop(base, EVLOOP_NONBLOCK) != 0)
			break;          /* nothing registered, nothing queued */
	event_base_free(base);
}

void daemon_free(struct daemon **dp)
{
	struct daemon *d = *dp;
	if (d == NULL)
		return;
	*dp = NULL;
	for (int i = 0; i < d->n_workers; i++) {
		struct worker *w = &d->workers[i];
		if (w->thread_started)
			log_panic("daemon_free while workers run", "worker=%d", i);
		worker_close_listeners(w);
		free(w->listeners);
		event_free(w->drain_ev);
		event_free(w->stop_ev);
		event_free(w->check_ev);
		event_free(w->timeout_ev);
		daemon_base_free(w->pub.base);
	}
	for (size_t i = 0; i < d->n_listeners; i++) {
		struct daemon_listener *dl = &d->listeners[i];
		for (int j = 0; j < d->n_workers; j++)
			if (dl->fds[j] >= 0)
				close(dl->fds[j]);
		free(dl->fds);
		free(dl->addr);
		free(dl->bound);
	}
	free(d->listeners);
	httpd_free(&d->httpd);
	if (d->sig_term != NULL) {
		event_free(d->sig_term);
		event_free(d->sig_int);
		event_free(d->sig_hup);
	}
	event_free(d->stop_ev);
	event_free(d->worker_done_ev);
	daemon_base_free(d->main_base);
	free(d->on_start.items);
	free(d->on_stop.items);
	free(d->on_drain.items);
	free(d->on_reload.items);
	free(d->workers);
	free(d->pid_file);
	free(d->metrics_listen);
	pthread_mutex_destroy(&d->start_lock);
	pthread_cond_destroy(&d->start_cond);
	free(d);
}
