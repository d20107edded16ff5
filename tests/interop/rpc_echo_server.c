/* rpc_echo_server.c - mail.test.v1.Echo served by our gRPC runtime, for the
 * interop tests (python grpcio and rpc_echo_client call it).
 *   Unary: echoes payload, returns the "x-test" metadata value
 *   ClientStream: concatenates payloads and counts the messages
 *   ServerStream: `count` replies of payload (count = index), with back-pressure
 *   delay_ms answers later (an evtimer, so deadlines can expire first);
 *   fail_code/fail_message finish with that status.
 * Flags: --listen=HOST:PORT [--tls-cert=F --tls-key=F] [--max-message=N]
 *        [--keepalive-ms=N] [--workers=N]. Each worker is a thread with its own
 *        event_base and SO_REUSEPORT evconnlistener, sharing one rpc_server.
 * SIGTERM/SIGINT: drop connections (cancelling calls), free all, exit 0.
 * SIGUSR1: rpc_server_drain (GOAWAY; running calls finish), logs the count.
 *
 * --daemon [--shutdown-timeout=D]: run under lib/daemon instead, exactly as
 * the services do (daemon_listen, drain callback = rpc_server_drain, worker
 * stop = rpc_server_close_all): SIGTERM is the graceful drain, a second one
 * stops at once. A call whose request carries the metadata "x-stop-after"
 * asks for that drain (daemon_stop) right after it finished, while its reply
 * is still queued: the drain tests' "answer just finished" case. */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/daemon.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "echo.pb-c.h"
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <openssl/ssl.h>

#define ECHO_MAX_STREAM_BYTES (64u << 20)

enum echo_kind { ECHO_UNARY, ECHO_CLIENT_STREAM, ECHO_SERVER_STREAM };

/* one call's state; freed when the call finishes or is cancelled */
struct echo_call {
	struct rpc_call *call;
	enum echo_kind kind;
	struct event *timer;
	uint8_t *payload;
	size_t len;
	uint32_t count, sent, delay_ms, fail_code;
	char *fail_message;
	bool have_request, answering;
};

static struct rpc_server *server;

/* one worker thread: its own event_base, its own SO_REUSEPORT listener */
struct worker {
	int idx;
	struct event_base *base;
	struct evconnlistener *lev;
	struct event *stop_ev, *drain_ev;
	pthread_t thr;
};

static struct worker *workers;
static int nworkers = 1;
static struct event_base *main_base;
static struct daemon *echo_daemon; /* --daemon mode, else NULL */

/* echo_free - releases a call's state (the call itself belongs to the runtime) */
static void echo_free(struct echo_call *ec)
{
	if (ec->timer != NULL)
		event_free(ec->timer);
	free(ec->payload);
	free(ec->fail_message);
	free(ec);
}

/* echo_finish - finish the call and forget it; "x-stop-after": drain now */
static void echo_finish(struct echo_call *ec, enum rpc_status st, const char *msg)
{
	bool stop = echo_daemon != NULL && rpc_call_metadata(ec->call, "x-stop-after") != NULL;
	uint64_t id = rpc_call_id(ec->call);
	rpc_call_finish(ec->call, st, msg);
	echo_free(ec);
	if (stop) {
		log_info("echo stop after finish", "call=%llu", (unsigned long long)id);
		daemon_stop(echo_daemon);
	}
}

/* echo_get - the state of a call, created on first use */
static struct echo_call *echo_get(struct rpc_call *call, enum echo_kind kind)
{
	struct echo_call *ec = rpc_call_data(call);
	if (ec == NULL) {
		ec = XNEW(struct echo_call);
		ec->call = call;
		ec->kind = kind;
		rpc_call_set_data(call, ec);
	}
	return ec;
}

/* echo_reply - one EchoReply */
static int echo_reply(struct echo_call *ec, const uint8_t *payload, size_t len, uint32_t count)
{
	Mail__Test__V1__EchoReply rep = MAIL__TEST__V1__ECHO_REPLY__INIT;
	const char *md = rpc_call_metadata(ec->call, "x-test");
	rep.payload.data = (uint8_t *)payload;
	rep.payload.len = len;
	rep.count = count;
	rep.metadata = (char *)(md != NULL ? md : "");
	return rpc_call_send_pb(ec->call, &rep.base);
}

