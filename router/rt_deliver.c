/* rt_deliver.c - the write path of mail.router.v1: ResolveRecipient (SMTP
 * RCPT TO), Deliver (SMTP DATA/BDAT: envelope and body chunks in, one result
 * per recipient out) and Append (IMAP APPEND into one mailbox).
 *
 * Storage path, shared by Deliver and Append: the body is buffered whole
 * (bounded by max_message_size; Deliver prepends the frontend's Received
 * header), then parsed once - blob id (SHA-256), MIME structure, the IMAP
 * ENVELOPE/BODY/BODYSTRUCTURE strings, the section map, the header block,
 * the RFC 2047-decoded search and sort fields and the body text for
 * full-text search (on the hasher pool for big messages, so a loop never
 * stalls). Then the blob row is prepared (mail_blob_prepare: the GC keeps
 * the blob from now on), the body goes to R store nodes (blob_put answers
 * when W have fsync'd it), and ONE statement commits everything: Deliver
 * calls mail_deliver_message (recipients resolved again, one copy per local
 * account, outbound queue rows for remote targets: a recipient that is itself
 * remote only for an authenticated, enabled submitter, a remote target of a
 * local alias for anyone - forwarding), Append calls mail_deliver.
 * The answer goes out only after both the commit and the W copies: the
 * durability rule. Every commit carries an idempotency token (the queue id,
 * which a frontend may choose so that its own retry is safe too); an answer
 * lost on the way back (DB_UNAVAILABLE) is retried once with the same token,
 * so a message is never delivered twice; after that the call ends UNAVAILABLE
 * (SMTP 451, IMAP NO [UNAVAILABLE]). mail_blob_prepare is idempotent and is
 * tried a few times (a GC deleting an old copy of the same blob refuses it
 * with 40001 for a moment).
 *
 * Ownership: each Deliver/Append call owns one struct dlv (the call's data):
 * its buffer, the parse results, and whatever is in flight - a pool job, a db
 * request, a blob op or the retry timer, one at a time. The dlv holds its
 * worker, so a drain lets a running delivery finish. on_cancel (client gone,
 * deadline, router stopping) cancels what is in flight and frees the dlv;
 * when a pool job holds it, the job's completion frees it instead.
 * ResolveRecipient is one db request (struct rsv). */
#include "lib/common.h"
#include "lib/base64.h"
#include "router/router.h"
#include "router/mime.h"
#include "lib/daemon.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/workpool.h"
#include "lib/xalloc.h"
#include "router.pb-c.h"
#include <event2/event.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#define DLV_SLOT 1

/* Limits on what a frontend may send */
#define DLV_MAX_RCPTS 1000              /* recipients of one Deliver (RFC 5321 asks >= 100) */
#define DLV_ADDR_MAX 254                /* a recipient address */
#define DLV_PATH_MAX 256                /* the reverse-path */
#define DLV_DSN_MAX 500                 /* ENVID, NOTIFY, ORCPT */
#define DLV_RECEIVED_MAX (16 * 1024)    /* the Received header the router prepends */
#define DLV_MAILBOX_MAX 1000            /* an Append mailbox name (bytes) */
#define DLV_MAX_FLAGS 100               /* flags and keywords of one Append */
#define DLV_KEYWORD_MAX 100             /* one keyword (bytes) */
#define DLV_QUEUE_ID_MIN 8
#define DLV_QUEUE_ID_MAX 64
/* What is computed at delivery */
#define DLV_FIELD_MAX 4096              /* bytes kept of one decoded search field */
#define DLV_TEXT_MAX (256 * 1024)       /* body text indexed (tsvector stays under 1 MB) */
#define DLV_INLINE_PARSE (256 * 1024)   /* smaller messages are parsed on the loop */
#define DLV_RETRY_DELAY_MS 300          /* before the one retry of a lost commit */
#define DLV_PREPARE_TRIES 4             /* mail_blob_prepare attempts (idempotent) */
#define DLV_PREPARE_DELAY_MS 250        /* between them: a GC claim on the blob passes */
#define DLV_MAX_DATE 253402300799LL     /* 9999-12-31T23:59:59Z */

typedef Mail__Router__V1__Code dlv_code;
#define CODE(x) MAIL__ROUTER__V1__CODE__CODE_##x

enum dlv_kind { DLV_DELIVER, DLV_APPEND };
static const char *const dlv_kind_names[] = { "deliver", "append" };

enum dlv_result { DR_OK, DR_REFUSED, DR_INVALID, DR_TOO_BIG, DR_UNAVAILABLE, DR_ERROR, DR_CANCELLED, DR_N };
static const char *const dlv_result_names[DR_N] = {
	"ok", "refused", "invalid", "too_big", "unavailable", "error", "cancelled"
};

enum dlv_stage {
	ST_RECEIVING, ST_PARSING, ST_PREPARING, ST_PREPARE_WAIT, ST_PUTTING, ST_COMMITTING, ST_COMMIT_WAIT
};
/* where a call's time goes (deliver_stage_seconds): a wait counts with its stage */
enum dlv_phase { PH_RECEIVE, PH_PARSE, PH_PREPARE, PH_PUT, PH_COMMIT, PH_N };
static const char *const dlv_phase_names[PH_N] = { "receive", "parse", "prepare", "put", "commit" };
static const enum dlv_phase dlv_phase_of[] = {
	[ST_RECEIVING] = PH_RECEIVE, [ST_PARSING] = PH_PARSE, [ST_PREPARING] = PH_PREPARE,
	[ST_PREPARE_WAIT] = PH_PREPARE, [ST_PUTTING] = PH_PUT, [ST_COMMITTING] = PH_COMMIT,
	[ST_COMMIT_WAIT] = PH_COMMIT,
};

static struct {
	struct metric *total[2][DR_N];
	struct metric *bytes[2];
	struct metric *seconds[2];
	struct metric *phase_seconds[2][PH_N];
	struct metric *resolve[6];
	struct metric *retries;
	struct metric *batches, *batch_items, *batch_splits;
} dlv_m;

struct dlv_rcpt {
	char *address;
	char *notify, *orcpt;
	bool valid;                     /* passed to the database */
	unsigned ok, local, queued, quota, tempfail, relay, unknown;
};

struct dlv {
	enum dlv_kind kind;
	struct rpc_call *call;          /* NULL once the runtime cancelled it */
	struct rt_loop *loop;
	struct daemon_worker *w;        /* held while the dlv lives */
	uint64_t call_id;
	double t0;
	double t_stage;                 /* when the current phase began */
	enum dlv_stage stage;
	bool got_first, half_closed, job_pending, retried;
	int prepare_tries;

	uint8_t *buf;                   /* the message as it will be stored */
	size_t len, cap;
	uint64_t data_bytes;            /* body bytes received (the Received header excluded) */
	size_t return_path_len;         /* Deliver: the Return-Path line at the start of buf */

	uint64_t account_id;            /* Deliver: submitter (0 = none); Append: owner */
	char *client_ip;                /* for the log line, as the frontend gave it */
	char *session_id;               /* the frontend's session, for correlated logs */
	/* Deliver */
	char *mail_from, *envid, *ret;
	struct dlv_rcpt *rcpts;
	size_t n_rcpts, n_valid;
	char queue_id[DLV_QUEUE_ID_MAX + 1];
	/* Append */
	char *mailbox;
	uint32_t flags;
	char *keywords;                 /* text[] literal */
	int64_t internal_date;          /* 0 = now */
	uint64_t declared;              /* declared literal size, 0 = unknown */
	bool check_pending, check_ok;

	char token[DLV_QUEUE_ID_MAX + 8];

	/* parse results (written by the pool thread for big messages) */
	char blob_id[BLOB_ID_HEX_LEN + 1];
	char *meta;                     /* jsonb text */
	size_t header_size;             /* header block = buf[0 .. header_size) */
	char *text;                     /* body text for full-text search, or NULL */
	size_t text_len;
	bool text_ascii;                /* text is all ASCII (0010_ascii.sql) */

	/* after the put */
	char *nodes;                    /* text[] literal of the nodes that have it */
	char *nodes_json;               /* the same as a JSON array */
	char *arr_rcpts, *arr_notify, *arr_orcpt;

	/* group commit (Deliver): queued in the loop's batcher, or an item of a batch
	 * being committed; solo = commit alone with deliver_message */
	struct dlv *bnext;
	struct dlv_batcher *queued;     /* the queue d waits in, or NULL */
	bool solo, solo_prepare;
	struct dlv_batch *batch;
	size_t batch_idx;
	char *item_json;                /* this delivery as one mail_deliver_batch item */

	/* in flight */
	struct db_request *dbr;
	struct blob_op *op;
	struct event *retry_ev;
};

static double dlv_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* dlv_set_stage - enter stage st, counting the time spent in the phase it ends */
static void dlv_set_stage(struct dlv *d, enum dlv_stage st)
{
	if (dlv_phase_of[st] != dlv_phase_of[d->stage]) {
		double now = dlv_now();
		metric_observe(dlv_m.phase_seconds[d->kind][dlv_phase_of[d->stage]], now - d->t_stage);
		d->t_stage = now;
	}
	d->stage = st;
}

/* ------------------------------------------------------------------ strings */

/* growable string, always NUL-terminated once non-empty */
struct sbuf {
	char *d;
	size_t len, cap;
};

/* sb_reserve - room for n more bytes and the NUL */
static void sb_reserve(struct sbuf *b, size_t n)
{
	if (b->len + n + 1 <= b->cap)
		return;
	size_t c = b->cap != 0 ? b->cap : 256;
	while (c < b->len + n + 1)
		c *= 2;
	b->d = xrealloc(b->d, c);
	b->cap = c;
}

static void sb_add(struct sbuf *b, const void *p, size_t n)
{
	sb_reserve(b, n);
	if (n > 0)
		memcpy(b->d + b->len, p, n);
	b->len += n;
	b->d[b->len] = '\0';
}

static void sb_addc(struct sbuf *b, char c)
{
	sb_add(b, &c, 1);
}

static void sb_adds(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* sb_steal - the string (never NULL); the buffer is left empty */
static char *sb_steal(struct sbuf *b)
{
	char *r = b->d != NULL ? b->d : xstrdup("");
	*b = (struct sbuf){ 0 };
	return r;
}

/* utf8_seq - length of the valid UTF-8 sequence at p (RFC 3629, as PostgreSQL
 * checks it: no overlongs, no surrogates, nothing above U+10FFFF), 0 if invalid */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
	uint8_t c = p[0];
	if (c < 0x80)
		return 1;
	size_t k = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
	if (k == 0 || k > n)
		return 0;
	if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f) || (c == 0xf0 && p[1] < 0x90) ||
	    (c == 0xf4 && p[1] > 0x8f))
		return 0;
	for (size_t i = 1; i < k; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return k;
}

/* sb_add_utf8 - append bytes as valid UTF-8: invalid sequences become U+FFFD,
 * NULs are dropped (PostgreSQL text holds neither) */
static void sb_add_utf8(struct sbuf *b, const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		size_t ascii = i;       /* a run of plain ASCII goes in one copy */
		while (ascii < n && p[ascii] > 0 && p[ascii] < 0x80)
			ascii++;
		if (ascii > i) {
			sb_add(b, p + i, ascii - i);
			i = ascii;
			continue;
		}
		size_t k = utf8_seq(p + i, n - i);
		if (k == 0) {
			sb_add(b, "\xef\xbf\xbd", 3);
			i++;
		} else if (k == 1 && p[i] == 0) {
			i++;
		} else {
			sb_add(b, p + i, k);
			i += k;
		}
	}
}

/* sb_add_latin1 - ISO-8859-1 bytes as UTF-8 (also good enough for the other
 * single-byte charsets: the text is only indexed) */
static void sb_add_latin1(struct sbuf *b, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] == 0)
			continue;
		if (p[i] < 0x80) {
			sb_addc(b, (char)p[i]);
		} else {
			char u[2] = { (char)(0xc0 | (p[i] >> 6)), (char)(0x80 | (p[i] & 0x3f)) };
			sb_add(b, u, 2);
		}
	}
}

/* text_ok - valid UTF-8 without control characters (envelope strings) */
static bool text_ok(const char *s, size_t n)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t i = 0;
	while (i < n) {
		if (p[i] < 0x20 || p[i] == 0x7f)
			return false;
		size_t k = utf8_seq(p + i, n - i);
		if (k == 0)
			return false;
		i += k;
	}
	return true;
}

