/* mime_rfc2047.c - charset conversion to UTF-8 and RFC 2047 encoded-word
 * decoding of header text (for SEARCH and SORT). No iconv: the charsets mail
 * really uses in the West are tables here; anything else keeps its bytes
 * where they are valid UTF-8 and gets U+FFFD elsewhere, so the output is
 * always valid UTF-8. Every scan is linear in the input. */
#include "lib/common.h"
#include "lib/base64.h"

#include <stdlib.h>

#include "lib/xalloc.h"
#include "router/mime_private.h"

static const uint16_t cp1252_80_9f[32] = {
	0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
	0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,
	0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
	0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
};

static const struct {
	const char *name;
	enum mime_charset cs;
} charset_names[] = {
	{ "utf-8", MIME_CS_UTF8 }, { "utf8", MIME_CS_UTF8 },
	{ "us-ascii", MIME_CS_ASCII }, { "ascii", MIME_CS_ASCII }, { "us", MIME_CS_ASCII },
	{ "ansi_x3.4-1968", MIME_CS_ASCII }, { "iso646-us", MIME_CS_ASCII },
	{ "iso-8859-1", MIME_CS_1252 }, { "iso8859-1", MIME_CS_1252 },
	{ "iso_8859-1", MIME_CS_1252 }, { "iso_8859-1:1987", MIME_CS_1252 },
	{ "latin1", MIME_CS_1252 }, { "latin-1", MIME_CS_1252 }, { "l1", MIME_CS_1252 },
	{ "cp819", MIME_CS_1252 }, { "ibm819", MIME_CS_1252 }, { "iso-ir-100", MIME_CS_1252 },
	{ "windows-1252", MIME_CS_1252 }, { "cp1252", MIME_CS_1252 }, { "x-cp1252", MIME_CS_1252 },
	{ "iso-8859-15", MIME_CS_8859_15 }, { "iso8859-15", MIME_CS_8859_15 },
	{ "iso_8859-15", MIME_CS_8859_15 }, { "latin-9", MIME_CS_8859_15 },
	{ "latin9", MIME_CS_8859_15 }, { "l9", MIME_CS_8859_15 },
};

/* mime_charset_lookup - charset by (case-insensitive) name; unknown is OTHER */
enum mime_charset mime_charset_lookup(const char *name, size_t len)
{
	for (size_t i = 0; i < N_ELEMENTS(charset_names); i++) {
		if (strlen(charset_names[i].name) == len &&
		    mime_memieq(charset_names[i].name, name, len))
			return charset_names[i].cs;
	}
	return MIME_CS_OTHER;
}

