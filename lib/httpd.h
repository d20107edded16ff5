/* httpd.h - a small HTTP/1.1 endpoint on libevent's evhttp, one per service:
 * GET /healthz (200 while the process runs), GET /readyz (200 when every
 * readiness check passes, else 503 with the failing check's name), GET
 * /metrics (Prometheus text). Services add routes (the router's admin API). */
#ifndef MAIL_HTTPD_H
#define MAIL_HTTPD_H
#include "lib/common.h"
#include <event2/event.h>

struct httpd;
struct evhttp_request;

typedef bool httpd_check_fn(void *arg, const char **why_r);
typedef void httpd_route_fn(struct evhttp_request *req, void *arg);

/* httpd_new - listens on addr ("host:port") on the given loop */
struct httpd *httpd_new(struct event_base *base, const char *addr, const char **error_r);
void httpd_free(struct httpd **hp);
int httpd_port(const struct httpd *h);
/* httpd_add_ready_check - /readyz is 200 only when every check returns true;
 * checks run on the httpd's loop thread and must not block */
void httpd_add_ready_check(struct httpd *h, const char *name, httpd_check_fn *fn, void *arg);
/* httpd_add_route - exact path, or a prefix when path ends with '/' */
void httpd_add_route(struct httpd *h, const char *path, httpd_route_fn *fn, void *arg);
#endif
