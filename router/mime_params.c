/* mime_params.c - the Content-* header fields: "type/subtype; a=b" (RFC 2045
 * 5.1), Content-Disposition (RFC 2183), Content-Language (RFC 3282), and RFC
 * 2231 parameter continuations and charsets. Values are unfolded header
 * values (C strings); results are owned by the part. Lenient: comments and
 * blanks anywhere, junk skipped up to the next ';', unquoted values that
 * contain spaces kept whole. The number of parameters is bounded, so the
 * merge (quadratic in that count) stays small. */
#include "lib/common.h"

#include <stdlib.h>

#include "lib/xalloc.h"
#include "router/mime_private.h"

/* raw parameters kept per field before RFC 2231 merging, per merged one */
#define RAW_PARAMS_PER_PARAM 4
/* highest RFC 2231 section number looked at */
#define RFC2231_MAX_SECTION 999

struct cursor {
	const uint8_t *p, *end;
};

struct raw_param {
	char *attr;	/* lowercased, with any "*N*" suffix */
	struct mime_buf value;
};

static bool is_tspecial(uint8_t c)
{
	return c != 0 && strchr("()<>@,;:\\\"/[]?=", c) != NULL;
}

static bool is_token_char(uint8_t c)
{
	return c > ' ' && c != 0x7F && !is_tspecial(c);
}

/* skip_cfws - blanks, line breaks and (nested) comments; a counter, no recursion */
static void skip_cfws(struct cursor *c)
{
	while (c->p < c->end) {
		uint8_t ch = *c->p;
		if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') {
			c->p++;
			continue;
		}
		if (ch != '(')
			return;
		size_t depth = 0;
		while (c->p < c->end) {
			ch = *c->p++;
			if (ch == '\\' && c->p < c->end)
				c->p++;
			else if (ch == '(')
				depth++;
			else if (ch == ')' && --depth == 0)
				break;
		}
	}
}

/* read_token - length of the token at the cursor (consumed) */
static size_t read_token(struct cursor *c, const uint8_t **start_r)
{
	*start_r = c->p;
	while (c->p < c->end && is_token_char(*c->p))
		c->p++;
	return (size_t)(c->p - *start_r);
}

/* read_quoted - the cursor is on '"': append the unescaped content */
static void read_quoted(struct cursor *c, struct mime_buf *out)
{
	c->p++;
	while (c->p < c->end) {
		uint8_t ch = *c->p++;
		if (ch == '"')
			return;
		if (ch == '\\' && c->p < c->end)
			ch = *c->p++;
		else if (ch == '\r' || ch == '\n')
			continue;
		mime_buf_putc(out, (char)ch);
	}
}

/* skip_to_semicolon - junk up to the next ';' outside quotes and comments */
static void skip_to_semicolon(struct cursor *c)
{
	while (c->p < c->end && *c->p != ';') {
		if (*c->p == '"') {
			struct mime_buf junk = { 0 };
			read_quoted(c, &junk);
			mime_buf_free(&junk);
		} else if (*c->p == '(') {
			skip_cfws(c);
		} else {
			c->p++;
		}
	}
}

static char *dup_lower(const uint8_t *p, size_t n)
{
	char *s = xstrndup((const char *)p, n);
	mime_str_lower(s);
	return s;
}

/* parse_raw_params - "; attr=value" pairs up to the end, at most max */
static unsigned int parse_raw_params(struct cursor *c, unsigned int max, struct raw_param **raw_r,
				     bool *truncated_r)
{
	struct raw_param *raw = NULL;
	unsigned int n = 0;
	for (;;) {
		skip_cfws(c);
		if (c->p >= c->end)
			break;
		if (*c->p != ';') {
			skip_to_semicolon(c);
			continue;
		}
		c->p++;
		skip_cfws(c);
		const uint8_t *a = c->p;
		while (c->p < c->end && *c->p != '=' && *c->p != ';' && *c->p != '"' &&
		       *c->p != '(' && *c->p > ' ')
			c->p++;
		size_t alen = (size_t)(c->p - a);
		skip_cfws(c);
		if (alen == 0 || c->p >= c->end || *c->p != '=')
			continue;	/* no attribute or no value: dropped */
		c->p++;
		skip_cfws(c);
		struct mime_buf v = { 0 };
		if (c->p < c->end && *c->p == '"') {
			read_quoted(c, &v);
		} else {
			const uint8_t *s = c->p;
			while (c->p < c->end && *c->p != ';' && *c->p != '(')
				c->p++;
			const uint8_t *e = c->p;
			while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
				e--;
			mime_buf_append(&v, s, (size_t)(e - s));
		}
		if (n >= max) {
			*truncated_r = true;
			mime_buf_free(&v);
			continue;
		}
		if (v.data == NULL)
			mime_buf_append(&v, "", 0);
		raw = xrealloc(raw, (n + 1) * sizeof(*raw));
		raw[n].attr = dup_lower(a, alen);
		raw[n].value = v;
		n++;
	}
	*raw_r = raw;
	return n;
}

