/* mime.c - the MIME structure parser and IMAP section lookup.
 *
 * One pass over the message's lines. The open multiparts sit on an explicit
 * stack (bounded by max_depth, no recursion); every line starting with "--"
 * is compared with their boundaries, innermost first, by length before bytes,
 * so the cost per line is bounded by the depth and a flood of boundary-like
 * lines stays linear. A boundary ends every part opened inside its multipart
 * (a lost close delimiter costs nothing else). Once no boundary is open, the
 * rest of the message is a body and is not looked at line by line.
 *
 * Offsets and sizes are those of the bytes as stored (CRLF or bare LF). The
 * line break before a boundary belongs to the boundary (RFC 2046 5.1.1).
 * Content-* fields are parsed in mime_params.c, exports are in mime_export.c.
 */
#include "lib/common.h"

#include <stdlib.h>

#include "lib/xalloc.h"
#include "router/mime_private.h"

/* longest section spec mime_section_range() reads before its suffix */
#define SECTION_PATH_MAX 256
/* highest part number in a section spec */
#define SECTION_NUMBER_MAX 1000000u

const struct mime_limits mime_default_limits = {
	.max_depth = MIME_DEFAULT_MAX_DEPTH,
	.max_parts = MIME_DEFAULT_MAX_PARTS,
	.max_header_line = MIME_DEFAULT_MAX_HEADER_LINE,
	.max_headers = MIME_DEFAULT_MAX_HEADERS,
	.max_total_headers = MIME_DEFAULT_MAX_TOTAL_HEADERS,
	.max_boundary_len = MIME_DEFAULT_MAX_BOUNDARY_LEN,
	.max_size = MIME_DEFAULT_MAX_SIZE,
	.max_params = MIME_DEFAULT_MAX_PARAMS,
	.max_addresses = MIME_DEFAULT_MAX_ADDRESSES,
};

enum parse_state {
	ST_HEADER,	/* reading the header of cur */
	ST_BODY,	/* in a body, preamble or epilogue: only boundaries matter */
};

struct open_boundary {
	struct mime_part *part;
	const char *b;
	size_t len;
	uint32_t hash;		/* boundary_hash() of b: most lines fail on it */
};

struct parser {
	const uint8_t *msg;
	size_t len, scan_end;
	struct mime_message *m;
	const struct mime_limits *lim;
	struct open_boundary *stack;
	unsigned int sp;
	struct mime_part *cur;	/* innermost open part; the open ones are its ancestors */
	enum parse_state st;
	bool field_pending;
	size_t field_start, field_end;
	uint64_t lf;		/* line feeds before the current line */
};

