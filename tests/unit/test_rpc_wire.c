/* test_rpc_wire.c - the pure gRPC wire helpers (proto/rpc_wire.c): the
 * message decoder fed one byte at a time and in every split, the length
 * limit checked before anything is buffered, grpc-timeout parse/format
 * edge cases, percent-encoding and base64 round trips, the byte queue. */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <cmocka.h>
#include "lib/common.h"
#include "proto/rpc_wire.h"

/* frame - appends one framed message to buf (returns new length) */
static size_t frame(uint8_t *buf, size_t off, const void *msg, uint32_t len)
{
	rpc_frame_prefix(buf + off, len);
	memcpy(buf + off + RPC_FRAME_PREFIX, msg, len);
	return off + RPC_FRAME_PREFIX + len;
}

struct collected {
	char msgs[8][64];
	size_t lens[8];
	int n;
};

/* feed_split - feeds input in pieces of `step` bytes, collects messages */
static int feed_split(struct rpc_frame *f, const uint8_t *in, size_t len, size_t step,
		      struct collected *out)
{
	for (size_t off = 0; off < len; off += step) {
		const uint8_t *p = in + off;
		size_t n = MAIL_MIN(step, len - off);
		for (;;) {
			const uint8_t *msg;
			size_t mlen;
			int r = rpc_frame_feed(f, &p, &n, &msg, &mlen);
			if (r < 0)
				return r;
			if (r == RPC_FRAME_NEED_MORE) {
				assert_int_equal(n, 0);
				break;
			}
			assert_true(out->n < 8);
			assert_true(mlen < 64);
			memcpy(out->msgs[out->n], msg, mlen);
			out->lens[out->n++] = mlen;
		}
	}
	return 0;
}

static void test_frame_any_split(void **state)
{
	uint8_t in[256];
	size_t len = 0;
	len = frame(in, len, "hello", 5);
	len = frame(in, len, "", 0);
	len = frame(in, len, "a longer message crossing pieces", 32);
	len = frame(in, len, "x", 1);
	for (size_t step = 1; step <= len; step++) {
		struct rpc_frame f;
		struct collected c = { .n = 0 };
		rpc_frame_init(&f, 1024);
		assert_int_equal(feed_split(&f, in, len, step, &c), 0);
		assert_int_equal(c.n, 4);
		assert_int_equal(c.lens[0], 5);
		assert_memory_equal(c.msgs[0], "hello", 5);
		assert_int_equal(c.lens[1], 0);
		assert_int_equal(c.lens[2], 32);
		assert_memory_equal(c.msgs[2], "a longer message crossing pieces", 32);
		assert_int_equal(c.lens[3], 1);
		assert_false(rpc_frame_partial(&f));
		rpc_frame_free(&f);
	}
}

static void test_frame_zero_copy(void **state)
{
	uint8_t in[64];
	size_t len = frame(in, 0, "abc", 3);
	struct rpc_frame f;
	const uint8_t *p = in, *msg;
	size_t n = len, mlen;
	rpc_frame_init(&f, 16);
	assert_int_equal(rpc_frame_feed(&f, &p, &n, &msg, &mlen), RPC_FRAME_MESSAGE);
	assert_ptr_equal(msg, in + RPC_FRAME_PREFIX); /* whole message: no copy */
	assert_null(f.buf);
	assert_int_equal(n, 0);
	rpc_frame_free(&f);
}

static void test_frame_partial(void **state)
{
	uint8_t in[64];
	size_t len = frame(in, 0, "abcdef", 6);
	struct rpc_frame f;
	struct collected c = { .n = 0 };
	rpc_frame_init(&f, 16);
	assert_int_equal(feed_split(&f, in, 3, 1, &c), 0);
	assert_true(rpc_frame_partial(&f)); /* inside the prefix */
	assert_int_equal(feed_split(&f, in + 3, len - 4, 2, &c), 0);
	assert_true(rpc_frame_partial(&f)); /* inside the body */
	assert_int_equal(c.n, 0);
	assert_int_equal(feed_split(&f, in + len - 1, 1, 1, &c), 0);
	assert_int_equal(c.n, 1);
	assert_false(rpc_frame_partial(&f));
	rpc_frame_free(&f);
}

