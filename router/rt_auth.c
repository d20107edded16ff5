/* rt_auth.c - who a user is: Authenticate (mail.router.v1), and the POP3
 * maildrop lease (MaildropLock), the one piece of session state that must be
 * shared by every frontend.
 *
 * Authenticate takes PASSWORD or LOGIN (username + password, decoded by the
 * frontend) or PLAIN (the SASL message: authzid NUL authcid NUL passwd). One
 * statement reads the account (address compared lower-cased) together with
 * the failure counters of the address and of the client IP, which every
 * router shares through PostgreSQL (auth_failures). Past the limits below the
 * answer is THROTTLED, with the time until the window ends, and no hash is
 * computed. Otherwise the password is verified against the stored hash
 * (Argon2id, or an imported crypt(3) hash) on the router's hasher pool, never
 * on a loop; unknown addresses and disabled accounts spend one verification on
 * a dummy Argon2id hash made with the parameters of new hashes, so the time an
 * answer takes does not tell which addresses exist. A failure is counted
 * (mail_auth_failure) before AUTH_FAILED goes out, so a client cannot outrun
 * the counter by asking another router. Passwords are never logged and are
 * wiped once verified.
 *
 * Ownership: each call has one struct auth_req (the call's data) that holds
 * its worker (a drain waits for a verification in flight). When the runtime
 * cancels the call (on_cancel), the req forgets the call and cancels its db
 * request; if a hash job still holds it, the job's completion frees it,
 * otherwise on_cancel does. A completion never touches a call that is gone. */
#include "lib/common.h"
#include "router/router.h"
#include "lib/daemon.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/workpool.h"
#include "lib/xalloc.h"
#include "router.pb-c.h"
#include <event2/event.h>
#include <inttypes.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

/* Throttling: failures counted per address and per client IP in fixed windows */
#define AUTH_ACCT_MAX_FAILURES 10
#define AUTH_ACCT_WINDOW_S (15 * 60)
#define AUTH_IP_MAX_FAILURES 30
#define AUTH_IP_WINDOW_S (15 * 60)
#define AUTH_USER_MAX 254             /* longest address (RFC 5321 path minus <>) */
#define AUTH_IP_MAX 64                /* longest client_ip kept */
#define AUTH_MECH_MAX 32
/* MaildropLock leases */
#define MAILDROP_LEASE_DEFAULT_MS 60000
#define MAILDROP_LEASE_MIN_MS 1000
#define MAILDROP_LEASE_MAX_MS (10 * 60 * 1000)
#define MAILDROP_HOLDER_MAX 200

#define AUTH_SLOT 0

typedef Mail__Router__V1__Code auth_code;
#define CODE(x) MAIL__ROUTER__V1__CODE__CODE_##x

enum auth_result { AR_OK, AR_FAILED, AR_THROTTLED, AR_TEMPFAIL, AR_INVALID, AR_UNAVAILABLE, AR_N };
static const char *const auth_result_names[AR_N] = {
	"ok", "failed", "throttled", "tempfail", "invalid", "unavailable"
};

static struct {
	struct metric *attempts[AR_N];
	struct metric *seconds;
	struct metric *lock_in_use;
} auth_m;

/* the dummy hash verified for unknown and disabled accounts (set by main_init,
 * read-only afterwards; a static buffer, so a late pool job never reads freed memory) */
static char auth_dummy_hash[256];

enum auth_mech { MECH_PASSWORD, MECH_PLAIN, MECH_LOGIN };

struct auth_req {
	struct rpc_call *call;         /* NULL once the runtime cancelled it */
	struct rt_loop *loop;
	struct daemon_worker *w;       /* held while the req lives */
	struct db_request *dbr;
	uint64_t call_id;
	double t0;
	bool got_request;
	bool job_pending;              /* a hash job holds the req */
	enum auth_mech mech;
	const char *mech_name;
	char *protocol;
	char *user;                    /* lower-cased */
	char *ip;                      /* "" when the frontend gave none */
	char *password;
	size_t password_len;
	/* the account, from the lookup */
	bool found, disabled;
	uint64_t account_id;
	char *address;
	char *hash;                    /* stored hash, or a copy of the dummy */
	enum password_result verdict;  /* written by the pool thread */
	const char *why;               /* failure reason for the log */
};

