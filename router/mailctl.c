/* mailctl.c - the command-line client of the router's admin API (DESIGN.md
 * "Admin API (contract)"; docs/admin-api.md), and `mailctl migrate`, which
 * applies the schema migrations directly (router/migrate.h) without a router.
 *
 *   mailctl [--api=URL] [--token=T | --token-file=F] [--json] COMMAND ...
 *
 * The API address comes from --api, else $MAIL_API, else http://127.0.0.1:8080;
 * the token from --token, --token-file, $MAIL_ADMIN_TOKEN, else var/admin.token
 * (relative to the current directory, where `make up` writes it).
 *
 * It is a CLI: one plain blocking HTTP/1.1 request per call (Connection: close)
 * over a socket, bounded in time and size. Output is human-readable by
 * default; --json prints the API's JSON as it came (pretty-printed).
 * Exit status: 0 success, 1 the API (or the network, or the database for
 * migrate) said no - its message is printed, 2 usage. Passwords come from
 * --password=P, or from standard input (--password=- or no --password on
 * `account add`), never echoed on a terminal. Everything the process holds is
 * its own: nothing here is shared or long-lived. */
#include "lib/common.h"
#include "router/migrate.h"
#include "lib/log.h"
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <termios.h>
#include <unistd.h>

#ifndef MAIL_VERSION
#define MAIL_VERSION "0.1.0-dev"
#endif

#define CTL_OK 0
#define CTL_API_ERROR 1
#define CTL_USAGE 2
#define CTL_DEFAULT_API "http://127.0.0.1:8080"
#define CTL_DEFAULT_TOKEN_FILE "var/admin.token"
#define CTL_MAX_RESPONSE (64u << 20)
#define CTL_TIMEOUT_S 60
#define CTL_MAX_OPTS 32
#define CTL_MAX_ARGS 1100 /* alias add with many targets */

struct ctl_opt {
	const char *name;
	const char *value; /* NULL for a bare --flag */
	bool used;
};

struct ctl {
	const char *api;
	char host[256];
	char port[8];
	char base[256]; /* path prefix of the API URL, without a trailing '/' */
	char *token;
	bool json;
	struct ctl_opt opts[CTL_MAX_OPTS];
	size_t nopts;
	const char *args[CTL_MAX_ARGS];
	int nargs;
};

struct ctl_buf {
	char *data;
	size_t len, cap;
};

static const char ctl_usage_text[] =
	"usage: mailctl [--api=URL] [--token=T | --token-file=F] [--json] COMMAND ...\n"
	"\n"
	"  domain add NAME                     add a local domain\n"
	"  domain list                         list domains\n"
	"  domain del NAME                     delete a domain WITH its accounts and aliases\n"
	"  account add ADDRESS [--password=P|-] [--password-hash=H] [--quota=SIZE]\n"
	"              [--quota-messages=N]    create an account (INBOX, Sent, Drafts, Trash,\n"
	"                                      Junk, Archive); no --password: read from stdin\n"
	"  account list [--domain=D]           list accounts\n"
	"  account show ADDRESS                an account, its usage and mailboxes\n"
	"  account set ADDRESS [--password=P|-] [--password-hash=H] [--quota=SIZE]\n"
	"              [--quota-messages=N] [--disable | --enable]\n"
	"  account del ADDRESS                 delete an account with all its mail\n"
	"  alias add ADDRESS TARGET...         ADDRESS local@domain, or @domain (catch-all)\n"
	"  alias list [--domain=D]             list aliases\n"
	"  alias show ADDRESS                  an alias and its targets\n"
	"  alias del ADDRESS                   delete an alias\n"
	"  queue list [--status=S] [--limit=N] outbound queue entries\n"
	"  queue retry ID                      next delivery attempt now\n"
	"  queue del ID                        drop an entry (no bounce is sent)\n"
	"  cluster                             routers, front-ends, store nodes, database, dnsd\n"
	"  migrate --db=CONNINFO [--status]    apply the schema migrations (no router needed)\n"
	"\n"
	"  --api      admin API URL (default $MAIL_API, else " CTL_DEFAULT_API ")\n"
	"  --token    bearer token (default $MAIL_ADMIN_TOKEN, else the file " CTL_DEFAULT_TOKEN_FILE ")\n"
	"  --json     print the API's JSON instead of text\n"
	"  SIZE       bytes, or with K, M, G, T (powers of 1024); 0 = unlimited\n"
	"\n"
	"exit status: 0 ok, 1 the API refused (message printed), 2 usage\n";

/* ------------------------------------------------------------ small helpers */

/* ctl_usage - a usage error: the reason and a pointer to --help; returns 2 */
static int ATTR_PRINTF(1, 2) ctl_usage(const char *fmt, ...)
{
	va_list ap;
	fputs("mailctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n(mailctl --help lists the commands)\n", stderr);
	return CTL_USAGE;
}

/* ctl_error - an error from the API or the network; returns 1 */
static int ATTR_PRINTF(1, 2) ctl_error(const char *fmt, ...)
{
	va_list ap;
	fputs("mailctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return CTL_API_ERROR;
}

static void buf_add(struct ctl_buf *b, const void *data, size_t len)
{
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + len + 1)
			cap *= 2;
		char *p = realloc(b->data, cap);
		if (p == NULL) {
			fputs("mailctl: out of memory\n", stderr);
			exit(CTL_API_ERROR);
		}
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
}

static void ATTR_PRINTF(2, 3) buf_printf(struct ctl_buf *b, const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof(tmp)) {
		buf_add(b, tmp, (size_t)n);
		return;
	}
	char *big = malloc((size_t)n + 1);
	if (big == NULL)
		exit(CTL_API_ERROR);
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	buf_add(b, big, (size_t)n);
	free(big);
}

