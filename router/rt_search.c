/* rt_search.c - SEARCH and SORT for the IMAP frontend (part of rt_mod_message).
 *
 * The frontend parses IMAP search syntax into a SearchKey tree; this file
 * turns the tree into ONE SQL query over the mailbox's messages, every value
 * the client chose bound as a parameter (never spliced into the SQL text), and
 * orders the matches by the SORT keys (RFC 5256) with the UID as the final
 * tie-break. The query text is built per call, so it runs through db_exec_sql.
 *
 * Hostile trees are refused before anything is allocated for them: the wire
 * bytes are scanned (iteratively) for the nesting depth and node count before
 * protobuf-c unpacks them - its unpacker recurses once per level, so a
 * 10,000-deep tree would otherwise exhaust the worker's stack.
 *
 * Semantics, and where they bend:
 *  - HEADER: case-insensitive substring of the field's value. Subject, From,
 *    To, Cc and Bcc use the RFC 2047-decoded columns stored at delivery; any
 *    other field is matched in the raw header block (every occurrence, folded
 *    lines unfolded, not decoded). An empty string matches messages that have
 *    the field.
 *  - BODY: case-insensitive SUBSTRING of the message's body text (RFC 9051
 *    6.4.4), "ell" finds "hello", "lo wor" finds "hello world", punctuation
 *    and spaces count like any other character. The body text is what the
 *    delivery stored in message_text.body (router/rt_deliver.c body_text,
 *    lower()-cased by the delivery, so a search lower-cases only the key):
 *    every text/... part with its transfer encoding undone, converted to
 *    UTF-8, HTML tags dropped (each tag becomes one space) and the common
 *    entities decoded, line breaks kept as they are (CRLF), parts joined by
 *    '\n', cut at 256 KiB - so a string found only in a non-text part (an
 *    attachment), in HTML markup, across a line break (unless the string has
 *    it) or past the cut is not found, and no non-empty string matches a
 *    message without a text part. Rows delivered before migration 0006
 *    have no body, only the old tsvector (tsv): for them BODY is the old
 *    word match ('simple' configuration, plainto_tsquery: every WORD of the
 *    string, any order, whole words only) so old mail stays searchable.
 *  - TEXT: a case-insensitive substring of the raw header block (8-bit bytes
 *    compared as they are, ASCII letters folded) OR of the decoded Subject,
 *    From, To, Cc, Bcc OR BODY as above.
 *  - BODY "" and TEXT "" match every message.
 *  - Cost: the body is read (detoasted, scanned) per message of
 *    the searched mailbox only, through message_text's primary key; the
 *    operands of every AND and OR are emitted cheapest first (flags, UIDs,
 *    dates, sizes; then headers; then bodies) so evaluation stops before the
 *    body whenever a cheaper operand decides, and PostgreSQL orders top-level
 *    AND conditions by cost itself.
 *  - BEFORE/ON/SINCE compare the internal date with the given day start (unix
 *    seconds, computed by the frontend for the day it means); SENT* use the
 *    Date header, or the internal date when the message has none.
 *  - Case-insensitivity is PostgreSQL's lower() on both sides: per character
 *    simple case mapping by the database's LC_CTYPE. With the UTF-8 database
 *    and C.UTF-8 ctype the tests create, non-ASCII letters fold too ("ÄRGER"
 *    finds "ärger", Greek and Cyrillic as well); no multi-character folding
 *    ("STRASSE" does not find "straße"). A database with LC_CTYPE "C" would
 *    fold ASCII letters only. SORT compares lowercased
 *    (FROM, TO, CC) or uppercased (SUBJECT: the base subject) strings in
 *    byte order ("C" collation), close to i;ascii-casemap.
 *  - RECENT/NEW/OLD are session state: the frontend sends them as UID sets.
 *  - At most SEARCH_MAX_RESULTS matches (the reply must fit the frontend's
 *    4 MiB message limit); beyond, RESOURCE_EXHAUSTED. */
#include "lib/common.h"
#include "router/rt_message.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <strings.h>

#define SEARCH_MAX_DEPTH 64		/* nesting of the key tree */
#define SEARCH_MAX_NODES 1000		/* keys in one tree */
#define SEARCH_MAX_STRING 1000		/* bytes of one search string */
#define SEARCH_MAX_NAME 200		/* bytes of a header field name or keyword */
#define SEARCH_MAX_SORT_KEYS 16
#define SEARCH_MAX_RESULTS 500000
/* dates the database can represent: 1900-01-01 .. 9999-12-31 */
#define SEARCH_MIN_TIME (-2208988800LL)
#define SEARCH_MAX_TIME 253402214400LL

