/* rt_mailbox.c - the mailbox RPCs of mail.router.v1 for the IMAP4/POP3
 * front-ends: ListMailboxes, CreateMailbox, DeleteMailbox, RenameMailbox,
 * Subscribe, Status, Select (and EXAMINE) and Quota.
 *
 * Every call is ONE SQL statement, so one round trip and one transaction: the
 * tree operations are the schema's functions (mail_mailbox_create / _rename /
 * _delete in router/migrations/0001_init.sql, rename replaced by 0003), SELECT is
 * mail_select (0003_mailbox.sql: the header, the keyword table and every message's
 * uid/modseq/flags in one consistent snapshot, \Recent claimed only by a
 * read-write SELECT) for the classic one-reply form, or mail_select_page
 * (0007_prune.sql) for the runs form: one page of uid runs per call, so a mailbox
 * of any size can be opened (the paging contract is in proto/router.proto; a page
 * is cut here again to fit MBX_SELECT_PAGE_BYTES). STATUS reads the exact
 * counters the triggers keep (only the \Recent count looks at messages, through
 * a bounded primary key range of the unclaimed uids). Every statement names the
 * session's account, so a mailbox of another account is never found, let alone
 * touched.
 *
 * Names from the front-end are checked here before they reach SQL (UTF-8, '/'
 * hierarchy without empty components, length and depth limits, no control
 * characters) and stored with INBOX's first component upper-cased (INBOX is
 * case-insensitive, RFC 3501 5.1). A name that cannot exist is NO_SUCH_MAILBOX
 * where a mailbox is looked up and CANNOT where one would be made.
 *
 * Ownership: a call's struct mbx_req (its rpc data) is made by its request
 * message and freed when the call ends - by mbx_finish, which also cancels a
 * statement in flight, or in on_cancel - so no db callback ever reaches a call
 * that has gone (db_request_cancel guarantees no callback follows). */
#include "lib/common.h"
#include "router/router.h"
#include "router/migrate.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "router.pb-c.h"
#include <inttypes.h>
#include <stdlib.h>
#include <strings.h>

#define MBX_NAME_MAX 1000	/* bytes of a name (the schema's CHECK) */
#define MBX_DEPTH_MAX 64	/* hierarchy levels of a new name */
#define MBX_STATUS_MAX 1000	/* mailboxes in one Status call */
#define MBX_SPECIAL_USE_MAX 16	/* USE attributes in one CreateMailbox */
/* STATUS RECENT counts the unclaimed uids exactly while they are at most this
 * many (a primary-key range); past it (a mailbox nobody ever SELECTs, POP3 only)
 * it is min(messages, unclaimed uids), exact unless recent ones were expunged */
#define MBX_RECENT_EXACT "1000"
#define MBX_SLOT 2
/* Select, runs form: messages per page (SQL) and bytes per reply; the classic
 * form answers CANNOT rather than send a reply past RPC_DEFAULT_MAX_MESSAGE */
#define MBX_SELECT_PAGE_MAX 200000
#define MBX_SELECT_PAGE_BYTES (3u * 1024 * 1024)

#define CODE(x) MAIL__ROUTER__V1__CODE__CODE_##x
typedef Mail__Router__V1__Code mbx_code;

enum mbx_op {
	MBX_LIST, MBX_CREATE, MBX_DELETE, MBX_RENAME, MBX_SUBSCRIBE, MBX_STATUS, MBX_SELECT,
	MBX_QUOTA, MBX_SELECT_RUNS, MBX_N_OPS
};
static const char *const mbx_op_names[MBX_N_OPS] = {
	"list", "create", "delete", "rename", "subscribe", "status", "select", "quota", "select_runs"
};

/* RFC 6154 special-use attributes, as the schema's CHECK spells them */
static const char *const mbx_special_uses[] = {
	"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"
};

struct mbx_req {
	enum mbx_op op;
	struct rpc_call *call;		/* NULL once the call has ended */
	struct db_request *db;		/* the statement in flight, if any */
	uint64_t account_id;
	char acct[24];			/* account_id as an SQL parameter */
	bool flag;			/* LIST subscribed_only, SUBSCRIBE subscribe, SELECT readonly */
	char *name, *name2;		/* stored forms (RENAME: from, to) */
	/* STATUS */
	size_t n_names;
	char **asked;			/* the names as the front-end wrote them (echoed) */
	size_t *slot_of;		/* position in the SQL array -> request index */
	/* SELECT, runs form */
	uint32_t after_uid;		/* 0: the first page */
};

/* ------------------------------------------------------------------ helpers */

/* mbx_req_free - cancels a statement in flight and releases the request */
static void mbx_req_free(struct mbx_req *req)
{
	db_request_cancel(&req->db);
	free(req->name);
	free(req->name2);
	for (size_t i = 0; i < req->n_names; i++)
		free(req->asked[i]);
	free(req->asked);
	free(req->slot_of);
	free(req);
}

/* mbx_finish - ends the call with st and releases the request */
static void mbx_finish(struct mbx_req *req, enum rpc_status st, const char *message)
{
	if (req->call != NULL) {
		rpc_call_set_data(req->call, NULL);
		rpc_call_finish(req->call, st, message);
	}
	mbx_req_free(req);
}

/* mbx_reply - sends the one reply message and ends the call OK */
static void mbx_reply(struct mbx_req *req, const ProtobufCMessage *msg)
{
	if (req->call != NULL)
		rpc_call_send_pb(req->call, msg);
	mbx_finish(req, RPC_OK, NULL);
}

/* mbx_fail_db - ends the call after a failed statement (UNAVAILABLE / INTERNAL) */
static void mbx_fail_db(struct mbx_req *req, const struct db_result *r)
{
	struct rpc_call *call = req->call;
	rpc_call_set_data(call, NULL);
	req->call = NULL;
	rt_finish_db_error(call, r, mbx_op_names[req->op]);
	mbx_req_free(req);
}

/* mbx_on_cancel - the call is gone: forget it and drop its statement */
static void mbx_on_cancel(struct rpc_call *call)
{
	struct mbx_req *req = rpc_call_data(call);
	if (req == NULL)
		return;
	rpc_call_set_data(call, NULL);
	req->call = NULL;
	mbx_req_free(req);
}

/* mbx_on_half_close - every method takes exactly one request message */
static void mbx_on_half_close(struct rpc_call *call)
{
	if (rpc_call_data(call) == NULL)
		rpc_call_finish(call, RPC_INVALID_ARGUMENT, "missing request message");
}

/* mbx_begin - the request of a new call; NULL (call ended) on a second message */
static struct mbx_req *mbx_begin(struct rpc_call *call, enum mbx_op op)
{
	struct mbx_req *old = rpc_call_data(call);
	if (old != NULL) {
		mbx_finish(old, RPC_INVALID_ARGUMENT, "one request message expected");
		return NULL;
	}
	struct mbx_req *req = XNEW(struct mbx_req);
	req->op = op;
	req->call = call;
	rpc_call_set_data(call, req);
	return req;
}

/* mbx_session - takes the session's account; false (call ended) without one */
static bool mbx_session(struct mbx_req *req, const Mail__Router__V1__Session *s)
{
	if (s == NULL || s->account_id == 0 || s->account_id > (uint64_t)INT64_MAX) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "session.account_id required");
		return false;
	}
	req->account_id = s->account_id;
	snprintf(req->acct, sizeof(req->acct), "%" PRIu64, s->account_id);
	return true;
}

