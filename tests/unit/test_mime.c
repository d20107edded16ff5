/* test_mime.c - the MIME structure parser (router/mime*.c).
 *
 * Golden messages under mime/: NAME.eml with NAME.exp holding the expected
 * ENVELOPE/BODY/BODYSTRUCTURE strings (derived by hand from RFC 3501 7.4.2,
 * sizes counted on the file), section ranges and their bytes, headers raw
 * and decoded, parameters. Every golden message is also checked for tree
 * invariants, fed with CRLF instead of LF (same sections, same bytes modulo
 * CR), and fed truncated at every length. Then RFC 2047, addresses,
 * Content-* edge cases, opaque containers, and hostile input that must stay
 * within its limits and finish fast: 10,000-deep nesting, 100,000 parts,
 * huge header lines, a million boundary-like lines.
 */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <time.h>
#include <cmocka.h>
#include "lib/common.h"
#include "lib/xalloc.h"
#include "router/mime.h"
#include "tests/unit/mime/imap_check.h"

/* wall-clock budget of each hostile-input test (sanitizer build, shared CPU) */
#define HOSTILE_BUDGET_S 10.0

static const char *const golden[] = {
	"simple", "simple_crlf", "alternative", "mixed_attachment", "rfc3501_sections",
	"rfc2231", "encoded_words", "groups", "missing_final_boundary", "empty_body",
	"headers_only", "digest", "eightbit",
};

static uint8_t *read_file(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		fail_msg("cannot open %s", path);
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (cap - len < 4096) {
			cap = cap * 2 + 4096;
			buf = xrealloc(buf, cap + 1);
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		if (n == 0)
			break;
		len += n;
	}
	fclose(f);
	buf[len] = '\0';
	*len_r = len;
	return buf;
}

/* unescape - \r \n \t \xHH; other backslashes (IMAP's \" and \\) stay */
static size_t unescape(const char *s, char *out)
{
	size_t o = 0;
	while (*s != '\0') {
		if (*s != '\\' || s[1] == '\0') {
			out[o++] = *s++;
			continue;
		}
		s++;
		char c = *s++;
		if (c == 'r')
			out[o++] = '\r';
		else if (c == 'n')
			out[o++] = '\n';
		else if (c == 't')
			out[o++] = '\t';
		else if (c == 'x' && s[0] != '\0' && s[1] != '\0') {
			char hex[3] = { s[0], s[1], '\0' };
			out[o++] = (char)strtol(hex, NULL, 16);
			s += 2;
		} else {
			out[o++] = '\\';
			out[o++] = c;
		}
	}
	out[o] = '\0';
	return o;
}

static struct mime_message *parse_buf(const void *data, size_t len, const struct mime_limits *lim)
{
	struct mime_message *m = NULL;
	const char *err = NULL;
	assert_int_equal(mime_parse(data, len, lim, &m, &err), 0);
	assert_non_null(m);
	return m;
}

static struct mime_message *parse_str(const char *s)
{
	return parse_buf(s, strlen(s), NULL);
}

static void expect_str(const char *ctx, const char *got, const char *want)
{
	if (strcmp(got, want) != 0)
		fail_msg("%s:\n got: %s\nwant: %s", ctx, got, want);
}

/* check_exports - the three strings parse under the RFC 3501 grammar */
static void check_exports(const struct mime_message *m)
{
	char *env = mime_envelope_export(m);
	char *body = mime_bodystructure_export(m, false);
	char *bs = mime_bodystructure_export(m, true);
	const char *err;
	if ((err = imap_check_envelope(env, strlen(env))) != NULL)
		fail_msg("bad ENVELOPE (%s): %s", err, env);
	if ((err = imap_check_body(body, strlen(body), false)) != NULL)
		fail_msg("bad BODY (%s): %s", err, body);
	if ((err = imap_check_body(bs, strlen(bs), true)) != NULL)
		fail_msg("bad BODYSTRUCTURE (%s): %s", err, bs);
	free(env);
	free(body);
	free(bs);
}

/* check_invariants - ranges inside the message and nested like the tree;
 * the section table agrees with mime_section_range() */
static void check_invariants(const struct mime_message *m, size_t len)
{
	unsigned int n = mime_message_part_count(m);
	assert_true(n >= 1);
	assert_int_equal(mime_message_size(m), len);
	for (unsigned int i = 0; i < n; i++) {
		const struct mime_part *p = mime_message_part(m, i);
		assert_int_equal(p->index, i);
		assert_int_equal(p->header_offset + p->header_size, p->body_offset);
		assert_true(p->body_offset + p->body_size <= len);
		assert_true(p->lines <= p->body_size);
		assert_non_null(p->type);
		assert_non_null(p->subtype);
		assert_non_null(p->encoding);
		const struct mime_part *q = p->parent;
		if (q != NULL) {
			assert_true(p->header_offset >= q->body_offset);
			assert_true(p->body_offset + p->body_size <= q->body_offset + q->body_size);
			assert_int_equal(p->depth, q->depth + 1);
			if (q->kind == MIME_PART_MESSAGE) {
				assert_int_equal(p->header_offset, q->body_offset);
				assert_int_equal(p->body_offset + p->body_size, q->body_offset + q->body_size);
				assert_true(p->is_message);
			}
		}
		if (p->next != NULL)
			assert_true(p->next->header_offset >= p->body_offset + p->body_size);
		unsigned int count = 0;
		for (const struct mime_part *c = p->children; c != NULL; c = c->next)
			count++;
		assert_int_equal(count, p->child_count);
		if (p->kind == MIME_PART_MESSAGE)
			assert_int_equal(count, 1);
		if (p->kind == MIME_PART_LEAF)
			assert_int_equal(count, 0);
	}
	char *table = mime_sections_export(m);
	char *pristine = xstrdup(table);	/* table is cut up while we walk it */
	for (char *line = table; *line != '\0';) {
		char *eol = strchr(line, '\n');
		assert_non_null(eol);
		*eol = '\0';
		char *close = strchr(line, ']');
		assert_non_null(close);
		*close = '\0';
		struct mime_range r1, r2;
		const char *err;
		if (mime_section_range(m, line + 1, &r1, &err) < 0)
			fail_msg("section [%s] in the table but not found: %s", line + 1, err);
		assert_int_equal(mime_sections_lookup(pristine, line + 1, &r2), 0);
		unsigned long long off, size;
		assert_int_equal(sscanf(close + 2, "%llu %llu", &off, &size), 2);
		assert_int_equal(r1.offset, off);
		assert_int_equal(r1.size, size);
		assert_int_equal(r2.offset, off);
		assert_int_equal(r2.size, size);
		assert_true(off + size <= len);
		*close = ']';
		*eol = '\n';
		line = eol + 1;
	}
	free(table);
	free(pristine);
	check_exports(m);
}

