/* bench_rpc.c - gRPC unary round trips on ONE connection with N calls in
 * flight (default 100), small messages: calls per second and latency
 * p50/p99. Server and client run in this process on two threads, each with
 * its own event_base, over loopback h2c. The server handler unpacks the
 * EchoRequest and packs an EchoReply, like a real handler.
 *   bench_rpc [--secs=5] [--inflight=100] [--payload=16] [--same-core]
 * --same-core pins both threads to one CPU (the "one core" figure).
 * Prints: rpc_unary inflight=... calls=... calls_per_sec=... p50_us=... p99_us=... */
#include "lib/common.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "echo.pb-c.h"
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netinet/in.h>

#define BENCH_PATH "/mail.test.v1.Echo/Unary"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- server */

struct bench_server {
	struct event_base *base;
	struct rpc_server *srv;
	struct evconnlistener *lev;
	struct event *stop_ev;
	int port;
	int cpu;
};

static void srv_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	Mail__Test__V1__EchoRequest *req = mail__test__v1__echo_request__unpack(NULL, len, msg);
	if (req == NULL) {
		rpc_call_finish(call, RPC_INVALID_ARGUMENT, "bad request");
		return;
	}
	Mail__Test__V1__EchoReply rep = MAIL__TEST__V1__ECHO_REPLY__INIT;
	rep.payload = req->payload;
	rpc_call_send_pb(call, &rep.base);
	mail__test__v1__echo_request__free_unpacked(req, NULL);
	rpc_call_finish(call, RPC_OK, NULL);
}

static const struct rpc_method srv_methods[] = {
	{ .path = BENCH_PATH, .on_message = srv_message },
};

static void srv_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
		       int salen, void *arg)
{
	struct bench_server *bs = arg;
	rpc_server_accept(bs->srv, 0, bs->base, fd, sa, salen);
}

static void srv_stop(evutil_socket_t fd, short what, void *arg)
{
	struct bench_server *bs = arg;
	rpc_server_close_all(bs->srv, 0);
	event_base_loopexit(bs->base, NULL);
}

