/* db.c - asynchronous libpq connection pool inside libevent (contract in db.h).
 *
 * Connections. Each connection is a small state machine
 *     DOWN --timer--> CONNECTING --PQconnectPoll OK--> READY --error--> DOWN
 * CONNECTING waits with ONE-SHOT events and re-reads PQsocket() after every
 * PQconnectPoll() step: libpq closes and opens sockets while it tries the hosts of
 * a multi-host string, possibly getting the same descriptor number back, and a
 * persistent event would stay registered on the dead socket. READY connections are
 * non-blocking and in pipeline mode; the prepared statements are sent first thing.
 *
 * Requests. A request belongs to exactly one list at a time:
 *   the pool's wait queue      (QUEUED: no connection picked yet),
 *   a connection's in-flight   (SENT: query + Sync sent, answered in order),
 *   the pool's completion list (DONE: failed before an answer; callback pending).
 * For a SENT request the server's answer is: the query's result(s), a NULL, then
 * the PGRES_PIPELINE_SYNC of its own sync segment. The callback runs only after
 * that Sync: that is when the implicit transaction has committed. A connection that
 * dies first fails its in-flight requests with DB_UNAVAILABLE + may_have_executed.
 * A cancelled (or timed-out and already answered) SENT request stays in the
 * in-flight list until its answer is consumed, then is freed quietly.
 *
 * Re-entrancy. Callbacks may call db_exec, db_request_cancel, db_listen and
 * db_unlisten. db_exec never touches libpq: it queues and activates the pool's
 * dispatch event, which does all sending, so no libpq call on a connection happens
 * beneath one of that connection's own callbacks; failures found while sending are
 * reported through the completion list, also from the dispatch event.
 */
#include "lib/common.h"
#include "router/db.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/xalloc.h"
#include <arpa/inet.h>
#include <event2/event.h>
#include <stdlib.h>
#include <sys/queue.h>
#include <time.h>

#define DB_TICK_MS 50			/* timeout resolution */
#define DB_PING_IDLE_US (30 * 1000000LL) /* idle READY connection: send a ping */
#define DB_SLOW_HEAD_US (200 * 1000LL)	/* a connection busy this long is avoided */

enum req_kind { REQ_QUERY, REQ_PREPARE, REQ_LISTEN, REQ_UNLISTEN, REQ_PING };
enum req_state { REQ_QUEUED, REQ_SENT, REQ_DONE };
enum req_phase { PHASE_RESULT, PHASE_SYNC };

struct db_request {
	TAILQ_ENTRY(db_request) link;
	struct db_pool *pool;
	enum req_kind kind;
	enum req_state state;
	enum req_phase phase;
	bool cancelled;		/* never call back; free when it leaves its list */
	bool answered;		/* the callback has run (a timeout while SENT) */
	int stmt;		/* index in pool->stmts, -1 for SQL text */
	char *sql;		/* SQL text, or NULL */
	char *channel;		/* LISTEN/UNLISTEN */
	int nparams;
	char **values;		/* one allocation with lengths, formats and the bytes */
	int *lengths;
	int *formats;
	int result_format;
	db_cb *cb;
	void *arg;
	int64_t start_us, deadline_us, sent_us;
	PGresult *res;		/* SENT: the query's result, held until its Sync */
	uint64_t gen;		/* DONE: dispatch generation it was queued in */
	enum db_status fail_status;
	bool fail_may;
	char *fail_msg;
};
TAILQ_HEAD(req_list, db_request);

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_READY };

struct db_conn {
	struct db_pool *pool;
	int id;			/* index in pool->conns; -1 for the listen connection */
	bool listener;
	enum conn_state state;
	PGconn *pg;
	struct event *io;	/* CONNECTING: one-shot; READY: persistent read */
	struct event *wr;	/* READY: persistent write while libpq has unsent bytes */
	struct event *timer;	/* DOWN: reconnect; CONNECTING: connect timeout */
	bool wr_added;
	bool dirty;		/* sent since the last flush */
	struct req_list inflight;
	int n_inflight;
	int backoff_ms;
	int failures;		/* consecutive failed attempts */
	int rotate;		/* attempts start at host (rotate % n_hosts) */
	int64_t last_io_us;
};

struct db_listener {
	TAILQ_ENTRY(db_listener) link;
	struct db_pool *pool;
	char *channel;
	db_listen_cb *cb;
	void *arg;
	bool requested;		/* LISTEN sent (or shared) on the current connection */
	bool listening;		/* LISTEN confirmed on the current connection */
	bool was_ready;		/* listened before: the next READY is a RESYNC */
	bool dead;		/* unlistened: freed by the dispatch event */
};
TAILQ_HEAD(listener_list, db_listener);

struct pool_stmt {
	char *name;
	char *sql;
	int nparams;
};

struct db_pool {
	struct event_base *base;
	char *conninfo;
	/* the conninfo parsed once (PQconnectStartParams); NULL if it did not parse */
	char **kw, **val;
	int host_opt, hostaddr_opt, port_opt;	/* indexes in kw, or -1 */
	int n_hosts;
	char *name;
	struct db_pool_settings set;
	struct pool_stmt *stmts;
	size_t n_stmts;
	struct db_conn **conns;
	int n_conns;
	struct db_conn *lconn;	/* LISTEN connection, made by the first db_listen */
	struct req_list waitq;
	int n_waiting;
	struct req_list doneq;
	struct listener_list listeners;
	struct event *dispatch;	/* deferred work: completions, sending, listeners */
	struct event *tick;	/* timeouts, pings */
	uint64_t gen;
	int in_callback;
	unsigned int seed;
	struct metric *m_queries, *m_errors, *m_seconds, *m_conns;
};