/* section_bytes - the bytes of a section, or -1 */
static int section_bytes(const struct mime_message *m, const uint8_t *data, const char *sect,
			 const uint8_t **p_r, size_t *n_r)
{
	struct mime_range r;
	const char *err;
	if (mime_section_range(m, sect, &r, &err) < 0)
		return -1;
	*p_r = data + r.offset;
	*n_r = r.size;
	return 0;
}

static char *lf_to_crlf(const uint8_t *s, size_t n, size_t *len_r)
{
	char *out = xmalloc(2 * n + 1);
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\n')
			out[o++] = '\r';
		out[o++] = (char)s[i];
	}
	*len_r = o;
	return out;
}

/* check_crlf_twin - the message with CRLF has the same sections, holding the
 * same bytes with CRs added, and the same line counts */
static void check_crlf_twin(const struct mime_message *m, const uint8_t *data, size_t len)
{
	if (memchr(data, '\r', len) != NULL)
		return;
	size_t len2;
	char *data2 = lf_to_crlf(data, len, &len2);
	struct mime_message *m2 = parse_buf(data2, len2, NULL);
	check_invariants(m2, len2);
	assert_int_equal(mime_message_part_count(m2), mime_message_part_count(m));
	for (unsigned int i = 0; i < mime_message_part_count(m); i++)
		assert_int_equal(mime_message_part(m2, i)->lines, mime_message_part(m, i)->lines);
	char *t1 = mime_sections_export(m);
	for (char *line = t1; *line != '\0';) {
		char *eol = strchr(line, '\n');
		char *close = strchr(line, ']');
		*close = '\0';
		const uint8_t *a = NULL, *b = NULL;
		size_t an = 0, bn = 0;
		assert_int_equal(section_bytes(m, data, line + 1, &a, &an), 0);
		assert_int_equal(section_bytes(m2, (const uint8_t *)data2, line + 1, &b, &bn), 0);
		size_t cn;
		char *conv = lf_to_crlf(a, an, &cn);
		if (cn != bn || memcmp(conv, b, bn) != 0)
			fail_msg("CRLF twin differs in [%s]", line + 1);
		free(conv);
		*close = ']';
		line = eol + 1;
	}
	free(t1);
	mime_message_free(&m2);
	free(data2);
}

/* check_prefixes - every truncation of the message parses within bounds */
static void check_prefixes(const uint8_t *data, size_t len)
{
	for (size_t n = 0; n < len; n++) {
		uint8_t *copy = xmemdup(data, n);	/* exact size: ASan sees overreads */
		struct mime_message *m = parse_buf(copy, n, NULL);
		check_invariants(m, n);
		mime_message_free(&m);
		free(copy);
	}
}

static const char *part_param(const struct mime_param *params, unsigned int n, const char *name)
{
	for (unsigned int i = 0; i < n; i++) {
		if (strcmp(params[i].name, name) == 0)
			return params[i].value;
	}
	return NULL;
}

/* run_directive - one line of a .exp file */
static void run_directive(const char *name, const struct mime_message *m, const uint8_t *data,
			  char *line)
{
	char ctx[256];
	char *sp = strchr(line, ' ');
	assert_non_null(sp);
	*sp = '\0';
	const char *key = line;
	char *arg = sp + 1;
	char *want = xmalloc(strlen(arg) + 1);
	snprintf(ctx, sizeof(ctx), "%s %s", name, key);
	if (strcmp(key, "ENVELOPE") == 0 || strcmp(key, "BODY") == 0 ||
	    strcmp(key, "BODYSTRUCTURE") == 0) {
		unescape(arg, want);
		char *got = strcmp(key, "ENVELOPE") == 0 ? mime_envelope_export(m)
			    : mime_bodystructure_export(m, strcmp(key, "BODYSTRUCTURE") == 0);
		expect_str(ctx, got, want);
		free(got);
	} else if (strcmp(key, "PARTS") == 0) {
		assert_int_equal(mime_message_part_count(m), strtoul(arg, NULL, 10));
	} else if (strcmp(key, "FLAGS") == 0) {
		assert_int_equal(mime_message_flags(m), strtoul(arg, NULL, 16));
	} else if (strcmp(key, "RANGE") == 0 || strcmp(key, "CONTENT") == 0 ||
		   strcmp(key, "NOSECTION") == 0) {
		assert_true(arg[0] == '[');
		char *close = strrchr(arg, ']');
		assert_non_null(close);
		*close = '\0';
		const char *sect = arg + 1;
		const char *rest = close[1] == ' ' ? close + 2 : close + 1;
		struct mime_range r, r2;
		const char *err;
		char *table = mime_sections_export(m);
		int ret = mime_section_range(m, sect, &r, &err);
		int ret2 = mime_sections_lookup(table, sect, &r2);
		free(table);
		snprintf(ctx, sizeof(ctx), "%s %s [%s]", name, key, sect);
		if (strcmp(key, "NOSECTION") == 0) {
			if (ret == 0 || ret2 == 0)
				fail_msg("%s: section exists", ctx);
		} else {
			if (ret < 0 || ret2 < 0)
				fail_msg("%s: no such section", ctx);
			assert_int_equal(r.offset, r2.offset);
			assert_int_equal(r.size, r2.size);
			if (strcmp(key, "RANGE") == 0) {
				unsigned long long off, size;
				assert_int_equal(sscanf(rest, "%llu %llu", &off, &size), 2);
				if (r.offset != off || r.size != size)
					fail_msg("%s: got %zu %zu", ctx, r.offset, r.size);
			} else {
				size_t wn = unescape(rest, want);
				if (wn != r.size || memcmp(data + r.offset, want, wn) != 0)
					fail_msg("%s:\n got: %.*s\nwant: %s", ctx, (int)r.size,
						 (const char *)data + r.offset, want);
			}
		}
	} else if (strcmp(key, "HEADER") == 0 || strcmp(key, "DECODED") == 0) {
		char *v = strchr(arg, ' ');
		assert_non_null(v);
		*v++ = '\0';
		unescape(v, want);
		const char *raw = mime_header_get(m, NULL, arg);
		if (raw == NULL)
			fail_msg("%s: no header %s", ctx, arg);
		if (strcmp(key, "HEADER") == 0) {
			expect_str(ctx, raw, want);
		} else {
			char *dec = mime_header_decode(raw);
			expect_str(ctx, dec, want);
			free(dec);
		}
	} else if (strcmp(key, "NOHEADER") == 0) {
		assert_null(mime_header_get(m, NULL, arg));
	} else if (strcmp(key, "PARAM") == 0 || strcmp(key, "DISPPARAM") == 0) {
		char *pname = strchr(arg, ' ');
		assert_non_null(pname);
		*pname++ = '\0';
		char *v = strchr(pname, ' ');
		assert_non_null(v);
		*v++ = '\0';
		const struct mime_part *p;
		assert_int_equal(mime_find_section(m, arg, &p), 0);
		const char *got = strcmp(key, "PARAM") == 0
					  ? part_param(p->params, p->param_count, pname)
					  : part_param(p->disp_params, p->disp_param_count, pname);
		unescape(v, want);
		if (strcmp(want, "-") == 0)
			assert_null(got);
		else
			expect_str(ctx, got != NULL ? got : "(null)", want);
	} else {
		fail_msg("%s: unknown directive", ctx);
	}
	free(want);
}

