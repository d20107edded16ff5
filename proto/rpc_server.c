/* rpc_server.c - the gRPC server side on nghttp2 + libevent (see rpc.h).
 *
 * Ownership: a connection (struct rpc_sconn) belongs to one worker's loop and
 * owns its calls (struct rpc_call, one per HTTP/2 stream). A call is freed
 * when its stream closes or when its connection is freed; the handler's
 * pointer dies at rpc_call_finish or when on_cancel returns.
 *
 * Re-entrancy: handler callbacks run inside nghttp2 callbacks (readcb ->
 * mem_recv) and timers; rpc_call_send/finish never call nghttp2_session_send
 * themselves: they mark the connection for a flush, done at the end of the
 * current read or from a deferred event. A connection is never freed while
 * any of its callbacks is on the stack (conn->busy); it is marked closing and
 * freed by the outermost entry point when it returns.
 *
 * Drain: a connection accepted on a lib/daemon worker holds that worker
 * (daemon_worker_hold) from accept until it is freed, so a draining worker's
 * loop runs until every connection is done: the two-step GOAWAY, the calls
 * still running, every byte of their replies handed to the kernel, and a
 * lingering close. The daemon's shutdown_timeout bounds it all (on_worker_stop
 * then calls rpc_server_close_all). A connection whose HTTP/2 session is over
 * does not close() at once: unread input (a late WINDOW_UPDATE, a PING ack)
 * would make the kernel answer with RST and throw away reply bytes still in
 * the send queue. It shuts down its write side instead (after close_notify on
 * TLS) and reads and discards until the peer's EOF, or until the peer's
 * kernel has acknowledged every byte and the FIN and the peer has been silent
 * for RPC_LINGER_QUIET_MS (a peer whose process does not read, like an idle
 * grpcio channel, is not waited for), at most RPC_LINGER_MS. */
#include "lib/common.h"
#include "lib/daemon.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "proto/rpc_private.h"
#include "proto/rpc_wire.h"
#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <protobuf-c/protobuf-c.h>

struct rpc_md {
	char *name;
	char *value; /* NUL-terminated; -bin values are decoded */
	size_t value_len;
};

struct rpc_worker {
	struct rpc_sconn *conns;
	_Atomic size_t nconns;
};

struct rpc_server {
	struct rpc_method *methods;
	size_t n_methods;
	size_t max_message;
	uint32_t window;
	int keepalive_ms;
	uint32_t max_streams;
	pthread_mutex_t tls_lock;
	SSL_CTX *tls; /* our reference; SSL objects take their own */
	nghttp2_session_callbacks *cbs;
	nghttp2_option *h2opt;
	int nworkers;
	struct rpc_worker *workers;
};

struct rpc_sconn {
	struct rpc_server *srv;
	int widx;
	uint64_t id;
	struct event_base *base;
	struct bufferevent *bev;
	nghttp2_session *h2;
	struct rpc_sconn *prev, *next;
	struct rpc_call *calls;   /* every live call (nghttp2_session_del runs no close callbacks) */
	struct rpc_call *wlist;   /* calls owed an on_writable */
	struct event flush_ev;
	struct event ka_ev;
	struct event timer_ev;    /* draining: final GOAWAY even without the PING ack;
				   * lingering: the close, whatever the peer does */
	char peer[64];
	struct daemon_worker *hold; /* the lib/daemon worker held until sconn_free, or NULL */
	int busy;                 /* callbacks of ours on the stack */
	bool closing;             /* free when busy drops to 0 */
	bool lingering;           /* session over, write side shut: waiting for the peer's EOF */
	int64_t linger_end;       /* monotonic ms: close then whatever the peer does */
	int64_t linger_rx;        /* monotonic ms: the peer's last bytes while lingering */
	bool flush_queued;
	bool need_flush;
	bool draining;            /* shutdown notice sent; final GOAWAY on the PING ack */
	bool goaway_sent;         /* the final GOAWAY is queued */
	bool timer_on;            /* timer_ev is pending */
	bool got_frame;           /* the peer spoke HTTP/2: handshake timeout off */
	bool ping_out;
	bool rx_seen;
	bool ka_on;
	bool tls;
};

struct rpc_call {
	struct rpc_sconn *conn;
	int32_t stream_id;
	uint64_t id;
	const struct rpc_method *method;
	char *path;
	struct rpc_md *md;
	size_t n_md, md_bytes;
	int64_t deadline;         /* monotonic ms; -1 none */
	struct event deadline_ev;
	struct rpc_frame frame;
	struct rpc_bytes out;     /* framed response messages not yet given to nghttp2 */
	void *data;
	enum rpc_status fin_st;
	char *fin_msg;            /* percent-encoded grpc-message or NULL */
	struct rpc_call *prev, *next, *wnext;
	bool post, ctype_ok;
	bool started;             /* the handler owns it (until finished/cancelled) */
	bool finished, cancelled;
	bool headers_sent, half_closed;
	bool timer_on, want_writable, in_wlist;
};

static _Atomic uint64_t rpc_next_id = 1;
static const uint8_t drain_ping[8] = { 'r', 'p', 'c', 'd', 'r', 'a', 'i', 'n' };

#define RPC_HANDSHAKE_TIMEOUT_MS 10000 /* TLS + HTTP/2 preface must arrive by then */
#define RPC_LINGER_MS 2000             /* a finished connection waits at most this long to close */
#define RPC_LINGER_QUIET_MS 250        /* ... or until all is acked and the peer was this long silent */
#define RPC_LINGER_POLL_MS 50          /* ... looking this often */
#define RPC_DRAIN_PING_MS 1000         /* drain: final GOAWAY by then even without the PING ack */

static void sconn_flush(struct rpc_sconn *conn);
static void sconn_free(struct rpc_sconn *conn);
static void sconn_final_goaway(struct rpc_sconn *conn);

/* call_live - the handler still owns the call and may get callbacks */
static inline bool call_live(const struct rpc_call *call)
{
	return call->started && !call->finished && !call->cancelled;
}