static void test_frame_too_large_before_buffering(void **state)
{
	/* declares 100 bytes against a limit of 99: refused at the 5th byte */
	uint8_t in[5 + 100];
	memset(in, 'z', sizeof(in));
	rpc_frame_prefix(in, 100);
	struct rpc_frame f;
	rpc_frame_init(&f, 99);
	for (size_t i = 0; i < 4; i++) {
		const uint8_t *p = in + i, *msg;
		size_t n = 1, mlen;
		assert_int_equal(rpc_frame_feed(&f, &p, &n, &msg, &mlen), RPC_FRAME_NEED_MORE);
	}
	const uint8_t *p = in + 4, *msg;
	size_t n = sizeof(in) - 4, mlen;
	assert_int_equal(rpc_frame_feed(&f, &p, &n, &msg, &mlen), RPC_FRAME_TOO_LARGE);
	assert_null(f.buf);
	assert_int_equal(f.cap, 0);
	assert_int_equal(f.declared, 100);
	assert_int_equal(n, sizeof(in) - 5); /* the body was not consumed */
	/* the decoder stays failed */
	assert_true(rpc_frame_feed(&f, &p, &n, &msg, &mlen) < 0);
	rpc_frame_free(&f);

	/* a 4 GiB claim with a 4 MiB limit, and exactly the limit is fine */
	uint8_t big[5];
	rpc_frame_prefix(big, 0xffffffffu);
	rpc_frame_init(&f, 4u << 20);
	p = big;
	n = 5;
	assert_int_equal(rpc_frame_feed(&f, &p, &n, &msg, &mlen), RPC_FRAME_TOO_LARGE);
	rpc_frame_free(&f);
	uint8_t ok[5 + 99];
	memset(ok, 'q', sizeof(ok));
	rpc_frame_prefix(ok, 99);
	rpc_frame_init(&f, 99);
	p = ok;
	n = sizeof(ok);
	assert_int_equal(rpc_frame_feed(&f, &p, &n, &msg, &mlen), RPC_FRAME_MESSAGE);
	assert_int_equal(mlen, 99);
	rpc_frame_free(&f);
}

static void test_frame_grows_with_data(void **state)
{
	/* a 1 MiB claim fed 10 bytes: the buffer follows the bytes, not the claim */
	uint8_t in[5 + 10];
	rpc_frame_prefix(in, 1u << 20);
	memset(in + 5, 'a', 10);
	struct rpc_frame f;
	const uint8_t *p = in, *msg;
	size_t n = sizeof(in), mlen;
	rpc_frame_init(&f, 4u << 20);
	assert_int_equal(rpc_frame_feed(&f, &p, &n, &msg, &mlen), RPC_FRAME_NEED_MORE);
	assert_true(f.cap <= 256);
	assert_int_equal(f.have, 10);
	rpc_frame_free(&f);
}

static void test_frame_flags(void **state)
{
	uint8_t in[6] = { 1, 0, 0, 0, 1, 'x' };
	struct rpc_frame f;
	const uint8_t *p = in, *msg;
	size_t n = sizeof(in), mlen;
	rpc_frame_init(&f, 16);
	assert_int_equal(rpc_frame_feed(&f, &p, &n, &msg, &mlen), RPC_FRAME_COMPRESSED);
	rpc_frame_free(&f);
	in[0] = 7;
	p = in;
	n = sizeof(in);
	rpc_frame_init(&f, 16);
	assert_int_equal(rpc_frame_feed(&f, &p, &n, &msg, &mlen), RPC_FRAME_BAD_FLAG);
	rpc_frame_free(&f);
}

static void test_frame_big_message_split(void **state)
{
	size_t len = 300000;
	uint8_t *in = malloc(len + 5);
	for (size_t i = 0; i < len; i++)
		in[5 + i] = (uint8_t)(i * 7);
	rpc_frame_prefix(in, (uint32_t)len);
	struct rpc_frame f;
	rpc_frame_init(&f, 1u << 20);
	int got = 0;
	for (size_t off = 0; off < len + 5; off += 16384) {
		const uint8_t *p = in + off, *msg;
		size_t n = MAIL_MIN((size_t)16384, len + 5 - off), mlen;
		int r = rpc_frame_feed(&f, &p, &n, &msg, &mlen);
		if (r == RPC_FRAME_MESSAGE) {
			assert_int_equal(mlen, len);
			assert_memory_equal(msg, in + 5, len);
			got++;
		}
	}
	assert_int_equal(got, 1);
	rpc_frame_free(&f);
	free(in);
}

