/* rt_admin.c - the admin API (HTTP/JSON, DESIGN.md "Admin API (contract)") and
 * the router's heartbeat in the cluster registry.
 *
 * Everything here runs on the router's MAIN loop: the routes hang off the
 * admin httpd (lib/httpd.c, evhttp) that main.c creates on that loop, and the
 * SQL goes through the main loop's db pool. Password hashing (Argon2id) and
 * the validation of imported hashes run on rt->hashers, never on the loop.
 *
 * Ownership. struct admin (one per process, in the main loop's module slot)
 * owns every live request (struct admin_req, a list). A request owns its
 * parsed body, its scratch strings and its one db request in flight; it ends
 * in exactly one reply (admin_reply_*), which frees it. Hash jobs outlive
 * nothing: they carry the request's id, and their completion looks the
 * request up by id, so a completion for a request that has gone (shutdown) is
 * dropped quietly. At loop_fini the requests still open are answered 503 and
 * freed; evhttp frees its own request objects when the httpd goes.
 *
 * The heartbeat: every ADMIN_HEARTBEAT_MS the router upserts its row in
 * cluster_members (migration 0002); GET /api/v1/cluster lists the members
 * seen in the last 30 s (routers now; front-ends and dnsd when they come).
 *
 * docs/admin-api.md documents the routes, bodies and error codes. */
#include "lib/common.h"
#include "router/router.h"
#include "router/migrate.h"
#include "lib/config.h"
#include "lib/httpd.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/workpool.h"
#include "lib/xalloc.h"
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#ifndef MAIL_VERSION
#define MAIL_VERSION "0.1.0-dev"
#endif

#define ADMIN_SLOT 5
#define ADMIN_PREFIX "/api/v1/"
#define ADMIN_MAX_BODY (64 * 1024)         /* larger request bodies: 413 */
#define ADMIN_MAX_SEGMENTS 4               /* /api/v1/queue/{id}/retry */
#define ADMIN_HEARTBEAT_MS 5000            /* cluster_members upsert period */
#define ADMIN_CLUSTER_TIMEOUT_MS 3000      /* GET /cluster answers even with the db down */
#define ADMIN_LIST_DEFAULT 1000            /* ?limit= of the list routes */
#define ADMIN_LIST_MAX 10000
#define ADMIN_PASSWORD_MIN 8               /* bytes */
#define ADMIN_MAX_TARGETS 1000             /* targets of one alias */
#define ADMIN_MAX_QUOTA (1LL << 53)        /* JSON-safe integers */
#define ADMIN_ADDRESS_MAX 254              /* RFC 5321 path limit less the brackets */

enum admin_method { ADMIN_GET, ADMIN_POST, ADMIN_PATCH, ADMIN_DELETE, ADMIN_NMETHODS };
static const char *const admin_method_names[ADMIN_NMETHODS] = { "GET", "POST", "PATCH", "DELETE" };

struct admin_req;
typedef void admin_handler(struct admin_req *r);
/* what a hash job hands back: the hash to store, or NULL with error */
typedef void admin_after_hash(struct admin_req *r, const char *hash, const char *error);

struct admin {
	struct router *rt;
	struct rt_loop *loop;
	struct db_pool *db;
	uint8_t token_digest[32];
	struct admin_req *reqs;            /* live requests */
	uint64_t next_id;
	struct event *hb_timer;
	struct db_request *hb_req;
	bool hb_failing;
	char *hb_info;                     /* the heartbeat's info json */
	char hb_started[32];               /* process start, unix seconds */
	struct metric *m_class[6];         /* admin_requests_total by status class */
};

struct admin_req {
	struct admin_req *prev, *next;
	struct admin *ad;
	uint64_t id;
	struct evhttp_request *req;
	enum admin_method method;
	const char *method_name;           /* as received, for the log */
	struct timespec start;
	char *path;                        /* for the log */
	char peer[64];
	char *arg;                         /* decoded path parameter ({name}, {address}, {id}) */
	json_t *body;                      /* POST/PATCH body (an object) */
	struct evkeyvalq query;
	bool query_parsed;
	struct db_request *dbr;            /* the statement in flight */
	const char *obj_kind, *obj_op;     /* admin_exec_object: "account", "account delete" */
	bool hashing;                      /* a hash job carries our id */
	admin_after_hash *after_hash;
	/* operation scratch, as SQL text parameters (NULL = SQL NULL) */
	char *p[6];
	json_t *extra;                     /* reply material known before the db answers */
	int limit;
};

struct admin_hash_job {
	uint64_t req_id;
	bool import;                       /* validate an imported hash instead of hashing */
	char *input;
	size_t len;
	struct password_params params;
	char *hash;                        /* result, or NULL with error */
	const char *error;
};

/* the one admin context of the process (the main loop's); NULL once it is gone,
 * so that a late hash completion is dropped */
static struct admin *admin_self;

/* ------------------------------------------------------------ statements */

#define ACCOUNT_FIELDS \
	"'address', a.address, 'domain', d.name, 'disabled', a.disabled," \
	" 'quota_bytes', a.quota_bytes, 'used_bytes', a.used_bytes," \
	" 'quota_messages', a.quota_messages, 'used_messages', a.used_messages," \
	" 'password_scheme', CASE WHEN left(a.password_hash, 1) = '{'" \
	"   THEN upper(substring(a.password_hash from '^\\{([^}]*)\\}'))" \
	"   ELSE CASE split_part(a.password_hash, '$', 2) WHEN 'argon2id' THEN 'ARGON2ID'" \
	"     WHEN '6' THEN 'SHA512-CRYPT' WHEN '5' THEN 'SHA256-CRYPT' WHEN '2y' THEN 'BLF-CRYPT'" \
	"     WHEN '2b' THEN 'BLF-CRYPT' WHEN '2a' THEN 'BLF-CRYPT' ELSE 'CRYPT' END END," \
	" 'created_at', a.created_at"
#define ACCOUNT_JSON "json_build_object(" ACCOUNT_FIELDS ")"

#define ALIAS_JSON \
	"json_build_object('address', al.address, 'domain', d.name, 'targets', to_json(al.targets)," \
	" 'catch_all', left(al.address, 1) = '@', 'created_at', al.created_at)"

#define QUEUE_JSON \
	"json_build_object('id', q.id, 'status', q.status, 'mail_from', q.mail_from, 'rcpt', q.rcpt," \
	" 'domain', q.domain, 'size', q.size, 'attempts', q.attempts," \
	" 'next_attempt_at', q.next_attempt_at, 'expires_at', q.expires_at, 'last_error', q.last_error," \
	" 'claimed_by', q.claimed_by, 'claimed_until', q.claimed_until," \
	" 'account', (SELECT a.address FROM accounts a WHERE a.id = q.account_id)," \
	" 'blob_id', q.blob_id, 'created_at', q.created_at, 'updated_at', q.updated_at)"

