/* test_rpc_runtime.c - the contract of proto/rpc.h that handlers rely on,
 * with server and client on one event_base over loopback: callbacks never
 * run from inside rpc_call_send/finish or rpc_ccall_send/close_send/cancel;
 * on_cancel exactly once (client RST, deadline, close_all) and never after
 * finish; metadata (-bin decoded), deadline and peer seen by the handler;
 * back-pressure through on_writable; freeing a client or cancelling a call
 * from inside its callbacks; drain; calls against silent or absent peers. */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <cmocka.h>
#include "lib/common.h"
#include "lib/log.h"
#include "proto/rpc.h"
#include <netinet/in.h>
#include <signal.h>
#include <time.h>
#include <event2/event.h>
#include <event2/listener.h>

static struct event_base *base;
static struct rpc_server *srv;
static struct evconnlistener *lev;
static int port;
static bool in_api; /* set while the test is inside an rpc_* call */

/* ------------------------------------------------------------- server side */

static struct {
	int started, messages, half_closes, cancels, writables;
	struct rpc_call *held[8];
	int nheld;
	char md[64], md_bin[16];
	size_t md_bin_len;
	int64_t deadline_ms;
	char peer[64];
	int stream_total, stream_sent;
} S;

#define API(stmt) do { in_api = true; stmt; in_api = false; } while (0)

static void h_echo_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	assert_false(in_api);
	S.messages++;
	const char *v = rpc_call_metadata(call, "x-test");
	snprintf(S.md, sizeof(S.md), "%s", v ? v : "");
	v = rpc_call_metadata(call, "x-data-bin");
	if (v != NULL) {
		memcpy(S.md_bin, v, 3);
		S.md_bin_len = 3;
	}
	S.deadline_ms = rpc_call_deadline_ms(call);
	snprintf(S.peer, sizeof(S.peer), "%s", rpc_call_peer(call));
	API(rpc_call_send(call, msg, len));
	API(rpc_call_finish(call, RPC_OK, NULL));
}

static void h_start(struct rpc_call *call)
{
	assert_false(in_api);
	S.started++;
}

static void h_finish_on_start(struct rpc_call *call)
{
	S.started++;
	API(rpc_call_finish(call, RPC_PERMISSION_DENIED, "nope: 100%"));
	/* finished: sends fail, a second finish is ignored */
	API(assert_int_equal(rpc_call_send(call, "x", 1), -1));
}

static void h_count_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	S.messages++;
}

static void h_half_close(struct rpc_call *call)
{
	assert_false(in_api);
	S.half_closes++;
}

static void h_hold_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	S.messages++;
	S.held[S.nheld++] = call;
}

static void h_cancel(struct rpc_call *call)
{
	assert_false(in_api);
	S.cancels++;
	for (int i = 0; i < S.nheld; i++) {
		if (S.held[i] == call)
			S.held[i] = NULL;
	}
	/* finishing a cancelled call is a no-op, not a crash */
	API(rpc_call_finish(call, RPC_OK, NULL));
}

static void stream_more(struct rpc_call *call)
{
	static uint8_t chunk[4096];
	while (S.stream_sent < S.stream_total && rpc_call_queued(call) < RPC_CALL_HIGH_WATER) {
		API(assert_int_equal(rpc_call_send(call, chunk, sizeof(chunk)), 0));
		S.stream_sent++;
	}
	if (S.stream_sent == S.stream_total)
		API(rpc_call_finish(call, RPC_OK, NULL));
}

static void h_stream_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	S.messages++;
	S.stream_sent = 0;
	stream_more(call);
}

static void h_stream_writable(struct rpc_call *call)
{
	assert_false(in_api);
	S.writables++;
	stream_more(call);
}

static const struct rpc_method methods[] = {
	{ .path = "/t.T/Echo", .on_start = h_start, .on_message = h_echo_message,
	  .on_half_close = h_half_close, .on_cancel = h_cancel },
	{ .path = "/t.T/FinishOnStart", .on_start = h_finish_on_start,
	  .on_message = h_count_message, .on_half_close = h_half_close, .on_cancel = h_cancel },
	{ .path = "/t.T/Hold", .on_message = h_hold_message, .on_cancel = h_cancel },
	{ .path = "/t.T/Stream", .on_message = h_stream_message, .on_cancel = h_cancel,
	  .on_writable = h_stream_writable },
};

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	rpc_server_accept(srv, 0, base, fd, sa, salen);
}