static void mbx_db_done(const struct db_result *r, void *arg);

/* mbx_exec - runs one prepared statement for the request */
static void mbx_exec(struct mbx_req *req, const char *stmt, int nparams, const char *const *values)
{
	struct rt_loop *l = rt_loop_of_call(req->call);
	req->db = db_exec(l->db, stmt, nparams, values, NULL, NULL, 0, mbx_db_done, req);
}

/* mbx_utf8_ok - s[0..len) is well-formed UTF-8 (no overlong forms, surrogates or
 * values past U+10FFFF) without C0/C1 control characters or DEL */
static bool mbx_utf8_ok(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned c = s[i];
		if (c < 0x80) {
			if (c < 0x20 || c == 0x7f)
				return false;
			i++;
			continue;
		}
		size_t n;
		uint32_t cp, min;
		if ((c & 0xe0) == 0xc0) {
			n = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if (len - i <= n)
			return false;
		for (size_t k = 1; k <= n; k++) {
			unsigned cc = s[i + k];
			if ((cc & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (cc & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || cp <= 0x9f)
			return false;
		i += n + 1;
	}
	return true;
}

/* mbx_name_norm - the stored form of a mailbox name from a front-end, INBOX's
 * first component upper-cased; NULL when it cannot name a mailbox: empty, too
 * long, not UTF-8, a control character, an empty component ('/' at either end or
 * doubled) or - for a new name - too deep or holding a LIST wildcard ('%', '*'),
 * which no LIST pattern could match literally. Caller frees. */
static char *mbx_name_norm(const char *name, bool new_name)
{
	size_t len = strlen(name);
	if (len == 0 || len > MBX_NAME_MAX || !mbx_utf8_ok((const unsigned char *)name, len))
		return NULL;
	if (name[0] == '/' || name[len - 1] == '/' || strstr(name, "//") != NULL)
		return NULL;
	size_t depth = 1;
	for (size_t i = 0; i < len; i++) {
		if (name[i] == '/')
			depth++;
		else if (new_name && (name[i] == '%' || name[i] == '*'))
			return NULL;
	}
	if (new_name && depth > MBX_DEPTH_MAX)
		return NULL;
	char *v = xstrdup(name);
	if (strncasecmp(v, "INBOX", 5) == 0 && (v[5] == '\0' || v[5] == '/'))
		memcpy(v, "INBOX", 5);
	return v;
}

/* mbx_pg_array - a PostgreSQL text[] literal of the non-NULL items (caller frees) */
static char *mbx_pg_array(char *const *items, size_t n)
{
	size_t cap = 3;
	for (size_t i = 0; i < n; i++)
		if (items[i] != NULL)
			cap += 2 * strlen(items[i]) + 3;
	char *out = xmalloc(cap), *p = out;
	*p++ = '{';
	bool first = true;
	for (size_t i = 0; i < n; i++) {
		if (items[i] == NULL)
			continue;
		if (!first)
			*p++ = ',';
		first = false;
		*p++ = '"';
		for (const char *s = items[i]; *s != '\0'; s++) {
			if (*s == '"' || *s == '\\')
				*p++ = '\\';
			*p++ = *s;
		}
		*p++ = '"';
	}
	*p++ = '}';
	*p = '\0';
	return out;
}

/* mbx_u64 - an unsigned integer column; NULL (or anything else) is 0 */
static uint64_t mbx_u64(const PGresult *res, int row, int col)
{
	if (PQgetisnull(res, row, col))
		return 0;
	const char *s = PQgetvalue(res, row, col);
	if (s[0] < '0' || s[0] > '9')
		return 0;
	return strtoull(s, NULL, 10);
}

/* mbx_u32 - the same, clamped to 32 bits (UIDNEXT is 2^32 once every uid is used) */
static uint32_t mbx_u32(const PGresult *res, int row, int col)
{
	uint64_t v = mbx_u64(res, row, col);
	return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* mbx_qname - a name made safe for a log line */
static const char *mbx_qname(char *buf, size_t size, const char *name)
{
	return log_quote(buf, size, name != NULL ? name : "", name != NULL ? strlen(name) : 0);
}

/* ------------------------------------------------------------------ outcomes */

/* mbx_code_of - the protocol answer to an ML* SQLSTATE of the schema's functions;
 * -1 for one this operation does not expect */
static int mbx_code_of(const struct mbx_req *req, const char *sqlstate)
{
	if (strcmp(sqlstate, MIGRATE_SQLSTATE_NO_MAILBOX) == 0)
		return CODE(NO_SUCH_MAILBOX);
	if (strcmp(sqlstate, MIGRATE_SQLSTATE_EXISTS) == 0)
		return CODE(MAILBOX_EXISTS);
	if (strcmp(sqlstate, MIGRATE_SQLSTATE_CANNOT) == 0)
		return CODE(CANNOT);
	if (strcmp(sqlstate, MIGRATE_SQLSTATE_INVALID) == 0)
		return req->op == MBX_CREATE || req->op == MBX_RENAME ? CODE(CANNOT) : CODE(NO_SUCH_MAILBOX);
	if (strcmp(sqlstate, MIGRATE_SQLSTATE_NO_ACCOUNT) == 0)
		return CODE(NO_SUCH_USER);
	if (strcmp(sqlstate, MIGRATE_SQLSTATE_OVER_QUOTA) == 0)
		return CODE(OVER_QUOTA);
	return -1;
}

/* mbx_reply_code - answers with a bare Code where the reply has one; false if not */
static bool mbx_reply_code(struct mbx_req *req, mbx_code code)
{
	switch (req->op) {
	case MBX_CREATE:
	case MBX_DELETE:
	case MBX_RENAME:
	case MBX_SUBSCRIBE: {
		Mail__Router__V1__MailboxReply rep = MAIL__ROUTER__V1__MAILBOX_REPLY__INIT;
		rep.code = code;
		mbx_reply(req, &rep.base);
		return true;
	}
	case MBX_SELECT:
	case MBX_SELECT_RUNS: {
		Mail__Router__V1__SelectReply rep = MAIL__ROUTER__V1__SELECT_REPLY__INIT;
		rep.code = code;
		mbx_reply(req, &rep.base);
		return true;
	}
	default:
		return false;
	}
}

static void list_done(struct mbx_req *req, const PGresult *res);
static void change_done(struct mbx_req *req, const PGresult *res);
static void status_done(struct mbx_req *req, const PGresult *res);
static void select_done(struct mbx_req *req, const PGresult *res);
static void select_runs_done(struct mbx_req *req, const PGresult *res);
static void quota_done(struct mbx_req *req, const PGresult *res);

/* columns each statement's result must have (a shorter one is a schema bug) */
static const int mbx_min_fields[MBX_N_OPS] = { 4, 1, 1, 1, 1, 9, 11, 4, 13 };

/* mbx_db_done - a statement's outcome: protocol codes, errors, or the rows */
static void mbx_db_done(const struct db_result *r, void *arg)
{
	struct mbx_req *req = arg;
	req->db = NULL;
	if (r->status == DB_SQL_ERROR && strncmp(r->sqlstate, "ML", 2) == 0) {
		int code = mbx_code_of(req, r->sqlstate);
		if (code >= 0) {
			char q[200];
			log_debug("mailbox refused", "call=%" PRIu64 " op=%s account=%" PRIu64 " sqlstate=%s error=%s",
				  rpc_call_id(req->call), mbx_op_names[req->op], req->account_id, r->sqlstate,
				  log_quote(q, sizeof(q), r->message, strlen(r->message)));
			if (mbx_reply_code(req, (mbx_code)code))
				return;
		}
	}
	if (r->status != DB_OK) {
		mbx_fail_db(req, r);
		return;
	}
	if (PQnfields(r->res) < mbx_min_fields[req->op]) {
		log_error("mailbox statement returned too few columns", "op=%s columns=%d",
			  mbx_op_names[req->op], PQnfields(r->res));
		mbx_finish(req, RPC_INTERNAL, "unexpected database result");
		return;
	}
	switch (req->op) {
	case MBX_LIST:
		list_done(req, r->res);
		break;
	case MBX_CREATE:
	case MBX_DELETE:
	case MBX_RENAME:
	case MBX_SUBSCRIBE:
		change_done(req, r->res);
		break;
	case MBX_STATUS:
		status_done(req, r->res);
		break;
	case MBX_SELECT:
		select_done(req, r->res);
		break;
	case MBX_SELECT_RUNS:
		select_runs_done(req, r->res);
		break;
	case MBX_QUOTA:
	case MBX_N_OPS:
		quota_done(req, r->res);
		break;
	}
}

/* ------------------------------------------------------------------ ListMailboxes */

struct mbx_entry {
	const char *name;
	uint64_t id;
	char *special;		/* space-separated special-use attributes (owned) */
	bool subscribed, has_children, noselect;
};

static int mbx_entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct mbx_entry *)a)->name, ((const struct mbx_entry *)b)->name);
}