static void test_golden(void **state)
{
	for (size_t g = 0; g < N_ELEMENTS(golden); g++) {
		char path[256];
		size_t len, elen;
		snprintf(path, sizeof(path), "mime/%s.eml", golden[g]);
		uint8_t *data = read_file(path, &len);
		snprintf(path, sizeof(path), "mime/%s.exp", golden[g]);
		char *exp = (char *)read_file(path, &elen);
		struct mime_message *m = parse_buf(data, len, NULL);
		check_invariants(m, len);
		for (char *line = exp; *line != '\0';) {
			char *eol = strchr(line, '\n');
			if (eol != NULL)
				*eol = '\0';
			if (line[0] != '\0' && line[0] != '#')
				run_directive(golden[g], m, data, line);
			if (eol == NULL)
				break;
			line = eol + 1;
		}
		check_crlf_twin(m, data, len);
		check_prefixes(data, len);
		mime_message_free(&m);
		assert_null(m);
		free(exp);
		free(data);
	}
}

static void expect_decode(const char *raw, const char *want)
{
	char *got = mime_header_decode(raw);
	expect_str(raw, got, want);
	free(got);
}

static void test_rfc2047(void **state)
{
	/* RFC 2047 section 8 */
	expect_decode("(=?ISO-8859-1?Q?a?=)", "(a)");
	expect_decode("(=?ISO-8859-1?Q?a?= b)", "(a b)");
	expect_decode("(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)");
	expect_decode("(=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=)", "(ab)");
	expect_decode("(=?ISO-8859-1?Q?a?=\r\n    =?ISO-8859-1?Q?b?=)", "(ab)");
	expect_decode("(=?ISO-8859-1?Q?a_b?=)", "(a b)");
	expect_decode("(=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=)", "(a b)");
	/* B and Q, case-insensitive, charsets */
	expect_decode("=?utf-8?b?R3LDvMOfZQ==?=", "Gr\xc3\xbc\xc3\x9f" "e");
	expect_decode("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=", "Gr\xc3\xbc\xc3\x9f" "e");
	expect_decode("=?iso-8859-15?q?=A4_5?=", "\xe2\x82\xac 5");
	expect_decode("=?windows-1252?Q?=93quoted=94?=", "\xe2\x80\x9cquoted\xe2\x80\x9d");
	expect_decode("=?iso-8859-1?q?=93x=94?=", "\xe2\x80\x9cx\xe2\x80\x9d"); /* read as 1252 */
	expect_decode("=?us-ascii*en?q?lang_suffix?=", "lang suffix");	/* RFC 2231 5 */
	/* a UTF-8 character split over two words comes out whole */
	expect_decode("=?utf-8?q?Gr=C3?= =?utf-8?q?=BC?=", "Gr\xc3\xbc");
	expect_decode("=?utf-8?b?w6k=?==?utf-8?b?w6k=?=", "\xc3\xa9\xc3\xa9");
	/* unknown charset: bytes kept where valid UTF-8, U+FFFD elsewhere */
	expect_decode("=?x-unknown?q?ok_=E9?=", "ok \xef\xbf\xbd");
	expect_decode("=?koi8-r?b?0NLJ18XU?=", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
					       "\xef\xbf\xbd\xef\xbf\xbd");
	/* raw 8-bit outside words */
	expect_decode("caf\xc3\xa9 \xe9t\xe9", "caf\xc3\xa9 \xef\xbf\xbdt\xef\xbf\xbd");
	/* not encoded words: left alone */
	expect_decode("=?utf-8?x?abc?=", "=?utf-8?x?abc?=");
	expect_decode("=?utf-8?q?has space?=", "=?utf-8?q?has space?=");
	expect_decode("=?utf-8?q?unterminated", "=?utf-8?q?unterminated");
	expect_decode("=??q?nocharset?=", "=??q?nocharset?=");
	expect_decode("a =?", "a =?");
	expect_decode("", "");
	/* words inside text (not RFC, but what users mean) and text between words */
	expect_decode("x=?utf-8?q?y?=z", "xyz");
	expect_decode("=?utf-8?q?a?= and =?utf-8?q?b?=", "a and b");
	/* NUL and bad escapes */
	expect_decode("=?utf-8?q?a=00b=ZZ=?=", "ab=ZZ=");
	/* folding removed */
	expect_decode("line one\r\n two", "line one two");
	/* the rest of ISO-8859-15's differences from Latin-1; NUL dropped there too */
	expect_decode("=?iso-8859-15?q?=A6=A8=B4=B8=BC=BD=BE=00=E9?=",
		      "\xc5\xa0\xc5\xa1\xc5\xbd\xc5\xbe\xc5\x92\xc5\x93\xc5\xb8\xc3\xa9");
	/* base64's last two letters; invalid UTF-8 octets each replaced */
	expect_decode("=?utf-8?b?+/8=?=", "\xef\xbf\xbd\xef\xbf\xbd");
	/* 4-byte UTF-8 kept, overlong and surrogate forms replaced */
	expect_decode("\xf0\x9f\x93\xa7 =?utf-8?q?=F0=9F=93=A7?=", "\xf0\x9f\x93\xa7 \xf0\x9f\x93\xa7");
	expect_decode("\xc0\xaf\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
	/* near misses of the syntax */
	expect_decode("=?utf-8?q", "=?utf-8?q");
	expect_decode("=?utf-8?qq?x?=", "=?utf-8?qq?x?=");
	expect_decode("=?utf-8?q?x?", "=?utf-8?q?x?");
}

/* addr_dump - "name|route|mailbox|host;" per entry, "-" for NULL */
static char *addr_dump(const char *s, unsigned int max)
{
	struct mime_address *list = mime_addresses_parse(s, strlen(s), max);
	size_t cap = 4096, o = 0;
	char *out = xmalloc(cap);
	out[0] = '\0';
	for (const struct mime_address *a = list; a != NULL; a = a->next) {
		int n = snprintf(out + o, cap - o, "%s|%s|%s|%s;", a->name ? a->name : "-",
				 a->route ? a->route : "-", a->mailbox ? a->mailbox : "-",
				 a->host ? a->host : "-");
		assert_true(n > 0 && (size_t)n < cap - o);
		o += (size_t)n;
	}
	mime_addresses_free(&list);
	assert_null(list);
	return out;
}

static void expect_addr(const char *s, unsigned int max, const char *want)
{
	char *got = addr_dump(s, max);
	expect_str(s, got, want);
	free(got);
}

static void test_addresses(void **state)
{
	expect_addr("", 0, "");
	expect_addr("   ,  , ", 0, "");
	expect_addr("user@example.com", 0, "-|-|user|example.com;");
	expect_addr("John Doe <jdoe@machine.example>", 0, "John Doe|-|jdoe|machine.example;");
	expect_addr("\"Joe Q. Public\" <john.q.public@example.com>, Mary Smith <mary@x.test>", 0,
		    "Joe Q. Public|-|john.q.public|example.com;Mary Smith|-|mary|x.test;");
	/* RFC 5322 A.5: comments everywhere */
	expect_addr("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>", 0,
		    "Pete|-|pete|silly.test;");
	expect_addr("jdoe@example.org (John Doe)", 0, "John Doe|-|jdoe|example.org;");
	expect_addr("(comment first) jdoe@example.org", 0, "comment first|-|jdoe|example.org;");
	/* groups */
	expect_addr("A Group:Ed Jones <c@a.test>,joe@where.test;", 0,
		    "-|-|A Group|-;Ed Jones|-|c|a.test;-|-|joe|where.test;-|-|-|-;");
	expect_addr("undisclosed-recipients:;", 0, "-|-|undisclosed-recipients|-;-|-|-|-;");
	expect_addr("Unterminated: a@b.c", 0, "-|-|Unterminated|-;-|-|a|b.c;-|-|-|-;");
	expect_addr("G1: a@b.c; G2: Nested: x@y.z;", 0,
		    "-|-|G1|-;-|-|a|b.c;-|-|-|-;-|-|G2|-;-|-|-|-;");
	expect_addr("stray@end.test;", 0, "-|-|stray|end.test;");
	/* obsolete syntax: route, spaces around dots, quoted local part */
	expect_addr("<@a.test,@b.test:user@c.test>", 0, "-|@a.test,@b.test|user|c.test;");
	expect_addr("<@a.test,,@b.test:user@c.test>", 0, "-|@a.test,@b.test|user|c.test;");
	expect_addr("john . q . public @ example . com", 0, "-|-|john.q.public|example.com;");
	expect_addr("\"john doe\"@example.com", 0, "-|-|john doe|example.com;");
	expect_addr("\"a\\\"b\"@example.com", 0, "-|-|a\"b|example.com;");
	expect_addr("x@[192.0.2.1]", 0, "-|-|x|[192.0.2.1];");
	/* missing pieces */
	expect_addr("postmaster", 0, "-|-|postmaster|MISSING_DOMAIN;");
	expect_addr("@example.com", 0, "-|-|MISSING_MAILBOX|example.com;");
	expect_addr("user@", 0, "-|-|user|MISSING_DOMAIN;");
	expect_addr("Name <>", 0, "Name|-||;");
	expect_addr("<@host.only>", 0, "-|-|MISSING_MAILBOX|host.only;");
	expect_addr("Name <user@host", 0, "Name|-|user|host;");
	expect_addr("\"unterminated <a@b>", 0, "-|-|unterminated <a@b>|MISSING_DOMAIN;");
	expect_addr("(unterminated comment a@b", 0, "");
	expect_addr("a@b > c@d, e@f", 0, "-|-|a|b;-|-|e|f;");
	expect_addr("[1.2.3.4], ok@x", 0, "-|-|ok|x;");
	expect_addr("<a@b c d>, e@f", 0, "-|-|a|bcd;-|-|e|f;");
	expect_addr("<a@b \"q\" <x>, e@f", 0, "-|-|a|bq;-|-|e|f;");
	expect_addr("\"line\r\n break\" <a@b>", 0, "line break|-|a|b;");
	/* 8-bit display name kept raw; encoded words kept raw */
	expect_addr("J\xc3\xb6rg <j@x>", 0, "J\xc3\xb6rg|-|j|x;");
	expect_addr("=?utf-8?q?J=C3=B6rg?= <j@x>", 0, "=?utf-8?q?J=C3=B6rg?=|-|j|x;");
	/* count limit; a cut group is still closed */
	expect_addr("a@x, b@x, c@x, d@x", 2, "-|-|a|x;-|-|b|x;");
	expect_addr("G: a@x, b@x, c@x;", 2, "-|-|G|-;-|-|a|x;-|-|-|-;");
}

/* bs - BODYSTRUCTURE of a message given as a string, caller frees */
static char *bs(const char *msg, bool extended)
{
	struct mime_message *m = parse_str(msg);
	check_invariants(m, strlen(msg));
	char *s = mime_bodystructure_export(m, extended);
	mime_message_free(&m);
	return s;
}

static void expect_bs(const char *msg, const char *want)
{
	char *got = bs(msg, false);
	expect_str(msg, got, want);
	free(got);
}

static void test_content_fields(void **state)
{
	/* RFC 2045's own example: a comment after the value */
	expect_bs("Content-Type: text/plain; charset=us-ascii (Plain text)\n\nx",
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 1 1)");
	/* comments, blanks, case, unquoted value with a space, quoted escapes */
	expect_bs("Content-Type: (c) Text / HTML (c) ; CharSet = \"UTF-8\" ; Name=my file.txt ;"
		  " q=\"a\\\"b\"\n\nx",
		  "(\"text\" \"html\" (\"charset\" \"UTF-8\" \"name\" \"my file.txt\" \"q\" \"a\\\"b\")"
		  " NIL NIL \"7bit\" 1 1)");
	/* junk, a parameter without value, duplicates (first wins), empty value */
	expect_bs("Content-Type: text/plain; junk; a=1; a=2; b=; ;c\n\nx",
		  "(\"text\" \"plain\" (\"a\" \"1\" \"b\" \"\") NIL NIL \"7bit\" 1 1)");
	/* invalid type: default type, parameters kept */
	expect_bs("Content-Type: text; charset=utf-8\n\nx",
		  "(\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 1 1)");
	expect_bs("Content-Type: \n\nx",
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 1 1)");
	/* RFC 2231: sections out of order, a missing section ends the value, a
	 * plain name* beats name, an unknown charset keeps the raw form */
	expect_bs("Content-Type: application/x; t*1=b; t*0=a; t*3=d; u=plain; u*=utf-8''ext;"
		  " v*=x-unknown'en'%41\n\nx",
		  "(\"application\" \"x\" (\"t\" \"ab\" \"u\" \"ext\" \"v*\" \"x-unknown'en'A\") NIL NIL"
		  " \"7bit\" 1)");
	/* extended value without the quotes, %-escapes that are not */
	expect_bs("Content-Type: application/x; a*=100%25%zz%4\n\nx",
		  "(\"application\" \"x\" (\"a\" \"100%%zz%4\") NIL NIL \"7bit\" 1)");
	/* junk before a ';' is skipped, quotes and comments in it included */
	expect_bs("Content-Type: text/plain junk \"x;y\" (a;\\)b) more; a=1\n\nx",
		  "(\"text\" \"plain\" (\"a\" \"1\") NIL NIL \"7bit\" 1 1)");
	expect_bs("Content-Type: ???; charset=x\n\nx",
		  "(\"text\" \"plain\" (\"charset\" \"x\") NIL NIL \"7bit\" 1 1)");
	expect_bs("Content-Type: text/plain; a=\"b\r c\"\n\nx",
		  "(\"text\" \"plain\" (\"a\" \"b c\") NIL NIL \"7bit\" 1 1)");
	/* the encoding token is lowercased; garbage means 7bit */
	expect_bs("Content-Transfer-Encoding: QUOTED-Printable (x)\n\nx",
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"quoted-printable\" 1 1)");
	expect_bs("Content-Transfer-Encoding: ;;\n\nx",
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 1 1)");
	/* first occurrence of a field wins */
	expect_bs("Content-Type: image/png\nContent-Type: text/plain\n\nx",
		  "(\"image\" \"png\" NIL NIL NIL \"7bit\" 1)");
	/* a field value with CR/LF or 8-bit goes as a literal */
	expect_bs("Content-Description: a\rb\n\nx",
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL {3}\r\na\rb \"7bit\" 1 1)");
	char *got = bs("Content-Disposition: INLINE; filename=\"a.txt\"\n"
		       "Content-Language: (c) en-US junk, , fr\nContent-Location: x\n\nx", true);
	expect_str("disposition", got,
		   "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 1 1 NIL"
		   " (\"inline\" (\"filename\" \"a.txt\")) (\"en-US\" \"fr\") \"x\")");
	free(got);
	/* a long value goes as a literal */
	char longmsg[2100] = "Content-ID: ";
	memset(longmsg + 12, 'i', 2000);
	memcpy(longmsg + 2012, "\n\nx", 4);
	got = bs(longmsg, false);
	assert_non_null(strstr(got, "(\"charset\" \"us-ascii\") {2000}\r\niiii"));
	free(got);
}

static void test_headers(void **state)
{
	const char *msg = "From mbox-line Mon Jan  1 00:00:00 2024\n"
			  "Subject: one\n"
			  "X-Folded: a\n\tb\r\n  c\n"
			  "No colon here\n"
			  " continuation of junk\n"
			  "Bad Name: skipped\n"
			  "X-\xc3\xa9: skipped\n"
			  "Subject: two\n"
			  "Empty:\n"
			  "Spaced : value  \n"
			  ": no name\n"
			  "X-Nul: a\0b\n"
			  "\n"
			  "body";
	size_t len = strlen(msg) + 1 + strlen(msg + strlen(msg) + 1);
	struct mime_message *m = parse_buf(msg, len, NULL);
	check_invariants(m, len);
	const struct mime_part *root = mime_message_root(m);
	expect_str("Subject", mime_header_get(m, NULL, "subject"), "one");
	expect_str("folded", mime_header_get(m, root, "X-Folded"), "a\tb  c");
	expect_str("empty", mime_header_get(m, NULL, "Empty"), "");
	expect_str("spaced", mime_header_get(m, NULL, "Spaced"), "value");
	expect_str("nul", mime_header_get(m, NULL, "X-Nul"), "ab");
	assert_null(mime_header_get(m, NULL, "Bad Name"));
	assert_null(mime_header_get(m, NULL, "No colon here"));
	assert_int_equal(root->header_count, 6);
	expect_str("last", root->headers[1].name, "X-Folded");
	struct mime_range r;
	const char *err;
	assert_int_equal(mime_section_range(m, "TEXT", &r, &err), 0);
	assert_int_equal(r.size, 4);
	assert_memory_equal(msg + r.offset, "body", 4);
	mime_message_free(&m);

	/* max_headers and max_header_line: the header still ends where it ends */
	struct mime_limits lim = { .max_headers = 2, .max_header_line = 16 };
	const char *many = "A: 1\nB: 2\nC: 3\nSubject: a long subject line\n\nbody";
	m = parse_buf(many, strlen(many), &lim);
	root = mime_message_root(m);
	assert_int_equal(root->header_count, 2);
	assert_true(mime_message_flags(m) & MIME_F_HEADER_TRUNCATED);
	assert_int_equal(root->body_size, 4);
	mime_message_free(&m);
	const char *longer = "Subject: a long subject line\n\nbody";
	m = parse_buf(longer, strlen(longer), &lim);
	expect_str("truncated", mime_header_get(m, NULL, "Subject"), "a long");
	mime_message_free(&m);
}

static void test_structure_edges(void **state)
{
	/* empty message */
	struct mime_message *m = parse_buf("", 0, NULL);
	check_invariants(m, 0);
	char *s = mime_bodystructure_export(m, false);
	expect_str("empty", s, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)");
	free(s);
	s = mime_envelope_export(m);
	expect_str("empty env", s, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
	free(s);
	mime_message_free(&m);
	mime_message_free(&m);	/* NULL is fine */
	const char *err;
	assert_int_equal(mime_parse(NULL, 1, NULL, &m, &err), -1);

	/* multipart without boundary, or with one over the limit: opaque */
	expect_bs("Content-Type: multipart/mixed\n\n--x\n\nbody\n--x--\n",
		  "(\"application\" \"octet-stream\" NIL NIL NIL \"7bit\" 16)");
	char big[200], want[200];
	int n = snprintf(big, sizeof(big), "Content-Type: multipart/mixed; boundary=%071d\n\nx", 0);
	assert_true(n > 0);
	n = snprintf(want, sizeof(want), "(\"application\" \"octet-stream\" (\"boundary\" \"%071d\")"
		     " NIL NIL \"7bit\" 1)", 0);
	assert_true(n > 0);
	expect_bs(big, want);
	/* multipart with no part at all: one empty text/plain (RFC 2046 needs one) */
	expect_bs("Content-Type: multipart/mixed; boundary=x\n\nno parts here\n",
		  "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) \"mixed\")");
	/* message/rfc822 in base64 cannot be parsed: opaque */
	expect_bs("Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeA==\n",
		  "(\"application\" \"octet-stream\" NIL NIL NIL \"base64\" 17)");
	/* an empty message/rfc822 */
	expect_bs("Content-Type: message/rfc822\n\n",
		  "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 0 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
		  " (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) 0)");
	/* boundaries: trailing blanks allowed, other trailing text is not a
	 * boundary, a close delimiter with blanks, empty parts, a part without
	 * header separator, a boundary line at the very start of the body */
	expect_bs("Content-Type: multipart/mixed; boundary=\"b \"\n\n"
		  "--b \t\n\n1\n--bX\n--b\n--b\nContent-Type: text/html\n--b--  \nepilogue",
		  "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 6 2)"
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)"
		  "(\"text\" \"html\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) \"mixed\")");
	/* an inner multipart that never closes is ended by the outer boundary */
	expect_bs("Content-Type: multipart/mixed; boundary=o\n\n--o\n"
		  "Content-Type: multipart/alternative; boundary=i\n\n--i\n\ninner\n"
		  "--o\n\nsecond\n--o--\n",
		  "(((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 5 1) \"alternative\")"
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 6 1) \"mixed\")");
	/* a closed multipart ignores its boundary in the epilogue */
	expect_bs("Content-Type: multipart/mixed; boundary=o\n\n--o\n\na\n--o--\n--o\n\nb\n",
		  "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 1 1) \"mixed\")");
	/* a header's blank line right before a boundary: its LF is the
	 * boundary's, so the header stops before it; an encapsulated message
	 * that would start after its container ends is empty at that end
	 * (both found by fuzz_mime) */
	expect_bs("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: x\n\n"
		  "--d\nContent-Type: message/rfc822\n\n--d--\n",
		  "((\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 11 (NIL \"x\" NIL NIL NIL NIL NIL NIL NIL NIL)"
		  " (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) 1)"
		  "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 0 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
		  " (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) 0) \"digest\")");
	/* bare CR line ends are not line ends; a CR alone before LF is */
	expect_bs("Subject: x\r\r\n\r\nbody\r\n",
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 6 1)");
	/* last line without line break counts */
	expect_bs("\none\ntwo", "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 7 2)");

	/* part API */
	m = parse_str("Content-Type: multipart/mixed; boundary=b\n\n--b\n"
		      "Content-Type: message/rfc822\n\nSubject: in\n\nhello\n--b--\n");
	const struct mime_part *p;
	assert_int_equal(mime_find_section(m, "1", &p), 0);
	assert_int_equal(p->kind, MIME_PART_MESSAGE);
	struct mime_range r;
	assert_int_equal(mime_part_header_range(p, &r), 0);
	assert_int_equal(r.size, 13);
	assert_int_equal(mime_part_text_range(p, &r), 0);
	assert_int_equal(r.size, 5);
	s = mime_part_envelope_export(m, p);
	expect_str("inner env", s, "(NIL \"in\" NIL NIL NIL NIL NIL NIL NIL NIL)");
	free(s);
	expect_str("inner subject", mime_header_get(m, p->children, "Subject"), "in");
	assert_int_equal(mime_find_section(m, "1.1", &p), 0);
	assert_true(p->is_message);
	assert_int_equal(mime_part_header_range(p, &r), -1);
	assert_int_equal(mime_find_section(m, "2", &p), -1);
	assert_int_equal(mime_find_section(m, "1.2", &p), -1);
	assert_int_equal(mime_find_section(m, "99999999999", &p), -1);
	assert_int_equal(mime_find_section(m, "", &p), 0);
	assert_ptr_equal(p, mime_message_root(m));
	assert_int_equal(mime_find_section(m, "1x", &p), -1);
	assert_int_equal(mime_find_section(m, "1.", &p), -1);
	assert_int_equal(mime_part_text_range(p, &r), 0);	/* the root */
	assert_int_equal(mime_find_section(m, "1.1", &p), 0);
	assert_int_equal(mime_part_text_range(p, &r), -1);
	/* over-long section specs and tables without a final line break */
	char spec[400];
	for (size_t i = 0; i + 2 < sizeof(spec); i += 2)
		memcpy(spec + i, "1.", 2);
	spec[sizeof(spec) - 2] = '1';
	spec[sizeof(spec) - 1] = '\0';
	assert_int_equal(mime_section_range(m, spec, &r, &err), -1);
	assert_int_equal(mime_sections_lookup("[1] 2 3", spec, &r), -1);
	spec[250] = '\0';	/* fits the path, not the lookup key */
	assert_int_equal(mime_sections_lookup("[1] 2 3", spec, &r), -1);
	assert_int_equal(mime_sections_lookup("[1] 2 3", "1", &r), 0);
	assert_int_equal(r.offset, 2);
	assert_int_equal(r.size, 3);
	assert_int_equal(mime_sections_lookup("[1] 2 3", "2", &r), -1);
	assert_int_equal(mime_sections_lookup("", "", &r), -1);
	assert_null(mime_message_part(m, 99));
	mime_message_free(&m);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* parse_timed - parse, check, export; fail if over the budget */
static struct mime_message *parse_timed(const char *what, const char *data, size_t len,
					const struct mime_limits *lim)
{
	double t0 = now();
	struct mime_message *m = parse_buf(data, len, lim);
	check_invariants(m, len);
	double dt = now() - t0;
	print_message("%s: %zu bytes, %u parts, %.3f s\n", what, len, mime_message_part_count(m), dt);
	if (dt > HOSTILE_BUDGET_S)
		fail_msg("%s took %.1f s", what, dt);
	return m;
}

struct sbuf {
	char *data;
	size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->cap - b->len < n + 1) {
		while (b->cap - b->len < n + 1)
			b->cap = b->cap * 2 + 4096;
		b->data = xrealloc(b->data, b->cap);
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) ATTR_PRINTF(2, 3);
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	assert_true(n >= 0 && (size_t)n < sizeof(tmp));
	sb_add(b, tmp, (size_t)n);
}

