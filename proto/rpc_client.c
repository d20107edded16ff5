/* rpc_client.c - the gRPC client side on nghttp2 + libevent (see rpc.h).
 *
 * A client owns at most one current connection (struct rpc_cconn) to its
 * address, plus connections retired by GOAWAY that finish their streams.
 * Calls (struct rpc_ccall) are NEW until their first send/close_send, then
 * WAITING for a connection, then ACTIVE on one HTTP/2 stream, then DEAD.
 *
 * Re-entrancy: every entry point from the event loop (bufferevent and timer
 * callbacks) is bracketed by cl_enter/cl_leave. User callbacks run only
 * inside such a bracket, never from rpc_ccall_* / rpc_client_call. Inside a
 * bracket nothing is freed: dead calls and connections are parked and freed
 * by cl_leave when the outermost bracket ends (so rpc_client_free or
 * rpc_ccall_cancel from inside a callback are safe). */
#include "lib/common.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "proto/rpc_private.h"
#include "proto/rpc_wire.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <protobuf-c/protobuf-c.h>

enum cl_state { CL_IDLE, CL_CONNECTING, CL_READY, CL_BACKOFF };
enum cc_state { CC_NEW, CC_WAITING, CC_ACTIVE, CC_DEAD };

struct cc_list {
	struct rpc_ccall *head, *tail;
};

struct rpc_client {
	struct event_base *base;
	char *addr, *host, *port, *authority, *tls_name;
	SSL_CTX *tls;
	int connect_timeout_ms, keepalive_ms, keepalive_timeout_ms;
	int backoff_min, backoff_max, backoff_cur;
	size_t max_message;
	uint32_t window;
	enum cl_state state;
	struct rpc_cconn *conn;     /* connecting or ready */
	struct rpc_cconn *retired;  /* after GOAWAY: finishing their streams */
	struct rpc_cconn *dead;     /* closed, freed by cl_leave */
	struct cc_list fresh;       /* CC_NEW */
	struct cc_list waiting;     /* CC_WAITING, FIFO */
	struct rpc_ccall *zombies;  /* CC_DEAD, freed by cl_leave */
	struct event connect_ev, backoff_ev;
	nghttp2_session_callbacks *cbs;
	nghttp2_option *h2opt;
	int busy;
	bool freeing;
	uint64_t conn_ids;
};

struct rpc_cconn {
	struct rpc_client *cl;
	uint64_t id;
	struct bufferevent *bev;
	nghttp2_session *h2;        /* NULL until the transport is up */
	struct evutil_addrinfo *ai, *ai_cur;
	struct rpc_cconn *next;     /* in retired / dead */
	struct cc_list calls;       /* CC_ACTIVE calls on this connection */
	struct rpc_ccall *wlist;    /* calls owed an on_writable */
	struct event flush_ev, ka_ev, ka_timeout_ev, connect_timeout_ev;
	bool connected, dead, flush_queued, ping_out, rx_seen, ka_on, in_retired;
};

struct rpc_ccall {
	struct rpc_client *cl;
	struct rpc_cconn *conn;
	struct rpc_ccall *prev, *next, *wnext;
	enum cc_state state;
	int32_t stream_id;
	struct rpc_ccall_cbs cbs;
	void *arg;
	int64_t deadline;           /* monotonic ms, -1 none */
	struct event deadline_ev;
	struct rpc_bytes out;       /* framed request messages not yet given to nghttp2 */
	struct rpc_frame frame;
	nghttp2_nv *md;             /* metadata headers, name/value owned */
	size_t n_md;
	int http_status;
	int grpc_status;            /* -1 until seen */
	char *grpc_message;
	size_t resp_bytes;
	bool send_closed, timer_on, want_writable, in_wlist, headers_seen, fail_pending;
	char path[];
};

static void cconn_close(struct rpc_cconn *conn, const char *why);
static void cconn_flush(struct rpc_cconn *conn);
static void cl_connect(struct rpc_client *cl);

/* ------------------------------------------------------------ lists */

static void cc_push(struct cc_list *l, struct rpc_ccall *c)
{
	c->next = NULL;
	c->prev = l->tail;
	if (l->tail != NULL)
		l->tail->next = c;
	else
		l->head = c;
	l->tail = c;
}

static void cc_unlink(struct cc_list *l, struct rpc_ccall *c)
{
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		l->head = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	else
		l->tail = c->prev;
	c->prev = c->next = NULL;
}

/* ------------------------------------------------------------ lifetime */

/* ccall_free - the memory of a dead call */
static void ccall_free(struct rpc_ccall *call)
{
	rpc_bytes_free(&call->out);
	rpc_frame_free(&call->frame);
	for (size_t i = 0; i < call->n_md; i++) {
		free(call->md[i].name);
		free(call->md[i].value);
	}
	free(call->md);
	free(call->grpc_message);
	free(call);
}

/* cconn_free - the memory of a closed connection */
static void cconn_free(struct rpc_cconn *conn)
{
	if (conn->h2 != NULL)
		nghttp2_session_del(conn->h2);
	event_del(&conn->flush_ev);
	event_del(&conn->connect_timeout_ev);
	if (conn->ka_on) {
		event_del(&conn->ka_ev);
		event_del(&conn->ka_timeout_ev);
	}
	if (conn->bev != NULL)
		bufferevent_free(conn->bev);
	if (conn->ai != NULL)
		evutil_freeaddrinfo(conn->ai);
	free(conn);
}

/* cl_destroy - the client and everything parked */
static void cl_destroy(struct rpc_client *cl)
{
	while (cl->dead != NULL) {
		struct rpc_cconn *c = cl->dead;
		cl->dead = c->next;
		cconn_free(c);
	}
	while (cl->zombies != NULL) {
		struct rpc_ccall *c = cl->zombies;
		cl->zombies = c->next;
		ccall_free(c);
	}
	event_del(&cl->connect_ev);
	event_del(&cl->backoff_ev);
	if (cl->tls != NULL)
		SSL_CTX_free(cl->tls);
	nghttp2_session_callbacks_del(cl->cbs);
	nghttp2_option_del(cl->h2opt);
	free(cl->addr);
	free(cl->host);
	free(cl->port);
	free(cl->authority);
	free(cl->tls_name);
	free(cl);
}

