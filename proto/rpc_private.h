/* rpc_private.h - internals shared by rpc_server.c and rpc_client.c: the
 * limits both sides use and a few tiny helpers. Not for use outside proto/. */
#ifndef MAIL_RPC_PRIVATE_H
#define MAIL_RPC_PRIVATE_H
#include "lib/common.h"
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>

#define RPC_DEFAULT_WINDOW (1u << 20)        /* per-stream and connection receive window */
#define RPC_OUTPUT_HIGH (64u * 1024)          /* send callback says WOULDBLOCK above this */
#define RPC_OUTPUT_LOW (16u * 1024)           /* write callback refills below this */
#define RPC_MAX_HEADER_LIST (16u * 1024)      /* request/response header block we accept */
#define RPC_DEFAULT_MAX_STREAMS 1000u
#define RPC_KEEPALIVE_TIMEOUT_MS 10000        /* PING unanswered this long: connection dead */
#define RPC_ALPN_H2 "\x02h2"
#define RPC_ALPN_H2_LEN 3
#define RPC_USER_AGENT "mail-rpc/1"

#define RPC_READ_BATCH (256u * 1024)         /* bytes a read callback pulls before sending */

/* rpc_sock_read_more - libevent 2.1 reads at most 4 KiB per callback; pull
 * what a plain socket already holds (up to 64 KiB) into the bufferevent's
 * input so one pass answers more calls with one send. Returns bytes read
 * (0 at EAGAIN, EOF or error: the bufferevent sees those on its next read). */
static inline size_t rpc_sock_read_more(struct bufferevent *bev)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_iovec v[2];
	struct iovec iov[2];
	int n = evbuffer_reserve_space(in, 64 * 1024, v, 2);
	if (n <= 0)
		return 0;
	for (int i = 0; i < n; i++) {
		iov[i].iov_base = v[i].iov_base;
		iov[i].iov_len = v[i].iov_len;
	}
	ssize_t r = readv(bufferevent_getfd(bev), iov, n);
	size_t left = r > 0 ? (size_t)r : 0;
	for (int i = 0; i < n; i++) {
		v[i].iov_len = MAIL_MIN(v[i].iov_len, left);
		left -= v[i].iov_len;
	}
	evbuffer_commit_space(in, v, n);
	return r > 0 ? (size_t)r : 0;
}

/* rpc_now_ms - monotonic clock in milliseconds (deadlines) */
static inline int64_t rpc_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* rpc_ms_tv - milliseconds to a timeval for evtimer_add */
static inline struct timeval rpc_ms_tv(int64_t ms)
{
	struct timeval tv;
	if (ms < 0)
		ms = 0;
	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
	return tv;
}

/* RPC_NV - a header for nghttp2 from string literals/pointers (nghttp2 copies them) */
#define RPC_NV(n, v, vlen) \
	{ (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vlen), NGHTTP2_NV_FLAG_NONE }
#define RPC_NVS(n, v) RPC_NV(n, v, sizeof(v) - 1)
#endif
