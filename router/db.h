/* db.h - asynchronous PostgreSQL connection pool on a libevent loop.
 *
 * One pool per event_base (per router worker thread); nothing in it blocks and
 * nothing is shared between threads (the metrics excepted, which are atomic).
 *
 * Requests. Every db_exec() is ONE statement in its OWN pipeline sync segment, so
 * it is its own implicit transaction: the caller's callback runs after the server
 * has committed it (the Sync's ReadyForQuery came back), never before. Work that
 * must be atomic across several statements is an SQL function (router/migrations)
 * called as one statement: one round trip per operation. Requests are pipelined:
 * many in flight per connection (libpq pipeline mode), results matched in order.
 * A pipeline is FIFO, so long-running statements (housekeeping, GC scans) belong
 * on a pool of their own, with a longer timeout.
 *
 * Outcome. The callback gets exactly one of
 *   DB_OK           committed; res holds the rows;
 *   DB_SQL_ERROR    the server refused the statement (sqlstate, message); nothing of
 *                   it was committed;
 *   DB_UNAVAILABLE  no definitive answer: no connection could be had, the request
 *                   timed out, or the connection broke. may_have_executed tells
 *                   whether the statement had been sent (it may then have committed:
 *                   retry only what is idempotent). Never reported as success.
 * The callback is always called from the event loop, never from inside db_exec(),
 * exactly once per request unless the request was cancelled first.
 *
 * Connections that fail are closed; their in-flight requests complete with
 * DB_UNAVAILABLE; the pool reconnects with exponential backoff (100 ms .. 5 s,
 * jittered). Requests wait in a bounded queue while no connection is ready (past
 * max_queue they fail at once) until their timeout. Multi-host conninfo
 * ("host=/a,/b port=5432,5433 target_session_attrs=read-write") is handled by
 * libpq; the pool follows the socket libpq changes while it tries each host, starts
 * the next attempt at the following host when one attempt times out (libpq has no
 * per-host timeout in asynchronous mode, so a host that never answers would
 * otherwise hide the others), and logs which host it got (and whether it is a hot
 * standby).
 *
 * LISTEN/NOTIFY runs on a dedicated connection of the pool, opened by the first
 * db_listen(); after it reconnects it LISTENs again and tells every subscriber to
 * resynchronize (notifications may have been missed meanwhile).
 *
 * Metrics: db_queries_total, db_errors_total, db_query_seconds, db_connections.
 */
#ifndef ROUTER_DB_H
#define ROUTER_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <libpq-fe.h>

struct event_base;
struct db_pool;
struct db_request;
struct db_listener;

/* a statement prepared on every connection right after it connects */
struct db_stmt {
	const char *name;	/* what db_exec() is called with */
	const char *sql;	/* $1..$n parameters */
	int nparams;		/* parameter types are inferred by the server */
};

/* pool settings; a field left 0 (or the whole struct NULL) takes the default */
struct db_pool_settings {
	const char *name;		/* in log lines: "main" */
	int size;			/* query connections (4) */
	int max_queue;			/* requests waiting for a connection (10000) */
	int max_pipeline;		/* requests in flight on one connection (256) */
	int timeout_ms;			/* per-request deadline, queue wait included (10000) */
	int connect_timeout_ms;		/* one connection attempt, all hosts (5000) */
	int backoff_min_ms;		/* first reconnect delay (100) */
	int backoff_max_ms;		/* reconnect delay ceiling (5000) */
};

#define DB_DEFAULT_SIZE 4
#define DB_DEFAULT_MAX_QUEUE 10000
#define DB_DEFAULT_MAX_PIPELINE 256
#define DB_DEFAULT_TIMEOUT_MS 10000
#define DB_DEFAULT_CONNECT_TIMEOUT_MS 5000
#define DB_DEFAULT_BACKOFF_MIN_MS 100
#define DB_DEFAULT_BACKOFF_MAX_MS 5000

enum db_status {
	DB_OK = 0,
	DB_SQL_ERROR,
	DB_UNAVAILABLE,
};