static const struct db_stmt admin_stmts[] = {
	{ "admin_domain_add",
	  "INSERT INTO domains (name) VALUES ($1) ON CONFLICT (name) DO NOTHING "
	  "RETURNING json_build_object('name', name, 'accounts', 0, 'aliases', 0,"
	  " 'created_at', created_at)::text", 1 },
	{ "admin_domain_list",
	  "SELECT coalesce(json_agg(json_build_object('name', d.name,"
	  " 'accounts', (SELECT count(*) FROM accounts a WHERE a.domain_id = d.id),"
	  " 'aliases', (SELECT count(*) FROM aliases al WHERE al.domain_id = d.id),"
	  " 'created_at', d.created_at) ORDER BY d.name), '[]')::text FROM domains d", 0 },
	/* the subqueries read the statement's snapshot: what the cascade removes */
	{ "admin_domain_del",
	  "WITH d AS (DELETE FROM domains WHERE name = $1 RETURNING id, name) "
	  "SELECT json_build_object('name', d.name,"
	  " 'accounts_deleted', (SELECT count(*) FROM accounts a WHERE a.domain_id = d.id),"
	  " 'aliases_deleted', (SELECT count(*) FROM aliases al WHERE al.domain_id = d.id))::text FROM d", 1 },
	{ "admin_account_create",
	  "SELECT result, new_id FROM mail_account_create($1, $2, $3::bigint, $4::bigint)", 4 },
	{ "admin_account_get",
	  "SELECT json_build_object(" ACCOUNT_FIELDS ", 'mailboxes', (SELECT coalesce(json_agg("
	  "json_build_object('name', m.name, 'special_use', to_json(m.special_use),"
	  " 'subscribed', m.subscribed, 'messages', m.message_count, 'unseen', m.unseen_count,"
	  " 'bytes', m.total_bytes) ORDER BY m.name), '[]') FROM mailboxes m WHERE m.account_id = a.id))::text "
	  "FROM accounts a JOIN domains d ON d.id = a.domain_id WHERE a.address = lower($1)", 1 },
	{ "admin_account_list",
	  "SELECT ($1::text IS NULL OR EXISTS (SELECT 1 FROM domains WHERE name = $1::text)),"
	  " (SELECT coalesce(json_agg(x.j ORDER BY x.address), '[]') FROM (SELECT a.address, "
	  ACCOUNT_JSON " AS j FROM accounts a JOIN domains d ON d.id = a.domain_id"
	  " WHERE ($1::text IS NULL OR d.name = $1::text) AND ($2::text IS NULL OR a.address > $2::text)"
	  " ORDER BY a.address LIMIT $3::int) x)::text", 3 },
	{ "admin_account_update",
	  "UPDATE accounts a SET password_hash = coalesce($2::text, a.password_hash),"
	  " quota_bytes = coalesce($3::bigint, a.quota_bytes),"
	  " quota_messages = coalesce($4::bigint, a.quota_messages),"
	  " disabled = coalesce($5::boolean, a.disabled) "
	  "FROM domains d WHERE d.id = a.domain_id AND a.address = lower($1) "
	  "RETURNING " ACCOUNT_JSON "::text", 5 },
	{ "admin_account_del",
	  "DELETE FROM accounts a WHERE a.address = lower($1) "
	  "RETURNING json_build_object('address', a.address, 'messages_deleted', a.used_messages,"
	  " 'bytes_deleted', a.used_bytes)::text", 1 },
	{ "admin_alias_create",
	  "SELECT result, new_id FROM mail_alias_create($1, ARRAY(SELECT jsonb_array_elements_text($2::jsonb)))", 2 },
	{ "admin_alias_get",
	  "SELECT " ALIAS_JSON "::text FROM aliases al JOIN domains d ON d.id = al.domain_id "
	  "WHERE al.address = lower($1)", 1 },
	{ "admin_alias_list",
	  "SELECT ($1::text IS NULL OR EXISTS (SELECT 1 FROM domains WHERE name = $1::text)),"
	  " (SELECT coalesce(json_agg(" ALIAS_JSON " ORDER BY al.address), '[]')"
	  " FROM aliases al JOIN domains d ON d.id = al.domain_id"
	  " WHERE $1::text IS NULL OR d.name = $1::text)::text", 1 },
	{ "admin_alias_del",
	  "DELETE FROM aliases al WHERE al.address = lower($1) "
	  "RETURNING json_build_object('address', al.address, 'targets', to_json(al.targets))::text", 1 },
	{ "admin_queue_list",
	  "SELECT (SELECT coalesce(json_agg(" QUEUE_JSON " ORDER BY q.id), '[]') FROM"
	  " (SELECT * FROM outbound_queue WHERE $1::text IS NULL OR status = $1::text"
	  "  ORDER BY id LIMIT $2::int) q)::text,"
	  " (SELECT coalesce(json_object_agg(s.status, s.n), '{}') FROM"
	  " (SELECT status, count(*) AS n FROM outbound_queue GROUP BY status) s)::text", 2 },
	/* a row being sent under a live lease is left to its runner (409); one whose
	 * runner died (lease over) is put back in the queue */
	{ "admin_queue_retry",
	  "WITH q AS (SELECT id, status, coalesce(claimed_until > now(), false) AS leased"
	  " FROM outbound_queue WHERE id = $1::bigint FOR UPDATE),"
	  " u AS (UPDATE outbound_queue o SET status = 'queued', next_attempt_at = now(),"
	  " claimed_by = NULL, claimed_until = NULL, updated_at = now() FROM q"
	  " WHERE o.id = q.id AND (q.status = 'queued' OR (q.status = 'sending' AND NOT q.leased))"
	  " RETURNING o.id, o.next_attempt_at) "
	  "SELECT q.status, q.leased, (SELECT json_build_object('id', u.id, 'status', 'queued',"
	  " 'next_attempt_at', u.next_attempt_at)::text FROM u) FROM q", 1 },
	{ "admin_queue_del",
	  "WITH q AS (SELECT id, status, coalesce(claimed_until > now(), false) AS leased"
	  " FROM outbound_queue WHERE id = $1::bigint FOR UPDATE),"
	  " d AS (DELETE FROM outbound_queue o USING q WHERE o.id = q.id"
	  " AND NOT (q.status = 'sending' AND q.leased) RETURNING o.id, o.rcpt, o.status) "
	  "SELECT q.status, q.leased, (SELECT json_build_object('id', d.id, 'rcpt', d.rcpt,"
	  " 'status', d.status)::text FROM d) FROM q", 1 },
	{ "admin_cluster",
	  "SELECT pg_is_in_recovery(), coalesce((SELECT max(version) FROM schema_migrations), 0),"
	  " current_setting('server_version'),"
	  " (SELECT coalesce(json_agg(json_build_object('kind', m.kind, 'node_id', m.node_id,"
	  " 'version', m.version, 'address', m.address, 'info', m.info, 'started_at', m.started_at,"
	  " 'seen_at', m.seen_at, 'seen_ago_s', round(extract(epoch FROM now() - m.seen_at)::numeric, 1))"
	  " ORDER BY m.kind, m.node_id), '[]') FROM cluster_members m"
	  " WHERE m.seen_at > now() - interval '30 seconds')::text", 0 },
	{ "admin_heartbeat",
	  "SELECT mail_cluster_heartbeat('router', $1, $2, $3, $4::jsonb, to_timestamp($5::double precision))", 5 },
};

/* ------------------------------------------------------------ validation */

/* admin_utf8_valid - well-formed UTF-8 without control characters (C0, DEL, C1) */
static bool admin_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		unsigned c = p[i];
		if (c < 0x20 || c == 0x7f)
			return false;
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t n;
		if (c >= 0xc2 && c <= 0xdf)
			n = 1;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 3;
		else
			return false;
		if (n >= len - i)
			return false;
		for (size_t k = 1; k <= n; k++)
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
		if ((c == 0xc2 && p[i + 1] < 0xa0) ||                        /* C1 controls */
		    (c == 0xe0 && p[i + 1] < 0xa0) || (c == 0xed && p[i + 1] > 0x9f) || /* overlong, surrogates */
		    (c == 0xf0 && p[i + 1] < 0x90) || (c == 0xf4 && p[i + 1] > 0x8f))
			return false;
		i += n + 1;
	}
	return true;
}

/* admin_domain_check - a domain as the schema stores it: lowercase ASCII
 * letter-digit-hyphen labels (IDNA names in their xn-- form). Lowercases s
 * in place; NULL when fine, else why not. */
static const char *admin_domain_check(char *s)
{
	size_t len = strlen(s);
	if (len == 0)
		return "empty domain";
	if (len > 253)
		return "domain longer than 253 characters";
	size_t label = 0;
	for (size_t i = 0; i <= len; i++) {
		char c = s[i];
		if (c == '.' || c == '\0') {
			if (label == 0)
				return "empty label in domain";
			if (s[i - 1] == '-')
				return "domain label ends with '-'";
			label = 0;
			continue;
		}
		if (c >= 'A' && c <= 'Z')
			s[i] = c = (char)(c - 'A' + 'a');
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
			return "domain may hold letters, digits, '-' and '.' only (IDNA: the xn-- form)";
		if (c == '-' && label == 0)
			return "domain label starts with '-'";
		if (++label > 63)
			return "domain label longer than 63 characters";
	}
	return NULL;
}

/* admin_atext - RFC 5322 atext (ASCII), or a UTF-8 byte (RFC 6531) */
static bool admin_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL || c >= 0x80;
}

/* admin_address_check - local@domain (a dot-atom local part of 1..64 bytes)
 * or, with catch_all, '@domain'. Lowercases ASCII in place (the SQL lowers the
 * rest); NULL when fine, else why not. */
static const char *admin_address_check(char *s, bool catch_all)
{
	size_t len = strlen(s);
	if (len > ADMIN_ADDRESS_MAX)
		return "address longer than 254 characters";
	if (!admin_utf8_valid(s, len))
		return "address is not printable UTF-8";
	char *at = strrchr(s, '@');
	if (at == NULL)
		return "address needs an '@'";
	size_t local = (size_t)(at - s);
	if (local == 0 && !catch_all)
		return "empty local part";
	if (local > 64)
		return "local part longer than 64 characters";
	for (size_t i = 0; i < local; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (i == 0 || i + 1 == local || s[i + 1] == '.')
				return "local part has a leading, trailing or double '.'";
			continue;
		}
		if (!admin_atext(c))
			return "local part may hold letters, digits, '.' and !#$%&'*+-/=?^_`{|}~ only";
		if (c >= 'A' && c <= 'Z')
			s[i] = (char)(c - 'A' + 'a');
	}
	const char *why = admin_domain_check(at + 1);
	return why;
}