/* sconn_want_flush - nghttp2 has frames to send: flush now-ish, never re-entrantly */
static void sconn_want_flush(struct rpc_sconn *conn)
{
	if (conn->busy > 0) {
		conn->need_flush = true; /* the entry point on the stack flushes on return */
		return;
	}
	if (!conn->flush_queued && !conn->closing) {
		conn->flush_queued = true;
		event_active(&conn->flush_ev, 0, 0);
	}
}

/* ------------------------------------------------------------ call state */

/* call_free - releases a call and its timer (its stream is gone or going) */
static void call_free(struct rpc_call *call)
{
	struct rpc_sconn *conn = call->conn;

	if (call->timer_on)
		event_del(&call->deadline_ev);
	if (call->prev != NULL)
		call->prev->next = call->next;
	else
		conn->calls = call->next;
	if (call->next != NULL)
		call->next->prev = call->prev;
	if (call->in_wlist) {
		for (struct rpc_call **pp = &conn->wlist; *pp != NULL; pp = &(*pp)->wnext) {
			if (*pp == call) {
				*pp = call->wnext;
				break;
			}
		}
	}
	for (size_t i = 0; i < call->n_md; i++) {
		free(call->md[i].name);
		free(call->md[i].value);
	}
	free(call->md);
	rpc_frame_free(&call->frame);
	rpc_bytes_free(&call->out);
	free(call->path);
	free(call->fin_msg);
	free(call);
}

/* call_submit_trailers - grpc-status and grpc-message after the last DATA */
static int call_submit_trailers(struct rpc_call *call)
{
	char st[12];
	int n = snprintf(st, sizeof(st), "%d", (int)call->fin_st);
	nghttp2_nv nva[] = {
		RPC_NV("grpc-status", st, (size_t)n),
		RPC_NV("grpc-message", call->fin_msg, call->fin_msg ? strlen(call->fin_msg) : 0),
	};
	return nghttp2_submit_trailer(call->conn->h2, call->stream_id, nva,
				      call->fin_msg != NULL ? 2 : 1);
}

/* call_data_read - nghttp2 pulls response bytes; at the end, trailers */
static ssize_t call_data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
			      size_t length, uint32_t *data_flags, nghttp2_data_source *source,
			      void *user_data)
{
	struct rpc_call *call = nghttp2_session_get_stream_user_data(session, stream_id);
	if (call == NULL)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	size_t n = rpc_bytes_take(&call->out, buf, length);
	if (call->want_writable && rpc_bytes_len(&call->out) < RPC_CALL_HIGH_WATER / 2) {
		call->want_writable = false;
		if (call_live(call) && !call->in_wlist) {
			call->in_wlist = true;
			call->wnext = call->conn->wlist;
			call->conn->wlist = call;
		}
	}
	if (rpc_bytes_len(&call->out) == 0) {
		if (call->finished) {
			*data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
			if (call_submit_trailers(call) != 0)
				return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
		} else if (n == 0) {
			return NGHTTP2_ERR_DEFERRED;
		}
	}
	return (ssize_t)n;
}

/* call_submit_headers - response HEADERS with a data provider (messages follow) */
static void call_submit_headers(struct rpc_call *call)
{
	static const nghttp2_nv nva[] = {
		RPC_NVS(":status", "200"),
		RPC_NVS("content-type", "application/grpc"),
	};
	nghttp2_data_provider prd = { .source.ptr = NULL, .read_callback = call_data_read };
	int rv = nghttp2_submit_response(call->conn->h2, call->stream_id, nva, N_ELEMENTS(nva), &prd);
	if (rv != 0)
		log_info("rpc submit response failed", "call=%llu err=%s",
			 (unsigned long long)call->id, nghttp2_strerror(rv));
	call->headers_sent = true;
}

/* call_end - the call's outcome is known: queue trailers (or Trailers-Only) */
static void call_end(struct rpc_call *call, enum rpc_status st, const char *message)
{
	struct rpc_sconn *conn = call->conn;

	call->finished = true;
	if (call->timer_on) {
		event_del(&call->deadline_ev);
		call->timer_on = false;
	}
	call->fin_st = st;
	if (message != NULL && message[0] != '\0')
		call->fin_msg = rpc_percent_encode(message, strlen(message));
	if (conn->closing)
		return;
	if (!call->headers_sent && rpc_bytes_len(&call->out) == 0) {
		/* Trailers-Only: one HEADERS frame with END_STREAM */
		char stbuf[12];
		int n = snprintf(stbuf, sizeof(stbuf), "%d", (int)st);
		nghttp2_nv nva[] = {
			RPC_NVS(":status", "200"),
			RPC_NVS("content-type", "application/grpc"),
			RPC_NV("grpc-status", stbuf, (size_t)n),
			RPC_NV("grpc-message", call->fin_msg, call->fin_msg ? strlen(call->fin_msg) : 0),
		};
		nghttp2_submit_response(conn->h2, call->stream_id, nva,
					call->fin_msg != NULL ? 4 : 3, NULL);
		call->headers_sent = true;
	} else if (!call->headers_sent) {
		call_submit_headers(call);
	} else {
		nghttp2_session_resume_data(conn->h2, call->stream_id);
	}
	sconn_want_flush(conn);
}

/* call_abort - the runtime ends a live call: on_cancel, then the status */
static void call_abort(struct rpc_call *call, enum rpc_status st, const char *message)
{
	if (call->finished || call->cancelled)
		return;
	if (call->started) {
		call->cancelled = true;
		if (call->method->on_cancel != NULL)
			call->method->on_cancel(call);
	}
	call_end(call, st, message);
}

/* call_http_error - answer a request that is not gRPC at all (415, 405) */
static void call_http_error(struct rpc_call *call, const char *status)
{
	nghttp2_nv nva[] = {
		RPC_NV(":status", status, strlen(status)),
		RPC_NVS("content-type", "text/plain"),
	};
	call->finished = true;
	call->headers_sent = true;
	nghttp2_submit_response(call->conn->h2, call->stream_id, nva, N_ELEMENTS(nva), NULL);
	sconn_want_flush(call->conn);
}

