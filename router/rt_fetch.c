/* rt_fetch.c - FETCH for the IMAP frontend (part of rt_mod_message):
 *
 * FetchMeta answers FETCH of many messages in ONE round trip: flags,
 * keywords, modseq, dates, size and the ENVELOPE / BODY / BODYSTRUCTURE
 * strings computed at delivery, and BODY[HEADER.FIELDS (...)] (and .NOT)
 * cut from the stored header block - no blob is read. The reply is bounded:
 * at most FETCH_MAX_MESSAGES messages and MSG_REPLY_BUDGET bytes (the SQL
 * itself stops at the budget with a running sum of the row sizes, so the
 * router never holds more than one reply's worth); `more` tells the frontend
 * to ask again from the UID after the last one returned.
 *
 * FetchBody streams BODY[section]<partial> from the blob store: the byte
 * range of the section comes from the part map stored at delivery
 * (mime_sections_lookup), the bytes from blob_get (the placement recorded in
 * the blobs table first, other replicas as fallback) in chunks of at most
 * 64 KiB. Back-pressure: when the call's queued output passes
 * RPC_CALL_HIGH_WATER the blob read is paused, and resumed from on_writable,
 * so a 30 MiB body never sits in router memory.
 *
 * Ownership: the per-call states (struct fm_call, struct fb_call) extend
 * struct msg_call and die with it (rt_message.c); the blob read is cancelled
 * by the state's fini when the call goes first. */
#include "lib/common.h"
#include "router/rt_message.h"
#include "router/mime.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include <inttypes.h>
#include <stdlib.h>
#include <strings.h>

#define FETCH_MAX_MESSAGES 10000	/* messages in one FetchMeta reply */
#define FETCH_MAX_HEADER_NAMES 200	/* fields named in one HEADER.FIELDS */
#define FETCH_MAX_HEADER_NAME 200	/* bytes of one field name */
#define FETCH_MAX_HEADERS_OUT (1024 * 1024) /* HEADER.FIELDS bytes of one message */
#define FETCH_MAX_SECTION 200		/* bytes of a section spec */

/* ================================================================ FetchMeta */

/* $1 mailbox, $2 account, $3 uid multirange, $4 changed_since, $5..$8 want
 * envelope / body / bodystructure / header block, $9 byte budget, $10 row
 * limit. `est` over-estimates a row's packed MessageMeta; rows are returned
 * while the ones before them fit the budget, so one row past it shows that
 * more remain. No row: not the account's mailbox; one row of NULLs: nothing
 * matched. */
const char msg_sql_fetch_meta[] =
	"SELECT mb.highestmodseq, x.uid, x.modseq, x.flags, x.keywords, x.idate, x.size,"
	"       x.envelope, x.body, x.bodystructure, x.header_block, x.blob_id, x.run"
	" FROM mailboxes mb"
	" LEFT JOIN LATERAL ("
	"  SELECT z.* FROM ("
	"   SELECT y.*, (sum(y.est) OVER (ORDER BY y.uid))::bigint AS run FROM ("
	"    SELECT m.uid, m.modseq, m.flags, m.keywords,"
	"           floor(extract(epoch FROM m.internal_date))::bigint AS idate, m.size,"
	"           CASE WHEN $5::boolean THEN m.envelope END AS envelope,"
	"           CASE WHEN $6::boolean THEN m.body END AS body,"
	"           CASE WHEN $7::boolean THEN m.bodystructure END AS bodystructure,"
	"           CASE WHEN $8::boolean THEN m.header_block END AS header_block,"
	"           m.blob_id,"
	"           (256 + 8 * cardinality(m.keywords) + octet_length(array_to_string(m.keywords, ''))"
	"            + CASE WHEN $5::boolean THEN octet_length(m.envelope) ELSE 0 END"
	"            + CASE WHEN $6::boolean THEN octet_length(m.body) ELSE 0 END"
	"            + CASE WHEN $7::boolean THEN octet_length(m.bodystructure) ELSE 0 END"
	"            + CASE WHEN $8::boolean THEN octet_length(m.header_block) ELSE 0 END)::bigint AS est"
	"    FROM messages m"
	"    WHERE m.mailbox_id = mb.id"
	"      AND m.uid >= lower($3::int8multirange) AND m.uid < upper($3::int8multirange)"
	"      AND m.uid <@ $3::int8multirange AND m.modseq > $4::bigint"
	"    ORDER BY m.uid"
	"    LIMIT $10::bigint) y"
	"  ) z"
	"  WHERE z.run - z.est <= $9::bigint"
	" ) x ON true"
	" WHERE mb.id = $1 AND mb.account_id = $2"
	" ORDER BY x.uid";