/* boundary_hash - FNV-1a step over n bytes, continuing from h */
static uint32_t boundary_hash(uint32_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

#define BOUNDARY_HASH_INIT 2166136261u

/* limits_init - defaults for zero fields, hard ceilings applied */
static void limits_init(struct mime_limits *l, const struct mime_limits *in)
{
	*l = mime_default_limits;
	if (in != NULL) {
		if (in->max_depth != 0)
			l->max_depth = in->max_depth;
		if (in->max_parts != 0)
			l->max_parts = in->max_parts;
		if (in->max_header_line != 0)
			l->max_header_line = in->max_header_line;
		if (in->max_headers != 0)
			l->max_headers = in->max_headers;
		if (in->max_total_headers != 0)
			l->max_total_headers = in->max_total_headers;
		if (in->max_boundary_len != 0)
			l->max_boundary_len = in->max_boundary_len;
		if (in->max_size != 0)
			l->max_size = in->max_size;
		if (in->max_params != 0)
			l->max_params = in->max_params;
		if (in->max_addresses != 0)
			l->max_addresses = in->max_addresses;
	}
	l->max_depth = MAIL_MIN(l->max_depth, MIME_HARD_MAX_DEPTH);
	l->max_boundary_len = MAIL_MIN(l->max_boundary_len, (size_t)MIME_HARD_MAX_BOUNDARY_LEN);
}

/* part_new - a part whose header starts at header_offset; it becomes cur */
static struct mime_part *part_new(struct parser *ps, struct mime_part *parent, size_t header_offset)
{
	struct mime_message *m = ps->m;
	struct mime_part *p = XNEW(struct mime_part);
	p->parent = parent;
	p->depth = parent != NULL ? parent->depth + 1 : 0;
	p->header_offset = header_offset;
	p->body_offset = header_offset;
	p->index = m->part_count;
	if (m->part_count == m->parts_alloc) {
		m->parts_alloc = m->parts_alloc != 0 ? m->parts_alloc * 2 : 8;
		m->parts = xrealloc(m->parts, m->parts_alloc * sizeof(*m->parts));
	}
	m->parts[m->part_count++] = p;
	if (parent != NULL) {
		if (parent->last_child != NULL)
			parent->last_child->next = p;
		else
			parent->children = p;
		parent->last_child = p;
		parent->child_count++;
	}
	ps->cur = p;
	ps->st = ST_HEADER;
	ps->field_pending = false;
	return p;
}

static bool is_blank(uint8_t c)
{
	return c == ' ' || c == '\t';
}

/* unfold - copy of a field value: line breaks of folding and NULs removed,
 * blanks trimmed at both ends */
static char *unfold(const uint8_t *s, size_t n)
{
	char *out = xmalloc(n + 1);
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = s[i];
		if (c == '\n' || c == '\0')
			continue;
		if (c == '\r' && (i + 1 == n || s[i + 1] == '\n'))
			continue;
		out[o++] = (char)c;
	}
	size_t a = 0;
	while (a < o && is_blank((uint8_t)out[a]))
		a++;
	while (o > a && is_blank((uint8_t)out[o - 1]))
		o--;
	memmove(out, out + a, o - a);
	out[o - a] = '\0';
	return out;
}

/* field_add - one raw field [start,end) of p: name, colon, value. A line
 * without a colon or with a bad name is skipped (it stays in the header) */
static void field_add(struct parser *ps, struct mime_part *p, size_t start, size_t end)
{
	if (end <= start)
		return;
	if (end - start > ps->lim->max_header_line) {
		end = start + ps->lim->max_header_line;
		p->flags |= MIME_F_HEADER_TRUNCATED;
	}
	const uint8_t *s = ps->msg + start;
	size_t n = end - start;
	const uint8_t *colon = memchr(s, ':', n);
	if (colon == NULL)
		return;
	size_t name_len = (size_t)(colon - s);
	while (name_len > 0 && is_blank(s[name_len - 1]))
		name_len--;
	if (name_len == 0)
		return;
	for (size_t i = 0; i < name_len; i++) {
		if (s[i] <= ' ' || s[i] >= 0x7F)
			return;
	}
	if (p->header_count >= ps->lim->max_headers ||
	    ps->m->header_total >= ps->lim->max_total_headers) {
		p->flags |= MIME_F_HEADER_TRUNCATED;
		return;
	}
	ps->m->header_total++;
	if (p->header_count == 0)
		p->headers = xmalloc(8 * sizeof(*p->headers));
	else if (p->header_count >= 8 && (p->header_count & (p->header_count - 1)) == 0)
		p->headers = xrealloc(p->headers, 2 * (size_t)p->header_count * sizeof(*p->headers));
	struct mime_header *h = &p->headers[p->header_count++];
	h->name = xstrndup((const char *)s, name_len);
	size_t voff = (size_t)(colon - s) + 1;
	h->value = unfold(s + voff, n - voff);
}

/* field_flush - store the pending field, cut at limit */
static void field_flush(struct parser *ps, size_t limit)
{
	if (!ps->field_pending)
		return;
	ps->field_pending = false;
	field_add(ps, ps->cur, ps->field_start, MAIL_MIN(ps->field_end, limit));
}