static void test_hostile_nesting(void **state)
{
	/* 10,000 multiparts inside each other */
	struct sbuf b = { 0 };
	for (int i = 0; i < 10000; i++)
		sb_printf(&b, "Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n", i, i);
	sb_printf(&b, "\ninnermost\n");
	struct mime_message *m = parse_timed("10000-deep multipart", b.data, b.len, NULL);
	assert_true(mime_message_flags(m) & MIME_F_DEPTH_LIMIT);
	assert_int_equal(mime_message_part_count(m), MIME_DEFAULT_MAX_DEPTH + 1);
	unsigned int maxdepth = 0;
	for (unsigned int i = 0; i < mime_message_part_count(m); i++)
		maxdepth = MAIL_MAX(maxdepth, mime_message_part(m, i)->depth);
	assert_int_equal(maxdepth, MIME_DEFAULT_MAX_DEPTH);
	mime_message_free(&m);

	/* 10,000 message/rfc822 inside each other, and a low depth limit */
	b.len = 0;
	for (int i = 0; i < 10000; i++)
		sb_printf(&b, "Subject: level %d\nContent-Type: message/rfc822\n\n", i);
	sb_printf(&b, "\nbottom\n");
	m = parse_timed("10000-deep message/rfc822", b.data, b.len, NULL);
	assert_true(mime_message_flags(m) & MIME_F_DEPTH_LIMIT);
	mime_message_free(&m);
	struct mime_limits lim = { .max_depth = 3 };
	m = parse_timed("depth 3", b.data, b.len, &lim);
	assert_int_equal(mime_message_part_count(m), 4);
	char *s = mime_bodystructure_export(m, false);
	assert_non_null(strstr(s, "(\"application\" \"octet-stream\" NIL NIL NIL \"7bit\" "));
	free(s);
	mime_message_free(&m);

	/* a hard ceiling no configuration can raise */
	lim.max_depth = 1000000;
	b.len = 0;
	for (int i = 0; i < 1000; i++)
		sb_printf(&b, "Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n", i, i);
	m = parse_timed("depth over the hard ceiling", b.data, b.len, &lim);
	assert_int_equal(mime_message_part_count(m), MIME_HARD_MAX_DEPTH + 1);
	mime_message_free(&m);
	free(b.data);
}