/* echo_stream_more - ServerStream: send until done or the queue is full */
static void echo_stream_more(struct echo_call *ec)
{
	while (ec->sent < ec->count && rpc_call_queued(ec->call) < RPC_CALL_HIGH_WATER) {
		if (echo_reply(ec, ec->payload, ec->len, ec->sent) < 0) {
			echo_finish(ec, RPC_INTERNAL, "send failed");
			return;
		}
		ec->sent++;
	}
	if (ec->sent == ec->count)
		echo_finish(ec, RPC_OK, NULL);
	/* else: on_writable resumes */
}

/* echo_answer - the request is complete (and any delay over): answer it */
static void echo_answer(struct echo_call *ec)
{
	ec->answering = true;
	if (ec->fail_code != 0) {
		echo_finish(ec, (enum rpc_status)ec->fail_code, ec->fail_message);
		return;
	}
	switch (ec->kind) {
	case ECHO_UNARY:
		echo_reply(ec, ec->payload, ec->len, 1);
		echo_finish(ec, RPC_OK, NULL);
		break;
	case ECHO_CLIENT_STREAM:
		echo_reply(ec, ec->payload, ec->len, ec->count);
		echo_finish(ec, RPC_OK, NULL);
		break;
	case ECHO_SERVER_STREAM:
		echo_stream_more(ec);
		break;
	}
}

static void echo_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	echo_answer(arg);
}

/* echo_answer_later - answer now or after delay_ms */
static void echo_answer_later(struct echo_call *ec)
{
	if (ec->delay_ms == 0) {
		echo_answer(ec);
		return;
	}
	struct timeval tv = { ec->delay_ms / 1000, (ec->delay_ms % 1000) * 1000 };
	ec->timer = evtimer_new(rpc_call_base(ec->call), echo_timer_cb, ec);
	evtimer_add(ec->timer, &tv);
}

/* echo_unpack - a request from the peer (untrusted): NULL on garbage */
static Mail__Test__V1__EchoRequest *echo_unpack(struct rpc_call *call, const uint8_t *msg,
						size_t len)
{
	Mail__Test__V1__EchoRequest *req = mail__test__v1__echo_request__unpack(NULL, len, msg);
	if (req == NULL) {
		log_info("echo bad request", "call=%llu", (unsigned long long)rpc_call_id(call));
		rpc_call_finish(call, RPC_INVALID_ARGUMENT, "cannot parse EchoRequest");
		struct echo_call *ec = rpc_call_data(call);
		if (ec != NULL)
			echo_free(ec);
	}
	return req;
}

/* echo_take - remember the request's parameters */
static void echo_take(struct echo_call *ec, const Mail__Test__V1__EchoRequest *req)
{
	ec->have_request = true;
	ec->count = req->count;
	ec->delay_ms = req->delay_ms;
	ec->fail_code = req->fail_code;
	free(ec->fail_message);
	ec->fail_message = xstrdup(req->fail_message != NULL ? req->fail_message : "");
	free(ec->payload);
	ec->payload = req->payload.len > 0 ? xmemdup(req->payload.data, req->payload.len) : NULL;
	ec->len = req->payload.len;
}

/* single_message - Unary and ServerStream take exactly one request */
static void single_message(struct rpc_call *call, const uint8_t *msg, size_t len,
			   enum echo_kind kind)
{
	struct echo_call *ec = echo_get(call, kind);
	if (ec->have_request) {
		echo_finish(ec, RPC_INVALID_ARGUMENT, "unary request sent twice");
		return;
	}
	Mail__Test__V1__EchoRequest *req = echo_unpack(call, msg, len);
	if (req == NULL)
		return;
	echo_take(ec, req);
	mail__test__v1__echo_request__free_unpacked(req, NULL);
}

static void unary_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	single_message(call, msg, len, ECHO_UNARY);
}