static void conn_lost(struct db_conn *c, const char *why);
static void conn_connect(struct db_conn *c);
static void conn_io(evutil_socket_t fd, short what, void *arg);
static bool conn_flush(struct db_conn *c);
static void conn_reconnect_cb(evutil_socket_t fd, short what, void *arg);

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* one_line - a libpq message on one line (libpq ends them with "\n") */
static const char *one_line(const char *msg, char *buf, size_t size)
{
	size_t o = 0;
	for (const char *p = msg != NULL ? msg : ""; *p != '\0' && o + 1 < size; p++)
		buf[o++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
	while (o > 0 && buf[o - 1] == ' ')
		o--;
	buf[o] = '\0';
	return buf;
}

/* list_count - elements of a comma-separated libpq list ("a,b" -> 2) */
static int list_count(const char *list)
{
	int n = 1;
	for (const char *p = list; *p != '\0'; p++)
		n += *p == ',';
	return n;
}

/* list_rotate - "a,b,c" rotated left by k ("b,c,a" for k = 1); caller frees */
static char *list_rotate(const char *list, int k)
{
	int n = list_count(list);
	size_t len = strlen(list);
	const char *p = list;
	k %= n;
	for (int i = 0; i < k; i++)
		p = strchr(p, ',') + 1;
	char *out = xmalloc(len + 2);
	size_t tail = len - (size_t)(p - list);
	memcpy(out, p, tail);
	if (k > 0) {
		out[tail] = ',';
		memcpy(out + tail + 1, list, (size_t)(p - list) - 1);
		out[len] = '\0';
	} else {
		out[tail] = '\0';
	}
	return out;
}

/* pool_parse_conninfo - parse once; remember where the host lists are */
static void pool_parse_conninfo(struct db_pool *p)
{
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(p->conninfo, &err);
	p->host_opt = p->hostaddr_opt = p->port_opt = -1;
	if (opts == NULL) {
		char buf[300], q[360];
		one_line(err != NULL ? err : "out of memory", buf, sizeof(buf));
		log_error("db conninfo does not parse", "pool=%s error=%s", p->name,
			  log_quote(q, sizeof(q), buf, strlen(buf)));
		PQfreemem(err);
		return;
	}
	size_t n = 0;
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
		n += o->val != NULL;
	p->kw = xcalloc(n + 1, sizeof(char *));
	p->val = xcalloc(n + 1, sizeof(char *));
	n = 0;
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
		if (o->val == NULL)
			continue;
		if (strcmp(o->keyword, "host") == 0)
			p->host_opt = (int)n;
		else if (strcmp(o->keyword, "hostaddr") == 0)
			p->hostaddr_opt = (int)n;
		else if (strcmp(o->keyword, "port") == 0)
			p->port_opt = (int)n;
		p->kw[n] = xstrdup(o->keyword);
		p->val[n] = xstrdup(o->val);
		n++;
	}
	PQconninfoFree(opts);
	int lead = p->host_opt >= 0 ? p->host_opt : p->hostaddr_opt;
	p->n_hosts = lead >= 0 ? list_count(p->val[lead]) : 1;
	if (p->host_opt >= 0 && p->hostaddr_opt < 0) {
		/* PQconnectStart resolves host names synchronously, on the loop thread */
		char *copy = xstrdup(p->val[p->host_opt]), *save = NULL;
		for (char *h = strtok_r(copy, ",", &save); h != NULL; h = strtok_r(NULL, ",", &save)) {
			unsigned char addr[16];
			if (h[0] != '/' && h[0] != '@' && inet_pton(AF_INET, h, addr) != 1 &&
			    inet_pton(AF_INET6, h, addr) != 1) {
				log_info("db host name resolved synchronously on connect", "pool=%s host=%s "
					 "hint=\"use hostaddr= or a socket path to keep the loop non-blocking\"",
					 p->name, h);
				break;
			}
		}
		free(copy);
	}
}

/* pool_connect_start - PQconnectStartParams with the host lists rotated by k */
static PGconn *pool_connect_start(struct db_pool *p, int k)
{
	if (p->kw == NULL)
		return PQconnectStart(p->conninfo);
	char *saved[3] = { NULL, NULL, NULL };
	int idx[3] = { p->host_opt, p->hostaddr_opt, p->port_opt };
	if (p->n_hosts > 1 && k % p->n_hosts != 0) {
		for (int i = 0; i < 3; i++) {
			if (idx[i] < 0 || list_count(p->val[idx[i]]) != p->n_hosts)
				continue;	/* a single port applies to every host */
			saved[i] = p->val[idx[i]];
			p->val[idx[i]] = list_rotate(saved[i], k);
		}
	}
	PGconn *pg = PQconnectStartParams((const char *const *)p->kw, (const char *const *)p->val, 0);
	for (int i = 0; i < 3; i++) {
		if (saved[i] != NULL) {
			free(p->val[idx[i]]);
			p->val[idx[i]] = saved[i];
		}
	}
	return pg;
}

/* conn_label - "0", "1", ... or "listen", for log lines */
static const char *conn_label(const struct db_conn *c, char *buf, size_t size)
{
	if (c->listener)
		return "listen";
	snprintf(buf, size, "%d", c->id);
	return buf;
}

/* db_notice - server NOTICE/WARNING messages: debug log, never stderr */
static void db_notice(void *arg, const char *message)
{
	struct db_conn *c = arg;
	char buf[512], q[600], l[16];
	one_line(message, buf, sizeof(buf));
	log_debug("db notice", "pool=%s conn=%s msg=%s", c->pool->name, conn_label(c, l, sizeof(l)),
		  log_quote(q, sizeof(q), buf, strlen(buf)));
}

/* db_conninfo_check - PQconninfoParse as a validator */
int db_conninfo_check(const char *conninfo, const char **error_r)
{
	static __thread char buf[300];
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL) {
		one_line(err != NULL ? err : "out of memory", buf, sizeof(buf));
		PQfreemem(err);
		*error_r = buf;
		return -1;
	}
	PQconninfoFree(opts);
	return 0;
}

/* pool_kick - schedule the dispatch event (idempotent) */
static void pool_kick(struct db_pool *p)
{
	event_active(p->dispatch, EV_TIMEOUT, 0);
}

/* ------------------------------------------------------------------ requests */

static struct db_request *req_new(struct db_pool *p, enum req_kind kind)
{
	struct db_request *r = XNEW(struct db_request);
	r->pool = p;
	r->kind = kind;
	r->stmt = -1;
	r->start_us = now_us();
	r->deadline_us = r->start_us + (int64_t)p->set.timeout_ms * 1000;
	return r;
}