static double auth_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* auth_text_ok - valid UTF-8 without control characters (PostgreSQL takes it,
 * a log line shows it) */
static bool auth_text_ok(const char *s, size_t len)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t i = 0;
	while (i < len) {
		uint8_t c = p[i];
		if (c < 0x80) {
			if (c < 0x20 || c == 0x7f)
				return false;
			i++;
			continue;
		}
		size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
		if (n == 0 || i + n > len)
			return false;
		uint8_t c1 = p[i + 1];
		if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 > 0x9f) || (c == 0xf0 && c1 < 0x90) ||
		    (c == 0xf4 && c1 > 0x8f))
			return false;
		for (size_t k = 1; k < n; k++)
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
		i += n;
	}
	return true;
}

/* auth_lower - ASCII lower-case copy (addresses are stored lower-cased) */
static char *auth_lower(const char *s, size_t len)
{
	char *r = xstrndup(s, len);
	for (char *p = r; *p != '\0'; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p + 32);
	return r;
}

static void auth_wipe(char *p, size_t n)
{
	if (p != NULL)
		explicit_bzero(p, n);
}

/* ------------------------------------------------------------------ requests */

/* auth_req_new - the call's state; holds the worker until freed */
static struct auth_req *auth_req_new(struct rpc_call *call)
{
	struct auth_req *req = XNEW(struct auth_req);
	req->call = call;
	req->loop = rt_loop_of_call(call);
	req->call_id = rpc_call_id(call);
	req->t0 = auth_now();
	req->w = rt_worker_hold(call);
	req->ip = xstrdup("");
	rpc_call_set_data(call, req);
	return req;
}

/* auth_req_free - cancel what is in flight, wipe the password, release the worker */
static void auth_req_free(struct auth_req *req)
{
	db_request_cancel(&req->dbr);
	auth_wipe(req->password, req->password_len);
	free(req->password);
	free(req->protocol);
	free(req->user);
	free(req->ip);
	free(req->address);
	free(req->hash);
	rt_worker_release(req->w);
	free(req);
}

/* auth_finish - the reply (or a status without one), metrics, then the req is freed */
static void auth_finish(struct auth_req *req, enum auth_result ar, const Mail__Router__V1__AuthenticateReply *reply,
			enum rpc_status st, const char *msg)
{
	metric_inc(auth_m.attempts[ar]);
	metric_observe(auth_m.seconds, auth_now() - req->t0);
	if (req->call != NULL) {
		rpc_call_set_data(req->call, NULL);
		if (reply != NULL)
			rpc_call_send_pb(req->call, &reply->base);
		rpc_call_finish(req->call, st, msg);
		req->call = NULL;
	}
	auth_req_free(req);
}

/* auth_reply - answer with a code (and the account on success) */
static void auth_reply(struct auth_req *req, enum auth_result ar, auth_code code, uint32_t retry_ms)
{
	Mail__Router__V1__AuthenticateReply reply = MAIL__ROUTER__V1__AUTHENTICATE_REPLY__INIT;
	reply.code = code;
	if (code == CODE(OK)) {
		reply.account_id = req->account_id;
		reply.address = req->address;
	}
	reply.retry_after_ms = retry_ms;
	auth_finish(req, ar, &reply, RPC_OK, NULL);
}

/* auth_log_failure - one info line per refused attempt: who, from where, why
 * (never the password) */