static inline void cl_enter(struct rpc_client *cl)
{
	cl->busy++;
}

/* cl_leave - end of an entry point: free what died inside it */
static void cl_leave(struct rpc_client *cl)
{
	if (--cl->busy > 0)
		return;
	while (cl->zombies != NULL) {
		struct rpc_ccall *c = cl->zombies;
		cl->zombies = c->next;
		ccall_free(c);
	}
	while (cl->dead != NULL) {
		struct rpc_cconn *c = cl->dead;
		cl->dead = c->next;
		cconn_free(c);
	}
	if (cl->freeing)
		cl_destroy(cl);
}

/* ccall_release - the call is over: detach it from lists, stream and timer */
static void ccall_release(struct rpc_ccall *call)
{
	struct rpc_client *cl = call->cl;

	switch (call->state) {
	case CC_NEW:
		cc_unlink(&cl->fresh, call);
		break;
	case CC_WAITING:
		cc_unlink(&cl->waiting, call);
		break;
	case CC_ACTIVE:
		cc_unlink(&call->conn->calls, call);
		if (call->conn->h2 != NULL)
			nghttp2_session_set_stream_user_data(call->conn->h2, call->stream_id, NULL);
		if (call->in_wlist) {
			for (struct rpc_ccall **pp = &call->conn->wlist; *pp; pp = &(*pp)->wnext) {
				if (*pp == call) {
					*pp = call->wnext;
					break;
				}
			}
			call->in_wlist = false;
		}
		break;
	case CC_DEAD:
		return;
	}
	if (call->timer_on) {
		event_del(&call->deadline_ev);
		call->timer_on = false;
	}
	call->state = CC_DEAD;
	if (cl->busy > 0) {
		call->next = cl->zombies;
		cl->zombies = call;
	} else {
		ccall_free(call);
	}
}

/* ccall_done - report the outcome once (only inside an entry point) */
static void ccall_done(struct rpc_ccall *call, enum rpc_status st, const char *message)
{
	struct rpc_client *cl = call->cl;

	if (call->state == CC_DEAD)
		return;
	cl_enter(cl); /* the call stays allocated while on_done runs */
	ccall_release(call);
	if (call->cbs.on_done != NULL)
		call->cbs.on_done(call, st, message != NULL ? message : "", call->arg);
	cl_leave(cl);
}

/* ccall_reset - stop the stream of an active call on the wire */
static void ccall_reset(struct rpc_ccall *call, uint32_t code)
{
	struct rpc_cconn *conn = call->conn;
	if (call->state != CC_ACTIVE || conn->h2 == NULL)
		return;
	nghttp2_submit_rst_stream(conn->h2, NGHTTP2_FLAG_NONE, call->stream_id, code);
	if (!conn->flush_queued) {
		conn->flush_queued = true;
		event_active(&conn->flush_ev, 0, 0);
	}
}

/* cconn_want_flush - frames were submitted outside nghttp2's own loop */
static void cconn_want_flush(struct rpc_cconn *conn)
{
	if (!conn->flush_queued && !conn->dead) {
		conn->flush_queued = true;
		event_active(&conn->flush_ev, 0, 0);
	}
}

/* ------------------------------------------------------- request stream */

/* ccall_data_read - nghttp2 pulls request bytes; END_STREAM after close_send */
static ssize_t ccall_data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
			       size_t length, uint32_t *data_flags, nghttp2_data_source *source,
			       void *user_data)
{
	struct rpc_ccall *call = nghttp2_session_get_stream_user_data(session, stream_id);
	if (call == NULL)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	size_t n = rpc_bytes_take(&call->out, buf, length);
	if (call->want_writable && rpc_bytes_len(&call->out) < RPC_CALL_HIGH_WATER / 2) {
		call->want_writable = false;
		if (!call->in_wlist) {
			call->in_wlist = true;
			call->wnext = call->conn->wlist;
			call->conn->wlist = call;
		}
	}
	if (rpc_bytes_len(&call->out) == 0) {
		if (call->send_closed)
			*data_flags |= NGHTTP2_DATA_FLAG_EOF;
		else if (n == 0)
			return NGHTTP2_ERR_DEFERRED;
	}
	return (ssize_t)n;
}

/* ccall_submit - HEADERS for the call on a ready connection; false if the
 * connection cannot take new streams (then the caller retires it) */
static bool ccall_submit(struct rpc_ccall *call, struct rpc_cconn *conn)
{
	struct rpc_client *cl = call->cl;
	char tmo[24];
	nghttp2_nv stack_nva[16], *nva = stack_nva;
	size_t n = 0;

	if (nghttp2_session_get_next_stream_id(conn->h2) > (1u << 31) - 16)
		return false; /* stream ids nearly exhausted: a new connection */
	if (call->n_md + 9 > N_ELEMENTS(stack_nva))
		nva = xmalloc((call->n_md + 9) * sizeof(*nva));
	nva[n++] = (nghttp2_nv)RPC_NVS(":method", "POST");
	if (cl->tls != NULL)
		nva[n++] = (nghttp2_nv)RPC_NVS(":scheme", "https");
	else
		nva[n++] = (nghttp2_nv)RPC_NVS(":scheme", "http");
	nva[n++] = (nghttp2_nv)RPC_NV(":path", call->path, strlen(call->path));
	nva[n++] = (nghttp2_nv)RPC_NV(":authority", cl->authority, strlen(cl->authority));
	nva[n++] = (nghttp2_nv)RPC_NVS("te", "trailers");
	nva[n++] = (nghttp2_nv)RPC_NVS("content-type", "application/grpc");
	nva[n++] = (nghttp2_nv)RPC_NVS("user-agent", RPC_USER_AGENT);
	if (call->deadline >= 0) {
		rpc_timeout_format(call->deadline - rpc_now_ms(), tmo, sizeof(tmo));
		nva[n++] = (nghttp2_nv)RPC_NV("grpc-timeout", tmo, strlen(tmo));
	}
	for (size_t i = 0; i < call->n_md; i++)
		nva[n++] = call->md[i];
	nghttp2_data_provider prd = { .source.ptr = NULL, .read_callback = ccall_data_read };
	bool body = !call->send_closed || rpc_bytes_len(&call->out) > 0;
	int32_t sid = nghttp2_submit_request(conn->h2, NULL, nva, n, body ? &prd : NULL, call);
	if (nva != stack_nva)
		free(nva);
	if (sid < 0) {
		log_info("rpc submit request failed", "addr=%s err=%s", cl->addr, nghttp2_strerror(sid));
		return false;
	}
	call->stream_id = sid;
	call->conn = conn;
	call->state = CC_ACTIVE;
	cc_push(&conn->calls, call);
	if (rpc_bytes_len(&call->out) >= RPC_CALL_HIGH_WATER)
		call->want_writable = true;
	cconn_want_flush(conn);
	return true;
}

