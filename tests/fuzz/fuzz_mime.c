/* fuzz_mime.c - libFuzzer harness for the MIME structure parser
 * (router/mime*.c). The first input byte picks default or tiny limits (to
 * reach every limit path); the rest is the message. Checked on every input:
 * the tree's ranges lie inside the message and nest like the tree; ENVELOPE,
 * BODY and BODYSTRUCTURE parse under the RFC 3501 grammar
 * (tests/unit/mime/imap_check.h); every section of the exported table
 * resolves to the same range through mime_section_range() and
 * mime_sections_lookup(); every decoded header is valid UTF-8; a CR-free
 * message fed again with CRLF has the same tree, lines and section bytes.
 * Also fed directly to the RFC 2047 decoder and the address parser. Any
 * crash, leak, sanitizer report or failed check (abort) is a finding. */
#include "lib/common.h"
#include <stdlib.h>
#include "lib/xalloc.h"
#include "router/mime.h"
#include "tests/unit/mime/imap_check.h"

/* the CRLF twin is compared below this size (limits stay far away) */
#define TWIN_MAX_LEN 16384
/* prefix of the input also fed straight to the header decoders */
#define DIRECT_MAX_LEN 4096

#define CHECK(cond)                                                                     \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
			abort();                                                        \
		}                                                                       \
	} while (0)