static void unary_half_close(struct rpc_call *call)
{
	struct echo_call *ec = echo_get(call, ECHO_UNARY);
	if (!ec->have_request) {
		echo_finish(ec, RPC_INVALID_ARGUMENT, "no request");
		return;
	}
	echo_answer_later(ec);
}

static void cstream_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct echo_call *ec = echo_get(call, ECHO_CLIENT_STREAM);
	Mail__Test__V1__EchoRequest *req = echo_unpack(call, msg, len);
	if (req == NULL)
		return;
	if (ec->len + req->payload.len > ECHO_MAX_STREAM_BYTES) {
		mail__test__v1__echo_request__free_unpacked(req, NULL);
		echo_finish(ec, RPC_RESOURCE_EXHAUSTED, "stream too long");
		return;
	}
	ec->payload = xrealloc(ec->payload, ec->len + req->payload.len + 1);
	if (req->payload.len > 0)
		memcpy(ec->payload + ec->len, req->payload.data, req->payload.len);
	ec->len += req->payload.len;
	ec->count++;
	if (req->delay_ms)
		ec->delay_ms = req->delay_ms;
	if (req->fail_code) {
		ec->fail_code = req->fail_code;
		free(ec->fail_message);
		ec->fail_message = xstrdup(req->fail_message != NULL ? req->fail_message : "");
	}
	mail__test__v1__echo_request__free_unpacked(req, NULL);
}

static void cstream_half_close(struct rpc_call *call)
{
	echo_answer_later(echo_get(call, ECHO_CLIENT_STREAM));
}

static void sstream_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	single_message(call, msg, len, ECHO_SERVER_STREAM);
}

static void sstream_half_close(struct rpc_call *call)
{
	struct echo_call *ec = echo_get(call, ECHO_SERVER_STREAM);
	if (!ec->have_request) {
		echo_finish(ec, RPC_INVALID_ARGUMENT, "no request");
		return;
	}
	echo_answer_later(ec);
}

static void sstream_writable(struct rpc_call *call)
{
	struct echo_call *ec = rpc_call_data(call);
	if (ec != NULL && ec->answering)
		echo_stream_more(ec);
}

/* echo_cancel - deadline, RST_STREAM or shutdown: drop our state */
static void echo_cancel(struct rpc_call *call)
{
	struct echo_call *ec = rpc_call_data(call);
	log_info("echo call cancelled", "call=%llu path=%s", (unsigned long long)rpc_call_id(call),
		 rpc_call_path(call));
	if (ec != NULL)
		echo_free(ec);
}

static const struct rpc_method methods[] = {
	{ .path = "/mail.test.v1.Echo/Unary", .on_message = unary_message,
	  .on_half_close = unary_half_close, .on_cancel = echo_cancel },
	{ .path = "/mail.test.v1.Echo/ClientStream", .on_message = cstream_message,
	  .on_half_close = cstream_half_close, .on_cancel = echo_cancel },
	{ .path = "/mail.test.v1.Echo/ServerStream", .on_message = sstream_message,
	  .on_half_close = sstream_half_close, .on_cancel = echo_cancel,
	  .on_writable = sstream_writable },
};

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct worker *w = arg;
	rpc_server_accept(server, w->idx, w->base, fd, sa, salen);
}

/* worker_stop_cb - on the worker's thread: drop its connections, stop its loop */
static void worker_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	rpc_server_close_all(server, w->idx);
	event_base_loopexit(w->base, NULL);
}

static void worker_drain_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	rpc_server_drain(server, w->idx);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	char name[16];
	snprintf(name, sizeof(name), "w%d", w->idx);
	log_set_thread(name);
	event_base_dispatch(w->base);
	return NULL;
}

/* conn_total - connections over all workers (read from the main thread) */
static size_t conn_total(void)
{
	size_t n = 0;
	for (int i = 0; i < nworkers; i++)
		n += rpc_server_conn_count(server, i);
	return n;
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	log_info("echo server stopping", "signal=%d conns=%zu", (int)sig, conn_total());
	for (int i = 0; i < nworkers; i++)
		event_active(workers[i].stop_ev, 0, 0);
	event_base_loopexit(main_base, NULL);
}