/* cconn_retire - no new streams on conn (GOAWAY, ids used up); it finishes
 * its calls while a new connection takes the new ones */
static void cconn_retire(struct rpc_cconn *conn)
{
	struct rpc_client *cl = conn->cl;
	if (cl->conn != conn || conn->dead)
		return;
	cl->conn = NULL;
	cl->state = CL_IDLE;
	conn->in_retired = true;
	conn->next = cl->retired;
	cl->retired = conn;
	if (cl->waiting.head != NULL) {
		cl->state = CL_CONNECTING;
		event_active(&cl->connect_ev, 0, 0);
	}
}

/* ccall_activate - the call's first send/close_send: start it or let it wait */
static void ccall_activate(struct rpc_ccall *call)
{
	struct rpc_client *cl = call->cl;

	cc_unlink(&cl->fresh, call);
	if (cl->state == CL_READY && cl->conn != NULL) {
		if (ccall_submit(call, cl->conn))
			return;
		cconn_retire(cl->conn);
	}
	call->state = CC_WAITING;
	cc_push(&cl->waiting, call);
	if (cl->state == CL_IDLE) {
		cl->state = CL_CONNECTING;
		event_active(&cl->connect_ev, 0, 0); /* connecting may fail calls: not from here */
	}
}

/* ------------------------------------------------------ response side */

/* status_from_http - grpc's mapping of a non-200 HTTP status */
static enum rpc_status status_from_http(int http)
{
	switch (http) {
	case 400: return RPC_INTERNAL;
	case 401: return RPC_UNAUTHENTICATED;
	case 403: return RPC_PERMISSION_DENIED;
	case 404: return RPC_UNIMPLEMENTED;
	case 429: case 502: case 503: case 504: return RPC_UNAVAILABLE;
	default: return RPC_UNKNOWN;
	}
}

/* ccall_complete - the server ended the stream: report what it said */
static void ccall_complete(struct rpc_ccall *call)
{
	char buf[64];

	if (call->state != CC_ACTIVE)
		return;
	if (nghttp2_session_get_stream_local_close(call->conn->h2, call->stream_id) == 0)
		ccall_reset(call, NGHTTP2_CANCEL); /* the server is done; stop sending */
	if (call->grpc_status >= 0) {
		ccall_done(call, (enum rpc_status)call->grpc_status, call->grpc_message);
	} else if (call->http_status != 200) {
		snprintf(buf, sizeof(buf), "HTTP status %d", call->http_status);
		ccall_done(call, status_from_http(call->http_status), buf);
	} else if (rpc_frame_partial(&call->frame)) {
		ccall_done(call, RPC_INTERNAL, "truncated response message");
	} else {
		ccall_done(call, RPC_UNKNOWN, "response without grpc-status");
	}
}

/* cl_send_cb - nghttp2 output into the bufferevent, blocking above 64 KiB */
static ssize_t cl_send_cb(nghttp2_session *session, const uint8_t *data, size_t length,
			  int flags, void *user_data)
{
	struct rpc_cconn *conn = user_data;
	struct evbuffer *out = bufferevent_get_output(conn->bev);
	if (evbuffer_get_length(out) >= RPC_OUTPUT_HIGH)
		return NGHTTP2_ERR_WOULDBLOCK;
	evbuffer_add(out, data, length);
	return (ssize_t)length;
}

/* cl_header_cb - response headers and trailers */
static int cl_header_cb(nghttp2_session *session, const nghttp2_frame *frame,
			const uint8_t *name, size_t namelen, const uint8_t *value, size_t valuelen,
			uint8_t flags, void *user_data)
{
	struct rpc_cconn *conn = user_data;
	if (conn->dead || frame->hd.type != NGHTTP2_HEADERS)
		return 0;
	struct rpc_ccall *call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
	if (call == NULL)
		return 0;
	call->resp_bytes += namelen + valuelen + 32;
	if (call->resp_bytes > RPC_MAX_HEADER_LIST)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
		int v = 0;
		for (size_t i = 0; i < valuelen && i < 3; i++)
			v = v * 10 + (value[i] >= '0' && value[i] <= '9' ? value[i] - '0' : 0);
		call->http_status = v;
	} else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
		int v = 0;
		for (size_t i = 0; i < valuelen && i < 4; i++) {
			if (value[i] < '0' || value[i] > '9') {
				v = RPC_UNKNOWN;
				break;
			}
			v = v * 10 + (value[i] - '0');
		}
		call->grpc_status = valuelen > 0 ? v : RPC_UNKNOWN;
	} else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
		free(call->grpc_message);
		call->grpc_message = rpc_percent_decode((const char *)value, valuelen, NULL);
	}
	return 0;
}