struct db_result {
	enum db_status status;
	/* DB_UNAVAILABLE: the statement had reached the server when the answer was lost */
	bool may_have_executed;
	const char *sqlstate;	/* DB_SQL_ERROR: five characters; DB_UNAVAILABLE: the
				 * server's code if it sent one (57P01...); else "" */
	const char *message;	/* DB_SQL_ERROR: the server's message; DB_UNAVAILABLE: why */
	/* DB_OK (rows, PQcmdTuples) and DB_SQL_ERROR (PQresultErrorField): borrowed for
	 * the callback's duration; NULL for DB_UNAVAILABLE */
	const PGresult *res;
	double seconds;		/* from db_exec() to this callback */
};

typedef void db_cb(const struct db_result *r, void *arg);

/* db_pool_new - a pool bound to base that starts connecting at once (it never
 * blocks). stmts (copied) are prepared on every query connection. conninfo is a
 * libpq connection string; use host paths or hostaddr= (a host name would be
 * resolved synchronously by libpq). */
struct db_pool *db_pool_new(struct event_base *base, const char *conninfo,
			    const struct db_pool_settings *settings,
			    const struct db_stmt *stmts, size_t n_stmts);
/* db_conninfo_check - does conninfo parse (for --check-config)? 0 / -1 with
 * *error_r (valid until the next call from this thread) */
int db_conninfo_check(const char *conninfo, const char **error_r);
/* db_pool_free - closes everything; pending requests are dropped without callbacks,
 * subscribers are not called. Not from inside a db callback. */
void db_pool_free(struct db_pool **pp);

/* db_exec - run the prepared statement stmt_name (registered with the pool; an
 * unknown name or a wrong nparams is a bug and panics). values/lengths/formats as
 * in PQexecParams (copied before return; NULL value = SQL NULL; lengths and formats
 * may be NULL for all-text). result_format 0 text, 1 binary. Returns a handle for
 * db_request_cancel(), valid until the callback starts. */
struct db_request *db_exec(struct db_pool *p, const char *stmt_name, int nparams,
			   const char *const *values, const int *lengths, const int *formats,
			   int result_format, db_cb *cb, void *arg);
/* db_exec_sql - the same with a one-statement SQL text (parsed on each call) */
struct db_request *db_exec_sql(struct db_pool *p, const char *sql, int nparams,
			       const char *const *values, const int *lengths, const int *formats,
			       int result_format, db_cb *cb, void *arg);
/* db_request_set_timeout - this request's deadline, from its db_exec() */
void db_request_set_timeout(struct db_request *r, int timeout_ms);
/* db_request_cancel - the callback will not be called (a late result is dropped
 * quietly); sets *rp to NULL. A request already sent still runs on the server. */
void db_request_cancel(struct db_request **rp);

/* db_result_retryable - true when running the request again is safe whatever it
 * did: unavailable before it reached the server, or a serialization failure or
 * deadlock (the server rolled it back) */
bool db_result_retryable(const struct db_result *r);

/* LISTEN/NOTIFY */
enum db_listen_event {
	DB_LISTEN_READY,	/* LISTEN is in effect: notifications from now on arrive */
	DB_LISTEN_NOTIFY,	/* a notification: payload, be_pid */
	DB_LISTEN_LOST,		/* the connection broke: notifications are being missed */
	DB_LISTEN_RESYNC,	/* listening again after a loss: resynchronize */
};
struct db_notification {
	enum db_listen_event event;
	const char *channel;
	const char *payload;	/* DB_LISTEN_NOTIFY only, else "" */
	int be_pid;		/* the notifying backend */
};
typedef void db_listen_cb(const struct db_notification *n, void *arg);

/* db_listen - subscribe to channel (case-sensitive, as pg_notify() names it) on
 * the pool's listen connection. Several subscribers may share a channel. */
struct db_listener *db_listen(struct db_pool *p, const char *channel, db_listen_cb *cb, void *arg);
/* db_unlisten - unsubscribe (safe from inside the listener's own callback) */
void db_unlisten(struct db_listener **lp);

/* state, for /readyz and tests */
struct db_pool_stats {
	int connections_ready;	/* query connections ready */
	int connections;	/* query connections configured */
	bool listen_ready;	/* the listen connection is up (if any listener) */
	int queued;		/* requests waiting for a connection */
	int in_flight;		/* requests sent, answer pending */
};
void db_pool_stats(const struct db_pool *p, struct db_pool_stats *st);

#endif