/* req_copy_params - deep copy of the parameters, in one allocation */
static void req_copy_params(struct db_request *r, int nparams, const char *const *values,
			    const int *lengths, const int *formats)
{
	size_t bytes = 0;
	if (nparams <= 0)
		return;
	for (int i = 0; i < nparams; i++) {
		if (values == NULL || values[i] == NULL)
			continue;
		bytes += (formats != NULL && formats[i] != 0) ? (size_t)lengths[i] : strlen(values[i]) + 1;
	}
	size_t head = (size_t)nparams * (sizeof(char *) + 2 * sizeof(int));
	char *block = xmalloc(head + bytes + 1);
	r->values = (char **)(void *)block;
	r->lengths = (int *)(void *)(block + (size_t)nparams * sizeof(char *));
	r->formats = r->lengths + nparams;
	char *data = block + head;
	for (int i = 0; i < nparams; i++) {
		bool binary = formats != NULL && formats[i] != 0;
		r->formats[i] = binary ? 1 : 0;
		r->lengths[i] = 0;
		if (values == NULL || values[i] == NULL) {
			r->values[i] = NULL;
			continue;
		}
		size_t n = binary ? (size_t)lengths[i] : strlen(values[i]) + 1;
		memcpy(data, values[i], n);
		r->values[i] = data;
		r->lengths[i] = binary ? lengths[i] : (int)(n - 1);
		data += n;
	}
	r->nparams = nparams;
}

/* req_free - a request and everything it owns (its held result included) */
static void req_free(struct db_request *r)
{
	PQclear(r->res);
	free(r->values);
	free(r->sql);
	free(r->channel);
	free(r->fail_msg);
	free(r);
}

/* req_answer - the one callback of a request (unless cancelled or already answered) */
static void req_answer(struct db_request *r, enum db_status status, bool may, const char *sqlstate,
		       const char *message, const PGresult *res)
{
	struct db_pool *p = r->pool;
	if (r->kind != REQ_QUERY || r->cancelled || r->answered)
		return;
	r->answered = true;
	struct db_result out = {
		.status = status,
		.may_have_executed = status == DB_UNAVAILABLE && may,
		.sqlstate = sqlstate != NULL ? sqlstate : "",
		.message = message != NULL ? message : "",
		.res = status == DB_UNAVAILABLE ? NULL : res,
		.seconds = (double)(now_us() - r->start_us) / 1e6,
	};
	metric_inc(p->m_queries);
	if (status != DB_OK)
		metric_inc(p->m_errors);
	metric_observe(p->m_seconds, out.seconds);
	p->in_callback++;
	r->cb(&out, r->arg);
	p->in_callback--;
}

/* req_fail_later - report a failure from the dispatch event (not from here) */
static void req_fail_later(struct db_pool *p, struct db_request *r, enum db_status status, bool may,
			   const char *msg)
{
	if (r->kind != REQ_QUERY || r->cancelled || r->answered) {
		req_free(r);
		return;
	}
	r->state = REQ_DONE;
	r->fail_status = status;
	r->fail_may = may;
	free(r->fail_msg);
	r->fail_msg = xstrdup(msg);
	r->gen = p->gen;
	TAILQ_INSERT_TAIL(&p->doneq, r, link);
	pool_kick(p);
}

/* pool_enqueue - a new request joins the wait queue, or fails at once when full */
static void pool_enqueue(struct db_pool *p, struct db_request *r)
{
	if (p->n_waiting >= p->set.max_queue) {
		req_fail_later(p, r, DB_UNAVAILABLE, false, "too many database requests waiting");
		return;
	}
	r->state = REQ_QUEUED;
	TAILQ_INSERT_TAIL(&p->waitq, r, link);
	p->n_waiting++;
	pool_kick(p);
}