/* cl_frame_recv_cb - end of headers/stream, PING acks, GOAWAY */
static int cl_frame_recv_cb(nghttp2_session *session, const nghttp2_frame *frame,
			    void *user_data)
{
	struct rpc_cconn *conn = user_data;
	struct rpc_ccall *call;

	if (conn->dead || conn->cl->freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	switch (frame->hd.type) {
	case NGHTTP2_HEADERS:
		call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
		if (call == NULL)
			break;
		if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
			call->headers_seen = true;
			if (call->http_status != 200 && call->grpc_status < 0) {
				ccall_complete(call);
				break;
			}
		}
		if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
			ccall_complete(call);
		break;
	case NGHTTP2_DATA:
		if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
			break;
		call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
		if (call != NULL)
			ccall_complete(call);
		break;
	case NGHTTP2_PING:
		if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && conn->ping_out) {
			conn->ping_out = false;
			event_del(&conn->ka_timeout_ev);
		}
		break;
	case NGHTTP2_GOAWAY:
		log_debug("rpc goaway received", "addr=%s code=%u last_stream=%d", conn->cl->addr,
			  frame->goaway.error_code, frame->goaway.last_stream_id);
		cconn_retire(conn);
		break;
	default:
		break;
	}
	return (conn->dead || conn->cl->freeing) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* cl_data_chunk_cb - response body bytes: decode messages, deliver each */
static int cl_data_chunk_cb(nghttp2_session *session, uint8_t flags, int32_t stream_id,
			    const uint8_t *data, size_t len, void *user_data)
{
	struct rpc_cconn *conn = user_data;
	struct rpc_ccall *call = nghttp2_session_get_stream_user_data(session, stream_id);

	while (call != NULL && call->state == CC_ACTIVE && !conn->dead) {
		const uint8_t *msg;
		size_t mlen;
		char ebuf[128];
		int r = rpc_frame_feed(&call->frame, &data, &len, &msg, &mlen);
		if (r == RPC_FRAME_MESSAGE) {
			if (call->cbs.on_message != NULL)
				call->cbs.on_message(call, msg, mlen, call->arg);
			continue;
		}
		if (r == RPC_FRAME_NEED_MORE)
			break;
		ccall_reset(call, NGHTTP2_CANCEL);
		if (r == RPC_FRAME_TOO_LARGE) {
			snprintf(ebuf, sizeof(ebuf), "received message larger than max (%zu vs. %zu)",
				 call->frame.declared, call->frame.max);
			ccall_done(call, RPC_RESOURCE_EXHAUSTED, ebuf);
		} else if (r == RPC_FRAME_COMPRESSED) {
			ccall_done(call, RPC_INTERNAL, "compressed response not supported");
		} else {
			log_info("rpc bad response frame", "addr=%s", conn->cl->addr);
			ccall_done(call, RPC_INTERNAL, "bad message frame");
		}
		break;
	}
	return (conn->dead || conn->cl->freeing) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* cl_stream_close_cb - the stream ended without a reported outcome */
static int cl_stream_close_cb(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
			      void *user_data)
{
	struct rpc_ccall *call = nghttp2_session_get_stream_user_data(session, stream_id);
	char buf[80];

	if (call == NULL || call->state != CC_ACTIVE)
		return 0;
	switch (error_code) {
	case NGHTTP2_REFUSED_STREAM:
		ccall_done(call, RPC_UNAVAILABLE, "stream refused by server");
		break;
	case NGHTTP2_CANCEL:
		ccall_done(call, RPC_CANCELLED, "stream cancelled by server");
		break;
	case NGHTTP2_ENHANCE_YOUR_CALM:
		ccall_done(call, RPC_RESOURCE_EXHAUSTED, "server said ENHANCE_YOUR_CALM");
		break;
	case NGHTTP2_INADEQUATE_SECURITY:
		ccall_done(call, RPC_PERMISSION_DENIED, "inadequate security");
		break;
	default:
		snprintf(buf, sizeof(buf), "stream closed with error %u (%s)", error_code,
			 nghttp2_http2_strerror(error_code));
		ccall_done(call, error_code == NGHTTP2_NO_ERROR ? RPC_UNKNOWN : RPC_INTERNAL, buf);
		break;
	}
	return 0;
}

/* ------------------------------------------------------------ connection */

/* cconn_notify_writable - on_writable for calls whose queue drained */
static void cconn_notify_writable(struct rpc_cconn *conn)
{
	while (conn->wlist != NULL && !conn->dead) {
		struct rpc_ccall *call = conn->wlist;
		conn->wlist = call->wnext;
		call->in_wlist = false;
		if (call->state == CC_ACTIVE && call->cbs.on_writable != NULL)
			call->cbs.on_writable(call, call->arg);
	}
}

/* cconn_flush - send what nghttp2 has (inside an entry point) */
static void cconn_flush(struct rpc_cconn *conn)
{
	for (int round = 0; round < 4; round++) {
		if (conn->dead || conn->h2 == NULL)
			return;
		int rv = nghttp2_session_send(conn->h2);
		if (rv != 0) {
			cconn_close(conn, nghttp2_strerror(rv));
			return;
		}
		if (conn->wlist == NULL)
			break;
		cconn_notify_writable(conn);
	}
	if (!conn->dead && !nghttp2_session_want_read(conn->h2) &&
	    !nghttp2_session_want_write(conn->h2) &&
	    evbuffer_get_length(bufferevent_get_output(conn->bev)) == 0)
		cconn_close(conn, "session finished");
}

static void cconn_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_cconn *conn = arg;
	struct rpc_client *cl = conn->cl;
	cl_enter(cl);
	conn->flush_queued = false;
	cconn_flush(conn);
	cl_leave(cl);
}

/* cconn_readcb - response bytes into nghttp2 */
static void cconn_readcb(struct bufferevent *bev, void *arg)
{
	struct rpc_cconn *conn = arg;
	struct rpc_client *cl = conn->cl;
	struct evbuffer *in = bufferevent_get_input(bev);

	size_t extra = 0;

	cl_enter(cl);
	conn->rx_seen = true;
	while (!conn->dead && conn->h2 != NULL) {
		struct evbuffer_iovec v;
		if (evbuffer_get_length(in) == 0) {
			/* plain sockets: take what else has arrived before answering */
			size_t got;
			if (cl->tls != NULL || extra >= RPC_READ_BATCH ||
			    (got = rpc_sock_read_more(bev)) == 0)
				break;
			extra += got;
		}
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		ssize_t rv = nghttp2_session_mem_recv(conn->h2, v.iov_base, v.iov_len);
		if (rv < 0) {
			if (!conn->dead && !cl->freeing)
				log_info("rpc protocol error", "addr=%s err=%s", cl->addr,
					 nghttp2_strerror((int)rv));
			cconn_close(conn, "protocol error");
			break;
		}
		evbuffer_drain(in, (size_t)rv);
	}
	cconn_flush(conn);
	cl_leave(cl);
}

