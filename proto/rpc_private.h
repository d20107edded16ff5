/* rpc_private.h - internals shared by rpc_server.c and rpc_client.c: the
 * limits both sides use and a few tiny helpers. Not for use outside proto/. */
#ifndef MAIL_RPC_PRIVATE_H
#define MAIL_RPC_PRIVATE_H
#include "lib/common.h"
#include <sys/time.h>
#include <time.h>

#define RPC_DEFAULT_WINDOW (1u << 20)        /* per-stream and connection receive window */
#define RPC_OUTPUT_HIGH (64u * 1024)          /* send callback says WOULDBLOCK above this */
#define RPC_OUTPUT_LOW (16u * 1024)           /* write callback refills below this */
#define RPC_MAX_HEADER_LIST (16u * 1024)      /* request/response header block we accept */
#define RPC_DEFAULT_MAX_STREAMS 1000u
#define RPC_KEEPALIVE_TIMEOUT_MS 10000        /* PING unanswered this long: connection dead */
#define RPC_ALPN_H2 "\x02h2"
#define RPC_ALPN_H2_LEN 3
#define RPC_USER_AGENT "mail-rpc/1"

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