enum attr_kind { ATTR_PLAIN, ATTR_EXT, ATTR_SECTION };

struct attr_info {
	size_t base_len;
	enum attr_kind kind;
	unsigned int section;
	bool section_ext;
};

/* classify - split "name", "name*", "name*N", "name*N*"; other forms are plain names */
static void classify(const char *attr, struct attr_info *ai)
{
	size_t len = strlen(attr);
	const char *star = strchr(attr, '*');
	ai->kind = ATTR_PLAIN;
	ai->base_len = len;
	ai->section = 0;
	ai->section_ext = false;
	if (star == NULL || star == attr)
		return;
	size_t base = (size_t)(star - attr);
	const char *s = star + 1;
	if (*s == '\0') {
		ai->kind = ATTR_EXT;
		ai->base_len = base;
		return;
	}
	unsigned int num = 0;
	const char *d = s;
	while (*d >= '0' && *d <= '9' && num <= RFC2231_MAX_SECTION)
		num = num * 10 + (unsigned int)(*d++ - '0');
	if (d == s || num > RFC2231_MAX_SECTION || (s[0] == '0' && d - s > 1))
		return;
	if (*d == '*' && d[1] == '\0')
		ai->section_ext = true;
	else if (*d != '\0')
		return;
	ai->kind = ATTR_SECTION;
	ai->base_len = base;
	ai->section = num;
}

static int hexval(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = mime_lower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* pct_decode - RFC 2231 %XX octets; a stray '%' stays */
static void pct_decode(struct mime_buf *out, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%' && i + 2 < n && hexval((uint8_t)s[i + 1]) >= 0 &&
		    hexval((uint8_t)s[i + 2]) >= 0) {
			mime_buf_putc(out, (char)(hexval((uint8_t)s[i + 1]) * 16 + hexval((uint8_t)s[i + 2])));
			i += 2;
		} else {
			mime_buf_putc(out, s[i]);
		}
	}
}

static bool is_attribute_char(uint8_t c)
{
	return c > ' ' && c < 0x7F && c != '*' && c != '\'' && c != '%' && !is_tspecial(c);
}

/* decode_ext_first - "charset'lang'%XX": octets to out, charset/lang to cs/lang */
static void decode_ext_first(const char *v, struct mime_buf *out, struct mime_buf *cs,
			     struct mime_buf *lang)
{
	const char *q1 = strchr(v, '\'');
	const char *q2 = q1 != NULL ? strchr(q1 + 1, '\'') : NULL;
	if (q2 == NULL) {
		pct_decode(out, v, strlen(v));
		return;
	}
	mime_buf_append(cs, v, (size_t)(q1 - v));
	mime_buf_append(lang, q1 + 1, (size_t)(q2 - q1 - 1));
	pct_decode(out, q2 + 1, strlen(q2 + 1));
}

/* finish_ext - UTF-8 value and, when needed, the lossless RFC 2231 form */
static void finish_ext(struct mime_param *mp, struct mime_buf *octets, struct mime_buf *cs,
		       struct mime_buf *lang)
{
	/* an empty charset ("''value", or no quotes at all) says nothing: ASCII */
	enum mime_charset cset = cs->len == 0 ? MIME_CS_ASCII : mime_charset_lookup(cs->data, cs->len);
	struct mime_buf v = { 0 };
	mime_charset_to_utf8(&v, cset, (const uint8_t *)octets->data, octets->len);
	mp->value = mime_buf_steal(&v);
	bool plain = cset != MIME_CS_OTHER;
	for (size_t i = 0; i < octets->len && plain; i++) {
		uint8_t c = (uint8_t)octets->data[i];
		plain = c >= 0x20 && c < 0x7F;
	}
	if (plain)
		return;
	struct mime_buf e = { 0 };
	mime_buf_append(&e, cs->data, cs->len);
	mime_buf_putc(&e, '\'');
	mime_buf_append(&e, lang->data, lang->len);
	mime_buf_putc(&e, '\'');
	for (size_t i = 0; i < octets->len; i++) {
		uint8_t c = (uint8_t)octets->data[i];
		if (is_attribute_char(c))
			mime_buf_putc(&e, (char)c);
		else
			mime_buf_printf(&e, "%%%02X", c);
	}
	mp->ext_value = mime_buf_steal(&e);
}