static void auth_log_failure(const struct auth_req *req, const char *what, const char *why)
{
	char qu[300], qi[100], qp[40];
	const char *user = req->user != NULL ? req->user : "";
	log_info(what, "call=%" PRIu64 " user=%s ip=%s mech=%s proto=%s reason=%s", req->call_id,
		 log_quote(qu, sizeof(qu), user, strlen(user)),
		 log_quote(qi, sizeof(qi), req->ip, strlen(req->ip)), req->mech_name,
		 log_quote(qp, sizeof(qp), req->protocol ? req->protocol : "",
			   req->protocol ? strlen(req->protocol) : 0), why);
}

/* auth_get - this call's req, NULL once it finished */
static struct auth_req *auth_get(struct rpc_call *call)
{
	return rpc_call_data(call);
}

static void auth_on_start(struct rpc_call *call)
{
	auth_req_new(call);
}

/* auth_on_cancel - forget the call; free now unless a hash job holds the req */
static void auth_on_cancel(struct rpc_call *call)
{
	struct auth_req *req = auth_get(call);
	if (req == NULL)
		return;
	rpc_call_set_data(call, NULL);
	req->call = NULL;
	db_request_cancel(&req->dbr);
	if (req->job_pending)
		return;
	metric_inc(auth_m.attempts[AR_UNAVAILABLE]);
	auth_req_free(req);
}

/* auth_on_half_close - unary: a half-close without the request is an error */
static void auth_on_half_close(struct rpc_call *call)
{
	struct auth_req *req = auth_get(call);
	if (req != NULL && !req->got_request)
		auth_finish(req, AR_INVALID, NULL, RPC_INVALID_ARGUMENT, "missing request message");
}

/* ------------------------------------------------------------------ failures */

/* auth_fail_done - the failure is counted (or the database could not say):
 * AUTH_FAILED either way, the verdict does not depend on the counter */
static void auth_fail_done(const struct db_result *r, void *arg)
{
	struct auth_req *req = arg;
	req->dbr = NULL;
	if (r->status != DB_OK)
		log_info("auth failure not counted", "call=%" PRIu64 " status=%d", req->call_id, (int)r->status);
	auth_reply(req, AR_FAILED, CODE(AUTH_FAILED), 0);
}

/* auth_fail - log, count the failure for the address and the IP, then answer */
static void auth_fail(struct auth_req *req, const char *why)
{
	auth_log_failure(req, "auth failed", why);
	char *acct_key = xasprintf("acct:%s", req->user);
	char *ip_key = req->ip[0] != '\0' ? xasprintf("ip:%s", req->ip) : NULL;
	char acct_w[16], ip_w[16];
	snprintf(acct_w, sizeof(acct_w), "%d", AUTH_ACCT_WINDOW_S);
	snprintf(ip_w, sizeof(ip_w), "%d", AUTH_IP_WINDOW_S);
	const char *values[4] = { acct_key, ip_key, acct_w, ip_w };
	req->dbr = db_exec(req->loop->db, "auth_fail", 4, values, NULL, NULL, 0, auth_fail_done, req);
	free(acct_key);
	free(ip_key);
}

/* ------------------------------------------------------------------ verification */

/* auth_verify_work - on a hasher thread: the slow comparison, then the
 * password is wiped (the req is not touched by anyone else meanwhile) */
static void auth_verify_work(void *arg)
{
	struct auth_req *req = arg;
	req->verdict = password_verify(req->hash, req->password, req->password_len);
	auth_wipe(req->password, req->password_len);
}