/* call_deadline_cb - grpc-timeout expired: cancel and answer DEADLINE_EXCEEDED */
static void call_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_call *call = arg;
	struct rpc_sconn *conn = call->conn;

	call->timer_on = false;
	log_debug("rpc deadline exceeded", "call=%llu path=%s", (unsigned long long)call->id,
		  call->path);
	conn->busy++;
	call_abort(call, RPC_DEADLINE_EXCEEDED, "Deadline Exceeded");
	conn->busy--;
	sconn_flush(conn);
}

/* call_qpath - the request path made safe for a log line */
static const char *call_qpath(const struct rpc_call *call, char *buf, size_t size)
{
	return log_quote(buf, size, call->path ? call->path : "", call->path ? strlen(call->path) : 0);
}

/* call_begin - request headers complete: validate, then hand to the handler */
static void call_begin(struct rpc_call *call)
{
	struct rpc_sconn *conn = call->conn;

	if (!call->post) {
		call_http_error(call, "405");
		return;
	}
	char buf[160];
	if (!call->ctype_ok) {
		log_info("rpc request not grpc", "peer=%s path=%s", conn->peer,
			 call_qpath(call, buf, sizeof(buf)));
		call_http_error(call, "415");
		return;
	}
	if (call->method == NULL) {
		log_info("rpc unknown method", "peer=%s path=%s", conn->peer,
			 call_qpath(call, buf, sizeof(buf)));
		call_end(call, RPC_UNIMPLEMENTED, "unknown method");
		return;
	}
	call->started = true;
	if (call->deadline >= 0) {
		struct timeval tv = rpc_ms_tv(call->deadline - rpc_now_ms());
		evtimer_assign(&call->deadline_ev, conn->base, call_deadline_cb, call);
		evtimer_add(&call->deadline_ev, &tv);
		call->timer_on = true;
	}
	if (call->method->on_start != NULL)
		call->method->on_start(call);
}

/* call_half_close - the client ended its side */
static void call_half_close(struct rpc_call *call)
{
	if (call->half_closed)
		return;
	call->half_closed = true;
	if (!call_live(call))
		return;
	if (rpc_frame_partial(&call->frame)) {
		log_info("rpc truncated message", "call=%llu peer=%s", (unsigned long long)call->id,
			 call->conn->peer);
		call_abort(call, RPC_INTERNAL, "truncated message");
		return;
	}
	if (call->method->on_half_close != NULL)
		call->method->on_half_close(call);
}

/* ---------------------------------------------------- nghttp2 callbacks */

/* srv_send_cb - nghttp2 output into the bufferevent, blocking above 64 KiB */
static ssize_t srv_send_cb(nghttp2_session *session, const uint8_t *data, size_t length,
			   int flags, void *user_data)
{
	struct rpc_sconn *conn = user_data;
	struct evbuffer *out = bufferevent_get_output(conn->bev);
	if (evbuffer_get_length(out) >= RPC_OUTPUT_HIGH)
		return NGHTTP2_ERR_WOULDBLOCK;
	evbuffer_add(out, data, length);
	return (ssize_t)length;
}

/* srv_begin_headers_cb - a new request stream: allocate its call */
static int srv_begin_headers_cb(nghttp2_session *session, const nghttp2_frame *frame,
				void *user_data)
{
	struct rpc_sconn *conn = user_data;

	if (conn->closing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	struct rpc_call *call = XNEW(struct rpc_call);
	call->conn = conn;
	call->stream_id = frame->hd.stream_id;
	call->id = atomic_fetch_add_explicit(&rpc_next_id, 1, memory_order_relaxed);
	call->deadline = -1;
	rpc_frame_init(&call->frame, conn->srv->max_message);
	call->next = conn->calls;
	if (conn->calls != NULL)
		conn->calls->prev = call;
	conn->calls = call;
	nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, call);
	return 0;
}

/* hdr_is - header name equals a literal */
#define hdr_is(name, namelen, lit) \
	((namelen) == sizeof(lit) - 1 && memcmp((name), (lit), sizeof(lit) - 1) == 0)

/* call_add_md - one request metadata entry (names arrive lowercase from nghttp2) */
static int call_add_md(struct rpc_call *call, const uint8_t *name, size_t namelen,
		       const uint8_t *value, size_t valuelen)
{
	char *v;
	size_t vlen = valuelen;

	if (rpc_md_is_bin((const char *)name, namelen)) {
		v = rpc_base64_decode((const char *)value, valuelen, &vlen);
		if (v == NULL) {
			log_info("rpc bad -bin metadata", "call=%llu peer=%s",
				 (unsigned long long)call->id, call->conn->peer);
			return 0;
		}
	} else {
		v = xstrndup((const char *)value, valuelen);
	}
	call->md = xrealloc(call->md, (call->n_md + 1) * sizeof(*call->md));
	call->md[call->n_md].name = xstrndup((const char *)name, namelen);
	call->md[call->n_md].value = v;
	call->md[call->n_md].value_len = vlen;
	call->n_md++;
	return 0;
}

