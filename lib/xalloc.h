/* xalloc.h - allocation wrappers that abort on failure (daemons never try to
 * recover from out-of-memory; no test would ever run that code). */
#ifndef MAIL_XALLOC_H
#define MAIL_XALLOC_H
#include <stddef.h>

void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
void *xmemdup(const void *p, size_t n);
/* xasprintf - formatted string the caller owns */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define XNEW(type) ((type *)xcalloc(1, sizeof(type)))
#endif
