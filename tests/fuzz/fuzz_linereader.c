/* fuzz_linereader.c - libFuzzer harness for lib/linereader.
 * Input: byte 0 picks max_len (0..31), byte 1 seeds the piece sizes, the rest
 * is the stream. The stream is fed in pieces through linereader_next, and
 * what comes out is checked against a plain model (split at LF, drop one CR
 * before it, longer than max_len = one "too long", bare LF or CRLF as
 * linereader_last_bare_lf says), together with the
 * reader's own promises: NUL-terminated lines within max_len, no LF inside,
 * at most max_len + 1 bytes left buffered on LR_NEED_MORE. */
#include "lib/common.h"
#include "lib/linereader.h"
#include <stdlib.h>
#include <event2/buffer.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "check failed: %s (line %d)\n", #cond, __LINE__); abort(); } } while (0)

/* the model's expectation, walked in step with the reader's output */
struct model {
	const uint8_t *s;
	size_t len, pos;   /* next unconsumed byte of the stream */
	size_t max_len;
};

/* model_next - the next complete event the model expects: 1 line (content in
 * *start and *n, *bare when it ended in LF alone), 2 too long, 0 none (only a
 * partial line left) */
static int model_next(struct model *m, bool final, size_t *start, size_t *n, bool *bare)
{
	if (m->pos >= m->len)
		return 0;
	const uint8_t *lf = memchr(m->s + m->pos, '\n', m->len - m->pos);
	if (lf == NULL) {
		/* a partial line: too long already when certain, like the reader */
		size_t l = m->len - m->pos;
		if (final && (l >= m->max_len + 2 ||
			      (l >= m->max_len + 1 && m->s[m->pos + m->max_len] != '\r'))) {
			m->pos = m->len;
			return 2;
		}
		return 0;
	}
	size_t end = (size_t)(lf - m->s);
	size_t cl = end - m->pos;
	*bare = true;
	if (cl > 0 && m->s[end - 1] == '\r') {
		cl--;
		*bare = false;
	}
	*start = m->pos;
	*n = cl;
	m->pos = end + 1;
	return cl > m->max_len ? 2 : 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	size_t max_len = data[0] % 32;
	uint32_t rng = data[1] * 2654435761u + 1;
	const uint8_t *s = data + 2;
	size_t len = size - 2;

	struct linereader lr;
	linereader_init(&lr, max_len);
	struct evbuffer *in = evbuffer_new();
	char *buf = malloc(max_len + 1);
	/* what the reader produced, flattened: 'L' (CRLF) or 'B' (bare LF) + line, or 'T' */
	size_t cap = 2 * len + 16, used = 0;
	uint8_t *got = malloc(cap);

	size_t off = 0;
	while (off < len) {
		rng = rng * 1103515245u + 12345u;
		size_t piece = 1 + (rng >> 16) % 40;
		if (piece > len - off)
			piece = len - off;
		evbuffer_add(in, s + off, piece);
		off += piece;
		for (;;) {
			size_t n = 99999;
			enum lr_status st = linereader_next(&lr, in, buf, &n);
			if (st == LR_NEED_MORE) {
				CHECK(evbuffer_get_length(in) <= max_len + 1);
				break;
			}
			if (st == LR_TOO_LONG) {
				CHECK(used + 1 <= cap);
				got[used++] = 'T';
				continue;
			}
			CHECK(st == LR_LINE);
			CHECK(n <= max_len);
			CHECK(buf[n] == '\0');
			CHECK(memchr(buf, '\n', n) == NULL);
			CHECK(used + 1 + n <= cap);
			got[used++] = linereader_last_bare_lf(&lr) ? 'B' : 'L';
			memcpy(got + used, buf, n);
			used += n;
		}
	}

	/* replay the model and compare */
	struct model m = { s, len, 0, max_len };
	size_t g = 0, start = 0, n = 0;
	bool bare = false;
	int ev;
	while ((ev = model_next(&m, true, &start, &n, &bare)) != 0) {
		if (ev == 2) {
			CHECK(g < used && got[g] == 'T');
			g++;
		} else {
			CHECK(g < used && got[g] == (bare ? 'B' : 'L'));
			g++;
			CHECK(g + n <= used);
			CHECK(memcmp(got + g, s + start, n) == 0);
			g += n;
		}
	}
	CHECK(g == used);
	/* whatever the model left unconsumed is exactly what stays buffered */
	if (!lr.skipping)
		CHECK(evbuffer_get_length(in) == len - m.pos);
	else
		CHECK(evbuffer_get_length(in) == 0);

	free(got);
	free(buf);
	evbuffer_free(in);
	return 0;
}