/* ctl_opt - the value of --name=value (marked used), or NULL; *present_r
 * tells a bare --name from an absent one */
static const char *ctl_opt(struct ctl *c, const char *name, bool *present_r)
{
	if (present_r != NULL)
		*present_r = false;
	for (size_t i = 0; i < c->nopts; i++) {
		if (strcmp(c->opts[i].name, name) == 0) {
			c->opts[i].used = true;
			if (present_r != NULL)
				*present_r = true;
			return c->opts[i].value;
		}
	}
	return NULL;
}

/* ctl_opts_all_used - every option given was one the command knows */
static int ctl_opts_all_used(struct ctl *c)
{
	for (size_t i = 0; i < c->nopts; i++)
		if (!c->opts[i].used)
			return ctl_usage("unknown option --%s for this command", c->opts[i].name);
	return CTL_OK;
}

/* ctl_parse_size - "123", "10K", "5M", "2G", "1T" (powers of 1024); -1 if bad */
static long long ctl_parse_size(const char *s)
{
	char *end;
	errno = 0;
	if (s == NULL || *s == '\0' || *s == '-')
		return -1;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s)
		return -1;
	unsigned shift = 0;
	switch (*end) {
	case '\0': break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: return -1;
	}
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end != '\0' || v > (1ULL << 53) >> shift)
		return -1;
	return (long long)(v << shift);
}

/* ctl_human_size - 1536 -> "1.5K" */
static const char *ctl_human_size(long long v, char *buf, size_t size)
{
	static const char units[] = "KMGT";
	if (v < 1024) {
		snprintf(buf, size, "%lld", v);
		return buf;
	}
	double d = (double)v;
	int u = -1;
	while (d >= 1024 && u < 3) {
		d /= 1024;
		u++;
	}
	snprintf(buf, size, d < 10 ? "%.1f%c" : "%.0f%c", d, units[u]);
	return buf;
}

/* ctl_read_password - one line from stdin, not echoed on a terminal (asked
 * twice there when confirm); NULL with a message printed on failure */
static char *ctl_read_password(bool confirm)
{
	bool tty = isatty(STDIN_FILENO);
	char *line = NULL;
	for (int round = 0; round < (tty && confirm ? 2 : 1); round++) {
		struct termios old, quiet;
		if (tty) {
			fputs(round == 0 ? "Password: " : "Password again: ", stderr);
			fflush(stderr);
			tcgetattr(STDIN_FILENO, &old);
			quiet = old;
			quiet.c_lflag &= ~(tcflag_t)ECHO;
			tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
		}
		char *got = NULL;
		size_t cap = 0;
		ssize_t n = getline(&got, &cap, stdin);
		if (tty) {
			tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
			fputc('\n', stderr);
		}
		if (n < 0) {
			free(got);
			free(line);
			ctl_error("no password on standard input");
			return NULL;
		}
		while (n > 0 && (got[n - 1] == '\n' || got[n - 1] == '\r'))
			got[--n] = '\0';
		if (round == 0) {
			line = got;
		} else {
			bool same = strcmp(line, got) == 0;
			explicit_bzero(got, strlen(got));
			free(got);
			if (!same) {
				explicit_bzero(line, strlen(line));
				free(line);
				ctl_error("the passwords differ");
				return NULL;
			}
		}
	}
	return line;
}

/* ------------------------------------------------------------ HTTP */

/* ctl_parse_api - http://host[:port][/base] into c->host, c->port, c->base */
static int ctl_parse_api(struct ctl *c)
{
	const char *u = c->api;
	if (strncasecmp(u, "https://", 8) == 0)
		return ctl_usage("https is not supported by mailctl: reach the API over http (a TLS proxy "
				 "or an SSH tunnel)");
	if (strncasecmp(u, "http://", 7) != 0)
		return ctl_usage("--api must be an http:// URL, not '%s'", u);
	u += 7;
	const char *hend;
	const char *hp = u;
	if (*u == '[') {
		hend = strchr(u, ']');
		if (hend == NULL)
			return ctl_usage("bad --api URL");
		hp = u + 1;
		u = hend + 1;
	} else {
		hend = u + strcspn(u, ":/");
		u = hend;
	}
	size_t hl = (size_t)(hend - hp);
	if (hl == 0 || hl >= sizeof(c->host))
		return ctl_usage("bad host in --api URL");
	memcpy(c->host, hp, hl);
	c->host[hl] = '\0';
	snprintf(c->port, sizeof(c->port), "80");
	if (*u == ':') {
		u++;
		size_t pl = strspn(u, "0123456789");
		if (pl == 0 || pl >= sizeof(c->port))
			return ctl_usage("bad port in --api URL");
		memcpy(c->port, u, pl);
		c->port[pl] = '\0';
		u += pl;
	}
	if (*u != '\0' && *u != '/')
		return ctl_usage("bad --api URL");
	snprintf(c->base, sizeof(c->base), "%s", u);
	size_t bl = strlen(c->base);
	while (bl > 0 && c->base[bl - 1] == '/')
		c->base[--bl] = '\0';
	return CTL_OK;
}

/* ctl_escape - a path segment percent-encoded (all but RFC 3986 unreserved) */
static void ctl_escape(struct ctl_buf *b, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    *p == '-' || *p == '.' || *p == '_' || *p == '~')
			buf_add(b, p, 1);
		else
			buf_printf(b, "%%%02X", *p);
	}
}

/* ctl_connect - a connected socket with send/receive timeouts, or -1 */
static int ctl_connect(struct ctl *c)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct addrinfo *res = NULL;
	int e = getaddrinfo(c->host, c->port, &hints, &res);
	if (e != 0) {
		ctl_error("cannot resolve %s: %s", c->host, gai_strerror(e));
		return -1;
	}
	int fd = -1, err = 0;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		struct timeval tv = { CTL_TIMEOUT_S, 0 };
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* connect() too, on Linux */
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		ctl_error("cannot connect to the admin API at %s: %s", c->api, strerror(err));
	return fd;
}

