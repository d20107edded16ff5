/* test_daemon.c - the process runtime end to end on loopback: a daemon with
 * two workers on port 0 runs in a thread; connections are accepted on a
 * worker's own thread; /healthz, /readyz, /metrics and service routes (exact
 * and prefix) answer over a raw socket;
 * daemon_stop drains and daemon_run returns 0 promptly; a hold keeps the
 * drain waiting (and /readyz at 503) until it is released or the
 * shutdown_timeout passes; SIGHUP runs reload callbacks, SIGTERM drains;
 * bind errors come back from daemon_listen. */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <cmocka.h>
#include "lib/common.h"
#include "lib/config.h"
#include "lib/daemon.h"
#include "lib/httpd.h"
#include "lib/log.h"
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>

static const struct cfg_def test_defs[] = {
	{ "listen", CFG_ADDR, "127.0.0.1:0", 0, 0, "main listener" },
	{ "metrics_listen", CFG_ADDR, "127.0.0.1:0", 0, 0, "metrics" },
	CFG_END
};
static const struct cfg_def *const tables[] = { config_common_defs, test_defs, NULL };

#define MAX_WORKERS 2

struct fixture {
	struct config *cfg;
	struct daemon *d;
	pthread_t runner;
	atomic_int rc;
	atomic_bool done;
	char pid_path[128];
	char tmpdir[64];
	/* set by the callbacks */
	pthread_t worker_thread[MAX_WORKERS];
	atomic_int started, stopped, drained, reloads;
	atomic_int accepted, accepted_wrong_thread;
	atomic_int open_conns;
	bool hold_connections;
	struct bufferevent *conns[MAX_WORKERS][8];
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_worker_start(struct daemon_worker *w, void *arg)
{
	struct fixture *f = arg;
	f->worker_thread[w->index] = pthread_self();
	w->user = f;
	atomic_fetch_add(&f->started, 1);
}

static void on_worker_stop(struct daemon_worker *w, void *arg)
{
	struct fixture *f = arg;
	/* free whatever is still open (a shutdown_timeout left it) */
	for (size_t i = 0; i < N_ELEMENTS(f->conns[w->index]); i++) {
		if (f->conns[w->index][i] != NULL) {
			bufferevent_free(f->conns[w->index][i]);
			f->conns[w->index][i] = NULL;
		}
	}
	if (pthread_equal(pthread_self(), f->worker_thread[w->index]))
		atomic_fetch_add(&f->stopped, 1);
}

static void on_drain(struct daemon_worker *w, void *arg)
{
	struct fixture *f = arg;
	if (pthread_equal(pthread_self(), f->worker_thread[w->index]))
		atomic_fetch_add(&f->drained, 1);
}

static void on_reload(struct daemon *d, void *arg)
{
	struct fixture *f = arg;
	atomic_fetch_add(&f->reloads, 1);
}

/* conn_event - the peer closed: free the connection and release its hold */
static void conn_event(struct bufferevent *bev, short what, void *arg)
{
	struct daemon_worker *w = arg;
	struct fixture *f = w->user;
	for (size_t i = 0; i < N_ELEMENTS(f->conns[w->index]); i++) {
		if (f->conns[w->index][i] == bev)
			f->conns[w->index][i] = NULL;
	}
	bufferevent_free(bev);
	atomic_fetch_sub(&f->open_conns, 1);
	daemon_worker_release(w);
}

static void on_accept(struct daemon_worker *w, evutil_socket_t fd, const struct sockaddr *peer,
		      int peer_len, void *arg)
{
	struct fixture *f = arg;
	if (!pthread_equal(pthread_self(), f->worker_thread[w->index]))
		atomic_fetch_add(&f->accepted_wrong_thread, 1);
	if (peer->sa_family != AF_INET)
		atomic_fetch_add(&f->accepted_wrong_thread, 1);
	if (!f->hold_connections) {
		evutil_closesocket(fd);
		atomic_fetch_add(&f->accepted, 1);
		return;
	}
	struct bufferevent *bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(bev, NULL, NULL, conn_event, w);
	bufferevent_enable(bev, EV_READ);
	for (size_t i = 0; i < N_ELEMENTS(f->conns[w->index]); i++) {
		if (f->conns[w->index][i] == NULL) {
			f->conns[w->index][i] = bev;
			break;
		}
	}
	daemon_worker_hold(w);
	atomic_fetch_add(&f->open_conns, 1);
	atomic_fetch_add(&f->accepted, 1);
}

/* api_route - a service route: echoes method and path */
static void api_route(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();
	evbuffer_add_printf(b, "%s %s %s\n", (const char *)arg,
			    evhttp_request_get_command(req) == EVHTTP_REQ_POST ? "POST" : "other",
			    evhttp_request_get_uri(req));
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static void *runner_main(void *arg)
{
	struct fixture *f = arg;
	atomic_store(&f->rc, daemon_run(f->d));
	atomic_store(&f->done, true);
	return NULL;
}

/* fixture_start - a daemon with 2 workers on 127.0.0.1:0, running in a thread */
static struct fixture *fixture_start(const char *shutdown_timeout, bool hold)
{
	struct fixture *f = calloc(1, sizeof(*f));
	snprintf(f->tmpdir, sizeof(f->tmpdir), "/tmp/mailtestdXXXXXX");
	assert_non_null(mkdtemp(f->tmpdir));
	snprintf(f->pid_path, sizeof(f->pid_path), "%s/d.pid", f->tmpdir);
	char pidarg[192], toarg[64];
	snprintf(pidarg, sizeof(pidarg), "--pid-file=%s", f->pid_path);
	snprintf(toarg, sizeof(toarg), "--shutdown-timeout=%s", shutdown_timeout);
	char *argv[] = { "test", "--workers=2", pidarg, toarg, NULL };
	const char *error = NULL;
	bool help, check;
	assert_int_equal(config_parse(tables, 4, argv, NULL, &f->cfg, &help, &check, &error), 0);
	f->hold_connections = hold;
	f->d = daemon_new(f->cfg);
	assert_non_null(f->d);
	assert_int_equal(daemon_worker_count(f->d), 2);
	assert_non_null(daemon_httpd(f->d));
	daemon_on_worker_start(f->d, on_worker_start, f);
	daemon_on_worker_stop(f->d, on_worker_stop, f);
	daemon_on_drain(f->d, on_drain, f);
	daemon_on_reload(f->d, on_reload, f);
	httpd_add_route(daemon_httpd(f->d), "/api/", api_route, "prefix");
	httpd_add_route(daemon_httpd(f->d), "/api/exact", api_route, "exact");
	assert_int_equal(daemon_listen(f->d, config_str(f->cfg, "listen"), on_accept, f, &error), 0);
	assert_true(daemon_bound_port(f->d, 0) > 0);
	assert_int_equal(daemon_bound_port(f->d, 1), -1);
	assert_int_equal(pthread_create(&f->runner, NULL, runner_main, f), 0);
	/* ready = the pid file exists */
	int64_t deadline = now_ms() + 5000;
	struct stat st;
	while (stat(f->pid_path, &st) < 0) {
		assert_true(now_ms() < deadline);
		usleep(2000);
	}
	assert_int_equal(atomic_load(&f->started), 2);
	return f;
}

/* fixture_wait - daemon_run must return within ms; returns its status */
static int fixture_wait(struct fixture *f, int64_t ms)
{
	int64_t deadline = now_ms() + ms;
	while (!atomic_load(&f->done)) {
		if (now_ms() > deadline)
			fail_msg("daemon_run did not return within %lld ms", (long long)ms);
		usleep(2000);
	}
	pthread_join(f->runner, NULL);
	return atomic_load(&f->rc);
}

static void fixture_free(struct fixture *f)
{
	struct stat st;
	assert_true(stat(f->pid_path, &st) < 0); /* removed at exit */
	daemon_free(&f->d);
	assert_null(f->d);
	config_free(&f->cfg);
	rmdir(f->tmpdir);
	free(f);
}

static int tcp_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct timeval tv = { 5, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	return fd;
}

/* http_get - a raw HTTP/1.0 request; returns the whole response (caller frees) */
static char *http_request(int port, const char *method, const char *path)
{
	int fd = tcp_connect(port);
	char req[256];
	int n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: x\r\n\r\n", method, path);
	assert_int_equal(write(fd, req, (size_t)n), n);
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	for (;;) {
		if (len + 1 >= cap) {
			cap *= 2;
			buf = realloc(buf, cap);
		}
		ssize_t r = read(fd, buf + len, cap - len - 1);
		if (r < 0 && errno == EINTR)
			continue;
		assert_true(r >= 0);
		if (r == 0)
			break;
		len += (size_t)r;
	}
	buf[len] = '\0';
	close(fd);
	return buf;
}

static int http_status(int port, const char *method, const char *path)
{
	char *resp = http_request(port, method, path);
	int code = -1;
	if (sscanf(resp, "HTTP/1.%*d %d", &code) != 1)
		code = -1;
	free(resp);
	return code;
}

static void wait_for(atomic_int *v, int want)
{
	int64_t deadline = now_ms() + 5000;
	while (atomic_load(v) < want) {
		if (now_ms() > deadline)
			fail_msg("waited for %d, have %d", want, atomic_load(v));
		usleep(1000);
	}
}

static void test_accept_http_stop(void **state)
{
	struct fixture *f = fixture_start("5s", false);
	int port = daemon_bound_port(f->d, 0);
	int hport = httpd_port(daemon_httpd(f->d));
	assert_true(hport > 0);

	/* the kernel spreads connections over both workers' sockets */
	for (int i = 0; i < 20; i++) {
		int fd = tcp_connect(port);
		char c;
		assert_int_equal(read(fd, &c, 1), 0); /* the callback closed it */
		close(fd);
	}
	wait_for(&f->accepted, 20);
	assert_int_equal(atomic_load(&f->accepted_wrong_thread), 0);

	assert_int_equal(http_status(hport, "GET", "/healthz"), 200);
	assert_int_equal(http_status(hport, "GET", "/readyz"), 200);
	assert_int_equal(http_status(hport, "HEAD", "/healthz"), 200);
	assert_int_equal(http_status(hport, "GET", "/nope"), 404);
	assert_int_equal(http_status(hport, "GET", "/healthz/x"), 404);
	assert_int_equal(http_status(hport, "POST", "/healthz"), 405);
	char *m = http_request(hport, "POST", "/api/v1/accounts?domain=x");
	assert_non_null(strstr(m, "\r\n\r\nprefix POST /api/v1/accounts?domain=x\n"));
	free(m);
	m = http_request(hport, "GET", "/api/exact");
	assert_non_null(strstr(m, "\r\n\r\nexact other /api/exact\n"));
	free(m);
	assert_int_equal(http_status(hport, "GET", "/api"), 404);
	m = http_request(hport, "GET", "/metrics");
	assert_int_equal(strncmp(m, "HTTP/1.", 7), 0);
	assert_non_null(strstr(m, " 200 OK\r\n"));
	assert_non_null(strstr(m, "Content-Type: text/plain; version=0.0.4"));
	assert_non_null(strstr(m, "\nprocess_open_fds "));
	free(m);

	int64_t t0 = now_ms();
	daemon_stop(f->d);
	assert_int_equal(fixture_wait(f, 2000), 0);
	assert_true(now_ms() - t0 < 1000);
	assert_int_equal(atomic_load(&f->drained), 2);
	assert_int_equal(atomic_load(&f->stopped), 2);
	/* the listeners are closed */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), -1);
	close(fd);
	fixture_free(f);
}