/* auth_verify_done - back on the loop: success, or count the failure */
static void auth_verify_done(void *arg)
{
	struct auth_req *req = arg;
	req->job_pending = false;
	if (req->call == NULL) {
		auth_req_free(req);
		return;
	}
	if (req->verdict == PASSWORD_BAD_HASH && req->found)
		log_warn("account has an unusable password hash", "call=%" PRIu64 " account=%" PRIu64,
			 req->call_id, req->account_id);
	if (!req->found) {
		auth_fail(req, "unknown_user");
		return;
	}
	if (req->disabled) {
		auth_fail(req, "disabled");
		return;
	}
	if (req->verdict != PASSWORD_MATCH) {
		auth_fail(req, req->verdict == PASSWORD_BAD_HASH ? "bad_stored_hash" : "bad_password");
		return;
	}
	char qu[300], qi[100];
	log_info("auth ok", "call=%" PRIu64 " user=%s account=%" PRIu64 " ip=%s mech=%s", req->call_id,
		 log_quote(qu, sizeof(qu), req->address, strlen(req->address)), req->account_id,
		 log_quote(qi, sizeof(qi), req->ip, strlen(req->ip)), req->mech_name);
	auth_reply(req, AR_OK, CODE(OK), 0);
}

/* auth_col - a text column of row 0 (NULL when SQL NULL) */
static const char *auth_col(const PGresult *res, int col)
{
	return PQgetisnull(res, 0, col) ? NULL : PQgetvalue(res, 0, col);
}

/* auth_lookup_done - the account and the counters: throttle, or verify on the pool */
static void auth_lookup_done(const struct db_result *r, void *arg)
{
	struct auth_req *req = arg;
	req->dbr = NULL;
	if (r->status != DB_OK) {
		metric_inc(auth_m.attempts[AR_UNAVAILABLE]);
		metric_observe(auth_m.seconds, auth_now() - req->t0);
		struct rpc_call *call = req->call;
		rpc_call_set_data(call, NULL);
		req->call = NULL;
		rt_finish_db_error(call, r, "account lookup");
		auth_req_free(req);
		return;
	}
	if (PQntuples(r->res) != 1 || PQnfields(r->res) != 8) {
		auth_finish(req, AR_UNAVAILABLE, NULL, RPC_INTERNAL, "unexpected lookup result");
		return;
	}
	const char *id = auth_col(r->res, 0);
	long acct_fails = strtol(PQgetvalue(r->res, 0, 4), NULL, 10);
	long ip_fails = strtol(PQgetvalue(r->res, 0, 5), NULL, 10);
	long acct_retry = strtol(PQgetvalue(r->res, 0, 6), NULL, 10);
	long ip_retry = strtol(PQgetvalue(r->res, 0, 7), NULL, 10);
	if (acct_fails >= AUTH_ACCT_MAX_FAILURES || ip_fails >= AUTH_IP_MAX_FAILURES) {
		long retry = 0;
		if (acct_fails >= AUTH_ACCT_MAX_FAILURES)
			retry = acct_retry;
		if (ip_fails >= AUTH_IP_MAX_FAILURES && ip_retry > retry)
			retry = ip_retry;
		if (retry < 1)
			retry = 1;
		auth_log_failure(req, "auth throttled",
				 acct_fails >= AUTH_ACCT_MAX_FAILURES ? "address_failures" : "ip_failures");
		auth_reply(req, AR_THROTTLED, CODE(THROTTLED), (uint32_t)MAIL_MIN(retry, (long)UINT32_MAX));
		return;
	}
	if (id != NULL) {
		req->found = true;
		req->account_id = strtoull(id, NULL, 10);
		req->address = xstrdup(PQgetvalue(r->res, 0, 1));
		req->disabled = PQgetvalue(r->res, 0, 3)[0] == 't';
	}
	/* unknown or disabled: the same work on the dummy hash */
	req->hash = xstrdup(req->found && !req->disabled ? PQgetvalue(r->res, 0, 2) : auth_dummy_hash);
	req->job_pending = true;
	if (workpool_submit(req->loop->rt->hashers, req->loop->base, auth_verify_work, auth_verify_done, req) < 0) {
		req->job_pending = false;
		auth_log_failure(req, "auth refused", "hasher_queue_full");
		auth_reply(req, AR_TEMPFAIL, CODE(TEMPFAIL), 0);
	}
}

