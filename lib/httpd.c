/* httpd.c - the per-service HTTP endpoint on evhttp: built-in /healthz,
 * /readyz and /metrics, plus routes the service adds (exact or prefix).
 * Everything runs on the loop given to httpd_new; checks and routes are added
 * before that loop serves requests. Requests are bounded (header and body
 * size, a timeout) by evhttp itself. */
#include "lib/common.h"
#include "lib/httpd.h"
#include "lib/config.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/xalloc.h"
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define HTTPD_MAX_HEADERS_SIZE (64 * 1024)
#define HTTPD_MAX_BODY_SIZE (1024 * 1024)
#define HTTPD_TIMEOUT_SECS 30

struct httpd_check {
	char *name;
	httpd_check_fn *fn;
	void *arg;
};

struct httpd_route {
	char *path;
	size_t len;
	bool prefix;
	httpd_route_fn *fn;
	void *arg;
};

struct httpd {
	struct evhttp *http;
	int port;
	struct httpd_check *checks;
	size_t n_checks;
	struct httpd_route *routes;
	size_t n_routes;
};

/* reply_text - a short text/plain reply */
static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
	struct evbuffer *body = evbuffer_new();
	evbuffer_add(body, text, strlen(text));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; charset=utf-8");
	evhttp_send_reply(req, code, reason, body);
	evbuffer_free(body);
}

/* builtin_method_ok - the built-ins answer GET and HEAD only (405 otherwise) */
static bool builtin_method_ok(struct evhttp_request *req)
{
	enum evhttp_cmd_type t = evhttp_request_get_command(req);
	if (t == EVHTTP_REQ_GET || t == EVHTTP_REQ_HEAD)
		return true;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
	reply_text(req, 405, "Method Not Allowed", "method not allowed\n");
	return false;
}

static void httpd_healthz(struct evhttp_request *req, void *arg)
{
	if (builtin_method_ok(req))
		reply_text(req, 200, "OK", "ok\n");
}

static void httpd_readyz(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	if (!builtin_method_ok(req))
		return;
	for (size_t i = 0; i < h->n_checks; i++) {
		const char *why = NULL;
		if (!h->checks[i].fn(h->checks[i].arg, &why)) {
			char text[512];
			snprintf(text, sizeof(text), "not ready: %s%s%s\n", h->checks[i].name,
				 why != NULL ? ": " : "", why != NULL ? why : "");
			reply_text(req, 503, "Service Unavailable", text);
			return;
		}
	}
	reply_text(req, 200, "OK", "ready\n");
}

static void httpd_metrics(struct evhttp_request *req, void *arg)
{
	if (!builtin_method_ok(req))
		return;
	struct evbuffer *body = evbuffer_new();
	metrics_render(body);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, 200, "OK", body);
	evbuffer_free(body);
}

/* httpd_find_route - an exact match wins; else the longest matching prefix */
static const struct httpd_route *httpd_find_route(const struct httpd *h, const char *path)
{
	const struct httpd_route *best = NULL;
	size_t plen = strlen(path);
	for (size_t i = 0; i < h->n_routes; i++) {
		const struct httpd_route *r = &h->routes[i];
		if (!r->prefix) {
			if (r->len == plen && memcmp(r->path, path, plen) == 0)
				return r;
		} else if (plen >= r->len && memcmp(r->path, path, r->len) == 0 &&
			   (best == NULL || r->len > best->len)) {
			best = r;
		}
	}
	return best;
}

/* httpd_dispatch - evhttp's generic callback: route by the decoded URI's path */
static void httpd_dispatch(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	if (path == NULL || path[0] == '\0')
		path = "/";
	const struct httpd_route *r = httpd_find_route(h, path);
	if (r == NULL) {
		reply_text(req, 404, "Not Found", "not found\n");
		return;
	}
	r->fn(req, r->arg);
}

void httpd_add_route(struct httpd *h, const char *path, httpd_route_fn *fn, void *arg)
{
	size_t len = strlen(path);
	for (size_t i = 0; i < h->n_routes; i++) {
		if (strcmp(h->routes[i].path, path) == 0) {
			/* a later registration replaces the earlier one */
			h->routes[i].fn = fn;
			h->routes[i].arg = arg;
			return;
		}
	}
	h->routes = xrealloc(h->routes, (h->n_routes + 1) * sizeof(*h->routes));
	struct httpd_route *r = &h->routes[h->n_routes++];
	r->path = xstrdup(path);
	r->len = len;
	r->prefix = len > 0 && path[len - 1] == '/';
	r->fn = fn;
	r->arg = arg;
}

void httpd_add_ready_check(struct httpd *h, const char *name, httpd_check_fn *fn, void *arg)
{
	h->checks = xrealloc(h->checks, (h->n_checks + 1) * sizeof(*h->checks));
	struct httpd_check *c = &h->checks[h->n_checks++];
	c->name = xstrdup(name);
	c->fn = fn;
	c->arg = arg;
}

struct httpd *httpd_new(struct event_base *base, const char *addr, const char **error_r)
{
	static _Thread_local char errbuf[256];
	char host[256];
	uint16_t port;

	if (config_parse_addr(addr, host, sizeof(host), &port) < 0) {
		snprintf(errbuf, sizeof(errbuf), "bad address '%s' (want host:port)", addr);
		*error_r = errbuf;
		return NULL;
	}
	struct evhttp *http = evhttp_new(base);
	if (http == NULL) {
		*error_r = "evhttp_new failed";
		return NULL;
	}
	struct evhttp_bound_socket *bs =
		evhttp_bind_socket_with_handle(http, strcmp(host, "*") != 0 ? host : "0.0.0.0", port);
	if (bs == NULL) {
		snprintf(errbuf, sizeof(errbuf), "cannot listen on %s: %s", addr,
			 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		*error_r = errbuf;
		evhttp_free(http);
		return NULL;
	}
	struct httpd *h = XNEW(struct httpd);
	h->http = http;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			h->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			h->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	evhttp_set_max_headers_size(http, HTTPD_MAX_HEADERS_SIZE);
	evhttp_set_max_body_size(http, HTTPD_MAX_BODY_SIZE);
	evhttp_set_timeout(http, HTTPD_TIMEOUT_SECS);
	/* services' routes (an admin API) need more than evhttp's default set */
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
					 EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
					 EVHTTP_REQ_OPTIONS);
	evhttp_set_gencb(http, httpd_dispatch, h);
	httpd_add_route(h, "/healthz", httpd_healthz, h);
	httpd_add_route(h, "/readyz", httpd_readyz, h);
	httpd_add_route(h, "/metrics", httpd_metrics, h);
	return h;
}

int httpd_port(const struct httpd *h)
{
	return h->port;
}

void httpd_free(struct httpd **hp)
{
	struct httpd *h = *hp;
	if (h == NULL)
		return;
	*hp = NULL;
	evhttp_free(h->http);
	for (size_t i = 0; i < h->n_checks; i++)
		free(h->checks[i].name);
	for (size_t i = 0; i < h->n_routes; i++)
		free(h->routes[i].path);
	free(h->checks);
	free(h->routes);
	free(h);
}