/* admin_lookup_ok - a path parameter naming an address or domain to look up:
 * lowercased; false if it cannot name anything (then: 404) */
static bool admin_lookup_ok(char *s)
{
	size_t len = strlen(s);
	if (len == 0 || len > ADMIN_ADDRESS_MAX || !admin_utf8_valid(s, len))
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] >= 'A' && s[i] <= 'Z')
			s[i] = (char)(s[i] - 'A' + 'a');
	return true;
}

/* ------------------------------------------------------------ requests */

/* admin_req_find - the live request with this id, or NULL */
static struct admin_req *admin_req_find(struct admin *ad, uint64_t id)
{
	for (struct admin_req *r = ad->reqs; r != NULL; r = r->next)
		if (r->id == id)
			return r;
	return NULL;
}

/* admin_req_free - unlink and free; cancels the db request in flight (a hash
 * job still running finds no request by its id and drops its result) */
static void admin_req_free(struct admin_req *r)
{
	struct admin *ad = r->ad;
	if (r->dbr != NULL)
		db_request_cancel(&r->dbr);
	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		ad->reqs = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	if (r->query_parsed)
		evhttp_clear_headers(&r->query);
	json_decref(r->body);
	json_decref(r->extra);
	for (size_t i = 0; i < N_ELEMENTS(r->p); i++) {
		if (r->p[i] != NULL) {
			OPENSSL_cleanse(r->p[i], strlen(r->p[i]));
			free(r->p[i]);
		}
	}
	free(r->arg);
	free(r->path);
	free(r);
}

/* admin_reason - the reason phrase of the statuses we send */
static const char *admin_reason(int code)
{
	switch (code) {
	case 200: return "OK";
	case 201: return "Created";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 422: return "Unprocessable Entity";
	case 503: return "Service Unavailable";
	default: return "Internal Server Error";
	}
}

/* admin_reply - send `body` (stolen) with `code`, log the request, free r */
static void admin_reply(struct admin_req *r, int code, json_t *body, const char *errcode)
{
	struct evbuffer *buf = evbuffer_new();
	char *text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
	json_decref(body);
	if (text != NULL) {
		evbuffer_add(buf, text, strlen(text));
		free(text);
	}
	evbuffer_add(buf, "\n", 1);
	struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
	evhttp_add_header(out, "Content-Type", "application/json");
	evhttp_add_header(out, "Cache-Control", "no-store");
	if (code == 503)
		evhttp_add_header(out, "Retry-After", "1");
	evhttp_send_reply(r->req, code, admin_reason(code), buf);
	evbuffer_free(buf);

	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double ms = (double)(now.tv_sec - r->start.tv_sec) * 1e3 +
		    (double)(now.tv_nsec - r->start.tv_nsec) / 1e6;
	/* a change names its object (p[0] is a name, an address or an id; never a secret) */
	char qpath[300], qobj[300] = "";
	if (r->method != ADMIN_GET && r->p[0] != NULL) {
		memcpy(qobj, " object=", 8);
		log_quote(qobj + 8, sizeof(qobj) - 8, r->p[0], strlen(r->p[0]));
	}
	log_info("admin request", "req=%llu method=%s path=%s%s status=%d%s%s peer=%s ms=%.1f",
		 (unsigned long long)r->id, r->method_name,
		 log_quote(qpath, sizeof(qpath), r->path, strlen(r->path)), qobj, code,
		 errcode != NULL ? " code=" : "", errcode != NULL ? errcode : "", r->peer, ms);
	int cls = code / 100;
	if (cls >= 0 && cls < (int)N_ELEMENTS(r->ad->m_class) && r->ad->m_class[cls] != NULL)
		metric_inc(r->ad->m_class[cls]);
	admin_req_free(r);
}

/* admin_fail - a JSON error {"error": text, "code": errcode[, "field": field]} */
static void ATTR_PRINTF(5, 6) admin_fail(struct admin_req *r, int code, const char *errcode,
					 const char *field, const char *fmt, ...)
{
	char text[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	json_t *o = json_object();
	json_t *t = json_string(text); /* NULL if truncation split a UTF-8 sequence */
	json_object_set_new(o, "error", t != NULL ? t : json_string("(message not shown: not UTF-8)"));
	json_object_set_new(o, "code", json_string(errcode));
	if (field != NULL)
		json_object_set_new(o, "field", json_string(field));
	admin_reply(r, code, o, errcode);
}

/* admin_invalid - 422 for one field */
#define admin_invalid(r, field, ...) admin_fail(r, 422, "invalid", field, __VA_ARGS__)

/* admin_db_failed - the answer to a failed statement: 503 when the database
 * gave no definitive answer (saying whether the change may have happened),
 * 409 for a unique violation that raced our checks, else 500 (logged) */
static void admin_db_failed(struct admin_req *r, const struct db_result *res, const char *what)
{
	if (res->status == DB_UNAVAILABLE) {
		if (res->may_have_executed && r->method != ADMIN_GET)
			admin_fail(r, 503, "unavailable", NULL,
				   "database unavailable: the change may or may not have been applied (%s)",
				   res->message);
		else
			admin_fail(r, 503, "unavailable", NULL, "database unavailable (%s)", res->message);
		return;
	}
	if (strcmp(res->sqlstate, "23505") == 0) {
		admin_fail(r, 409, "exists", NULL, "%s: already exists", what);
		return;
	}
	if (strcmp(res->sqlstate, "23503") == 0) {
		admin_fail(r, 409, "conflict", NULL, "%s: a related object changed meanwhile; try again", what);
		return;
	}
	char q[300];
	log_error("admin database error", "req=%llu op=%s sqlstate=%s error=%s",
		  (unsigned long long)r->id, what, res->sqlstate,
		  log_quote(q, sizeof(q), res->message, strlen(res->message)));
	admin_fail(r, 500, "internal", NULL, "%s failed", what);
}

/* admin_exec - run a prepared statement for r; cb gets r */
static void admin_exec(struct admin_req *r, const char *stmt, int n, db_cb *cb)
{
	r->dbr = db_exec(r->ad->db, stmt, n, (const char *const *)r->p, NULL, NULL, 0, cb, r);
}


/* admin_cell_json - a text cell holding JSON (our statements' ::text), parsed;
 * NULL for SQL NULL or garbage */
static json_t *admin_cell_json(const PGresult *res, int row, int col)
{
	if (row >= PQntuples(res) || col >= PQnfields(res) || PQgetisnull(res, row, col))
		return NULL;
	return json_loads(PQgetvalue(res, row, col), 0, NULL);
}

/* admin_reply_cell - 200/201 with the JSON of a cell, optionally wrapped as {key: ...} */
static void admin_reply_cell(struct admin_req *r, int code, const PGresult *res, int row, int col,
			     const char *key)
{
	json_t *v = admin_cell_json(res, row, col);
	if (v == NULL) {
		admin_fail(r, 500, "internal", NULL, "malformed database answer");
		return;
	}
	if (key != NULL)
		v = json_pack("{so}", key, v);
	admin_reply(r, code, v, NULL);
}

/* object_done - one object's JSON in the first cell, or 404 when no row came */
static void object_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	r->dbr = NULL;
	if (res->status != DB_OK)
		admin_db_failed(r, res, r->obj_op);
	else if (PQntuples(res->res) == 0)
		admin_fail(r, 404, "not_found", NULL, "no %s %s", r->obj_kind, r->p[0]);
	else
		admin_reply_cell(r, 200, res->res, 0, 0, NULL);
}

/* admin_exec_object - run a statement answering with one object of `kind`
 * named by p[0] (show, update, delete); op names it in errors */
static void admin_exec_object(struct admin_req *r, const char *stmt, int n, const char *kind,
			      const char *op)
{
	r->obj_kind = kind;
	r->obj_op = op;
	admin_exec(r, stmt, n, object_done);
}

/* admin_query - a query-string parameter, or NULL */
static const char *admin_query(struct admin_req *r, const char *name)
{
	if (!r->query_parsed) {
		const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(r->req);
		const char *q = uri != NULL ? evhttp_uri_get_query(uri) : NULL;
		/* initializes the list; a malformed query leaves it empty */
		evhttp_parse_query_str(q != NULL ? q : "", &r->query);
		r->query_parsed = true;
	}
	return evhttp_find_header(&r->query, name);
}