struct fm_call {
	struct msg_call mc;
	char **names;			/* HEADER.FIELDS names (owned) */
	size_t n_names;
	bool names_not;			/* HEADER.FIELDS.NOT */
	bool want_headers;
};

/* fm_fini - FetchMeta's own state */
static void fm_fini(struct msg_call *mc)
{
	struct fm_call *fm = (struct fm_call *)mc;
	for (size_t i = 0; i < fm->n_names; i++)
		free(fm->names[i]);
	free(fm->names);
}

/* fm_reply_code - a FetchMetaReply that carries only a code */
static void fm_reply_code(struct msg_call *mc, msg_code code)
{
	Mail__Router__V1__FetchMetaReply rep = MAIL__ROUTER__V1__FETCH_META_REPLY__INIT;
	rep.code = code;
	msg_reply(mc, &rep.base);
}

/* field_name_valid - RFC 5322 field name: printable ASCII except ':' */
static bool field_name_valid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > FETCH_MAX_HEADER_NAME)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 33 || (unsigned char)s[i] > 126 || s[i] == ':')
			return false;
	return true;
}

/* header_filter - the fields of a raw header block whose names are (or, with
 * names_not, are not) among names, each with its folded lines, then the
 * blank line that ends a header; *out_r is allocated in the arena */
static void header_filter(const uint8_t *blk, size_t len, char *const *names, size_t n_names,
			  bool names_not, struct msg_arena *a, uint8_t **out_r, size_t *out_len_r)
{
	uint8_t *out = msg_arena_alloc(a, len + 4);
	size_t o = 0, pos = 0;
	const char *eol = NULL;	/* the block's line break, for the blank line */

	while (pos < len) {
		/* the blank line: end of the header */
		if (blk[pos] == '\n' || (blk[pos] == '\r' && pos + 1 < len && blk[pos + 1] == '\n')) {
			eol = blk[pos] == '\n' ? "\n" : "\r\n";
			break;
		}
		size_t start = pos, end = pos;
		/* the field: its first line and every continuation line */
		for (;;) {
			while (end < len && blk[end] != '\n')
				end++;
			if (end < len)
				end++;
			if (eol == NULL && end > start && blk[end - 1] == '\n')
				eol = end - start >= 2 && blk[end - 2] == '\r' ? "\r\n" : "\n";
			if (end >= len || (blk[end] != ' ' && blk[end] != '\t'))
				break;
		}
		pos = end;
		const uint8_t *colon = memchr(blk + start, ':', end - start);
		if (colon == NULL)
			continue; /* not a field: junk is never returned */
		size_t nl = (size_t)(colon - (blk + start));
		while (nl > 0 && (blk[start + nl - 1] == ' ' || blk[start + nl - 1] == '\t'))
			nl--;
		bool match = false;
		for (size_t i = 0; i < n_names && !match; i++)
			match = strlen(names[i]) == nl && strncasecmp(names[i], (const char *)blk + start, nl) == 0;
		if (match == names_not || o + (end - start) > FETCH_MAX_HEADERS_OUT)
			continue;
		memcpy(out + o, blk + start, end - start);
		o += end - start;
		if (blk[end - 1] != '\n') { /* the block's last line had no line break */
			out[o++] = '\r';
			out[o++] = '\n';
		}
	}
	if (eol == NULL)
		eol = "\r\n";
	memcpy(out + o, eol, strlen(eol));
	o += strlen(eol);
	*out_r = out;
	*out_len_r = o;
}