/* pool_stmt_find - index of a registered statement, or -1 */
static int pool_stmt_find(const struct db_pool *p, const char *name)
{
	for (size_t i = 0; i < p->n_stmts; i++)
		if (strcmp(p->stmts[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* db_exec - queue a prepared statement's execution (sent by the dispatch event) */
struct db_request *db_exec(struct db_pool *p, const char *stmt_name, int nparams,
			   const char *const *values, const int *lengths, const int *formats,
			   int result_format, db_cb *cb, void *arg)
{
	int idx = pool_stmt_find(p, stmt_name);
	if (idx < 0)
		log_panic("db_exec of an unregistered statement", "pool=%s stmt=%s", p->name, stmt_name);
	if (nparams != p->stmts[idx].nparams)
		log_panic("db_exec with a wrong parameter count", "pool=%s stmt=%s nparams=%d want=%d",
			  p->name, stmt_name, nparams, p->stmts[idx].nparams);
	struct db_request *r = req_new(p, REQ_QUERY);
	r->stmt = idx;
	req_copy_params(r, nparams, values, lengths, formats);
	r->result_format = result_format;
	r->cb = cb;
	r->arg = arg;
	pool_enqueue(p, r);
	return r;
}

/* db_exec_sql - queue one SQL text statement (sent by the dispatch event) */
struct db_request *db_exec_sql(struct db_pool *p, const char *sql, int nparams,
			       const char *const *values, const int *lengths, const int *formats,
			       int result_format, db_cb *cb, void *arg)
{
	struct db_request *r = req_new(p, REQ_QUERY);
	r->sql = xstrdup(sql);
	req_copy_params(r, nparams, values, lengths, formats);
	r->result_format = result_format;
	r->cb = cb;
	r->arg = arg;
	pool_enqueue(p, r);
	return r;
}

void db_request_set_timeout(struct db_request *r, int timeout_ms)
{
	r->deadline_us = r->start_us + (int64_t)timeout_ms * 1000;
}

/* db_request_cancel - forget a request: free it unless its answer is still due */
void db_request_cancel(struct db_request **rp)
{
	struct db_request *r = *rp;
	*rp = NULL;
	if (r == NULL)
		return;
	switch (r->state) {
	case REQ_QUEUED:
		TAILQ_REMOVE(&r->pool->waitq, r, link);
		r->pool->n_waiting--;
		req_free(r);
		break;
	case REQ_DONE:
		TAILQ_REMOVE(&r->pool->doneq, r, link);
		req_free(r);
		break;
	case REQ_SENT:
		r->cancelled = true;	/* its answer must still be read in order */
		break;
	}
}

/* db_result_retryable - safe to run again whatever happened? */
bool db_result_retryable(const struct db_result *r)
{
	if (r->status == DB_UNAVAILABLE)
		return !r->may_have_executed;
	if (r->status == DB_SQL_ERROR)
		return strcmp(r->sqlstate, "40001") == 0 || strcmp(r->sqlstate, "40P01") == 0;
	return false;
}

/* ------------------------------------------------------------------ listeners */

/* listener_event - call one subscriber (not a dead one) */
static void listener_event(struct db_listener *l, enum db_listen_event ev, const char *payload, int pid)
{
	if (l->dead)
		return;
	struct db_notification n = {
		.event = ev, .channel = l->channel, .payload = payload != NULL ? payload : "", .be_pid = pid,
	};
	l->pool->in_callback++;
	l->cb(&n, l->arg);
	l->pool->in_callback--;
}

/* listener_ready - LISTEN is in effect for l: READY, or RESYNC after a loss */
static void listener_ready(struct db_listener *l)
{
	l->listening = true;
	enum db_listen_event ev = l->was_ready ? DB_LISTEN_RESYNC : DB_LISTEN_READY;
	l->was_ready = true;
	listener_event(l, ev, NULL, 0);
}

/* listen_confirmed - a LISTEN on channel committed: its subscribers are listening */
static void listen_confirmed(struct db_pool *p, const char *channel)
{
	struct db_listener *l;
	TAILQ_FOREACH(l, &p->listeners, link) {
		if (!l->dead && l->requested && !l->listening && strcmp(l->channel, channel) == 0)
			listener_ready(l);
	}
}

/* listen_lost - the listen connection broke: every subscriber may miss events now */
static void listen_lost(struct db_pool *p)
{
	struct db_listener *l;
	TAILQ_FOREACH(l, &p->listeners, link) {
		bool was = l->listening;
		l->requested = false;
		l->listening = false;
		if (was)
			listener_event(l, DB_LISTEN_LOST, NULL, 0);
	}
}

/* db_listen - add a subscriber; the dispatch event sends the LISTEN */
struct db_listener *db_listen(struct db_pool *p, const char *channel, db_listen_cb *cb, void *arg)
{
	struct db_listener *l = XNEW(struct db_listener);
	l->pool = p;
	l->channel = xstrdup(channel);
	l->cb = cb;
	l->arg = arg;
	TAILQ_INSERT_TAIL(&p->listeners, l, link);
	pool_kick(p);
	return l;
}

/* db_unlisten - mark dead; the dispatch event frees it and UNLISTENs if last */
void db_unlisten(struct db_listener **lp)
{
	struct db_listener *l = *lp;
	*lp = NULL;
	if (l == NULL)
		return;
	l->dead = true;
	pool_kick(l->pool);
}

/* channel_live - some live subscriber of channel, other than except */
static struct db_listener *channel_live(struct db_pool *p, const char *channel,
					const struct db_listener *except, bool requested)
{
	struct db_listener *l;
	TAILQ_FOREACH(l, &p->listeners, link) {
		if (l != except && !l->dead && strcmp(l->channel, channel) == 0 &&
		    (!requested || l->requested))
			return l;
	}
	return NULL;
}

/* ------------------------------------------------------------------ sending */

/* conn_send - query + Sync of one request into libpq's buffer; false if the
 * connection refused it (then nothing of it counts as sent) */
static bool conn_send(struct db_conn *c, struct db_request *r)
{
	struct db_pool *p = c->pool;
	int ok = 0;
	char *ident, *sql;
	switch (r->kind) {
	case REQ_PREPARE:
		ok = PQsendPrepare(c->pg, p->stmts[r->stmt].name, p->stmts[r->stmt].sql,
				   p->stmts[r->stmt].nparams, NULL);
		break;
	case REQ_QUERY:
		if (r->stmt >= 0)
			ok = PQsendQueryPrepared(c->pg, p->stmts[r->stmt].name, r->nparams,
						 (const char *const *)r->values, r->lengths, r->formats,
						 r->result_format);
		else
			ok = PQsendQueryParams(c->pg, r->sql, r->nparams, NULL,
					       (const char *const *)r->values, r->lengths, r->formats,
					       r->result_format);
		break;
	case REQ_LISTEN:
	case REQ_UNLISTEN:
		ident = PQescapeIdentifier(c->pg, r->channel, strlen(r->channel));
		if (ident == NULL)
			return false;
		sql = xasprintf("%s %s", r->kind == REQ_LISTEN ? "LISTEN" : "UNLISTEN", ident);
		PQfreemem(ident);
		ok = PQsendQueryParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0);
		free(sql);
		break;
	case REQ_PING:
		ok = PQsendQueryParams(c->pg, "SELECT 1", 0, NULL, NULL, NULL, NULL, 0);
		break;
	}
	/* without its Sync a statement cannot commit: the connection is closed anyway */
	if (!ok || !PQpipelineSync(c->pg))
		return false;
	r->state = REQ_SENT;
	r->phase = PHASE_RESULT;
	r->sent_us = now_us();
	TAILQ_INSERT_TAIL(&c->inflight, r, link);
	c->n_inflight++;
	c->dirty = true;
	return true;
}

/* conn_send_internal - a request of the pool's own (prepare, LISTEN, ping) */
static bool conn_send_internal(struct db_conn *c, enum req_kind kind, int stmt, const char *channel)
{
	struct db_request *r = req_new(c->pool, kind);
	r->stmt = stmt;
	r->channel = channel != NULL ? xstrdup(channel) : NULL;
	if (!conn_send(c, r)) {
		req_free(r);
		char buf[300];
		conn_lost(c, one_line(PQerrorMessage(c->pg), buf, sizeof(buf)));
		return false;
	}
	return true;
}

/* conn_flush - push libpq's output; watch for writability while some is left */
static bool conn_flush(struct db_conn *c)
{
	int r = PQflush(c->pg);
	if (r < 0) {
		char buf[300];
		conn_lost(c, one_line(PQerrorMessage(c->pg), buf, sizeof(buf)));
		return false;
	}
	c->dirty = false;
	if (r == 1 && !c->wr_added) {
		event_add(c->wr, NULL);
		c->wr_added = true;
	} else if (r == 0 && c->wr_added) {
		event_del(c->wr);
		c->wr_added = false;
	}
	return true;
}

/* pool_pick - a ready query connection for one more request. A pipeline is FIFO:
 * work sent behind a slow statement waits for it, so connections whose oldest
 * request has been out for long (DB_SLOW_HEAD_US) come last, and one whose oldest
 * request is overdue is never used; otherwise the fewest requests in flight wins. */
static struct db_conn *pool_pick(struct db_pool *p)
{
	struct db_conn *best = NULL;
	bool best_slow = true;
	int64_t now = now_us();
	for (int i = 0; i < p->n_conns; i++) {
		struct db_conn *c = p->conns[i];
		if (c->state != CONN_READY || c->n_inflight >= p->set.max_pipeline)
			continue;
		struct db_request *head = TAILQ_FIRST(&c->inflight);
		if (head != NULL && head->deadline_us <= now)
			continue;
		bool slow = head != NULL && now - head->sent_us > DB_SLOW_HEAD_US;
		if (best == NULL || (best_slow && !slow) ||
		    (slow == best_slow && c->n_inflight < best->n_inflight)) {
			best = c;
			best_slow = slow;
		}
	}
	return best;
}

/* pool_send_waiting - move queued requests into connections' pipelines */
static void pool_send_waiting(struct db_pool *p)
{
	struct db_request *r;
	struct db_conn *c;
	while ((r = TAILQ_FIRST(&p->waitq)) != NULL && (c = pool_pick(p)) != NULL) {
		TAILQ_REMOVE(&p->waitq, r, link);
		p->n_waiting--;
		if (!conn_send(c, r)) {
			/* not sent: back to the head, another connection may take it */
			r->state = REQ_QUEUED;
			TAILQ_INSERT_HEAD(&p->waitq, r, link);
			p->n_waiting++;
			char buf[300];
			conn_lost(c, one_line(PQerrorMessage(c->pg), buf, sizeof(buf)));
		}
	}
	for (int i = 0; i < p->n_conns; i++)
		if (p->conns[i]->state == CONN_READY && p->conns[i]->dirty)
			conn_flush(p->conns[i]);
}

/* pool_listen_sync - bring the listen connection in line with the subscribers */
static void pool_listen_sync(struct db_pool *p)
{
	struct db_listener *l, *next;
	struct db_conn *c = p->lconn;
	bool ready = c != NULL && c->state == CONN_READY;

	/* free unsubscribed listeners; UNLISTEN a channel nobody wants any more */
	for (l = TAILQ_FIRST(&p->listeners); l != NULL; l = next) {
		next = TAILQ_NEXT(l, link);
		if (!l->dead)
			continue;
		TAILQ_REMOVE(&p->listeners, l, link);
		if (ready && l->requested && channel_live(p, l->channel, l, false) == NULL)
			ready = conn_send_internal(c, REQ_UNLISTEN, -1, l->channel);
		free(l->channel);
		free(l);
	}
	if (TAILQ_EMPTY(&p->listeners))
		goto flush;
	if (c == NULL) {
		c = p->lconn = XNEW(struct db_conn);
		c->pool = p;
		c->id = -1;
		c->listener = true;
		c->backoff_ms = p->set.backoff_min_ms;
		TAILQ_INIT(&c->inflight);
		c->timer = evtimer_new(p->base, conn_reconnect_cb, c);
		conn_connect(c);
		return;
	}
	if (!ready)
		return;
	TAILQ_FOREACH(l, &p->listeners, link) {
		if (l->dead || l->requested)
			continue;
		struct db_listener *o = channel_live(p, l->channel, l, true);
		l->requested = true;
		if (o != NULL) {
			if (o->listening)
				listener_ready(l);	/* the channel is already listened to */
			continue;
		}
		if (!conn_send_internal(c, REQ_LISTEN, -1, l->channel))
			return;
	}
flush:
	if (ready && c->state == CONN_READY && c->dirty)
		conn_flush(c);
}

/* pool_dispatch - deferred work: pending failure callbacks, sending, listeners */
static void pool_dispatch(evutil_socket_t fd, short what, void *arg)
{
	struct db_pool *p = arg;
	struct db_request *r;
	uint64_t gen = ++p->gen;
	/* only those queued before this run: a callback that resubmits into a full
	 * queue gets its failure on the next run, not in an endless loop here */
	while ((r = TAILQ_FIRST(&p->doneq)) != NULL && r->gen < gen) {
		TAILQ_REMOVE(&p->doneq, r, link);
		req_answer(r, r->fail_status, r->fail_may, NULL, r->fail_msg, NULL);
		req_free(r);
	}
	pool_send_waiting(p);
	pool_listen_sync(p);
}

/* ------------------------------------------------------------------ answers */

/* sqlstate_unavailable - errors that say "this server cannot serve you now" rather
 * than "your statement is wrong": connection exceptions (08), operator intervention
 * (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now), and
 * read-only transaction (25006: we are on a standby) */
static bool sqlstate_unavailable(const char *s)
{
	return s == NULL || strncmp(s, "08", 2) == 0 || strncmp(s, "57P", 3) == 0 ||
	       strcmp(s, "25006") == 0;
}

/* conn_complete - the Sync of r's segment arrived: r's transaction is over */
static void conn_complete(struct db_conn *c, struct db_request *r)
{
	struct db_pool *p = c->pool;
	PGresult *res = r->res;
	ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
	const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	char msg[512], q[600], l[16], cq[80];
	bool reconnect = false;

	if (!ok)
		one_line(res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : "no result",
			 msg, sizeof(msg));
	if (!ok && msg[0] == '\0')
		one_line(res != NULL ? PQresultErrorMessage(res) : "no result", msg, sizeof(msg));

	switch (r->kind) {
	case REQ_PREPARE:
		if (!ok)
			log_error("db prepare failed", "pool=%s conn=%s stmt=%s sqlstate=%s error=%s",
				  p->name, conn_label(c, l, sizeof(l)), p->stmts[r->stmt].name,
				  state != NULL ? state : "-", log_quote(q, sizeof(q), msg, strlen(msg)));
		break;
	case REQ_LISTEN:
		if (ok)
			listen_confirmed(p, r->channel);
		else
			log_warn("db listen failed", "pool=%s channel=%s error=%s", p->name,
				 log_quote(cq, sizeof(cq), r->channel, strlen(r->channel)),
				 log_quote(q, sizeof(q), msg, strlen(msg)));
		break;
	case REQ_UNLISTEN:
	case REQ_PING:
		break;
	case REQ_QUERY:
		if (ok) {
			req_answer(r, DB_OK, false, NULL, NULL, res);
		} else if (st == PGRES_FATAL_ERROR && !sqlstate_unavailable(state)) {
			log_debug("db statement failed", "pool=%s sqlstate=%s error=%s", p->name, state,
				  log_quote(q, sizeof(q), msg, strlen(msg)));
			req_answer(r, DB_SQL_ERROR, false, state, msg, res);
		} else {
			/* definitively not committed (its segment's Sync came back), but the
			 * server cannot take it: retry elsewhere, reconnect */
			log_warn("db server unavailable", "pool=%s conn=%s sqlstate=%s error=%s", p->name,
				 conn_label(c, l, sizeof(l)), state != NULL ? state : "-",
				 log_quote(q, sizeof(q), msg, strlen(msg)));
			req_answer(r, DB_UNAVAILABLE, false, state, msg, NULL);
			reconnect = st == PGRES_FATAL_ERROR;
		}
		break;
	}
	req_free(r);
	if (reconnect && c->state == CONN_READY)
		conn_lost(c, "server refused the work (shutting down or read-only)");
}

/* conn_drain - consume every complete answer libpq holds; false if the
 * connection was closed meanwhile */
static bool conn_drain(struct db_conn *c)
{
	struct db_request *r;
	while (c->state == CONN_READY && (r = TAILQ_FIRST(&c->inflight)) != NULL) {
		if (PQisBusy(c->pg))
			return true;
		PGresult *res = PQgetResult(c->pg);
		if (r->phase == PHASE_RESULT) {
			if (res == NULL) {
				r->phase = PHASE_SYNC;
				continue;
			}
			if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
				PQclear(res);
				conn_lost(c, "pipeline out of step (sync before result)");
				return false;
			}
			if (r->res == NULL || PQresultStatus(res) == PGRES_FATAL_ERROR) {
				PQclear(r->res);
				r->res = res;
			} else {
				PQclear(res);
			}
			continue;
		}
		if (res == NULL || PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
			/* libpq reports a broken connection this way: the commit is unconfirmed */
			PQclear(res);
			char buf[300];
			conn_lost(c, one_line(PQerrorMessage(c->pg), buf, sizeof(buf)));
			return false;
		}
		PQclear(res);
		TAILQ_REMOVE(&c->inflight, r, link);
		c->n_inflight--;
		conn_complete(c, r);
	}
	return c->state == CONN_READY;
}

/* conn_notifies - deliver NOTIFYs (checked after every PQconsumeInput) */
static void conn_notifies(struct db_conn *c)
{
	PGnotify *n;
	while (c->pg != NULL && (n = PQnotifies(c->pg)) != NULL) {
		struct db_listener *l;
		if (c->listener) {
			TAILQ_FOREACH(l, &c->pool->listeners, link) {
				if (strcmp(l->channel, n->relname) == 0)
					listener_event(l, DB_LISTEN_NOTIFY, n->extra, n->be_pid);
			}
		}
		PQfreemem(n);
	}
}

/* conn_io - a READY connection is readable or writable */
static void conn_io(evutil_socket_t fd, short what, void *arg)
{
	struct db_conn *c = arg;
	char buf[300];
	if ((what & EV_WRITE) && !conn_flush(c))
		return;
	if (!(what & EV_READ))
		return;
	c->last_io_us = now_us();
	if (!PQconsumeInput(c->pg)) {
		/* answers already complete in libpq's buffer still count */
		char *why = xstrdup(one_line(PQerrorMessage(c->pg), buf, sizeof(buf)));
		conn_notifies(c);
		if (conn_drain(c))
			conn_lost(c, why);
		free(why);
		return;
	}
	conn_notifies(c);
	if (!conn_drain(c))
		return;
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		conn_lost(c, one_line(PQerrorMessage(c->pg), buf, sizeof(buf)));
		return;
	}
	if (c->wr_added || c->dirty)
		conn_flush(c);	/* libpq: after reading, try the pending output again */
}

/* ------------------------------------------------------------------ connecting */

/* conn_established - PQconnectPoll said OK: switch to pipelined, non-blocking
 * operation and prepare the statements ahead of any query */
static void conn_established(struct db_conn *c)
{
	struct db_pool *p = c->pool;
	char l[16], hq[200], buf[300];
	evtimer_del(c->timer);
	event_free(c->io);
	c->io = NULL;
	if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
		conn_lost(c, one_line(PQerrorMessage(c->pg), buf, sizeof(buf)));
		return;
	}
	int fd = PQsocket(c->pg);
	c->io = event_new(p->base, fd, EV_READ | EV_PERSIST, conn_io, c);
	c->wr = event_new(p->base, fd, EV_WRITE | EV_PERSIST, conn_io, c);
	c->wr_added = false;
	event_add(c->io, NULL);
	c->state = CONN_READY;
	c->last_io_us = now_us();
	if (!c->listener)
		metric_add(p->m_conns, 1);

	const char *host = PQhost(c->pg) != NULL ? PQhost(c->pg) : "";
	const char *standby = PQparameterStatus(c->pg, "in_hot_standby");
	const char *version = PQparameterStatus(c->pg, "server_version");
	log_info("db connected", "pool=%s conn=%s host=%s port=%s in_hot_standby=%s "
		 "server_version=%s backend_pid=%d attempts=%d", p->name, conn_label(c, l, sizeof(l)),
		 log_quote(hq, sizeof(hq), host, strlen(host)), PQport(c->pg) != NULL ? PQport(c->pg) : "",
		 standby != NULL ? standby : "-", version != NULL ? version : "-",
		 PQbackendPID(c->pg), c->failures + 1);
	if (standby != NULL && strcmp(standby, "on") == 0 && !c->listener)
		log_warn("db connected to a hot standby: writes will fail",
			 "pool=%s conn=%s hint=\"use target_session_attrs=read-write\"", p->name,
			 conn_label(c, l, sizeof(l)));
	c->failures = 0;
	c->backoff_ms = p->set.backoff_min_ms;

	if (!c->listener)
		for (size_t i = 0; i < p->n_stmts; i++)
			if (!conn_send_internal(c, REQ_PREPARE, (int)i, NULL))
				return;
	if (c->dirty && !conn_flush(c))
		return;
	pool_kick(p);	/* queued requests and LISTENs go out behind the prepares */
}

