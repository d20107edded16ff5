/* imap_check.h - a strict checker of IMAP ENVELOPE / BODY / BODYSTRUCTURE
 * strings against the RFC 3501 section 9 grammar, shared by
 * tests/unit/test_mime.c and tests/fuzz/fuzz_mime.c (header-only, static).
 * Stricter than the grammar where router/mime_export.c promises more: the
 * extension data is all four fields or none, the media type decides the
 * body form (message/rfc822 with envelope, text with lines), quoted strings
 * have only the two escapes, literals carry no NUL, and group markers in an
 * address list are balanced. Recursion depth is capped by the caller. */
#ifndef TESTS_MIME_IMAP_CHECK_H
#define TESTS_MIME_IMAP_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define IMAP_CHECK_MAX_DEPTH 250

struct imap_check {
	const char *p, *end;
	const char *err;
	bool extended;
	unsigned int depth;
};

static bool ic_fail(struct imap_check *c, const char *why)
{
	if (c->err == NULL)
		c->err = why;
	return false;
}

static bool ic_lit(struct imap_check *c, const char *s)
{
	size_t n = strlen(s);
	if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0)
		return ic_fail(c, s);
	c->p += n;
	return true;
}

static bool ic_peek(const struct imap_check *c, char ch)
{
	return c->p < c->end && *c->p == ch;
}

static bool ic_nil(struct imap_check *c)
{
	if ((size_t)(c->end - c->p) >= 3 && memcmp(c->p, "NIL", 3) == 0) {
		c->p += 3;
		return true;
	}
	return false;
}

/* ic_string - quoted or literal; the value (unescaped for quoted) copied to
 * out (truncated to out_size - 1) when out is not NULL */
static bool ic_string(struct imap_check *c, char *out, size_t out_size)
{
	size_t o = 0;
	if (ic_peek(c, '"')) {
		c->p++;
		while (c->p < c->end && *c->p != '"') {
			unsigned char ch = (unsigned char)*c->p++;
			if (ch == '\\') {
				if (c->p >= c->end || (*c->p != '"' && *c->p != '\\'))
					return ic_fail(c, "bad escape in quoted string");
				ch = (unsigned char)*c->p++;
			} else if (ch == 0 || ch == '\r' || ch == '\n' || ch >= 0x80) {
				return ic_fail(c, "bad char in quoted string");
			}
			if (out != NULL && o + 1 < out_size)
				out[o++] = (char)ch;
		}
		if (!ic_lit(c, "\""))
			return false;
	} else if (ic_peek(c, '{')) {
		c->p++;
		size_t n = 0;
		const char *d = c->p;
		while (c->p < c->end && *c->p >= '0' && *c->p <= '9' && n < ((size_t)1 << 40))
			n = n * 10 + (size_t)(*c->p++ - '0');
		if (c->p == d || !ic_lit(c, "}\r\n"))
			return ic_fail(c, "bad literal");
		if ((size_t)(c->end - c->p) < n)
			return ic_fail(c, "short literal");
		if (memchr(c->p, '\0', n) != NULL)
			return ic_fail(c, "NUL in literal");
		for (size_t i = 0; i < n && out != NULL && o + 1 < out_size; i++)
			out[o++] = c->p[i];
		c->p += n;
	} else {
		return ic_fail(c, "string expected");
	}
	if (out != NULL && out_size > 0)
		out[o] = '\0';
	return true;
}

static bool ic_nstring(struct imap_check *c, bool *nil_r)
{
	bool nil = ic_nil(c);
	if (nil_r != NULL)
		*nil_r = nil;
	return nil || ic_string(c, NULL, 0);
}

static bool ic_number(struct imap_check *c)
{
	const char *d = c->p;
	unsigned long long n = 0;
	while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
		n = n * 10 + (unsigned long long)(*c->p++ - '0');
		if (n > 4294967295ULL)
			return ic_fail(c, "number over 32 bits");
	}
	return c->p > d || ic_fail(c, "number expected");
}

/* body-fld-param */
static bool ic_params(struct imap_check *c)
{
	if (ic_nil(c))
		return true;
	if (!ic_lit(c, "("))
		return false;
	for (bool first = true; !ic_peek(c, ')'); first = false) {
		if (!first && !ic_lit(c, " "))
			return false;
		if (!ic_string(c, NULL, 0) || !ic_lit(c, " ") || !ic_string(c, NULL, 0))
			return false;
	}
	return ic_lit(c, ")");
}