static void drain_cb(evutil_socket_t sig, short what, void *arg)
{
	log_info("echo server draining", "conns=%zu", conn_total());
	for (int i = 0; i < nworkers; i++)
		event_active(workers[i].drain_ev, 0, 0);
}

/* ------------------------------------------------------- --daemon mode */

static const struct cfg_def echo_defs[] = {
	{ "listen", CFG_ADDR, "127.0.0.1:7900", 0, 0, "gRPC listener" },
	{ "metrics_listen", CFG_ADDR, "", 0, 0, "metrics endpoint (off)" },
	CFG_END
};

static void d_accept(struct daemon_worker *w, evutil_socket_t fd, const struct sockaddr *peer,
		     int peer_len, void *arg)
{
	rpc_server_accept(server, w->index, w->base, fd, peer, peer_len);
}

static void d_drain(struct daemon_worker *w, void *arg)
{
	log_info("echo server draining", "conns=%zu", rpc_server_conn_count(server, w->index));
	rpc_server_drain(server, w->index);
}

static void d_stop(struct daemon_worker *w, void *arg)
{
	size_t left = rpc_server_conn_count(server, w->index);
	if (left > 0)
		log_info("echo worker closing connections", "conns=%zu", left);
	rpc_server_close_all(server, w->index);
}

/* run_daemon - the echo service under lib/daemon, like the real services */
static int run_daemon(const char *listen, const char *shutdown_timeout,
		      const struct rpc_server_opts *opts)
{
	static const struct cfg_def *const tables[] = { config_common_defs, echo_defs, NULL };
	char *argv[4], *envp[] = { NULL };
	struct config *cfg;
	bool help, check;
	const char *error;

	argv[0] = xstrdup("rpc_echo_server");
	argv[1] = xasprintf("--listen=%s", listen);
	argv[2] = xasprintf("--workers=%d", nworkers);
	argv[3] = xasprintf("--shutdown-timeout=%s", shutdown_timeout);
	if (config_parse(tables, N_ELEMENTS(argv), argv, envp, &cfg, &help, &check, &error) < 0)
		log_fatal("bad daemon flags", "error=\"%s\"", error);
	for (size_t i = 0; i < N_ELEMENTS(argv); i++)
		free(argv[i]);
	echo_daemon = daemon_new(cfg);
	server = rpc_server_new(methods, N_ELEMENTS(methods), opts, daemon_worker_count(echo_daemon));
	if (daemon_listen(echo_daemon, config_str(cfg, "listen"), d_accept, NULL, &error) < 0)
		log_fatal("cannot listen", "error=\"%s\"", error);
	daemon_on_drain(echo_daemon, d_drain, NULL);
	daemon_on_worker_stop(echo_daemon, d_stop, NULL);
	log_info("echo server listening", "addr=%s tls=%s workers=%d mode=daemon", listen,
		 opts->tls != NULL ? "yes" : "no", daemon_worker_count(echo_daemon));
	int status = daemon_run(echo_daemon);
	rpc_server_free(&server); /* before daemon_free: connections hold its workers */
	daemon_free(&echo_daemon);
	config_free(&cfg);
	log_info("echo server stopped", "status=%d", status);
	return status;
}

/* flag_value - "--name=value" -> value, else NULL */
static const char *flag_value(const char *arg, const char *name)
{
	size_t n = strlen(name);
	if (strncmp(arg, name, n) == 0 && arg[n] == '=')
		return arg + n + 1;
	return NULL;
}