/* srv_header_cb - one request header */
static int srv_header_cb(nghttp2_session *session, const nghttp2_frame *frame,
			 const uint8_t *name, size_t namelen, const uint8_t *value,
			 size_t valuelen, uint8_t flags, void *user_data)
{
	struct rpc_sconn *conn = user_data;

	if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0; /* client trailers carry nothing for us */
	struct rpc_call *call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
	if (call == NULL)
		return 0;
	call->md_bytes += namelen + valuelen + 32;
	if (call->md_bytes > RPC_MAX_HEADER_LIST) {
		log_info("rpc request headers too large", "peer=%s", conn->peer);
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	if (namelen > 0 && name[0] == ':') {
		if (hdr_is(name, namelen, ":path") && call->path == NULL) {
			call->path = xstrndup((const char *)value, valuelen);
			for (size_t i = 0; i < conn->srv->n_methods; i++) {
				if (strcmp(conn->srv->methods[i].path, call->path) == 0) {
					call->method = &conn->srv->methods[i];
					break;
				}
			}
		} else if (hdr_is(name, namelen, ":method")) {
			call->post = valuelen == 4 && memcmp(value, "POST", 4) == 0;
		}
		return 0;
	}
	if (hdr_is(name, namelen, "content-type")) {
		call->ctype_ok = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
				 (valuelen == 16 || value[16] == '+' || value[16] == ';');
	} else if (hdr_is(name, namelen, "grpc-timeout")) {
		int64_t ms;
		if (rpc_timeout_parse((const char *)value, valuelen, &ms) == 0)
			call->deadline = rpc_now_ms() + ms;
		else
			log_info("rpc bad grpc-timeout", "peer=%s", conn->peer);
	} else if (hdr_is(name, namelen, "te") || hdr_is(name, namelen, "user-agent") ||
		   (namelen >= 5 && memcmp(name, "grpc-", 5) == 0)) {
		/* transport headers, not metadata */
	} else {
		return call_add_md(call, name, namelen, value, valuelen);
	}
	return 0;
}

/* srv_frame_recv_cb - end of request headers, end of stream, PING acks */
static int srv_frame_recv_cb(nghttp2_session *session, const nghttp2_frame *frame,
			     void *user_data)
{
	struct rpc_sconn *conn = user_data;
	struct rpc_call *call;

	conn->rx_seen = true;
	if (conn->closing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (!conn->got_frame) {
		conn->got_frame = true;
		bufferevent_set_timeouts(conn->bev, NULL, NULL);
	}
	switch (frame->hd.type) {
	case NGHTTP2_HEADERS:
		call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
		if (call == NULL)
			break;
		if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
			call_begin(call);
		if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !conn->closing)
			call_half_close(call);
		break;
	case NGHTTP2_DATA:
		if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
			break;
		call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
		if (call != NULL)
			call_half_close(call);
		break;
	case NGHTTP2_PING:
		if (!(frame->hd.flags & NGHTTP2_FLAG_ACK))
			break;
		if (memcmp(frame->ping.opaque_data, drain_ping, sizeof(drain_ping)) == 0) {
			/* the client has seen the shutdown notice: now the real GOAWAY */
			sconn_final_goaway(conn);
		} else {
			conn->ping_out = false;
		}
		break;
	default:
		break;
	}
	return conn->closing ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* srv_data_chunk_cb - request body bytes: decode messages, dispatch each */
static int srv_data_chunk_cb(nghttp2_session *session, uint8_t flags, int32_t stream_id,
			     const uint8_t *data, size_t len, void *user_data)
{
	struct rpc_sconn *conn = user_data;
	struct rpc_call *call = nghttp2_session_get_stream_user_data(session, stream_id);

	if (conn->closing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	while (call != NULL && call_live(call) && !conn->closing) {
		const uint8_t *msg;
		size_t mlen;
		char ebuf[128];
		int r = rpc_frame_feed(&call->frame, &data, &len, &msg, &mlen);
		if (r == RPC_FRAME_MESSAGE) {
			call->method->on_message(call, msg, mlen);
			continue;
		}
		if (r == RPC_FRAME_NEED_MORE)
			break;
		if (r == RPC_FRAME_TOO_LARGE) {
			snprintf(ebuf, sizeof(ebuf), "received message larger than max (%zu vs. %zu)",
				 call->frame.declared, call->frame.max);
			log_info("rpc request too large", "call=%llu peer=%s size=%zu max=%zu",
				 (unsigned long long)call->id, conn->peer, call->frame.declared,
				 call->frame.max);
			call_abort(call, RPC_RESOURCE_EXHAUSTED, ebuf);
		} else if (r == RPC_FRAME_COMPRESSED) {
			log_info("rpc compressed message", "call=%llu peer=%s",
				 (unsigned long long)call->id, conn->peer);
			call_abort(call, RPC_UNIMPLEMENTED, "compression not supported");
		} else {
			log_info("rpc bad message frame", "call=%llu peer=%s",
				 (unsigned long long)call->id, conn->peer);
			call_abort(call, RPC_INTERNAL, "bad message frame");
		}
		break;
	}
	return conn->closing ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* srv_frame_send_cb - after our final HEADERS, stop a client still sending */
static int srv_frame_send_cb(nghttp2_session *session, const nghttp2_frame *frame,
			     void *user_data)
{
	if (frame->hd.type == NGHTTP2_HEADERS && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
	    nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) == 0)
		nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
					  NGHTTP2_NO_ERROR);
	return 0;
}

/* srv_stream_close_cb - the stream is gone: cancel a live call, free it */
static int srv_stream_close_cb(nghttp2_session *session, int32_t stream_id,
			       uint32_t error_code, void *user_data)
{
	struct rpc_call *call = nghttp2_session_get_stream_user_data(session, stream_id);

	if (call == NULL)
		return 0;
	if (call_live(call)) {
		log_debug("rpc call cancelled by peer", "call=%llu path=%s err=%u",
			  (unsigned long long)call->id, call->path, error_code);
		call->cancelled = true;
		if (call->method->on_cancel != NULL)
			call->method->on_cancel(call);
	}
	nghttp2_session_set_stream_user_data(session, stream_id, NULL);
	call_free(call);
	return 0;
}

/* ---------------------------------------------------------- connection */

/* sconn_notify_writable - on_writable for calls whose queue drained */
static void sconn_notify_writable(struct rpc_sconn *conn)
{
	while (conn->wlist != NULL && !conn->closing) {
		struct rpc_call *call = conn->wlist;
		conn->wlist = call->wnext;
		call->in_wlist = false;
		if (call_live(call) && call->method->on_writable != NULL)
			call->method->on_writable(call);
	}
}

/* sconn_all_acked - the peer's kernel has acknowledged every byte we wrote
 * and our FIN: an RST from close() can no longer destroy any of it */
static bool sconn_all_acked(struct rpc_sconn *conn)
{
	int unacked = 0;
	evutil_socket_t fd = bufferevent_getfd(conn->bev);
	return fd >= 0 && ioctl(fd, SIOCOUTQ, &unacked) == 0 && unacked == 0;
}

/* sconn_linger_arm - look again in RPC_LINGER_POLL_MS (or at linger_end) */
static void sconn_linger_arm(struct rpc_sconn *conn)
{
	int64_t left = conn->linger_end - rpc_now_ms();
	struct timeval tv = rpc_ms_tv(left < RPC_LINGER_POLL_MS ? (left > 0 ? left : 0)
							  : RPC_LINGER_POLL_MS);
	evtimer_add(&conn->timer_ev, &tv); /* replaces a drain timer still pending */
	conn->timer_on = true;
}

/* sconn_linger - the HTTP/2 session is over and its last byte is in the
 * kernel: FIN (close_notify first on TLS) but keep reading, and discarding,
 * until the peer's EOF (or its ack of everything, then silence), so that
 * unread input cannot turn close() into an RST that destroys reply bytes
 * still in flight. false: close at once instead. */
static bool sconn_linger(struct rpc_sconn *conn)
{
	evutil_socket_t fd = bufferevent_getfd(conn->bev);

	conn->lingering = true;
	if (conn->ka_on) {
		event_del(&conn->ka_ev);
		conn->ka_on = false;
	}
	bufferevent_disable(conn->bev, EV_WRITE);
	if (conn->tls) {
		SSL *ssl = bufferevent_openssl_get_ssl(conn->bev);
		if (ssl != NULL)
			SSL_shutdown(ssl); /* close_notify; the peer's answer is not waited for */
		ERR_clear_error();    /* the next SSL_read must not see our leftovers */
	}
	if (fd < 0 || shutdown(fd, SHUT_WR) < 0)
		return false;
	/* a deadline for the whole linger, not an idle timeout: a peer that
	 * trickles bytes does not keep the connection */
	conn->linger_rx = rpc_now_ms();
	conn->linger_end = conn->linger_rx + RPC_LINGER_MS;
	bufferevent_set_timeouts(conn->bev, NULL, NULL);
	sconn_linger_arm(conn);
	bufferevent_enable(conn->bev, EV_READ);
	log_debug("rpc connection lingering", "conn=%llu peer=%s", (unsigned long long)conn->id,
		  conn->peer);
	return true;
}

/* sconn_flush - send what nghttp2 has; the one place a connection is freed */
static void sconn_flush(struct rpc_sconn *conn)
{
	if (conn->lingering && !conn->closing)
		return; /* nothing more to send; the read side waits for EOF */
	for (int round = 0; round < 4 && !conn->closing; round++) {
		conn->need_flush = false;
		conn->busy++;
		int rv = nghttp2_session_send(conn->h2);
		if (rv != 0) {
			log_info("rpc send failed", "peer=%s err=%s", conn->peer, nghttp2_strerror(rv));
			conn->closing = true;
		}
		if (conn->wlist != NULL)
			sconn_notify_writable(conn);
		conn->busy--;
		if (!conn->need_flush)
			break;
	}
	if (conn->busy > 0)
		return;
	/* the session is over and every byte of it left the bufferevent
	 * (the write callback brings us back when the output empties) */
	if (!conn->closing && !nghttp2_session_want_read(conn->h2) &&
	    !nghttp2_session_want_write(conn->h2) &&
	    evbuffer_get_length(bufferevent_get_output(conn->bev)) == 0) {
		if (sconn_linger(conn))
			return;
		conn->closing = true;
	}
	if (conn->closing) {
		sconn_free(conn);
		return;
	}
	if (conn->need_flush)
		sconn_want_flush(conn);
}

/* sconn_final_goaway - the GOAWAY that refuses streams after the last one
 * we processed; once it is out and the calls are over, the session ends */
static void sconn_final_goaway(struct rpc_sconn *conn)
{
	if (conn->goaway_sent)
		return;
	conn->goaway_sent = true;
	if (conn->timer_on && !conn->lingering) {
		event_del(&conn->timer_ev);
		conn->timer_on = false;
	}
	nghttp2_submit_goaway(conn->h2, NGHTTP2_FLAG_NONE,
			      nghttp2_session_get_last_proc_stream_id(conn->h2),
			      NGHTTP2_NO_ERROR, NULL, 0);
	sconn_want_flush(conn);
}

/* sconn_timer_cb - draining: the PING went unanswered, final GOAWAY anyway;
 * lingering: close once the peer acked everything or RPC_LINGER_MS passed */
static void sconn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_sconn *conn = arg;
	conn->timer_on = false;
	if (conn->lingering) {
		int64_t now = rpc_now_ms();
		bool acked = now - conn->linger_rx >= RPC_LINGER_QUIET_MS && sconn_all_acked(conn);
		if (!acked && now < conn->linger_end) {
			sconn_linger_arm(conn);
			return;
		}
		log_debug("rpc connection linger over", "peer=%s why=%s", conn->peer,
			  acked ? "acked-quiet" : "timeout");
		conn->closing = true;
		sconn_free(conn);
		return;
	}
	log_debug("rpc drain ping unanswered", "conn=%llu peer=%s", (unsigned long long)conn->id,
		  conn->peer);
	sconn_final_goaway(conn); /* queues a flush */
}

static void sconn_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_sconn *conn = arg;
	conn->flush_queued = false;
	sconn_flush(conn);
}