static const char *field_get(const struct mime_part *p, const char *name)
{
	for (unsigned int i = 0; i < p->header_count; i++) {
		if (mime_strieq(p->headers[i].name, name))
			return p->headers[i].value;
	}
	return NULL;
}

static char *dup_or_null(const char *s)
{
	return s != NULL ? xstrdup(s) : NULL;
}

/* fields_apply - the Content-* fields of p, with the RFC 2045/2046 defaults:
 * text/plain; charset=us-ascii, or message/rfc822 inside multipart/digest */
static void fields_apply(struct parser *ps, struct mime_part *p)
{
	const struct mime_limits *lim = ps->lim;
	bool trunc = false;
	const char *v = field_get(p, "Content-Type");
	bool valid = false;
	if (v != NULL)
		valid = mime_content_type_parse(v, lim->max_params, &p->type, &p->subtype, &p->params,
						&p->param_count, &trunc);
	if (!valid) {
		bool digest = p->parent != NULL && p->parent->kind == MIME_PART_MULTIPART &&
			      strcmp(p->parent->subtype, "digest") == 0;
		free(p->type);
		free(p->subtype);
		p->type = xstrdup(digest ? "message" : "text");
		p->subtype = xstrdup(digest ? "rfc822" : "plain");
	}
	if (p->param_count == 0 && strcmp(p->type, "text") == 0) {
		free(p->params);
		p->params = XNEW(struct mime_param);
		p->params[0].name = xstrdup("charset");
		p->params[0].value = xstrdup("us-ascii");
		p->param_count = 1;
	}
	v = field_get(p, "Content-Transfer-Encoding");
	p->encoding = v != NULL ? mime_token_parse(v) : NULL;
	if (p->encoding == NULL)
		p->encoding = xstrdup("7bit");
	p->id = dup_or_null(field_get(p, "Content-ID"));
	p->description = dup_or_null(field_get(p, "Content-Description"));
	p->md5 = dup_or_null(field_get(p, "Content-MD5"));
	p->location = dup_or_null(field_get(p, "Content-Location"));
	v = field_get(p, "Content-Disposition");
	if (v != NULL)
		mime_disposition_parse(v, lim->max_params, &p->disposition, &p->disp_params,
				       &p->disp_param_count, &trunc);
	v = field_get(p, "Content-Language");
	if (v != NULL)
		p->language_count = mime_language_parse(v, lim->max_params, &p->languages);
	if (trunc)
		p->flags |= MIME_F_PARAMS_TRUNCATED;
}

/* header_done - the header of cur is [header_offset, hdr_end); the body
 * starts at body_start with lf line feeds before it */
static void header_done(struct parser *ps, size_t hdr_end, size_t body_start, uint64_t lf)
{
	struct mime_part *p = ps->cur;
	field_flush(ps, hdr_end);
	p->header_size = hdr_end - p->header_offset;
	p->body_offset = body_start;
	p->lines = lf;		/* line feeds before the body, until part_end */
	fields_apply(ps, p);
	ps->st = ST_BODY;
}

/* body_begin - after a complete header: open a multipart or an encapsulated
 * message if the limits allow, else the part is a leaf */
