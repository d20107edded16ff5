/* test_linereader.c - the bounded line reader fed whole, one byte at a time
 * and in random splits: CRLF and bare LF (and telling them apart), CRLF split
 * across feeds, lines of exactly max_len and max_len + 1, NUL bytes,
 * megabytes without a LF, a changed limit, and the bound on what stays
 * buffered. */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <cmocka.h>
#include "lib/common.h"
#include "lib/linereader.h"
#include <event2/buffer.h>

#define TOO_LONG_MARK "<too long>"

/* events - what the reader produced, one entry per LR_LINE / LR_TOO_LONG */
struct events {
	char *items[256];
	size_t lens[256];
	size_t count;
};

static void events_add(struct events *ev, const char *data, size_t len)
{
	assert_true(ev->count < N_ELEMENTS(ev->items));
	ev->items[ev->count] = malloc(len + 1);
	memcpy(ev->items[ev->count], data, len);
	ev->items[ev->count][len] = '\0';
	ev->lens[ev->count++] = len;
}

static void events_free(struct events *ev)
{
	for (size_t i = 0; i < ev->count; i++)
		free(ev->items[i]);
	ev->count = 0;
}

/* drain_reader - calls linereader_next until LR_NEED_MORE, recording events
 * and checking the buffering bound */
static void drain_reader(struct linereader *lr, struct evbuffer *in, char *buf, struct events *ev)
{
	for (;;) {
		size_t len = 12345;
		enum lr_status st = linereader_next(lr, in, buf, &len);
		if (st == LR_NEED_MORE) {
			assert_true(evbuffer_get_length(in) <= linereader_max_len(lr) + 1);
			return;
		}
		if (st == LR_TOO_LONG) {
			events_add(ev, TOO_LONG_MARK, strlen(TOO_LONG_MARK));
			continue;
		}
		assert_int_equal(st, LR_LINE);
		assert_true(len <= linereader_max_len(lr));
		assert_int_equal(buf[len], '\0');
		assert_null(memchr(buf, '\n', len));
		events_add(ev, buf, len);
	}
}

/* feed_split - feeds data in pieces whose sizes come from sizes[] (cycled) */
static void feed_split(size_t max_len, const char *data, size_t len, const size_t *sizes,
		       size_t n_sizes, struct events *ev)
{
	struct linereader lr;
	struct evbuffer *in = evbuffer_new();
	char *buf = malloc(max_len + 1);
	linereader_init(&lr, max_len);
	size_t off = 0, k = 0;
	while (off < len) {
		size_t want = sizes[k++ % n_sizes];
		size_t piece = MAIL_MIN(want, len - off);
		evbuffer_add(in, data + off, piece);
		off += piece;
		drain_reader(&lr, in, buf, ev);
	}
	free(buf);
	evbuffer_free(in);
}

static void expect_events(const struct events *ev, const char *const *want, size_t n)
{
	if (ev->count != n) {
		for (size_t i = 0; i < ev->count; i++)
			print_error("got[%zu] = '%s'\n", i, ev->items[i]);
	}
	assert_int_equal(ev->count, n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(ev->lens[i], strlen(want[i]));
		assert_memory_equal(ev->items[i], want[i], ev->lens[i]);
	}
}

/* the stream most tests use: max_len 8 */
static const char stream[] =
	"HELO a\r\n"          /* CRLF */
	"bare\n"              /* bare LF */
	"\r\n"                /* empty */
	"\n"                  /* empty, bare */
	"12345678\r\n"        /* exactly max_len */
	"123456789\r\n"       /* max_len + 1 */
	"next\r\n"            /* read correctly after it */
	"1234567\r\r\n"       /* 7 + CR data = 8 */
	"12345678\r\r\n"      /* 8 + CR data = 9: too long */
	"a\rb\n"              /* CR inside is data */
	"123456789012345678901234567890 long\r\n" /* much too long */
	"12345678\n"          /* exactly max_len, bare LF */
	"123456789\n"         /* too long, bare LF */
	"end\r\n"
	"partial";            /* no EOL: stays buffered */
static const char *const stream_events[] = {
	"HELO a", "bare", "", "", "12345678", TOO_LONG_MARK, "next", "1234567\r",
	TOO_LONG_MARK, "a\rb", TOO_LONG_MARK, "12345678", TOO_LONG_MARK, "end",
};

static void test_whole(void **state)
{
	struct events ev = { 0 };
	size_t all = sizeof(stream) - 1;
	feed_split(8, stream, sizeof(stream) - 1, &all, 1, &ev);
	expect_events(&ev, stream_events, N_ELEMENTS(stream_events));
	events_free(&ev);
}

static void test_byte_at_a_time(void **state)
{
	struct events ev = { 0 };
	size_t one = 1;
	feed_split(8, stream, sizeof(stream) - 1, &one, 1, &ev);
	expect_events(&ev, stream_events, N_ELEMENTS(stream_events));
	events_free(&ev);
}

static void test_random_splits(void **state)
{
	srand(12345);
	for (int round = 0; round < 500; round++) {
		size_t sizes[32];
		for (size_t i = 0; i < N_ELEMENTS(sizes); i++)
			sizes[i] = 1 + (size_t)rand() % 14;
		struct events ev = { 0 };
		feed_split(8, stream, sizeof(stream) - 1, sizes, N_ELEMENTS(sizes), &ev);
		expect_events(&ev, stream_events, N_ELEMENTS(stream_events));
		events_free(&ev);
	}
}