/* sconn_readcb - bytes from the peer into nghttp2, then send the answers */
static void sconn_readcb(struct bufferevent *bev, void *arg)
{
	struct rpc_sconn *conn = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	size_t extra = 0;

	if (conn->lingering) {
		evbuffer_drain(in, evbuffer_get_length(in));
		conn->linger_rx = rpc_now_ms(); /* still talking: it may still be reading us */
		return;
	}
	conn->busy++;
	conn->rx_seen = true;
	while (!conn->closing) {
		struct evbuffer_iovec v;
		if (evbuffer_get_length(in) == 0) {
			/* plain sockets: take what else has arrived before answering */
			size_t got;
			if (conn->tls || extra >= RPC_READ_BATCH || (got = rpc_sock_read_more(bev)) == 0)
				break;
			extra += got;
		}
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		ssize_t rv = nghttp2_session_mem_recv(conn->h2, v.iov_base, v.iov_len);
		if (rv < 0) {
			if (!conn->closing)
				log_info("rpc protocol error", "peer=%s err=%s", conn->peer,
					 nghttp2_strerror((int)rv));
			conn->closing = true;
			break;
		}
		evbuffer_drain(in, (size_t)rv);
	}
	conn->busy--;
	sconn_flush(conn);
}

/* sconn_writecb - output drained below the low mark: nghttp2 may send more */
static void sconn_writecb(struct bufferevent *bev, void *arg)
{
	sconn_flush(arg);
}

