/* mime_address.c - RFC 5322 address lists (3.4) with the obsolete syntax of
 * 4.4 tolerated: groups, comments, quoted local parts and display names,
 * domain literals, source routes "<@a,@b:user@host>", missing local parts or
 * domains. The result has the IMAP ENVELOPE shape (RFC 3501 7.4.2). A
 * tokenizer feeds a flat state machine; every step consumes input, junk is
 * skipped up to the next ',' so one bad address costs no others. */
#include "lib/common.h"

#include <stdlib.h>

#include "lib/xalloc.h"
#include "router/mime_private.h"

enum tok_type {
	TOK_END = 0,
	TOK_ATOM,	/* atext and '.' (dot-atom, obs-phrase) */
	TOK_QUOTED,	/* quoted-string, content unescaped */
	TOK_DLIT,	/* [domain literal], brackets kept */
	TOK_SPECIAL,	/* one of < > @ , : ; */
};

struct tokenizer {
	const uint8_t *p, *end;
	enum tok_type type;
	char special;
	bool blank_before;	/* whitespace or a comment before this token */
	struct mime_buf text;	/* token text */
	struct mime_buf comment; /* first comment of the current address */
	bool have_comment;
};

struct addr_list {
	struct mime_address *head, *tail;
	unsigned int count, max;
};

static bool is_special(uint8_t c)
{
	return c == '<' || c == '>' || c == '@' || c == ',' || c == ':' || c == ';';
}

/* is_atom_char - atext, '.', and 8-bit bytes (raw UTF-8 names are common) */
static bool is_atom_char(uint8_t c)
{
	return c > ' ' && c != 0x7F && !is_special(c) && c != '(' && c != ')' && c != '"' &&
	       c != '[' && c != ']' && c != '\\';
}

/* skip_comment - the cursor is on '('; keep the first comment's text */
static void skip_comment(struct tokenizer *t)
{
	size_t depth = 0;
	bool keep = !t->have_comment;
	struct mime_buf *out = &t->comment;
	while (t->p < t->end) {
		uint8_t c = *t->p++;
		if (c == '\\' && t->p < t->end) {
			c = *t->p++;
		} else if (c == '(') {
			if (depth++ == 0)
				continue;
		} else if (c == ')') {
			if (--depth == 0)
				break;
		}
		if (keep && c != '\r' && c != '\n')
			mime_buf_putc(out, (char)c);
	}
	if (keep && out->len > 0)
		t->have_comment = true;
}

/* next_token - read one token into t */
static void next_token(struct tokenizer *t)
{
	t->blank_before = false;
	t->text.len = 0;
	if (t->text.data != NULL)
		t->text.data[0] = '\0';
	for (;;) {
		if (t->p >= t->end) {
			t->type = TOK_END;
			return;
		}
		uint8_t c = *t->p;
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ')' || c == ']' ||
		    c == '\\' || c == 0x7F || c < ' ') {
			/* blanks, and stray closers or escapes outside their context */
			t->p++;
			t->blank_before = true;
			continue;
		}
		if (c == '(') {
			skip_comment(t);
			t->blank_before = true;
			continue;
		}
		break;
	}
	uint8_t c = *t->p;
	if (is_special(c)) {
		t->type = TOK_SPECIAL;
		t->special = (char)c;
		t->p++;
		return;
	}
	if (c == '"' || c == '[') {
		uint8_t close = c == '"' ? '"' : ']';
		t->type = c == '"' ? TOK_QUOTED : TOK_DLIT;
		if (c == '[')
			mime_buf_putc(&t->text, '[');
		t->p++;
		while (t->p < t->end) {
			c = *t->p++;
			if (c == close)
				break;
			if (c == '\\' && t->p < t->end)
				c = *t->p++;
			else if (c == '\r' || c == '\n')
				continue;
			mime_buf_putc(&t->text, (char)c);
		}
		if (close == ']')
			mime_buf_putc(&t->text, ']');
		mime_buf_append(&t->text, "", 0);
		return;
	}
	const uint8_t *s = t->p;
	while (t->p < t->end && is_atom_char(*t->p))
		t->p++;
	t->type = TOK_ATOM;
	mime_buf_append(&t->text, s, (size_t)(t->p - s));
}

static bool is_word(const struct tokenizer *t)
{
	return t->type == TOK_ATOM || t->type == TOK_QUOTED;
}

static bool is_sp(const struct tokenizer *t, char c)
{
	return t->type == TOK_SPECIAL && t->special == c;
}

static char *nonempty_dup(const struct mime_buf *b)
{
	return b->len > 0 ? xstrndup(b->data, b->len) : NULL;
}

/* add - append an entry; false once the list is full */
static bool add(struct addr_list *l, char *name, char *route, char *mailbox, char *host)
{
	struct mime_address *a = XNEW(struct mime_address);
	a->name = name;
	a->route = route;
	a->mailbox = mailbox;
	a->host = host;
	if (l->tail != NULL)
		l->tail->next = a;
	else
		l->head = a;
	l->tail = a;
	l->count++;
	return l->count < l->max;
}

/* collect_domain - domain tokens joined without blanks, up to a special */
static void collect_domain(struct tokenizer *t, struct mime_buf *dom)
{
	while (t->type == TOK_ATOM || t->type == TOK_DLIT || t->type == TOK_QUOTED) {
		mime_buf_append(dom, t->text.data, t->text.len);
		next_token(t);
	}
}