static void body_begin(struct parser *ps)
{
	struct mime_part *p = ps->cur;
	const struct mime_limits *lim = ps->lim;
	if (strcmp(p->type, "multipart") == 0) {
		const char *b = mime_param_get(p->params, p->param_count, "boundary");
		size_t blen = b != NULL ? strlen(b) : 0;
		while (blen > 0 && is_blank((uint8_t)b[blen - 1]))
			blen--;
		if (blen == 0 || blen > lim->max_boundary_len) {
			p->flags |= MIME_F_NO_BOUNDARY;
		} else if (p->depth >= lim->max_depth) {
			p->flags |= MIME_F_DEPTH_LIMIT;
		} else {
			p->kind = MIME_PART_MULTIPART;
			ps->stack[ps->sp].part = p;
			ps->stack[ps->sp].b = b;
			ps->stack[ps->sp].len = blen;
			ps->stack[ps->sp].hash = boundary_hash(BOUNDARY_HASH_INIT, (const uint8_t *)b, blen);
			ps->sp++;
		}
	} else if (strcmp(p->type, "message") == 0 && strcmp(p->subtype, "rfc822") == 0) {
		if (strcmp(p->encoding, "7bit") != 0 && strcmp(p->encoding, "8bit") != 0 &&
		    strcmp(p->encoding, "binary") != 0) {
			p->flags |= MIME_F_ENCODED_MESSAGE;
		} else if (p->depth >= lim->max_depth) {
			p->flags |= MIME_F_DEPTH_LIMIT;
		} else if (ps->m->part_count >= lim->max_parts) {
			p->flags |= MIME_F_PARTS_LIMIT;
		} else {
			p->kind = MIME_PART_MESSAGE;
			struct mime_part *c = part_new(ps, p, p->body_offset);
			c->is_message = true;
		}
	}
}

/* part_end - p ends at end (lf line feeds before end); clamped to its body */
static void part_end(struct parser *ps, struct mime_part *p, size_t end, uint64_t lf)
{
	if (p == ps->cur && ps->st == ST_HEADER) {
		size_t hend = MAIL_MAX(end, p->header_offset);
		header_done(ps, hend, hend, lf);
		p->flags |= MIME_F_NO_HEADER_END;
	}
	if (end <= p->body_offset) {
		/* the line break ending the header is the one the boundary owns:
		 * the header stops where the part does; a part that would start
		 * after its end (nothing between two boundaries) is empty at end,
		 * so it stays inside its parent, which ends there too */
		if (end < p->header_offset)
			p->header_offset = end;
		p->header_size = end - p->header_offset;
		p->body_offset = end;
		p->body_size = 0;
		p->lines = 0;
		return;
	}
	p->body_size = end - p->body_offset;
	p->lines = lf - p->lines + (ps->msg[end - 1] != '\n' ? 1 : 0);
}

/* header_line - one line [pos,cend) of cur's header; next is the following line */
static void header_line(struct parser *ps, size_t pos, size_t cend, size_t next, bool has_lf)
{
	if (cend == pos) {
		header_done(ps, next, next, ps->lf + (has_lf ? 1 : 0));
		body_begin(ps);
		return;
	}
	if (is_blank(ps->msg[pos])) {
		if (ps->field_pending)
			ps->field_end = next;	/* folded continuation */
		return;
	}
	field_flush(ps, next);
	ps->field_pending = true;
	ps->field_start = pos;
	ps->field_end = next;
}

/* boundary_match - stack level whose delimiter line is [line, line+n), or -1.
 * "--" B for a delimiter, "--" B "--" for a close one, blanks after either.
 * The candidate is hashed once, so a line costs its length plus the depth. */
static int boundary_match(const struct parser *ps, const uint8_t *line, size_t n, bool *close_r)
{
	while (n > 2 && (is_blank(line[n - 1]) || line[n - 1] == '\r'))
		n--;
	size_t blen = n - 2;
	if (blen == 0 || blen > ps->lim->max_boundary_len + 2)
		return -1;
	bool dashes = blen > 2 && line[n - 1] == '-' && line[n - 2] == '-';
	uint32_t h_short = boundary_hash(BOUNDARY_HASH_INIT, line + 2, dashes ? blen - 2 : 0);
	uint32_t h_full = dashes ? boundary_hash(h_short, line + n - 2, 2)
				 : boundary_hash(BOUNDARY_HASH_INIT, line + 2, blen);
	for (unsigned int i = ps->sp; i-- > 0;) {
		const struct open_boundary *e = &ps->stack[i];
		if (blen == e->len && h_full == e->hash && memcmp(line + 2, e->b, e->len) == 0) {
			*close_r = false;
			return (int)i;
		}
		if (dashes && blen == e->len + 2 && h_short == e->hash &&
		    memcmp(line + 2, e->b, e->len) == 0) {
			*close_r = true;
			return (int)i;
		}
	}
	return -1;
}