static void cconn_writecb(struct bufferevent *bev, void *arg)
{
	struct rpc_cconn *conn = arg;
	struct rpc_client *cl = conn->cl;
	cl_enter(cl);
	cconn_flush(conn);
	cl_leave(cl);
}

/* cl_fail_waiting - a connection attempt failed: fail every call that was
 * waiting for it (calls started by those on_done callbacks wait for the next) */
static void cl_fail_waiting(struct rpc_client *cl, const char *why)
{
	char buf[256];
	struct rpc_ccall *call;

	snprintf(buf, sizeof(buf), "connect to %s failed: %s", cl->addr, why);
	for (call = cl->waiting.head; call != NULL; call = call->next)
		call->fail_pending = true;
	for (;;) {
		for (call = cl->waiting.head; call != NULL && !call->fail_pending; call = call->next)
			;
		if (call == NULL)
			break;
		ccall_done(call, RPC_UNAVAILABLE, buf);
	}
}

/* cl_connect_failed - back off before the next attempt */
static void cl_connect_failed(struct rpc_client *cl, struct rpc_cconn *conn, const char *why)
{
	log_info("rpc connect failed", "addr=%s err=\"%s\" retry_ms=%d", cl->addr, why,
		 cl->backoff_cur);
	cl->state = CL_BACKOFF;
	if (conn != NULL)
		cconn_close(conn, why);
	cl->conn = NULL;
	/* +-20% jitter so that many clients do not retry in step */
	int ms = cl->backoff_cur - cl->backoff_cur / 5 + (int)(random() % (cl->backoff_cur / 5 * 2 + 1));
	struct timeval tv = rpc_ms_tv(ms);
	evtimer_add(&cl->backoff_ev, &tv);
	cl->backoff_cur = MAIL_MIN(cl->backoff_cur * 2, cl->backoff_max);
	cl_fail_waiting(cl, why);
}

/* cconn_close - the connection is gone: fail its calls, park it */
static void cconn_close(struct rpc_cconn *conn, const char *why)
{
	struct rpc_client *cl = conn->cl;
	char buf[256];

	if (conn->dead)
		return;
	conn->dead = true;
	if (conn->bev != NULL) {
		bufferevent_disable(conn->bev, EV_READ | EV_WRITE);
		bufferevent_setcb(conn->bev, NULL, NULL, NULL, NULL);
	}
	event_del(&conn->flush_ev);
	event_del(&conn->connect_timeout_ev);
	if (conn->ka_on) {
		event_del(&conn->ka_ev);
		event_del(&conn->ka_timeout_ev);
	}
	if (cl->conn == conn) {
		cl->conn = NULL;
		if (cl->state != CL_BACKOFF)
			cl->state = CL_IDLE;
	}
	if (conn->in_retired) {
		for (struct rpc_cconn **pp = &cl->retired; *pp != NULL; pp = &(*pp)->next) {
			if (*pp == conn) {
				*pp = conn->next;
				break;
			}
		}
		conn->in_retired = false;
	}
	conn->next = cl->dead;
	cl->dead = conn;
	if (conn->connected && conn->calls.head != NULL)
		log_info("rpc connection lost", "addr=%s err=\"%s\"", cl->addr, why);
	snprintf(buf, sizeof(buf), "connection to %s lost: %s", cl->addr, why);
	while (conn->calls.head != NULL)
		ccall_done(conn->calls.head, RPC_UNAVAILABLE, buf);
	if (cl->state == CL_IDLE && cl->waiting.head != NULL && !cl->freeing) {
		cl->state = CL_CONNECTING;
		event_active(&cl->connect_ev, 0, 0);
	}
}

/* cconn_ka_cb - keepalive: PING an idle connection */
static void cconn_ka_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_cconn *conn = arg;
	struct rpc_client *cl = conn->cl;

	if (conn->rx_seen) {
		conn->rx_seen = false;
		return;
	}
	if (conn->ping_out || conn->dead)
		return;
	cl_enter(cl);
	nghttp2_submit_ping(conn->h2, NGHTTP2_FLAG_NONE, NULL);
	conn->ping_out = true;
	struct timeval tv = rpc_ms_tv(cl->keepalive_timeout_ms);
	evtimer_add(&conn->ka_timeout_ev, &tv);
	cconn_flush(conn);
	cl_leave(cl);
}

/* cconn_ka_timeout_cb - the PING was never answered: the peer is gone */
static void cconn_ka_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_cconn *conn = arg;
	struct rpc_client *cl = conn->cl;
	cl_enter(cl);
	log_info("rpc keepalive timeout", "addr=%s", cl->addr);
	cconn_close(conn, "keepalive timeout");
	cl_leave(cl);
}

