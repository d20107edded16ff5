/* db_check.c - drives router/db.c (the async libpq pool) and router/migrate.c
 * against a real PostgreSQL, for tests/router/test_db.py.
 *   db_check CONNINFO SCENARIO [ARGS...]
 * Scenarios:
 *   pipeline            2,000 pipelined inserts (1 and 4 connections) vs sequential:
 *                       every result is its own request's, in order; timings
 *   errors              SQL errors inside a pipeline fail only their own request
 *   prepared            prepared statements, binary parameters/results, NULLs, a
 *                       statement whose prepare failed
 *   notify              LISTEN/NOTIFY delivery, shared channel, unlisten
 *   cancel              cancelled requests get no callback; db_pool_free drops the rest
 *   timeouts            a slow statement times out (may_have_executed); no server:
 *                       queued requests time out, a full queue fails fast
 *   outage SECONDS      inserts every 10 ms while the test restarts / fails over the
 *                       server (after "READY outage"); then checks that every
 *                       acknowledged row exists and no false success was reported
 *   deliver A1 A2 N     N concurrent mail_deliver calls to accounts A1 and A2 over 8
 *                       connections: consecutive UIDs, increasing MODSEQs; token retry
 *   blackhole           CONNINFO's first host accepts and never answers: the pool
 *                       must time the attempt out and reach the second host
 *   migrate             migrate_run (run twice at once by the test)
 *   migrate_newer       migrate_run must refuse a database newer than the binary
 * Prints "ok ..." / "FAIL ..." per check, "STAT k=v" figures, "READY x" where the
 * test must act; exits 0 only when every check passed. */
#include "lib/common.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/xalloc.h"
#include "router/db.h"
#include "router/migrate.h"
#include <stdarg.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>

static struct event_base *base;
static const char *conninfo;
static int checks, failures;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* check - one result line */
static bool ATTR_PRINTF(3, 4) check(bool ok, const char *scenario, const char *fmt, ...)
{
	char buf[700];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printf("%s %s: %s\n", ok ? "ok" : "FAIL", scenario, buf);
	fflush(stdout);
	checks++;
	if (!ok)
		failures++;
	return ok;
}

/* run_until - turn the loop until *flag or timeout_ms (the pool's tick wakes it) */
static bool run_until(const bool *flag, int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;
	while (!*flag && now_ms() < end)
		event_base_loop(base, EVLOOP_ONCE);
	return *flag;
}

static void run_for(int ms)
{
	bool never = false;
	run_until(&never, ms);
}

/* ------------------------------------------------------------------ one request */

struct waiter {
	bool done;
	int calls;
	enum db_status st;
	bool may;
	char sqlstate[8];
	char msg[300];
	PGresult *res;		/* a copy, caller clears */
	double seconds;
};

