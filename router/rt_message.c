/* rt_message.c - mail.router.v1 message operations (module rt_mod_message,
 * slot 3): the method table, the plumbing every call of the module shares,
 * and the write operations:
 *   Store    STORE / UID STORE (+FLAGS, -FLAGS, FLAGS) with CONDSTORE
 *            UNCHANGEDSINCE, through mail_store_flags;
 *   Copy     COPY and MOVE with the COPYUID data, through mail_copy_move;
 *   Expunge  EXPUNGE, UID EXPUNGE and POP3's UPDATE state, through mail_expunge.
 * Each is ONE statement: the schema's function joined LATERAL to the session's
 * mailbox row, so a frontend can only touch mailboxes of the account it names
 * (no row, no call: the reply is NO_SUCH_MAILBOX). FetchMeta and FetchBody are
 * in rt_fetch.c, Search in rt_search.c; rt_message.h holds what they share.
 *
 * Ownership: a call's state (struct msg_call) is created by its first request
 * message and freed exactly once - when we finish the call (msg_finish,
 * msg_reply) or when the runtime cancels it (msg_on_cancel); the db request
 * in flight is cancelled with it, so a late answer is dropped quietly. */
#include "lib/common.h"
#include "router/rt_message.h"
#include "router/migrate.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include <inttypes.h>
#include <stdlib.h>

/* ================================================================ call plumbing */

void *msg_call_new(struct rpc_call *call, size_t size, const char *what)
{
	struct msg_call *old = rpc_call_data(call);
	if (old != NULL) {
		msg_finish(old, RPC_INVALID_ARGUMENT, "one request message expected");
		return NULL;
	}
	struct msg_call *mc = xcalloc(1, size);
	mc->call = call;
	mc->l = rt_loop_of_call(call);
	mc->what = what;
	rpc_call_set_data(call, mc);
	return mc;
}

void msg_call_end(struct msg_call *mc)
{
	if (mc->req != NULL)
		db_request_cancel(&mc->req);
	if (mc->retry_ev != NULL)
		event_free(mc->retry_ev);
	if (mc->fini != NULL)
		mc->fini(mc);
	for (int i = 0; i < mc->nparams; i++)
		free(mc->params[i]);
	free(mc->params);
	free(mc->sql);
	free(mc);
}

void msg_finish(struct msg_call *mc, enum rpc_status st, const char *message)
{
	struct rpc_call *call = mc->call;
	rpc_call_set_data(call, NULL);
	rpc_call_finish(call, st, message);
	msg_call_end(mc);
}

void msg_reply(struct msg_call *mc, const ProtobufCMessage *reply)
{
	if (rpc_call_send_pb(mc->call, reply) < 0) {
		msg_finish(mc, RPC_INTERNAL, "reply not sent");
		return;
	}
	msg_finish(mc, RPC_OK, NULL);
}

void msg_db_error(struct msg_call *mc, const struct db_result *r)
{
	struct rpc_call *call = mc->call;
	rpc_call_set_data(call, NULL);
	rt_finish_db_error(call, r, mc->what);
	msg_call_end(mc);
}

/* msg_on_half_close - the request side ended: a unary call must have had its message */
void msg_on_half_close(struct rpc_call *call)
{
	if (rpc_call_data(call) == NULL)
		rpc_call_finish(call, RPC_INVALID_ARGUMENT, "request message missing");
}

/* msg_on_cancel - the client went away (or the deadline passed): drop everything */
void msg_on_cancel(struct rpc_call *call)
{
	struct msg_call *mc = rpc_call_data(call);
	if (mc == NULL)
		return;
	rpc_call_set_data(call, NULL);
	log_debug("message call cancelled", "call=%llu op=%s", (unsigned long long)rpc_call_id(call),
		  mc->what);
	msg_call_end(mc);
}

static void msg_exec_send(struct msg_call *mc);

/* msg_retry_cb - the pause after DB_UNAVAILABLE is over: send again */
static void msg_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	msg_exec_send(arg);
}