/* on_boundary - a delimiter (or close delimiter) of stack level lvl at pos:
 * every part opened inside that multipart ends before the line break */
static void on_boundary(struct parser *ps, unsigned int lvl, bool close, size_t pos, size_t next)
{
	size_t eol = 0;
	if (pos > 0 && ps->msg[pos - 1] == '\n')
		eol = pos > 1 && ps->msg[pos - 2] == '\r' ? 2 : 1;
	size_t end = pos - eol;
	uint64_t lf = ps->lf - (eol != 0 ? 1 : 0);
	struct mime_part *mp = ps->stack[lvl].part;
	for (struct mime_part *p = ps->cur; p != mp; p = p->parent)
		part_end(ps, p, end, lf);
	for (unsigned int i = lvl + 1; i < ps->sp; i++)
		ps->stack[i].part->flags |= MIME_F_MISSING_END;
	ps->sp = lvl + 1;
	ps->cur = mp;
	ps->st = ST_BODY;
	if (close) {
		ps->sp = lvl;
		return;
	}
	if (ps->m->part_count >= ps->lim->max_parts) {
		mp->flags |= MIME_F_PARTS_LIMIT;
		return;
	}
	part_new(ps, mp, next);
}

/* count_lf - line feeds in the rest of the message, which is not scanned by line */
static uint64_t count_lf(const uint8_t *p, size_t n)
{
	uint64_t count = 0;
	const uint8_t *end = p + n;
	while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
		count++;
		p++;
	}
	return count;
}

/* parse_lines - the single pass over the message */
static void parse_lines(struct parser *ps)
{
	const uint8_t *msg = ps->msg;
	size_t pos = 0, len = ps->len;
	while (pos < len) {
		if (ps->st == ST_BODY && ps->sp == 0)
			break;	/* no boundary can matter any more */
		if (pos >= ps->scan_end) {
			ps->cur->flags |= MIME_F_SIZE_LIMIT;
			break;
		}
		const uint8_t *nl = memchr(msg + pos, '\n', len - pos);
		size_t next = nl != NULL ? (size_t)(nl - msg) + 1 : len;
		size_t cend = nl != NULL ? next - 1 : len;
		if (cend > pos && msg[cend - 1] == '\r')
			cend--;
		if (ps->sp > 0 && cend - pos >= 2 && msg[pos] == '-' && msg[pos + 1] == '-') {
			bool close;
			int lvl = boundary_match(ps, msg + pos, cend - pos, &close);
			if (lvl >= 0) {
				on_boundary(ps, (unsigned int)lvl, close, pos, next);
				ps->lf += nl != NULL ? 1 : 0;
				pos = next;
				continue;
			}
		}
		if (ps->st == ST_HEADER)
			header_line(ps, pos, cend, next, nl != NULL);
		ps->lf += nl != NULL ? 1 : 0;
		pos = next;
	}
	ps->lf += count_lf(msg + pos, len - pos);
	for (struct mime_part *p = ps->cur; p != NULL; p = p->parent)
		part_end(ps, p, len, ps->lf);
	for (unsigned int i = 0; i < ps->sp; i++)
		ps->stack[i].part->flags |= MIME_F_MISSING_END;
	ps->sp = 0;
}

int mime_parse(const uint8_t *msg, size_t len, const struct mime_limits *lim,
	       struct mime_message **msg_r, const char **error_r)
{
	if (msg == NULL && len > 0) {
		*error_r = "no message buffer";
		return -1;
	}
	struct mime_message *m = XNEW(struct mime_message);
	limits_init(&m->lim, lim);
	m->size = len;