static int mbx_str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* mbx_find - the entry named name among n sorted ones, or NULL */
static struct mbx_entry *mbx_find(struct mbx_entry *ents, size_t n, const char *name)
{
	struct mbx_entry key = { .name = name };
	return bsearch(&key, ents, n, sizeof(*ents), mbx_entry_cmp);
}

/* list_on_message - LIST / LSUB: every mailbox of the account in one reply */
static void list_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct mbx_req *req = mbx_begin(call, MBX_LIST);
	if (req == NULL)
		return;
	Mail__Router__V1__ListMailboxesRequest *m =
		mail__router__v1__list_mailboxes_request__unpack(NULL, len, msg);
	if (m == NULL) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "malformed ListMailboxesRequest");
		return;
	}
	if (mbx_session(req, m->session)) {
		req->flag = m->subscribed_only;
		const char *v[] = { req->acct };
		mbx_exec(req, "mailbox_list", 1, v);
	}
	mail__router__v1__list_mailboxes_request__free_unpacked(m, NULL);
}

/* list_done - the mailboxes plus the parents implied by the hierarchy (noselect,
 * id 0), with has_children; subscribed_only keeps the subscribed ones */
static void list_done(struct mbx_req *req, const PGresult *res)
{
	size_t n = (size_t)PQntuples(res);
	struct mbx_entry *ents = xcalloc(n + 1, sizeof(*ents));
	for (size_t i = 0; i < n; i++) {
		ents[i].id = mbx_u64(res, (int)i, 0);
		ents[i].name = PQgetvalue(res, (int)i, 1);
		ents[i].special = xstrdup(PQgetvalue(res, (int)i, 2));
		ents[i].subscribed = strcmp(PQgetvalue(res, (int)i, 3), "t") == 0;
	}
	qsort(ents, n, sizeof(*ents), mbx_entry_cmp);

	/* every proper prefix ending before a '/' is a parent: mark it, or imply it */
	char **implied = NULL;
	size_t n_implied = 0, cap_implied = 0;
	char buf[MBX_NAME_MAX + 1];
	for (size_t i = 0; i < n; i++) {
		const char *name = ents[i].name;
		size_t len = strlen(name);
		if (len > MBX_NAME_MAX)
			continue;
		for (size_t p = 0; p < len; p++) {
			if (name[p] != '/')
				continue;
			memcpy(buf, name, p);
			buf[p] = '\0';
			struct mbx_entry *parent = mbx_find(ents, n, buf);
			if (parent != NULL) {
				parent->has_children = true;
				continue;
			}
			if (n_implied == cap_implied) {
				cap_implied = cap_implied ? 2 * cap_implied : 8;
				implied = xrealloc(implied, cap_implied * sizeof(*implied));
			}
			implied[n_implied++] = xstrndup(name, p);
		}
	}
	if (n_implied > 1)
		qsort(implied, n_implied, sizeof(*implied), mbx_str_cmp);
	size_t n_uniq = 0;
	for (size_t i = 0; i < n_implied; i++) {
		if (n_uniq > 0 && strcmp(implied[n_uniq - 1], implied[i]) == 0)
			free(implied[i]);
		else
			implied[n_uniq++] = implied[i];
	}

	size_t total = n + n_uniq;
	Mail__Router__V1__MailboxInfo *infos = xcalloc(total + 1, sizeof(*infos));
	Mail__Router__V1__MailboxInfo **ptrs = xcalloc(total + 1, sizeof(*ptrs));
	char **uses = xcalloc(total * 8 + 1, sizeof(*uses));
	size_t k = 0, u = 0;
	for (size_t i = 0, j = 0; i < n || j < n_uniq;) {
		bool take_real = j >= n_uniq || (i < n && strcmp(ents[i].name, implied[j]) < 0);
		Mail__Router__V1__MailboxInfo *mi = &infos[k];
		mail__router__v1__mailbox_info__init(mi);
		if (take_real) {
			struct mbx_entry *e = &ents[i++];
			if (req->flag && !e->subscribed)
				continue;
			mi->name = (char *)e->name;
			mi->id = e->id;
			mi->subscribed = e->subscribed;
			mi->has_children = e->has_children;
			mi->special_use = &uses[u];
			for (char *save = NULL, *t = strtok_r(e->special, " ", &save);
			     t != NULL && mi->n_special_use < 8; t = strtok_r(NULL, " ", &save)) {
				uses[u++] = t;
				mi->n_special_use++;
			}
		} else {
			const char *name = implied[j++];
			if (req->flag)
				continue;
			mi->name = (char *)name;
			mi->has_children = true;
			mi->noselect = true;
		}
		ptrs[k++] = mi;
	}
	Mail__Router__V1__ListMailboxesReply rep = MAIL__ROUTER__V1__LIST_MAILBOXES_REPLY__INIT;
	rep.n_mailboxes = k;
	rep.mailboxes = ptrs;
	mbx_reply(req, &rep.base);

	for (size_t i = 0; i < n; i++)
		free(ents[i].special);
	for (size_t i = 0; i < n_uniq; i++)
		free(implied[i]);
	free(implied);
	free(ents);
	free(infos);
	free(ptrs);
	free(uses);
}

/* ------------------------------------------------------------------ tree changes */

/* mbx_special_use - the canonical, distinct USE attributes into out (at most
 * N_ELEMENTS(mbx_special_uses)); false for one RFC 6154 does not define */