/* msg_db_done - the db answer: retry what is safe to retry, else hand it on */
static void msg_db_done(const struct db_result *r, void *arg)
{
	struct msg_call *mc = arg;
	mc->req = NULL;
	if (r->status == DB_UNAVAILABLE && mc->attempts <= MSG_DB_RETRIES &&
	    (mc->readonly || db_result_retryable(r))) {
		log_info("message db request retried", "call=%llu op=%s attempt=%d executed=%d",
			 (unsigned long long)rpc_call_id(mc->call), mc->what, mc->attempts,
			 (int)r->may_have_executed);
		if (mc->retry_ev == NULL)
			mc->retry_ev = evtimer_new(mc->l->base, msg_retry_cb, mc);
		struct timeval tv = { 0, MSG_DB_RETRY_MS * 1000 };
		evtimer_add(mc->retry_ev, &tv);
		return;
	}
	mc->cb(mc, r);
}

/* msg_exec_send - one attempt of the call's statement */
static void msg_exec_send(struct msg_call *mc)
{
	const char *const *values = (const char *const *)mc->params;
	mc->attempts++;
	if (mc->stmt != NULL)
		mc->req = db_exec(mc->l->db, mc->stmt, mc->nparams, values, NULL, NULL,
				  mc->result_format, msg_db_done, mc);
	else
		mc->req = db_exec_sql(mc->l->db, mc->sql, mc->nparams, values, NULL, NULL,
				      mc->result_format, msg_db_done, mc);
}

void msg_exec(struct msg_call *mc, const char *stmt, char *sql, int nparams, char **params,
	      int result_format, bool readonly, msg_db_cb *cb)
{
	mc->stmt = stmt;
	mc->sql = sql;
	mc->nparams = nparams;
	mc->params = params;
	mc->result_format = result_format;
	mc->readonly = readonly;
	mc->cb = cb;
	msg_exec_send(mc);
}

char **msg_params(int n)
{
	return xcalloc((size_t)n, sizeof(char *));
}

bool msg_session_check(struct msg_call *mc, const Mail__Router__V1__Session *s,
		       uint64_t mailbox_id)
{
	if (s == NULL || s->account_id == 0 || s->account_id > INT64_MAX || mailbox_id == 0 ||
	    mailbox_id > INT64_MAX)
		return false;
	mc->account_id = s->account_id;
	return true;
}

int msg_code_of_sqlstate(const char *sqlstate)
{
	static const struct {
		const char *state;
		msg_code code;
	} map[] = {
		{ MIGRATE_SQLSTATE_OVER_QUOTA, MAIL__ROUTER__V1__CODE__CODE_OVER_QUOTA },
		{ MIGRATE_SQLSTATE_NO_MAILBOX, MAIL__ROUTER__V1__CODE__CODE_NO_SUCH_MAILBOX },
		{ MIGRATE_SQLSTATE_EXISTS, MAIL__ROUTER__V1__CODE__CODE_MAILBOX_EXISTS },
		{ MIGRATE_SQLSTATE_CANNOT, MAIL__ROUTER__V1__CODE__CODE_CANNOT },
		{ MIGRATE_SQLSTATE_INVALID, MAIL__ROUTER__V1__CODE__CODE_INVALID },
		{ MIGRATE_SQLSTATE_NO_ACCOUNT, MAIL__ROUTER__V1__CODE__CODE_NO_SUCH_USER },
	};
	for (size_t i = 0; sqlstate != NULL && i < N_ELEMENTS(map); i++)
		if (strcmp(sqlstate, map[i].state) == 0)
			return (int)map[i].code;
	return -1;
}

/* ================================================================ UID sets */

bool msg_uidset_empty(const Mail__Router__V1__UidSet *set)
{
	return set == NULL || set->n_ranges == 0;
}

