/* rpc_wire.h - pure helpers of the gRPC wire format (no sockets, no event
 * base): the incremental length-prefixed message decoder, grpc-timeout
 * parse/format, grpc-message percent-encoding, base64 for "-bin" metadata,
 * and a small byte queue. Everything here is fed untrusted peer bytes by
 * rpc_server.c / rpc_client.c, is unit-tested one byte at a time
 * (tests/unit/test_rpc_wire.c) and fuzzed (tests/fuzz/fuzz_rpc_wire.c). */
#ifndef MAIL_RPC_WIRE_H
#define MAIL_RPC_WIRE_H
#include "lib/common.h"
#include <sys/types.h>

#define RPC_FRAME_PREFIX 5 /* 1 byte compressed flag + 4 bytes big-endian length */

/* ------------------------------------------------------- message decoder */

enum rpc_frame_result {
	RPC_FRAME_NEED_MORE = 0,   /* input exhausted, no whole message yet */
	RPC_FRAME_MESSAGE = 1,     /* *msg_r / *len_r hold one whole message */
	RPC_FRAME_TOO_LARGE = -1,  /* declared length above the limit (nothing buffered) */
	RPC_FRAME_COMPRESSED = -2, /* compressed flag set: we negotiate identity only */
	RPC_FRAME_BAD_FLAG = -3,   /* flag byte neither 0 nor 1 */
};

struct rpc_frame {
	size_t max;           /* largest message accepted */
	uint8_t hdr[RPC_FRAME_PREFIX];
	uint8_t hdr_len;      /* prefix bytes collected so far */
	bool in_body;         /* prefix complete, collecting `need` bytes */
	bool failed;          /* an error was returned: the stream is dead */
	uint32_t need;        /* declared message length */
	uint8_t *buf;         /* message being assembled across chunks */
	size_t have, cap;
	size_t declared;      /* last declared length (for error messages) */
};

void rpc_frame_init(struct rpc_frame *f, size_t max);
void rpc_frame_free(struct rpc_frame *f);
/* rpc_frame_feed - consumes input from *buf and *len (advanced in place) until a
 * whole message is complete (RPC_FRAME_MESSAGE; the bytes stay valid until
 * the next feed/free, and point into the input when the message was not
 * split), the input is used up (RPC_FRAME_NEED_MORE), or an error (< 0).
 * The declared length is checked against `max` before any byte is buffered,
 * and the buffer grows with the bytes received, never from the claim alone. */
int rpc_frame_feed(struct rpc_frame *f, const uint8_t **buf, size_t *len,
		   const uint8_t **msg_r, size_t *len_r);
/* rpc_frame_partial - true when a message has begun but is not complete
 * (end of stream here means a truncated message) */
bool rpc_frame_partial(const struct rpc_frame *f);
/* rpc_frame_prefix - writes the 5-byte prefix for a message of len bytes */
void rpc_frame_prefix(uint8_t out[RPC_FRAME_PREFIX], uint32_t len);

/* ----------------------------------------------------------- grpc-timeout */

/* rpc_timeout_parse - "1-8 digits + unit (H M S m u n)" -> milliseconds,
 * rounded up (so "1n" is 1 ms, and "0m" is 0). 0 / -1 on bad syntax. */
int rpc_timeout_parse(const char *s, size_t len, int64_t *ms_r);
/* rpc_timeout_format - ms (> 0) -> "1500m"-style text in out (>= 16 bytes).
 * Uses the finest unit whose value fits in 8 digits, rounding up. */
void rpc_timeout_format(int64_t ms, char *out, size_t size);

/* ------------------------------------------------------ grpc-message text */

/* rpc_percent_encode - bytes outside 0x20..0x7E and '%' become %XX (caller owns) */
char *rpc_percent_encode(const char *s, size_t len);
/* rpc_percent_decode - %XX -> byte; malformed escapes pass through
 * unchanged (grpc is lenient here). Result is NUL-terminated; *len_r is its
 * length (it may contain NULs). Caller owns. */
char *rpc_percent_decode(const char *s, size_t len, size_t *len_r);

/* ------------------------------------------------------- -bin metadata */

/* rpc_base64_encode - standard alphabet, unpadded, NUL-terminated (caller owns) */
char *rpc_base64_encode(const void *data, size_t len);
/* rpc_base64_decode - accepts padded and unpadded input; NULL on bad input.
 * Result is NUL-terminated; *len_r its length. Caller owns. */
char *rpc_base64_decode(const char *s, size_t len, size_t *len_r);
/* rpc_md_name_valid - metadata names: lowercase [0-9a-z_.-], not empty,
 * not starting with ':' or "grpc-" (reserved) */
bool rpc_md_name_valid(const char *name);
/* rpc_md_is_bin - name ends in "-bin" */
bool rpc_md_is_bin(const char *name, size_t len);

/* ------------------------------------------------------------ byte queue */

/* rpc_bytes - a FIFO of bytes: appended at the tail, consumed at the head.
 * The send queue of one call (response or request messages not yet handed
 * to nghttp2). */
struct rpc_bytes {
	uint8_t *data;
	size_t off, len, cap;
};

void rpc_bytes_free(struct rpc_bytes *b);
/* rpc_bytes_reserve - room for n more bytes at the tail; returns where they go */
uint8_t *rpc_bytes_reserve(struct rpc_bytes *b, size_t n);
void rpc_bytes_commit(struct rpc_bytes *b, size_t n);
void rpc_bytes_append(struct rpc_bytes *b, const void *p, size_t n);
/* rpc_bytes_take - copies up to n bytes from the head to out; returns the count */
size_t rpc_bytes_take(struct rpc_bytes *b, void *out, size_t n);
static inline size_t rpc_bytes_len(const struct rpc_bytes *b) { return b->len; }
#endif