/* sconn_eventcb - TLS handshake done, EOF or error */
static void sconn_eventcb(struct bufferevent *bev, short events, void *arg)
{
	struct rpc_sconn *conn = arg;

	if (events & BEV_EVENT_CONNECTED) {
		log_debug("rpc tls handshake done", "peer=%s", conn->peer);
		return;
	}
	if (conn->lingering)
		log_debug("rpc connection linger over", "peer=%s why=%s", conn->peer,
			  (events & BEV_EVENT_EOF) ? "eof" : "error");
	else if (events & BEV_EVENT_TIMEOUT)
		log_info("rpc handshake timeout", "peer=%s", conn->peer);
	else if (events & BEV_EVENT_ERROR)
		log_debug("rpc connection error", "peer=%s err=%s", conn->peer,
			  evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	conn->closing = true;
	if (conn->busy == 0)
		sconn_free(conn);
}

/* sconn_ka_cb - keepalive: PING an idle peer, drop one that never answered */
static void sconn_ka_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_sconn *conn = arg;

	if (conn->rx_seen) {
		conn->rx_seen = false;
		return;
	}
	if (conn->ping_out) {
		log_info("rpc keepalive timeout", "peer=%s", conn->peer);
		conn->closing = true;
	} else {
		nghttp2_submit_ping(conn->h2, NGHTTP2_FLAG_NONE, NULL);
		conn->ping_out = true;
	}
	sconn_flush(conn);
}

/* sconn_free - cancel live calls (on_cancel), free calls and the connection */
static void sconn_free(struct rpc_sconn *conn)
{
	struct rpc_worker *w = &conn->srv->workers[conn->widx];

	conn->closing = true;
	conn->busy++;
	while (conn->calls != NULL) {
		struct rpc_call *call = conn->calls;
		if (call_live(call)) {
			call->cancelled = true;
			if (call->method->on_cancel != NULL)
				call->method->on_cancel(call);
		}
		call_free(call);
	}
	log_debug("rpc connection closed", "conn=%llu peer=%s", (unsigned long long)conn->id,
		  conn->peer);
	nghttp2_session_del(conn->h2);
	event_del(&conn->flush_ev);
	if (conn->ka_on)
		event_del(&conn->ka_ev);
	if (conn->timer_on)
		event_del(&conn->timer_ev);
	bufferevent_free(conn->bev);
	if (conn->prev != NULL)
		conn->prev->next = conn->next;
	else
		w->conns = conn->next;
	if (conn->next != NULL)
		conn->next->prev = conn->prev;
	atomic_fetch_sub(&w->nconns, 1);
	struct daemon_worker *hold = conn->hold;
	free(conn);
	if (hold != NULL)
		daemon_worker_release(hold); /* the socket is closed: a drain may end */
}

/* ------------------------------------------------------------- server */

/* alpn_select_h2 - the server picks "h2" or refuses the handshake */
static int alpn_select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen,
			  const unsigned char *in, unsigned int inlen, void *arg)
{
	unsigned char *sel;
	if (SSL_select_next_proto(&sel, outlen, (const unsigned char *)RPC_ALPN_H2,
				  RPC_ALPN_H2_LEN, in, inlen) != OPENSSL_NPN_NEGOTIATED ||
	    *outlen != 2 || memcmp(sel, "h2", 2) != 0)
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

/* srv_take_tls - keep a reference to ctx and make it negotiate h2 */
static SSL_CTX *srv_take_tls(SSL_CTX *ctx)
{
	if (ctx == NULL)
		return NULL;
	SSL_CTX_up_ref(ctx);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select_h2, NULL);
	return ctx;
}

/* rpc_server_new - copy the method table, take a TLS reference, set up nghttp2 */
struct rpc_server *rpc_server_new(const struct rpc_method *methods, size_t n_methods,
				  const struct rpc_server_opts *opts, int nworkers)
{
	static const struct rpc_server_opts defaults;
	struct rpc_server *srv = XNEW(struct rpc_server);

	if (opts == NULL)
		opts = &defaults;
	if (nworkers < 1)
		nworkers = 1;
	srv->methods = xcalloc(n_methods, sizeof(*methods));
	for (size_t i = 0; i < n_methods; i++) {
		if (methods[i].path == NULL || methods[i].on_message == NULL)
			log_panic("rpc method without path or on_message", "index=%zu", i);
		srv->methods[i] = methods[i];
		srv->methods[i].path = xstrdup(methods[i].path);
	}
	srv->n_methods = n_methods;
	srv->max_message = opts->max_message ? opts->max_message : RPC_DEFAULT_MAX_MESSAGE;
	srv->window = opts->window ? opts->window : RPC_DEFAULT_WINDOW;
	if (srv->window > NGHTTP2_MAX_WINDOW_SIZE)
		srv->window = NGHTTP2_MAX_WINDOW_SIZE;
	srv->keepalive_ms = opts->keepalive_ms;
	srv->max_streams = opts->max_streams ? opts->max_streams : RPC_DEFAULT_MAX_STREAMS;
	pthread_mutex_init(&srv->tls_lock, NULL);
	srv->tls = srv_take_tls(opts->tls);
	srv->nworkers = nworkers;
	srv->workers = xcalloc((size_t)nworkers, sizeof(*srv->workers));

	nghttp2_session_callbacks_new(&srv->cbs);
	nghttp2_session_callbacks_set_send_callback(srv->cbs, srv_send_cb);
	nghttp2_session_callbacks_set_on_begin_headers_callback(srv->cbs, srv_begin_headers_cb);
	nghttp2_session_callbacks_set_on_header_callback(srv->cbs, srv_header_cb);
	nghttp2_session_callbacks_set_on_frame_recv_callback(srv->cbs, srv_frame_recv_cb);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(srv->cbs, srv_data_chunk_cb);
	nghttp2_session_callbacks_set_on_frame_send_callback(srv->cbs, srv_frame_send_cb);
	nghttp2_session_callbacks_set_on_stream_close_callback(srv->cbs, srv_stream_close_cb);
	nghttp2_option_new(&srv->h2opt);
	nghttp2_option_set_max_send_header_block_length(srv->h2opt, 64 * 1024);
	return srv;
}