/* parse_angle - after '<': [route ":"] local "@" domain ">" */
static void parse_angle(struct tokenizer *t, struct mime_buf *route, struct mime_buf *local,
			struct mime_buf *dom, bool *at_r)
{
	next_token(t);
	if (is_sp(t, '@')) {
		/* obs-route: "@a,@b:" - read it, then expect the addr-spec */
		struct mime_buf r = { 0 };
		while (is_sp(t, '@') || is_sp(t, ',')) {
			if (is_sp(t, '@')) {
				if (r.len > 0)
					mime_buf_putc(&r, ',');
				mime_buf_putc(&r, '@');
				next_token(t);
				collect_domain(t, &r);
			} else {
				next_token(t);
			}
		}
		if (is_sp(t, ':')) {
			mime_buf_append(route, r.data, r.len);
			next_token(t);
		} else {
			/* "<@host>": no route after all, it was a domain */
			*at_r = true;
			const char *d = r.data != NULL ? r.data + 1 : "";
			mime_buf_append(dom, d, r.len > 0 ? r.len - 1 : 0);
		}
		mime_buf_free(&r);
		if (*at_r)
			goto close;
	}
	while (is_word(t)) {
		mime_buf_append(local, t->text.data, t->text.len);
		next_token(t);
	}
	if (is_sp(t, '@')) {
		*at_r = true;
		next_token(t);
		collect_domain(t, dom);
	}
close:
	while (t->type != TOK_END && !is_sp(t, '>') && !is_sp(t, ',') && !is_sp(t, ';'))
		next_token(t);
	if (is_sp(t, '>'))
		next_token(t);
}

/* skip_junk - to the next ',' or ';' (or the end) */
static void skip_junk(struct tokenizer *t)
{
	while (t->type != TOK_END && !is_sp(t, ',') && !is_sp(t, ';'))
		next_token(t);
}

struct mime_address *mime_addresses_parse(const char *str, size_t len, unsigned int max_count)
{
	struct tokenizer t;
	struct addr_list l = { NULL, NULL, 0, max_count != 0 ? max_count : MIME_DEFAULT_MAX_ADDRESSES };
	struct mime_buf phrase = { 0 }, local = { 0 }, dom = { 0 }, route = { 0 };
	bool in_group = false, full = false;

	memset(&t, 0, sizeof(t));
	t.p = (const uint8_t *)str;
	t.end = t.p + len;
	next_token(&t);
	while (t.type != TOK_END && !full) {
		phrase.len = local.len = dom.len = route.len = 0;
		/* display name or local part: words, kept in both spellings */
		while (is_word(&t)) {
			if (phrase.len > 0 && t.blank_before)
				mime_buf_putc(&phrase, ' ');
			mime_buf_append(&phrase, t.text.data, t.text.len);
			mime_buf_append(&local, t.text.data, t.text.len);
			next_token(&t);
		}
		if (t.type == TOK_DLIT) {
			/* "[1.2.3.4]" where a name belongs: junk */
			skip_junk(&t);
			continue;
		}
		char sp = t.type == TOK_SPECIAL ? t.special : '\0';
		bool at = false, angle = sp == '<';
		if (sp == ':' && !in_group) {
			in_group = true;
			full = !add(&l, NULL, NULL, xstrndup(phrase.len > 0 ? phrase.data : "", phrase.len),
				    NULL);
			t.comment.len = 0;
			t.have_comment = false;
			next_token(&t);
			continue;
		}
		if (angle) {
			local.len = 0;
			parse_angle(&t, &route, &local, &dom, &at);
		} else if (sp == '@') {
			at = true;
			next_token(&t);
			collect_domain(&t, &dom);
		} else if (sp == ':' || sp == '>') {
			/* a nested group or a stray '>': junk */
			skip_junk(&t);
			continue;
		}
		if (angle || at || local.len > 0) {
			/* a display name only before <...>; else a comment may stand in */
			char *name = angle ? nonempty_dup(&phrase) : NULL;
			if (name == NULL && t.have_comment)
				name = xstrndup(t.comment.data, t.comment.len);
			char *mbox, *host;
			if (angle && !at && local.len == 0) {
				/* "<>", the null reverse-path */
				mbox = xstrdup("");
				host = xstrdup("");
			} else {
				mbox = local.len > 0 ? xstrndup(local.data, local.len)
						     : xstrdup(MIME_MISSING_MAILBOX);
				host = dom.len > 0 ? xstrndup(dom.data, dom.len)
						   : xstrdup(MIME_MISSING_DOMAIN);
			}
			full = !add(&l, name, nonempty_dup(&route), mbox, host);
			if (full)
				break;
		}
		skip_junk(&t);
		if (is_sp(&t, ';') && in_group) {
			in_group = false;
			full = !add(&l, NULL, NULL, NULL, NULL);
		}
		t.comment.len = 0;
		t.have_comment = false;
		if (t.type != TOK_END)
			next_token(&t);
	}
	if (in_group)
		add(&l, NULL, NULL, NULL, NULL);
	mime_buf_free(&t.text);
	mime_buf_free(&t.comment);
	mime_buf_free(&phrase);
	mime_buf_free(&local);
	mime_buf_free(&dom);
	mime_buf_free(&route);
	return l.head;
}

void mime_addresses_free(struct mime_address **ap)
{
	struct mime_address *a = *ap;
	while (a != NULL) {
		struct mime_address *next = a->next;
		free(a->name);
		free(a->route);
		free(a->mailbox);
		free(a->host);
		free(a);
		a = next;
	}
	*ap = NULL;
}