static bool mbx_special_use(char *const *in, size_t n, char **out, size_t *n_out)
{
	*n_out = 0;
	if (n > MBX_SPECIAL_USE_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		size_t k;
		for (k = 0; k < N_ELEMENTS(mbx_special_uses); k++)
			if (strcasecmp(in[i], mbx_special_uses[k]) == 0)
				break;
		if (k == N_ELEMENTS(mbx_special_uses))
			return false;
		bool dup = false;
		for (size_t j = 0; j < *n_out; j++)
			dup = dup || out[j] == mbx_special_uses[k];
		if (!dup)
			out[(*n_out)++] = (char *)mbx_special_uses[k];
	}
	return true;
}

/* create_on_message - CREATE name [(USE (...))]: missing parents are made too */
static void create_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct mbx_req *req = mbx_begin(call, MBX_CREATE);
	if (req == NULL)
		return;
	Mail__Router__V1__MailboxRequest *m = mail__router__v1__mailbox_request__unpack(NULL, len, msg);
	if (m == NULL) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "malformed MailboxRequest");
		return;
	}
	if (!mbx_session(req, m->session))
		goto out;
	/* a trailing separator only declares that children will follow (RFC 3501 6.3.3) */
	char *name = xstrdup(m->name);
	size_t nlen = strlen(name);
	if (nlen > 1 && name[nlen - 1] == '/')
		name[nlen - 1] = '\0';
	req->name = mbx_name_norm(name, true);
	free(name);
	char *uses[N_ELEMENTS(mbx_special_uses)];
	size_t n_uses;
	if (req->name == NULL) {
		mbx_reply_code(req, CODE(CANNOT));
	} else if (!mbx_special_use(m->special_use, m->n_special_use, uses, &n_uses)) {
		mbx_reply_code(req, CODE(INVALID)); /* IMAP NO [USEATTR] */
	} else {
		char *arr = mbx_pg_array(uses, n_uses);
		const char *v[] = { req->acct, req->name, arr };
		mbx_exec(req, "mailbox_create", 3, v);
		free(arr);
	}
out:
	mail__router__v1__mailbox_request__free_unpacked(m, NULL);
}

/* delete_on_message - DELETE name (INBOX: CANNOT; children stay, RFC 9051 6.3.5) */
static void delete_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct mbx_req *req = mbx_begin(call, MBX_DELETE);
	if (req == NULL)
		return;
	Mail__Router__V1__MailboxRequest *m = mail__router__v1__mailbox_request__unpack(NULL, len, msg);
	if (m == NULL) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "malformed MailboxRequest");
		return;
	}
	if (mbx_session(req, m->session)) {
		req->name = mbx_name_norm(m->name, false);
		if (req->name == NULL) {
			mbx_reply_code(req, CODE(NO_SUCH_MAILBOX));
		} else {
			const char *v[] = { req->acct, req->name };
			mbx_exec(req, "mailbox_delete", 2, v);
		}
	}
	mail__router__v1__mailbox_request__free_unpacked(m, NULL);
}

/* rename_on_message - RENAME from to, with every child; INBOX's messages move */
static void rename_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct mbx_req *req = mbx_begin(call, MBX_RENAME);
	if (req == NULL)
		return;
	Mail__Router__V1__RenameMailboxRequest *m =
		mail__router__v1__rename_mailbox_request__unpack(NULL, len, msg);
	if (m == NULL) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "malformed RenameMailboxRequest");
		return;
	}
	if (mbx_session(req, m->session)) {
		req->name = mbx_name_norm(m->from, false);
		req->name2 = mbx_name_norm(m->to, true);
		if (req->name == NULL) {
			mbx_reply_code(req, CODE(NO_SUCH_MAILBOX));
		} else if (req->name2 == NULL) {
			mbx_reply_code(req, CODE(CANNOT));
		} else {
			const char *v[] = { req->acct, req->name, req->name2 };
			mbx_exec(req, "mailbox_rename", 3, v);
		}
	}
	mail__router__v1__rename_mailbox_request__free_unpacked(m, NULL);
}

/* subscribe_on_message - SUBSCRIBE / UNSUBSCRIBE (unsubscribing a mailbox that
 * does not exist is already done: the subscription lives on the mailbox row) */
static void subscribe_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct mbx_req *req = mbx_begin(call, MBX_SUBSCRIBE);
	if (req == NULL)
		return;
	Mail__Router__V1__SubscribeRequest *m = mail__router__v1__subscribe_request__unpack(NULL, len, msg);
	if (m == NULL) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "malformed SubscribeRequest");
		return;
	}
	if (mbx_session(req, m->session)) {
		req->flag = m->subscribe;
		req->name = mbx_name_norm(m->name, false);
		if (req->name == NULL) {
			mbx_reply_code(req, req->flag ? CODE(NO_SUCH_MAILBOX) : CODE(OK));
		} else {
			const char *v[] = { req->acct, req->name, req->flag ? "t" : "f" };
			mbx_exec(req, "mailbox_subscribe", 3, v);
		}
	}
	mail__router__v1__subscribe_request__free_unpacked(m, NULL);
}

/* change_done - CREATE / DELETE / RENAME / SUBSCRIBE committed */
static void change_done(struct mbx_req *req, const PGresult *res)
{
	char q1[160], q2[160];
	switch (req->op) {
	case MBX_CREATE:
		log_info("mailbox created", "call=%" PRIu64 " account=%" PRIu64 " id=%" PRIu64 " name=%s",
			 rpc_call_id(req->call), req->account_id,
			 PQntuples(res) > 0 ? mbx_u64(res, 0, 0) : 0, mbx_qname(q1, sizeof(q1), req->name));
		break;
	case MBX_DELETE:
		log_info("mailbox deleted", "call=%" PRIu64 " account=%" PRIu64 " name=%s",
			 rpc_call_id(req->call), req->account_id, mbx_qname(q1, sizeof(q1), req->name));
		break;
	case MBX_RENAME:
		log_info("mailbox renamed", "call=%" PRIu64 " account=%" PRIu64 " from=%s to=%s mailboxes=%" PRIu64,
			 rpc_call_id(req->call), req->account_id, mbx_qname(q1, sizeof(q1), req->name),
			 mbx_qname(q2, sizeof(q2), req->name2), PQntuples(res) > 0 ? mbx_u64(res, 0, 0) : 0);
		break;
	default:
		if (PQntuples(res) == 0 && req->flag) {
			mbx_reply_code(req, CODE(NO_SUCH_MAILBOX));
			return;
		}
		break;
	}
	mbx_reply_code(req, CODE(OK));
}

/* ------------------------------------------------------------------ Status */