/* utf8_put - append one code point */
static void utf8_put(struct mime_buf *out, uint32_t cp)
{
	char s[4];
	size_t n;
	if (cp < 0x80) {
		s[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		s[0] = (char)(0xC0 | (cp >> 6));
		s[1] = (char)(0x80 | (cp & 0x3F));
		n = 2;
	} else if (cp < 0x10000) {
		s[0] = (char)(0xE0 | (cp >> 12));
		s[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		s[2] = (char)(0x80 | (cp & 0x3F));
		n = 3;
	} else {
		s[0] = (char)(0xF0 | (cp >> 18));
		s[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		s[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		s[3] = (char)(0x80 | (cp & 0x3F));
		n = 4;
	}
	mime_buf_append(out, s, n);
}

/* utf8_seq_len - length of the valid UTF-8 sequence at p (<= n), 0 if invalid */
static size_t utf8_seq_len(const uint8_t *p, size_t n)
{
	uint8_t c = p[0];
	size_t need;
	uint32_t cp, min;
	if (c < 0x80)
		return 1;
	if ((c & 0xE0) == 0xC0) {
		need = 1, cp = c & 0x1F, min = 0x80;
	} else if ((c & 0xF0) == 0xE0) {
		need = 2, cp = c & 0x0F, min = 0x800;
	} else if ((c & 0xF8) == 0xF0) {
		need = 3, cp = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (need >= n)
		return 0;
	for (size_t i = 1; i <= need; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return need + 1;
}

void mime_utf8_append_valid(struct mime_buf *out, const uint8_t *p, size_t n)
{
	size_t run = 0, i = 0;
	if (n == 0)
		return;		/* p may be NULL */
	while (i < n) {
		if (p[i] != 0 && p[i] < 0x80) {
			i++;
			continue;
		}
		size_t l = p[i] == 0 ? 0 : utf8_seq_len(p + i, n - i);
		if (l > 0) {
			i += l;
			continue;
		}
		mime_buf_append(out, p + run, i - run);
		if (p[i] != 0)
			mime_buf_append(out, "\xEF\xBF\xBD", 3);
		i++;
		run = i;
	}
	mime_buf_append(out, p + run, n - run);
}

void mime_charset_to_utf8(struct mime_buf *out, enum mime_charset cs, const uint8_t *p, size_t n)
{
	if (cs != MIME_CS_1252 && cs != MIME_CS_8859_15) {
		mime_utf8_append_valid(out, p, n);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t c = p[i];
		if (c == 0)
			continue;
		if (c < 0x80) {
			mime_buf_putc(out, (char)c);
			continue;
		}
		if (cs == MIME_CS_1252 && c < 0xA0) {
			c = cp1252_80_9f[c - 0x80];
		} else if (cs == MIME_CS_8859_15) {
			switch (c) {
			case 0xA4: c = 0x20AC; break;
			case 0xA6: c = 0x0160; break;
			case 0xA8: c = 0x0161; break;
			case 0xB4: c = 0x017D; break;
			case 0xB8: c = 0x017E; break;
			case 0xBC: c = 0x0152; break;
			case 0xBD: c = 0x0153; break;
			case 0xBE: c = 0x0178; break;
			default: break;
			}
		}
		utf8_put(out, c);
	}
}

/* one parsed "=?charset?enc?text?=" */
struct encoded_word {
	const uint8_t *charset;
	size_t charset_len;	/* without an RFC 2231 "*language" suffix */
	char enc;		/* 'b' or 'q' */
	const uint8_t *text;
	size_t text_len;
};

/* ew_parse - length of the encoded word at s, 0 if there is none. Stops at
 * the first '?' or blank, so repeated attempts stay linear overall. */
static size_t ew_parse(const uint8_t *s, size_t n, struct encoded_word *w)
{
	if (n < 8 || s[0] != '=' || s[1] != '?')
		return 0;
	size_t i = 2;
	while (i < n && i - 2 <= MIME_CHARSET_NAME_MAX && s[i] != '?' && s[i] > ' ' && s[i] < 0x7F)
		i++;
	if (i >= n || s[i] != '?' || i == 2 || i - 2 > MIME_CHARSET_NAME_MAX)
		return 0;
	w->charset = s + 2;
	w->charset_len = i - 2;
	const uint8_t *star = memchr(w->charset, '*', w->charset_len);
	if (star != NULL)
		w->charset_len = (size_t)(star - w->charset);
	i++;
	if (i + 1 >= n || s[i + 1] != '?')
		return 0;
	w->enc = (char)mime_lower(s[i]);
	if (w->enc != 'b' && w->enc != 'q')
		return 0;
	i += 2;
	size_t start = i;
	while (i < n && s[i] != '?' && s[i] > ' ' && s[i] < 0x7F)
		i++;
	if (i + 1 >= n || s[i] != '?' || s[i + 1] != '=')
		return 0;
	w->text = s + start;
	w->text_len = i - start;
	return i + 2;
}

static int hexval(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = mime_lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* ew_decode - append the word's octets (still in its charset) to out */
static void ew_decode(struct mime_buf *out, const struct encoded_word *w)
{
	if (w->enc == 'q') {
		for (size_t i = 0; i < w->text_len; i++) {
			uint8_t c = w->text[i];
			if (c == '_') {
				mime_buf_putc(out, ' ');
			} else if (c == '=' && i + 2 < w->text_len && hexval(w->text[i + 1]) >= 0 &&
				   hexval(w->text[i + 2]) >= 0) {
				mime_buf_putc(out, (char)(hexval(w->text[i + 1]) * 16 + hexval(w->text[i + 2])));
				i += 2;
			} else {
				mime_buf_putc(out, (char)c);
			}
		}
		return;
	}
	uint32_t acc = 0;
	unsigned int bits = 0;
	for (size_t i = 0; i < w->text_len; i++) {
		int v = base64_digit((unsigned char)w->text[i]);
		if (w->text[i] == '=')
			break;
		if (v < 0)
			continue;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			mime_buf_putc(out, (char)((acc >> bits) & 0xFF));
		}
	}
}

/* decoder state: octets of adjacent words in one charset wait in pend so a
 * character split across two words comes out whole */
struct decoder {
	struct mime_buf out;
	struct mime_buf pend;
	enum mime_charset cs;
	char csname[MIME_CHARSET_NAME_MAX + 1];
};

/* dec_flush - convert the pending octets of encoded words to UTF-8 */
static void dec_flush(struct decoder *d)
{
	if (d->pend.len > 0)
		mime_charset_to_utf8(&d->out, d->cs, (const uint8_t *)d->pend.data, d->pend.len);
	d->pend.len = 0;
}

/* dec_raw - text outside encoded words: line breaks removed, made valid UTF-8 */
static void dec_raw(struct decoder *d, const uint8_t *p, size_t n)
{
	size_t start = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\r' || p[i] == '\n') {
			mime_utf8_append_valid(&d->out, p + start, i - start);
			start = i + 1;
		}
	}
	mime_utf8_append_valid(&d->out, p + start, n - start);
}

static bool only_blanks(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
			return false;
	}
	return true;
}

char *mime_header_decode_n(const char *raw, size_t len)
{
	const uint8_t *s = (const uint8_t *)raw;
	struct decoder d;
	memset(&d, 0, sizeof(d));
	size_t raw_start = 0, i = 0;
	bool last_ew = false;
	while (i < len) {
		struct encoded_word w;
		size_t wl;
		if (s[i] != '=' || (wl = ew_parse(s + i, len - i, &w)) == 0) {
			i++;
			continue;
		}
		if (!last_ew || !only_blanks(s + raw_start, i - raw_start)) {
			dec_flush(&d);
			dec_raw(&d, s + raw_start, i - raw_start);
		}
		if (d.pend.len > 0 &&
		    (strlen(d.csname) != w.charset_len || !mime_memieq(d.csname, w.charset, w.charset_len)))
			dec_flush(&d);
		memcpy(d.csname, w.charset, w.charset_len);
		d.csname[w.charset_len] = '\0';
		d.cs = mime_charset_lookup(d.csname, w.charset_len);
		ew_decode(&d.pend, &w);
		i += wl;
		raw_start = i;
		last_ew = true;
	}
	dec_flush(&d);
	dec_raw(&d, s + raw_start, len - raw_start);
	mime_buf_free(&d.pend);
	return mime_buf_steal(&d.out);
}

char *mime_header_decode(const char *raw)
{
	return mime_header_decode_n(raw, strlen(raw));
}