/* ------------------------------------------------------------- client side */

struct cres {
	int done, messages, writables;
	enum rpc_status st;
	char msg[128];
	size_t bytes;
	struct rpc_client **free_on_done;
	bool cancel_on_message;
};

static void c_message(struct rpc_ccall *call, const uint8_t *msg, size_t len, void *arg)
{
	struct cres *r = arg;
	assert_false(in_api);
	r->messages++;
	r->bytes += len;
	if (r->cancel_on_message)
		API(rpc_ccall_cancel(call));
}

static void c_done(struct rpc_ccall *call, enum rpc_status st, const char *message, void *arg)
{
	struct cres *r = arg;
	assert_false(in_api);
	assert_non_null(message);
	r->done++;
	r->st = st;
	snprintf(r->msg, sizeof(r->msg), "%s", message);
	if (r->free_on_done != NULL)
		API(rpc_client_free(r->free_on_done));
}

static const struct rpc_ccall_cbs ccbs = { c_message, c_done, NULL };

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* run_until - drive the loop until cond() or ms elapse */
static bool run_until_int(const int *v, int want, int64_t ms)
{
	int64_t end = now_ms() + ms;
	while (*v < want && now_ms() < end)
		event_base_loop(base, EVLOOP_ONCE);
	return *v >= want;
}

static void run_ms(int64_t ms)
{
	int never = 0;
	run_until_int(&never, 1, ms);
}

static struct rpc_client *new_client(void)
{
	char addr[32];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	struct rpc_client_opts o = { .backoff_min_ms = 50, .backoff_max_ms = 100 };
	return rpc_client_new(base, addr, &o);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

static struct event *tick;

static int setup(void **state)
{
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);
	memset(&S, 0, sizeof(S));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	base = event_base_new();
	struct rpc_server_opts o = { .max_message = 1 << 20 };
	srv = rpc_server_new(methods, N_ELEMENTS(methods), &o, 1);
	lev = evconnlistener_new_bind(base, accept_cb, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
				      16, (struct sockaddr *)&sin, sizeof(sin));
	assert_non_null(lev);
	getsockname(evconnlistener_get_fd(lev), (struct sockaddr *)&sin, &slen);
	port = ntohs(sin.sin_port);
	struct timeval tv = { 0, 20000 };
	tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	event_add(tick, &tv);
	return 0;
}

static int teardown(void **state)
{
	rpc_server_close_all(srv, 0);
	evconnlistener_free(lev);
	rpc_server_free(&srv);
	event_free(tick);
	event_base_free(base);
	return 0;
}

/* ------------------------------------------------------------------- tests */

static void test_unary_metadata_deadline(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r = { 0 };
	struct rpc_ccall *call;
	API(call = rpc_client_call(c, "/t.T/Echo", 5000, &ccbs, &r));
	API(rpc_ccall_add_metadata(call, "X-Test", "hello md")); /* sent lowercase */
	API(rpc_ccall_add_metadata(call, "x-data-bin", "\x01\x02\xff"));
	API(rpc_ccall_add_metadata(call, "Bad Name", "ignored"));
	API(assert_int_equal(rpc_ccall_send(call, "ping", 4), 0));
	API(rpc_ccall_close_send(call));
	assert_true(run_until_int(&r.done, 1, 3000));
	assert_int_equal(r.st, RPC_OK);
	assert_int_equal(r.messages, 1);
	assert_int_equal(r.bytes, 4);
	assert_string_equal(S.md, "hello md");
	assert_int_equal(S.md_bin_len, 3);
	assert_memory_equal(S.md_bin, "\x01\x02\xff", 3);
	assert_true(S.deadline_ms > 3000 && S.deadline_ms <= 5000);
	assert_true(strncmp(S.peer, "127.0.0.1:", 10) == 0);
	assert_int_equal(S.started, 1);
	assert_int_equal(S.half_closes, 0); /* finished in on_message: no callback after */
	assert_true(rpc_client_connected(c));
	rpc_client_free(&c);
	assert_null(c);
}