char *msg_uidset_sql(const Mail__Router__V1__UidSet *set, const char **error_r)
{
	size_t n = set != NULL ? set->n_ranges : 0;
	if (n > MSG_MAX_UID_RANGES) {
		*error_r = "too many UID ranges";
		return NULL;
	}
	size_t cap = 3 + n * 26, len = 0;
	char *s = xmalloc(cap);
	s[len++] = '{';
	for (size_t i = 0; i < n; i++) {
		const Mail__Router__V1__UidRange *r = set->ranges[i];
		if (r == NULL)
			continue;
		uint64_t a = r->first, b = r->last;
		if (a > b) {
			uint64_t t = a;
			a = b;
			b = t;
		}
		if (b == 0)
			continue; /* UID 0 does not exist */
		if (a == 0)
			a = 1;
		int w = snprintf(s + len, cap - len, "%s[%" PRIu64 ",%" PRIu64 ")", len > 1 ? "," : "",
				 a, b + 1);
		len += (size_t)w;
	}
	s[len++] = '}';
	s[len] = '\0';
	return s;
}

void msg_uidset_init(struct msg_uidset_builder *b)
{
	memset(b, 0, sizeof(*b));
	b->set = (Mail__Router__V1__UidSet)MAIL__ROUTER__V1__UID_SET__INIT;
}

void msg_uidset_add(struct msg_uidset_builder *b, uint32_t uid)
{
	if (b->n > 0 && b->ranges[b->n - 1].last != UINT32_MAX && b->ranges[b->n - 1].last + 1 == uid) {
		b->ranges[b->n - 1].last = uid;
		return;
	}
	if (b->n == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 16;
		b->ranges = xrealloc(b->ranges, b->cap * sizeof(*b->ranges));
	}
	b->ranges[b->n] = (Mail__Router__V1__UidRange)MAIL__ROUTER__V1__UID_RANGE__INIT;
	b->ranges[b->n].first = b->ranges[b->n].last = uid;
	b->n++;
}

Mail__Router__V1__UidSet *msg_uidset_done(struct msg_uidset_builder *b)
{
	free(b->set.ranges);
	b->set.ranges = xcalloc(b->n ? b->n : 1, sizeof(*b->set.ranges));
	for (size_t i = 0; i < b->n; i++)
		b->set.ranges[i] = &b->ranges[i];
	b->set.n_ranges = b->n;
	return &b->set;
}

void msg_uidset_free(struct msg_uidset_builder *b)
{
	free(b->set.ranges);
	free(b->ranges);
	msg_uidset_init(b);
}

/* ================================================================ keywords */

bool msg_keyword_valid(const char *kw)
{
	size_t n = strlen(kw);
	if (n == 0 || n > MSG_MAX_KEYWORD_LEN)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)kw[i];
		/* atom-specials: ( ) { SP CTL % * " \ ] - and 8-bit bytes */
		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c) != NULL)
			return false;
	}
	return true;
}

char *msg_text_array_sql(char *const *v, size_t n)
{
	size_t cap = 3;
	for (size_t i = 0; i < n; i++)
		cap += 2 * strlen(v[i]) + 3;
	char *s = xmalloc(cap);
	size_t len = 0;
	s[len++] = '{';
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			s[len++] = ',';
		s[len++] = '"';
		for (const char *p = v[i]; *p != '\0'; p++) {
			if (*p == '"' || *p == '\\')
				s[len++] = '\\';
			s[len++] = *p;
		}
		s[len++] = '"';
	}
	s[len++] = '}';
	s[len] = '\0';
	return s;
}

/* ================================================================ binary results */

void *msg_arena_alloc(struct msg_arena *a, size_t size)
{
	if (a->n == a->cap) {
		a->cap = a->cap ? a->cap * 2 : 64;
		a->p = xrealloc(a->p, a->cap * sizeof(*a->p));
	}
	void *p = xcalloc(1, size ? size : 1);
	a->p[a->n++] = p;
	return p;
}

void msg_arena_free(struct msg_arena *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->p[i]);
	free(a->p);
	memset(a, 0, sizeof(*a));
}

/* be_u32 - a big-endian 32-bit word */
static uint32_t be_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

bool msg_pg_int(const PGresult *res, int row, int col, int64_t *v_r)
{
	if (PQgetisnull(res, row, col))
		return false;
	int len = PQgetlength(res, row, col);
	const uint8_t *p = (const uint8_t *)PQgetvalue(res, row, col);
	if (len != 2 && len != 4 && len != 8)
		return false;
	uint64_t u = 0;
	for (int i = 0; i < len; i++)
		u = u << 8 | p[i];
	if (len < 8 && (p[0] & 0x80))
		u |= ~(uint64_t)0 << (8 * len);
	*v_r = (int64_t)u;
	return true;
}