/* status_on_message - STATUS of several mailboxes (LIST-STATUS) in one statement */
static void status_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct mbx_req *req = mbx_begin(call, MBX_STATUS);
	if (req == NULL)
		return;
	Mail__Router__V1__StatusRequest *m = mail__router__v1__status_request__unpack(NULL, len, msg);
	if (m == NULL) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "malformed StatusRequest");
		return;
	}
	if (!mbx_session(req, m->session))
		goto out;
	if (m->n_names > MBX_STATUS_MAX) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "too many names in one Status call");
		goto out;
	}
	req->n_names = m->n_names;
	req->asked = xcalloc(m->n_names + 1, sizeof(*req->asked));
	req->slot_of = xcalloc(m->n_names + 1, sizeof(*req->slot_of));
	char **stored = xcalloc(m->n_names + 1, sizeof(*stored));
	size_t n_valid = 0;
	for (size_t i = 0; i < m->n_names; i++) {
		req->asked[i] = xstrdup(m->names[i]);
		stored[i] = mbx_name_norm(m->names[i], false);
		if (stored[i] != NULL)
			req->slot_of[n_valid++] = i;
	}
	if (n_valid == 0) {
		status_done(req, NULL);
	} else {
		char *arr = mbx_pg_array(stored, m->n_names);
		const char *v[] = { req->acct, arr };
		mbx_exec(req, "mailbox_status", 2, v);
		free(arr);
	}
	for (size_t i = 0; i < m->n_names; i++)
		free(stored[i]);
	free(stored);
out:
	mail__router__v1__status_request__free_unpacked(m, NULL);
}

/* status_done - one MailboxStatus per requested name, in request order (res NULL:
 * no name could exist) */
static void status_done(struct mbx_req *req, const PGresult *res)
{
	size_t n = req->n_names;
	Mail__Router__V1__MailboxStatus *st = xcalloc(n + 1, sizeof(*st));
	Mail__Router__V1__MailboxStatus **ptrs = xcalloc(n + 1, sizeof(*ptrs));
	bool *found = xcalloc(n + 1, sizeof(*found));
	for (size_t i = 0; i < n; i++) {
		mail__router__v1__mailbox_status__init(&st[i]);
		st[i].name = req->asked[i];
		ptrs[i] = &st[i];
	}
	int rows = res != NULL ? PQntuples(res) : 0;
	for (int r = 0; r < rows; r++) {
		uint64_t ord = mbx_u64(res, r, 0);	/* 1-based position in the SQL array */
		if (ord == 0 || ord > n)
			continue;
		size_t i = req->slot_of[ord - 1];
		if (i >= n)
			continue;
		Mail__Router__V1__MailboxStatus *s = &st[i];
		found[i] = true;
		s->messages = mbx_u32(res, r, 1);
		s->recent = mbx_u32(res, r, 2);
		s->unseen = mbx_u32(res, r, 3);
		s->uidnext = mbx_u32(res, r, 4);
		s->uidvalidity = mbx_u32(res, r, 5);
		s->highestmodseq = mbx_u64(res, r, 6);
		s->size = mbx_u64(res, r, 7);
		s->deleted = mbx_u32(res, r, 8);
	}
	for (size_t i = 0; i < n; i++)
		if (!found[i])
			st[i].code = CODE(NO_SUCH_MAILBOX);
	Mail__Router__V1__StatusReply rep = MAIL__ROUTER__V1__STATUS_REPLY__INIT;
	rep.n_mailboxes = n;
	rep.mailboxes = ptrs;
	mbx_reply(req, &rep.base);
	free(found);
	free(ptrs);
	free(st);
}

/* ------------------------------------------------------------------ Select */

/* select_on_message - SELECT (claims \Recent) or EXAMINE (readonly), in the
 * classic form (one reply) or the runs form (pages of uid runs) */
static void select_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct mbx_req *req = mbx_begin(call, MBX_SELECT);
	if (req == NULL)
		return;
	Mail__Router__V1__SelectRequest *m = mail__router__v1__select_request__unpack(NULL, len, msg);
	if (m == NULL) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "malformed SelectRequest");
		return;
	}
	if (!mbx_session(req, m->session))
		goto out;
	if (!m->runs && (m->after_uid != 0 || m->uid_below != 0 || m->recent_from != 0 || m->limit != 0)) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "paging fields need runs");
		goto out;
	}
	if (m->changed_since > (uint64_t)INT64_MAX) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "changed_since out of range");
		goto out;
	}
	req->op = m->runs ? MBX_SELECT_RUNS : MBX_SELECT;
	req->flag = m->readonly;
	req->after_uid = m->after_uid;
	req->name = mbx_name_norm(m->name, false);
	if (req->name == NULL) {
		mbx_reply_code(req, CODE(NO_SUCH_MAILBOX));
		goto out;
	}
	char since[24];
	snprintf(since, sizeof(since), "%" PRIu64, m->changed_since);
	if (!m->runs) {
		const char *v[] = { req->acct, req->name, req->flag ? "f" : "t", since };
		mbx_exec(req, "mailbox_select", 4, v);
		goto out;
	}
	char after[16], below[16], recent[16], limit[16];
	uint32_t lim = m->limit == 0 || m->limit > MBX_SELECT_PAGE_MAX ? MBX_SELECT_PAGE_MAX : m->limit;
	snprintf(after, sizeof(after), "%" PRIu32, m->after_uid);
	/* a uidnext of 2^32 (every uid used) was sent clamped to UINT32_MAX */
	if (m->uid_below == UINT32_MAX)
		snprintf(below, sizeof(below), "4294967296");
	else
		snprintf(below, sizeof(below), "%" PRIu32, m->uid_below);
	snprintf(recent, sizeof(recent), "%" PRIu32, m->recent_from);
	snprintf(limit, sizeof(limit), "%" PRIu32, lim);
	const char *v[] = { req->acct, req->name, req->flag ? "f" : "t", since, after, below, recent, limit };
	mbx_exec(req, "mailbox_select_page", 8, v);
out:
	mail__router__v1__select_request__free_unpacked(m, NULL);
}

/* mbx_uidset_parse - an IMAP uid set as mail_uidset() writes it ("1:3,7") into
 * ranges (arrays owned by the caller); false on anything else */
static bool mbx_uidset_parse(const char *s, Mail__Router__V1__UidRange **ranges_r,
			     Mail__Router__V1__UidRange ***ptrs_r, size_t *n_r)
{
	size_t cap = 1;
	for (const char *p = s; *p != '\0'; p++)
		cap += *p == ',';
	Mail__Router__V1__UidRange *r = xcalloc(cap, sizeof(*r));
	Mail__Router__V1__UidRange **ptrs = xcalloc(cap, sizeof(*ptrs));
	size_t n = 0;
	const char *p = s;
	while (*p != '\0' && n < cap) {
		uint64_t v[2] = { 0, 0 };
		for (int k = 0; k < 2; k++) {
			if (*p < '0' || *p > '9')
				goto bad;
			while (*p >= '0' && *p <= '9' && v[k] <= UINT32_MAX)
				v[k] = v[k] * 10 + (uint64_t)(*p++ - '0');
			if (v[k] == 0 || v[k] > UINT32_MAX)
				goto bad;
			if (k == 0 && *p == ':')
				p++;
			else if (k == 0)
				v[1] = v[0], k = 1;
		}
		if (*p == ',')
			p++;
		else if (*p != '\0')
			goto bad;
		mail__router__v1__uid_range__init(&r[n]);
		r[n].first = (uint32_t)(v[0] < v[1] ? v[0] : v[1]);
		r[n].last = (uint32_t)(v[0] < v[1] ? v[1] : v[0]);
		ptrs[n] = &r[n];
		n++;
	}
	if (*p != '\0')
		goto bad;
	*ranges_r = r;
	*ptrs_r = ptrs;
	*n_r = n;
	return true;
bad:
	free(r);
	free(ptrs);
	return false;
}