/* same_base - raw[a] and raw[b] name the same parameter */
static bool same_base(const struct raw_param *raw, const struct attr_info *info, unsigned int a,
		      unsigned int b)
{
	return info[a].base_len == info[b].base_len &&
	       memcmp(raw[a].attr, raw[b].attr, info[a].base_len) == 0;
}

/* merge_one - the parameter called raw[i]'s base name, from the best form:
 * continuations (if section 0 exists), else name*, else name. info holds
 * every raw attribute classified once. */
static void merge_one(struct raw_param *raw, const struct attr_info *info, unsigned int n,
		      unsigned int i, struct mime_param *mp)
{
	const char *base = raw[i].attr;
	size_t base_len = info[i].base_len;
	int plain = -1, ext = -1;
	bool have_section0 = false;
	for (unsigned int j = i; j < n; j++) {
		if (!same_base(raw, info, i, j))
			continue;
		if (info[j].kind == ATTR_PLAIN && plain < 0)
			plain = (int)j;
		else if (info[j].kind == ATTR_EXT && ext < 0)
			ext = (int)j;
		else if (info[j].kind == ATTR_SECTION && info[j].section == 0)
			have_section0 = true;
	}
	mp->name = xstrndup(base, base_len);
	struct mime_buf octets = { 0 }, cs = { 0 }, lang = { 0 };
	if (have_section0) {
		/* sections by number, first occurrence; a number >= n cannot be
		 * reached without a gap, so n slots are enough */
		int *by_section = xmalloc(n * sizeof(*by_section));
		for (unsigned int j = 0; j < n; j++)
			by_section[j] = -1;
		for (unsigned int j = i; j < n; j++) {
			if (info[j].kind == ATTR_SECTION && info[j].section < n &&
			    by_section[info[j].section] < 0 && same_base(raw, info, i, j))
				by_section[info[j].section] = (int)j;
		}
		bool any_ext = false;
		for (unsigned int k = 0; k < n && by_section[k] >= 0; k++) {
			int found = by_section[k];
			const char *v = raw[found].value.data;
			bool sect_ext = info[found].section_ext;
			if (!sect_ext)
				mime_buf_append(&octets, v, strlen(v));
			else if (k == 0)
				decode_ext_first(v, &octets, &cs, &lang);
			else
				pct_decode(&octets, v, strlen(v));
			any_ext |= sect_ext;
		}
		free(by_section);
		if (any_ext) {
			finish_ext(mp, &octets, &cs, &lang);
		} else {
			mime_buf_append(&octets, "", 0);
			mp->value = mime_buf_steal(&octets);
		}
	} else if (ext >= 0) {
		decode_ext_first(raw[ext].value.data, &octets, &cs, &lang);
		finish_ext(mp, &octets, &cs, &lang);
	} else {
		mp->value = xstrdup(raw[plain >= 0 ? plain : (int)i].value.data);
	}
	mime_buf_free(&octets);
	mime_buf_free(&cs);
	mime_buf_free(&lang);
}

/* merge_params - one mime_param per base name, in order of first appearance */
static unsigned int merge_params(struct raw_param *raw, unsigned int n, unsigned int max,
				 struct mime_param **params_r, bool *truncated_r)
{
	struct mime_param *out = NULL;
	unsigned int count = 0;
	struct attr_info *info = xcalloc(n, sizeof(*info));
	unsigned int *first = xcalloc(n, sizeof(*first));	/* raw index of out[j] */
	for (unsigned int i = 0; i < n; i++)
		classify(raw[i].attr, &info[i]);
	for (unsigned int i = 0; i < n; i++) {
		bool seen = false;
		for (unsigned int j = 0; j < count && !seen; j++)
			seen = same_base(raw, info, first[j], i);
		if (seen)
			continue;
		if (count >= max) {
			*truncated_r = true;
			break;
		}
		out = xrealloc(out, (count + 1) * sizeof(*out));
		memset(&out[count], 0, sizeof(*out));
		merge_one(raw, info, n, i, &out[count]);
		first[count++] = i;
	}
	free(info);
	free(first);
	*params_r = out;
	return count;
}