	struct parser ps;
	memset(&ps, 0, sizeof(ps));
	ps.msg = msg != NULL ? msg : (const uint8_t *)"";
	ps.len = len;
	ps.scan_end = MAIL_MIN(len, m->lim.max_size);
	ps.m = m;
	ps.lim = &m->lim;
	ps.stack = xcalloc(m->lim.max_depth + 1, sizeof(*ps.stack));
	struct mime_part *root = part_new(&ps, NULL, 0);
	root->is_message = true;
	parse_lines(&ps);
	free(ps.stack);

	for (unsigned int i = 0; i < m->part_count; i++)
		m->flags |= m->parts[i]->flags;
	*msg_r = m;
	return 0;
}

/* part_free - one part and everything it owns (not its children) */
static void part_free(struct mime_part *p)
{
	free(p->type);
	free(p->subtype);
	mime_params_free(p->params, p->param_count);
	free(p->id);
	free(p->description);
	free(p->md5);
	free(p->location);
	free(p->encoding);
	free(p->disposition);
	mime_params_free(p->disp_params, p->disp_param_count);
	for (unsigned int i = 0; i < p->language_count; i++)
		free(p->languages[i]);
	free(p->languages);
	for (unsigned int i = 0; i < p->header_count; i++) {
		free(p->headers[i].name);
		free(p->headers[i].value);
	}
	free(p->headers);
	free(p);
}

void mime_message_free(struct mime_message **mp)
{
	struct mime_message *m = *mp;
	if (m == NULL)
		return;
	for (unsigned int i = 0; i < m->part_count; i++)
		part_free(m->parts[i]);
	free(m->parts);
	free(m);
	*mp = NULL;
}

const struct mime_part *mime_message_root(const struct mime_message *m)
{
	return m->parts[0];
}

size_t mime_message_size(const struct mime_message *m)
{
	return m->size;
}

unsigned int mime_message_part_count(const struct mime_message *m)
{
	return m->part_count;
}

const struct mime_part *mime_message_part(const struct mime_message *m, unsigned int i)
{
	return i < m->part_count ? m->parts[i] : NULL;
}

unsigned int mime_message_flags(const struct mime_message *m)
{
	return m->flags;
}

const char *mime_header_get(const struct mime_message *m, const struct mime_part *part,
			    const char *name)
{
	return field_get(part != NULL ? part : m->parts[0], name);
}

/* Sections. A number applies to a multipart's children; a message node that
 * is not multipart (the top-level message, or the one inside message/rfc822)
 * is itself part 1 of its message (RFC 3501 6.4.5). */

int mime_find_section(const struct mime_message *m, const char *path,
		      const struct mime_part **part_r)
{
	const struct mime_part *y = m->parts[0], *sel = y;
	bool msg_ctx = true;
	const char *s = path;
	if (*s == '\0') {
		*part_r = sel;
		return 0;
	}
	for (;;) {
		if (*s < '1' || *s > '9')
			return -1;
		unsigned int k = 0;
		while (*s >= '0' && *s <= '9') {
			k = k * 10 + (unsigned int)(*s++ - '0');
			if (k > SECTION_NUMBER_MAX)
				return -1;
		}
		const struct mime_part *x = NULL;
		if (y->kind == MIME_PART_MULTIPART) {
			if (k > y->child_count)
				return -1;
			x = y->children;
			for (unsigned int i = 1; i < k; i++)
				x = x->next;
		} else if (msg_ctx && k == 1) {
			x = y;
		} else {
			return -1;
		}
		sel = x;
		msg_ctx = x->kind == MIME_PART_MESSAGE;
		y = msg_ctx ? x->children : x;
		if (*s == '\0')
			break;
		if (*s++ != '.')
			return -1;
	}
	*part_r = sel;
	return 0;
}

void mime_part_body_range(const struct mime_part *p, struct mime_range *r)
{
	r->offset = p->body_offset;
	r->size = p->body_size;
}

void mime_part_mime_range(const struct mime_part *p, struct mime_range *r)
{
	r->offset = p->header_offset;
	r->size = p->header_size;
}