/* pin - run the calling thread on one CPU (best effort) */
static void pin(int cpu)
{
	cpu_set_t set;
	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *srv_thread(void *arg)
{
	struct bench_server *bs = arg;
	log_set_thread("srv");
	pin(bs->cpu);
	event_base_dispatch(bs->base);
	return NULL;
}

/* ---------------------------------------------------------------- client */

struct bench {
	struct event_base *base;
	struct rpc_client *cl;
	uint8_t *req;
	size_t req_len;
	uint64_t t_measure, t_end;
	uint32_t *lat;     /* microseconds, measured calls */
	size_t nlat, cap;
	uint64_t errors;
	int outstanding;
};

struct slot {
	struct bench *b;
	uint64_t t0;
};

static void start_call(struct slot *s);

static void cl_message(struct rpc_ccall *call, const uint8_t *msg, size_t len, void *arg)
{
	/* the reply is only counted; decoding it is not what we measure */
}

static void cl_done(struct rpc_ccall *call, enum rpc_status st, const char *message, void *arg)
{
	struct slot *s = arg;
	struct bench *b = s->b;
	uint64_t t = now_ns();

	if (st != RPC_OK && b->errors++ < 5)
		fprintf(stderr, "call failed: %s %s\n", rpc_status_name(st), message);
	if (s->t0 >= b->t_measure && t <= b->t_end) {
		if (b->nlat == b->cap) {
			b->cap = b->cap ? b->cap * 2 : 1u << 20;
			b->lat = xrealloc(b->lat, b->cap * sizeof(*b->lat));
		}
		b->lat[b->nlat++] = (uint32_t)MAIL_MIN((t - s->t0) / 1000, (uint64_t)UINT32_MAX);
	}
	if (t < b->t_end) {
		start_call(s);
	} else if (--b->outstanding == 0) {
		event_base_loopbreak(b->base);
	}
}

static const struct rpc_ccall_cbs cl_cbs = { cl_message, cl_done, NULL };

static void start_call(struct slot *s)
{
	s->t0 = now_ns();
	rpc_client_unary(s->b->cl, BENCH_PATH, 10000, s->b->req, s->b->req_len, &cl_cbs, s);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* run - one measurement; prints its line */
static void run(int port, int inflight, double secs, size_t payload, const char *label)
{
	struct bench b = { 0 };
	char addr[64];
	struct slot *slots = xcalloc((size_t)inflight, sizeof(*slots));
	Mail__Test__V1__EchoRequest req = MAIL__TEST__V1__ECHO_REQUEST__INIT;
	uint8_t *pl = xcalloc(1, payload + 1);

	memset(pl, 'p', payload);
	req.payload.data = pl;
	req.payload.len = payload;
	b.req_len = mail__test__v1__echo_request__get_packed_size(&req);
	b.req = xmalloc(b.req_len + 1);
	mail__test__v1__echo_request__pack(&req, b.req);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	b.base = event_base_new();
	b.cl = rpc_client_new(b.base, addr, NULL);
	uint64_t t0 = now_ns();
	b.t_measure = t0 + 500000000u; /* half a second of warm-up */
	b.t_end = b.t_measure + (uint64_t)(secs * 1e9);
	b.outstanding = inflight;
	for (int i = 0; i < inflight; i++) {
		slots[i].b = &b;
		start_call(&slots[i]);
	}
	event_base_dispatch(b.base);
	double measured = (double)(b.t_end - b.t_measure) / 1e9;
	qsort(b.lat, b.nlat, sizeof(*b.lat), cmp_u32);
	uint32_t p50 = b.nlat ? b.lat[b.nlat / 2] : 0;
	uint32_t p99 = b.nlat ? b.lat[(size_t)((double)b.nlat * 0.99)] : 0;
	printf("%s inflight=%d payload=%zu calls=%zu secs=%.2f calls_per_sec=%.0f p50_us=%u p99_us=%u errors=%llu\n",
	       label, inflight, payload, b.nlat, measured, (double)b.nlat / measured, p50, p99,
	       (unsigned long long)b.errors);
	fflush(stdout);
	rpc_client_free(&b.cl);
	event_base_free(b.base);
	free(b.lat);
	free(b.req);
	free(pl);
	free(slots);
}

static const char *flag_value(const char *arg, const char *name)
{
	size_t n = strlen(name);
	if (strncmp(arg, name, n) == 0 && arg[n] == '=')
		return arg + n + 1;
	return NULL;
}

int main(int argc, char **argv)
{
	double secs = 5;
	int inflight = 100;
	size_t payload = 16;
	bool same_core = false;
	const char *v;
	struct bench_server bs = { .cpu = -1 };
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);
	pthread_t thr;

	log_init("bench-rpc", LOG_LEVEL_WARN);
	for (int i = 1; i < argc; i++) {
		if ((v = flag_value(argv[i], "--secs")) != NULL)
			secs = atof(v);
		else if ((v = flag_value(argv[i], "--inflight")) != NULL)
			inflight = atoi(v);
		else if ((v = flag_value(argv[i], "--payload")) != NULL)
			payload = (size_t)atol(v);
		else if (strcmp(argv[i], "--same-core") == 0)
			same_core = true;
		else
			log_fatal("unknown flag", "arg=%s", argv[i]);
	}
	signal(SIGPIPE, SIG_IGN);
	evthread_use_pthreads();
	if (same_core) {
		bs.cpu = sched_getcpu();
		pin(bs.cpu);
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bs.base = event_base_new();
	bs.srv = rpc_server_new(srv_methods, N_ELEMENTS(srv_methods), NULL, 1);
	bs.lev = evconnlistener_new_bind(bs.base, srv_accept, &bs,
					 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 64,
					 (struct sockaddr *)&sin, sizeof(sin));
	if (bs.lev == NULL)
		log_fatal("cannot listen", "%s", "");
	getsockname(evconnlistener_get_fd(bs.lev), (struct sockaddr *)&sin, &slen);
	bs.port = ntohs(sin.sin_port);
	bs.stop_ev = event_new(bs.base, -1, 0, srv_stop, &bs);
	pthread_create(&thr, NULL, srv_thread, &bs);

	run(bs.port, 1, secs / 5 > 1 ? secs / 5 : 1, payload, "rpc_unary_sequential");
	run(bs.port, inflight, secs, payload, same_core ? "rpc_unary_one_core" : "rpc_unary");

	event_active(bs.stop_ev, 0, 0);
	pthread_join(thr, NULL);
	event_free(bs.stop_ev);
	evconnlistener_free(bs.lev);
	rpc_server_free(&bs.srv);
	event_base_free(bs.base);
	return 0;
}