/* auth_plain_split - authzid NUL authcid NUL passwd (RFC 4616); false if malformed */
static bool auth_plain_split(const uint8_t *p, size_t n, size_t *zid_len, const uint8_t **cid,
			     size_t *cid_len, const uint8_t **pw, size_t *pw_len)
{
	if (n == 0)
		return false;
	const uint8_t *a = memchr(p, 0, n);
	if (a == NULL)
		return false;
	const uint8_t *b = memchr(a + 1, 0, n - (size_t)(a + 1 - p));
	if (b == NULL || memchr(b + 1, 0, n - (size_t)(b + 1 - p)) != NULL)
		return false;
	*zid_len = (size_t)(a - p);
	*cid = a + 1;
	*cid_len = (size_t)(b - (a + 1));
	*pw = b + 1;
	*pw_len = n - (size_t)(b + 1 - p);
	return true;
}

/* auth_on_message - the request: credentials by mechanism, then the lookup */
static void auth_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct auth_req *req = auth_get(call);
	if (req == NULL)
		return;
	if (req->got_request) {
		auth_finish(req, AR_INVALID, NULL, RPC_INVALID_ARGUMENT, "one request message expected");
		return;
	}
	req->got_request = true;
	Mail__Router__V1__AuthenticateRequest *ar = mail__router__v1__authenticate_request__unpack(NULL, len, msg);
	if (ar == NULL) {
		auth_finish(req, AR_INVALID, NULL, RPC_INVALID_ARGUMENT, "malformed AuthenticateRequest");
		return;
	}
	const char *mech = ar->mechanism != NULL ? ar->mechanism : "";
	const uint8_t *user = NULL, *pw = NULL;
	size_t user_len = 0, pw_len = 0;
	bool authz_mismatch = false;
	if (strcasecmp(mech, "PASSWORD") == 0 || strcasecmp(mech, "LOGIN") == 0) {
		req->mech = strcasecmp(mech, "LOGIN") == 0 ? MECH_LOGIN : MECH_PASSWORD;
		req->mech_name = req->mech == MECH_LOGIN ? "LOGIN" : "PASSWORD";
		user = (const uint8_t *)(ar->username != NULL ? ar->username : "");
		user_len = strlen((const char *)user);
		pw = ar->password.data;
		pw_len = ar->password.len;
	} else if (strcasecmp(mech, "PLAIN") == 0) {
		req->mech = MECH_PLAIN;
		req->mech_name = "PLAIN";
		size_t zid_len;
		if (!auth_plain_split(ar->sasl_initial.data, ar->sasl_initial.len, &zid_len, &user, &user_len,
				      &pw, &pw_len)) {
			mail__router__v1__authenticate_request__free_unpacked(ar, NULL);
			auth_log_failure(req, "auth refused", "malformed_plain");
			auth_reply(req, AR_INVALID, CODE(INVALID), 0);
			return;
		}
		/* authzid: empty, or the authcid itself (no proxy authorization) */
		authz_mismatch = zid_len != 0 && (zid_len != user_len ||
						  strncasecmp((const char *)ar->sasl_initial.data,
							      (const char *)user, user_len) != 0);
	} else {
		req->mech_name = "unknown";
		mail__router__v1__authenticate_request__free_unpacked(ar, NULL);
		auth_reply(req, AR_INVALID, CODE(INVALID), 0);
		return;
	}
	const char *ip = ar->client_ip != NULL ? ar->client_ip : "";
	size_t ip_len = strlen(ip);
	if (ip_len > 0 && ip_len <= AUTH_IP_MAX && auth_text_ok(ip, ip_len)) {
		free(req->ip);
		req->ip = xstrndup(ip, ip_len);
	}
	const char *proto = ar->protocol != NULL ? ar->protocol : "";
	req->protocol = xstrndup(proto, MAIL_MIN(strlen(proto), (size_t)AUTH_MECH_MAX));
	if (user_len == 0 || user_len > AUTH_USER_MAX || !auth_text_ok((const char *)user, user_len)) {
		mail__router__v1__authenticate_request__free_unpacked(ar, NULL);
		auth_log_failure(req, "auth refused", "bad_username");
		auth_reply(req, AR_INVALID, CODE(INVALID), 0);
		return;
	}
	req->user = auth_lower((const char *)user, user_len);
	if (authz_mismatch || pw_len == 0 || pw_len > PASSWORD_MAX_LEN) {
		mail__router__v1__authenticate_request__free_unpacked(ar, NULL);
		auth_log_failure(req, "auth failed", authz_mismatch ? "authzid_not_authcid" : "bad_password_length");
		auth_reply(req, AR_FAILED, CODE(AUTH_FAILED), 0);
		return;
	}
	req->password = xmalloc(pw_len + 1);
	memcpy(req->password, pw, pw_len);
	req->password[pw_len] = '\0';
	req->password_len = pw_len;
	/* the unpacked request held the password too */
	auth_wipe((char *)ar->password.data, ar->password.len);
	auth_wipe((char *)ar->sasl_initial.data, ar->sasl_initial.len);
	mail__router__v1__authenticate_request__free_unpacked(ar, NULL);

	char *acct_key = xasprintf("acct:%s", req->user);
	char *ip_key = req->ip[0] != '\0' ? xasprintf("ip:%s", req->ip) : NULL;
	char acct_w[16], ip_w[16];
	snprintf(acct_w, sizeof(acct_w), "%d", AUTH_ACCT_WINDOW_S);
	snprintf(ip_w, sizeof(ip_w), "%d", AUTH_IP_WINDOW_S);
	const char *values[5] = { req->user, acct_key, ip_key, acct_w, ip_w };
	req->dbr = db_exec(req->loop->db, "auth_lookup", 5, values, NULL, NULL, 0, auth_lookup_done, req);
	free(acct_key);
	free(ip_key);
}