/* rpc_server_free - after the workers stopped: free what is left */
void rpc_server_free(struct rpc_server **srvp)
{
	struct rpc_server *srv = *srvp;

	if (srv == NULL)
		return;
	*srvp = NULL;
	for (int i = 0; i < srv->nworkers; i++) {
		while (srv->workers[i].conns != NULL)
			sconn_free(srv->workers[i].conns);
	}
	for (size_t i = 0; i < srv->n_methods; i++)
		free((char *)srv->methods[i].path);
	free(srv->methods);
	free(srv->workers);
	if (srv->tls != NULL)
		SSL_CTX_free(srv->tls);
	pthread_mutex_destroy(&srv->tls_lock);
	nghttp2_session_callbacks_del(srv->cbs);
	nghttp2_option_del(srv->h2opt);
	free(srv);
}

/* rpc_server_set_tls - new connections use tls; live ones keep theirs */
void rpc_server_set_tls(struct rpc_server *srv, SSL_CTX *tls)
{
	SSL_CTX *nctx = srv_take_tls(tls), *old;

	pthread_mutex_lock(&srv->tls_lock);
	old = srv->tls;
	srv->tls = nctx;
	pthread_mutex_unlock(&srv->tls_lock);
	if (old != NULL)
		SSL_CTX_free(old);
}

/* srv_get_tls - the current context, referenced (NULL = h2c) */
static SSL_CTX *srv_get_tls(struct rpc_server *srv)
{
	SSL_CTX *ctx;
	pthread_mutex_lock(&srv->tls_lock);
	ctx = srv->tls;
	if (ctx != NULL)
		SSL_CTX_up_ref(ctx);
	pthread_mutex_unlock(&srv->tls_lock);
	return ctx;
}

/* format_peer - "ip:port" ("[v6]:port") of a socket address */
static void format_peer(const struct sockaddr *sa, int salen, char *buf, size_t size)
{
	char host[INET6_ADDRSTRLEN], serv[8];
	if (sa == NULL || salen <= 0 ||
	    getnameinfo(sa, (socklen_t)salen, host, sizeof(host), serv, sizeof(serv),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		snprintf(buf, size, "-");
		return;
	}
	if (sa->sa_family == AF_INET6)
		snprintf(buf, size, "[%s]:%s", host, serv);
	else
		snprintf(buf, size, "%s:%s", host, serv);
}

/* rpc_server_accept - a connection on the caller's loop; our SETTINGS go at once */
void rpc_server_accept(struct rpc_server *srv, int widx, struct event_base *base,
		       evutil_socket_t fd, const struct sockaddr *peer, int peer_len)
{
	struct rpc_worker *w = &srv->workers[widx];
	struct rpc_sconn *conn = XNEW(struct rpc_sconn);
	int one = 1;

	conn->srv = srv;
	conn->widx = widx;
	conn->base = base;
	conn->id = atomic_fetch_add_explicit(&rpc_next_id, 1, memory_order_relaxed);
	format_peer(peer, peer_len, conn->peer, sizeof(conn->peer));
	evutil_make_socket_nonblocking(fd);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	SSL_CTX *ctx = srv_get_tls(srv);
	if (ctx != NULL) {
		SSL *ssl = SSL_new(ctx);
		SSL_CTX_free(ctx); /* the SSL holds its own reference */
		conn->bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
							   BEV_OPT_CLOSE_ON_FREE |
							   BEV_OPT_DEFER_CALLBACKS);
		if (conn->bev != NULL)
			bufferevent_openssl_set_allow_dirty_shutdown(conn->bev, 1);
		conn->tls = true;
	} else {
		conn->bev = bufferevent_socket_new(base, fd,
						   BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	}
	if (conn->bev == NULL) {
		log_error("rpc cannot create bufferevent", "peer=%s", conn->peer);
		evutil_closesocket(fd);
		free(conn);
		return;
	}
	/* on a lib/daemon worker, a drain waits for this connection to close */
	struct daemon_worker *dw = daemon_worker_current();
	if (dw != NULL && dw->base == base) {
		conn->hold = dw;
		daemon_worker_hold(dw);
	}
	nghttp2_session_server_new2(&conn->h2, srv->cbs, conn, srv->h2opt);
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, srv->max_streams },
		{ NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, srv->window },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, RPC_MAX_HEADER_LIST },
	};
	nghttp2_submit_settings(conn->h2, NGHTTP2_FLAG_NONE, iv, N_ELEMENTS(iv));
	nghttp2_session_set_local_window_size(conn->h2, NGHTTP2_FLAG_NONE, 0, (int32_t)srv->window);
	event_assign(&conn->flush_ev, base, -1, 0, sconn_flush_cb, conn);
	evtimer_assign(&conn->timer_ev, base, sconn_timer_cb, conn);
	if (srv->keepalive_ms > 0) {
		struct timeval tv = rpc_ms_tv(srv->keepalive_ms);
		event_assign(&conn->ka_ev, base, -1, EV_PERSIST, sconn_ka_cb, conn);
		event_add(&conn->ka_ev, &tv);
		conn->ka_on = true;
	}
	bufferevent_setcb(conn->bev, sconn_readcb, sconn_writecb, sconn_eventcb, conn);
	bufferevent_setwatermark(conn->bev, EV_WRITE, RPC_OUTPUT_LOW, 0);
	struct timeval hs = rpc_ms_tv(RPC_HANDSHAKE_TIMEOUT_MS);
	bufferevent_set_timeouts(conn->bev, &hs, NULL);
	bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
	conn->next = w->conns;
	if (w->conns != NULL)
		w->conns->prev = conn;
	w->conns = conn;
	atomic_fetch_add(&w->nconns, 1);
	log_debug("rpc connection accepted", "conn=%llu peer=%s tls=%s",
		  (unsigned long long)conn->id, conn->peer, ctx != NULL ? "yes" : "no");
	sconn_flush(conn); /* our SETTINGS go out at once (h2c prior knowledge) */
}