/* env-from etc.: "(" 1*address ")" / nil, with balanced group markers */
static bool ic_addresses(struct imap_check *c)
{
	if (ic_nil(c))
		return true;
	if (!ic_lit(c, "("))
		return false;
	bool in_group = false;
	unsigned int count = 0;
	while (ic_peek(c, '(')) {
		bool name_nil, adl_nil, mbox_nil, host_nil;
		c->p++;
		if (!ic_nstring(c, &name_nil) || !ic_lit(c, " ") || !ic_nstring(c, &adl_nil) ||
		    !ic_lit(c, " ") || !ic_nstring(c, &mbox_nil) || !ic_lit(c, " ") ||
		    !ic_nstring(c, &host_nil) || !ic_lit(c, ")"))
			return false;
		if (host_nil && !mbox_nil) {
			if (in_group)
				return ic_fail(c, "nested group");
			in_group = true;
		} else if (host_nil && mbox_nil) {
			if (!in_group)
				return ic_fail(c, "group end without start");
			in_group = false;
		} else if (mbox_nil) {
			return ic_fail(c, "host without mailbox");
		}
		count++;
	}
	if (count == 0)
		return ic_fail(c, "empty address list");
	if (in_group)
		return ic_fail(c, "unterminated group");
	return ic_lit(c, ")");
}

static bool ic_envelope(struct imap_check *c)
{
	if (!ic_lit(c, "(") || !ic_nstring(c, NULL) || !ic_lit(c, " ") || !ic_nstring(c, NULL))
		return false;
	for (int i = 0; i < 6; i++) {
		if (!ic_lit(c, " ") || !ic_addresses(c))
			return false;
	}
	return ic_lit(c, " ") && ic_nstring(c, NULL) && ic_lit(c, " ") && ic_nstring(c, NULL) &&
	       ic_lit(c, ")");
}

/* dsp SP lang SP loc */
static bool ic_ext_common(struct imap_check *c)
{
	if (!ic_nil(c)) {
		if (!ic_lit(c, "(") || !ic_string(c, NULL, 0) || !ic_lit(c, " ") || !ic_params(c) ||
		    !ic_lit(c, ")"))
			return false;
	}
	if (!ic_lit(c, " "))
		return false;
	if (ic_peek(c, '(')) {
		c->p++;
		for (bool first = true; !ic_peek(c, ')'); first = false) {
			if ((!first && !ic_lit(c, " ")) || !ic_string(c, NULL, 0))
				return false;
		}
		c->p++;
	} else if (!ic_nstring(c, NULL)) {
		return false;
	}
	return ic_lit(c, " ") && ic_nstring(c, NULL);
}

static bool ic_ieq(const char *a, const char *b)
{
	for (; *a != '\0' && *b != '\0'; a++, b++) {
		char x = *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a;
		char y = *b >= 'A' && *b <= 'Z' ? (char)(*b + 32) : *b;
		if (x != y)
			return false;
	}
	return *a == *b;
}

static bool ic_body(struct imap_check *c)
{
	if (++c->depth > IMAP_CHECK_MAX_DEPTH)
		return ic_fail(c, "too deep");
	if (!ic_lit(c, "("))
		return false;
	if (ic_peek(c, '(')) {
		while (ic_peek(c, '(')) {
			if (!ic_body(c))
				return false;
		}
		if (!ic_lit(c, " ") || !ic_string(c, NULL, 0))
			return false;
		if (c->extended &&
		    (!ic_lit(c, " ") || !ic_params(c) || !ic_lit(c, " ") || !ic_ext_common(c)))
			return false;
	} else {
		char type[32], subtype[32];
		if (!ic_string(c, type, sizeof(type)) || !ic_lit(c, " ") ||
		    !ic_string(c, subtype, sizeof(subtype)) || !ic_lit(c, " ") || !ic_params(c) ||
		    !ic_lit(c, " ") || !ic_nstring(c, NULL) || !ic_lit(c, " ") || !ic_nstring(c, NULL) ||
		    !ic_lit(c, " ") || !ic_string(c, NULL, 0) || !ic_lit(c, " ") || !ic_number(c))
			return false;
		if (ic_ieq(type, "multipart"))
			return ic_fail(c, "multipart as a single part");
		if (ic_ieq(type, "message") && ic_ieq(subtype, "rfc822")) {
			if (!ic_lit(c, " ") || !ic_envelope(c) || !ic_lit(c, " ") || !ic_body(c) ||
			    !ic_lit(c, " ") || !ic_number(c))
				return false;
		} else if (ic_ieq(type, "text")) {
			if (!ic_lit(c, " ") || !ic_number(c))
				return false;
		}
		if (c->extended && (!ic_lit(c, " ") || !ic_nstring(c, NULL) || !ic_lit(c, " ") ||
				    !ic_ext_common(c)))
			return false;
	}
	c->depth--;
	return ic_lit(c, ")");
}

/* imap_check_body - NULL if s is a valid BODY (extended=false) or
 * BODYSTRUCTURE, else what is wrong */
static const char *imap_check_body(const char *s, size_t len, bool extended)
{
	struct imap_check c = { s, s + len, NULL, extended, 0 };
	if (ic_body(&c) && c.p != c.end)
		ic_fail(&c, "trailing bytes");
	return c.err;
}

/* imap_check_envelope - NULL if s is a valid ENVELOPE */
static const char *imap_check_envelope(const char *s, size_t len)
{
	struct imap_check c = { s, s + len, NULL, false, 0 };
	if (ic_envelope(&c) && c.p != c.end)
		ic_fail(&c, "trailing bytes");
	return c.err;
}

#endif