/* conn_wait - wait (one shot) for what PQconnectPoll asked, on its current socket */
static void conn_connect_step(evutil_socket_t fd, short what, void *arg);
static void conn_wait(struct db_conn *c, PostgresPollingStatusType st)
{
	int fd = PQsocket(c->pg);
	if (fd < 0) {
		conn_lost(c, "connection has no socket");
		return;
	}
	if (c->io != NULL)
		event_free(c->io);
	c->io = event_new(c->pool->base, fd, st == PGRES_POLLING_READING ? EV_READ : EV_WRITE,
			  conn_connect_step, c);
	event_add(c->io, NULL);
}

/* conn_connect_step - the socket is ready: one more PQconnectPoll step */
static void conn_connect_step(evutil_socket_t fd, short what, void *arg)
{
	struct db_conn *c = arg;
	char buf[400];
	PostgresPollingStatusType st = PQconnectPoll(c->pg);
	switch (st) {
	case PGRES_POLLING_READING:
	case PGRES_POLLING_WRITING:
		conn_wait(c, st);
		return;
	case PGRES_POLLING_OK:
		conn_established(c);
		return;
	default:
		conn_lost(c, one_line(PQerrorMessage(c->pg), buf, sizeof(buf)));
		return;
	}
}

/* conn_connect_timeout - one attempt took too long. libpq ignores connect_timeout
 * with PQconnectPoll, so a host that never answers (a dead node's black-holed TCP,
 * a hung server) would stall every attempt before libpq reaches the next host of a
 * multi-host string: the next attempt starts at the following host instead. */