/* ctl_dechunk - decode a chunked body in place; -1 if malformed */
static int ctl_dechunk(char *body, size_t len, size_t *out_r)
{
	size_t in = 0, out = 0;
	for (;;) {
		char *end;
		if (in >= len)
			return -1;
		unsigned long n = strtoul(body + in, &end, 16);
		char *eol = memchr(body + in, '\n', len - in);
		if (end == body + in || eol == NULL)
			return -1;
		in = (size_t)(eol - body) + 1;
		if (n == 0)
			break;
		if (n > len - in)
			return -1;
		memmove(body + out, body + in, n);
		out += n;
		in += n;
		if (in < len && body[in] == '\r')
			in++;
		if (in < len && body[in] == '\n')
			in++;
	}
	body[out] = '\0';
	*out_r = out;
	return 0;
}

/* ctl_http - one request; *status_r and the body (NUL-terminated, caller frees).
 * 0, or -1 with the message printed */
static int ctl_http(struct ctl *c, const char *method, const char *path, const char *body,
		    int *status_r, char **body_r)
{
	int fd = ctl_connect(c);
	if (fd < 0)
		return -1;
	struct ctl_buf req = { 0 };
	bool v6 = strchr(c->host, ':') != NULL;
	buf_printf(&req, "%s %s%s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: mailctl/%s\r\n"
		   "Accept: application/json\r\nConnection: close\r\n",
		   method, c->base, path, v6 ? "[" : "", c->host, v6 ? "]" : "", c->port, MAIL_VERSION);
	if (c->token != NULL)
		buf_printf(&req, "Authorization: Bearer %s\r\n", c->token);
	if (body != NULL)
		buf_printf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n", strlen(body));
	buf_add(&req, "\r\n", 2);
	if (body != NULL)
		buf_add(&req, body, strlen(body));
	size_t off = 0;
	while (off < req.len) {
		ssize_t n = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ctl_error("cannot send to the admin API: %s", strerror(errno));
			explicit_bzero(req.data, req.len);
			free(req.data);
			close(fd);
			return -1;
		}
		off += (size_t)n;
	}
	explicit_bzero(req.data, req.len); /* it held the token and maybe a password */
	free(req.data);

	struct ctl_buf resp = { 0 };
	for (;;) {
		char tmp[16384];
		ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ctl_error("no answer from the admin API: %s",
				  errno == EAGAIN ? "timed out" : strerror(errno));
			free(resp.data);
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		if (resp.len + (size_t)n > CTL_MAX_RESPONSE) {
			ctl_error("the admin API's answer is too large");
			free(resp.data);
			close(fd);
			return -1;
		}
		buf_add(&resp, tmp, (size_t)n);
	}
	close(fd);
	int status = 0;
	char *hdr_end = resp.data != NULL ? strstr(resp.data, "\r\n\r\n") : NULL;
	if (hdr_end == NULL || sscanf(resp.data, "HTTP/1.%*d %d", &status) != 1) {
		ctl_error("not an HTTP answer from %s", c->api);
		free(resp.data);
		return -1;
	}
	*hdr_end = '\0';
	char *b = hdr_end + 4;
	size_t blen = resp.len - (size_t)(b - resp.data);
	bool chunked = false;
	long long clen = -1;
	for (char *line = strstr(resp.data, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n")) {
		const char *h = line + 2;
		if (strncasecmp(h, "transfer-encoding:", 18) == 0 && strcasestr(h, "chunked") != NULL)
			chunked = true;
		else if (strncasecmp(h, "content-length:", 15) == 0)
			clen = strtoll(h + 15, NULL, 10);
	}
	if (chunked) {
		if (ctl_dechunk(b, blen, &blen) < 0) {
			ctl_error("malformed chunked answer from %s", c->api);
			free(resp.data);
			return -1;
		}
	} else if (clen >= 0 && (size_t)clen < blen) {
		blen = (size_t)clen;
	}
	char *out = malloc(blen + 1);
	if (out == NULL)
		exit(CTL_API_ERROR);
	memcpy(out, b, blen);
	out[blen] = '\0';
	free(resp.data);
	*status_r = status;
	*body_r = out;
	return 0;
}

/* ctl_call - a request whose answer is JSON. On a 2xx answer: with --json it is
 * printed and *out_r stays NULL; else *out_r holds it for the caller to print.
 * On an error answer its message is printed (the JSON too with --json).
 * Returns the exit status. body (JSON) is consumed. */
static int ctl_call(struct ctl *c, const char *method, const char *path, json_t *body, json_t **out_r)
{
	*out_r = NULL;
	char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	int status;
	char *resp;
	int rc = ctl_http(c, method, path, text, &status, &resp);
	if (text != NULL) {
		explicit_bzero(text, strlen(text));
		free(text);
	}
	if (rc < 0)
		return CTL_API_ERROR;
	json_error_t err;
	json_t *j = json_loads(resp, 0, &err);
	if (status / 100 != 2) {
		const char *msg = json_string_value(json_object_get(j, "error"));
		const char *code = json_string_value(json_object_get(j, "code"));
		if (c->json && j != NULL) {
			json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
			fputc('\n', stdout);
		}
		ctl_error("%s (HTTP %d%s%s)", msg != NULL ? msg : resp, status, code != NULL ? ", " : "",
			  code != NULL ? code : "");
		json_decref(j);
		free(resp);
		return CTL_API_ERROR;
	}
	if (j == NULL) {
		ctl_error("the admin API answered HTTP %d with no JSON: %s", status, err.text);
		free(resp);
		return CTL_API_ERROR;
	}
	free(resp);
	if (c->json) {
		json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		fputc('\n', stdout);
		json_decref(j);
		return CTL_OK;
	}
	*out_r = j;
	return CTL_OK;
}