bool msg_pg_bytes(const PGresult *res, int row, int col, const uint8_t **p_r, size_t *len_r)
{
	if (PQgetisnull(res, row, col))
		return false;
	*p_r = (const uint8_t *)PQgetvalue(res, row, col);
	*len_r = (size_t)PQgetlength(res, row, col);
	return true;
}

bool msg_pg_text_array(const PGresult *res, int row, int col, struct msg_arena *a,
		       char ***v_r, size_t *n_r)
{
	*v_r = NULL;
	*n_r = 0;
	if (PQgetisnull(res, row, col))
		return true;
	size_t len = (size_t)PQgetlength(res, row, col);
	const uint8_t *p = (const uint8_t *)PQgetvalue(res, row, col);
	/* ndim, has-nulls flag, element type; then per dimension size and lower bound */
	if (len < 12)
		return false;
	uint32_t ndim = be_u32(p);
	if (ndim == 0)
		return true;
	if (ndim != 1 || len < 20)
		return false;
	uint32_t count = be_u32(p + 12);
	size_t pos = 20;
	if (count > (len - pos) / 4)
		return false;
	char **v = msg_arena_alloc(a, (count ? count : 1) * sizeof(*v));
	for (uint32_t i = 0; i < count; i++) {
		if (len - pos < 4)
			return false;
		uint32_t el = be_u32(p + pos);
		pos += 4;
		if (el == UINT32_MAX || el > len - pos)
			return false; /* NULL element, or past the end */
		char *s = msg_arena_alloc(a, (size_t)el + 1);
		memcpy(s, p + pos, el);
		pos += el;
		v[i] = s;
	}
	*v_r = v;
	*n_r = count;
	return true;
}

/* ================================================================ Store */

/* Returns one row per message of the set: (mailbox id, uid, modseq, flags,
 * keywords, status 'changed'|'unchanged'|'modified'); a single row with NULLs
 * for an empty result; no row when the mailbox is not the account's. */
static const char sql_store[] =
	"SELECT mb.id, s.uid, s.modseq, s.flags, s.keywords, s.status"
	" FROM mailboxes mb"
	" LEFT JOIN LATERAL mail_store_flags(mb.id, $3::int8multirange, $4, $5, $6::text[], $7) s ON true"
	" WHERE mb.id = $1 AND mb.account_id = $2"
	" ORDER BY s.uid";

/* store_reply_code - a StoreReply that carries only a code */
static void store_reply_code(struct msg_call *mc, msg_code code)
{
	Mail__Router__V1__StoreReply rep = MAIL__ROUTER__V1__STORE_REPLY__INIT;
	rep.code = code;
	msg_reply(mc, &rep.base);
}