static void conn_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct db_conn *c = arg;
	char buf[200];
	const char *host = c->pg != NULL && PQhost(c->pg) != NULL ? PQhost(c->pg) : "";
	snprintf(buf, sizeof(buf), "connect timed out (host %s)", host);
	c->rotate++;
	conn_lost(c, buf);
}

/* conn_connect - start a connection attempt (also the reconnect timer's callback) */
static void conn_connect(struct db_conn *c)
{
	struct db_pool *p = c->pool;
	char buf[400];
	if (c->state != CONN_DOWN)
		return;
	c->pg = pool_connect_start(p, c->rotate);
	if (c->pg == NULL)
		log_panic("out of memory", "what=%s", "PQconnectStart");
	PQsetNoticeProcessor(c->pg, db_notice, c);
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		c->state = CONN_CONNECTING;
		conn_lost(c, one_line(PQerrorMessage(c->pg), buf, sizeof(buf)));
		return;
	}
	c->state = CONN_CONNECTING;
	event_free(c->timer);
	c->timer = evtimer_new(p->base, conn_connect_timeout, c);
	struct timeval tv = { p->set.connect_timeout_ms / 1000, (p->set.connect_timeout_ms % 1000) * 1000 };
	evtimer_add(c->timer, &tv);
	conn_wait(c, PGRES_POLLING_WRITING);	/* libpq: start as if it said WRITING */
}

