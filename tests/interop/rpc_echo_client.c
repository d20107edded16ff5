/* rpc_echo_client.c - drives mail.test.v1.Echo through our gRPC client for
 * the interop tests (against a python grpcio server or rpc_echo_server).
 *   rpc_echo_client --target=HOST:PORT [--tls-ca=F] [--authority=A] SCENARIO...
 * Scenarios: unary client_stream server_stream server_stream_big
 * client_stream_big deadline error big too_big reply_too_big concurrent
 * cancel unimplemented unavailable reconnect keepalive no_status drain.
 * Prints one "ok ..." or "FAIL ..." line per check (and "READY <what>" lines
 * where the test must act: kill, restart, stop a server); exits 0 only when
 * every check passed. */
#include "lib/common.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "echo.pb-c.h"
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <time.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#define P_UNARY "/mail.test.v1.Echo/Unary"
#define P_CSTREAM "/mail.test.v1.Echo/ClientStream"
#define P_SSTREAM "/mail.test.v1.Echo/ServerStream"

static struct event_base *base;
static struct rpc_client *client;
static struct rpc_client_opts copts;
static const char *target;
static int checks, failures;

/* result of one call, filled by the callbacks */
struct res {
	bool done;
	enum rpc_status st;
	char msg[512];
	Mail__Test__V1__EchoReply **replies;
	size_t n;
	int bad_replies;
	int *pending;
	int callbacks_after_cancel;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* check - one result line */
static bool ATTR_PRINTF(3, 4) check(bool ok, const char *scenario, const char *fmt, ...)
{
	char buf[600];
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

static void res_on_message(struct rpc_ccall *call, const uint8_t *msg, size_t len, void *arg)
{
	struct res *r = arg;
	Mail__Test__V1__EchoReply *rep = mail__test__v1__echo_reply__unpack(NULL, len, msg);
	if (rep == NULL) {
		r->bad_replies++;
		return;
	}
	r->replies = xrealloc(r->replies, (r->n + 1) * sizeof(*r->replies));
	r->replies[r->n++] = rep;
}

static void res_on_done(struct rpc_ccall *call, enum rpc_status st, const char *message, void *arg)
{
	struct res *r = arg;
	if (r->done)
		r->callbacks_after_cancel++;
	r->done = true;
	r->st = st;
	snprintf(r->msg, sizeof(r->msg), "%s", message);
	if (r->pending != NULL)
		(*r->pending)--;
}

static const struct rpc_ccall_cbs res_cbs = { res_on_message, res_on_done, NULL };

static void res_clear(struct res *r)
{
	for (size_t i = 0; i < r->n; i++)
		mail__test__v1__echo_reply__free_unpacked(r->replies[i], NULL);
	free(r->replies);
	memset(r, 0, sizeof(*r));
}

/* run_until - run the loop until *flag turns true (or ms pass); false on timeout */
static bool run_until(const bool *flag, int64_t ms)
{
	int64_t end = now_ms() + ms;
	while (!*flag && now_ms() < end)
		event_base_loop(base, EVLOOP_ONCE);
	return *flag;
}

/* run_for - run the loop for ms */
static void run_for(int64_t ms)
{
	bool never = false;
	run_until(&never, ms);
}

/* run_pending - run until *pending drops to 0 */
static bool run_pending(int *pending, int64_t ms)
{
	int64_t end = now_ms() + ms;
	while (*pending > 0 && now_ms() < end)
		event_base_loop(base, EVLOOP_ONCE);
	return *pending == 0;
}

/* start - a call with one EchoRequest (then close_send) */
static struct rpc_ccall *start(struct rpc_client *c, const char *path, int64_t timeout_ms,
			       const void *payload, size_t len, uint32_t count, uint32_t delay_ms,
			       uint32_t fail_code, const char *fail_message, const char *x_test,
			       struct res *r)
{
	Mail__Test__V1__EchoRequest req = MAIL__TEST__V1__ECHO_REQUEST__INIT;
	req.payload.data = (uint8_t *)payload;
	req.payload.len = len;
	req.count = count;
	req.delay_ms = delay_ms;
	req.fail_code = fail_code;
	req.fail_message = (char *)(fail_message != NULL ? fail_message : "");
	struct rpc_ccall *call = rpc_client_call(c, path, timeout_ms, &res_cbs, r);
	if (x_test != NULL)
		rpc_ccall_add_metadata(call, "x-test", x_test);
	rpc_ccall_add_metadata(call, "x-trace-bin", "\x01\x02\x03 binary");
	rpc_ccall_send_pb(call, &req.base);
	rpc_ccall_close_send(call);
	return call;
}

/* ---------------------------------------------------------- scenarios */

static void sc_unary(void)
{
	struct res r = { 0 };
	const char *md = "value with spaces & symbols !#$%~";
	start(client, P_UNARY, 5000, "hello interop", 13, 0, 0, 0, NULL, md, &r);
	run_until(&r.done, 6000);
	check(r.done && r.st == RPC_OK, "unary", "status=%d %s", r.st, r.msg);
	check(r.n == 1 && r.replies[0]->payload.len == 13 &&
	      memcmp(r.replies[0]->payload.data, "hello interop", 13) == 0, "unary", "payload echoed (%zu replies)", r.n);
	check(r.n == 1 && strcmp(r.replies[0]->metadata, md) == 0, "unary", "metadata x-test round trip: '%s'",
	      r.n == 1 ? r.replies[0]->metadata : "");
	res_clear(&r);
	/* an empty request message is a valid message */
	start(client, P_UNARY, 5000, "", 0, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK && r.n == 1 && r.replies[0]->payload.len == 0, "unary", "empty payload status=%d", r.st);
	res_clear(&r);
}

static void sc_client_stream(void)
{
	struct res r = { 0 };
	const char *parts[] = { "a", "bb", "", "ccc" };
	struct rpc_ccall *call = rpc_client_call(client, P_CSTREAM, 5000, &res_cbs, &r);
	for (size_t i = 0; i < N_ELEMENTS(parts); i++) {
		Mail__Test__V1__EchoRequest req = MAIL__TEST__V1__ECHO_REQUEST__INIT;
		req.payload.data = (uint8_t *)parts[i];
		req.payload.len = strlen(parts[i]);
		rpc_ccall_send_pb(call, &req.base);
		run_for(20); /* let messages travel in separate frames */
	}
	rpc_ccall_close_send(call);
	check(rpc_ccall_send(call, "x", 1) == -1, "client_stream", "send after close_send refused");
	run_until(&r.done, 6000);
	check(r.st == RPC_OK, "client_stream", "status=%d %s", r.st, r.msg);
	check(r.n == 1 && r.replies[0]->count == 4 && r.replies[0]->payload.len == 6 &&
	      memcmp(r.replies[0]->payload.data, "abbccc", 6) == 0, "client_stream",
	      "concatenated 4 messages (count=%u)", r.n ? r.replies[0]->count : 0);
	res_clear(&r);
}

static void sc_server_stream(void)
{
	struct res r = { 0 };
	start(client, P_SSTREAM, 5000, "s", 1, 5, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	bool order = r.n == 5;
	for (size_t i = 0; order && i < r.n; i++)
		order = r.replies[i]->count == i && r.replies[i]->payload.len == 1;
	check(r.st == RPC_OK && order, "server_stream", "status=%d replies=%zu in order", r.st, r.n);
	res_clear(&r);
	start(client, P_SSTREAM, 5000, "s", 1, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK && r.n == 0, "server_stream", "zero replies status=%d n=%zu", r.st, r.n);
	res_clear(&r);
}

static void sc_server_stream_big(void)
{
	struct res r = { 0 };
	size_t len = 64 * 1024;
	uint8_t *p = xmalloc(len);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 13);
	start(client, P_SSTREAM, 20000, p, len, 100, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 21000);
	bool same = r.n == 100;
	for (size_t i = 0; same && i < r.n; i++)
		same = r.replies[i]->payload.len == len && memcmp(r.replies[i]->payload.data, p, len) == 0 &&
		       r.replies[i]->count == i;
	check(r.st == RPC_OK && same, "server_stream_big", "status=%d %zu x 64 KiB intact", r.st, r.n);
	res_clear(&r);
	free(p);
}

/* client_stream_big: request side back-pressure through on_writable */
struct cs_big {
	struct rpc_ccall *call;
	int sent, total, writable_calls;
	uint8_t *chunk;
	size_t len;
};

static void cs_big_pump(struct cs_big *b)
{
	while (b->sent < b->total && rpc_ccall_queued(b->call) < RPC_CALL_HIGH_WATER) {
		Mail__Test__V1__EchoRequest req = MAIL__TEST__V1__ECHO_REQUEST__INIT;
		req.payload.data = b->chunk;
		req.payload.len = b->len;
		rpc_ccall_send_pb(b->call, &req.base);
		b->sent++;
	}
	if (b->sent == b->total)
		rpc_ccall_close_send(b->call);
}

static struct res cs_big_res;
static struct cs_big cs_big_state;

static void cs_big_writable(struct rpc_ccall *call, void *arg)
{
	cs_big_state.writable_calls++;
	cs_big_pump(&cs_big_state);
}

static void sc_client_stream_big(void)
{
	static const struct rpc_ccall_cbs cbs = { res_on_message, res_on_done, cs_big_writable };
	struct cs_big *b = &cs_big_state;
	struct res *r = &cs_big_res;
	memset(b, 0, sizeof(*b));
	b->len = 64 * 1024;
	b->total = 48;
	b->chunk = xmalloc(b->len);
	for (size_t i = 0; i < b->len; i++)
		b->chunk[i] = (uint8_t)(i * 7 + 1);
	b->call = rpc_client_call(client, P_CSTREAM, 20000, &cbs, r);
	cs_big_pump(b);
	run_until(&r->done, 21000);
	bool same = r->n == 1 && r->replies[0]->count == (uint32_t)b->total &&
		    r->replies[0]->payload.len == b->len * (size_t)b->total;
	for (int i = 0; same && i < b->total; i++)
		same = memcmp(r->replies[0]->payload.data + (size_t)i * b->len, b->chunk, b->len) == 0;
	check(r->st == RPC_OK && same, "client_stream_big", "status=%d 48 x 64 KiB intact %s", r->st, r->msg);
	check(b->writable_calls > 0, "client_stream_big", "on_writable resumed the sender %d times",
	      b->writable_calls);
	res_clear(r);
	free(b->chunk);
}

static void sc_deadline(void)
{
	struct res r = { 0 };
	int64_t t0 = now_ms();
	start(client, P_UNARY, 300, "late", 4, 0, 3000, 0, NULL, NULL, &r);
	run_until(&r.done, 5000);
	int64_t el = now_ms() - t0;
	check(r.st == RPC_DEADLINE_EXCEEDED, "deadline", "status=%d (%s) %s", r.st, rpc_status_name(r.st), r.msg);
	check(el >= 250 && el < 1500, "deadline", "reported after %lld ms", (long long)el);
	res_clear(&r);
	/* the connection is still fine */
	start(client, P_UNARY, 5000, "after", 5, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK, "deadline", "next call status=%d", r.st);
	res_clear(&r);
}

static void sc_error(void)
{
	struct res r = { 0 };
	const char *m = "bad thing: 100% d\xc3\xa9j\xc3\xa0 vu \xe2\x9c\x93 \"q\" %41\ttab";
	start(client, P_UNARY, 5000, "e", 1, 0, 0, RPC_FAILED_PRECONDITION, m, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_FAILED_PRECONDITION, "error", "status=%d (%s)", r.st, rpc_status_name(r.st));
	check(strcmp(r.msg, m) == 0, "error", "message round trip '%s'", r.msg);
	check(r.n == 0, "error", "no reply message");
	res_clear(&r);
	start(client, P_SSTREAM, 5000, "e", 1, 3, 0, RPC_NOT_FOUND, "", NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_NOT_FOUND && r.msg[0] == '\0', "error", "empty message status=%d msg='%s'", r.st, r.msg);
	res_clear(&r);
}

static void sc_big(void)
{
	struct res r = { 0 };
	size_t len = 3u << 20;
	uint8_t *p = xmalloc(len);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 31 + (i >> 12));
	start(client, P_UNARY, 20000, p, len, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 21000);
	check(r.st == RPC_OK && r.n == 1 && r.replies[0]->payload.len == len &&
	      memcmp(r.replies[0]->payload.data, p, len) == 0, "big", "3 MiB echoed intact status=%d %s", r.st, r.msg);
	res_clear(&r);
	free(p);
}

static void sc_too_big(void)
{
	struct res r = { 0 };
	size_t len = 5u << 20;
	uint8_t *p = xcalloc(1, len);
	start(client, P_UNARY, 20000, p, len, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 21000);
	check(r.st == RPC_RESOURCE_EXHAUSTED, "too_big", "5 MiB request refused status=%d (%s) %s", r.st,
	      rpc_status_name(r.st), r.msg);
	res_clear(&r);
	free(p);
	start(client, P_UNARY, 5000, "small", 5, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK, "too_big", "next call status=%d", r.st);
	res_clear(&r);
}

static void sc_reply_too_big(void)
{
	struct rpc_client_opts o = copts;
	o.max_message = 1024;
	struct rpc_client *small = rpc_client_new(base, target, &o);
	struct res r = { 0 };
	uint8_t p[2000] = { 0 };
	start(small, P_UNARY, 5000, p, sizeof(p), 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_RESOURCE_EXHAUSTED, "reply_too_big", "2000-byte reply refused by a 1 KiB client: %d %s",
	      r.st, r.msg);
	res_clear(&r);
	start(small, P_UNARY, 5000, p, 100, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK, "reply_too_big", "small reply fine: %d", r.st);
	res_clear(&r);
	rpc_client_free(&small);
}

static void sc_concurrent(void)
{
	enum { N = 1000 };
	struct res *rs = xcalloc(N, sizeof(*rs));
	int pending = N;
	char pl[32];
	int64_t t0 = now_ms();
	for (int i = 0; i < N; i++) {
		int n = snprintf(pl, sizeof(pl), "call-%d", i);
		rs[i].pending = &pending;
		start(client, P_UNARY, 30000, pl, (size_t)n, 0, 0, 0, NULL, NULL, &rs[i]);
	}
	run_pending(&pending, 31000);
	int good = 0;
	for (int i = 0; i < N; i++) {
		int n = snprintf(pl, sizeof(pl), "call-%d", i);
		if (rs[i].done && rs[i].st == RPC_OK && rs[i].n == 1 &&
		    rs[i].replies[0]->payload.len == (size_t)n &&
		    memcmp(rs[i].replies[0]->payload.data, pl, (size_t)n) == 0)
			good++;
		res_clear(&rs[i]);
	}
	check(good == N, "concurrent", "%d/%d calls in flight at once matched (%lld ms)", good, N,
	      (long long)(now_ms() - t0));
	free(rs);
}

static void sc_cancel(void)
{
	struct res r = { 0 };
	struct rpc_ccall *call = start(client, P_SSTREAM, 10000, "c", 1, 3, 2000, 0, NULL, NULL, &r);
	run_for(200);
	rpc_ccall_cancel(call);
	run_for(300);
	check(!r.done, "cancel", "no callback after rpc_ccall_cancel");
	res_clear(&r);
	start(client, P_UNARY, 5000, "after", 5, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK, "cancel", "connection still serves calls: %d", r.st);
	res_clear(&r);
	/* cancel before the connection exists, and cancel right after starting */
	struct rpc_client *fresh = rpc_client_new(base, target, &copts);
	call = start(fresh, P_UNARY, 5000, "x", 1, 0, 0, 0, NULL, NULL, &r);
	rpc_ccall_cancel(call);
	call = start(client, P_UNARY, 5000, "x", 1, 0, 0, 0, NULL, NULL, &r);
	rpc_ccall_cancel(call);
	run_for(200);
	check(!r.done, "cancel", "no callback for calls cancelled before they were sent");
	/* freeing a client with calls in flight: no callbacks either */
	start(fresh, P_UNARY, 5000, "x", 1, 0, 1000, 0, NULL, NULL, &r);
	run_for(100);
	rpc_client_free(&fresh);
	run_for(100);
	check(!r.done, "cancel", "rpc_client_free cancels without callbacks");
	res_clear(&r);
}

static void sc_unimplemented(void)
{
	struct res r = { 0 };
	start(client, "/mail.test.v1.Echo/Nope", 5000, "x", 1, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_UNIMPLEMENTED, "unimplemented", "status=%d (%s) %s", r.st, rpc_status_name(r.st), r.msg);
	res_clear(&r);
}

static void sc_unavailable(void)
{
	struct res r = { 0 };
	int64_t t0 = now_ms();
	start(client, P_UNARY, 5000, "x", 1, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_UNAVAILABLE && now_ms() - t0 < 2000, "unavailable",
	      "nothing listening: status=%d (%s) after %lld ms: %s", r.st, rpc_status_name(r.st),
	      (long long)(now_ms() - t0), r.msg);
	res_clear(&r);
	start(client, P_UNARY, 5000, "x", 1, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_UNAVAILABLE, "unavailable", "after backoff too: %d", r.st);
	check(!rpc_client_connected(client), "unavailable", "not connected");
	res_clear(&r);
}

static void sc_reconnect(void)
{
	struct res r = { 0 };
	start(client, P_UNARY, 5000, "one", 3, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK && rpc_client_connected(client), "reconnect", "first call status=%d", r.st);
	res_clear(&r);
	start(client, P_UNARY, 20000, "slow", 4, 0, 10000, 0, NULL, NULL, &r);
	run_for(200);
	printf("READY kill\n");
	fflush(stdout);
	run_until(&r.done, 15000);
	check(r.st == RPC_UNAVAILABLE, "reconnect", "call in flight when the server died: %d (%s) %s", r.st,
	      rpc_status_name(r.st), r.msg);
	res_clear(&r);
	printf("READY restart\n");
	fflush(stdout);
	int64_t t0 = now_ms();
	int attempts = 0, unavailable = 0;
	bool ok = false;
	while (!ok && now_ms() - t0 < 15000) {
		start(client, P_UNARY, 2000, "again", 5, 0, 0, 0, NULL, NULL, &r);
		run_until(&r.done, 3000);
		attempts++;
		ok = r.st == RPC_OK;
		unavailable += r.st == RPC_UNAVAILABLE;
		if (!ok && r.st != RPC_UNAVAILABLE && r.st != RPC_DEADLINE_EXCEEDED)
			check(false, "reconnect", "unexpected status %d %s", r.st, r.msg);
		res_clear(&r);
		if (!ok)
			run_for(100);
	}
	check(ok, "reconnect", "reconnected after %d attempts (%d unavailable)", attempts, unavailable);
}

static void sc_keepalive(void)
{
	struct rpc_client_opts o = copts;
	o.keepalive_ms = 200;
	o.keepalive_timeout_ms = 500;
	struct rpc_client *ka = rpc_client_new(base, target, &o);
	struct res r = { 0 };
	start(ka, P_UNARY, 5000, "k", 1, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK, "keepalive", "first call %d", r.st);
	res_clear(&r);
	run_for(700); /* idle pings answered: still connected */
	check(rpc_client_connected(ka), "keepalive", "answered pings keep the connection");
	start(ka, P_UNARY, 20000, "slow", 4, 0, 10000, 0, NULL, NULL, &r);
	run_for(100);
	printf("READY stop\n");
	fflush(stdout);
	int64_t t0 = now_ms();
	run_until(&r.done, 8000);
	check(r.st == RPC_UNAVAILABLE && now_ms() - t0 < 3000, "keepalive",
	      "dead peer detected: %d (%s) after %lld ms: %s", r.st, rpc_status_name(r.st),
	      (long long)(now_ms() - t0), r.msg);
	res_clear(&r);
	printf("READY cont\n");
	fflush(stdout);
	rpc_client_free(&ka);
}

static void sc_drain(void)
{
	struct res slow = { 0 }, r = { 0 };
	start(client, P_UNARY, 5000, "d", 1, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK, "drain", "first call %d", r.st);
	res_clear(&r);
	start(client, P_UNARY, 10000, "slow", 4, 0, 1500, 0, NULL, NULL, &slow);
	run_for(200);
	printf("READY drain\n");
	fflush(stdout);
	run_for(300); /* the GOAWAY arrives; calls started now go to a new connection */
	start(client, P_UNARY, 5000, "during", 6, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK, "drain", "call started during the drain: %d %s", r.st, r.msg);
	res_clear(&r);
	run_until(&slow.done, 6000);
	check(slow.st == RPC_OK && slow.n == 1, "drain", "call running at the GOAWAY finished: %d %s",
	      slow.st, slow.msg);
	res_clear(&slow);
	run_for(300);
	printf("READY count\n");
	fflush(stdout);
	run_for(300);
	start(client, P_UNARY, 5000, "after", 5, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.st == RPC_OK, "drain", "call after the drain: %d", r.st);
	res_clear(&r);
}

static void sc_no_status(void)
{
	struct res r = { 0 };
	start(client, P_UNARY, 5000, "x", 1, 0, 0, 0, NULL, NULL, &r);
	run_until(&r.done, 6000);
	check(r.done && r.st != RPC_OK, "no_status", "response without grpc-status is an error: %d (%s) %s",
	      r.st, rpc_status_name(r.st), r.msg);
	res_clear(&r);
}

static const struct {
	const char *name;
	void (*run)(void);
} scenarios[] = {
	{ "unary", sc_unary }, { "client_stream", sc_client_stream },
	{ "server_stream", sc_server_stream }, { "server_stream_big", sc_server_stream_big },
	{ "client_stream_big", sc_client_stream_big }, { "deadline", sc_deadline },
	{ "error", sc_error }, { "big", sc_big }, { "too_big", sc_too_big },
	{ "reply_too_big", sc_reply_too_big }, { "concurrent", sc_concurrent },
	{ "cancel", sc_cancel }, { "unimplemented", sc_unimplemented },
	{ "unavailable", sc_unavailable }, { "reconnect", sc_reconnect },
	{ "keepalive", sc_keepalive }, { "no_status", sc_no_status }, { "drain", sc_drain },
};

static const char *flag_value(const char *arg, const char *name)
{
	size_t n = strlen(name);
	if (strncmp(arg, name, n) == 0 && arg[n] == '=')
		return arg + n + 1;
	return NULL;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	/* keeps EVLOOP_ONCE returning so that run_until notices its timeout */
}

int main(int argc, char **argv)
{
	const char *ca = NULL, *v;
	int first = argc;

	log_init("rpc-echo-client", LOG_LEVEL_WARN);
	for (int i = 1; i < argc; i++) {
		if ((v = flag_value(argv[i], "--target")) != NULL)
			target = v;
		else if ((v = flag_value(argv[i], "--tls-ca")) != NULL)
			ca = v;
		else if ((v = flag_value(argv[i], "--authority")) != NULL)
			copts.authority = v;
		else if (strcmp(argv[i], "--debug") == 0)
			log_set_level(LOG_LEVEL_DEBUG);
		else if (strncmp(argv[i], "--", 2) == 0)
			log_fatal("unknown flag", "arg=%s", argv[i]);
		else if (first == argc)
			first = i;
	}
	if (target == NULL || first == argc) {
		fprintf(stderr, "usage: %s --target=HOST:PORT [--tls-ca=F] [--authority=A] SCENARIO...\n", argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (ca != NULL) {
		copts.tls = SSL_CTX_new(TLS_client_method());
		SSL_CTX_set_min_proto_version(copts.tls, TLS1_2_VERSION);
		SSL_CTX_set_verify(copts.tls, SSL_VERIFY_PEER, NULL);
		if (SSL_CTX_load_verify_locations(copts.tls, ca, NULL) != 1)
			log_fatal("cannot load CA", "file=%s", ca);
	}
	copts.backoff_min_ms = 100;
	copts.backoff_max_ms = 400;
	base = event_base_new();
	struct timeval tv = { 0, 50000 };
	struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	event_add(tick, &tv);
	client = rpc_client_new(base, target, &copts);
	for (int i = first; i < argc; i++) {
		size_t k;
		for (k = 0; k < N_ELEMENTS(scenarios); k++) {
			if (strcmp(argv[i], scenarios[k].name) == 0)
				break;
		}
		if (k == N_ELEMENTS(scenarios)) {
			check(false, argv[i], "unknown scenario");
			continue;
		}
		scenarios[k].run();
	}
	rpc_client_free(&client);
	event_free(tick);
	event_base_free(base);
	if (copts.tls != NULL)
		SSL_CTX_free(copts.tls);
	printf("%s: %d checks, %d failed\n", failures ? "FAILED" : "PASSED", checks, failures);
	return failures == 0 ? 0 : 1;
}