static void test_finish_on_start(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r = { 0 };
	API(rpc_client_unary(c, "/t.T/FinishOnStart", 0, "x", 1, &ccbs, &r));
	assert_true(run_until_int(&r.done, 1, 3000));
	assert_int_equal(r.st, RPC_PERMISSION_DENIED);
	assert_string_equal(r.msg, "nope: 100%");
	run_ms(50);
	assert_int_equal(S.messages, 0);
	assert_int_equal(S.half_closes, 0);
	assert_int_equal(S.cancels, 0);
	rpc_client_free(&c);
}

static void test_unknown_method(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r = { 0 };
	API(rpc_client_unary(c, "/t.T/Nope", 0, "x", 1, &ccbs, &r));
	assert_true(run_until_int(&r.done, 1, 3000));
	assert_int_equal(r.st, RPC_UNIMPLEMENTED);
	rpc_client_free(&c);
}

static void test_server_stream_backpressure(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r = { 0 };
	S.stream_total = 1000; /* 4 MB through a 256 KiB high-water queue */
	API(rpc_client_unary(c, "/t.T/Stream", 10000, "go", 2, &ccbs, &r));
	assert_true(run_until_int(&r.done, 1, 10000));
	assert_int_equal(r.st, RPC_OK);
	assert_int_equal(r.messages, 1000);
	assert_int_equal(r.bytes, 1000 * 4096);
	assert_true(S.writables > 0);
	rpc_client_free(&c);
}

static void test_client_cancel_reaches_server(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r = { 0 };
	struct rpc_ccall *call;
	API(call = rpc_client_unary(c, "/t.T/Hold", 0, "h", 1, &ccbs, &r));
	assert_true(run_until_int(&S.messages, 1, 3000));
	API(rpc_ccall_cancel(call));
	assert_true(run_until_int(&S.cancels, 1, 3000));
	run_ms(50);
	assert_int_equal(r.done, 0);
	assert_int_equal(S.cancels, 1);
	rpc_client_free(&c);
}

static void test_deadline_cancels_handler(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r = { 0 };
	int64_t t0 = now_ms();
	API(rpc_client_unary(c, "/t.T/Hold", 150, "h", 1, &ccbs, &r));
	assert_true(run_until_int(&r.done, 1, 3000));
	assert_int_equal(r.st, RPC_DEADLINE_EXCEEDED);
	assert_true(now_ms() - t0 >= 140);
	assert_true(run_until_int(&S.cancels, 1, 3000));
	assert_int_equal(S.cancels, 1);
	rpc_client_free(&c);
}

static void test_close_all_cancels_every_call(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r[3] = { { 0 } };
	for (int i = 0; i < 3; i++)
		API(rpc_client_unary(c, "/t.T/Hold", 0, "h", 1, &ccbs, &r[i]));
	assert_true(run_until_int(&S.messages, 3, 3000));
	assert_int_equal(rpc_server_conn_count(srv, 0), 1);
	rpc_server_close_all(srv, 0);
	assert_int_equal(S.cancels, 3);
	assert_int_equal(rpc_server_conn_count(srv, 0), 0);
	for (int i = 0; i < 3; i++) {
		assert_true(run_until_int(&r[i].done, 1, 3000));
		assert_int_equal(r[i].st, RPC_UNAVAILABLE);
	}
	/* the client reconnects for the next call */
	struct cres r2 = { 0 };
	API(rpc_client_unary(c, "/t.T/Echo", 3000, "again", 5, &ccbs, &r2));
	assert_true(run_until_int(&r2.done, 1, 3000));
	assert_int_equal(r2.st, RPC_OK);
	rpc_client_free(&c);
}

static void test_free_client_inside_on_done(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r = { 0 }, others[5] = { { 0 } };
	for (int i = 0; i < 5; i++)
		API(rpc_client_unary(c, "/t.T/Hold", 0, "h", 1, &ccbs, &others[i]));
	r.free_on_done = &c;
	API(rpc_client_unary(c, "/t.T/Echo", 3000, "bye", 3, &ccbs, &r));
	assert_true(run_until_int(&r.done, 1, 3000));
	assert_null(c);
	run_ms(100);
	for (int i = 0; i < 5; i++)
		assert_int_equal(others[i].done, 0); /* freed with the client, no callbacks */
	assert_true(run_until_int(&S.cancels, 5, 3000)); /* the server saw the connection go */
}

