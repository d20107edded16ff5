/* mime_buf.c - the growable string the MIME exporters and decoders write
 * into, and the ASCII case helpers (parsers never depend on the locale). */
#include "lib/common.h"

#include <stdarg.h>
#include <stdlib.h>

#include "lib/xalloc.h"
#include "router/mime_private.h"

/* mime_buf_append - append n bytes, keeping a NUL after them */
void mime_buf_append(struct mime_buf *b, const void *p, size_t n)
{
	if (n == 0 && b->data != NULL)
		return;
	if (b->cap - b->len < n + 1) {
		size_t cap = b->cap != 0 ? b->cap : 64;
		while (cap - b->len < n + 1)
			cap *= 2;
		b->data = xrealloc(b->data, cap);
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void mime_buf_putc(struct mime_buf *b, char c)
{
	mime_buf_append(b, &c, 1);
}

void mime_buf_puts(struct mime_buf *b, const char *s)
{
	mime_buf_append(b, s, strlen(s));
}

/* mime_buf_printf - formatted append (short things: numbers, literal prefixes) */
void mime_buf_printf(struct mime_buf *b, const char *fmt, ...)
{
	char tmp[128];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof(tmp)) {
		mime_buf_append(b, tmp, (size_t)n);
		return;
	}
	char *big = xmalloc((size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	mime_buf_append(b, big, (size_t)n);
	free(big);
}

char *mime_buf_steal(struct mime_buf *b)
{
	char *s = b->data;
	if (s == NULL)
		s = xstrdup("");
	b->data = NULL;
	b->len = b->cap = 0;
	return s;
}

void mime_buf_free(struct mime_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

bool mime_memieq(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;
	for (size_t i = 0; i < n; i++) {
		if (mime_lower(x[i]) != mime_lower(y[i]))
			return false;
	}
	return true;
}

bool mime_strieq(const char *a, const char *b)
{
	size_t n = strlen(a);
	return n == strlen(b) && mime_memieq(a, b, n);
}

void mime_str_lower(char *s)
{
	for (; *s != '\0'; s++)
		*s = (char)mime_lower((uint8_t)*s);
}