/* mbx_int_array - the next element of a PostgreSQL int[] text ("{0,3}"): -1 at
 * the end or on junk */
static int64_t mbx_int_array_next(const char **pp)
{
	const char *p = *pp;
	if (*p == '{' || *p == ',')
		p++;
	if (*p < '0' || *p > '9')
		return -1;
	int64_t v = 0;
	while (*p >= '0' && *p <= '9' && v <= UINT32_MAX)
		v = v * 10 + (*p++ - '0');
	*pp = p;
	return v <= UINT32_MAX ? v : -1;
}

static int mbx_state_cmp(const void *a, const void *b)
{
	uint32_t x = (*(Mail__Router__V1__MessageState *const *)a)->uid;
	uint32_t y = (*(Mail__Router__V1__MessageState *const *)b)->uid;
	return x < y ? -1 : x > y;
}

/* The rows of mail_select and mail_select_page: one 'h' (header), 'k' rows
 * (keyword index in column 1, name in kw_name_col) and the item rows (kind
 * 'm' messages or 'r' runs) whose keyword indexes are an int[] in kw_col. */

/* mbx_select_count - the header row (or -1), and how many items, keywords and
 * keyword indexes the rows hold */
static int mbx_select_count(const PGresult *res, char item, int kw_col, size_t *n_items, size_t *n_kw,
			    size_t *n_idx)
{
	int hrow = -1;
	*n_items = *n_kw = *n_idx = 0;
	for (int r = 0; r < PQntuples(res); r++) {
		const char *kind = PQgetvalue(res, r, 0);
		if (kind[0] == 'h') {
			hrow = r;
		} else if (kind[0] == 'k') {
			(*n_kw)++;
		} else if (kind[0] == item) {
			(*n_items)++;
			if (!PQgetisnull(res, r, kw_col))
				for (const char *p = PQgetvalue(res, r, kw_col); *p != '\0'; p++)
					*n_idx += *p == ',' || *p == '{';
		}
	}
	return hrow;
}

/* mbx_select_keywords - the keyword names into kws[n_kw] by their index; NULL,
 * or what is wrong */
static const char *mbx_select_keywords(const PGresult *res, int kw_name_col, char **kws, size_t n_kw)
{
	for (int r = 0; r < PQntuples(res); r++) {
		if (PQgetvalue(res, r, 0)[0] != 'k')
			continue;
		uint64_t i = mbx_u64(res, r, 1);
		if (i >= n_kw || kws[i] != NULL)
			return "keyword index";
		kws[i] = PQgetvalue(res, r, kw_name_col);
	}
	return NULL;
}

/* mbx_select_kw_indexes - the keyword indexes of row r (column col) appended to
 * idx (*used of n_idx taken); how many, or -1 for an index past n_kw */
static int64_t mbx_select_kw_indexes(const PGresult *res, int r, int col, uint32_t *idx, size_t *used,
				     size_t n_idx, size_t n_kw)
{
	int64_t n = 0, v;
	if (PQgetisnull(res, r, col))
		return 0;
	const char *p = PQgetvalue(res, r, col);
	while ((v = mbx_int_array_next(&p)) >= 0 && *used < n_idx) {
		if ((uint64_t)v >= n_kw)
			return -1;
		idx[(*used)++] = (uint32_t)v;
		n++;
	}
	return n;
}

/* select_done - the SelectReply from mail_select's rows (see 0003_mailbox.sql) */
static void select_done(struct mbx_req *req, const PGresult *res)
{
	int rows = PQntuples(res);
	size_t n_msg, n_kw, n_idx;
	int hrow = mbx_select_count(res, 'm', 4, &n_msg, &n_kw, &n_idx);
	if (hrow < 0) {
		mbx_reply_code(req, CODE(NO_SUCH_MAILBOX));
		return;
	}
	Mail__Router__V1__SelectReply rep = MAIL__ROUTER__V1__SELECT_REPLY__INIT;
	char **kws = xcalloc(n_kw + 1, sizeof(*kws));
	Mail__Router__V1__MessageState *states = xcalloc(n_msg + 1, sizeof(*states));
	Mail__Router__V1__MessageState **ptrs = xcalloc(n_msg + 1, sizeof(*ptrs));
	uint32_t *idx = xcalloc(n_idx + 1, sizeof(*idx));
	Mail__Router__V1__UidSet vanished = MAIL__ROUTER__V1__UID_SET__INIT;
	Mail__Router__V1__UidRange *vr = NULL;
	const char *bad = NULL;

	rep.mailbox_id = mbx_u64(res, hrow, 5);
	rep.uidvalidity = mbx_u32(res, hrow, 6);
	rep.uidnext = mbx_u32(res, hrow, 7);
	rep.highestmodseq = mbx_u64(res, hrow, 2);
	uint64_t first_recent = mbx_u64(res, hrow, 8);
	bad = mbx_select_keywords(res, 10, kws, n_kw);
	size_t k = 0, used = 0;
	bool sorted = true;
	for (int r = 0; r < rows && bad == NULL; r++) {
		if (PQgetvalue(res, r, 0)[0] != 'm')
			continue;
		Mail__Router__V1__MessageState *s = &states[k];
		mail__router__v1__message_state__init(s);
		s->uid = mbx_u32(res, r, 1);
		s->modseq = mbx_u64(res, r, 2);
		s->flags = (uint32_t)mbx_u64(res, r, 3) & 31;
		if (s->uid >= first_recent)
			s->flags |= MAIL__ROUTER__V1__FLAG__FLAG_RECENT;
		if (!PQgetisnull(res, r, 4))
			s->keywords = &idx[used];
		int64_t nk = mbx_select_kw_indexes(res, r, 4, idx, &used, n_idx, n_kw);
		if (nk < 0) {
			bad = "message keyword index";
			break;
		}
		s->n_keywords = (size_t)nk;
		if (k > 0 && ptrs[k - 1]->uid >= s->uid)
			sorted = false;
		ptrs[k++] = s;
	}
	if (bad != NULL) {
		log_error("mail_select returned an inconsistent result", "call=%" PRIu64 " what=\"%s\"",
			  rpc_call_id(req->call), bad);
		mbx_finish(req, RPC_INTERNAL, "unexpected database result");
		goto out;
	}
	if (!sorted)
		qsort(ptrs, k, sizeof(*ptrs), mbx_state_cmp);
	rep.n_messages = k;
	rep.messages = ptrs;
	rep.n_keywords = n_kw;
	rep.keywords = kws;
	if (!PQgetisnull(res, hrow, 9) && PQgetvalue(res, hrow, 9)[0] != '\0') {
		if (!mbx_uidset_parse(PQgetvalue(res, hrow, 9), &vr, &vanished.ranges, &vanished.n_ranges)) {
			log_error("mail_select returned a bad vanished set", "call=%" PRIu64,
				  rpc_call_id(req->call));
			mbx_finish(req, RPC_INTERNAL, "unexpected database result");
			goto out;
		}
		rep.vanished = &vanished;
	}
	rep.first_recent_uid = first_recent > UINT32_MAX ? UINT32_MAX : (uint32_t)first_recent;
	size_t size = protobuf_c_message_get_packed_size(&rep.base);
	if (size > RPC_DEFAULT_MAX_MESSAGE) {
		/* a front-end would refuse it (RESOURCE_EXHAUSTED on its side): say
		 * CANNOT instead; the runs form opens a mailbox of any size */
		log_info("select reply too large for the classic form: use runs",
			 "call=%" PRIu64 " account=%" PRIu64 " mailbox=%" PRIu64 " messages=%zu bytes=%zu",
			 rpc_call_id(req->call), req->account_id, rep.mailbox_id, k, size);
		mbx_reply_code(req, CODE(CANNOT));
		goto out;
	}
	log_debug("mailbox selected", "call=%" PRIu64 " account=%" PRIu64 " mailbox=%" PRIu64
		  " readonly=%d messages=%zu", rpc_call_id(req->call), req->account_id, rep.mailbox_id,
		  (int)req->flag, k);
	mbx_reply(req, &rep.base);
out:
	free(vr);
	free(vanished.ranges);
	free(kws);
	free(states);
	free(ptrs);
	free(idx);
}