/* utf8_cut - the longest prefix of valid UTF-8 s of at most max bytes */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
	if (len <= max)
		return len;
	size_t n = max;
	while (n > 0 && ((uint8_t)s[n] & 0xc0) == 0x80)
		n--;
	return n;
}

/* address_ok - the sanity a router checks before looking an address up:
 * 1..254 bytes of text, exactly one '@', non-empty local part and domain */
static bool address_ok(const char *a)
{
	size_t n = strlen(a);
	if (n == 0 || n > DLV_ADDR_MAX || !text_ok(a, n))
		return false;
	const char *at = strchr(a, '@');
	return at != NULL && at != a && at[1] != '\0' && strchr(at + 1, '@') == NULL;
}

/* pg_array_add - one element of a text[] literal, always quoted */
static void pg_array_add(struct sbuf *b, const char *s)
{
	sb_addc(b, b->len == 0 ? '{' : ',');
	sb_addc(b, '"');
	for (; *s != '\0'; s++) {
		if (*s == '"' || *s == '\\')
			sb_addc(b, '\\');
		sb_addc(b, *s);
	}
	sb_addc(b, '"');
}

/* pg_array_end - close a literal started by pg_array_add (or an empty one) */
static char *pg_array_end(struct sbuf *b)
{
	if (b->len == 0)
		sb_addc(b, '{');
	sb_addc(b, '}');
	return sb_steal(b);
}

/* json_str - a JSON string of valid UTF-8 s (quotes, backslashes and control
 * characters escaped) */
static void json_str(struct sbuf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	sb_addc(b, '"');
	size_t run = 0;                 /* start of the bytes copied as they are */
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)s[i];
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		sb_add(b, s + run, i - run);
		run = i + 1;
		char e[6] = { '\\', (char)c };
		size_t len = 2;
		if (c == '\n')
			e[1] = 'n';
		else if (c == '\r')
			e[1] = 'r';
		else if (c == '\t')
			e[1] = 't';
		else if (c < 0x20) {
			memcpy(e + 1, "u00", 3);
			e[4] = hex[c >> 4];
			e[5] = hex[c & 15];
			len = 6;
		}
		sb_add(b, e, len);
	}
	sb_add(b, s + run, n - run);
	sb_addc(b, '"');
}

/* json_key - `,"key":` (no comma after the opening brace) */
static void json_key(struct sbuf *b, const char *key)
{
	if (b->len > 1)
		sb_addc(b, ',');
	json_str(b, key, strlen(key));
	sb_addc(b, ':');
}

/* json_text - key and a header-derived value: valid UTF-8, at most DLV_FIELD_MAX bytes */
static void json_text(struct sbuf *b, const char *key, const char *val)
{
	if (val == NULL)
		return;
	struct sbuf t = { 0 };
	sb_add_utf8(&t, (const uint8_t *)val, strlen(val));
	size_t n = utf8_cut(t.d != NULL ? t.d : "", t.len, DLV_FIELD_MAX);
	json_key(b, key);
	json_str(b, t.d != NULL ? t.d : "", n);
	free(t.d);
}

/* json_b64 - key and base64 of bytes (the IMAP strings may hold 8-bit bytes) */
static void json_b64(struct sbuf *b, const char *key, const char *val)
{
	if (val == NULL)
		return;
	size_t n = strlen(val);
	char *out = xmalloc(4 * ((n + 2) / 3) + 1);
	int m = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)val, (int)n);
	json_key(b, key);
	sb_addc(b, '"');
	sb_add(b, out, (size_t)(m > 0 ? m : 0));
	sb_addc(b, '"');
	free(out);
}

/* ------------------------------------------------------------------ header fields */

/* date_parse - an RFC 5322 date-time (with the obsolete forms of 4.3: two-digit
 * years, zone names, comments) as ISO 8601 in out; false if it is not one */
static bool date_parse(const char *s, char *out, size_t outlen)
{
	static const char *const months[] = { "jan", "feb", "mar", "apr", "may", "jun",
					      "jul", "aug", "sep", "oct", "nov", "dec" };
	static const struct { const char *name; int minutes; } zones[] = {
		{ "UT", 0 }, { "GMT", 0 }, { "Z", 0 }, { "EST", -300 }, { "EDT", -240 },
		{ "CST", -360 }, { "CDT", -300 }, { "MST", -420 }, { "MDT", -360 },
		{ "PST", -480 }, { "PDT", -420 },
	};
	/* tokens: words and numbers, comments and separators skipped */
	char tok[8][16];
	int nt = 0;
	const char *p = s;
	while (*p != '\0' && nt < 8) {
		if (*p == '(') {
			int depth = 0;
			for (; *p != '\0'; p++) {
				if (*p == '\\' && p[1] != '\0')
					p++;
				else if (*p == '(')
					depth++;
				else if (*p == ')' && --depth == 0) {
					p++;
					break;
				}
			}
			continue;
		}
		if (*p == ' ' || *p == '\t' || *p == ',' || *p == '\r' || *p == '\n') {
			p++;
			continue;
		}
		size_t n = 0;
		if (*p == '+' || *p == '-')
			tok[nt][n++] = *p++;
		while (*p != '\0' && *p != ' ' && *p != '\t' && *p != ',' && *p != '(' && *p != '\r' &&
		       *p != '\n' && !(n > 0 && (*p == '+' || *p == '-'))) {
			if (n + 1 >= sizeof(tok[0]))
				return false;
			tok[nt][n++] = *p++;
		}
		tok[nt][n] = '\0';
		nt++;
	}
	int i = 0;
	if (i < nt && tok[i][0] >= 'A' && ((tok[i][0] | 0x20) >= 'a' && (tok[i][0] | 0x20) <= 'z'))
		i++; /* day of week */
	if (nt - i < 4)
		return false;
	char *end;
	long day = strtol(tok[i], &end, 10);
	if (*end != '\0' || day < 1 || day > 31)
		return false;
	int mon = -1;
	for (int k = 0; k < 12; k++)
		if (strncasecmp(tok[i + 1], months[k], 3) == 0 && strlen(tok[i + 1]) >= 3)
			mon = k;
	if (mon < 0)
		return false;
	long year = strtol(tok[i + 2], &end, 10);
	if (*end != '\0' || year < 0)
		return false;
	size_t ylen = strlen(tok[i + 2]);
	if (ylen == 2)
		year += year < 50 ? 2000 : 1900;
	else if (ylen == 3)
		year += 1900;
	if (year < 1900 || year > 9999)
		return false;
	int hh = 0, mm = 0, ss = 0;
	const char *t = tok[i + 3];
	if (sscanf(t, "%2d:%2d:%2d", &hh, &mm, &ss) < 2)
		return false;
	if (hh > 23 || mm > 59 || ss > 60)
		return false;
	if (ss == 60)
		ss = 59;
	int zone = 0;
	if (nt - i >= 5) {
		const char *z = tok[i + 4];
		if ((z[0] == '+' || z[0] == '-') && strlen(z) == 5 && strspn(z + 1, "0123456789") == 4) {
			int v = atoi(z + 1);
			if (v % 100 > 59)
				return false;
			zone = (v / 100) * 60 + v % 100;
			if (zone > 14 * 60)
				return false; /* no such zone; PostgreSQL would refuse it */
			if (z[0] == '-')
				zone = -zone;
		} else {
			for (size_t k = 0; k < N_ELEMENTS(zones); k++)
				if (strcasecmp(z, zones[k].name) == 0)
					zone = zones[k].minutes;
			/* military zones and unknown names: +0000 (RFC 5322 4.3) */
		}
	}
	static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
	if (day > mdays[mon] || (mon == 1 && day == 29 && !leap))
		return false;
	int za = zone < 0 ? -zone : zone;
	snprintf(out, outlen, "%04ld-%02d-%02ldT%02d:%02d:%02d%c%02d:%02d", year, mon + 1, day, hh, mm, ss,
		 zone < 0 ? '-' : '+', za / 60, za % 60);
	return true;
}

/* ascii_prefix - s starts with the ASCII word w, case-insensitively */
static bool ascii_prefix(const char *s, const char *w)
{
	return strncasecmp(s, w, strlen(w)) == 0;
}

/* skip_blob - past "[...]" and the blanks after it (RFC 5256 subj-blob), or s */
static const char *skip_blob(const char *s)
{
	if (*s != '[')
		return s;
	const char *e = s + 1;
	while (*e != '\0' && *e != '[' && *e != ']')
		e++;
	if (*e != ']')
		return s;
	e++;
	while (*e == ' ')
		e++;
	return e;
}

/* skip_refwd - past one subj-leader "*blob (re|fw|fwd) *WSP [blob] ':'", or s */
static const char *skip_refwd(const char *s)
{
	const char *p = s;
	for (const char *q; (q = skip_blob(p)) != p;)
		p = q;
	if (ascii_prefix(p, "re"))
		p += 2;
	else if (ascii_prefix(p, "fwd"))
		p += 3;
	else if (ascii_prefix(p, "fw"))
		p += 2;
	else
		return s;
	while (*p == ' ')
		p++;
	p = skip_blob(p);
	return *p == ':' ? p + 1 : s;
}

/* base_subject - RFC 5256 2.1: the subject without reply/forward decorations,
 * for SORT SUBJECT and THREAD (the caller owns the result) */
static char *base_subject(const char *decoded)
{
	/* (1) blanks collapsed */
	struct sbuf b = { 0 };
	bool blank = false;
	for (const char *p = decoded; *p != '\0'; p++) {
		if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
			blank = true;
			continue;
		}
		if (blank && b.len > 0)
			sb_addc(&b, ' ');
		blank = false;
		sb_addc(&b, *p);
	}
	char *s = sb_steal(&b);
	char *start = s;
	for (;;) {
		/* (2) trailing "(fwd)" and blanks */
		size_t n = strlen(start);
		for (;;) {
			while (n > 0 && start[n - 1] == ' ')
				n--;
			if (n >= 5 && strncasecmp(start + n - 5, "(fwd)", 5) == 0)
				n -= 5;
			else
				break;
		}
		start[n] = '\0';
		/* (3)-(5) leaders and blobs, while something changes */
		for (bool changed = true; changed;) {
			changed = false;
			while (*start == ' ') {
				start++;
				changed = true;
			}
			const char *q = skip_refwd(start);
			if (q != start) {
				start = (char *)q;
				changed = true;
				continue;
			}
			q = skip_blob(start);
			if (q != start && *q != '\0') {
				start = (char *)q;
				changed = true;
			}
		}
		/* (6) "[fwd: ... ]" */
		n = strlen(start);
		if (n >= 6 && ascii_prefix(start, "[fwd:") && start[n - 1] == ']') {
			start[n - 1] = '\0';
			start += 5;
			continue;
		}
		break;
	}
	char *r = xstrdup(start);
	free(s);
	return r;
}

/* first_mailbox - RFC 5256 sort key of an address header: the addr-mailbox
 * of its first address, lower-cased; NULL when there is none */
static char *first_mailbox(const char *raw)
{
	if (raw == NULL)
		return NULL;
	struct mime_address *list = mime_addresses_parse(raw, strlen(raw), 0);
	char *r = NULL;
	for (const struct mime_address *a = list; a != NULL; a = a->next) {
		if (a->host == NULL || a->mailbox == NULL)
			continue; /* group start or end */
		r = xstrdup(a->mailbox);
		for (char *p = r; *p != '\0'; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p + 32);
		break;
	}
	mime_addresses_free(&list);
	return r;
}

/* ------------------------------------------------------------------ body text */

static int hex_val(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* cte_decode - a part's body without its transfer encoding (base64 and
 * quoted-printable decoded leniently; anything else as is), at most max bytes */
static void cte_decode(struct sbuf *out, const char *enc, const uint8_t *p, size_t n, size_t max)
{
	if (enc != NULL && strcmp(enc, "base64") == 0) {
		uint32_t acc = 0;
		int bits = 0;
		for (size_t i = 0; i < n && out->len < max; i++) {
			int v = base64_digit((unsigned char)p[i]);
			if (v < 0)
				continue;
			acc = (acc << 6) | (uint32_t)v;
			bits += 6;
			if (bits >= 8) {
				bits -= 8;
				sb_addc(out, (char)((acc >> bits) & 0xff));
			}
		}
		return;
	}
	if (enc != NULL && strcmp(enc, "quoted-printable") == 0) {
		for (size_t i = 0; i < n && out->len < max; i++) {
			if (p[i] != '=') {
				sb_addc(out, (char)p[i]);
				continue;
			}
			if (i + 2 < n && hex_val(p[i + 1]) >= 0 && hex_val(p[i + 2]) >= 0) {
				sb_addc(out, (char)(hex_val(p[i + 1]) * 16 + hex_val(p[i + 2])));
				i += 2;
			} else if (i + 1 < n && p[i + 1] == '\n') {
				i += 1; /* soft line break */
			} else if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n') {
				i += 2;
			} else {
				sb_addc(out, '=');
			}
		}
		return;
	}
	sb_add(out, p, MAIL_MIN(n, max - MAIL_MIN(max, out->len)));
}

