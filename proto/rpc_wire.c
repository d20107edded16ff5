/* rpc_wire.c - pure helpers of the gRPC wire format (see rpc_wire.h).
 * No sockets and no event base here: every function takes bytes and returns
 * a result, so each is unit-tested in tiny pieces and fuzzed. Input is
 * untrusted peer data; nothing here aborts on it. */
#include "lib/common.h"
#include "lib/base64.h"
#include "lib/xalloc.h"
#include "proto/rpc_wire.h"
#include <stdlib.h>

#define FRAME_BUF_MIN 256
#define FRAME_BUF_KEEP (64u * 1024) /* a larger assembly buffer is released between messages */
#define BYTES_KEEP (1024u * 1024)   /* an empty queue gives back a buffer larger than this */

static const uint8_t empty_msg[1];

void rpc_frame_init(struct rpc_frame *f, size_t max)
{
	memset(f, 0, sizeof(*f));
	f->max = max;
}

void rpc_frame_free(struct rpc_frame *f)
{
	free(f->buf);
	f->buf = NULL;
	f->have = f->cap = 0;
	f->hdr_len = 0;
	f->in_body = false;
}

bool rpc_frame_partial(const struct rpc_frame *f)
{
	return f->hdr_len > 0 || f->in_body;
}

void rpc_frame_prefix(uint8_t out[RPC_FRAME_PREFIX], uint32_t len)
{
	out[0] = 0;
	out[1] = (uint8_t)(len >> 24);
	out[2] = (uint8_t)(len >> 16);
	out[3] = (uint8_t)(len >> 8);
	out[4] = (uint8_t)len;
}

/* frame_header_done - validates a complete prefix; 0 or an error result */
static int frame_header_done(struct rpc_frame *f)
{
	uint32_t n = ((uint32_t)f->hdr[1] << 24) | ((uint32_t)f->hdr[2] << 16) |
		     ((uint32_t)f->hdr[3] << 8) | (uint32_t)f->hdr[4];
	f->declared = n;
	if (f->hdr[0] == 1)
		return RPC_FRAME_COMPRESSED;
	if (f->hdr[0] != 0)
		return RPC_FRAME_BAD_FLAG;
	if ((size_t)n > f->max)
		return RPC_FRAME_TOO_LARGE;
	f->need = n;
	f->in_body = true;
	f->have = 0;
	return 0;
}

/* frame_deliver - the message is complete: reset for the next prefix */
static int frame_deliver(struct rpc_frame *f, const uint8_t *msg, size_t n,
			 const uint8_t **msg_r, size_t *len_r)
{
	*msg_r = msg != NULL ? msg : empty_msg;
	*len_r = n;
	f->in_body = false;
	f->hdr_len = 0;
	f->have = 0;
	return RPC_FRAME_MESSAGE;
}

int rpc_frame_feed(struct rpc_frame *f, const uint8_t **buf, size_t *len,
		   const uint8_t **msg_r, size_t *len_r)
{
	const uint8_t *p = *buf;
	size_t n = *len;
	int ret = RPC_FRAME_NEED_MORE;

	*msg_r = NULL;
	*len_r = 0;
	if (f->failed)
		return RPC_FRAME_BAD_FLAG;
	if (!f->in_body && f->hdr_len == 0 && f->cap > FRAME_BUF_KEEP) {
		/* the previous big message has been consumed: give its buffer back */
		free(f->buf);
		f->buf = NULL;
		f->cap = 0;
	}
	if (!f->in_body) {
		size_t take = MAIL_MIN((size_t)(RPC_FRAME_PREFIX - f->hdr_len), n);
		memcpy(f->hdr + f->hdr_len, p, take);
		f->hdr_len = (uint8_t)(f->hdr_len + take);
		p += take;
		n -= take;
		if (f->hdr_len < RPC_FRAME_PREFIX)
			goto out;
		ret = frame_header_done(f);
		if (ret < 0) {
			f->failed = true;
			goto out;
		}
	}
	if (f->have == 0 && n >= f->need) {
		/* the whole message is in this input: hand it out without a copy */
		ret = frame_deliver(f, p, f->need, msg_r, len_r);
		p += *len_r;
		n -= *len_r;
		goto out;
	}
	if (n > 0) {
		size_t take = MAIL_MIN((size_t)f->need - f->have, n);
		if (f->have + take > f->cap) {
			/* grow with what arrived (doubling), never to the claim at once */
			size_t ncap = MAIL_MAX(f->cap * 2, (size_t)FRAME_BUF_MIN);
			ncap = MAIL_MAX(ncap, f->have + take);
			ncap = MAIL_MIN(ncap, (size_t)f->need);
			f->buf = xrealloc(f->buf, ncap);
			f->cap = ncap;
		}
		memcpy(f->buf + f->have, p, take);
		f->have += take;
		p += take;
		n -= take;
	}
	if (f->have == f->need)
		ret = frame_deliver(f, f->buf, f->need, msg_r, len_r);
	else
		ret = RPC_FRAME_NEED_MORE;
out:
	*buf = p;
	*len = n;
	return ret;
}

/* ------------------------------------------------------------ timeouts */

