/* log.h - one logfmt line per event on stderr:
 *   ts=2026-11-23T12:00:00.123Z level=info svc=mail-store thr=w1 msg="put done" id=ab12 size=4096
 * Callers write the event's own key=value pairs in the format; anything that
 * came from a peer goes through log_quote() first (truncated, printable). */
#ifndef MAIL_LOG_H
#define MAIL_LOG_H
#include "lib/common.h"
#include <stdarg.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

void log_init(const char *service, enum log_level level);
void log_set_level(enum log_level level);
/* log_set_thread - names the calling thread in its lines ("main", "w0", ...) */
void log_set_thread(const char *name);
/* log_level_parse - "debug|info|warn|error" -> level; 0 / -1 */
int log_level_parse(const char *s, enum log_level *level_r);
bool log_enabled(enum log_level level);

/* log_msg - msg is the fixed text of the event, fmt its key=value pairs */
void log_msg(enum log_level level, const char *msg, const char *fmt, ...) ATTR_PRINTF(3, 4);
void log_vmsg(enum log_level level, const char *msg, const char *fmt, va_list ap) ATTR_PRINTF(3, 0);

#define log_debug(msg, ...) do { if (log_enabled(LOG_LEVEL_DEBUG)) log_msg(LOG_LEVEL_DEBUG, msg, __VA_ARGS__); } while (0)
#define log_info(msg, ...) log_msg(LOG_LEVEL_INFO, msg, __VA_ARGS__)
#define log_warn(msg, ...) log_msg(LOG_LEVEL_WARN, msg, __VA_ARGS__)
#define log_error(msg, ...) log_msg(LOG_LEVEL_ERROR, msg, __VA_ARGS__)
/* log_fatal - the environment is wrong (bad config, port taken): log and exit(1) */
void log_fatal(const char *msg, const char *fmt, ...) ATTR_PRINTF(2, 3) ATTR_NORETURN;
/* log_panic - a bug: log and abort() for a core */
void log_panic(const char *msg, const char *fmt, ...) ATTR_PRINTF(2, 3) ATTR_NORETURN;

/* log_quote - makes untrusted bytes safe for a log value: wraps in quotes,
 * escapes '"' and '\\', replaces non-printables by \xHH, truncates to fit
 * `size` (ending in "..."). Returns buf. */
const char *log_quote(char *buf, size_t size, const void *data, size_t len);
#endif