/* html_is_inline - a tag that does not separate words ("hel<b>lo</b>" is "hello") */
static bool html_is_inline(const char *name)
{
	static const char *const inl[] = { "a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "em", "font",
					   "i", "kbd", "mark", "q", "s", "samp", "small", "span", "strike",
					   "strong", "sub", "sup", "tt", "u", "var" };
	for (size_t k = 0; k < N_ELEMENTS(inl); k++)
		if (strcmp(name, inl[k]) == 0)
			return true;
	return false;
}

/* html_skip_to - the index just past the first occurrence of end (ASCII
 * case-insensitive) at or after i, or n */
static size_t html_skip_to(const char *s, size_t n, size_t i, const char *end)
{
	size_t el = strlen(end);
	for (; i + el <= n; i++)
		if (strncasecmp(s + i, end, el) == 0)
			return i + el;
	return n;
}

/* html_strip - the text of an HTML part, for search: tags dropped (a block tag
 * becomes one space, an inline one nothing), comments, <script> and <style>
 * content dropped, the common entities decoded */
static void html_strip(struct sbuf *out, const char *s, size_t n)
{
	static const struct { const char *ent; char c; } ents[] = {
		{ "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' }, { "&quot;", '"' },
		{ "&nbsp;", ' ' }, { "&#39;", '\'' },
	};
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '<') {
			if (n - i >= 4 && memcmp(s + i, "<!--", 4) == 0) {
				i = html_skip_to(s, n, i + 4, "-->") - 1;
				continue;
			}
			size_t j = i + 1;
			bool closing = j < n && s[j] == '/';
			j += closing;
			char name[16];
			size_t k = 0;
			while (j < n && k + 1 < sizeof(name) && ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
							    (s[j] >= '0' && s[j] <= '9')))
				name[k++] = (char)(s[j++] | 0x20);
			name[k] = '\0';
			size_t gt = html_skip_to(s, n, j, ">");
			if (!closing && (strcmp(name, "script") == 0 || strcmp(name, "style") == 0))
				gt = html_skip_to(s, n, gt, strcmp(name, "script") == 0 ? "</script>" : "</style>");
			if (!html_is_inline(name))
				sb_addc(out, ' ');
			i = gt - 1;
			continue;
		}
		if (c == '&') {
			size_t k;
			for (k = 0; k < N_ELEMENTS(ents); k++) {
				size_t el = strlen(ents[k].ent);
				if (n - i >= el && strncasecmp(s + i, ents[k].ent, el) == 0) {
					sb_addc(out, ents[k].c);
					i += el - 1;
					break;
				}
			}
			if (k < N_ELEMENTS(ents))
				continue;
		}
		sb_addc(out, c);
	}
}

/* body_text - the decoded text of every text/... part, as valid UTF-8, at
 * most DLV_TEXT_MAX bytes; NULL when there is none */
static char *body_text(const struct mime_message *m, const uint8_t *msg, size_t len)
{
	struct sbuf text = { 0 };
	unsigned int n = mime_message_part_count(m);
	for (unsigned int i = 0; i < n && text.len < DLV_TEXT_MAX; i++) {
		const struct mime_part *p = mime_message_part(m, i);
		if (p == NULL || p->kind != MIME_PART_LEAF || p->type == NULL || strcmp(p->type, "text") != 0)
			continue;
		if (p->body_offset > len || p->body_size > len - p->body_offset)
			continue;
		struct sbuf raw = { 0 };
		cte_decode(&raw, p->encoding, msg + p->body_offset, p->body_size, DLV_TEXT_MAX);
		const char *cs = NULL;
		for (unsigned int k = 0; k < p->param_count; k++)
			if (strcmp(p->params[k].name, "charset") == 0)
				cs = p->params[k].value;
		struct sbuf utf = { 0 };
		if (cs != NULL && (ascii_prefix(cs, "iso-8859") || ascii_prefix(cs, "windows-125") ||
				   ascii_prefix(cs, "latin") || ascii_prefix(cs, "cp125")))
			sb_add_latin1(&utf, (const uint8_t *)(raw.d ? raw.d : ""), raw.len);
		else
			sb_add_utf8(&utf, (const uint8_t *)(raw.d ? raw.d : ""), raw.len);
		free(raw.d);
		if (text.len > 0)
			sb_addc(&text, '\n');
		if (p->subtype != NULL && strcmp(p->subtype, "html") == 0)
			html_strip(&text, utf.d ? utf.d : "", utf.len);
		else
			sb_add(&text, utf.d ? utf.d : "", utf.len);
		free(utf.d);
	}
	if (text.len == 0) {
		free(text.d);
		return NULL;
	}
	/* html_strip may have cut nothing, but the size cap may split a sequence */
	text.len = utf8_cut(text.d, text.len, DLV_TEXT_MAX);
	text.d[text.len] = '\0';
	return sb_steal(&text);
}

/* meta_build - the jsonb p_meta of mail_deliver: IMAP strings (base64) and
 * the search/sort fields of the top-level message */
static char *meta_build(const struct mime_message *m)
{
	struct sbuf b = { 0 };
	sb_addc(&b, '{');
	char *s = mime_envelope_export(m);
	json_b64(&b, "envelope", s);
	free(s);
	s = mime_bodystructure_export(m, false);
	json_b64(&b, "body", s);
	free(s);
	s = mime_bodystructure_export(m, true);
	json_b64(&b, "bodystructure", s);
	free(s);
	s = mime_sections_export(m);
	json_b64(&b, "part_map", s);
	free(s);

	const char *raw = mime_header_get(m, NULL, "Subject");
	if (raw != NULL) {
		char *dec = mime_header_decode(raw);
		json_text(&b, "subject", dec);
		char *base = base_subject(dec);
		json_text(&b, "base_subject", base);
		free(base);
		free(dec);
	}
	static const struct { const char *header, *key, *sort_key; } addrs[] = {
		{ "From", "from", "sort_from" }, { "To", "to", "sort_to" },
		{ "Cc", "cc", "sort_cc" }, { "Bcc", "bcc", NULL },
	};
	for (size_t i = 0; i < N_ELEMENTS(addrs); i++) {
		raw = mime_header_get(m, NULL, addrs[i].header);
		if (raw == NULL)
			continue;
		char *dec = mime_header_decode(raw);
		json_text(&b, addrs[i].key, dec);
		free(dec);
		if (addrs[i].sort_key != NULL) {
			char *mb = first_mailbox(raw);
			json_text(&b, addrs[i].sort_key, mb);
			free(mb);
		}
	}
	raw = mime_header_get(m, NULL, "Date");
	char iso[40];
	if (raw != NULL && date_parse(raw, iso, sizeof(iso))) {
		json_key(&b, "sent_date");
		json_str(&b, iso, strlen(iso));
	}
	static const struct { const char *header, *key; } ids[] = {
		{ "Message-ID", "message_id" }, { "In-Reply-To", "in_reply_to" }, { "References", "references" },
	};
	for (size_t i = 0; i < N_ELEMENTS(ids); i++) {
		raw = mime_header_get(m, NULL, ids[i].header);
		if (raw == NULL)
			continue;
		char *dec = mime_header_decode(raw);
		json_text(&b, ids[i].key, dec);
		free(dec);
	}
	sb_addc(&b, '}');
	return sb_steal(&b);
}

/* ------------------------------------------------------------------ calls */

/* dlv_new - a Deliver/Append call's state; holds the worker until freed */
static void dlv_unbatch(struct dlv *d);

static struct dlv *dlv_new(struct rpc_call *call, enum dlv_kind kind)
{
	struct dlv *d = XNEW(struct dlv);
	d->kind = kind;
	d->call = call;
	d->loop = rt_loop_of_call(call);
	d->call_id = rpc_call_id(call);
	d->t0 = d->t_stage = dlv_now();
	d->w = rt_worker_hold(call);
	rpc_call_set_data(call, d);
	return d;
}

/* dlv_free - cancel the db request, blob op and timer in flight; free it all */
static void dlv_free(struct dlv *d)
{
	db_request_cancel(&d->dbr);
	blob_op_cancel(&d->op);
	dlv_unbatch(d);
	if (d->retry_ev != NULL)
		event_free(d->retry_ev);
	free(d->buf);
	for (size_t i = 0; i < d->n_rcpts; i++) {
		free(d->rcpts[i].address);
		free(d->rcpts[i].notify);
		free(d->rcpts[i].orcpt);
	}
	free(d->rcpts);
	free(d->client_ip);
	free(d->session_id);
	free(d->mail_from);
	free(d->envid);
	free(d->ret);
	free(d->mailbox);
	free(d->keywords);
	free(d->meta);
	free(d->text);
	free(d->nodes);
	free(d->nodes_json);
	free(d->item_json);
	free(d->arr_rcpts);
	free(d->arr_notify);
	free(d->arr_orcpt);
	rt_worker_release(d->w);
	free(d);
}

/* dlv_finish - send the reply (if any), end the call, count it, free the dlv */
static void dlv_finish(struct dlv *d, enum dlv_result dr, const ProtobufCMessage *reply, enum rpc_status st,
		       const char *msg)
{
	metric_inc(dlv_m.total[d->kind][dr]);
	metric_observe(dlv_m.seconds[d->kind], dlv_now() - d->t0);
	if (dr == DR_OK) {
		metric_add(dlv_m.bytes[d->kind], (double)d->len);
		metric_observe(dlv_m.phase_seconds[d->kind][dlv_phase_of[d->stage]], dlv_now() - d->t_stage);
	}
	if (d->call != NULL) {
		if (st != RPC_OK)
			log_info("delivery failed", "call=%" PRIu64 " kind=%s status=%s msg=\"%s\" size=%zu",
				 d->call_id, dlv_kind_names[d->kind], rpc_status_name(st), msg ? msg : "", d->len);
		rpc_call_set_data(d->call, NULL);
		if (reply != NULL)
			rpc_call_send_pb(d->call, reply);
		rpc_call_finish(d->call, st, msg);
		d->call = NULL;
	}
	dlv_free(d);
}

/* dlv_finish_db - end after a failed db request (UNAVAILABLE / INTERNAL) */
static void dlv_finish_db(struct dlv *d, const struct db_result *r, const char *what)
{
	metric_inc(dlv_m.total[d->kind][r->status == DB_UNAVAILABLE ? DR_UNAVAILABLE : DR_ERROR]);
	metric_observe(dlv_m.seconds[d->kind], dlv_now() - d->t0);
	if (d->call != NULL) {
		struct rpc_call *call = d->call;
		rpc_call_set_data(call, NULL);
		d->call = NULL;
		log_info("delivery failed", "call=%" PRIu64 " kind=%s op=%s db_status=%d size=%zu", d->call_id,
			 dlv_kind_names[d->kind], what, (int)r->status, d->len);
		rt_finish_db_error(call, r, what);
	}
	dlv_free(d);
}

/* dlv_append_reply - an Append answer with only a code */
static void dlv_append_code(struct dlv *d, dlv_code code)
{
	Mail__Router__V1__AppendReply reply = MAIL__ROUTER__V1__APPEND_REPLY__INIT;
	reply.code = code;
	dlv_finish(d, DR_REFUSED, &reply.base, RPC_OK, NULL);
}

static struct dlv *dlv_get(struct rpc_call *call)
{
	return rpc_call_data(call);
}

/* dlv_on_cancel - stop what is in flight and free, unless a pool job holds the dlv */
static void dlv_on_cancel(struct rpc_call *call)
{
	struct dlv *d = dlv_get(call);
	if (d == NULL)
		return;
	rpc_call_set_data(call, NULL);
	d->call = NULL;
	log_debug("delivery cancelled", "call=%" PRIu64 " kind=%s stage=%d", d->call_id, dlv_kind_names[d->kind],
		  (int)d->stage);
	metric_inc(dlv_m.total[d->kind][DR_CANCELLED]);
	db_request_cancel(&d->dbr);
	blob_op_cancel(&d->op);
	dlv_unbatch(d); /* a batch being committed goes on without it */
	if (d->job_pending)
		return;
	dlv_free(d);
}