/* ------------------------------------------------------------------ MaildropLock */

struct lock_req {
	struct rpc_call *call;
	struct daemon_worker *w;          /* held while the request lives */
	struct db_request *dbr;
	bool got_request;
	int action;
};

static void lock_on_start(struct rpc_call *call)
{
	struct lock_req *lr = XNEW(struct lock_req);
	lr->call = call;
	lr->w = rt_worker_hold(call);
	rpc_call_set_data(call, lr);
}

static void lock_free(struct lock_req *lr)
{
	db_request_cancel(&lr->dbr);
	rt_worker_release(lr->w);
	free(lr);
}

/* lock_finish - one reply with code (or a bare status), then free */
static void lock_finish(struct lock_req *lr, auth_code code, enum rpc_status st, const char *msg)
{
	if (lr->call != NULL) {
		rpc_call_set_data(lr->call, NULL);
		if (st == RPC_OK) {
			Mail__Router__V1__MaildropLockReply reply = MAIL__ROUTER__V1__MAILDROP_LOCK_REPLY__INIT;
			reply.code = code;
			rpc_call_send_pb(lr->call, &reply.base);
		}
		rpc_call_finish(lr->call, st, msg);
	}
	lock_free(lr);
}

/* lock_on_cancel - the client went away: drop the db request (a lease taken anyway expires) */
static void lock_on_cancel(struct rpc_call *call)
{
	struct lock_req *lr = rpc_call_data(call);
	if (lr == NULL)
		return;
	rpc_call_set_data(call, NULL);
	lock_free(lr);
}

/* lock_on_half_close - unary: a half-close without the request is an error */
static void lock_on_half_close(struct rpc_call *call)
{
	struct lock_req *lr = rpc_call_data(call);
	if (lr != NULL && !lr->got_request) {
		lock_finish(lr, CODE(INVALID), RPC_INVALID_ARGUMENT, "missing request message");
	}
}