static void test_hold_until_release(void **state)
{
	struct fixture *f = fixture_start("10s", true);
	int port = daemon_bound_port(f->d, 0);
	int hport = httpd_port(daemon_httpd(f->d));
	int c1 = tcp_connect(port);
	int c2 = tcp_connect(port);
	wait_for(&f->accepted, 2);

	daemon_stop(f->d);
	/* /readyz turns 503 as soon as the drain begins; /healthz stays 200 */
	int64_t deadline = now_ms() + 2000;
	while (http_status(hport, "GET", "/readyz") != 503)
		assert_true(now_ms() < deadline);
	char *r = http_request(hport, "GET", "/readyz");
	assert_non_null(strstr(r, "draining"));
	free(r);
	assert_int_equal(http_status(hport, "GET", "/healthz"), 200);
	wait_for(&f->drained, 2);

	usleep(300 * 1000);
	assert_false(atomic_load(&f->done)); /* the holds keep it running */
	close(c1);
	usleep(100 * 1000);
	assert_false(atomic_load(&f->done));
	int64_t t0 = now_ms();
	close(c2); /* last hold released: the drain ends */
	assert_int_equal(fixture_wait(f, 2000), 0);
	assert_true(now_ms() - t0 < 1000);
	assert_int_equal(atomic_load(&f->open_conns), 0);
	assert_int_equal(atomic_load(&f->stopped), 2);
	fixture_free(f);
}