/* ctl_path - "/api/v1/<coll>[/<escaped arg>][/<tail>]" */
static char *ctl_path(const char *coll, const char *arg, const char *tail)
{
	struct ctl_buf b = { 0 };
	buf_printf(&b, "/api/v1/%s", coll);
	if (arg != NULL) {
		buf_add(&b, "/", 1);
		ctl_escape(&b, arg);
	}
	if (tail != NULL)
		buf_printf(&b, "/%s", tail);
	return b.data;
}

/* js - a string member for printing ("-" when missing or null) */
static const char *js(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	return json_is_string(v) ? json_string_value(v) : "-";
}

/* ji - an integer member (0 when missing) */
static long long ji(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

/* ctl_simple - a request whose success is told with one line (`done` gets
 * the answer for its details) */
static int ctl_simple(struct ctl *c, const char *method, char *path, json_t *body,
		      void (*done)(const json_t *answer, void *arg), void *arg)
{
	json_t *o;
	int rc = ctl_call(c, method, path, body, &o);
	free(path);
	if (o != NULL) {
		done(o, arg);
		json_decref(o);
	}
	return rc;
}

/* ------------------------------------------------------------ domain */

static void domain_added(const json_t *o, void *arg)
{
	printf("domain %s added\n", js(o, "name"));
}

static void domain_deleted(const json_t *o, void *arg)
{
	printf("domain %s deleted (%lld accounts, %lld aliases removed)\n", js(o, "name"),
	       ji(o, "accounts_deleted"), ji(o, "aliases_deleted"));
}

static void domain_listed(const json_t *o, void *arg)
{
	const json_t *list = json_object_get(o, "domains");
	size_t i;
	const json_t *d;
	printf("%-40s %9s %8s  %s\n", "DOMAIN", "ACCOUNTS", "ALIASES", "CREATED");
	json_array_foreach(list, i, d)
		printf("%-40s %9lld %8lld  %.19s\n", js(d, "name"), ji(d, "accounts"), ji(d, "aliases"),
		       js(d, "created_at"));
}

/* cmd_domain - domain add|list|del */
static int cmd_domain(struct ctl *c)
{
	const char *sub = c->nargs > 1 ? c->args[1] : "";
	int rc;
	if (strcmp(sub, "add") == 0) {
		if (c->nargs != 3)
			return ctl_usage("usage: mailctl domain add NAME");
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		return ctl_simple(c, "POST", ctl_path("domains", NULL, NULL),
				  json_pack("{ss}", "name", c->args[2]), domain_added, NULL);
	}
	if (strcmp(sub, "list") == 0) {
		if (c->nargs != 2)
			return ctl_usage("usage: mailctl domain list");
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		return ctl_simple(c, "GET", ctl_path("domains", NULL, NULL), NULL, domain_listed, NULL);
	}
	if (strcmp(sub, "del") == 0 || strcmp(sub, "delete") == 0) {
		if (c->nargs != 3)
			return ctl_usage("usage: mailctl domain del NAME");
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		return ctl_simple(c, "DELETE", ctl_path("domains", c->args[2], NULL), NULL, domain_deleted, NULL);
	}
	return ctl_usage("usage: mailctl domain add|list|del ...");
}

/* ------------------------------------------------------------ account */

static void account_created(const json_t *o, void *arg)
{
	printf("account %s created (mailboxes:", js(o, "address"));
	size_t i;
	const json_t *m;
	json_array_foreach(json_object_get(o, "mailboxes"), i, m)
		printf(" %s", json_string_value(m));
	printf(")\n");
}

static void account_updated(const json_t *o, void *arg)
{
	printf("account %s updated\n", js(o, "address"));
}

static void account_deleted(const json_t *o, void *arg)
{
	char b[32];
	printf("account %s deleted (%lld messages, %s bytes removed)\n", js(o, "address"),
	       ji(o, "messages_deleted"), ctl_human_size(ji(o, "bytes_deleted"), b, sizeof(b)));
}

/* account_quota - "used / quota" */
static const char *account_quota(const json_t *a, char *buf, size_t size)
{
	char u[32], q[32];
	long long quota = ji(a, "quota_bytes");
	snprintf(buf, size, "%s/%s", ctl_human_size(ji(a, "used_bytes"), u, sizeof(u)),
		 quota ? ctl_human_size(quota, q, sizeof(q)) : "unlimited");
	return buf;
}

static void account_shown(const json_t *a, void *arg)
{
	char b[80];
	printf("address:        %s\n", js(a, "address"));
	printf("domain:         %s\n", js(a, "domain"));
	printf("status:         %s\n", json_is_true(json_object_get(a, "disabled")) ? "disabled" : "enabled");
	printf("storage:        %s\n", account_quota(a, b, sizeof(b)));
	long long qm = ji(a, "quota_messages");
	printf("messages:       %lld/", ji(a, "used_messages"));
	if (qm)
		printf("%lld\n", qm);
	else
		printf("unlimited\n");
	printf("password:       %s\n", js(a, "password_scheme"));
	printf("created:        %s\n", js(a, "created_at"));
	printf("mailboxes:\n");
	size_t i;
	const json_t *m;
	json_array_foreach(json_object_get(a, "mailboxes"), i, m) {
		const json_t *su = json_array_get(json_object_get(m, "special_use"), 0);
		printf("  %-30s %-9s %7lld messages %7lld unseen %8s\n", js(m, "name"),
		       json_is_string(su) ? json_string_value(su) : "", ji(m, "messages"), ji(m, "unseen"),
		       ctl_human_size(ji(m, "bytes"), b, sizeof(b)));
	}
}

/* account_fields - --password/--password-hash/--quota/--quota-messages/--disable
 * into body; false after a usage error (*rc_r) */
static bool account_fields(struct ctl *c, json_t *body, bool need_password, int *rc_r)
{
	bool has_pw, has_hash, has_q, has_qb, has_qm, dis, en;
	const char *pw = ctl_opt(c, "password", &has_pw);
	const char *hash = ctl_opt(c, "password-hash", &has_hash);
	const char *q = ctl_opt(c, "quota", &has_q);
	const char *qb = ctl_opt(c, "quota-bytes", &has_qb);
	const char *qm = ctl_opt(c, "quota-messages", &has_qm);
	ctl_opt(c, "disable", &dis);
	ctl_opt(c, "enable", &en);
	if ((*rc_r = ctl_opts_all_used(c)) != CTL_OK)
		return false;
	if (has_pw && has_hash) {
		*rc_r = ctl_usage("give --password or --password-hash, not both");
		return false;
	}
	if ((has_pw && pw == NULL) || (has_hash && (hash == NULL || *hash == '\0'))) {
		*rc_r = ctl_usage("--password=P (or - for standard input), --password-hash=H");
		return false;
	}
	if (has_q && has_qb) {
		*rc_r = ctl_usage("give --quota or --quota-bytes, not both");
		return false;
	}
	if (dis && en) {
		*rc_r = ctl_usage("--disable or --enable, not both");
		return false;
	}
	if (has_q || has_qb) {
		long long v = ctl_parse_size(has_q ? q : qb);
		if (v < 0) {
			*rc_r = ctl_usage("bad quota '%s' (bytes, or with K, M, G, T; 0 = unlimited)",
					  has_q ? (q ? q : "") : (qb ? qb : ""));
			return false;
		}
		json_object_set_new(body, "quota_bytes", json_integer(v));
	}
	if (has_qm) {
		char *end;
		long long v = qm != NULL ? strtoll(qm, &end, 10) : -1;
		if (qm == NULL || *qm == '\0' || *end != '\0' || v < 0) {
			*rc_r = ctl_usage("bad --quota-messages (a count; 0 = unlimited)");
			return false;
		}
		json_object_set_new(body, "quota_messages", json_integer(v));
	}
	if (dis || en)
		json_object_set_new(body, "disabled", json_boolean(dis));
	/* last: a password prompt only once everything else is known to be fine */
	if (has_hash) {
		json_object_set_new(body, "password_hash", json_string(hash));
	} else if (has_pw || need_password) {
		if (pw == NULL || strcmp(pw, "-") == 0) {
			char *line = ctl_read_password(true);
			if (line == NULL) {
				*rc_r = CTL_API_ERROR;
				return false;
			}
			json_object_set_new(body, "password", json_string(line));
			explicit_bzero(line, strlen(line));
			free(line);
		} else {
			json_object_set_new(body, "password", json_string(pw));
		}
		if (json_object_get(body, "password") == NULL) {
			*rc_r = ctl_usage("the password is not UTF-8");
			return false;
		}
	}
	return true;
}

/* account_list - every page (the API pages by ?after=) */
static int account_list(struct ctl *c)
{
	const char *domain = ctl_opt(c, "domain", NULL);
	int rc = ctl_opts_all_used(c);
	if (rc != CTL_OK)
		return rc;
	json_t *all = json_array();
	char *after = NULL;
	for (;;) {
		struct ctl_buf p = { 0 };
		buf_printf(&p, "/api/v1/accounts?limit=1000");
		if (domain != NULL) {
			buf_printf(&p, "&domain=");
			ctl_escape(&p, domain);
		}
		if (after != NULL) {
			buf_printf(&p, "&after=");
			ctl_escape(&p, after);
		}
		bool was_json = c->json;
		c->json = false; /* gather the pages, print once */
		json_t *o;
		rc = ctl_call(c, "GET", p.data, NULL, &o);
		c->json = was_json;
		free(p.data);
		free(after);
		after = NULL;
		if (rc != CTL_OK) {
			json_decref(all);
			return rc;
		}
		json_array_extend(all, json_object_get(o, "accounts"));
		if (json_is_string(json_object_get(o, "next")))
			after = strdup(json_string_value(json_object_get(o, "next")));
		json_decref(o);
		if (after == NULL)
			break;
	}
	if (c->json) {
		json_t *o = json_pack("{so, sn}", "accounts", all, "next");
		json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		fputc('\n', stdout);
		json_decref(o);
		return CTL_OK;
	}
	printf("%-40s %-24s %10s  %s\n", "ACCOUNT", "STORAGE", "MESSAGES", "STATUS");
	size_t i;
	json_t *a;
	json_array_foreach(all, i, a) {
		char b[80];
		printf("%-40s %-24s %10lld  %s\n", js(a, "address"), account_quota(a, b, sizeof(b)),
		       ji(a, "used_messages"), json_is_true(json_object_get(a, "disabled")) ? "disabled" : "enabled");
	}
	json_decref(all);
	return CTL_OK;
}

/* cmd_account - account add|list|show|set|del */
static int cmd_account(struct ctl *c)
{
	const char *sub = c->nargs > 1 ? c->args[1] : "";
	int rc;
	if (strcmp(sub, "add") == 0) {
		if (c->nargs != 3)
			return ctl_usage("usage: mailctl account add ADDRESS [--password=P|-] [--password-hash=H] "
					 "[--quota=SIZE] [--quota-messages=N]");
		bool dis, en;
		ctl_opt(c, "disable", &dis);
		ctl_opt(c, "enable", &en);
		if (dis || en)
			return ctl_usage("account add takes no --disable/--enable (use account set)");
		json_t *body = json_pack("{ss}", "address", c->args[2]);
		if (!account_fields(c, body, true, &rc)) {
			json_decref(body);
			return rc;
		}
		return ctl_simple(c, "POST", ctl_path("accounts", NULL, NULL), body, account_created, NULL);
	}
	if (strcmp(sub, "list") == 0) {
		if (c->nargs != 2)
			return ctl_usage("usage: mailctl account list [--domain=D]");
		return account_list(c);
	}
	if (strcmp(sub, "show") == 0) {
		if (c->nargs != 3)
			return ctl_usage("usage: mailctl account show ADDRESS");
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		return ctl_simple(c, "GET", ctl_path("accounts", c->args[2], NULL), NULL, account_shown, NULL);
	}
	if (strcmp(sub, "set") == 0) {
		if (c->nargs != 3)
			return ctl_usage("usage: mailctl account set ADDRESS [--password=P|-] [--password-hash=H] "
					 "[--quota=SIZE] [--quota-messages=N] [--disable|--enable]");
		json_t *body = json_object();
		if (!account_fields(c, body, false, &rc)) {
			json_decref(body);
			return rc;
		}
		if (json_object_size(body) == 0) {
			json_decref(body);
			return ctl_usage("nothing to change: --password, --password-hash, --quota, "
					 "--quota-messages, --disable or --enable");
		}
		return ctl_simple(c, "PATCH", ctl_path("accounts", c->args[2], NULL), body, account_updated, NULL);
	}
	if (strcmp(sub, "del") == 0 || strcmp(sub, "delete") == 0) {
		if (c->nargs != 3)
			return ctl_usage("usage: mailctl account del ADDRESS");
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		return ctl_simple(c, "DELETE", ctl_path("accounts", c->args[2], NULL), NULL, account_deleted, NULL);
	}
	return ctl_usage("usage: mailctl account add|list|show|set|del ...");
}

/* ------------------------------------------------------------ alias */

/* alias_print - "address -> t1, t2" */
static void alias_print(const json_t *a, void *arg)
{
	const char *verb = arg;
	printf("%s%s%s -> ", verb != NULL ? "alias " : "", js(a, "address"), verb != NULL ? verb : "");
	size_t i;
	const json_t *t;
	json_array_foreach(json_object_get(a, "targets"), i, t)
		printf("%s%s", i ? ", " : "", json_string_value(t));
	printf("\n");
}

static void alias_listed(const json_t *o, void *arg)
{
	size_t i;
	const json_t *a;
	json_array_foreach(json_object_get(o, "aliases"), i, a)
		alias_print(a, NULL);
}

static void alias_deleted(const json_t *o, void *arg)
{
	printf("alias %s deleted\n", js(o, "address"));
}

/* cmd_alias - alias add|list|show|del */
static int cmd_alias(struct ctl *c)
{
	const char *sub = c->nargs > 1 ? c->args[1] : "";
	int rc;
	if (strcmp(sub, "add") == 0) {
		if (c->nargs < 4)
			return ctl_usage("usage: mailctl alias add ADDRESS TARGET...");
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		json_t *targets = json_array();
		for (int i = 3; i < c->nargs; i++)
			json_array_append_new(targets, json_string(c->args[i]));
		return ctl_simple(c, "POST", ctl_path("aliases", NULL, NULL),
				  json_pack("{ss, so}", "address", c->args[2], "targets", targets), alias_print,
				  (void *)" created");
	}
	if (strcmp(sub, "list") == 0) {
		if (c->nargs != 2)
			return ctl_usage("usage: mailctl alias list [--domain=D]");
		const char *domain = ctl_opt(c, "domain", NULL);
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		struct ctl_buf p = { 0 };
		buf_printf(&p, "/api/v1/aliases");
		if (domain != NULL) {
			buf_printf(&p, "?domain=");
			ctl_escape(&p, domain);
		}
		return ctl_simple(c, "GET", p.data, NULL, alias_listed, NULL);
	}
	if (strcmp(sub, "show") == 0) {
		if (c->nargs != 3)
			return ctl_usage("usage: mailctl alias show ADDRESS");
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		return ctl_simple(c, "GET", ctl_path("aliases", c->args[2], NULL), NULL, alias_print, NULL);
	}
	if (strcmp(sub, "del") == 0 || strcmp(sub, "delete") == 0) {
		if (c->nargs != 3)
			return ctl_usage("usage: mailctl alias del ADDRESS");
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		return ctl_simple(c, "DELETE", ctl_path("aliases", c->args[2], NULL), NULL, alias_deleted, NULL);
	}
	return ctl_usage("usage: mailctl alias add|list|show|del ...");
}

/* ------------------------------------------------------------ queue */

static void queue_listed(const json_t *o, void *arg)
{
	const json_t *counts = json_object_get(o, "counts");
	const char *k;
	const json_t *v;
	printf("queue:");
	if (json_object_size(counts) == 0)
		printf(" empty");
	json_object_foreach((json_t *)counts, k, v)
		printf(" %s=%lld", k, (long long)json_integer_value(v));
	printf("\n");
	const json_t *list = json_object_get(o, "queue");
	if (json_array_size(list) == 0)
		return;
	printf("%-8s %-9s %4s  %-19s  %-30s %-30s %s\n", "ID", "STATUS", "TRY", "NEXT ATTEMPT", "FROM", "TO",
	       "LAST ERROR");
	size_t i;
	const json_t *q;
	json_array_foreach(list, i, q) {
		const char *from = js(q, "mail_from");
		printf("%-8lld %-9s %4lld  %.19s  %-30s %-30s %s\n", ji(q, "id"), js(q, "status"),
		       ji(q, "attempts"), js(q, "next_attempt_at"), from[0] ? from : "<>", js(q, "rcpt"),
		       js(q, "last_error"));
	}
}

static void queue_retried(const json_t *o, void *arg)
{
	printf("queue entry %lld: next attempt now\n", ji(o, "id"));
}

static void queue_deleted(const json_t *o, void *arg)
{
	printf("queue entry %lld (to %s) deleted\n", ji(o, "id"), js(o, "rcpt"));
}

/* cmd_queue - queue list|retry|del */
static int cmd_queue(struct ctl *c)
{
	const char *sub = c->nargs > 1 ? c->args[1] : "";
	int rc;
	if (strcmp(sub, "list") == 0) {
		if (c->nargs != 2)
			return ctl_usage("usage: mailctl queue list [--status=S] [--limit=N]");
		const char *status = ctl_opt(c, "status", NULL);
		const char *limit = ctl_opt(c, "limit", NULL);
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		struct ctl_buf p = { 0 };
		buf_printf(&p, "/api/v1/queue");
		char sep = '?';
		if (status != NULL) {
			buf_printf(&p, "%cstatus=", sep);
			ctl_escape(&p, status);
			sep = '&';
		}
		if (limit != NULL) {
			buf_printf(&p, "%climit=", sep);
			ctl_escape(&p, limit);
		}
		return ctl_simple(c, "GET", p.data, NULL, queue_listed, NULL);
	}
	if (strcmp(sub, "retry") == 0 || strcmp(sub, "del") == 0 || strcmp(sub, "delete") == 0) {
		bool retry = strcmp(sub, "retry") == 0;
		if (c->nargs != 3)
			return ctl_usage("usage: mailctl queue %s ID", retry ? "retry" : "del");
		if ((rc = ctl_opts_all_used(c)) != CTL_OK)
			return rc;
		if (retry)
			return ctl_simple(c, "POST", ctl_path("queue", c->args[2], "retry"), NULL, queue_retried, NULL);
		return ctl_simple(c, "DELETE", ctl_path("queue", c->args[2], NULL), NULL, queue_deleted, NULL);
	}
	return ctl_usage("usage: mailctl queue list|retry|del ...");
}

/* ------------------------------------------------------------ cluster */

/* cluster_members - the lines of a registry list (or its status object) */
static void cluster_members(const char *title, const json_t *v)
{
	printf("%-10s", title);
	if (json_is_object(v)) {
		printf("%s\n", js(v, "status"));
		const json_t *nodes = json_object_get(v, "nodes");
		if (nodes == NULL)
			return;
		v = nodes;
	} else {
		printf("%zu up\n", json_array_size(v));
	}
	size_t i;
	const json_t *m;
	json_array_foreach(v, i, m) {
		const json_t *ago = json_object_get(m, "seen_ago_s");
		printf("  %-24s %-22s %-12s %s", js(m, "node_id"), js(m, "address"), js(m, "version"),
		       js(m, "status"));
		if (json_is_number(ago))
			printf(" (seen %.1fs ago)", json_number_value(ago));
		printf("\n");
	}
}

static void cluster_shown(const json_t *o, void *arg)
{
	const json_t *r = json_object_get(o, "router");
	printf("%-10s%s %s, schema %lld, gRPC %s, up %.0fs\n", "router", js(r, "node_id"), js(r, "version"),
	       ji(r, "schema_version"), js(r, "address"), json_number_value(json_object_get(r, "uptime_s")));
	const json_t *db = json_object_get(o, "database");
	const json_t *pool = json_object_get(db, "pool");
	printf("%-10s%s", "database", js(db, "status"));
	if (strcmp(js(db, "status"), "up") == 0)
		printf(", %s, schema %lld, PostgreSQL %s", js(db, "role"), ji(db, "schema_version"),
		       js(db, "server_version"));
	else
		printf(" (%s)", js(db, "error"));
	printf(", pool %lld/%lld ready\n", ji(pool, "ready"), ji(pool, "connections"));
	const json_t *q = json_object_get(o, "store_quorum");
	printf("%-10s%lld of %zu up, R=%lld W=%lld: %s\n", "stores", ji(q, "up"),
	       json_array_size(json_object_get(o, "stores")), ji(q, "replicas"), ji(q, "write_quorum"),
	       json_is_true(json_object_get(q, "writable")) ? "writable" : "NOT writable");
	size_t i;
	const json_t *s;
	json_array_foreach(json_object_get(o, "stores"), i, s)
		printf("  %-24s %-22s %s\n", js(s, "name"), js(s, "address"), js(s, "status"));
	cluster_members("routers", json_object_get(o, "routers"));
	cluster_members("frontends", json_object_get(o, "frontends"));
	const json_t *dnsd = json_object_get(o, "dnsd");
	cluster_members("dnsd", dnsd);
}

/* cmd_cluster - cluster */
static int cmd_cluster(struct ctl *c)
{
	if (c->nargs != 1)
		return ctl_usage("usage: mailctl cluster");
	int rc = ctl_opts_all_used(c);
	if (rc != CTL_OK)
		return rc;
	return ctl_simple(c, "GET", ctl_path("cluster", NULL, NULL), NULL, cluster_shown, NULL);
}

/* ------------------------------------------------------------ migrate */

/* cmd_migrate - migrate --db=CONNINFO [--status]: straight to PostgreSQL */
static int cmd_migrate(struct ctl *c)
{
	bool status;
	const char *db = ctl_opt(c, "db", NULL);
	ctl_opt(c, "status", &status);
	int rc = ctl_opts_all_used(c);
	if (rc != CTL_OK)
		return rc;
	if (c->nargs != 1)
		return ctl_usage("usage: mailctl migrate --db=CONNINFO [--status]");
	if (db == NULL)
		db = getenv("MAIL_DB");
	if (db == NULL || *db == '\0')
		return ctl_usage("migrate needs --db=CONNINFO (or $MAIL_DB)");
	const char *err;
	int before = 0, after = 0;
	if (migrate_db_version(db, &before, &err) < 0)
		return ctl_error("%s", err);
	if (status) {
		if (c->json)
			printf("{\"database_version\": %d, \"binary_version\": %d}\n", before, migrate_latest());
		else
			printf("schema version %d; this mailctl knows %d%s\n", before, migrate_latest(),
			       before < migrate_latest() ? " (migrations pending)"
			       : before > migrate_latest() ? " (the database is NEWER than this mailctl)" : "");
		return CTL_OK;
	}
	if (migrate_run(db, &err) < 0)
		return ctl_error("migration failed: %s", err);
	if (migrate_db_version(db, &after, &err) < 0)
		return ctl_error("%s", err);
	if (c->json)
		printf("{\"version_before\": %d, \"version\": %d, \"applied\": %d}\n", before, after, after - before);
	else if (after == before)
		printf("schema already at version %d\n", after);
	else
		printf("schema migrated from version %d to %d\n", before, after);
	return CTL_OK;
}

/* ------------------------------------------------------------ main */

/* ctl_load_token - --token, --token-file, $MAIL_ADMIN_TOKEN, var/admin.token */
static int ctl_load_token(struct ctl *c)
{
	bool has_t, has_f;
	const char *t = ctl_opt(c, "token", &has_t);
	const char *f = ctl_opt(c, "token-file", &has_f);
	if (has_t && has_f)
		return ctl_usage("give --token or --token-file, not both");
	if (has_t) {
		if (t == NULL || *t == '\0')
			return ctl_usage("--token=T");
		c->token = strdup(t);
		return CTL_OK;
	}
	if (!has_f && getenv("MAIL_ADMIN_TOKEN") != NULL && getenv("MAIL_ADMIN_TOKEN")[0] != '\0') {
		c->token = strdup(getenv("MAIL_ADMIN_TOKEN"));
		return CTL_OK;
	}
	if (has_f && (f == NULL || *f == '\0'))
		return ctl_usage("--token-file=FILE");
	const char *path = has_f ? f : CTL_DEFAULT_TOKEN_FILE;
	FILE *fp = fopen(path, "r");
	if (fp == NULL)
		return ctl_usage("no admin token: cannot read %s (%s); give --token, --token-file or "
				 "$MAIL_ADMIN_TOKEN", path, strerror(errno));
	char line[512];
	bool ok = fgets(line, sizeof(line), fp) != NULL;
	fclose(fp);
	size_t n = ok ? strcspn(line, "\r\n") : 0;
	line[n] = '\0';
	if (n == 0)
		return ctl_usage("the token file %s is empty", path);
	c->token = strdup(line);
	explicit_bzero(line, sizeof(line));
	return CTL_OK;
}

int main(int argc, char **argv)
{
	static struct ctl ctl;
	struct ctl *c = &ctl;
	log_init("mailctl", LOG_LEVEL_WARN);
	bool only_args = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!only_args && strcmp(a, "--") == 0) {
			only_args = true;
		} else if (!only_args && strncmp(a, "--", 2) == 0) {
			if (c->nopts == CTL_MAX_OPTS)
				return ctl_usage("too many options");
			const char *eq = strchr(a + 2, '=');
			struct ctl_opt *o = &c->opts[c->nopts++];
			o->name = eq != NULL ? strndup(a + 2, (size_t)(eq - a - 2)) : a + 2;
			o->value = eq != NULL ? eq + 1 : NULL;
		} else {
			if (c->nargs == CTL_MAX_ARGS)
				return ctl_usage("too many arguments");
			c->args[c->nargs++] = a;
		}
	}
	bool flag;
	ctl_opt(c, "help", &flag);
	if (flag || (c->nargs > 0 && strcmp(c->args[0], "help") == 0)) {
		fputs(ctl_usage_text, stdout);
		return CTL_OK;
	}
	ctl_opt(c, "version", &flag);
	if (flag) {
		printf("mailctl %s (schema %d)\n", MAIL_VERSION, migrate_latest());
		return CTL_OK;
	}
	ctl_opt(c, "json", &c->json);
	if (c->nargs == 0) {
		fputs(ctl_usage_text, stderr);
		return CTL_USAGE;
	}
	const char *cmd = c->args[0];
	if (strcmp(cmd, "migrate") == 0) {
		/* talks to PostgreSQL itself: no API, no token */
		log_set_level(LOG_LEVEL_INFO);
		return cmd_migrate(c);
	}
	int (*run)(struct ctl *) = NULL;
	if (strcmp(cmd, "domain") == 0)
		run = cmd_domain;
	else if (strcmp(cmd, "account") == 0)
		run = cmd_account;
	else if (strcmp(cmd, "alias") == 0)
		run = cmd_alias;
	else if (strcmp(cmd, "queue") == 0)
		run = cmd_queue;
	else if (strcmp(cmd, "cluster") == 0)
		run = cmd_cluster;
	else
		return ctl_usage("unknown command '%s'", cmd);

	bool has_api;
	c->api = ctl_opt(c, "api", &has_api);
	if (has_api && (c->api == NULL || *c->api == '\0'))
		return ctl_usage("--api=URL");
	if (c->api == NULL)
		c->api = getenv("MAIL_API") != NULL && getenv("MAIL_API")[0] != '\0' ? getenv("MAIL_API")
										  : CTL_DEFAULT_API;
	int rc = ctl_parse_api(c);
	if (rc == CTL_OK)
		rc = ctl_load_token(c);
	if (rc == CTL_OK)
		rc = run(c);
	if (c->token != NULL) {
		explicit_bzero(c->token, strlen(c->token));
		free(c->token);
	}
	fflush(stdout);
	return rc;
}