/* admin_query_limit - ?limit= (default ADMIN_LIST_DEFAULT); false after a 422 */
static bool admin_query_limit(struct admin_req *r)
{
	const char *s = admin_query(r, "limit");
	r->limit = ADMIN_LIST_DEFAULT;
	if (s == NULL)
		return true;
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 1 || v > ADMIN_LIST_MAX) {
		admin_invalid(r, "limit", "limit must be 1..%d", ADMIN_LIST_MAX);
		return false;
	}
	r->limit = (int)v;
	return true;
}

/* admin_fields_known - every key of the body is one of `known` (else 422) */
static bool admin_fields_known(struct admin_req *r, const char *const *known)
{
	const char *key;
	json_t *v;
	json_object_foreach(r->body, key, v) {
		bool ok = false;
		for (size_t i = 0; known[i] != NULL && !ok; i++)
			ok = strcmp(key, known[i]) == 0;
		if (!ok) {
			char q[80];
			admin_invalid(r, key, "unknown field %s", log_quote(q, sizeof(q), key, strlen(key)));
			return false;
		}
	}
	return true;
}

/* admin_body_address - body field `name` as a checked, lowercased address
 * (xstrdup'd into *out_r); false after a 422 */
static bool admin_body_address(struct admin_req *r, const char *name, bool catch_all, char **out_r)
{
	json_t *v = json_object_get(r->body, name);
	if (!json_is_string(v)) {
		admin_invalid(r, name, "%s must be a string", name);
		return false;
	}
	if (json_string_length(v) != strlen(json_string_value(v))) {
		admin_invalid(r, name, "%s holds a NUL", name);
		return false;
	}
	char *s = xstrdup(json_string_value(v));
	const char *why = admin_address_check(s, catch_all);
	if (why != NULL) {
		free(s);
		admin_invalid(r, name, "bad %s: %s", name, why);
		return false;
	}
	*out_r = s;
	return true;
}

/* admin_body_count - optional non-negative integer field as text (NULL when
 * absent); false after a 422 */
static bool admin_body_count(struct admin_req *r, const char *name, char **out_r)
{
	json_t *v = json_object_get(r->body, name);
	*out_r = NULL;
	if (v == NULL)
		return true;
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > ADMIN_MAX_QUOTA) {
		admin_invalid(r, name, "%s must be an integer 0..2^53 (0 = unlimited)", name);
		return false;
	}
	*out_r = xasprintf("%lld", (long long)json_integer_value(v));
	return true;
}

/* ------------------------------------------------------------ hashing */

/* hash_work - on a hasher thread: hash the password or validate the import */
static void hash_work(void *arg)
{
	struct admin_hash_job *job = arg;
	if (job->import) {
		if (password_hash_valid(job->input))
			job->hash = xstrdup(job->input);
		else
			job->error = "password_hash is not a hash this server can verify "
				     "(argon2id, {SHA512-CRYPT}, {SHA256-CRYPT}, {BLF-CRYPT}, {CRYPT})";
	} else {
		job->hash = password_hash(job->input, job->len, &job->params, &job->error);
	}
	OPENSSL_cleanse(job->input, job->len);
}

/* hash_done - back on the main loop: hand the result to the request if it lives */
static void hash_done(void *arg)
{
	struct admin_hash_job *job = arg;
	struct admin_req *r = admin_self != NULL ? admin_req_find(admin_self, job->req_id) : NULL;
	if (r != NULL) {
		r->hashing = false;
		r->after_hash(r, job->hash, job->error != NULL ? job->error : "hashing failed");
	}
	if (job->hash != NULL) {
		OPENSSL_cleanse(job->hash, strlen(job->hash));
		free(job->hash);
	}
	free(job->input);
	free(job);
}

/* admin_hash_start - hash `secret` (or validate it as an imported hash) off the
 * loop, then call after(r, ...); false after a 503 (the pool is full) */
static bool admin_hash_start(struct admin_req *r, const char *secret, size_t len, bool import,
			     admin_after_hash *after)
{
	struct admin_hash_job *job = XNEW(struct admin_hash_job);
	job->req_id = r->id;
	job->import = import;
	job->input = xmemdup(secret, len + 1);
	job->len = len;
	job->params = r->ad->rt->pw_params;
	r->after_hash = after;
	if (workpool_submit(r->ad->rt->hashers, r->ad->loop->base, hash_work, hash_done, job) < 0) {
		OPENSSL_cleanse(job->input, len);
		free(job->input);
		free(job);
		admin_fail(r, 503, "busy", NULL, "password hashing is saturated; try again");
		return false;
	}
	r->hashing = true;
	return true;
}

/* admin_body_secret - the password / password_hash pair of a body: exactly one
 * (or, when optional, none: *present_r false). On success *secret_r borrows the
 * string; false after a 422. */
static bool admin_body_secret(struct admin_req *r, bool optional, bool *present_r,
			      const char **secret_r, size_t *len_r, bool *import_r)
{
	json_t *pw = json_object_get(r->body, "password");
	json_t *ph = json_object_get(r->body, "password_hash");
	*present_r = false;
	if (pw != NULL && ph != NULL) {
		admin_invalid(r, "password", "give password or password_hash, not both");
		return false;
	}
	if (pw == NULL && ph == NULL) {
		if (optional)
			return true;
		admin_invalid(r, "password", "password (or password_hash for an import) is required");
		return false;
	}
	json_t *v = pw != NULL ? pw : ph;
	const char *field = pw != NULL ? "password" : "password_hash";
	if (!json_is_string(v)) {
		admin_invalid(r, field, "%s must be a string", field);
		return false;
	}
	size_t len = json_string_length(v);
	const char *s = json_string_value(v);
	if (memchr(s, '\0', len) != NULL) {
		admin_invalid(r, field, "%s holds a NUL", field);
		return false;
	}
	if (pw != NULL && len < ADMIN_PASSWORD_MIN) {
		admin_invalid(r, field, "password too short (at least %d bytes)", ADMIN_PASSWORD_MIN);
		return false;
	}
	if (len > PASSWORD_MAX_LEN) {
		admin_invalid(r, field, "%s too long (at most %d bytes)", field, PASSWORD_MAX_LEN);
		return false;
	}
	if (ph != NULL && !admin_utf8_valid(s, len)) {
		admin_invalid(r, field, "password_hash holds control characters");
		return false;
	}
	*present_r = true;
	*secret_r = s;
	*len_r = len;
	*import_r = ph != NULL;
	return true;
}

/* ------------------------------------------------------------ domains */

static void domain_add_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	r->dbr = NULL;
	if (res->status != DB_OK) {
		admin_db_failed(r, res, "domain add");
		return;
	}
	if (PQntuples(res->res) == 0) {
		admin_fail(r, 409, "exists", "name", "domain %s exists", r->p[0]);
		return;
	}
	admin_reply_cell(r, 201, res->res, 0, 0, NULL);
}

/* h_domain_add - POST /api/v1/domains {"name"} */
static void h_domain_add(struct admin_req *r)
{
	static const char *const known[] = { "name", NULL };
	if (!admin_fields_known(r, known))
		return;
	json_t *v = json_object_get(r->body, "name");
	if (!json_is_string(v) || json_string_length(v) != strlen(json_string_value(v))) {
		admin_invalid(r, "name", "name must be a string");
		return;
	}
	r->p[0] = xstrdup(json_string_value(v));
	const char *why = admin_domain_check(r->p[0]);
	if (why != NULL) {
		admin_invalid(r, "name", "bad domain name: %s", why);
		return;
	}
	admin_exec(r, "admin_domain_add", 1, domain_add_done);
}

static void domain_list_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	r->dbr = NULL;
	if (res->status != DB_OK)
		admin_db_failed(r, res, "domain list");
	else
		admin_reply_cell(r, 200, res->res, 0, 0, "domains");
}

/* h_domain_list - GET /api/v1/domains */
static void h_domain_list(struct admin_req *r)
{
	admin_exec(r, "admin_domain_list", 0, domain_list_done);
}

/* h_domain_del - DELETE /api/v1/domains/{name}: the domain with its accounts
 * (mailboxes, messages) and aliases (ON DELETE CASCADE) */
static void h_domain_del(struct admin_req *r)
{
	r->p[0] = xstrdup(r->arg);
	if (admin_domain_check(r->p[0]) != NULL) {
		admin_fail(r, 404, "not_found", NULL, "no such domain");
		return;
	}
	admin_exec_object(r, "admin_domain_del", 1, "domain", "domain delete");
}