/* fm_done - the rows as MessageMeta, within the count and byte budgets */
static void fm_done(struct msg_call *mc, const struct db_result *r)
{
	struct fm_call *fm = (struct fm_call *)mc;
	if (r->status != DB_OK) {
		if (r->status == DB_SQL_ERROR && msg_code_of_sqlstate(r->sqlstate) >= 0)
			fm_reply_code(mc, (msg_code)msg_code_of_sqlstate(r->sqlstate));
		else
			msg_db_error(mc, r);
		return;
	}
	const PGresult *res = r->res;
	int rows = PQntuples(res);
	if (rows == 0) {
		fm_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_NO_SUCH_MAILBOX);
		return;
	}
	Mail__Router__V1__FetchMetaReply rep = MAIL__ROUTER__V1__FETCH_META_REPLY__INIT;
	struct msg_arena arena = { 0 };
	Mail__Router__V1__MessageMeta **msgs = msg_arena_alloc(&arena, (size_t)rows * sizeof(*msgs));
	size_t n = 0, packed = 0;
	for (int i = 0; i < rows; i++) {
		int64_t uid, modseq, flags, idate, size, run;
		const uint8_t *p;
		size_t plen;
		if (PQgetisnull(res, i, 1))
			continue;
		if (!msg_pg_int(res, i, 12, &run))
			goto bad;
		if (n >= FETCH_MAX_MESSAGES || (n > 0 && (uint64_t)run > MSG_REPLY_BUDGET)) {
			rep.more = true;
			break;
		}
		Mail__Router__V1__MessageMeta *m = msg_arena_alloc(&arena, sizeof(*m));
		*m = (Mail__Router__V1__MessageMeta)MAIL__ROUTER__V1__MESSAGE_META__INIT;
		if (!msg_pg_int(res, i, 1, &uid) || !msg_pg_int(res, i, 2, &modseq) ||
		    !msg_pg_int(res, i, 3, &flags) || !msg_pg_int(res, i, 5, &idate) ||
		    !msg_pg_int(res, i, 6, &size) ||
		    !msg_pg_text_array(res, i, 4, &arena, &m->keywords, &m->n_keywords) ||
		    !msg_pg_bytes(res, i, 11, &p, &plen))
			goto bad;
		m->uid = (uint32_t)uid;
		m->modseq = (uint64_t)modseq;
		m->flags = (uint32_t)flags;
		m->internal_date = idate;
		m->size = (uint64_t)size;
		m->blob_id = msg_arena_alloc(&arena, plen + 1);
		memcpy(m->blob_id, p, plen);
		/* the IMAP strings point into the result, alive until we return */
		if (msg_pg_bytes(res, i, 7, &p, &plen))
			m->envelope = (ProtobufCBinaryData){ plen, (uint8_t *)p };
		if (msg_pg_bytes(res, i, 8, &p, &plen))
			m->body = (ProtobufCBinaryData){ plen, (uint8_t *)p };
		if (msg_pg_bytes(res, i, 9, &p, &plen))
			m->bodystructure = (ProtobufCBinaryData){ plen, (uint8_t *)p };
		if (fm->want_headers && msg_pg_bytes(res, i, 10, &p, &plen)) {
			uint8_t *h;
			size_t hlen;
			header_filter(p, plen, fm->names, fm->n_names, fm->names_not, &arena, &h, &hlen);
			m->headers = (ProtobufCBinaryData){ hlen, h };
		}
		/* the SQL's estimate is an upper bound; the real size decides anyway */
		size_t sz = mail__router__v1__message_meta__get_packed_size(m) + 6;
		if (n > 0 && packed + sz > MSG_REPLY_BUDGET) {
			rep.more = true;
			break;
		}
		packed += sz;
		msgs[n++] = m;
	}
	rep.messages = msgs;
	rep.n_messages = n;
	metric_add(msg_m.meta_messages, (double)n);
	log_debug("fetch meta", "call=%llu messages=%zu more=%d", (unsigned long long)rpc_call_id(mc->call),
		  n, (int)rep.more);
	msg_reply(mc, &rep.base);
	msg_arena_free(&arena);
	return;
bad:
	msg_arena_free(&arena);
	log_error("malformed fetch result", "call=%llu", (unsigned long long)rpc_call_id(mc->call));
	msg_finish(mc, RPC_INTERNAL, "malformed database result");
}