/* dlv_append_data - one body chunk into the buffer; false (call finished) past the limit */
static bool dlv_append_data(struct dlv *d, const uint8_t *data, size_t len)
{
	if (len == 0)
		return true;
	if (len > RPC_CHUNK_SIZE) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "chunk larger than 64 KiB");
		return false;
	}
	uint64_t max = d->loop->rt->max_message_size;
	if (d->data_bytes + len > max) {
		/* drop the buffer at once: the rest of the stream is refused */
		dlv_finish(d, DR_TOO_BIG, NULL, RPC_RESOURCE_EXHAUSTED, "message larger than max_message_size");
		return false;
	}
	if (d->kind == DLV_APPEND && d->declared != 0 && d->data_bytes + len > d->declared) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "more data than the declared size");
		return false;
	}
	if (d->len + len > d->cap) {
		size_t cap = d->cap != 0 ? d->cap : 64 * 1024;
		while (cap < d->len + len)
			cap *= 2;
		size_t ceiling = (size_t)max + (d->len - (size_t)d->data_bytes);
		if (cap > ceiling)
			cap = ceiling;
		d->buf = xrealloc(d->buf, cap);
		d->cap = cap;
	}
	memcpy(d->buf + d->len, data, len);
	d->len += len;
	d->data_bytes += len;
	return true;
}

/* ------------------------------------------------------------------ storage path */

static void dlv_commit(struct dlv *d);
static void dlv_retry_later(struct dlv *d, int ms);

/* dlv_parse_work - blob id and everything computed once at delivery; pure,
 * runs on a pool thread for big messages */
static void dlv_parse_work(void *arg)
{
	struct dlv *d = arg;
	static const uint8_t empty[1];
	const uint8_t *msg = d->len > 0 ? d->buf : empty;
	blob_id_of(msg, d->len, d->blob_id);
	struct mime_message *m = NULL;
	const char *err;
	if (mime_parse(msg, d->len, NULL, &m, &err) < 0 || m == NULL) {
		d->meta = xstrdup("{}");
		return;
	}
	const struct mime_part *root = mime_message_root(m);
	d->header_size = root->header_offset == 0 && root->header_size <= d->len ? root->header_size : 0;
	d->meta = meta_build(m);
	d->text = body_text(m, d->buf, d->len);
	d->text_len = d->text != NULL ? strlen(d->text) : 0;
	d->text_ascii = d->text != NULL;
	for (size_t i = 0; i < d->text_len && d->text_ascii; i++)
		d->text_ascii = (unsigned char)d->text[i] < 0x80;
	mime_message_free(&m);
}

/* dlv_put_done - W copies are fsync'd (or not): commit, or UNAVAILABLE */
static void dlv_put_done(const struct blob_put_result *res, void *arg)
{
	struct dlv *d = arg;
	d->op = NULL;
	if (res->status != RPC_OK) {
		char msg[200];
		snprintf(msg, sizeof(msg), "blob store: %s", res->message);
		dlv_finish(d, res->status == RPC_UNAVAILABLE ? DR_UNAVAILABLE : DR_ERROR, NULL,
			   res->status == RPC_UNAVAILABLE ? RPC_UNAVAILABLE : RPC_INTERNAL, msg);
		return;
	}
	struct sbuf b = { 0 }, j = { 0 };
	sb_addc(&j, '[');
	for (size_t i = 0; i < res->n_nodes; i++) {
		pg_array_add(&b, res->nodes[i]);
		if (i > 0)
			sb_addc(&j, ',');
		json_str(&j, res->nodes[i], strlen(res->nodes[i]));
	}
	sb_addc(&j, ']');
	d->nodes = pg_array_end(&b);
	d->nodes_json = sb_steal(&j);
	dlv_commit(d);
}

static void dlv_prepare(struct dlv *d);
static void dlv_prepare_enqueue(struct dlv *d);

/* dlv_prepare_done - the blob row exists (the GC keeps it): upload. The
 * statement is idempotent: a lost answer, or the 40001 a GC's claim on the
 * same blob raises while it deletes the old copies, is tried again a few times */
static void dlv_prepare_done(const struct db_result *r, void *arg)
{
	struct dlv *d = arg;
	d->dbr = NULL;
	if (r->status != DB_OK) {
		bool transient = r->status == DB_UNAVAILABLE || db_result_retryable(r);
		if (transient && d->prepare_tries < DLV_PREPARE_TRIES) {
			dlv_set_stage(d, ST_PREPARE_WAIT);
			log_debug("blob prepare retried", "call=%" PRIu64 " blob=%.16s try=%d sqlstate=%s", d->call_id,
				  d->blob_id, d->prepare_tries, r->sqlstate);
			dlv_retry_later(d, DLV_PREPARE_DELAY_MS);
		} else if (transient) {
			dlv_finish(d, DR_UNAVAILABLE, NULL, RPC_UNAVAILABLE, "blob prepare: try again later");
		} else {
			dlv_finish_db(d, r, "blob prepare");
		}
		return;
	}
	dlv_set_stage(d, ST_PUTTING);
	d->op = blob_put(d->loop->blobs, d->buf, d->len, d->blob_id, dlv_put_done, d);
}

/* dlv_prepare - mail_blob_prepare: from now on the GC leaves the blob alone.
 * Prepares are batched like commits (below), one statement for those that
 * arrive together; a retry, or a batch refused, goes blob by blob. */
static void dlv_prepare(struct dlv *d)
{
	dlv_set_stage(d, ST_PREPARING);
	d->prepare_tries++;
	if (!d->solo_prepare && d->prepare_tries == 1 && d->loop->rt->deliver_batch_max > 1) {
		dlv_prepare_enqueue(d);
		return;
	}
	char size[24];
	snprintf(size, sizeof(size), "%zu", d->len);
	const char *values[2] = { d->blob_id, size };
	d->dbr = db_exec(d->loop->db, "deliver_blob_prepare", 2, values, NULL, NULL, 0, dlv_prepare_done, d);
}

/* dlv_parse_done - back on the loop: refuse at once without a write quorum,
 * else prepare the blob row */
static void dlv_parse_done(void *arg)
{
	struct dlv *d = arg;
	d->job_pending = false;
	if (d->call == NULL) {
		dlv_free(d);
		return;
	}
	if (d->return_path_len > 0) {
		/* where a relayed copy starts (after the Return-Path), for the queue rows */
		char *meta = xasprintf("{\"data_offset\":%zu%s%s", d->return_path_len,
				       strcmp(d->meta, "{}") == 0 ? "" : ",", d->meta + 1);
		free(d->meta);
		d->meta = meta;
	}
	const char *names[BLOB_MAX_NODES];
	if (blob_place(d->loop->blobs, d->blob_id, names, BLOB_MAX_NODES) < d->loop->rt->blob_opts.write_quorum) {
		dlv_finish(d, DR_UNAVAILABLE, NULL, RPC_UNAVAILABLE, "store write quorum unavailable");
		return;
	}
	dlv_prepare(d);
}

/* dlv_store - the whole message is here (and Append's checks passed): parse,
 * on the pool when it is big. May finish and free d. */
static void dlv_store(struct dlv *d)
{
	dlv_set_stage(d, ST_PARSING);
	if (d->len > DLV_INLINE_PARSE) {
		d->job_pending = true;
		if (workpool_submit(d->loop->rt->hashers, d->loop->base, dlv_parse_work, dlv_parse_done, d) == 0)
			return;
		d->job_pending = false; /* pool full: parse here */
	}
	dlv_parse_work(d);
	dlv_parse_done(d);
}

/* dlv_retry_cb - a retry delay is over: the same statement again (the commit
 * with the same token) */
static void dlv_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dlv *d = arg;
	if (d->stage == ST_PREPARE_WAIT)
		dlv_prepare(d);
	else
		dlv_commit(d);
}

/* dlv_retry_later - run dlv_retry_cb after ms */
static void dlv_retry_later(struct dlv *d, int ms)
{
	if (d->retry_ev == NULL)
		d->retry_ev = evtimer_new(d->loop->base, dlv_retry_cb, d);
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(d->retry_ev, &tv);
}

/* dlv_commit_failed - a commit without a definitive answer: retry once (the
 * token makes it safe), then UNAVAILABLE. True if a retry was scheduled. */
static bool dlv_commit_failed(struct dlv *d, const struct db_result *r)
{
	bool transient = r->status == DB_UNAVAILABLE ||
			 (r->status == DB_SQL_ERROR && db_result_retryable(r));
	if (!transient || d->retried)
		return false;
	d->retried = true;
	dlv_set_stage(d, ST_COMMIT_WAIT);
	metric_inc(dlv_m.retries);
	log_info("delivery commit retried", "call=%" PRIu64 " kind=%s token=%s may_have_executed=%d why=\"%s\"",
		 d->call_id, dlv_kind_names[d->kind], d->token, (int)r->may_have_executed,
		 r->message != NULL ? r->message : "");
	dlv_retry_later(d, DLV_RETRY_DELAY_MS);
	return true;
}