/* cconn_ready - transport up (TLS with h2): start the HTTP/2 session */
static void cconn_ready(struct rpc_cconn *conn)
{
	struct rpc_client *cl = conn->cl;

	conn->connected = true;
	event_del(&conn->connect_timeout_ev);
	evutil_freeaddrinfo(conn->ai);
	conn->ai = conn->ai_cur = NULL;
	int fd = bufferevent_getfd(conn->bev), one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	nghttp2_session_client_new2(&conn->h2, cl->cbs, conn, cl->h2opt);
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
		{ NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cl->window },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, RPC_MAX_HEADER_LIST },
	};
	nghttp2_submit_settings(conn->h2, NGHTTP2_FLAG_NONE, iv, N_ELEMENTS(iv));
	nghttp2_session_set_local_window_size(conn->h2, NGHTTP2_FLAG_NONE, 0, (int32_t)cl->window);
	if (cl->keepalive_ms > 0) {
		struct timeval tv = rpc_ms_tv(cl->keepalive_ms);
		event_add(&conn->ka_ev, &tv);
	}
	cl->state = CL_READY;
	cl->backoff_cur = cl->backoff_min;
	log_debug("rpc connected", "addr=%s conn=%llu", cl->addr, (unsigned long long)conn->id);
	while (cl->waiting.head != NULL && cl->conn == conn && !conn->dead) {
		struct rpc_ccall *call = cl->waiting.head;
		cc_unlink(&cl->waiting, call);
		if (!ccall_submit(call, conn)) {
			cc_push(&cl->waiting, call); /* back at the tail; a new connection takes it */
			cconn_retire(conn);
			break;
		}
	}
	cconn_flush(conn);
}

static bool cconn_try(struct rpc_cconn *conn);

/* cconn_eventcb - connected, EOF, error */
static void cconn_eventcb(struct bufferevent *bev, short events, void *arg)
{
	struct rpc_cconn *conn = arg;
	struct rpc_client *cl = conn->cl;
	char why[160];

	cl_enter(cl);
	if (events & BEV_EVENT_CONNECTED) {
		if (cl->tls != NULL) {
			const unsigned char *p = NULL;
			unsigned int plen = 0;
			SSL_get0_alpn_selected(bufferevent_openssl_get_ssl(bev), &p, &plen);
			if (plen != 2 || memcmp(p, "h2", 2) != 0) {
				cl_connect_failed(cl, conn, "server did not negotiate ALPN h2");
				goto out;
			}
		}
		cconn_ready(conn);
		goto out;
	}
	snprintf(why, sizeof(why), "%s", (events & BEV_EVENT_EOF) ? "connection closed" :
		 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	if (cl->tls != NULL && (events & BEV_EVENT_ERROR)) {
		unsigned long e = bufferevent_get_openssl_error(bev);
		if (e != 0)
			ERR_error_string_n(e, why, sizeof(why));
	}
	if (!conn->connected) {
		if (conn->ai_cur != NULL && conn->ai_cur->ai_next != NULL) {
			conn->ai_cur = conn->ai_cur->ai_next;
			if (cconn_try(conn))
				goto out;
		}
		cl_connect_failed(cl, conn, why);
	} else {
		cconn_close(conn, why);
	}
out:
	cl_leave(cl);
}

/* cconn_connect_timeout_cb - TCP + TLS took too long */
static void cconn_connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_cconn *conn = arg;
	struct rpc_client *cl = conn->cl;
	cl_enter(cl);
	cl_connect_failed(cl, conn, "connect timeout");
	cl_leave(cl);
}

/* cconn_try - start connecting to conn->ai_cur; false on immediate failure */
static bool cconn_try(struct rpc_cconn *conn)
{
	struct rpc_client *cl = conn->cl;

	if (conn->bev != NULL) {
		bufferevent_free(conn->bev);
		conn->bev = NULL;
	}
	if (cl->tls != NULL) {
		SSL *ssl = SSL_new(cl->tls);
		struct in6_addr a6;
		SSL_set_alpn_protos(ssl, (const unsigned char *)RPC_ALPN_H2, RPC_ALPN_H2_LEN);
		if (inet_pton(AF_INET, cl->tls_name, &a6) == 1 ||
		    inet_pton(AF_INET6, cl->tls_name, &a6) == 1) {
			X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), cl->tls_name);
		} else {
			SSL_set_tlsext_host_name(ssl, cl->tls_name);
			SSL_set1_host(ssl, cl->tls_name);
		}
		conn->bev = bufferevent_openssl_socket_new(cl->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
							   BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (conn->bev != NULL)
			bufferevent_openssl_set_allow_dirty_shutdown(conn->bev, 1);
	} else {
		conn->bev = bufferevent_socket_new(cl->base, -1,
						   BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	}
	if (conn->bev == NULL)
		return false;
	bufferevent_setcb(conn->bev, cconn_readcb, cconn_writecb, cconn_eventcb, conn);
	bufferevent_setwatermark(conn->bev, EV_WRITE, RPC_OUTPUT_LOW, 0);
	bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
	return bufferevent_socket_connect(conn->bev, conn->ai_cur->ai_addr,
					  (int)conn->ai_cur->ai_addrlen) == 0;
}

/* cl_connect - one connection attempt (from the loop, never from a call API) */
static void cl_connect(struct rpc_client *cl)
{
	struct evutil_addrinfo hints, *ai = NULL;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
	cl->state = CL_CONNECTING;
	int rv = evutil_getaddrinfo(cl->host, cl->port, &hints, &ai);
	if (rv != 0 || ai == NULL) {
		cl_connect_failed(cl, NULL, rv != 0 ? evutil_gai_strerror(rv) : "no address");
		return;
	}
	struct rpc_cconn *conn = XNEW(struct rpc_cconn);
	conn->cl = cl;
	conn->id = ++cl->conn_ids;
	conn->ai = conn->ai_cur = ai;
	event_assign(&conn->flush_ev, cl->base, -1, 0, cconn_flush_cb, conn);
	evtimer_assign(&conn->connect_timeout_ev, cl->base, cconn_connect_timeout_cb, conn);
	if (cl->keepalive_ms > 0) {
		event_assign(&conn->ka_ev, cl->base, -1, EV_PERSIST, cconn_ka_cb, conn);
		evtimer_assign(&conn->ka_timeout_ev, cl->base, cconn_ka_timeout_cb, conn);
		conn->ka_on = true;
	}
	cl->conn = conn;
	struct timeval tv = rpc_ms_tv(cl->connect_timeout_ms);
	evtimer_add(&conn->connect_timeout_ev, &tv);
	while (!cconn_try(conn)) {
		if (conn->ai_cur->ai_next == NULL) {
			cl_connect_failed(cl, conn, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
			return;
		}
		conn->ai_cur = conn->ai_cur->ai_next;
	}
}

static void cl_connect_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_client *cl = arg;
	cl_enter(cl);
	if (cl->conn == NULL && !cl->freeing && cl->state != CL_BACKOFF) {
		if (cl->waiting.head != NULL)
			cl_connect(cl);
		else
			cl->state = CL_IDLE;
	}
	cl_leave(cl);
}

