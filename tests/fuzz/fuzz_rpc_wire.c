/* fuzz_rpc_wire.c - libFuzzer harness for the gRPC wire parsers that see
 * peer bytes (proto/rpc_wire.c): the message decoder (fed in input-chosen
 * splits and compared with a one-shot reference decode), grpc-timeout
 * parsing (and its formatter's round trip), percent-decoding and base64
 * decoding (round trips through the encoders). Any crash, leak, sanitizer
 * report or mismatch (abort) is a finding. */
#include "lib/common.h"
#include "proto/rpc_wire.h"
#include <stdlib.h>

#define MAX_MSGS 4096

struct msgref {
	size_t off, len; /* where the message lies in the input */
};

/* reference_decode - the whole input at once, simply; returns the count of
 * messages, *err_r the error (0 none) and *partial_r whether a message was
 * left incomplete */
static size_t reference_decode(const uint8_t *in, size_t len, size_t max, struct msgref *out,
			       int *err_r, bool *partial_r)
{
	size_t n = 0, off = 0;
	*err_r = 0;
	*partial_r = false;
	while (off < len) {
		if (len - off < RPC_FRAME_PREFIX) {
			*partial_r = true;
			break;
		}
		uint32_t m = ((uint32_t)in[off + 1] << 24) | ((uint32_t)in[off + 2] << 16) |
			     ((uint32_t)in[off + 3] << 8) | in[off + 4];
		if (in[off] == 1) {
			*err_r = RPC_FRAME_COMPRESSED;
			break;
		}
		if (in[off] != 0) {
			*err_r = RPC_FRAME_BAD_FLAG;
			break;
		}
		if (m > max) {
			*err_r = RPC_FRAME_TOO_LARGE;
			break;
		}
		if (len - off - RPC_FRAME_PREFIX < m) {
			*partial_r = true;
			break;
		}
		if (n < MAX_MSGS) {
			out[n].off = off + RPC_FRAME_PREFIX;
			out[n].len = m;
		}
		n++;
		off += RPC_FRAME_PREFIX + m;
	}
	return n;
}

static void fuzz_frames(const uint8_t *data, size_t size, size_t max, const uint8_t *splits,
			size_t nsplits)
{
	static struct msgref ref[MAX_MSGS];
	int ref_err;
	bool ref_partial;
	size_t nref = reference_decode(data, size, max, ref, &ref_err, &ref_partial);
	struct rpc_frame f;
	size_t got = 0, off = 0, si = 0;
	int err = 0;

	rpc_frame_init(&f, max);
	while (off < size && err == 0) {
		size_t step = nsplits > 0 ? (size_t)splits[si++ % nsplits] + 1 : size;
		const uint8_t *p = data + off;
		size_t n = MAIL_MIN(step, size - off);
		off += n;
		for (;;) {
			const uint8_t *msg;
			size_t mlen;
			int r = rpc_frame_feed(&f, &p, &n, &msg, &mlen);
			if (r < 0) {
				err = r;
				break;
			}
			if (r == RPC_FRAME_NEED_MORE) {
				if (n != 0)
					abort(); /* NEED_MORE must mean the input is used up */
				break;
			}
			if (mlen > max || msg == NULL)
				abort();
			if (got < MAX_MSGS && got < nref &&
			    (mlen != ref[got].len || memcmp(msg, data + ref[got].off, mlen) != 0))
				abort(); /* differs from the one-shot decode */
			got++;
		}
	}
	if (got != nref || err != ref_err)
		abort();
	if (err == 0 && rpc_frame_partial(&f) != ref_partial)
		abort();
	if (f.cap > max + 256 && f.cap > 256)
		abort(); /* never buffered beyond the limit */
	rpc_frame_free(&f);
}

static void fuzz_timeout(const uint8_t *data, size_t size)
{
	int64_t ms;
	char buf[24];
	if (rpc_timeout_parse((const char *)data, size, &ms) != 0)
		return;
	if (ms < 0 || ms > 99999999LL * 3600000)
		abort();
	if (ms > 0) {
		int64_t back;
		rpc_timeout_format(ms, buf, sizeof(buf));
		if (rpc_timeout_parse(buf, strlen(buf), &back) != 0 || back < ms)
			abort();
	}
}

static void fuzz_text(const uint8_t *data, size_t size)
{
	size_t dlen, d2len;
	/* decode anything; encoding the result and decoding again is the identity */
	char *d = rpc_percent_decode((const char *)data, size, &dlen);
	char *e = rpc_percent_encode(d, dlen);
	for (const char *p = e; *p; p++)
		if (*p < 0x20 || *p > 0x7e)
			abort();
	char *d2 = rpc_percent_decode(e, strlen(e), &d2len);
	if (d2len != dlen || memcmp(d, d2, dlen) != 0)
		abort();
	free(d);
	free(e);
	free(d2);
	/* base64: whatever decodes re-encodes to something that decodes the same */
	d = rpc_base64_decode((const char *)data, size, &dlen);
	if (d != NULL) {
		e = rpc_base64_encode(d, dlen);
		d2 = rpc_base64_decode(e, strlen(e), &d2len);
		if (d2 == NULL || d2len != dlen || memcmp(d, d2, dlen) != 0)
			abort();
		free(e);
		free(d2);
		free(d);
	}
	e = rpc_base64_encode(data, size);
	d = rpc_base64_decode(e, strlen(e), &dlen);
	if (d == NULL || dlen != size || memcmp(d, data, size) != 0)
		abort();
	free(d);
	free(e);
	(void)rpc_md_name_valid("x");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 4)
		return 0;
	/* header: 2 bytes max message size, 1 byte split count; splits follow */
	size_t max = ((size_t)data[0] << 8 | data[1]) % 5000;
	size_t nsplits = MAIL_MIN((size_t)data[2] % 16, size - 3);
	const uint8_t *splits = data + 3;
	const uint8_t *body = data + 3 + nsplits;
	size_t blen = size - 3 - nsplits;

	fuzz_frames(body, blen, max, splits, nsplits);
	fuzz_timeout(body, MAIL_MIN(blen, (size_t)12));
	fuzz_text(body, blen);
	return 0;
}