/* dlv_code_of - the per-recipient code from what happened to its targets */
static dlv_code dlv_code_of(const struct dlv_rcpt *rc, const char **detail)
{
	if (!rc->valid) {
		*detail = "invalid address";
		return CODE(INVALID);
	}
	if (rc->ok > 0) {
		*detail = rc->queued == 0 ? "delivered" : rc->local == 0 ? "queued" : "delivered and queued";
		return CODE(OK);
	}
	if (rc->tempfail > 0) {
		*detail = "try again later";
		return CODE(TEMPFAIL);
	}
	if (rc->quota > 0) {
		*detail = "mailbox full";
		return CODE(OVER_QUOTA);
	}
	if (rc->relay > 0) {
		*detail = "relaying denied";
		return CODE(RELAY_DENIED);
	}
	*detail = "no such user";
	return CODE(NO_SUCH_USER);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* count_distinct - how many different values (sorts v) */
static size_t count_distinct(uint64_t *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		k += i == 0 || v[i] != v[i - 1];
	return k;
}

/* dlv_reply_results - the DeliverReply: one result per recipient, in order; ends the call */
static void dlv_reply_results(struct dlv *d, enum dlv_result dr)
{
	Mail__Router__V1__DeliverReply reply = MAIL__ROUTER__V1__DELIVER_REPLY__INIT;
	reply.code = CODE(OK);
	reply.queue_id = d->queue_id;
	Mail__Router__V1__RecipientResult *res = xcalloc(d->n_rcpts, sizeof(*res));
	Mail__Router__V1__RecipientResult **resp = xcalloc(d->n_rcpts, sizeof(*resp));
	for (size_t i = 0; i < d->n_rcpts; i++) {
		const char *detail;
		mail__router__v1__recipient_result__init(&res[i]);
		res[i].address = d->rcpts[i].address;
		res[i].code = dlv_code_of(&d->rcpts[i], &detail);
		res[i].detail = (char *)detail;
		resp[i] = &res[i];
	}
	reply.n_results = d->n_rcpts;
	reply.results = resp;
	dlv_finish(d, dr, &reply.base, RPC_OK, NULL);
	free(res);
	free(resp);
}

/* dlv_deliver_rows - the transaction's outcome: the rows of res whose column
 * 0 is item (every row when item is 0), whose columns from c on are
 * mail_deliver_message's (rcpt, target, status, account_id, mailbox_id, uid,
 * queue_id); one result per recipient, and the reply. Ends the call. */
static void dlv_deliver_rows(struct dlv *d, const PGresult *res, long item, int c)
{
	size_t *map = xcalloc(d->n_valid + 1, sizeof(*map));
	for (size_t i = 0, k = 0; i < d->n_rcpts; i++)
		if (d->rcpts[i].valid)
			map[++k] = i;
	int rows = PQntuples(res);
	uint64_t *accts = xcalloc((size_t)rows + 1, sizeof(*accts));
	uint64_t *qids = xcalloc((size_t)rows + 1, sizeof(*qids));
	size_t n_accts = 0, n_qids = 0;
	for (int i = 0; i < rows; i++) {
		if (item != 0 && strtol(PQgetvalue(res, i, 0), NULL, 10) != item)
			continue;
		long idx = strtol(PQgetvalue(res, i, c), NULL, 10);
		if (idx < 1 || (size_t)idx > d->n_valid)
			continue;
		struct dlv_rcpt *rc = &d->rcpts[map[idx]];
		const char *st = PQgetvalue(res, i, c + 2);
		if (strcmp(st, "ok") == 0) {
			rc->ok++;
			rc->local++;
			accts[n_accts++] = strtoull(PQgetvalue(res, i, c + 3), NULL, 10);
		} else if (strcmp(st, "queued") == 0) {
			rc->ok++;
			rc->queued++;
			qids[n_qids++] = strtoull(PQgetvalue(res, i, c + 6), NULL, 10);
		} else if (strcmp(st, "over_quota") == 0) {
			rc->quota++;
		} else if (strcmp(st, "tempfail") == 0) {
			rc->tempfail++;
		} else if (strcmp(st, "relay_denied") == 0) {
			rc->relay++;
		} else {
			rc->unknown++;
		}
	}
	free(map);
	size_t copies = count_distinct(accts, n_accts), queued = count_distinct(qids, n_qids);
	free(accts);
	free(qids);
	unsigned ok = 0;
	for (size_t i = 0; i < d->n_rcpts; i++) {
		const char *detail;
		ok += dlv_code_of(&d->rcpts[i], &detail) == CODE(OK);
	}
	char qf[300], qi[80], qs[80];
	const char *ip = d->client_ip != NULL ? d->client_ip : "";
	const char *sid = d->session_id != NULL ? d->session_id : "";
	log_info("message delivered", "call=%" PRIu64 " queue_id=%s session=%s blob=%.16s size=%zu from=%s ip=%s "
		 "rcpts=%zu accepted=%u copies=%zu queued=%zu ms=%.1f retried=%d", d->call_id, d->queue_id,
		 log_quote(qs, sizeof(qs), sid, strlen(sid)), d->blob_id, d->len,
		 log_quote(qf, sizeof(qf), d->mail_from, strlen(d->mail_from)), log_quote(qi, sizeof(qi), ip, strlen(ip)),
		 d->n_rcpts, ok, copies, queued, (dlv_now() - d->t0) * 1000, (int)d->retried);
	dlv_reply_results(d, DR_OK);
}

/* dlv_deliver_done - the outcome of a delivery committed alone */
static void dlv_deliver_done(const struct db_result *r, void *arg)
{
	struct dlv *d = arg;
	d->dbr = NULL;
	if (r->status != DB_OK) {
		if (!dlv_commit_failed(d, r))
			dlv_finish_db(d, r, "deliver");
		return;
	}
	dlv_deliver_rows(d, r->res, 0, 0);
}

/* ------------------------------------------------------------------ group commit
 *
 * Deliver commits are batched per loop, and the loops share the slots: while
 * deliver_batch_inflight batches of the whole router (of any loop) are being
 * committed, new commits wait in their loop's queue, and a loop with commits
 * queued waits in line for a slot (struct dlv_gate; the blob prepares have
 * their own). Measured with bench_router on 2 cores, 2 loops: with a batch in
 * flight per loop, 407-445 deliveries/s at 16 streams and 862-929/s at 64,
 * with 1.8-2.1 and 1.0 ms of PostgreSQL CPU per delivery; with the slots
 * shared (one batch at a time for the router) 621-746/s and 1178-1333/s, with
 * 0.9-1.1 and 0.6 ms. Concurrent batches split the deliveries into smaller
 * batches and contend in the server (the notification lock is held through
 * each commit's WAL flush); two shared slots measured no better. As soon as
 * one batch is answered, everything queued (up to deliver_batch_max items and
 * DLV_BATCH_BYTES) goes as ONE mail_deliver_batch statement: one transaction,
 * one WAL flush and one hold of PostgreSQL's notification lock for all of them
 * (0006_batch.sql tells why that lock made deliveries commit one by one). A
 * commit that finds a free slot goes at once, so a lone delivery waits for
 * nobody. Every item keeps its own token, so the outcomes are those of
 * separate commits:
 *  - answered: each item gets its own rows (the item column);
 *  - refused by the server (SQL error, deadlock, serialization failure):
 *    nothing was committed; a batch of several is split and each item is
 *    committed alone (deliver_message), so one bad item cannot fail the rest;
 *  - no answer (DB_UNAVAILABLE): each item is retried once with its token,
 *    as a lone commit would be (dlv_commit_failed).
 * A call cancelled while its item is being committed leaves the batch (the
 * item may still commit, as a cancelled lone commit may); a batch left empty
 * is cancelled. */
#define DLV_BATCH_BYTES (16 * 1024 * 1024)

struct dlv_batch {
	struct dlv_batcher *bt;
	struct dlv **items;             /* NULL where a call left */
	size_t n, live;
	struct db_request *dbr;
};

enum dlv_batch_kind { DB_PREPARE, DB_COMMIT };

struct dlv_batcher {
	struct rt_loop *loop;
	enum dlv_batch_kind kind;
	struct dlv *head, *tail;        /* waiting items, FIFO (dlv.bnext) */
	/* the router-wide slots of this kind (dlv_gates) */
	bool in_line;                   /* waiting in the gate's line */
	bool granted;                   /* a slot was handed over, not used yet */
	struct dlv_batcher *gnext;      /* next in the gate's line */
	struct event *wake;             /* on this loop: a slot was handed over */
};

/* dlv_gate - the slots of one kind of batch (commit, blob prepare), shared
 * by the router's loops: at most deliver_batch_inflight batches of that kind
 * at once. A loop that finds none free
 * joins the line; a loop whose batch ends hands its slot straight to the first
 * in line (granted, then woken on its own loop), so the line is served in
 * order. Guarded by mu; the batchers it links belong to their loops, which
 * leave the line in loop_fini. One router per process. */
struct dlv_gate {
	pthread_mutex_t mu;
	int used;                       /* slots held (granted ones included) */
	struct dlv_batcher *first, *last;
};
static struct dlv_gate dlv_gates[2] = { /* by enum dlv_batch_kind */
	{ .mu = PTHREAD_MUTEX_INITIALIZER }, { .mu = PTHREAD_MUTEX_INITIALIZER }
};

/* dlv_gate_acquire - a slot for bt (a granted one first), or false: bt is in line */
static bool dlv_gate_acquire(struct dlv_batcher *bt)
{
	struct dlv_gate *g = &dlv_gates[bt->kind];
	bool ok = false;
	pthread_mutex_lock(&g->mu);
	if (bt->granted) {
		bt->granted = false;
		ok = true;
	} else if (g->used < bt->loop->rt->deliver_batch_inflight && g->first == NULL) {
		g->used++;
		ok = true;
	} else if (!bt->in_line) {
		bt->in_line = true;
		bt->gnext = NULL;
		if (g->last != NULL)
			g->last->gnext = bt;
		else
			g->first = bt;
		g->last = bt;
	}
	pthread_mutex_unlock(&g->mu);
	return ok;
}

/* dlv_gate_release_locked - a slot of g is free: to the first in line, or back */
static void dlv_gate_release_locked(struct dlv_gate *g)
{
	struct dlv_batcher *w = g->first;
	if (w == NULL) {
		g->used--;
		return;
	}
	g->first = w->gnext;
	if (g->first == NULL)
		g->last = NULL;
	w->gnext = NULL;
	w->in_line = false;
	w->granted = true;
	event_active(w->wake, EV_TIMEOUT, 0);   /* thread-safe: evthread is on */
}

/* dlv_gate_leave - bt gives up its place in line and any slot handed to it */
static void dlv_gate_leave(struct dlv_batcher *bt)
{
	struct dlv_gate *g = &dlv_gates[bt->kind];
	pthread_mutex_lock(&g->mu);
	if (bt->in_line) {
		struct dlv_batcher **pp = &g->first, *prev = NULL;
		while (*pp != bt) {
			prev = *pp;
			pp = &(*pp)->gnext;
		}
		*pp = bt->gnext;
		if (g->last == bt)
			g->last = prev;
		bt->in_line = false;
	}
	if (bt->granted) {
		bt->granted = false;
		dlv_gate_release_locked(g);
	}
	pthread_mutex_unlock(&g->mu);
}

/* dlv_batch_slot_free - one of bt's batches has ended: its slot goes on */
static void dlv_batch_slot_free(struct dlv_batcher *bt)
{
	struct dlv_gate *g = &dlv_gates[bt->kind];
	pthread_mutex_lock(&g->mu);
	dlv_gate_release_locked(g);
	pthread_mutex_unlock(&g->mu);
}

/* the loop's two batchers (rt_loop.mod[DLV_SLOT]) */
struct dlv_batchers {
	struct dlv_batcher prepare, commit;
};

static void dlv_batch_kick(struct dlv_batcher *bt);

static void json_arr_add(struct sbuf *b, size_t i, const char *s)
{
	if (i > 0)
		sb_addc(b, ',');
	if (s == NULL)
		sb_adds(b, "null");
	else
		json_str(b, s, strlen(s));
}

/* dlv_item_json - this delivery as a mail_deliver_batch item (the parameters
 * of deliver_message as one JSON object) */
static char *dlv_item_json(const struct dlv *d)
{
	struct sbuf b = { 0 };
	static const char *const arrays[3] = { "rcpts", "notify", "orcpt" };
	sb_addc(&b, '{');
	for (int a = 0; a < 3; a++) {
		json_key(&b, arrays[a]);
		sb_addc(&b, '[');
		for (size_t i = 0, k = 0; i < d->n_rcpts; i++) {
			const struct dlv_rcpt *rc = &d->rcpts[i];
			if (rc->valid)
				json_arr_add(&b, k++, a == 0 ? rc->address : a == 1 ? rc->notify : rc->orcpt);
		}
		sb_addc(&b, ']');
	}
	json_key(&b, "mail_from");
	json_str(&b, d->mail_from, strlen(d->mail_from));
	if (d->account_id != 0) {
		char acct[24];
		snprintf(acct, sizeof(acct), "%" PRIu64, d->account_id);
		json_key(&b, "submitter");
		sb_adds(&b, acct);
	}
	if (d->envid[0] != '\0')
		json_text(&b, "envid", d->envid);
	if (d->ret[0] != '\0')
		json_text(&b, "ret", d->ret);
	json_key(&b, "blob_id");
	json_str(&b, d->blob_id, strlen(d->blob_id));
	char size[24];
	snprintf(size, sizeof(size), "%zu", d->len);
	json_key(&b, "size");
	sb_adds(&b, size);
	json_key(&b, "meta");
	sb_adds(&b, d->meta);
	if (d->header_size > 0) {
		char *hb = xmalloc(4 * ((d->header_size + 2) / 3) + 1);
		int m = EVP_EncodeBlock((unsigned char *)hb, d->buf, (int)d->header_size);
		json_key(&b, "header_block");
		sb_addc(&b, '"');
		sb_add(&b, hb, (size_t)(m > 0 ? m : 0));
		sb_addc(&b, '"');
		free(hb);
	}
	/* the body text goes beside the items (dlv_batch_kick); all ASCII, it is
	 * lower-cased byte by byte (0010_ascii.sql) */
	if (d->text_ascii) {
		json_key(&b, "text_ascii");
		sb_adds(&b, "true");
	}
	json_key(&b, "nodes");
	sb_adds(&b, d->nodes_json != NULL ? d->nodes_json : "[]");
	json_key(&b, "token");
	json_str(&b, d->token, strlen(d->token));
	sb_addc(&b, '}');
	return sb_steal(&b);
}

static struct dlv_batchers *dlv_batchers_of(const struct dlv *d)
{
	return d->loop->mod[DLV_SLOT];
}

/* dlv_unbatch - take d out of the queue or out of its batch (nothing if in neither) */
static void dlv_unbatch(struct dlv *d)
{
	if (d->queued != NULL) {
		struct dlv_batcher *bt = d->queued;
		struct dlv **pp = &bt->head, *prev = NULL;
		while (*pp != d) {
			prev = *pp;
			pp = &(*pp)->bnext;
		}
		*pp = d->bnext;
		if (bt->tail == d)
			bt->tail = prev;
		d->bnext = NULL;
		d->queued = NULL;
	}
	struct dlv_batch *b = d->batch;
	if (b != NULL) {
		b->items[d->batch_idx] = NULL;
		d->batch = NULL;
		if (--b->live == 0) {
			/* nobody waits for it any more; it may still commit on the server */
			struct dlv_batcher *bt = b->bt;
			db_request_cancel(&b->dbr);
			dlv_batch_slot_free(bt);
			free(b->items);
			free(b);
			dlv_batch_kick(bt);
		}
	}
}

/* dlv_batch_done - hand each item its outcome, then send what queued meanwhile */
static void dlv_batch_done(const struct db_result *r, void *arg)
{
	struct dlv_batch *b = arg;
	struct dlv_batcher *bt = b->bt;
	b->dbr = NULL;
	dlv_batch_slot_free(bt);
	for (size_t i = 0; i < b->n; i++)
		if (b->items[i] != NULL)
			b->items[i]->batch = NULL;
	bool split = r->status == DB_SQL_ERROR && b->n > 1;
	if (split) {
		if (bt->kind == DB_COMMIT)
			metric_inc(dlv_m.batch_splits);
		log_info(bt->kind == DB_COMMIT ? "delivery batch split" : "blob prepare batch split",
			 "items=%zu sqlstate=%s why=\"%s\"", b->n, r->sqlstate, r->message != NULL ? r->message : "");
	}
	for (size_t i = 0; i < b->n; i++) {
		struct dlv *d = b->items[i];
		if (d == NULL)
			continue;
		if (bt->kind == DB_PREPARE) {
			/* a refusal of several (a GC claim on one blob: 40001) is retried
			 * blob by blob; one alone goes through the usual retries */
			if (split) {
				d->solo_prepare = true;
				d->prepare_tries--;
				dlv_prepare(d);
			} else {
				dlv_prepare_done(r, d);
			}
		} else if (r->status == DB_OK) {
			dlv_deliver_rows(d, r->res, (long)i + 1, 1);
		} else if (split) {
			d->solo = true;
			dlv_commit(d);
		} else if (!dlv_commit_failed(d, r)) {
			dlv_finish_db(d, r, "deliver");
		}
	}
	free(b->items);
	free(b);
	dlv_batch_kick(bt);
}

/* dlv_text_len - the bytes d's body text adds to a batch */
static size_t dlv_text_len(const struct dlv *d)
{
	return 4 + d->text_len;
}

/* pg_put32 - a big-endian 32-bit integer (PostgreSQL's binary formats) */
static void pg_put32(struct sbuf *b, uint32_t v)
{
	const uint8_t x[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
	sb_add(b, x, 4);
}

/* pg_text_array - the binary form of a text[] (array_recv) of n elements whose
 * length-prefixed bytes (length -1: NULL) are in elems: dimensions, null flag,
 * element type text, then the elements as they are. Binary, so that the texts
 * need no quoting and the server no parsing. */
static void pg_text_array(struct sbuf *out, const struct sbuf *elems, struct dlv *const *items, size_t n)
{
	bool nulls = false;
	for (size_t i = 0; i < n; i++)
		nulls |= items[i]->text == NULL;
	pg_put32(out, 1);               /* dimensions */
	pg_put32(out, nulls);           /* has nulls */
	pg_put32(out, 25);              /* element type: text */
	pg_put32(out, (uint32_t)n);     /* length */
	pg_put32(out, 1);               /* lower bound */
	sb_add(out, elems->d != NULL ? elems->d : "", elems->len);
}

/* dlv_batch_kick - send batches of what is queued while slots are free */
static void dlv_batch_kick(struct dlv_batcher *bt)
{
	const struct router *rt = bt->loop->rt;
	while (bt->head != NULL && dlv_gate_acquire(bt)) {
		struct dlv_batch *b = XNEW(struct dlv_batch);
		b->bt = bt;
		b->items = xcalloc((size_t)rt->deliver_batch_max, sizeof(*b->items));
		struct sbuf j = { 0 }, sz = { 0 }, tx = { 0 };
		sb_addc(&j, bt->kind == DB_COMMIT ? '[' : '{');
		sb_addc(&sz, '{');
		while (bt->head != NULL && b->n < (size_t)rt->deliver_batch_max &&
		       (b->n == 0 || bt->kind == DB_PREPARE ||
			j.len + tx.len + strlen(bt->head->item_json) + dlv_text_len(bt->head) < DLV_BATCH_BYTES)) {
			struct dlv *d = bt->head;
			bt->head = d->bnext;
			if (bt->head == NULL)
				bt->tail = NULL;
			d->bnext = NULL;
			d->queued = NULL;
			if (b->n > 0) {
				sb_addc(&j, ',');
				sb_addc(&sz, ',');
			}
			if (bt->kind == DB_COMMIT) {
				sb_adds(&j, d->item_json);
				pg_put32(&tx, d->text != NULL ? (uint32_t)d->text_len : 0xffffffffu);
				sb_add(&tx, d->text, d->text_len);
			} else {
				char size[24];
				snprintf(size, sizeof(size), "%zu", d->len);
				sb_adds(&j, d->blob_id);
				sb_adds(&sz, size);
			}
			d->batch = b;
			d->batch_idx = b->n;
			b->items[b->n++] = d;
		}
		sb_addc(&j, bt->kind == DB_COMMIT ? ']' : '}');
		sb_addc(&sz, '}');
		b->live = b->n;
		const char *values[2] = { j.d, sz.d };
		if (bt->kind == DB_COMMIT) {
			metric_inc(dlv_m.batches);
			metric_add(dlv_m.batch_items, (double)b->n);
			struct sbuf texts = { 0 };
			pg_text_array(&texts, &tx, b->items, b->n);
			const char *v[2] = { j.d, texts.d };
			const int lengths[2] = { 0, (int)texts.len }, formats[2] = { 0, 1 };
			b->dbr = db_exec(bt->loop->db, "deliver_batch", 2, v, lengths, formats, 0, dlv_batch_done, b);
			free(texts.d);
		} else {
			b->dbr = db_exec(bt->loop->db, "deliver_blob_prepare_many", 2, values, NULL, NULL, 0,
					 dlv_batch_done, b);
		}
		free(j.d);
		free(sz.d);
		free(tx.d);
	}
	if (bt->head == NULL)
		dlv_gate_leave(bt);     /* nothing to send: the place in line goes on */
}

/* dlv_gate_wake - a slot was handed to this batcher */
static void dlv_gate_wake(evutil_socket_t fd, short what, void *arg)
{
	dlv_batch_kick(arg);
}

/* dlv_batch_enqueue - d joins the next batch of bt */
static void dlv_batch_enqueue(struct dlv_batcher *bt, struct dlv *d)
{
	if (bt->tail != NULL)
		bt->tail->bnext = d;
	else
		bt->head = d;
	bt->tail = d;
	d->queued = bt;
	dlv_batch_kick(bt);
}

static void dlv_prepare_enqueue(struct dlv *d)
{
	dlv_batch_enqueue(&dlv_batchers_of(d)->prepare, d);
}

static void dlv_loop_init(struct rt_loop *l)
{
	struct dlv_batchers *bts = XNEW(struct dlv_batchers);
	bts->prepare.loop = bts->commit.loop = l;
	bts->prepare.kind = DB_PREPARE;
	bts->commit.kind = DB_COMMIT;
	bts->prepare.wake = event_new(l->base, -1, 0, dlv_gate_wake, &bts->prepare);
	bts->commit.wake = event_new(l->base, -1, 0, dlv_gate_wake, &bts->commit);
	if (bts->prepare.wake == NULL || bts->commit.wake == NULL)
		log_fatal("event_new failed", "what=%s", "delivery batch gates");
	l->mod[DLV_SLOT] = bts;
}

static void dlv_loop_fini(struct rt_loop *l)
{
	struct dlv_batchers *bts = l->mod[DLV_SLOT];
	/* out of both lines: no other loop may wake these batchers after this */
	dlv_gate_leave(&bts->prepare);
	dlv_gate_leave(&bts->commit);
	event_free(bts->prepare.wake);
	event_free(bts->commit.wake);
	free(l->mod[DLV_SLOT]);
	l->mod[DLV_SLOT] = NULL;
}

/* dlv_append_done - APPENDUID, or why not */
static void dlv_append_done(const struct db_result *r, void *arg)
{
	struct dlv *d = arg;
	d->dbr = NULL;
	if (r->status != DB_OK) {
		if (r->status == DB_SQL_ERROR && strcmp(r->sqlstate, "ML005") == 0) {
			dlv_append_code(d, CODE(NO_SUCH_MAILBOX));
			return;
		}
		if (!dlv_commit_failed(d, r))
			dlv_finish_db(d, r, "append");
		return;
	}
	/* one row: status, mailbox_id, uidvalidity, uid */
	const char *st = PQntuples(r->res) == 1 ? PQgetvalue(r->res, 0, 0) : "no_account";
	if (strcmp(st, "ok") == 0) {
		Mail__Router__V1__AppendReply reply = MAIL__ROUTER__V1__APPEND_REPLY__INIT;
		reply.code = CODE(OK);
		reply.uidvalidity = (uint32_t)strtoul(PQgetvalue(r->res, 0, 2), NULL, 10);
		reply.uid = (uint32_t)strtoul(PQgetvalue(r->res, 0, 3), NULL, 10);
		log_info("message appended", "call=%" PRIu64 " account=%" PRIu64 " mailbox_id=%s uid=%u size=%zu "
			 "blob=%.16s ms=%.1f", d->call_id, d->account_id, PQgetvalue(r->res, 0, 1), reply.uid, d->len,
			 d->blob_id, (dlv_now() - d->t0) * 1000);
		dlv_finish(d, DR_OK, &reply.base, RPC_OK, NULL);
	} else if (strcmp(st, "over_quota") == 0) {
		dlv_append_code(d, CODE(OVER_QUOTA));
	} else if (strcmp(st, "no_mailbox") == 0) {
		dlv_append_code(d, CODE(NO_SUCH_MAILBOX));
	} else {
		dlv_finish(d, DR_REFUSED, NULL, RPC_PERMISSION_DENIED, "no such account or account disabled");
	}
}

/* dlv_commit - the one statement that makes the message exist (again on a retry) */
static void dlv_commit(struct dlv *d)
{
	dlv_set_stage(d, ST_COMMITTING);
	char size[24], acct[24], date[24], flags[16];
	snprintf(size, sizeof(size), "%zu", d->len);
	snprintf(acct, sizeof(acct), "%" PRIu64, d->account_id);
	const char *hdr = d->header_size > 0 ? (const char *)d->buf : "";
	if (d->kind == DLV_DELIVER && !d->solo && d->loop->rt->deliver_batch_max > 1) {
		if (d->item_json == NULL)
			d->item_json = dlv_item_json(d);
		dlv_batch_enqueue(&dlv_batchers_of(d)->commit, d);
		return;
	}
	if (d->kind == DLV_DELIVER) {
		if (d->arr_rcpts == NULL) {
			struct sbuf a = { 0 }, n = { 0 }, o = { 0 };
			for (size_t i = 0; i < d->n_rcpts; i++) {
				if (!d->rcpts[i].valid)
					continue;
				pg_array_add(&a, d->rcpts[i].address);
				pg_array_add(&n, d->rcpts[i].notify);
				pg_array_add(&o, d->rcpts[i].orcpt);
			}
			d->arr_rcpts = pg_array_end(&a);
			d->arr_notify = pg_array_end(&n);
			d->arr_orcpt = pg_array_end(&o);
		}
		const char *values[14] = {
			d->arr_rcpts, d->arr_notify, d->arr_orcpt, d->mail_from,
			d->account_id != 0 ? acct : NULL, d->envid[0] ? d->envid : NULL, d->ret[0] ? d->ret : NULL,
			d->blob_id, size, d->meta, hdr, d->text, d->nodes, d->token,
		};
		int lengths[14] = { 0 };
		int formats[14] = { 0 };
		lengths[10] = (int)d->header_size;
		formats[10] = 1;
		d->dbr = db_exec(d->loop->db, "deliver_message", 14, values, lengths, formats, 0,
				 dlv_deliver_done, d);
		return;
	}
	snprintf(date, sizeof(date), "%" PRId64, d->internal_date);
	snprintf(flags, sizeof(flags), "%" PRIu32, d->flags);
	const char *values[12] = {
		acct, d->mailbox, d->blob_id, size, d->internal_date != 0 ? date : NULL, flags,
		d->keywords, d->meta, hdr, d->text, d->nodes, d->token,
	};
	int lengths[12] = { 0 };
	int formats[12] = { 0 };
	lengths[8] = (int)d->header_size;
	formats[8] = 1;
	d->dbr = db_exec(d->loop->db, "deliver_append", 12, values, lengths, formats, 0, dlv_append_done, d);
}

/* dlv_make_queue_id - a random queue id: 16 hex digits */
static void dlv_make_queue_id(char out[DLV_QUEUE_ID_MAX + 1])
{
	uint8_t raw[8];
	if (RAND_bytes(raw, sizeof(raw)) != 1)
		log_panic("no random bytes", "%s", "");
	for (size_t i = 0; i < sizeof(raw); i++)
		snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* ------------------------------------------------------------------ Deliver */

static void deliver_on_start(struct rpc_call *call)
{
	dlv_new(call, DLV_DELIVER);
}

/* queue_id_ok - a frontend-chosen queue id: 8..64 of [A-Za-z0-9._-] */
static bool queue_id_ok(const char *s)
{
	size_t n = strlen(s);
	return n >= DLV_QUEUE_ID_MIN && n <= DLV_QUEUE_ID_MAX &&
	       strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

/* received_ok - the header the frontend wants prepended: one field, no blank
 * line inside (it would end the header section), at most DLV_RECEIVED_MAX */
static bool received_ok(const char *s)
{
	size_t n = strlen(s);
	if (n > DLV_RECEIVED_MAX || s[0] == '\r' || s[0] == '\n' || s[0] == ' ' || s[0] == '\t')
		return false;
	for (size_t i = 0; i + 1 < n; i++)
		if (s[i] == '\n' && (s[i + 1] == '\n' || (s[i + 1] == '\r' && (i + 2 >= n || s[i + 2] == '\n'))))
			return false;
	return true;
}

/* deliver_envelope - check and keep the envelope; false (call finished) if it is bad */
static bool deliver_envelope(struct dlv *d, const Mail__Router__V1__Envelope *env)
{
	const char *bad = NULL;
	const char *from = env->mail_from != NULL ? env->mail_from : "";
	const char *envid = env->envid != NULL ? env->envid : "";
	const char *ret = env->ret != NULL ? env->ret : "";
	const char *qid = env->queue_id != NULL ? env->queue_id : "";
	const char *recv = env->received_header != NULL ? env->received_header : "";
	if (env->n_recipients == 0)
		bad = "no recipients";
	else if (env->n_recipients > DLV_MAX_RCPTS)
		bad = "too many recipients";
	else if (strlen(from) > DLV_PATH_MAX || !text_ok(from, strlen(from)))
		bad = "bad mail_from";
	else if (strlen(envid) > DLV_DSN_MAX || !text_ok(envid, strlen(envid)))
		bad = "bad envid";
	else if (ret[0] != '\0' && strcasecmp(ret, "FULL") != 0 && strcasecmp(ret, "HDRS") != 0)
		bad = "bad ret";
	else if (qid[0] != '\0' && !queue_id_ok(qid))
		bad = "bad queue_id";
	else if (recv[0] != '\0' && !received_ok(recv))
		bad = "bad received_header";
	for (size_t i = 0; bad == NULL && i < env->n_recipients; i++) {
		const Mail__Router__V1__Recipient *r = env->recipients[i];
		const char *a = r != NULL && r->address != NULL ? r->address : "";
		const char *nt = r != NULL && r->notify != NULL ? r->notify : "";
		const char *oc = r != NULL && r->orcpt != NULL ? r->orcpt : "";
		if (strlen(a) > DLV_ADDR_MAX)
			bad = "recipient address too long";
		else if (strlen(nt) > DLV_DSN_MAX || strlen(oc) > DLV_DSN_MAX || !text_ok(nt, strlen(nt)) ||
			 !text_ok(oc, strlen(oc)))
			bad = "bad notify or orcpt";
	}
	if (bad != NULL) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, bad);
		return false;
	}
	d->mail_from = xstrdup(from);
	d->envid = xstrdup(envid);
	d->ret = xstrdup(ret);
	for (char *p = d->ret; *p != '\0'; p++)
		if (*p >= 'a' && *p <= 'z')
			*p = (char)(*p - 32);
	if (env->session != NULL) {
		d->account_id = env->session->account_id;
		const char *ip = env->session->client_ip != NULL ? env->session->client_ip : "";
		if (strlen(ip) <= 64 && text_ok(ip, strlen(ip)))
			d->client_ip = xstrdup(ip);
		const char *sid = env->session->session_id != NULL ? env->session->session_id : "";
		if (strlen(sid) <= 64 && text_ok(sid, strlen(sid)))
			d->session_id = xstrdup(sid);
	}
	d->n_rcpts = env->n_recipients;
	d->rcpts = xcalloc(d->n_rcpts, sizeof(*d->rcpts));
	for (size_t i = 0; i < d->n_rcpts; i++) {
		const Mail__Router__V1__Recipient *r = env->recipients[i];
		struct dlv_rcpt *rc = &d->rcpts[i];
		rc->address = xstrdup(r != NULL && r->address != NULL ? r->address : "");
		rc->notify = xstrdup(r != NULL && r->notify != NULL ? r->notify : "");
		rc->orcpt = xstrdup(r != NULL && r->orcpt != NULL ? r->orcpt : "");
		rc->valid = address_ok(rc->address);
		d->n_valid += rc->valid;
	}
	if (qid[0] != '\0')
		snprintf(d->queue_id, sizeof(d->queue_id), "%s", qid);
	else
		dlv_make_queue_id(d->queue_id);
	snprintf(d->token, sizeof(d->token), "d:%s", d->queue_id);
	/* the stored message starts with the Return-Path (RFC 5321 4.4: the final
	 * delivery records the reverse-path; a relayed copy is sent from after it,
	 * outbound_queue.data_offset), then the frontend's Received header */
	size_t rl = strlen(recv);
	d->cap = 64 * 1024 + DLV_PATH_MAX + 20 + rl + 2;
	d->buf = xmalloc(d->cap);
	d->len = (size_t)snprintf((char *)d->buf, d->cap, "Return-Path: <%s>\r\n", from);
	d->return_path_len = d->len;
	if (rl > 0) {
		bool crlf = recv[rl - 1] == '\n';
		memcpy(d->buf + d->len, recv, rl);
		d->len += rl;
		if (!crlf) {
			memcpy(d->buf + d->len, "\r\n", 2);
			d->len += 2;
		}
	}
	return true;
}

/* deliver_on_message - the envelope (first message), then body chunks */
static void deliver_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct dlv *d = dlv_get(call);
	if (d == NULL)
		return;
	Mail__Router__V1__DeliverRequest *req = mail__router__v1__deliver_request__unpack(NULL, len, msg);
	if (req == NULL) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "malformed DeliverRequest");
		return;
	}
	if (!d->got_first) {
		d->got_first = true;
		if (req->envelope == NULL) {
			dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "the first message must carry the envelope");
			goto out;
		}
		if (!deliver_envelope(d, req->envelope))
			goto out;
	} else if (req->envelope != NULL) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "envelope sent twice");
		goto out;
	}
	dlv_append_data(d, req->data.data, req->data.len);