/* ------------------------------------------------------------ accounts */

static const char *const admin_std_mailboxes[] = { "INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive" };

static void account_add_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	r->dbr = NULL;
	if (res->status != DB_OK) {
		admin_db_failed(r, res, "account create");
		return;
	}
	const char *result = PQntuples(res->res) == 1 ? PQgetvalue(res->res, 0, 0) : "";
	if (strcmp(result, "ok") == 0) {
		json_t *o = r->extra;
		r->extra = NULL;
		admin_reply(r, 201, o, NULL);
	} else if (strcmp(result, "no_domain") == 0) {
		admin_fail(r, 422, "unknown_domain", "address", "the domain of %s is not a local domain "
			   "(POST /api/v1/domains first)", r->p[0]);
	} else if (strcmp(result, "exists") == 0) {
		admin_fail(r, 409, "exists", "address", "account %s exists", r->p[0]);
	} else if (strcmp(result, "alias_exists") == 0) {
		admin_fail(r, 409, "alias_exists", "address", "an alias %s exists", r->p[0]);
	} else {
		admin_fail(r, 500, "internal", NULL, "malformed database answer");
	}
}

/* account_add_hashed - the hash is ready: create the account and its mailboxes */
static void account_add_hashed(struct admin_req *r, const char *hash, const char *error)
{
	if (hash == NULL) {
		if (strncmp(error, "password_hash", 13) == 0)
			admin_invalid(r, "password_hash", "%s", error);
		else
			admin_fail(r, 500, "internal", NULL, "cannot hash the password: %s", error);
		return;
	}
	r->p[1] = xstrdup(hash);
	admin_exec(r, "admin_account_create", 4, account_add_done);
}

/* h_account_add - POST /api/v1/accounts {"address", "password" | "password_hash",
 * "quota_bytes", "quota_messages"} */
static void h_account_add(struct admin_req *r)
{
	static const char *const known[] = { "address", "password", "password_hash", "quota_bytes",
					     "quota_messages", NULL };
	bool present, import;
	const char *secret;
	size_t len;
	if (!admin_fields_known(r, known) || !admin_body_address(r, "address", false, &r->p[0]) ||
	    !admin_body_secret(r, false, &present, &secret, &len, &import) ||
	    !admin_body_count(r, "quota_bytes", &r->p[2]) || !admin_body_count(r, "quota_messages", &r->p[3]))
		return;
	/* the reply: what we know the function creates */
	json_t *mbs = json_array();
	for (size_t i = 0; i < N_ELEMENTS(admin_std_mailboxes); i++)
		json_array_append_new(mbs, json_string(admin_std_mailboxes[i]));
	r->extra = json_pack("{ss, ss, sI, sI, sb, so}", "address", r->p[0], "domain",
			     strchr(r->p[0], '@') + 1, "quota_bytes",
			     (json_int_t)(r->p[2] != NULL ? strtoll(r->p[2], NULL, 10) : 0), "quota_messages",
			     (json_int_t)(r->p[3] != NULL ? strtoll(r->p[3], NULL, 10) : 0), "disabled", 0,
			     "mailboxes", mbs);
	admin_hash_start(r, secret, len, import, account_add_hashed);
}

static void account_list_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	r->dbr = NULL;
	if (res->status != DB_OK) {
		admin_db_failed(r, res, "account list");
		return;
	}
	if (PQntuples(res->res) != 1 || PQgetvalue(res->res, 0, 0)[0] != 't') {
		admin_fail(r, 404, "not_found", NULL, "no domain %s", r->p[0] != NULL ? r->p[0] : "");
		return;
	}
	json_t *list = admin_cell_json(res->res, 0, 1);
	if (!json_is_array(list)) {
		json_decref(list);
		admin_fail(r, 500, "internal", NULL, "malformed database answer");
		return;
	}
	/* a full page: the next one starts after its last address */
	json_t *next = json_null();
	if (json_array_size(list) == (size_t)r->limit)
		next = json_incref(json_object_get(json_array_get(list, json_array_size(list) - 1), "address"));
	admin_reply(r, 200, json_pack("{soso}", "accounts", list, "next", next != NULL ? next : json_null()), NULL);
}

/* h_account_list - GET /api/v1/accounts[?domain=][&after=][&limit=] */
static void h_account_list(struct admin_req *r)
{
	const char *domain = admin_query(r, "domain");
	const char *after = admin_query(r, "after");
	if (!admin_query_limit(r))
		return;
	if (domain != NULL) {
		r->p[0] = xstrdup(domain);
		if (admin_domain_check(r->p[0]) != NULL) {
			admin_fail(r, 404, "not_found", NULL, "no such domain");
			return;
		}
	}
	if (after != NULL) {
		r->p[1] = xstrdup(after);
		if (!admin_lookup_ok(r->p[1])) {
			admin_invalid(r, "after", "after must be an address");
			return;
		}
	}
	r->p[2] = xasprintf("%d", r->limit);
	admin_exec(r, "admin_account_list", 3, account_list_done);
}

/* h_account_get - GET /api/v1/accounts/{address}, with its mailboxes */
static void h_account_get(struct admin_req *r)
{
	r->p[0] = xstrdup(r->arg);
	admin_exec_object(r, "admin_account_get", 1, "account", "account show");
}

/* account_update_hashed - the new hash is ready: update */
static void account_update_hashed(struct admin_req *r, const char *hash, const char *error)
{
	if (hash == NULL) {
		if (strncmp(error, "password_hash", 13) == 0)
			admin_invalid(r, "password_hash", "%s", error);
		else
			admin_fail(r, 500, "internal", NULL, "cannot hash the password: %s", error);
		return;
	}
	r->p[1] = xstrdup(hash);
	admin_exec_object(r, "admin_account_update", 5, "account", "account update");
}

/* h_account_patch - PATCH /api/v1/accounts/{address} {"password" | "password_hash",
 * "quota_bytes", "quota_messages", "disabled"}: only the fields given change */
static void h_account_patch(struct admin_req *r)
{
	static const char *const known[] = { "password", "password_hash", "quota_bytes",
					     "quota_messages", "disabled", NULL };
	bool present, import;
	const char *secret = NULL;
	size_t len = 0;
	r->p[0] = xstrdup(r->arg);
	if (!admin_fields_known(r, known))
		return;
	if (json_object_size(r->body) == 0) {
		admin_invalid(r, NULL, "nothing to change: give password, password_hash, quota_bytes, "
			      "quota_messages or disabled");
		return;
	}
	if (!admin_body_secret(r, true, &present, &secret, &len, &import) ||
	    !admin_body_count(r, "quota_bytes", &r->p[2]) || !admin_body_count(r, "quota_messages", &r->p[3]))
		return;
	json_t *dis = json_object_get(r->body, "disabled");
	if (dis != NULL) {
		if (!json_is_boolean(dis)) {
			admin_invalid(r, "disabled", "disabled must be true or false");
			return;
		}
		r->p[4] = xstrdup(json_is_true(dis) ? "true" : "false");
	}
	if (present)
		admin_hash_start(r, secret, len, import, account_update_hashed);
	else
		admin_exec_object(r, "admin_account_update", 5, "account", "account update");
}

/* h_account_del - DELETE /api/v1/accounts/{address}: with its mailboxes and
 * messages (blob references drop; the GC removes the bodies) */
static void h_account_del(struct admin_req *r)
{
	r->p[0] = xstrdup(r->arg);
	admin_exec_object(r, "admin_account_del", 1, "account", "account delete");
}

/* ------------------------------------------------------------ aliases */

static void alias_add_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	r->dbr = NULL;
	if (res->status != DB_OK) {
		admin_db_failed(r, res, "alias create");
		return;
	}
	const char *result = PQntuples(res->res) == 1 ? PQgetvalue(res->res, 0, 0) : "";
	if (strcmp(result, "ok") == 0) {
		json_t *o = r->extra;
		r->extra = NULL;
		admin_reply(r, 201, o, NULL);
	} else if (strcmp(result, "no_domain") == 0) {
		admin_fail(r, 422, "unknown_domain", "address", "the domain of %s is not a local domain",
			   r->p[0]);
	} else if (strcmp(result, "exists") == 0) {
		admin_fail(r, 409, "exists", "address", "alias %s exists", r->p[0]);
	} else if (strcmp(result, "account_exists") == 0) {
		admin_fail(r, 409, "account_exists", "address", "an account %s exists", r->p[0]);
	} else {
		admin_fail(r, 500, "internal", NULL, "malformed database answer");
	}
}