static void test_hostile_parts(void **state)
{
	/* 100,000 parts in one multipart, and the same spread over nested ones */
	struct sbuf b = { 0 };
	sb_printf(&b, "Content-Type: multipart/mixed; boundary=x\n\n");
	for (int i = 0; i < 100000; i++)
		sb_printf(&b, "--x\nContent-Type: text/plain\n\npart %d\n", i);
	sb_printf(&b, "--x--\n");
	struct mime_message *m = parse_timed("100000 parts", b.data, b.len, NULL);
	assert_int_equal(mime_message_part_count(m), MIME_DEFAULT_MAX_PARTS);
	assert_true(mime_message_flags(m) & MIME_F_PARTS_LIMIT);
	assert_false(mime_message_root(m)->flags & MIME_F_MISSING_END);
	mime_message_free(&m);

	b.len = 0;
	sb_printf(&b, "Content-Type: multipart/mixed; boundary=x\n\n");
	for (int i = 0; i < 20000; i++)
		sb_printf(&b, "--x\nContent-Type: multipart/mixed; boundary=y%d\n\n"
			      "--y%d\n\na\n--y%d\n\nb\n--y%d--\n", i, i, i, i);
	m = parse_timed("20000 nested multiparts", b.data, b.len, NULL);
	assert_int_equal(mime_message_part_count(m), MIME_DEFAULT_MAX_PARTS);
	mime_message_free(&m);

	/* 100,000 message/rfc822 parts that stop being opened at the limit */
	b.len = 0;
	sb_printf(&b, "Content-Type: multipart/digest; boundary=x\n\n");
	for (int i = 0; i < 100000; i++)
		sb_printf(&b, "--x\n\nSubject: %d\n\nbody\n", i);
	m = parse_timed("100000 digest parts", b.data, b.len, NULL);
	assert_true(mime_message_part_count(m) <= MIME_DEFAULT_MAX_PARTS);
	mime_message_free(&m);
	free(b.data);
}