static void test_shutdown_timeout(void **state)
{
	struct fixture *f = fixture_start("300ms", true);
	int c = tcp_connect(daemon_bound_port(f->d, 0));
	wait_for(&f->accepted, 1);
	int64_t t0 = now_ms();
	daemon_stop(f->d);
	assert_int_equal(fixture_wait(f, 3000), 0);
	int64_t took = now_ms() - t0;
	assert_true(took >= 250);
	assert_true(took < 2000);
	assert_int_equal(atomic_load(&f->stopped), 2);
	/* worker_stop freed the connection; libevent closes freed bufferevents'
	 * sockets when the worker's base goes, in daemon_free */
	fixture_free(f);
	char ch;
	assert_int_equal(read(c, &ch, 1), 0);
	close(c);
}

static void test_signals(void **state)
{
	struct fixture *f = fixture_start("5s", true);
	int c = tcp_connect(daemon_bound_port(f->d, 0));
	wait_for(&f->accepted, 1);
	kill(getpid(), SIGHUP);
	wait_for(&f->reloads, 1);
	assert_false(atomic_load(&f->done));
	kill(getpid(), SIGTERM); /* drain: the open connection holds it */
	wait_for(&f->drained, 2);
	usleep(100 * 1000);
	assert_false(atomic_load(&f->done));
	int64_t t0 = now_ms();
	kill(getpid(), SIGTERM); /* a second one: stop now */
	assert_int_equal(fixture_wait(f, 2000), 0);
	assert_true(now_ms() - t0 < 1000);
	assert_int_equal(atomic_load(&f->stopped), 2);
	close(c);
	fixture_free(f);
}