/* cl_backoff_cb - the wait after a failed attempt is over */
static void cl_backoff_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_client *cl = arg;
	cl_enter(cl);
	cl->state = CL_IDLE;
	if (cl->waiting.head != NULL)
		cl_connect(cl);
	cl_leave(cl);
}

/* ccall_deadline_cb - the call's deadline passed */
static void ccall_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_ccall *call = arg;
	struct rpc_client *cl = call->cl;
	cl_enter(cl);
	call->timer_on = false;
	ccall_reset(call, NGHTTP2_CANCEL);
	ccall_done(call, RPC_DEADLINE_EXCEEDED, "Deadline Exceeded");
	cl_leave(cl);
}

/* ---------------------------------------------------------------- API */

/* split_addr - "host:port" or "[v6]:port" */
static int split_addr(const char *addr, char **host_r, char **port_r)
{
	const char *colon = strrchr(addr, ':');
	if (colon == NULL || colon == addr || colon[1] == '\0')
		return -1;
	if (addr[0] == '[' && colon[-1] == ']')
		*host_r = xstrndup(addr + 1, (size_t)(colon - addr - 2));
	else
		*host_r = xstrndup(addr, (size_t)(colon - addr));
	*port_r = xstrdup(colon + 1);
	return 0;
}

/* rpc_client_new - parse the address, copy options; no connection yet */
struct rpc_client *rpc_client_new(struct event_base *base, const char *addr,
				  const struct rpc_client_opts *opts)
{
	static const struct rpc_client_opts defaults;
	struct rpc_client *cl = XNEW(struct rpc_client);

	if (opts == NULL)
		opts = &defaults;
	cl->base = base;
	cl->addr = xstrdup(addr);
	if (split_addr(addr, &cl->host, &cl->port) < 0) {
		log_error("rpc bad client address", "addr=%s", addr);
		cl->host = xstrdup(addr);
		cl->port = xstrdup("0");
	}
	cl->authority = xstrdup(opts->authority != NULL ? opts->authority : addr);
	{
		char *h = NULL, *p = NULL;
		if (opts->authority != NULL && split_addr(opts->authority, &h, &p) == 0) {
			cl->tls_name = h;
			free(p);
		} else {
			cl->tls_name = xstrdup(opts->authority != NULL ? opts->authority : cl->host);
		}
	}
	if (opts->tls != NULL) {
		SSL_CTX_up_ref(opts->tls);
		cl->tls = opts->tls;
	}
	cl->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
	cl->keepalive_ms = opts->keepalive_ms > 0 ? opts->keepalive_ms : 0;
	cl->keepalive_timeout_ms = opts->keepalive_timeout_ms > 0 ? opts->keepalive_timeout_ms
								    : RPC_KEEPALIVE_TIMEOUT_MS;
	cl->max_message = opts->max_message ? opts->max_message : RPC_DEFAULT_MAX_MESSAGE;
	cl->window = opts->window ? opts->window : RPC_DEFAULT_WINDOW;
	if (cl->window > NGHTTP2_MAX_WINDOW_SIZE)
		cl->window = NGHTTP2_MAX_WINDOW_SIZE;
	cl->backoff_min = opts->backoff_min_ms > 0 ? opts->backoff_min_ms : 100;
	cl->backoff_max = opts->backoff_max_ms > 0 ? opts->backoff_max_ms : 10000;
	if (cl->backoff_max < cl->backoff_min)
		cl->backoff_max = cl->backoff_min;
	cl->backoff_cur = cl->backoff_min;
	cl->state = CL_IDLE;
	event_assign(&cl->connect_ev, base, -1, 0, cl_connect_cb, cl);
	evtimer_assign(&cl->backoff_ev, base, cl_backoff_cb, cl);

	nghttp2_session_callbacks_new(&cl->cbs);
	nghttp2_session_callbacks_set_send_callback(cl->cbs, cl_send_cb);
	nghttp2_session_callbacks_set_on_header_callback(cl->cbs, cl_header_cb);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cl->cbs, cl_frame_recv_cb);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cl->cbs, cl_data_chunk_cb);
	nghttp2_session_callbacks_set_on_stream_close_callback(cl->cbs, cl_stream_close_cb);
	nghttp2_option_new(&cl->h2opt);
	nghttp2_option_set_max_send_header_block_length(cl->h2opt, 64 * 1024);
	return cl;
}

/* rpc_client_free - drop calls silently, close connections, free now or on return */
void rpc_client_free(struct rpc_client **cp)
{
	struct rpc_client *cl = *cp;

	if (cl == NULL)
		return;
	*cp = NULL;
	cl->freeing = true;
	cl->busy++; /* park everything; freed below or by the entry point on the stack */
	while (cl->fresh.head != NULL)
		ccall_release(cl->fresh.head);
	while (cl->waiting.head != NULL)
		ccall_release(cl->waiting.head);
	while (cl->retired != NULL) {
		struct rpc_cconn *c = cl->retired;
		while (c->calls.head != NULL)
			ccall_release(c->calls.head);
		cconn_close(c, "client freed");
	}
	if (cl->conn != NULL) {
		while (cl->conn->calls.head != NULL)
			ccall_release(cl->conn->calls.head);
		cconn_close(cl->conn, "client freed");
	}
	event_del(&cl->connect_ev);
	event_del(&cl->backoff_ev);
	cl_leave(cl);
}

bool rpc_client_connected(const struct rpc_client *c)
{
	return c->state == CL_READY && c->conn != NULL;
}

const char *rpc_client_addr(const struct rpc_client *c)
{
	return c->addr;
}