static void test_timeout_parse(void **state)
{
	int64_t ms = -1;
	assert_int_equal(rpc_timeout_parse("1500m", 5, &ms), 0);
	assert_int_equal(ms, 1500);
	assert_int_equal(rpc_timeout_parse("2S", 2, &ms), 0);
	assert_int_equal(ms, 2000);
	assert_int_equal(rpc_timeout_parse("3M", 2, &ms), 0);
	assert_int_equal(ms, 180000);
	assert_int_equal(rpc_timeout_parse("1H", 2, &ms), 0);
	assert_int_equal(ms, 3600000);
	assert_int_equal(rpc_timeout_parse("1u", 2, &ms), 0);
	assert_int_equal(ms, 1); /* rounded up */
	assert_int_equal(rpc_timeout_parse("1000u", 5, &ms), 0);
	assert_int_equal(ms, 1);
	assert_int_equal(rpc_timeout_parse("1001u", 5, &ms), 0);
	assert_int_equal(ms, 2);
	assert_int_equal(rpc_timeout_parse("5n", 2, &ms), 0);
	assert_int_equal(ms, 1);
	assert_int_equal(rpc_timeout_parse("0m", 2, &ms), 0);
	assert_int_equal(ms, 0);
	assert_int_equal(rpc_timeout_parse("99999999H", 9, &ms), 0);
	assert_int_equal(ms, 99999999LL * 3600000);
	assert_int_equal(rpc_timeout_parse("00000001S", 9, &ms), 0);
	assert_int_equal(ms, 1000);
	/* bad: too many digits, no digits, no unit, bad unit, sign, space */
	assert_int_equal(rpc_timeout_parse("123456789S", 10, &ms), -1);
	assert_int_equal(rpc_timeout_parse("S", 1, &ms), -1);
	assert_int_equal(rpc_timeout_parse("", 0, &ms), -1);
	assert_int_equal(rpc_timeout_parse("100", 3, &ms), -1);
	assert_int_equal(rpc_timeout_parse("10s", 3, &ms), -1);
	assert_int_equal(rpc_timeout_parse("-1S", 3, &ms), -1);
	assert_int_equal(rpc_timeout_parse(" 1S", 3, &ms), -1);
	assert_int_equal(rpc_timeout_parse("1 S", 3, &ms), -1);
	/* the length is honoured, not the NUL */
	assert_int_equal(rpc_timeout_parse("15mXX", 3, &ms), 0);
	assert_int_equal(ms, 15);
}

static void test_timeout_format(void **state)
{
	char buf[16];
	int64_t ms;
	rpc_timeout_format(1500, buf, sizeof(buf));
	assert_string_equal(buf, "1500m");
	rpc_timeout_format(0, buf, sizeof(buf));
	assert_string_equal(buf, "1m");
	rpc_timeout_format(99999999, buf, sizeof(buf));
	assert_string_equal(buf, "99999999m");
	rpc_timeout_format(100000000, buf, sizeof(buf));
	assert_string_equal(buf, "100000S");
	rpc_timeout_format(100000001, buf, sizeof(buf));
	assert_string_equal(buf, "100001S"); /* rounded up, never shorter */
	rpc_timeout_format(INT64_MAX / 2, buf, sizeof(buf));
	assert_string_equal(buf, "99999999H");
	/* every formatted value parses back to at least the input */
	for (int64_t v = 1; v < (int64_t)1 << 50; v = v * 3 + 1) {
		rpc_timeout_format(v, buf, sizeof(buf));
		assert_true(strlen(buf) <= 9);
		assert_int_equal(rpc_timeout_parse(buf, strlen(buf), &ms), 0);
		assert_true(ms >= v || v > 99999999LL * 3600000);
	}
}

static void test_percent(void **state)
{
	const char *cases[] = { "", "plain ascii", "100% done", "caf\xc3\xa9 \xe2\x82\xac",
				"tab\tnew\nline", "~ and \x7f", "%%%", "%41" };
	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		size_t dl;
		char *e = rpc_percent_encode(cases[i], strlen(cases[i]));
		for (const char *p = e; *p; p++)
			assert_true(*p >= 0x20 && *p <= 0x7e);
		char *d = rpc_percent_decode(e, strlen(e), &dl);
		assert_int_equal(dl, strlen(cases[i]));
		assert_string_equal(d, cases[i]);
		free(e);
		free(d);
	}
	char *e = rpc_percent_encode("100% caf\xc3\xa9", 10);
	assert_string_equal(e, "100%25 caf%C3%A9");
	free(e);
	/* lenient decoding: bad escapes pass through, lowercase hex accepted */
	size_t dl;
	char *d = rpc_percent_decode("a%zzb%4", 7, &dl);
	assert_string_equal(d, "a%zzb%4");
	free(d);
	d = rpc_percent_decode("%e2%82%ac%", 10, &dl);
	assert_string_equal(d, "\xe2\x82\xac%");
	free(d);
	d = rpc_percent_decode("x%00y", 5, &dl);
	assert_int_equal(dl, 3);
	assert_memory_equal(d, "x\0y", 3);
	free(d);
}