int main(int argc, char **argv)
{
	const char *listen = "127.0.0.1:7900", *cert = NULL, *key = NULL, *v;
	const char *shutdown_timeout = "30s";
	bool daemon_mode = false;
	struct rpc_server_opts opts = { 0 };
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);

	log_init("rpc-echo-server", LOG_LEVEL_INFO);
	for (int i = 1; i < argc; i++) {
		if ((v = flag_value(argv[i], "--listen")) != NULL)
			listen = v;
		else if ((v = flag_value(argv[i], "--tls-cert")) != NULL)
			cert = v;
		else if ((v = flag_value(argv[i], "--tls-key")) != NULL)
			key = v;
		else if ((v = flag_value(argv[i], "--max-message")) != NULL)
			opts.max_message = strtoull(v, NULL, 10);
		else if ((v = flag_value(argv[i], "--keepalive-ms")) != NULL)
			opts.keepalive_ms = atoi(v);
		else if ((v = flag_value(argv[i], "--workers")) != NULL)
			nworkers = MAIL_MAX(1, atoi(v));
		else if ((v = flag_value(argv[i], "--shutdown-timeout")) != NULL)
			shutdown_timeout = v;
		else if (strcmp(argv[i], "--daemon") == 0)
			daemon_mode = true;
		else if (strcmp(argv[i], "--debug") == 0)
			log_set_level(LOG_LEVEL_DEBUG);
		else
			log_fatal("unknown flag", "arg=%s", argv[i]);
	}
	signal(SIGPIPE, SIG_IGN);
	if (evutil_parse_sockaddr_port(listen, (struct sockaddr *)&ss, &sslen) < 0)
		log_fatal("bad --listen", "addr=%s", listen);
	if (cert != NULL) {
		opts.tls = SSL_CTX_new(TLS_server_method());
		SSL_CTX_set_min_proto_version(opts.tls, TLS1_2_VERSION);
		if (SSL_CTX_use_certificate_chain_file(opts.tls, cert) != 1 ||
		    SSL_CTX_use_PrivateKey_file(opts.tls, key != NULL ? key : cert, SSL_FILETYPE_PEM) != 1)
			log_fatal("cannot load certificate", "cert=%s key=%s", cert, key ? key : cert);
	}
	if (daemon_mode) {
		int status = run_daemon(listen, shutdown_timeout, &opts);
		if (opts.tls != NULL)
			SSL_CTX_free(opts.tls);
		return status;
	}
	evthread_use_pthreads();
	main_base = event_base_new();
	server = rpc_server_new(methods, N_ELEMENTS(methods), &opts, nworkers);
	if (opts.tls != NULL)
		SSL_CTX_free(opts.tls); /* the server holds its own reference */
	workers = xcalloc((size_t)nworkers, sizeof(*workers));
	for (int i = 0; i < nworkers; i++) {
		struct worker *w = &workers[i];
		w->idx = i;
		w->base = event_base_new();
		w->lev = evconnlistener_new_bind(w->base, accept_cb, w,
						 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
						 LEV_OPT_REUSEABLE_PORT, 128,
						 (struct sockaddr *)&ss, sslen);
		if (w->lev == NULL)
			log_fatal("cannot listen", "addr=%s", listen);
		w->stop_ev = event_new(w->base, -1, 0, worker_stop_cb, w);
		w->drain_ev = event_new(w->base, -1, 0, worker_drain_cb, w);
	}
	for (int i = 0; i < nworkers; i++)
		pthread_create(&workers[i].thr, NULL, worker_main, &workers[i]);
	struct event *sigterm = evsignal_new(main_base, SIGTERM, signal_cb, NULL);
	struct event *sigint = evsignal_new(main_base, SIGINT, signal_cb, NULL);
	struct event *sigusr1 = evsignal_new(main_base, SIGUSR1, drain_cb, NULL);
	evsignal_add(sigterm, NULL);
	evsignal_add(sigint, NULL);
	evsignal_add(sigusr1, NULL);
	log_info("echo server listening", "addr=%s tls=%s workers=%d", listen, cert ? "yes" : "no",
		 nworkers);
	event_base_dispatch(main_base);
	for (int i = 0; i < nworkers; i++) {
		struct worker *w = &workers[i];
		pthread_join(w->thr, NULL);
		evconnlistener_free(w->lev);
		event_free(w->stop_ev);
		event_free(w->drain_ev);
		event_base_free(w->base);
	}
	free(workers);
	event_free(sigterm);
	event_free(sigint);
	event_free(sigusr1);
	rpc_server_free(&server);
	event_base_free(main_base);
	log_info("echo server stopped", "%s", "");
	return 0;
}