static void test_listen_errors(void **state)
{
	char *argv[] = { "test", "--workers=2", "--metrics-listen=", NULL };
	struct config *cfg;
	const char *error = NULL;
	bool help, check;
	assert_int_equal(config_parse(tables, 3, argv, NULL, &cfg, &help, &check, &error), 0);
	struct daemon *d = daemon_new(cfg);
	assert_null(daemon_httpd(d));

	/* a port someone else listens on */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fd, 1), 0);
	socklen_t sl = sizeof(sin);
	getsockname(fd, (struct sockaddr *)&sin, &sl);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(sin.sin_port));
	error = NULL;
	assert_int_equal(daemon_listen(d, addr, on_accept, NULL, &error), -1);
	assert_non_null(strstr(error, "in use"));
	close(fd);

	assert_int_equal(daemon_listen(d, "nonsense", on_accept, NULL, &error), -1);
	assert_non_null(strstr(error, "bad address"));
	assert_int_equal(daemon_listen(d, "256.1.1.1:80", on_accept, NULL, &error), -1);
	/* IPv6 loopback works too (when the machine has it) */
	if (daemon_listen(d, "[::1]:0", on_accept, NULL, &error) == 0)
		assert_true(daemon_bound_port(d, 0) > 0);
	daemon_free(&d);
	config_free(&cfg);
}

int main(void)
{
	log_init("test", LOG_LEVEL_INFO);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accept_http_stop),
		cmocka_unit_test(test_hold_until_release),
		cmocka_unit_test(test_shutdown_timeout),
		cmocka_unit_test(test_signals),
		cmocka_unit_test(test_listen_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