/* store_done - changed messages with their new state, and the modified set */
static void store_done(struct msg_call *mc, const struct db_result *r)
{
	if (r->status == DB_SQL_ERROR && msg_code_of_sqlstate(r->sqlstate) >= 0) {
		store_reply_code(mc, (msg_code)msg_code_of_sqlstate(r->sqlstate));
		return;
	}
	if (r->status != DB_OK) {
		msg_db_error(mc, r);
		return;
	}
	int rows = PQntuples(r->res);
	if (rows == 0) {
		store_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_NO_SUCH_MAILBOX);
		return;
	}
	Mail__Router__V1__StoreReply rep = MAIL__ROUTER__V1__STORE_REPLY__INIT;
	struct msg_arena arena = { 0 };
	struct msg_uidset_builder modified;
	msg_uidset_init(&modified);
	Mail__Router__V1__MessageMeta **changed = msg_arena_alloc(&arena, (size_t)rows * sizeof(*changed));
	size_t n_changed = 0, budget = 64;
	for (int i = 0; i < rows; i++) {
		int64_t uid, modseq, flags;
		const uint8_t *st;
		size_t st_len;
		if (PQgetisnull(r->res, i, 1))
			continue;
		if (!msg_pg_int(r->res, i, 1, &uid) || !msg_pg_int(r->res, i, 2, &modseq) ||
		    !msg_pg_int(r->res, i, 3, &flags) || !msg_pg_bytes(r->res, i, 5, &st, &st_len))
			goto bad;
		if (st_len == 8 && memcmp(st, "modified", 8) == 0) {
			msg_uidset_add(&modified, (uint32_t)uid);
			continue;
		}
		if (st_len != 7 || memcmp(st, "changed", 7) != 0 || rep.truncated)
			continue;
		Mail__Router__V1__MessageMeta *m = msg_arena_alloc(&arena, sizeof(*m));
		*m = (Mail__Router__V1__MessageMeta)MAIL__ROUTER__V1__MESSAGE_META__INIT;
		m->uid = (uint32_t)uid;
		m->modseq = (uint64_t)modseq;
		m->flags = (uint32_t)flags;
		if (!msg_pg_text_array(r->res, i, 4, &arena, &m->keywords, &m->n_keywords))
			goto bad;
		size_t sz = mail__router__v1__message_meta__get_packed_size(m) + 8;
		if (budget + sz > MSG_REPLY_BUDGET) {
			rep.truncated = true;
			continue;
		}
		budget += sz;
		changed[n_changed++] = m;
	}
	rep.changed = changed;
	rep.n_changed = n_changed;
	rep.modified = msg_uidset_done(&modified);
	rep.code = modified.n > 0 ? MAIL__ROUTER__V1__CODE__CODE_MODIFIED : MAIL__ROUTER__V1__CODE__CODE_OK;
	msg_reply(mc, &rep.base);
	msg_uidset_free(&modified);
	msg_arena_free(&arena);
	return;
bad:
	msg_uidset_free(&modified);
	msg_arena_free(&arena);
	log_error("malformed store result", "call=%llu", (unsigned long long)rpc_call_id(mc->call));
	msg_finish(mc, RPC_INTERNAL, "malformed database result");
}

/* store_on_message - STORE / UID STORE: validate, then one statement */
static void store_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct msg_call *mc = msg_call_new(call, sizeof(*mc), "Store");
	if (mc == NULL)
		return;
	Mail__Router__V1__StoreRequest *req = mail__router__v1__store_request__unpack(NULL, len, msg);
	if (req == NULL) {
		msg_finish(mc, RPC_INVALID_ARGUMENT, "malformed StoreRequest");
		return;
	}
	const char *mode = NULL, *err = NULL;
	switch (req->mode) {
	case MAIL__ROUTER__V1__STORE_REQUEST__MODE__REPLACE:
		mode = "set";
		break;
	case MAIL__ROUTER__V1__STORE_REQUEST__MODE__ADD:
		mode = "add";
		break;
	case MAIL__ROUTER__V1__STORE_REQUEST__MODE__REMOVE:
		mode = "remove";
		break;
	default:
		break;
	}
	bool ok = msg_session_check(mc, req->session, req->mailbox_id) && mode != NULL &&
		  (req->flags & ~31u) == 0 && req->n_keywords <= MSG_MAX_KEYWORDS &&
		  req->unchanged_since <= INT64_MAX;
	for (size_t i = 0; ok && i < req->n_keywords; i++)
		ok = msg_keyword_valid(req->keywords[i]);
	char *uids = ok ? msg_uidset_sql(req->uids, &err) : NULL;
	if (!ok || uids == NULL) {
		log_info("store refused", "call=%llu error=\"%s\"", (unsigned long long)rpc_call_id(call),
			 err != NULL ? err : "invalid argument");
		mail__router__v1__store_request__free_unpacked(req, NULL);
		store_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_INVALID);
		return;
	}
	char **p = msg_params(7);
	p[0] = xasprintf("%" PRIu64, req->mailbox_id);
	p[1] = xasprintf("%" PRIu64, req->session->account_id);
	p[2] = uids;
	p[3] = xstrdup(mode);
	p[4] = xasprintf("%u", req->flags);
	p[5] = msg_text_array_sql(req->keywords, req->n_keywords);
	if (req->unchanged_since != 0 || req->unchanged_since_set)
		p[6] = xasprintf("%" PRIu64, req->unchanged_since);
	mail__router__v1__store_request__free_unpacked(req, NULL);
	msg_exec(mc, "message_store", NULL, 7, p, 1, false, store_done);
}