typedef Mail__Router__V1__SearchKey search_key;

/* ================================================================ wire pre-check */

/* wire_varint - a protobuf varint within [*pos, end); false if cut or too long */
static bool wire_varint(const uint8_t *p, size_t end, size_t *pos, uint64_t *v_r)
{
	uint64_t v = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		if (*pos >= end)
			return false;
		uint8_t b = p[(*pos)++];
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*v_r = v;
			return true;
		}
	}
	return false;
}

/* search_wire_check - walk the SearchRequest bytes without recursion and
 * refuse a key tree deeper than SEARCH_MAX_DEPTH or larger than
 * SEARCH_MAX_NODES. Returns 0 when the tree is within bounds or the bytes
 * are malformed (the unpacker will say so), -1 with *error_r otherwise. */
static int search_wire_check(const uint8_t *p, size_t len, const char **error_r)
{
	size_t end[SEARCH_MAX_DEPTH + 1];	/* end[d]: end of the key at depth d */
	unsigned depth = 0, nodes = 0;
	size_t pos = 0;

	end[0] = len;
	for (;;) {
		while (depth > 0 && pos == end[depth])
			depth--;
		if (pos >= end[depth])
			return 0;
		uint64_t tag, v;
		if (!wire_varint(p, end[depth], &pos, &tag))
			return 0;
		switch (tag & 7) {
		case 0:
			if (!wire_varint(p, end[depth], &pos, &v))
				return 0;
			break;
		case 1:
			if (end[depth] - pos < 8)
				return 0;
			pos += 8;
			break;
		case 5:
			if (end[depth] - pos < 4)
				return 0;
			pos += 4;
			break;
		case 2:
			if (!wire_varint(p, end[depth], &pos, &v) || v > end[depth] - pos)
				return 0;
			/* SearchRequest.key = 3, SearchKey.children = 2 */
			if ((tag >> 3) == (depth == 0 ? 3u : 2u)) {
				if (++nodes > SEARCH_MAX_NODES) {
					*error_r = "search key has too many nodes";
					return -1;
				}
				if (depth + 1 > SEARCH_MAX_DEPTH) {
					*error_r = "search key nested too deep";
					return -1;
				}
				depth++;
				end[depth] = pos + (size_t)v;
			} else {
				pos += (size_t)v;
			}
			break;
		default:
			return 0;
		}
	}
}

/* ================================================================ SQL building */

struct sbuf {
	char *s;
	size_t len, cap;
};

/* sb_add - append a string to a growing SQL text */
static void sb_add(struct sbuf *b, const char *s)
{
	size_t n = strlen(s);
	if (b->len + n + 1 > b->cap) {
		b->cap = MAIL_MAX(b->cap * 2, b->len + n + 256);
		b->s = xrealloc(b->s, b->cap);
	}
	memcpy(b->s + b->len, s, n + 1);
	b->len += n;
}

/* sb_printf - append a formatted fragment (our own text: bounded, never client bytes) */
static void ATTR_PRINTF(2, 3) sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp))
		log_panic("search sql fragment too long", "fmt=%s", fmt);
	sb_add(b, tmp);
}

struct search_q {
	struct sbuf sql;
	char **params;			/* owned */
	int n, cap;
	unsigned nodes;
	const char *error;		/* why the request is invalid */
};

/* sq_param - bind a value (owned) and return its $ number */
static int sq_param(struct search_q *q, char *value)
{
	if (q->n == q->cap) {
		q->cap = q->cap ? q->cap * 2 : 16;
		q->params = xrealloc(q->params, (size_t)q->cap * sizeof(char *));
	}
	q->params[q->n++] = value;
	return q->n;
}