/* h_alias_add - POST /api/v1/aliases {"address": "x@d" | "@d", "targets": [...]} */
static void h_alias_add(struct admin_req *r)
{
	static const char *const known[] = { "address", "targets", NULL };
	if (!admin_fields_known(r, known) || !admin_body_address(r, "address", true, &r->p[0]))
		return;
	json_t *targets = json_object_get(r->body, "targets");
	if (!json_is_array(targets) || json_array_size(targets) == 0 ||
	    json_array_size(targets) > ADMIN_MAX_TARGETS) {
		admin_invalid(r, "targets", "targets must be a list of 1..%d addresses", ADMIN_MAX_TARGETS);
		return;
	}
	json_t *clean = json_array();
	size_t i;
	json_t *t;
	json_array_foreach(targets, i, t) {
		if (!json_is_string(t) || json_string_length(t) != strlen(json_string_value(t))) {
			json_decref(clean);
			admin_invalid(r, "targets", "targets[%zu] must be a string", i);
			return;
		}
		char *a = xstrdup(json_string_value(t));
		const char *why = admin_address_check(a, false);
		if (why == NULL && strcmp(a, r->p[0]) == 0)
			why = "an alias cannot point at itself";
		if (why != NULL) {
			char q[300];
			admin_invalid(r, "targets", "bad target %s: %s",
				      log_quote(q, sizeof(q), json_string_value(t), json_string_length(t)), why);
			free(a);
			json_decref(clean);
			return;
		}
		bool dup = false;
		size_t k;
		json_t *c;
		json_array_foreach(clean, k, c)
			dup = dup || strcmp(json_string_value(c), a) == 0;
		if (!dup)
			json_array_append_new(clean, json_string(a));
		free(a);
	}
	r->p[1] = json_dumps(clean, JSON_COMPACT);
	r->extra = json_pack("{ss, ss, so, sb}", "address", r->p[0], "domain", strchr(r->p[0], '@') + 1,
			     "targets", clean, "catch_all", r->p[0][0] == '@');
	admin_exec(r, "admin_alias_create", 2, alias_add_done);
}

/* h_alias_get - GET /api/v1/aliases/{address} */
static void h_alias_get(struct admin_req *r)
{
	r->p[0] = xstrdup(r->arg);
	admin_exec_object(r, "admin_alias_get", 1, "alias", "alias show");
}

static void alias_list_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	r->dbr = NULL;
	if (res->status != DB_OK)
		admin_db_failed(r, res, "alias list");
	else if (PQntuples(res->res) != 1 || PQgetvalue(res->res, 0, 0)[0] != 't')
		admin_fail(r, 404, "not_found", NULL, "no domain %s", r->p[0] != NULL ? r->p[0] : "");
	else
		admin_reply_cell(r, 200, res->res, 0, 1, "aliases");
}

/* h_alias_list - GET /api/v1/aliases[?domain=] */
static void h_alias_list(struct admin_req *r)
{
	const char *domain = admin_query(r, "domain");
	if (domain != NULL) {
		r->p[0] = xstrdup(domain);
		if (admin_domain_check(r->p[0]) != NULL) {
			admin_fail(r, 404, "not_found", NULL, "no such domain");
			return;
		}
	}
	admin_exec(r, "admin_alias_list", 1, alias_list_done);
}

/* h_alias_del - DELETE /api/v1/aliases/{address} */
static void h_alias_del(struct admin_req *r)
{
	r->p[0] = xstrdup(r->arg);
	admin_exec_object(r, "admin_alias_del", 1, "alias", "alias delete");
}

/* ------------------------------------------------------------ queue */

static void queue_list_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	r->dbr = NULL;
	if (res->status != DB_OK) {
		admin_db_failed(r, res, "queue list");
		return;
	}
	json_t *list = admin_cell_json(res->res, 0, 0);
	json_t *counts = admin_cell_json(res->res, 0, 1);
	if (!json_is_array(list) || !json_is_object(counts)) {
		json_decref(list);
		json_decref(counts);
		admin_fail(r, 500, "internal", NULL, "malformed database answer");
		return;
	}
	admin_reply(r, 200, json_pack("{soso}", "queue", list, "counts", counts), NULL);
}

/* h_queue_list - GET /api/v1/queue[?status=][&limit=]: outbound entries, oldest first */
static void h_queue_list(struct admin_req *r)
{
	static const char *const statuses[] = { "queued", "sending", "delivered", "bounced", "expired" };
	const char *status = admin_query(r, "status");
	if (!admin_query_limit(r))
		return;
	if (status != NULL) {
		bool ok = false;
		for (size_t i = 0; i < N_ELEMENTS(statuses); i++)
			ok = ok || strcmp(status, statuses[i]) == 0;
		if (!ok) {
			admin_invalid(r, "status", "status must be queued, sending, delivered, bounced or expired");
			return;
		}
		r->p[0] = xstrdup(status);
	}
	r->p[1] = xasprintf("%d", r->limit);
	admin_exec(r, "admin_queue_list", 2, queue_list_done);
}

/* queue_change_done - retry and delete: 404 unknown, 409 when the entry cannot
 * take it (being sent under a live lease; a final state for a retry) */
static void queue_change_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	r->dbr = NULL;
	bool retry = r->method == ADMIN_POST;
	if (res->status != DB_OK) {
		admin_db_failed(r, res, retry ? "queue retry" : "queue delete");
		return;
	}
	if (PQntuples(res->res) == 0) {
		admin_fail(r, 404, "not_found", NULL, "no queue entry %s", r->p[0]);
		return;
	}
	if (PQgetisnull(res->res, 0, 2)) {
		const char *status = PQgetvalue(res->res, 0, 0);
		if (strcmp(status, "sending") == 0)
			admin_fail(r, 409, "conflict", NULL, "queue entry %s is being delivered right now", r->p[0]);
		else
			admin_fail(r, 409, "conflict", NULL, "queue entry %s is %s: nothing to retry", r->p[0],
				   status);
		return;
	}
	admin_reply_cell(r, 200, res->res, 0, 2, NULL);
}

/* admin_queue_id - the {id} of a queue route (digits); false after a 404 */
static bool admin_queue_id(struct admin_req *r)
{
	size_t n = strlen(r->arg);
	if (n == 0 || n > 18 || strspn(r->arg, "0123456789") != n) {
		admin_fail(r, 404, "not_found", NULL, "no such queue entry");
		return false;
	}
	r->p[0] = xstrdup(r->arg);
	return true;
}

/* h_queue_retry - POST /api/v1/queue/{id}/retry: next attempt now */
static void h_queue_retry(struct admin_req *r)
{
	if (admin_queue_id(r))
		admin_exec(r, "admin_queue_retry", 1, queue_change_done);
}

/* h_queue_del - DELETE /api/v1/queue/{id}: dropped without a bounce */
static void h_queue_del(struct admin_req *r)
{
	if (admin_queue_id(r))
		admin_exec(r, "admin_queue_del", 1, queue_change_done);
}

/* ------------------------------------------------------------ cluster */

/* cluster_members_of - the members of one kind, with status "up" */
static json_t *cluster_members_of(json_t *members, const char *kind)
{
	json_t *out = json_array();
	size_t i;
	json_t *m;
	json_array_foreach(members, i, m) {
		if (json_is_string(json_object_get(m, "kind")) &&
		    strcmp(json_string_value(json_object_get(m, "kind")), kind) == 0) {
			json_t *c = json_deep_copy(m);
			json_object_del(c, "kind");
			json_object_set_new(c, "status", json_string("up"));
			json_array_append_new(out, c);
		}
	}
	return out;
}

