/* log.c - logfmt lines to stderr, one write(2) per line so that lines from
 * worker threads never interleave. */
#include "lib/common.h"
#include "lib/log.h"
#include <stdlib.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *log_service = "mail";
static volatile int log_min_level = LOG_LEVEL_INFO;
static _Thread_local char log_thread[16] = "main";

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void log_init(const char *service, enum log_level level)
{
	log_service = service;
	log_min_level = level;
}

void log_set_level(enum log_level level)
{
	log_min_level = level;
}

void log_set_thread(const char *name)
{
	snprintf(log_thread, sizeof(log_thread), "%s", name);
}

int log_level_parse(const char *s, enum log_level *level_r)
{
	for (size_t i = 0; i < N_ELEMENTS(level_names); i++) {
		if (strcasecmp(s, level_names[i]) == 0) {
			*level_r = (enum log_level)i;
			return 0;
		}
	}
	if (strcasecmp(s, "warning") == 0) {
		*level_r = LOG_LEVEL_WARN;
		return 0;
	}
	return -1;
}

bool log_enabled(enum log_level level)
{
	return (int)level >= log_min_level;
}

/* log_line - formats and writes one line; `tag` overrides the level name */
static void ATTR_PRINTF(3, 0) log_line(const char *tag, const char *msg, const char *fmt, va_list ap)
{
	char line[4096];
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	int n = snprintf(line, sizeof(line),
			 "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s svc=%s thr=%s msg=\"%s\"",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, (int)(tv.tv_usec / 1000), tag, log_service, log_thread, msg);
	if (n < 0)
		return;
	size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
	if (fmt != NULL && fmt[0] != '\0' && len < sizeof(line) - 2) {
		line[len++] = ' ';
		int m = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
		if (m > 0)
			len += (size_t)m < sizeof(line) - len ? (size_t)m : sizeof(line) - len - 1;
	}
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	(void)!write(STDERR_FILENO, line, len);
}

void log_vmsg(enum log_level level, const char *msg, const char *fmt, va_list ap)
{
	if ((int)level < log_min_level)
		return;
	log_line(level_names[level], msg, fmt, ap);
}

void log_msg(enum log_level level, const char *msg, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(level, msg, fmt, ap);
	va_end(ap);
}

void log_fatal(const char *msg, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_line("fatal", msg, fmt, ap);
	va_end(ap);
	exit(1);
}

void log_panic(const char *msg, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_line("panic", msg, fmt, ap);
	va_end(ap);
	abort();
}

const char *log_quote(char *buf, size_t size, const void *data, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = data;
	size_t o = 0;
	if (size < 8) {
		if (size > 0)
			buf[0] = '\0';
		return buf;
	}
	buf[o++] = '"';
	for (size_t i = 0; i < len; i++) {
		unsigned char c = p[i];
		size_t need = (c == '"' || c == '\\') ? 2 : (c < 0x20 || c >= 0x7f) ? 4 : 1;
		if (o + need + 5 > size) { /* room for ...", NUL */
			memcpy(buf + o, "...", 3);
			o += 3;
			break;
		}
		if (need == 2) {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (need == 4) {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}