/* utf8_ok - well-formed UTF-8 (the database refuses anything else as text) */
static bool utf8_ok(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p != '\0') {
		unsigned n;
		uint32_t cp;
		if (*p < 0x80) {
			p++;
			continue;
		} else if (*p >= 0xc2 && *p <= 0xdf) {
			n = 1;
			cp = *p & 0x1f;
		} else if (*p >= 0xe0 && *p <= 0xef) {
			n = 2;
			cp = *p & 0x0f;
		} else if (*p >= 0xf0 && *p <= 0xf4) {
			n = 3;
			cp = *p & 0x07;
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

/* sq_string - a search string within bounds, or NULL with q->error */
static const char *sq_string(struct search_q *q, const char *s, size_t max)
{
	if (strlen(s) > max || !utf8_ok(s)) {
		q->error = "search string too long or not UTF-8";
		return NULL;
	}
	return s;
}

/* header_regex - the ARE that finds every occurrence of field `name` in a
 * header block and captures its value with the continuation lines */
static char *header_regex(const char *name)
{
	struct sbuf b = { 0 };
	sb_add(&b, "(?:^|\\n)");
	char one[3] = { '\\', 0, 0 };
	for (const char *p = name; *p != '\0'; p++) {
		bool alnum = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9');
		one[0] = alnum ? *p : '\\';
		one[1] = alnum ? '\0' : *p;
		sb_add(&b, one);
	}
	sb_add(&b, "[ \\t]*:([^\\n]*(?:\\n[ \\t][^\\n]*)*)");
	return b.s;
}

/* name_valid - a header field name: printable ASCII except ':' */
static bool name_valid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > SEARCH_MAX_NAME)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 33 || (unsigned char)s[i] > 126 || s[i] == ':')
			return false;
	return true;
}

/* BODY of one message against parameter $n (the search string, non-empty):
 * a case-insensitive substring of the stored body text, or - for a row
 * delivered before migration 0006, with only its tsvector - the old match of
 * every word. One primary-key lookup per message; no text row, no match. */
#define BODY_SQL "coalesce((SELECT CASE WHEN t.body IS NOT NULL" \
		" THEN strpos(t.body, lower($%d::text)) > 0" \
		" ELSE t.tsv @@ plainto_tsquery('simple', $%d::text) END" \
		" FROM message_text t WHERE t.blob_id = m.blob_id), false)"

/* key_cost - how dear a key is to evaluate per message: 0 columns of the
 * messages row, 1 the header block or decoded header fields, 2 the body */
static unsigned key_cost(const search_key *k, unsigned depth)
{
	if (k == NULL || depth > SEARCH_MAX_DEPTH)
		return 0;	/* refused by sq_key anyway */
	switch (k->op) {
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__HEADER:
		return 1;
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__BODY:
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__TEXT:
		return k->value != NULL && k->value[0] != '\0' ? 2 : 0;
	default: {
		unsigned c = 0;
		for (size_t i = 0; i < k->n_children && c < 2; i++)
			c = MAIL_MAX(c, key_cost(k->children[i], depth + 1));
		return c;
	}
	}
}

static bool sq_key(struct search_q *q, const search_key *k, unsigned depth);

/* sq_list - children joined by AND / OR, cheapest first: both stop at the
 * first operand that decides, and every operand is a side-effect-free
 * boolean that is never NULL, so the order changes only the cost */
static bool sq_list(struct search_q *q, const search_key *k, const char *op, unsigned depth)
{
	bool ok = true;
	bool first = true;
	sb_add(&q->sql, "(");
	for (unsigned cost = 0; ok && cost <= 2; cost++) {
		for (size_t i = 0; ok && i < k->n_children; i++) {
			if (key_cost(k->children[i], depth + 1) != cost)
				continue;
			if (!first)
				sb_add(&q->sql, op);
			first = false;
			ok = sq_key(q, k->children[i], depth + 1);
		}
	}
	sb_add(&q->sql, ")");
	return ok;
}

/* sq_date - a day boundary within what timestamptz holds */
static bool sq_date(struct search_q *q, int64_t t)
{
	if (t < SEARCH_MIN_TIME || t > SEARCH_MAX_TIME) {
		q->error = "date out of range";
		return false;
	}
	return true;
}