/* conn_reconnect_cb - the backoff timer fired */
static void conn_reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
	conn_connect(arg);
}

/* conn_close - drop the libpq connection and its events */
static void conn_close(struct db_conn *c)
{
	if (c->state == CONN_READY && !c->listener)
		metric_add(c->pool->m_conns, -1);
	if (c->io != NULL)
		event_free(c->io);
	if (c->wr != NULL)
		event_free(c->wr);
	c->io = c->wr = NULL;
	c->wr_added = false;
	c->dirty = false;
	if (c->timer != NULL)
		evtimer_del(c->timer);
	if (c->pg != NULL)
		PQfinish(c->pg);
	c->pg = NULL;
	c->state = CONN_DOWN;
}

/* conn_lost - the connection (or the attempt) failed: close it, fail what it
 * carried, reconnect after a backoff */
static void conn_lost(struct db_conn *c, const char *why)
{
	struct db_pool *p = c->pool;
	char l[16], q[400], msg[460];
	bool was_ready = c->state == CONN_READY;
	if (c->state == CONN_DOWN)
		return;
	conn_close(c);

	if (was_ready) {
		log_warn("db connection lost", "pool=%s conn=%s in_flight=%d error=%s", p->name,
			 conn_label(c, l, sizeof(l)), c->n_inflight, log_quote(q, sizeof(q), why, strlen(why)));
	} else if (c->failures == 0) {
		log_warn("db connect failed", "pool=%s conn=%s error=%s", p->name,
			 conn_label(c, l, sizeof(l)), log_quote(q, sizeof(q), why, strlen(why)));
	} else {
		log_debug("db connect failed", "pool=%s conn=%s attempt=%d error=%s", p->name,
			  conn_label(c, l, sizeof(l)), c->failures + 1, log_quote(q, sizeof(q), why, strlen(why)));
	}
	snprintf(msg, sizeof(msg), "database connection lost: %s", why);
	struct db_request *r;
	while ((r = TAILQ_FIRST(&c->inflight)) != NULL) {
		TAILQ_REMOVE(&c->inflight, r, link);
		PQclear(r->res);
		r->res = NULL;
		req_fail_later(p, r, DB_UNAVAILABLE, true, msg);
	}
	c->n_inflight = 0;

	int delay;
	if (was_ready) {
		delay = p->set.backoff_min_ms;
		c->backoff_ms = p->set.backoff_min_ms;
	} else {
		c->failures++;
		delay = c->backoff_ms;
		c->backoff_ms = MAIL_MIN(c->backoff_ms * 2, p->set.backoff_max_ms);
	}
	/* +-20% jitter so that routers do not reconnect in lockstep */
	delay = delay * 8 / 10 + (int)(rand_r(&p->seed) % (unsigned)(delay * 4 / 10 + 1));
	event_free(c->timer);
	c->timer = evtimer_new(p->base, conn_reconnect_cb, c);
	struct timeval tv = { delay / 1000, (delay % 1000) * 1000 };
	evtimer_add(c->timer, &tv);
	if (c->listener)
		listen_lost(p);
	pool_kick(p);
}

/* ------------------------------------------------------------------ timeouts */

/* pool_tick - request deadlines, hung connections, idle pings */
static void pool_tick(evutil_socket_t fd, short what, void *arg)
{
	struct db_pool *p = arg;
	int64_t now = now_us();
	struct db_request *r, *next;
	for (r = TAILQ_FIRST(&p->waitq); r != NULL; r = next) {
		next = TAILQ_NEXT(r, link);
		if (r->deadline_us > now)
			continue;
		TAILQ_REMOVE(&p->waitq, r, link);
		p->n_waiting--;
		req_fail_later(p, r, DB_UNAVAILABLE, false, "timed out waiting for a database connection");
	}
	for (int i = -1; i < p->n_conns; i++) {
		struct db_conn *c = i < 0 ? p->lconn : p->conns[i];
		if (c == NULL || c->state != CONN_READY)
			continue;
		TAILQ_FOREACH(r, &c->inflight, link) {
			if (r->kind == REQ_QUERY && !r->answered && !r->cancelled && r->deadline_us <= now)
				req_answer(r, DB_UNAVAILABLE, true, NULL, "timed out waiting for the database", NULL);
		}
		/* an answer overdue by a whole timeout: the server or the path is gone */
		r = TAILQ_FIRST(&c->inflight);
		if (r != NULL && now - r->deadline_us > (int64_t)p->set.timeout_ms * 1000) {
			conn_lost(c, "no answer from the server");
			continue;
		}
		if (r == NULL && now - c->last_io_us > DB_PING_IDLE_US) {
			c->last_io_us = now;
			if (conn_send_internal(c, REQ_PING, -1, NULL))
				conn_flush(c);
		}
	}
}