static void test_base64(void **state)
{
	const char *plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	const char *enc[] = { "", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy" };
	const char *padded[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy" };
	for (size_t i = 0; i < N_ELEMENTS(plain); i++) {
		size_t n;
		char *e = rpc_base64_encode(plain[i], strlen(plain[i]));
		assert_string_equal(e, enc[i]); /* unpadded when sending */
		char *d = rpc_base64_decode(e, strlen(e), &n);
		assert_non_null(d);
		assert_int_equal(n, strlen(plain[i]));
		assert_memory_equal(d, plain[i], n);
		free(d);
		d = rpc_base64_decode(padded[i], strlen(padded[i]), &n); /* padded accepted */
		assert_non_null(d);
		assert_string_equal(d, plain[i]);
		free(d);
		free(e);
	}
	uint8_t bin[256];
	for (int i = 0; i < 256; i++)
		bin[i] = (uint8_t)i;
	char *e = rpc_base64_encode(bin, sizeof(bin));
	size_t n;
	char *d = rpc_base64_decode(e, strlen(e), &n);
	assert_int_equal(n, 256);
	assert_memory_equal(d, bin, 256);
	free(d);
	free(e);
	assert_null(rpc_base64_decode("Zm9v!", 5, &n));
	assert_null(rpc_base64_decode("Z", 1, &n));
	assert_null(rpc_base64_decode("Zg=x", 4, &n));
	assert_null(rpc_base64_decode("Z===", 4, &n));
}

static void test_md_names(void **state)
{
	assert_true(rpc_md_name_valid("x-test"));
	assert_true(rpc_md_name_valid("trace.id_2"));
	assert_false(rpc_md_name_valid(""));
	assert_false(rpc_md_name_valid("X-Test"));
	assert_false(rpc_md_name_valid(":path"));
	assert_false(rpc_md_name_valid("grpc-timeout"));
	assert_false(rpc_md_name_valid("a b"));
	assert_true(rpc_md_is_bin("key-bin", 7));
	assert_false(rpc_md_is_bin("bin", 3));
	assert_false(rpc_md_is_bin("key-bim", 7));
}

static void test_bytes(void **state)
{
	struct rpc_bytes b = { 0 };
	uint8_t out[1000];
	for (int round = 0; round < 50; round++) {
		for (int i = 0; i < 10; i++)
			rpc_bytes_append(&b, "0123456789", 10);
		assert_int_equal(rpc_bytes_len(&b), 100);
		assert_int_equal(rpc_bytes_take(&b, out, 33), 33);
		assert_memory_equal(out, "0123456789012", 13);
		assert_int_equal(rpc_bytes_take(&b, out, 1000), 67);
		assert_memory_equal(out, "3456789", 7);
		assert_int_equal(rpc_bytes_len(&b), 0);
	}
	assert_int_equal(rpc_bytes_take(&b, out, 10), 0);
	uint8_t *p = rpc_bytes_reserve(&b, 5);
	memcpy(p, "hello", 5);
	rpc_bytes_commit(&b, 5);
	assert_int_equal(rpc_bytes_take(&b, out, 5), 5);
	assert_memory_equal(out, "hello", 5);
	rpc_bytes_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_frame_any_split),
		cmocka_unit_test(test_frame_zero_copy),
		cmocka_unit_test(test_frame_partial),
		cmocka_unit_test(test_frame_too_large_before_buffering),
		cmocka_unit_test(test_frame_grows_with_data),
		cmocka_unit_test(test_frame_flags),
		cmocka_unit_test(test_frame_big_message_split),
		cmocka_unit_test(test_timeout_parse),
		cmocka_unit_test(test_timeout_format),
		cmocka_unit_test(test_percent),
		cmocka_unit_test(test_base64),
		cmocka_unit_test(test_md_names),
		cmocka_unit_test(test_bytes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