/* msg_fetch_meta_on_message - FETCH of many messages' metadata */
void msg_fetch_meta_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct fm_call *fm = msg_call_new(call, sizeof(*fm), "FetchMeta");
	if (fm == NULL)
		return;
	fm->mc.fini = fm_fini;
	Mail__Router__V1__FetchMetaRequest *req =
		mail__router__v1__fetch_meta_request__unpack(NULL, len, msg);
	if (req == NULL) {
		msg_finish(&fm->mc, RPC_INVALID_ARGUMENT, "malformed FetchMetaRequest");
		return;
	}
	const char *err = NULL;
	bool ok = msg_session_check(&fm->mc, req->session, req->mailbox_id) &&
		  req->n_headers <= FETCH_MAX_HEADER_NAMES && req->changed_since <= INT64_MAX;
	for (size_t i = 0; ok && i < req->n_headers; i++)
		ok = field_name_valid(req->headers[i]);
	char *uids = ok ? msg_uidset_sql(req->uids, &err) : NULL;
	if (uids == NULL) {
		log_info("fetch meta refused", "call=%llu error=\"%s\"", (unsigned long long)rpc_call_id(call),
			 err != NULL ? err : "invalid argument");
		mail__router__v1__fetch_meta_request__free_unpacked(req, NULL);
		fm_reply_code(&fm->mc, MAIL__ROUTER__V1__CODE__CODE_INVALID);
		return;
	}
	fm->want_headers = req->n_headers > 0 || req->headers_not;
	fm->names_not = req->headers_not;
	fm->n_names = req->n_headers;
	fm->names = xcalloc(req->n_headers ? req->n_headers : 1, sizeof(char *));
	for (size_t i = 0; i < req->n_headers; i++)
		fm->names[i] = xstrdup(req->headers[i]);
	char **p = msg_params(MSG_FETCH_META_NPARAMS);
	p[0] = xasprintf("%" PRIu64, req->mailbox_id);
	p[1] = xasprintf("%" PRIu64, req->session->account_id);
	p[2] = uids;
	p[3] = xasprintf("%" PRIu64, req->changed_since);
	p[4] = xstrdup(req->envelope ? "t" : "f");
	p[5] = xstrdup(req->body ? "t" : "f");
	p[6] = xstrdup(req->bodystructure ? "t" : "f");
	p[7] = xstrdup(fm->want_headers ? "t" : "f");
	p[8] = xasprintf("%u", MSG_REPLY_BUDGET);
	p[9] = xasprintf("%d", FETCH_MAX_MESSAGES + 1);
	mail__router__v1__fetch_meta_request__free_unpacked(req, NULL);
	msg_exec(&fm->mc, "message_fetch_meta", NULL, MSG_FETCH_META_NPARAMS, p, 1, true, fm_done);
}

/* ================================================================ FetchBody */

/* The message's size, blob, part map and recorded placement; uid NULL: no
 * such message; no row: not the account's mailbox. */
const char msg_sql_fetch_body[] =
	"SELECT m.uid, m.size, m.blob_id, m.part_map, b.nodes"
	" FROM mailboxes mb"
	" LEFT JOIN messages m ON m.mailbox_id = mb.id AND m.uid = $3"
	" LEFT JOIN blobs b ON b.id = m.blob_id"
	" WHERE mb.id = $1 AND mb.account_id = $2";

struct fb_call {
	struct msg_call mc;
	char *section;
	uint64_t offset, length;	/* partial, relative to the section */
	uint32_t uid;
	struct blob_op *op;		/* the blob read, NULL when none runs */
	char blob_id[BLOB_ID_HEX_LEN + 1];
	char **hint;			/* NULL-terminated placement (owned) */
	uint64_t total, sent;
	bool first_sent;
	bool paused;
};

/* fb_fini - stop the blob read (if the call goes first) and free the state */
static void fb_fini(struct msg_call *mc)
{
	struct fb_call *fb = (struct fb_call *)mc;
	if (fb->op != NULL)
		blob_op_cancel(&fb->op);
	for (size_t i = 0; fb->hint != NULL && fb->hint[i] != NULL; i++)
		free(fb->hint[i]);
	free(fb->hint);
	free(fb->section);
}

/* section_valid - "", HEADER, TEXT, or part numbers (no leading zeros) with an
 * optional .MIME / .HEADER / .TEXT (case-insensitive). HEADER.FIELDS is not
 * here: the frontend filters a HEADER (or FetchMeta does it). */
static bool section_valid(const char *s)
{
	if (*s == '\0')
		return true;
	if (strlen(s) > FETCH_MAX_SECTION)
		return false;
	const char *p = s;
	bool path = false;
	while (*p >= '1' && *p <= '9') {
		size_t d = 0;
		while (*p >= '0' && *p <= '9') {
			p++;
			d++;
		}
		if (d > 9)
			return false;
		path = true;
		if (*p == '\0')
			return true;
		if (*p != '.')
			return false;
		p++;
	}
	if (strcasecmp(p, "HEADER") == 0 || strcasecmp(p, "TEXT") == 0)
		return true;
	return path && strcasecmp(p, "MIME") == 0;
}