static void test_cancel_inside_on_message(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r = { .cancel_on_message = true };
	S.stream_total = 500;
	API(rpc_client_unary(c, "/t.T/Stream", 10000, "go", 2, &ccbs, &r));
	assert_true(run_until_int(&r.messages, 1, 3000));
	run_ms(200);
	assert_int_equal(r.messages, 1);
	assert_int_equal(r.done, 0);
	assert_true(run_until_int(&S.cancels, 1, 3000));
	rpc_client_free(&c);
}

static void test_drain_lets_calls_finish(void **state)
{
	struct rpc_client *c = new_client();
	struct cres r = { 0 }, r2 = { 0 };
	API(rpc_client_unary(c, "/t.T/Hold", 0, "h", 1, &ccbs, &r));
	assert_true(run_until_int(&S.messages, 1, 3000));
	rpc_server_drain(srv, 0);
	run_ms(100);
	assert_int_equal(S.cancels, 0);
	API(rpc_call_send(S.held[0], "late", 4));
	API(rpc_call_finish(S.held[0], RPC_OK, NULL));
	assert_true(run_until_int(&r.done, 1, 3000));
	assert_int_equal(r.st, RPC_OK);
	assert_int_equal(r.messages, 1);
	run_ms(100);
	assert_int_equal(rpc_server_conn_count(srv, 0), 0); /* drained and idle: closed */
	API(rpc_client_unary(c, "/t.T/Echo", 3000, "new", 3, &ccbs, &r2));
	assert_true(run_until_int(&r2.done, 1, 3000));
	assert_int_equal(r2.st, RPC_OK);
	rpc_client_free(&c);
}

static void test_silent_and_absent_peers(void **state)
{
	/* a socket that listens but never answers: the deadline ends the call */
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct evconnlistener *mute = evconnlistener_new_bind(base, NULL, NULL,
		LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_DISABLED, 16,
		(struct sockaddr *)&sin, sizeof(sin));
	assert_non_null(mute);
	getsockname(evconnlistener_get_fd(mute), (struct sockaddr *)&sin, &slen);
	char addr[32];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(sin.sin_port));
	struct rpc_client *c = rpc_client_new(base, addr, NULL);
	struct cres r = { 0 };
	API(rpc_client_unary(c, "/t.T/Echo", 200, "x", 1, &ccbs, &r));
	assert_true(run_until_int(&r.done, 1, 3000));
	assert_int_equal(r.st, RPC_DEADLINE_EXCEEDED);
	rpc_client_free(&c);
	evconnlistener_free(mute);
	/* nothing listening: UNAVAILABLE, and again after the backoff */
	c = rpc_client_new(base, addr, &(struct rpc_client_opts){ .backoff_min_ms = 50 });
	struct cres u1 = { 0 }, u2 = { 0 };
	API(rpc_client_unary(c, "/t.T/Echo", 2000, "x", 1, &ccbs, &u1));
	assert_true(run_until_int(&u1.done, 1, 3000));
	assert_int_equal(u1.st, RPC_UNAVAILABLE);
	API(rpc_client_unary(c, "/t.T/Echo", 2000, "x", 1, &ccbs, &u2));
	assert_true(run_until_int(&u2.done, 1, 3000));
	assert_int_equal(u2.st, RPC_UNAVAILABLE);
	assert_false(rpc_client_connected(c));
	rpc_client_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_unary_metadata_deadline, setup, teardown),
		cmocka_unit_test_setup_teardown(test_finish_on_start, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_method, setup, teardown),
		cmocka_unit_test_setup_teardown(test_server_stream_backpressure, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_cancel_reaches_server, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deadline_cancels_handler, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_all_cancels_every_call, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_client_inside_on_done, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_inside_on_message, setup, teardown),
		cmocka_unit_test_setup_teardown(test_drain_lets_calls_finish, setup, teardown),
		cmocka_unit_test_setup_teardown(test_silent_and_absent_peers, setup, teardown),
	};
	signal(SIGPIPE, SIG_IGN);
	log_init("test-rpc-runtime", LOG_LEVEL_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