static void cluster_done(const struct db_result *res, void *arg)
{
	struct admin_req *r = arg;
	struct admin *ad = r->ad;
	struct router *rt = ad->rt;
	r->dbr = NULL;

	json_t *o = json_object();
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	json_object_set_new(o, "router", json_pack("{ss, ss, si, ss, si, sf}", "node_id", rt->node_id,
						   "version", MAIL_VERSION, "schema_version", migrate_latest(),
						   "address", config_str(rt->cfg, "listen"),
						   "workers", rt->nloops - 1, "uptime_s",
						   (double)now.tv_sec - strtod(ad->hb_started, NULL)));

	/* store nodes: the main loop's view (health probes) */
	json_t *stores = json_array();
	unsigned up = 0;
	for (size_t i = 0; i < blob_node_count(ad->loop->blobs); i++) {
		const char *name = blob_node_name(ad->loop->blobs, i);
		bool is_up = blob_node_up(ad->loop->blobs, name);
		up += is_up;
		json_array_append_new(stores, json_pack("{ss, ss, ss}", "name", name, "address",
							blob_node_addr(ad->loop->blobs, i), "status",
							is_up ? "up" : "down"));
	}
	json_object_set_new(o, "stores", stores);
	json_object_set_new(o, "store_quorum",
			    json_pack("{si, si, si, sb}", "replicas", (int)rt->blob_opts.replicas,
				      "write_quorum", (int)rt->blob_opts.write_quorum, "up", (int)up,
				      "writable", up >= rt->blob_opts.write_quorum));

	/* the database, and the registry it holds */
	struct db_pool_stats st;
	db_pool_stats(ad->db, &st);
	json_t *pool = json_pack("{si, si, si, si}", "connections", st.connections, "ready",
				 st.connections_ready, "queued", st.queued, "in_flight", st.in_flight);
	json_t *members = NULL;
	if (res->status == DB_OK && PQntuples(res->res) == 1 && PQnfields(res->res) == 4)
		members = admin_cell_json(res->res, 0, 3);
	if (json_is_array(members)) {
		json_object_set_new(o, "database",
				    json_pack("{ss, ss, si, ss, so}", "status", "up", "role",
					      PQgetvalue(res->res, 0, 0)[0] == 't' ? "standby" : "primary",
					      "schema_version", atoi(PQgetvalue(res->res, 0, 1)),
					      "server_version", PQgetvalue(res->res, 0, 2), "pool", pool));
		json_object_set_new(o, "routers", cluster_members_of(members, "router"));
		json_object_set_new(o, "frontends", cluster_members_of(members, "frontend"));
		json_t *dnsd = cluster_members_of(members, "dnsd");
		if (json_array_size(dnsd) == 0) {
			json_decref(dnsd);
			json_object_set_new(o, "dnsd", json_pack("{ss, ss}", "status", "not_configured", "note",
								 "no dnsd has registered with the cluster"));
		} else {
			json_object_set_new(o, "dnsd", json_pack("{ss, so}", "status", "up", "nodes", dnsd));
		}
	} else {
		const char *why = res->status == DB_OK ? "malformed answer"
				  : res->message != NULL ? res->message : "";
		json_object_set_new(o, "database", json_pack("{ss, ss, so}", "status", "down", "error", why,
							     "pool", pool));
		/* the registry lives in the database: only this router is known */
		json_object_set_new(o, "routers", json_pack("[{ss, ss, ss, ss}]", "node_id", rt->node_id,
							     "version", MAIL_VERSION, "address",
							     config_str(rt->cfg, "listen"), "status", "up"));
		json_object_set_new(o, "frontends", json_pack("{ss}", "status", "unknown (database down)"));
		json_object_set_new(o, "dnsd", json_pack("{ss}", "status", "unknown (database down)"));
	}
	json_decref(members);
	admin_reply(r, 200, o, NULL);
}

/* h_cluster - GET /api/v1/cluster: this router, routers and front-ends (the
 * registry), store nodes (health probes), database, dnsd - each with its health.
 * Answers 200 even with the database down (that is part of the answer). */
static void h_cluster(struct admin_req *r)
{
	admin_exec(r, "admin_cluster", 0, cluster_done);
	db_request_set_timeout(r->dbr, ADMIN_CLUSTER_TIMEOUT_MS);
}

/* ------------------------------------------------------------ routing */

struct admin_route {
	const char *seg[ADMIN_MAX_SEGMENTS]; /* "*" = the parameter */
	admin_handler *h[ADMIN_NMETHODS];
	bool body;                           /* POST/PATCH take a JSON object */
};

static const struct admin_route admin_routes[] = {
	{ { "domains" }, { [ADMIN_GET] = h_domain_list, [ADMIN_POST] = h_domain_add }, true },
	{ { "domains", "*" }, { [ADMIN_DELETE] = h_domain_del }, false },
	{ { "accounts" }, { [ADMIN_GET] = h_account_list, [ADMIN_POST] = h_account_add }, true },
	{ { "accounts", "*" },
	  { [ADMIN_GET] = h_account_get, [ADMIN_PATCH] = h_account_patch, [ADMIN_DELETE] = h_account_del },
	  true },
	{ { "aliases" }, { [ADMIN_GET] = h_alias_list, [ADMIN_POST] = h_alias_add }, true },
	{ { "aliases", "*" }, { [ADMIN_GET] = h_alias_get, [ADMIN_DELETE] = h_alias_del }, false },
	{ { "queue" }, { [ADMIN_GET] = h_queue_list }, false },
	{ { "queue", "*" }, { [ADMIN_DELETE] = h_queue_del }, false },
	{ { "queue", "*", "retry" }, { [ADMIN_POST] = h_queue_retry }, false },
	{ { "cluster" }, { [ADMIN_GET] = h_cluster }, false },
};

/* admin_authorized - a Bearer token equal to the admin token (compared as
 * SHA-256 digests in constant time, so neither content nor length leaks) */
static bool admin_authorized(struct admin *ad, struct evhttp_request *req)
{
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
		return false;
	h += 7;
	while (*h == ' ')
		h++;
	size_t n = strlen(h);
	while (n > 0 && h[n - 1] == ' ')
		n--;
	uint8_t d[32];
	unsigned dl = 0;
	if (n == 0 || EVP_Digest(h, n, d, &dl, EVP_sha256(), NULL) != 1 || dl != sizeof(d))
		return false;
	return CRYPTO_memcmp(d, ad->token_digest, sizeof(d)) == 0;
}

/* admin_split - the decoded segments of path after ADMIN_PREFIX; -1 when there
 * are too many or one does not decode to a C string */
static int admin_split(const char *path, char **seg, int max)
{
	int n = 0;
	const char *p = path + strlen(ADMIN_PREFIX);
	for (;;) {
		const char *e = strchr(p, '/');
		size_t len = e != NULL ? (size_t)(e - p) : strlen(p);
		if (n == max)
			goto fail;
		char *raw = xstrndup(p, len);
		size_t dlen = 0;
		char *dec = evhttp_uridecode(raw, 0, &dlen);
		free(raw);
		if (dec == NULL)
			goto fail;
		if (strlen(dec) != dlen) {
			free(dec);
			goto fail;
		}
		seg[n++] = dec;
		if (e == NULL)
			return n;
		p = e + 1;
	}
fail:
	for (int i = 0; i < n; i++)
		free(seg[i]);
	return -1;
}

/* admin_route_find - the route whose literal segments match; *arg_r the "*" */
static const struct admin_route *admin_route_find(char **seg, int n, int *arg_r)
{
	for (size_t i = 0; i < N_ELEMENTS(admin_routes); i++) {
		const struct admin_route *rt = &admin_routes[i];
		int len = 0;
		while (len < ADMIN_MAX_SEGMENTS && rt->seg[len] != NULL)
			len++;
		if (len != n)
			continue;
		bool ok = true;
		*arg_r = -1;
		for (int k = 0; k < n && ok; k++) {
			if (strcmp(rt->seg[k], "*") == 0) {
				*arg_r = k;
				ok = seg[k][0] != '\0';
			} else {
				ok = strcmp(rt->seg[k], seg[k]) == 0;
			}
		}
		if (ok)
			return rt;
	}
	return NULL;
}

/* admin_dispatch - every request under /api/: authenticate, route, check the
 * method and the body, run the handler */