/* fb_send_empty - the first (and only) chunk of an empty or missing section */
static void fb_send_empty(struct fb_call *fb, bool missing)
{
	Mail__Router__V1__FetchBodyChunk ch = MAIL__ROUTER__V1__FETCH_BODY_CHUNK__INIT;
	ch.missing = missing;
	msg_reply(&fb->mc, &ch.base);
}

/* fb_on_data - the next bytes of the section: out in chunks of at most
 * 64 KiB (the first with the total); pause the read when the client lags */
static void fb_on_data(const uint8_t *data, size_t len, void *arg)
{
	struct fb_call *fb = arg;
	if (len > fb->total - fb->sent) { /* more than the range: never sent on */
		log_error("blob read past its range", "call=%llu blob=%s", (unsigned long long)rpc_call_id(fb->mc.call),
			  fb->blob_id);
		msg_finish(&fb->mc, RPC_INTERNAL, "blob read past its range");
		return;
	}
	while (len > 0) {
		size_t k = MAIL_MIN(len, (size_t)RPC_CHUNK_SIZE);
		Mail__Router__V1__FetchBodyChunk ch = MAIL__ROUTER__V1__FETCH_BODY_CHUNK__INIT;
		if (!fb->first_sent)
			ch.total = fb->total;
		ch.data = (ProtobufCBinaryData){ k, (uint8_t *)data };
		if (rpc_call_send_pb(fb->mc.call, &ch.base) < 0) {
			msg_finish(&fb->mc, RPC_INTERNAL, "chunk not sent");
			return;
		}
		fb->first_sent = true;
		fb->sent += k;
		metric_add(msg_m.body_bytes, (double)k);
		data += k;
		len -= k;
	}
	if (!fb->paused && rpc_call_queued(fb->mc.call) > RPC_CALL_HIGH_WATER) {
		fb->paused = true;
		metric_inc(msg_m.body_paused);
		blob_get_pause(fb->op);
	}
}

/* fb_on_done - the read ended: OK once every byte went out; a body no
 * replica has (or only corrupt) is DATA_LOSS, a node problem UNAVAILABLE */
static void fb_on_done(enum rpc_status st, const char *message, void *arg)
{
	struct fb_call *fb = arg;
	fb->op = NULL; /* dead once this returns */
	if (st == RPC_OK && fb->sent == fb->total) {
		msg_finish(&fb->mc, RPC_OK, NULL);
		return;
	}
	char q[200];
	const char *mq = log_quote(q, sizeof(q), message, strlen(message));
	switch (st) {
	case RPC_UNAVAILABLE:
	case RPC_DEADLINE_EXCEEDED:
	case RPC_RESOURCE_EXHAUSTED:
		log_info("message body unavailable", "call=%llu uid=%u blob=%s status=%s error=%s",
			 (unsigned long long)rpc_call_id(fb->mc.call), fb->uid, fb->blob_id,
			 rpc_status_name(st), mq);
		msg_finish(&fb->mc, RPC_UNAVAILABLE, "message body unavailable");
		return;
	default:
		/* NOT_FOUND on every replica, corrupt everywhere, shorter than recorded */
		log_error("message body lost", "call=%llu uid=%u blob=%s status=%s sent=%" PRIu64
			  " total=%" PRIu64 " error=%s", (unsigned long long)rpc_call_id(fb->mc.call),
			  fb->uid, fb->blob_id, rpc_status_name(st), fb->sent, fb->total, mq);
		msg_finish(&fb->mc, RPC_DATA_LOSS, "message body missing on every store node");
		return;
	}
}

static const struct blob_get_cbs fb_get_cbs = {
	.on_data = fb_on_data,
	.on_done = fb_on_done,
};