static void test_crlf_split(void **state)
{
	struct linereader lr;
	struct evbuffer *in = evbuffer_new();
	char buf[9];
	size_t len;
	linereader_init(&lr, 8);
	/* max_len bytes then a CR: cannot know yet whether the CR ends the line */
	evbuffer_add(in, "12345678\r", 9);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
	assert_int_equal(evbuffer_get_length(in), 9);
	evbuffer_add(in, "\n", 1);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_int_equal(len, 8);
	assert_string_equal(buf, "12345678");
	assert_int_equal(evbuffer_get_length(in), 0);

	/* the same, but what follows the CR is not LF: too long, said at once */
	evbuffer_add(in, "12345678\r", 9);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
	evbuffer_add(in, "x", 1);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_TOO_LONG);
	assert_int_equal(evbuffer_get_length(in), 0);
	evbuffer_add(in, "yz\r", 3);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
	evbuffer_add(in, "\nok\r", 4);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
	evbuffer_add(in, "\n", 1);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_string_equal(buf, "ok");

	/* max_len + 1 bytes, the last not a CR: too long before any EOL arrives */
	evbuffer_add(in, "123456789", 9);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_TOO_LONG);
	evbuffer_add(in, "\r\nafter\n", 8);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_string_equal(buf, "after");
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
	evbuffer_free(in);
}

static void test_bare_lf_flag(void **state)
{
	struct linereader lr;
	struct evbuffer *in = evbuffer_new();
	char buf[9];
	size_t len;
	linereader_init(&lr, 8);
	evbuffer_add(in, "a\r\nb\n\n\r\n.\n", 10);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_false(linereader_last_bare_lf(&lr));
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_true(linereader_last_bare_lf(&lr));
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_int_equal(len, 0);
	assert_true(linereader_last_bare_lf(&lr));
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_int_equal(len, 0);
	assert_false(linereader_last_bare_lf(&lr));
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_string_equal(buf, ".");
	assert_true(linereader_last_bare_lf(&lr)); /* "\n.\n": a smuggled end of data */
	evbuffer_free(in);
}

static void test_nul_bytes(void **state)
{
	struct linereader lr;
	struct evbuffer *in = evbuffer_new();
	char buf[9];
	size_t len;
	linereader_init(&lr, 8);
	evbuffer_add(in, "a\0b\0\r\n\0\n", 9);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_int_equal(len, 4);
	assert_memory_equal(buf, "a\0b\0", 5);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_int_equal(len, 1);
	assert_int_equal(buf[0], '\0');
	/* NULs count toward the limit */
	evbuffer_add(in, "\0\0\0\0\0\0\0\0\0\n", 10);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_TOO_LONG);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
	evbuffer_free(in);
}

static void test_flood_without_lf(void **state)
{
	struct linereader lr;
	struct evbuffer *in = evbuffer_new();
	char buf[65];
	size_t len;
	size_t big = 1024 * 1024;
	char *junk = malloc(big);
	memset(junk, 'x', big);
	linereader_init(&lr, 64);
	evbuffer_add(in, junk, big);
	/* once, then silence, with nothing kept however much arrives */
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_TOO_LONG);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
		assert_int_equal(evbuffer_get_length(in), 0);
		evbuffer_add(in, junk, big);
	}
	evbuffer_add(in, "tail\r\nHELP\r\n", 12);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_string_equal(buf, "HELP");
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
	free(junk);
	evbuffer_free(in);
}

static void test_set_max_len(void **state)
{
	struct linereader lr;
	struct evbuffer *in = evbuffer_new();
	char buf[33];
	size_t len;
	linereader_init(&lr, 32);
	linereader_set_max_len(&lr, 4); /* before authentication */
	assert_int_equal(linereader_max_len(&lr), 4);
	evbuffer_add(in, "abcd\nabcde\n", 11);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_TOO_LONG);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
	linereader_set_max_len(&lr, 32); /* after */
	evbuffer_add(in, "abcdefghijklmnopqrstuvwxyz\r\n", 28);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_int_equal(len, 26);

	/* a reset forgets a skip in progress (STARTTLS: the input was thrown away) */
	linereader_set_max_len(&lr, 2);
	evbuffer_add(in, "abcdef", 6);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_TOO_LONG);
	evbuffer_drain(in, evbuffer_get_length(in));
	linereader_reset(&lr);
	evbuffer_add(in, "ok\n", 3);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_string_equal(buf, "ok");

	/* max_len 0: only empty lines */
	linereader_set_max_len(&lr, 0);
	evbuffer_add(in, "\r\n\nx\n\r", 6);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_int_equal(len, 0);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_LINE);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_TOO_LONG);
	assert_int_equal(linereader_next(&lr, in, buf, &len), LR_NEED_MORE);
	assert_int_equal(evbuffer_get_length(in), 1);
	evbuffer_free(in);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_whole),
		cmocka_unit_test(test_byte_at_a_time),
		cmocka_unit_test(test_random_splits),
		cmocka_unit_test(test_crlf_split),
		cmocka_unit_test(test_bare_lf_flag),
		cmocka_unit_test(test_nul_bytes),
		cmocka_unit_test(test_flood_without_lf),
		cmocka_unit_test(test_set_max_len),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
