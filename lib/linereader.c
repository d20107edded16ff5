/* linereader.c - bounded LF / CRLF line splitting over an evbuffer.
 * Only the first max_len + 2 bytes of the input are ever looked at to find a
 * line's end, so an input evbuffer holding megabytes without a LF costs
 * O(max_len) per call, and the skip state drains what it scans. The caller
 * owns the evbuffer and the line buffer; the reader owns nothing. */
#include "lib/common.h"
#include "lib/linereader.h"
#include "lib/log.h"
#include <event2/buffer.h>

void linereader_init(struct linereader *lr, size_t max_len)
{
	lr->skipping = false;
	lr->last_bare_lf = false;
	lr->max_len = 0;
	linereader_set_max_len(lr, max_len);
}

void linereader_set_max_len(struct linereader *lr, size_t max_len)
{
	if (max_len > LINEREADER_MAX)
		log_panic("line length limit too large", "max_len=%zu", max_len);
	lr->max_len = max_len;
}

size_t linereader_max_len(const struct linereader *lr)
{
	return lr->max_len;
}

void linereader_reset(struct linereader *lr)
{
	lr->skipping = false;
	lr->last_bare_lf = false;
}

bool linereader_last_bare_lf(const struct linereader *lr)
{
	return lr->last_bare_lf;
}

/* lr_find_lf - position of the first LF among the first `limit` bytes of in */
static bool lr_find_lf(struct evbuffer *in, size_t limit, size_t *pos_r)
{
	struct evbuffer_iovec vec[16];
	struct evbuffer_ptr ptr;
	size_t off = 0;

	while (off < limit) {
		if (evbuffer_ptr_set(in, &ptr, off, EVBUFFER_PTR_SET) < 0)
			return false;
		int n = evbuffer_peek(in, (ev_ssize_t)(limit - off), &ptr, vec, (int)N_ELEMENTS(vec));
		if (n <= 0)
			return false;
		if (n > (int)N_ELEMENTS(vec))
			n = (int)N_ELEMENTS(vec); /* the rest on the next round */
		for (int i = 0; i < n && off < limit; i++) {
			size_t l = MAIL_MIN(vec[i].iov_len, limit - off);
			const char *lf = memchr(vec[i].iov_base, '\n', l);
			if (lf != NULL) {
				*pos_r = off + (size_t)(lf - (const char *)vec[i].iov_base);
				return true;
			}
			off += l;
		}
	}
	return false;
}

/* lr_byte_at - the byte at position pos (which must exist) */
static unsigned char lr_byte_at(struct evbuffer *in, size_t pos)
{
	struct evbuffer_ptr ptr;
	unsigned char c = 0;
	if (evbuffer_ptr_set(in, &ptr, pos, EVBUFFER_PTR_SET) == 0)
		(void)evbuffer_copyout_from(in, &ptr, &c, 1);
	return c;
}

/* lr_skip - drops bytes up to and including the next LF; true when it found one */
static bool lr_skip(struct evbuffer *in)
{
	size_t len = evbuffer_get_length(in);
	size_t pos;
	if (lr_find_lf(in, len, &pos)) {
		evbuffer_drain(in, pos + 1);
		return true;
	}
	evbuffer_drain(in, len);
	return false;
}

enum lr_status linereader_next(struct linereader *lr, struct evbuffer *in, char *buf,
			       size_t *len_r)
{
	const size_t max = lr->max_len;
	size_t pos;

	*len_r = 0;
	if (lr->skipping) {
		if (!lr_skip(in))
			return LR_NEED_MORE;
		lr->skipping = false;
	}

	size_t avail = evbuffer_get_length(in);
	/* max bytes, a CR and the LF after it is the longest acceptable line */
	size_t window = MAIL_MIN(avail, max + 2);
	if (lr_find_lf(in, window, &pos)) {
		/* pos <= max + 1 bytes fit in buf (max + 1) */
		size_t n = pos;
		if (n > 0)
			(void)evbuffer_remove(in, buf, n);
		evbuffer_drain(in, 1);
		bool bare = n == 0 || buf[n - 1] != '\r';
		if (!bare)
			n--;
		if (n > max)
			return LR_TOO_LONG; /* ended right here: nothing more to skip */
		buf[n] = '\0';
		*len_r = n;
		lr->last_bare_lf = bare;
		return LR_LINE;
	}
	/* No LF yet. Too long is certain with max + 2 bytes, or with max + 1
	 * when the last of them is not a CR (which could still start CRLF). */
	if (avail >= max + 2 || (avail == max + 1 && lr_byte_at(in, max) != '\r')) {
		evbuffer_drain(in, window);
		lr->skipping = true;
		return LR_TOO_LONG;
	}
	return LR_NEED_MORE;
}