/* ================================================================ Copy / Move */

/* One row per copied message (source uid, new uid, destination UIDVALIDITY,
 * modseq), a row of NULLs when nothing matched, none when the source mailbox
 * is not the account's. A missing destination makes mail_copy_move raise
 * ML002 (it is called with NULL), an invalid name mail_mailbox_name ML005. */
static const char sql_copy[] =
	"SELECT c.src_uid, c.dst_uid, c.uidvalidity, c.modseq"
	" FROM mailboxes s"
	" LEFT JOIN mailboxes d ON d.account_id = s.account_id AND d.name = mail_mailbox_name($4)"
	" LEFT JOIN LATERAL mail_copy_move(s.id, $3::int8multirange, d.id, $5) c ON true"
	" WHERE s.id = $1 AND s.account_id = $2"
	" ORDER BY c.src_uid";

/* copy_reply_code - a CopyReply that carries only a code */
static void copy_reply_code(struct msg_call *mc, msg_code code)
{
	Mail__Router__V1__CopyReply rep = MAIL__ROUTER__V1__COPY_REPLY__INIT;
	rep.code = code;
	msg_reply(mc, &rep.base);
}

/* copy_done - COPYUID: destination UIDVALIDITY, source and new UIDs in order */
static void copy_done(struct msg_call *mc, const struct db_result *r)
{
	if (r->status == DB_SQL_ERROR && msg_code_of_sqlstate(r->sqlstate) >= 0) {
		copy_reply_code(mc, (msg_code)msg_code_of_sqlstate(r->sqlstate));
		return;
	}
	if (r->status != DB_OK) {
		msg_db_error(mc, r);
		return;
	}
	int rows = PQntuples(r->res);
	if (rows == 0) {
		copy_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_NO_SUCH_MAILBOX);
		return;
	}
	Mail__Router__V1__CopyReply rep = MAIL__ROUTER__V1__COPY_REPLY__INIT;
	struct msg_uidset_builder src, dst;
	msg_uidset_init(&src);
	msg_uidset_init(&dst);
	for (int i = 0; i < rows; i++) {
		int64_t su, du, uidv;
		if (PQgetisnull(r->res, i, 0))
			continue;
		if (!msg_pg_int(r->res, i, 0, &su) || !msg_pg_int(r->res, i, 1, &du) ||
		    !msg_pg_int(r->res, i, 2, &uidv)) {
			msg_uidset_free(&src);
			msg_uidset_free(&dst);
			msg_finish(mc, RPC_INTERNAL, "malformed database result");
			return;
		}
		msg_uidset_add(&src, (uint32_t)su);
		msg_uidset_add(&dst, (uint32_t)du);
		rep.uidvalidity = (uint32_t)uidv;
	}
	rep.source_uids = msg_uidset_done(&src);
	rep.dest_uids = msg_uidset_done(&dst);
	msg_reply(mc, &rep.base);
	msg_uidset_free(&src);
	msg_uidset_free(&dst);
}

/* utf8_valid - well-formed UTF-8 (PostgreSQL refuses anything else as text) */
static bool utf8_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p != '\0') {
		unsigned c = *p, n;
		uint32_t cp;
		if (c < 0x80) {
			p++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (unsigned i = 1; i <= n; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i] & 0x3f);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		p += n + 1;
	}
	return true;
}