/* lock_done - acquire/renew: true = ours; release: always OK (idempotent) */
static void lock_done(const struct db_result *r, void *arg)
{
	struct lock_req *lr = arg;
	lr->dbr = NULL;
	if (r->status == DB_SQL_ERROR && strcmp(r->sqlstate, "23503") == 0) {
		lock_finish(lr, CODE(NO_SUCH_USER), RPC_OK, NULL); /* no such account */
		return;
	}
	if (r->status != DB_OK) {
		struct rpc_call *call = lr->call;
		rpc_call_set_data(call, NULL);
		lr->call = NULL;
		rt_finish_db_error(call, r, "maildrop lock");
		lock_free(lr);
		return;
	}
	bool ok = PQntuples(r->res) == 1 && PQgetvalue(r->res, 0, 0)[0] == 't';
	if (lr->action == MAIL__ROUTER__V1__MAILDROP_LOCK_REQUEST__ACTION__RELEASE || ok) {
		lock_finish(lr, CODE(OK), RPC_OK, NULL);
		return;
	}
	metric_inc(auth_m.lock_in_use);
	lock_finish(lr, CODE(IN_USE), RPC_OK, NULL);
}

/* lock_on_message - ACQUIRE/RENEW take or extend the lease for holder; RELEASE drops it */
static void lock_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct lock_req *lr = rpc_call_data(call);
	if (lr == NULL)
		return;
	if (lr->got_request) {
		lock_finish(lr, CODE(INVALID), RPC_INVALID_ARGUMENT, "one request message expected");
		return;
	}
	lr->got_request = true;
	Mail__Router__V1__MaildropLockRequest *req = mail__router__v1__maildrop_lock_request__unpack(NULL, len, msg);
	if (req == NULL) {
		lock_finish(lr, CODE(INVALID), RPC_INVALID_ARGUMENT, "malformed MaildropLockRequest");
		return;
	}
	uint64_t account = req->session != NULL ? req->session->account_id : 0;
	const char *holder = req->holder != NULL ? req->holder : "";
	size_t hlen = strlen(holder);
	lr->action = (int)req->action;
	if (account == 0 || hlen == 0 || hlen > MAILDROP_HOLDER_MAX || !auth_text_ok(holder, hlen) ||
	    (req->action != MAIL__ROUTER__V1__MAILDROP_LOCK_REQUEST__ACTION__ACQUIRE &&
	     req->action != MAIL__ROUTER__V1__MAILDROP_LOCK_REQUEST__ACTION__RENEW &&
	     req->action != MAIL__ROUTER__V1__MAILDROP_LOCK_REQUEST__ACTION__RELEASE)) {
		mail__router__v1__maildrop_lock_request__free_unpacked(req, NULL);
		lock_finish(lr, CODE(INVALID), RPC_OK, NULL);
		return;
	}
	uint32_t lease = req->lease_ms == 0 ? MAILDROP_LEASE_DEFAULT_MS : req->lease_ms;
	if (lease < MAILDROP_LEASE_MIN_MS)
		lease = MAILDROP_LEASE_MIN_MS;
	if (lease > MAILDROP_LEASE_MAX_MS)
		lease = MAILDROP_LEASE_MAX_MS;
	char acct[24], lease_s[16];
	snprintf(acct, sizeof(acct), "%" PRIu64, account);
	snprintf(lease_s, sizeof(lease_s), "%" PRIu32, lease);
	struct rt_loop *l = rt_loop_of_call(call);
	if (req->action == MAIL__ROUTER__V1__MAILDROP_LOCK_REQUEST__ACTION__RELEASE) {
		const char *values[2] = { acct, holder };
		lr->dbr = db_exec(l->db, "auth_maildrop_release", 2, values, NULL, NULL, 0, lock_done, lr);
	} else {
		const char *values[3] = { acct, holder, lease_s };
		lr->dbr = db_exec(l->db, "auth_maildrop_acquire", 3, values, NULL, NULL, 0, lock_done, lr);
	}
	mail__router__v1__maildrop_lock_request__free_unpacked(req, NULL);
}