static void admin_dispatch(struct evhttp_request *req, void *arg)
{
	struct admin *ad = arg;
	struct admin_req *r = XNEW(struct admin_req);
	r->ad = ad;
	r->id = ++ad->next_id;
	r->req = req;
	clock_gettime(CLOCK_MONOTONIC, &r->start);
	r->next = ad->reqs;
	if (ad->reqs != NULL)
		ad->reqs->prev = r;
	ad->reqs = r;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	r->path = xstrdup(path != NULL ? path : "/");
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	char *peer_addr = NULL;
	ev_uint16_t peer_port = 0;
	if (conn != NULL)
		evhttp_connection_get_peer(conn, &peer_addr, &peer_port);
	snprintf(r->peer, sizeof(r->peer), "%s:%u", peer_addr != NULL ? peer_addr : "?", peer_port);

	r->method_name = "OTHER";
	r->method = ADMIN_NMETHODS; /* answered 405 below */
	switch (evhttp_request_get_command(req)) {
	case EVHTTP_REQ_GET:
		r->method = ADMIN_GET;
		r->method_name = "GET";
		break;
	case EVHTTP_REQ_HEAD:
		r->method = ADMIN_GET;
		r->method_name = "HEAD";
		break;
	case EVHTTP_REQ_POST:
		r->method = ADMIN_POST;
		r->method_name = "POST";
		break;
	case EVHTTP_REQ_PATCH:
		r->method = ADMIN_PATCH;
		r->method_name = "PATCH";
		break;
	case EVHTTP_REQ_DELETE:
		r->method = ADMIN_DELETE;
		r->method_name = "DELETE";
		break;
	case EVHTTP_REQ_PUT:
		r->method_name = "PUT";
		break;
	case EVHTTP_REQ_OPTIONS:
		r->method_name = "OPTIONS";
		break;
	default:
		break;
	}
	enum admin_method m = r->method;
	if (m == ADMIN_NMETHODS)
		r->method = ADMIN_GET;

	if (!admin_authorized(ad, req)) {
		bool given = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization") != NULL;
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
				  given ? "Bearer realm=\"mail-admin\", error=\"invalid_token\""
					: "Bearer realm=\"mail-admin\"");
		json_t *o = json_pack("{ss, ss}", "error",
				      given ? "invalid bearer token" : "authorization required: Bearer token",
				      "code", "unauthorized");
		admin_reply(r, 401, o, "unauthorized");
		return;
	}

	char *seg[ADMIN_MAX_SEGMENTS];
	int nseg = strncmp(r->path, ADMIN_PREFIX, strlen(ADMIN_PREFIX)) == 0
			   ? admin_split(r->path, seg, ADMIN_MAX_SEGMENTS) : -1;
	int argi = -1;
	const struct admin_route *route = nseg > 0 ? admin_route_find(seg, nseg, &argi) : NULL;
	if (route != NULL && argi >= 0)
		r->arg = xstrdup(seg[argi]);
	for (int i = 0; i < nseg; i++)
		free(seg[i]);
	if (route == NULL) {
		admin_fail(r, 404, "not_found", NULL, "no such route");
		return;
	}
	if (m == ADMIN_NMETHODS || route->h[m] == NULL) {
		char allow[64] = "";
		for (int i = 0; i < ADMIN_NMETHODS; i++) {
			if (route->h[i] == NULL)
				continue;
			size_t o = strlen(allow);
			snprintf(allow + o, sizeof(allow) - o, "%s%s", o ? ", " : "", admin_method_names[i]);
			if (i == ADMIN_GET) {
				o = strlen(allow);
				snprintf(allow + o, sizeof(allow) - o, ", HEAD");
			}
		}
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
		admin_fail(r, 405, "method_not_allowed", NULL, "method not allowed here (allowed: %s)", allow);
		return;
	}
	if (r->arg != NULL && !admin_lookup_ok(r->arg)) {
		admin_fail(r, 404, "not_found", NULL, "no such object");
		return;
	}

	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t blen = evbuffer_get_length(in);
	if (blen > ADMIN_MAX_BODY) {
		admin_fail(r, 413, "too_large", NULL, "request body larger than %d bytes", ADMIN_MAX_BODY);
		return;
	}
	if (route->body && (m == ADMIN_POST || m == ADMIN_PATCH)) {
		json_error_t err;
		const char *data = blen > 0 ? (const char *)evbuffer_pullup(in, (ev_ssize_t)blen) : "";
		/* NULs are allowed by JSON: the field checks refuse them with a 422 */
		r->body = json_loadb(data, blen, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
		if (r->body == NULL) {
			/* jansson quotes the input after " near": it may be a password */
			char *near = strstr(err.text, " near ");
			if (near != NULL)
				*near = '\0';
			admin_fail(r, 400, "bad_json", NULL, "body is not JSON: %s (line %d column %d)",
				   blen == 0 ? "empty body" : err.text, err.line, err.column);
			return;
		}
		if (!json_is_object(r->body)) {
			admin_fail(r, 400, "bad_json", NULL, "body must be a JSON object");
			return;
		}
	}
	route->h[m](r);
}

/* ------------------------------------------------------------ heartbeat */

static void heartbeat_done(const struct db_result *res, void *arg)
{
	struct admin *ad = arg;
	ad->hb_req = NULL;
	if (res->status != DB_OK && !ad->hb_failing) {
		ad->hb_failing = true;
		char q[300];
		log_warn("cluster heartbeat failed", "node=%s error=%s", ad->rt->node_id,
			 log_quote(q, sizeof(q), res->message, strlen(res->message)));
	} else if (res->status == DB_OK && ad->hb_failing) {
		ad->hb_failing = false;
		log_info("cluster heartbeat restored", "node=%s", ad->rt->node_id);
	}
}

/* heartbeat_tick - upsert this router's row in cluster_members (one at a time) */
static void heartbeat_tick(evutil_socket_t fd, short what, void *arg)
{
	struct admin *ad = arg;
	if (ad->hb_req != NULL)
		return;
	const char *v[5] = { ad->rt->node_id, MAIL_VERSION, config_str(ad->rt->cfg, "listen"), ad->hb_info,
			     ad->hb_started };
	ad->hb_req = db_exec(ad->db, "admin_heartbeat", 5, v, NULL, NULL, 0, heartbeat_done, ad);
}

/* ------------------------------------------------------------ module hooks */

/* admin_loop_init - on the main loop only: the admin context and the heartbeat */
static void admin_loop_init(struct rt_loop *l)
{
	if (!l->is_main)
		return;
	struct router *rt = l->rt;
	struct admin *ad = XNEW(struct admin);
	ad->rt = rt;
	ad->loop = l;
	ad->db = l->db;
	unsigned dl = 0;
	EVP_Digest(rt->admin_token, strlen(rt->admin_token), ad->token_digest, &dl, EVP_sha256(), NULL);
	if (rt->admin_token[0] == '\0') /* no token loaded (admin API off): nothing matches */
		memset(ad->token_digest, 0, sizeof(ad->token_digest));
	snprintf(ad->hb_started, sizeof(ad->hb_started), "%lld", (long long)time(NULL));
	json_t *info = json_pack("{ss, ss, si, si, si}", "admin", config_str(rt->cfg, "admin_listen"),
				 "metrics", config_str(rt->cfg, "metrics_listen"), "workers", rt->nloops - 1,
				 "schema_version", migrate_latest(), "pid", (int)getpid());
	ad->hb_info = json_dumps(info, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(info);
	static const char *const classes[6] = { NULL, NULL, "2xx", NULL, "4xx", "5xx" };
	for (size_t i = 0; i < N_ELEMENTS(classes); i++) {
		if (classes[i] == NULL)
			continue;
		char name[96];
		snprintf(name, sizeof(name), "admin_requests_total{class=\"%s\"}", classes[i]);
		ad->m_class[i] = metric_counter(name, "admin API requests answered, by status class");
	}
	ad->hb_timer = event_new(l->base, -1, EV_PERSIST, heartbeat_tick, ad);
	struct timeval tv = { ADMIN_HEARTBEAT_MS / 1000, (ADMIN_HEARTBEAT_MS % 1000) * 1000 };
	event_add(ad->hb_timer, &tv);
	heartbeat_tick(-1, 0, ad);
	l->mod[ADMIN_SLOT] = ad;
	admin_self = ad;
}

/* admin_loop_fini - answer what is still open (503), stop the heartbeat */
static void admin_loop_fini(struct rt_loop *l)
{
	struct admin *ad = l->mod[ADMIN_SLOT];
	if (ad == NULL)
		return;
	while (ad->reqs != NULL)
		admin_fail(ad->reqs, 503, "unavailable", NULL, "the router is shutting down");
	if (ad->hb_req != NULL)
		db_request_cancel(&ad->hb_req);
	event_free(ad->hb_timer);
	free(ad->hb_info);
	admin_self = NULL;
	l->mod[ADMIN_SLOT] = NULL;
	free(ad);
}

/* admin_main_init - the routes, when the admin API listens */
static void admin_main_init(struct router *rt, struct httpd *admin, struct httpd *metrics)
{
	struct admin *ad = rt->loops[rt->nloops - 1]->mod[ADMIN_SLOT];
	if (admin == NULL || ad == NULL)
		return;
	httpd_add_route(admin, "/api/", admin_dispatch, ad);
	log_info("admin API ready", "addr=%s routes=%zu", config_str(rt->cfg, "admin_listen"),
		 N_ELEMENTS(admin_routes));
}

const struct rt_module rt_mod_admin = {
	.name = "admin",
	.methods = NULL,
	.n_methods = 0,
	.stmts = admin_stmts,
	.n_stmts = N_ELEMENTS(admin_stmts),
	.slot = ADMIN_SLOT,
	.loop_init = admin_loop_init,
	.loop_fini = admin_loop_fini,
	.main_init = admin_main_init,
};