int rpc_timeout_parse(const char *s, size_t len, int64_t *ms_r)
{
	int64_t v = 0;

	if (len < 2 || len > 9)
		return -1;
	for (size_t i = 0; i + 1 < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	switch (s[len - 1]) {
	case 'H': *ms_r = v * 3600000; break;
	case 'M': *ms_r = v * 60000; break;
	case 'S': *ms_r = v * 1000; break;
	case 'm': *ms_r = v; break;
	case 'u': *ms_r = (v + 999) / 1000; break;
	case 'n': *ms_r = (v + 999999) / 1000000; break;
	default: return -1;
	}
	return 0;
}

void rpc_timeout_format(int64_t ms, char *out, size_t size)
{
	static const struct { int64_t ms; char unit; } units[] = {
		{ 1, 'm' }, { 1000, 'S' }, { 60000, 'M' }, { 3600000, 'H' },
	};
	const int64_t max8 = 99999999;

	if (ms < 1)
		ms = 1;
	for (size_t i = 0; i < N_ELEMENTS(units); i++) {
		int64_t v = (ms + units[i].ms - 1) / units[i].ms;
		if (v <= max8 || i + 1 == N_ELEMENTS(units)) {
			snprintf(out, size, "%lld%c", (long long)MAIL_MIN(v, max8), units[i].unit);
			return;
		}
	}
}

/* ------------------------------------------------------ percent encoding */

static const char hexdig[] = "0123456789ABCDEF";

char *rpc_percent_encode(const char *s, size_t len)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		uint8_t c = (uint8_t)s[i];
		n += (c < 0x20 || c > 0x7e || c == '%') ? 3 : 1;
	}
	char *out = xmalloc(n + 1), *o = out;
	for (size_t i = 0; i < len; i++) {
		uint8_t c = (uint8_t)s[i];
		if (c < 0x20 || c > 0x7e || c == '%') {
			*o++ = '%';
			*o++ = hexdig[c >> 4];
			*o++ = hexdig[c & 15];
		} else {
			*o++ = (char)c;
		}
	}
	*o = '\0';
	return out;
}

/* hexval - value of one hex digit or -1 */
static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

char *rpc_percent_decode(const char *s, size_t len, size_t *len_r)
{
	char *out = xmalloc(len + 1), *o = out;
	for (size_t i = 0; i < len; i++) {
		int hi, lo;
		if (s[i] == '%' && i + 2 < len &&
		    (hi = hexval(s[i + 1])) >= 0 && (lo = hexval(s[i + 2])) >= 0) {
			*o++ = (char)(hi << 4 | lo);
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	if (len_r != NULL)
		*len_r = (size_t)(o - out);
	return out;
}

/* --------------------------------------------------------------- base64 */

static const char b64chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *rpc_base64_encode(const void *data, size_t len)
{
	const uint8_t *p = data;
	char *out = xmalloc(len / 3 * 4 + 5), *o = out;
	size_t i = 0;
	for (; i + 3 <= len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
		*o++ = b64chars[v >> 18];
		*o++ = b64chars[(v >> 12) & 63];
		*o++ = b64chars[(v >> 6) & 63];
		*o++ = b64chars[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)p[i] << 16;
		*o++ = b64chars[v >> 18];
		*o++ = b64chars[(v >> 12) & 63];
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
		*o++ = b64chars[v >> 18];
		*o++ = b64chars[(v >> 12) & 63];
		*o++ = b64chars[(v >> 6) & 63];
	}
	*o = '\0';
	return out;
}

char *rpc_base64_decode(const char *s, size_t len, size_t *len_r)
{
	if (len % 4 == 0 && len >= 1 && s[len - 1] == '=') {
		len--;
		if (s[len - 1] == '=')
			len--;
	}
	if (len % 4 == 1)
		return NULL;
	char *out = xmalloc(len / 4 * 3 + 3), *o = out;
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = 0; i < len; i++) {
		int v = base64_digit((unsigned char)s[i]);
		if (v < 0) {
			free(out);
			return NULL;
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			*o++ = (char)((acc >> bits) & 0xff);
		}
	}
	*o = '\0';
	if (len_r != NULL)
		*len_r = (size_t)(o - out);
	return out;
}

bool rpc_md_name_valid(const char *name)
{
	if (name[0] == '\0' || strncmp(name, "grpc-", 5) == 0)
		return false;
	for (const char *p = name; *p != '\0'; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
		      c == '_' || c == '.'))
			return false;
	}
	return true;
}

bool rpc_md_is_bin(const char *name, size_t len)
{
	return len >= 4 && memcmp(name + len - 4, "-bin", 4) == 0;
}

/* ----------------------------------------------------------- byte queue */

void rpc_bytes_free(struct rpc_bytes *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

uint8_t *rpc_bytes_reserve(struct rpc_bytes *b, size_t n)
{
	if (b->off + b->len + n > b->cap) {
		if (b->off > 0) {
			memmove(b->data, b->data + b->off, b->len);
			b->off = 0;
		}
		if (b->len + n > b->cap) {
			size_t ncap = MAIL_MAX(b->cap * 2, (size_t)256);
			ncap = MAIL_MAX(ncap, b->len + n);
			b->data = xrealloc(b->data, ncap);
			b->cap = ncap;
		}
	}
	return b->data + b->off + b->len;
}

void rpc_bytes_commit(struct rpc_bytes *b, size_t n)
{
	b->len += n;
}

void rpc_bytes_append(struct rpc_bytes *b, const void *p, size_t n)
{
	if (n == 0)
		return;
	memcpy(rpc_bytes_reserve(b, n), p, n);
	b->len += n;
}

size_t rpc_bytes_take(struct rpc_bytes *b, void *out, size_t n)
{
	n = MAIL_MIN(n, b->len);
	if (n > 0)
		memcpy(out, b->data + b->off, n);
	b->off += n;
	b->len -= n;
	if (b->len == 0) {
		b->off = 0;
		if (b->cap > BYTES_KEEP)
			rpc_bytes_free(b);
	}
	return n;
}