/* ------------------------------------------------------------------ module */

/* auth_main_init - metrics, and the dummy hash (same parameters as new hashes) */
static void auth_main_init(struct router *rt, struct httpd *admin, struct httpd *metrics)
{
	for (int i = 0; i < AR_N; i++) {
		char name[80];
		snprintf(name, sizeof(name), "auth_attempts_total{result=\"%s\"}", auth_result_names[i]);
		auth_m.attempts[i] = metric_counter(name, "Authenticate calls by result");
	}
	auth_m.seconds = metric_histogram("auth_seconds", "Authenticate duration", NULL, 0);
	auth_m.lock_in_use = metric_counter("maildrop_lock_in_use_total",
					    "MaildropLock requests refused: another holder");
	uint8_t raw[24];
	char pw[sizeof(raw) * 2 + 1];
	if (RAND_bytes(raw, sizeof(raw)) != 1)
		log_fatal("no random bytes for the dummy hash", "%s", "");
	for (size_t i = 0; i < sizeof(raw); i++)
		snprintf(pw + 2 * i, 3, "%02x", raw[i]);
	const char *err = "";
	char *h = password_hash(pw, strlen(pw), &rt->pw_params, &err);
	if (h == NULL || strlen(h) >= sizeof(auth_dummy_hash))
		log_fatal("cannot make the dummy password hash", "error=\"%s\"", err);
	memcpy(auth_dummy_hash, h, strlen(h) + 1);
	free(h);
}

static const struct rpc_method auth_methods[] = {
	{ "/mail.router.v1.Router/Authenticate", auth_on_start, auth_on_message, auth_on_half_close,
	  auth_on_cancel, NULL },
	{ "/mail.router.v1.Router/MaildropLock", lock_on_start, lock_on_message, lock_on_half_close,
	  lock_on_cancel, NULL },
};

/* $1 address (lower-cased), $2 address key, $3 IP key (NULL: none), $4/$5 windows (s):
 * the account, the failures of each key in its current window and the ms left in it */
#define AUTH_LOOKUP_SQL \
	"SELECT a.id, a.address, a.password_hash, a.disabled," \
	" coalesce(fa.count, 0), coalesce(fi.count, 0)," \
	" coalesce(ceil(extract(epoch FROM fa.window_start + $4::integer * interval '1 second' - now()) * 1000), 0)::bigint," \
	" coalesce(ceil(extract(epoch FROM fi.window_start + $5::integer * interval '1 second' - now()) * 1000), 0)::bigint" \
	" FROM (SELECT 1) AS one" \
	" LEFT JOIN accounts a ON a.address = $1::text" \
	" LEFT JOIN auth_failures fa ON fa.key = $2::text" \
	"  AND fa.window_start >= now() - $4::integer * interval '1 second'" \
	" LEFT JOIN auth_failures fi ON fi.key = $3::text" \
	"  AND fi.window_start >= now() - $5::integer * interval '1 second'"

static const struct db_stmt auth_stmts[] = {
	{ "auth_lookup", AUTH_LOOKUP_SQL, 5 },
	{ "auth_fail",
	  "SELECT mail_auth_failure($1::text, $3::integer),"
	  " CASE WHEN $2::text IS NULL THEN 0 ELSE mail_auth_failure($2::text, $4::integer) END", 4 },
	{ "auth_maildrop_acquire", "SELECT mail_maildrop_acquire($1::bigint, $2::text, $3::integer)", 3 },
	{ "auth_maildrop_release", "SELECT mail_maildrop_release($1::bigint, $2::text)", 2 },
};

const struct rt_module rt_mod_auth = {
	.name = "auth",
	.methods = auth_methods,
	.n_methods = N_ELEMENTS(auth_methods),
	.stmts = auth_stmts,
	.n_stmts = N_ELEMENTS(auth_stmts),
	.slot = AUTH_SLOT,
	.main_init = auth_main_init,
};