/* sq_key - one key as a boolean SQL expression that is never NULL */
static bool sq_key(struct search_q *q, const search_key *k, unsigned depth)
{
	const char *err = NULL;
	int a, b;
	if (k == NULL || depth > SEARCH_MAX_DEPTH || ++q->nodes > SEARCH_MAX_NODES) {
		q->error = "search key too deep or too large";
		return false;
	}
	const char *datecol = "m.internal_date";
	switch (k->op) {
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__ALL:
		sb_add(&q->sql, "true");
		return true;
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__AND:
		if (k->n_children == 0) {
			sb_add(&q->sql, "true");
			return true;
		}
		return sq_list(q, k, " AND ", depth);
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__OR:
		if (k->n_children == 0) {
			q->error = "OR without operands";
			return false;
		}
		return sq_list(q, k, " OR ", depth);
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__NOT:
		if (k->n_children != 1) {
			q->error = "NOT takes one operand";
			return false;
		}
		sb_add(&q->sql, "(NOT ");
		if (!sq_key(q, k->children[0], depth + 1))
			return false;
		sb_add(&q->sql, ")");
		return true;
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__UID: {
		char *set = msg_uidset_sql(k->uids, &err);
		if (set == NULL) {
			q->error = err;
			return false;
		}
		sb_printf(&q->sql, "(m.uid <@ $%d::int8multirange)", sq_param(q, set));
		return true;
	}
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__FLAG:
		if (k->flag == 0 || (k->flag & ~31u) != 0) {
			q->error = "not a stored system flag";
			return false;
		}
		a = sq_param(q, xasprintf("%u", k->flag));
		sb_printf(&q->sql, "(m.flags & $%d::integer = $%d::integer)", a, a);
		return true;
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__KEYWORD:
		if (sq_string(q, k->name, SEARCH_MAX_NAME) == NULL)
			return false;
		sb_printf(&q->sql, "($%d::text = ANY (m.keywords))", sq_param(q, xstrdup(k->name)));
		return true;
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__HEADER: {
		static const char *const decoded[][2] = {
			{ "subject", "m.subject" }, { "from", "m.from_addr" }, { "to", "m.to_addr" },
			{ "cc", "m.cc_addr" }, { "bcc", "m.bcc_addr" },
		};
		if (!name_valid(k->name)) {
			q->error = "invalid header field name";
			return false;
		}
		if (sq_string(q, k->value, SEARCH_MAX_STRING) == NULL)
			return false;
		const char *col = NULL;
		for (size_t i = 0; i < N_ELEMENTS(decoded); i++)
			if (strcasecmp(k->name, decoded[i][0]) == 0)
				col = decoded[i][1];
		a = sq_param(q, xstrdup(k->value));
		b = sq_param(q, header_regex(k->name));
		/* the raw block, escaped byte for byte like the needle (8-bit safe) */
		if (col != NULL)
			sb_printf(&q->sql, "(CASE WHEN %s IS NOT NULL THEN strpos(lower(%s), lower($%d::text)) > 0 ELSE ",
				  col, col, a);
		sb_printf(&q->sql, "EXISTS (SELECT 1 FROM regexp_matches(encode(m.header_block, 'escape'),"
			  " $%d::text, 'gi') AS f(v) WHERE strpos(lower(regexp_replace(f.v[1], '\\r?\\n', '', 'g')),",
			  b);
		sb_printf(&q->sql, " lower(encode(convert_to($%d::text, 'UTF8'), 'escape'))) > 0)", a);
		if (col != NULL)
			sb_add(&q->sql, " END)");
		return true;
	}
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__BODY:
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__TEXT:
		if (sq_string(q, k->value, SEARCH_MAX_STRING) == NULL)
			return false;
		if (k->value[0] == '\0') {
			sb_add(&q->sql, "true");
			return true;
		}
		a = sq_param(q, xstrdup(k->value));
		if (k->op == MAIL__ROUTER__V1__SEARCH_KEY__OP__BODY) {
			sb_printf(&q->sql, "(" BODY_SQL ")", a, a);
			return true;
		}
		/* the headers first: the body is read only when they do not match */
		sb_printf(&q->sql, "(strpos(lower(encode(m.header_block, 'escape')),"
			  " lower(encode(convert_to($%d::text, 'UTF8'), 'escape'))) > 0", a);
		sb_printf(&q->sql, " OR strpos(lower(concat_ws(' ', m.subject, m.from_addr, m.to_addr,"
			  " m.cc_addr, m.bcc_addr)), lower($%d::text)) > 0", a);
		sb_printf(&q->sql, " OR " BODY_SQL ")", a, a);
		return true;
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__SENTBEFORE:
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__SENTON:
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__SENTSINCE:
		datecol = "coalesce(m.sent_date, m.internal_date)";
		/* fall through */
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__BEFORE:
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__ON:
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__SINCE:
		if (!sq_date(q, k->number))
			return false;
		a = sq_param(q, xasprintf("%" PRId64, k->number));
		if (k->op == MAIL__ROUTER__V1__SEARCH_KEY__OP__BEFORE ||
		    k->op == MAIL__ROUTER__V1__SEARCH_KEY__OP__SENTBEFORE)
			sb_printf(&q->sql, "(%s < to_timestamp($%d::bigint))", datecol, a);
		else if (k->op == MAIL__ROUTER__V1__SEARCH_KEY__OP__SINCE ||
			 k->op == MAIL__ROUTER__V1__SEARCH_KEY__OP__SENTSINCE)
			sb_printf(&q->sql, "(%s >= to_timestamp($%d::bigint))", datecol, a);
		else
			sb_printf(&q->sql, "(%s >= to_timestamp($%d::bigint) AND %s < to_timestamp($%d::bigint + 86400))",
				  datecol, a, datecol, a);
		return true;
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__LARGER:
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__SMALLER:
	case MAIL__ROUTER__V1__SEARCH_KEY__OP__MODSEQ:
		if (k->number < 0) {
			q->error = "negative size or modseq";
			return false;
		}
		a = sq_param(q, xasprintf("%" PRId64, k->number));
		sb_printf(&q->sql, "(m.%s $%d::bigint)",
			  k->op == MAIL__ROUTER__V1__SEARCH_KEY__OP__LARGER ? "size >" :
			  k->op == MAIL__ROUTER__V1__SEARCH_KEY__OP__SMALLER ? "size <" : "modseq >=", a);
		return true;
	default:
		q->error = "unknown search key";
		return false;
	}
}