/* rpc_client_call - a NEW call; its deadline timer starts now */
struct rpc_ccall *rpc_client_call(struct rpc_client *c, const char *path, int64_t timeout_ms,
				  const struct rpc_ccall_cbs *cbs, void *arg)
{
	size_t plen = strlen(path);
	struct rpc_ccall *call = xcalloc(1, sizeof(*call) + plen + 1);

	memcpy(call->path, path, plen + 1);
	call->cl = c;
	if (cbs != NULL)
		call->cbs = *cbs;
	call->arg = arg;
	call->grpc_status = -1;
	call->deadline = -1;
	rpc_frame_init(&call->frame, c->max_message);
	call->state = CC_NEW;
	cc_push(&c->fresh, call);
	if (timeout_ms > 0) {
		struct timeval tv = rpc_ms_tv(timeout_ms);
		call->deadline = rpc_now_ms() + timeout_ms;
		evtimer_assign(&call->deadline_ev, c->base, ccall_deadline_cb, call);
		evtimer_add(&call->deadline_ev, &tv);
		call->timer_on = true;
	}
	return call;
}

/* rpc_ccall_add_metadata - lowercase name, base64 for -bin, printable values only */
void rpc_ccall_add_metadata(struct rpc_ccall *call, const char *name, const char *value)
{
	size_t nlen = strlen(name), vlen = strlen(value);
	char *v, *lname;

	if (call->state != CC_NEW) {
		log_warn("rpc metadata after the call started", "name=%s", name);
		return;
	}
	lname = xstrdup(name); /* HTTP/2 header names are lowercase */
	for (char *p = lname; *p != '\0'; p++) {
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	}
	if (!rpc_md_name_valid(lname)) {
		log_warn("rpc bad metadata name", "name=%s", lname);
		free(lname);
		return;
	}
	if (rpc_md_is_bin(name, nlen)) {
		v = rpc_base64_encode(value, vlen);
	} else {
		for (size_t i = 0; i < vlen; i++) {
			if ((uint8_t)value[i] < 0x20 || (uint8_t)value[i] > 0x7e) {
				log_warn("rpc bad metadata value", "name=%s", lname);
				free(lname);
				return;
			}
		}
		v = xstrdup(value);
	}
	call->md = xrealloc(call->md, (call->n_md + 1) * sizeof(*call->md));
	call->md[call->n_md] = (nghttp2_nv){ (uint8_t *)lname, (uint8_t *)v, nlen,
					     strlen(v), NGHTTP2_NV_FLAG_NONE };
	call->n_md++;
}

/* ccall_queue_begin - room for one framed request message, or NULL */
static uint8_t *ccall_queue_begin(struct rpc_ccall *call, size_t len)
{
	if (call == NULL || call->state == CC_DEAD || call->send_closed || len > UINT32_MAX)
		return NULL;
	uint8_t *p = rpc_bytes_reserve(&call->out, RPC_FRAME_PREFIX + len);
	rpc_frame_prefix(p, (uint32_t)len);
	return p + RPC_FRAME_PREFIX;
}

/* ccall_queue_end - the message is queued: start the call or wake its stream */
static void ccall_queue_end(struct rpc_ccall *call, size_t len)
{
	rpc_bytes_commit(&call->out, RPC_FRAME_PREFIX + len);
	if (rpc_bytes_len(&call->out) >= RPC_CALL_HIGH_WATER)
		call->want_writable = true;
	if (call->state == CC_NEW) {
		ccall_activate(call);
	} else if (call->state == CC_ACTIVE) {
		nghttp2_session_resume_data(call->conn->h2, call->stream_id);
		cconn_want_flush(call->conn);
	}
}

/* rpc_ccall_send - frame and queue one request message (starts the call) */
int rpc_ccall_send(struct rpc_ccall *call, const void *msg, size_t len)
{
	uint8_t *p = ccall_queue_begin(call, len);
	if (p == NULL)
		return -1;
	if (len > 0)
		memcpy(p, msg, len);
	ccall_queue_end(call, len);
	return 0;
}

int rpc_ccall_send_pb(struct rpc_ccall *call, const struct ProtobufCMessage *msg)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *p = ccall_queue_begin(call, len);
	if (p == NULL)
		return -1;
	protobuf_c_message_pack(msg, p);
	ccall_queue_end(call, len);
	return 0;
}

/* rpc_ccall_close_send - END_STREAM after the queued messages (starts the call) */
void rpc_ccall_close_send(struct rpc_ccall *call)
{
	if (call == NULL || call->state == CC_DEAD || call->send_closed)
		return;
	call->send_closed = true;
	if (call->state == CC_NEW) {
		ccall_activate(call);
	} else if (call->state == CC_ACTIVE) {
		nghttp2_session_resume_data(call->conn->h2, call->stream_id);
		cconn_want_flush(call->conn);
	}
}

size_t rpc_ccall_queued(const struct rpc_ccall *call)
{
	return rpc_bytes_len(&call->out);
}

/* rpc_ccall_cancel - RST_STREAM(CANCEL) if on the wire; no callback follows */
void rpc_ccall_cancel(struct rpc_ccall *call)
{
	if (call == NULL || call->state == CC_DEAD)
		return;
	ccall_reset(call, NGHTTP2_CANCEL);
	ccall_release(call);
}

struct rpc_ccall *rpc_client_unary(struct rpc_client *c, const char *path, int64_t timeout_ms,
				   const void *msg, size_t len,
				   const struct rpc_ccall_cbs *cbs, void *arg)
{
	struct rpc_ccall *call = rpc_client_call(c, path, timeout_ms, cbs, arg);
	rpc_ccall_send(call, msg, len);
	rpc_ccall_close_send(call);
	return call;
}

struct rpc_ccall *rpc_client_unary_pb(struct rpc_client *c, const char *path, int64_t timeout_ms,
				      const struct ProtobufCMessage *msg,
				      const struct rpc_ccall_cbs *cbs, void *arg)
{
	struct rpc_ccall *call = rpc_client_call(c, path, timeout_ms, cbs, arg);
	rpc_ccall_send_pb(call, msg);
	rpc_ccall_close_send(call);
	return call;
}