/* copy_on_message - COPY / MOVE (move = true) of a UID set to a named mailbox */
static void copy_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct msg_call *mc = msg_call_new(call, sizeof(*mc), "Copy");
	if (mc == NULL)
		return;
	Mail__Router__V1__CopyRequest *req = mail__router__v1__copy_request__unpack(NULL, len, msg);
	if (req == NULL) {
		msg_finish(mc, RPC_INVALID_ARGUMENT, "malformed CopyRequest");
		return;
	}
	mc->what = req->move ? "Move" : "Copy";
	const char *err = NULL;
	size_t dlen = strlen(req->destination);
	bool ok = msg_session_check(mc, req->session, req->mailbox_id) && dlen > 0 && dlen <= 1000 &&
		  utf8_valid(req->destination);
	char *uids = ok ? msg_uidset_sql(req->uids, &err) : NULL;
	if (uids == NULL) {
		log_info("copy refused", "call=%llu error=\"%s\"", (unsigned long long)rpc_call_id(call),
			 err != NULL ? err : "invalid argument");
		mail__router__v1__copy_request__free_unpacked(req, NULL);
		copy_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_INVALID);
		return;
	}
	char **p = msg_params(5);
	p[0] = xasprintf("%" PRIu64, req->mailbox_id);
	p[1] = xasprintf("%" PRIu64, req->session->account_id);
	p[2] = uids;
	p[3] = xstrdup(req->destination);
	p[4] = xstrdup(req->move ? "t" : "f");
	mail__router__v1__copy_request__free_unpacked(req, NULL);
	msg_exec(mc, "message_copy", NULL, 5, p, 1, false, copy_done);
}

/* ================================================================ Expunge */

/* The expunged uids with the expunge's modseq; one row of NULLs (with the
 * mailbox's highestmodseq) when nothing was expunged; no row when the mailbox
 * is not the account's. $3 NULL: every \Deleted message. */
static const char sql_expunge[] =
	"SELECT mb.highestmodseq, e.uid, e.modseq"
	" FROM mailboxes mb"
	" LEFT JOIN LATERAL mail_expunge(mb.id, $3::int8multirange, $4::boolean) e ON true"
	" WHERE mb.id = $1 AND mb.account_id = $2"
	" ORDER BY e.uid";

/* expunge_reply_code - an ExpungeReply that carries only a code */
static void expunge_reply_code(struct msg_call *mc, msg_code code)
{
	Mail__Router__V1__ExpungeReply rep = MAIL__ROUTER__V1__EXPUNGE_REPLY__INIT;
	rep.code = code;
	msg_reply(mc, &rep.base);
}

/* expunge_done - the expunged set and the mailbox's highestmodseq after it */
static void expunge_done(struct msg_call *mc, const struct db_result *r)
{
	if (r->status == DB_SQL_ERROR && msg_code_of_sqlstate(r->sqlstate) >= 0) {
		expunge_reply_code(mc, (msg_code)msg_code_of_sqlstate(r->sqlstate));
		return;
	}
	if (r->status != DB_OK) {
		msg_db_error(mc, r);
		return;
	}
	int rows = PQntuples(r->res);
	if (rows == 0) {
		expunge_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_NO_SUCH_MAILBOX);
		return;
	}
	Mail__Router__V1__ExpungeReply rep = MAIL__ROUTER__V1__EXPUNGE_REPLY__INIT;
	struct msg_uidset_builder set;
	msg_uidset_init(&set);
	int64_t hms = 0;
	bool ok = msg_pg_int(r->res, 0, 0, &hms);
	for (int i = 0; ok && i < rows; i++) {
		int64_t uid, modseq;
		if (PQgetisnull(r->res, i, 1))
			continue;
		ok = msg_pg_int(r->res, i, 1, &uid) && msg_pg_int(r->res, i, 2, &modseq);
		if (ok) {
			msg_uidset_add(&set, (uint32_t)uid);
			hms = MAIL_MAX(hms, modseq);
		}
	}
	if (!ok) {
		msg_uidset_free(&set);
		msg_finish(mc, RPC_INTERNAL, "malformed database result");
		return;
	}
	rep.expunged = msg_uidset_done(&set);
	rep.highestmodseq = (uint64_t)hms;
	if (set.n > 0)
		log_debug("expunged", "call=%llu mailbox=%s ranges=%zu modseq=%" PRId64,
			  (unsigned long long)rpc_call_id(mc->call), mc->params[0], set.n, hms);
	msg_reply(mc, &rep.base);
	msg_uidset_free(&set);
}

/* expunge_on_message - EXPUNGE (no uids), UID EXPUNGE (uids), POP3 UPDATE
 * (uids + ignore_deleted) */