/* one MessageRun as mail_select_page returned it; kw points into a shared array */
struct mbx_run {
	uint32_t first, last;
	uint64_t modseq;
	uint32_t flags;
	uint32_t *kw;
	size_t n_kw;
};

static int mbx_run_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct mbx_run *)a)->first, y = ((const struct mbx_run *)b)->first;
	return x < y ? -1 : x > y;
}

/* mbx_field_size - bytes of a length-delimited field of n payload bytes (one-byte tag) */
static size_t mbx_field_size(size_t n)
{
	size_t v = 1;
	for (size_t x = n; x >= 0x80; x >>= 7)
		v++;
	return 1 + v + n;
}

/* select_runs_done - one page of the runs form from mail_select_page's rows (see
 * 0007_prune.sql), cut again to MBX_SELECT_PAGE_BYTES: runs and vanished ranges are
 * taken in uid order while they fit (at least one), and only the keywords the taken
 * runs use are sent. A cut page says more, and continue_after is the last uid it
 * covers, so the next page starts exactly there. */
static void select_runs_done(struct mbx_req *req, const PGresult *res)
{
	int rows = PQntuples(res);
	size_t n_run, n_kw, n_idx;
	int hrow = mbx_select_count(res, 'r', 5, &n_run, &n_kw, &n_idx);
	if (hrow < 0) {
		mbx_reply_code(req, CODE(NO_SUCH_MAILBOX));
		return;
	}
	Mail__Router__V1__SelectReply rep = MAIL__ROUTER__V1__SELECT_REPLY__INIT;
	char **sql_kw = xcalloc(n_kw + 1, sizeof(*sql_kw));
	int64_t *kw_map = xcalloc(n_kw + 1, sizeof(*kw_map));	/* SQL index -> reply index, -1 */
	char **out_kw = xcalloc(n_kw + 1, sizeof(*out_kw));
	struct mbx_run *runs = xcalloc(n_run + 1, sizeof(*runs));
	uint32_t *idx = xcalloc(n_idx + 1, sizeof(*idx));
	Mail__Router__V1__MessageRun *msgs = xcalloc(n_run + 1, sizeof(*msgs));
	Mail__Router__V1__MessageRun **ptrs = xcalloc(n_run + 1, sizeof(*ptrs));
	Mail__Router__V1__UidSet vanished = MAIL__ROUTER__V1__UID_SET__INIT;
	Mail__Router__V1__UidRange *vr = NULL, **vptrs = NULL;
	size_t n_van = 0;
	const char *bad = NULL;

	rep.mailbox_id = mbx_u64(res, hrow, 6);
	rep.uidvalidity = mbx_u32(res, hrow, 7);
	rep.uidnext = mbx_u32(res, hrow, 8);
	rep.highestmodseq = mbx_u64(res, hrow, 3);
	uint64_t first_recent = mbx_u64(res, hrow, 9);
	rep.first_recent_uid = first_recent > UINT32_MAX ? UINT32_MAX : (uint32_t)first_recent;
	bool sql_more = strcmp(PQgetvalue(res, hrow, 12), "t") == 0;
	uint32_t sql_last = mbx_u32(res, hrow, 1);
	if (sql_more && sql_last <= req->after_uid)
		bad = "page end";

	if (bad == NULL)
		bad = mbx_select_keywords(res, 11, sql_kw, n_kw);
	size_t k = 0, used = 0;
	bool sorted = true;
	for (int r = 0; r < rows && bad == NULL; r++) {
		if (PQgetvalue(res, r, 0)[0] != 'r')
			continue;
		struct mbx_run *u = &runs[k];
		u->first = mbx_u32(res, r, 1);
		u->last = mbx_u32(res, r, 2);
		u->modseq = mbx_u64(res, r, 3);
		u->flags = (uint32_t)mbx_u64(res, r, 4) & 31;
		if (u->first <= req->after_uid || u->last < u->first) {
			bad = "run bounds";
			break;
		}
		if (first_recent > 0 && u->first >= first_recent)
			u->flags |= MAIL__ROUTER__V1__FLAG__FLAG_RECENT;
		u->kw = &idx[used];
		int64_t nk = mbx_select_kw_indexes(res, r, 5, idx, &used, n_idx, n_kw);
		if (nk < 0) {
			bad = "run keyword index";
			break;
		}
		u->n_kw = (size_t)nk;
		if (k > 0 && runs[k - 1].first >= u->first)
			sorted = false;
		k++;
	}
	if (!sorted)
		qsort(runs, k, sizeof(*runs), mbx_run_cmp);
	for (size_t i = 1; i < k && bad == NULL; i++)
		if (runs[i].first <= runs[i - 1].last)
			bad = "overlapping runs";
	if (bad == NULL && !PQgetisnull(res, hrow, 10) && PQgetvalue(res, hrow, 10)[0] != '\0' &&
	    !mbx_uidset_parse(PQgetvalue(res, hrow, 10), &vr, &vptrs, &n_van))
		bad = "vanished set";
	if (bad != NULL) {
		log_error("mail_select_page returned an inconsistent result", "call=%" PRIu64 " what=\"%s\"",
			  rpc_call_id(req->call), bad);
		mbx_finish(req, RPC_INTERNAL, "unexpected database result");
		goto out;
	}

	/* runs and vanished ranges are disjoint and ascending: take them in uid order */
	for (size_t i = 0; i < n_kw; i++)
		kw_map[i] = -1;
	size_t total = 128, ri = 0, vi = 0, n_out_kw = 0, n_out_van = 0;
	uint32_t covered = 0;
	bool cut = false;
	while (ri < k || vi < n_van) {
		bool take_run = vi >= n_van || (ri < k && runs[ri].first < vptrs[vi]->first);
		size_t size;
		if (take_run) {
			struct mbx_run *u = &runs[ri];
			Mail__Router__V1__MessageRun *mr = &msgs[ri];
			mail__router__v1__message_run__init(mr);
			mr->first = u->first;
			mr->last = u->last;
			mr->modseq = u->modseq;
			mr->flags = u->flags;
			mr->n_keywords = u->n_kw;
			mr->keywords = u->kw;
			size = mbx_field_size(protobuf_c_message_get_packed_size(&mr->base));
			for (size_t x = 0; x < u->n_kw; x++)
				if (kw_map[u->kw[x]] < 0)
					size += mbx_field_size(strlen(sql_kw[u->kw[x]]));
		} else {
			size = mbx_field_size(protobuf_c_message_get_packed_size(&vptrs[vi]->base));
		}
		if (total + size > MBX_SELECT_PAGE_BYTES && ri + vi > 0) {
			cut = true;
			break;
		}
		total += size;
		if (take_run) {
			struct mbx_run *u = &runs[ri];
			for (size_t x = 0; x < u->n_kw; x++) {
				uint32_t s = u->kw[x];
				if (kw_map[s] < 0) {
					kw_map[s] = (int64_t)n_out_kw;
					out_kw[n_out_kw++] = sql_kw[s];
				}
				u->kw[x] = (uint32_t)kw_map[s];	/* msgs[ri].keywords points here */
			}
			ptrs[ri] = &msgs[ri];
			covered = u->last;
			ri++;
		} else {
			covered = vptrs[vi]->last;
			vi++;
			n_out_van = vi;
		}
	}
	rep.n_runs = ri;
	rep.runs = ptrs;
	rep.n_keywords = n_out_kw;
	rep.keywords = out_kw;
	if (n_out_van > 0) {
		vanished.n_ranges = n_out_van;
		vanished.ranges = vptrs;
		rep.vanished = &vanished;
	}
	rep.more = cut || sql_more;
	if (cut)
		rep.continue_after = covered;
	else if (sql_more)
		rep.continue_after = sql_last;
	log_debug("mailbox selected", "call=%" PRIu64 " account=%" PRIu64 " mailbox=%" PRIu64
		  " readonly=%d after=%" PRIu32 " runs=%zu vanished_ranges=%zu more=%d cut=%d bytes=%zu",
		  rpc_call_id(req->call), req->account_id, rep.mailbox_id, (int)req->flag, req->after_uid,
		  ri, n_out_van, (int)rep.more, (int)cut, total);
	mbx_reply(req, &rep.base);
out:
	free(vr);
	free(vptrs);
	free(sql_kw);
	free(kw_map);
	free(out_kw);
	free(runs);
	free(idx);
	free(msgs);
	free(ptrs);
}