out:
	mail__router__v1__deliver_request__free_unpacked(req, NULL);
}

/* deliver_on_half_close - the body is complete: store it (or answer at once
 * when no recipient can take it) */
static void deliver_on_half_close(struct rpc_call *call)
{
	struct dlv *d = dlv_get(call);
	if (d == NULL)
		return;
	d->half_closed = true;
	if (!d->got_first) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "missing envelope");
		return;
	}
	if (d->n_valid == 0) {
		dlv_reply_results(d, DR_REFUSED); /* nobody to store it for */
		return;
	}
	dlv_store(d);
}

/* ------------------------------------------------------------------ Append */

static void append_on_start(struct rpc_call *call)
{
	dlv_new(call, DLV_APPEND);
}

/* keyword_ok - an IMAP flag-keyword: atom characters only (RFC 9051 atom-specials
 * and ']' excluded), at most DLV_KEYWORD_MAX bytes */
static bool keyword_ok(const char *k)
{
	size_t n = strlen(k);
	if (n == 0 || n > DLV_KEYWORD_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)k[i];
		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c) != NULL)
			return false;
	}
	return true;
}

/* append_flags - system flags as bits, keywords as a text[] literal; false if one is bad */
static bool append_flags(struct dlv *d, char **flags, size_t n)
{
	static const struct { const char *name; uint32_t bit; } sys[] = {
		{ "\\Seen", 1 }, { "\\Answered", 2 }, { "\\Flagged", 4 }, { "\\Deleted", 8 }, { "\\Draft", 16 },
	};
	if (n > DLV_MAX_FLAGS)
		return false;
	struct sbuf kw = { 0 };
	for (size_t i = 0; i < n; i++) {
		const char *f = flags[i] != NULL ? flags[i] : "";
		if (f[0] == '\\') {
			size_t k;
			for (k = 0; k < N_ELEMENTS(sys); k++)
				if (strcasecmp(f, sys[k].name) == 0)
					break;
			if (k < N_ELEMENTS(sys)) {
				d->flags |= sys[k].bit;
				continue;
			}
			if (strcasecmp(f, "\\Recent") == 0)
				continue; /* not settable; ignored */
			free(kw.d);
			return false;
		}
		if (!keyword_ok(f)) {
			free(kw.d);
			return false;
		}
		pg_array_add(&kw, f);
	}
	d->keywords = pg_array_end(&kw);
	return true;
}

