/* mime_export.c - the IMAP ENVELOPE, BODY and BODYSTRUCTURE strings (RFC 3501
 * 7.4.2 and 9; RFC 9051 7.5.2) from a parsed tree. Strings are quoted when
 * they are short 7-bit text without CR/LF, else {n} literals. Recursion
 * follows the tree, whose height the parser bounds by MIME_HARD_MAX_DEPTH. */
#include "lib/common.h"

#include <stdlib.h>

#include "lib/xalloc.h"
#include "router/mime_private.h"

/* RFC 2046 5.1: a multipart needs one part; an empty one gets this (as Dovecot) */
#define EMPTY_BODY "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)"
#define EMPTY_BODYSTRUCTURE \
	"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0 NIL NIL NIL NIL)"

/* imap_string - quoted or literal */
static void imap_string(struct mime_buf *b, const char *s, size_t n)
{
	bool literal = n > MIME_IMAP_QUOTED_MAX;
	for (size_t i = 0; i < n && !literal; i++) {
		uint8_t c = (uint8_t)s[i];
		literal = c == '\r' || c == '\n' || c >= 0x80 || c == 0;
	}
	if (literal) {
		mime_buf_printf(b, "{%zu}\r\n", n);
		mime_buf_append(b, s, n);
		return;
	}
	mime_buf_putc(b, '"');
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '"' || s[i] == '\\') {
			mime_buf_append(b, s + run, i - run);
			mime_buf_putc(b, '\\');
			run = i;
		}
	}
	mime_buf_append(b, s + run, n - run);
	mime_buf_putc(b, '"');
}

static void imap_nstring(struct mime_buf *b, const char *s)
{
	if (s == NULL)
		mime_buf_puts(b, "NIL");
	else
		imap_string(b, s, strlen(s));
}

static void imap_number(struct mime_buf *b, uint64_t n)
{
	/* body-fld-octets and -lines are 32-bit numbers in RFC 3501 */
	mime_buf_printf(b, "%llu", (unsigned long long)MAIL_MIN(n, (uint64_t)UINT32_MAX));
}

/* find_field - first header field of p called name */
static const char *find_field(const struct mime_part *p, const char *name)
{
	for (unsigned int i = 0; i < p->header_count; i++) {
		if (mime_strieq(p->headers[i].name, name))
			return p->headers[i].value;
	}
	return NULL;
}

/* export_params - body-fld-param; RFC 2231 values that are not plain ASCII in
 * a known charset go out as name* with their "charset'lang'%XX" form */
static void export_params(struct mime_buf *b, const struct mime_param *params, unsigned int n)
{
	if (n == 0) {
		mime_buf_puts(b, "NIL");
		return;
	}
	mime_buf_putc(b, '(');
	for (unsigned int i = 0; i < n; i++) {
		if (i > 0)
			mime_buf_putc(b, ' ');
		if (params[i].ext_value != NULL) {
			size_t nl = strlen(params[i].name);
			char *name = xmalloc(nl + 2);
			memcpy(name, params[i].name, nl);
			name[nl] = '*';
			name[nl + 1] = '\0';
			imap_nstring(b, name);
			free(name);
			mime_buf_putc(b, ' ');
			imap_nstring(b, params[i].ext_value);
		} else {
			imap_nstring(b, params[i].name);
			mime_buf_putc(b, ' ');
			imap_nstring(b, params[i].value);
		}
	}
	mime_buf_putc(b, ')');
}

/* export_ext_common - body-fld-dsp SP body-fld-lang SP body-fld-loc */
static void export_ext_common(struct mime_buf *b, const struct mime_part *p)
{
	if (p->disposition == NULL) {
		mime_buf_puts(b, "NIL");
	} else {
		mime_buf_putc(b, '(');
		imap_nstring(b, p->disposition);
		mime_buf_putc(b, ' ');
		export_params(b, p->disp_params, p->disp_param_count);
		mime_buf_putc(b, ')');
	}
	mime_buf_putc(b, ' ');
	if (p->language_count == 0) {
		mime_buf_puts(b, "NIL");
	} else {
		mime_buf_putc(b, '(');
		for (unsigned int i = 0; i < p->language_count; i++) {
			if (i > 0)
				mime_buf_putc(b, ' ');
			imap_nstring(b, p->languages[i]);
		}
		mime_buf_putc(b, ')');
	}
	mime_buf_putc(b, ' ');
	imap_nstring(b, p->location);
}

/* export_addresses - "(" 1*address ")" or NIL; false if the list is empty */
static bool export_addresses(struct mime_buf *b, const char *value, unsigned int max)
{
	struct mime_address *list = value != NULL ? mime_addresses_parse(value, strlen(value), max) : NULL;
	if (list == NULL)
		return false;
	mime_buf_putc(b, '(');
	for (const struct mime_address *a = list; a != NULL; a = a->next) {
		mime_buf_putc(b, '(');
		imap_nstring(b, a->name);
		mime_buf_putc(b, ' ');
		imap_nstring(b, a->route);
		mime_buf_putc(b, ' ');
		imap_nstring(b, a->mailbox);
		mime_buf_putc(b, ' ');
		imap_nstring(b, a->host);
		mime_buf_putc(b, ')');
	}
	mime_buf_putc(b, ')');
	mime_addresses_free(&list);
	return true;
}