/* sort_expr - the SQL expression of one SORT key (RFC 5256), or NULL */
static const char *sort_expr(const char *key)
{
	static const char *const keys[][2] = {
		{ "ARRIVAL", "m.internal_date" },
		{ "DATE", "coalesce(m.sent_date, m.internal_date)" },
		{ "FROM", "lower(coalesce(m.sort_from, '')) COLLATE \"C\"" },
		{ "SUBJECT", "upper(coalesce(m.base_subject, '')) COLLATE \"C\"" },
		{ "SIZE", "m.size" },
		{ "TO", "lower(coalesce(m.sort_to, '')) COLLATE \"C\"" },
		{ "CC", "lower(coalesce(m.sort_cc, '')) COLLATE \"C\"" },
	};
	for (size_t i = 0; i < N_ELEMENTS(keys); i++)
		if (strcasecmp(key, keys[i][0]) == 0)
			return keys[i][1];
	return NULL;
}

/* search_sql - the whole query: $1 mailbox, $2 account, the key's parameters,
 * then the row limit. false with q->error for an invalid request. */
static bool search_sql(struct search_q *q, const Mail__Router__V1__SearchRequest *req)
{
	struct sbuf order = { 0 };
	struct sbuf cols = { 0 };
	bool ok = true;

	sq_param(q, xasprintf("%" PRIu64, req->mailbox_id));
	sq_param(q, xasprintf("%" PRIu64, req->session->account_id));
	if (req->n_sort > SEARCH_MAX_SORT_KEYS) {
		q->error = "too many sort keys";
		return false;
	}
	sb_add(&order, " ORDER BY ");
	sb_add(&cols, "");
	for (size_t i = 0; ok && i < req->n_sort; i++) {
		const char *s = req->sort[i];
		bool reverse = false;
		while (*s == ' ')
			s++;
		if (strncasecmp(s, "REVERSE ", 8) == 0) {
			reverse = true;
			for (s += 8; *s == ' '; s++)
				;
		}
		const char *e = sort_expr(s);
		if (e == NULL) {
			q->error = "unknown sort key";
			ok = false;
			break;
		}
		sb_printf(&cols, ", %s AS s%zu", e, i);
		sb_printf(&order, "x.s%zu%s, ", i, reverse ? " DESC" : "");
	}
	sb_add(&order, "x.uid");
	if (ok) {
		sb_add(&q->sql, "SELECT x.uid, x.modseq FROM mailboxes mb LEFT JOIN LATERAL (SELECT m.uid, m.modseq");
		sb_add(&q->sql, cols.s);
		sb_add(&q->sql, " FROM messages m WHERE m.mailbox_id = mb.id AND ");
		ok = sq_key(q, req->key, 1);
	}
	if (ok) {
		int lim = sq_param(q, xasprintf("%d", SEARCH_MAX_RESULTS + 1));
		sb_printf(&q->sql, " LIMIT $%d::bigint) x ON true WHERE mb.id = $1 AND mb.account_id = $2", lim);
		sb_add(&q->sql, order.s);
	}
	free(order.s);
	free(cols.s);
	return ok;
}