/* waiter_cb - record one answer (with a copy of its rows) */
static void waiter_cb(const struct db_result *r, void *arg)
{
	struct waiter *w = arg;
	w->calls++;
	w->done = true;
	w->st = r->status;
	w->may = r->may_have_executed;
	w->seconds = r->seconds;
	snprintf(w->sqlstate, sizeof(w->sqlstate), "%s", r->sqlstate);
	snprintf(w->msg, sizeof(w->msg), "%s", r->message);
	if (r->res != NULL && r->status == DB_OK)
		w->res = PQcopyResult(r->res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
}

/* sync_sql - run one SQL statement and wait for it */
static struct waiter sync_sql(struct db_pool *p, const char *sql, int n, const char *const *values,
			      int timeout_ms)
{
	struct waiter w = { 0 };
	db_exec_sql(p, sql, n, values, NULL, NULL, 0, waiter_cb, &w);
	if (!run_until(&w.done, timeout_ms))
		snprintf(w.msg, sizeof(w.msg), "no answer in %d ms", timeout_ms);
	return w;
}

static const char *status_name(enum db_status st)
{
	return st == DB_OK ? "ok" : st == DB_SQL_ERROR ? "sql_error" : "unavailable";
}

/* wait_ready - until the pool has n ready connections */
static bool wait_ready(struct db_pool *p, int n, int timeout_ms)
{
	struct db_pool_stats st;
	int64_t end = now_ms() + timeout_ms;
	for (;;) {
		db_pool_stats(p, &st);
		if (st.connections_ready >= n)
			return true;
		if (now_ms() >= end)
			return false;
		event_base_loop(base, EVLOOP_ONCE);
	}
}

/* ------------------------------------------------------------------ pipeline */

struct pl_ctx {
	int n, done, bad, misordered, next;
	bool ordered;
	bool finished;
	struct db_pool *pool;
	const char *stmt;
	bool sequential;
	int submitted;
};
struct pl_item {
	struct pl_ctx *ctx;
	int id;
};

/* pl_submit - one insert of the pipeline test */
static void pl_submit(struct pl_ctx *ctx, struct pl_item *it);

/* pl_cb - one insert answered: its own id back, in order; next if sequential */
static void pl_cb(const struct db_result *r, void *arg)
{
	struct pl_item *it = arg;
	struct pl_ctx *ctx = it->ctx;
	if (r->status != DB_OK || PQntuples(r->res) != 1 || atoi(PQgetvalue(r->res, 0, 0)) != it->id)
		ctx->bad++;
	if (ctx->ordered && it->id != ctx->next)
		ctx->misordered++;
	ctx->next = it->id + 1;
	ctx->done++;
	if (ctx->sequential && ctx->submitted < ctx->n)
		pl_submit(ctx, it + 1);
	if (ctx->done == ctx->n)
		ctx->finished = true;
}

static void pl_submit(struct pl_ctx *ctx, struct pl_item *it)
{
	char id[16], v[32];
	snprintf(id, sizeof(id), "%d", it->id);
	snprintf(v, sizeof(v), "value-%d", it->id);
	const char *vals[2] = { id, v };
	db_exec(ctx->pool, ctx->stmt, 2, vals, NULL, NULL, 0, pl_cb, it);
	ctx->submitted++;
}

/* pl_run - n inserts with ids from first; all at once, or one after another */
static int64_t pl_run(struct db_pool *p, const char *stmt, int first, int n, bool sequential,
		      bool ordered, const char *label)
{
	struct pl_ctx ctx = { .n = n, .ordered = ordered, .pool = p, .stmt = stmt,
			      .sequential = sequential, .next = first };
	struct pl_item *items = xcalloc((size_t)n + 1, sizeof(*items));
	for (int i = 0; i < n; i++) {
		items[i].ctx = &ctx;
		items[i].id = first + i;
	}
	int64_t t0 = now_ms();
	if (sequential)
		pl_submit(&ctx, &items[0]);
	else
		for (int i = 0; i < n; i++)
			pl_submit(&ctx, &items[i]);
	run_until(&ctx.finished, 60000);
	int64_t ms = now_ms() - t0;
	check(ctx.done == n && ctx.bad == 0, "pipeline", "%s: %d/%d answered, %d wrong results",
	      label, ctx.done, n, ctx.bad);
	if (ordered)
		check(ctx.misordered == 0, "pipeline", "%s: callbacks in submission order (%d out of order)",
		      label, ctx.misordered);
	free(items);
	return ms;
}

/* scenario_pipeline - 2,000 inserts sequential vs pipelined, results checked */
static void scenario_pipeline(void)
{
	static const struct db_stmt stmts[] = {
		{ "ins_a", "INSERT INTO pl_a (id, v) VALUES ($1, $2) RETURNING id", 2 },
		{ "ins_b", "INSERT INTO pl_b (id, v) VALUES ($1, $2) RETURNING id", 2 },
		{ "ins_c", "INSERT INTO pl_c (id, v) VALUES ($1, $2) RETURNING id", 2 },
	};
	struct db_pool_settings one = { .name = "one", .size = 1, .max_pipeline = 4096 };
	struct db_pool_settings four = { .name = "four", .size = 4, .max_pipeline = 4096 };
	struct db_pool *setup = db_pool_new(base, conninfo, &one, NULL, 0);
	struct waiter w = sync_sql(setup, "CREATE TABLE IF NOT EXISTS pl_a (id int PRIMARY KEY, v text)", 0, NULL, 10000);
	check(w.st == DB_OK, "pipeline", "create table: %s %s", status_name(w.st), w.msg);
	PQclear(w.res);
	w = sync_sql(setup, "CREATE TABLE IF NOT EXISTS pl_b (LIKE pl_a INCLUDING ALL)", 0, NULL, 10000);
	PQclear(w.res);
	w = sync_sql(setup, "CREATE TABLE IF NOT EXISTS pl_c (LIKE pl_a INCLUDING ALL)", 0, NULL, 10000);
	PQclear(w.res);
	db_pool_free(&setup);
	/* the tables exist now: prepare on fresh pools */
	struct db_pool *p1 = db_pool_new(base, conninfo, &one, stmts, N_ELEMENTS(stmts));
	struct db_pool *p4 = db_pool_new(base, conninfo, &four, stmts, N_ELEMENTS(stmts));
	check(wait_ready(p1, 1, 10000) && wait_ready(p4, 4, 10000), "pipeline", "pools connected");

	int64_t seq = pl_run(p1, "ins_a", 1, 2000, true, true, "sequential 1 connection");
	int64_t pip = pl_run(p1, "ins_b", 1, 2000, false, true, "pipelined 1 connection");
	int64_t pip4 = pl_run(p4, "ins_c", 1, 2000, false, false, "pipelined 4 connections");
	printf("STAT sequential_ms=%lld pipelined_ms=%lld pipelined4_ms=%lld\n", (long long)seq,
	       (long long)pip, (long long)pip4);
	check(pip < seq, "pipeline", "pipelining is faster: %lld ms vs %lld ms sequential",
	      (long long)pip, (long long)seq);

	w = sync_sql(p1, "SELECT (SELECT count(*) FROM pl_a) + (SELECT count(*) FROM pl_b) + "
		     "(SELECT count(*) FROM pl_c)", 0, NULL, 10000);
	check(w.st == DB_OK && w.res != NULL && atoi(PQgetvalue(w.res, 0, 0)) == 6000, "pipeline",
	      "6000 rows committed (%s)", w.res != NULL ? PQgetvalue(w.res, 0, 0) : w.msg);
	PQclear(w.res);
	db_pool_free(&p1);
	db_pool_free(&p4);
}

/* ------------------------------------------------------------------ errors */

struct err_ctx {
	int n, done;
	bool finished;
	struct waiter w[100];
};
struct err_item {
	struct err_ctx *ctx;
	int i;
};

/* err_cb - one answer of the error-isolation batch */
static void err_cb(const struct db_result *r, void *arg)
{
	struct err_item *it = arg;
	waiter_cb(r, &it->ctx->w[it->i]);
	if (++it->ctx->done == it->ctx->n)
		it->ctx->finished = true;
}

/* scenario_errors - failing statements inside a pipeline fail alone */
static void scenario_errors(void)
{
	static const struct db_stmt stmts[] = {
		{ "ins", "INSERT INTO er (id, v) VALUES ($1, 100 / $2::int) RETURNING v", 2 },
	};
	struct db_pool_settings one = { .name = "err", .size = 1 };
	struct db_pool *p = db_pool_new(base, conninfo, &one, NULL, 0);
	struct waiter w = sync_sql(p, "CREATE TABLE IF NOT EXISTS er (id int PRIMARY KEY, v int)", 0, NULL, 10000);
	PQclear(w.res);
	db_pool_free(&p);
	p = db_pool_new(base, conninfo, &one, stmts, 1);

	struct err_ctx ctx = { .n = 100 };
	struct err_item items[100];
	for (int i = 0; i < 100; i++) {
		char id[16], div[16];
		/* #50 divides by zero; #70 repeats #10's id */
		snprintf(id, sizeof(id), "%d", i == 70 ? 10 : i);
		snprintf(div, sizeof(div), "%d", i == 50 ? 0 : 1);
		const char *vals[2] = { id, div };
		items[i].ctx = &ctx;
		items[i].i = i;
		db_exec(p, "ins", 2, vals, NULL, NULL, 0, err_cb, &items[i]);
	}
	run_until(&ctx.finished, 20000);
	int ok = 0, other = 0;
	for (int i = 0; i < 100; i++) {
		if (i == 50 || i == 70)
			continue;
		if (ctx.w[i].st == DB_OK && ctx.w[i].res != NULL && atoi(PQgetvalue(ctx.w[i].res, 0, 0)) == 100)
			ok++;
		else
			other++;
	}
	check(ok == 98 && other == 0, "errors", "98 neighbours of the failing requests succeeded (%d ok, %d not)",
	      ok, other);
	check(ctx.w[50].st == DB_SQL_ERROR && strcmp(ctx.w[50].sqlstate, "22012") == 0 &&
	      strstr(ctx.w[50].msg, "division by zero") != NULL, "errors",
	      "division by zero reported alone: %s %s \"%s\"", status_name(ctx.w[50].st),
	      ctx.w[50].sqlstate, ctx.w[50].msg);
	check(ctx.w[70].st == DB_SQL_ERROR && strcmp(ctx.w[70].sqlstate, "23505") == 0 &&
	      !ctx.w[70].may, "errors", "unique violation reported alone: %s %s \"%s\"",
	      status_name(ctx.w[70].st), ctx.w[70].sqlstate, ctx.w[70].msg);
	for (int i = 0; i < 100; i++)
		PQclear(ctx.w[i].res);

	struct metric *m_err = metric_counter("db_errors_total", "x");
	struct metric *m_q = metric_counter("db_queries_total", "x");
	check(metric_value(m_err) >= 2 && metric_value(m_q) >= 101, "errors",
	      "metrics: db_queries_total %.0f, db_errors_total %.0f", metric_value(m_q), metric_value(m_err));
	w = sync_sql(p, "SELEC 1", 0, NULL, 10000);
	check(w.st == DB_SQL_ERROR && strcmp(w.sqlstate, "42601") == 0, "errors", "syntax error: %s %s",
	      status_name(w.st), w.sqlstate);
	w = sync_sql(p, "SELECT count(*) FROM er", 0, NULL, 10000);
	check(w.st == DB_OK && w.res != NULL && atoi(PQgetvalue(w.res, 0, 0)) == 98, "errors",
	      "98 rows committed, the failed ones rolled back (%s)", w.res ? PQgetvalue(w.res, 0, 0) : w.msg);
	PQclear(w.res);
	const char *vals[1] = { "it's \"quoted\" \xc3\xa9" };
	w = sync_sql(p, "SELECT $1::text || '!'", 1, vals, 10000);
	check(w.st == DB_OK && w.res != NULL && strcmp(PQgetvalue(w.res, 0, 0), "it's \"quoted\" \xc3\xa9!") == 0,
	      "errors", "plain SQL with a parameter after errors works");
	PQclear(w.res);
	db_pool_free(&p);
}

/* ------------------------------------------------------------------ prepared */

/* scenario_prepared - prepared statements, binary formats, NULL, failed prepare */
static void scenario_prepared(void)
{
	static const struct db_stmt stmts[] = {
		{ "plus1", "SELECT $1::int8 + 1", 1 },
		{ "broken", "SELECT * FROM no_such_table_here", 0 },
		{ "isnull", "SELECT $1::text IS NULL", 1 },
	};
	struct db_pool_settings set = { .name = "prep", .size = 2 };
	struct db_pool *p = db_pool_new(base, conninfo, &set, stmts, N_ELEMENTS(stmts));

	struct waiter w = { 0 };
	const char *vals[1] = { "41" };
	db_exec(p, "plus1", 1, vals, NULL, NULL, 0, waiter_cb, &w);
	run_until(&w.done, 10000);
	check(w.st == DB_OK && w.res != NULL && strcmp(PQgetvalue(w.res, 0, 0), "42") == 0, "prepared",
	      "text parameter and result: %s", w.res ? PQgetvalue(w.res, 0, 0) : w.msg);
	PQclear(w.res);

	/* binary in, binary out */
	unsigned char bin[8] = { 0, 0, 0, 0, 0, 0, 0, 41 };	/* int8 41, network order */
	const char *bvals[1] = { (const char *)bin };
	int lens[1] = { 8 }, fmts[1] = { 1 };
	memset(&w, 0, sizeof(w));
	db_exec(p, "plus1", 1, bvals, lens, fmts, 1, waiter_cb, &w);
	run_until(&w.done, 10000);
	bool bin_ok = w.st == DB_OK && w.res != NULL && PQgetlength(w.res, 0, 0) == 8 &&
		      memcmp(PQgetvalue(w.res, 0, 0), "\0\0\0\0\0\0\0\x2a", 8) == 0;
	check(bin_ok, "prepared", "binary parameter and binary result (int8 42)");
	PQclear(w.res);

	memset(&w, 0, sizeof(w));
	const char *nul[1] = { NULL };
	db_exec(p, "isnull", 1, nul, NULL, NULL, 0, waiter_cb, &w);
	run_until(&w.done, 10000);
	check(w.st == DB_OK && w.res != NULL && strcmp(PQgetvalue(w.res, 0, 0), "t") == 0, "prepared",
	      "NULL parameter arrives as SQL NULL");
	PQclear(w.res);

	memset(&w, 0, sizeof(w));
	db_exec(p, "broken", 0, NULL, NULL, NULL, 0, waiter_cb, &w);
	run_until(&w.done, 10000);
	check(w.st == DB_SQL_ERROR && strcmp(w.sqlstate, "26000") == 0, "prepared",
	      "a statement whose prepare failed reports an SQL error: %s %s \"%s\"", status_name(w.st),
	      w.sqlstate, w.msg);

	/* both connections serve the prepared statements */
	struct waiter ws[20];
	memset(ws, 0, sizeof(ws));
	for (int i = 0; i < 20; i++)
		db_exec(p, "plus1", 1, vals, NULL, NULL, 0, waiter_cb, &ws[i]);
	int ok = 0;
	for (int i = 0; i < 20; i++) {
		run_until(&ws[i].done, 10000);
		ok += ws[i].st == DB_OK;
		PQclear(ws[i].res);
	}
	check(ok == 20, "prepared", "20 pipelined calls on 2 connections: %d ok", ok);

	/* 8 MiB of parameters at once: libpq cannot write it in one go (PQflush says 1,
	 * the pool waits for the socket to be writable) */
	enum { BIG = 256 * 1024, NBIG = 32 };
	char *big = xmalloc(BIG + 1);
	memset(big, 'x', BIG);
	big[BIG] = '\0';
	struct waiter wb[NBIG];
	memset(wb, 0, sizeof(wb));
	const char *bv[1] = { big };
	for (int i = 0; i < NBIG; i++)
		db_exec_sql(p, "SELECT length($1::text)", 1, bv, NULL, NULL, 0, waiter_cb, &wb[i]);
	free(big);	/* copied by db_exec_sql */
	ok = 0;
	for (int i = 0; i < NBIG; i++) {
		run_until(&wb[i].done, 20000);
		ok += wb[i].st == DB_OK && wb[i].res != NULL && atoi(PQgetvalue(wb[i].res, 0, 0)) == BIG;
		PQclear(wb[i].res);
	}
	check(ok == NBIG, "prepared", "%d requests with 256 KiB parameters (8 MiB pipelined): %d ok", NBIG, ok);
	db_pool_free(&p);
}

/* ------------------------------------------------------------------ notify */

struct nt_sub {
	int ready, resync, lost, notes, bad_order;
	int next;
	int64_t first_ms;
	char last[64];
};

/* nt_cb - a subscriber's events: count them, check payload order */
static void nt_cb(const struct db_notification *n, void *arg)
{
	struct nt_sub *s = arg;
	switch (n->event) {
	case DB_LISTEN_READY: s->ready++; break;
	case DB_LISTEN_RESYNC: s->resync++; break;
	case DB_LISTEN_LOST: s->lost++; break;
	case DB_LISTEN_NOTIFY:
		if (atoi(n->payload) != s->next)
			s->bad_order++;
		s->next = atoi(n->payload) + 1;
		s->notes++;
		snprintf(s->last, sizeof(s->last), "%s", n->payload);
		break;
	}
}

/* scenario_notify - LISTEN/NOTIFY with two subscribers on a channel */
static void scenario_notify(void)
{
	struct db_pool_settings set = { .name = "nt", .size = 1 };
	struct db_pool *p = db_pool_new(base, conninfo, &set, NULL, 0);
	struct nt_sub a = { 0 }, b = { 0 }, other = { 0 };
	struct db_listener *la = db_listen(p, "Chan_A", nt_cb, &a);
	struct db_listener *lb = db_listen(p, "Chan_A", nt_cb, &b);
	struct db_listener *lo = db_listen(p, "other", nt_cb, &other);
	int64_t end = now_ms() + 10000;
	while ((a.ready == 0 || b.ready == 0 || other.ready == 0) && now_ms() < end)
		event_base_loop(base, EVLOOP_ONCE);
	check(a.ready == 1 && b.ready == 1 && other.ready == 1, "notify", "LISTEN confirmed for 3 subscribers");

	int64_t t0 = now_ms();
	static struct waiter sent[50];
	for (int i = 0; i < 50; i++) {
		char v[16];
		snprintf(v, sizeof(v), "%d", i);
		const char *vals[1] = { v };
		db_exec_sql(p, "SELECT pg_notify('Chan_A', $1)", 1, vals, NULL, NULL, 0, waiter_cb, &sent[i]);
	}
	end = now_ms() + 10000;
	while ((a.notes < 50 || b.notes < 50) && now_ms() < end)
		event_base_loop(base, EVLOOP_ONCE);
	int64_t ms = now_ms() - t0;
	check(a.notes == 50 && b.notes == 50 && a.bad_order == 0, "notify",
	      "50 notifications to both subscribers in order (%d, %d) in %lld ms", a.notes, b.notes,
	      (long long)ms);
	check(other.notes == 0, "notify", "another channel's subscriber got nothing");
	check(strcmp(a.last, "49") == 0, "notify", "payload intact: %s", a.last);

	db_unlisten(&lb);
	run_for(100);
	const char *vals[1] = { "50" };
	struct waiter w = { 0 };
	db_exec_sql(p, "SELECT pg_notify('Chan_A', $1)", 1, vals, NULL, NULL, 0, waiter_cb, &w);
	end = now_ms() + 5000;
	while (a.notes < 51 && now_ms() < end)
		event_base_loop(base, EVLOOP_ONCE);
	run_for(100);
	check(a.notes == 51 && b.notes == 50, "notify", "after unlisten only the remaining subscriber hears (%d, %d)",
	      a.notes, b.notes);
	check(a.lost == 0 && a.resync == 0, "notify", "no loss reported on a healthy connection");
	PQclear(w.res);
	for (int i = 0; i < 50; i++)
		PQclear(sent[i].res);
	db_unlisten(&la);
	db_unlisten(&lo);
	run_for(50);
	db_pool_free(&p);
}

/* ------------------------------------------------------------------ cancel */

struct cc_ctx {
	int calls[200];
	struct db_request *req[200];
	bool cancel_sent;
	int total;
	int sent_cancelled;
};
struct cc_item {
	struct cc_ctx *ctx;
	int i;
};

/* cc_cb - count callbacks; the first one cancels the sent half */
static void cc_cb(const struct db_result *r, void *arg)
{
	struct cc_item *it = arg;
	struct cc_ctx *ctx = it->ctx;
	ctx->calls[it->i]++;
	ctx->total++;
	ctx->req[it->i] = NULL;
	if (!ctx->cancel_sent) {
		ctx->cancel_sent = true;
		/* by now the whole batch is in the pipeline: cancel sent requests */
		for (int i = 100; i < 200; i++)
			if (ctx->req[i] != NULL) {
				db_request_cancel(&ctx->req[i]);
				ctx->sent_cancelled++;
			}
	}
}

static int free_calls;
static void count_cb(const struct db_result *r, void *arg)
{
	free_calls++;
}

/* scenario_cancel - cancelled requests stay silent; free drops the rest */
static void scenario_cancel(void)
{
	struct db_pool_settings set = { .name = "cc", .size = 1, .max_pipeline = 512 };
	struct db_pool *p = db_pool_new(base, conninfo, &set, NULL, 0);
	check(wait_ready(p, 1, 10000), "cancel", "connected");
	struct cc_ctx ctx;
	struct cc_item items[200];
	memset(&ctx, 0, sizeof(ctx));
	for (int i = 0; i < 200; i++) {
		char v[16];
		snprintf(v, sizeof(v), "%d", i);
		const char *vals[1] = { v };
		items[i].ctx = &ctx;
		items[i].i = i;
		ctx.req[i] = db_exec_sql(p, "SELECT $1::int", 1, vals, NULL, NULL, 0, cc_cb, &items[i]);
	}
	for (int i = 50; i < 60; i++)
		db_request_cancel(&ctx.req[i]);	/* still queued */
	run_for(1000);
	int wrong = 0;
	for (int i = 0; i < 200; i++) {
		bool cancelled = (i >= 50 && i < 60) || i >= 100;
		if (ctx.calls[i] != (cancelled ? 0 : 1))
			wrong++;
	}
	check(ctx.sent_cancelled == 100 && wrong == 0 && ctx.total == 90, "cancel",
	      "10 queued + 100 sent requests cancelled: no callback for them, one for each other "
	      "(%d callbacks, %d wrong)", ctx.total, wrong);

	/* a failure waiting for its callback can be cancelled too */
	struct db_pool_settings tiny = { .name = "tiny", .size = 1, .max_queue = 1 };
	struct db_pool *t = db_pool_new(base, conninfo, &tiny, NULL, 0);
	free_calls = 0;
	struct db_request *r1 = db_exec_sql(t, "SELECT 1", 0, NULL, NULL, NULL, 0, count_cb, NULL);
	struct db_request *r2 = db_exec_sql(t, "SELECT 2", 0, NULL, NULL, NULL, 0, count_cb, NULL);
	db_request_cancel(&r2);	/* the queue was full: it had failed, callback pending */
	run_for(300);
	(void)r1;
	check(free_calls == 1, "cancel", "a failed request cancelled before its callback: %d callback(s)",
	      free_calls);
	db_pool_free(&t);

	/* db_pool_free with work in flight and queued: no callbacks, nothing leaks */
	free_calls = 0;
	for (int i = 0; i < 20; i++)
		db_exec_sql(p, "SELECT pg_sleep(0.3)", 0, NULL, NULL, NULL, 0, count_cb, NULL);
	run_for(100);
	struct db_pool_stats st;
	db_pool_stats(p, &st);
	check(st.in_flight > 0, "cancel", "requests in flight before free: %d", st.in_flight);
	db_pool_free(&p);
	run_for(500);
	check(free_calls == 0 && p == NULL, "cancel", "db_pool_free dropped %d pending requests without callbacks",
	      st.in_flight + st.queued);
}

/* ------------------------------------------------------------------ timeouts */

/* scenario_timeouts - deadlines, stuck connections, no server, full queue */
static void scenario_timeouts(void)
{
	struct db_pool_settings set = { .name = "to", .size = 1, .timeout_ms = 300 };
	struct db_pool *p = db_pool_new(base, conninfo, &set, NULL, 0);
	check(wait_ready(p, 1, 10000), "timeouts", "connected");
	struct waiter w = sync_sql(p, "SELECT pg_sleep(3)", 0, NULL, 5000);
	check(w.st == DB_UNAVAILABLE && w.may && w.seconds >= 0.25 && w.seconds < 1.5, "timeouts",
	      "a slow statement times out as unavailable, may have executed (%.2f s: %s)", w.seconds, w.msg);
	/* the pool closes the hung connection and reconnects; work goes on */
	struct waiter w2 = { 0 };
	struct db_request *r = db_exec_sql(p, "SELECT 7", 0, NULL, NULL, NULL, 0, waiter_cb, &w2);
	db_request_set_timeout(r, 10000);
	run_until(&w2.done, 12000);
	check(w2.st == DB_OK && w2.res != NULL && strcmp(PQgetvalue(w2.res, 0, 0), "7") == 0, "timeouts",
	      "the next request is not queued behind the stuck one: the connection is replaced "
	      "and it succeeds (%s %s, %.2f s)", status_name(w2.st), w2.msg, w2.seconds);
	PQclear(w2.res);
	db_pool_free(&p);

	/* quick requests are not queued behind a slow statement when a free connection exists */
	struct db_pool_settings two = { .name = "two", .size = 2, .timeout_ms = 5000 };
	p = db_pool_new(base, conninfo, &two, NULL, 0);
	check(wait_ready(p, 2, 10000), "timeouts", "two connections");
	struct waiter slow = { 0 }, quick[5];
	memset(quick, 0, sizeof(quick));
	db_exec_sql(p, "SELECT pg_sleep(1.5)", 0, NULL, NULL, NULL, 0, waiter_cb, &slow);
	run_for(300);
	for (int i = 0; i < 5; i++) {
		db_exec_sql(p, "SELECT 1", 0, NULL, NULL, NULL, 0, waiter_cb, &quick[i]);
		run_for(20);
	}
	double worst = 0;
	for (int i = 0; i < 5; i++) {
		run_until(&quick[i].done, 5000);
		worst = MAIL_MAX(worst, quick[i].seconds);
		PQclear(quick[i].res);
	}
	check(!slow.done && worst < 0.5, "timeouts",
	      "quick requests went to the free connection, not behind the slow one (worst %.3f s)", worst);
	run_until(&slow.done, 5000);
	check(slow.st == DB_OK, "timeouts", "the slow statement completes (%s)", status_name(slow.st));
	PQclear(slow.res);
	db_pool_free(&p);

	/* nothing to connect to: waiting requests time out, never succeed */
	struct db_pool_settings none = { .name = "none", .size = 2, .timeout_ms = 300, .max_queue = 10,
					 .connect_timeout_ms = 200 };
	p = db_pool_new(base, "host=/nonexistent/socket/dir port=1 dbname=x", &none, NULL, 0);
	struct waiter ws[15];
	memset(ws, 0, sizeof(ws));
	int64_t t0 = now_ms();
	for (int i = 0; i < 15; i++)
		db_exec_sql(p, "SELECT 1", 0, NULL, NULL, NULL, 0, waiter_cb, &ws[i]);
	run_for(100);
	int fast = 0;
	for (int i = 0; i < 15; i++)
		fast += ws[i].done && ws[i].st == DB_UNAVAILABLE && !ws[i].may;
	check(fast == 5, "timeouts", "queue bound 10: 5 of 15 failed at once (%d)", fast);
	bool all = false;
	while (!all && now_ms() - t0 < 3000) {
		event_base_loop(base, EVLOOP_ONCE);
		all = true;
		for (int i = 0; i < 15; i++)
			all = all && ws[i].done;
	}
	int64_t ms = now_ms() - t0;
	int unav = 0, once = 0;
	for (int i = 0; i < 15; i++) {
		unav += ws[i].st == DB_UNAVAILABLE && !ws[i].may;
		once += ws[i].calls == 1;
	}
	check(all && unav == 15 && once == 15 && ms < 1500, "timeouts",
	      "no server: every request unavailable, not executed, one callback each, in %lld ms "
	      "(%d unavailable)", (long long)ms, unav);
	struct db_pool_stats st;
	db_pool_stats(p, &st);
	check(st.connections_ready == 0 && st.queued == 0, "timeouts", "stats: %d ready, %d queued",
	      st.connections_ready, st.queued);
	db_pool_free(&p);
}

/* ------------------------------------------------------------------ outage */

enum { OUT_MAX = 20000 };
struct out_ctx {
	int n;
	enum db_status st[OUT_MAX];
	bool may[OUT_MAX];
	bool done[OUT_MAX];
	double secs[OUT_MAX];
	int64_t at[OUT_MAX];
	int ok, unav_not, unav_may, sqlerr;
	int pending;
};
static struct out_ctx out;

/* out_cb - outcome of one insert of the outage run */
static void out_cb(const struct db_result *r, void *arg)
{
	int i = (int)(intptr_t)arg;
	out.done[i] = true;
	out.st[i] = r->status;
	out.may[i] = r->may_have_executed;
	out.secs[i] = r->seconds;
	out.at[i] = now_ms();
	out.pending--;
	if (r->status == DB_OK)
		out.ok++;
	else if (r->status == DB_SQL_ERROR) {
		out.sqlerr++;
		printf("STAT sql_error=%s msg=\"%s\"\n", r->sqlstate, r->message);
	} else if (r->may_have_executed)
		out.unav_may++;
	else
		out.unav_not++;
}

/* scenario_outage - steady inserts through a restart or failover, then audit */
static void scenario_outage(int seconds)
{
	static const struct db_stmt stmts[] = {
		{ "ack", "INSERT INTO acks (id) VALUES ($1)", 1 },
	};
	struct db_pool_settings set = { .name = "out", .size = 2, .timeout_ms = 2000 };
	struct db_pool *p = db_pool_new(base, conninfo, &set, stmts, 1);
	struct nt_sub sub = { 0 };
	struct db_listener *l = db_listen(p, "acks_chan", nt_cb, &sub);
	check(wait_ready(p, 2, 10000), "outage", "connected");
	bool ready_said = false;
	int64_t t_ready = 0, next = now_ms();
	int64_t end = INT64_MAX;
	while (now_ms() < end && out.n < OUT_MAX) {
		if (now_ms() >= next) {
			char v[16];
			snprintf(v, sizeof(v), "%d", out.n + 1);
			const char *vals[1] = { v };
			out.pending++;
			db_exec(p, "ack", 1, vals, NULL, NULL, 0, out_cb, (void *)(intptr_t)out.n);
			out.n++;
			next += 10;
		}
		if (!ready_said && out.ok >= 50 && sub.ready == 1) {
			printf("READY outage\n");
			fflush(stdout);
			ready_said = true;
			t_ready = now_ms();
			end = t_ready + (int64_t)seconds * 1000;
		}
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		usleep(1000);
	}
	/* let the last ones finish */
	int64_t drain = now_ms() + 15000;
	while (out.pending > 0 && now_ms() < drain)
		event_base_loop(base, EVLOOP_ONCE);
	check(out.pending == 0, "outage", "every request answered (%d pending)", out.pending);

	/* which ids does the database hold now? (retry until it answers) */
	struct waiter w = { 0 };
	int64_t until = now_ms() + 20000;
	do {
		PQclear(w.res);
		w = sync_sql(p, "SELECT id FROM acks ORDER BY id", 0, NULL, 5000);
		if (w.st != DB_OK)
			run_for(200);
	} while (w.st != DB_OK && now_ms() < until);
	check(w.st == DB_OK, "outage", "database reachable again (%s)", w.msg);
	bool *present = xcalloc((size_t)out.n + 2, 1);
	for (int i = 0; w.res != NULL && i < PQntuples(w.res); i++) {
		int id = atoi(PQgetvalue(w.res, i, 0));
		if (id >= 1 && id <= out.n)
			present[id] = true;
	}
	PQclear(w.res);
	int lost = 0, phantom = 0, maybe_in = 0, ok_after = 0;
	double max_wait = 0;
	for (int i = 0; i < out.n; i++) {
		if (out.st[i] == DB_OK && !present[i + 1])
			lost++;	/* acknowledged, not there: a false success */
		if (out.st[i] == DB_UNAVAILABLE && !out.may[i] && present[i + 1])
			phantom++;	/* "not executed" yet committed */
		if (out.st[i] == DB_UNAVAILABLE && out.may[i] && present[i + 1])
			maybe_in++;
		if (out.st[i] == DB_OK && out.at[i] > t_ready + 500 && i > 0 && out.st[i - 1] != DB_OK)
			ok_after++;
		if (out.st[i] == DB_OK && out.secs[i] > max_wait)
			max_wait = out.secs[i];
	}
	int ok_late = 0;
	for (int i = 0; i < out.n; i++)
		if (out.st[i] == DB_OK && out.at[i] > end - 1000)
			ok_late++;
	free(present);
	printf("STAT requests=%d ok=%d unavailable_not_executed=%d unavailable_maybe=%d sql_errors=%d "
	       "maybe_committed=%d max_ok_wait_s=%.2f listen_ready=%d listen_lost=%d listen_resync=%d\n",
	       out.n, out.ok, out.unav_not, out.unav_may, out.sqlerr, maybe_in, max_wait, sub.ready,
	       sub.lost, sub.resync);
	check(lost == 0, "outage", "no acknowledged insert missing (%d missing of %d ok)", lost, out.ok);
	check(phantom == 0, "outage", "no 'not executed' insert committed (%d)", phantom);
	check(out.sqlerr == 0, "outage", "no SQL errors (%d)", out.sqlerr);
	check(out.unav_not + out.unav_may > 0 || max_wait > 0.3, "outage",
	      "the outage was seen: %d unavailable, longest successful wait %.2f s",
	      out.unav_not + out.unav_may, max_wait);
	check(ok_late > 0, "outage", "inserts succeed again after the outage (%d in the last second)", ok_late);
	check(sub.lost >= 1 && sub.resync >= 1, "outage", "listener told of the loss (%d) and to resync (%d)",
	      sub.lost, sub.resync);
	(void)ok_after;
	db_unlisten(&l);
	db_pool_free(&p);
}

/* ------------------------------------------------------------------ deliver */

enum { DV_MAX = 2000 };
struct dv_res {
	bool done;
	int rows;
	long long acct[2], uid[2], modseq[2];
	char status[2][16];
	enum db_status st;
	char msg[200];
};
static struct dv_res dv[DV_MAX];
static int dv_done;

/* dv_cb - rows of one mail_deliver call */
static void dv_cb(const struct db_result *r, void *arg)
{
	struct dv_res *d = arg;
	d->done = true;
	d->st = r->status;
	snprintf(d->msg, sizeof(d->msg), "%s", r->message);
	dv_done++;
	if (r->status != DB_OK)
		return;
	d->rows = PQntuples(r->res);
	for (int i = 0; i < d->rows && i < 2; i++) {
		d->acct[i] = atoll(PQgetvalue(r->res, i, 0));
		snprintf(d->status[i], sizeof(d->status[i]), "%s", PQgetvalue(r->res, i, 1));
		d->uid[i] = atoll(PQgetvalue(r->res, i, 4));
		d->modseq[i] = atoll(PQgetvalue(r->res, i, 5));
	}
}

/* dv_submit - one mail_deliver of a distinct blob */
static void dv_submit(struct db_pool *p, const char *accounts, int i, const char *token, struct dv_res *d)
{
	char blob[65], meta[256], text[64];
	for (int k = 0; k < 64; k++)
		blob[k] = "0123456789abcdef"[(i * 7 + k * 13 + (i >> 4)) & 15];
	blob[64] = '\0';
	snprintf(blob, 9, "%08x", (unsigned)i);
	blob[8] = 'a';
	snprintf(meta, sizeof(meta), "{\"envelope\":\"KE5JTCk=\",\"subject\":\"message %d\","
		 "\"from\":\"sender@example.test\",\"message_id\":\"<%d@x>\"}", i, i);
	snprintf(text, sizeof(text), "hello body number %d", i);
	const char *vals[12] = { accounts, "INBOX", blob, "1000", "2026-01-01 00:00:00+00", "0", NULL, meta,
				 "\\x5375626a6563743a2068690d0a", text, "{n1,n2}", token };
	db_exec(p, "deliver", 12, vals, NULL, NULL, 0, dv_cb, d);
}

/* dv_cmp - sort (uid, modseq) pairs by uid */
static int dv_cmp(const void *a, const void *b)
{
	const long long *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* scenario_deliver - concurrent deliveries: UIDs, MODSEQs, token retry */
static void scenario_deliver(long long a1, long long a2, int n)
{
	static const struct db_stmt stmts[] = {
		{ "deliver", "SELECT * FROM mail_deliver($1::bigint[], $2, $3, $4, $5, $6, $7, $8, $9, "
			     "$10, $11, $12)", 12 },
	};
	struct db_pool_settings set = { .name = "dv", .size = 8, .timeout_ms = 30000 };
	struct db_pool *p = db_pool_new(base, conninfo, &set, stmts, 1);
	check(wait_ready(p, 8, 10000), "deliver", "8 connections");
	char accounts[64], tok[32];
	snprintf(accounts, sizeof(accounts), "{%lld,%lld}", a1, a2);
	if (n > DV_MAX - 10)
		n = DV_MAX - 10;
	int64_t t0 = now_ms();
	for (int i = 0; i < n; i++) {
		snprintf(tok, sizeof(tok), "tok-%d", i);
		dv_submit(p, accounts, i, tok, &dv[i]);
	}
	bool all = false;
	while (!all && now_ms() - t0 < 60000) {
		event_base_loop(base, EVLOOP_ONCE);
		all = dv_done >= n;
	}
	int64_t ms = now_ms() - t0;
	int bad = 0;
	long long (*pairs)[2][2] = xcalloc((size_t)n, sizeof(*pairs));
	for (int i = 0; i < n; i++) {
		if (dv[i].st != DB_OK || dv[i].rows != 2 || strcmp(dv[i].status[0], "ok") != 0 ||
		    strcmp(dv[i].status[1], "ok") != 0) {
			if (bad++ < 3)
				printf("# deliver %d: %s rows=%d %s\n", i, status_name(dv[i].st), dv[i].rows, dv[i].msg);
			continue;
		}
		for (int k = 0; k < 2; k++) {
			int a = dv[i].acct[k] == a1 ? 0 : 1;
			pairs[i][a][0] = dv[i].uid[k];
			pairs[i][a][1] = dv[i].modseq[k];
		}
	}
	printf("STAT deliveries=%d accounts=2 ms=%lld per_s=%.0f\n", n, (long long)ms, n * 1000.0 / (double)(ms ? ms : 1));
	check(bad == 0, "deliver", "%d concurrent deliveries to 2 accounts all ok (%d failed)", n, bad);
	for (int a = 0; a < 2; a++) {
		long long (*v)[2] = xcalloc((size_t)n, sizeof(*v));
		for (int i = 0; i < n; i++) {
			v[i][0] = pairs[i][a][0];
			v[i][1] = pairs[i][a][1];
		}
		qsort(v, (size_t)n, sizeof(*v), dv_cmp);
		int gaps = 0, nonincreasing = 0;
		for (int i = 0; i < n; i++) {
			if (v[i][0] != i + 1)
				gaps++;
			if (i > 0 && v[i][1] <= v[i - 1][1])
				nonincreasing++;
		}
		check(gaps == 0 && nonincreasing == 0, "deliver",
		      "account %lld: UIDs exactly 1..%d (%d off), MODSEQ strictly increasing with UID (%d not)",
		      a == 0 ? a1 : a2, n, gaps, nonincreasing);
		free(v);
	}
	free(pairs);

	/* the same token, 8 at once (a retried Deliver racing its first attempt) */
	struct dv_res same[8];
	memset(same, 0, sizeof(same));
	dv_done = 0;
	snprintf(accounts, sizeof(accounts), "{%lld}", a1);
	for (int i = 0; i < 8; i++)
		dv_submit(p, accounts, 100000, "same-token", &same[i]);
	t0 = now_ms();
	while (dv_done < 8 && now_ms() - t0 < 20000)
		event_base_loop(base, EVLOOP_ONCE);
	int same_ok = 0;
	for (int i = 0; i < 8; i++)
		same_ok += same[i].st == DB_OK && same[i].rows == 1 && strcmp(same[i].status[0], "ok") == 0 &&
			   same[i].uid[0] == same[0].uid[0] && same[i].modseq[0] == same[0].modseq[0];
	check(same_ok == 8 && same[0].uid[0] == n + 1, "deliver",
	      "8 concurrent attempts with one token: one delivery, uid %lld reported to all (%d agree)",
	      same[0].uid[0], same_ok);
	db_pool_free(&p);
}

/* ------------------------------------------------------------------ blackhole */

/* scenario_blackhole - a first host that never answers is skipped */
static void scenario_blackhole(void)
{
	const char *err = NULL;
	check(db_conninfo_check(conninfo, &err) == 0, "blackhole", "conninfo parses");
	int bad = db_conninfo_check("host=/x bogus_option=1", &err);
	check(bad == -1 && strstr(err, "bogus_option") != NULL, "blackhole", "a bad conninfo is refused: %s",
	      err != NULL ? err : "");
	struct db_pool_settings set = { .name = "bh", .size = 1, .connect_timeout_ms = 700, .timeout_ms = 10000 };
	struct db_pool *p = db_pool_new(base, conninfo, &set, NULL, 0);
	struct waiter w = sync_sql(p, "SELECT inet_server_port() IS NULL, current_setting('port')", 0, NULL, 10000);
	check(w.st == DB_OK && w.seconds >= 0.6 && w.seconds < 5.0, "blackhole",
	      "answered by the second host after the first attempt timed out (%s, %.2f s, port %s)",
	      status_name(w.st), w.seconds, w.res != NULL ? PQgetvalue(w.res, 0, 1) : w.msg);
	printf("STAT port=%s\n", w.res != NULL ? PQgetvalue(w.res, 0, 1) : "");
	PQclear(w.res);
	struct db_pool_stats st;
	db_pool_stats(p, &st);
	double gauge = metric_value(metric_gauge("db_connections", "database query connections ready"));
	check(st.connections_ready == 1 && gauge == 1, "blackhole", "one connection ready (gauge %.0f)", gauge);
	db_pool_free(&p);
	gauge = metric_value(metric_gauge("db_connections", "database query connections ready"));
	check(gauge == 0, "blackhole", "db_connections gauge back to 0 after free (%.0f)", gauge);
}

/* ------------------------------------------------------------------ migrate */

/* scenario_migrate - migrate_run and the resulting version */
static void scenario_migrate(void)
{
	const char *err = NULL;
	int before = -1, after = -1;
	migrate_db_version(conninfo, &before, &err);
	int64_t t0 = now_ms();
	int ret = migrate_run(conninfo, &err);
	check(ret == 0, "migrate", "migrate_run: %s (%lld ms)", ret == 0 ? "ok" : err, (long long)(now_ms() - t0));
	int vr = migrate_db_version(conninfo, &after, &err);
	check(vr == 0 && after == migrate_latest(), "migrate", "database at version %d (binary %d, was %d)",
	      after, migrate_latest(), before);
	printf("STAT version_before=%d version_after=%d\n", before, after);
}

/* scenario_migrate_newer - the runner must refuse a newer schema */
static void scenario_migrate_newer(void)
{
	const char *err = NULL;
	int ret = migrate_run(conninfo, &err);
	char latest[16];
	snprintf(latest, sizeof(latest), "%d", migrate_latest());
	check(ret == -1 && err != NULL && strstr(err, "9999") != NULL && strstr(err, latest) != NULL &&
	      strstr(err, "newer") != NULL, "migrate_newer", "refused: %s", err != NULL ? err : "(no error)");
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: db_check CONNINFO SCENARIO [ARGS...]\n");
		return 2;
	}
	log_init("db_check", LOG_LEVEL_INFO);
	conninfo = argv[1];
	const char *sc = argv[2];
	base = event_base_new();
	if (strcmp(sc, "pipeline") == 0)
		scenario_pipeline();
	else if (strcmp(sc, "errors") == 0)
		scenario_errors();
	else if (strcmp(sc, "prepared") == 0)
		scenario_prepared();
	else if (strcmp(sc, "notify") == 0)
		scenario_notify();
	else if (strcmp(sc, "cancel") == 0)
		scenario_cancel();
	else if (strcmp(sc, "timeouts") == 0)
		scenario_timeouts();
	else if (strcmp(sc, "outage") == 0 && argc > 3)
		scenario_outage(atoi(argv[3]));
	else if (strcmp(sc, "deliver") == 0 && argc > 5)
		scenario_deliver(atoll(argv[3]), atoll(argv[4]), atoi(argv[5]));
	else if (strcmp(sc, "blackhole") == 0)
		scenario_blackhole();
	else if (strcmp(sc, "migrate") == 0)
		scenario_migrate();
	else if (strcmp(sc, "migrate_newer") == 0)
		scenario_migrate_newer();
	else {
		fprintf(stderr, "unknown scenario or missing arguments: %s\n", sc);
		return 2;
	}
	event_base_free(base);
	printf("%d passed, %d failed\n", checks - failures, failures);
	return failures == 0 && checks > 0 ? 0 : 1;
}