/* parse_params - the parameter list at the cursor, merged */
static unsigned int parse_params(struct cursor *c, unsigned int max, struct mime_param **params_r,
				 bool *truncated_r)
{
	struct raw_param *raw;
	unsigned int n = parse_raw_params(c, max * RAW_PARAMS_PER_PARAM, &raw, truncated_r);
	unsigned int count = merge_params(raw, n, max, params_r, truncated_r);
	for (unsigned int i = 0; i < n; i++) {
		free(raw[i].attr);
		mime_buf_free(&raw[i].value);
	}
	free(raw);
	return count;
}

bool mime_content_type_parse(const char *value, unsigned int max_params, char **type_r,
			     char **subtype_r, struct mime_param **params_r,
			     unsigned int *count_r, bool *truncated_r)
{
	struct cursor c = { (const uint8_t *)value, (const uint8_t *)value + strlen(value) };
	const uint8_t *t, *st = NULL;
	size_t tlen, stlen = 0;
	skip_cfws(&c);
	tlen = read_token(&c, &t);
	skip_cfws(&c);
	if (c.p < c.end && *c.p == '/') {
		c.p++;
		skip_cfws(&c);
		stlen = read_token(&c, &st);
	}
	bool valid = tlen > 0 && stlen > 0;
	*type_r = valid ? dup_lower(t, tlen) : NULL;
	*subtype_r = valid ? dup_lower(st, stlen) : NULL;
	*count_r = parse_params(&c, max_params, params_r, truncated_r);
	return valid;
}

bool mime_disposition_parse(const char *value, unsigned int max_params, char **disp_r,
			    struct mime_param **params_r, unsigned int *count_r,
			    bool *truncated_r)
{
	struct cursor c = { (const uint8_t *)value, (const uint8_t *)value + strlen(value) };
	const uint8_t *t;
	skip_cfws(&c);
	size_t tlen = read_token(&c, &t);
	if (tlen == 0) {
		*disp_r = NULL;
		*params_r = NULL;
		*count_r = 0;
		return false;
	}
	*disp_r = dup_lower(t, tlen);
	*count_r = parse_params(&c, max_params, params_r, truncated_r);
	return true;
}

char *mime_token_parse(const char *value)
{
	struct cursor c = { (const uint8_t *)value, (const uint8_t *)value + strlen(value) };
	const uint8_t *t;
	skip_cfws(&c);
	size_t tlen = read_token(&c, &t);
	return tlen > 0 ? dup_lower(t, tlen) : NULL;
}

unsigned int mime_language_parse(const char *value, unsigned int max, char ***langs_r)
{
	struct cursor c = { (const uint8_t *)value, (const uint8_t *)value + strlen(value) };
	char **langs = NULL;
	unsigned int n = 0;
	while (c.p < c.end && n < max) {
		skip_cfws(&c);
		const uint8_t *t;
		size_t tlen = read_token(&c, &t);
		if (tlen > 0) {
			langs = xrealloc(langs, (n + 1) * sizeof(*langs));
			langs[n++] = xstrndup((const char *)t, tlen);
		}
		skip_cfws(&c);
		/* anything up to the next comma is junk */
		while (c.p < c.end && *c.p != ',')
			c.p++;
		if (c.p < c.end)
			c.p++;
	}
	*langs_r = langs;
	return n;
}

void mime_params_free(struct mime_param *params, unsigned int count)
{
	for (unsigned int i = 0; i < count; i++) {
		free(params[i].name);
		free(params[i].value);
		free(params[i].ext_value);
	}
	free(params);
}

const char *mime_param_get(const struct mime_param *params, unsigned int count, const char *name)
{
	for (unsigned int i = 0; i < count; i++) {
		if (mime_strieq(params[i].name, name))
			return params[i].value;
	}
	return NULL;
}
