/* daemon.h - the process runtime every service shares.
 * The main thread owns signals (SIGTERM/SIGINT = drain, SIGHUP = reload) and
 * the metrics/health HTTP endpoint; N worker threads each run their own
 * libevent loop and their own SO_REUSEPORT copy of every listener, so the
 * kernel spreads connections across them without a shared accept lock.
 *
 * Shutdown: on SIGTERM every worker closes its listeners and runs the
 * services' drain callbacks; the worker's loop ends when its active count
 * (daemon_worker_hold/release) reaches zero or shutdown_timeout passes.
 * The rpc server holds the worker for each of its connections until the
 * connection is closed, so a drain waits for replies to reach the socket. */
#ifndef MAIL_DAEMON_H
#define MAIL_DAEMON_H
#include "lib/common.h"
#include <event2/event.h>
#include <event2/util.h>
#include <sys/socket.h>

struct config;
struct daemon;
struct httpd;

struct daemon_worker {
	int index;               /* 0 .. n-1 */
	struct event_base *base; /* this worker's loop; touch it only from this thread */
	struct daemon *daemon;
	void *user;              /* free for the service */
};

/* a connection accepted on worker w; the callee owns fd */
typedef void daemon_accept_cb(struct daemon_worker *w, evutil_socket_t fd,
			      const struct sockaddr *peer, int peer_len, void *arg);
typedef void daemon_worker_cb(struct daemon_worker *w, void *arg);
typedef void daemon_main_cb(struct daemon *d, void *arg);

/* daemon_new - reads workers, shutdown_timeout, pid_file, metrics_listen from cfg */
struct daemon *daemon_new(const struct config *cfg);
void daemon_free(struct daemon **dp);
int daemon_worker_count(const struct daemon *d);
struct daemon_worker *daemon_worker_get(struct daemon *d, int index);
/* daemon_main_base - the main thread's loop (signals, metrics endpoint) */
struct event_base *daemon_main_base(struct daemon *d);
/* daemon_httpd - the metrics/health endpoint (NULL when metrics_listen is empty);
 * services add readiness checks and routes to it before daemon_run */
struct httpd *daemon_httpd(struct daemon *d);

/* daemon_listen - binds addr ("host:port") once per worker with SO_REUSEPORT.
 * Binding errors are reported here, before any thread starts. */
int daemon_listen(struct daemon *d, const char *addr, daemon_accept_cb *cb, void *arg,
		  const char **error_r);
/* daemon_bound_port - the port actually bound by the n-th daemon_listen (for port 0) */
int daemon_bound_port(const struct daemon *d, int n);

/* callbacks run on each worker's own thread */
void daemon_on_worker_start(struct daemon *d, daemon_worker_cb *cb, void *arg);
void daemon_on_worker_stop(struct daemon *d, daemon_worker_cb *cb, void *arg);
void daemon_on_drain(struct daemon *d, daemon_worker_cb *cb, void *arg);
/* runs on the main thread on SIGHUP (reload TLS certificates, ...) */
void daemon_on_reload(struct daemon *d, daemon_main_cb *cb, void *arg);

/* daemon_worker_hold/release - count work that must finish before the
 * worker may stop during a drain (open connections, in-flight calls) */
void daemon_worker_hold(struct daemon_worker *w);
void daemon_worker_release(struct daemon_worker *w);
/* daemon_worker_current - the worker whose thread calls this (from its
 * worker_start callback to its worker_stop callbacks), NULL on any other
 * thread. Lets a module that is handed only a worker's loop (the rpc server's
 * connections) hold that worker without every service passing it along. */
struct daemon_worker *daemon_worker_current(void);
bool daemon_draining(const struct daemon *d);

/* daemon_run - starts the workers, writes pid_file, logs "ready", serves
 * signals until every worker stopped. Returns the process exit status. */
int daemon_run(struct daemon *d);
/* daemon_stop - asks for the same graceful drain as SIGTERM (any thread) */
void daemon_stop(struct daemon *d);
#endif