/* ================================================================ the call */

/* search_reply_code - a SearchReply with only a code (INVALID is counted) */
static void search_reply_code(struct msg_call *mc, msg_code code)
{
	if (code == MAIL__ROUTER__V1__CODE__CODE_INVALID)
		metric_inc(msg_m.search_refused);
	Mail__Router__V1__SearchReply rep = MAIL__ROUTER__V1__SEARCH_REPLY__INIT;
	rep.code = code;
	msg_reply(mc, &rep.base);
}

/* search_done - the matching UIDs in order, and their highest modseq */
static void search_done(struct msg_call *mc, const struct db_result *r)
{
	if (r->status != DB_OK) {
		msg_db_error(mc, r);
		return;
	}
	int rows = PQntuples(r->res);
	if (rows == 0) {
		search_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_NO_SUCH_MAILBOX);
		return;
	}
	if (rows > SEARCH_MAX_RESULTS) {
		msg_finish(mc, RPC_RESOURCE_EXHAUSTED, "too many matches");
		return;
	}
	Mail__Router__V1__SearchReply rep = MAIL__ROUTER__V1__SEARCH_REPLY__INIT;
	uint32_t *uids = xcalloc((size_t)rows, sizeof(*uids));
	size_t n = 0;
	for (int i = 0; i < rows; i++) {
		int64_t uid, modseq;
		if (PQgetisnull(r->res, i, 0))
			continue;
		if (!msg_pg_int(r->res, i, 0, &uid) || !msg_pg_int(r->res, i, 1, &modseq)) {
			free(uids);
			msg_finish(mc, RPC_INTERNAL, "malformed database result");
			return;
		}
		uids[n++] = (uint32_t)uid;
		rep.highestmodseq = MAIL_MAX(rep.highestmodseq, (uint64_t)modseq);
	}
	rep.uids = uids;
	rep.n_uids = n;
	log_debug("search done", "call=%llu matches=%zu", (unsigned long long)rpc_call_id(mc->call), n);
	msg_reply(mc, &rep.base);
	free(uids);
}

/* msg_search_on_message - SEARCH / UID SEARCH / SORT */
void msg_search_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct msg_call *mc = msg_call_new(call, sizeof(*mc), "Search");
	if (mc == NULL)
		return;
	const char *err = NULL;
	if (search_wire_check(msg, len, &err) < 0) {
		log_info("search refused", "call=%llu peer=%s error=\"%s\"", (unsigned long long)rpc_call_id(call),
			 rpc_call_peer(call), err);
		search_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_INVALID);
		return;
	}
	Mail__Router__V1__SearchRequest *req = mail__router__v1__search_request__unpack(NULL, len, msg);
	if (req == NULL) {
		msg_finish(mc, RPC_INVALID_ARGUMENT, "malformed SearchRequest");
		return;
	}
	struct search_q q = { 0 };
	bool ok = msg_session_check(mc, req->session, req->mailbox_id);
	if (!ok)
		q.error = "invalid session or mailbox";
	else if (req->key == NULL) {
		q.error = "search key missing";
		ok = false;
	} else
		ok = search_sql(&q, req);
	mail__router__v1__search_request__free_unpacked(req, NULL);
	if (!ok) {
		log_info("search refused", "call=%llu error=\"%s\"", (unsigned long long)rpc_call_id(call),
			 q.error != NULL ? q.error : "invalid");
		for (int i = 0; i < q.n; i++)
			free(q.params[i]);
		free(q.params);
		free(q.sql.s);
		search_reply_code(mc, MAIL__ROUTER__V1__CODE__CODE_INVALID);
		return;
	}
	log_debug("search", "call=%llu nodes=%u params=%d", (unsigned long long)rpc_call_id(call), q.nodes, q.n);
	msg_exec(mc, NULL, q.sql.s, q.n, q.params, 1, true, search_done);
}