/* ------------------------------------------------------------------ pool */

struct db_pool *db_pool_new(struct event_base *base, const char *conninfo,
			    const struct db_pool_settings *settings,
			    const struct db_stmt *stmts, size_t n_stmts)
{
	struct db_pool *p = XNEW(struct db_pool);
	struct db_pool_settings s = { 0 };
	if (settings != NULL)
		s = *settings;
#define DFL(f, v) do { if (s.f <= 0) s.f = (v); } while (0)
	DFL(size, DB_DEFAULT_SIZE);
	DFL(max_queue, DB_DEFAULT_MAX_QUEUE);
	DFL(max_pipeline, DB_DEFAULT_MAX_PIPELINE);
	DFL(timeout_ms, DB_DEFAULT_TIMEOUT_MS);
	DFL(connect_timeout_ms, DB_DEFAULT_CONNECT_TIMEOUT_MS);
	DFL(backoff_min_ms, DB_DEFAULT_BACKOFF_MIN_MS);
	DFL(backoff_max_ms, DB_DEFAULT_BACKOFF_MAX_MS);
#undef DFL
	if (s.backoff_max_ms < s.backoff_min_ms)
		s.backoff_max_ms = s.backoff_min_ms;
	p->base = base;
	p->conninfo = xstrdup(conninfo);
	p->name = xstrdup(s.name != NULL ? s.name : "main");
	s.name = p->name;
	p->set = s;
	p->seed = (unsigned int)now_us() ^ (unsigned int)(uintptr_t)p;
	pool_parse_conninfo(p);
	TAILQ_INIT(&p->waitq);
	TAILQ_INIT(&p->doneq);
	TAILQ_INIT(&p->listeners);

	p->stmts = xcalloc(n_stmts + 1, sizeof(*p->stmts));
	for (size_t i = 0; i < n_stmts; i++) {
		if (pool_stmt_find(p, stmts[i].name) >= 0)
			log_panic("db statement registered twice", "stmt=%s", stmts[i].name);
		p->stmts[i].name = xstrdup(stmts[i].name);
		p->stmts[i].sql = xstrdup(stmts[i].sql);
		p->stmts[i].nparams = stmts[i].nparams;
		p->n_stmts = i + 1;
	}

	p->m_queries = metric_counter("db_queries_total", "database requests answered");
	p->m_errors = metric_counter("db_errors_total", "database requests answered with an error or unavailable");
	p->m_seconds = metric_histogram("db_query_seconds", "database request latency, queueing included", NULL, 0);
	p->m_conns = metric_gauge("db_connections", "database query connections ready");

	p->dispatch = event_new(base, -1, 0, pool_dispatch, p);
	p->tick = event_new(base, -1, EV_PERSIST, pool_tick, p);
	struct timeval tv = { 0, DB_TICK_MS * 1000 };
	event_add(p->tick, &tv);

	p->n_conns = s.size;
	p->conns = xcalloc((size_t)s.size, sizeof(*p->conns));
	for (int i = 0; i < s.size; i++) {
		struct db_conn *c = p->conns[i] = XNEW(struct db_conn);
		c->pool = p;
		c->id = i;
		c->backoff_ms = s.backoff_min_ms;
		TAILQ_INIT(&c->inflight);
		c->timer = evtimer_new(base, conn_reconnect_cb, c);
		conn_connect(c);
	}
	return p;
}

/* conn_free - close and free a connection; its requests go without callbacks */
static void conn_free(struct db_conn *c)
{
	struct db_request *r;
	if (c == NULL)
		return;
	conn_close(c);
	while ((r = TAILQ_FIRST(&c->inflight)) != NULL) {
		TAILQ_REMOVE(&c->inflight, r, link);
		req_free(r);
	}
	if (c->timer != NULL)
		event_free(c->timer);
	free(c);
}

/* db_pool_free - close every connection; requests and subscribers go silently */
void db_pool_free(struct db_pool **pp)
{
	struct db_pool *p = *pp;
	struct db_request *r;
	struct db_listener *l;
	*pp = NULL;
	if (p == NULL)
		return;
	if (p->in_callback > 0)
		log_panic("db_pool_free from inside a db callback", "pool=%s", p->name);
	for (int i = 0; i < p->n_conns; i++)
		conn_free(p->conns[i]);
	conn_free(p->lconn);
	free(p->conns);
	while ((r = TAILQ_FIRST(&p->waitq)) != NULL) {
		TAILQ_REMOVE(&p->waitq, r, link);
		req_free(r);
	}
	while ((r = TAILQ_FIRST(&p->doneq)) != NULL) {
		TAILQ_REMOVE(&p->doneq, r, link);
		req_free(r);
	}
	while ((l = TAILQ_FIRST(&p->listeners)) != NULL) {
		TAILQ_REMOVE(&p->listeners, l, link);
		free(l->channel);
		free(l);
	}
	for (size_t i = 0; i < p->n_stmts; i++) {
		free(p->stmts[i].name);
		free(p->stmts[i].sql);
	}
	free(p->stmts);
	event_free(p->dispatch);
	event_free(p->tick);
	for (size_t i = 0; p->kw != NULL && p->kw[i] != NULL; i++) {
		free(p->kw[i]);
		free(p->val[i]);
	}
	free(p->kw);
	free(p->val);
	free(p->conninfo);
	free(p->name);
	free(p);
}

/* db_pool_stats - a snapshot of the pool's connections and queues */
void db_pool_stats(const struct db_pool *p, struct db_pool_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->connections = p->n_conns;
	st->queued = p->n_waiting;
	for (int i = 0; i < p->n_conns; i++) {
		if (p->conns[i]->state == CONN_READY)
			st->connections_ready++;
		st->in_flight += p->conns[i]->n_inflight;
	}
	st->listen_ready = p->lconn != NULL && p->lconn->state == CONN_READY;
}