static void test_hostile_lines(void **state)
{
	/* a 16 MiB header line, folded and not */
	size_t big = 16u << 20;
	char *msg = xmalloc(big + 64);
	memcpy(msg, "Subject: ", 9);
	memset(msg + 9, 'a', big);
	memcpy(msg + 9 + big, "\n\nbody", 6);
	struct mime_message *m = parse_timed("16 MiB header line", msg, big + 15, NULL);
	assert_int_equal(strlen(mime_header_get(m, NULL, "Subject")),
			 MIME_DEFAULT_MAX_HEADER_LINE - 9);
	assert_int_equal(mime_message_root(m)->body_size, 4);
	mime_message_free(&m);
	for (size_t i = 100; i + 2 < big; i += 100) {
		msg[i] = '\n';
		msg[i + 1] = ' ';
	}
	m = parse_timed("16 MiB folded header", msg, big + 15, NULL);
	assert_int_equal(mime_message_root(m)->body_size, 4);
	mime_message_free(&m);
	/* no line break at all */
	memset(msg, '-', big);
	m = parse_timed("16 MiB of dashes", msg, big, NULL);
	mime_message_free(&m);
	free(msg);

	/* a million boundary-like lines under 32 open multiparts whose
	 * boundaries all share a 69-byte prefix with them */
	struct sbuf b = { 0 };
	char prefix[70];
	memset(prefix, 'q', 69);
	prefix[69] = '\0';
	static const char last[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
	for (int i = 0; i < MIME_DEFAULT_MAX_DEPTH; i++)
		sb_printf(&b, "Content-Type: multipart/mixed; boundary=\"%s%c\"\n\n--%s%c\n", prefix,
			  last[i], prefix, last[i]);
	for (int i = 0; i < 1000000; i++)
		sb_printf(&b, "--%sz\n", prefix);
	m = parse_timed("1e6 boundary-like lines", b.data, b.len, NULL);
	assert_int_equal(mime_message_part_count(m), MIME_DEFAULT_MAX_DEPTH + 1);
	mime_message_free(&m);

	/* a million real delimiters of a multipart over the part limit */
	b.len = 0;
	sb_printf(&b, "Content-Type: multipart/mixed; boundary=x\n\n");
	for (int i = 0; i < 1000000; i++)
		sb_add(&b, "--x\n", 4);
	m = parse_timed("1e6 delimiters", b.data, b.len, NULL);
	assert_int_equal(mime_message_part_count(m), MIME_DEFAULT_MAX_PARTS);
	mime_message_free(&m);

	/* a million header fields, and a huge address list */
	b.len = 0;
	for (int i = 0; i < 1000000; i++)
		sb_add(&b, "X: y\n", 5);
	sb_add(&b, "\nbody", 5);
	m = parse_timed("1e6 header fields", b.data, b.len, NULL);
	assert_int_equal(mime_message_root(m)->header_count, MIME_DEFAULT_MAX_HEADERS);
	mime_message_free(&m);
	b.len = 0;
	sb_add(&b, "To: ", 4);
	for (int i = 0; i < 20000; i++)
		sb_add(&b, "a@b, ", 5);
	sb_add(&b, "\n\n", 2);
	m = parse_timed("20000 addresses", b.data, b.len, NULL);
	char *env = mime_envelope_export(m);
	assert_true(strlen(env) < 40 * MIME_DEFAULT_MAX_ADDRESSES);
	free(env);
	mime_message_free(&m);

	/* encoded-word lookalikes: decoding stays linear */
	b.len = 0;
	for (int i = 0; i < 200000; i++)
		sb_add(&b, "=?a?q?", 6);
	double t0 = now();
	char *d = mime_header_decode(b.data);
	assert_true(now() - t0 < HOSTILE_BUDGET_S);
	free(d);
	/* RFC 2231 continuations in quantity */
	b.len = 0;
	sb_add(&b, "Content-Type: text/plain", 24);
	for (int i = 0; i < 5000; i++)
		sb_printf(&b, "; n*%d*=%%41", 4999 - i);
	sb_add(&b, "\n\nx", 3);
	m = parse_timed("5000 RFC 2231 sections", b.data, b.len, NULL);
	assert_true(mime_message_flags(m) & MIME_F_PARAMS_TRUNCATED);
	mime_message_free(&m);

	/* 1000 parts, each with 256 raw parameters to merge */
	b.len = 0;
	sb_add(&b, "Content-Type: multipart/mixed; boundary=x\n\n", 43);
	for (int i = 0; i < 1000; i++) {
		sb_add(&b, "--x\nContent-Type: text/plain", 28);
		for (int j = 0; j < 256; j++)
			sb_printf(&b, "; p%d*%d*=%%41", j % 4, j / 4);
		sb_add(&b, "\n\nx\n", 4);
	}
	m = parse_timed("1000 parts x 256 parameters", b.data, b.len, NULL);
	const struct mime_part *p = mime_message_part(m, 1);
	assert_int_equal(p->param_count, 4);
	assert_int_equal(strlen(p->params[0].value), 64);
	mime_message_free(&m);

	/* 200 parts of 1000 tiny fields: the message-wide field budget */
	b.len = 0;
	sb_add(&b, "Content-Type: multipart/mixed; boundary=x\n\n", 43);
	for (int i = 0; i < 200; i++) {
		sb_add(&b, "--x\n", 4);
		for (int j = 0; j < 1000; j++)
			sb_add(&b, "X:\n", 3);
		sb_add(&b, "\nbody\n", 6);
	}
	m = parse_timed("200 parts x 1000 fields", b.data, b.len, NULL);
	unsigned int fields = 0;
	for (unsigned int i = 0; i < mime_message_part_count(m); i++)
		fields += mime_message_part(m, i)->header_count;
	assert_int_equal(fields, MIME_DEFAULT_MAX_TOTAL_HEADERS);
	assert_int_equal(mime_message_part_count(m), 201);
	mime_message_free(&m);
	free(b.data);
}

static void test_size_limit(void **state)
{
	const char *msg = "Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\n--b--\n";
	struct mime_limits lim = { .max_size = 52 };
	struct mime_message *m = parse_buf(msg, strlen(msg), &lim);
	check_invariants(m, strlen(msg));
	assert_true(mime_message_flags(m) & MIME_F_SIZE_LIMIT);
	assert_int_equal(mime_message_part_count(m), 2);
	/* the structure stops, the sizes still cover the message */
	assert_int_equal(mime_message_root(m)->body_size, strlen(msg) - 43);
	mime_message_free(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_golden),
		cmocka_unit_test(test_rfc2047),
		cmocka_unit_test(test_addresses),
		cmocka_unit_test(test_content_fields),
		cmocka_unit_test(test_headers),
		cmocka_unit_test(test_structure_edges),
		cmocka_unit_test(test_hostile_nesting),
		cmocka_unit_test(test_hostile_parts),
		cmocka_unit_test(test_hostile_lines),
		cmocka_unit_test(test_size_limit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
