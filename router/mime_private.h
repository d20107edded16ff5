/* mime_private.h - internals shared by the router/mime*.c files: the growable
 * buffer, charset conversion, Content-* field parsing and the message struct.
 * Nothing here is for users of router/mime.h. */
#ifndef ROUTER_MIME_PRIVATE_H
#define ROUTER_MIME_PRIVATE_H

#include "router/mime.h"

/* longest string sent quoted; longer ones go as literals */
#define MIME_IMAP_QUOTED_MAX 1024
/* longest charset name in an encoded word or RFC 2231 value */
#define MIME_CHARSET_NAME_MAX 64

struct mime_message {
	struct mime_part **parts;	/* pre-order; parts[0] is the root */
	unsigned int part_count, parts_alloc;
	size_t size;
	unsigned int flags;
	unsigned int header_total;	/* fields stored in all parts */
	struct mime_limits lim;
};

/* growable byte string, always NUL-terminated once non-empty */
struct mime_buf {
	char *data;
	size_t len, cap;
};

void mime_buf_append(struct mime_buf *b, const void *p, size_t n);
void mime_buf_putc(struct mime_buf *b, char c);
void mime_buf_puts(struct mime_buf *b, const char *s);
void mime_buf_printf(struct mime_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* mime_buf_steal - the string (never NULL), buffer left empty */
char *mime_buf_steal(struct mime_buf *b);
void mime_buf_free(struct mime_buf *b);

/* ASCII-only helpers: no locale in parsers */
static inline uint8_t mime_lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}
bool mime_strieq(const char *a, const char *b);
bool mime_memieq(const void *a, const void *b, size_t n);
void mime_str_lower(char *s);

enum mime_charset {
	MIME_CS_OTHER = 0,	/* unknown: bytes kept where valid UTF-8 */
	MIME_CS_UTF8,
	MIME_CS_ASCII,
	MIME_CS_1252,		/* ISO-8859-1 read as its Windows-1252 superset (WHATWG) */
	MIME_CS_8859_15,
};
enum mime_charset mime_charset_lookup(const char *name, size_t len);
/* mime_charset_to_utf8 - append n bytes in charset cs as valid UTF-8 */
void mime_charset_to_utf8(struct mime_buf *out, enum mime_charset cs, const uint8_t *p, size_t n);
/* mime_utf8_append_valid - append, replacing invalid sequences by U+FFFD, dropping NUL */
void mime_utf8_append_valid(struct mime_buf *out, const uint8_t *p, size_t n);

/* Content-* fields (mime_params.c). Parameters come back RFC 2231-merged;
 * *truncated_r is set if some were dropped over max_params. */
bool mime_content_type_parse(const char *value, unsigned int max_params, char **type_r,
			     char **subtype_r, struct mime_param **params_r,
			     unsigned int *count_r, bool *truncated_r);
bool mime_disposition_parse(const char *value, unsigned int max_params, char **disp_r,
			    struct mime_param **params_r, unsigned int *count_r,
			    bool *truncated_r);
/* mime_token_parse - first token, lowercased (Content-Transfer-Encoding), or NULL */
char *mime_token_parse(const char *value);
/* mime_language_parse - comma-separated tags (Content-Language) */
unsigned int mime_language_parse(const char *value, unsigned int max, char ***langs_r);
void mime_params_free(struct mime_param *params, unsigned int count);
const char *mime_param_get(const struct mime_param *params, unsigned int count, const char *name);

#endif