/* append_check_done - the mailbox exists and the declared size fits the quota?
 * A refusal ends the call at once; otherwise store when the body is complete */
static void append_check_done(const struct db_result *r, void *arg)
{
	struct dlv *d = arg;
	d->dbr = NULL;
	d->check_pending = false;
	if (r->status == DB_SQL_ERROR && strcmp(r->sqlstate, "ML005") == 0) {
		dlv_append_code(d, CODE(NO_SUCH_MAILBOX)); /* a name no mailbox can have */
		return;
	}
	if (r->status != DB_OK) {
		dlv_finish_db(d, r, "append check");
		return;
	}
	/* columns: disabled, mailbox id, uidvalidity, over quota */
	if (PQntuples(r->res) != 1 || PQgetvalue(r->res, 0, 0)[0] == 't') {
		dlv_finish(d, DR_REFUSED, NULL, RPC_PERMISSION_DENIED, "no such account or account disabled");
		return;
	}
	if (PQgetisnull(r->res, 0, 1)) {
		dlv_append_code(d, CODE(NO_SUCH_MAILBOX));
		return;
	}
	if (PQgetvalue(r->res, 0, 3)[0] == 't') {
		dlv_append_code(d, CODE(OVER_QUOTA));
		return;
	}
	d->check_ok = true;
	if (d->half_closed)
		dlv_store(d);
}

/* append_first - the first message: session, mailbox, flags, date, declared
 * size; starts the checks while the body streams in. False if finished. */
static bool append_first(struct dlv *d, const Mail__Router__V1__AppendRequest *req)
{
	const char *mbox = req->mailbox != NULL ? req->mailbox : "";
	size_t mlen = strlen(mbox);
	if (req->session == NULL || req->session->account_id == 0) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "session.account_id is required");
		return false;
	}
	d->account_id = req->session->account_id;
	if (req->size > d->loop->rt->max_message_size) {
		dlv_finish(d, DR_TOO_BIG, NULL, RPC_RESOURCE_EXHAUSTED, "message larger than max_message_size");
		return false;
	}
	if (mlen == 0 || mlen > DLV_MAILBOX_MAX || !text_ok(mbox, mlen)) {
		dlv_append_code(d, CODE(NO_SUCH_MAILBOX));
		return false;
	}
	if (req->internal_date < 0 || req->internal_date > DLV_MAX_DATE || !append_flags(d, req->flags, req->n_flags)) {
		Mail__Router__V1__AppendReply reply = MAIL__ROUTER__V1__APPEND_REPLY__INIT;
		reply.code = CODE(INVALID);
		dlv_finish(d, DR_INVALID, &reply.base, RPC_OK, NULL);
		return false;
	}
	d->mailbox = xstrdup(mbox);
	d->internal_date = req->internal_date;
	d->declared = req->size;
	if (d->declared > 0) {
		d->cap = (size_t)d->declared;
		d->buf = xmalloc(d->cap);
	}
	char queue_id[DLV_QUEUE_ID_MAX + 1];
	dlv_make_queue_id(queue_id);
	snprintf(d->token, sizeof(d->token), "a:%s", queue_id);
	char acct[24], size[24];
	snprintf(acct, sizeof(acct), "%" PRIu64, d->account_id);
	snprintf(size, sizeof(size), "%" PRIu64, d->declared);
	const char *values[3] = { acct, d->mailbox, size };
	d->check_pending = true;
	d->dbr = db_exec(d->loop->db, "deliver_append_check", 3, values, NULL, NULL, 0, append_check_done, d);
	return true;
}

/* append_on_message - the first message (checks start), then body chunks */
static void append_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct dlv *d = dlv_get(call);
	if (d == NULL)
		return;
	Mail__Router__V1__AppendRequest *req = mail__router__v1__append_request__unpack(NULL, len, msg);
	if (req == NULL) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "malformed AppendRequest");
		return;
	}
	if (!d->got_first) {
		d->got_first = true;
		if (!append_first(d, req))
			goto out;
	}
	dlv_append_data(d, req->data.data, req->data.len);
out:
	mail__router__v1__append_request__free_unpacked(req, NULL);
}