/* export_envelope - RFC 3501 envelope of the message node p; Sender and
 * Reply-To absent or empty take From's value */
static void export_envelope(struct mime_buf *b, const struct mime_part *p, unsigned int max_addr)
{
	const char *from = find_field(p, "From");
	mime_buf_putc(b, '(');
	imap_nstring(b, find_field(p, "Date"));
	mime_buf_putc(b, ' ');
	imap_nstring(b, find_field(p, "Subject"));
	mime_buf_putc(b, ' ');
	if (!export_addresses(b, from, max_addr))
		mime_buf_puts(b, "NIL");
	static const char *const with_default[] = { "Sender", "Reply-To" };
	for (size_t i = 0; i < N_ELEMENTS(with_default); i++) {
		mime_buf_putc(b, ' ');
		if (!export_addresses(b, find_field(p, with_default[i]), max_addr) &&
		    !export_addresses(b, from, max_addr))
			mime_buf_puts(b, "NIL");
	}
	static const char *const plain[] = { "To", "Cc", "Bcc" };
	for (size_t i = 0; i < N_ELEMENTS(plain); i++) {
		mime_buf_putc(b, ' ');
		if (!export_addresses(b, find_field(p, plain[i]), max_addr))
			mime_buf_puts(b, "NIL");
	}
	mime_buf_putc(b, ' ');
	imap_nstring(b, find_field(p, "In-Reply-To"));
	mime_buf_putc(b, ' ');
	imap_nstring(b, find_field(p, "Message-ID"));
	mime_buf_putc(b, ')');
}

/* opaque_container - a multipart or message/rfc822 the parser did not open:
 * sent as application/octet-stream, since a client reading "multipart" or
 * "message" "rfc822" expects the structure that goes with it */
static bool opaque_container(const struct mime_part *p)
{
	if (p->kind != MIME_PART_LEAF)
		return false;
	return strcmp(p->type, "multipart") == 0 ||
	       (strcmp(p->type, "message") == 0 && strcmp(p->subtype, "rfc822") == 0);
}

/* export_body - one body (RFC 3501 "body"): a multipart with its children,
 * or a single part with, for message/rfc822, the envelope and body inside */
static void export_body(struct mime_buf *b, const struct mime_part *p, bool ext, unsigned int max_addr)
{
	if (p->kind == MIME_PART_MULTIPART) {
		mime_buf_putc(b, '(');
		if (p->children == NULL)
			mime_buf_puts(b, ext ? EMPTY_BODYSTRUCTURE : EMPTY_BODY);
		for (const struct mime_part *c = p->children; c != NULL; c = c->next)
			export_body(b, c, ext, max_addr);
		mime_buf_putc(b, ' ');
		imap_nstring(b, p->subtype);
		if (ext) {
			mime_buf_putc(b, ' ');
			export_params(b, p->params, p->param_count);
			mime_buf_putc(b, ' ');
			export_ext_common(b, p);
		}
		mime_buf_putc(b, ')');
		return;
	}
	bool opaque = opaque_container(p);
	mime_buf_putc(b, '(');
	if (opaque) {
		mime_buf_puts(b, "\"application\" \"octet-stream\"");
	} else {
		imap_nstring(b, p->type);
		mime_buf_putc(b, ' ');
		imap_nstring(b, p->subtype);
	}
	mime_buf_putc(b, ' ');
	export_params(b, p->params, p->param_count);
	mime_buf_putc(b, ' ');
	imap_nstring(b, p->id);
	mime_buf_putc(b, ' ');
	imap_nstring(b, p->description);
	mime_buf_putc(b, ' ');
	imap_nstring(b, p->encoding);
	mime_buf_putc(b, ' ');
	imap_number(b, p->body_size);
	if (p->kind == MIME_PART_MESSAGE) {
		mime_buf_putc(b, ' ');
		export_envelope(b, p->children, max_addr);
		mime_buf_putc(b, ' ');
		export_body(b, p->children, ext, max_addr);
		mime_buf_putc(b, ' ');
		imap_number(b, p->lines);
	} else if (!opaque && strcmp(p->type, "text") == 0) {
		mime_buf_putc(b, ' ');
		imap_number(b, p->lines);
	}
	if (ext) {
		mime_buf_putc(b, ' ');
		imap_nstring(b, p->md5);
		mime_buf_putc(b, ' ');
		export_ext_common(b, p);
	}
	mime_buf_putc(b, ')');
}

char *mime_part_envelope_export(const struct mime_message *m, const struct mime_part *p)
{
	struct mime_buf b = { 0 };
	if (p->kind == MIME_PART_MESSAGE)
		p = p->children;
	export_envelope(&b, p, m->lim.max_addresses);
	return mime_buf_steal(&b);
}

char *mime_part_bodystructure_export(const struct mime_message *m, const struct mime_part *p,
				     bool extended)
{
	struct mime_buf b = { 0 };
	export_body(&b, p, extended, m->lim.max_addresses);
	return mime_buf_steal(&b);
}

char *mime_envelope_export(const struct mime_message *m)
{
	return mime_part_envelope_export(m, m->parts[0]);
}

char *mime_bodystructure_export(const struct mime_message *m, bool extended)
{
	return mime_part_bodystructure_export(m, m->parts[0], extended);
}