/* message_of - the message node whose HEADER/TEXT p stands for, or NULL */
static const struct mime_part *message_of(const struct mime_part *p)
{
	if (p->kind == MIME_PART_MESSAGE)
		return p->children;
	return p->parent == NULL ? p : NULL;
}

int mime_part_header_range(const struct mime_part *p, struct mime_range *r)
{
	const struct mime_part *msg = message_of(p);
	if (msg == NULL)
		return -1;
	mime_part_mime_range(msg, r);
	return 0;
}

int mime_part_text_range(const struct mime_part *p, struct mime_range *r)
{
	const struct mime_part *msg = message_of(p);
	if (msg == NULL)
		return -1;
	mime_part_body_range(msg, r);
	return 0;
}

enum section_suffix { SUF_NONE, SUF_MIME, SUF_HEADER, SUF_TEXT, SUF_BAD };

/* suffix_parse - the text after the part numbers */
static enum section_suffix suffix_parse(const char *s)
{
	if (*s == '\0')
		return SUF_NONE;
	if (mime_strieq(s, "MIME"))
		return SUF_MIME;
	if (mime_strieq(s, "TEXT"))
		return SUF_TEXT;
	if (mime_strieq(s, "HEADER"))
		return SUF_HEADER;
	if (strlen(s) >= 13 && mime_memieq(s, "HEADER.FIELDS", 13)) {
		const char *r = s + 13;
		if (strlen(r) >= 4 && mime_memieq(r, ".NOT", 4))
			r += 4;
		if (*r == '\0' || *r == ' ' || *r == '(')
			return SUF_HEADER;
	}
	return SUF_BAD;
}

/* section_split - copy the leading part numbers of spec into path (without
 * the final dot) and return the suffix, or NULL if spec is malformed */
static const char *section_split(const char *spec, char *path, size_t path_size)
{
	size_t i = 0;
	while (spec[i] >= '0' && spec[i] <= '9') {
		while (spec[i] >= '0' && spec[i] <= '9')
			i++;
		if (spec[i] == '\0')
			break;
		if (spec[i] != '.')
			return NULL;
		if (spec[i + 1] < '0' || spec[i + 1] > '9') {
			if (spec[i + 1] == '\0' || i >= path_size)
				return NULL;
			memcpy(path, spec, i);
			path[i] = '\0';
			return spec + i + 1;
		}
		i++;
	}
	if (i >= path_size)
		return NULL;
	memcpy(path, spec, i);
	path[i] = '\0';
	return spec + i;
}

int mime_section_range(const struct mime_message *m, const char *section,
		       struct mime_range *range_r, const char **error_r)
{
	char path[SECTION_PATH_MAX];
	const char *suffix = section_split(section, path, sizeof(path));
	enum section_suffix suf = suffix != NULL ? suffix_parse(suffix) : SUF_BAD;
	if (suf == SUF_BAD) {
		*error_r = "invalid section";
		return -1;
	}
	const struct mime_part *p;
	if (mime_find_section(m, path, &p) < 0) {
		*error_r = "no such part";
		return -1;
	}
	if (path[0] == '\0') {
		switch (suf) {
		case SUF_NONE:
			range_r->offset = 0;
			range_r->size = m->size;
			return 0;
		case SUF_HEADER:
			mime_part_mime_range(p, range_r);
			return 0;
		case SUF_TEXT:
			mime_part_body_range(p, range_r);
			return 0;
		default:
			*error_r = "MIME needs a part number";
			return -1;
		}
	}
	switch (suf) {
	case SUF_NONE:
		mime_part_body_range(p, range_r);
		return 0;
	case SUF_MIME:
		mime_part_mime_range(p, range_r);
		return 0;
	default:
		if (p->kind != MIME_PART_MESSAGE) {
			*error_r = "HEADER and TEXT need a message/rfc822 part";
			return -1;
		}
		if (suf == SUF_HEADER)
			mime_part_header_range(p, range_r);
		else
			mime_part_text_range(p, range_r);
		return 0;
	}
}