/* rpc_server_drain - stop new streams on every connection of worker widx */
void rpc_server_drain(struct rpc_server *srv, int widx)
{
	for (struct rpc_sconn *conn = srv->workers[widx].conns; conn != NULL; conn = conn->next) {
		if (conn->draining || conn->closing || conn->lingering)
			continue;
		/* two-step GOAWAY: the notice stops new streams without refusing
		 * any in flight; the final one follows the PING's ack (one RTT),
		 * or the timer when the peer does not answer */
		conn->draining = true;
		nghttp2_submit_shutdown_notice(conn->h2);
		nghttp2_submit_ping(conn->h2, NGHTTP2_FLAG_NONE, drain_ping);
		struct timeval tv = rpc_ms_tv(RPC_DRAIN_PING_MS);
		evtimer_add(&conn->timer_ev, &tv);
		conn->timer_on = true;
		sconn_want_flush(conn);
	}
}

/* rpc_server_close_all - free worker widx's connections (later if busy) */
void rpc_server_close_all(struct rpc_server *srv, int widx)
{
	struct rpc_sconn *conn = srv->workers[widx].conns, *next;

	for (; conn != NULL; conn = next) {
		next = conn->next;
		if (conn->busy > 0)
			conn->closing = true; /* freed when its callback returns */
		else if (!conn->closing)
			sconn_free(conn);
	}
}

size_t rpc_server_conn_count(const struct rpc_server *srv, int widx)
{
	return atomic_load(&srv->workers[widx].nconns);
}

/* --------------------------------------------------------------- calls */

void rpc_call_set_data(struct rpc_call *call, void *data)
{
	call->data = data;
}

void *rpc_call_data(const struct rpc_call *call)
{
	return call->data;
}

uint64_t rpc_call_id(const struct rpc_call *call)
{
	return call->id;
}

const char *rpc_call_path(const struct rpc_call *call)
{
	return call->path != NULL ? call->path : "";
}

struct event_base *rpc_call_base(const struct rpc_call *call)
{
	return call->conn->base;
}

int rpc_call_worker(const struct rpc_call *call)
{
	return call->conn->widx;
}

const char *rpc_call_metadata(const struct rpc_call *call, const char *name)
{
	for (size_t i = 0; i < call->n_md; i++) {
		if (strcmp(call->md[i].name, name) == 0)
			return call->md[i].value;
	}
	return NULL;
}

int64_t rpc_call_deadline_ms(const struct rpc_call *call)
{
	if (call->deadline < 0)
		return -1;
	int64_t left = call->deadline - rpc_now_ms();
	return left > 0 ? left : 0;
}

const char *rpc_call_peer(const struct rpc_call *call)
{
	return call->conn->peer;
}

/* call_queue_begin - room for one framed message of len bytes, or NULL */
static uint8_t *call_queue_begin(struct rpc_call *call, size_t len)
{
	if (call == NULL || !call_live(call) || call->conn->closing || len > UINT32_MAX)
		return NULL;
	uint8_t *p = rpc_bytes_reserve(&call->out, RPC_FRAME_PREFIX + len);
	rpc_frame_prefix(p, (uint32_t)len);
	return p + RPC_FRAME_PREFIX;
}

/* call_queue_end - the message is in the queue: make nghttp2 pull it */
static void call_queue_end(struct rpc_call *call, size_t len)
{
	rpc_bytes_commit(&call->out, RPC_FRAME_PREFIX + len);
	if (!call->headers_sent)
		call_submit_headers(call);
	else
		nghttp2_session_resume_data(call->conn->h2, call->stream_id);
	if (rpc_bytes_len(&call->out) >= RPC_CALL_HIGH_WATER)
		call->want_writable = true;
	sconn_want_flush(call->conn);
}

/* rpc_call_send - frame and queue one response message */
int rpc_call_send(struct rpc_call *call, const void *msg, size_t len)
{
	uint8_t *p = call_queue_begin(call, len);
	if (p == NULL)
		return -1;
	if (len > 0)
		memcpy(p, msg, len);
	call_queue_end(call, len);
	return 0;
}

int rpc_call_send_pb(struct rpc_call *call, const struct ProtobufCMessage *msg)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *p = call_queue_begin(call, len);
	if (p == NULL)
		return -1;
	protobuf_c_message_pack(msg, p);
	call_queue_end(call, len);
	return 0;
}

size_t rpc_call_queued(const struct rpc_call *call)
{
	return rpc_bytes_len(&call->out);
}

/* rpc_call_finish - the handler is done; trailers follow the queued messages */
void rpc_call_finish(struct rpc_call *call, enum rpc_status st, const char *message)
{
	if (call == NULL || !call_live(call))
		return;
	call_end(call, st, message);
}

void rpc_call_finishf(struct rpc_call *call, enum rpc_status st, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	rpc_call_finish(call, st, buf);
}