/* ------------------------------------------------------------------ Quota */

/* quota_on_message - GETQUOTAROOT / GETQUOTA: the account's usage and limits */
static void quota_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct mbx_req *req = mbx_begin(call, MBX_QUOTA);
	if (req == NULL)
		return;
	Mail__Router__V1__QuotaRequest *m = mail__router__v1__quota_request__unpack(NULL, len, msg);
	if (m == NULL) {
		mbx_finish(req, RPC_INVALID_ARGUMENT, "malformed QuotaRequest");
		return;
	}
	if (mbx_session(req, m->session)) {
		const char *v[] = { req->acct };
		mbx_exec(req, "mailbox_quota", 1, v);
	}
	mail__router__v1__quota_request__free_unpacked(m, NULL);
}

/* quota_done - the counters the triggers keep (no scan) */
static void quota_done(struct mbx_req *req, const PGresult *res)
{
	if (PQntuples(res) == 0) {
		mbx_finish(req, RPC_NOT_FOUND, "no such account");
		return;
	}
	Mail__Router__V1__QuotaReply rep = MAIL__ROUTER__V1__QUOTA_REPLY__INIT;
	rep.bytes_used = mbx_u64(res, 0, 0);
	rep.bytes_limit = mbx_u64(res, 0, 1);
	rep.messages_used = mbx_u64(res, 0, 2);
	rep.messages_limit = mbx_u64(res, 0, 3);
	mbx_reply(req, &rep.base);
}

/* ------------------------------------------------------------------ module */

static const struct db_stmt mbx_stmts[] = {
	{ "mailbox_list",
	  "SELECT id, name, array_to_string(special_use, ' '), subscribed FROM mailboxes "
	  "WHERE account_id = $1 ORDER BY name COLLATE \"C\"", 1 },
	{ "mailbox_create",
	  "SELECT mailbox_id FROM mail_mailbox_create($1, $2, $3::text[])", 3 },
	{ "mailbox_delete", "SELECT mail_mailbox_delete($1, $2)", 2 },
	{ "mailbox_rename", "SELECT count(*) FROM mail_mailbox_rename($1, $2, $3)", 3 },
	{ "mailbox_subscribe",
	  "WITH u AS (UPDATE mailboxes SET subscribed = $3::boolean "
	  "WHERE account_id = $1::bigint AND name = $2::text RETURNING id) "
	  "SELECT u.id, mail_notify($1::bigint, u.id, 'mailbox', '', 0) FROM u", 3 },
	{ "mailbox_status",
	  "SELECT n.ord, mb.message_count, "
	  "CASE WHEN mb.uidnext - mb.first_recent_uid <= " MBX_RECENT_EXACT " THEN (SELECT count(*) "
	  "FROM messages m WHERE m.mailbox_id = mb.id AND m.uid >= mb.first_recent_uid) "
	  "ELSE least(mb.message_count, mb.uidnext - mb.first_recent_uid) END, "
	  "mb.unseen_count, mb.uidnext, mb.uidvalidity, mb.highestmodseq, mb.total_bytes, mb.deleted_count "
	  "FROM unnest($2::text[]) WITH ORDINALITY AS n(name, ord) "
	  "JOIN mailboxes mb ON mb.account_id = $1::bigint AND mb.name = n.name", 2 },
	{ "mailbox_select",
	  "SELECT kind, uid, modseq, flags, keywords, mailbox_id, uidvalidity, uidnext, "
	  "first_recent_uid, vanished, keyword FROM mail_select($1, $2, $3, $4)", 4 },
	{ "mailbox_select_page",
	  "SELECT kind, uid, last_uid, modseq, flags, keywords, mailbox_id, uidvalidity, uidnext, "
	  "first_recent_uid, vanished, keyword, more FROM mail_select_page($1, $2, $3, $4, $5, $6, $7, "
	  "$8::integer)", 8 },
	{ "mailbox_quota",
	  "SELECT used_bytes, quota_bytes, used_messages, quota_messages FROM accounts WHERE id = $1", 1 },
};

#define MBX_METHOD(name, fn) \
	{ "/mail.router.v1.Router/" name, NULL, fn, mbx_on_half_close, mbx_on_cancel, NULL }

static const struct rpc_method mbx_methods[] = {
	MBX_METHOD("ListMailboxes", list_on_message),
	MBX_METHOD("CreateMailbox", create_on_message),
	MBX_METHOD("DeleteMailbox", delete_on_message),
	MBX_METHOD("RenameMailbox", rename_on_message),
	MBX_METHOD("Subscribe", subscribe_on_message),
	MBX_METHOD("Status", status_on_message),
	MBX_METHOD("Select", select_on_message),
	MBX_METHOD("Quota", quota_on_message),
};

const struct rt_module rt_mod_mailbox = {
	.name = "mailbox",
	.methods = mbx_methods,
	.n_methods = N_ELEMENTS(mbx_methods),
	.stmts = mbx_stmts,
	.n_stmts = N_ELEMENTS(mbx_stmts),
	.slot = MBX_SLOT,
};