static void table_line(struct mime_buf *b, const char *sect, const char *suffix, size_t off, size_t size)
{
	mime_buf_printf(b, "[%s%s%s] %zu %zu\n", sect, sect[0] != '\0' && suffix[0] != '\0' ? "." : "",
			suffix, off, size);
}

char *mime_sections_export(const struct mime_message *m)
{
	unsigned int n = m->part_count;
	char **sect = xcalloc(n, sizeof(*sect));	/* own section, or NULL */
	char **base = xcalloc(n, sizeof(*base));	/* numbering prefix of children */
	unsigned int *seen = xcalloc(n, sizeof(*seen));	/* children numbered so far */
	struct mime_buf b = { 0 };
	const struct mime_part *root = m->parts[0];

	table_line(&b, "", "", 0, m->size);
	table_line(&b, "", "HEADER", root->header_offset, root->header_size);
	table_line(&b, "", "TEXT", root->body_offset, root->body_size);
	for (unsigned int i = 0; i < n; i++) {
		const struct mime_part *p = m->parts[i];
		const struct mime_part *parent = p->parent;
		if (parent == NULL) {
			base[i] = xstrdup("");
			sect[i] = p->kind == MIME_PART_MULTIPART ? NULL : xstrdup("1");
		} else if (parent->kind == MIME_PART_MULTIPART) {
			unsigned int k = ++seen[parent->index];
			const char *pb = base[parent->index];
			sect[i] = pb[0] != '\0' ? xasprintf("%s.%u", pb, k) : xasprintf("%u", k);
			base[i] = xstrdup(sect[i]);
		} else {
			/* the message inside message/rfc822 */
			const char *ps = sect[parent->index];
			base[i] = xstrdup(ps);
			sect[i] = p->kind == MIME_PART_MULTIPART ? NULL : xasprintf("%s.1", ps);
		}
		if (sect[i] == NULL)
			continue;
		table_line(&b, sect[i], "", p->body_offset, p->body_size);
		table_line(&b, sect[i], "MIME", p->header_offset, p->header_size);
		if (p->kind == MIME_PART_MESSAGE) {
			const struct mime_part *c = p->children;
			table_line(&b, sect[i], "HEADER", c->header_offset, c->header_size);
			table_line(&b, sect[i], "TEXT", c->body_offset, c->body_size);
		}
	}
	for (unsigned int i = 0; i < n; i++) {
		free(sect[i]);
		free(base[i]);
	}
	free(sect);
	free(base);
	free(seen);
	return mime_buf_steal(&b);
}

int mime_sections_lookup(const char *table, const char *section, struct mime_range *range_r)
{
	char path[SECTION_PATH_MAX];
	const char *suffix = section_split(section, path, sizeof(path));
	enum section_suffix suf = suffix != NULL ? suffix_parse(suffix) : SUF_BAD;
	static const char *const names[] = { "", "MIME", "HEADER", "TEXT" };
	if (suf == SUF_BAD)
		return -1;
	char key[SECTION_PATH_MAX + 16];
	int kl = snprintf(key, sizeof(key), "[%s%s%s] ", path,
			  path[0] != '\0' && suf != SUF_NONE ? "." : "", names[suf]);
	if (kl < 0 || (size_t)kl >= sizeof(key))
		return -1;
	for (const char *line = table; *line != '\0';) {
		const char *eol = strchr(line, '\n');
		size_t ll = eol != NULL ? (size_t)(eol - line) : strlen(line);
		if (ll > (size_t)kl && memcmp(line, key, (size_t)kl) == 0) {
			char *end;
			unsigned long long off = strtoull(line + kl, &end, 10);
			unsigned long long size = strtoull(end, NULL, 10);
			range_r->offset = (size_t)off;
			range_r->size = (size_t)size;
			return 0;
		}
		if (eol == NULL)
			break;
		line = eol + 1;
	}
	return -1;
}