static bool utf8_valid(const char *s)
{
	const uint8_t *p = (const uint8_t *)s;
	while (*p != 0) {
		uint8_t c = *p;
		size_t need;
		uint32_t cp, min;
		if (c < 0x80) {
			p++;
			continue;
		}
		if ((c & 0xE0) == 0xC0)
			need = 1, cp = c & 0x1F, min = 0x80;
		else if ((c & 0xF0) == 0xE0)
			need = 2, cp = c & 0x0F, min = 0x800;
		else if ((c & 0xF8) == 0xF0)
			need = 3, cp = c & 0x07, min = 0x10000;
		else
			return false;
		for (size_t i = 1; i <= need; i++) {
			if ((p[i] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		p += need + 1;
	}
	return true;
}

static void check_tree(const struct mime_message *m, size_t len)
{
	unsigned int n = mime_message_part_count(m);
	CHECK(n >= 1);
	for (unsigned int i = 0; i < n; i++) {
		const struct mime_part *p = mime_message_part(m, i);
		CHECK(p->header_offset + p->header_size == p->body_offset);
		CHECK(p->body_offset + p->body_size <= len);
		CHECK(p->lines <= p->body_size);
		CHECK(p->depth <= MIME_HARD_MAX_DEPTH + 1);
		const struct mime_part *q = p->parent;
		if (q != NULL) {
			CHECK(p->header_offset >= q->body_offset);
			CHECK(p->body_offset + p->body_size <= q->body_offset + q->body_size);
		}
		if (p->next != NULL)
			CHECK(p->next->header_offset >= p->body_offset + p->body_size);
		CHECK(p->kind != MIME_PART_MESSAGE || (p->child_count == 1 && p->children->is_message));
		CHECK(p->kind != MIME_PART_LEAF || p->child_count == 0);
		for (unsigned int h = 0; h < p->header_count; h++) {
			char *d = mime_header_decode(p->headers[h].value);
			CHECK(utf8_valid(d));
			free(d);
			struct mime_address *a = mime_addresses_parse(p->headers[h].value,
								     strlen(p->headers[h].value), 0);
			mime_addresses_free(&a);
		}
	}
}

static void check_exports(const struct mime_message *m)
{
	char *env = mime_envelope_export(m);
	char *body = mime_bodystructure_export(m, false);
	char *bs = mime_bodystructure_export(m, true);
	const char *err;
	if ((err = imap_check_envelope(env, strlen(env))) != NULL) {
		fprintf(stderr, "bad ENVELOPE (%s): %s\n", err, env);
		abort();
	}
	if ((err = imap_check_body(body, strlen(body), false)) != NULL) {
		fprintf(stderr, "bad BODY (%s): %s\n", err, body);
		abort();
	}
	if ((err = imap_check_body(bs, strlen(bs), true)) != NULL) {
		fprintf(stderr, "bad BODYSTRUCTURE (%s): %s\n", err, bs);
		abort();
	}
	free(env);
	free(body);
	free(bs);
}

/* check_sections - every table entry resolves both ways to the same range;
 * returns the table (caller frees) */
static char *check_sections(const struct mime_message *m, size_t len)
{
	char *table = mime_sections_export(m);
	const char *line = table;
	while (*line != '\0') {
		const char *eol = strchr(line, '\n');
		const char *close = strchr(line, ']');
		CHECK(eol != NULL && close != NULL && close < eol && line[0] == '[');
		char sect[512];
		size_t sl = (size_t)(close - line - 1);
		CHECK(sl < sizeof(sect));
		memcpy(sect, line + 1, sl);
		sect[sl] = '\0';
		struct mime_range r1, r2;
		const char *err;
		CHECK(mime_section_range(m, sect, &r1, &err) == 0);
		CHECK(mime_sections_lookup(table, sect, &r2) == 0);
		CHECK(r1.offset == r2.offset && r1.size == r2.size);
		CHECK(r1.offset + r1.size <= len);
		line = eol + 1;
	}
	static const char *const extra[] = { "", "1", "2", "1.1", "1.2.3", "MIME", "1.MIME",
					     "1.HEADER", "2.TEXT", "HEADER.FIELDS (From)", "0", "1." };
	for (size_t i = 0; i < N_ELEMENTS(extra); i++) {
		struct mime_range r1, r2;
		const char *err;
		int a = mime_section_range(m, extra[i], &r1, &err);
		int b = mime_sections_lookup(table, extra[i], &r2);
		CHECK(a == b);
		CHECK(a < 0 || (r1.offset == r2.offset && r1.size == r2.size));
	}
	return table;
}

/* check_twin - the same message with CRLF line ends */
static void check_twin(const struct mime_message *m, const uint8_t *msg, size_t len,
		       const char *table)
{
	char *twin = xmalloc(2 * len + 1);
	size_t tl = 0;
	for (size_t i = 0; i < len; i++) {
		if (msg[i] == '\n')
			twin[tl++] = '\r';
		twin[tl++] = (char)msg[i];
	}
	struct mime_message *m2;
	const char *err;
	CHECK(mime_parse((const uint8_t *)twin, tl, NULL, &m2, &err) == 0);
	CHECK(mime_message_part_count(m2) == mime_message_part_count(m));
	for (unsigned int i = 0; i < mime_message_part_count(m); i++) {
		const struct mime_part *a = mime_message_part(m, i), *b = mime_message_part(m2, i);
		CHECK(a->kind == b->kind && a->lines == b->lines && a->flags == b->flags);
	}
	char *table2 = mime_sections_export(m2);
	for (const char *line = table; *line != '\0';) {
		const char *eol = strchr(line, '\n');
		const char *close = strchr(line, ']');
		char sect[512];
		size_t sl = (size_t)(close - line - 1);
		memcpy(sect, line + 1, sl);
		sect[sl] = '\0';
		struct mime_range r1, r2;
		CHECK(mime_sections_lookup(table, sect, &r1) == 0);
		CHECK(mime_sections_lookup(table2, sect, &r2) == 0);
		size_t o = 0;
		for (size_t i = 0; i < r1.size; i++) {
			if (msg[r1.offset + i] == '\n') {
				CHECK(o < r2.size && twin[r2.offset + o] == '\r');
				o++;
			}
			CHECK(o < r2.size && (uint8_t)twin[r2.offset + o] == msg[r1.offset + i]);
			o++;
		}
		CHECK(o == r2.size);
		line = eol + 1;
	}
	free(table2);
	mime_message_free(&m2);
	free(twin);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	bool tiny = (data[0] & 1) != 0;
	const uint8_t *msg = data + 1;
	size_t len = size - 1;
	struct mime_limits lim = { 0 };
	if (tiny) {
		lim.max_depth = 1 + (data[0] >> 1 & 3);
		lim.max_parts = 2 + (data[0] >> 3 & 7);
		lim.max_header_line = 8 + (data[0] >> 6) * 16;
		lim.max_headers = 3;
		lim.max_boundary_len = 4;
		lim.max_size = len / 2 + 1;
		lim.max_params = 2;
		lim.max_addresses = 2;
	}
	/* an exact-size copy so that reading past the end is caught */
	uint8_t *copy = xmemdup(msg, len);
	struct mime_message *m;
	const char *err;
	CHECK(mime_parse(copy, len, tiny ? &lim : NULL, &m, &err) == 0);
	check_tree(m, len);
	check_exports(m);
	char *table = check_sections(m, len);
	if (!tiny && len <= TWIN_MAX_LEN && memchr(msg, '\r', len) == NULL)
		check_twin(m, copy, len, table);
	free(table);
	mime_message_free(&m);
	CHECK(m == NULL);

	size_t dl = MAIL_MIN(len, (size_t)DIRECT_MAX_LEN);
	char *d = mime_header_decode_n((const char *)copy, dl);
	CHECK(utf8_valid(d));
	free(d);
	struct mime_address *a = mime_addresses_parse((const char *)copy, dl, tiny ? 3 : 0);
	for (const struct mime_address *x = a; x != NULL; x = x->next)
		CHECK(x->host == NULL || x->mailbox != NULL);
	mime_addresses_free(&a);
	free(copy);
	return 0;
}