static void expunge_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct msg_call *mc = msg_call_new(call, sizeof(*mc), "Expunge");
	if (mc == NULL)
		return;
	Mail__Router__V1__ExpungeRequest *req = mail__router__v1__expunge_request__unpack(NULL, len, msg);
	if (req == NULL) {
		msg_finish(mc, RPC_INVALID_ARGUMENT, "malformed ExpungeRequest");
		return;
	}
	const char *err = NULL;
	bool all = msg_uidset_empty(req->uids);
	bool ok = msg_session_check(mc, req->session, req->mailbox_id) && !(all && req->ignore_deleted);
	char *uids = ok && !all ? msg_uidset_sql(req->uids, &err) : NULL;
	if (!ok || (!all && uids == NULL)) {
		log_info("expunge refused", "call=%llu error=\"%s\"", (unsigned long long)rpc_call_id(call),
			 err != NULL ? err : "invalid argument");
		mail__router__v1__expunge_request__free_unpacked(req, NULL);
		expunge_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_INVALID);
		return;
	}
	char **p = msg_params(4);
	p[0] = xasprintf("%" PRIu64, req->mailbox_id);
	p[1] = xasprintf("%" PRIu64, req->session->account_id);
	p[2] = uids; /* NULL: every \Deleted message */
	p[3] = xstrdup(req->ignore_deleted ? "f" : "t");
	mail__router__v1__expunge_request__free_unpacked(req, NULL);
	msg_exec(mc, "message_expunge", NULL, 4, p, 1, false, expunge_done);
}

/* ================================================================ the module */

static const struct rpc_method msg_methods[] = {
	{ .path = "/mail.router.v1.Router/FetchMeta", .on_message = msg_fetch_meta_on_message,
	  .on_half_close = msg_on_half_close, .on_cancel = msg_on_cancel },
	{ .path = "/mail.router.v1.Router/FetchBody", .on_message = msg_fetch_body_on_message,
	  .on_half_close = msg_on_half_close, .on_cancel = msg_on_cancel,
	  .on_writable = msg_fetch_body_on_writable },
	{ .path = "/mail.router.v1.Router/Store", .on_message = store_on_message,
	  .on_half_close = msg_on_half_close, .on_cancel = msg_on_cancel },
	{ .path = "/mail.router.v1.Router/Copy", .on_message = copy_on_message,
	  .on_half_close = msg_on_half_close, .on_cancel = msg_on_cancel },
	{ .path = "/mail.router.v1.Router/Expunge", .on_message = expunge_on_message,
	  .on_half_close = msg_on_half_close, .on_cancel = msg_on_cancel },
	{ .path = "/mail.router.v1.Router/Search", .on_message = msg_search_on_message,
	  .on_half_close = msg_on_half_close, .on_cancel = msg_on_cancel },
};

static const struct db_stmt msg_stmts[] = {
	{ "message_fetch_meta", msg_sql_fetch_meta, MSG_FETCH_META_NPARAMS },
	{ "message_fetch_body", msg_sql_fetch_body, MSG_FETCH_BODY_NPARAMS },
	{ "message_store", sql_store, 7 },
	{ "message_copy", sql_copy, 5 },
	{ "message_expunge", sql_expunge, 4 },
};

struct msg_metrics msg_m;

/* msg_main_init - the module's metrics (process-wide, before the workers run) */
static void msg_main_init(struct router *rt, struct httpd *admin, struct httpd *metrics)
{
	msg_m.body_bytes = metric_counter("message_fetch_body_bytes_total",
					  "message body bytes streamed to frontends (FetchBody)");
	msg_m.body_paused = metric_counter("message_fetch_body_paused_total",
					   "times a body read paused for a slow frontend");
	msg_m.meta_messages = metric_counter("message_fetch_meta_messages_total",
					     "messages returned by FetchMeta");
	msg_m.search_refused = metric_counter("message_search_refused_total",
					      "searches refused as invalid (bad or oversized key trees)");
}

const struct rt_module rt_mod_message = {
	.name = "message",
	.methods = msg_methods,
	.n_methods = N_ELEMENTS(msg_methods),
	.stmts = msg_stmts,
	.n_stmts = N_ELEMENTS(msg_stmts),
	.slot = MSG_MODULE_SLOT,
	.main_init = msg_main_init,
};
