/* linereader.h - the bounded line reader every text protocol uses.
 * Pure: it takes bytes from an evbuffer and returns a status; it never sees a
 * socket or an event base, so it can be fed one byte at a time and fuzzed.
 *
 * A line ends at LF. A CR right before that LF is part of the terminator, so
 * "abc\r\n" and the bare-LF "abc\n" both give "abc". A CR anywhere else is
 * data: "a\rb\n" gives "a\rb", "abc\r\r\n" gives "abc\r". Callers that must
 * insist on CRLF (a bare LF in a message body is how "smuggling" attacks end
 * a message early on one server and not on the next) ask
 * linereader_last_bare_lf() after each line. Lines may hold NUL bytes: the
 * length says where the line ends, and the copy is NUL-terminated as a
 * convenience.
 *
 * Limits: max_len counts the line's bytes without its terminator. A longer
 * line is reported as LR_TOO_LONG exactly once, as soon as that is certain,
 * and the reader then throws bytes away up to and including the next LF, over
 * as many calls as it takes. The reader never needs more than max_len + 2
 * bytes buffered to decide (max_len bytes, a CR, and the byte after it), and
 * it drains what it skips, so a peer cannot make the input grow unbounded
 * through it. (libevent's watermarks are not a limit; this is.) */
#ifndef MAIL_LINEREADER_H
#define MAIL_LINEREADER_H
#include "lib/common.h"

struct evbuffer;

enum lr_status {
	LR_LINE,      /* a line is in buf, *len_r bytes, NUL-terminated */
	LR_NEED_MORE, /* no complete line yet: call again when more bytes arrive */
	LR_TOO_LONG,  /* a line over max_len was seen (once per such line) and is being skipped */
};

/* Embedded by value in a session; fields are private (use the functions). */
struct linereader {
	size_t max_len;
	bool skipping;    /* inside an over-long line, discarding up to its LF */
	bool last_bare_lf; /* the last LR_LINE ended in LF without CR */
};

/* LINEREADER_MAX - the largest max_len accepted (a bug above that) */
#define LINEREADER_MAX ((size_t)1 << 30)

/* linereader_init - a reader for lines of at most max_len bytes */
void linereader_init(struct linereader *lr, size_t max_len);
/* linereader_set_max_len - a new limit from the next call on (stricter before
 * authentication, looser after). A line being skipped stays skipped. */
void linereader_set_max_len(struct linereader *lr, size_t max_len);
size_t linereader_max_len(const struct linereader *lr);
/* linereader_last_bare_lf - whether the line just returned ended in a bare LF */
bool linereader_last_bare_lf(const struct linereader *lr);
/* linereader_reset - forget a skip in progress (after STARTTLS drained the input) */
void linereader_reset(struct linereader *lr);

/* linereader_next - takes the next line from `in`.
 * buf must hold max_len + 1 bytes (for the largest max_len ever set).
 * LR_LINE: the line (without CRLF / LF) is removed from `in` and copied to
 *   buf, buf[*len_r] == '\0'. LR_NEED_MORE: nothing complete; at most
 *   max_len + 1 bytes stay in `in`. LR_TOO_LONG: the reader is skipping that
 *   line; call again, it goes on with whatever follows.
 * Callers loop while the status is not LR_NEED_MORE. */
enum lr_status linereader_next(struct linereader *lr, struct evbuffer *in, char *buf,
			       size_t *len_r);
#endif