/* fb_done - the message's row: resolve the section, start the blob read */
static void fb_done(struct msg_call *mc, const struct db_result *r)
{
	struct fb_call *fb = (struct fb_call *)mc;
	if (r->status != DB_OK) {
		msg_db_error(mc, r);
		return;
	}
	const PGresult *res = r->res;
	if (PQntuples(res) == 0) {
		msg_finish(mc, RPC_NOT_FOUND, "no such mailbox");
		return;
	}
	if (PQgetisnull(res, 0, 0)) {
		msg_finish(mc, RPC_NOT_FOUND, "no such message");
		return;
	}
	int64_t size;
	const uint8_t *p;
	size_t plen;
	if (!msg_pg_int(res, 0, 1, &size) || size < 0 || !msg_pg_bytes(res, 0, 2, &p, &plen) ||
	    plen != BLOB_ID_HEX_LEN) {
		msg_finish(mc, RPC_INTERNAL, "malformed database result");
		return;
	}
	memcpy(fb->blob_id, p, plen);
	fb->blob_id[plen] = '\0';

	struct mime_range range = { 0, (size_t)size };
	if (fb->section[0] != '\0') {
		if (!msg_pg_bytes(res, 0, 3, &p, &plen)) {
			log_info("message without a part map", "call=%llu uid=%u", (unsigned long long)rpc_call_id(mc->call),
				 fb->uid);
			fb_send_empty(fb, true);
			return;
		}
		char *map = xmalloc(plen + 1);
		memcpy(map, p, plen);
		map[plen] = '\0';
		int found = mime_sections_lookup(map, fb->section, &range);
		free(map);
		if (found < 0) {
			fb_send_empty(fb, true);
			return;
		}
		/* a part map never points outside its message; if it does, clamp */
		if (range.offset > (uint64_t)size)
			range.offset = (size_t)size;
		range.size = MAIL_MIN(range.size, (size_t)size - range.offset);
	}
	/* partial <offset.length> within the section */
	uint64_t off = MAIL_MIN(fb->offset, (uint64_t)range.size);
	uint64_t avail = range.size - off;
	fb->total = fb->length != 0 ? MAIL_MIN(fb->length, avail) : avail;
	if (fb->total == 0) {
		fb_send_empty(fb, false);
		return;
	}

	struct msg_arena arena = { 0 };
	char **nodes;
	size_t n_nodes;
	if (!msg_pg_text_array(res, 0, 4, &arena, &nodes, &n_nodes))
		n_nodes = 0;
	fb->hint = xcalloc(n_nodes + 1, sizeof(char *));
	for (size_t i = 0; i < n_nodes; i++)
		fb->hint[i] = xstrdup(nodes[i]);
	msg_arena_free(&arena);
	log_debug("fetch body", "call=%llu uid=%u blob=%s offset=%" PRIu64 " length=%" PRIu64,
		  (unsigned long long)rpc_call_id(mc->call), fb->uid, fb->blob_id,
		  (uint64_t)range.offset + off, fb->total);
	fb->op = blob_get(mc->l->blobs, fb->blob_id, (const char *const *)fb->hint,
			  (uint64_t)range.offset + off, fb->total, &fb_get_cbs, fb);
}

/* msg_fetch_body_on_message - BODY[section]<partial> of one message, streamed */
void msg_fetch_body_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct fb_call *fb = msg_call_new(call, sizeof(*fb), "FetchBody");
	if (fb == NULL)
		return;
	fb->mc.fini = fb_fini;
	Mail__Router__V1__FetchBodyRequest *req =
		mail__router__v1__fetch_body_request__unpack(NULL, len, msg);
	if (req == NULL) {
		msg_finish(&fb->mc, RPC_INVALID_ARGUMENT, "malformed FetchBodyRequest");
		return;
	}
	if (!msg_session_check(&fb->mc, req->session, req->mailbox_id) || req->uid == 0 ||
	    !section_valid(req->section)) {
		char q[100];
		log_info("fetch body refused", "call=%llu section=%s", (unsigned long long)rpc_call_id(call),
			 log_quote(q, sizeof(q), req->section, strlen(req->section)));
		mail__router__v1__fetch_body_request__free_unpacked(req, NULL);
		msg_finish(&fb->mc, RPC_INVALID_ARGUMENT, "invalid session, uid or section");
		return;
	}
	fb->section = xstrdup(req->section);
	fb->offset = req->offset;
	fb->length = req->length;
	fb->uid = req->uid;
	char **p = msg_params(MSG_FETCH_BODY_NPARAMS);
	p[0] = xasprintf("%" PRIu64, req->mailbox_id);
	p[1] = xasprintf("%" PRIu64, req->session->account_id);
	p[2] = xasprintf("%u", req->uid);
	mail__router__v1__fetch_body_request__free_unpacked(req, NULL);
	msg_exec(&fb->mc, "message_fetch_body", NULL, MSG_FETCH_BODY_NPARAMS, p, 1, true, fb_done);
}

/* msg_fetch_body_on_writable - the client caught up: read on */
void msg_fetch_body_on_writable(struct rpc_call *call)
{
	struct fb_call *fb = rpc_call_data(call);
	if (fb != NULL && fb->paused && fb->op != NULL) {
		fb->paused = false;
		blob_get_resume(fb->op);
	}
}