/* append_on_half_close - the body is complete: store it once the checks passed */
static void append_on_half_close(struct rpc_call *call)
{
	struct dlv *d = dlv_get(call);
	if (d == NULL)
		return;
	d->half_closed = true;
	if (!d->got_first) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "missing request");
		return;
	}
	if (d->declared != 0 && d->data_bytes != d->declared) {
		dlv_finish(d, DR_INVALID, NULL, RPC_INVALID_ARGUMENT, "less data than the declared size");
		return;
	}
	if (d->check_ok)
		dlv_store(d);
	/* else the check's answer stores it (or refuses) */
}

/* ------------------------------------------------------------------ ResolveRecipient */

enum resolve_result { RS_OK, RS_NO_SUCH_USER, RS_OVER_QUOTA, RS_RELAY_DENIED, RS_INVALID, RS_UNAVAILABLE };
static const char *const resolve_result_names[6] = {
	"ok", "no_such_user", "over_quota", "relay_denied", "invalid", "unavailable"
};

struct rsv {
	struct rpc_call *call;
	struct daemon_worker *w;        /* held while the request lives */
	struct db_request *dbr;
	bool got_request;
	bool authenticated;             /* session.account_id != 0 */
	char *address;
};

static void rsv_free(struct rsv *s)
{
	db_request_cancel(&s->dbr);
	rt_worker_release(s->w);
	free(s->address);
	free(s);
}

/* rsv_finish - the reply (or a bare status), then free */
static void rsv_finish(struct rsv *s, enum resolve_result rr, const Mail__Router__V1__ResolveRecipientReply *reply,
		       enum rpc_status st, const char *msg)
{
	metric_inc(dlv_m.resolve[rr]);
	if (s->call != NULL) {
		rpc_call_set_data(s->call, NULL);
		if (reply != NULL)
			rpc_call_send_pb(s->call, &reply->base);
		rpc_call_finish(s->call, st, msg);
	}
	rsv_free(s);
}

static void rsv_code(struct rsv *s, enum resolve_result rr, dlv_code code)
{
	Mail__Router__V1__ResolveRecipientReply reply = MAIL__ROUTER__V1__RESOLVE_RECIPIENT_REPLY__INIT;
	reply.code = code;
	rsv_finish(s, rr, &reply, RPC_OK, NULL);
}

static void resolve_on_start(struct rpc_call *call)
{
	struct rsv *s = XNEW(struct rsv);
	s->call = call;
	s->w = rt_worker_hold(call);
	rpc_call_set_data(call, s);
}

/* resolve_on_cancel - the client went away: drop the lookup */
static void resolve_on_cancel(struct rpc_call *call)
{
	struct rsv *s = rpc_call_data(call);
	if (s == NULL)
		return;
	rpc_call_set_data(call, NULL);
	rsv_free(s);
}

static void resolve_on_half_close(struct rpc_call *call)
{
	struct rsv *s = rpc_call_data(call);
	if (s != NULL && !s->got_request)
		rsv_finish(s, RS_INVALID, NULL, RPC_INVALID_ARGUMENT, "missing request message");
}

/* resolve_done - the targets of the address: OK if any can take the message */
static void resolve_done(const struct db_result *r, void *arg)
{
	struct rsv *s = arg;
	s->dbr = NULL;
	if (r->status != DB_OK) {
		metric_inc(dlv_m.resolve[RS_UNAVAILABLE]);
		struct rpc_call *call = s->call;
		rpc_call_set_data(call, NULL);
		s->call = NULL;
		rt_finish_db_error(call, r, "resolve recipient");
		rsv_free(s);
		return;
	}
	/* rows: sender_ok, rcpt, kind, target, account_id, over_quota, via_alias */
	int rows = PQntuples(r->res);
	bool sender_ok = rows > 0 && PQgetvalue(r->res, 0, 0)[0] == 't';
	bool local = false, quota = false, relay = false;
	char **targets = xcalloc((size_t)rows + 1, sizeof(*targets));
	size_t n_targets = 0;
	for (int i = 0; i < rows; i++) {
		if (PQgetisnull(r->res, i, 2))
			continue;
		const char *kind = PQgetvalue(r->res, i, 2);
		char *target = PQgetvalue(r->res, i, 3);
		bool via = PQgetvalue(r->res, i, 6)[0] == 't';
		if (strcmp(kind, "account") == 0) {
			if (PQgetvalue(r->res, i, 5)[0] == 't') {
				quota = true;
				continue;
			}
			local = true;
			targets[n_targets++] = target;
		} else if (strcmp(kind, "remote") == 0) {
			if (!via && !(s->authenticated && sender_ok)) {
				relay = true;
				continue;
			}
			targets[n_targets++] = target;
		}
	}
	Mail__Router__V1__ResolveRecipientReply reply = MAIL__ROUTER__V1__RESOLVE_RECIPIENT_REPLY__INIT;
	enum resolve_result rr;
	if (n_targets > 0) {
		reply.code = CODE(OK);
		reply.local = local;
		reply.n_targets = n_targets;
		reply.targets = targets;
		rr = RS_OK;
	} else if (quota) {
		reply.code = CODE(OVER_QUOTA);
		rr = RS_OVER_QUOTA;
	} else if (relay) {
		reply.code = CODE(RELAY_DENIED);
		rr = RS_RELAY_DENIED;
	} else {
		reply.code = CODE(NO_SUCH_USER);
		rr = RS_NO_SUCH_USER;
	}
	if (rr != RS_OK) {
		char qa[300];
		log_debug("recipient refused", "address=%s result=%s",
			  log_quote(qa, sizeof(qa), s->address, strlen(s->address)), resolve_result_names[rr]);
	}
	rsv_finish(s, rr, &reply, RPC_OK, NULL);
	free(targets);
}

/* resolve_on_message - syntax first, then one lookup with full alias expansion */
static void resolve_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct rsv *s = rpc_call_data(call);
	if (s == NULL)
		return;
	if (s->got_request) {
		rsv_finish(s, RS_INVALID, NULL, RPC_INVALID_ARGUMENT, "one request message expected");
		return;
	}
	s->got_request = true;
	Mail__Router__V1__ResolveRecipientRequest *req =
		mail__router__v1__resolve_recipient_request__unpack(NULL, len, msg);
	if (req == NULL) {
		rsv_finish(s, RS_INVALID, NULL, RPC_INVALID_ARGUMENT, "malformed ResolveRecipientRequest");
		return;
	}
	const char *addr = req->address != NULL ? req->address : "";
	if (!address_ok(addr)) {
		mail__router__v1__resolve_recipient_request__free_unpacked(req, NULL);
		rsv_code(s, RS_INVALID, CODE(INVALID));
		return;
	}
	s->address = xstrdup(addr);
	uint64_t account = req->session != NULL ? req->session->account_id : 0;
	s->authenticated = account != 0;
	char acct[24], size[24];
	snprintf(acct, sizeof(acct), "%" PRIu64, account);
	snprintf(size, sizeof(size), "%" PRIu64, MAIL_MIN(req->message_size, (uint64_t)INT64_MAX));
	const char *values[3] = { s->address, size, acct };
	s->dbr = db_exec(rt_loop_of_call(call)->db, "deliver_resolve", 3, values, NULL, NULL, 0, resolve_done, s);
	mail__router__v1__resolve_recipient_request__free_unpacked(req, NULL);
}

/* ------------------------------------------------------------------ module */

static void dlv_main_init(struct router *rt, struct httpd *admin, struct httpd *metrics)
{
	for (int k = 0; k < 2; k++) {
		for (int i = 0; i < DR_N; i++) {
			char name[96];
			snprintf(name, sizeof(name), "%s_total{result=\"%s\"}", dlv_kind_names[k], dlv_result_names[i]);
			dlv_m.total[k][i] = metric_counter(name, k == 0 ? "Deliver calls by result" : "Append calls by result");
		}
		char name[64];
		snprintf(name, sizeof(name), "%s_bytes_total", dlv_kind_names[k]);
		dlv_m.bytes[k] = metric_counter(name, "bytes of messages stored");
		snprintf(name, sizeof(name), "%s_seconds", dlv_kind_names[k]);
		dlv_m.seconds[k] = metric_histogram(name, "duration from the first message to the answer", NULL, 0);
		for (int ph = 0; ph < PH_N; ph++) {
			snprintf(name, sizeof(name), "%s_stage_seconds{stage=\"%s\"}", dlv_kind_names[k],
				 dlv_phase_names[ph]);
			dlv_m.phase_seconds[k][ph] = metric_histogram(name,
				"time a call spent receiving, parsing, preparing the blob row, putting the blob, committing",
				NULL, 0);
		}
	}
	for (int i = 0; i < 6; i++) {
		char name[96];
		snprintf(name, sizeof(name), "resolve_recipient_total{result=\"%s\"}", resolve_result_names[i]);
		dlv_m.resolve[i] = metric_counter(name, "ResolveRecipient calls by result");
	}
	dlv_m.retries = metric_counter("deliver_commit_retries_total",
				       "commits retried with the same token after a lost answer");
	dlv_m.batches = metric_counter("deliver_batches_total", "group commits of deliveries (mail_deliver_batch)");
	dlv_m.batch_items = metric_counter("deliver_batch_items_total", "deliveries committed in those batches");
	dlv_m.batch_splits = metric_counter("deliver_batch_splits_total",
					    "batches refused by the database and committed item by item");
}

static const struct rpc_method dlv_methods[] = {
	{ "/mail.router.v1.Router/ResolveRecipient", resolve_on_start, resolve_on_message, resolve_on_half_close,
	  resolve_on_cancel, NULL },
	{ "/mail.router.v1.Router/Deliver", deliver_on_start, deliver_on_message, deliver_on_half_close,
	  dlv_on_cancel, NULL },
	{ "/mail.router.v1.Router/Append", append_on_start, append_on_message, append_on_half_close,
	  dlv_on_cancel, NULL },
};

static const struct db_stmt dlv_stmts[] = {
	{ "deliver_resolve",
	  "SELECT s.sender_ok, r.rcpt, r.kind, r.target, r.account_id, r.over_quota, r.via_alias"
	  " FROM (SELECT EXISTS (SELECT 1 FROM accounts a WHERE a.id = $3::bigint AND NOT a.disabled)"
	  " AS sender_ok) AS s LEFT JOIN mail_resolve(ARRAY[$1::text], $2::bigint) AS r ON true", 3 },
	{ "deliver_blob_prepare", "SELECT mail_blob_prepare($1::text, $2::bigint)", 2 },
	{ "deliver_blob_prepare_many", "SELECT mail_blob_prepare_many($1::text[], $2::bigint[])", 2 },
	{ "deliver_message",
	  "SELECT rcpt, target, status, account_id, mailbox_id, uid, queue_id FROM mail_deliver_message("
	  "$1::text[], $2::text[], $3::text[], $4::text, $5::bigint, $6::text, $7::text, $8::text, $9::bigint,"
	  " $10::jsonb, $11::bytea, $12::text, $13::text[], $14::text)", 14 },
	{ "deliver_batch",
	  "SELECT item, rcpt, target, status, account_id, mailbox_id, uid, queue_id "
	  "FROM mail_deliver_batch($1::jsonb, $2::text[])",
	  2 },
	{ "deliver_append",
	  "SELECT status, mailbox_id, uidvalidity, uid FROM mail_deliver(ARRAY[$1::bigint], $2::text, $3::text,"
	  " $4::bigint, to_timestamp($5::double precision), $6::integer, $7::text[], $8::jsonb, $9::bytea,"
	  " $10::text, $11::text[], $12::text)", 12 },
	{ "deliver_append_check",
	  "SELECT a.disabled, mb.id, mb.uidvalidity,"
	  " (a.quota_bytes > 0 AND a.used_bytes + greatest($3::bigint, 1) > a.quota_bytes)"
	  " OR (a.quota_messages > 0 AND a.used_messages + 1 > a.quota_messages)"
	  " FROM accounts a LEFT JOIN mailboxes mb ON mb.account_id = a.id AND mb.name = mail_mailbox_name($2::text)"
	  " WHERE a.id = $1::bigint", 3 },
};

const struct rt_module rt_mod_deliver = {
	.name = "deliver",
	.methods = dlv_methods,
	.n_methods = N_ELEMENTS(dlv_methods),
	.stmts = dlv_stmts,
	.n_stmts = N_ELEMENTS(dlv_stmts),
	.slot = DLV_SLOT,
	.loop_init = dlv_loop_init,
	.loop_fini = dlv_loop_fini,
	.main_init = dlv_main_init,
};
